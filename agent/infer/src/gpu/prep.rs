//! Data-prep kernels for plugins' `accel` interface on the GPU: bilinear resize and normalize
//! with a layout change. Requests are checked exactly as the CPU implementation
//! (`tern-accel-cpu`) checks them, and the arithmetic follows it step for step, so a plugin sees
//! the same answers on either (uint8 results may differ by one where a value lies on .5).

use std::sync::Arc;

use tern_accel_cpu::{AccelError, Element, Layout, axis_scale, normalize_dims, resize_dims};
use wgpu::util::DeviceExt;

use crate::gpu::context::GpuContext;
use crate::gpu::kernels::{Kernel, grid_1d};

/// Why a GPU prep call failed: a bad request (the same errors as the CPU), or the GPU itself.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    #[error("{0}")]
    Invalid(#[from] AccelError),
    #[error("GPU: {0}")]
    Gpu(String),
}

/// Resize and normalize on one GPU.
#[derive(Debug, Clone)]
pub struct GpuPrep {
    context: Arc<GpuContext>,
}

fn layout_code(layout: Layout) -> u32 {
    match layout {
        Layout::Nchw => 0,
        Layout::Nhwc => 1,
    }
}

/// Image bytes as 32-bit words: f32 values as they are, uint8 values packed four to a word.
fn words(element: Element, data: &[u8]) -> Result<Vec<u32>, AccelError> {
    match element {
        Element::F32 => {
            if !data.len().is_multiple_of(4) {
                return Err(AccelError::Size(format!(
                    "fp32 data of {} bytes is not a multiple of 4",
                    data.len()
                )));
            }
            Ok(bytemuck::pod_collect_to_vec(data))
        }
        Element::U8 => Ok(data
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect()),
    }
}

fn element_values(element: Element, data: &[u8]) -> usize {
    match element {
        Element::F32 => data.len() / 4,
        Element::U8 => data.len(),
    }
}

impl GpuPrep {
    pub fn new(context: Arc<GpuContext>) -> GpuPrep {
        GpuPrep { context }
    }

    pub fn adapter_name(&self) -> &str {
        self.context.adapter_name()
    }

    /// Whether the adapter is a software rasterizer (see [`GpuContext::is_software`]).
    pub fn is_software(&self) -> bool {
        self.context.is_software()
    }

    /// Bilinear resize; same contract as `tern_accel_cpu::resize_bytes`.
    pub fn resize_bytes(
        &self,
        element: Element,
        data: &[u8],
        shape: &[u64],
        layout: Layout,
        out_h: usize,
        out_w: usize,
    ) -> Result<(Vec<u8>, Vec<u64>), PrepError> {
        let src = words(element, data)?;
        let (dims, out) = resize_dims(shape, layout, element_values(element, data), out_h, out_w)?;
        let n = out.element_count()?;
        let u8_out = element == Element::U8;
        let out_words = if u8_out { n.div_ceil(4) } else { n };
        let params = [
            n as u32,
            u32::from(u8_out),
            layout_code(layout),
            dims.n as u32,
            dims.c as u32,
            dims.h as u32,
            dims.w as u32,
            out_h as u32,
            out_w as u32,
            axis_scale(dims.h, out_h).to_bits(),
            axis_scale(dims.w, out_w).to_bits(),
        ];
        let result = self.dispatch(Kernel::PrepResize, &params, &[&src], out_words)?;
        let bytes: Vec<u8> = if u8_out {
            let mut b: Vec<u8> = bytemuck::cast_slice(&result).to_vec();
            b.truncate(n);
            b
        } else {
            bytemuck::cast_slice(&result).to_vec()
        };
        Ok((bytes, out.shape(layout)))
    }

    /// Per-channel normalization into f32; same contract as `tern_accel_cpu::normalize_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub fn normalize_bytes(
        &self,
        element: Element,
        data: &[u8],
        shape: &[u64],
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<(Vec<u8>, Vec<u64>), PrepError> {
        let src = words(element, data)?;
        let (dims, inv) = normalize_dims(shape, layout, element_values(element, data), mean, std)?;
        let n = dims.element_count()?;
        let scale: f32 = if element == Element::U8 {
            1.0 / 255.0
        } else {
            1.0
        };
        let params = [
            n as u32,
            u32::from(element == Element::U8),
            layout_code(layout),
            layout_code(out_layout),
            dims.n as u32,
            dims.c as u32,
            dims.h as u32,
            dims.w as u32,
            scale.to_bits(),
        ];
        let stats: Vec<u32> = mean.iter().chain(&inv).map(|v| v.to_bits()).collect();
        let result = self.dispatch(Kernel::PrepNormalize, &params, &[&src, &stats], n)?;
        Ok((
            bytemuck::cast_slice(&result).to_vec(),
            dims.shape(out_layout),
        ))
    }

    /// One dispatch of `kernel` over `out_words` outputs (one per invocation for f32 results,
    /// four packed bytes per invocation for uint8 ones).
    fn dispatch(
        &self,
        kernel: Kernel,
        params: &[u32],
        inputs: &[&[u32]],
        out_words: usize,
    ) -> Result<Vec<u32>, PrepError> {
        let ctx = &self.context;
        let device = &ctx.device;
        let limit = ctx.max_binding_bytes();
        let too_big = |words: usize| (words.max(1) as u64) * 4 > limit;
        if too_big(out_words) || inputs.iter().any(|i| too_big(i.len())) {
            return Err(PrepError::Gpu(format!(
                "image over the binding limit of {limit} bytes"
            )));
        }
        let storage = |contents: &[u32], usage| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(kernel.label()),
                contents: bytemuck::cast_slice(if contents.is_empty() {
                    &[0u32]
                } else {
                    contents
                }),
                usage,
            })
        };
        let params_buf = storage(params, wgpu::BufferUsages::STORAGE);
        let input_bufs: Vec<wgpu::Buffer> = inputs
            .iter()
            .map(|i| storage(i, wgpu::BufferUsages::STORAGE))
            .collect();
        let bytes = (out_words.max(1) * 4) as u64;
        let out = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("prep output"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("prep readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let pipeline = ctx.pipeline(kernel);
        let layout = pipeline.get_bind_group_layout(0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params_buf.as_entire_binding(),
        }];
        for (i, b) in input_bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        entries.push(wgpu::BindGroupEntry {
            binding: input_bufs.len() as u32 + 1,
            resource: out.as_entire_binding(),
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.label()),
            layout: &layout,
            entries: &entries,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("prep"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("prep"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            let (x, y, z) = grid_1d(out_words);
            pass.dispatch_workgroups(x, y, z);
        }
        encoder.copy_buffer_to_buffer(&out, 0, &readback, 0, bytes);
        ctx.queue.submit([encoder.finish()]);
        ctx.read_back(&[&readback])
            .map_err(PrepError::Gpu)?
            .pop()
            .ok_or_else(|| PrepError::Gpu("no result".into()))
    }
}
