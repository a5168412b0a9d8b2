//! A lowered model: virtual buffers and the kernel dispatches that read and write them, in order.
//! Built by [`crate::gpu::lower`], turned into GPU resources by [`crate::gpu::plan`].

use std::sync::Arc;

use crate::gpu::kernels::Kernel;
use crate::tensor::DType;

/// A virtual buffer; physical buffers are assigned by liveness when a plan is built.
pub type BufId = usize;

/// How the GPU stores a tensor: every element is one 32-bit word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    F32,
    /// Integers of every width (int64 values must fit 32 bits).
    I32,
    /// 0 or 1.
    Bool,
}

impl Word {
    pub fn for_dtype(dtype: DType) -> Option<Word> {
        match dtype {
            // float16 is computed in float32; float64 is refused (its range does not fit).
            DType::F32 | DType::F16 => Some(Word::F32),
            DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16 => {
                Some(Word::I32)
            }
            DType::Bool => Some(Word::Bool),
            _ => None,
        }
    }
}

/// What a virtual buffer holds.
#[derive(Debug, Clone)]
pub enum BufferKind {
    /// Written by the host before each run from model input `index`.
    Input { index: usize },
    /// Uploaded once; shared by every plan of the model that has the same contents.
    Weight { words: Arc<Vec<u32>> },
    /// Produced by a step.
    Activation,
}

#[derive(Debug, Clone)]
pub struct BufferSpec {
    pub kind: BufferKind,
    pub words: usize,
}

/// One dispatch.
#[derive(Debug, Clone)]
pub struct Step {
    pub kernel: Kernel,
    pub params: Vec<u32>,
    /// Bindings 1.. of the kernel, in order (binding 0 is `params`).
    pub buffers: Vec<BufId>,
    pub grid: (u32, u32, u32),
    /// The tract node this step came from, for traces and errors.
    pub node: String,
}

/// A model output: which buffer, its shape, and how to turn its words into the output dtype.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub buffer: BufId,
    pub shape: Vec<usize>,
    pub word: Word,
    pub dtype: DType,
}

/// A model input: its buffer and what the host must write there.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Position among the model's inputs.
    pub index: usize,
    pub buffer: BufId,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

#[derive(Debug, Clone, Default)]
pub struct Program {
    pub buffers: Vec<BufferSpec>,
    pub steps: Vec<Step>,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
}
