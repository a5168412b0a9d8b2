//! JSON bodies of the control plane's HTTPS APIs: the admin API (`ternctl`) and enrollment
//! (`tern-agent join`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::message::Capacity;

/// Whether an agent is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatus {
    /// Connected, and a heartbeat arrived within the control plane's `not_ready_after`.
    Ready,
    /// Disconnected, or silent for longer than `not_ready_after`.
    NotReady,
}

impl std::fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentStatus::Ready => "Ready",
            AgentStatus::NotReady => "NotReady",
        })
    }
}

/// An agent as the admin API and `ternctl get agents -o json` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub status: AgentStatus,
    /// RFC 3339, UTC.
    pub first_seen: String,
    /// RFC 3339, UTC: the last hello or heartbeat.
    pub last_seen: String,
    /// The agent's software version.
    pub version: String,
    /// GPU adapter names, as wgpu enumerated them on the agent.
    pub gpus: Vec<String>,
    pub capacity: Capacity,
    /// Address the agent's current or last connection came from.
    pub address: Option<String>,
    /// The generation of the desired state it was last given, and the one it last applied.
    #[serde(default)]
    pub desired_generation: Option<u64>,
    #[serde(default)]
    pub applied_generation: Option<u64>,
    /// Each pipeline it should run or reports running.
    #[serde(default)]
    pub pipelines: Vec<AgentPipelineView>,
    /// Why the agent refused the last desired state or trust root, if it did.
    #[serde(default)]
    pub refused: Option<String>,
    /// RFC 3339: when its certificate expires (absent for certificates issued before expiry
    /// was tracked).
    #[serde(default)]
    pub certificate_expires: Option<String>,
    /// RFC 3339: when it was revoked.
    #[serde(default)]
    pub revoked: Option<String>,
    /// What the operator must do about its identity, if anything (revoked, or expired: it
    /// needs a new token).
    #[serde(default)]
    pub identity_problem: Option<String>,
    /// What the agent warns about (its trust root expires soon, or expired).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// An enrollment token not redeemed yet (`GET /v1/tokens`); the secret is never shown again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub expires: String,
    pub expired: bool,
}

/// `GET /v1/replicas`: one replica of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub name: String,
    /// Where agents reach it (`host:port`; empty when it listens on every interface and has
    /// no `advertise_agents`).
    pub agents_address: String,
    pub api_address: String,
    /// Whether it holds the work lease (rollouts, drift, compaction, exports).
    pub leader: bool,
    /// The lease's epoch, on the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub agents_connected: u64,
    /// `Ready` while it renews its record, `Lost` once it stopped for three lease lifetimes.
    pub status: String,
    /// How long ago it last renewed its record, in milliseconds.
    pub lag_ms: u64,
    /// RFC 3339.
    pub started: String,
    pub version: String,
}

/// `POST /v1/agents/{name}/labels`: kubectl's `k=v` (set) and `k-` (remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRequest {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    /// Without it, changing the value of a label the agent has is refused (kubectl's
    /// `--overwrite`).
    #[serde(default)]
    pub overwrite: bool,
}

/// One pipeline on one agent: what it should run and what it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPipelineView {
    pub name: String,
    /// The revision its desired state holds.
    pub desired: Option<u64>,
    /// The revision answering requests.
    pub serving: Option<u64>,
    /// Its phase on the revision it works on.
    pub phase: Option<String>,
    pub message: String,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Labels every agent enrolled with the token receives.
    pub labels: BTreeMap<String, String>,
    /// Seconds until the token expires.
    pub ttl_seconds: u64,
}

/// Answer to [`TokenRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The text form of the token; shown once, never stored by the control plane.
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/enroll`, on the control plane's agent address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub name: String,
    /// Labels the agent asks for; the token's labels win where both name a key.
    pub labels: BTreeMap<String, String>,
    /// PKCS#10 request for the agent's key, PEM. The private key never leaves the agent.
    pub csr_pem: String,
}

/// Answer to [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub agent_id: String,
    /// The agent's client certificate, PEM.
    pub certificate_pem: String,
    /// The control plane's CA certificate, PEM (its hash matches the token's).
    pub ca_certificate_pem: String,
    /// Labels as recorded (the token's merged with the requested ones).
    pub labels: BTreeMap<String, String>,
    /// The control plane's online key, which signs desired states.
    #[serde(default)]
    pub online_key: Option<crate::signing::PublicKey>,
    /// The trust root the control plane pins, if any (trust on first use unless the agent
    /// was given one out of band).
    #[serde(default)]
    pub trust_root: Option<crate::trust::SignedTrustRoot>,
    /// Where agents reach every replica of the control plane (`host:port`), for failing over;
    /// empty for a control plane alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

/// Error body of every API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `ternctl.toml`: how `ternctl` reaches and authenticates to one control plane. Written by
/// `tern-control-plane init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// `host:port` of the admin API.
    pub api: String,
    /// The admin credential (a bearer token).
    pub admin_token: String,
    /// The control plane's CA certificate, PEM: the only root `ternctl` trusts.
    pub ca_certificate: String,
}

