//! `quickstart`: what `cargo xtask demo` runs. A control plane and two agents on loopback; keys
//! and a trust root; `image-prep`, `topk` and a generated colour model signed and pushed; a
//! canary deployment; sample images classified through both agents' local APIs; a new model
//! version rolled out in waves; a broken plugin rolled back automatically; an orderly shutdown.
//!
//! `quickstart --plugins DIR`: DIR holds `image_prep.wasm`, `topk.wasm` and
//! `hostile_fixture.wasm` (built by `cargo xtask plugins`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tern_e2e::assets::{self, SAMPLES};
use tern_e2e::{Agent, ControlPlane, Publisher, fast_config, http, path_str, wait_for};
use tern_proto::api::{AgentStatus, DeploymentView};

const DEPLOYMENT: &str = "colors-edge";
const WAIT: Duration = Duration::from_secs(60);

fn say(text: &str) {
    println!("\n==> {text}");
}

fn manifest(model: &str, post: &str, post_config: &str) -> String {
    format!(
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: {{ name: colors }}
spec:
  steps:
    - name: prep
      plugin: image-prep:1
      config: {{ size: 32, mean: [0, 0, 0], std: [1, 1, 1], tensor: input }}
      limits: {{ timeoutMs: 1000, memoryMiB: 64 }}
    - name: classify
      model: {model}
      device: auto
    - name: post
      plugin: {post}
      config: {post_config}
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: {{ name: {DEPLOYMENT} }}
spec:
  pipeline: colors
  selector: {{ tier: edge }}
  rollout:
    strategy: canary
    waves: [50, 100]
    healthWindowSeconds: 3
    maxErrorRate: 0.05
    autoRollback: true
"#
    )
}

fn topk_config(version: u64) -> String {
    let labels: Vec<String> = assets::labels(version)
        .iter()
        .map(|l| format!("\"{l}\""))
        .collect();
    format!("{{ k: 2, labels: [{}] }}", labels.join(", "))
}

struct Demo {
    root: PathBuf,
    cp: ControlPlane,
    publisher: Publisher,
    agents: Vec<Agent>,
}

impl Demo {
    fn ternctl(&self, args: &[&str]) -> anyhow::Result<String> {
        println!("$ ternctl {}", args.join(" "));
        let out = self.cp.ternctl_ok(args)?;
        print!("{out}");
        Ok(out)
    }

