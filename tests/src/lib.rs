//! Harness for whole-system tests: real `tern-control-plane`, `tern-agent` and `ternctl`
//! processes, talking QUIC and HTTPS on loopback, with sled on disk in temporary directories.
//!
//! The binaries must be built first (`cargo xtask test` does it); they are found next to the test
//! executable's directory, in the same target profile. [`sim`] is the other harness: a fleet
//! in memory, on a virtual clock.

pub mod assets;
pub mod counter;
pub mod proxy;
pub mod sim;
pub mod supervise;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tern_control_plane::{ControlPlaneConfig, DataDir, InitOptions};
use tern_proto::api::{AgentStatus, AgentView, DeploymentView};

/// Path of one of the workspace's binaries, built in the same profile as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("executable directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo xtask test` does, or `cargo build --bins`)",
        path.display()
    );
    path
}

/// A plugin component built by `cargo xtask test` (dev profile, wasm32-wasip2), e.g. `topk`.
pub fn component(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let file = format!("{}.wasm", name.replace('-', "_"));
    // target/debug/deps/<test> or target/debug/<bin>: the target directory is an ancestor.
    let path = exe
        .ancestors()
        .map(|dir| dir.join("wasm32-wasip2/debug").join(&file))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/wasm32-wasip2/debug").join(&file));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test` (it builds the plugins)",
        path.display()
    );
    path
}

/// Whether a tool a test needs is here: `probe` runs and succeeds. When it is not, the test
/// skips, unless the variable `required_by` is `1` (CI sets it where it installs the tool):
/// then the test fails, naming `what` is missing.
pub fn tool_available(probe: &mut Command, required_by: &str, what: &str) -> bool {
    let found = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        tern_skips::skip_unless_required(required_by, format!("{what} is missing"));
    }
    found
}

/// Python with Triton's clients, ONNX Runtime and NumPy (`pip install 'tritonclient[http,grpc]'
/// onnxruntime numpy`), or a skip (a failure with `TERN_REQUIRE_TRITON=1`).
pub fn triton_clients_available() -> bool {
    tool_available(
        Command::new("python3").args([
            "-c",
            "import tritonclient.http, tritonclient.grpc, onnxruntime, numpy",
        ]),
        "TERN_REQUIRE_TRITON",
        "python3 with tritonclient[http,grpc], onnxruntime and numpy",
    )
}

/// Whether something accepts TCP connections on `addr`. A connection whose two ends are the
/// same address is a TCP self-connect (the kernel picked the target port as the source port while
/// nothing listened), not a listener.
pub fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .is_ok_and(|stream| stream.local_addr().ok() != stream.peer_addr().ok())
}

/// The `p` quantile (0..=1) of `sorted` durations, nearest rank; zero when empty. For benches.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// The repository's `examples/` (models, plugins' sources, manifests), found at run time.
pub fn examples_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../examples")
}

/// A loopback port free for both UDP and TCP (QUIC and enrollment share the number), never
/// handed out before in this process: tests run in parallel, and a port one test was given but
/// has not bound yet is free again to the system. Two control planes on one port would let a
/// test talk to another test's.
///
/// The port lies below the kernel's ephemeral range, where neither `connect` nor a bind to port
/// 0 ever picks one: a port given here stays free until the process under test binds it, and
/// again between that process's stop and its restart on the same port. (Inside the range, any
/// outgoing connection, such as a test polling another agent's API, can take it as its source
/// port, and the restarted agent or control plane then fails to bind.)
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral = ephemeral_ports();
    let below = FIRST_TEST_PORT..(*ephemeral.start()).max(FIRST_TEST_PORT);
    let span = below.len();
    if span >= 1024 {
        // Start at a random place, so that a run beside another finds a free port at once.
        let seed = std::process::id() as usize
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as usize);
        for i in 0..span {
            let port = below.start + (seed.wrapping_add(i) % span) as u16;
            if !given.contains(&port) && bindable(port) {
                given.push(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else { continue };
        if !given.contains(&addr.port()) && TcpListener::bind(addr).is_ok() {
            given.push(addr.port());
            return addr.port();
        }
    }
    panic!("no free loopback port");
}

/// The lowest port [`free_port`] hands out (above the registered services most machines run).
const FIRST_TEST_PORT: u16 = 20_000;

/// The ports the kernel picks for outgoing connections and binds to port 0.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            Some(bounds.next()?.ok()?..=bounds.next()?.ok()?)
        })
        .unwrap_or(32_768..=60_999)
}

