//! The plugin host: runs components of the `tern:pipeline/plugin` world (`wit/pipeline.wit`) in
//! wasmtime, with hard limits, so that a broken or hostile plugin can never hurt the agent.
//!
//! - [`PluginEngine`] owns the wasmtime engine, the epoch ticker that enforces deadlines, the
//!   linker, and the on-disk cache of compiled components.
//! - [`PluginEngine::load`] compiles (or loads from the cache) and checks a component;
//!   [`Plugin::step`] configures a [`Step`] with its JSON config and [`StepLimits`].
//! - [`Step::process`] runs one request on a pooled instance. A trap, deadline or memory overrun
//!   fails that request with a [`StepFailure`] naming the step and the cause, and the instance is
//!   discarded; the next request gets a fresh one.
//!
//! Invariants: plugins get no filesystem, network, environment or clock (WASI is linked, with
//! nothing granted); guest stdout and stderr go to `tracing` under the step's name; precompiled
//! code is only ever loaded from this host's own cache, keyed by the digest of the component it
//! was compiled from and the engine configuration.

mod accel;
mod bindings;
mod cache;
mod engine;
mod error;
mod limits;
mod metrics;
mod output;
mod runtime;
mod state;
mod stdio;
mod step;

pub use accel::{Accel, AutoAccel, CpuAccel, GpuAccel};
pub use bindings::tern::pipeline::accel::Layout;
pub use bindings::tern::pipeline::types::{Blob, Dtype, ErrorKind, Payload, StepError, Tensor};
pub use engine::{EngineOptions, Plugin, PluginEngine};
pub use error::{FailureCause, LoadError, StepFailure};
pub use limits::StepLimits;
pub use metrics::{MetricsSink, NoMetrics, RecordedMetrics};
pub use step::Step;
