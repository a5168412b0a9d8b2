//! Faults during deployments, with real processes: agents that are away, or killed with
//! SIGKILL while downloading or loading, converge when they come back, and the revision they
//! served keeps answering in between.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tern_e2e::{Agent, FLEET_TIMEOUT, Fleet, Process};
use tern_proto::api::AgentStatus;

/// The digest of the release beside `file`.
fn digest_of(file: &std::path::Path) -> anyhow::Result<String> {
    Ok(tern_e2e::Publisher::release(file)?.signed.digest.hex())
}

/// Polls `check` every few milliseconds (for short windows a `ternctl` call would miss).
fn poll(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    tern_e2e::wait_for_every(Duration::from_millis(2), timeout, what, || {
        check().then_some(())
    })
}

#[test]
fn an_agent_offline_during_apply_converges_when_it_returns() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(2)?;
    fleet.agents[1].process.terminate(Duration::from_secs(10))?;
    fleet
        .cp
        .wait_status("edge-2", AgentStatus::NotReady, FLEET_TIMEOUT)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    fleet.rollout = "{ healthWindowSeconds: 0, offlineGraceSeconds: 1 }".into();
    fleet.apply("topk:1", 2)?;
    // The agent away past the grace does not hold the rollout back, and is listed.
    let view = fleet.wait_phase(1, "Complete")?;
    let left_out: Vec<String> = (view.rollout.iter())
        .flat_map(|r| &r.agents)
        .filter(|a| a.left_out)
        .map(|a| a.name.clone())
        .collect();
    assert_eq!(left_out, ["edge-2"]);
    assert_eq!(fleet.infer(0)?, 200);

    fleet.agents[1] = Agent::run(fleet.tmp.path(), "edge-2")?;
    fleet.wait_serving("edge-2", 1)?;
    assert_eq!(fleet.infer(1)?, 200);
    Ok(())
}

#[test]
fn sigkill_during_download_resumes_and_the_old_revision_serves_meanwhile() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(1)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_phase(1, "Complete")?;

    let big = fleet.topk("big", 256 << 20)?;
    fleet.push(&big, 2)?;
    let digest = digest_of(&big)?;
    let dir: PathBuf = fleet.agents[0].dir.join("artifacts");
    let partial = dir.join("partial").join(&digest);
    fleet.apply("topk:2", 2)?;
    poll("the download to start", FLEET_TIMEOUT, || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0)
    })?;
    fleet.agents[0].process.kill();
    let kept = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        kept > 0 && !dir.join(&digest).exists(),
        "killed mid-download: {kept} bytes kept"
    );

    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;
    // The revision it served before answers as soon as the agent is up again.
    let api = fleet.agents[0].api_addr()?;
    poll("the local API", FLEET_TIMEOUT, || tern_e2e::listening(api))?;
    assert_eq!(fleet.infer(0)?, 200);
    fleet.wait_serving("edge-1", 2)?;
    assert_eq!(fleet.infer(0)?, 200);
    let log = fleet.agents[0].process.log_text();
    assert!(log.contains("resuming download"), "{log}");
    Ok(())
}

/// `tern-agent run` of agent `name` under the agent's test hook
/// ([`HOLD_LOAD_VAR`](tern_agent::deployer::HOLD_LOAD_VAR)): each load a desired state starts
/// writes `GATE.loading` and waits while `gate` exists.
fn run_holding_loads(root: &Path, name: &str, gate: &Path) -> anyhow::Result<Agent> {
    let dir = root.join(name);
    let process = Process::spawn(
        Command::new(tern_e2e::bin("tern-agent"))
            .arg("run")
            .arg("--data-dir")
            .arg(&dir)
            .env(tern_agent::deployer::HOLD_LOAD_VAR, gate),
        root.join(format!("{name}-run-held.log")),
    )?;
    Ok(Agent {
        name: name.to_owned(),
        dir,
        process,
    })
}

/// The pipeline revisions that the run marker of the agent in `dir` (`D/run.json`, rewritten
/// atomically) lists under `field`: `serving` or `loading`.
fn run_marker(dir: &Path, field: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let marker: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("run.json"))?)?;
    let listed = marker[field]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("run.json lists no `{field}`: {marker}"))?;
    listed
        .iter()
        .map(|r| {
            r["pipeline"]
                .as_str()
                .zip(r["revision"].as_u64())
                .map(|(pipeline, revision)| (pipeline.to_owned(), revision))
                .ok_or_else(|| anyhow::anyhow!("run.json: unexpected entry {r}"))
        })
        .collect()
}

/// The revisions the stopped agent in `dir` has persisted as serving, and the exit ledger's
/// count of its deaths while it served or loaded `scores` revision 2.
fn persisted(dir: &Path) -> anyhow::Result<(Vec<(String, u64)>, u32)> {
    let data = tern_agent::AgentDataDir::new(dir);
    let store = tern_agent::store::AgentStore::open(&data.state(), &data.artifacts())?;
    let serving: Vec<(String, u64)> = (store.restore()?.serving.iter())
        .map(|p| (p.name.clone(), p.revision))
        .collect();
    Ok((serving, store.exit_ledger()?.count("scores", 2)))
}

