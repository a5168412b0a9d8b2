//! Whole rollouts on the in-memory fleet (`tern_e2e::sim`): the control plane's own path
//! (apply, the deployment driver's passes and outbox, the agents' sessions) and the agents'
//! reconcilers on a virtual clock. Each scenario is minutes of virtual time and milliseconds
//! of real time; the property tests run hundreds of random fleets.

use proptest::prelude::*;
use tern_control_plane::rollout::{Phase, Transition};
use tern_e2e::sim::{Faults, Fleet, OFFLINE_GRACE_MS, PIPELINE, STEP_MS, policy};

/// Virtual minutes, in steps.
fn minutes(n: u64) -> u64 {
    n * 60_000 / STEP_MS
}

const WINDOW_MS: u64 = 10_000;

fn healthy(n: usize) -> Vec<Faults> {
    vec![Faults::default(); n]
}

/// Every agent serves `revision`.
fn all_serve(fleet: &Fleet, revision: u64) -> bool {
    !fleet.agents.is_empty()
        && fleet
            .agents
            .iter()
            .all(|a| a.serving_revision() == Some(revision))
}

fn waves_started(fleet: &Fleet) -> Vec<Vec<String>> {
    fleet
        .transitions
        .iter()
        .filter_map(|(_, m)| match &m.transition {
            Transition::WaveStarted { agents, .. } => Some(agents.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn canary_waves_reach_everyone_in_order_and_commit() {
    let mut fleet = Fleet::new(healthy(10));
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    assert!(all_serve(&fleet, 1));

    fleet.apply(2, policy(&[10, 50, 100], WINDOW_MS));
    let steps = fleet.run_until_settled(minutes(10));
    assert_eq!(fleet.phase(), Some(&Phase::Complete), "after {steps} steps");
    let waves = waves_started(&fleet);
    let sizes: Vec<usize> = waves[1..].iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 4, 5], "10%, 50%, 100% of 10 agents, cumulative");
    assert_eq!(
        waves[1],
        ["edge-00"],
        "the canary is the first agent by name"
    );
    // Each wave waited out the health window of the one before.
    assert!(steps * STEP_MS >= 2 * WINDOW_MS, "{steps} steps");
    fleet.run(2);
    assert!(all_serve(&fleet, 2));
    assert!(
        fleet.agents.iter().all(|a| a.floors["model"].version == 2),
        "committed: every floor rose"
    );
    assert_eq!(fleet.violations, []);
}

#[test]
fn a_failing_canary_rolls_back_and_the_fleet_keeps_the_stable_revision() {
    let mut faults = healthy(6);
    faults[0].errors_on.insert(2);
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    fleet.apply(2, policy(&[20, 100], WINDOW_MS));
    fleet.run_until_settled(minutes(10));
    assert!(
        matches!(
            fleet.phase(),
            Some(Phase::RolledBack { reason }) if reason.contains("edge-00 failed")
        ),
        "{:?}",
        fleet.phase()
    );
    fleet.run(4);
    assert!(all_serve(&fleet, 1), "the canary went back to 1");
    assert!(
        fleet.agents[0].revisions_served().contains(&2),
        "the canary served 2 before it failed"
    );
    // The first wave is 20% of six agents, rounded up: edge-00 and edge-01.
    let beyond_the_canary_on_2: Vec<&str> = fleet
        .agents
        .iter()
        .skip(2)
        .filter(|a| a.revisions_served().contains(&2))
        .map(|a| a.record.name.as_str())
        .collect();
    assert_eq!(
        beyond_the_canary_on_2,
        Vec::<&str>::new(),
        "only the canary wave ever ran 2"
    );
    assert_eq!(fleet.violations, []);
}

#[test]
fn a_revision_that_fails_to_load_rolls_back_without_taking_what_was_serving() {
    let mut faults = healthy(4);
    faults[0].load_fails.insert(2);
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    fleet.apply(2, policy(&[25, 100], WINDOW_MS));
    fleet.run_until_settled(minutes(10));
    assert!(matches!(fleet.phase(), Some(Phase::RolledBack { .. })));
    fleet.run(4);
    assert!(all_serve(&fleet, 1), "1 kept serving throughout");
    assert_eq!(fleet.violations, []);
}

#[test]
fn an_agent_offline_during_the_apply_converges_when_back() {
    let mut faults = healthy(5);
    faults[3].offline.push((minutes(5), minutes(30)));
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    fleet.run(minutes(5).saturating_sub(fleet_steps(&fleet)));
    fleet.apply(2, policy(&[20, 60, 100], WINDOW_MS));
    fleet.run_until_settled(minutes(20));
    assert_eq!(
        fleet.phase(),
        Some(&Phase::Complete),
        "an agent offline past the grace does not block a wave"
    );
    let rollout = fleet.rollout().expect("a rollout");
    assert_eq!(rollout.left_out, ["edge-03"], "and it is listed");
    assert_eq!(fleet.agents[3].serving_revision(), Some(1), "still away");
    fleet.run(minutes(31).saturating_sub(fleet_steps(&fleet)));
    assert!(all_serve(&fleet, 2), "back, it converges");
    assert_eq!(fleet.violations, []);
}

#[test]
fn a_paused_rollout_starts_no_wave_until_resumed() {
    let mut fleet = Fleet::new(healthy(10));
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    fleet.apply(2, policy(&[10, 100], WINDOW_MS));
    fleet.run(2);
    assert!(fleet.pause());
    fleet.run(minutes(5));
    assert_eq!(fleet.phase(), Some(&Phase::Paused));
    let on_2 = fleet
        .agents
        .iter()
        .filter(|a| a.serving_revision() == Some(2))
        .count();
    assert_eq!(on_2, 1, "only the canary, for as long as it is paused");
    assert!(fleet.resume());
    fleet.run_until_settled(minutes(5));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.run(2);
    assert!(all_serve(&fleet, 2));
    assert_eq!(fleet.violations, []);
}

#[test]
fn variants_reach_every_agent_with_their_releases() {
    let mut fleet = Fleet::new(healthy(3));
    fleet.set_variants(&[(1, 50), (2, 50)]);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    fleet.run(2);
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    for agent in &fleet.agents {
        let run = &agent.serving["p"];
        let arms: Vec<(&str, u32)> = run
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
            .collect();
        assert_eq!(
            arms,
            [("model:1", 50), ("model:2", 50)],
            "{}",
            agent.record.name
        );
    }
    // A change of weights is a new generation, served without a new revision.
    fleet.set_variants(&[(1, 90), (2, 10)]);
    fleet.run(2);
    assert!(
        fleet
            .agents
            .iter()
            .all(|a| a.serving["p"].variants[0].weight == 90)
    );
    assert_eq!(fleet.violations, []);
}

/// A random fleet: one case in four without any fault (which must then complete), the others
/// with faults drawn per agent by [`faulty_fleet`].
fn fleet_faults() -> impl Strategy<Value = Vec<Faults>> {
    prop_oneof![
        1 => prop::collection::vec(Just(Faults::default()), 1..16),
        3 => faulty_fleet(),
    ]
}

/// Per agent, whether the new revision fails to load there, errors there, and an offline
/// spell; how late its messages arrive, whether out of order, whether its link loses desired
/// states, and whether a second replica holds it.
fn faulty_fleet() -> impl Strategy<Value = Vec<Faults>> {
    prop::collection::vec(
        (
            (
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.1),
                prop::option::weighted(0.3, (0u64..minutes(6), 1u64..minutes(6))),
                prop::bool::weighted(0.05),
            ),
            (
                prop::option::weighted(0.3, 1u64..6),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.3),
            ),
        ),
        1..16,
    )
    .prop_map(|agents| {
        agents
            .into_iter()
            .map(
                |((load_fails, errors, offline, crashes), (delay, reorder, drops, elsewhere))| {
                    Faults {
                        delay: delay.unwrap_or(0),
                        reorder,
                        drops,
                        elsewhere,
                        load_fails: if load_fails { [2].into() } else { [].into() },
                        errors_on: if errors { [2].into() } else { [].into() },
                        crashes_on: if crashes { [2].into() } else { [].into() },
                        offline: offline
                            .map(|(from, len)| vec![(minutes(5) + from, minutes(5) + from + len)])
                            .unwrap_or_default(),
                    }
                },
            )
            .collect()
    })
}

