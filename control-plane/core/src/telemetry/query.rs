//! Answers to `ternctl top`: pipelines over a window, agents over the last minutes.

use std::collections::BTreeMap;

use tern_proto::api::{
    AgentTop, ExperimentView, OutputView, PipelineSeries, PipelineTop, SeriesPoint, StepTop,
    VariantView,
};
use tern_proto::drift::{Baseline, psi};
use tern_proto::telemetry::{
    Counts, Histogram, PipelineStats, StepKind, StepStats, failures, merge_counts,
};

use super::store::{SeriesStore, TelemetryStoreError};
use crate::catalog::Catalog;
use crate::presence::Presence;
use crate::registry::Registry;

/// What the queries read.
#[derive(Debug, Clone, Copy)]
pub struct QueryContext<'a> {
    pub catalog: &'a Catalog,
    pub registry: &'a Registry,
    pub series: &'a SeriesStore,
    pub presence: &'a Presence,
    pub replica: &'a crate::replica::Replica,
    /// Silence after which a connected agent is no longer Ready.
    pub not_ready_after_ms: u64,
}

/// The span `top agents` looks back over.
pub const AGENT_SPAN_MS: u64 = 5 * 60_000;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] TelemetryStoreError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn step_top(step: &StepStats, seconds: f64) -> StepTop {
    StepTop {
        step: step.step.clone(),
        kind: match step.kind {
            StepKind::Plugin => "plugin",
            StepKind::Model => "model",
        }
        .to_owned(),
        device: step.device.clone(),
        requests: step.requests,
        errors: failures(&step.errors),
        rps: step.requests as f64 / seconds,
        p50_ms: ms(step.latency_us.quantile(0.5)),
        p95_ms: ms(step.latency_us.quantile(0.95)),
        p99_ms: ms(step.latency_us.quantile(0.99)),
        memory_peak_bytes: step.memory_peak_bytes,
        counters: step.counters.clone(),
    }
}

/// One pipeline's series (all revisions and variants) summed into a row.
pub fn pipeline_top(
    name: &str,
    revision: u64,
    since_ms: u64,
    now_ms: u64,
    series: &[PipelineStats],
) -> PipelineTop {
    let seconds = (now_ms.saturating_sub(since_ms) as f64 / 1000.0).max(1.0);
    let mut total = PipelineStats::default();
    for s in series {
        total.merge(s);
    }
    let errors = total.errors;
    PipelineTop {
        pipeline: name.to_owned(),
        revision,
        since_ms,
        window_seconds: seconds,
        requests: total.requests,
        errors: failures(&errors),
        errors_by_kind: errors,
        rps: total.requests as f64 / seconds,
        p50_ms: ms(total.latency_us.quantile(0.5)),
        p95_ms: ms(total.latency_us.quantile(0.95)),
        p99_ms: ms(total.latency_us.quantile(0.99)),
        queue_p99_ms: ms(total.queue_us.quantile(0.99)),
        steps: total.steps.iter().map(|s| step_top(s, seconds)).collect(),
    }
}

