//! Tern inference: ONNX models on the CPU (tract) and on GPUs through our own wgpu executor.
//!
//! This crate is the only one that talks to wgpu. Today it discovers GPU adapters, which agents
//! report as part of their capacity; the executors arrive with the inference work.

pub mod adapters;

pub use adapters::{AdapterSummary, list_adapters};
