//! Attacks and faults on deployments, with real processes: each is refused by the agent,
//! reported to the control plane with the reason, and the running revision keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_e2e::{Agent, ControlPlane, Publisher, component, fast_config, http, path_str};
use tern_proto::api::{AgentStatus, AgentView, DeploymentView};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A pipeline of one `topk` step, `release` pinned, deployed everywhere at once.
fn manifest(release: &str, k: u32) -> String {
    format!(
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: {{ name: scores }}
spec:
  steps:
    - name: post
      plugin: {release}
      config: {{ k: {k} }}
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: {{ name: scores }}
spec:
  pipeline: scores
  rollout: {{ healthWindowSeconds: 0 }}
"#
    )
}

struct Fleet {
    tmp: tempfile::TempDir,
    cp: ControlPlane,
    publisher: Publisher,
    agent: Agent,
}

impl Fleet {
    fn start() -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let cp = ControlPlane::start(tmp.path(), fast_config)?;
        let publisher = Publisher::generate(&cp, tmp.path())?;
        publisher.trust_init(&cp)?;
        let token = cp.token("site=a", "10m")?;
        let agent = Agent::join(&cp, tmp.path(), "edge-1", &token, "")?;
        cp.wait_status("edge-1", AgentStatus::Ready, TIMEOUT)?;
        Ok(Self {
            tmp,
            cp,
            publisher,
            agent,
        })
    }

    /// A copy of the `topk` component, made distinct by a custom section named `tag`.
    fn topk(&self, tag: &str) -> anyhow::Result<PathBuf> {
        let mut bytes = std::fs::read(component("topk"))?;
        let name = tag.as_bytes();
        bytes.push(0);
        bytes.push(u8::try_from(name.len() + 1)?);
        bytes.push(u8::try_from(name.len())?);
        bytes.extend_from_slice(name);
        let path = self.tmp.path().join(format!("topk-{tag}.wasm"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    fn push(&self, file: &Path, version: u64) -> anyhow::Result<()> {
        self.publisher
            .sign_and_push(&self.cp, file, "plugin", "topk", version)?;
        Ok(())
    }

    fn apply(&self, release: &str, k: u32) -> anyhow::Result<()> {
        let path = self.tmp.path().join("scores.yaml");
        std::fs::write(&path, manifest(release, k))?;
        self.cp.ternctl_ok(&["apply", "-f", &path_str(&path)?])?;
        Ok(())
    }

    fn rollout(&self) -> anyhow::Result<DeploymentView> {
        Ok(serde_json::from_str(&self.cp.ternctl_ok(&[
            "rollout", "status", "scores", "-o", "json",
        ])?)?)
    }

    fn agent_view(&self) -> anyhow::Result<AgentView> {
        Ok(serde_json::from_str(&self.cp.ternctl_ok(&[
            "describe", "agent", "edge-1", "-o", "json",
        ])?)?)
    }

    /// Waits for the rollout of `revision` to reach `phase`.
    fn wait_phase(&self, revision: u64, phase: &str) -> anyhow::Result<DeploymentView> {
        tern_e2e::wait_for(TIMEOUT, &format!("revision {revision} {phase}"), || {
            self.rollout().ok().filter(|d| {
                d.rollout
                    .as_ref()
                    .is_some_and(|r| r.target_revision == revision && r.phase == phase)
            })
        })
    }

    /// The reason the agent reported for failing revision `revision`.
    fn failure(&self, revision: u64) -> anyhow::Result<String> {
        tern_e2e::wait_for(TIMEOUT, "the agent's failure report", || {
            let view = self.agent_view().ok()?;
            view.pipelines
                .iter()
                .find(|p| p.phase.as_deref() == Some("Failed"))
                .map(|p| p.message.clone())
        })
        .or_else(|e| {
            let rollout = self.rollout()?;
            anyhow::bail!("{e}: revision {revision}: {rollout:?}")
        })
    }

    /// Sends one request to the agent; returns the HTTP status.
    fn infer(&self) -> anyhow::Result<u16> {
        let body = serde_json::json!({
            "inputs": [{"name": "logits", "shape": [3], "datatype": "FP32", "data": [0.5, 2.0, 1.0]}]
        });
        let (status, _) = http(
            self.agent.api_addr()?,
            "POST",
            "/v2/models/scores/infer",
            "application/json",
            body.to_string().as_bytes(),
        )?;
        Ok(status)
    }

    /// Waits until the agent serves `revision`.
    fn wait_serving(&self, revision: u64) -> anyhow::Result<()> {
        tern_e2e::wait_for(TIMEOUT, &format!("edge-1 serving {revision}"), || {
            let view = self.agent_view().ok()?;
            view.pipelines
                .iter()
                .any(|p| p.serving == Some(revision))
                .then_some(())
        })
    }
}

#[test]
fn tampered_artifact_bytes_are_refused_and_the_running_revision_keeps_serving() -> anyhow::Result<()>
{
    let fleet = Fleet::start()?;
    fleet.push(&fleet.topk("one")?, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_phase(1, "Complete")?;
    assert_eq!(fleet.infer()?, 200);

    // The control plane's copy of a new artifact is altered after it was verified there.
    let two = fleet.topk("two")?;
    fleet.push(&two, 2)?;
    let release: tern_proto::release::SignedRelease = serde_json::from_str(
        &std::fs::read_to_string(tern_e2e::Publisher::release_file(&two))?,
    )?;
    let stored = fleet
        .cp
        .dir
        .join("artifacts")
        .join(release.signed.digest.hex());
    let mut bytes = std::fs::read(&stored)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes)?;

    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure(2)?;
    assert!(reason.contains("has digest"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    assert_eq!(fleet.infer()?, 200, "revision 1 keeps serving");
    assert_eq!(fleet.agent_view()?.pipelines[0].serving, Some(1));
    Ok(())
}

#[test]
fn release_below_the_version_floor_is_refused_also_after_the_agent_restarts() -> anyhow::Result<()>
{
    let mut fleet = Fleet::start()?;
    fleet.push(&fleet.topk("one")?, 1)?;
    fleet.push(&fleet.topk("two")?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(1, "Complete")?;
    // Completion commits topk:2 on the agent: its floor is now 2.
    tern_e2e::wait_for(TIMEOUT, "the committed generation applied", || {
        let view = fleet.agent_view().ok()?;
        (view.applied_generation == view.desired_generation).then_some(())
    })?;

    fleet.apply("topk:1", 2)?;
    let reason = fleet.failure(2)?;
    assert!(reason.contains("below the version floor 2"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    assert_eq!(fleet.infer()?, 200);

    // After a restart the floor still holds.
    fleet.agent.process.terminate(Duration::from_secs(10))?;
    fleet.agent = Agent::run(fleet.tmp.path(), "edge-1")?;
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::Ready, TIMEOUT)?;
    fleet.wait_serving(1)?;
    assert_eq!(
        fleet.infer()?,
        200,
        "serves its revision again after the restart"
    );
    fleet.apply("topk:1", 3)?;
    let reason = fleet.failure(3)?;
    assert!(reason.contains("below the version floor 2"), "{reason}");
    fleet.wait_phase(3, "RolledBack")?;
    assert_eq!(fleet.infer()?, 200);
    Ok(())
}

#[test]
fn expired_release_is_refused_by_the_agent() -> anyhow::Result<()> {
    let fleet = Fleet::start()?;
    fleet.push(&fleet.topk("one")?, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_phase(1, "Complete")?;

    let short = fleet.topk("short")?;
    fleet.cp.ternctl_ok(&[
        "sign",
        "--key",
        &path_str(&fleet.publisher.key("publisher.key"))?,
        "--kind",
        "plugin",
        "--name",
        "topk",
        "--version",
        "2",
        "--expires",
        "2s",
        &path_str(&short)?,
    ])?;
    fleet
        .cp
        .ternctl_ok(&["push", "--quiet", &path_str(&short)?])?;
    std::thread::sleep(Duration::from_millis(2500));
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure(2)?;
    assert!(reason.contains("expired"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    assert_eq!(fleet.infer()?, 200);
    Ok(())
}
