//! GPU adapter discovery.
//!
//! Initializing a GPU driver can take seconds, allocate tens of megabytes and, with a broken
//! driver, crash the process. Callers that must stay small and alive (the agent daemon) run
//! [`list_adapters`] in a child process and read [`AdapterSummary`] values as JSON.

use serde::{Deserialize, Serialize};

/// One adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterSummary {
    pub name: String,
    /// "vulkan", "metal" or "dx12".
    pub backend: String,
    /// "discrete-gpu", "integrated-gpu", "virtual-gpu", "cpu" or "other".
    pub device_type: String,
    /// Driver name and version as the backend reports them.
    pub driver: String,
}

/// Backends Tern runs compute on: native APIs only (no GL, no browser WebGPU).
pub fn compute_backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
}

/// Every adapter on the compute backends. `WGPU_BACKEND` can narrow them (never widen them).
pub fn list_adapters() -> Vec<AdapterSummary> {
    compute_adapters()
        .iter()
        .map(|a| summarize(&a.get_info()))
        .collect()
}

/// The adapters on our compute backends, as wgpu enumerates them.
pub(crate) fn compute_adapters() -> Vec<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = compute_backends();
    desc.flags = wgpu::InstanceFlags::empty();
    let mut desc = desc.with_env();
    desc.backends &= compute_backends();
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.enumerate_adapters(backends))
}

fn summarize(info: &wgpu::AdapterInfo) -> AdapterSummary {
    let device_type = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete-gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated-gpu",
        wgpu::DeviceType::VirtualGpu => "virtual-gpu",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    };
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    AdapterSummary {
        name: info.name.clone(),
        backend: info.backend.to_str().to_owned(),
        device_type: device_type.to_owned(),
        driver,
    }
}

#[cfg(test)]
mod tests {
    /// On CI a software Vulkan adapter is installed and `TERN_REQUIRE_GPU=1` is set, so discovery
    /// must find it; elsewhere an empty list is acceptable.
    #[test]
    fn finds_an_adapter_when_one_is_required() {
        let adapters = super::list_adapters();
        if std::env::var_os("TERN_REQUIRE_GPU").is_some_and(|v| v == "1") {
            assert!(
                !adapters.is_empty(),
                "TERN_REQUIRE_GPU=1 but wgpu found no adapter"
            );
        }
        for a in &adapters {
            assert!(!a.name.is_empty());
            assert!(
                ["vulkan", "metal", "dx12"].contains(&a.backend.as_str()),
                "{a:?}"
            );
        }
    }
}
