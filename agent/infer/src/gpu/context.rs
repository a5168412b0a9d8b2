//! The process-wide GPU device: one adapter, one device and queue, compiled pipelines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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
    /// Nanoseconds per timestamp tick, when the adapter can time compute passes.
    timestamp_period: Option<f32>,
    /// Time the GPU spent in timed passes since the context was created.
    busy_ns: AtomicU64,
}

/// The shared context's adapter and the time the GPU spent on this process's work so far
/// (`None` when the adapter cannot time its work); `None` when the GPU was never used.
pub fn gpu_busy() -> Option<(String, Option<Duration>)> {
    let context = SHARED.get()?.as_ref().ok()?;
    Some((context.adapter_name.clone(), context.busy()))
}

/// Timestamp queries around one compute pass: where they are written, resolved and read back.
#[derive(Debug)]
pub(crate) struct PassTimer {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    pub(crate) staging: wgpu::Buffer,
}

impl PassTimer {
    /// The pass's timestamp writes (start and end).
    pub(crate) fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// After the pass: resolves the two timestamps into the staging buffer.
    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.set, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.staging, 0, 16);
    }
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
        let timed = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let features = if timed {
            wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("tern"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| format!("{}: {e}", info.name))?;
        let timestamp_period = timed.then(|| queue.get_timestamp_period());
        tracing::info!(adapter = %info.name, backend = ?info.backend, timed, "GPU context ready");
        Ok(GpuContext {
            device,
            queue,
            adapter_name: info.name,
            software: info.device_type == wgpu::DeviceType::Cpu,
            pipelines: Mutex::new(HashMap::new()),
            timestamp_period,
            busy_ns: AtomicU64::new(0),
        })
    }

    /// Time the GPU spent in timed passes so far; `None` when the adapter cannot time them.
    pub fn busy(&self) -> Option<Duration> {
        self.timestamp_period
            .map(|_| Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)))
    }

    /// A timer for one compute pass at a time, when the adapter has timestamp queries.
    pub(crate) fn pass_timer(&self) -> Option<PassTimer> {
        self.timestamp_period?;
        let buffer = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pass timestamps"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(PassTimer {
            set: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolved: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            staging: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        })
    }

    /// Adds a timed pass from its read-back timestamps (four 32-bit words: start, end).
    pub(crate) fn add_busy(&self, words: &[u32]) {
        let (Some(period), [s0, s1, e0, e1, ..]) = (self.timestamp_period, words) else {
            return;
        };
        let start = u64::from(*s0) | (u64::from(*s1) << 32);
        let end = u64::from(*e0) | (u64::from(*e1) << 32);
        let ns = (end.saturating_sub(start) as f64 * f64::from(period)) as u64;
        // A pass longer than a minute is a counter that wrapped or reset, not work.
        if ns < 60_000_000_000 {
            self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        }
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
