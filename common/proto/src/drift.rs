//! Drift of a model's data (design section 8): per-feature distributions of the values a model
//! sees and produces, a baseline they are compared with, and the population stability index.
//!
//! Agents record each feature into a [`FeatureStats`] with fixed buckets that need no
//! configuration: the top 16 bits of the value's order-preserving float encoding (sign,
//! exponent, 7 mantissa bits), so a bucket spans under 0.8 % of its value and every agent's
//! buckets line up. The control plane re-bins them against a [`Baseline`]'s edges to compute
//! PSI, and builds baselines from them (`ternctl baseline create --window`).
//!
//! Features are named `input:TENSOR[i]` / `output:TENSOR[i]`: index `i` along axis 1 (the
//! column of a `[batch, features]` tensor, the channel of an image), or `input:TENSOR` for a
//! tensor of rank 0 or 1. At most [`MAX_FEATURES_PER_TENSOR`] per tensor.

use serde::{Deserialize, Serialize};

/// Columns (or channels) watched per tensor; the rest are not monitored.
pub const MAX_FEATURES_PER_TENSOR: usize = 32;
/// Tensors watched per side (inputs, outputs).
pub const MAX_TENSORS: usize = 8;
/// Values recorded per feature and request; a larger tensor is sampled at an even stride.
pub const SAMPLES_PER_REQUEST: usize = 256;
/// Most features a baseline may hold.
pub const MAX_BASELINE_FEATURES: usize = 512;
/// Most bins per feature in a baseline.
pub const MAX_BINS: usize = 100;
/// Fewer values than this in a window say nothing about drift: no PSI is computed. Without
/// any shift, PSI over `B` bins from `N` values is about `(B − 1) / N` with a spread of
/// `√(2(B − 1)) / N`: at 400 values and 10 bins, 0.02 ± 0.01, far below the usual 0.2.
pub const MIN_SAMPLES: u64 = 400;
/// Fractions are floored at this before the logarithm, so an empty bin is a large but finite
/// contribution.
const EPSILON: f64 = 1e-4;

/// The bucket of `value`, or `None` for NaN.
#[inline]
pub fn value_bucket(value: f32) -> Option<u16> {
    if value.is_nan() {
        return None;
    }
    let bits = value.to_bits();
    let ordered = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    Some((ordered >> 16) as u16)
}

/// The smallest value in bucket `bucket`.
pub fn bucket_low(bucket: u16) -> f32 {
    let ordered = u32::from(bucket) << 16;
    if ordered & 0x8000_0000 != 0 {
        f32::from_bits(ordered & 0x7fff_ffff)
    } else {
        // Negative: the smallest value has the largest magnitude in the bucket.
        f32::from_bits(!ordered)
    }
}

/// The value a bucket stands for when it is binned: the bound closer to zero (the lower one
/// for positive values, the upper one for negative values), so that 0 stays at 0.
fn bucket_value(bucket: u16) -> f32 {
    let ordered = u32::from(bucket) << 16;
    if ordered & 0x8000_0000 != 0 {
        f32::from_bits(ordered & 0x7fff_ffff)
    } else {
        f32::from_bits(!(ordered | 0xffff))
    }
}

/// The distribution of one feature (an input or output value of a model) over an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    /// `input:NAME[i]`, `output:NAME[i]`, or without `[i]` for a whole tensor.
    pub feature: String,
    /// Values recorded (NaN excluded).
    pub count: u64,
    pub sum: f64,
    /// (bucket, count), ascending by bucket, no zero counts.
    pub buckets: Vec<(u16, u64)>,
}

impl FeatureStats {
    pub fn new(feature: impl Into<String>) -> Self {
        Self {
            feature: feature.into(),
            ..Self::default()
        }
    }

