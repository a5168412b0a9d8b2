//! `fleet-bench telemetry`: N simulated agents each keep a full window of telemetry batches in
//! flight to one control plane (QUIC, mutual TLS, the real telemetry stream); the control plane
//! stores them durably before acknowledging. Measured: points acknowledged per second, the
//! control plane's CPU and memory. Reference, in the same run: the same batches written
//! straight into the telemetry store in-process (no network, no protocol). With `--postgres`
//! the control plane keeps its records in PostgreSQL (started here, as the tests do), as
//! replicas do, and the in-process reference is taken on both engines: sled with one writer
//! (what a single control plane runs) and PostgreSQL's partitioned series tables (replicas).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tern_control_plane::backend::postgres::testing::TestPostgres;
use tern_control_plane::backend::{PostgresBackend, SledBackend};
use tern_control_plane::server::TELEMETRY_CACHE_BYTES;
use tern_control_plane::telemetry::store::SeriesStore;
use tern_e2e::{ControlPlane, cpu_time, resident_memory, wait_for};
use tern_proto::io::{read_frame, write_frame};
use tern_proto::message::{StreamOpen, TelemetryAck};
use tern_proto::telemetry::{
    GpuStats, Histogram, HostStats, PipelineStats, StepKind, StepStats, TelemetryBatch,
};
use tern_proto::{ControlMessage, MAX_FRAME_LEN};
use tokio::sync::watch;

use super::{SimAgent, enroll_many, mib};

/// Batches each simulated agent keeps unacknowledged, like the agent's shipper.
const WINDOW: u64 = 64;
const DAY_MS: u64 = 24 * 3_600_000;

/// A busy agent's batch: two pipelines of three steps, latency histograms over a spread of
/// values, an error kind, a custom counter per step, one GPU.
fn template() -> TelemetryBatch {
    let histogram = |base: u64| {
        let mut h = Histogram::default();
        for i in 0..200u64 {
            h.record(base + (i * i * 7) % (base * 4));
        }
        h
    };
    let step = |name: &str, kind: StepKind, base: u64| StepStats {
        step: name.into(),
        kind,
        device: if kind == StepKind::Model {
            "cpu".into()
        } else {
            String::new()
        },
        requests: 200,
        latency_us: histogram(base),
        memory_peak_bytes: 3 << 20,
        counters: [("rows".to_owned(), 200)].into(),
        ..StepStats::default()
    };
    let pipeline = |name: &str| PipelineStats {
        pipeline: name.into(),
        revision: 3,
        requests: 200,
        errors: [("timeout".to_owned(), 2)].into(),
        latency_us: histogram(900),
        queue_us: histogram(20),
        steps: vec![
            step("prep", StepKind::Plugin, 150),
            step("classify", StepKind::Model, 600),
            step("post", StepKind::Plugin, 40),
        ],
        ..PipelineStats::default()
    };
    TelemetryBatch {
        host: HostStats {
            cpu_percent: 37.5,
            memory_used_bytes: 3 << 30,
            memory_total_bytes: 16 << 30,
            disk_free_bytes: 100 << 30,
            disk_total_bytes: 500 << 30,
            cache_bytes: 300 << 20,
            buffered_bytes: 0,
            gpus: vec![GpuStats {
                adapter: "NVIDIA H100".into(),
                busy_us: Some(2_500_000),
            }],
        },
        pipelines: vec![pipeline("detector"), pipeline("scorer")],
        ..TelemetryBatch::default()
    }
}

/// The batch an agent sends as number `seq`: 10 s apart, starting a week ago.
fn batch(template: &TelemetryBatch, base_ms: u64, seq: u64) -> TelemetryBatch {
    let mut batch = template.clone();
    batch.seq = seq;
    batch.start_ms = base_ms + (seq - 1) * 10_000;
    batch.end_ms = batch.start_ms + 10_000;
    batch
}

/// Connects, says hello, opens the telemetry stream.
async fn connect(
    endpoint: &quinn::Endpoint,
    cp: std::net::SocketAddr,
    ca_pem: &str,
    agent: &SimAgent,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let transport = tern_transport::quic::agent_transport_config(
        Duration::from_secs(30),
        Some(Duration::from_secs(10)),
    );
    let client = tern_transport::tls::quic_client(ca_pem, agent.identity.clone(), transport)?;
    let conn = endpoint
        .connect_with(client, cp, tern_proto::CONTROL_PLANE_SERVER_NAME)?
        .await?;
    let (mut control, mut control_rx) = conn.open_bi().await?;
    super::say_hello(&mut control, &mut control_rx, &agent.id, &agent.name).await?;
    // Desired states and acks on the control stream are read and ignored.
    tokio::spawn(async move {
        while let Ok(Some(_)) =
            read_frame::<_, ControlMessage>(&mut control_rx, MAX_FRAME_LEN).await
        {}
        drop(control);
    });
    let (mut send, recv) = conn.open_bi().await?;
    write_frame(&mut send, &StreamOpen::Telemetry, MAX_FRAME_LEN).await?;
    Ok((conn, send, recv))
}