/// Whether both a UDP socket and a TCP listener can bind `port` on loopback.
fn bindable(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    wait_for_every(Duration::from_millis(50), timeout, what, check)
}

/// Polls `check` every `interval` until it returns `Some` or `timeout` passes.
pub fn wait_for_every<T>(
    interval: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval);
    }
}

/// A child process killed when dropped; its stderr goes to a log file.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        if !cmd.get_envs().any(|(k, _)| k == "TERN_LOG") {
            cmd.env("TERN_LOG", "info,tern_control_plane=debug,tern_agent=debug");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawn process")?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to close connections or flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for exit; returns whether it exited successfully within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "process {} did not exit within {timeout:?} of SIGTERM",
            self.child.id()
        )
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The exit code, once the process has exited (`None` while it runs, or killed by a
    /// signal).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Timing for tests: heartbeats fast enough that NotReady shows within a second or two.
pub fn fast_config(config: &mut ControlPlaneConfig) {
    config.heartbeat_interval = Duration::from_millis(200);
    config.not_ready_after = Duration::from_millis(1500);
}

/// A control plane process in a temporary directory.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub process: Option<Process>,
    /// `TERN_LOG` of the serve process.
    pub log_filter: String,
    /// Where the serve logs go (the data dir unless a test moves them).
    pub log_dir: PathBuf,
    /// More environment variables of the serve process (the object store's `AWS_*`).
    pub env: Vec<(String, String)>,
}

impl ControlPlane {
    /// `init` (with `tune` applied to config.toml) and `serve`, waiting until the API answers.
    pub fn start(root: &Path, tune: impl FnOnce(&mut ControlPlaneConfig)) -> anyhow::Result<Self> {
        let mut cp = Self::init(root, tune)?;
        cp.serve()?;
        Ok(cp)
    }

    /// `init` only, with `tune` applied to config.toml.
    pub fn init(root: &Path, tune: impl FnOnce(&mut ControlPlaneConfig)) -> anyhow::Result<Self> {
        let dir = root.join("control-plane");
        let agent_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let data = DataDir::new(&dir);
        let mut config = data.init(&InitOptions {
            listen_agents: Some(agent_addr),
            listen_api: Some(api_addr),
            ..InitOptions::default()
        })?;
        tune(&mut config);
        std::fs::write(data.config(), config.to_toml())?;
        Ok(Self {
            log_dir: dir.clone(),
            dir,
            agent_addr,
            api_addr,
            process: None,
            log_filter: "info,tern_control_plane=debug".into(),
            env: Vec::new(),
        })
    }

    /// The value of an unlabelled gauge on its `/metrics`.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        let page = self.admin_get("/metrics").ok()?;
        page.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Whether it holds the work lease (its `/metrics` says so).
    pub fn holds_work_lease(&self) -> bool {
        self.gauge("tern_control_plane_work_lease_held") == Some(1.0)
    }

    /// Two replicas serving one store (`store`, a PostgreSQL URL) and one artifact store
    /// (`artifacts`; `env`: its `AWS_*` settings), in `root/a` and `root/b`, with
    /// `lease_ttl`: the first, once it holds the work lease, then the second.
    pub fn replica_pair(
        root: &Path,
        store: &str,
        artifacts: String,
        env: Vec<(String, String)>,
        lease_ttl: Duration,
    ) -> anyhow::Result<(Self, Self)> {
        let mut first = Self::init(&root.join("a"), |config| {
            fast_config(config);
            config.store = Some(store.to_owned());
            config.artifacts = Some(artifacts);
            config.lease_ttl = lease_ttl;
        })?;
        first.env = env;
        first.serve()?;
        wait_for(
            FLEET_TIMEOUT,
            "the first replica holding the work lease",
            || first.holds_work_lease().then_some(()),
        )?;
        let mut second = Self::replica(root, "b", &first)?;
        second.serve()?;
        Ok((first, second))
    }

