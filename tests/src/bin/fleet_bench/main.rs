//! `fleet-bench`: the foundation's measurements, each beside a reference taken in the same run.
//!
//! - `agent-idle`: resident memory of an enrolled, connected, idle agent, beside a bare client
//!   (tokio + quinn + rustls holding the same mutual-TLS connection with heartbeats, nothing else).
//! - `agent-start`: process start to Ready (the control plane's welcome), agent and bare client.
//! - `connections`: one control plane holding N agent connections with heartbeats; its CPU and
//!   memory at each N.
//! - `telemetry`: ingest from N agents over QUIC, beside the store written in-process.
//! - `failover`: replicas on PostgreSQL; the work lease's holder killed → the next desired
//!   state sent by another, beside the lease's TTL.
//!
//! Run with `cargo run -p tern-e2e --bin fleet-bench -- <command>` after `cargo xtask test` built
//! the binaries.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tern_agent::AgentDataDir;
use tern_e2e::{
    ControlPlane, bin, cpu_time, enroll, percentile, resident_kinds, resident_memory, wait_for,
};
use tern_proto::api::{
    AgentStatus, AgentView, CliConfig, EnrollRequest, EnrollResponse, TokenRequest, TokenResponse,
};
use tern_proto::io::{read_frame, write_frame};
use tern_proto::{
    AgentMessage, Capacity, ControlMessage, Heartbeat, Hello, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use tern_transport::Identity;
use tern_transport::https::HttpsClient;
use tokio::sync::{Semaphore, watch};

#[derive(Debug, Parser)]
#[command(about = "Measurements of the Tern foundation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Resident memory of an idle, connected agent.
    AgentIdle {
        /// How long to let the agent settle before reading its memory.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
    /// Process start to Ready on loopback.
    AgentStart {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// A control plane holding many agent connections.
    Connections {
        /// Connection counts to measure at, ascending.
        #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
        agents: Vec<usize>,
        /// Measurement window at each count.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Heartbeat interval of every agent.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
    },
    /// A control plane ingesting telemetry from many agents at once; beside it, the same
    /// batches written straight into the telemetry store in-process.
    Telemetry {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Measurement window.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Keep the control plane's records in PostgreSQL (started here), as replicas do.
        #[arg(long)]
        postgres: bool,
    },
    /// Control-plane replicas on one PostgreSQL: the replica holding the work lease killed,
    /// until the next desired state reaches an agent held by another, beside the lease's TTL.
    Failover {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// `lease_ttl` of the replicas.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        lease_ttl: Duration,
    },
    /// The reference client: holds one agent connection with heartbeats, prints "connected".
    #[command(hide = true)]
    BareClient {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::AgentIdle { settle } => agent_idle(settle),
        Cmd::AgentStart { runs } => agent_start(runs),
        Cmd::Connections {
            agents,
            window,
            heartbeat,
        } => connections(&agents, window, heartbeat),
        Cmd::Telemetry {
            agents,
            window,
            postgres,
        } => telemetry::run(agents, window, postgres),
        Cmd::Failover { runs, lease_ttl } => failover::run(runs, lease_ttl),
        Cmd::BareClient { data_dir } => bare_client(&data_dir),
    }
}

mod failover;
mod telemetry;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn spawn_bare(root: &Path, name: &str) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(bin("fleet-bench"))
        .arg("bare-client")
        .arg("--data-dir")
        .arg(root.join(name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

fn spawn_agent(root: &Path, name: &str) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(bin("tern-agent"))
        .arg("run")
        .arg("--data-dir")
        .arg(root.join(name))
        .env("TERN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Waits until a line containing `needle` appears on `pipe`.
fn wait_line(
    pipe: impl std::io::Read + Send + 'static,
    needle: &'static str,
) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if line.contains(needle) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("no `{needle}` within 30s"))
}

fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn agent_idle(settle: Duration) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |_| {})?;
    enroll(&cp, tmp.path(), "idle-agent")?;
    enroll(&cp, tmp.path(), "bare")?;
    let mut agent = spawn_agent(tmp.path(), "idle-agent")?;
    wait_line(
        agent.stderr.take().context("stderr")?,
        "connected to control plane",
    )?;
    let mut bare = spawn_bare(tmp.path(), "bare")?;
    wait_line(bare.stdout.take().context("stdout")?, "connected")?;
    cp.wait_status("idle-agent", AgentStatus::Ready, Duration::from_secs(10))?;
    std::thread::sleep(settle);
    let (agent_rss, agent_hwm) = resident_memory(agent.id())?;
    let (bare_rss, bare_hwm) = resident_memory(bare.id())?;
    let (agent_anon, agent_file) = resident_kinds(agent.id())?;
    let (bare_anon, bare_file) = resident_kinds(bare.id())?;
    let gpus = cp
        .agents()?
        .into_iter()
        .find(|a| a.name == "idle-agent")
        .map(|a| a.gpus.len())
        .unwrap_or(0);
    println!(
        "| process | RSS idle (MiB) | of which anonymous | of which files (code) | peak RSS (MiB) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| tern-agent (connected, idle, {gpus} GPU adapter(s) discovered) | {:.1} | {:.1} | {:.1} | {:.1} |",
        mib(agent_rss),
        mib(agent_anon),
        mib(agent_file),
        mib(agent_hwm)
    );
    println!(
        "| bare mTLS QUIC client (reference) | {:.1} | {:.1} | {:.1} | {:.1} |",
        mib(bare_rss),
        mib(bare_anon),
        mib(bare_file),
        mib(bare_hwm)
    );
    println!(
        "\nagent / reference: {:.2}x",
        agent_rss as f64 / bare_rss as f64
    );
    terminate(&mut agent);
    terminate(&mut bare);
    Ok(())
}

/// A simulated agent's hello on its control stream, answered by a welcome.
async fn say_hello(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    id: &str,
    name: &str,
) -> anyhow::Result<()> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_id: id.to_owned(),
        name: name.to_owned(),
        labels: Default::default(),
        capacity: Capacity::default(),
        software_version: "fleet-bench".into(),
    };
    write_frame(send, &AgentMessage::Hello(hello), MAX_FRAME_LEN).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        read_frame::<_, ControlMessage>(recv, MAX_FRAME_LEN),
    )
    .await??;
    match answer {
        Some(ControlMessage::Welcome(_)) => Ok(()),
        other => bail!("expected a welcome, got {other:?}"),
    }
}

