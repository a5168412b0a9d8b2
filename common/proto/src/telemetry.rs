//! Telemetry batches (design section 8): what an agent measured over one interval, per pipeline
//! revision and step and for its host, numbered so the control plane can deduplicate them.
//!
//! Latencies go into [`Histogram`]s with log-linear buckets: eight per power of two, so a
//! percentile read from a histogram is within 12.5 % of the true value, and two histograms
//! merge by adding counts. Histograms, counters and gauges from untrusted peers are merged
//! with saturating arithmetic and bucket indices out of range are ignored: nothing here can
//! panic on hostile input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::drift::FeatureStats;

/// Buckets per power of two.
pub const SUB_BUCKETS: u32 = 8;
/// Number of buckets: values 0..8 exactly, then eight per power of two up to `u64::MAX`.
pub const BUCKETS: usize = 496;

/// The bucket a value falls in.
pub fn bucket_of(value: u64) -> usize {
    if value < u64::from(SUB_BUCKETS) {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let mantissa = (value >> (exponent - 3)) & 7;
    ((exponent - 2) * SUB_BUCKETS) as usize + mantissa as usize
}

/// The bucket a value is recorded in: bucket `i` holds the values in
/// `(bucket_floor(i), bucket_floor(i + 1)]`, so that the count at or below a bucket boundary is
/// exact (a Prometheus `le` is inclusive) and 0 and 1 share bucket 0.
pub fn bucket_for(value: u64) -> usize {
    bucket_of(value.saturating_sub(1))
}

/// The smallest value in bucket `index`.
pub fn bucket_floor(index: usize) -> u64 {
    if index < SUB_BUCKETS as usize {
        return index as u64;
    }
    let exponent = (index / SUB_BUCKETS as usize) as u32 + 2;
    let mantissa = (index % SUB_BUCKETS as usize) as u64;
    (8 + mantissa) << (exponent - 3)
}

/// The value a bucket stands for in percentiles: its midpoint.
fn bucket_value(index: usize) -> u64 {
    let low = bucket_floor(index);
    let high = if index + 1 < BUCKETS {
        bucket_floor(index + 1)
    } else {
        u64::MAX
    };
    low + (high - low) / 2
}

/// A distribution of non-negative integer values (microseconds, bytes) in log-linear buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Values recorded.
    pub count: u64,
    /// Their sum (saturating).
    pub sum: u64,
    /// (bucket index, count), ascending by index, no zero counts.
    pub buckets: Vec<(u16, u64)>,
}

impl Histogram {
    /// A histogram from dense bucket counts (index = bucket).
    pub fn from_dense(counts: &[u64], sum: u64) -> Self {
        let buckets: Vec<(u16, u64)> = counts
            .iter()
            .enumerate()
            .take(BUCKETS)
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u16, *c))
            .collect();
        Self {
            count: buckets.iter().fold(0u64, |a, (_, c)| a.saturating_add(*c)),
            sum,
            buckets,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        let index = bucket_for(value) as u16;
        self.count = self.count.saturating_add(1);
        self.sum = self.sum.saturating_add(value);
        match self.buckets.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => self.buckets[at].1 = self.buckets[at].1.saturating_add(1),
            Err(at) => self.buckets.insert(at, (index, 1)),
        }
    }

    /// Adds `other`'s values to these. Buckets out of range (a hostile or corrupt record) are
    /// ignored, and the result is in order whatever order the inputs were in.
    pub fn merge(&mut self, other: &Histogram) {
        let mut dense = BTreeMap::<u16, u64>::new();
        let mut added = 0u64;
        let own = std::mem::take(&mut self.buckets);
        self.count = 0;
        for &(index, count) in own.iter().chain(&other.buckets) {
            if usize::from(index) < BUCKETS && count > 0 {
                let slot = dense.entry(index).or_default();
                *slot = slot.saturating_add(count);
                added = added.saturating_add(count);
            }
        }
        self.buckets = dense.into_iter().collect();
        self.count = self.count.saturating_add(added);
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// Sorts and merges the buckets and drops those out of range, as a histogram from an
    /// untrusted peer needs before it is stored; `count` becomes the sum of what is left.
    pub fn normalize(&mut self) {
        let own = std::mem::take(self);
        self.merge(&own);
    }

    /// The value below which a fraction `q` (0..=1) of the values lie, to the bucket's
    /// resolution; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self
            .buckets
            .iter()
            .fold(0u64, |a, (_, c)| a.saturating_add(*c));
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for &(index, count) in &self.buckets {
            seen = seen.saturating_add(count);
            if seen >= rank {
                return bucket_value(usize::from(index).min(BUCKETS - 1));
            }
        }
        self.buckets
            .last()
            .map_or(0, |(i, _)| bucket_value(usize::from(*i).min(BUCKETS - 1)))
    }

    /// Values at or below `bound`, counted by whole buckets (exact when `bound` is a bucket
    /// boundary, as every Prometheus bound is).
    pub fn count_below(&self, bound: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|(i, _)| {
                let next = usize::from(*i) + 1;
                bound == u64::MAX || (next < BUCKETS && bucket_floor(next) <= bound)
            })
            .fold(0u64, |a, (_, c)| a.saturating_add(*c))
    }
}

