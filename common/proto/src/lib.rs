//! The Tern wire protocol: what agents, the control plane and `ternctl` say to each other.
//!
//! This crate knows the shape of every message and how it is framed on a stream; it opens no
//! sockets and reads no clock. Drivers in the daemons own the I/O (the optional `io` feature adds
//! async helpers that read and write frames over any tokio stream).
//!
//! - [`message`]: the control-stream enums ([`AgentMessage`], [`ControlMessage`]) and transfers.
//! - [`frame`]: length-prefixed postcard framing with a maximum frame size.
//! - [`token`]: one-time enrollment tokens that pin the control plane's CA.
//! - [`api`]: JSON bodies of the HTTPS APIs (admin API and enrollment).
//! - [`signing`]: Ed25519 keys and the signed-document envelope.
//! - [`release`]: signed releases and the checks agents run before parsing an artifact.
//! - [`trust`]: the trust root (publisher keys, threshold, rotation).
//! - [`desired`]: the signed, generation-numbered desired state of one agent.
//! - [`telemetry`]: telemetry batches and the histograms they carry.
//! - [`drift`]: feature distributions, baselines and the population stability index.
//! - [`prometheus`]: the Prometheus text format, for `/metrics`.
//! - [`otlp`]: the same metrics as an OpenTelemetry (OTLP/HTTP JSON) export request.
//! - [`inference`]: the Open Inference Protocol requests of the agent's local API.

pub mod api;
pub mod desired;
pub mod drift;
pub mod frame;
pub mod inference;
#[cfg(feature = "io")]
pub mod io;
pub mod labels;
pub mod manifest;
pub mod message;
pub mod otlp;
pub mod prometheus;
pub mod release;
pub mod signing;
pub mod telemetry;
pub mod token;
pub mod trust;

pub use frame::{FrameError, MAX_FRAME_LEN};
pub use message::{
    AgentMessage, Capacity, ControlMessage, GpuAdapter, Heartbeat, Hello, StatusReport, Welcome,
};
pub use token::{EnrollmentToken, TokenError};

/// Version of the control-stream protocol, sent in [`Hello`]. The control plane refuses agents
/// that speak a version it does not know.
pub const PROTOCOL_VERSION: u32 = 5;

/// ALPN protocol identifier of agent connections over QUIC.
pub const ALPN: &[u8] = b"tern/1";

/// The name every control plane certificate carries and every client verifies, whatever address
/// it dialled: the CA is private to one control plane, so the logical name is what identifies it.
pub const CONTROL_PLANE_SERVER_NAME: &str = "control-plane.tern.internal";

/// The SHA-256 digest of some bytes (certificates, tokens, artifacts).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
