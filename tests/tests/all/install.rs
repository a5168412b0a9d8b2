//! What `deploy/` installs: the systemd units pass `systemd-analyze verify` and keep their
//! sandboxing, `install.sh` lays the files out and refuses to enroll without what it needs, and
//! the Kubernetes manifests are well-formed and their kustomizations name files that exist.
//!
//! The units are checked when `systemd-analyze` is there, and must be with
//! `TERN_REQUIRE_SYSTEMD=1` (CI sets it).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use tern_e2e::{bin, path_str, tool_available};

fn deploy_dir() -> PathBuf {
    tern_e2e::examples_dir().join("../deploy")
}

/// Where the built binaries are.
fn bin_dir() -> PathBuf {
    bin("tern-agent")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[test]
fn systemd_units_verify_and_keep_their_sandbox() -> anyhow::Result<()> {
    if !tool_available(
        Command::new("systemd-analyze").arg("--version"),
        "TERN_REQUIRE_SYSTEMD",
        "systemd-analyze",
    ) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    for unit in ["tern-agent.service", "tern-control-plane.service"] {
        let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit))?;
        for directive in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "StateDirectory=",
            "RuntimeDirectory=",
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
        ] {
            assert!(text.contains(directive), "{unit} lacks {directive}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("User=tern")),
            "{unit} runs as its own user"
        );
        if unit == "tern-agent.service" {
            // How a run ended reaches the next one, which reports a crash with its reason.
            assert!(
                text.lines().any(|l| l.starts_with("ExecStopPost=")
                    && l.contains("tern-agent record-exit --data-dir /var/lib/tern-agent")),
                "{unit} records how each run ended"
            );
        }
        // The binaries live where this build put them, not in /usr/local/bin.
        let local = text.replace("/usr/local/bin/", &format!("{}/", path_str(&bin_dir())?));
        let path = tmp.path().join(unit);
        std::fs::write(&path, local)?;
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()?;
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }
    // The check itself fails a unit with a mistake.
    let broken = tmp.path().join("broken.service");
    std::fs::write(
        &broken,
        format!(
            "[Service]\nExecStart={}/tern-agent run\nProtectSystem=strictly\n",
            path_str(&bin_dir())?
        ),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .output()?;
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
    Ok(())
}

#[test]
fn install_sh_lays_out_binaries_and_units_and_refuses_to_enroll_without_a_token()
-> anyhow::Result<()> {
    let script = deploy_dir().join("install.sh");
    let tmp = tempfile::tempdir()?;
    for role in ["agent", "control-plane"] {
        let out = Command::new("sh")
            .arg(&script)
            .arg(role)
            .arg("--from")
            .arg(bin_dir())
            .env("DESTDIR", tmp.path())
            .output()?;
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let service = format!("tern-{role}");
        let binary = tmp.path().join("usr/local/bin").join(&service);
        assert!(
            binary.metadata()?.permissions().mode() & 0o111 != 0,
            "{role}"
        );
        assert_eq!(
            std::fs::read(
                tmp.path()
                    .join(format!("etc/systemd/system/{service}.service"))
            )?,
            std::fs::read(deploy_dir().join(format!("systemd/{service}.service")))?
        );
        let state = tmp.path().join("var/lib").join(&service);
        assert_eq!(state.metadata()?.permissions().mode() & 0o777, 0o700);
    }
    // An agent without a control plane or a token: exit 2 before anything is touched.
    let out = Command::new("sh")
        .arg(&script)
        .args(["agent", "--from"])
        .arg(bin_dir())
        .env_remove("TERN_TOKEN")
        .env_remove("DESTDIR")
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    let refused = out.status.code() == Some(2) && said.contains("--control-plane");
    let not_root = out.status.code() == Some(1) && said.contains("run as root");
    assert!(refused || not_root, "{said}");
    let out = Command::new("sh").arg(&script).arg("printer").output()?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

/// Every YAML file under `dir`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

#[test]
fn kubernetes_manifests_are_well_formed_and_kustomizable() -> anyhow::Result<()> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("kubernetes"), &mut files)?;
    let mut kinds = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            assert!(
                value["apiVersion"].as_str().is_some() && !kind.is_empty(),
                "{}: apiVersion and kind",
                file.display()
            );
            if kind == "Kustomization" {
                let dir = file.parent().unwrap_or(Path::new("."));
                for resource in value["resources"].as_sequence().into_iter().flatten() {
                    let named = dir.join(resource.as_str().unwrap_or_default());
                    assert!(named.exists(), "{}: {}", file.display(), named.display());
                }
            } else {
                assert!(
                    value["metadata"]["name"].as_str().is_some(),
                    "{}: metadata.name",
                    file.display()
                );
            }
            kinds.push(kind);
        }
    }
    for kind in ["DaemonSet", "StatefulSet", "Service", "Kustomization"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    Ok(())
}

