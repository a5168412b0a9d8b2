//! Drift monitoring on the agent: the distributions of one model step's input and output
//! values, per feature (see `tern_proto::drift`), taken with the rest of the revision's
//! measurements once per telemetry interval.
//!
//! A request pays for an index and an add per sampled value: which elements make which
//! feature is worked out once per tensor name and shape and cached.

use std::sync::Mutex;

use tern_plugin_host::{Dtype, Tensor};
use tern_proto::drift::{FeatureRecorder, FeatureStats, MAX_TENSORS, tensor_features};

/// Distinct features kept: inputs and outputs, [`MAX_TENSORS`] tensors of up to 32 columns
/// each. Tensors naming features beyond that are not recorded.
pub const MAX_FEATURES: usize = 2 * MAX_TENSORS * tern_proto::drift::MAX_FEATURES_PER_TENSOR;
/// Tensor layouts (side, name, shape) remembered; past this the cache starts again.
const MAX_LAYOUTS: usize = 32;

/// Which recorder each sampled element of one tensor layout goes to.
#[derive(Debug)]
struct Layout {
    side: &'static str,
    tensor: String,
    shape: Vec<u64>,
    /// (recorder index, element indices).
    features: Vec<(usize, Vec<usize>)>,
}

#[derive(Debug, Default)]
struct Recorders {
    layouts: Vec<Layout>,
    names: Vec<String>,
    recorders: Vec<FeatureRecorder>,
}

impl Recorders {
    /// The layout of `tensor`, worked out on first sight.
    fn layout(&mut self, side: &'static str, tensor: &Tensor) -> usize {
        if let Some(i) = self
            .layouts
            .iter()
            .position(|l| l.side == side && l.tensor == tensor.name && l.shape == tensor.shape)
        {
            return i;
        }
        if self.layouts.len() >= MAX_LAYOUTS {
            self.layouts.clear();
        }
        let mut features = Vec::new();
        for (name, indices) in tensor_features(side, &tensor.name, &tensor.shape) {
            let index = match self.names.iter().position(|n| *n == name) {
                Some(i) => i,
                None if self.names.len() < MAX_FEATURES => {
                    self.names.push(name);
                    self.recorders.push(FeatureRecorder::default());
                    self.names.len() - 1
                }
                None => continue,
            };
            features.push((index, indices));
        }
        self.layouts.push(Layout {
            side,
            tensor: tensor.name.clone(),
            shape: tensor.shape.clone(),
            features,
        });
        self.layouts.len() - 1
    }
}

/// The watched step's distributions since the last take.
#[derive(Debug)]
pub struct FeatureMeter {
    /// Index of the watched (model) step in the pipeline.
    pub step: usize,
    /// The model's declared input and output names: tensors named otherwise (a client's
    /// request the model will refuse) are not recorded. Empty: any name.
    known: Vec<String>,
    recorders: Mutex<Recorders>,
}

/// Records elements `indices` of `data` (elements of `N` bytes, converted by `convert`),
/// stopping at the first one past the end: a tensor shorter than its shape says is the
/// model's to refuse.
fn record_elements<const N: usize>(
    data: &[u8],
    indices: &[usize],
    recorder: &mut FeatureRecorder,
    convert: impl Fn([u8; N]) -> f32,
) {
    for &index in indices {
        let Some(bytes) = data.get(index * N..index * N + N) else {
            break;
        };
        let mut element = [0u8; N];
        element.copy_from_slice(bytes);
        recorder.record(convert(element));
    }
}

