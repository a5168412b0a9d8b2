//! Attacks and faults on deployments, with real processes: each is refused by the agent,
//! reported to the control plane with the reason, and the running revision keeps serving.

use std::time::Duration;

use tern_e2e::{Agent, FLEET_TIMEOUT, Fleet, path_str};
use tern_proto::api::AgentStatus;

#[test]
fn tampered_artifact_bytes_are_refused_and_the_running_revision_keeps_serving() -> anyhow::Result<()>
{
    let fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    assert_eq!(fleet.infer(0)?, 200);

    // The control plane's copy of a new artifact is altered after it was verified there.
    let two = fleet.topk("two", 0)?;
    fleet.push(&two, 2)?;
    let release = tern_e2e::Publisher::release(&two)?;
    let stored = fleet
        .cp
        .dir
        .join("artifacts")
        .join(release.signed.digest.hex());
    let mut bytes = std::fs::read(&stored)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes)?;

    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("has digest"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    assert_eq!(fleet.infer(0)?, 200, "revision 1 keeps serving");
    assert_eq!(fleet.agent_view("edge-1")?.pipelines[0].serving, Some(1));
    Ok(())
}

#[test]
fn a_download_longer_than_its_release_is_refused_and_no_partial_file_is_kept() -> anyhow::Result<()>
{
    let fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    let two = fleet.topk("two", 0)?;
    fleet.push(&two, 2)?;
    let release = tern_e2e::Publisher::release(&two)?;
    let digest = release.signed.digest.hex();
    // The control plane's copy grows past what the release signs.
    let stored = fleet.cp.dir.join("artifacts").join(&digest);
    let mut bytes = std::fs::read(&stored)?;
    bytes.extend_from_slice(&[0x5a; 4096]);
    std::fs::write(&stored, &bytes)?;
    // And the agent holds a partial download already longer than the release.
    let partial = fleet.agents[0]
        .dir
        .join("artifacts")
        .join("partial")
        .join(&digest);
    std::fs::create_dir_all(partial.parent().expect("a parent"))?;
    std::fs::write(&partial, &bytes)?;

    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(
        reason.contains(&format!(
            "offers {} bytes; the release says {}",
            bytes.len(),
            release.signed.size
        )),
        "{reason}"
    );
    fleet.wait_phase(2, "RolledBack")?;
    assert!(
        !partial.exists(),
        "the partial file longer than the release is deleted"
    );
    assert!(
        !fleet.agents[0].dir.join("artifacts").join(&digest).exists(),
        "nothing is stored under the digest"
    );
    assert_eq!(fleet.infer(0)?, 200, "revision 1 keeps serving");
    Ok(())
}

