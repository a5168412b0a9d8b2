//! `topk`: logits → softmax → the `k` most likely classes, with labels, as JSON.
//!
//! Config: `{"k": 5, "labels": ["cat", "dog", ...], "tensor": "output"}` (all optional; the
//! first tensor is used when `tensor` is absent). Input: an `fp32` tensor `[N, C]` or `[C]`.
//! Output: an `application/json` blob
//! `{"predictions": [[{"index": 3, "label": "cat", "score": 0.91}, ...], ...]}`, one list per row.

use serde::{Deserialize, Serialize};
use tern_plugin_sdk::{Blob, Payload, Step, StepError, export_step, parse_config};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopK {
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    tensor: Option<String>,
}

fn default_k() -> usize {
    5
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub score: f32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub predictions: Vec<Vec<Prediction>>,
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

impl Step for TopK {
    fn configure(config: &str) -> Result<Self, StepError> {
        let step: TopK = parse_config(config)?;
        if step.k == 0 {
            return Err(StepError::invalid_config("k must be at least 1"));
        }
        Ok(step)
    }

    fn process(&mut self, input: Payload) -> Result<Payload, StepError> {
        let tensors = input.into_tensors()?;
        let tensor = match &self.tensor {
            Some(name) => tensors
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| StepError::invalid_input(format!("no tensor named `{name}`")))?,
            None => tensors
                .first()
                .ok_or_else(|| StepError::invalid_input("no tensor in the input"))?,
        };
        let logits = tensor.to_f32()?;
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(StepError::invalid_input(
                "logits must be finite (got NaN or infinity)",
            ));
        }
        let classes = match tensor.shape.as_slice() {
            [c] | [_, c] => {
                usize::try_from(*c).map_err(|_| StepError::invalid_input("too many classes"))?
            }
            other => {
                return Err(StepError::invalid_input(format!(
                    "expected shape [N, C] or [C], got {other:?}"
                )));
            }
        };
        if classes == 0 {
            return Err(StepError::invalid_input("the logits tensor has no classes"));
        }
        if !self.labels.is_empty() && self.labels.len() != classes {
            return Err(StepError::invalid_config(format!(
                "{} labels configured for {classes} classes",
                self.labels.len()
            )));
        }
        let predictions = logits
            .chunks_exact(classes)
            .map(|row| {
                let probs = softmax(row);
                let mut order: Vec<usize> = (0..classes).collect();
                order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
                order
                    .into_iter()
                    .take(self.k)
                    .map(|index| Prediction {
                        index,
                        label: self.labels.get(index).cloned(),
                        score: probs[index],
                    })
                    .collect()
            })
            .collect();
        let json = serde_json::to_vec(&Answer { predictions })
            .map_err(|e| StepError::internal(format!("cannot encode the answer: {e}")))?;
        tern_plugin_sdk::metrics::counter_add("rows", (logits.len() / classes) as u64);
        Ok(Payload::Bytes(Blob::new("application/json", json)))
    }
}

export_step!(TopK);

#[cfg(test)]
mod tests {
    use super::*;
    use tern_plugin_sdk::Tensor;

    fn run(config: &str, tensor: Tensor) -> Result<Answer, StepError> {
        let mut step = TopK::configure(config)?;
        let out = step.process(Payload::Tensors(vec![tensor]))?.into_blob()?;
        assert_eq!(out.media_type, "application/json");
        Ok(serde_json::from_slice(&out.data).expect("valid JSON"))
    }

    #[test]
    fn ranks_classes_per_row_with_labels() {
        let logits = Tensor::from_f32("output", vec![2, 3], &[0.0, 2.0, 1.0, 5.0, 0.0, 0.0]);
        let answer = run(r#"{"k": 2, "labels": ["a", "b", "c"]}"#, logits).expect("runs");
        assert_eq!(answer.predictions.len(), 2);
        let first: Vec<_> = answer.predictions[0]
            .iter()
            .map(|p| p.label.as_deref())
            .collect();
        assert_eq!(first, [Some("b"), Some("c")]);
        assert_eq!(answer.predictions[1][0].index, 0);
        let p = &answer.predictions[0][0];
        let expected = 2f32.exp() / (1.0 + 2f32.exp() + 1f32.exp());
        assert!((p.score - expected).abs() < 1e-6);
    }

    #[test]
    fn refuses_wrong_inputs_and_configs() {
        assert!(TopK::configure(r#"{"k": 0}"#).is_err());
        assert!(TopK::configure(r#"{"kk": 1}"#).is_err());
        let bad_shape = Tensor::from_f32("x", vec![1, 1, 2], &[0.0, 1.0]);
        assert!(run("{}", bad_shape).is_err());
        let labels_mismatch = Tensor::from_f32("x", vec![2], &[0.0, 1.0]);
        assert!(run(r#"{"labels": ["only-one"]}"#, labels_mismatch).is_err());
        let nan = Tensor::from_f32("x", vec![2], &[f32::NAN, 1.0]);
        assert!(run("{}", nan).is_err());
        let ints = Tensor::from_i64("x", vec![2], &[1, 2]);
        assert!(run("{}", ints).is_err());
    }
}