/// Counts keyed by a name (error kinds, custom counters), merged by adding.
pub type Counts = BTreeMap<String, u64>;

/// The error kind of requests refused for their input: the client's fault.
pub const BAD_INPUT: &str = "bad-input";

/// Errors that count against a pipeline: every kind but [`BAD_INPUT`].
pub fn failures(errors: &Counts) -> u64 {
    errors
        .iter()
        .filter(|(kind, _)| kind.as_str() != BAD_INPUT)
        .fold(0u64, |a, (_, c)| a.saturating_add(*c))
}

/// Adds `other` into `into`.
pub fn merge_counts(into: &mut Counts, other: &Counts) {
    for (name, count) in other {
        let slot = into.entry(name.clone()).or_default();
        *slot = slot.saturating_add(*count);
    }
}

/// One batch: everything an agent measured in `[start_ms, end_ms)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    /// Per-agent sequence number, from 1, increasing by one per batch the agent made (batches
    /// dropped for its disk cap leave gaps).
    pub seq: u64,
    /// Unix milliseconds, by the agent's clock.
    pub start_ms: u64,
    pub end_ms: u64,
    pub host: HostStats,
    pub pipelines: Vec<PipelineStats>,
    /// Batches this agent dropped, oldest first, because its telemetry buffer was full: the
    /// total since it was enrolled.
    pub dropped_batches: u64,
}

/// The host at the end of the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// CPU busy over the interval, percent of all cores (0..=100).
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Free and total bytes of the disk holding the agent's data dir.
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    /// Bytes of verified artifacts and compiled plugins the agent keeps.
    pub cache_bytes: u64,
    /// Bytes of telemetry waiting to be sent.
    pub buffered_bytes: u64,
    pub gpus: Vec<GpuStats>,
}

/// One GPU adapter over the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuStats {
    pub adapter: String,
    /// Time the GPU spent on the agent's work, measured with timestamp queries; `None` when
    /// the adapter cannot time its work.
    pub busy_us: Option<u64>,
}

/// One pipeline revision (and A/B variant) over the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineStats {
    pub pipeline: String,
    pub revision: u64,
    /// The A/B variant that served these requests (the model release), if the deployment has
    /// variants.
    pub variant: Option<String>,
    /// Requests that reached the pipeline.
    pub requests: u64,
    /// Failed requests by kind (`bad-input`, `timeout`, `memory`, `trap`, `model`, ...).
    pub errors: Counts,
    /// End-to-end latency of a request in the pipeline, microseconds.
    pub latency_us: Histogram,
    /// Time a request waited for a worker before it ran, microseconds.
    pub queue_us: Histogram,
    pub steps: Vec<StepStats>,
    /// Per-feature distributions of the model's inputs and outputs, for drift detection.
    pub features: Vec<FeatureStats>,
}

/// What a step is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    #[default]
    Plugin,
    Model,
}

/// One step of a pipeline revision over the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub step: String,
    pub kind: StepKind,
    /// Where a model step runs (`cpu`, or the GPU adapter); empty for plugins.
    pub device: String,
    pub requests: u64,
    pub errors: Counts,
    /// Time in the step, microseconds (for a plugin, its time in the sandbox).
    pub latency_us: Histogram,
    /// Largest linear memory of the plugin's instances, bytes (0 for models).
    pub memory_peak_bytes: u64,
    /// Custom counters from the plugin's `host.counter-add`.
    pub counters: Counts,
    /// Custom observations from the plugin's `host.observe`, scaled by 1000 (milli-units),
    /// negative values clamped to 0.
    pub observations: BTreeMap<String, Histogram>,
}

impl StepStats {
    /// Adds `other` (the same step, another interval or agent) into this one.
    pub fn merge(&mut self, other: &StepStats) {
        self.kind = other.kind;
        if !other.device.is_empty() {
            self.device.clone_from(&other.device);
        }
        self.requests = self.requests.saturating_add(other.requests);
        merge_counts(&mut self.errors, &other.errors);
        self.latency_us.merge(&other.latency_us);
        self.memory_peak_bytes = self.memory_peak_bytes.max(other.memory_peak_bytes);
        merge_counts(&mut self.counters, &other.counters);
        for (name, histogram) in &other.observations {
            self.observations
                .entry(name.clone())
                .or_default()
                .merge(histogram);
        }
    }
}

