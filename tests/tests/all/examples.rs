//! The manifests of `examples/manifests/`, used as a new user would use them: checked against
//! the published JSON Schemas by a stock validator (Python's `jsonschema`), then, with their
//! releases pushed, applied in one `ternctl apply -f examples/manifests/` to a real control
//! plane and agents labelled like a fleet: each deployment reaches the agents its selector
//! names and serves; `get -l` selects pipelines and deployments by their labels; a change of
//! labels alone makes no new revision.

use std::path::{Path, PathBuf};
use std::process::Command;

use tern_e2e::{FLEET_TIMEOUT, Fleet, examples_dir, http, path_str, tool_available, wait_for};
use tern_proto::api::{Change, ChangeAction, DeploymentView, PipelineView};

fn manifests_dir() -> PathBuf {
    examples_dir().join("manifests")
}

fn schemas_dir() -> PathBuf {
    examples_dir().join("../schemas")
}

/// Every manifest in `examples/`, `examples/manifests/` and `examples/ci/`.
fn example_manifests() -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in [examples_dir(), manifests_dir(), examples_dir().join("ci")] {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `python3 validate_manifests.py schemas/ FILES`: exit code and what it printed.
fn validate(files: &[PathBuf]) -> anyhow::Result<(Option<i32>, String)> {
    let script = examples_dir().join("../tests/python/validate_manifests.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(schemas_dir()).args(files);
    let out = command.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code(), text))
}

#[test]
fn the_published_schemas_accept_every_example_and_point_at_what_is_wrong() -> anyhow::Result<()> {
    let present = tool_available(
        Command::new("python3").args(["-c", "import jsonschema, yaml"]),
        "TERN_REQUIRE_JSONSCHEMA",
        "python3 with jsonschema and pyyaml",
    );
    if !present {
        return Ok(());
    }
    let files = example_manifests()?;
    assert!(files.len() >= 10, "{files:?}");
    let (code, out) = validate(&files)?;
    assert_eq!(code, Some(0), "{out}");
    // Every document of every file, the multi-document ones too.
    let mut documents = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)?;
            documents += usize::from(!value.is_null());
        }
    }
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": ok")).count(),
        documents,
        "{out}"
    );

    let tmp = tempfile::tempdir()?;
    let bad = tmp.path().join("bad.yaml");
    let canary = std::fs::read_to_string(manifests_dir().join("canary.yaml"))?;
    std::fs::write(
        &bad,
        canary
            .replace("name: churn-edge", "name: Churn_Edge")
            .replace("operator: NotIn", "operator: Near")
            .replace("  pipeline: churn", "  pipeline: churn\n  replicas: 3"),
    )?;
    let (code, out) = validate(&[bad])?;
    assert_eq!(code, Some(1), "{out}");
    for wrong in ["metadata.name", "Near", "replicas"] {
        assert!(out.contains(wrong), "names {wrong}: {out}");
    }
    Ok(())
}

/// `file` copied into `dir` as `name` (a release's `.release` file is written beside it).
fn copy(file: &Path, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let to = dir.join(name);
    std::fs::copy(file, &to)?;
    Ok(to)
}

fn get<T: serde::de::DeserializeOwned>(fleet: &Fleet, args: &[&str]) -> anyhow::Result<T> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    Ok(serde_json::from_str(&fleet.cp.ternctl_ok(&all)?)?)
}

/// Waits until each of `agents` serves revision `revision` for deployment `name`.
fn wait_serving(fleet: &Fleet, name: &str, agents: &[&str], revision: u64) -> anyhow::Result<()> {
    let what = format!("{name} served by {agents:?}");
    wait_for(FLEET_TIMEOUT, &what, || {
        let deployment = fleet.deployment(name).ok()?;
        let rollout = deployment.rollout?;
        let mut serving: Vec<&str> = rollout
            .agents
            .iter()
            .filter(|a| a.serving == Some(revision))
            .map(|a| a.name.as_str())
            .collect();
        serving.sort_unstable();
        let selected: Vec<&str> = rollout.agents.iter().map(|a| a.name.as_str()).collect();
        (serving == agents && selected.len() == agents.len()).then_some(())
    })
}

