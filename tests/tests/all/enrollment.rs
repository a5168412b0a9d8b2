//! Enrollment and the fleet view, with real processes on loopback.

use std::time::Duration;

use tern_e2e::{Agent, ControlPlane, fast_config, join_once};
use tern_proto::api::AgentStatus;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long GPU discovery may take: the agent gives its probe child up to
/// [`GPU_PROBE_TIMEOUT`](tern_agent::capacity::GPU_PROBE_TIMEOUT), and the agent must be up and
/// have started it first.
const GPU_DISCOVERY_TIMEOUT: Duration =
    tern_agent::capacity::GPU_PROBE_TIMEOUT.saturating_add(Duration::from_secs(15));

#[test]
fn three_agents_enroll_and_are_listed_ready() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let mut agents = Vec::new();
    for (name, site) in [("edge-1", "a"), ("edge-2", "a"), ("edge-3", "b")] {
        let token = cp.token(&format!("site={site}"), "10m")?;
        agents.push(Agent::join(&cp, tmp.path(), name, &token, "tier=edge")?);
    }
    for name in ["edge-1", "edge-2", "edge-3"] {
        cp.wait_status(name, AgentStatus::Ready, READY_TIMEOUT)?;
    }
    let listed = cp.agents()?;
    assert_eq!(
        listed.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["edge-1", "edge-2", "edge-3"]
    );
    for a in &listed {
        assert_eq!(a.status, AgentStatus::Ready);
        assert_eq!(
            a.labels.get("tier").map(String::as_str),
            Some("edge"),
            "{a:?}"
        );
        assert_eq!(a.version, env!("CARGO_PKG_VERSION"));
        assert!(
            a.capacity.cores >= 1 && a.capacity.memory_bytes > 0,
            "{a:?}"
        );
        assert!(
            humantime::parse_rfc3339(&a.last_seen).is_ok(),
            "last_seen {:?}",
            a.last_seen
        );
    }
    assert_eq!(listed[2].labels.get("site").map(String::as_str), Some("b"));

    // The table names every agent and its status; describe shows one.
    let table = String::from_utf8(cp.ternctl(&["get", "agents"]).stdout)?;
    assert!(
        table.contains("edge-3") && table.contains("Ready"),
        "{table}"
    );
    let described = cp.ternctl(&["describe", "agent", "edge-2"]);
    assert!(described.status.success());
    let text = String::from_utf8(described.stdout)?;
    assert!(text.contains("edge-2") && text.contains("site=a"), "{text}");
    Ok(())
}

#[test]
fn agents_report_gpus_when_a_gpu_is_required() -> anyhow::Result<()> {
    // Where no adapter is required the agent may find none: nothing would be shown.
    if !tern_skips::required("TERN_REQUIRE_GPU") {
        tern_skips::skip("TERN_REQUIRE_GPU is not 1: an adapter is not known to be there");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let token = cp.token("", "10m")?;
    let agent = Agent::join(&cp, tmp.path(), "gpu-host", &token, "")?;
    let view = tern_e2e::wait_for(GPU_DISCOVERY_TIMEOUT, "GPU discovery", || {
        cp.agents()
            .ok()?
            .into_iter()
            .find(|a| a.name == "gpu-host" && !a.gpus.is_empty())
    })
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.process.log_text()))?;
    assert_eq!(view.gpus.len(), view.capacity.gpus.len());
    // At least one adapter (the wait required it); every one reported names a real backend.
    assert!(
        view.capacity
            .gpus
            .iter()
            .all(|g| g.backend == "vulkan" || g.backend == "metal" || g.backend == "dx12"),
        "{:?}",
        view.capacity.gpus
    );
    Ok(())
}

#[test]
fn connected_agent_idles_without_burning_cpu() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let agent = Agent::join(&cp, tmp.path(), "quiet", &cp.token("", "10m")?, "")?;
    cp.wait_status("quiet", AgentStatus::Ready, READY_TIMEOUT)?;
    // Let GPU discovery finish (its result is cached in the data dir): the busy loops worth
    // catching start after it.
    // A probe that fails writes no gpus.json: the agent's log says why.
    tern_e2e::wait_for(GPU_DISCOVERY_TIMEOUT, "GPU discovery", || {
        agent.dir.join("gpus.json").exists().then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.process.log_text()))?;
    let pid = agent.process.pid();
    let before = tern_e2e::cpu_time(pid)?;
    // The measurement window, not a wait for something to happen.
    std::thread::sleep(Duration::from_secs(3));
    let used = tern_e2e::cpu_time(pid)? - before;
    // Heartbeats every 200 ms cost microseconds; a spinning task costs a whole core.
    assert!(
        used < Duration::from_millis(300),
        "idle agent used {used:?} of CPU in 3 s"
    );
    Ok(())
}

#[test]
fn reused_token_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let token = cp.token("", "10m")?;
    let first = join_once(cp.agent_addr, tmp.path(), "first", &token);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = join_once(cp.agent_addr, tmp.path(), "second", &token);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already used"), "{err}");
    assert!(
        !tmp.path().join("second/agent.toml").exists(),
        "a refused join must not look enrolled"
    );
    assert_eq!(cp.agents()?.len(), 1);
    Ok(())
}

#[test]
fn expired_token_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let token = cp.token("", "1s")?;
    tern_e2e::wait_for(
        READY_TIMEOUT,
        "the control plane to list the token expired",
        || {
            let tokens: Vec<tern_proto::api::TokenView> =
                serde_json::from_str(&cp.admin_get("/v1/tokens").ok()?).ok()?;
            (!tokens.is_empty() && tokens.iter().all(|t| t.expired)).then_some(())
        },
    )?;
    let out = join_once(cp.agent_addr, tmp.path(), "late", &token);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired"), "{err}");
    assert!(cp.agents()?.is_empty());
    Ok(())
}

#[test]
fn token_for_another_control_plane_is_refused_by_the_agent() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ours = ControlPlane::start(&tmp.path().join("ours"), fast_config)?;
    let theirs = ControlPlane::start(&tmp.path().join("theirs"), fast_config)?;
    let foreign = theirs.token("", "10m")?;
    let out = join_once(ours.agent_addr, tmp.path(), "confused", &foreign);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CA does not match the enrollment token"),
        "{err}"
    );
    // The agent stopped at the TLS handshake: the control plane it dialled never saw a request.
    assert!(
        !ours.log_text().contains("/v1/enroll"),
        "{}",
        ours.log_text()
    );
    let out = join_once(theirs.agent_addr, tmp.path(), "rightful", &foreign);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ours.agents()?.is_empty());
    Ok(())
}

#[test]
fn ternctl_exit_codes_distinguish_usage_from_failure() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    assert_eq!(cp.ternctl(&["get", "agents"]).status.code(), Some(0));
    assert_eq!(cp.ternctl(&["get", "agentz"]).status.code(), Some(2));
    assert_eq!(
        cp.ternctl(&["get", "agents", "-o", "xml"]).status.code(),
        Some(2)
    );
    let missing = cp.ternctl(&["describe", "agent", "nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no agent named `nobody`"));

    // A wrong admin credential is refused by the API.
    let out = std::process::Command::new(tern_e2e::bin("ternctl"))
        .args(["--config"])
        .arg(cp.ternctl_config())
        .args(["get", "agents"])
        .env("TERN_ADMIN_TOKEN", "not-the-token")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid admin credential"));
    Ok(())
}
