//! Tensors as they cross the inference API: a name, a dtype, a shape and row-major little-endian
//! bytes (the layout of the plugin contract and of `.npy` files).

use std::fmt;

use tract_onnx::prelude::{DatumType, Tensor as TractTensor};

use crate::error::InferError;

/// Element types the API accepts and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The ONNX / NumPy style name (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }

    pub(crate) fn from_tract(dt: DatumType) -> Option<DType> {
        Some(match dt {
            DatumType::F32 => DType::F32,
            DatumType::F16 => DType::F16,
            DatumType::F64 => DType::F64,
            DatumType::I8 => DType::I8,
            DatumType::I16 => DType::I16,
            DatumType::I32 => DType::I32,
            DatumType::I64 => DType::I64,
            DatumType::U8 => DType::U8,
            DatumType::U16 => DType::U16,
            DatumType::U32 => DType::U32,
            DatumType::U64 => DType::U64,
            DatumType::Bool => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One named tensor: row-major, little-endian bytes.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Tensor {
    /// An `f32` tensor from values.
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Number of elements the shape describes, if it does not overflow.
    pub fn element_count(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Checks that the data length matches the shape and dtype.
    pub fn check(&self) -> Result<(), InferError> {
        let expected = self
            .element_count()
            .and_then(|n| n.checked_mul(self.dtype.size()));
        match expected {
            Some(n) if n == self.data.len() => Ok(()),
            _ => Err(InferError::BadInput {
                name: self.name.clone(),
                reason: format!(
                    "shape {:?} of {} needs {} bytes, got {}",
                    self.shape,
                    self.dtype,
                    expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                    self.data.len()
                ),
            }),
        }
    }

    /// The values as `f32`, converting from any numeric dtype (for comparisons and reports).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let d = &self.data;
        macro_rules! conv {
            ($t:ty, $n:expr) => {
                d.chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as f64)
                    .collect()
            };
        }
        match self.dtype {
            DType::F32 => conv!(f32, 4),
            DType::F64 => conv!(f64, 8),
            DType::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            DType::I8 => d.iter().map(|&b| b as i8 as f64).collect(),
            DType::U8 => d.iter().map(|&b| b as f64).collect(),
            DType::Bool => d.iter().map(|&b| f64::from(u8::from(b != 0))).collect(),
            DType::I16 => conv!(i16, 2),
            DType::U16 => conv!(u16, 2),
            DType::I32 => conv!(i32, 4),
            DType::U32 => conv!(u32, 4),
            DType::I64 => conv!(i64, 8),
            DType::U64 => conv!(u64, 8),
        }
    }

    /// Converts to a tract tensor (copies).
    pub(crate) fn to_tract(&self) -> Result<TractTensor, InferError> {
        self.check()?;
        let bad = |e: tract_onnx::prelude::TractError| InferError::BadInput {
            name: self.name.clone(),
            reason: e.to_string(),
        };
        let d = &self.data;
        macro_rules! make {
            ($t:ty, $n:expr) => {{
                let values: Vec<$t> = d
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])))
                    .collect();
                TractTensor::from_shape::<$t>(&self.shape, &values).map_err(bad)
            }};
        }
        match self.dtype {
            DType::F32 => make!(f32, 4),
            DType::F64 => make!(f64, 8),
            DType::F16 => make!(half::f16, 2),
            DType::I8 => make!(i8, 1),
            DType::U8 => make!(u8, 1),
            DType::I16 => make!(i16, 2),
            DType::U16 => make!(u16, 2),
            DType::I32 => make!(i32, 4),
            DType::U32 => make!(u32, 4),
            DType::I64 => make!(i64, 8),
            DType::U64 => make!(u64, 8),
            DType::Bool => {
                let values: Vec<bool> = d.iter().map(|&b| b != 0).collect();
                TractTensor::from_shape::<bool>(&self.shape, &values).map_err(bad)
            }
        }
    }

    /// Converts from a tract tensor (copies).
    pub(crate) fn from_tract(name: &str, t: &TractTensor) -> Result<Tensor, InferError> {
        let dtype = DType::from_tract(t.datum_type()).ok_or_else(|| InferError::Unsupported {
            what: format!("output `{name}` has dtype {:?}", t.datum_type()),
        })?;
        let plain = t
            .try_as_plain_ram()
            .map_err(|e| InferError::Internal(e.to_string()))?;
        Ok(Tensor {
            name: name.to_owned(),
            dtype,
            shape: t.shape().to_vec(),
            data: plain.as_bytes().to_vec(),
        })
    }
}
