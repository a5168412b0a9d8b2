//! The `accel` interface as the host implements it. [`CpuAccel`] is the portable implementation;
//! [`GpuAccel`] runs the same kernels on the GPU through wgpu, falling back to the CPU if the GPU
//! fails; [`AutoAccel`] (the engine's default) picks the GPU on first use when there is an
//! adapter.

use std::sync::OnceLock;

use tern_infer::gpu::prep::{GpuPrep, PrepError};

use crate::bindings::tern::pipeline::types::ErrorKind;
use crate::{Dtype, Layout, StepError, Tensor};

/// Data-prep primitives offered to plugins.
pub trait Accel: Send + Sync + std::fmt::Debug {
    /// Bilinear resize of `uint8` or `fp32` images.
    fn resize(
        &self,
        image: &Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError>;

    /// Per-channel normalization into `fp32` with a layout change.
    fn normalize(
        &self,
        image: &Tensor,
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<Tensor, StepError>;
}

/// `accel` on the CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuAccel;

fn invalid(message: impl Into<String>) -> StepError {
    StepError {
        kind: ErrorKind::InvalidInput,
        message: message.into(),
    }
}

fn unsupported(message: impl Into<String>) -> StepError {
    StepError {
        kind: ErrorKind::Unsupported,
        message: message.into(),
    }
}

fn kernel_layout(layout: Layout) -> tern_accel_cpu::Layout {
    match layout {
        Layout::Nchw => tern_accel_cpu::Layout::Nchw,
        Layout::Nhwc => tern_accel_cpu::Layout::Nhwc,
    }
}

fn element(dtype: Dtype, operation: &str) -> Result<tern_accel_cpu::Element, StepError> {
    match dtype {
        Dtype::Uint8 => Ok(tern_accel_cpu::Element::U8),
        Dtype::Fp32 => Ok(tern_accel_cpu::Element::F32),
        other => Err(unsupported(format!(
            "{operation} supports uint8 and fp32, not {other:?}"
        ))),
    }
}

fn kernel_error(e: tern_accel_cpu::AccelError) -> StepError {
    invalid(e.to_string())
}

/// The result of a kernel run on the GPU, or on the CPU when the GPU itself failed (a bad
/// request fails the same way on both and is not retried).
fn gpu_or_cpu(
    gpu: Option<(&GpuPrep, &str)>,
    on_gpu: impl FnOnce(&GpuPrep) -> Result<(Vec<u8>, Vec<u64>), PrepError>,
    on_cpu: impl FnOnce() -> Result<(Vec<u8>, Vec<u64>), tern_accel_cpu::AccelError>,
) -> Result<(Vec<u8>, Vec<u64>), StepError> {
    if let Some((gpu, operation)) = gpu {
        match on_gpu(gpu) {
            Ok(result) => return Ok(result),
            Err(PrepError::Invalid(e)) => return Err(kernel_error(e)),
            Err(PrepError::Gpu(why)) => {
                tracing::warn!(operation, %why, "GPU accel failed; running on the CPU")
            }
        }
    }
    on_cpu().map_err(kernel_error)
}

/// `resize` on the GPU when one is given, else (or if it fails) on the CPU.
fn resize_on(
    gpu: Option<&GpuPrep>,
    image: &Tensor,
    layout: Layout,
    height: u32,
    width: u32,
) -> Result<Tensor, StepError> {
    let element = element(image.dtype, "resize")?;
    let (layout, h, w) = (kernel_layout(layout), height as usize, width as usize);
    let (data, shape) = gpu_or_cpu(
        gpu.map(|g| (g, "resize")),
        |g| g.resize_bytes(element, &image.data, &image.shape, layout, h, w),
        || tern_accel_cpu::resize_bytes(element, &image.data, &image.shape, layout, h, w),
    )?;
    Ok(Tensor {
        name: image.name.clone(),
        dtype: image.dtype,
        shape,
        data,
    })
}

/// `normalize` on the GPU when one is given, else (or if it fails) on the CPU.
fn normalize_on(
    gpu: Option<&GpuPrep>,
    image: &Tensor,
    layout: Layout,
    mean: &[f32],
    std: &[f32],
    out_layout: Layout,
) -> Result<Tensor, StepError> {
    let element = element(image.dtype, "normalize")?;
    let (layout, out_layout) = (kernel_layout(layout), kernel_layout(out_layout));
    let (data, shape) = gpu_or_cpu(
        gpu.map(|g| (g, "normalize")),
        |g| {
            g.normalize_bytes(
                element,
                &image.data,
                &image.shape,
                layout,
                mean,
                std,
                out_layout,
            )
        },
        || {
            tern_accel_cpu::normalize_bytes(
                element,
                &image.data,
                &image.shape,
                layout,
                mean,
                std,
                out_layout,
            )
        },
    )?;
    Ok(Tensor {
        name: image.name.clone(),
        dtype: Dtype::Fp32,
        shape,
        data,
    })
}

impl Accel for CpuAccel {
    fn resize(
        &self,
        image: &Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError> {
        resize_on(None, image, layout, height, width)
    }

    fn normalize(
        &self,
        image: &Tensor,
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<Tensor, StepError> {
        normalize_on(None, image, layout, mean, std, out_layout)
    }
}

/// `accel` on a GPU, with the CPU behind it when the GPU itself fails.
#[derive(Debug, Clone)]
pub struct GpuAccel {
    gpu: GpuPrep,
}

impl GpuAccel {
    /// The shared GPU of this process, if wgpu finds an adapter (`TERN_GPU=off` says no),
    /// software adapters included.
    pub fn detect() -> Option<GpuAccel> {
        let context = tern_infer::gpu::shared_context().ok()?;
        Some(GpuAccel {
            gpu: GpuPrep::new(context),
        })
    }

    /// Like [`GpuAccel::detect`], but only a hardware GPU: a software adapter is slower than the
    /// CPU kernels it would stand in for.
    pub fn detect_hardware() -> Option<GpuAccel> {
        Self::detect().filter(|g| !g.gpu.is_software())
    }

    pub fn adapter_name(&self) -> &str {
        self.gpu.adapter_name()
    }
}

impl Accel for GpuAccel {
    fn resize(
        &self,
        image: &Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError> {
        resize_on(Some(&self.gpu), image, layout, height, width)
    }

    fn normalize(
        &self,
        image: &Tensor,
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<Tensor, StepError> {
        normalize_on(Some(&self.gpu), image, layout, mean, std, out_layout)
    }
}

/// A hardware GPU when there is one, else the CPU; decided on the first call, so a host whose
/// plugins never call `accel` never starts a GPU driver.
#[derive(Debug, Default)]
pub struct AutoAccel {
    gpu: OnceLock<Option<GpuAccel>>,
}

impl AutoAccel {
    fn backend(&self) -> &dyn Accel {
        match self.gpu.get_or_init(|| {
            let gpu = GpuAccel::detect_hardware();
            match &gpu {
                Some(g) => tracing::info!(adapter = g.adapter_name(), "accel runs on the GPU"),
                None => tracing::info!("accel runs on the CPU (no hardware GPU adapter)"),
            }
            gpu
        }) {
            Some(gpu) => gpu,
            None => &CpuAccel,
        }
    }
}

impl Accel for AutoAccel {
    fn resize(
        &self,
        image: &Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError> {
        self.backend().resize(image, layout, height, width)
    }

    fn normalize(
        &self,
        image: &Tensor,
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<Tensor, StepError> {
        self.backend()
            .normalize(image, layout, mean, std, out_layout)
    }
}
