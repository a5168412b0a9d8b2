//! The agent's own bounds on what a desired state may ask of it (`[limits]` in `agent.toml`,
//! set at `join`): whatever a manifest says, a plugin step gets no longer deadline and no more
//! memory than these, and a model may declare no larger tensor. A control plane that is
//! compromised, or an operator's typo, cannot take the host's memory.

use serde::{Deserialize, Serialize};
use tern_plugin_host::StepLimits;
use tracing::warn;

/// Default of [`AgentLimits::max_plugin_timeout_ms`].
pub const DEFAULT_MAX_PLUGIN_TIMEOUT_MS: u64 = 60_000;
/// Default of [`AgentLimits::max_plugin_memory_mib`].
pub const DEFAULT_MAX_PLUGIN_MEMORY_MIB: u64 = 1024;

/// Upper bounds on plugin and model limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentLimits {
    /// Longest deadline of one plugin call, in milliseconds (`timeoutMs` above it is clamped).
    #[serde(default = "default_timeout")]
    pub max_plugin_timeout_ms: u64,
    /// Most linear memory of one plugin instance, in MiB (`memoryMiB` above it is clamped).
    #[serde(default = "default_memory")]
    pub max_plugin_memory_mib: u64,
    /// Largest tensor a model may declare, in bytes; a model over it is refused at load.
    #[serde(default = "default_tensor")]
    pub max_tensor_bytes: u64,
    /// Bytes the data directory's filesystem keeps free: a download that would leave less is
    /// refused before a byte is written, so that the agent's own state and telemetry can
    /// always be written.
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk_bytes: u64,
}

/// Default of [`AgentLimits::min_free_disk_bytes`]: 32 MiB.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 32 << 20;

fn default_min_free_disk() -> u64 {
    DEFAULT_MIN_FREE_DISK_BYTES
}

fn default_timeout() -> u64 {
    DEFAULT_MAX_PLUGIN_TIMEOUT_MS
}

fn default_memory() -> u64 {
    DEFAULT_MAX_PLUGIN_MEMORY_MIB
}

fn default_tensor() -> u64 {
    tern_infer::DEFAULT_MAX_TENSOR_BYTES
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            max_plugin_timeout_ms: default_timeout(),
            max_plugin_memory_mib: default_memory(),
            max_tensor_bytes: default_tensor(),
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
        }
    }
}

impl AgentLimits {
    /// A plugin step's limits: the manifest's (defaults where absent), clamped to these bounds.
    pub fn step_limits(
        &self,
        step: &str,
        timeout_ms: Option<u64>,
        memory_mib: Option<u64>,
    ) -> StepLimits {
        let clamp = |what: &str, asked: Option<u64>, max: u64| match asked {
            Some(asked) if asked > max => {
                warn!(step, asked, max, "{what} over the agent's limit: clamped");
                Some(max)
            }
            other => other,
        };
        let timeout_ms = clamp("timeoutMs", timeout_ms, self.max_plugin_timeout_ms);
        let memory_mib = clamp("memoryMiB", memory_mib, self.max_plugin_memory_mib);
        let mut limits = StepLimits::from_manifest(timeout_ms, memory_mib);
        // The defaults are bounded too, should an operator set the maxima below them.
        let max_timeout = std::time::Duration::from_millis(self.max_plugin_timeout_ms);
        limits.timeout = limits.timeout.min(max_timeout);
        let max_memory = usize::try_from(self.max_plugin_memory_mib.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX);
        limits.memory_bytes = limits.memory_bytes.min(max_memory);
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_what_a_desired_state_asks_to_the_agents_maxima() {
        let limits = AgentLimits {
            max_plugin_timeout_ms: 500,
            max_plugin_memory_mib: 16,
            ..AgentLimits::default()
        };
        let asked = limits.step_limits("prep", Some(3_600_000), Some(1 << 20));
        assert_eq!(asked.timeout, std::time::Duration::from_millis(500));
        assert_eq!(asked.memory_bytes, 16 << 20);
        let within = limits.step_limits("prep", Some(100), Some(8));
        assert_eq!(within.timeout, std::time::Duration::from_millis(100));
        assert_eq!(within.memory_bytes, 8 << 20);
        // The plugin host's defaults (1 s, 64 MiB) are over these maxima: clamped as well.
        let defaults = limits.step_limits("prep", None, None);
        assert_eq!(defaults.timeout, std::time::Duration::from_millis(500));
        assert_eq!(defaults.memory_bytes, 16 << 20);
    }

    #[test]
    fn reads_kebab_case_with_defaults() {
        let limits: AgentLimits = toml::from_str("max-plugin-memory-mib = 32").expect("parse");
        assert_eq!(limits.max_plugin_memory_mib, 32);
        assert_eq!(limits.max_plugin_timeout_ms, DEFAULT_MAX_PLUGIN_TIMEOUT_MS);
        assert!(toml::from_str::<AgentLimits>("max-memory = 1").is_err());
    }
}
