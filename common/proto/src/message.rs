//! Messages of the control stream and of artifact transfers.
//!
//! Every enum is encoded with postcard, so variants are identified by their position:
//! **append new variants at the end, never reorder or remove one.**

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an agent sends on its control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message of every connection.
    Hello(Hello),
    /// Liveness, at the interval the control plane asked for in [`Welcome`].
    Heartbeat(Heartbeat),
    /// What the agent runs, after it applied a desired state (or failed to).
    Status(StatusReport),
    /// Acknowledges a control-plane message that asked for one.
    Ack(Ack),
    /// The host's capacity changed since the hello (for example, GPU discovery finished).
    Capacity(Capacity),
    /// Request counters of the pipelines it serves, for rollout health gates.
    Health(HealthReport),
    /// A CSR for a fresh key, to renew the agent's certificate before it expires (the key never
    /// leaves the agent).
    Renew { csr_pem: String },
    /// The agent's runs that ended without an orderly stop (a crash, an OOM kill), within its
    /// window; sent on every connection while there are any, so that a control plane that
    /// restarted, or another replica, learns them too.
    Exits(ExitReport),
}

/// What the control plane sends on an agent's control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// Answer to [`Hello`]: the agent is known and may stay connected.
    Welcome(Welcome),
    /// Acknowledges a heartbeat or status report by sequence number.
    Ack(Ack),
    /// The hello was refused; the connection closes after this message.
    Refused { reason: String },
    /// What the agent should run, signed by the control plane's online key.
    DesiredState(SignedDesiredState),
    /// Answer to [`AgentMessage::Renew`]: the new certificate (PEM), or why there is none.
    Renewed(Result<String, String>),
    /// Every trust root the control plane pinned, oldest first (at most [`MAX_TRUST_CHAIN`]),
    /// sent after the welcome and before any desired state: an agent offline across several
    /// rotations takes them one by one, each checked against the one before.
    TrustChain(Vec<crate::trust::SignedTrustRoot>),
}

/// Most trust roots a [`ControlMessage::TrustChain`] carries (the newest).
pub const MAX_TRUST_CHAIN: usize = 32;

/// The first message of an agent connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the sender.
    pub protocol_version: u32,
    /// Identity assigned at enrollment (also bound to the client certificate).
    pub agent_id: String,
    /// Human name chosen at enrollment.
    pub name: String,
    /// Labels the agent was enrolled with, as it knows them.
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    pub capacity: Capacity,
    /// The agent's software version (semver of `tern-agent`).
    pub software_version: String,
}

/// Cumulative counters of every pipeline revision an agent served since it loaded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub pipelines: Vec<PipelineHealth>,
}

/// Counters of one pipeline revision on one agent, since the agent loaded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineHealth {
    pub name: String,
    pub revision: u64,
    pub requests: u64,
    /// Requests that failed in a step (bad input refused before the pipeline is not counted).
    pub errors: u64,
}

/// Most unclean exits one [`ExitReport`] carries (the newest are kept).
pub const MAX_REPORTED_EXITS: usize = 32;

/// The agent's recent unclean exits: runs of the agent process that ended without an orderly
/// stop, as the next run found them at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The run sending this report.
    pub run: String,
    /// How far back the agent counts exits (its window), in milliseconds.
    pub window_ms: u64,
    /// Oldest first, at most [`MAX_REPORTED_EXITS`].
    pub exits: Vec<UncleanExit>,
}

/// One run of the agent that ended without an orderly stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncleanExit {
    /// The run that died.
    pub run: String,
    /// When it started, and when the next run found it had died (the agent's clock, unix ms):
    /// it died in between.
    pub started_ms: u64,
    pub detected_ms: u64,
    /// The revisions it served when it died.
    pub serving: Vec<RunningRevision>,
    /// The revisions it was loading when it died.
    pub loading: Vec<RunningRevision>,
    /// Why, where the system said (the supervisor's exit status, the kernel's OOM killer, a
    /// panic message); empty when nothing said.
    pub reason: String,
}

