//! Drift end to end: real agents run a real ONNX model and stream the distributions of its
//! inputs and outputs; the control plane judges them against a baseline built from a sample
//! file and raises an alert for the agent whose inputs shifted, and none for the one whose
//! inputs did not.

use std::fmt::Write as _;
use std::time::Duration;

use tern_e2e::{FLEET_TIMEOUT, Fleet, http, path_str, wait_for};
use tern_proto::api::{AlertView, BaselineView, PipelineDrift};

const FEATURES: usize = 32;
/// Requests per agent, of 4 rows each: 600 values per feature and agent.
const REQUESTS: u64 = 150;

/// Standard normal values from a seeded generator (Box-Muller over SplitMix64, whose outputs
/// stay independent at any stride: the test reads them 512 apart per feature and agent).
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

const PIPELINE: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: churn }
spec:
  monitoring: { baseline: churn-inputs:1, alertPsi: 0.2 }
  steps:
    - name: classify
      model: mlp:1
      device: cpu
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: churn }
spec:
  pipeline: churn
  rollout: { healthWindowSeconds: 0 }
"#;

/// One request of 4 rows to agent `i`, its values drawn around `shift`.
fn infer(fleet: &Fleet, i: usize, rng: &mut Normal, shift: f32) -> anyhow::Result<()> {
    let data: Vec<f32> = (0..4 * FEATURES).map(|_| rng.next() + shift).collect();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [4, FEATURES], "datatype": "FP32", "data": data}]
    });
    let (status, answer) = http(
        fleet.agents[i].api_addr()?,
        "POST",
        "/v2/models/churn/infer",
        "application/json",
        body.to_string().as_bytes(),
    )?;
    anyhow::ensure!(
        status == 200,
        "infer: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

fn alerts(fleet: &Fleet) -> anyhow::Result<Vec<AlertView>> {
    Ok(serde_json::from_str(
        &fleet.cp.ternctl_ok(&["get", "alerts", "-o", "json"])?,
    )?)
}

#[test]
fn shifted_inputs_raise_an_alert_and_unshifted_ones_do_not() -> anyhow::Result<()> {
    let fleet = Fleet::start_tuned(2, &["--telemetry-interval", "1s"], |config| {
        config.drift_interval = Duration::from_secs(1);
        config.drift_window = Duration::from_secs(120);
    })?;
    let model = fleet.tmp.path().join("mlp.onnx");
    std::fs::copy(
        tern_e2e::examples_dir().join("models/mlp/model.onnx"),
        &model,
    )?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &model, "model", "mlp", 1)?;

    // The baseline: 2,000 samples of what the model was trained on, from a CSV file.
    let mut csv = (0..FEATURES)
        .map(|i| format!("input:input[{i}]"))
        .collect::<Vec<_>>()
        .join(",");
    let mut rng = Normal(7);
    for _ in 0..2_000 {
        csv.push('\n');
        for i in 0..FEATURES {
            let sep = if i == 0 { "" } else { "," };
            write!(csv, "{sep}{}", rng.next())?;
        }
    }
    let sample = fleet.tmp.path().join("training.csv");
    std::fs::write(&sample, csv)?;
    let saved = fleet.tmp.path().join("baseline.json");
    let created = fleet.cp.ternctl_ok(&[
        "baseline",
        "create",
        "churn-inputs",
        "--from-file",
        &path_str(&sample)?,
        "--out",
        &path_str(&saved)?,
    ])?;
    assert!(
        created.contains("baseline churn-inputs:1 created (32 features"),
        "{created}"
    );
    let saved: tern_proto::drift::Baseline = serde_json::from_slice(&std::fs::read(&saved)?)?;
    assert_eq!(saved.features.len(), FEATURES);

    let manifest = fleet.tmp.path().join("churn.yaml");
    // A baseline that does not exist is refused at apply, naming the field.
    let stderr = fleet.cp.apply_refused(
        &manifest,
        PIPELINE.replace("churn-inputs:1", "churn-inputs:9"),
    )?;
    assert!(stderr.contains("spec.monitoring.baseline"), "{stderr}");
    fleet.cp.apply_manifest(&manifest, PIPELINE)?;
    fleet.wait_deployment("churn", 1, "Complete")?;

    // edge-1 sees what the model was trained on; edge-2 sees inputs shifted by 1.5 sigma.
    let mut rng = Normal(11);
    for _ in 0..REQUESTS {
        infer(&fleet, 0, &mut rng, 0.0)?;
        infer(&fleet, 1, &mut rng, 1.5)?;
    }

    let drift = wait_for(FLEET_TIMEOUT, "both agents' inputs judged", || {
        let text = fleet
            .cp
            .ternctl_ok(&["drift", "churn", "-o", "json"])
            .ok()?;
        let drift: PipelineDrift = serde_json::from_str(&text).ok()?;
        let inputs: Vec<_> = drift
            .features
            .iter()
            .filter(|f| f.feature.starts_with("input:"))
            .collect();
        // Every request's rows arrived, from both agents.
        (inputs.len() == FEATURES && inputs.iter().all(|f| f.count == 2 * REQUESTS * 4))
            .then_some(drift)
    })?;
    assert_eq!(drift.baseline.as_deref(), Some("churn-inputs:1"));
    for f in drift
        .features
        .iter()
        .filter(|f| f.feature.starts_with("input:"))
    {
        assert!(f.agents["edge-1"] < 0.2, "{}: {:?}", f.feature, f.agents);
        assert!(f.agents["edge-2"] > 0.2, "{}: {:?}", f.feature, f.agents);
        assert_eq!(f.expected.len(), f.observed.len());
    }
    assert!(
        drift
            .features
            .iter()
            .any(|f| f.feature.starts_with("output:")),
        "the model's outputs are watched too"
    );

    let firing = wait_for(FLEET_TIMEOUT, "a drift alert for edge-2", || {
        let list = alerts(&fleet).ok()?;
        (list
            .iter()
            .filter(|a| a.scope == "edge-2" && a.state == "firing")
            .count()
            == FEATURES)
            .then_some(list)
    })?;
    assert!(
        !firing.is_empty() && firing.iter().all(|a| a.scope != "edge-1"),
        "unshifted inputs raised an alert: {firing:?}"
    );
    let alert = firing.iter().find(|a| a.scope == "edge-2").expect("alert");
    assert_eq!((alert.pipeline.as_str(), alert.revision), ("churn", 1));
    assert!(alert.psi > alert.threshold);
    let table = fleet.cp.ternctl_ok(&["get", "alerts"])?;
    assert!(
        table.contains("firing") && table.contains("edge-2") && table.contains("input:input[0]"),
        "{table}"
    );

    // A new threshold is the control plane's alone: applied in place (no new revision, no
    // rollout), and the alerts it no longer supports resolve.
    std::fs::write(&manifest, PIPELINE.replace("alertPsi: 0.2", "alertPsi: 5"))?;
    let changes = fleet
        .cp
        .ternctl_ok(&["apply", "-f", &path_str(&manifest)?, "-o", "json"])?;
    let changes: Vec<tern_proto::api::Change> = serde_json::from_str(&changes)?;
    assert_eq!(changes[0].revision, Some(1), "{changes:?}");
    wait_for(FLEET_TIMEOUT, "edge-2's alerts to resolve", || {
        let list = alerts(&fleet).ok()?;
        let edge_2: Vec<_> = list.iter().filter(|a| a.scope == "edge-2").collect();
        (!edge_2.is_empty() && edge_2.iter().all(|a| a.state == "resolved")).then_some(())
    })?;
    fleet.cp.apply_manifest(&manifest, PIPELINE)?;

    // A baseline from what the fleet saw: every input and output feature, stored as version 1
    // of its own name.
    let text = fleet.cp.ternctl_ok(&[
        "baseline",
        "create",
        "churn-seen",
        "--pipeline",
        "churn",
        "--window",
        "10m",
        "-o",
        "json",
    ])?;
    let seen: BaselineView = serde_json::from_str(&text)?;
    assert_eq!((seen.name.as_str(), seen.version), ("churn-seen", 1));
    let baseline = seen.baseline.expect("the baseline comes back");
    assert!(baseline.feature("input:input[5]").is_some());
    assert!(
        baseline
            .features
            .iter()
            .any(|f| f.feature.starts_with("output:"))
    );
    let listed = fleet.cp.ternctl_ok(&["get", "baselines"])?;
    assert!(
        listed.contains("churn-inputs:1") && listed.contains("churn-seen:1"),
        "{listed}"
    );
    Ok(())
}