/// What happens to the control plane during the rollout: the work lease moves, the driver's
/// follower falls behind the change feed (at a step of the rollout, for some steps).
#[derive(Debug, Clone)]
struct Upsets {
    leader_change_at: Option<u64>,
    feed_stall: Option<(u64, u64)>,
    replica_lag: u64,
}

fn upsets() -> impl Strategy<Value = Upsets> {
    (
        prop::option::weighted(0.3, 0u64..120),
        prop::option::weighted(0.3, (0u64..120, 1u64..60)),
        0u64..8,
    )
        .prop_map(|(leader_change_at, feed_stall, replica_lag)| Upsets {
            leader_change_at,
            feed_stall,
            replica_lag,
        })
}

/// Runs `steps` steps of `fleet`, upsetting its control plane as `upsets` says (steps counted
/// from `from`, the rollout's start).
fn run_upset(fleet: &mut Fleet, upsets: &Upsets, from: u64, steps: u64) {
    for _ in 0..steps {
        let at = fleet_steps(fleet) - from;
        if upsets.leader_change_at == Some(at) {
            fleet.change_leader();
        }
        if let Some((stall_at, stall)) = upsets.feed_stall
            && stall_at == at
        {
            fleet.stall_feed(stall);
        }
        fleet.step();
    }
}

