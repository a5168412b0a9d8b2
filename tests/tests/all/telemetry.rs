//! Store-and-forward telemetry, end to end: real agents serve real requests, batch what they
//! measure into sled, and ship it over QUIC to a real control plane, which stores it, answers
//! `ternctl top` and `/metrics`. Faults: a week offline, a control plane killed while a backlog
//! arrives, a buffer too small for the outage.

use std::time::Duration;

use tern_agent::AgentDataDir;
use tern_agent::store::AgentStore;
use tern_agent::telemetry::buffer::{DEFAULT_BUFFER_BYTES, TelemetryBuffer};
use tern_e2e::{Agent, FLEET_TIMEOUT, Fleet, http, wait_for};
use tern_proto::api::{AgentTop, PipelineTop};
use tern_proto::telemetry::{Histogram, PipelineStats, StepStats, TelemetryBatch};

const DAY_MS: u64 = 24 * 3_600_000;

fn top_pipelines(fleet: &Fleet, window: Option<&str>) -> anyhow::Result<Vec<PipelineTop>> {
    let mut args = vec!["top", "pipelines", "-o", "json"];
    if let Some(w) = window {
        args.extend(["--window", w]);
    }
    Ok(serde_json::from_str(&fleet.cp.ternctl_ok(&args)?)?)
}

fn scores(fleet: &Fleet, window: Option<&str>) -> Option<PipelineTop> {
    top_pipelines(fleet, window)
        .ok()?
        .into_iter()
        .find(|p| p.pipeline == "scores")
}

fn top_agent(fleet: &Fleet, name: &str) -> Option<AgentTop> {
    let text = fleet.cp.ternctl_ok(&["top", "agents", "-o", "json"]).ok()?;
    let rows: Vec<AgentTop> = serde_json::from_str(&text).ok()?;
    rows.into_iter().find(|a| a.name == name)
}

fn agent_metrics(fleet: &Fleet, i: usize) -> anyhow::Result<String> {
    let (status, body) = http(
        fleet.agents[i].api_addr()?,
        "GET",
        "/metrics",
        "text/plain",
        b"",
    )?;
    anyhow::ensure!(status == 200, "GET /metrics: {status}");
    Ok(String::from_utf8(body)?)
}

/// A fleet of one agent serving `scores` (topk:1), telemetry every `interval`.
fn serving_fleet(interval: &str, extra: &[&str]) -> anyhow::Result<Fleet> {
    let mut args = vec!["--telemetry-interval", interval];
    args.extend_from_slice(extra);
    let fleet = Fleet::start_with(1, &args)?;
    // A copy of its own: the signature is written beside the file, and tests run in parallel.
    let topk = fleet.topk("telemetry", 0)?;
    fleet.push(&topk, 1)?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_serving("edge-1", 1)?;
    Ok(fleet)
}

fn infer_ok(fleet: &Fleet, n: u64) -> anyhow::Result<()> {
    for _ in 0..n {
        anyhow::ensure!(fleet.infer(0)? == 200, "request failed");
    }
    Ok(())
}

/// `count` batches of simulated traffic, 10 s apart, starting at `start_ms`; returns the
/// requests they carry. The agent must be stopped (its database is opened here).
fn inject(fleet: &Fleet, start_ms: u64, count: u64) -> anyhow::Result<(u64, u64)> {
    let dir = AgentDataDir::new(&fleet.agents[0].dir);
    let store = AgentStore::open(&dir.state(), &dir.artifacts())?;
    let buffer = TelemetryBuffer::open(store.db(), DEFAULT_BUFFER_BYTES)?;
    let (mut requests, mut last) = (0, 0);
    for i in 0..count {
        let n = i % 5;
        let mut latency_us = Histogram::default();
        (0..n).for_each(|k| latency_us.record(800 + 100 * k));
        let step = StepStats {
            step: "post".into(),
            requests: n,
            latency_us: latency_us.clone(),
            ..StepStats::default()
        };
        last = buffer.append(TelemetryBatch {
            start_ms: start_ms + i * 10_000,
            end_ms: start_ms + (i + 1) * 10_000,
            pipelines: vec![PipelineStats {
                pipeline: "scores".into(),
                revision: 1,
                requests: n,
                latency_us,
                steps: vec![step],
                ..PipelineStats::default()
            }],
            ..TelemetryBatch::default()
        })?;
        requests += n;
    }
    store.flush()?;
    Ok((requests, last))
}

fn now_ms() -> u64 {
    tern_clock::unix_millis_now()
}

