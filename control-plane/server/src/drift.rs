//! Drift monitoring: stored baselines, the population stability index of each monitored
//! feature per agent and fleet-wide over the drift window, and the alerts it raises.
//!
//! Invariants: a baseline version, once stored, never changes (pipelines name it); an alert is
//! keyed by (pipeline, scope, feature), so one feature drifting on one agent is one alert
//! however long it lasts; a feature with too few values (or a scope with too few requests) in
//! the window neither raises nor resolves an alert, until it has been silent for two windows.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tern_proto::api::{AlertView, BaselineView, FeatureDrift, PipelineDrift};
use tern_proto::drift::{Baseline, BaselineError, FeatureStats, merge_features, psi};
use tern_proto::manifest::{BaselineRef, MonitoringSpec};
use tracing::{info, warn};

use crate::catalog::{CatalogError, PipelineRecord};
use crate::records::{CorruptRecord, decode, encode, versioned_key};
use crate::registry::RegistryError;
use crate::server::Shared;
use crate::telemetry::store::{AgentWindow, TelemetryStoreError};

/// Resolved alerts are kept this long for `ternctl get alerts`, then forgotten.
const RESOLVED_KEPT_MS: u64 = 24 * 3_600_000;
/// Bins per feature of a baseline built without an explicit count.
pub const DEFAULT_BINS: usize = 10;
/// Scope of fleet-wide alerts.
pub const FLEET: &str = "fleet";
/// Requests a scope (an agent, the fleet) must have served in the window before its PSI is
/// computed: values of one request are correlated (an image's pixels), so value counts alone
/// overstate the evidence.
pub const MIN_REQUESTS: u64 = 30;

/// Why a drift operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("drift storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
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

/// A baseline as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredBaseline {
    baseline: Baseline,
    created_ms: u64,
    source: String,
}

/// Baselines and alerts, in the registry's database.
#[derive(Debug, Clone)]
pub struct Drift {
    /// `name\0version` → [`StoredBaseline`].
    baselines: sled::Tree,
    /// `pipeline\0scope\0feature` → [`AlertView`].
    alerts: sled::Tree,
}

fn alert_key(pipeline: &str, scope: &str, feature: &str) -> Vec<u8> {
    [pipeline, scope, feature].join("\0").into_bytes()
}

impl Drift {
    pub fn open(db: &sled::Db) -> Result<Self, DriftError> {
        Ok(Self {
            baselines: db.open_tree("baselines")?,
            alerts: db.open_tree("alerts")?,
        })
    }

