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

fn f32s(t: &Tensor) -> Result<Vec<f32>, StepError> {
    if !t.data.len().is_multiple_of(4) {
        return Err(invalid(format!(
            "tensor `{}`: fp32 data length is not a multiple of 4",
            t.name
        )));
    }
    Ok(t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn f32_tensor(name: &str, shape: Vec<u64>, data: &[f32]) -> Tensor {
    Tensor {
        name: name.to_owned(),
        dtype: Dtype::Fp32,
        shape,
        data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
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
        let l = kernel_layout(layout);
        let (h, w) = (height as usize, width as usize);
        match image.dtype {
            Dtype::Uint8 => {
                let (data, dims) = tern_accel_cpu::resize(&image.data, &image.shape, l, h, w)
                    .map_err(kernel_error)?;
                Ok(Tensor {
                    name: image.name.clone(),
                    dtype: Dtype::Uint8,
                    shape: dims.shape(l),
                    data,
                })
            }
            Dtype::Fp32 => {
                let (data, dims) = tern_accel_cpu::resize(&f32s(image)?, &image.shape, l, h, w)
                    .map_err(kernel_error)?;
                Ok(f32_tensor(&image.name, dims.shape(l), &data))
            }
            other => Err(unsupported(format!(
                "resize supports uint8 and fp32, not {other:?}"
            ))),
        }
    }

    fn normalize(
        &self,
        image: &Tensor,
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        out_layout: Layout,
    ) -> Result<Tensor, StepError> {
        let (l, out) = (kernel_layout(layout), kernel_layout(out_layout));
        let (data, dims) = match image.dtype {
            Dtype::Uint8 => {
                tern_accel_cpu::normalize(&image.data, &image.shape, l, 1.0 / 255.0, mean, std, out)
            }
            Dtype::Fp32 => {
                tern_accel_cpu::normalize(&f32s(image)?, &image.shape, l, 1.0, mean, std, out)
            }
            other => {
                return Err(unsupported(format!(
                    "normalize supports uint8 and fp32, not {other:?}"
                )));
            }
        }
        .map_err(kernel_error)?;
        Ok(f32_tensor(&image.name, dims.shape(out), &data))
    }
}