/// A release as the admin API and `ternctl get releases` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseView {
    pub name: String,
    pub kind: crate::release::ArtifactKind,
    pub version: u64,
    pub digest: crate::release::Digest,
    pub size: u64,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339, when the release expires.
    pub expires: Option<String>,
    /// Key ids of the signatures (not verified by this view).
    pub signers: Vec<String>,
    /// Bytes of the artifact the control plane holds.
    pub uploaded: u64,
    /// Whether the whole artifact is there and matched the digest.
    pub complete: bool,
}

/// Answer to an artifact upload: how far the control plane got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadProgress {
    /// Bytes received and kept; the next chunk starts here.
    pub received: u64,
    pub size: u64,
    pub complete: bool,
}

/// `POST /v1/apply`: resources of one manifest file, validated by `ternctl` and again here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The file they came from, for error messages.
    pub file: String,
    pub resources: Vec<crate::manifest::Resource>,
    /// The name of each resource's document in errors (`file#2`); `file` when absent.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Only compute the changes (`ternctl diff`).
    #[serde(default)]
    pub dry_run: bool,
}

/// What applying (or deleting) did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl std::fmt::Display for ChangeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeAction::Created => "created",
            ChangeAction::Configured => "configured",
            ChangeAction::Unchanged => "unchanged",
            ChangeAction::Deleted => "deleted",
        })
    }
}

/// One resource's change, with its state before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub kind: String,
    pub name: String,
    pub action: ChangeAction,
    /// The pipeline revision this apply made or kept (pipelines only).
    pub revision: Option<u64>,
    pub before: Option<crate::manifest::Resource>,
    pub after: Option<crate::manifest::Resource>,
}

/// `POST /v1/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// `(kind, name)` of each resource.
    pub resources: Vec<(String, String)>,
}

/// One step of a pipeline revision with the release it is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedStep {
    pub step: String,
    pub kind: crate::release::ArtifactKind,
    /// `name:version` as the manifest gave it.
    pub reference: String,
    /// The release's digest when the revision was made.
    pub digest: crate::release::Digest,
}

/// A pipeline as `ternctl get pipelines` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineView {
    pub name: String,
    /// `metadata.labels` of the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` of the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The latest revision.
    pub revision: u64,
    pub steps: Vec<PinnedStep>,
    /// RFC 3339, when the latest revision was applied.
    pub updated: String,
    /// Deployments that run it.
    pub deployments: Vec<String>,
}

/// A deployment's rollout, as `ternctl rollout status` and `get deployments` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Progressing, Paused, Complete, RolledBack or Failed.
    pub phase: String,
    /// Why, when rolled back or failed.
    pub reason: Option<String>,
    pub target_revision: u64,
    pub previous_revision: Option<u64>,
    /// 1-based wave number, and how many waves there are.
    pub wave: usize,
    pub waves: usize,
    /// RFC 3339.
    pub started: String,
    /// Recent transitions, oldest first: RFC 3339 time and a sentence.
    pub history: Vec<(String, String)>,
    /// Each selected agent: what it should run and what it reports.
    pub agents: Vec<RolloutAgentView>,
}

/// One selected agent in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutAgentView {
    pub name: String,
    pub connected: bool,
    /// The revision the rollout assigns it.
    pub desired: Option<u64>,
    /// The revision it answers requests with.
    pub serving: Option<u64>,
    /// Its phase on the revision it works on (Fetching, Ready, Failed, ...).
    pub phase: Option<String>,
    pub message: String,
    /// Its unclean exits (crashes, OOM kills) while it served the target revision, as it
    /// reported them within its window.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exits: u32,
    /// The last one's reason, where the system gave one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exit_reason: String,
    /// Offline past the rollout's grace: left out of the wave's health, never counted healthy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left_out: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A deployment as `ternctl get deployments` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub name: String,
    /// `metadata.labels` of the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` of the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub pipeline: String,
    pub selector: crate::manifest::LabelSelector,
    /// all-at-once or canary.
    pub strategy: String,
    /// RFC 3339.
    pub updated: String,
    pub rollout: Option<RolloutView>,
}

/// One pipeline in `ternctl top pipelines` (`GET /v1/top/pipelines`): totals over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineTop {
    pub pipeline: String,
    /// The pipeline's current revision (0 when it was deleted since).
    pub revision: u64,
    /// Start of the window (unix milliseconds) and its length in seconds.
    pub since_ms: u64,
    pub window_seconds: f64,
    pub requests: u64,
    /// Failed requests, bad input excluded.
    pub errors: u64,
    /// Failed requests by kind, bad input included.
    pub errors_by_kind: BTreeMap<String, u64>,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// 99th percentile of the wait for a worker.
    pub queue_p99_ms: f64,
    pub steps: Vec<StepTop>,
}

