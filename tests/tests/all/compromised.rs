//! A compromised control plane: whoever holds its storage can send agents anything, and agents
//! still refuse what the publishers and the offline root did not sign. Each case rewrites the
//! stopped control plane's storage with the library that owns it, restarts it, and checks that
//! the agent refuses, reports why, and keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_control_plane::DataDir;
use tern_control_plane::backend::{SharedBackend, SledBackend, Table, Write};
use tern_control_plane::catalog::Catalog;
use tern_control_plane::deploy::AgentDesired;
use tern_control_plane::releases::ReleaseStore;
use tern_e2e::{Agent, ControlPlane, FLEET_TIMEOUT, Fleet, path_str};
use tern_proto::api::AgentStatus;
use tern_proto::release::{ArtifactKind, Digest, Release};
use tern_proto::signing::{SecretKey, Signed};
use tern_proto::trust::SignedTrustRoot;

/// A fleet of one agent serving `topk:1` (committed).
fn serving_fleet() -> anyhow::Result<Fleet> {
    let fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    assert_eq!(fleet.infer(0)?, 200);
    Ok(fleet)
}

/// Stops the control plane, lets `tamper` change its storage, starts it again.
fn tamper_with(
    cp: &mut ControlPlane,
    tamper: impl FnOnce(&SharedBackend, &ReleaseStore) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(process) = cp.process.as_mut() {
        process.terminate(Duration::from_secs(10))?;
    }
    {
        let dir = DataDir::new(&cp.dir);
        let backend: SharedBackend = Arc::new(SledBackend::open(&dir.registry(), 1 << 20)?);
        let (store, _) = tern_control_plane::artifacts::open_releases(
            backend.clone(),
            &tern_control_plane::artifacts::ArtifactLocation::Dir(dir.artifacts()),
        )?;
        tamper(&backend, &store)?;
        backend.flush()?;
    }
    cp.serve()
}

/// Stores release `topk:version` of `file` signed by `keys`, with its artifact, past every check
/// the control plane makes at push.
fn plant_release(
    store: &ReleaseStore,
    file: &Path,
    version: u64,
    keys: &[&SecretKey],
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file)?;
    let mut release = Signed::unsigned(Release {
        name: "topk".into(),
        kind: ArtifactKind::Plugin,
        version,
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
        created_ms: 0,
        expires_ms: None,
        annotations: Default::default(),
    });
    for key in keys {
        release.sign(key);
    }
    store.put_release(&release)?;
    store.append(&release.signed.digest, 0, &bytes)?;
    Ok(())
}

/// `ternctl trust rotate` signed with the offline root key, with `args` changing it.
fn rotate(fleet: &Fleet, args: &[&str]) -> anyhow::Result<String> {
    let root = path_str(&fleet.publisher.key("root.key"))?;
    let out = path_str(&fleet.tmp.path().join("trust-next.json"))?;
    let mut all = vec!["trust", "rotate", "--root-key", &root, "--out", &out];
    all.extend_from_slice(args);
    fleet.cp.ternctl_ok(&all)
}

fn key(fleet: &Fleet, name: &str) -> anyhow::Result<SecretKey> {
    Ok(SecretKey::from_pem(&std::fs::read_to_string(
        fleet.publisher.key(&format!("{name}.key")),
    )?)?)
}

/// Waits until the agent reports a refusal; returns its text.
fn refusal(fleet: &Fleet) -> anyhow::Result<String> {
    tern_e2e::wait_for(FLEET_TIMEOUT, "the agent's refusal", || {
        fleet.agent_view("edge-1").ok()?.refused
    })
}