#[test]
fn release_below_the_version_floor_is_refused_also_after_the_agent_restarts() -> anyhow::Result<()>
{
    let mut fleet = Fleet::start(1)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(1, "Complete")?;
    // Completion commits topk:2 on the agent: its floor is now 2.
    fleet.cp.wait_applied("edge-1", FLEET_TIMEOUT)?;

    fleet.apply("topk:1", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("below the version floor 2"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    assert_eq!(fleet.infer(0)?, 200);

    // After a restart the floor still holds.
    fleet.agents[0].process.terminate(Duration::from_secs(10))?;
    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(
        fleet.infer(0)?,
        200,
        "serves its revision again after the restart"
    );
    fleet.apply("topk:1", 3)?;
    let reason = fleet.failure("edge-1", 3)?;
    assert!(reason.contains("below the version floor 2"), "{reason}");
    fleet.wait_phase(3, "RolledBack")?;
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}

#[test]
fn expired_release_is_refused_by_the_agent() -> anyhow::Result<()> {
    let fleet = Fleet::start(1)?;
    fleet.serve_topk()?;

    let short = fleet.topk("short", 0)?;
    fleet.cp.ternctl_ok(&[
        "sign",
        "--key",
        &path_str(&fleet.publisher.key("publisher.key"))?,
        "--kind",
        "plugin",
        "--name",
        "topk",
        "--version",
        "2",
        "--expires",
        "2s",
        &path_str(&short)?,
    ])?;
    fleet
        .cp
        .ternctl_ok(&["push", "--quiet", &path_str(&short)?])?;
    let expires_ms = tern_e2e::Publisher::release(&short)?
        .signed
        .expires_ms
        .ok_or_else(|| anyhow::anyhow!("the release has no expiry"))?;
    tern_e2e::wait_for(FLEET_TIMEOUT, "the release's expiry", || {
        (tern_clock::unix_millis_now() > expires_ms).then_some(())
    })?;
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("expired"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}

/// Each way a path climbs out of a name: plain, percent-encoded, and encoded twice.
const CLIMBS: [&str; 5] = [
    "..",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252F..%252Fetc",
    "x%2F..%2F..%2Fca.key",
];

#[test]
fn names_that_climb_out_of_a_path_are_refused_everywhere_a_request_carries_one()
-> anyhow::Result<()> {
    let fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    let client = fleet.cp.admin_client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Every name a request to the admin API carries.
    let admin = |climb: &str| -> Vec<(hyper::Method, String)> {
        use hyper::Method;
        vec![
            (Method::GET, format!("/v1/agents/{climb}")),
            (Method::POST, format!("/v1/agents/{climb}/revoke")),
            (Method::POST, format!("/v1/agents/{climb}/labels")),
            (Method::DELETE, format!("/v1/tokens/{climb}")),
            (Method::GET, format!("/v1/deployments/{climb}")),
            (
                Method::POST,
                format!("/v1/deployments/{climb}/rollout/{climb}"),
            ),
            (Method::GET, format!("/v1/drift/{climb}")),
            (Method::GET, format!("/v1/experiments/{climb}")),
            (Method::GET, format!("/v1/series/pipelines/{climb}")),
            (Method::GET, format!("/v1/artifacts/{climb}")),
            (Method::PUT, format!("/v1/artifacts/{climb}")),
            (Method::GET, format!("/v1/releases?name={climb}")),
        ]
    };
    for climb in CLIMBS {
        for (method, path) in admin(climb) {
            let answer = runtime.block_on(client.send(method.clone(), &path, Some(b"{}".to_vec())));
            match answer {
                Err(tern_transport::https::HttpsError::Status { status, .. }) => {
                    assert!((400..500).contains(&status), "{method} {path}: {status}")
                }
                Ok(body) => assert!(
                    !String::from_utf8_lossy(&body).contains("PRIVATE KEY"),
                    "{method} {path} answered with a key"
                ),
                Err(e) => panic!("{method} {path}: {e}"),
            }
        }
    }
    // The agent's local API: pipeline and model names.
    let api = fleet.agents[0].api_addr()?;
    for climb in CLIMBS {
        for (method, path) in [
            ("POST", format!("/v1/pipelines/{climb}/infer")),
            ("POST", format!("/v2/models/{climb}/infer")),
            ("GET", format!("/v2/models/{climb}")),
            ("GET", format!("/v2/models/{climb}/ready")),
        ] {
            let (status, _) = tern_e2e::http(api, method, &path, "application/json", b"{}")?;
            assert!((400..500).contains(&status), "{method} {path}: {status}");
        }
    }
    // Both still serve what they serve.
    assert_eq!(fleet.infer(0)?, 200);
    assert!(fleet.cp.agents()?.iter().any(|a| a.name == "edge-1"));
    Ok(())
}

#[test]
fn a_real_precompiled_cwasm_pushed_as_a_plugin_is_refused_and_the_running_revision_keeps_serving()
-> anyhow::Result<()> {
    let fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    // The agent's own compile cache holds wasmtime's serialized form of the plugin it runs:
    // native code that must never come from the network.
    let compiled = fleet.agents[0].dir.join("compiled");
    let cwasm = std::fs::read_dir(&compiled)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .ok_or_else(|| anyhow::anyhow!("no .cwasm in {}", compiled.display()))?;
    let pushed = fleet.tmp.path().join("topk.cwasm");
    std::fs::copy(&cwasm, &pushed)?;
    fleet.push(&pushed, 2)?;
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("not WebAssembly"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200);
    Ok(())
}
