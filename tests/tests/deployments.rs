//! Deployments end to end: a control plane and agents on loopback, signed releases pushed,
//! a pipeline applied, agents fetching, verifying, loading and serving it.

use std::time::Duration;

use tern_e2e::{Agent, ControlPlane, Publisher, component, fast_config, http, path_str};
use tern_proto::api::{AgentStatus, AgentView, DeploymentView};

const TIMEOUT: Duration = Duration::from_secs(60);

const TOPK: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: scores }
spec:
  steps:
    - name: post
      plugin: topk:1
      config: { k: 2 }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: scores-everywhere }
spec:
  pipeline: scores
  rollout: { healthWindowSeconds: 0 }
"#;

fn deployment(cp: &ControlPlane, name: &str) -> anyhow::Result<DeploymentView> {
    Ok(serde_json::from_str(
        &cp.ternctl_ok(&["rollout", "status", name, "-o", "json"])?,
    )?)
}

#[test]
fn agents_fetch_verify_and_serve_a_pushed_pipeline() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    let plugin = tmp.path().join("topk.wasm");
    std::fs::copy(component("topk"), &plugin)?;
    publisher.sign_and_push(&cp, &plugin, "plugin", "topk", 1)?;

    let mut agents = Vec::new();
    for name in ["edge-1", "edge-2"] {
        let token = cp.token("site=a", "10m")?;
        agents.push(Agent::join(&cp, tmp.path(), name, &token, "")?);
        cp.wait_status(name, AgentStatus::Ready, TIMEOUT)?;
    }
    let manifest = tmp.path().join("scores.yaml");
    std::fs::write(&manifest, TOPK)?;
    cp.ternctl_ok(&["apply", "-f", &path_str(&manifest)?])?;

    let done = tern_e2e::wait_for(TIMEOUT, "the rollout to complete", || {
        deployment(&cp, "scores-everywhere")
            .ok()
            .filter(|d| d.rollout.as_ref().is_some_and(|r| r.phase == "Complete"))
    });
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            let logs: Vec<String> = agents.iter().map(|a| a.process.log_text()).collect();
            anyhow::bail!("{e}\n{}\n{}", cp.log_text(), logs.join("\n"));
        }
    };
    let rollout = done.rollout.expect("rollout");
    assert!(
        rollout.agents.iter().all(|a| a.serving == Some(1)),
        "{rollout:?}"
    );
    // Each agent verified and stored the artifact under its digest.
    // Completion commits the revision: one more generation, which the agent applies.
    let view: AgentView = tern_e2e::wait_for(TIMEOUT, "the committed generation applied", || {
        let view: AgentView = serde_json::from_str(
            &cp.ternctl_ok(&["describe", "agent", "edge-1", "-o", "json"])
                .ok()?,
        )
        .ok()?;
        (view.applied_generation.is_some() && view.applied_generation == view.desired_generation)
            .then_some(view)
    })?;
    assert_eq!(view.pipelines[0].serving, Some(1), "{view:?}");
    let stored = std::fs::read_dir(agents[0].dir.join("artifacts"))?.count();
    assert_eq!(stored, 2, "the artifact and the partial/ directory");

    // Local applications use it: the Open Inference Protocol and the raw endpoint.
    let api = agents[1].api_addr()?;
    let request = serde_json::json!({
        "id": "r1",
        "inputs": [{"name": "logits", "shape": [4], "datatype": "FP32", "data": [0.1, 3.0, 0.2, 2.0]}]
    });
    let (status, body) = http(
        api,
        "POST",
        "/v2/models/scores/infer",
        "application/json",
        request.to_string().as_bytes(),
    )?;
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_version"], "1");
    assert_eq!(answer["id"], "r1");
    let top: Vec<u64> = answer["predictions"][0]
        .as_array()
        .map(|p| p.iter().filter_map(|x| x["index"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(top, [1, 3], "{answer}");
    // A blob where the plugin wants tensors: a 400 that names the step.
    let (status, body) = http(
        api,
        "POST",
        "/v1/pipelines/scores/infer",
        "text/plain",
        b"hi",
    )?;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("step post"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = http(
        api,
        "POST",
        "/v1/pipelines/nothing/infer",
        "text/plain",
        b"hi",
    )?;
    assert_eq!(status, 404);
    let (status, _) = http(api, "GET", "/v2/health/ready", "text/plain", b"")?;
    assert_eq!(status, 200);
    let (status, body) = http(api, "GET", "/v2/models/scores", "text/plain", b"")?;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"post\""));
    Ok(())
}
