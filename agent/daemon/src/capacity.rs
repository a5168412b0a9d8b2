//! What the host offers: cores, memory, free disk, GPU adapters.
//!
//! GPU discovery runs in a child process (`tern-agent gpu-probe`): driver initialization can be
//! slow, leaves tens of megabytes mapped in the process that did it, and a broken driver can crash
//! it. The last result is cached in the data dir so that the hello need not wait for a new one.

use std::path::Path;
use std::time::Duration;

use sysinfo::{Disks, MemoryRefreshKind, RefreshKind, System};
use tern_proto::{Capacity, GpuAdapter};
use tracing::{debug, warn};

use crate::data_dir::AgentDataDir;

/// Longest a GPU probe may take.
pub const GPU_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Cores, memory and free disk under `data_dir`; GPUs as last discovered.
pub fn host_capacity(dir: &AgentDataDir) -> Capacity {
    let system = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    Capacity {
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: system.total_memory(),
        disk_free_bytes: free_disk(dir.root()),
        gpus: cached_gpus(dir),
    }
}

fn free_disk(path: &Path) -> u64 {
    disk_space(path).0
}

/// Free and total bytes of the disk holding `path` (the mount with the longest matching
/// prefix); zeros when none matches.
pub fn disk_space(path: &Path) -> (u64, u64) {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let disks = Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map_or((0, 0), |d| (d.available_space(), d.total_space()))
}

fn cached_gpus(dir: &AgentDataDir) -> Vec<GpuAdapter> {
    std::fs::read(dir.gpus())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Runs GPU discovery in a child process and caches the result. Returns `None` if the probe
/// failed (the reason is logged); an empty list means the host has no adapter.
pub async fn discover_gpus(dir: &AgentDataDir) -> Option<Vec<GpuAdapter>> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            warn!(error = %e, "cannot locate own executable for the GPU probe");
            return None;
        }
    };
    let child = tokio::process::Command::new(exe)
        .arg("gpu-probe")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(GPU_PROBE_TIMEOUT, child).await {
        Ok(Ok(out)) if out.status.success() => out,
        Ok(Ok(out)) => {
            warn!(status = %out.status, "GPU probe failed; reporting no GPUs");
            return None;
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot start the GPU probe");
            return None;
        }
        Err(_) => {
            warn!(timeout = ?GPU_PROBE_TIMEOUT, "GPU probe timed out");
            return None;
        }
    };
    let gpus: Vec<GpuAdapter> = match serde_json::from_slice(&output.stdout) {
        Ok(g) => g,
        Err(e) => {
            warn!(error = %e, "GPU probe printed invalid JSON");
            return None;
        }
    };
    debug!(count = gpus.len(), "GPU discovery finished");
    if let Ok(bytes) = serde_json::to_vec(&gpus)
        && let Err(e) = dir.write(&dir.gpus(), &bytes, false)
    {
        warn!(error = %e, "cannot cache GPU discovery");
    }
    Some(gpus)
}

/// The body of `tern-agent gpu-probe`: adapters as JSON on stdout.
pub fn gpu_probe_json() -> String {
    let gpus: Vec<GpuAdapter> = tern_infer::list_adapters()
        .into_iter()
        .map(|a| GpuAdapter {
            name: a.name,
            backend: a.backend,
            device_type: a.device_type,
            driver: a.driver,
        })
        .collect();
    serde_json::to_string(&gpus).expect("adapter summaries always serialize")
}