fn agent_start(runs: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |_| {})?;
    enroll(&cp, tmp.path(), "starter")?;
    enroll(&cp, tmp.path(), "bare")?;
    let (mut agent_times, mut bare_times) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let mut agent = spawn_agent(tmp.path(), "starter")?;
        wait_line(
            agent.stderr.take().context("stderr")?,
            "connected to control plane",
        )?;
        agent_times.push(start.elapsed());
        terminate(&mut agent);

        let start = Instant::now();
        let mut bare = spawn_bare(tmp.path(), "bare")?;
        wait_line(bare.stdout.take().context("stdout")?, "connected")?;
        bare_times.push(start.elapsed());
        terminate(&mut bare);
    }
    // The control plane agrees: the agent was registered Ready when it was welcomed.
    let seen = cp
        .agents()?
        .into_iter()
        .find(|a| a.name == "starter")
        .context("agent listed")?;
    anyhow::ensure!(!seen.version.is_empty(), "agent never completed a hello");
    agent_times.sort();
    bare_times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("| process ({runs} runs) | median (ms) | p90 (ms) | min (ms) |");
    println!("| --- | --- | --- | --- |");
    for (name, t) in [
        ("tern-agent run → welcomed (Ready)", &agent_times),
        ("bare mTLS QUIC client (reference)", &bare_times),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.9)),
            ms(t[0])
        );
    }
    println!(
        "\nagent / reference (median): {:.2}x",
        ms(percentile(&agent_times, 0.5)) / ms(percentile(&bare_times, 0.5))
    );
    Ok(())
}

/// An enrolled identity held in memory.
struct SimAgent {
    id: String,
    name: String,
    identity: Identity,
}

