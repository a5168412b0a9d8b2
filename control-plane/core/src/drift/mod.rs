//! Drift monitoring, a service over the stores: the drift of a monitored pipeline over the
//! drift window ([`compute`]), judged into alerts ([`judge`]) that are kept with the
//! baselines ([`store`]).
//!
//! - [`compute`]: the PSI of each feature per agent and fleet-wide (pure).
//! - [`judge`]: readings and alerts in, alert changes out (pure).
//! - [`store`]: baselines and alerts.

pub mod compute;
pub mod judge;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tern_proto::api::PipelineDrift;
use tern_proto::drift::{Baseline, BaselineError, FeatureStats, merge_features};
use tern_proto::manifest::{BaselineRef, MonitoringSpec};
use tracing::{info, warn};

pub use compute::MIN_REQUESTS;
pub use judge::FLEET;
pub use store::{AlertRecord, AlertState, DriftStore, DriftStoreError, check_reference};

use crate::catalog::{Catalog, CatalogError};
use crate::registry::{Registry, RegistryError};
use crate::telemetry::store::{AgentWindow, SeriesStore, TelemetryStoreError};

/// Bins per feature of a baseline built without an explicit count.
pub const DEFAULT_BINS: usize = 10;

/// Why a drift operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Store(#[from] DriftStoreError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryStoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("invalid baseline: {0}")]
    Baseline(#[from] BaselineError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
}

/// What drift monitoring reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct DriftContext<'a> {
    pub catalog: &'a Catalog,
    pub registry: &'a Registry,
    pub series: &'a SeriesStore,
    pub store: &'a DriftStore,
    /// The span drift is computed over (`drift_window`).
    pub window: Duration,
}

/// The baseline `monitoring` names, with its label; `None` when it names none.
fn resolve(
    drift: &DriftStore,
    monitoring: &MonitoringSpec,
) -> Result<Option<(String, Baseline)>, DriftError> {
    if let Some(data) = &monitoring.baseline_data {
        return Ok(Some(("inline".into(), data.clone())));
    }
    match monitoring.baseline.as_deref().and_then(BaselineRef::parse) {
        Some(BaselineRef::Stored { name, version }) => Ok(drift
            .baseline(&name, version)?
            .map(|b| (format!("{name}:{version}"), b))),
        _ => Ok(None),
    }
}

fn agent_names(cx: &DriftContext<'_>) -> Result<HashMap<String, String>, DriftError> {
    Ok(cx
        .registry
        .agents()?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect())
}

fn windows(
    cx: &DriftContext<'_>,
    now_ms: u64,
) -> Result<BTreeMap<String, AgentWindow>, DriftError> {
    let span = cx.window.as_millis() as u64;
    Ok(cx.series.agents(now_ms.saturating_sub(span), now_ms)?)
}

/// Drift of pipeline `name` now (`GET /v1/drift/{name}`).
pub fn pipeline_drift(
    cx: &DriftContext<'_>,
    name: &str,
    now_ms: u64,
) -> Result<PipelineDrift, DriftError> {
    let record = cx
        .catalog
        .pipeline(name)?
        .ok_or_else(|| DriftError::NotFound(format!("pipeline {name}")))?;
    let not_monitored = || DriftError::BadRequest(format!("pipeline {name} has no `monitoring`"));
    let monitoring = record
        .manifest
        .spec
        .monitoring
        .as_ref()
        .ok_or_else(not_monitored)?;
    let baseline = resolve(cx.store, monitoring)?;
    compute::compute(
        &record,
        baseline,
        &windows(cx, now_ms)?,
        &agent_names(cx)?,
        cx.window.as_secs(),
    )
    .ok_or_else(not_monitored)
}

/// Judges every monitored pipeline with a baseline and updates the alerts.
pub fn evaluate(cx: &DriftContext<'_>, now_ms: u64) -> Result<(), DriftError> {
    let windows = windows(cx, now_ms)?;
    let names = agent_names(cx)?;
    let seconds = cx.window.as_secs();
    let mut judged = Vec::new();
    let mut readings = Vec::new();
    for record in cx.catalog.pipelines()? {
        let Some(monitoring) = &record.manifest.spec.monitoring else {
            continue;
        };
        if monitoring.baseline.is_none() && monitoring.baseline_data.is_none() {
            continue;
        }
        let Some(baseline) = resolve(cx.store, monitoring)? else {
            continue;
        };
        let Some(drift) = compute::compute(&record, Some(baseline), &windows, &names, seconds)
        else {
            continue;
        };
        judged.push(drift.pipeline.clone());
        readings.extend(judge::readings(&drift));
    }
    // Twice the window: a scope that stays under the minimum that long has no news to give.
    let silence_ms = 2 * cx.window.as_millis() as u64;
    let judgement = judge::judge(cx.store.alerts()?, &readings, &judged, silence_ms, now_ms);
    for a in &judgement.fired {
        warn!(pipeline = %a.pipeline, scope = %a.scope, feature = %a.feature, psi = a.psi, threshold = a.threshold, "drift alert");
    }
    for a in &judgement.resolved {
        info!(pipeline = %a.pipeline, scope = %a.scope, feature = %a.feature, "drift alert resolved");
    }
    Ok(cx.store.apply(&judgement.changes)?)
}

