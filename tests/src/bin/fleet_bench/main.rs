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
//! - `simulate`: a whole canary rollout across N simulated agents on the fleet core in virtual
//!   time, beside one whole-fleet pass of the driver as it was before events drove it.
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
use tern_control_plane::backend::postgres::testing::{TestPostgres, execute, query_text};
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
        /// Replicas on one PostgreSQL (started here) to spread the agents over; 0: one
        /// control plane on sled.
        #[arg(long, default_value_t = 0)]
        replicas: usize,
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
    /// A whole canary rollout across many simulated agents on the fleet core, in virtual time.
    Simulate {
        #[arg(long, default_value_t = 100_000)]
        agents: usize,
        /// The rollout's cumulative waves, in percent.
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
        waves: Vec<u8>,
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
            replicas,
        } => connections(&agents, window, heartbeat, replicas),
        Cmd::Telemetry {
            agents,
            window,
            postgres,
        } => telemetry::run(agents, window, postgres),
        Cmd::Failover { runs, lease_ttl } => failover::run(runs, lease_ttl),
        Cmd::Simulate { agents, waves } => simulate::run(agents, &waves),
        Cmd::BareClient { data_dir } => bare_client(&data_dir),
    }
}

mod failover;
mod simulate;
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
    /// Its place in the fleet: which replica it dials.
    index: usize,
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
                index: i,
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
    /// The control planes' agent addresses: agent `i` dials the `i % n`th.
    cps: Arc<[std::net::SocketAddr]>,
    ca_pem: Arc<str>,
    interval: Duration,
    connected: Arc<AtomicUsize>,
    acks: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
    /// When each desired state that gives an agent a pipeline arrived (the apply's latency).
    given: Arc<std::sync::Mutex<Vec<Instant>>>,
    /// Handshakes in progress at once (agents of a fleet do not all dial in the same
    /// millisecond; hundreds at once on two cores would outlast QUIC's Retry tokens).
    handshakes: Arc<Semaphore>,
}

/// Holds one agent connection: hello, then heartbeats at `interval`, until `stop`.
async fn hold(shared: LoadShared, agent: SimAgent) -> anyhow::Result<()> {
    let LoadShared {
        endpoint,
        cps,
        ca_pem,
        interval,
        connected,
        acks,
        mut stop,
        given,
        handshakes,
    } = shared;
    let slot = handshakes.acquire_owned().await?;
    let cp = cps[agent.index % cps.len()];
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
            match message {
                ControlMessage::Ack(_) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                // Left unapplied; only when it arrived counts (a state that runs a pipeline).
                ControlMessage::DesiredState(signed) => {
                    let at = Instant::now();
                    let state: Option<tern_proto::desired::DesiredState> =
                        postcard::from_bytes(&signed.body).ok();
                    if state.is_some_and(|s| !s.pipelines.is_empty()) {
                        given.lock().unwrap_or_else(|p| p.into_inner()).push(at);
                    }
                }
                _ => {}
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

/// The control planes agents connect to: one on sled, or `replicas` on one PostgreSQL
/// (started here, as the tests do; `None` without replicas) sharing a directory of artifacts.
fn serve_control_planes(
    root: &Path,
    replicas: usize,
    heartbeat: Duration,
) -> anyhow::Result<(Vec<ControlPlane>, Option<TestPostgres>)> {
    let server = if replicas > 0 {
        let mut server =
            TestPostgres::start().context("PostgreSQL's server binaries are needed")?;
        // Statement statistics, to say what the store spends its transactions on.
        execute(
            &server.url,
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        server.restart();
        execute(
            &server.url,
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        )
        .map_err(|e| anyhow::anyhow!("pg_stat_statements: {e}"))?;
        Some(server)
    } else {
        None
    };
    let store = server.as_ref().map(|s| s.url.clone());
    let artifacts = root.join("shared-artifacts").display().to_string();
    let mut first = ControlPlane::init(root, |c| {
        c.heartbeat_interval = heartbeat;
        c.not_ready_after = heartbeat * 5;
        if let Some(store) = store {
            c.store = Some(store);
            c.artifacts = Some(artifacts);
        }
    })?;
    first.log_filter = "warn".into();
    first.serve()?;
    let mut cps = vec![first];
    if replicas > 0 {
        wait_for(
            Duration::from_secs(60),
            "the first replica holding the work lease",
            || cps[0].holds_work_lease().then_some(()),
        )?;
    }
    for n in 1..replicas {
        let mut replica = ControlPlane::replica(root, &format!("replica-{n}"), &cps[0])?;
        replica.log_filter = "warn".into();
        replica.serve()?;
        cps.push(replica);
    }
    Ok((cps, server))
}

/// CPU time of PostgreSQL: every `postgres` process on the machine (the bench's server is
/// the only one; its backends exit and start with connections, so the sum is of those alive).
fn postgres_cpu() -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let command = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(name, _)| name);
        if command == Some("postgres") {
            total += cpu_time(pid).unwrap_or_default();
        }
    }
    Ok(total)
}

