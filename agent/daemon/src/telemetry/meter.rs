//! What requests record as they run: lock-free histograms and counters per pipeline revision
//! and step, taken (and reset) once per telemetry interval, with running totals for `/metrics`
//! and the rollout health gates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_plugin_host::MetricsSink;
use tern_proto::telemetry::{
    BUCKETS, Counts, Histogram, PipelineStats, StepKind, StepStats, bucket_for, failures,
};

use super::features::FeatureMeter;

/// Distinct custom metric names kept per step and interval; more are counted under
/// [`OVERFLOW_METRIC`].
pub const MAX_CUSTOM_METRICS: usize = 32;
/// Where custom metrics beyond [`MAX_CUSTOM_METRICS`] are counted.
pub const OVERFLOW_METRIC: &str = "tern_dropped_custom_metrics";
/// Observations are kept in milli-units.
const OBSERVATION_SCALE: f64 = 1000.0;

/// A histogram requests record into without locks.
#[derive(Debug)]
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn record(&self, value: u64) {
        self.buckets[bucket_for(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn record_duration(&self, duration: Duration) {
        self.record(duration.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// What was recorded since the last take; resets to empty.
    pub fn take(&self) -> Histogram {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        Histogram::from_dense(&counts, self.sum.swap(0, Ordering::Relaxed))
    }

    /// What was recorded since the last take, leaving it in place.
    pub fn peek(&self) -> Histogram {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        Histogram::from_dense(&counts, self.sum.load(Ordering::Relaxed))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts `name` in a bounded map.
fn count_into(counts: &mut Counts, name: &str, delta: u64) {
    let key = if counts.contains_key(name) || counts.len() < MAX_CUSTOM_METRICS {
        name
    } else {
        OVERFLOW_METRIC
    };
    let slot = counts.entry(key.to_owned()).or_default();
    *slot = slot.saturating_add(delta);
}

/// One step's measurements, and the sink of its plugin's custom metrics.
#[derive(Debug)]
pub struct StepMeter {
    pub step: String,
    pub kind: StepKind,
    pub device: String,
    requests: AtomicU64,
    errors: Mutex<Counts>,
    latency: AtomicHistogram,
    counters: Mutex<Counts>,
    observations: Mutex<BTreeMap<String, Histogram>>,
}

impl StepMeter {
    pub fn new(step: &str, kind: StepKind, device: &str) -> Self {
        Self {
            step: step.to_owned(),
            kind,
            device: device.to_owned(),
            requests: AtomicU64::new(0),
            errors: Mutex::default(),
            latency: AtomicHistogram::default(),
            counters: Mutex::default(),
            observations: Mutex::default(),
        }
    }

    fn take(&self, memory_peak_bytes: u64) -> StepStats {
        StepStats {
            step: self.step.clone(),
            kind: self.kind,
            device: self.device.clone(),
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: std::mem::take(&mut *lock(&self.errors)),
            latency_us: self.latency.take(),
            memory_peak_bytes,
            counters: std::mem::take(&mut *lock(&self.counters)),
            observations: std::mem::take(&mut *lock(&self.observations)),
        }
    }
}

impl MetricsSink for StepMeter {
    fn counter_add(&self, _step: &str, name: &str, delta: u64) {
        count_into(&mut lock(&self.counters), name, delta);
    }

    fn observe(&self, _step: &str, name: &str, value: f64) {
        let mut observations = lock(&self.observations);
        if !observations.contains_key(name) && observations.len() >= MAX_CUSTOM_METRICS {
            drop(observations);
            return count_into(&mut lock(&self.counters), OVERFLOW_METRIC, 1);
        }
        let scaled = (value * OBSERVATION_SCALE).clamp(0.0, u64::MAX as f64) as u64;
        observations
            .entry(name.to_owned())
            .or_default()
            .record(scaled);
    }
}

/// One pipeline revision's measurements.
#[derive(Debug)]
pub struct PipelineMeter {
    pub pipeline: String,
    pub revision: u64,
    pub variant: Option<String>,
    requests: AtomicU64,
    errors: Mutex<Counts>,
    latency: AtomicHistogram,
    queue: AtomicHistogram,
    steps: Vec<Arc<StepMeter>>,
    /// The watched model step's value distributions, when the pipeline is monitored.
    pub features: Option<FeatureMeter>,
    /// Everything taken so far.
    totals: Mutex<PipelineStats>,
}

impl PipelineMeter {
    pub fn new(pipeline: &str, revision: u64, steps: Vec<Arc<StepMeter>>) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            revision,
            variant: None,
            requests: AtomicU64::new(0),
            errors: Mutex::default(),
            latency: AtomicHistogram::default(),
            queue: AtomicHistogram::default(),
            steps,
            features: None,
            totals: Mutex::default(),
        }
    }

    /// Watches step `step`'s inputs and outputs for drift, tensors named `tensors` only (any
    /// name when empty).
    pub fn with_features(mut self, step: usize, tensors: Vec<String>) -> Self {
        self.features = Some(FeatureMeter::new(step).known_tensors(tensors));
        self
    }

    /// Records one step run.
    pub fn record_step(&self, index: usize, elapsed: Duration, error: Option<&'static str>) {
        if let Some(step) = self.steps.get(index) {
            step.requests.fetch_add(1, Ordering::Relaxed);
            step.latency.record_duration(elapsed);
            if let Some(kind) = error {
                count_into(&mut lock(&step.errors), kind, 1);
            }
        }
    }

    /// Records one request: its wait for a worker, its time in the pipeline, and its error.
    /// `error` is the failure's kind (`StepError::kind`).
    pub fn record_request(&self, queued: Duration, elapsed: Duration, error: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.queue.record_duration(queued);
        self.latency.record_duration(elapsed);
        if let Some(kind) = error {
            count_into(&mut lock(&self.errors), kind, 1);
        }
    }

    /// Everything since the last take, as a batch entry; the running totals keep it.
    /// `peak_memory` is each step's peak memory since the last take (the pipeline's
    /// `take_peak_memory`).
    pub fn take(&self, peak_memory: &[u64]) -> PipelineStats {
        // Under the totals lock, so `totals()` never sees the counts in neither place.
        let mut totals = lock(&self.totals);
        let stats = self.take_stats(peak_memory);
        totals.merge(&stats);
        stats
    }

    /// Forgets everything since the last take.
    pub fn discard(&self) {
        self.take_stats(&[]);
    }

    fn take_stats(&self, peak_memory: &[u64]) -> PipelineStats {
        let steps: Vec<StepStats> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, meter)| meter.take(peak_memory.get(i).copied().unwrap_or(0)))
            .collect();
        PipelineStats {
            pipeline: self.pipeline.clone(),
            revision: self.revision,
            variant: self.variant.clone(),
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: std::mem::take(&mut *lock(&self.errors)),
            latency_us: self.latency.take(),
            queue_us: self.queue.take(),
            steps,
            features: self
                .features
                .as_ref()
                .map(FeatureMeter::take)
                .unwrap_or_default(),
        }
    }

    /// Requests and failures since load (bad input excluded), without copying histograms.
    pub fn request_counts(&self) -> (u64, u64) {
        let totals = lock(&self.totals);
        let requests = totals
            .requests
            .saturating_add(self.requests.load(Ordering::Relaxed));
        let errors = failures(&totals.errors).saturating_add(failures(&lock(&self.errors)));
        (requests, errors)
    }

    /// Totals since load, including what was recorded since the last take.
    pub fn totals(&self) -> PipelineStats {
        let guard = lock(&self.totals);
        let mut totals = guard.clone();
        let current = PipelineStats {
            requests: self.requests.load(Ordering::Relaxed),
            errors: lock(&self.errors).clone(),
            latency_us: self.latency.peek(),
            queue_us: self.queue.peek(),
            steps: self
                .steps
                .iter()
                .map(|s| StepStats {
                    step: s.step.clone(),
                    requests: s.requests.load(Ordering::Relaxed),
                    errors: lock(&s.errors).clone(),
                    latency_us: s.latency.peek(),
                    ..StepStats::default()
                })
                .collect(),
            ..PipelineStats::default()
        };
        drop(guard);
        totals.merge(&current);
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_resets_and_totals_keep_everything() {
        let meter = PipelineMeter::new(
            "p",
            3,
            vec![Arc::new(StepMeter::new("s", StepKind::Plugin, ""))],
        );
        for ms in [1u64, 2, 3] {
            meter.record_request(Duration::from_micros(5), Duration::from_millis(ms), None);
            meter.record_step(0, Duration::from_millis(ms), None);
        }
        let first = meter.take(&[]);
        assert_eq!(first.requests, 3);
        assert_eq!(first.latency_us.count, 3);
        assert_eq!(first.queue_us.count, 3);
        meter.record_request(Duration::ZERO, Duration::from_millis(9), None);
        let totals = meter.totals();
        assert_eq!(totals.requests, 4, "totals include what was not taken yet");
        let second = meter.take(&[]);
        assert_eq!(second.requests, 1);
        assert_eq!(meter.take(&[]).requests, 0);
        assert_eq!(meter.totals().latency_us.count, 4);
    }

    #[test]
    fn custom_metrics_are_bounded() {
        let step = StepMeter::new("s", StepKind::Plugin, "");
        for i in 0..(MAX_CUSTOM_METRICS + 5) {
            step.counter_add("s", &format!("c{i}"), 2);
            step.observe("s", &format!("o{i}"), 1.5);
        }
        let stats = step.take(0);
        assert_eq!(stats.observations.len(), MAX_CUSTOM_METRICS);
        assert_eq!(stats.observations["o0"].sum, 1500);
        assert!(stats.counters.len() <= MAX_CUSTOM_METRICS + 1);
        assert!(stats.counters[OVERFLOW_METRIC] >= 5);
    }
}
