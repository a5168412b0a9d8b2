//! Triton's and KServe's own clients against a real agent: `tritonclient[http]` and
//! `tritonclient[grpc]` from PyPI, with their defaults, drive the local API's Open Inference
//! Protocol (liveness, readiness, metadata, inference with JSON and binary tensors, errors) on
//! the MLP and, with the model fixtures, an image pipeline (image-prep, then SqueezeNet 1.1);
//! every answer is checked against ONNX Runtime (`tests/python/triton_clients.py`), while 200
//! idle connections and a stalled HTTP/2 preface sit on the gRPC port, and a gRPC message
//! larger than the served pipelines accept is refused. Then the agent's telemetry must count
//! what the clients sent, over both protocols.
//!
//! Skipped without Python's `tritonclient`, `onnxruntime` and `numpy`, unless
//! `TERN_REQUIRE_TRITON=1` (CI installs them and sets it).

use std::path::PathBuf;
use std::process::Command;

use tern_e2e::{FLEET_TIMEOUT, Fleet, component, free_port, path_str, wait_for};

/// SqueezeNet 1.1 from the model fixtures, when they are there (else the image half of the
/// test is a skip, shown as one).
fn squeezenet() -> Option<PathBuf> {
    let model = tern_infer::conformance::fixtures_dir().join("models/squeezenet1_1/model.onnx");
    if model.exists() {
        return Some(model);
    }
    tern_skips::skip_unless_required(
        "TERN_REQUIRE_FIXTURES",
        format!("{} is missing: the image model's half", model.display()),
    );
    None
}

fn manifest(image: bool) -> String {
    let mut yaml = String::from(
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: mlp }
spec:
  steps:
    - name: classify
      model: mlp:1
      device: cpu
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: mlp }
spec:
  pipeline: mlp
  rollout: { healthWindowSeconds: 0 }
"#,
    );
    if image {
        yaml.push_str(
            r#"---
apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: image }
spec:
  steps:
    - name: prep
      plugin: image-prep:1
      config: { size: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], tensor: input }
    - name: classify
      model: squeezenet:1
      device: cpu
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: image }
spec:
  pipeline: image
  rollout: { healthWindowSeconds: 0 }
"#,
        );
    }
    yaml
}

/// The sum of the samples of `family` on a metrics page whose labels include every one of
/// `labels` (each written `name="value"`).
fn samples(page: &str, family: &str, labels: &[&str]) -> f64 {
    let head = format!("{family}{{");
    page.lines()
        .filter(|l| l.starts_with(&head) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn tritonclient_http_and_grpc_infer_against_an_agent() -> anyhow::Result<()> {
    if !tern_e2e::triton_clients_available() {
        return Ok(());
    }
    let image_model = squeezenet();
    let grpc = format!("127.0.0.1:{}", free_port());
    let fleet = Fleet::start_with(1, &["--listen-grpc", &grpc])?;
    let mlp = tern_e2e::examples_dir().join("models/mlp");
    let model = fleet.tmp.path().join("mlp.onnx");
    std::fs::copy(mlp.join("model.onnx"), &model)?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &model, "model", "mlp", 1)?;
    if let Some(path) = &image_model {
        let model = fleet.tmp.path().join("squeezenet.onnx");
        std::fs::copy(path, &model)?;
        fleet
            .publisher
            .sign_and_push(&fleet.cp, &model, "model", "squeezenet", 1)?;
        let plugin = fleet.tmp.path().join("image_prep.wasm");
        std::fs::copy(component("image-prep"), &plugin)?;
        fleet
            .publisher
            .sign_and_push(&fleet.cp, &plugin, "plugin", "image-prep", 1)?;
    }
    let file = fleet.tmp.path().join("pipelines.yaml");
    fleet
        .cp
        .apply_manifest(&file, manifest(image_model.is_some()))?;
    for deployment in ["mlp", "image"]
        .iter()
        .take(if image_model.is_some() { 2 } else { 1 })
    {
        fleet.wait_deployment(deployment, 1, "Complete")?;
    }
    let http = fleet.agents[0].api_addr()?.to_string();
    wait_for(FLEET_TIMEOUT, "the gRPC address to listen", || {
        tern_e2e::listening(grpc.parse().ok()?).then_some(())
    })?;

    // Idle connections and a preface that never ends, held while the clients run: the
    // gRPC form's connection table makes room, and its head deadline cuts the slow one.
    let grpc_addr: std::net::SocketAddr = grpc.parse()?;
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(grpc_addr))
        .collect::<Result<_, _>>()?;
    let mut slow = std::net::TcpStream::connect(grpc_addr)?;
    std::io::Write::write_all(&mut slow, b"PRI * HTTP/2.0\r\n")?;

    let mut command = Command::new("python3");
    command
        .arg(tern_e2e::examples_dir().join("../tests/python/triton_clients.py"))
        .args(["--http", &http, "--grpc", &grpc, "--mlp", &path_str(&mlp)?]);
    if let Some(path) = &image_model {
        command.args(["--image-model", &path_str(path)?]);
    }
    let out = command.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the tritonclient suite failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.agents[0].process.log_text()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    drop(idle);
    let count = |side: &str, pipeline: &str| report[side][pipeline].as_f64().unwrap_or(-1.0);
    // The script's requests, fixed: 5 over HTTP and 3 over gRPC succeed on the MLP; the HTTP
    // request naming an unknown output and the gRPC one of the wrong width run in it too.
    // The image pipeline serves 2 over HTTP and 1 over gRPC when its model is there.
    let image = if image_model.is_some() { 3.0 } else { 0.0 };
    assert_eq!(count("served", "mlp"), 8.0, "{report}");
    assert_eq!(count("reached", "mlp"), 10.0, "{report}");
    assert_eq!(count("served", "image"), image, "{report}");
    assert_eq!(count("reached", "image"), image, "{report}");

    // Both protocols reach the same pipelines and the same telemetry.
    let (status, page) = tern_e2e::http(
        fleet.agents[0].api_addr()?,
        "GET",
        "/metrics",
        "text/plain",
        b"",
    )?;
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    // Only the script sends inference requests to this agent (rollouts gate on counters,
    // not on probes), so its counts are the agent's, exactly.
    for pipeline in ["mlp", "image"] {
        let label = format!("pipeline=\"{pipeline}\"");
        assert_eq!(
            samples(&page, "tern_pipeline_requests_total", &[label.as_str()]),
            count("reached", pipeline),
            "{pipeline}: the agent's count of the requests that ran, from {report}:\n{page}"
        );
    }
    // Of those, the wrong width alone failed in the pipeline: the client's fault.
    assert_eq!(
        samples(&page, "tern_pipeline_errors_total", &["pipeline=\"mlp\""]),
        1.0,
        "{page}"
    );
    assert_eq!(
        samples(
            &page,
            "tern_pipeline_errors_total",
            &["pipeline=\"mlp\"", "kind=\"bad-input\""]
        ),
        1.0,
        "{page}"
    );
    Ok(())
}
