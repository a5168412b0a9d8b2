//! Reading and building tensors.

use crate::{Dtype, Layout, StepError, Tensor};

fn element_size(dtype: Dtype) -> usize {
    match dtype {
        Dtype::Fp32 | Dtype::Int32 => 4,
        Dtype::Fp16 => 2,
        Dtype::Int64 => 8,
        Dtype::Uint8 | Dtype::Boolean => 1,
    }
}

impl Tensor {
    /// An `fp32` tensor.
    pub fn from_f32(name: &str, shape: impl Into<Vec<u64>>, data: &[f32]) -> Self {
        let data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            name: name.to_owned(),
            dtype: Dtype::Fp32,
            shape: shape.into(),
            data,
        }
    }

    /// An `int64` tensor.
    pub fn from_i64(name: &str, shape: impl Into<Vec<u64>>, data: &[i64]) -> Self {
        let data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            name: name.to_owned(),
            dtype: Dtype::Int64,
            shape: shape.into(),
            data,
        }
    }

    /// A `uint8` tensor.
    pub fn from_u8(name: &str, shape: impl Into<Vec<u64>>, data: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            dtype: Dtype::Uint8,
            shape: shape.into(),
            data,
        }
    }

    /// Number of elements the shape describes (`None` on overflow).
    pub fn element_count(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
    }

    /// Checks that `data` holds exactly the elements the shape and dtype describe.
    pub fn validate(&self) -> Result<(), StepError> {
        let expected = self
            .element_count()
            .and_then(|n| n.checked_mul(element_size(self.dtype)))
            .ok_or_else(|| {
                StepError::invalid_input(format!("tensor `{}`: shape too large", self.name))
            })?;
        if expected != self.data.len() {
            return Err(StepError::invalid_input(format!(
                "tensor `{}`: shape {:?} of {:?} needs {expected} bytes, data has {}",
                self.name,
                self.shape,
                self.dtype,
                self.data.len()
            )));
        }
        Ok(())
    }

    fn expect(&self, dtype: Dtype) -> Result<(), StepError> {
        if self.dtype != dtype {
            return Err(StepError::invalid_input(format!(
                "tensor `{}` is {:?}, expected {dtype:?}",
                self.name, self.dtype
            )));
        }
        self.validate()
    }

    /// The elements of an `fp32` tensor.
    pub fn to_f32(&self) -> Result<Vec<f32>, StepError> {
        self.expect(Dtype::Fp32)?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The elements of an `int64` tensor.
    pub fn to_i64(&self) -> Result<Vec<i64>, StepError> {
        self.expect(Dtype::Int64)?;
        Ok(self
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect())
    }

    /// The elements of a `uint8` tensor.
    pub fn as_u8(&self) -> Result<&[u8], StepError> {
        self.expect(Dtype::Uint8)?;
        Ok(&self.data)
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
        other => Err(StepError::unsupported(format!(
            "{operation} supports uint8 and fp32, not {other:?}"
        ))),
    }
}

fn kernel_error(e: tern_accel_cpu::AccelError) -> StepError {
    StepError::invalid_input(e.to_string())
}

#[cfg_attr(target_family = "wasm", allow(dead_code))]
pub(crate) fn cpu_resize(
    image: &Tensor,
    layout: Layout,
    height: u32,
    width: u32,
) -> Result<Tensor, StepError> {
    let element = element(image.dtype, "resize")?;
    let l = kernel_layout(layout);
    let (data, shape) = tern_accel_cpu::resize_bytes(
        element,
        &image.data,
        &image.shape,
        l,
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

#[cfg_attr(target_family = "wasm", allow(dead_code))]
pub(crate) fn cpu_normalize(
    image: &Tensor,
    layout: Layout,
    mean: &[f32],
    std: &[f32],
    out_layout: Layout,
) -> Result<Tensor, StepError> {
    let element = element(image.dtype, "normalize")?;
    let (l, out) = (kernel_layout(layout), kernel_layout(out_layout));
    let (data, shape) =
        tern_accel_cpu::normalize_bytes(element, &image.data, &image.shape, l, mean, std, out)
            .map_err(kernel_error)?;
    Ok(Tensor {
        name: image.name.clone(),
        dtype: Dtype::Fp32,
        shape,
        data,
    })
}