#[test]
fn sigkill_while_loading_a_revision_converges_after_restart() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(1)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_phase(1, "Complete")?;

    // The agent again, under the test hook: the load of a new revision waits while the gate
    // exists (loads at start do not).
    let root = fleet.tmp.path().to_owned();
    let gate = root.join("hold-load");
    let held = root.join("hold-load.loading");
    std::fs::write(&gate, "")?;
    assert!(
        fleet.agents[0].process.terminate(Duration::from_secs(10))?,
        "{}",
        fleet.agents[0].process.log_text()
    );
    fleet.agents[0] = run_holding_loads(&root, "edge-1", &gate)?;
    let dir = fleet.agents[0].dir.clone();

    let two = fleet.topk("two", 0)?;
    fleet.push(&two, 2)?;
    let digest = digest_of(&two)?;
    fleet.apply("topk:2", 2)?;
    // Downloaded and verified, and the load of revision 2 has begun: it cannot finish.
    tern_e2e::wait_for(FLEET_TIMEOUT, "the held load of revision 2", || {
        (std::fs::read_to_string(&held).ok()? == "scores 2\n").then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", fleet.cp.agent_logs("edge-1")))?;
    let scores = |revision: u64| vec![("scores".to_owned(), revision)];
    assert_eq!(
        run_marker(&dir, "loading")?,
        scores(2),
        "the kill lands mid-load"
    );
    assert_eq!(run_marker(&dir, "serving")?, scores(1));
    fleet.agents[0].process.kill();

    // The dead run activated nothing: revision 1 stays the one to serve (its death is counted
    // at the next start); 2's artifact is whole.
    assert_eq!(persisted(&dir)?, (scores(1), 0));
    let artifacts = dir.join("artifacts");
    assert!(
        artifacts.join(&digest).exists() && !artifacts.join("partial").join(&digest).exists(),
        "revision 2's artifact is verified and in place"
    );

    // Restarted without the hook: it loads revision 2 again, from the start.
    fleet.agents[0] = Agent::run(&root, "edge-1")?;
    fleet.wait_serving("edge-1", 2)?;
    fleet.wait_phase(2, "Complete")?;
    let request = serde_json::json!({
        "inputs": [{"name": "logits", "shape": [3], "datatype": "FP32", "data": [0.5, 2.0, 1.0]}]
    });
    let (status, body) = tern_e2e::http(
        fleet.agents[0].api_addr()?,
        "POST",
        "/v2/models/scores/infer",
        "application/json",
        request.to_string().as_bytes(),
    )?;
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_version"], "2", "{answer}");
    // Nothing is left half-loaded, and the death was counted against the revision it loaded.
    assert!(run_marker(&dir, "loading")?.is_empty());
    assert_eq!(run_marker(&dir, "serving")?, scores(2));
    assert!(
        fleet.agents[0].process.terminate(Duration::from_secs(10))?,
        "{}",
        fleet.agents[0].process.log_text()
    );
    assert_eq!(persisted(&dir)?, (scores(2), 1));
    Ok(())
}

#[test]
fn agents_keep_serving_while_the_control_plane_is_away() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(1)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_phase(1, "Complete")?;
    if let Some(process) = fleet.cp.process.as_mut() {
        process.kill();
    }
    for _ in 0..20 {
        assert_eq!(fleet.infer(0)?, 200);
    }
    // And when it comes back, the agent reconnects and reports what it serves.
    fleet.cp.serve()?;
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[test]
fn a_control_plane_restored_from_an_older_backup_catches_up_with_its_agents_generations()
-> anyhow::Result<()> {
    let mut fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    // A backup of the control plane's data dir, taken while it is stopped.
    fleet.cp.stop()?;
    let backup = fleet.tmp.path().join("backup");
    copy_tree(&fleet.cp.dir, &backup)?;
    fleet.cp.serve()?;
    // Generations the backup will not know.
    for (k, revision) in [(3, 2), (4, 3)] {
        fleet.apply("topk:1", k)?;
        fleet.wait_phase(revision, "Complete")?;
    }
    let held = fleet.cp.wait_applied("edge-1", FLEET_TIMEOUT)?;
    let held = held.applied_generation.unwrap_or(0);

    // The control plane comes back from the backup: it would give generations the agent
    // already holds, which it refuses as replays.
    fleet.cp.stop()?;
    std::fs::remove_dir_all(&fleet.cp.dir)?;
    copy_tree(&backup, &fleet.cp.dir)?;
    fleet.cp.serve()?;
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    let view = fleet.agent_view("edge-1")?;
    assert!(
        view.applied_generation.unwrap_or(0) > held,
        "the agent applied a generation above the {held} it held: {view:?}"
    );
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}
