//! Drift monitoring on the agent: the distributions of one model step's input and output
//! values, per feature (see `tern_proto::drift`), taken with the rest of the revision's
//! measurements once per telemetry interval.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tern_plugin_host::{Dtype, Tensor};
use tern_proto::drift::{FeatureRecorder, FeatureStats, MAX_TENSORS, tensor_features};

/// Distinct features kept per interval: inputs and outputs, [`MAX_TENSORS`] tensors of up to
/// 32 columns each. Requests naming other tensors after that are not recorded.
pub const MAX_FEATURES: usize = 2 * MAX_TENSORS * tern_proto::drift::MAX_FEATURES_PER_TENSOR;

/// The watched step's distributions since the last take.
#[derive(Debug)]
pub struct FeatureMeter {
    /// Index of the watched (model) step in the pipeline.
    pub step: usize,
    recorders: Mutex<BTreeMap<String, FeatureRecorder>>,
}

/// Element `index` of `tensor` as f32, if its type is numeric.
fn element(tensor: &Tensor, index: usize) -> Option<f32> {
    let bytes = |n: usize| tensor.data.get(index * n..index * n + n);
    Some(match tensor.dtype {
        Dtype::Fp32 => f32::from_le_bytes(bytes(4)?.try_into().ok()?),
        Dtype::Fp16 => half::f16::from_le_bytes(bytes(2)?.try_into().ok()?).to_f32(),
        Dtype::Int64 => i64::from_le_bytes(bytes(8)?.try_into().ok()?) as f32,
        Dtype::Int32 => i32::from_le_bytes(bytes(4)?.try_into().ok()?) as f32,
        Dtype::Uint8 | Dtype::Boolean => f32::from(*bytes(1)?.first()?),
    })
}

impl FeatureMeter {
    pub fn new(step: usize) -> Self {
        Self {
            step,
            recorders: Mutex::default(),
        }
    }

    /// Records the values of `tensors` (`side` is `input` or `output`).
    pub fn record(&self, side: &str, tensors: &[Tensor]) {
        let mut recorders = self.recorders.lock().unwrap_or_else(|p| p.into_inner());
        for tensor in tensors.iter().take(MAX_TENSORS) {
            for (feature, indices) in tensor_features(side, &tensor.name, &tensor.shape) {
                if !recorders.contains_key(&feature) && recorders.len() >= MAX_FEATURES {
                    continue;
                }
                let recorder = recorders.entry(feature).or_default();
                for index in indices {
                    // A tensor shorter than its shape says is the model's to refuse.
                    let Some(value) = element(tensor, index) else {
                        break;
                    };
                    recorder.record(value);
                }
            }
        }
    }

    /// Everything since the last take; the meter starts again.
    pub fn take(&self) -> Vec<FeatureStats> {
        let mut recorders = self.recorders.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *recorders)
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(feature, mut r)| r.take(&feature))
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
        let stats = meter.take();
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].feature, "input:x[0]");
        assert_eq!((stats[0].count, stats[0].sum), (3, 6.0));
        assert_eq!((stats[1].count, stats[1].sum), (3, 60.0));
        assert!(meter.take().is_empty());
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
