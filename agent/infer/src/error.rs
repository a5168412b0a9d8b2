//! Why loading or running a model failed.

use std::sync::atomic::{AtomicU64, Ordering};

/// Panics [`guarded`] has caught in this process, since it started.
static PANICS_CAUGHT: AtomicU64 = AtomicU64::new(0);

/// How many panics inside the inference engine this process has caught and turned into
/// [`InferError::Panicked`], since it started. Process-wide and only ever growing: each one is a
/// model tract could not handle, worth a metric and a bug report upstream. Concurrent loads
/// and runs all add to it, so compare two readings for growth, not for an exact difference.
pub fn panics_caught() -> u64 {
    PANICS_CAUGHT.load(Ordering::Relaxed)
}

/// Errors of the inference API. Every failure of a model (malformed bytes, a panic inside tract,
/// an op a backend lacks) ends here; none takes the process down.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// The model is larger than [`crate::ModelOptions::max_model_bytes`].
    #[error("model is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The model declares a tensor larger than [`crate::ModelOptions::max_tensor_bytes`].
    #[error(
        "model declares tensor `{tensor}` of {bytes} bytes, over the limit of {limit} bytes (max_tensor_bytes)"
    )]
    TensorTooLarge {
        tensor: String,
        bytes: u64,
        limit: u64,
    },
    /// The model refers to data outside its own bytes.
    #[error(
        "model refers to external data (tensor `{tensor}`); only self-contained models are accepted"
    )]
    ExternalData { tensor: String },
    /// The bytes are not a model tract can load.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The model needs something this build cannot do (an operator, a dtype).
    #[error("unsupported: {what}")]
    Unsupported { what: String },
    /// The GPU backend lacks an operator the model uses.
    #[error("the GPU backend does not support operator {op} (node `{node}`)")]
    UnsupportedOp { op: String, node: String },
    /// `device: gpu` was asked for and no adapter is usable.
    #[error("no GPU adapter is available: {0}")]
    NoGpu(String),
    /// An input is missing, extra, or of the wrong dtype or shape.
    #[error("input `{name}`: {reason}")]
    BadInput { name: String, reason: String },
    /// The backend failed while running.
    #[error("inference failed: {0}")]
    Run(String),
    /// A panic inside the inference engine, caught.
    #[error("the inference engine panicked while {during}: {message}")]
    Panicked { during: String, message: String },
    /// A broken invariant of ours.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Runs `f`, turning a panic into [`InferError::Panicked`]. tract can panic on malformed models;
/// the agent must not.
pub(crate) fn guarded<T>(
    during: &str,
    f: impl FnOnce() -> Result<T, InferError>,
) -> Result<T, InferError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            PANICS_CAUGHT.fetch_add(1, Ordering::Relaxed);
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            tracing::error!(during, %message, "inference engine panicked");
            Err(InferError::Panicked {
                during: during.to_owned(),
                message,
            })
        }
    }
}