    pub fn baseline(&self, name: &str, version: u64) -> Result<Option<Baseline>, DriftError> {
        let key = versioned_key(name, version);
        match self.baselines.get(&key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(
                decode::<StoredBaseline, DriftError>(&key, &bytes)?.baseline,
            )),
        }
    }

    /// Stores `baseline` as the next version of `name`.
    pub fn add_baseline(
        &self,
        name: &str,
        baseline: Baseline,
        source: String,
        now_ms: u64,
    ) -> Result<BaselineView, DriftError> {
        if !tern_proto::labels::valid_name(name) {
            return Err(DriftError::BadRequest(
                "a baseline name is 1-63 characters of a-z, 0-9, `-`, `.`, `_`".into(),
            ));
        }
        baseline.validate()?;
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let version = match self.baselines.scan_prefix(&prefix).last() {
            Some(entry) => {
                let (key, _) = entry?;
                let bytes: [u8; 8] = key[prefix.len()..].try_into().unwrap_or([0; 8]);
                u64::from_be_bytes(bytes) + 1
            }
            None => 1,
        };
        let stored = StoredBaseline {
            baseline,
            created_ms: now_ms,
            source,
        };
        let key = versioned_key(name, version);
        let fresh = self
            .baselines
            .compare_and_swap(&key, None::<&[u8]>, Some(encode(&stored)))?;
        if fresh.is_err() {
            return Err(DriftError::BadRequest(format!(
                "baseline {name}:{version} was created at the same time; try again"
            )));
        }
        self.baselines.flush()?;
        Ok(view(name, version, stored, true))
    }

    /// Every stored baseline, by name then version.
    pub fn baselines(&self) -> Result<Vec<BaselineView>, DriftError> {
        let mut out = Vec::new();
        for entry in self.baselines.iter() {
            let (key, bytes) = entry?;
            let Some(split) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let name = String::from_utf8_lossy(&key[..split]).into_owned();
            let version = key[split + 1..]
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let stored: StoredBaseline = decode::<_, DriftError>(&key, &bytes)?;
            out.push(view(&name, version, stored, false));
        }
        Ok(out)
    }

    /// Every alert: firing first, then by pipeline, scope and feature.
    pub fn alerts(&self) -> Result<Vec<AlertView>, DriftError> {
        let mut out = Vec::new();
        for entry in self.alerts.iter() {
            let (key, bytes) = entry?;
            out.push(decode::<AlertView, DriftError>(&key, &bytes)?);
        }
        out.sort_by_key(|a| a.state != "firing");
        Ok(out)
    }

    /// Records one PSI reading: starts, updates or resolves the alert of its scope.
    fn observe(
        &self,
        drift: &PipelineDrift,
        scope: &str,
        feature: &str,
        psi: f64,
        now_ms: u64,
    ) -> Result<(), DriftError> {
        let key = alert_key(&drift.pipeline, scope, feature);
        let existing: Option<AlertView> = match self.alerts.get(&key)? {
            Some(bytes) => Some(decode::<_, DriftError>(&key, &bytes)?),
            None => None,
        };
        let firing = psi > drift.alert_psi;
        let was_firing = existing.as_ref().is_some_and(|a| a.state == "firing");
        let alert = match (firing, existing) {
            (true, Some(mut alert)) if was_firing => {
                alert.psi = psi;
                alert.revision = drift.revision;
                alert.updated_ms = now_ms;
                alert
            }
            (true, _) => {
                warn!(pipeline = %drift.pipeline, scope, feature, psi, threshold = drift.alert_psi, "drift alert");
                AlertView {
                    pipeline: drift.pipeline.clone(),
                    revision: drift.revision,
                    scope: scope.to_owned(),
                    feature: feature.to_owned(),
                    psi,
                    threshold: drift.alert_psi,
                    state: "firing".into(),
                    since_ms: now_ms,
                    updated_ms: now_ms,
                    resolved_ms: None,
                }
            }
            (false, Some(alert)) if was_firing => resolved(alert, Some(psi), now_ms),
            (false, _) => return Ok(()),
        };
        self.alerts.insert(key, encode(&alert))?;
        Ok(())
    }

    /// Resolves firing alerts of pipelines no longer judged and those without a reading for
    /// `silence_ms` (an agent that left, a feature that went away), and forgets old resolved
    /// ones.
    fn tidy(&self, judged: &[String], silence_ms: u64, now_ms: u64) -> Result<(), DriftError> {
        for alert in self.alerts()? {
            let key = alert_key(&alert.pipeline, &alert.scope, &alert.feature);
            let silent = now_ms.saturating_sub(alert.updated_ms) > silence_ms;
            if alert.state == "firing" && (!judged.contains(&alert.pipeline) || silent) {
                self.alerts
                    .insert(key, encode(&resolved(alert, None, now_ms)))?;
            } else if alert
                .resolved_ms
                .is_some_and(|t| now_ms.saturating_sub(t) > RESOLVED_KEPT_MS)
            {
                self.alerts.remove(key)?;
            }
        }
        Ok(())
    }
}

fn resolved(mut alert: AlertView, psi: Option<f64>, now_ms: u64) -> AlertView {
    info!(pipeline = %alert.pipeline, scope = %alert.scope, feature = %alert.feature, "drift alert resolved");
    if let Some(psi) = psi {
        alert.psi = psi;
    }
    alert.state = "resolved".into();
    alert.updated_ms = now_ms;
    alert.resolved_ms = Some(now_ms);
    alert
}

