//! Per-step limits.

use std::time::Duration;

/// Deadline of one call when the manifest gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Linear memory of one instance when the manifest gives none.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// Most instances one step keeps warm between requests.
pub const DEFAULT_MAX_IDLE_INSTANCES: usize = 8;
/// Most instances one step runs at once; further requests wait for one.
pub const DEFAULT_MAX_INSTANCES: usize = 16;

/// What one step may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimits {
    /// Deadline of each `configure` and `process` call (`timeoutMs`).
    pub timeout: Duration,
    /// Linear memory per instance (`memoryMiB`).
    pub memory_bytes: usize,
    /// Instances kept between requests.
    pub max_idle_instances: usize,
    /// Instances alive at once (this bounds the step's memory at `max_instances × memory`);
    /// requests beyond it wait for an instance.
    pub max_instances: usize,
}

impl Default for StepLimits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            max_idle_instances: DEFAULT_MAX_IDLE_INSTANCES,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

impl StepLimits {
    /// Limits from a manifest's `timeoutMs` and `memoryMiB`, defaults where absent.
    pub fn from_manifest(timeout_ms: Option<u64>, memory_mib: Option<u64>) -> Self {
        let mut limits = Self::default();
        if let Some(ms) = timeout_ms {
            limits.timeout = Duration::from_millis(ms);
        }
        if let Some(mib) = memory_mib {
            limits.memory_bytes =
                usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        }
        limits
    }
}