/// Every pipeline of the catalog (and, with an explicit window, any other that reported in
/// it), over `window_ms` or, without one, since its current revision was applied.
pub fn top_pipelines(
    cx: &QueryContext<'_>,
    window_ms: Option<u64>,
    now_ms: u64,
) -> Result<Vec<PipelineTop>, QueryError> {
    let current: BTreeMap<String, (u64, u64)> = cx
        .catalog
        .pipelines()?
        .into_iter()
        .map(|p| (p.manifest.metadata.name.clone(), (p.revision, p.applied_ms)))
        .collect();
    let store = &cx.series;
    let mut rows = Vec::new();
    match window_ms {
        Some(window) => {
            let since = now_ms.saturating_sub(window);
            let mut found = store.pipelines(since, now_ms, None)?;
            for name in current.keys() {
                found.entry(name.clone()).or_default();
            }
            for (name, (_, series)) in found {
                let revision = current.get(&name).map_or(0, |(r, _)| *r);
                rows.push(pipeline_top(&name, revision, since, now_ms, &series));
            }
        }
        None => {
            for (name, (revision, applied_ms)) in &current {
                let found = store.pipelines(*applied_ms, now_ms, Some(name))?;
                // Only the current revision: agents not rolled out yet still serve older ones.
                let series: Vec<PipelineStats> = found
                    .get(name)
                    .map(|(_, s)| {
                        s.iter()
                            .filter(|p| p.revision == *revision)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                rows.push(pipeline_top(name, *revision, *applied_ms, now_ms, &series));
            }
        }
    }
    Ok(rows)
}

/// Every enrolled agent with its latest host figures and its traffic over the last minutes.
pub fn top_agents(cx: &QueryContext<'_>, now_ms: u64) -> Result<Vec<AgentTop>, QueryError> {
    let marks = cx.series.marks()?;
    let windows = cx
        .series
        .agents(now_ms.saturating_sub(AGENT_SPAN_MS), now_ms)?;
    let mut rows = Vec::new();
    for record in cx.registry.agents()? {
        let mark = marks.get(&record.id).cloned().unwrap_or_default();
        let window = windows.get(&record.id);
        let (mut requests, mut errors, mut latency) = (0u64, Counts::new(), Histogram::default());
        for p in window.iter().flat_map(|w| w.pipelines.iter()) {
            requests = requests.saturating_add(p.requests);
            merge_counts(&mut errors, &p.errors);
            latency.merge(&p.latency_us);
        }
        let interval_us = mark.end_ms.saturating_sub(mark.start_ms).max(1) * 1000;
        let host = &mark.host;
        rows.push(AgentTop {
            name: record.name.clone(),
            status: cx
                .replica
                .status(cx.presence, &record, now_ms, cx.not_ready_after_ms),
            labels: record.labels.clone(),
            reported_ms: mark.end_ms,
            cpu_percent: host.cpu_percent,
            memory_used_bytes: host.memory_used_bytes,
            memory_total_bytes: host.memory_total_bytes,
            disk_free_bytes: host.disk_free_bytes,
            disk_total_bytes: host.disk_total_bytes,
            cache_bytes: host.cache_bytes,
            gpus: host.gpus.iter().map(|g| g.adapter.clone()).collect(),
            gpu_busy_percent: host
                .gpus
                .iter()
                .map(|g| {
                    g.busy_us
                        .map(|b| (b as f64 * 100.0 / interval_us as f64).min(100.0) as f32)
                })
                .collect(),
            rps: requests as f64 / (AGENT_SPAN_MS as f64 / 1000.0),
            errors: failures(&errors),
            p99_ms: ms(latency.quantile(0.99)),
            buffered_bytes: host.buffered_bytes,
            dropped_batches: mark.dropped,
            batches: mark.batches,
            last_seq: mark.seq,
        });
    }
    Ok(rows)
}

/// An A/B experiment's variants over `window_ms`, or, without one, since the later of the
/// pipeline's current revision and the deployment's last change. `None`: no such deployment
/// or no variants.
pub fn experiment(
    cx: &QueryContext<'_>,
    deployment: &str,
    window_ms: Option<u64>,
    now_ms: u64,
) -> Result<Option<ExperimentView>, QueryError> {
    let Some(record) = cx.catalog.deployment(deployment)? else {
        return Ok(None);
    };
    let spec = &record.manifest.spec;
    if spec.variants.is_empty() {
        return Ok(None);
    }
    let (revision, applied_ms) = cx
        .catalog
        .pipeline(&spec.pipeline)?
        .map_or((0, 0), |p| (p.revision, p.applied_ms));
    let since = match window_ms {
        Some(window) => now_ms.saturating_sub(window),
        None => applied_ms.max(record.updated_ms),
    };
    let found = cx.series.pipelines(since, now_ms, Some(&spec.pipeline))?;
    // Every revision in the window: after a rollback or during a canary the variants run on
    // whichever revision each agent serves.
    let series: Vec<&PipelineStats> = found
        .get(&spec.pipeline)
        .map(|(_, s)| s.iter().collect())
        .unwrap_or_default();
    let per_variant: Vec<PipelineStats> = spec
        .variants
        .iter()
        .map(|v| {
            let mut total = PipelineStats::default();
            for s in series
                .iter()
                .filter(|s| s.variant.as_deref() == Some(v.model.as_str()))
            {
                total.merge(s);
            }
            total
        })
        .collect();
    let all = per_variant
        .iter()
        .fold(0u64, |a, p| a.saturating_add(p.requests));
    let control = per_variant.first().cloned().unwrap_or_default();
    let variants = spec
        .variants
        .iter()
        .zip(&per_variant)
        .map(|(v, stats)| {
            let errors = failures(&stats.errors);
            let outputs = stats
                .features
                .iter()
                .filter(|f| f.feature.starts_with("output:"))
                .map(|f| {
                    let reference = control
                        .features
                        .iter()
                        .find(|c| c.feature == f.feature)
                        .and_then(|c| Baseline::from_stats(std::slice::from_ref(c), 10).ok());
                    OutputView {
                        feature: f.feature.clone(),
                        count: f.count,
                        mean: f.mean(),
                        psi_vs_control: reference
                            .as_ref()
                            .and_then(|b| b.features.first())
                            .and_then(|b| psi(b, f)),
                    }
                })
                .collect();
            VariantView {
                variant: v.model.clone(),
                weight: v.weight,
                share: if all == 0 {
                    0.0
                } else {
                    stats.requests as f64 * 100.0 / all as f64
                },
                requests: stats.requests,
                errors,
                error_rate: if stats.requests == 0 {
                    0.0
                } else {
                    errors as f64 / stats.requests as f64
                },
                p50_ms: ms(stats.latency_us.quantile(0.5)),
                p95_ms: ms(stats.latency_us.quantile(0.95)),
                p99_ms: ms(stats.latency_us.quantile(0.99)),
                outputs,
            }
        })
        .collect();
    Ok(Some(ExperimentView {
        deployment: deployment.to_owned(),
        pipeline: spec.pipeline.clone(),
        revision,
        since_ms: since,
        window_seconds: now_ms.saturating_sub(since) as f64 / 1000.0,
        variants,
    }))
}

/// Pipeline `name` over the last `window_ms` in steps of `step_ms`, for charts.
pub fn pipeline_series(
    cx: &QueryContext<'_>,
    name: &str,
    window_ms: u64,
    step_ms: u64,
    now_ms: u64,
) -> Result<PipelineSeries, QueryError> {
    let steps =
        cx.series
            .pipeline_series(name, now_ms.saturating_sub(window_ms), now_ms, step_ms)?;
    let seconds = (step_ms as f64 / 1000.0).max(1.0);
    Ok(PipelineSeries {
        pipeline: name.to_owned(),
        step_seconds: step_ms / 1000,
        points: steps
            .into_iter()
            .map(|(t_ms, stats)| SeriesPoint {
                t_ms,
                requests: stats.requests,
                errors: failures(&stats.errors),
                rps: stats.requests as f64 / seconds,
                p50_ms: ms(stats.latency_us.quantile(0.5)),
                p99_ms: ms(stats.latency_us.quantile(0.99)),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tern_proto::release::ArtifactKind;
    use tern_proto::telemetry::{PipelineStats, TelemetryBatch};

    use super::*;
    use crate::replica::Replica;
    use crate::testing::{Stores, manifest};

    const MINUTE: u64 = 60_000;

    fn batch(seq: u64, end_ms: u64, revision: u64, requests: u64, dropped: u64) -> TelemetryBatch {
        TelemetryBatch {
            seq,
            start_ms: end_ms - 10_000,
            end_ms,
            dropped_batches: dropped,
            pipelines: vec![PipelineStats {
                pipeline: "scores".into(),
                revision,
                requests,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    struct Fleet {
        stores: Stores,
        series: SeriesStore,
        presence: Presence,
        replica: Replica,
    }

    impl Fleet {
        fn new() -> Self {
            let stores = Stores::new();
            let series = SeriesStore::new(stores.backend.clone(), Duration::from_secs(86_400));
            Self {
                stores,
                series,
                presence: Presence::default(),
                replica: Replica {
                    name: "cp".into(),
                    peers: false,
                },
            }
        }

        fn context(&self) -> QueryContext<'_> {
            QueryContext {
                catalog: &self.stores.catalog,
                registry: &self.stores.registry,
                series: &self.series,
                presence: &self.presence,
                replica: &self.replica,
                not_ready_after_ms: 30_000,
            }
        }

        fn ingest(&self, agent: &str, batches: &[TelemetryBatch], now_ms: u64) {
            let group: Vec<(&str, &TelemetryBatch)> = batches.iter().map(|b| (agent, b)).collect();
            self.series.ingest(&group, now_ms).expect("ingest");
        }
    }

    #[test]
    fn top_pipelines_counts_the_current_revision_since_its_apply_or_every_revision_in_a_window() {
        let fleet = Fleet::new();
        fleet.stores.push("topk", 2, ArtifactKind::Plugin, true);
        let applied = 100 * MINUTE;
        fleet
            .stores
            .apply(&manifest("topk:2", 2), false, applied)
            .expect("apply");
        let now = applied + 5 * MINUTE;
        fleet.ingest(
            "id0",
            &[
                // Before the apply, and an older revision after it: not the current one's.
                batch(1, applied - MINUTE, 1, 100, 0),
                batch(2, applied + MINUTE, 0, 3, 0),
                batch(3, applied + 2 * MINUTE, 1, 7, 0),
            ],
            now,
        );
        let rows = top_pipelines(&fleet.context(), None, now).expect("top");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].pipeline.as_str(), rows[0].revision), ("scores", 1));
        assert_eq!(rows[0].requests, 7, "revision 1 since its apply");
        assert_eq!(rows[0].since_ms, applied);

        let windowed = top_pipelines(&fleet.context(), Some(10 * MINUTE), now).expect("top");
        assert_eq!(windowed[0].requests, 110, "every revision in the window");
    }

    #[test]
    fn top_agents_says_what_each_agent_sent_stored_and_dropped() {
        let fleet = Fleet::new();
        fleet.stores.enroll("id0", "edge-1");
        let now = 100 * MINUTE;
        // Batches 3 and 4 were dropped by the agent for its cap; 5 arrives twice.
        let sent = [
            batch(1, now - 3 * MINUTE, 1, 30, 0),
            batch(2, now - 2 * MINUTE, 1, 30, 0),
            batch(5, now - MINUTE, 1, 30, 2),
        ];
        fleet.ingest("id0", &sent, now);
        fleet.ingest("id0", &sent[2..], now);
        let rows = top_agents(&fleet.context(), now).expect("top");
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.name, "edge-1");
        assert_eq!(
            (row.batches, row.dropped_batches, row.last_seq),
            (3, 2, 5),
            "stored + dropped = last sequence"
        );
        assert_eq!(row.reported_ms, now - MINUTE);
        assert!((row.rps - 90.0 / 300.0).abs() < 1e-9, "{}", row.rps);
    }
}