#[allow(clippy::too_many_arguments)]
/// One simulated agent: hello, then batches on a telemetry stream as fast as acknowledgements
/// allow, until `stop`.
async fn push(
    endpoint: quinn::Endpoint,
    cp: std::net::SocketAddr,
    ca_pem: Arc<str>,
    agent: SimAgent,
    template: Arc<TelemetryBatch>,
    acked: Arc<AtomicU64>,
    connected: Arc<AtomicUsize>,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    handshakes: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    // Handshakes a few at a time, as a fleet that comes up over a while; a failed one is
    // tried again, as an agent would.
    let slot = handshakes.acquire_owned().await?;
    let mut attempt = 0;
    let (conn, mut send, mut recv) = loop {
        attempt += 1;
        match connect(&endpoint, cp, &ca_pem, &agent).await {
            Ok(connected) => break connected,
            Err(e) if attempt < 5 => {
                eprintln!("{}: connecting again after: {e:#}", agent.name);
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    drop(slot);
    connected.fetch_add(1, Ordering::Relaxed);
    // Everyone connects first, then everyone sends.
    let _ = go.wait_for(|go| *go).await;
    let points = template.points();
    let base_ms = tern_clock::unix_millis_now() - 7 * DAY_MS;
    let (mut sent, mut up_to) = (0u64, 0u64);
    loop {
        while sent < up_to + WINDOW {
            sent += 1;
            write_frame(&mut send, &batch(&template, base_ms, sent), MAX_FRAME_LEN).await?;
        }
        tokio::select! {
            ack = read_frame::<_, TelemetryAck>(&mut recv, 64) => {
                let Some(TelemetryAck { up_to: acked_now }) = ack? else {
                    bail!("telemetry stream closed");
                };
                acked.fetch_add((acked_now - up_to) * points, Ordering::Relaxed);
                up_to = acked_now;
            }
            _ = stop.changed() => {
                conn.close(0u32.into(), b"bench done");
                return Ok(());
            }
        }
    }
}

/// The in-process reference on sled: the same batches into a fresh store, in groups like the
/// writer's.
fn reference(template: &TelemetryBatch, agents: usize, seconds: f64) -> anyhow::Result<f64> {
    let tmp = tempfile::tempdir()?;
    // As the control plane opens it: sled, with the same page cache.
    let backend = SledBackend::open(tmp.path(), TELEMETRY_CACHE_BYTES)?;
    ingest_for(
        SeriesStore::new(Arc::new(backend), Duration::from_secs(90 * 86_400)),
        template,
        agents,
        seconds,
    )
}

/// The in-process reference on PostgreSQL, as replicas write: the partitioned tables.
fn reference_postgres(
    url: &str,
    template: &TelemetryBatch,
    agents: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let backend = PostgresBackend::connect(url, "bench-telemetry", 4)?;
    ingest_for(
        tern_control_plane::telemetry::partitioned::series(
            Arc::new(backend),
            Duration::from_secs(90 * 86_400),
        )?,
        template,
        agents,
        seconds,
    )
}

/// Points per second `store` takes in groups like the writer's, for `seconds`.
fn ingest_for(
    store: SeriesStore,
    template: &TelemetryBatch,
    agents: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let names: Vec<String> = (0..agents).map(|i| format!("agent-{i:05}")).collect();
    let base_ms = tern_clock::unix_millis_now() - 7 * DAY_MS;
    let now = tern_clock::unix_millis_now();
    let (started, mut points, mut seq) = (Instant::now(), 0u64, 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        seq += 1;
        let batches: Vec<TelemetryBatch> =
            (0..agents).map(|_| batch(template, base_ms, seq)).collect();
        for chunk in names.iter().zip(&batches).collect::<Vec<_>>().chunks(2048) {
            let group: Vec<(&str, &TelemetryBatch)> =
                chunk.iter().map(|(a, b)| (a.as_str(), *b)).collect();
            let (outcome, _) = store.ingest(&group, now)?;
            store.flush()?;
            points += outcome.points;
        }
    }
    Ok(points as f64 / started.elapsed().as_secs_f64())
}

pub fn run(agents: usize, window: Duration, postgres: bool) -> anyhow::Result<()> {
    let server = if postgres {
        Some(TestPostgres::start().context("PostgreSQL's server binaries are needed")?)
    } else {
        None
    };
    let tmp = tempfile::tempdir()?;
    let mut cp = ControlPlane::init(tmp.path(), |c| {
        c.heartbeat_interval = Duration::from_secs(5);
        c.not_ready_after = Duration::from_secs(60);
        c.store = server.as_ref().map(|s| s.url.clone());
    })?;
    cp.log_filter = "warn".into();
    cp.serve()?;
    let pid = cp.process.as_ref().context("serving")?.pid();
    let ca_pem: Arc<str> = std::fs::read_to_string(cp.dir.join("ca.crt"))?.into();
    std::thread::sleep(Duration::from_secs(1));
    let (idle_rss, _) = resident_memory(pid)?;
    let template = Arc::new(template());
    let bytes = postcard::to_stdvec(&*template)?.len();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sims = runtime.block_on(enroll_many(&cp, 0, agents))?;
    let endpoint =
        runtime.block_on(async { tern_transport::quic::client_endpoint(cp.agent_addr) })?;
    let (acked, connected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(false);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(16));
    for agent in sims {
        let task = push(
            endpoint.clone(),
            cp.agent_addr,
            ca_pem.clone(),
            agent,
            template.clone(),
            acked.clone(),
            connected.clone(),
            go_rx.clone(),
            stop_rx.clone(),
            handshakes.clone(),
        );
        runtime.spawn(async move {
            if let Err(e) = task.await {
                eprintln!("simulated agent failed: {e:#}");
            }
        });
    }
    wait_for(
        Duration::from_secs(600),
        "every simulated agent to connect",
        || (connected.load(Ordering::Relaxed) >= agents).then_some(()),
    )?;
    let _ = go_tx.send(true);
    std::thread::sleep(Duration::from_secs(3));
    let (cp_cpu0, gen_cpu0, acked0, t0) = (
        cpu_time(pid)?,
        cpu_time(std::process::id())?,
        acked.load(Ordering::Relaxed),
        Instant::now(),
    );
    let mut peak_rss = 0;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(500));
        peak_rss = peak_rss.max(resident_memory(pid)?.0);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let points = (acked.load(Ordering::Relaxed) - acked0) as f64 / elapsed;
    let cp_cpu = (cpu_time(pid)? - cp_cpu0).as_secs_f64() / elapsed * 100.0;
    let gen_cpu = (cpu_time(std::process::id())? - gen_cpu0).as_secs_f64() / elapsed * 100.0;
    let _ = stop_tx.send(true);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    drop(runtime);
    let disk = tern_agent::telemetry::host::dir_bytes(&cp.dir.join("telemetry"));
    drop(cp);

    // As long as the window, 10 s at most (a short smoke run stays short).
    let seconds = window.as_secs_f64().min(10.0);
    let reference = reference(&template, agents, seconds)?;
    let on_postgres = match &server {
        Some(server) => Some(reference_postgres(&server.url, &template, agents, seconds)?),
        None => None,
    };
    println!(
        "{agents} agents, {} points ({bytes} bytes) per batch, {WINDOW} batches in flight each, window {window:?}\n",
        template.points()
    );
    println!(
        "| ingest over QUIC (points/s) | batches/s | control plane CPU (% of one core) | points/s per CP core | CP RSS idle → peak (MiB) | telemetry on disk (MiB) | load generator CPU (%) | reference: store in-process (points/s) | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {points:.0} | {:.0} | {cp_cpu:.0} | {:.0} | {:.0} → {:.0} | {:.0} | {gen_cpu:.0} | {reference:.0} | {:.2} |",
        points / template.points() as f64,
        points / (cp_cpu / 100.0).max(0.01),
        mib(idle_rss),
        mib(peak_rss),
        mib(disk),
        points / reference,
    );
    if let Some(pg) = on_postgres {
        println!(
            "\nthe control plane's records in PostgreSQL; in-process, the same batches: sled (one writer) {reference:.0} points/s, PostgreSQL (partitioned tables, as replicas) {pg:.0} points/s: {:.2}× sled",
            pg / reference
        );
    }
    Ok(())
}