fn waves() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::btree_set(1u8..100, 0..3).prop_map(|set| {
        let mut waves: Vec<u8> = set.into_iter().collect();
        waves.push(100);
        waves
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// For random fleets and failures (of agents, links and of the control plane: the work
    /// lease moving, the change feed lagging, a replica behind): no agent ever serves below its
    /// floor or a revision it was not given, no wave starts twice, every rollout ends complete
    /// or rolled back (or paused, when it was), complete when no agent or link fault was
    /// injected at all, and afterwards every agent that is online serves what the rollout says.
    #[test]
    fn every_rollout_ends_and_no_agent_serves_below_its_floor(
        faults in fleet_faults(),
        waves in waves(),
        pause_at in prop::option::weighted(0.2, 0u64..20),
        upsets in upsets(),
    ) {
        let mut fleet = Fleet::new(faults.clone());
        fleet.replica_lag = upsets.replica_lag;
        fleet.apply(1, policy(&[100], WINDOW_MS));
        fleet.run_until_settled(minutes(5));
        prop_assert_eq!(fleet.phase(), Some(&Phase::Complete));
        fleet.run(minutes(5).saturating_sub(fleet_steps(&fleet)));
        fleet.apply(2, policy(&waves, WINDOW_MS));
        let from = fleet_steps(&fleet);
        if let Some(at) = pause_at {
            run_upset(&mut fleet, &upsets, from, at);
            let paused = fleet.pause();
            run_upset(&mut fleet, &upsets, from, minutes(3));
            if paused {
                // Failures are still detected while paused.
                let phase = fleet.phase();
                prop_assert!(
                    matches!(phase, Some(Phase::Paused | Phase::RolledBack { .. })),
                    "paused, then {:?}", phase
                );
            }
            fleet.resume();
        }
        // The control plane's upsets happen in the first minute of the rollout.
        let done = fleet_steps(&fleet) - from;
        run_upset(&mut fleet, &upsets, from, 121u64.saturating_sub(done));
        fleet.run_until_settled(minutes(30));
        let phase = fleet.phase().cloned();
        prop_assert!(
            matches!(phase, Some(Phase::Complete | Phase::RolledBack { .. })),
            "ended {:?}", phase
        );
        // Nothing injected (no failing revision, no offline spell, no late or reordered
        // message): nothing may stop the rollout, and a pause only holds it. Every agent then
        // serves revision 2, which the loop below checks.
        if faults.iter().all(|f| *f == Faults::default()) {
            prop_assert!(
                matches!(phase, Some(Phase::Complete)),
                "a fleet without faults ended {:?}", phase
            );
        }
        // Every agent back online.
        fleet.run(minutes(12));
        let expected = match phase {
            Some(Phase::Complete) => 2,
            _ => 1,
        };
        for (agent, f) in fleet.agents.iter().zip(&faults) {
            let can_run =
                expected == 1 || !(f.load_fails.contains(&2) || f.crashes_on.contains(&2));
            if can_run {
                prop_assert_eq!(
                    agent.serving_revision(), Some(expected),
                    "{} ({:?})", agent.record.name, f
                );
            }
        }
        prop_assert_eq!(&fleet.violations, &Vec::new());
    }
}

/// Steps run so far (the virtual clock).
fn fleet_steps(fleet: &Fleet) -> u64 {
    fleet.now_ms() / STEP_MS
}

#[test]
fn an_agent_that_dies_on_the_canary_rolls_it_back_before_the_crash_spreads() {
    let faults = vec![
        Faults {
            crashes_on: [2].into(),
            ..Faults::default()
        };
        10
    ];
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    assert!(all_serve(&fleet, 1));
    fleet.apply(2, policy(&[10, 50, 100], WINDOW_MS));
    fleet.run_until_settled(minutes(10));
    // The canary restarts at once and serves the target again, connected: its death alone
    // fails the wave.
    match fleet.phase() {
        Some(Phase::RolledBack { reason }) => assert!(
            reason.starts_with("agent edge-00 exited 1 times on revision 2"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    fleet.run(4);
    assert!(all_serve(&fleet, 1), "rolled back everywhere");
    let deaths: u32 = fleet.agents.iter().map(|a| a.deaths).sum();
    assert_eq!(deaths, 1, "only the canary ever ran it");
    assert!(
        fleet.agents[1..]
            .iter()
            .all(|a| !a.revisions_served().contains(&2))
    );
    assert_eq!(fleet.violations, []);
}

#[test]
fn without_auto_rollback_each_agent_puts_aside_what_kills_it_and_serves_the_last_good() {
    let faults = vec![
        Faults {
            crashes_on: [2].into(),
            ..Faults::default()
        };
        3
    ];
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    let mut held = policy(&[100], WINDOW_MS);
    held.auto_rollback = false;
    fleet.apply(2, held);
    fleet.run_until_settled(minutes(10));
    assert!(
        matches!(fleet.phase(), Some(Phase::Failed { .. })),
        "{:?}",
        fleet.phase()
    );
    // The control plane holds them on 2; each agent dies under it until it puts it aside.
    fleet.run(minutes(1));
    for agent in &fleet.agents {
        assert_eq!(agent.deaths, 3, "{}", agent.record.name);
        assert_eq!(agent.serving_revision(), Some(1), "{}", agent.record.name);
        let aside = agent.exits.put_aside(PIPELINE).expect("put aside");
        assert_eq!(aside.revision, 2);
        assert!(aside.reason.contains("exited 3 times"), "{}", aside.reason);
    }
    // An operator's undo names revision 1: the mark is dropped, and 2 may be tried anew later.
    assert!(fleet.undo());
    fleet.run(4);
    assert!(all_serve(&fleet, 1));
    assert!(
        fleet
            .agents
            .iter()
            .all(|a| a.exits.put_aside(PIPELINE).is_none())
    );
    assert_eq!(fleet.violations, []);
}

#[test]
fn an_offline_member_holds_its_wave_for_the_grace_only() {
    let mut faults = healthy(4);
    faults[0].offline.push((minutes(6), minutes(40)));
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    fleet.run(minutes(6).saturating_sub(fleet_steps(&fleet)) + 1);
    fleet.apply(2, policy(&[25, 100], 0));
    // The canary is the agent that is away: the wave waits for it, then leaves it out and
    // the next agent takes its place.
    let waited = fleet.run_until_settled(minutes(10));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    assert!(waited * STEP_MS >= OFFLINE_GRACE_MS, "{waited} steps");
    let waves = waves_started(&fleet);
    assert_eq!(waves[1], ["edge-00"], "the canary it waited for");
    assert!(fleet.transitions.iter().any(|(_, m)| matches!(
        &m.transition,
        Transition::AgentsJoined { agents } if agents == &["edge-01"]
    )));
    assert!(
        fleet.agents[1..]
            .iter()
            .all(|a| a.serving_revision() == Some(2))
    );
    assert_eq!(
        fleet.rollout().map(|r| r.left_out.clone()),
        Some(vec!["edge-00".to_owned()])
    );
    fleet.run(minutes(41).saturating_sub(fleet_steps(&fleet)));
    assert!(all_serve(&fleet, 2), "back, it converges");
    assert_eq!(fleet.violations, []);
}

#[test]
fn an_agent_that_returns_to_a_committed_revision_it_dies_under_serves_nothing_below_its_floor() {
    // Away during the rollout of revision 2, back once it is committed: revision 2 kills it
    // three times and is put aside, and revision 1, its last-known-good, is below the floor
    // revision 2 raised. It serves nothing rather than anything below its floor.
    let mut faults = healthy(2);
    faults[1].offline.push((600, 1019));
    faults[1].crashes_on.insert(2);
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    fleet.run(minutes(5).saturating_sub(fleet_steps(&fleet)));
    fleet.apply(2, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(30));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.run(minutes(12));
    assert_eq!(fleet.agents[0].serving_revision(), Some(2));
    let returned = &fleet.agents[1];
    assert_eq!(returned.deaths, 3);
    assert_eq!(returned.serving_revision(), None);
    assert_eq!(fleet.violations, []);
}

#[test]
fn delayed_and_reordered_messages_still_roll_out_in_order_and_stale_states_are_refused() {
    // Every agent's messages take 1 to 4 steps each way; half of them get theirs out of order.
    let faults: Vec<Faults> = (0..8u64)
        .map(|i| Faults {
            delay: 1 + i % 4,
            reorder: i % 2 == 0,
            ..Faults::default()
        })
        .collect();
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.apply(2, policy(&[25, 100], WINDOW_MS));
    fleet.run_until_settled(minutes(10));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    let sizes: Vec<usize> = waves_started(&fleet)[1..].iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 6], "the waves in order, late replies and all");

    // Two applies in quick succession: both states are in flight at once.
    fleet.apply(3, policy(&[100], WINDOW_MS));
    fleet.run(1);
    fleet.apply(4, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(10));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.run(10);
    assert!(all_serve(&fleet, 4));
    let stale: u64 = fleet.agents.iter().map(|a| a.stale_refused).sum();
    assert!(
        stale > 0,
        "older states arrived after newer ones, and were refused"
    );
    assert_eq!(fleet.violations, []);
}

/// Agents with `faults`, revision 1 everywhere, then revision 2 applied in waves of 10%, 50%
/// and 100%.
fn second_rollout(faults: Vec<Faults>) -> Fleet {
    let mut fleet = Fleet::new(faults);
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.apply(2, policy(&[10, 50, 100], WINDOW_MS));
    fleet
}

#[test]
fn a_leader_change_mid_rollout_starts_no_wave_twice_and_the_rollout_completes() {
    let mut fleet = second_rollout(healthy(10));
    // The work lease moves every 7 steps (3.5 s): inside every health window of 10 s.
    let reads = fleet.full_reads;
    while matches!(fleet.phase(), Some(Phase::Progressing)) && fleet_steps(&fleet) < minutes(20) {
        fleet.run(7);
        fleet.change_leader();
    }
    fleet.run(1);
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    assert!(fleet.leader_changes > 3, "{}", fleet.leader_changes);
    assert_eq!(
        fleet.full_reads,
        reads + u64::from(fleet.leader_changes),
        "each new leader reads the fleet once"
    );
    let sizes: Vec<usize> = waves_started(&fleet)[1..].iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 4, 5], "each wave once, in order");
    fleet.run(4);
    assert!(all_serve(&fleet, 2));
    assert_eq!(fleet.violations, []);
}