/// The statements PostgreSQL ran most often since the last reset, with their calls.
fn busiest_statements(server: &TestPostgres) -> anyhow::Result<Vec<String>> {
    query_text(
        &server.url,
        "SELECT calls || ' × ' || regexp_replace(left(query, 110), '\\s+', ' ', 'g') \
         FROM pg_stat_statements ORDER BY calls DESC LIMIT 6",
    )
    .map_err(|e| anyhow::anyhow!("pg_stat_statements: {e}"))
}

/// Transactions committed and rolled back in the whole server so far.
fn postgres_transactions(server: &TestPostgres) -> anyhow::Result<i64> {
    tern_control_plane::backend::postgres::testing::query_number(
        &server.url,
        "SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database",
    )
    .map_err(|e| anyhow::anyhow!("pg_stat_database: {e}"))
}

fn connections(
    levels: &[usize],
    window: Duration,
    heartbeat: Duration,
    replicas: usize,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (cps, server) = serve_control_planes(tmp.path(), replicas, heartbeat)?;
    let cp = &cps[0];
    let pids: Vec<u32> = cps
        .iter()
        .map(|cp| cp.process.as_ref().map(|p| p.pid()).context("serving"))
        .collect::<anyhow::Result<_>>()?;
    let ca_pem = std::fs::read_to_string(cp.dir.join("ca.crt"))?;
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss: Vec<u64> = pids
        .iter()
        .map(|pid| resident_memory(*pid).map(|(rss, _)| rss))
        .collect::<anyhow::Result<_>>()?;

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
        cps: cps.iter().map(|cp| cp.agent_addr).collect(),
        ca_pem: ca_pem.into(),
        interval: heartbeat,
        connected: connected.clone(),
        acks: acks.clone(),
        stop: stop_rx,
        given: Arc::default(),
        handshakes: Arc::new(Semaphore::new(16)),
    };
    let given = shared.given.clone();
    let mut held = 0;

    let idle: Vec<String> = idle_rss
        .iter()
        .map(|rss| format!("{:.1}", mib(*rss)))
        .collect();
    println!(
        "control plane{} idle RSS: {} MiB; heartbeat every {heartbeat:?}; window {window:?}\n",
        if cps.len() > 1 { "s'" } else { "" },
        idle.join(" / ")
    );
    if server.is_some() {
        println!(
            "| connections | per replica: connections, CPU (% of one core), RSS (MiB) | PostgreSQL CPU (% of one core) | PostgreSQL transactions/s | heartbeats acked/s | load generator CPU (% of one core) |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
    } else {
        println!(
            "| connections | control plane CPU (% of one core) | RSS (MiB) | RSS per connection (KiB) | heartbeats acked/s | load generator CPU (% of one core) |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
    }
    for &level in levels {
        if level <= held {
            continue;
        }
        let enrolling = Instant::now();
        let agents = runtime.block_on(enroll_many(cp, held, level))?;
        eprintln!(
            "{} agents enrolled in {:.1} s",
            level - held,
            enrolling.elapsed().as_secs_f64()
        );
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
            Duration::from_secs(600),
            "every simulated agent to connect",
            || (connected.load(Ordering::Relaxed) >= level).then_some(()),
        )?;
        let ready = wait_for(
            Duration::from_secs(120),
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

        let cpu0: Vec<Duration> = pids
            .iter()
            .map(|pid| cpu_time(*pid))
            .collect::<anyhow::Result<_>>()?;
        let gen_cpu0 = cpu_time(std::process::id())?;
        let pg0 = match &server {
            Some(server) => {
                query_text(&server.url, "SELECT pg_stat_statements_reset()::text")
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Some((postgres_cpu()?, postgres_transactions(server)?))
            }
            None => None,
        };
        let (acks0, t0) = (acks.load(Ordering::Relaxed), Instant::now());
        std::thread::sleep(window);
        let elapsed = t0.elapsed().as_secs_f64();
        let percent = |d: Duration| d.as_secs_f64() / elapsed * 100.0;
        let cpu: Vec<f64> = pids
            .iter()
            .zip(&cpu0)
            .map(|(pid, before)| Ok(percent(cpu_time(*pid)? - *before)))
            .collect::<anyhow::Result<_>>()?;
        let gen_cpu = percent(cpu_time(std::process::id())? - gen_cpu0);
        let acked = (acks.load(Ordering::Relaxed) - acks0) as f64 / elapsed;
        let rss: Vec<u64> = pids
            .iter()
            .map(|pid| resident_memory(*pid).map(|(rss, _)| rss))
            .collect::<anyhow::Result<_>>()?;
        match (&server, pg0) {
            (Some(server), Some((pg_cpu0, tx0))) => {
                let pg_cpu = percent(postgres_cpu()? - pg_cpu0);
                let tx = (postgres_transactions(server)? - tx0) as f64 / elapsed;
                let per_replica: Vec<String> = cps
                    .iter()
                    .zip(cpu.iter().zip(&rss))
                    .map(|(cp, (cpu, rss))| {
                        let held = cp
                            .gauge("tern_control_plane_agents_connected")
                            .unwrap_or(0.0);
                        format!("{held:.0}, {cpu:.1}%, {:.1}", mib(*rss))
                    })
                    .collect();
                println!(
                    "| {ready} | {} | {pg_cpu:.1} | {tx:.0} | {acked:.0} | {gen_cpu:.1} |",
                    per_replica.join(" / ")
                );
                for line in busiest_statements(server)? {
                    eprintln!("  {line}");
                }
            }
            _ => println!(
                "| {ready} | {:.1} | {:.1} | {:.1} | {acked:.0} | {gen_cpu:.1} |",
                cpu[0],
                mib(rss[0]),
                (rss[0].saturating_sub(idle_rss[0])) as f64 / 1024.0 / ready as f64
            ),
        }
    }
    first_wave(cp, tmp.path(), held, &given)?;
    let _ = stop_tx.send(true);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    drop(cps);
    drop(server);
    Ok(())
}

/// An apply of a new pipeline in canary waves of 1% and 100% to the `agents` held: the time
/// from the apply's answer (and from `ternctl apply`'s start) to each first-wave agent's desired
/// state arriving, as percentiles.
fn first_wave(
    cp: &ControlPlane,
    root: &Path,
    agents: usize,
    given: &std::sync::Mutex<Vec<Instant>>,
) -> anyhow::Result<()> {
    let signed = || cp.gauge("tern_control_plane_desired_states_signed_total");
    let before = signed().unwrap_or(0.0);
    let publisher = tern_e2e::Publisher::generate(cp, root)?;
    publisher.trust_init(cp)?;
    let file = root.join("topk.wasm");
    std::fs::copy(tern_e2e::component("topk"), &file)?;
    publisher.sign_and_push(cp, &file, "plugin", "topk", 1)?;
    // The new trust root is a new state for every agent: the driver signs them all first
    // (and the count of states it signed then holds still for 3 s).
    let mut last = (signed(), Instant::now());
    wait_for(
        Duration::from_secs(600),
        "the trust root's states signed",
        || {
            let now = signed();
            if now != last.0 {
                last = (now, Instant::now());
            }
            (now.is_some_and(|n| n >= before + agents as f64)
                && last.1.elapsed() > Duration::from_secs(3))
            .then_some(())
        },
    )?;
    given.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let manifest = root.join("first-wave.yaml");
    let yaml = tern_e2e::topk_manifest_with("topk:1", 3, "{ strategy: canary, waves: [1, 100] }");
    let started = Instant::now();
    cp.apply_manifest(&manifest, yaml)?;
    let answered = Instant::now();
    let wave = agents.div_ceil(100);
    let arrived = wait_for(Duration::from_secs(120), "the first wave's states", || {
        let arrived = given.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (arrived.len() >= wave).then_some(arrived)
    })?;
    let since = |from: Instant| {
        let mut times: Vec<Duration> = (arrived.iter())
            .map(|at| at.saturating_duration_since(from))
            .collect();
        times.sort();
        times
    };
    let (answer, request) = (since(answered), since(started));
    println!(
        "\napply to the first wave ({wave} of {agents} agents): from the apply's answer p50 {:.1} ms, p90 {:.1} ms, last {:.1} ms; from `ternctl apply`'s start p50 {:.1} ms (ternctl itself: {:.1} ms)",
        percentile(&answer, 0.5).as_secs_f64() * 1e3,
        percentile(&answer, 0.9).as_secs_f64() * 1e3,
        answer.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        percentile(&request, 0.5).as_secs_f64() * 1e3,
        (answered - started).as_secs_f64() * 1e3,
    );
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
            index: 0,
            id: config.agent_id,
            name: config.name,
            identity,
        };
        let shared = LoadShared {
            endpoint,
            cps: Arc::new([addr]),
            ca_pem: ca_pem.into(),
            given: Arc::default(),
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
