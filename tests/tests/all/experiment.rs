//! A/B variants end to end: a deployment splits a pipeline's model step 90/10 between two
//! model releases; a real agent routes 10,000 requests by weight (sticky per key), names the
//! variant in each answer, keeps telemetry per variant, and `ternctl experiment status`
//! compares them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tern_e2e::{FLEET_TIMEOUT, Fleet, http_with, wait_for};
use tern_proto::api::ExperimentView;

const REQUESTS: usize = 10_000;

const MANIFEST: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: churn }
spec:
  steps:
    - name: classify
      model: mlp:7
      device: cpu
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: churn-ab }
spec:
  pipeline: churn
  rollout: { healthWindowSeconds: 0 }
  variants:
    - { model: mlp:7, weight: 90 }
    - { model: mlp:8, weight: 10 }
"#;

/// One v2 request; the status and the `x-tern-variant` header.
fn infer(addr: SocketAddr, key: Option<&str>) -> anyhow::Result<(u16, Option<String>)> {
    let data: Vec<f32> = (0..128).map(|i| (i % 7) as f32 * 0.25).collect();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [4, 32], "datatype": "FP32", "data": data}]
    })
    .to_string();
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-Tern-Key", k)).into_iter().collect();
    let (status, mut answer, _) = http_with(
        addr,
        "POST",
        "/v2/models/churn/infer",
        "application/json",
        &headers,
        body.as_bytes(),
    )?;
    Ok((status, answer.remove("x-tern-variant")))
}

#[test]
fn a_90_10_split_routes_by_weight_sticks_to_keys_and_compares_variants() -> anyhow::Result<()> {
    let fleet = Fleet::start_with(1, &["--telemetry-interval", "1s"])?;
    for version in [7, 8] {
        let model = fleet.tmp.path().join(format!("mlp-{version}.onnx"));
        std::fs::copy(
            tern_e2e::examples_dir().join("models/mlp/model.onnx"),
            &model,
        )?;
        fleet
            .publisher
            .sign_and_push(&fleet.cp, &model, "model", "mlp", version)?;
    }
    let manifest = fleet.tmp.path().join("churn.yaml");
    // A variant that is not pushed is refused, naming the field.
    let stderr = fleet
        .cp
        .apply_refused(&manifest, MANIFEST.replace("mlp:8", "mlp:9"))?;
    assert!(stderr.contains("spec.variants[1].model"), "{stderr}");
    fleet.cp.apply_manifest(&manifest, MANIFEST)?;
    fleet.wait_deployment("churn-ab", 1, "Complete")?;
    let addr = fleet.agents[0].api_addr()?;

    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..REQUESTS {
        let (status, variant) = infer(addr, None)?;
        anyhow::ensure!(status == 200, "request failed: {status}");
        *answered
            .entry(variant.unwrap_or_else(|| "none".into()))
            .or_default() += 1;
    }
    let share = answered.get("mlp:8").copied().unwrap_or(0) as f64 * 100.0 / REQUESTS as f64;
    assert!(
        (7.0..=13.0).contains(&share),
        "mlp:8 got {share}% of the requests: {answered:?}"
    );
    assert_eq!(answered.values().sum::<usize>(), REQUESTS);
    assert_eq!(answered.len(), 2, "{answered:?}");

    // A key always reaches the same variant.
    for user in 0..40 {
        let key = format!("user-{user}");
        let (_, first) = infer(addr, Some(&key))?;
        for _ in 0..3 {
            assert_eq!(infer(addr, Some(&key))?.1, first, "{key}");
        }
    }

    // Telemetry kept per variant: the control plane counts what the agent answered.
    let keyed = 40 * 4;
    let mut last = String::new();
    let view = wait_for(FLEET_TIMEOUT, "every request in the experiment", || {
        let text = fleet
            .cp
            .ternctl_ok(&["experiment", "status", "churn-ab", "-o", "json"])
            .ok()?;
        let view: ExperimentView = serde_json::from_str(&text).ok()?;
        let total: u64 = view.variants.iter().map(|v| v.requests).sum();
        last = text;
        (total == (REQUESTS + keyed) as u64).then_some(view)
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {} expected, last seen:\n{last}\nagent log:\n{}\ncontrol plane log:\n{}",
            REQUESTS + keyed,
            fleet.agents[0].process.log_text(),
            fleet.cp.log_text()
        )
    })?;
    assert_eq!(view.variants[0].variant, "mlp:7");
    assert_eq!(
        (view.variants[1].variant.as_str(), view.variants[1].weight),
        ("mlp:8", 10)
    );
    assert!((7.0..=13.0).contains(&view.variants[1].share), "{view:?}");
    assert!(
        !view.variants.is_empty()
            && view
                .variants
                .iter()
                .all(|v| v.errors == 0 && v.p50_ms > 0.0),
        "{view:?}"
    );
    // The same model under both names: the outputs are distributed alike.
    let output = view.variants[1]
        .outputs
        .iter()
        .find(|o| o.psi_vs_control.is_some())
        .expect("outputs compared with the control");
    assert!(output.psi_vs_control.unwrap_or(1.0) < 0.1, "{output:?}");
    let table = fleet.cp.ternctl_ok(&["experiment", "status", "churn-ab"])?;
    assert!(
        table.contains("control") && table.contains("mlp:8") && table.contains("10%"),
        "{table}"
    );
    Ok(())
}
