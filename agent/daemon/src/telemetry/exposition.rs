//! `/metrics` on the local API: this host and the pipelines it serves, in the Prometheus text
//! format. Counters are totals since each revision was loaded.

use tern_proto::prometheus::{Exposition, Kind};

use super::TelemetryState;
use crate::serving::ServingTable;

/// The page for `agent`.
pub fn render(agent: &str, serving: &ServingTable, state: &TelemetryState) -> String {
    let mut page = Exposition::default();
    let host = state.host.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (buffered_bytes, buffered_batches) = state.buffer.pending();
    let a = [("agent", agent)];
    page.family(
        "tern_agent_info",
        Kind::Gauge,
        "This agent and its version.",
    )
    .sample(&[("agent", agent), ("version", crate::VERSION)], 1.0);
    page.family(
        "tern_agent_storage_errors_total",
        Kind::Counter,
        "Failed storage probes and writes since the agent started.",
    )
    .sample(&a, state.storage.errors() as f64);
    page.family(
        "tern_agent_storage_ready",
        Kind::Gauge,
        "1 when the agent's storage works; 0 while it fails (the agent exits if it keeps failing).",
    )
    .sample(
        &a,
        if state.storage.not_ready().is_some() {
            0.0
        } else {
            1.0
        },
    );
    let gauges: [(&str, &str, f64); 9] = [
        (
            "tern_host_cpu_ratio",
            "CPU busy over the last telemetry interval, as a share of all cores (0-1).",
            f64::from(host.cpu_percent) / 100.0,
        ),
        (
            "tern_host_memory_used_bytes",
            "Memory in use on the host.",
            host.memory_used_bytes as f64,
        ),
        (
            "tern_host_memory_total_bytes",
            "Memory of the host.",
            host.memory_total_bytes as f64,
        ),
        (
            "tern_host_disk_free_bytes",
            "Free space on the disk of the agent's data dir.",
            host.disk_free_bytes as f64,
        ),
        (
            "tern_host_disk_total_bytes",
            "Size of the disk of the agent's data dir.",
            host.disk_total_bytes as f64,
        ),
        (
            "tern_host_cache_bytes",
            "Artifacts and compiled plugins kept by the agent.",
            host.cache_bytes as f64,
        ),
        (
            "tern_telemetry_buffered_bytes",
            "Telemetry waiting for the control plane.",
            buffered_bytes as f64,
        ),
        (
            "tern_telemetry_buffered_batches",
            "Telemetry batches waiting for the control plane.",
            buffered_batches as f64,
        ),
        (
            "tern_host_gpus",
            "GPU adapters of the host.",
            host.gpus.len() as f64,
        ),
    ];
    for (name, help, value) in gauges {
        page.family(name, Kind::Gauge, help).sample(&a, value);
    }
    page.family(
        "tern_telemetry_dropped_batches_total",
        Kind::Counter,
        "Telemetry batches dropped, oldest first, because the buffer was full.",
    )
    .sample(&a, state.buffer.dropped() as f64);

    let served: Vec<_> = serving
        .all()
        .into_iter()
        .map(|p| {
            let totals = p.totals();
            (p.name.clone(), p.revision.to_string(), totals)
        })
        .collect();
    page.family(
        "tern_pipeline_requests_total",
        Kind::Counter,
        "Requests that reached the pipeline revision.",
    );
    for (name, revision, totals) in &served {
        page.sample(
            &[("pipeline", name), ("revision", revision)],
            totals.requests as f64,
        );
    }
    page.family(
        "tern_pipeline_errors_total",
        Kind::Counter,
        "Failed requests by kind (bad-input is the client's).",
    );
    for (name, revision, totals) in &served {
        for (kind, count) in &totals.errors {
            page.sample(
                &[("pipeline", name), ("revision", revision), ("kind", kind)],
                *count as f64,
            );
        }
    }
    page.family(
        "tern_pipeline_latency_seconds",
        Kind::Histogram,
        "Time of a request in the pipeline.",
    );
    for (name, revision, totals) in &served {
        page.histogram_us(
            &[("pipeline", name), ("revision", revision)],
            &totals.latency_us,
        );
    }
    page.family(
        "tern_pipeline_queue_seconds",
        Kind::Histogram,
        "Time a request waited for a worker.",
    );
    for (name, revision, totals) in &served {
        page.histogram_us(
            &[("pipeline", name), ("revision", revision)],
            &totals.queue_us,
        );
    }
    page.family(
        "tern_step_latency_seconds",
        Kind::Histogram,
        "Time of a request in one step.",
    );
    for (name, revision, totals) in &served {
        for step in &totals.steps {
            page.histogram_us(
                &[
                    ("pipeline", name),
                    ("revision", revision),
                    ("step", &step.step),
                ],
                &step.latency_us,
            );
        }
    }
    page.finish()
}
