//! The `accel` interface as the host implements it. [`CpuAccel`] is the portable implementation;
//! a GPU one plugs in through the same trait.

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

impl Accel for CpuAccel {
    fn resize(
        &self,
        image: &Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError> {
        let element = element(image.dtype, "resize")?;
        let (data, shape) = tern_accel_cpu::resize_bytes(
            element,
            &image.data,
            &image.shape,
            kernel_layout(layout),
            height as usize,
            width as usize,
        )
        .map_err(kernel_error)?;
        Ok(Tensor {
            name: image.name.clone(),
            dtype: image.dtype,
            shape,
            data,
        })
    }

    fn normalize(
        &self,
        image: &Tensor,
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<Tensor, StepError> {
        let element = element(image.dtype, "normalize")?;
        let (data, shape) = tern_accel_cpu::normalize_bytes(
            element,
            &image.data,
            &image.shape,
            kernel_layout(layout),
            mean,
            std,
            kernel_layout(out_layout),
        )
        .map_err(kernel_error)?;
        Ok(Tensor {
            name: image.name.clone(),
            dtype: Dtype::Fp32,
            shape,
            data,
        })
    }
}
