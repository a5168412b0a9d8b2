//! The Open Inference Protocol (KServe v2) on the agent: request tensors into a pipeline's
//! payload, a payload into the answer's output tensors (JSON or binary, as the request asks),
//! and what a pipeline says of itself as a model (its inputs and outputs). Shared by the HTTP
//! and gRPC forms of the local API, and by `run-local`'s printout.

mod elements;
pub mod metadata;

use base64::Engine as _;
use tern_plugin_host::{Blob, Dtype, Payload, Tensor};
pub use tern_proto::inference::{
    Datatype, HEADER_LENGTH, InferRequest, InputError, InputTensor, RequestTensor, bytes_elements,
    encode_bytes_elements, read_request,
};

use elements::Elements;

/// The name of the output that carries a pipeline's final blob (a BYTES tensor of one element).
pub const BLOB_OUTPUT: &str = "output";

/// The v2 datatype of a plugin tensor's dtype.
pub fn datatype(dtype: Dtype) -> Datatype {
    match dtype {
        Dtype::Fp32 => Datatype::Fp32,
        Dtype::Fp16 => Datatype::Fp16,
        Dtype::Int64 => Datatype::Int64,
        Dtype::Int32 => Datatype::Int32,
        Dtype::Uint8 => Datatype::Uint8,
        Dtype::Boolean => Datatype::Bool,
    }
}

fn tensor_json(t: &Tensor) -> serde_json::Value {
    let datatype = datatype(t.dtype);
    serde_json::json!({
        "name": t.name,
        "datatype": datatype.name(),
        "shape": t.shape,
        "data": Elements { datatype, data: &t.data },
    })
}

/// The final payload as `run-local` and `POST /v1/pipelines/{name}/infer` print it: tensors in
/// the Open Inference Protocol response form, a JSON blob as-is, any other blob as
/// `{"media_type", "data_base64"}`.
pub fn payload_json(payload: &Payload) -> serde_json::Value {
    match payload {
        Payload::Tensors(tensors) => {
            serde_json::json!({ "outputs": tensors.iter().map(tensor_json).collect::<Vec<_>>() })
        }
        Payload::Bytes(blob) => {
            let is_json = blob
                .media_type
                .split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json");
            match serde_json::from_slice(&blob.data) {
                Ok(value) if is_json => value,
                _ => serde_json::json!({
                    "media_type": blob.media_type,
                    "data_base64": base64::engine::general_purpose::STANDARD.encode(&blob.data),
                }),
            }
        }
    }
}

/// A checked request tensor as a plugin tensor; BYTES have no plugin dtype.
fn plugin_tensor(t: InputTensor) -> Result<Tensor, InputError> {
    let dtype = match t.datatype {
        Datatype::Fp32 => Dtype::Fp32,
        Datatype::Fp16 => Dtype::Fp16,
        Datatype::Int64 => Dtype::Int64,
        Datatype::Int32 => Dtype::Int32,
        Datatype::Uint8 => Dtype::Uint8,
        Datatype::Bool => Dtype::Boolean,
        Datatype::Bytes => {
            return Err(InputError(format!(
                "input `{}`: a BYTES input is a blob and comes alone",
                t.name
            )));
        }
    };
    Ok(Tensor {
        name: t.name,
        dtype,
        shape: t.shape,
        data: t.data,
    })
}

/// The payload a pipeline runs on for a request's checked inputs: one BYTES input of one element
/// is a blob (its media type the input's `content_type` parameter, else
/// `application/octet-stream`); anything else is tensors.
pub fn payload_from_inputs(mut inputs: Vec<InputTensor>) -> Result<Payload, InputError> {
    if let [only] = inputs.as_mut_slice()
        && only.datatype == Datatype::Bytes
    {
        let elements = bytes_elements(&only.data).map_err(InputError)?;
        let [element] = elements.as_slice() else {
            return Err(InputError(format!(
                "input `{}`: a BYTES input carries one blob, it has {} elements",
                only.name,
                elements.len()
            )));
        };
        return Ok(Payload::Bytes(Blob {
            media_type: only
                .content_type
                .take()
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            data: element.to_vec(),
        }));
    }
    inputs
        .into_iter()
        .map(plugin_tensor)
        .collect::<Result<Vec<_>, _>>()
        .map(Payload::Tensors)
}

