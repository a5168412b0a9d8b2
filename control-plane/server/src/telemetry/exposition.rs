//! `/metrics` on the admin API: the fleet for Prometheus. Pipeline counters are totals of the
//! telemetry stored since this control plane started (Prometheus handles the reset at a
//! restart); agent gauges are each agent's latest batch.

use tern_proto::api::AgentStatus;
use tern_proto::prometheus::{Exposition, Kind, MetricsPage};

use super::Telemetry;
use super::query::{QueryContext, QueryError};
use crate::health::HealthTracker;
use crate::reports::{AgentReports, Refusal, ReportKind};

/// What the fleet's metrics are made of.
#[derive(Debug, Clone, Copy)]
pub struct ExpositionContext<'a> {
    pub query: QueryContext<'a>,
    pub telemetry: &'a Telemetry,
    pub health: &'a HealthTracker,
    /// What agents reported, and the reports refused or cut.
    pub reports: &'a AgentReports,
    /// Whether the store reached over the network (PostgreSQL) fails to answer.
    pub store_not_ready: bool,
    pub storage: &'a tern_transport::storage::StorageMonitor,
    /// This replica's part: the epoch of the work lease it holds (0: none), agents connected.
    pub replica: ReplicaGauges,
}

/// What `/metrics` says of this replica of the control plane.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaGauges {
    pub work_lease_epoch: u64,
    pub agents_connected: usize,
    /// The deployment driver's passes here, those that read the whole fleet, and the desired
    /// states it signed.
    pub deploy_passes: u64,
    pub deploy_full_reads: u64,
    pub desired_signed: u64,
}

/// The page. The control plane's own storage comes first and is there even when the fleet's
/// figures cannot be read (a failing disk is when it matters most).
pub(crate) fn render(cx: &ExpositionContext<'_>, now_ms: u64) -> Result<String, QueryError> {
    let mut page = Exposition::default();
    write_storage(cx, &mut page);
    if let Err(e) = write(cx, now_ms, &mut page) {
        if cx.storage.not_ready().is_none() && !cx.store_not_ready {
            return Err(e);
        }
        tracing::warn!(error = %e, "/metrics without the fleet's figures: storage fails");
    }
    Ok(page.finish())
}

/// The control plane's storage: free space, errors, readiness.
fn write_storage<P: MetricsPage>(cx: &ExpositionContext<'_>, page: &mut P) {
    let storage = &cx.storage;
    page.family(
        "tern_control_plane_storage_free_bytes",
        Kind::Gauge,
        "Bytes free on the filesystem of the control plane's data directory.",
    )
    .sample(&[], storage.free_bytes() as f64);
    page.family(
        "tern_control_plane_storage_errors_total",
        Kind::Counter,
        "Failed storage probes and writes since the control plane started.",
    )
    .sample(&[], storage.errors() as f64);
    page.family(
        "tern_control_plane_ready",
        Kind::Gauge,
        "1 when the control plane's storage works and its store answers (GET /readyz).",
    )
    .sample(
        &[],
        if storage.not_ready().is_some() || cx.store_not_ready {
            0.0
        } else {
            1.0
        },
    );
    let replica = cx.replica;
    page.family(
        "tern_control_plane_work_lease_held",
        Kind::Gauge,
        "1 when this replica holds the work lease (runs rollouts, drift, compaction, exports).",
    )
    .sample(&[], f64::from(u8::from(replica.work_lease_epoch > 0)));
    page.family(
        "tern_control_plane_work_lease_epoch",
        Kind::Gauge,
        "The epoch of the work lease this replica holds (0: it holds none).",
    )
    .sample(&[], replica.work_lease_epoch as f64);
    page.family(
        "tern_control_plane_agents_connected",
        Kind::Gauge,
        "Agents connected to this replica.",
    )
    .sample(&[], replica.agents_connected as f64);
    page.family(
        "tern_control_plane_deploy_passes_total",
        Kind::Counter,
        "Passes of the deployment driver on this replica (one per batch of events or deadline).",
    )
    .sample(&[], replica.deploy_passes as f64);
    page.family(
        "tern_control_plane_deploy_fleet_reads_total",
        Kind::Counter,
        "Passes that read the whole fleet first: a new work-lease term, a change feed that lost track, a failed pass.",
    )
    .sample(&[], replica.deploy_full_reads as f64);
    page.family(
        "tern_control_plane_desired_states_signed_total",
        Kind::Counter,
        "Desired states the deployment driver built, signed and put in the outbox on this replica.",
    )
    .sample(&[], replica.desired_signed as f64);
}

