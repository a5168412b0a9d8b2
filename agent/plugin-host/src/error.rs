//! What can go wrong loading a plugin or running a step.

use std::path::PathBuf;
use std::time::Duration;

use crate::ErrorKind;

/// Why a component was not loaded. Nothing of a refused component is kept.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not WebAssembly (no `\\0asm` header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component (build plugins with --target wasm32-wasip2)"
    )]
    CoreModule,
    #[error("cannot compile the component: {0}")]
    Compile(String),
    #[error("the component is not a tern:pipeline/plugin: {0}")]
    WrongWorld(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("compiled-component cache at {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the plugin engine: {0}")]
    Engine(String),
}

/// A request (or a step's set-up) that failed, naming the step.
#[derive(Debug, thiserror::Error)]
#[error("step {step}: {cause}")]
pub struct StepFailure {
    pub step: String,
    pub cause: FailureCause,
}

/// The cause of a [`StepFailure`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FailureCause {
    /// The plugin returned an error on purpose.
    #[error("{}: {message}", kind_text(*.kind))]
    Guest { kind: ErrorKind, message: String },
    /// `configure` rejected the step's configuration.
    #[error("configuration refused: {}: {message}", kind_text(*.kind))]
    Configure { kind: ErrorKind, message: String },
    /// The call ran past its deadline (`timeoutMs`).
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    /// The instance tried to grow its memory past `memoryMiB`, or its output would have taken
    /// more than that to copy to the host (lists in one result may alias the same guest
    /// bytes, so the copy can be larger than the guest's memory).
    #[error("memory limit of {limit_mib} MiB exceeded{}", if *.output { " by its output" } else { "" })]
    MemoryLimit { limit_mib: usize, output: bool },
    /// The plugin panicked; the message is what it printed.
    #[error("plugin panicked: {0}")]
    Panic(String),
    /// Any other trap (stack overflow, out-of-bounds access, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin returned an output the host refuses (too large, or tensors that do not match
    /// their shapes).
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// The component could not be instantiated.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

fn kind_text(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "invalid input",
        ErrorKind::InvalidConfig => "invalid config",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Internal => "internal error",
    }
}