#[test]
fn rejects_release_signed_by_an_unknown_key() -> anyhow::Result<()> {
    let mut fleet = serving_fleet()?;
    let file = fleet.topk("planted", 0)?;
    let stranger = SecretKey::generate();
    tamper_with(&mut fleet.cp, |_, store| {
        plant_release(store, &file, 2, &[&stranger])
    })?;
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("signed by 0 trusted key"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}

#[test]
fn rejects_release_with_fewer_signatures_than_the_threshold() -> anyhow::Result<()> {
    let mut fleet = serving_fleet()?;
    // The root rotates the trust root to two publishers, both required.
    let second = fleet.publisher.key("second");
    fleet
        .cp
        .ternctl_ok(&["keys", "generate", "--out", &path_str(&second)?])?;
    // What runs is co-signed before the root asks for two signatures, so it keeps running
    // (agents verify serving revisions again after a rotation).
    let serving = fleet.tmp.path().join("topk-one.wasm");
    fleet
        .publisher
        .sign(&fleet.cp, "second", &serving, "plugin", "topk", 1)?;
    fleet
        .cp
        .ternctl_ok(&["push", "--quiet", &path_str(&serving)?])?;
    rotate(
        &fleet,
        &[
            "--publisher",
            &path_str(&fleet.publisher.key("publisher.pub"))?,
            "--publisher",
            &path_str(&fleet.publisher.key("second.pub"))?,
            "--threshold",
            "2",
        ],
    )?;
    // The control plane itself refuses a release with one signature...
    let one = fleet.topk("one-signature", 0)?;
    let pushed = fleet
        .publisher
        .sign_and_push(&fleet.cp, &one, "plugin", "topk", 2);
    let error = pushed.expect_err("one signature of two");
    assert!(
        error
            .to_string()
            .contains("signed by 1 trusted key(s); 2 required"),
        "{error}"
    );
    // ...so a compromised one plants it.
    let publisher = key(&fleet, "publisher")?;
    tamper_with(&mut fleet.cp, |_, store| {
        plant_release(store, &one, 2, &[&publisher])
    })?;
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(
        reason.contains("signed by 1 trusted key(s); 2 required"),
        "{reason}"
    );
    fleet.wait_phase(2, "RolledBack")?;
    // The rollout's phase is the control plane's; the agent follows its next desired state.
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}

#[test]
fn rejects_trust_root_not_signed_by_the_current_root() -> anyhow::Result<()> {
    let mut fleet = serving_fleet()?;
    let attacker = SecretKey::generate();
    let forged = SignedTrustRoot::single_keys(2, &attacker, attacker.public(), 0);
    tamper_with(&mut fleet.cp, |backend, _| {
        let write = Write::new().put(Table("trust"), "root", serde_json::to_vec(&forged)?);
        Ok(backend.commit(write)?)
    })?;
    let reason = refusal(&fleet)?;
    assert!(
        reason.contains("not signed by the current root keys"),
        "{reason}"
    );
    assert_eq!(fleet.infer(0)?, 200);
    // The attacker's own release is still refused: the agent kept its trust root.
    let file = fleet.topk("attacker", 0)?;
    tamper_with(&mut fleet.cp, |_, store| {
        plant_release(store, &file, 2, &[&attacker])
    })?;
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("signed by 0 trusted key"), "{reason}");
    Ok(())
}

#[test]
fn rejects_a_replayed_older_desired_state_generation() -> anyhow::Result<()> {
    let mut fleet = serving_fleet()?;
    let id = fleet.agent_view("edge-1")?.id;
    // What the outbox holds for the agent now: a state signed for it, which it applied.
    let mut replayed = None;
    tamper_with(&mut fleet.cp, |backend, _| {
        replayed = backend.get(Table("outbox"), id.as_bytes())?;
        Ok(())
    })?;
    let replayed = replayed.context("the agent's signed state in the outbox")?;
    // A second rollout, so that the agent has applied several generations since.
    fleet.apply("topk:1", 3)?;
    fleet.wait_phase(2, "Complete")?;
    let applied = tern_e2e::wait_for(FLEET_TIMEOUT, "the committed generation applied", || {
        let view = fleet.agent_view("edge-1").ok()?;
        view.applied_generation
            .filter(|&g| Some(g) == view.desired_generation && g >= 4)
    })?;
    // The control plane's records are rolled back: its record to an old generation that ran
    // nothing, its outbox to the old signed state, sent again when the agent reconnects.
    tamper_with(&mut fleet.cp, |backend, _| {
        let old = AgentDesired {
            generation: 1,
            trust_version: Some(1),
            ..AgentDesired::default()
        };
        let write = Write::new()
            .put(Table("desired"), id.as_bytes(), serde_json::to_vec(&old)?)
            .put(Table("outbox"), id.as_bytes(), replayed);
        Ok(backend.commit(write)?)
    })?;
    let reason = refusal(&fleet)?;
    assert!(
        reason.contains(&format!("older than generation {applied}")),
        "{reason}"
    );
    assert_eq!(fleet.infer(0)?, 200, "still serving");
    Ok(())
}

