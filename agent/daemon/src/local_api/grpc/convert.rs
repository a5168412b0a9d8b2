//! gRPC messages to and from the agent's tensors: typed `contents` or raw bytes in, raw bytes
//! out, each checked as the HTTP form checks its tensors.

use tern_proto::inference::{RequestTensor, Scalar, Scalars, TensorParameters};

use super::generated::infer_parameter::ParameterChoice;
use super::generated::model_infer_request::InferInputTensor;
use super::generated::model_infer_response::InferOutputTensor;
use super::generated::{InferParameter, InferTensorContents, ModelInferResponse};
use crate::oip::{InputError, InputTensor, OutputTensor, encode_bytes_elements};

/// The elements of typed contents as JSON scalars would give them; BYTES elements apart.
fn scalars(contents: InferTensorContents) -> Scalars {
    let InferTensorContents {
        bool_contents,
        int_contents,
        int64_contents,
        uint_contents,
        uint64_contents,
        fp32_contents,
        fp64_contents,
        bytes_contents: _,
    } = contents;
    let values = bool_contents
        .into_iter()
        .map(Scalar::Bool)
        .chain(int_contents.into_iter().map(|v| Scalar::Int(v.into())))
        .chain(int64_contents.into_iter().map(Scalar::Int))
        .chain(uint_contents.into_iter().map(|v| Scalar::UInt(v.into())))
        .chain(uint64_contents.into_iter().map(Scalar::UInt))
        .chain(fp32_contents.into_iter().map(|v| Scalar::Float(v.into())))
        .chain(fp64_contents.into_iter().map(Scalar::Float))
        .collect();
    Scalars(values)
}

/// The request's input tensors, checked: from `raw` (one entry per input, in order) when it is
/// not empty, else from each input's `contents`.
pub fn inputs(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Vec<u8>>,
) -> Result<Vec<InputTensor>, InputError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(InputError(format!(
            "raw_input_contents has {} entries for {} inputs",
            raw.len(),
            inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let shape = input
                .shape
                .iter()
                .map(|&d| u64::try_from(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    InputError(format!(
                        "input `{}`: shape {:?} has a negative dimension",
                        input.name, input.shape
                    ))
                })?;
            let content_type =
                input
                    .parameters
                    .get("content_type")
                    .and_then(|p| match &p.parameter_choice {
                        Some(ParameterChoice::StringParam(s)) => Some(s.clone()),
                        _ => None,
                    });
            let mut tensor = RequestTensor {
                name: input.name,
                shape,
                datatype: input.datatype,
                data: None,
                parameters: TensorParameters {
                    binary_data_size: None,
                    content_type,
                },
            };
            if let Some(bytes) = raw.next() {
                return tensor.check_binary(&bytes);
            }
            let contents = input.contents.unwrap_or_default();
            if !contents.bytes_contents.is_empty() {
                let data = encode_bytes_elements(contents.bytes_contents.iter().map(Vec::as_slice));
                return tensor.check_binary(&data);
            }
            tensor.data = Some(scalars(contents));
            tensor.check()
        })
        .collect()
}

/// The answer: every output's bytes in `raw_output_contents`.
pub fn answer(
    model_name: String,
    revision: u64,
    id: String,
    outputs: Vec<OutputTensor>,
) -> ModelInferResponse {
    let mut raw_output_contents = Vec::with_capacity(outputs.len());
    let outputs = outputs
        .into_iter()
        .map(|output| {
            raw_output_contents.push(output.data);
            InferOutputTensor {
                name: output.name,
                datatype: output.datatype.name().to_owned(),
                shape: output
                    .shape
                    .iter()
                    .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
                    .collect(),
                parameters: output
                    .content_type
                    .map(|media_type| {
                        let value = InferParameter {
                            parameter_choice: Some(ParameterChoice::StringParam(media_type)),
                        };
                        [("content_type".to_owned(), value)].into()
                    })
                    .unwrap_or_default(),
                contents: None,
            }
        })
        .collect();
    ModelInferResponse {
        model_name,
        model_version: revision.to_string(),
        id,
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    }
}
