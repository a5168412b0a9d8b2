//! The deployment driver on the in-memory stores: the fleet's passes, their outbox, and what
//! events make them plan.

use tern_proto::message::{PipelinePhase, PipelineStatus, StatusReport};
use tern_proto::release::ArtifactKind;

use super::fleet::{Fleet, Inbox};
use super::*;
use crate::backend::Notice;
use crate::replica::Replica;
use crate::testing::{Stores, manifest};

/// What a control plane alone keeps in memory beside its stores.
struct Observed {
    reports: AgentReports,
    health: HealthTracker,
    presence: Presence,
    replica: Replica,
    key: SecretKey,
}

fn observed() -> Observed {
    Observed {
        reports: AgentReports::default(),
        health: HealthTracker::default(),
        presence: Presence::default(),
        replica: Replica {
            name: "cp".into(),
            peers: false,
        },
        key: SecretKey::generate(),
    }
}

fn context<'a>(stores: &'a Stores, seen: &'a Observed) -> DeployContext<'a> {
    DeployContext {
        registry: &stores.registry,
        catalog: &stores.catalog,
        releases: &stores.releases,
        desired: &stores.desired,
        reports: &seen.reports,
        health: &seen.health,
        presence: &seen.presence,
        online_key: &seen.key,
        replica: &seen.replica,
    }
}

/// Enrolls and connects agents `id0`… named `edge-1`….
fn enroll(stores: &Stores, seen: &Observed, agents: u8) {
    for i in 0..agents {
        stores.enroll(&format!("id{i}"), &format!("edge-{}", i + 1));
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(i)));
        seen.presence.connect(&format!("id{i}"), address, 1);
    }
}

/// `agent` reports that it serves `revision` of `scores`, having applied `generation`.
fn serving(seen: &Observed, agent: &str, revision: u64, generation: u64) {
    seen.reports.record(
        agent,
        StatusReport {
            seq: 1,
            applied_generation: generation,
            pipelines: vec![PipelineStatus {
                name: "scores".into(),
                revision,
                phase: PipelinePhase::Ready,
                message: String::new(),
                serving: Some(revision),
            }],
            refused: None,
            warnings: Vec::new(),
        },
    );
}

/// Feeds every commit `stores` heard into `inbox`, as the server's follower does.
fn follow(heard: &mut crate::backend::Subscription, inbox: &Inbox) {
    while let Ok(notice) = heard.try_recv() {
        match notice {
            Notice::Committed(changes) => {
                inbox.heard(&changes);
            }
            Notice::Missed => inbox.missed(),
        }
    }
}

