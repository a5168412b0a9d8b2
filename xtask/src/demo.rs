//! `cargo xtask demo`: the quickstart, end to end on loopback.
//!
//! Until deployments exist it shows the foundation: a control plane, two agents enrolled with
//! one-time tokens, the fleet as `ternctl` sees it, and an orderly shutdown.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

struct Bins {
    control_plane: PathBuf,
    agent: PathBuf,
    ternctl: PathBuf,
}

/// A child that is terminated (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    name: String,
    child: Child,
}

impl Daemon {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// SIGTERM and wait: the orderly path a service manager takes.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status}", self.name);
                }
                println!("  {:<16} stopped cleanly", self.name);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not stop within 10s of SIGTERM", self.name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn target_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let addr = udp.local_addr()?;
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr.port());
        }
    }
    bail!("no free loopback port")
}

fn ternctl(bins: &Bins, config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(&bins.ternctl)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "ternctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub fn run() -> anyhow::Result<()> {
    println!("==> building the workspace");
    // The same selection as `cargo xtask test`, so both share one build of everything.
    crate::cargo(&["build", "--locked", "--workspace", "--all-targets"])?;
    let bin_dir = target_dir()?.join("debug");
    let bins = Bins {
        control_plane: bin_dir.join("tern-control-plane"),
        agent: bin_dir.join("tern-agent"),
        ternctl: bin_dir.join("ternctl"),
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    if let Err(e) = quickstart(&bins, tmp.path()) {
        // Keep the daemons' logs for the person reading the error.
        let kept = tmp.keep();
        eprintln!("logs kept in {}", kept.display());
        return Err(e);
    }
    println!("\ndemo finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn quickstart(bins: &Bins, root: &Path) -> anyhow::Result<()> {
    let agents_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let cp_dir = root.join("control-plane");

    println!(
        "\n==> tern-control-plane init --data-dir {}",
        cp_dir.display()
    );
    let status = Command::new(&bins.control_plane)
        .arg("init")
        .arg("--data-dir")
        .arg(&cp_dir)
        .arg("--listen-agents")
        .arg(agents_addr.to_string())
        .arg("--listen-api")
        .arg(api_addr.to_string())
        .status()?;
    if !status.success() {
        bail!("init failed");
    }

    println!("\n==> tern-control-plane serve");
    let cp = Daemon::spawn(
        "control plane",
        Command::new(&bins.control_plane)
            .arg("serve")
            .arg("--data-dir")
            .arg(&cp_dir),
        &root.join("control-plane.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&api_addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("the control plane did not start; see its log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let config = cp_dir.join("ternctl.toml");

    let mut agents = Vec::new();
    for (name, site) in [("edge-berlin", "a"), ("edge-lisbon", "b")] {
        let labels = format!("site={site}");
        println!("\n==> ternctl token create --labels {labels} --ttl 10m");
        let token = ternctl(
            bins,
            &config,
            &["token", "create", "--labels", &labels, "--ttl", "10m"],
        )?;
        let token = token.trim();
        println!("{}...", &token[..token.len().min(24)]);
        println!("==> tern-agent join --control-plane {agents_addr} --token <token> --name {name}");
        let api_port = free_port()?;
        agents.push(Daemon::spawn(
            name,
            Command::new(&bins.agent)
                .arg("join")
                .arg("--control-plane")
                .arg(agents_addr.to_string())
                .arg("--token")
                .arg(token)
                .arg("--data-dir")
                .arg(root.join(name))
                .arg("--name")
                .arg(name)
                .arg("--labels")
                .arg("tier=edge")
                .arg("--listen-api")
                .arg(format!("127.0.0.1:{api_port}")),
            &root.join(format!("{name}.log")),
        )?);
    }

    println!("\n==> waiting for both agents to be Ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let json = ternctl(bins, &config, &["get", "agents", "-o", "json"])?;
        let list: serde_json::Value = serde_json::from_str(&json)?;
        let ready = list
            .as_array()
            .map(|a| a.iter().filter(|x| x["status"] == "Ready").count())
            .unwrap_or(0);
        if ready == 2 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "agents did not become Ready; logs are in {}",
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give GPU discovery (run in a child process by each agent) a moment to report.
    std::thread::sleep(Duration::from_millis(1500));

    println!("\n==> ternctl get agents");
    print!("{}", ternctl(bins, &config, &["get", "agents"])?);
    println!("\n==> ternctl describe agent edge-berlin");
    print!(
        "{}",
        ternctl(bins, &config, &["describe", "agent", "edge-berlin"])?
    );

    println!("\n==> shutting down (SIGTERM)");
    for agent in agents {
        agent.stop()?;
    }
    cp.stop()?;
    Ok(())
}
