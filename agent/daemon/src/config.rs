//! The agent's settings, as `agent.toml` keeps them: where its control plane is, who it is,
//! where the local API listens and its bounds, telemetry, and the limits it puts on plugins and
//! models. Written at enrollment (`join`), read at every start.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default address of the local API.
pub const DEFAULT_LISTEN_API: &str = "127.0.0.1:7480";

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `host:port` of the control plane (a name may resolve to several replicas).
    pub control_plane: String,
    /// Other replicas of the control plane (`host:port`), tried in turn when the one in use is
    /// unreachable; learned at enrollment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// Identity assigned by the control plane.
    pub agent_id: String,
    pub name: String,
    /// Labels recorded at enrollment.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the local API listens: `HOST:PORT` or `unix:PATH`.
    pub listen_api: crate::local_api::address::ApiAddress,
    /// Where the local API's gRPC form listens (`HOST:PORT` or `unix:PATH`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_grpc: Option<crate::local_api::address::ApiAddress>,
    /// Bounds on the local API's connections.
    #[serde(default)]
    pub api: crate::local_api::connections::ApiLimits,
    /// Telemetry interval and buffer.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The agent's bounds on plugin and model limits.
    #[serde(default)]
    pub limits: crate::limits::AgentLimits,
    /// When a revision under which the agent keeps dying is put aside (`[exits]`).
    #[serde(default, skip_serializing_if = "is_default_exits")]
    pub exits: crate::exits::ExitPolicy,
}

fn is_default_exits(policy: &crate::exits::ExitPolicy) -> bool {
    *policy == crate::exits::ExitPolicy::default()
}

/// Telemetry settings in `agent.toml` (`[telemetry]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TelemetryConfig {
    /// Length of one batch's interval, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Most bytes of batches kept while the control plane is unreachable; beyond it the oldest
    /// are dropped (and counted).
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: u64,
}

fn default_interval_ms() -> u64 {
    10_000
}

fn default_buffer_bytes() -> u64 {
    crate::telemetry::buffer::DEFAULT_BUFFER_BYTES
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_interval_ms(),
            buffer_bytes: default_buffer_bytes(),
        }
    }
}