    /// Another replica of `first` (`tern-control-plane replica init --from`) in `root/name`,
    /// on addresses of its own; not yet serving.
    pub fn replica(root: &Path, name: &str, first: &ControlPlane) -> anyhow::Result<Self> {
        let dir = root.join(name);
        let agent_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let output = Command::new(bin("tern-control-plane"))
            .args(["replica", "init", "--from"])
            .arg(&first.dir)
            .arg("--data-dir")
            .arg(&dir)
            .arg("--listen-agents")
            .arg(agent_addr.to_string())
            .arg("--listen-api")
            .arg(api_addr.to_string())
            .output()?;
        if !output.status.success() {
            bail!(
                "replica init failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self {
            log_dir: dir.clone(),
            dir,
            agent_addr,
            api_addr,
            process: None,
            log_filter: first.log_filter.clone(),
            env: first.env.clone(),
        })
    }

    /// Starts (or restarts) `tern-control-plane serve`.
    pub fn serve(&mut self) -> anyhow::Result<()> {
        let n = std::fs::read_dir(&self.log_dir)?.count();
        let log = self.log_dir.join(format!("serve-{n}.log"));
        let process = Process::spawn(
            Command::new(bin("tern-control-plane"))
                .arg("serve")
                .arg("--data-dir")
                .arg(&self.dir)
                .env("TERN_LOG", &self.log_filter)
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            log,
        )?;
        self.process = Some(process);
        let api = self.api_addr;
        // Answering with this control plane's CA: not another test's on the same port.
        let started = wait_for(Duration::from_secs(20), "the control plane's API", || {
            if self.process.as_mut().is_some_and(Process::exited) {
                return Some(false);
            }
            (listening(api) && self.admin_get("/livez").is_ok()).then_some(true)
        })?;
        if !started {
            bail!("the control plane exited at start: {}", self.log_text());
        }
        Ok(())
    }

