//! Where plugins' custom metrics (`host.counter-add`, `host.observe`) go.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Receives custom metrics from plugins. The agent feeds them into telemetry.
pub trait MetricsSink: Send + Sync {
    fn counter_add(&self, step: &str, name: &str, delta: u64);
    fn observe(&self, step: &str, name: &str, value: f64);
}

/// Drops every metric.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn counter_add(&self, _: &str, _: &str, _: u64) {}
    fn observe(&self, _: &str, _: &str, _: f64) {}
}

/// Keeps totals in memory: counters summed, observations listed, keyed by (step, name).
#[derive(Debug, Default)]
pub struct RecordedMetrics {
    counters: Mutex<BTreeMap<(String, String), u64>>,
    observations: Mutex<BTreeMap<(String, String), Vec<f64>>>,
}

impl RecordedMetrics {
    pub fn counter(&self, step: &str, name: &str) -> u64 {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .get(&(step.to_owned(), name.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn observations(&self, step: &str, name: &str) -> Vec<f64> {
        let obs = self.observations.lock().unwrap_or_else(|p| p.into_inner());
        obs.get(&(step.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

impl MetricsSink for RecordedMetrics {
    fn counter_add(&self, step: &str, name: &str, delta: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let total = counters
            .entry((step.to_owned(), name.to_owned()))
            .or_default();
        *total = total.saturating_add(delta);
    }

    fn observe(&self, step: &str, name: &str, value: f64) {
        let mut obs = self.observations.lock().unwrap_or_else(|p| p.into_inner());
        let list = obs.entry((step.to_owned(), name.to_owned())).or_default();
        // Bounded: a plugin cannot grow host memory without limit through metrics.
        if list.len() < 100_000 {
            list.push(value);
        }
    }
}
