//! The host's side of a batch: CPU over the interval, memory, disk, cache size and GPUs.

use std::path::{Path, PathBuf};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tern_proto::telemetry::{GpuStats, HostStats};

/// Bytes of the regular files under `dir`, recursively (0 if it cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Samples the host once per telemetry interval.
#[derive(Debug)]
pub struct HostSampler {
    system: System,
    data_dir: PathBuf,
    /// Directories whose size is the agent's cache (artifacts, compiled plugins).
    cache_dirs: Vec<PathBuf>,
    /// The GPU time this process had used at the previous sample.
    last_gpu_busy: std::time::Duration,
}

impl HostSampler {
    pub fn new(data_dir: &Path, cache_dirs: Vec<PathBuf>) -> Self {
        let mut system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        // CPU usage is measured between two refreshes: this is the first.
        system.refresh_cpu_usage();
        Self {
            system,
            data_dir: data_dir.to_owned(),
            cache_dirs,
            last_gpu_busy: std::time::Duration::ZERO,
        }
    }

    /// Each adapter (those the agent reported, and the one it runs on) with the GPU time the
    /// agent's work took on it since the previous sample, from timestamp queries around every
    /// model pass; `None` where the adapter cannot time work or the agent has not used it.
    fn gpus(&mut self, adapters: &[String]) -> Vec<GpuStats> {
        let mut gpus: Vec<GpuStats> = adapters
            .iter()
            .map(|adapter| GpuStats {
                adapter: adapter.clone(),
                busy_us: None,
            })
            .collect();
        if let Some((adapter, Some(total))) = tern_infer::gpu_busy() {
            let busy = total.saturating_sub(self.last_gpu_busy);
            self.last_gpu_busy = total;
            let index = match gpus.iter().position(|g| g.adapter == adapter) {
                Some(i) => i,
                None => {
                    gpus.push(GpuStats {
                        adapter,
                        busy_us: None,
                    });
                    gpus.len() - 1
                }
            };
            gpus[index].busy_us = Some(busy.as_micros() as u64);
        }
        gpus
    }

    /// The host now; CPU is the busy share since the previous sample, GPUs as [`Self::gpus`].
    pub fn sample(&mut self, adapters: &[String]) -> HostStats {
        let gpus = self.gpus(adapters);
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let (disk_free_bytes, disk_total_bytes) = crate::capacity::disk_space(&self.data_dir);
        HostStats {
            cpu_percent: self.system.global_cpu_usage().clamp(0.0, 100.0),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            disk_free_bytes,
            disk_total_bytes,
            cache_bytes: self.cache_dirs.iter().map(|d| dir_bytes(d)).sum(),
            buffered_bytes: 0,
            gpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_describe_this_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/x"), [0u8; 1000]).expect("write");
        std::fs::write(dir.path().join("a/y"), [0u8; 24]).expect("write");
        let mut sampler = HostSampler::new(dir.path(), vec![dir.path().join("a")]);
        let host = sampler.sample(&[]);
        assert_eq!(host.cache_bytes, 1024);
        assert!(host.memory_total_bytes > 0 && host.memory_used_bytes <= host.memory_total_bytes);
        assert!(host.disk_total_bytes >= host.disk_free_bytes && host.disk_total_bytes > 0);
        assert!((0.0..=100.0).contains(&host.cpu_percent));
    }
}