/// A baseline from what agents running `pipeline` (its current revision) saw over the last
/// `window_ms`, fleet-wide.
pub fn baseline_from_window(
    cx: &DriftContext<'_>,
    pipeline: &str,
    window_ms: u64,
    bins: usize,
    now_ms: u64,
) -> Result<Baseline, DriftError> {
    let record = cx
        .catalog
        .pipeline(pipeline)?
        .ok_or_else(|| DriftError::NotFound(format!("pipeline {pipeline}")))?;
    let found = cx
        .series
        .pipelines(now_ms.saturating_sub(window_ms), now_ms, Some(pipeline))?;
    let mut features: Vec<FeatureStats> = Vec::new();
    for stats in found
        .get(pipeline)
        .iter()
        .flat_map(|(_, series)| series.iter())
        .filter(|s| s.revision == record.revision)
    {
        merge_features(&mut features, &stats.features);
    }
    if features.is_empty() {
        return Err(DriftError::BadRequest(format!(
            "no feature distributions of pipeline {pipeline} revision {} in the window (does it have `monitoring`, and did it serve requests?)",
            record.revision
        )));
    }
    Ok(Baseline::from_stats(&features, bins)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tern_proto::drift::FeatureRecorder;
    use tern_proto::release::ArtifactKind;
    use tern_proto::telemetry::{PipelineStats, TelemetryBatch};

    use super::*;
    use crate::testing::Stores;

    const MINUTE: u64 = 60_000;

    /// `n` values of feature `input.x`, evenly spread over `[from, from + 1)`.
    fn feature(from: f32, n: usize) -> FeatureStats {
        let mut recorder = FeatureRecorder::default();
        (0..n).for_each(|i| recorder.record(from + i as f32 / n as f32));
        recorder.take("input.x")
    }

    fn monitored_pipeline() -> String {
        "apiVersion: tern.dev/v1alpha1\nkind: Pipeline\nmetadata: { name: scores }\nspec:\n  steps:\n    - name: infer\n      model: churn:1\n  monitoring: { baseline: \"normal:1\", alertPsi: 0.2 }\n".into()
    }

    /// A control plane with pipeline `scores` monitored against a baseline of `[0, 1)`, and
    /// agent `id0`'s traffic of `requests` whose `input.x` lies in `[from, from + 1)`.
    fn fleet(from: f32, requests: u64, now_ms: u64) -> (Stores, SeriesStore) {
        let stores = Stores::new();
        stores.enroll("id0", "edge-1");
        stores.push("churn", 1, ArtifactKind::Model, true);
        let baseline =
            Baseline::from_stats(&[feature(0.0, 2_000)], DEFAULT_BINS).expect("baseline");
        (stores.drift)
            .add_baseline("normal", baseline, "test".into(), 0)
            .expect("baseline stored");
        stores
            .apply(&monitored_pipeline(), false, 0)
            .expect("apply");
        let series = SeriesStore::new(stores.backend.clone(), Duration::from_secs(86_400));
        let batch = TelemetryBatch {
            seq: 1,
            start_ms: now_ms - 2 * MINUTE,
            end_ms: now_ms - MINUTE,
            pipelines: vec![PipelineStats {
                pipeline: "scores".into(),
                revision: 1,
                requests,
                features: vec![feature(from, 1_000)],
                ..Default::default()
            }],
            ..Default::default()
        };
        series.ingest(&[("id0", &batch)], now_ms).expect("ingest");
        (stores, series)
    }

    fn context<'a>(stores: &'a Stores, series: &'a SeriesStore) -> DriftContext<'a> {
        DriftContext {
            catalog: &stores.catalog,
            registry: &stores.registry,
            series,
            store: &stores.drift,
            window: Duration::from_secs(3_600),
        }
    }

    #[test]
    fn a_shifted_feature_raises_an_alert_fleet_wide_and_for_its_agent() {
        let now = 100 * MINUTE;
        let (stores, series) = fleet(5.0, 100, now);
        let drift = pipeline_drift(&context(&stores, &series), "scores", now).expect("drift");
        let x = &drift.features[0];
        assert_eq!((x.feature.as_str(), x.count), ("input.x", 1_000));
        assert!(x.psi.is_some_and(|psi| psi > 1.0), "{:?}", x.psi);
        assert!(
            x.agents.contains_key("edge-1"),
            "shown by name: {:?}",
            x.agents
        );

        evaluate(&context(&stores, &series), now).expect("judged");
        let alerts = stores.drift.alerts().expect("alerts");
        let scopes: Vec<&str> = alerts.iter().map(|a| a.scope.as_str()).collect();
        assert_eq!(scopes.len(), 2, "the fleet and the agent: {alerts:?}");
        assert!(
            alerts
                .iter()
                .all(|a| a.feature == "input.x" && a.psi > a.threshold)
        );
    }

    #[test]
    fn the_same_distribution_or_too_little_traffic_raises_nothing() {
        let now = 100 * MINUTE;
        for (from, requests) in [(0.0, 100), (5.0, MIN_REQUESTS - 1)] {
            let (stores, series) = fleet(from, requests, now);
            evaluate(&context(&stores, &series), now).expect("judged");
            assert!(
                stores.drift.alerts().expect("alerts").is_empty(),
                "from {from}, {requests} requests"
            );
        }
        let (stores, series) = fleet(0.0, 100, now);
        assert!(matches!(
            pipeline_drift(&context(&stores, &series), "other", now),
            Err(DriftError::NotFound(_))
        ));
    }
}