/// The fleet's metrics, into any page (Prometheus text, OTLP).
pub(crate) fn write<P: MetricsPage>(
    cx: &ExpositionContext<'_>,
    now_ms: u64,
    page: &mut P,
) -> Result<(), QueryError> {
    let agents = super::query::top_agents(&cx.query, now_ms)?;
    page.family("tern_agents", Kind::Gauge, "Enrolled agents by status.");
    for status in [AgentStatus::Ready, AgentStatus::NotReady] {
        let n = agents.iter().filter(|a| a.status == status).count();
        page.sample(&[("status", &status.to_string())], n as f64);
    }
    page.family(
        "tern_agent_up",
        Kind::Gauge,
        "1 when the agent is connected and heard.",
    );
    for a in &agents {
        let up = if a.status == AgentStatus::Ready {
            1.0
        } else {
            0.0
        };
        page.sample(&[("agent", &a.name)], up);
    }
    type Gauge = fn(&tern_proto::api::AgentTop) -> f64;
    let gauges: [(&str, &str, Gauge); 6] = [
        (
            "tern_agent_cpu_ratio",
            "CPU busy on the agent's host, share of all cores (0-1), latest interval.",
            |a| f64::from(a.cpu_percent) / 100.0,
        ),
        (
            "tern_agent_memory_used_bytes",
            "Memory in use on the agent's host.",
            |a| a.memory_used_bytes as f64,
        ),
        (
            "tern_agent_memory_total_bytes",
            "Memory of the agent's host.",
            |a| a.memory_total_bytes as f64,
        ),
        (
            "tern_agent_disk_free_bytes",
            "Free disk under the agent's data dir.",
            |a| a.disk_free_bytes as f64,
        ),
        (
            "tern_agent_cache_bytes",
            "Artifacts and compiled plugins the agent keeps.",
            |a| a.cache_bytes as f64,
        ),
        (
            "tern_agent_telemetry_buffered_bytes",
            "Telemetry the agent held when it sent its latest batch.",
            |a| a.buffered_bytes as f64,
        ),
    ];
    for (name, help, value) in gauges {
        page.family(name, Kind::Gauge, help);
        for a in agents.iter().filter(|a| a.reported_ms > 0) {
            page.sample(&[("agent", &a.name)], value(a));
        }
    }
    page.family(
        "tern_agent_gpu_busy_ratio",
        Kind::Gauge,
        "Share of the latest interval (0-1) the GPU spent on the agent's work (timestamp queries).",
    );
    for a in &agents {
        for (adapter, busy) in a.gpus.iter().zip(&a.gpu_busy_percent) {
            if let Some(busy) = busy {
                page.sample(
                    &[("agent", &a.name), ("adapter", adapter)],
                    f64::from(*busy) / 100.0,
                );
            }
        }
    }
    page.family(
        "tern_agent_telemetry_dropped_batches_total",
        Kind::Counter,
        "Telemetry batches the agent dropped because its buffer was full.",
    );
    for a in &agents {
        page.sample(&[("agent", &a.name)], a.dropped_batches as f64);
    }

    let totals = cx.telemetry.totals();
    page.family(
        "tern_fleet_pipeline_requests_total",
        Kind::Counter,
        "Requests served fleet-wide, per pipeline revision.",
    );
    for ((pipeline, revision), (requests, _, _)) in &totals.pipelines {
        page.sample(
            &[("pipeline", pipeline), ("revision", &revision.to_string())],
            *requests as f64,
        );
    }
    page.family(
        "tern_fleet_pipeline_errors_total",
        Kind::Counter,
        "Failed requests fleet-wide by kind (bad-input is the client's).",
    );
    for ((pipeline, revision), (_, errors, _)) in &totals.pipelines {
        for (kind, count) in errors {
            page.sample(
                &[
                    ("pipeline", pipeline),
                    ("revision", &revision.to_string()),
                    ("kind", kind),
                ],
                *count as f64,
            );
        }
    }
    page.family(
        "tern_fleet_pipeline_latency_seconds",
        Kind::Histogram,
        "Time of a request in the pipeline, fleet-wide.",
    );
    for ((pipeline, revision), (_, _, latency)) in &totals.pipelines {
        page.histogram_us(
            &[("pipeline", pipeline), ("revision", &revision.to_string())],
            latency,
        );
    }
    page.family(
        "tern_agent_reports_dropped_total",
        Kind::Counter,
        "Entries of health reports and telemetry batches about pipeline revisions the agent was never given, dropped.",
    );
    let dropped_telemetry =
        (cx.telemetry.dropped_foreign).load(std::sync::atomic::Ordering::Relaxed);
    page.sample(&[("source", "health")], cx.health.dropped() as f64);
    page.sample(&[("source", "telemetry")], dropped_telemetry as f64);
    page.family(
        "tern_agent_reports_refused_total",
        Kind::Counter,
        "Agents' status and health reports refused for their rate (over 10 a second per agent after a burst of 40), or cut to the bounds (size).",
    );
    for kind in [ReportKind::Status, ReportKind::Health] {
        for why in [Refusal::Rate, Refusal::Size] {
            page.sample(
                &[("kind", kind.label()), ("reason", why.label())],
                cx.reports.refusals(kind, why) as f64,
            );
        }
    }
    let counters: [(&str, &str, u64); 3] = [
        (
            "tern_telemetry_batches_total",
            "Telemetry batches stored.",
            totals.batches,
        ),
        (
            "tern_telemetry_duplicate_batches_total",
            "Telemetry batches received again and skipped.",
            totals.duplicates,
        ),
        (
            "tern_telemetry_points_total",
            "Data points stored.",
            totals.points,
        ),
    ];
    for (name, help, value) in counters {
        page.family(name, Kind::Counter, help)
            .sample(&[], value as f64);
    }
    Ok(())
}
