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
