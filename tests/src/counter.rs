//! The `count` pipeline of the crash-loop tests and bench: one model step running
//! `counter:VERSION` ([`crate::assets::counter_model`]): version 1 doubles `n`, version 2 sums
//! `0..n` and dies on a large `n` under a memory limit.

use std::net::SocketAddr;

use crate::{FLEET_TIMEOUT, Fleet, wait_for};

/// The `count` pipeline of one model step, `release` pinned, with `rollout` (YAML flow
/// mapping).
pub fn manifest(release: &str, rollout: &str) -> String {
    format!(
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: {{ name: count }}
spec:
  steps:
    - name: count
      model: {release}
      device: cpu
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: {{ name: count }}
spec:
  pipeline: count
  rollout: {rollout}
"#
    )
}

/// Pushes `counter:1` and `counter:2`, and deploys `counter:1` to every agent of `fleet`.
pub fn serve_version_one(fleet: &Fleet) -> anyhow::Result<()> {
    for version in [1, 2] {
        let model = fleet.tmp.path().join(format!("counter-{version}.onnx"));
        std::fs::write(&model, crate::assets::counter_model(version))?;
        fleet
            .publisher
            .sign_and_push(&fleet.cp, &model, "model", "counter", version)?;
    }
    apply(fleet, "counter:1", "{ healthWindowSeconds: 0 }")?;
    fleet.wait_deployment("count", 1, "Complete")?;
    Ok(())
}

/// Applies the `count` pipeline and deployment with `release` and `rollout`.
pub fn apply(fleet: &Fleet, release: &str, rollout: &str) -> anyhow::Result<()> {
    let file = fleet.tmp.path().join("count.yaml");
    fleet.cp.apply_manifest(&file, manifest(release, rollout))?;
    Ok(())
}

/// Asks the agent at `addr` to count to `n`: the answer, or `None` when there was none (the
/// agent died, or is not up).
pub fn count(addr: SocketAddr, n: f64) -> Option<f64> {
    let body = serde_json::json!({
        "inputs": [{"name": "n", "shape": [1], "datatype": "FP32", "data": [n]}]
    });
    let (status, body) = crate::http(
        addr,
        "POST",
        "/v2/models/count/infer",
        "application/json",
        body.to_string().as_bytes(),
    )
    .ok()?;
    let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
    (status == 200).then(|| answer["outputs"][0]["data"][0].as_f64())?
}

/// The revision answering at `addr`, from its answer to `n = 3` (6: version 1; 3: version 2).
pub fn revision(addr: SocketAddr) -> Option<u64> {
    match count(addr, 3.0)? {
        6.0 => Some(1),
        3.0 => Some(2),
        _ => None,
    }
}

/// Waits until the agent at `addr` answers with `revision`.
pub fn wait_revision(addr: SocketAddr, revision: u64, what: &str) -> anyhow::Result<()> {
    wait_for(FLEET_TIMEOUT, what, || {
        (self::revision(addr) == Some(revision)).then_some(())
    })
}
