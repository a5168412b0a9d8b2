//! The drift of a pipeline, a pure function: the agents' telemetry windows and the baseline in,
//! the population stability index of each monitored feature per agent and fleet-wide out.
//!
//! A scope (an agent, the fleet) that served fewer than [`MIN_REQUESTS`] requests in the window
//! gets no PSI: values of one request are correlated (an image's pixels), so value counts alone
//! overstate the evidence.

use std::collections::{BTreeMap, HashMap};

use tern_proto::api::{FeatureDrift, PipelineDrift};
use tern_proto::drift::{Baseline, FeatureStats, merge_features, psi};

use crate::catalog::PipelineRecord;
use crate::telemetry::store::AgentWindow;

/// Requests a scope must have served in the window before its PSI is computed.
pub const MIN_REQUESTS: u64 = 30;

/// The current revision's requests and feature distributions of `pipeline` in each agent's
/// window.
pub fn agent_features<'a>(
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
/// name; `baseline` is the one its monitoring names, with its label. `None` when the pipeline
/// is not monitored.
pub fn compute(
    record: &PipelineRecord,
    baseline: Option<(String, Baseline)>,
    windows: &BTreeMap<String, AgentWindow>,
    names: &HashMap<String, String>,
    window_seconds: u64,
) -> Option<PipelineDrift> {
    let monitoring = record.manifest.spec.monitoring.as_ref()?;
    let name = &record.manifest.metadata.name;
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
    Some(PipelineDrift {
        pipeline: name.clone(),
        revision: record.revision,
        baseline: baseline.map(|(label, _)| label),
        alert_psi: monitoring.alert_psi,
        window_seconds,
        features,
    })
}
