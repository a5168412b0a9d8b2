//! A pipeline as a v2 model: its inputs and outputs. The first step's inputs are the
//! pipeline's: a model's as declared (symbolic dimensions as -1); a plugin's are one blob, the
//! BYTES input `input` (data-prep plugins take an image or a file; tensors are accepted too).
//! The last step's outputs are the pipeline's: a model's as declared; what a plugin gives is
//! known only when it gives it, so none are listed.

use serde::Serialize;
use tern_infer::{DType, Dim, IoSpec};

use crate::pipeline::PipelineStep;

/// One input or output in model metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// -1 for a dimension that varies.
    pub shape: Vec<i64>,
}

/// The v2 name of a model dtype.
pub fn datatype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::F16 => "FP16",
        DType::F64 => "FP64",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::Bool => "BOOL",
    }
}

fn described(io: &IoSpec) -> TensorMetadata {
    TensorMetadata {
        name: io.name.clone(),
        datatype: datatype_name(io.dtype).to_owned(),
        shape: io
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
                Dim::Symbol(_) => -1,
            })
            .collect(),
    }
}

/// The inputs of a pipeline whose first step is `first`.
pub fn inputs(first: Option<&PipelineStep>) -> Vec<TensorMetadata> {
    match first {
        Some(PipelineStep::Model { model, .. }) => model.inputs().iter().map(described).collect(),
        Some(PipelineStep::Plugin(_)) => vec![TensorMetadata {
            name: "input".to_owned(),
            datatype: "BYTES".to_owned(),
            shape: vec![1],
        }],
        None => Vec::new(),
    }
}

/// The outputs of a pipeline whose last step is `last`.
pub fn outputs(last: Option<&PipelineStep>) -> Vec<TensorMetadata> {
    match last {
        Some(PipelineStep::Model { model, .. }) => model.outputs().iter().map(described).collect(),
        Some(PipelineStep::Plugin(_)) | None => Vec::new(),
    }
}