    /// Sorts buckets, merges duplicates, drops zero counts and recounts: what a hostile peer
    /// sent becomes a valid histogram.
    pub fn normalize(&mut self) {
        self.buckets.sort_unstable_by_key(|(b, _)| *b);
        let mut merged: Vec<(u16, u64)> = Vec::with_capacity(self.buckets.len());
        for &(bucket, count) in &self.buckets {
            match merged.last_mut() {
                Some((last, total)) if *last == bucket => *total = total.saturating_add(count),
                _ if count > 0 => merged.push((bucket, count)),
                _ => {}
            }
        }
        self.buckets = merged;
        self.count = self
            .buckets
            .iter()
            .fold(0u64, |a, (_, c)| a.saturating_add(*c));
        if !self.sum.is_finite() {
            self.sum = 0.0;
        }
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &FeatureStats) {
        let mut merged = Vec::with_capacity(self.buckets.len().max(other.buckets.len()));
        let (mut a, mut b) = (
            self.buckets.iter().peekable(),
            other.buckets.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(i, x)), Some(&&(j, y))) if i == j => {
                    merged.push((i, x.saturating_add(y)));
                    a.next();
                    b.next();
                }
                (Some(&&(i, x)), Some(&&(j, _))) if i < j => {
                    merged.push((i, x));
                    a.next();
                }
                (_, Some(&&(j, y))) => {
                    merged.push((j, y));
                    b.next();
                }
                (Some(&&(i, x)), None) => {
                    merged.push((i, x));
                    a.next();
                }
                (None, None) => break,
            }
        }
        self.buckets = merged;
        self.count = self.count.saturating_add(other.count);
        if other.sum.is_finite() {
            self.sum += other.sum;
        }
    }

    /// Halves the resolution `bits` times (merging neighbouring buckets into the middle one of
    /// their group, so values move by half a coarse bucket at most), to shrink a batch.
    pub fn coarsen(&mut self, bits: u32) {
        let bits = bits.clamp(1, 15);
        for (bucket, _) in &mut self.buckets {
            *bucket = ((*bucket >> bits) << bits) | (1 << (bits - 1));
        }
        let sum = self.sum;
        self.normalize();
        self.sum = sum;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The value below which a fraction `q` of the values lie (bucket resolution).
    pub fn quantile(&self, q: f64) -> Option<f32> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for &(bucket, count) in &self.buckets {
            seen = seen.saturating_add(count);
            if seen >= rank {
                return Some(bucket_value(bucket));
            }
        }
        self.buckets.last().map(|(b, _)| bucket_value(*b))
    }

    /// Counts per bin of `edges` (bin 0 below the first edge, the last at or above the last).
    pub fn binned(&self, edges: &[f32]) -> Vec<u64> {
        let mut bins = vec![0u64; edges.len() + 1];
        for &(bucket, count) in &self.buckets {
            let value = bucket_value(bucket);
            let bin = edges.partition_point(|e| *e <= value);
            bins[bin] = bins[bin].saturating_add(count);
        }
        bins
    }
}

/// Merges `from` into `into` feature by feature (by name), appending features `into` lacks.
pub fn merge_features(into: &mut Vec<FeatureStats>, from: &[FeatureStats]) {
    for feature in from {
        match into.iter_mut().find(|f| f.feature == feature.feature) {
            Some(mine) => mine.merge(feature),
            None => into.push(feature.clone()),
        }
    }
}

/// A feature's expected distribution: bin edges and the fraction of values in each bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BaselineFeature {
    /// `input:TENSOR[i]`, `output:TENSOR[i]` (or without `[i]` for a rank 0 or 1 tensor).
    pub feature: String,
    /// Inner edges, ascending: bin 0 takes values below `edges[0]`, bin `i` values in
    /// `[edges[i-1], edges[i])`, the last bin values at or above the last edge.
    pub edges: Vec<f32>,
    /// One per bin (`edges.len() + 1`), summing to 1.
    pub fractions: Vec<f64>,
}

/// What a model's data should look like: the reference drift is measured against. JSON, as
/// `ternctl baseline create` writes it and a Pipeline's `monitoring.baseline` reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Baseline {
    /// Each watched feature's expected distribution.
    pub features: Vec<BaselineFeature>,
}

/// A baseline that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaselineError {
    #[error("the baseline has no features")]
    Empty,
    #[error("the baseline has {0} features; at most {MAX_BASELINE_FEATURES}")]
    TooManyFeatures(usize),
    #[error("feature `{feature}`: {reason}")]
    Feature { feature: String, reason: String },
    #[error("not enough data: {0}")]
    NoData(String),
}