#[test]
fn a_driver_behind_the_change_feed_reads_the_fleet_again_and_the_rollout_goes_on() {
    let mut fleet = Fleet::new(healthy(6));
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    // The follower hears nothing for a minute from the apply on: the reports the sessions
    // hand the driver still start its passes, and those find the catalog changed.
    fleet.stall_feed(minutes(1));
    fleet.apply(2, policy(&[50, 100], WINDOW_MS));
    let reads = fleet.full_reads;
    fleet.run(minutes(1) + 1);
    assert_eq!(
        fleet.full_reads,
        reads + 1,
        "told it lagged, the driver read the fleet again"
    );
    fleet.run_until_settled(minutes(10));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.run(4);
    assert!(all_serve(&fleet, 2));
    assert_eq!(fleet.violations, []);
}

#[test]
fn agents_held_by_a_replica_behind_get_each_state_late_and_the_rollout_completes() {
    // Half the fleet is held by a replica that hears the outbox's commits 6 steps late.
    let faults: Vec<Faults> = (0..8)
        .map(|i| Faults {
            elsewhere: i % 2 == 1,
            ..Faults::default()
        })
        .collect();
    let mut fleet = Fleet::new(faults);
    fleet.replica_lag = 6;
    fleet.apply(1, policy(&[100], WINDOW_MS));
    fleet.run_until_settled(minutes(5));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.apply(2, policy(&[25, 100], WINDOW_MS));
    fleet.run_until_settled(minutes(10));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    let sizes: Vec<usize> = waves_started(&fleet)[1..].iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 6]);
    fleet.run(10);
    assert!(all_serve(&fleet, 2));
    assert_eq!(fleet.violations, []);
}

#[test]
fn a_link_that_loses_desired_states_costs_a_reconnect_and_the_agent_converges() {
    let mut faults = healthy(4);
    faults[0].drops = true;
    let mut fleet = second_rollout(faults);
    fleet.run_until_settled(minutes(10));
    assert_eq!(fleet.phase(), Some(&Phase::Complete));
    fleet.run(4);
    assert!(all_serve(&fleet, 2));
    assert!(fleet.agents[0].lost > 0, "states were lost on the way");
    assert_eq!(fleet.violations, []);
}