#[test]
fn the_example_manifests_deploy_to_the_agents_their_selectors_name() -> anyhow::Result<()> {
    let fleet = Fleet::start(2)?;
    for (agent, labels) in [("edge-1", "site=berlin"), ("edge-2", "site=paris")] {
        fleet
            .cp
            .ternctl_ok(&["label", "agent", agent, labels, "tier=edge", "--overwrite"])?;
    }
    let dir = fleet.tmp.path();
    let model = examples_dir().join("models/mlp/model.onnx");
    for version in [1, 2] {
        let file = copy(&model, dir, &format!("churn-mlp-{version}.onnx"))?;
        fleet
            .publisher
            .sign_and_push(&fleet.cp, &file, "model", "churn-mlp", version)?;
    }
    let topk = copy(&tern_e2e::component("topk"), dir, "topk.wasm")?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &topk, "plugin", "topk", 1)?;

    let changes: Vec<Change> = serde_json::from_str(&fleet.cp.ternctl_ok(&[
        "apply",
        "-f",
        &path_str(&manifests_dir())?,
        "-o",
        "json",
    ])?)?;
    let mut created: Vec<String> = changes
        .iter()
        .filter(|c| c.action == ChangeAction::Created)
        .map(|c| format!("{}/{}", c.kind, c.name))
        .collect();
    created.sort();
    assert_eq!(
        created,
        [
            "Deployment/churn-ab",
            "Deployment/churn-berlin",
            "Deployment/churn-edge",
            "Deployment/churn-monitored",
            "Pipeline/churn",
            "Pipeline/churn-ab",
            "Pipeline/churn-monitored",
        ],
        "{changes:?}"
    );

    // Each selector names its agents, and they serve: matchLabels (Berlin), matchExpressions
    // (edge outside Berlin, no maintenance: the first canary wave is Paris), `In` (both), the
    // shorthand (both).
    wait_serving(&fleet, "churn-berlin", &["edge-1"], 1)?;
    wait_serving(&fleet, "churn-edge", &["edge-2"], 1)?;
    wait_serving(&fleet, "churn-ab", &["edge-1", "edge-2"], 1)?;
    wait_serving(&fleet, "churn-monitored", &["edge-1", "edge-2"], 1)?;
    let input = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": vec![0.5_f32; 32]}]
    });
    for (agent, pipeline) in [
        (0, "churn"),
        (1, "churn"),
        (0, "churn-ab"),
        (1, "churn-monitored"),
    ] {
        let (status, body) = http(
            fleet.agents[agent].api_addr()?,
            "POST",
            &format!("/v2/models/{pipeline}/infer"),
            "application/json",
            input.to_string().as_bytes(),
        )?;
        assert_eq!(
            status,
            200,
            "{pipeline}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let monitored: PipelineView = get(&fleet, &["pipelines", "churn-monitored"])?;
    assert_eq!(monitored.labels["app"], "churn");

    // Labels select pipelines and deployments as they select agents.
    let names = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "name"]);
        Ok(fleet
            .cp
            .ternctl_ok(&all)?
            .lines()
            .map(str::to_owned)
            .collect())
    };
    assert_eq!(
        names(&["pipelines", "-l", "app=churn,!experiment"])?,
        ["pipeline/churn", "pipeline/churn-monitored"]
    );
    assert_eq!(
        names(&["deploy", "-l", "experiment in (model-refresh)"])?,
        ["deployment/churn-ab"]
    );
    assert_eq!(
        names(&["deploy", "-l", "site=berlin"])?,
        ["deployment/churn-berlin"]
    );
    let described = fleet
        .cp
        .ternctl_ok(&["describe", "deployment", "churn-edge"])?;
    assert!(
        described.contains("Selector:    tier=edge,site!=berlin,!maintenance")
            && described.contains("tern.dev/change: CHG-2041 weekly model refresh"),
        "{described}"
    );
    let wide = fleet.cp.ternctl_ok(&["get", "pipelines", "-o", "wide"])?;
    assert!(
        wide.contains("LABELS") && wide.contains("app=churn,team=growth"),
        "{wide}"
    );

    // A new label and annotation alone: the pipeline is configured in place, no new revision,
    // no new rollout.
    let relabelled = dir.join("pipeline.yaml");
    std::fs::write(
        &relabelled,
        std::fs::read_to_string(manifests_dir().join("pipeline.yaml"))?
            .replace("    team: growth", "    team: growth\n    tier: gold")
            .replace(
                "  annotations:",
                "  annotations:\n    tern.dev/reviewed: 'yes'",
            ),
    )?;
    let changes: Vec<Change> = serde_json::from_str(&fleet.cp.ternctl_ok(&[
        "apply",
        "-f",
        &path_str(&relabelled)?,
        "-o",
        "json",
    ])?)?;
    assert_eq!(changes[0].action, ChangeAction::Configured, "{changes:?}");
    assert_eq!(changes[0].revision, Some(1));
    let churn: Vec<PipelineView> = get(&fleet, &["pipelines", "-l", "tier=gold"])?;
    assert_eq!(churn.len(), 1);
    assert_eq!(
        (
            churn[0].revision,
            churn[0].annotations["tern.dev/reviewed"].as_str()
        ),
        (1, "yes")
    );
    let berlin: DeploymentView = fleet.deployment("churn-berlin")?;
    assert_eq!(berlin.rollout.map(|r| r.target_revision), Some(1));
    Ok(())
}