impl Baseline {
    /// Checks edges and fractions.
    pub fn validate(&self) -> Result<(), BaselineError> {
        if self.features.is_empty() {
            return Err(BaselineError::Empty);
        }
        if self.features.len() > MAX_BASELINE_FEATURES {
            return Err(BaselineError::TooManyFeatures(self.features.len()));
        }
        for (i, f) in self.features.iter().enumerate() {
            let bad = |reason: &str| BaselineError::Feature {
                feature: f.feature.clone(),
                reason: reason.to_owned(),
            };
            if f.feature.is_empty() || f.feature.len() > 200 {
                return Err(bad("expected a name of 1 to 200 characters"));
            }
            if self.features[..i].iter().any(|g| g.feature == f.feature) {
                return Err(bad("appears twice"));
            }
            if f.edges.len() >= MAX_BINS {
                return Err(bad("too many bins"));
            }
            if f.edges.iter().any(|e| !e.is_finite()) || f.edges.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad("expected finite edges in ascending order"));
            }
            if f.fractions.len() != f.edges.len() + 1 {
                return Err(bad("expected one fraction per bin (one more than edges)"));
            }
            if f.fractions.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(bad("expected fractions between 0 and 1"));
            }
            let sum: f64 = f.fractions.iter().sum();
            if (sum - 1.0).abs() > 1e-3 {
                return Err(bad(&format!("fractions sum to {sum}, expected 1")));
            }
        }
        Ok(())
    }

    pub fn feature(&self, name: &str) -> Option<&BaselineFeature> {
        self.features.iter().find(|f| f.feature == name)
    }

    /// A baseline from observed distributions: `bins` bins per feature at its quantiles.
    /// Features with fewer than [`MIN_SAMPLES`] values are left out.
    pub fn from_stats(stats: &[FeatureStats], bins: usize) -> Result<Self, BaselineError> {
        let bins = bins.clamp(2, MAX_BINS);
        let mut features = Vec::new();
        for s in stats.iter().filter(|s| s.count >= MIN_SAMPLES) {
            let mut edges: Vec<f32> = (1..bins)
                .filter_map(|i| s.quantile(i as f64 / bins as f64))
                .collect();
            // A quantile that is its bucket's value belongs to the bin above it.
            edges.dedup();
            edges.retain(|e| e.is_finite());
            let counts = s.binned(&edges);
            let total = counts.iter().sum::<u64>().max(1) as f64;
            features.push(BaselineFeature {
                feature: s.feature.clone(),
                fractions: counts.iter().map(|c| *c as f64 / total).collect(),
                edges,
            });
        }
        if features.is_empty() {
            return Err(BaselineError::NoData(format!(
                "no feature has {MIN_SAMPLES} values or more"
            )));
        }
        features.sort_by(|a, b| a.feature.cmp(&b.feature));
        let baseline = Self { features };
        baseline.validate()?;
        Ok(baseline)
    }

    /// A baseline from sample values per feature (`ternctl baseline create --from-file`).
    pub fn from_samples(
        samples: impl IntoIterator<Item = (String, Vec<f32>)>,
        bins: usize,
    ) -> Result<Self, BaselineError> {
        let stats: Vec<FeatureStats> = samples
            .into_iter()
            .map(|(feature, values)| {
                let mut recorder = FeatureRecorder::default();
                values.iter().for_each(|v| recorder.record(*v));
                recorder.take(&feature)
            })
            .collect();
        Self::from_stats(&stats, bins)
    }
}

