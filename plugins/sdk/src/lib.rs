//! The Tern plugin SDK: what a plugin author depends on.
//!
//! A plugin is a pipeline step: a type that is built from the step's JSON configuration and then
//! turns one [`Payload`] into another. Implement [`Step`], export it with [`export_step!`], and
//! build with `cargo build --target wasm32-wasip2 --release` (with `crate-type = ["cdylib"]`).
//! The agent runs it sandboxed: no filesystem, network, environment or clock, a deadline and a
//! memory limit per step.
//!
//! A complete plugin that scales every element of its input tensors:
//!
//! ```
//! use tern_plugin_sdk::{Payload, Step, StepError, Tensor, export_step};
//!
//! #[derive(serde::Deserialize)]
//! struct Scale {
//!     factor: f32,
//! }
//!
//! impl Step for Scale {
//!     fn configure(config: &str) -> Result<Self, StepError> {
//!         tern_plugin_sdk::parse_config(config)
//!     }
//!
//!     fn process(&mut self, input: Payload) -> Result<Payload, StepError> {
//!         let tensors = input.into_tensors()?;
//!         let mut out = Vec::with_capacity(tensors.len());
//!         for t in tensors {
//!             let data: Vec<f32> = t.to_f32()?.iter().map(|v| v * self.factor).collect();
//!             out.push(Tensor::from_f32(&t.name, t.shape.clone(), &data));
//!         }
//!         tern_plugin_sdk::log::debug(&format!("scaled {} tensors", out.len()));
//!         Ok(Payload::Tensors(out))
//!     }
//! }
//!
//! export_step!(Scale);
//! # fn main() {}
//! ```
//!
//! Plugins are ordinary Rust crates: compiled natively (for their tests), [`log`], [`metrics`]
//! and [`accel`] run locally instead of calling the host.

mod tensor;

/// Bindings generated from `wit/pipeline.wit`.
#[allow(unsafe_code, missing_debug_implementations, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_tern_plugin",
        default_bindings_module: "tern_plugin_sdk::bindings",
    });
}

pub use bindings::tern::pipeline::accel::Layout;
pub use bindings::tern::pipeline::types::{Blob, Dtype, ErrorKind, Payload, StepError, Tensor};

/// A pipeline step.
pub trait Step: Sized + 'static {
    /// Builds the step from its configuration (the manifest's `config`, as JSON; `{}` if none).
    fn configure(config: &str) -> Result<Self, StepError>;

    /// Transforms one request's payload.
    fn process(&mut self, input: Payload) -> Result<Payload, StepError>;
}

impl StepError {
    /// The input cannot be processed.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidInput,
            message: message.into(),
        }
    }
    /// The configuration is wrong.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidConfig,
            message: message.into(),
        }
    }
    /// The request asks for something the step does not do.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Unsupported,
            message: message.into(),
        }
    }
    /// A bug or unexpected state in the step.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

/// Parses a step's JSON configuration; errors become [`ErrorKind::InvalidConfig`] naming the field.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, StepError> {
    serde_json::from_str(config).map_err(|e| StepError::invalid_config(format!("step config: {e}")))
}

impl Blob {
    pub fn new(media_type: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            media_type: media_type.into(),
            data,
        }
    }
}

impl Payload {
    /// The tensors, or an invalid-input error for a blob.
    pub fn into_tensors(self) -> Result<Vec<Tensor>, StepError> {
        match self {
            Payload::Tensors(t) => Ok(t),
            Payload::Bytes(b) => Err(StepError::invalid_input(format!(
                "expected tensors, got a {} blob",
                b.media_type
            ))),
        }
    }

    /// The blob, or an invalid-input error for tensors.
    pub fn into_blob(self) -> Result<Blob, StepError> {
        match self {
            Payload::Bytes(b) => Ok(b),
            Payload::Tensors(_) => Err(StepError::invalid_input("expected bytes, got tensors")),
        }
    }
}

/// Logging to the host (attributed to the calling step). Natively: standard error.
pub mod log {
    use crate::bindings::tern::pipeline::host::Level;

    fn write(level: Level, message: &str) {
        #[cfg(target_family = "wasm")]
        crate::bindings::tern::pipeline::host::log(level, message);
        #[cfg(not(target_family = "wasm"))]
        eprintln!("[{level:?}] {message}");
    }

    pub fn trace(message: &str) {
        write(Level::Trace, message)
    }
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }
    pub fn info(message: &str) {
        write(Level::Info, message)
    }
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// Custom metrics, reported with the pipeline's telemetry. Natively: no-ops.
pub mod metrics {
    /// Adds `delta` to the counter `name`.
    pub fn counter_add(name: &str, delta: u64) {
        #[cfg(target_family = "wasm")]
        crate::bindings::tern::pipeline::host::counter_add(name, delta);
        #[cfg(not(target_family = "wasm"))]
        let _ = (name, delta);
    }

    /// Records one observation of the distribution `name`.
    pub fn observe(name: &str, value: f64) {
        #[cfg(target_family = "wasm")]
        crate::bindings::tern::pipeline::host::observe(name, value);
        #[cfg(not(target_family = "wasm"))]
        let _ = (name, value);
    }
}

/// Data-prep primitives the host runs on its GPU when it has one. Natively: the CPU kernels.
pub mod accel {
    use crate::{Layout, StepError, Tensor};

    /// Bilinear resize of `uint8` or `fp32` images to `height` × `width`.
    pub fn resize(
        image: &Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError> {
        #[cfg(target_family = "wasm")]
        return crate::bindings::tern::pipeline::accel::resize(image, layout, height, width);
        #[cfg(not(target_family = "wasm"))]
        crate::tensor::cpu_resize(image, layout, height, width)
    }

    /// Per-channel `(x - mean) / std` into `fp32` in `out_layout` (`uint8` scaled to [0, 1] first).
    pub fn normalize(
        image: &Tensor,
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<Tensor, StepError> {
        #[cfg(target_family = "wasm")]
        return crate::bindings::tern::pipeline::accel::normalize(
            image, layout, mean, std, out_layout,
        );
        #[cfg(not(target_family = "wasm"))]
        crate::tensor::cpu_normalize(image, layout, mean, std, out_layout)
    }
}

/// Adapts a [`Step`] to the generated export trait. One instance per component instance: the
/// host calls `configure` once, then `process` for each request, never concurrently.
#[doc(hidden)]
#[derive(Debug)]
pub struct Adapter<S>(std::marker::PhantomData<S>);

thread_local! {
    static STATE: std::cell::RefCell<Option<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(None) };
}

impl<S: Step> bindings::exports::tern::pipeline::step::Guest for Adapter<S> {
    fn configure(config: String) -> Result<(), StepError> {
        let step = S::configure(&config)?;
        STATE.with(|state| *state.borrow_mut() = Some(Box::new(step)));
        Ok(())
    }

    fn process(input: Payload) -> Result<Payload, StepError> {
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            let step = state
                .as_mut()
                .and_then(|s| s.downcast_mut::<S>())
                .ok_or_else(|| StepError::internal("process called before configure"))?;
            step.process(input)
        })
    }
}

/// Exports a [`Step`] implementation as the plugin's `step` interface. Only a WebAssembly build
/// exports anything; a native build (the plugin's own tests) links without the component glue.
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code)]
        mod __tern_plugin_export {
            use super::*;
            type TernStepAdapter = $crate::Adapter<$step>;
            $crate::bindings::__export_tern_plugin!(TernStepAdapter with_types_in $crate::bindings);
        }
    };
}