    /// Stops `serve` with SIGTERM (an orderly shutdown), waiting up to 10 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    pub fn ternctl_config(&self) -> PathBuf {
        self.dir.join("ternctl.toml")
    }

    /// A client of the admin API with the admin token, from `ternctl.toml`.
    pub fn admin_client(&self) -> anyhow::Result<tern_transport::https::HttpsClient> {
        let text = std::fs::read_to_string(self.ternctl_config())?;
        let config: tern_proto::api::CliConfig = toml::from_str(&text)?;
        let tls = tern_transport::tls::https_client(&config.ca_certificate)?;
        Ok(
            tern_transport::https::HttpsClient::new(config.api.clone(), tls)
                .with_bearer(config.admin_token),
        )
    }

    /// `GET path` on the admin API with the admin token; the body as text.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let client = self.admin_client()?;
        // On a thread of its own: callers may be inside a tokio runtime already.
        let body = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    anyhow::Ok(runtime.block_on(client.send(hyper::Method::GET, path, None))?)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the admin request's thread panicked"))?
        })?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Runs `ternctl --config <ours> ARGS`.
    pub fn ternctl(&self, args: &[&str]) -> Output {
        Command::new(bin("ternctl"))
            .arg("--config")
            .arg(self.ternctl_config())
            .args(args)
            .output()
            .expect("run ternctl")
    }

    /// Runs `ternctl ARGS` and returns its stdout, or fails with its stderr.
    pub fn ternctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ternctl(args);
        if !out.status.success() {
            bail!(
                "ternctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs ternctl expecting it to fail; returns what it printed on stderr.
    pub fn ternctl_fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ternctl(args);
        if out.status.success() {
            bail!("ternctl {} succeeded; expected a failure", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Writes `manifest` to `file` and applies it with `ternctl apply -f`, which must succeed;
    /// returns its output.
    pub fn apply_manifest(
        &self,
        file: &Path,
        manifest: impl AsRef<[u8]>,
    ) -> anyhow::Result<String> {
        std::fs::write(file, manifest)?;
        self.ternctl_ok(&["apply", "-f", &path_str(file)?])
    }

    /// Writes `manifest` to `file` and applies it with `ternctl apply -f`, which must refuse it;
    /// returns its stderr.
    pub fn apply_refused(&self, file: &Path, manifest: impl AsRef<[u8]>) -> anyhow::Result<String> {
        std::fs::write(file, manifest)?;
        self.ternctl_fails(&["apply", "-f", &path_str(file)?])
    }

    /// `ternctl token create`, returning the token.
    pub fn token(&self, labels: &str, ttl: &str) -> anyhow::Result<String> {
        let out = self.ternctl(&["token", "create", "--labels", labels, "--ttl", ttl]);
        if !out.status.success() {
            bail!(
                "token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// `ternctl rollout status NAME -o json`.
    pub fn deployment(&self, name: &str) -> anyhow::Result<DeploymentView> {
        Ok(serde_json::from_str(&self.ternctl_ok(&[
            "get",
            "deployment",
            name,
            "-o",
            "json",
        ])?)?)
    }

    /// `ternctl describe agent NAME -o json`.
    pub fn agent(&self, name: &str) -> anyhow::Result<AgentView> {
        Ok(serde_json::from_str(
            &self.ternctl_ok(&["describe", "agent", name, "-o", "json"])?,
        )?)
    }

    /// Waits until `agent` applied the newest generation it was given; returns its view.
    pub fn wait_applied(&self, agent: &str, timeout: Duration) -> anyhow::Result<AgentView> {
        wait_for(
            timeout,
            &format!("{agent} to apply its desired state"),
            || {
                let view = self.agent(agent).ok()?;
                (view.applied_generation.is_some()
                    && view.applied_generation == view.desired_generation)
                    .then_some(view)
            },
        )
    }

    /// `ternctl get agents -o json`.
    pub fn agents(&self) -> anyhow::Result<Vec<AgentView>> {
        let out = self.ternctl(&["get", "agents", "-o", "json"]);
        if !out.status.success() {
            bail!(
                "get agents failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until the agent `name` has `status`.
    pub fn wait_status(
        &self,
        name: &str,
        status: AgentStatus,
        timeout: Duration,
    ) -> anyhow::Result<AgentView> {
        wait_for(timeout, &format!("agent {name} to be {status}"), || {
            self.agents()
                .ok()?
                .into_iter()
                .find(|a| a.name == name && a.status == status)
        })
        .map_err(|e| {
            e.context(format!(
                "control plane log:\n{}\n{}",
                self.log_text(),
                self.agent_logs(name)
            ))
        })
    }

    /// The logs of every process of agent `name` started beside this control plane
    /// ([`Agent::join`] and [`Agent::run`] write them next to its data dir), oldest first.
    pub fn agent_logs(&self, name: &str) -> String {
        let Some(root) = self.dir.parent() else {
            return String::new();
        };
        let mut logs: Vec<PathBuf> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f == join_log(name) || f.starts_with(&run_log_prefix(name)))
            })
            .collect();
        logs.sort_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
        logs.iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                format!("log of {}:\n{text}", path.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }
}

/// The log of agent `name`'s `join`, in the directory that holds its data dir.
fn join_log(name: &str) -> String {
    format!("{name}.log")
}

/// How the logs of agent `name`'s `run`s begin (`NAME-run-N.log`), beside its `join` log.
fn run_log_prefix(name: &str) -> String {
    format!("{name}-run-")
}

/// An agent process.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub process: Process,
}

impl Agent {
    /// `tern-agent join` (which then runs).
    pub fn join(
        cp: &ControlPlane,
        root: &Path,
        name: &str,
        token: &str,
        labels: &str,
    ) -> anyhow::Result<Self> {
        Self::join_with(cp, root, name, token, labels, &[])
    }

    /// `tern-agent join` with more arguments (telemetry settings).
    pub fn join_with(
        cp: &ControlPlane,
        root: &Path,
        name: &str,
        token: &str,
        labels: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = root.join(name);
        let log = root.join(join_log(name));
        let process = Process::spawn(
            Command::new(bin("tern-agent"))
                .arg("join")
                .arg("--control-plane")
                .arg(cp.agent_addr.to_string())
                .arg("--token")
                .arg(token)
                .arg("--data-dir")
                .arg(&dir)
                .arg("--name")
                .arg(name)
                .arg("--labels")
                .arg(labels)
                .arg("--listen-api")
                .arg(format!("127.0.0.1:{}", free_port()))
                .args(extra),
            log,
        )?;
        Ok(Self {
            name: name.to_owned(),
            dir,
            process,
        })
    }

    /// `tern-agent run` on an enrolled data dir.
    pub fn run(root: &Path, name: &str) -> anyhow::Result<Self> {
        let dir = root.join(name);
        let n = std::fs::read_dir(root)?.count();
        let process = Process::spawn(
            Command::new(bin("tern-agent"))
                .arg("run")
                .arg("--data-dir")
                .arg(&dir),
            root.join(format!("{}{n}.log", run_log_prefix(name))),
        )?;
        Ok(Self {
            name: name.to_owned(),
            dir,
            process,
        })
    }
}

/// Resident memory of a process (VmRSS and its peak VmHWM), in bytes.
pub fn resident_memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    Ok((status_bytes(pid, "VmRSS:")?, status_bytes(pid, "VmHWM:")?))
}

/// Resident memory of a process by kind (RssAnon: the process's own pages; RssFile: pages of
/// mapped files, its code mostly), in bytes.
pub fn resident_kinds(pid: u32) -> anyhow::Result<(u64, u64)> {
    Ok((
        status_bytes(pid, "RssAnon:")?,
        status_bytes(pid, "RssFile:")?,
    ))
}

/// A field of `/proc/PID/status` given in kB, in bytes.
fn status_bytes(pid: u32, name: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name}: process {pid} has exited"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed")?
            .parse()?;
        Ok(kb * 1024)
    };
    field(name)
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second() as f64,
    ))
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Enrolls `name` with a fresh token (`tern-agent join --no-run`) and returns its data dir.
pub fn enroll(
    cp: &ControlPlane,
    root: &Path,
    name: &str,
) -> anyhow::Result<tern_agent::AgentDataDir> {
    let out = join_once(cp.agent_addr, root, name, &cp.token("", "10m")?);
    if !out.status.success() {
        bail!("join failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(tern_agent::AgentDataDir::new(root.join(name)))
}

/// Runs `tern-agent join --no-run` and returns its output (for refusal tests).
pub fn join_once(addr: SocketAddr, root: &Path, name: &str, token: &str) -> Output {
    Command::new(bin("tern-agent"))
        .arg("join")
        .arg("--no-run")
        .arg("--control-plane")
        .arg(addr.to_string())
        .arg("--token")
        .arg(token)
        .arg("--data-dir")
        .arg(root.join(name))
        .arg("--name")
        .arg(name)
        .arg("--listen-api")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("TERN_LOG", "warn")
        .output()
        .expect("run tern-agent join")
}

/// A publisher's keys in a directory: one offline root key and one publisher key.
#[derive(Debug)]
pub struct Publisher {
    pub dir: PathBuf,
}

impl Publisher {
    /// Generates `root` and `publisher` key pairs under `root/keys`.
    pub fn generate(cp: &ControlPlane, root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("keys");
        std::fs::create_dir_all(&dir)?;
        for name in ["root", "publisher"] {
            let out = dir.join(name);
            cp.ternctl_ok(&["keys", "generate", "--out", &path_str(&out)?])?;
        }
        Ok(Self { dir })
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `FILE.release` beside `file`.
    pub fn release_file(file: &Path) -> PathBuf {
        let mut name = file.as_os_str().to_owned();
        name.push(".release");
        PathBuf::from(name)
    }

    /// The signed release beside `file`.
    pub fn release(file: &Path) -> anyhow::Result<tern_proto::release::SignedRelease> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            Self::release_file(file),
        )?)?)
    }

    /// `ternctl trust init` with the root key and the publisher key, threshold 1.
    pub fn trust_init(&self, cp: &ControlPlane) -> anyhow::Result<()> {
        cp.ternctl_ok(&[
            "trust",
            "init",
            "--root-key",
            &path_str(&self.key("root.key"))?,
            "--publisher",
            &path_str(&self.key("publisher.pub"))?,
            "--out",
            &path_str(&self.dir.join("trust-root.json"))?,
        ])?;
        Ok(())
    }

    /// `ternctl sign` with the publisher key, then `ternctl push`.
    pub fn sign_and_push(
        &self,
        cp: &ControlPlane,
        file: &Path,
        kind: &str,
        name: &str,
        version: u64,
    ) -> anyhow::Result<String> {
        self.sign(cp, "publisher", file, kind, name, version)?;
        cp.ternctl_ok(&["push", "--quiet", &path_str(file)?])
    }

    /// `ternctl sign` with the key `key`.
    pub fn sign(
        &self,
        cp: &ControlPlane,
        key: &str,
        file: &Path,
        kind: &str,
        name: &str,
        version: u64,
    ) -> anyhow::Result<String> {
        cp.ternctl_ok(&[
            "sign",
            "--key",
            &path_str(&self.key(&format!("{key}.key")))?,
            "--kind",
            kind,
            "--name",
            name,
            "--version",
            &version.to_string(),
            &path_str(file)?,
        ])
    }
}