/// Records `tensor`'s elements `indices` into `recorder`, whatever its element type.
fn record_tensor(tensor: &Tensor, indices: &[usize], recorder: &mut FeatureRecorder) {
    let data = &tensor.data;
    match tensor.dtype {
        Dtype::Fp32 => record_elements(data, indices, recorder, f32::from_le_bytes),
        Dtype::Fp16 => record_elements(data, indices, recorder, |b| {
            half::f16::from_le_bytes(b).to_f32()
        }),
        Dtype::Int64 => record_elements(data, indices, recorder, |b: [u8; 8]| {
            i64::from_le_bytes(b) as f32
        }),
        Dtype::Int32 => record_elements(data, indices, recorder, |b: [u8; 4]| {
            i32::from_le_bytes(b) as f32
        }),
        Dtype::Uint8 | Dtype::Boolean => {
            record_elements(data, indices, recorder, |b: [u8; 1]| f32::from(b[0]))
        }
    }
}

impl FeatureMeter {
    pub fn new(step: usize) -> Self {
        Self {
            step,
            known: Vec::new(),
            recorders: Mutex::default(),
        }
    }

    /// Records only tensors with these names (the model's inputs and outputs).
    pub fn known_tensors(mut self, names: Vec<String>) -> Self {
        self.known = names;
        self
    }

    /// Records the values of `tensors` (`side` is `input` or `output`).
    pub fn record(&self, side: &'static str, tensors: &[Tensor]) {
        let mut guard = self.recorders.lock().unwrap_or_else(|p| p.into_inner());
        let all = &mut *guard;
        let known = |t: &&Tensor| self.known.is_empty() || self.known.contains(&t.name);
        for tensor in tensors.iter().filter(known).take(MAX_TENSORS) {
            let layout = all.layout(side, tensor);
            for (recorder, indices) in &all.layouts[layout].features {
                record_tensor(tensor, indices, &mut all.recorders[*recorder]);
            }
        }
    }

    /// Everything since the last take; the meter starts again from nothing, so features that
    /// stopped appearing free their place.
    pub fn take(&self) -> Vec<FeatureStats> {
        let all = std::mem::take(&mut *self.recorders.lock().unwrap_or_else(|p| p.into_inner()));
        all.names
            .iter()
            .zip(all.recorders)
            .filter(|(_, r)| !r.is_empty())
            .map(|(name, mut r)| r.take(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(values: &[f32], columns: u64) -> Tensor {
        Tensor {
            name: "x".into(),
            dtype: Dtype::Fp32,
            shape: vec![values.len() as u64 / columns, columns],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    #[test]
    fn records_each_column_and_resets_on_take() {
        let meter = FeatureMeter::new(0);
        meter.record("input", &[table(&[1.0, 10.0, 2.0, 20.0, 3.0, 30.0], 2)]);
        // Another batch size: another layout, the same features.
        meter.record("input", &[table(&[4.0, 40.0], 2)]);
        let stats = meter.take();
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].feature, "input:x[0]");
        assert_eq!((stats[0].count, stats[0].sum), (4, 10.0));
        assert_eq!((stats[1].count, stats[1].sum), (4, 100.0));
        assert!(meter.take().is_empty());
    }

    #[test]
    fn tensors_the_model_does_not_declare_are_not_recorded() {
        let meter = FeatureMeter::new(0).known_tensors(vec!["x".into()]);
        let mut stranger = table(&[1.0, 2.0], 2);
        stranger.name = "y".into();
        meter.record("input", &[stranger, table(&[1.0, 2.0], 2)]);
        let stats = meter.take();
        assert!(
            stats.iter().all(|s| s.feature.starts_with("input:x[")),
            "{stats:?}"
        );
        assert_eq!(stats.len(), 2);
    }

    #[test]
    fn short_tensors_and_many_names_are_bounded() {
        let meter = FeatureMeter::new(0);
        let mut short = table(&[1.0, 2.0, 3.0, 4.0], 2);
        short.data.truncate(6);
        meter.record("input", &[short]);
        // Six bytes hold element 0 and half of element 1: one value is read.
        assert_eq!(meter.take().iter().map(|s| s.count).sum::<u64>(), 1);
        for i in 0..(MAX_FEATURES + 50) {
            let mut t = table(&[1.0], 1);
            t.name = format!("t{i}");
            meter.record("input", &[t]);
        }
        assert_eq!(meter.take().len(), MAX_FEATURES);
    }
}