/// One step in [`PipelineTop`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTop {
    pub step: String,
    /// `plugin` or `model`.
    pub kind: String,
    /// Where a model step ran (`cpu` or the GPU adapter); empty for plugins.
    pub device: String,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Largest linear memory of the plugin's instances in the window.
    pub memory_peak_bytes: u64,
    /// Custom counters the plugin reported.
    pub counters: BTreeMap<String, u64>,
}

/// One agent in `ternctl top agents` (`GET /v1/top/agents`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTop {
    pub name: String,
    pub status: AgentStatus,
    pub labels: BTreeMap<String, String>,
    /// When its latest telemetry interval ended (0: none yet).
    pub reported_ms: u64,
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    pub cache_bytes: u64,
    pub gpus: Vec<String>,
    /// GPU busy share of the latest interval, percent, per adapter that can time its work.
    pub gpu_busy_percent: Vec<Option<f32>>,
    /// Requests over the last minutes of telemetry, per second, and their failures.
    pub rps: f64,
    pub errors: u64,
    pub p99_ms: f64,
    /// Telemetry the agent holds for lack of a connection, and what it dropped for its cap.
    pub buffered_bytes: u64,
    pub dropped_batches: u64,
    /// Batches the control plane stored, and the highest sequence number.
    pub batches: u64,
    pub last_seq: u64,
}

/// `POST /v1/baselines`: stores a drift baseline as the next version of `name`, given
/// (`baseline`, built by `ternctl` from a sample file) or built by the control plane from what
/// the agents running `pipeline` saw over the last `window_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineCreate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::drift::Baseline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    /// Bins per feature when the control plane builds it (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<usize>,
}

/// A stored baseline (`GET /v1/baselines`, and the answer to `POST /v1/baselines`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineView {
    pub name: String,
    pub version: u64,
    pub features: usize,
    pub created_ms: u64,
    /// Where it came from: `file` or `pipeline NAME, last Ns`.
    pub source: String,
    /// The baseline itself (only in the answer to a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::drift::Baseline>,
}

/// A drift alert (`GET /v1/alerts`): one feature of one pipeline, on one agent or fleet-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    pub pipeline: String,
    pub revision: u64,
    /// `fleet`, or the agent's name.
    pub scope: String,
    pub feature: String,
    /// The latest PSI, and the threshold it crossed.
    pub psi: f64,
    pub threshold: f64,
    /// `firing` or `resolved`.
    pub state: String,
    pub since_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
}

/// Drift of one monitored pipeline (`GET /v1/drift/{pipeline}`), over the control plane's
/// drift window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineDrift {
    pub pipeline: String,
    pub revision: u64,
    /// `name:version`, `inline`, or `None` when the pipeline has no baseline yet.
    pub baseline: Option<String>,
    pub alert_psi: f64,
    pub window_seconds: u64,
    pub features: Vec<FeatureDrift>,
}

/// One feature in [`PipelineDrift`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub feature: String,
    /// Values seen fleet-wide in the window, and their mean.
    pub count: u64,
    pub mean: Option<f64>,
    /// Fleet-wide PSI (`None` without a baseline or with too few values).
    pub psi: Option<f64>,
    /// PSI per agent name (agents with enough values).
    pub agents: BTreeMap<String, f64>,
    /// The baseline's bin edges and fractions, and the fleet's fractions in the same bins.
    pub edges: Vec<f32>,
    pub expected: Vec<f64>,
    pub observed: Vec<f64>,
}

/// An A/B experiment (`GET /v1/experiments/{deployment}`): each variant over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentView {
    pub deployment: String,
    pub pipeline: String,
    pub revision: u64,
    pub since_ms: u64,
    pub window_seconds: f64,
    pub variants: Vec<VariantView>,
}

/// One variant in [`ExperimentView`]; the first is the control the others are compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantView {
    /// The model release (`name:version`).
    pub variant: String,
    /// Percent of requests it should get, and percent it got.
    pub weight: u32,
    pub share: f64,
    pub requests: u64,
    /// Failed requests (bad input excluded) and their share of its requests.
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The model's outputs: per feature, the mean, and the PSI of this variant's distribution
    /// against the control's.
    pub outputs: Vec<OutputView>,
}

/// One output feature of a variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputView {
    pub feature: String,
    pub count: u64,
    pub mean: Option<f64>,
    pub psi_vs_control: Option<f64>,
}

/// A pipeline's traffic over time (`GET /v1/series/pipelines/{name}`), for charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSeries {
    pub pipeline: String,
    pub step_seconds: u64,
    /// Oldest first; steps without traffic are left out.
    pub points: Vec<SeriesPoint>,
}

/// One step of a [`PipelineSeries`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Start of the step, unix milliseconds.
    pub t_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}