/// A path as a command-line argument.
pub fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", path.display()))
}

impl Agent {
    /// The address of the agent's local API (from its `agent.toml`).
    pub fn api_addr(&self) -> anyhow::Result<SocketAddr> {
        let address = tern_agent::AgentDataDir::new(&self.dir)
            .load_config()?
            .listen_api;
        address
            .tcp()
            .ok_or_else(|| anyhow::anyhow!("the agent's local API is on {address}, not TCP"))
    }
}

/// One plain HTTP/1.1 request (the local API is loopback HTTP); returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let (status, _, body) = http_with(addr, method, path, content_type, &[], body)?;
    Ok((status, body))
}

/// Like [`http`], with extra request headers; also returns the answer's headers (names in
/// lower case). Any status is an answer, not an error, and a redirect is not followed: tests see
/// the status the server gave.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, BTreeMap<String, String>, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(30)))
        .allow_non_standard_methods(true)
        .max_redirects(0)
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    // ureq refuses a body, even an empty one, on methods that take none (GET).
    let mut answer = if body.is_empty() {
        agent.run(request.body(())?)?
    } else {
        agent.run(request.body(body.to_vec())?)?
    };
    let answer_headers = answer
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let body = answer
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()?;
    Ok((answer.status().as_u16(), answer_headers, body))
}