/// A pipeline revision a run served or was loading.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunningRevision {
    pub pipeline: String,
    pub revision: u64,
}

/// Resources of an agent's host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Logical CPU cores available to the agent.
    pub cores: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Free disk space under the agent's data dir, in bytes.
    pub disk_free_bytes: u64,
    /// GPU adapters as wgpu enumerates them.
    pub gpus: Vec<GpuAdapter>,
}

/// One GPU adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAdapter {
    /// Adapter name, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Graphics API backend: "vulkan", "metal", "dx12".
    pub backend: String,
    /// "discrete-gpu", "integrated-gpu", "virtual-gpu", "cpu" or "other".
    pub device_type: String,
    /// Driver name and version, when the backend reports them.
    pub driver: String,
}

/// Liveness signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases by one per heartbeat of a connection; echoed in the [`Ack`].
    pub seq: u64,
}

/// Acknowledgement of a numbered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
}

/// Answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// How often the agent must send a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// The control plane's clock (unix milliseconds) when it answered, for skew checks.
    pub server_time_ms: u64,
}

/// What an agent is running, reported after each apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Sequence number, echoed in the [`Ack`].
    pub seq: u64,
    /// The desired-state generation the agent last applied (0: none yet).
    pub applied_generation: u64,
    /// Per-pipeline state.
    pub pipelines: Vec<PipelineStatus>,
    /// Why the last desired state or trust root was refused, if it was (a replayed generation,
    /// a bad signature, a trust root not signed by the current root).
    pub refused: Option<String>,
    /// What the operator should know before it becomes a failure (a trust root about to
    /// expire, or expired).
    pub warnings: Vec<String>,
}

/// The state of one pipeline on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub name: String,
    /// The revision the agent was asked for and works on.
    pub revision: u64,
    pub phase: PipelinePhase,
    /// Why, when the phase is [`PipelinePhase::Failed`].
    pub message: String,
    /// The revision answering requests (the old one until the new one is ready).
    pub serving: Option<u64>,
}

/// Lifecycle phase of a pipeline revision on an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipelinePhase {
    Fetching,
    Verifying,
    Loading,
    Ready,
    Failed,
}

impl std::fmt::Display for PipelinePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PipelinePhase::Fetching => "Fetching",
            PipelinePhase::Verifying => "Verifying",
            PipelinePhase::Loading => "Loading",
            PipelinePhase::Ready => "Ready",
            PipelinePhase::Failed => "Failed",
        })
    }
}

/// A desired state as the control plane signed it. The body is kept as bytes so the signature
/// covers exactly what was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDesiredState {
    /// Monotonic per agent; an agent refuses one lower than the last it applied.
    pub generation: u64,
    /// The encoded desired state.
    pub body: Vec<u8>,
    /// Ed25519 signature over `generation` and `body` by the control plane's online key
    /// (see [`crate::desired`]).
    pub signature: Vec<u8>,
}

/// First message on an artifact transfer stream (agent → control plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// SHA-256 of the artifact.
    pub digest: [u8; 32],
    /// Byte offset to resume from (the end of the last verified chunk).
    pub offset: u64,
}

/// First frame of the answer to a [`FetchRequest`] (control plane → agent). After `Sending`,
/// the stream carries the artifact's bytes from the requested offset to its end, raw, and
/// finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchResponse {
    /// `size - offset` bytes follow.
    Sending { size: u64 },
    /// The control plane has no complete artifact with this digest.
    NotFound,
    /// The request was bad (an offset past the end).
    Refused { reason: String },
}

/// First frame of every stream an agent opens besides its control stream: says what the
/// stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamOpen {
    /// An artifact transfer (see [`FetchRequest`]).
    Fetch(FetchRequest),
    /// Telemetry: then the agent sends [`crate::telemetry::TelemetryBatch`] frames in sequence
    /// order and the control plane answers [`TelemetryAck`] frames.
    Telemetry,
}

/// The control plane stored (or had already stored) every batch of this agent up to and
/// including `up_to`; the agent may delete them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryAck {
    pub up_to: u64,
}