/// (agent, pipelines with revisions) of what a pass sent, by agent.
fn given(seen: &Observed, sent: &[(String, SignedDesiredState)]) -> Vec<(String, Vec<u64>)> {
    let mut out: Vec<(String, Vec<u64>)> = (sent.iter())
        .map(|(agent, signed)| {
            let state = (signed.open(&seen.key.public(), agent, 0))
                .expect("signed by the online key, for that agent");
            (
                agent.clone(),
                state.pipelines.iter().map(|p| p.revision).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_first_pass_gives_the_first_wave_the_pipeline_signed_in_the_outbox_and_no_event_nothing() {
    let (stores, seen) = (Stores::new(), observed());
    enroll(&stores, &seen, 2);
    stores.push("topk", 2, ArtifactKind::Plugin, true);
    (stores.apply(&manifest("topk:2", 2), false, 10)).expect("apply");

    let mut fleet = Fleet::default();
    let pass = (fleet.pass(&context(&stores, &seen), Default::default(), 20)).expect("a pass");
    assert_eq!(
        given(&seen, &pass.sent),
        [("id0".to_owned(), vec![1]), ("id1".to_owned(), vec![])],
        "the first wave (half of two agents) runs revision 1; the second waits"
    );
    for (agent, signed) in &pass.sent {
        assert!(signed.open(&seen.key.public(), "another", 0).is_err());
        let recorded = stores.desired.get(agent).expect("read").expect("recorded");
        let state = signed.open(&seen.key.public(), agent, 0).expect("opens");
        assert_eq!(
            (recorded.generation, recorded.content),
            (1, Some(state.content_digest()))
        );
        assert_eq!(
            stores.desired.signed(agent).expect("read").as_ref(),
            Some(signed),
            "the outbox holds what was sent, for every replica's sessions"
        );
    }
    let rollout = (stores.catalog.deployment("scores").expect("read"))
        .and_then(|d| d.rollout)
        .expect("the rollout");
    assert_eq!(
        (rollout.wave, rollout.members),
        (0, vec!["edge-1".to_owned()])
    );
    let idle = (fleet.pass(&context(&stores, &seen), Default::default(), 30)).expect("a pass");
    assert!(idle.sent.is_empty(), "nothing changed: nothing sent again");
    assert_eq!(
        (idle.planned, idle.assigned),
        (0, 0),
        "no event: nothing planned"
    );
}

#[test]
fn a_revoked_agent_is_given_nothing() {
    let (stores, seen) = (Stores::new(), observed());
    enroll(&stores, &seen, 1);
    stores.registry.revoke("edge-1", 5).expect("revoke");
    stores.push("topk", 2, ArtifactKind::Plugin, true);
    (stores.apply(&manifest("topk:2", 2), false, 10)).expect("apply");
    let pass =
        (Fleet::default().pass(&context(&stores, &seen), Default::default(), 20)).expect("a pass");
    assert!(pass.sent.is_empty());
    assert!(stores.desired.get("id0").expect("read").is_none());
}

#[test]
fn an_apply_heard_is_planned_at_once_and_a_report_plans_only_its_agents_rollouts() {
    let (stores, seen) = (Stores::new(), observed());
    enroll(&stores, &seen, 2);
    stores.push("topk", 2, ArtifactKind::Plugin, true);
    let mut fleet = Fleet::default();
    let first = (fleet.pass(&context(&stores, &seen), Default::default(), 5)).expect("a pass");
    assert_eq!(
        given(&seen, &first.sent),
        [("id0".to_owned(), vec![]), ("id1".to_owned(), vec![])],
        "no deployment yet: a first generation that runs nothing"
    );

    let (inbox, mut heard) = (Inbox::default(), stores.backend.subscribe());
    (stores.apply(&manifest("topk:2", 2), false, 10)).expect("apply");
    follow(&mut heard, &inbox);
    assert!(inbox.urgent(), "an apply does not wait for reports");
    let applied = (fleet.pass(&context(&stores, &seen), inbox.take(), 20)).expect("a pass");
    assert_eq!(
        given(&seen, &applied.sent),
        [("id0".to_owned(), vec![1])],
        "the first wave gets revision 1; the second already has its (empty) state"
    );

    // The rollout completes its first wave once edge-1 serves revision 1 for the health
    // window: the report starts it, the deadline (not another report) ends it.
    serving(&seen, "id0", 1, 1);
    inbox.touch("id0");
    let reported = (fleet.pass(&context(&stores, &seen), inbox.take(), 1_000)).expect("a pass");
    assert_eq!(
        reported.planned, 1,
        "the report's agent's rollout is stepped"
    );
    assert!(
        reported.sent.is_empty(),
        "healthy since now, not for the window"
    );
    let due = reported.next_deadline_ms.expect("the health window ends");
    let window = (stores.catalog.deployment("scores").expect("read"))
        .and_then(|d| d.rollout)
        .map(|r| r.policy.health_window_ms)
        .expect("a rollout");
    assert_eq!(due, 1_000 + window);

    let early =
        (fleet.pass(&context(&stores, &seen), Default::default(), due - 1)).expect("a pass");
    assert_eq!(
        early.planned, 0,
        "before its deadline a rollout is not stepped"
    );
    let at = (fleet.pass(&context(&stores, &seen), Default::default(), due)).expect("a pass");
    assert_eq!(
        given(&seen, &at.sent),
        [("id1".to_owned(), vec![1])],
        "at the deadline the second wave starts"
    );
}

#[test]
fn an_agent_without_a_signed_state_in_the_outbox_is_signed_a_new_generation() {
    let (stores, seen) = (Stores::new(), observed());
    enroll(&stores, &seen, 1);
    stores.push("topk", 2, ArtifactKind::Plugin, true);
    (stores.apply(&manifest("topk:2", 2), false, 10)).expect("apply");
    let mut fleet = Fleet::default();
    (fleet.pass(&context(&stores, &seen), Default::default(), 20)).expect("a pass");
    // As a record written by a version before the outbox: the desired state alone.
    let write = crate::backend::Write::new().delete(crate::backend::Table("outbox"), "id0");
    stores.backend.commit(write).expect("delete");
    assert!(stores.desired.signed("id0").expect("read").is_none());

    let inbox = Inbox::default();
    inbox.missed();
    let again = (fleet.pass(&context(&stores, &seen), inbox.take(), 30)).expect("a pass");
    assert_eq!(given(&seen, &again.sent), [("id0".to_owned(), vec![1])]);
    let signed = stores
        .desired
        .signed("id0")
        .expect("read")
        .expect("in the outbox");
    assert_eq!(
        signed.generation, 2,
        "a new generation: one generation, one content"
    );
}

#[test]
fn an_agent_that_holds_more_is_caught_up_and_one_enrolled_since_is_heard() {
    let (stores, seen) = (Stores::new(), observed());
    enroll(&stores, &seen, 1);
    stores.push("topk", 2, ArtifactKind::Plugin, true);
    (stores.apply(&manifest("topk:2", 2), false, 10)).expect("apply");
    let mut fleet = Fleet::default();
    (fleet.pass(&context(&stores, &seen), Default::default(), 20)).expect("a pass");

    // It says it applied generation 7 (the store was restored from an older backup).
    serving(&seen, "id0", 1, 7);
    let inbox = Inbox::default();
    inbox.touch("id0");
    let caught = (fleet.pass(&context(&stores, &seen), inbox.take(), 30)).expect("a pass");
    let generations: Vec<u64> = caught.sent.iter().map(|(_, s)| s.generation).collect();
    assert_eq!(
        generations,
        [8],
        "above what it holds: it refuses anything at or below"
    );

    let mut heard = stores.backend.subscribe();
    stores.enroll("id1", "edge-2");
    follow(&mut heard, &inbox);
    assert!(!inbox.urgent(), "records wait for the next batch");
    let joined = (fleet.pass(&context(&stores, &seen), inbox.take(), 40)).expect("a pass");
    assert_eq!(
        given(&seen, &joined.sent),
        [("id1".to_owned(), vec![])],
        "the first wave (half of two agents) is full: the new agent waits, given nothing yet"
    );
}