/// How long fleet tests wait for a state.
pub const FLEET_TIMEOUT: Duration = Duration::from_secs(60);

/// The `scores` pipeline of one step (`step`: its YAML after `- name: NAME`, indented as a
/// step's fields) and its deployment with `rollout` (YAML flow mapping).
pub fn scores_manifest(name: &str, step: &str, rollout: &str) -> String {
    format!(
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: {{ name: scores }}
spec:
  steps:
    - name: {name}
      {step}
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: {{ name: scores }}
spec:
  pipeline: scores
  rollout: {rollout}
"#
    )
}

/// A pipeline of one `topk` step, `release` pinned, deployed everywhere at once.
pub fn topk_manifest(release: &str, k: u32) -> String {
    topk_manifest_with(release, k, TOPK_ROLLOUT)
}

/// The rollout of [`topk_manifest`].
pub const TOPK_ROLLOUT: &str = "{ healthWindowSeconds: 0 }";

/// [`topk_manifest`] with another rollout (YAML flow mapping).
pub fn topk_manifest_with(release: &str, k: u32, rollout: &str) -> String {
    scores_manifest(
        "post",
        &format!("plugin: {release}\n      config: {{ k: {k} }}"),
        rollout,
    )
}

/// A control plane with a pinned trust root, a publisher and enrolled agents (`site=a`), for
/// deployment tests.
#[derive(Debug)]
pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub cp: ControlPlane,
    pub publisher: Publisher,
    pub agents: Vec<Agent>,
    /// The rollout [`Fleet::apply`] gives the `scores` deployment.
    pub rollout: String,
}