async fn enroll_many(cp: &ControlPlane, from: usize, to: usize) -> anyhow::Result<Vec<SimAgent>> {
    let cli: CliConfig = toml::from_str(&std::fs::read_to_string(cp.ternctl_config())?)?;
    let tls = tern_transport::tls::https_client(&cli.ca_certificate)?;
    let admin = HttpsClient::new(cli.api.clone(), tls.clone()).with_bearer(cli.admin_token.clone());
    let enroll = HttpsClient::new(cp.agent_addr.to_string(), tls);
    let slots = Arc::new(Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for i in from..to {
        let (admin, enroll, slots) = (admin.clone(), enroll.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let token: TokenResponse = admin
                .post(
                    "/v1/tokens",
                    &TokenRequest {
                        labels: Default::default(),
                        ttl_seconds: 600,
                    },
                )
                .await?;
            let name = format!("sim-{i:05}");
            let csr = tern_transport::pki::agent_key_and_csr(&name)?;
            let request = EnrollRequest {
                token: token.token,
                name: name.clone(),
                labels: Default::default(),
                csr_pem: csr.csr_pem,
            };
            let response: EnrollResponse = enroll.post("/v1/enroll", &request).await?;
            let identity = Identity::from_pem(&response.certificate_pem, &csr.key_pem)?;
            anyhow::Ok(SimAgent {
                id: response.agent_id,
                name,
                identity,
            })
        });
    }
    let mut agents = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        agents.push(joined??);
    }
    Ok(agents)
}

/// What every simulated agent connection shares.
#[derive(Clone)]
struct LoadShared {
    endpoint: quinn::Endpoint,
    cp: std::net::SocketAddr,
    ca_pem: Arc<str>,
    interval: Duration,
    connected: Arc<AtomicUsize>,
    acks: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
    /// Handshakes in progress at once (agents of a fleet do not all dial in the same
    /// millisecond; hundreds at once on two cores would outlast QUIC's Retry tokens).
    handshakes: Arc<Semaphore>,
}