#[test]
fn telemetry_reaches_top_and_prometheus() -> anyhow::Result<()> {
    let fleet = serving_fleet("200ms", &[])?;
    infer_ok(&fleet, 40)?;

    let row = wait_for(FLEET_TIMEOUT, "40 requests in `top pipelines`", || {
        scores(&fleet, None).filter(|p| p.requests == 40)
    })?;
    assert_eq!(row.revision, 1);
    assert_eq!(row.errors, 0);
    assert!(row.rps > 0.0);
    assert!(
        row.p50_ms > 0.0 && row.p50_ms <= row.p95_ms && row.p95_ms <= row.p99_ms,
        "{row:?}"
    );
    assert_eq!(row.steps.len(), 1, "{row:?}");
    let step = &row.steps[0];
    assert_eq!((step.step.as_str(), step.kind.as_str()), ("post", "plugin"));
    assert_eq!(step.requests, 40);
    assert!(step.memory_peak_bytes > 0, "plugin memory is measured");
    assert_eq!(
        step.counters.get("rows"),
        Some(&40),
        "the plugin's custom counter"
    );
    assert!(step.p99_ms <= row.p99_ms * 1.2);

    let hour = scores(&fleet, Some("1h")).expect("a row with --window");
    assert_eq!(hour.requests, 40);
    assert_eq!(hour.window_seconds, 3600.0);
    let table = fleet.cp.ternctl_ok(&["top", "pipelines"])?;
    assert!(
        table.contains("PIPELINE") && table.contains("scores") && table.contains("post (plugin)"),
        "{table}"
    );

    let agent = wait_for(FLEET_TIMEOUT, "host figures in `top agents`", || {
        top_agent(&fleet, "edge-1").filter(|a| a.batches > 0 && a.rps > 0.0)
    })?;
    assert!(agent.memory_total_bytes > 0 && agent.memory_used_bytes > 0);
    assert!(agent.disk_total_bytes >= agent.disk_free_bytes && agent.disk_free_bytes > 0);
    assert!(agent.cache_bytes > 0, "the topk artifact is cached");
    assert_eq!(agent.dropped_batches, 0);
    assert_eq!(agent.batches, agent.last_seq, "every batch arrived once");
    let table = fleet.cp.ternctl_ok(&["top", "agents"])?;
    assert!(table.contains("edge-1") && table.contains("CPU"), "{table}");

    let page = agent_metrics(&fleet, 0)?;
    for line in [
        "tern_pipeline_requests_total{pipeline=\"scores\",revision=\"1\"} 40",
        "tern_pipeline_latency_seconds_count{pipeline=\"scores\",revision=\"1\"} 40",
        "tern_step_latency_seconds_count{pipeline=\"scores\",revision=\"1\",step=\"post\"} 40",
        "tern_telemetry_dropped_batches_total{agent=\"edge-1\"} 0",
    ] {
        assert!(
            page.contains(line),
            "agent /metrics lacks `{line}`:\n{page}"
        );
    }
    assert!(page.contains("# TYPE tern_host_memory_total_bytes gauge"));

    let page = wait_for(FLEET_TIMEOUT, "the fleet's /metrics", || {
        fleet.cp.admin_get("/metrics").ok().filter(|p| {
            p.contains("tern_fleet_pipeline_requests_total{pipeline=\"scores\",revision=\"1\"} 40")
        })
    })?;
    for line in [
        "tern_agents{status=\"Ready\"} 1",
        "tern_agent_up{agent=\"edge-1\"} 1",
        "tern_fleet_pipeline_latency_seconds_count{pipeline=\"scores\",revision=\"1\"} 40",
        "# TYPE tern_telemetry_points_total counter",
    ] {
        assert!(
            page.contains(line),
            "control plane /metrics lacks `{line}`:\n{page}"
        );
    }
    assert!(
        page.lines().count() > 0
            && page
                .lines()
                .all(|l| l.starts_with('#') || l.starts_with("tern_")),
        "{page}"
    );
    let agent_page = agent_metrics(&fleet, 0)?;
    promtool_check("agent", &agent_page)?;
    promtool_check("control plane", &page)?;
    for (what, page) in [("agent", &agent_page), ("control plane", &page)] {
        let mut seen = std::collections::BTreeSet::new();
        for series in page.lines().filter(|l| !l.starts_with('#')) {
            let key = series.rsplit_once(' ').map_or(series, |(k, _)| k);
            assert!(seen.insert(key.to_owned()), "{what}: `{key}` twice");
        }
    }
    // The alert rules and the dashboard in deploy/ name only families the control plane has.
    let families: std::collections::BTreeSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let deploy = tern_e2e::examples_dir().join("../deploy");
    for file in ["prometheus/tern-alerts.yml", "grafana/tern-fleet.json"] {
        let text = std::fs::read_to_string(deploy.join(file))?;
        for (at, _) in text.match_indices("tern_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                families.contains(family),
                "{file} names `{name}`, which the control plane does not serve"
            );
        }
    }
    // A family both pages have means the same on both.
    let help = |page: &str| -> std::collections::BTreeMap<String, String> {
        page.lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, text)| (name.to_owned(), text.to_owned()))
            .collect()
    };
    let (agent_help, cp_help) = (help(&agent_page), help(&page));
    for (name, text) in &agent_help {
        if let Some(other) = cp_help.get(name) {
            assert_eq!(
                text, other,
                "`{name}` means one thing on the agent, another on the control plane"
            );
        }
    }
    Ok(())
}