impl PipelineStats {
    /// Adds `other` into this one: counters and histograms add, steps and features merge by
    /// name. The caller decides that both describe the same pipeline (revision, variant).
    pub fn merge(&mut self, other: &PipelineStats) {
        self.requests = self.requests.saturating_add(other.requests);
        merge_counts(&mut self.errors, &other.errors);
        self.latency_us.merge(&other.latency_us);
        self.queue_us.merge(&other.queue_us);
        for step in &other.steps {
            match self.steps.iter_mut().find(|s| s.step == step.step) {
                Some(mine) => mine.merge(step),
                None => self.steps.push(step.clone()),
            }
        }
        crate::drift::merge_features(&mut self.features, &other.features);
    }

    /// Whether `other` is the same pipeline, revision and variant.
    pub fn same_series(&self, other: &PipelineStats) -> bool {
        self.pipeline == other.pipeline
            && self.revision == other.revision
            && self.variant == other.variant
    }
}

/// Merges `stats` into the entry of `list` for the same series, or appends it.
pub fn merge_into(list: &mut Vec<PipelineStats>, stats: &PipelineStats) {
    match list.iter_mut().find(|p| p.same_series(stats)) {
        Some(mine) => mine.merge(stats),
        None => list.push(stats.clone()),
    }
}

impl TelemetryBatch {
    /// Data points in the batch, counted as an OpenTelemetry collector would: one per counter,
    /// gauge or histogram.
    pub fn points(&self) -> u64 {
        let host = 7 + self.host.gpus.len() as u64;
        let pipelines: u64 = self
            .pipelines
            .iter()
            .map(|p| {
                let steps: u64 = p
                    .steps
                    .iter()
                    .map(|s| {
                        4 + s.errors.len() as u64
                            + s.counters.len() as u64
                            + s.observations.len() as u64
                    })
                    .sum();
                3 + p.errors.len() as u64 + steps + p.features.len() as u64
            })
            .sum();
        host + pipelines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        for index in 0..BUCKETS - 1 {
            let floor = bucket_floor(index);
            assert!(bucket_floor(index + 1) > floor, "bucket {index}");
            assert_eq!(bucket_of(floor), index);
            assert_eq!(bucket_of(bucket_floor(index + 1) - 1), index);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for v in 0..16 {
            assert_eq!(bucket_floor(bucket_of(v)), v, "small values are exact");
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_resolution() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 5_000.0), (0.95, 9_500.0), (0.99, 9_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - exact).abs() / exact < 0.07, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.count, 10_000);
        assert_eq!(h.sum, 10_000 * 10_001 / 2);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for v in [3u64, 70, 70, 9_000, 1 << 40] {
            a.record(v);
            all.record(v);
        }
        for v in [70u64, 12, 5_000_000] {
            b.record(v);
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let dense: Vec<u64> = (0..BUCKETS)
            .map(|i| {
                all.buckets
                    .iter()
                    .find(|(j, _)| usize::from(*j) == i)
                    .map_or(0, |(_, c)| *c)
            })
            .collect();
        assert_eq!(Histogram::from_dense(&dense, all.sum), all);
    }

    #[test]
    fn hostile_buckets_are_ignored() {
        let mut h = Histogram::default();
        h.record(5);
        let hostile = Histogram {
            count: u64::MAX,
            sum: u64::MAX,
            buckets: vec![(9_999, 4), (7, u64::MAX), (3, 1)],
        };
        h.merge(&hostile);
        assert_eq!(h.count, u64::MAX);
        assert_eq!(h.sum, u64::MAX);
        assert!(h.buckets.iter().all(|(i, _)| usize::from(*i) < BUCKETS));
        assert!(h.quantile(0.99) > 0);
        let mut unsorted = Histogram {
            count: 99,
            sum: 10,
            buckets: vec![(9, 1), (3, 2), (9, 4), (60_000, 1)],
        };
        unsorted.normalize();
        assert_eq!(unsorted.buckets, [(3, 2), (9, 5)]);
        assert_eq!((unsorted.count, unsorted.sum), (7, 10));
    }

    #[test]
    fn bad_input_is_not_a_failure() {
        let errors: Counts = [(BAD_INPUT.to_owned(), 5), ("trap".to_owned(), 2)].into();
        assert_eq!(failures(&errors), 2);
    }

    #[test]
    fn count_below_counts_whole_buckets() {
        let mut h = Histogram::default();
        for v in [100u64, 200, 1_000, 1_000_000] {
            h.record(v);
        }
        assert_eq!(h.count_below(1 << 10), 3);
        assert_eq!(h.count_below(1 << 7), 1);
        assert_eq!(h.count_below(u64::MAX), 4);
        // A value on a bound counts at that bound (`le` is inclusive), not above it.
        h.record(1 << 7);
        assert_eq!(h.count_below(1 << 7), 2);
        assert_eq!(h.count_below((1 << 7) - 1), 1);
    }
}