/// A v2 request's tensor as a plugin tensor, checked (a warm-up sample's tensors).
pub fn tensor_from_request(t: &RequestTensor) -> Result<Tensor, InputError> {
    t.check().and_then(plugin_tensor)
}

/// One tensor of an answer: its raw bytes (BYTES: length-prefixed elements) and, for a blob,
/// its media type.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
    pub content_type: Option<String>,
}

/// The output tensors of a final payload: its tensors, or its blob as the BYTES output
/// [`BLOB_OUTPUT`].
pub fn outputs(payload: Payload) -> Vec<OutputTensor> {
    match payload {
        Payload::Tensors(tensors) => tensors
            .into_iter()
            .map(|t| OutputTensor {
                name: t.name,
                datatype: datatype(t.dtype),
                shape: t.shape,
                data: t.data,
                content_type: None,
            })
            .collect(),
        Payload::Bytes(blob) => vec![OutputTensor {
            name: BLOB_OUTPUT.to_owned(),
            datatype: Datatype::Bytes,
            shape: vec![1],
            data: encode_bytes_elements([blob.data.as_slice()]),
            content_type: Some(blob.media_type),
        }],
    }
}

/// The outputs named in `wanted`, in its order, or all of them when `wanted` is empty; a name
/// that is not an output is refused with the ones there are.
pub fn select(
    mut outputs: Vec<OutputTensor>,
    wanted: &[&str],
) -> Result<Vec<OutputTensor>, InputError> {
    if wanted.is_empty() {
        return Ok(outputs);
    }
    let mut chosen = Vec::with_capacity(wanted.len());
    for name in wanted {
        let Some(at) = outputs.iter().position(|o| o.name == *name) else {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(InputError(format!(
                "output `{name}` is not one of the pipeline's outputs ({})",
                names.join(", ")
            )));
        };
        chosen.push(outputs.swap_remove(at));
    }
    Ok(chosen)
}

/// An HTTP answer to a v2 inference request: the JSON part, then the outputs sent as binary
/// data; `header_length` is the JSON part's length when binary data follows.
#[derive(Debug)]
pub struct HttpAnswer {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

/// Encodes the answer to `request` for HTTP: each output as JSON or binary data, as the request
/// asked; a BYTES output that is not UTF-8 text goes as binary data either way (JSON strings
/// cannot carry it).
pub fn http_answer(
    model: &str,
    version: u64,
    request: &InferRequest,
    outputs: &[OutputTensor],
) -> Result<HttpAnswer, InputError> {
    let mut binary = Vec::new();
    let mut described = Vec::with_capacity(outputs.len());
    for output in outputs {
        let mut tensor = serde_json::json!({
            "name": output.name,
            "datatype": output.datatype.name(),
            "shape": output.shape,
        });
        let mut parameters = serde_json::Map::new();
        if let Some(media_type) = &output.content_type {
            parameters.insert("content_type".into(), media_type.clone().into());
        }
        let as_text = output.datatype != Datatype::Bytes
            || bytes_elements(&output.data)
                .map_err(InputError)?
                .iter()
                .all(|e| std::str::from_utf8(e).is_ok());
        if request.binary_output(&output.name) || !as_text {
            parameters.insert("binary_data_size".into(), output.data.len().into());
            binary.extend_from_slice(&output.data);
        } else {
            tensor["data"] = serde_json::to_value(Elements {
                datatype: output.datatype,
                data: &output.data,
            })
            .map_err(|e| InputError(e.to_string()))?;
        }
        if !parameters.is_empty() {
            tensor["parameters"] = parameters.into();
        }
        described.push(tensor);
    }
    let mut answer = serde_json::json!({
        "model_name": model,
        "model_version": version.to_string(),
        "outputs": described,
    });
    if let Some(id) = &request.id {
        answer["id"] = id.clone().into();
    }
    let mut body = serde_json::to_vec(&answer).map_err(|e| InputError(e.to_string()))?;
    let header_length = (!binary.is_empty()).then_some(body.len());
    body.extend_from_slice(&binary);
    Ok(HttpAnswer {
        body,
        header_length,
    })
}

#[cfg(test)]
mod tests;