/// Holds one agent connection: hello, then heartbeats at `interval`, until `stop`.
async fn hold(shared: LoadShared, agent: SimAgent) -> anyhow::Result<()> {
    let LoadShared {
        endpoint,
        cp,
        ca_pem,
        interval,
        connected,
        acks,
        mut stop,
        handshakes,
    } = shared;
    let slot = handshakes.acquire_owned().await?;
    let dial = || async {
        let transport = tern_transport::quic::transport_config(
            Duration::from_secs(30),
            Some(Duration::from_secs(10)),
        );
        let client = tern_transport::tls::quic_client(&ca_pem, agent.identity.clone(), transport)?;
        let conn = endpoint
            .connect_with(client, cp, tern_proto::CONTROL_PLANE_SERVER_NAME)?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        say_hello(&mut send, &mut recv, &agent.id, &agent.name).await?;
        anyhow::Ok((conn, send, recv))
    };
    // As a real agent does, a failed attempt is tried again after a pause (three times here).
    let mut attempt = 1;
    let (conn, mut send, mut recv) = loop {
        match dial().await {
            Ok(link) => break link,
            Err(e) if attempt < 4 => {
                eprintln!("simulated agent {} dials again: {e:#}", agent.name);
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    drop(slot);
    connected.fetch_add(1, Ordering::Relaxed);
    // Read everything the control plane sends (desired states too, which a simulated agent
    // leaves unapplied): a reader that stopped at the first non-ack would make the control plane
    // close the stream.
    tokio::spawn(async move {
        while let Ok(Some(message)) =
            read_frame::<_, ControlMessage>(&mut recv, MAX_FRAME_LEN).await
        {
            if matches!(message, ControlMessage::Ack(_)) {
                acks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Spread heartbeats evenly over the interval, as independent agents would be.
    tokio::time::sleep(interval.mul_f64(rand_fraction())).await;
    let mut ticker = tokio::time::interval(interval);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                write_frame(&mut send, &AgentMessage::Heartbeat(Heartbeat { seq }), MAX_FRAME_LEN).await?;
            }
            _ = stop.changed() => {
                conn.close(0u32.into(), b"bench done");
                return Ok(());
            }
        }
    }
}

fn rand_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(Instant::now()) % 10_000) as f64 / 10_000.0
}

fn connections(levels: &[usize], window: Duration, heartbeat: Duration) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cp = ControlPlane::init(tmp.path(), |c| {
        c.heartbeat_interval = heartbeat;
        c.not_ready_after = heartbeat * 5;
    })?;
    cp.log_filter = "warn".into();
    cp.serve()?;
    let pid = cp.process.as_ref().context("serving")?.pid();
    let ca_pem = std::fs::read_to_string(cp.dir.join("ca.crt"))?;
    std::thread::sleep(Duration::from_secs(1));
    let (idle_rss, _) = resident_memory(pid)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let endpoint =
        runtime.block_on(async { tern_transport::quic::client_endpoint(cp.agent_addr) })?;
    let connected = Arc::new(AtomicUsize::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = LoadShared {
        endpoint,
        cp: cp.agent_addr,
        ca_pem: ca_pem.into(),
        interval: heartbeat,
        connected: connected.clone(),
        acks: acks.clone(),
        stop: stop_rx,
        handshakes: Arc::new(Semaphore::new(16)),
    };
    let mut held = 0;

    println!(
        "control plane idle RSS: {:.1} MiB; heartbeat every {heartbeat:?}; window {window:?}\n",
        mib(idle_rss)
    );
    println!(
        "| connections | control plane CPU (% of one core) | RSS (MiB) | RSS per connection (KiB) | heartbeats acked/s | load generator CPU (% of one core) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for &level in levels {
        if level <= held {
            continue;
        }
        let agents = runtime.block_on(enroll_many(&cp, held, level))?;
        for agent in agents {
            let task = hold(shared.clone(), agent);
            runtime.spawn(async move {
                if let Err(e) = task.await {
                    eprintln!("simulated agent failed: {e:#}");
                }
            });
        }
        held = level;
        wait_for(
            Duration::from_secs(120),
            "every simulated agent to connect",
            || (connected.load(Ordering::Relaxed) >= level).then_some(()),
        )?;
        let ready = wait_for(
            Duration::from_secs(30),
            "the control plane to list them Ready",
            || {
                let agents: Vec<AgentView> = cp.agents().ok()?;
                let ready = agents
                    .iter()
                    .filter(|a| a.status == AgentStatus::Ready)
                    .count();
                (ready >= level).then_some(ready)
            },
        )?;
        std::thread::sleep(Duration::from_secs(5));

        let (cp_cpu0, gen_cpu0, acks0, t0) = (
            cpu_time(pid)?,
            cpu_time(std::process::id())?,
            acks.load(Ordering::Relaxed),
            Instant::now(),
        );
        std::thread::sleep(window);
        let elapsed = t0.elapsed().as_secs_f64();
        let cp_cpu = (cpu_time(pid)? - cp_cpu0).as_secs_f64() / elapsed * 100.0;
        let gen_cpu = (cpu_time(std::process::id())? - gen_cpu0).as_secs_f64() / elapsed * 100.0;
        let acked = (acks.load(Ordering::Relaxed) - acks0) as f64 / elapsed;
        let (rss, _) = resident_memory(pid)?;
        println!(
            "| {ready} | {cp_cpu:.1} | {:.1} | {:.1} | {acked:.0} | {gen_cpu:.1} |",
            mib(rss),
            (rss.saturating_sub(idle_rss)) as f64 / 1024.0 / ready as f64
        );
    }
    let _ = stop_tx.send(true);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    drop(cp);
    Ok(())
}

fn bare_client(dir: &Path) -> anyhow::Result<()> {
    let dir = AgentDataDir::new(dir);
    let config = dir.load_config()?;
    let identity = Identity::from_pem(&dir.read(&dir.cert())?, &dir.read(&dir.key())?)?;
    let ca_pem = dir.read(&dir.ca())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr = tokio::net::lookup_host(&config.control_plane)
            .await?
            .next()
            .context("no address")?;
        let endpoint = tern_transport::quic::client_endpoint(addr)?;
        let connected = Arc::new(AtomicUsize::new(0));
        let acks = Arc::new(AtomicU64::new(0));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let watcher = {
            let connected = connected.clone();
            tokio::spawn(async move {
                while connected.load(Ordering::Relaxed) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                println!("connected");
            })
        };
        let agent = SimAgent {
            id: config.agent_id,
            name: config.name,
            identity,
        };
        let shared = LoadShared {
            endpoint,
            cp: addr,
            ca_pem: ca_pem.into(),
            interval: Duration::from_secs(5),
            connected,
            acks,
            stop: stop_rx,
            handshakes: Arc::new(Semaphore::new(1)),
        };
        let held = hold(shared, agent);
        let result = held.await;
        watcher.abort();
        result
    })
}