impl Fleet {
    /// Starts a control plane and `agents` agents named `edge-1`, `edge-2`, ...
    pub fn start(agents: usize) -> anyhow::Result<Self> {
        Self::start_with(agents, &[])
    }

    /// Like [`Fleet::start`], with more arguments for `tern-agent join`.
    pub fn start_with(agents: usize, agent_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_tuned(agents, agent_args, |_| {})
    }

    /// Like [`Fleet::start_with`], with `tune` applied to the control plane's config after
    /// [`fast_config`].
    pub fn start_tuned(
        agents: usize,
        agent_args: &[&str],
        tune: impl FnOnce(&mut ControlPlaneConfig),
    ) -> anyhow::Result<Self> {
        Self::start_tuned_env(agents, agent_args, tune, Vec::new())
    }

    /// Like [`Fleet::start_tuned`], with more environment variables for the control plane
    /// (the object store's `AWS_*`).
    pub fn start_tuned_env(
        agents: usize,
        agent_args: &[&str],
        tune: impl FnOnce(&mut ControlPlaneConfig),
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let mut cp = ControlPlane::init(tmp.path(), |config| {
            fast_config(config);
            tune(config);
        })?;
        cp.env = env;
        cp.serve()?;
        let publisher = Publisher::generate(&cp, tmp.path())?;
        publisher.trust_init(&cp)?;
        let mut fleet = Self {
            tmp,
            cp,
            publisher,
            agents: Vec::new(),
            rollout: TOPK_ROLLOUT.to_owned(),
        };
        for i in 1..=agents {
            let name = format!("edge-{i}");
            let token = fleet.cp.token("site=a", "10m")?;
            let agent =
                Agent::join_with(&fleet.cp, fleet.tmp.path(), &name, &token, "", agent_args)?;
            fleet.agents.push(agent);
            fleet
                .cp
                .wait_status(&name, AgentStatus::Ready, FLEET_TIMEOUT)?;
        }
        Ok(fleet)
    }

    /// A fleet around `cp` and `agents` already enrolled (replicas' tests enroll agents at
    /// other replicas): a publisher's keys in `tmp` and the trust root pinned through `cp`.
    pub fn around(
        tmp: tempfile::TempDir,
        cp: ControlPlane,
        agents: Vec<Agent>,
    ) -> anyhow::Result<Self> {
        let publisher = Publisher::generate(&cp, tmp.path())?;
        publisher.trust_init(&cp)?;
        Ok(Self {
            tmp,
            cp,
            publisher,
            agents,
            rollout: TOPK_ROLLOUT.to_owned(),
        })
    }