/// The floors the stopped agent `i` of `fleet` kept.
fn floors(
    fleet: &mut Fleet,
    i: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, tern_proto::release::VersionFloor>> {
    let agent = &mut fleet.agents[i];
    agent.process.terminate(Duration::from_secs(10))?;
    let dir = tern_agent::AgentDataDir::new(&agent.dir);
    let store = tern_agent::store::AgentStore::open(&dir.state(), &dir.artifacts())?;
    Ok(store.restore()?.floors)
}

#[test]
fn rejects_a_changed_step_under_the_serving_revision_number() -> anyhow::Result<()> {
    let mut fleet = serving_fleet()?;
    let file = fleet.topk("swapped", 0)?;
    let stranger = SecretKey::generate();
    let id = fleet.agent_view("edge-1")?.id;
    // Revision 1, as stored, now runs a release nobody trusted signed: same number, other step.
    // Its signed state is gone from the outbox, so the control plane signs it again from the
    // forged revision.
    tamper_with(&mut fleet.cp, |backend, store| {
        backend.commit(Write::new().delete(Table("outbox"), id.as_bytes()))?;
        plant_release(store, &file, 2, &[&stranger])?;
        let digest = Digest::of(&std::fs::read(&file)?);
        let catalog = Catalog::new(backend.clone());
        let mut record = catalog.revision("scores", 1)?.context("revision 1")?;
        record.manifest.spec.steps[0].plugin = Some("topk:2".into());
        record.pinned[0].reference = "topk:2".into();
        record.pinned[0].digest = digest;
        let lock = catalog.lock()?;
        lock.put_pipeline(&record);
        lock.commit()?;
        Ok(())
    })?;
    let reason = fleet.failure("edge-1", 1)?;
    assert!(reason.contains("signed by 0 trusted key"), "{reason}");
    assert_eq!(fleet.infer(0)?, 200, "the checked revision keeps serving");
    let floors = floors(&mut fleet, 0)?;
    assert_eq!(
        floors.get("topk").map(|f| f.version),
        Some(1),
        "the committed flag of the forged step raised no floor"
    );
    Ok(())
}

#[test]
fn a_trust_rotation_that_drops_the_publisher_stops_what_it_signed() -> anyhow::Result<()> {
    let fleet = serving_fleet()?;
    let second = fleet.publisher.key("second");
    fleet
        .cp
        .ternctl_ok(&["keys", "generate", "--out", &path_str(&second)?])?;
    // The offline root replaces the only publisher of `topk:1`.
    rotate(
        &fleet,
        &[
            "--publisher",
            &path_str(&fleet.publisher.key("second.pub"))?,
        ],
    )?;
    let reason = fleet.failure("edge-1", 1)?;
    assert!(reason.contains("no longer verifies"), "{reason}");
    assert!(reason.contains("signed by 0 trusted key"), "{reason}");
    assert_eq!(fleet.infer(0)?, 503, "it stopped serving");
    Ok(())
}

#[test]
fn an_expired_trust_root_keeps_what_runs_and_refuses_new_releases() -> anyhow::Result<()> {
    let fleet = serving_fleet()?;
    // Long enough for the warning to be seen before the expiry on a loaded machine.
    rotate(&fleet, &["--expires", "20s"])?;
    let expires = fleet.cp.ternctl_ok(&["trust", "show"])?;
    assert!(!expires.contains("Expires:         never"), "{expires}");
    // Within 30 days of its expiry the agent warns, and `describe agent` shows it.
    tern_e2e::wait_for(FLEET_TIMEOUT, "the agent's warning", || {
        let view = fleet.agent_view("edge-1").ok()?;
        view.warnings
            .iter()
            .any(|w| w.contains("expires at"))
            .then_some(())
    })?;
    assert!(
        fleet
            .cp
            .ternctl_ok(&["describe", "agent", "edge-1"])?
            .contains("Warning:")
    );
    tern_e2e::wait_for(FLEET_TIMEOUT, "the expiry", || {
        let view = fleet.agent_view("edge-1").ok()?;
        view.warnings
            .iter()
            .any(|w| w.contains("expired at"))
            .then_some(())
    })?;
    // What runs keeps running; a new release is refused.
    assert_eq!(fleet.infer(0)?, 200);
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}

#[test]
fn an_agent_offline_across_three_rotations_takes_the_chain_of_roots() -> anyhow::Result<()> {
    let mut fleet = serving_fleet()?;
    fleet.agents[0].process.terminate(Duration::from_secs(10))?;
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::NotReady, FLEET_TIMEOUT)?;
    // Three rotations while it is away, each to new root keys (signed by the root before and
    // the new one); the last also replaces the publisher.
    let mut current = fleet.publisher.key("root.key");
    for n in 2..=4 {
        let next = fleet.publisher.key(&format!("root{n}"));
        fleet
            .cp
            .ternctl_ok(&["keys", "generate", "--out", &path_str(&next)?])?;
        let out = path_str(&fleet.tmp.path().join(format!("trust-{n}.json")))?;
        let (current_key, next_key) = (path_str(&current)?, path_str(&next.with_extension("key"))?);
        let mut args = vec![
            "trust",
            "rotate",
            "--root-key",
            &current_key,
            "--new-root-key",
            &next_key,
            "--out",
            &out,
        ];
        let successor = fleet.publisher.key("successor");
        let successor_pub = path_str(&successor.with_extension("pub"))?;
        if n == 4 {
            fleet
                .cp
                .ternctl_ok(&["keys", "generate", "--out", &path_str(&successor)?])?;
            args.extend(["--publisher", &successor_pub]);
        }
        fleet.cp.ternctl_ok(&args)?;
        current = next.with_extension("key");
    }
    let shown = fleet.cp.ternctl_ok(&["trust", "show"])?;
    assert!(shown.contains('4'), "{shown}");

    // Back, it walks versions 2, 3 and 4, each checked against the one before, and runs a
    // release only the newest root's publisher signed.
    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;
    let file = fleet.topk("successor", 0)?;
    fleet
        .publisher
        .sign(&fleet.cp, "successor", &file, "plugin", "topk", 2)?;
    fleet
        .cp
        .ternctl_ok(&["push", "--quiet", &path_str(&file)?])?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    assert_eq!(fleet.infer(0)?, 200);
    let view = fleet.agent_view("edge-1")?;
    assert_eq!(view.refused, None, "{view:?}");
    let log = fleet.cp.agent_logs("edge-1");
    for version in 2..=4 {
        assert!(
            log.contains(&format!("trust root pinned version={version}")),
            "version {version} pinned in turn:\n{log}"
        );
    }
    Ok(())
}
