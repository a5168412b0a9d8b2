//! `tern-agent run-local`: a manifest and local components, run once, as a plugin author would.

use std::path::Path;
use std::process::{Command, Output};

use tern_e2e::{bin, component};

fn setup(dir: &Path, steps: &str) {
    std::fs::create_dir_all(dir.join("plugins")).expect("mkdir");
    for name in ["tabular-prep", "topk", "hostile-fixture"] {
        let file = format!("{}.wasm", name.replace('-', "_"));
        std::fs::copy(component(name), dir.join("plugins").join(file)).expect("copy component");
    }
    let manifest = format!(
        "apiVersion: tern.dev/v1alpha1\nkind: Pipeline\nmetadata: {{ name: local }}\nspec:\n  steps:\n{steps}"
    );
    std::fs::write(dir.join("pipeline.yaml"), manifest).expect("write manifest");
}

fn run_local(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("tern-agent"))
        .arg("run-local")
        .arg("-f")
        .arg(dir.join("pipeline.yaml"))
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("TERN_LOG", "warn")
        .output()
        .expect("run tern-agent")
}

const TABULAR_TO_TOPK: &str = r#"    - name: features
      plugin: ./plugins/tabular_prep.wasm
      config: { columns: [a, b, c], means: [0, 0, 0], stds: [1, 1, 1], tensor: logits }
    - name: post
      plugin: ./plugins/topk.wasm
      config: { k: 2, labels: [low, mid, high] }
"#;

#[test]
fn runs_a_pipeline_of_plugins_and_prints_the_answer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    setup(tmp.path(), TABULAR_TO_TOPK);
    std::fs::write(tmp.path().join("row.csv"), "1,7,3\n").expect("input");
    let row = tmp.path().join("row.csv");
    let out = run_local(
        tmp.path(),
        &["--input", row.to_str().expect("utf-8"), "--allow-unsigned"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(answer["predictions"][0][0]["label"], "mid");
    assert_eq!(answer["predictions"][0][1]["label"], "high");

    // Second run: the compiled plugins come from the cache.
    let cache = std::fs::read_dir(tmp.path().join("cache/tern/compiled-plugins"))
        .expect("cache")
        .count();
    assert_eq!(cache, 2);
    let again = run_local(
        tmp.path(),
        &["--input", row.to_str().expect("utf-8"), "--allow-unsigned"],
    );
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn prints_tensors_in_the_inference_protocol_form() {
    let tmp = tempfile::tempdir().expect("tempdir");
    setup(
        tmp.path(),
        "    - name: features\n      plugin: ./plugins/tabular_prep.wasm\n      config: { columns: [x, y] }\n",
    );
    std::fs::write(tmp.path().join("row.json"), r#"{"x": 1.5, "y": -2}"#).expect("input");
    let input = tmp.path().join("row.json");
    let out = run_local(
        tmp.path(),
        &[
            "--input",
            input.to_str().expect("utf-8"),
            "--allow-unsigned",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"outputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}]})
    );
}

#[test]
fn a_failing_step_is_named_on_stderr_with_exit_code_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    setup(
        tmp.path(),
        "    - name: stuck\n      plugin: ./plugins/hostile_fixture.wasm\n      config: { mode: loop }\n      limits: { timeoutMs: 50 }\n",
    );
    let input = tmp.path().join("pipeline.yaml");
    let out = run_local(
        tmp.path(),
        &[
            "--input",
            input.to_str().expect("utf-8"),
            "--allow-unsigned",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(last, "step stuck: deadline of 50ms exceeded", "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn refuses_unsigned_files_without_the_flag_models_and_bad_manifests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    setup(tmp.path(), TABULAR_TO_TOPK);
    let input = tmp.path().join("pipeline.yaml");
    let input = input.to_str().expect("utf-8");
    let out = run_local(tmp.path(), &["--input", input]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-unsigned"));

    setup(
        tmp.path(),
        "    - name: classify\n      model: ./model.onnx\n",
    );
    std::fs::write(tmp.path().join("model.onnx"), b"not a model").expect("write model");
    let out = run_local(tmp.path(), &["--input", input, "--allow-unsigned"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("step classify: invalid model"), "{err}");

    setup(
        tmp.path(),
        "    - name: post\n      plugin: ./plugins/topk.wasm\n      limits: { timeoutMs: -1 }\n",
    );
    let out = run_local(tmp.path(), &["--input", input, "--allow-unsigned"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline.yaml: spec.steps[0].limits.timeoutMs:"),
        "{err}"
    );

    let out = run_local(tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "no input is a usage error");
}

/// The example MLP: 4 rows of 32 features, 3 classes, with ONNX Runtime's answer beside it.
fn mlp_fixture() -> std::path::PathBuf {
    tern_e2e::examples_dir().join("models/mlp")
}

fn argmax_rows(t: &tern_infer::Tensor) -> Vec<usize> {
    let values = t.to_f64_vec();
    let classes = t.shape[1];
    values
        .chunks(classes)
        .map(|row| {
            (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .expect("classes")
        })
        .collect()
}

#[test]
fn runs_a_model_step_on_each_device_and_feeds_the_next_step() {
    let fixture = mlp_fixture();
    let expected = tern_infer::npy::parse(
        "output",
        &std::fs::read(fixture.join("expected_output.npy")).expect("expected output"),
    )
    .expect("npy");
    let labels = ["stay", "upgrade", "churn"];
    let want: Vec<&str> = argmax_rows(&expected).iter().map(|&i| labels[i]).collect();
    let mut devices = vec!["cpu", "auto"];
    if !tern_infer::list_adapters().is_empty() {
        devices.push("gpu");
    }
    for device in devices {
        let tmp = tempfile::tempdir().expect("tempdir");
        setup(
            tmp.path(),
            &format!(
                "    - name: classify\n      model: ./model.onnx\n      device: {device}\n    - name: post\n      plugin: ./plugins/topk.wasm\n      config: {{ k: 1, labels: [stay, upgrade, churn] }}\n"
            ),
        );
        std::fs::copy(fixture.join("model.onnx"), tmp.path().join("model.onnx")).expect("model");
        let npy = format!("input={}", fixture.join("input.npy").display());
        let out = run_local(tmp.path(), &["--npy", &npy, "--allow-unsigned"]);
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let got: Vec<&str> = (0..4)
            .map(|row| {
                answer["predictions"][row][0]["label"]
                    .as_str()
                    .expect("label")
            })
            .collect();
        assert_eq!(got, want, "{device}");
    }
}
