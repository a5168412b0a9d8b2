//! Tern inference: ONNX models on the CPU (tract) and on GPUs through our own wgpu executor.
//!
//! ```no_run
//! use tern_infer::{Model, ModelOptions, Tensor};
//! let bytes = std::fs::read("model.onnx")?;
//! let model = Model::load(&bytes, &ModelOptions::default())?;
//! println!("runs on {}", model.placement());
//! let input = Tensor::from_f32("input", vec![1, 32], &[0.0; 32]);
//! let outputs = model.run(vec![input])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate is the only one that talks to wgpu: it also runs data-prep kernels for plugins
//! and discovers adapters, which agents report as part of their capacity.

pub mod adapters;
mod admission;
pub mod conformance;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod model;
pub mod npy;
pub mod plans;
pub mod tensor;

pub use adapters::{AdapterSummary, list_adapters};
pub use error::{InferError, panics_caught};
pub use gpu::gpu_busy;
pub use model::{
    DEFAULT_MAX_TENSOR_BYTES, Device, Dim, IoSpec, Model, ModelOptions, Placement, parse_onnx,
};
pub use tensor::{DType, Tensor};
/// The tract version this crate runs, for benchmarks against it.
pub use tract_onnx;
/// ONNX protobuf types, for tools and tests that build or inspect models.
pub use tract_onnx::pb as onnx_pb;