/// The `ternctl ...` command lines of a shell script: continuations joined, comments and
/// `|| ...` cut, `${{ ... }}` and `$VAR` given sample values.
fn ternctl_lines(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    joined
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default())
        .map(|l| l.split("||").next().unwrap_or_default().trim())
        .filter_map(|l| l.strip_prefix("ternctl "))
        .map(|l| {
            let mut words = Vec::new();
            let mut rest = l;
            while let Some(start) = rest.find("${{") {
                words.push(rest[..start].to_owned());
                rest = rest[start..]
                    .split_once("}}")
                    .map_or("", |(_, after)| after);
                words.push("sample".to_owned());
            }
            words.push(rest.to_owned());
            words
                .concat()
                .replace("\"$VERSION\"", "7")
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn the_ci_example_parses_and_every_ternctl_line_is_one_ternctl_takes() -> anyhow::Result<()> {
    let dir = tern_e2e::examples_dir().join("ci");
    let workflow: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("github-actions.yml"))?)?;
    let steps = workflow["jobs"]["deliver"]["steps"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    let script: String = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let lines = ternctl_lines(&script);
    for needed in ["sign", "push", "apply", "diff", "rollout"] {
        assert!(
            lines.iter().any(|l| l.first().is_some_and(|w| w == needed)),
            "the pipeline runs `ternctl {needed}`"
        );
    }
    assert!(script.contains("--key-env TERN_SIGNING_KEY") && script.contains("--timeout"));
    for line in &lines {
        // clap checks every argument before `--help`: an unknown flag or value fails.
        let out = Command::new(bin("ternctl"))
            .args(line)
            .arg("--help")
            .output()?;
        assert!(
            out.status.success(),
            "ternctl {}: {}",
            line.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The manifest it applies, with a version put in, is valid.
    let manifest = std::fs::read_to_string(dir.join("pipeline.yaml"))?.replace("$VERSION", "7");
    let resources = tern_proto::manifest::parse_sourced(&manifest, "pipeline.yaml")?;
    assert_eq!(resources.len(), 2);
    Ok(())
}

#[test]
fn alert_rules_pass_promtool_and_the_dashboard_has_a_query_per_panel() -> anyhow::Result<()> {
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        deploy_dir().join("grafana/tern-fleet.json"),
    )?)?;
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in &panels {
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(!exprs.is_empty(), "panel {} has no query", panel["title"]);
    }
    if !tool_available(
        Command::new("promtool").arg("--version"),
        "TERN_REQUIRE_PROMTOOL",
        "promtool",
    ) {
        return Ok(());
    }
    let rules = deploy_dir().join("prometheus");
    for args in [
        vec!["check", "rules", "tern-alerts.yml"],
        vec!["test", "rules", "tern-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&rules)
            .output()?;
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn kubernetes_gives_each_node_its_own_token_and_nothing_of_anothers() -> anyhow::Result<()> {
    if !tool_available(
        Command::new("kubectl").args(["version", "--client"]),
        "TERN_REQUIRE_KUBECTL",
        "kubectl (its kustomize)",
    ) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let tokens = tmp.path().join("tokens");
    std::fs::create_dir(&tokens)?;
    std::fs::write(tokens.join("node-a"), "token-of-a")?;
    std::fs::write(tokens.join("node-b"), "token-of-b")?;
    let out = tmp.path().join("agents");
    let made = Command::new("sh")
        .arg(deploy_dir().join("kubernetes/agent/nodes.sh"))
        .arg(&out)
        .args(["node-a", "node-b"])
        .env("TERN_TOKEN_DIR", &tokens)
        .output()?;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let build = |dir: &Path| -> anyhow::Result<Vec<serde_yaml_ng::Value>> {
        let built = Command::new("kubectl").arg("kustomize").arg(dir).output()?;
        anyhow::ensure!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let text = String::from_utf8(built.stdout)?;
        Ok(serde_yaml_ng::Deserializer::from_str(&text)
            .map(serde_yaml_ng::Value::deserialize)
            .collect::<Result<_, _>>()?)
    };
    use base64::Engine as _;
    for (node, other) in [("node-a", "node-b"), ("node-b", "node-a")] {
        let objects = build(&out.join(node))?;
        let secrets: Vec<&serde_yaml_ng::Value> =
            objects.iter().filter(|o| o["kind"] == "Secret").collect();
        assert_eq!(secrets.len(), 1, "one Secret for {node}");
        let secret = secrets[0];
        assert_eq!(
            secret["metadata"]["name"],
            format!("tern-agent-token-{node}").as_str()
        );
        let token = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["token"].as_str().unwrap_or_default())?;
        assert_eq!(token, format!("token-of-{}", &node[5..]).as_bytes());
        let daemonset = objects
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .ok_or_else(|| anyhow::anyhow!("no DaemonSet for {node}"))?;
        let spec = &daemonset["spec"]["template"]["spec"];
        assert_eq!(spec["nodeSelector"]["kubernetes.io/hostname"], node);
        assert_eq!(
            daemonset["spec"]["selector"]["matchLabels"]["tern.dev/node"],
            node
        );
        let secrets_named: Vec<&str> = spec["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(secrets_named, [format!("tern-agent-token-{node}")]);
        // Nothing of the other node's token or Secret anywhere in this node's objects.
        let text = serde_yaml_ng::to_string(&objects)?;
        assert!(
            !text.contains(&format!("tern-agent-token-{other}")),
            "{text}"
        );
        let other_token =
            base64::engine::general_purpose::STANDARD.encode(format!("token-of-{}", &other[5..]));
        assert!(!text.contains(&other_token));
    }
    // Both nodes at once, as `kubectl apply -k` takes them.
    assert_eq!(
        build(&out)?
            .iter()
            .filter(|o| o["kind"] == "DaemonSet")
            .count(),
        2
    );
    Ok(())
}
