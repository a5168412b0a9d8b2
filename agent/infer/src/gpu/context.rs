//! The process-wide GPU device: one adapter, one device and queue, compiled pipelines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::adapters::compute_adapters;
use crate::error::InferError;
use crate::gpu::kernels::Kernel;

/// A device and queue shared by every model and by data prep in this process.
#[derive(Debug)]
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter_name: String,
    software: bool,
    pipelines: Mutex<HashMap<Kernel, Arc<wgpu::ComputePipeline>>>,
}

static SHARED: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();

/// The shared GPU context, created on first use. `TERN_GPU=off` disables the GPU.
pub fn shared_context() -> Result<Arc<GpuContext>, InferError> {
    SHARED
        .get_or_init(|| GpuContext::create().map(Arc::new))
        .clone()
        .map_err(InferError::NoGpu)
}

fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    fn create() -> Result<GpuContext, String> {
        if std::env::var("TERN_GPU").is_ok_and(|v| v == "off") {
            return Err("disabled by TERN_GPU=off".to_owned());
        }
        let mut adapters = compute_adapters();
        adapters.sort_by_key(|a| rank(a.get_info().device_type));
        let adapter = adapters
            .into_iter()
            .next()
            .ok_or_else(|| "wgpu found no adapter on Vulkan, Metal or DX12".to_owned())?;
        let info = adapter.get_info();
        let supported = adapter.limits();
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffer_binding_size = supported.max_storage_buffer_binding_size;
        limits.max_buffer_size = supported.max_buffer_size;
        limits.max_storage_buffers_per_shader_stage =
            supported.max_storage_buffers_per_shader_stage.min(8);
        limits.max_compute_workgroup_storage_size = supported.max_compute_workgroup_storage_size;
        limits.max_compute_invocations_per_workgroup = 256;
        limits.max_compute_workgroup_size_x = 256;
        limits.max_compute_workgroup_size_y = 256;
        limits.max_compute_workgroups_per_dimension =
            supported.max_compute_workgroups_per_dimension;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("tern"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| format!("{}: {e}", info.name))?;
        tracing::info!(adapter = %info.name, backend = ?info.backend, "GPU context ready");
        Ok(GpuContext {
            device,
            queue,
            adapter_name: info.name,
            software: info.device_type == wgpu::DeviceType::Cpu,
            pipelines: Mutex::new(HashMap::new()),
        })
    }

    pub fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    /// Whether the adapter is a software rasterizer on the CPU (lavapipe, SwiftShader, WARP):
    /// correct, and slower than running on the CPU directly, so `auto` never picks it.
    pub fn is_software(&self) -> bool {
        self.software
    }

    /// The largest buffer a binding may cover.
    pub(crate) fn max_binding_bytes(&self) -> u64 {
        self.device.limits().max_storage_buffer_binding_size
    }

    /// Waits for the queue and returns the contents of `buffers` (MAP_READ buffers that copies
    /// were just submitted into) as 32-bit words, unmapping them again.
    pub(crate) fn read_back(&self, buffers: &[&wgpu::Buffer]) -> Result<Vec<Vec<u32>>, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        for buffer in buffers {
            let tx = tx.clone();
            buffer.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
        }
        drop(tx);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the GPU: {e}"))?;
        for r in rx.iter() {
            r.map_err(|e| format!("reading results back: {e}"))?;
        }
        buffers
            .iter()
            .map(|buffer| {
                let words = {
                    let view = buffer
                        .get_mapped_range(..)
                        .map_err(|e| format!("reading results back: {e}"))?;
                    bytemuck::cast_slice::<u8, u32>(&view).to_vec()
                };
                buffer.unmap();
                Ok(words)
            })
            .collect()
    }

    /// The compiled pipeline of `kernel`, compiling it on first use.
    pub(crate) fn pipeline(&self, kernel: Kernel) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self
            .pipelines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry(kernel)
            .or_insert_with(|| {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.label()),
                        source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                    });
                Arc::new(
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(kernel.label()),
                            layout: None,
                            module: &module,
                            entry_point: Some("main"),
                            compilation_options: Default::default(),
                            cache: None,
                        }),
                )
            })
            .clone()
    }
}