fn view(name: &str, version: u64, stored: StoredBaseline, with_baseline: bool) -> BaselineView {
    BaselineView {
        name: name.to_owned(),
        version,
        features: stored.baseline.features.len(),
        created_ms: stored.created_ms,
        source: stored.source,
        baseline: with_baseline.then_some(stored.baseline),
    }
}

/// The baseline `monitoring` names, with its label; `None` when it names none.
fn resolve(
    drift: &Drift,
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

/// Whether a stored baseline `monitoring` names exists (checked when a pipeline is applied).
pub fn check_reference(drift: &Drift, monitoring: &MonitoringSpec) -> Result<(), String> {
    match monitoring.baseline.as_deref().and_then(BaselineRef::parse) {
        Some(BaselineRef::Stored { name, version }) => match drift.baseline(&name, version) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "baseline `{name}:{version}` does not exist (create it with `ternctl baseline create`)"
            )),
            Err(e) => Err(e.to_string()),
        },
        Some(BaselineRef::File(_)) => Err(
            "a local file cannot be read here; send the baseline as `baselineData` (ternctl does)"
                .into(),
        ),
        None => Ok(()),
    }
}

/// The current revision's requests and feature distributions of `pipeline` in each agent's
/// window.
fn agent_features<'a>(
    windows: &'a BTreeMap<String, AgentWindow>,
    pipeline: &str,
    revision: u64,
) -> BTreeMap<&'a str, (u64, Vec<FeatureStats>)> {
    let mut out: BTreeMap<&'a str, (u64, Vec<FeatureStats>)> = BTreeMap::new();
    for (agent, window) in windows {
        for stats in window
            .pipelines
            .iter()
            .filter(|p| p.pipeline == pipeline && p.revision == revision)
        {
            let (requests, features) = out.entry(agent.as_str()).or_default();
            *requests = requests.saturating_add(stats.requests);
            merge_features(features, &stats.features);
        }
    }
    out
}

/// Drift of one pipeline record over `windows` (agent id → window); agent ids are shown by
/// name. `None` when the pipeline is not monitored.
fn compute(
    drift: &Drift,
    record: &PipelineRecord,
    windows: &BTreeMap<String, AgentWindow>,
    names: &HashMap<String, String>,
    window_seconds: u64,
) -> Result<Option<PipelineDrift>, DriftError> {
    let Some(monitoring) = &record.manifest.spec.monitoring else {
        return Ok(None);
    };
    let name = &record.manifest.metadata.name;
    let baseline = resolve(drift, monitoring)?;
    let per_agent = agent_features(windows, name, record.revision);
    let fleet_requests = per_agent
        .values()
        .fold(0u64, |a, (r, _)| a.saturating_add(*r));
    let mut fleet: BTreeMap<&str, FeatureStats> = BTreeMap::new();
    for (_, features) in per_agent.values() {
        for f in features {
            fleet
                .entry(f.feature.as_str())
                .or_insert_with(|| FeatureStats::new(f.feature.clone()))
                .merge(f);
        }
    }
    let mut features = Vec::new();
    for (feature, observed) in &fleet {
        let expected = baseline.as_ref().and_then(|(_, b)| b.feature(feature));
        let mut agents = BTreeMap::new();
        if let Some(expected) = expected {
            for (agent, (requests, stats)) in &per_agent {
                if *requests < MIN_REQUESTS {
                    continue;
                }
                let mine = stats.iter().find(|s| s.feature == *feature);
                if let Some(value) = mine.and_then(|s| psi(expected, s)) {
                    let shown = names.get(*agent).cloned().unwrap_or((*agent).to_owned());
                    agents.insert(shown, value);
                }
            }
        }
        let observed_bins = expected.map(|e| observed.binned(&e.edges));
        let total = observed_bins
            .as_ref()
            .map_or(1, |b| b.iter().sum::<u64>().max(1)) as f64;
        features.push(FeatureDrift {
            feature: (*feature).to_owned(),
            count: observed.count,
            mean: observed.mean(),
            psi: expected
                .filter(|_| fleet_requests >= MIN_REQUESTS)
                .and_then(|e| psi(e, observed)),
            agents,
            edges: expected.map(|e| e.edges.clone()).unwrap_or_default(),
            expected: expected.map(|e| e.fractions.clone()).unwrap_or_default(),
            observed: observed_bins
                .unwrap_or_default()
                .iter()
                .map(|c| *c as f64 / total)
                .collect(),
        });
    }
    Ok(Some(PipelineDrift {
        pipeline: name.clone(),
        revision: record.revision,
        baseline: baseline.map(|(label, _)| label),
        alert_psi: monitoring.alert_psi,
        window_seconds,
        features,
    }))
}

