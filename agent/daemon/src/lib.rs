//! The Tern agent daemon.
//!
//! An agent enrolls once with a one-time token ([`enroll`]), then keeps one QUIC connection to
//! its control plane ([`link`]), reconnecting with jittered exponential backoff ([`backoff`])
//! for as long as the control plane is away. It reports what its host offers ([`capacity`]) and
//! serves local applications on a local HTTP address ([`local_api`]).
//!
//! - [`config`]: `agent.toml`: the agent's settings.
//! - [`data_dir`]: the agent's files (identity, CA, `agent.toml`).
//! - [`run_local`]: run a pipeline manifest once, without a control plane (`run-local`).
//! - [`fetch`]: resumable, verified artifact downloads from the control plane.
//! - [`oip`]: Open Inference Protocol (v2) JSON forms of tensors and payloads.
//! - [`pipeline`]: a loaded pipeline (plugin and model steps), run on one payload.
//! - [`reconcile`]: the reconciler, a pure state machine: desired state in, actions out.
//! - [`serving`]: the pipelines served right now, switched atomically, with request counters.
//! - [`deployer`]: the async driver of the reconciler (verify, fetch, load, switch, report).
//! - [`store`]: the agent's durable state in sled and its verified artifacts on disk.
//! - [`exits`]: runs that died: the run marker, the exit ledger, revisions put aside.
//! - [`telemetry`]: per-request meters, batches buffered in sled, shipped when connected.
//! - [`shutdown`]: the signals that stop the agent, and the order its parts stop in.
//! - `working_set` (Linux only): gives back the pages of the binary's code that startup touched
//!   once.

// Proving that futures holding loaded models are `Send` walks deep into wgpu's types.
#![recursion_limit = "256"]

pub mod backoff;
pub mod capacity;
pub mod config;
pub mod data_dir;
pub mod deployer;
pub mod enroll;
pub mod exits;
pub mod fetch;
pub mod identity;
pub mod limits;
pub mod link;
pub mod local_api;
pub mod npy;
pub mod oip;
pub mod pipeline;
pub mod reconcile;
pub mod run;
pub mod run_local;
pub mod serving;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tensors;
// Uses `/proc/self/smaps` and Linux's `MADV_DONTNEED`; other targets keep their code resident.
#[cfg(target_os = "linux")]
pub mod working_set;

pub use config::AgentConfig;
pub use data_dir::AgentDataDir;
pub use enroll::{JoinError, JoinOptions, join};
pub use run::{RunError, run};

/// The agent's software version, reported in its hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