    /// A copy of the `topk` component, made distinct by a custom section named `tag` holding
    /// `padding` bytes (a valid component of any size).
    pub fn topk(&self, tag: &str, padding: usize) -> anyhow::Result<PathBuf> {
        let mut bytes = std::fs::read(component("topk"))?;
        let name = tag.as_bytes();
        bytes.push(0);
        leb128(&mut bytes, (1 + name.len() + padding) as u64);
        leb128(&mut bytes, name.len() as u64);
        bytes.extend_from_slice(name);
        bytes.resize(bytes.len() + padding, 0x5a);
        let path = self.tmp.path().join(format!("topk-{tag}.wasm"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    /// `topk:1` pushed and deployed to every agent, its rollout complete.
    pub fn serve_topk(&self) -> anyhow::Result<()> {
        self.push(&self.topk("one", 0)?, 1)?;
        self.apply("topk:1", 2)?;
        self.wait_phase(1, "Complete")?;
        Ok(())
    }

    pub fn push(&self, file: &Path, version: u64) -> anyhow::Result<()> {
        self.publisher
            .sign_and_push(&self.cp, file, "plugin", "topk", version)?;
        Ok(())
    }

    pub fn apply(&self, release: &str, k: u32) -> anyhow::Result<()> {
        let path = self.tmp.path().join("scores.yaml");
        self.cp
            .apply_manifest(&path, topk_manifest_with(release, k, &self.rollout))?;
        Ok(())
    }

    pub fn rollout(&self) -> anyhow::Result<DeploymentView> {
        self.deployment("scores")
    }

    pub fn deployment(&self, name: &str) -> anyhow::Result<DeploymentView> {
        self.cp.deployment(name)
    }

    pub fn agent_view(&self, name: &str) -> anyhow::Result<AgentView> {
        self.cp.agent(name)
    }

    /// Waits for the rollout of `revision` of the `scores` deployment to reach `phase`.
    pub fn wait_phase(&self, revision: u64, phase: &str) -> anyhow::Result<DeploymentView> {
        self.wait_deployment("scores", revision, phase)
    }

    /// Waits for the rollout of `revision` of deployment `name` to reach `phase`.
    pub fn wait_deployment(
        &self,
        name: &str,
        revision: u64,
        phase: &str,
    ) -> anyhow::Result<DeploymentView> {
        wait_for(
            FLEET_TIMEOUT,
            &format!("{name} revision {revision} {phase}"),
            || {
                self.deployment(name).ok().filter(|d| {
                    d.rollout
                        .as_ref()
                        .is_some_and(|r| r.target_revision == revision && r.phase == phase)
                })
            },
        )
    }

    /// The reason `agent` reported for failing revision `revision`.
    pub fn failure(&self, agent: &str, revision: u64) -> anyhow::Result<String> {
        // The agent's own status shows it until the rollback replaces it; the rollout keeps the
        // agent's words as its reason.
        let installed = format!("agent {agent} could not run revision {revision}: ");
        wait_for(FLEET_TIMEOUT, "the agent's failure report", || {
            let view = self.agent_view(agent).ok()?;
            let reported = view
                .pipelines
                .iter()
                .find(|p| p.phase.as_deref() == Some("Failed"))
                .map(|p| p.message.clone());
            reported.or_else(|| {
                let rollout = self.rollout().ok()?.rollout?;
                let reason = rollout
                    .reason
                    .filter(|_| rollout.target_revision == revision)?;
                reason.strip_prefix(&installed).map(str::to_owned)
            })
        })
        .or_else(|e| {
            let rollout = self.rollout()?;
            anyhow::bail!("{e}: revision {revision}: {rollout:?}")
        })
    }

    /// Sends one request to agent `i` (0-based); returns the HTTP status.
    pub fn infer(&self, i: usize) -> anyhow::Result<u16> {
        let body = serde_json::json!({
            "inputs": [{"name": "logits", "shape": [3], "datatype": "FP32", "data": [0.5, 2.0, 1.0]}]
        });
        let (status, _) = http(
            self.agents[i].api_addr()?,
            "POST",
            "/v2/models/scores/infer",
            "application/json",
            body.to_string().as_bytes(),
        )?;
        Ok(status)
    }

    /// Waits until `agent` serves `revision`.
    pub fn wait_serving(&self, agent: &str, revision: u64) -> anyhow::Result<()> {
        wait_for(
            FLEET_TIMEOUT,
            &format!("{agent} serving {revision}"),
            || {
                let view = self.agent_view(agent).ok()?;
                view.pipelines
                    .iter()
                    .any(|p| p.serving == Some(revision))
                    .then_some(())
            },
        )
    }
}

/// Appends `value` as unsigned LEB128 (how wasm encodes section sizes).
fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_finds_the_logs_of_every_process_of_one_agent() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        std::fs::write(root.join(join_log("edge")), "joined")?;
        std::fs::write(root.join(format!("{}3.log", run_log_prefix("edge"))), "ran")?;
        std::fs::write(root.join(join_log("edge-2")), "another agent")?;
        let cp = ControlPlane {
            dir: root.join("control-plane"),
            agent_addr: ([127, 0, 0, 1], 1).into(),
            api_addr: ([127, 0, 0, 1], 2).into(),
            process: None,
            log_filter: String::new(),
            log_dir: root.to_owned(),
            env: Vec::new(),
        };
        let logs = cp.agent_logs("edge");
        assert!(logs.contains("joined") && logs.contains("ran"), "{logs}");
        assert!(!logs.contains("another agent"), "{logs}");
        Ok(())
    }
}
