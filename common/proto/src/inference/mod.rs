//! The Open Inference Protocol (KServe v2) requests that applications send to an agent's local
//! API: JSON read straight into typed scalars (no JSON value per element), the binary tensor
//! data extension (a JSON header, then each input's raw bytes), and every tensor checked against
//! its declared shape and datatype before any byte reaches a pipeline.

mod binary;
mod scalars;

pub use binary::{bytes_elements, encode_bytes_elements, read_request};
pub use scalars::{Scalar, Scalars};

use serde::Deserialize;
use thiserror::Error;

/// Most elements one request tensor may have.
pub const MAX_ELEMENTS: u64 = 64 << 20;

/// The HTTP header that gives the length of a request's or answer's JSON part when tensors
/// follow it as binary data (the binary tensor data extension).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A v2 inference request (`POST /v2/models/{name}/infer`): its JSON part.
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<RequestTensor>,
    /// The outputs to answer with, and how; all of them when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    pub parameters: RequestParameters,
}

impl InferRequest {
    /// Parses a request's JSON.
    pub fn from_json(body: &[u8]) -> Result<Self, InputError> {
        serde_json::from_slice(body).map_err(|e| InputError(format!("invalid request: {e}")))
    }

    /// Whether the output `name` goes back as binary data: as the request asked for that
    /// output, else as its `binary_data_output` says.
    pub fn binary_output(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .flatten()
            .find(|o| o.name == name)
            .and_then(|o| o.parameters.binary_data)
            .unwrap_or(self.parameters.binary_data_output)
    }
}

/// The request-wide parameters the agent reads; others are accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestParameters {
    /// Every output as binary data unless the output says otherwise.
    #[serde(default)]
    pub binary_data_output: bool,
}

/// One output a request asks for.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: OutputParameters,
}

/// The parameters of a requested output that the agent reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OutputParameters {
    #[serde(default)]
    pub binary_data: Option<bool>,
}

/// The parameters of a request tensor that the agent reads; others are accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TensorParameters {
    /// The tensor's bytes follow the JSON part (binary tensor data extension).
    #[serde(default)]
    pub binary_data_size: Option<u64>,
    /// The media type of a BYTES tensor that carries one blob (`image/png`).
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Why a request tensor was refused: a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The element types a request tensor may declare: those the engine has, and BYTES for blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Fp32,
    Fp16,
    Int64,
    Int32,
    Uint8,
    Bool,
    /// Byte strings, each a 4-byte little-endian length then its bytes.
    Bytes,
}

impl Datatype {
    pub const ALL: [Datatype; 7] = [
        Datatype::Fp32,
        Datatype::Fp16,
        Datatype::Int64,
        Datatype::Int32,
        Datatype::Uint8,
        Datatype::Bool,
        Datatype::Bytes,
    ];

    /// The v2 name.
    pub fn name(self) -> &'static str {
        match self {
            Datatype::Fp32 => "FP32",
            Datatype::Fp16 => "FP16",
            Datatype::Int64 => "INT64",
            Datatype::Int32 => "INT32",
            Datatype::Uint8 => "UINT8",
            Datatype::Bool => "BOOL",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per element; `None` for BYTES, whose elements vary.
    pub fn size(self) -> Option<u64> {
        match self {
            Datatype::Fp32 | Datatype::Int32 => Some(4),
            Datatype::Fp16 => Some(2),
            Datatype::Int64 => Some(8),
            Datatype::Uint8 | Datatype::Bool => Some(1),
            Datatype::Bytes => None,
        }
    }

    /// The datatype named `name` (any case), or a message that lists the ones there are.
    pub fn parse(name: &str) -> Result<Self, String> {
        let upper = name.to_ascii_uppercase();
        if let Some(found) = Self::ALL.into_iter().find(|d| d.name() == upper) {
            return Ok(found);
        }
        let choices = Self::ALL.map(Datatype::name).join(", ");
        if [
            "BF16", "FP64", "INT8", "INT16", "UINT16", "UINT32", "UINT64",
        ]
        .contains(&upper.as_str())
        {
            Err(format!(
                "datatype `{name}` is not one the engine runs; use one of {choices}"
            ))
        } else {
            Err(format!("datatype `{name}` is not one of {choices}"))
        }
    }
}

impl std::fmt::Display for Datatype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request tensor, checked: its datatype, shape and little-endian element bytes (for BYTES,
/// the length-prefixed elements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
    /// The media type the client gave a BYTES tensor.
    pub content_type: Option<String>,
}

/// One input tensor of a v2 inference request.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    /// The elements as JSON; absent when they follow the JSON part as binary data.
    #[serde(default)]
    pub data: Option<Scalars>,
    #[serde(default)]
    pub parameters: TensorParameters,
}

impl RequestTensor {
    fn error(&self, message: impl std::fmt::Display) -> InputError {
        InputError(format!("input `{}`: {message}", self.name))
    }

    /// The declared datatype.
    fn datatype(&self) -> Result<Datatype, InputError> {
        Datatype::parse(&self.datatype).map_err(|e| self.error(e))
    }

    /// The number of elements the shape holds, at most [`MAX_ELEMENTS`].
    fn element_count(&self) -> Result<u64, InputError> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| self.error(format_args!("shape {:?} is too large", self.shape)))
    }

    fn checked(&self, datatype: Datatype, data: Vec<u8>) -> InputTensor {
        InputTensor {
            name: self.name.clone(),
            datatype,
            shape: self.shape.clone(),
            data,
            content_type: self.parameters.content_type.clone(),
        }
    }

    /// Checks a tensor whose elements are in its JSON `data`: the datatype known, the element
    /// count equal to the shape's, every value of the datatype's range; gives its bytes.
    pub fn check(&self) -> Result<InputTensor, InputError> {
        let datatype = self.datatype()?;
        let count = self.element_count()?;
        let Some(Scalars(values)) = &self.data else {
            return Err(self.error("no `data`, and no `binary_data_size` parameter"));
        };
        if count != values.len() as u64 {
            return Err(self.error(format_args!(
                "shape {:?} holds {count} elements, data has {}",
                self.shape,
                values.len()
            )));
        }
        let bytes = scalars::encode(values, datatype).map_err(|i| {
            self.error(format_args!("element {i} is not a {} value", self.datatype))
        })?;
        Ok(self.checked(datatype, bytes))
    }

    /// Checks a tensor whose elements came as binary data: as many bytes as its shape and
    /// datatype make (for BYTES, whole length-prefixed elements, as many as the shape holds).
    pub fn check_binary(&self, bytes: &[u8]) -> Result<InputTensor, InputError> {
        let datatype = self.datatype()?;
        let count = self.element_count()?;
        match datatype.size() {
            Some(size) => {
                let expected = count * size;
                if bytes.len() as u64 != expected {
                    return Err(self.error(format_args!(
                        "shape {:?} of {datatype} is {expected} bytes, binary_data_size is {}",
                        self.shape,
                        bytes.len()
                    )));
                }
            }
            None => {
                let elements = bytes_elements(bytes).map_err(|e| self.error(e))?;
                if elements.len() as u64 != count {
                    return Err(self.error(format_args!(
                        "shape {:?} holds {count} elements, the binary data has {}",
                        self.shape,
                        elements.len()
                    )));
                }
            }
        }
        Ok(self.checked(datatype, bytes.to_vec()))
    }
}

#[cfg(test)]
mod tests;
