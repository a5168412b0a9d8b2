//! Manifests: apply, diff and delete of pipelines and deployments, revisions pinned to
//! digests, and rollout commands, with real processes.

use std::path::Path;

use tern_e2e::{ControlPlane, Publisher, path_str};
use tern_proto::api::{Change, ChangeAction, DeploymentView, PipelineView, ReleaseView};
use tern_proto::message::SignedDesiredState;

const MANIFEST: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: detector }
spec:
  steps:
    - name: classify
      model: net:1
    - name: post
      plugin: topk:1
      config: { k: 3 }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: detector-edge }
spec:
  pipeline: detector
  selector: { site: a }
  rollout:
    strategy: canary
    waves: [50, 100]
    healthWindowSeconds: 5
"#;

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    path_str(&path)
}

fn apply(cp: &ControlPlane, file: &str) -> anyhow::Result<Vec<Change>> {
    Ok(serde_json::from_str(
        &cp.ternctl_ok(&["apply", "-f", file, "-o", "json"])?,
    )?)
}

#[test]
fn apply_pins_revisions_diff_shows_changes_and_delete_removes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |_| {})?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    for (file, kind, name, version) in [
        ("net-1.onnx", "model", "net", 1),
        ("topk-1.wasm", "plugin", "topk", 1),
        ("topk-2.wasm", "plugin", "topk", 2),
    ] {
        let path = tmp.path().join(file);
        std::fs::write(&path, format!("{name} {version}"))?;
        publisher.sign_and_push(&cp, &path, kind, name, version)?;
    }
    let file = write(tmp.path(), "detector.yaml", MANIFEST)?;

    let first = apply(&cp, &file)?;
    assert_eq!(
        first.iter().map(|c| c.action).collect::<Vec<_>>(),
        [ChangeAction::Created, ChangeAction::Created]
    );
    assert_eq!(first[0].revision, Some(1));
    // Applying the same file again changes nothing.
    let again = apply(&cp, &file)?;
    assert!(
        !again.is_empty() && again.iter().all(|c| c.action == ChangeAction::Unchanged),
        "{again:?}"
    );
    assert_eq!(cp.ternctl_ok(&["diff", "-f", &file])?.trim(), "no changes");

    let pipelines: Vec<PipelineView> =
        serde_json::from_str(&cp.ternctl_ok(&["get", "pipelines", "-o", "json"])?)?;
    let releases: Vec<ReleaseView> =
        serde_json::from_str(&cp.ternctl_ok(&["get", "releases", "-o", "json"])?)?;
    let topk1 = releases
        .iter()
        .find(|r| r.name == "topk" && r.version == 1)
        .expect("topk:1");
    assert_eq!(pipelines[0].revision, 1);
    assert_eq!(
        pipelines[0].steps[1].digest, topk1.digest,
        "pinned to the digest"
    );
    assert_eq!(pipelines[0].deployments, ["detector-edge"]);

    // A new plugin version: diff shows it, apply makes revision 2 and a rollout to it.
    let v2 = write(
        tmp.path(),
        "detector-v2.yaml",
        &MANIFEST.replace("topk:1", "topk:2"),
    )?;
    // Changes found: exit 1, as `kubectl diff` does.
    let out = cp.ternctl(&["diff", "-f", &v2]);
    assert_eq!(out.status.code(), Some(1));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("-    plugin: topk:1") && diff.contains("+    plugin: topk:2"),
        "{diff}"
    );
    let second = apply(&cp, &v2)?;
    assert_eq!(second[0].action, ChangeAction::Configured);
    assert_eq!(second[0].revision, Some(2));
    let deployments: Vec<DeploymentView> =
        serde_json::from_str(&cp.ternctl_ok(&["get", "deployments", "-o", "json"])?)?;
    let rollout = deployments[0].rollout.as_ref().expect("a rollout");
    assert_eq!((rollout.target_revision, rollout.waves), (2, 2));
    let table = cp.ternctl_ok(&["get", "deployments"])?;
    assert!(
        table.contains("detector-edge") && table.contains("canary"),
        "{table}"
    );

    // Rollout commands.
    let paused = cp.ternctl_ok(&["rollout", "pause", "detector-edge"])?;
    assert!(paused.contains("Phase:       Paused"), "{paused}");
    let refused = cp.ternctl(&["rollout", "pause", "detector-edge"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing to pause"));
    cp.ternctl_ok(&["rollout", "resume", "detector-edge"])?;
    let undone = cp.ternctl_ok(&["rollout", "undo", "detector-edge"])?;
    assert!(
        undone.contains("RolledBack") && undone.contains("undone by an operator"),
        "{undone}"
    );

    // A pipeline still in use cannot be deleted alone; the whole file can.
    let pipeline_only = write(
        tmp.path(),
        "pipeline-only.yaml",
        MANIFEST.split("---").next().unwrap_or_default(),
    )?;
    let refused = cp.ternctl(&["delete", "-f", &pipeline_only]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("detector-edge"));
    let deleted = cp.ternctl_ok(&["delete", "-f", &v2])?;
    assert!(
        deleted.contains("deployment/detector-edge deleted"),
        "{deleted}"
    );
    assert!(deleted.contains("pipeline/detector deleted"), "{deleted}");
    assert!(
        cp.ternctl_ok(&["get", "pipelines"])?
            .contains("No pipelines")
    );
    // Applied again, it continues the revisions: revision 1 still names the first content.
    let again = apply(&cp, &v2)?;
    assert_eq!(again[0].revision, Some(3), "{again:?}");
    Ok(())
}

#[test]
fn invalid_manifests_name_the_file_the_field_and_the_expectation() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |_| {})?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    let model = tmp.path().join("net.onnx");
    std::fs::write(&model, b"net")?;
    publisher.sign_and_push(&cp, &model, "model", "net", 1)?;

    let cases = [
        (
            MANIFEST.replace("healthWindowSeconds", "healthWindowSecs"),
            "bad.yaml#2: spec.rollout.healthWindowSecs: unknown field",
        ),
        (
            MANIFEST.replace("waves: [50, 100]", "waves: [50, 40]"),
            "bad.yaml#2: spec.rollout.waves[1]: expected a percentage above 50",
        ),
        (
            MANIFEST.to_owned(),
            "bad.yaml#1: spec.steps[1].plugin: release `topk:1` is not pushed",
        ),
        (
            MANIFEST
                .replace("model: net:1", "plugin: net:1")
                .replace("plugin: topk:1", "plugin: net:1"),
            "bad.yaml#1: spec.steps[0].plugin: `net:1` is a model release",
        ),
        (
            MANIFEST
                .split("---")
                .nth(1)
                .unwrap_or_default()
                .replace("pipeline: detector", "pipeline: nothing"),
            "bad.yaml: spec.pipeline: pipeline `nothing` does not exist",
        ),
    ];
    for (text, expected) in cases {
        let file = write(tmp.path(), "bad.yaml", &text)?;
        let out = cp.ternctl(&["apply", "-f", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "applied: {text}");
        let expected = expected.replace("bad.yaml", &file);
        assert!(
            stderr.contains(&expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
    assert!(
        cp.ternctl_ok(&["get", "deployments"])?
            .contains("No deployments")
    );
    Ok(())
}

#[test]
fn canary_first_wave_reaches_one_agent_with_a_signed_desired_state() -> anyhow::Result<()> {
    use tern_e2e::{Agent, fast_config};
    use tern_proto::api::AgentStatus;
    use tern_proto::desired::DesiredStateError;
    use tern_proto::signing::{PublicKey, SecretKey};
    use tern_proto::trust::SignedTrustRoot;

    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    for (file, kind, name) in [
        ("net.onnx", "model", "net"),
        ("topk.wasm", "plugin", "topk"),
    ] {
        let path = tmp.path().join(file);
        std::fs::write(&path, name)?;
        publisher.sign_and_push(&cp, &path, kind, name, 1)?;
    }
    let mut agents = Vec::new();
    for name in ["edge-1", "edge-2", "other"] {
        let site = if name == "other" { "b" } else { "a" };
        let token = cp.token(&format!("site={site}"), "10m")?;
        agents.push(Agent::join(&cp, tmp.path(), name, &token, "")?);
        cp.wait_status(name, AgentStatus::Ready, std::time::Duration::from_secs(30))?;
    }
    // Enrollment handed each agent the online key and the pinned trust root.
    let dir = &agents[0].dir;
    PublicKey::from_text(&std::fs::read_to_string(dir.join("control-plane.pub"))?)?;
    let pinned: SignedTrustRoot =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trust-root.json"))?)?;
    assert_eq!(pinned.signed.version, 1);

    let file = write(tmp.path(), "detector.yaml", MANIFEST)?;
    apply(&cp, &file)?;
    let describe = |name: &str| cp.agent(name);
    let first = tern_e2e::wait_for(
        std::time::Duration::from_secs(10),
        "the first wave's desired state",
        || {
            let view = describe("edge-1").ok()?;
            view.pipelines
                .iter()
                .any(|p| p.name == "detector" && p.desired == Some(1))
                .then_some(view)
        },
    )?;
    assert!(first.desired_generation.is_some(), "{first:?}");
    // Wave 1 is half of the two selected agents: edge-2 waits, and `other` is not selected.
    let second = describe("edge-2")?;
    assert!(second.pipelines.is_empty(), "{second:?}");
    assert!(describe("other")?.pipelines.is_empty());
    // Not committed yet: the state now, and exit 1.
    let out = cp.ternctl(&["rollout", "status", "detector-edge", "--watch=false"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("wave 1 of 2") && status.contains("edge-1"),
        "{status}"
    );
    assert_eq!(out.status.code(), Some(1), "{status}");

    // What edge-1 is sent must open with the control plane's own online key (the one the agent
    // pinned at enrollment), say what the control plane says edge-1 should run, and stop
    // opening once changed or signed by another key.
    let online_key =
        SecretKey::from_pem(&std::fs::read_to_string(cp.dir.join("online.key"))?)?.public();
    agents[0]
        .process
        .terminate(std::time::Duration::from_secs(10))?;
    let data = tern_agent::AgentDataDir::new(&agents[0].dir);
    assert_eq!(
        PublicKey::from_text(&data.read(&data.online_key())?)?,
        online_key,
        "enrollment pinned the control plane's online key"
    );
    let agent_id = data.load_config()?.agent_id;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The rollout may move on meanwhile (the wave can fail on the made-up model): a state is
    // compared with the view only when no new generation came while it was fetched.
    let (signed, view) = tern_e2e::wait_for(
        std::time::Duration::from_secs(30),
        "a desired state of the generation the control plane shows",
        || {
            let before = describe("edge-1").ok()?.desired_generation;
            let signed = runtime
                .block_on(desired_state_sent_to(&cp, &data))
                .map_err(|e| eprintln!("no desired state: {e:#}"))
                .ok()?;
            let after = describe("edge-1").ok()?;
            (before == Some(signed.generation) && after.desired_generation == before)
                .then_some((signed, after))
        },
    )?;
    let state = signed.open(&online_key, &agent_id, 0)?;
    let mut sent: Vec<(String, u64)> = state
        .pipelines
        .iter()
        .map(|p| (p.name.clone(), p.revision))
        .collect();
    let mut shown: Vec<(String, u64)> = view
        .pipelines
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.desired?)))
        .collect();
    sent.sort();
    shown.sort();
    assert_eq!(
        sent, shown,
        "the signed state is the one the control plane shows"
    );
    assert_eq!(
        state.trust_root.as_ref(),
        Some(&pinned),
        "it pins trust root 1"
    );
    // Another revision, and no trust root: a forgery the agent must not run.
    let mut forged = state.clone();
    forged.trust_root = None;
    for pipeline in &mut forged.pipelines {
        pipeline.revision += 1;
    }
    let tampered = SignedDesiredState {
        body: postcard::to_stdvec(&forged)?,
        ..signed.clone()
    };
    assert_eq!(
        tampered.open(&online_key, &agent_id, 0),
        Err(DesiredStateError::BadSignature {
            generation: signed.generation
        }),
        "a changed body keeps no signature"
    );
    let stranger = state.sign(&SecretKey::generate());
    assert_eq!(
        stranger.open(&online_key, &agent_id, 0),
        Err(DesiredStateError::BadSignature {
            generation: signed.generation
        }),
        "only the control plane's key signs desired states"
    );
    Ok(())
}

/// The desired state the control plane sends to a session with the identity of the stopped
/// agent whose data dir is `dir` (it sends the current one, signed afresh, to each session).
async fn desired_state_sent_to(
    cp: &ControlPlane,
    dir: &tern_agent::AgentDataDir,
) -> anyhow::Result<SignedDesiredState> {
    use tern_proto::{ControlMessage, MAX_FRAME_LEN};
    let conn = crate::handshake::connect_as(cp, dir).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = crate::handshake::hello(
        tern_proto::PROTOCOL_VERSION,
        dir.load_config()?.agent_id,
        "edge-1",
        "0",
    );
    tern_proto::io::write_frame(&mut send, &hello, MAX_FRAME_LEN).await?;
    // The welcome and the trust chain come first.
    let desired = async {
        loop {
            let frame: Option<ControlMessage> =
                tern_proto::io::read_frame(&mut recv, MAX_FRAME_LEN).await?;
            match frame {
                Some(ControlMessage::DesiredState(signed)) => break Ok::<_, anyhow::Error>(signed),
                Some(_) => {}
                None => break Err(anyhow::anyhow!("the stream ended before a desired state")),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), desired).await?
}
