//! Faults: restarts, kills and orderly shutdown, with real processes on loopback.

use std::time::Duration;

use tern_e2e::{Agent, ControlPlane, fast_config};
use tern_proto::api::AgentStatus;

const TIMEOUT: Duration = tern_e2e::FLEET_TIMEOUT;

#[test]
fn control_plane_restart_keeps_registry_and_agents_come_back_ready() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(tmp.path(), fast_config)?;
    let mut agents = Vec::new();
    for name in ["north", "south"] {
        let token = cp.token("site=x", "10m")?;
        agents.push(Agent::join(&cp, tmp.path(), name, &token, "")?);
        cp.wait_status(name, AgentStatus::Ready, TIMEOUT)?;
    }
    let before = cp.agents()?;

    // SIGKILL: nothing gets flushed at the end.
    // `kill` waits for the process to be gone, so its ports and locks are free.
    cp.process.as_mut().expect("running").kill();
    cp.serve()?;

    let after = cp.agents()?;
    assert_eq!(after.len(), 2, "registry lost agents: {after:?}");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (&b.id, &b.name, &b.labels, &b.first_seen),
            (&a.id, &a.name, &a.labels, &a.first_seen)
        );
    }
    for name in ["north", "south"] {
        cp.wait_status(name, AgentStatus::Ready, TIMEOUT)?;
    }
    for agent in &mut agents {
        assert!(
            !agent.process.exited(),
            "agent {} exited while the control plane was away",
            agent.name
        );
    }
    Ok(())
}

#[test]
fn agent_killed_with_sigkill_turns_not_ready() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let mut doomed = Agent::join(&cp, tmp.path(), "doomed", &cp.token("", "10m")?, "")?;
    let _steady = Agent::join(&cp, tmp.path(), "steady", &cp.token("", "10m")?, "")?;
    cp.wait_status("doomed", AgentStatus::Ready, TIMEOUT)?;
    cp.wait_status("steady", AgentStatus::Ready, TIMEOUT)?;

    doomed.process.kill();
    cp.wait_status("doomed", AgentStatus::NotReady, Duration::from_secs(10))?;
    let steady = cp
        .agents()?
        .into_iter()
        .find(|a| a.name == "steady")
        .expect("listed");
    assert_eq!(steady.status, AgentStatus::Ready);

    // It comes back by itself when restarted.
    let _again = Agent::run(tmp.path(), "doomed")?;
    cp.wait_status("doomed", AgentStatus::Ready, TIMEOUT)?;
    Ok(())
}

#[test]
fn agent_shuts_down_cleanly_on_sigterm() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |c| {
        fast_config(c);
        // Long enough that only an orderly close can explain a prompt NotReady.
        c.not_ready_after = Duration::from_secs(60);
    })?;
    let mut agent = Agent::join(&cp, tmp.path(), "polite", &cp.token("", "10m")?, "")?;
    cp.wait_status("polite", AgentStatus::Ready, TIMEOUT)?;
    assert!(
        agent.process.terminate(Duration::from_secs(10))?,
        "agent exited with failure:\n{}",
        agent.process.log_text()
    );
    cp.wait_status("polite", AgentStatus::NotReady, Duration::from_secs(5))?;
    assert!(agent.process.log_text().contains("agent stopped"));
    Ok(())
}

#[test]
fn agent_waits_for_an_absent_control_plane_and_connects_when_it_appears() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(tmp.path(), fast_config)?;
    let token = cp.token("", "10m")?;
    let out = tern_e2e::join_once(cp.agent_addr, tmp.path(), "patient", &token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.stop()?;

    let mut agent = Agent::run(tmp.path(), "patient")?;
    // Up, serving its local API, and not connected: it waits rather than gives up.
    let api = agent.api_addr()?;
    tern_e2e::wait_for(TIMEOUT, "the agent's local API, not connected", || {
        let (status, body) = tern_e2e::http(api, "GET", "/v1/agent", "text/plain", b"").ok()?;
        let info: serde_json::Value = serde_json::from_slice(&body).ok()?;
        (status == 200 && info["connected"] == false).then_some(())
    })?;
    assert!(
        !agent.process.exited(),
        "agent gave up:\n{}",
        agent.process.log_text()
    );
    cp.serve()?;
    cp.wait_status("patient", AgentStatus::Ready, TIMEOUT)?;
    Ok(())
}
