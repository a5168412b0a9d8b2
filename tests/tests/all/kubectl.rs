//! `ternctl` with kubectl's habits, as a kubectl user would reach for them, against a real
//! control plane and agents: kinds by any of their names, label selectors, output formats,
//! `--watch`, `rollout status` and `diff` exit codes, `apply` of several files, directories
//! and standard input with dry runs, `delete KIND NAME`, `describe` of every kind, contexts,
//! completion and man pages, `explain`, and `sign` with a key from the environment.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_e2e::{Fleet, bin, path_str};

const PIPELINE: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: scores }
spec:
  steps:
    - name: post
      plugin: topk:1
      config: { k: 2 }
"#;

const DEPLOYMENT: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: scores-everywhere }
spec:
  pipeline: scores
  rollout: { healthWindowSeconds: 0 }
"#;

/// `ternctl ARGS` against the fleet's control plane: exit code, stdout, stderr.
fn ternctl(fleet: &Fleet, args: &[&str]) -> (Option<i32>, String, String) {
    let out = fleet.cp.ternctl(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn get_selects_by_kind_name_and_labels_in_every_format() -> anyhow::Result<()> {
    let fleet = Fleet::start(2)?;
    fleet.cp.ternctl_ok(&[
        "label",
        "agent",
        "edge-2",
        "gpu=a100",
        "site=b",
        "--overwrite",
    ])?;

    let (code, out, _) = ternctl(
        &fleet,
        &["get", "ag", "-l", "site in (a,b),!gpu", "-o", "name"],
    );
    assert_eq!((code, lines(&out)), (Some(0), vec!["agent/edge-1"]));
    let (_, out, _) = ternctl(&fleet, &["get", "agents", "-l", "gpu", "-o", "name"]);
    assert_eq!(lines(&out), ["agent/edge-2"]);
    let (_, out, _) = ternctl(&fleet, &["get", "agent", "-l", "site!=b", "-o", "name"]);
    assert_eq!(lines(&out), ["agent/edge-1"]);
    let (_, out, _) = ternctl(
        &fleet,
        &["get", "agents", "-o", "jsonpath={.items[*].name}"],
    );
    assert_eq!(out, "edge-1 edge-2");
    let (_, out, _) = ternctl(
        &fleet,
        &[
            "get",
            "agents",
            "-o",
            r#"jsonpath={range .items[*]}{.name}={.labels.site}{"\n"}{end}"#,
        ],
    );
    assert_eq!(lines(&out), ["edge-1=a", "edge-2=b"]);
    let (_, out, _) = ternctl(&fleet, &["get", "agent/edge-2", "-o", "json"]);
    let one: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        one["name"], "edge-2",
        "one resource named: the object itself"
    );
    let (_, wide, _) = ternctl(&fleet, &["get", "agents", "-o", "wide"]);
    assert!(
        wide.contains("CORES") && wide.contains("FIRST SEEN"),
        "{wide}"
    );
    let (_, yaml, _) = ternctl(&fleet, &["get", "agents", "edge-1", "-o", "yaml"]);
    assert!(yaml.contains("name: edge-1"), "{yaml}");

    // Usage errors exit 2 and list the valid choices.
    let (code, _, err) = ternctl(&fleet, &["get", "pods"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("agents (ag)") && err.contains("deployments (deploy, dep)"),
        "{err}"
    );
    let (code, _, err) = ternctl(&fleet, &["get", "agents", "-l", "site in (a"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("k in (a,b)"), "{err}");
    let (code, _, err) = ternctl(&fleet, &["get", "agents", "-o", "xml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("jsonpath=TEMPLATE"), "{err}");
    let (code, _, err) = ternctl(&fleet, &["get", "agents", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("agent `nobody` not found"), "{err}");
    Ok(())
}

#[test]
fn apply_diff_rollout_status_describe_and_delete_as_kubectl_does() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(1)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    let dir = fleet.tmp.path().join("manifests");
    std::fs::create_dir_all(dir.join("deployments"))?;
    std::fs::write(dir.join("pipeline.yaml"), PIPELINE)?;
    std::fs::write(dir.join("deployments/everywhere.yml"), DEPLOYMENT)?;
    std::fs::write(dir.join("notes.txt"), "not a manifest")?;
    let dir_arg = path_str(&dir)?;

    // A dry run on the server checks everything and changes nothing.
    let (code, out, err) = ternctl(&fleet, &["apply", "-f", &dir_arg, "-R", "--dry-run=server"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("pipeline/scores created (revision 1) (dry run: server)")
            && out.contains("deployment/scores-everywhere created (dry run: server)"),
        "{out}"
    );
    let (_, none, _) = ternctl(&fleet, &["get", "pipelines", "-o", "name"]);
    assert_eq!(none, "", "a dry run stores nothing");
    let (code, out, _) = ternctl(&fleet, &["apply", "-f", &dir_arg, "--dry-run=client"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        lines(&out),
        ["pipeline/scores valid (dry run: client)"],
        "no -R: the top directory only"
    );

    // diff: 1 with changes, 0 without, 2 on an error.
    let (code, out, _) = ternctl(&fleet, &["diff", "-f", &dir_arg, "-R"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("+    plugin: topk:1"), "{out}");
    let bad = fleet.tmp.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: tern.dev/v1alpha1\nkind: Pod\n")?;
    let (code, _, err) = ternctl(&fleet, &["diff", "-f", &path_str(&bad)?]);
    assert_eq!(code, Some(2), "{err}");

    // apply from standard input and a file at once.
    let mut child = Command::new(bin("ternctl"))
        .arg("--config")
        .arg(fleet.cp.ternctl_config())
        .args([
            "apply",
            "-f",
            "-",
            "-f",
            &path_str(&dir.join("pipeline.yaml"))?,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdin"))?
        .write_all(DEPLOYMENT.as_bytes())?;
    let applied = child.wait_with_output()?;
    let said = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(
        said.contains("deployment/scores-everywhere created"),
        "{said}"
    );
    let (code, out, _) = ternctl(&fleet, &["diff", "-f", &dir_arg, "-R"]);
    assert_eq!((code, out.trim()), (Some(0), "no changes"));

    // `get --watch` prints rows as they change; `rollout status` waits for the commit.
    let mut watch = Command::new(bin("ternctl"))
        .arg("--config")
        .arg(fleet.cp.ternctl_config())
        .args(["get", "deploy", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (code, out, err) = ternctl(
        &fleet,
        &["rollout", "status", "scores-everywhere", "--timeout", "60s"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("successfully rolled out"), "{out}");
    let stdout = watch
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Complete") {
                let _ = seen_tx.send(line);
                return;
            }
        }
    });
    let seen = seen_rx.recv_timeout(Duration::from_secs(30));
    watch.kill()?;
    watch.wait()?;
    assert!(
        seen.is_ok(),
        "--watch printed the deployment's Complete row"
    );

    // describe every kind that has a resource here.
    for (kind, name, expect) in [
        ("pipeline", "scores", "Revision:  1"),
        ("deploy", "scores-everywhere", "Phase:       Complete"),
        ("agent", "edge-1", "edge-1"),
        ("release", "topk:1", "Kind:  release"),
    ] {
        let (code, out, err) = ternctl(&fleet, &["describe", kind, name]);
        assert_eq!(code, Some(0), "{kind}: {err}");
        assert!(out.contains(expect), "{kind}: {out}");
    }

    // With its only agent gone, a new rollout cannot finish: `--timeout` gives up with exit 1.
    fleet.agents[0].process.kill();
    let k3 = fleet.tmp.path().join("k3.yaml");
    std::fs::write(&k3, PIPELINE.replace("k: 2", "k: 3"))?;
    fleet.cp.ternctl_ok(&["apply", "-f", &path_str(&k3)?])?;
    let (code, out, err) = ternctl(
        &fleet,
        &["rollout", "status", "scores-everywhere", "--timeout", "2s"],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("timed out after 2s"), "{err}");

    // delete KIND NAME.
    let (code, out, _) = ternctl(&fleet, &["delete", "deployment", "scores-everywhere"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("deployment/scores-everywhere deleted"),
        "{out}"
    );
    let (_, out, _) = ternctl(&fleet, &["delete", "pl", "scores"]);
    assert!(out.contains("pipeline/scores deleted"), "{out}");
    let (_, left, _) = ternctl(&fleet, &["get", "pipelines", "-o", "name"]);
    assert_eq!(left, "");
    let (code, _, err) = ternctl(&fleet, &["delete", "release", "topk:1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot be deleted"), "{err}");
    Ok(())
}

#[test]
fn contexts_completion_man_pages_and_keys_from_the_environment() -> anyhow::Result<()> {
    let fleet = Fleet::start(1)?;
    let config = fleet.tmp.path().join("multi.toml");
    let config_arg = path_str(&config)?;
    let run = |args: &[&str]| {
        let out = Command::new(bin("ternctl"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("ternctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let from = path_str(&fleet.cp.ternctl_config())?;
    let (code, _, err) = run(&["config", "set-context", "lab", "--from", &from]);
    assert_eq!(code, Some(0), "{err}");
    let (_, _, _) = run(&["config", "set-context", "spare", "--from", &from]);
    let (_, out, _) = run(&["config", "get-contexts"]);
    assert!(
        out.contains("* ") && out.contains("lab") && out.contains("spare"),
        "{out}"
    );
    let (_, current, _) = run(&["config", "current-context"]);
    assert_eq!(
        current.trim(),
        "lab",
        "the first context set is the current one"
    );
    let (code, _, _) = run(&["config", "use-context", "spare"]);
    assert_eq!(code, Some(0));
    let (_, current, _) = run(&["config", "current-context"]);
    assert_eq!(current.trim(), "spare");
    let (code, out, _) = run(&["--context", "lab", "get", "agents", "-o", "name"]);
    assert_eq!((code, out.trim()), (Some(0), "agent/edge-1"));
    let (code, _, err) = run(&["config", "use-context", "prod"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("lab, spare"), "{err}");
    let _ = config_arg;

    for shell in ["bash", "zsh", "fish"] {
        let (code, script, _) = run(&["completion", shell]);
        assert_eq!(code, Some(0));
        assert!(
            script.contains("ternctl") && script.contains("rollout"),
            "{shell}"
        );
    }
    let man = fleet.tmp.path().join("man");
    let (code, _, err) = run(&["man", &path_str(&man)?]);
    assert_eq!(code, Some(0), "{err}");
    let page = std::fs::read_to_string(man.join("ternctl-rollout-status.1"))?;
    assert!(page.contains(".TH") && page.contains("timeout"), "{page}");
    assert!(man.join("ternctl-get.1").exists() && man.join("ternctl.1").exists());
    let (_, help, _) = run(&["trust", "init", "--help"]);
    assert!(help.contains("Examples:"), "{help}");

    // explain: a kind's fields and a field's documentation, from the published schema; its
    // JSON Schema with -o json; an unknown kind is a usage error listing the valid ones.
    let (code, out, _) = run(&["explain", "deploy.spec.rollout"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("KIND:       Deployment") && out.contains("waves\t<[]integer>"),
        "{out}"
    );
    let (code, out, _) = run(&["explain", "pipeline", "-o", "json"]);
    assert_eq!(code, Some(0));
    let schema: serde_json::Value = serde_json::from_str(&out)?;
    let published: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        tern_e2e::examples_dir().join("../schemas/pipeline.json"),
    )?)?;
    assert_eq!(schema, published, "explain -o json is the published schema");
    let (code, _, err) = run(&["explain", "pods"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("pipelines (pl), deployments (deploy, dep)"),
        "{err}"
    );
    let (code, _, err) = run(&["explain", "deployment.spec.replicas"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("`replicas`") && err.contains("selector"),
        "{err}"
    );

    // sign with the key in an environment variable (a CI secret).
    let key = fleet.publisher.key("publisher");
    let pem = std::fs::read_to_string(format!("{}.key", key.display()))
        .or_else(|_| std::fs::read_to_string(&key))?;
    let artifact = fleet.tmp.path().join("model.onnx");
    std::fs::write(&artifact, b"model bytes")?;
    let out = Command::new(bin("ternctl"))
        .args([
            "sign",
            "--key-env",
            "SIGNING_KEY",
            "--kind",
            "model",
            "--name",
            "m",
        ])
        .args(["--version", "1"])
        .arg(&artifact)
        .env("SIGNING_KEY", pem)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fleet.tmp.path().join("model.onnx.release").exists());
    Ok(())
}