/// `promtool check metrics` (Prometheus's own linter) passes on `page`. Skipped without
/// promtool unless `TERN_REQUIRE_PROMTOOL=1` (CI installs Debian's `prometheus` and sets it).
fn promtool_check(what: &str, page: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    if !tern_e2e::tool_available(
        std::process::Command::new("promtool").arg("--version"),
        "TERN_REQUIRE_PROMTOOL",
        "promtool",
    ) {
        return Ok(());
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(page.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {what}'s /metrics: {said}\n{page}"
    );
    Ok(())
}

#[test]
fn a_week_offline_arrives_once() -> anyhow::Result<()> {
    let mut fleet = serving_fleet("200ms", &[])?;
    fleet.cp.stop()?;
    infer_ok(&fleet, 25)?;
    fleet.agents[0].process.terminate(Duration::from_secs(10))?;

    // A week of 10 s batches, as if the agent had served all along without a link.
    let week = 7 * 8640;
    let (simulated, last) = inject(&fleet, now_ms() - 7 * DAY_MS - 60_000, week)?;
    fleet.cp.serve()?;
    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;

    let agent = wait_for(Duration::from_secs(180), "the week's batches", || {
        top_agent(&fleet, "edge-1").filter(|a| a.last_seq > last)
    })?;
    assert_eq!(
        agent.batches, agent.last_seq,
        "each batch stored exactly once"
    );
    assert_eq!(agent.dropped_batches, 0);
    let row = wait_for(FLEET_TIMEOUT, "all requests", || {
        scores(&fleet, Some("8d")).filter(|p| p.requests >= simulated + 25)
    })?;
    assert_eq!(row.requests, simulated + 25, "nothing lost, nothing twice");
    assert_eq!(row.steps[0].requests, simulated + 25);
    Ok(())
}

#[test]
fn a_control_plane_killed_mid_backlog_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let mut fleet = serving_fleet("200ms", &[])?;
    infer_ok(&fleet, 10)?;
    wait_for(FLEET_TIMEOUT, "the first requests", || {
        scores(&fleet, None).filter(|p| p.requests == 10)
    })?;
    fleet.cp.stop()?;
    fleet.agents[0].process.terminate(Duration::from_secs(10))?;
    let (simulated, last) = inject(&fleet, now_ms() - 3 * DAY_MS, 40_000)?;
    fleet.cp.serve()?;
    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;

    // Kill -9 while the backlog streams in.
    let seen = wait_for(FLEET_TIMEOUT, "the backlog starting to arrive", || {
        top_agent(&fleet, "edge-1")
            .map(|a| a.last_seq)
            .filter(|seq| *seq > 100)
    })?;
    fleet.cp.process.as_mut().expect("running").kill();
    assert!(
        seen < last,
        "the kill came before the backlog was in ({seen} of {last})"
    );
    fleet.cp.serve()?;

    let agent = wait_for(Duration::from_secs(180), "the rest of the backlog", || {
        top_agent(&fleet, "edge-1").filter(|a| a.last_seq > last)
    })?;
    assert_eq!(
        agent.batches, agent.last_seq,
        "each batch stored exactly once"
    );
    let row = wait_for(FLEET_TIMEOUT, "all requests", || {
        scores(&fleet, Some("4d")).filter(|p| p.requests >= simulated + 10)
    })?;
    assert_eq!(row.requests, simulated + 10, "nothing lost, nothing twice");
    Ok(())
}

#[test]
fn a_full_buffer_drops_the_oldest_and_says_so() -> anyhow::Result<()> {
    let mut fleet = serving_fleet("100ms", &["--telemetry-buffer-bytes", "4096"])?;
    fleet.cp.stop()?;
    // These requests land in the oldest batches, which the outage pushes out.
    infer_ok(&fleet, 10)?;
    wait_for(FLEET_TIMEOUT, "the agent dropping batches", || {
        let page = agent_metrics(&fleet, 0).ok()?;
        let line = page
            .lines()
            .find(|l| l.starts_with("tern_telemetry_dropped_batches_total"))?;
        let dropped: u64 = line.rsplit(' ').next()?.parse().ok()?;
        (dropped >= 80).then_some(())
    })?;
    // These land in the newest batches.
    infer_ok(&fleet, 7)?;
    fleet.agents[0].process.terminate(Duration::from_secs(10))?;
    let log = fleet.agents[0].process.log_text();
    assert!(
        log.contains("telemetry buffer full"),
        "the agent says so:\n{log}"
    );

    fleet.cp.serve()?;
    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;
    let agent = wait_for(
        FLEET_TIMEOUT,
        "every batch stored or counted as dropped",
        || {
            top_agent(&fleet, "edge-1")
                .filter(|a| a.dropped_batches >= 80 && a.batches + a.dropped_batches == a.last_seq)
        },
    )?;
    assert!(agent.batches < agent.last_seq);
    let row = wait_for(FLEET_TIMEOUT, "the newest requests", || {
        scores(&fleet, Some("1h")).filter(|p| p.requests >= 7)
    })?;
    assert_eq!(
        row.requests, 7,
        "the oldest batches (10 requests) were dropped, the newest kept"
    );
    Ok(())
}