    /// Like [`Demo::ternctl`], where exit codes in `codes` say something other than failure
    /// (`diff` exits 1 when there are changes, `rollout status` when not committed).
    fn ternctl_allowing(&self, args: &[&str], codes: &[i32]) -> anyhow::Result<String> {
        println!("$ ternctl {}", args.join(" "));
        let out = self.cp.ternctl(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        match out.status.code() {
            Some(0) => {}
            Some(code) if codes.contains(&code) => println!("(exit {code})"),
            _ => anyhow::bail!("ternctl {} failed ({})", args.join(" "), out.status),
        }
        Ok(text)
    }

    fn rollout(&self) -> anyhow::Result<DeploymentView> {
        self.cp.deployment(DEPLOYMENT)
    }

    /// Prints the rollout of `revision` as it happens until it completes or rolls back, while
    /// `traffic` runs between polls. Returns the final phase.
    fn follow(
        &self,
        revision: u64,
        mut traffic: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<String> {
        let mut printed = 0;
        let start = Instant::now();
        loop {
            if let Some(r) = self
                .rollout()?
                .rollout
                .filter(|r| r.target_revision == revision)
            {
                for (at, what) in r.history.iter().skip(printed) {
                    println!("    {at}  {what}");
                }
                printed = r.history.len();
                if matches!(r.phase.as_str(), "Complete" | "RolledBack" | "Failed") {
                    return Ok(r.phase);
                }
            }
            if start.elapsed() > WAIT {
                bail!("the rollout of revision {revision} did not finish within {WAIT:?}");
            }
            traffic()?;
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Sends `image` to agent `i`'s local API; returns the status and the answer.
    fn classify(&self, i: usize, image: &Path) -> anyhow::Result<(u16, serde_json::Value)> {
        let (status, body) = http(
            self.agents[i].api_addr()?,
            "POST",
            "/v1/pipelines/colors/infer",
            "image/png",
            &std::fs::read(image)?,
        )?;
        Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
    }

    fn show_answers(&self, images: &[&str]) -> anyhow::Result<()> {
        for (i, agent) in self.agents.iter().enumerate() {
            for name in images {
                let (status, answer) = self.classify(i, &self.root.join("samples").join(name))?;
                let text = if status == 200 {
                    answer["predictions"][0]
                        .as_array()
                        .map(|p| {
                            p.iter()
                                .map(|x| {
                                    format!(
                                        "{} {:.2}",
                                        x["label"].as_str().unwrap_or("?"),
                                        x["score"].as_f64().unwrap_or(0.0)
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                } else {
                    format!("HTTP {status}: {}", answer["error"])
                };
                println!("    {:<12} {name:<16} → {text}", agent.name);
            }
        }
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<String> {
        let path = self.root.join(name);
        std::fs::write(&path, text)?;
        path_str(&path)
    }

    fn push(&self, file: &Path, kind: &str, name: &str, version: u64) -> anyhow::Result<()> {
        let f = path_str(file)?;
        let v = version.to_string();
        let key = path_str(&self.publisher.key("publisher.key"))?;
        self.ternctl(&[
            "sign",
            "--key",
            &key,
            "--kind",
            kind,
            "--name",
            name,
            "--version",
            &v,
            &f,
        ])?;
        self.ternctl(&["push", "--quiet", &f])?;
        Ok(())
    }
}

fn run(plugins: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_owned();
    say("a control plane and two agents on loopback");
    let cp = ControlPlane::start(&root, fast_config)?;
    println!(
        "    control plane: agents on {}, admin API on {}",
        cp.agent_addr, cp.api_addr
    );
    let mut agents = Vec::new();
    for (name, site) in [("edge-berlin", "a"), ("edge-lisbon", "b")] {
        let token = cp.token(&format!("site={site}"), "10m")?;
        // Telemetry every second instead of ten, so that `top` has figures before the end.
        agents.push(Agent::join_with(
            &cp,
            &root,
            name,
            &token,
            "tier=edge",
            &["--telemetry-interval", "1s"],
        )?);
        cp.wait_status(name, AgentStatus::Ready, WAIT)?;
        println!("    {name} joined (site={site}, tier=edge)");
    }

    say("publisher keys and the trust root (the root key stays offline)");
    let publisher = Publisher::generate(&cp, &root)?;
    for name in ["root", "publisher"] {
        println!(
            "$ ternctl keys generate --out {}",
            publisher.key(name).display()
        );
    }
    let demo = Demo {
        root: root.clone(),
        cp,
        publisher,
        agents,
    };
    demo.ternctl(&[
        "trust",
        "init",
        "--root-key",
        &path_str(&demo.publisher.key("root.key"))?,
        "--publisher",
        &path_str(&demo.publisher.key("publisher.pub"))?,
        "--out",
        &path_str(&root.join("trust-root.json"))?,
    ])?;

    say("sign and push image-prep, topk and a generated colour model");
    let samples = root.join("samples");
    std::fs::create_dir_all(&samples)?;
    for (name, rgb) in SAMPLES {
        std::fs::write(samples.join(name), assets::sample_png(rgb))?;
    }
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
    let model_v1 = root.join("color-net-1.onnx");
    std::fs::write(&model_v1, assets::color_model(1))?;
    demo.push(&model_v1, "model", "color-net", 1)?;
    demo.ternctl(&["get", "releases"])?;

    say("apply a canary deployment: waves of 50% and 100%, each healthy for 3s");
    let file = demo.write(
        "colors.yaml",
        &manifest("color-net:1", "topk:1", &topk_config(1)),
    )?;
    demo.ternctl(&["apply", "-f", &file])?;
    let phase = demo.follow(1, || Ok(()))?;
    println!("    rollout {phase}");

    say("sample images through both agents' local APIs (POST /v1/pipelines/colors/infer)");
    demo.show_answers(&[
        "red-part.png",
        "green-part.png",
        "blue-part.png",
        "steel-part.png",
    ])?;

    say("publish color-net:2 (learns yellow) and roll it out in waves");
    let model_v2 = root.join("color-net-2.onnx");
    std::fs::write(&model_v2, assets::color_model(2))?;
    demo.push(&model_v2, "model", "color-net", 2)?;
    let file = demo.write(
        "colors.yaml",
        &manifest("color-net:2", "topk:1", &topk_config(2)),
    )?;
    demo.ternctl_allowing(&["diff", "-f", &file], &[1])?;
    demo.ternctl(&["apply", "-f", &file])?;
    let phase = demo.follow(2, || Ok(()))?;
    println!("    rollout {phase}");
    demo.show_answers(&["yellow-part.png"])?;

    say("publish a broken topk:2 (it panics on every request) and watch the canary");
    let broken = root.join("topk-2.wasm");
    std::fs::copy(plugins.join("hostile_fixture.wasm"), &broken)?;
    demo.push(&broken, "plugin", "topk", 2)?;
    let file = demo.write(
        "colors.yaml",
        &manifest("color-net:2", "topk:2", "{ mode: panic }"),
    )?;
    demo.ternctl(&["apply", "-f", &file])?;
    let image = samples.join("red-part.png");
    let mut failed = 0;
    let phase = demo.follow(3, || {
        // Production traffic on every agent; the canary's answers fail.
        for i in 0..demo.agents.len() {
            let (status, _) = demo.classify(i, &image)?;
            if status >= 500 {
                failed += 1;
            }
        }
        Ok(())
    })?;
    println!("    rollout {phase} after {failed} failed request(s) on the canary");
    if phase != "RolledBack" {
        bail!("the broken release was not rolled back");
    }
    wait_for(WAIT, "both agents back on revision 2", || {
        demo.rollout()
            .ok()?
            .rollout?
            .agents
            .iter()
            .all(|a| a.serving == Some(2))
            .then_some(())
    })?;
    demo.show_answers(&["red-part.png"])?;

    say("the fleet and the rollout");
    demo.ternctl(&["get", "agents"])?;
    demo.ternctl_allowing(&["rollout", "status", DEPLOYMENT, "--watch=false"], &[1])?;

    say("what the agents measured (store-and-forward telemetry)");
    wait_for(WAIT, "both agents' telemetry", || {
        let text = demo.cp.ternctl_ok(&["top", "agents", "-o", "json"]).ok()?;
        let rows: Vec<tern_proto::api::AgentTop> = serde_json::from_str(&text).ok()?;
        (rows.len() == 2 && rows.iter().all(|a| a.rps > 0.0)).then_some(())
    })?;
    demo.ternctl(&["top", "pipelines", "--window", "5m"])?;
    demo.ternctl(&["top", "agents"])?;

    say("shutting down (SIGTERM)");
    let Demo { mut cp, agents, .. } = demo;
    for mut agent in agents {
        let clean = agent.process.terminate(Duration::from_secs(10))?;
        println!(
            "    {:<14} stopped {}",
            agent.name,
            if clean { "cleanly" } else { "with an error" }
        );
        if !clean {
            bail!("{} did not stop cleanly", agent.name);
        }
    }
    if let Some(process) = cp.process.as_mut() {
        let clean = process.terminate(Duration::from_secs(10))?;
        println!(
            "    control plane  stopped {}",
            if clean { "cleanly" } else { "with an error" }
        );
        if !clean {
            bail!("the control plane did not stop cleanly");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let plugins = match (args.next().as_deref(), args.next()) {
        (Some("--plugins"), Some(dir)) => PathBuf::from(dir),
        _ => {
            eprintln!("usage: quickstart --plugins DIR");
            return std::process::ExitCode::from(2);
        }
    };
    let started = Instant::now();
    match run(&plugins) {
        Ok(()) => {
            println!(
                "\nquickstart finished in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