/// The population stability index of `observed` against `expected`:
/// `Σ (a − e) · ln(a / e)` over the baseline's bins, fractions floored at 1e-4. `None` when
/// fewer than [`MIN_SAMPLES`] values were observed. Above 0.2 is usually read as a shift.
pub fn psi(expected: &BaselineFeature, observed: &FeatureStats) -> Option<f64> {
    if observed.count < MIN_SAMPLES {
        return None;
    }
    let bins = observed.binned(&expected.edges);
    let total = bins.iter().sum::<u64>().max(1) as f64;
    Some(
        bins.iter()
            .zip(&expected.fractions)
            .map(|(count, e)| {
                let a = (*count as f64 / total).max(EPSILON);
                let e = e.max(EPSILON);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

/// Chunks of 256 buckets (two octaves of one sign) a recorder allocates at most: 64 KiB, and
/// values across 64 octaves. Values in further ranges are not recorded.
pub const MAX_CHUNKS: usize = 32;

/// Counts one feature's values between takes (an agent keeps one per watched feature): dense
/// counters in 256-bucket chunks, allocated for the value ranges the feature visits, so a
/// value costs an index and an add.
#[derive(Debug, Clone, Default)]
pub struct FeatureRecorder {
    chunks: Vec<Option<Box<[u64; 256]>>>,
    allocated: usize,
    count: u64,
    sum: f64,
}

impl FeatureRecorder {
    #[inline]
    pub fn record(&mut self, value: f32) {
        let Some(bucket) = value_bucket(value) else {
            return;
        };
        if self.chunks.is_empty() {
            self.chunks.resize(256, None);
        }
        let slot = &mut self.chunks[usize::from(bucket >> 8)];
        if slot.is_none() {
            if self.allocated >= MAX_CHUNKS {
                return;
            }
            self.allocated += 1;
        }
        let chunk = slot.get_or_insert_with(|| Box::new([0; 256]));
        chunk[usize::from(bucket & 0xff)] += 1;
        self.count += 1;
        if value.is_finite() {
            self.sum += f64::from(value);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// What was recorded since the last take, as `feature`; the recorder starts again (keeping
    /// its chunks).
    pub fn take(&mut self, feature: &str) -> FeatureStats {
        let mut buckets = Vec::new();
        for (high, chunk) in self.chunks.iter_mut().enumerate() {
            let Some(chunk) = chunk else { continue };
            for (low, count) in chunk.iter_mut().enumerate() {
                if *count > 0 {
                    buckets.push((((high << 8) | low) as u16, std::mem::take(count)));
                }
            }
        }
        let stats = FeatureStats {
            feature: feature.to_owned(),
            count: std::mem::take(&mut self.count),
            sum: std::mem::take(&mut self.sum),
            buckets,
        };
        debug_assert_eq!(
            stats.count,
            stats.buckets.iter().map(|(_, c)| c).sum::<u64>()
        );
        stats
    }
}

/// The features of a tensor named `tensor` with `shape` (see the module docs), each with the
/// element indices it takes, sampled to at most [`SAMPLES_PER_REQUEST`] per feature.
pub fn tensor_features(side: &str, tensor: &str, shape: &[u64]) -> Vec<(String, Vec<usize>)> {
    let Some(total) = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(usize::try_from(*d).ok()?))
    else {
        return Vec::new();
    };
    // Every `step`-th of `n` elements, so at most SAMPLES_PER_REQUEST.
    let stride = |n: usize| n.div_ceil(SAMPLES_PER_REQUEST).max(1);
    if shape.len() < 2 {
        let indices = (0..total).step_by(stride(total)).collect();
        return vec![(format!("{side}:{tensor}"), indices)];
    }
    let (rows, columns) = (shape[0] as usize, shape[1] as usize);
    if rows == 0 || columns == 0 {
        return Vec::new();
    }
    // Row-major: element (r, c, k) of a [rows, columns, inner] view is r·columns·inner + c·inner + k.
    let inner = total / rows / columns;
    let per_column = rows * inner;
    (0..columns.min(MAX_FEATURES_PER_TENSOR))
        .map(|c| {
            let indices = (0..per_column)
                .step_by(stride(per_column))
                .map(|j| (j / inner) * columns * inner + c * inner + j % inner)
                .collect();
            (format!("{side}:{tensor}[{c}]"), indices)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_preserve_order_and_are_narrow() {
        let values = [
            f32::NEG_INFINITY,
            -1e30,
            -3.5,
            -1.0,
            -1e-20,
            0.0,
            1e-20,
            0.3,
            1.0,
            1.004,
            2.0,
            1e30,
            f32::INFINITY,
        ];
        for w in values.windows(2) {
            let (a, b) = (value_bucket(w[0]).unwrap(), value_bucket(w[1]).unwrap());
            assert!(a <= b, "{} then {}", w[0], w[1]);
        }
        for v in [0.3f32, 1.0, 7.25, -2.5, 1000.0] {
            let b = value_bucket(v).unwrap();
            let low = bucket_low(b);
            assert!(value_bucket(low) == Some(b), "{v}: low {low}");
            assert!((low - v).abs() <= v.abs() / 128.0, "{v}: low {low}");
        }
        assert_eq!(value_bucket(f32::NAN), None);
        for v in [-2.5f32, -0.3, -1000.0] {
            let b = value_bucket(v).unwrap();
            assert!(
                bucket_low(b) <= v && v <= bucket_value(b),
                "{v}: {} {}",
                bucket_low(b),
                bucket_value(b)
            );
        }
        let mut wide = FeatureRecorder::default();
        for e in -60..60 {
            wide.record(2f32.powi(e));
            wide.record(-(2f32.powi(e)));
        }
        let taken = wide.take("f");
        // Two octaves per chunk: about 64 of the 240 values, the ranges first seen.
        assert!((60..=64).contains(&taken.count), "{}", taken.count);
        assert_eq!(bucket_value(value_bucket(0.0).unwrap()), 0.0);
    }

    fn normal(n: usize, mean: f32, seed: u64) -> Vec<f32> {
        // Box-Muller over SplitMix64: deterministic, no dependency.
        let mut state = seed;
        let mut uniform = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                mean + ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
            })
            .collect()
    }

    fn stats(values: &[f32]) -> FeatureStats {
        let mut r = FeatureRecorder::default();
        values.iter().for_each(|v| r.record(*v));
        r.take("input:x[0]")
    }

    #[test]
    fn psi_is_small_for_the_same_distribution_and_large_for_a_shift() {
        let baseline =
            Baseline::from_samples([("input:x[0]".to_owned(), normal(5_000, 0.0, 1))], 10).unwrap();
        let feature = &baseline.features[0];
        assert_eq!(feature.edges.len(), 9);
        assert!(feature.fractions.iter().all(|f| (f - 0.1).abs() < 0.02));
        let same = psi(feature, &stats(&normal(2_000, 0.0, 2))).unwrap();
        let shifted = psi(feature, &stats(&normal(2_000, 1.0, 3))).unwrap();
        assert!(same < 0.05, "same distribution: {same}");
        assert!(shifted > 0.5, "shifted by one sigma: {shifted}");
        assert_eq!(psi(feature, &stats(&normal(300, 0.0, 4))), None, "too few");
    }

    #[test]
    fn merged_stats_equal_recording_everything_in_one() {
        let (a, b) = (normal(300, 0.0, 5), normal(300, 2.0, 6));
        let mut merged = stats(&a);
        merged.merge(&stats(&b));
        let all: Vec<f32> = a.iter().chain(&b).copied().collect();
        let one = stats(&all);
        assert_eq!(merged.buckets, one.buckets);
        let mut coarse = merged.clone();
        coarse.coarsen(4);
        assert!(coarse.buckets.len() < merged.buckets.len());
        assert_eq!(coarse.count, 600);
        assert_eq!(merged.count, 600);
        assert!((merged.sum - one.sum).abs() < 1e-3);
        let q = merged.quantile(0.5).unwrap();
        assert!((0.5..1.5).contains(&q), "median {q}");
    }

    #[test]
    fn hostile_stats_are_normalised_and_bad_baselines_refused() {
        let mut hostile = FeatureStats {
            feature: "f".into(),
            count: 7,
            sum: f64::NAN,
            buckets: vec![(9, 1), (3, 0), (9, u64::MAX), (1, 2)],
        };
        hostile.normalize();
        assert_eq!(hostile.buckets, [(1, 2), (9, u64::MAX)]);
        assert_eq!((hostile.count, hostile.sum), (u64::MAX, 0.0));
        let bad = Baseline {
            features: vec![BaselineFeature {
                feature: "f".into(),
                edges: vec![1.0, 0.5],
                fractions: vec![0.3, 0.3, 0.4],
            }],
        };
        assert!(matches!(bad.validate(), Err(BaselineError::Feature { .. })));
        assert_eq!(Baseline::default().validate(), Err(BaselineError::Empty));
    }

    #[test]
    fn tensors_split_into_columns_or_channels() {
        let table = tensor_features("input", "x", &[4, 3]);
        assert_eq!(table.len(), 3);
        assert_eq!(table[1], ("input:x[1]".to_owned(), vec![1, 4, 7, 10]));
        let image = tensor_features("input", "img", &[1, 3, 2, 2]);
        assert_eq!(image[2].1, vec![8, 9, 10, 11]);
        let flat = tensor_features("output", "y", &[5]);
        assert_eq!(flat, vec![("output:y".to_owned(), vec![0, 1, 2, 3, 4])]);
        let big = tensor_features("input", "img", &[1, 3, 224, 224]);
        assert!(big.iter().all(|(_, i)| i.len() <= SAMPLES_PER_REQUEST));
        assert_eq!(tensor_features("input", "x", &[u64::MAX, 4]), vec![]);
        assert_eq!(tensor_features("input", "x", &[2, 100]).len(), 32);
    }
}
