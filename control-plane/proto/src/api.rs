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