fn agent_names(shared: &Shared) -> Result<HashMap<String, String>, DriftError> {
    Ok(shared
        .registry
        .agents()?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect())
}

fn window(shared: &Shared, now_ms: u64) -> Result<BTreeMap<String, AgentWindow>, DriftError> {
    let span = shared.config.drift_window.as_millis() as u64;
    Ok(shared
        .telemetry
        .store
        .agents(now_ms.saturating_sub(span), now_ms)?)
}

/// Drift of pipeline `name` now (`GET /v1/drift/{name}`).
pub(crate) fn pipeline_drift(
    shared: &Shared,
    name: &str,
    now_ms: u64,
) -> Result<PipelineDrift, DriftError> {
    let record = shared
        .catalog
        .pipeline(name)?
        .ok_or_else(|| DriftError::NotFound(format!("pipeline {name}")))?;
    let windows = window(shared, now_ms)?;
    compute(
        &shared.drift,
        &record,
        &windows,
        &agent_names(shared)?,
        shared.config.drift_window.as_secs(),
    )?
    .ok_or_else(|| DriftError::BadRequest(format!("pipeline {name} has no `monitoring`")))
}

/// Judges every monitored pipeline with a baseline and updates the alerts.
pub(crate) fn evaluate(shared: &Shared, now_ms: u64) -> Result<(), DriftError> {
    let windows = window(shared, now_ms)?;
    let names = agent_names(shared)?;
    let seconds = shared.config.drift_window.as_secs();
    let mut judged = Vec::new();
    for record in shared.catalog.pipelines()? {
        let has_baseline = record
            .manifest
            .spec
            .monitoring
            .as_ref()
            .is_some_and(|m| m.baseline.is_some() || m.baseline_data.is_some());
        if !has_baseline {
            continue;
        }
        let Some(drift) = compute(&shared.drift, &record, &windows, &names, seconds)? else {
            continue;
        };
        if drift.baseline.is_none() {
            continue;
        }
        judged.push(drift.pipeline.clone());
        for feature in &drift.features {
            let fleet = feature.psi.map(|psi| (FLEET, psi));
            let agents = feature.agents.iter().map(|(a, psi)| (a.as_str(), *psi));
            for (scope, psi) in fleet.into_iter().chain(agents) {
                shared
                    .drift
                    .observe(&drift, scope, &feature.feature, psi, now_ms)?;
            }
        }
    }
    // Twice the window: a scope that stays under the minimum that long has no news to give.
    let silence_ms = 2 * shared.config.drift_window.as_millis() as u64;
    shared.drift.tidy(&judged, silence_ms, now_ms)?;
    shared.drift.alerts.flush()?;
    Ok(())
}

/// A baseline from what agents running `pipeline` (its current revision) saw over the last
/// `window_ms`, fleet-wide.
pub(crate) fn baseline_from_window(
    shared: &Shared,
    pipeline: &str,
    window_ms: u64,
    bins: usize,
    now_ms: u64,
) -> Result<Baseline, DriftError> {
    let record = shared
        .catalog
        .pipeline(pipeline)?
        .ok_or_else(|| DriftError::NotFound(format!("pipeline {pipeline}")))?;
    let found = shared.telemetry.store.pipelines(
        now_ms.saturating_sub(window_ms),
        now_ms,
        Some(pipeline),
    )?;
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
