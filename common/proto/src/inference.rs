//! The Open Inference Protocol (KServe v2) request that applications send to an agent's local
//! API: JSON read straight into typed scalars (no JSON value per element), and checked against
//! the declared shape and datatype before any byte reaches a pipeline.

use serde::Deserialize;
use thiserror::Error;

/// Most elements one request tensor may have.
pub const MAX_ELEMENTS: u64 = 64 << 20;

/// A v2 inference request (`POST /v2/models/{name}/infer`).
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<RequestTensor>,
}

impl InferRequest {
    /// Parses a request body.
    pub fn from_json(body: &[u8]) -> Result<Self, InputError> {
        serde_json::from_slice(body).map_err(|e| InputError(format!("invalid request: {e}")))
    }
}

/// Why a request tensor was refused: a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The element types a request tensor may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Fp32,
    Fp16,
    Int64,
    Int32,
    Uint8,
    Bool,
}

/// A request tensor, checked: its datatype, shape and little-endian element bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// One input tensor of a v2 inference request.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    pub data: Scalars,
}

/// One element of a request tensor's `data`, as JSON wrote it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn as_f64(self) -> Option<f64> {
        match self {
            Scalar::Int(v) => Some(v as f64),
            Scalar::UInt(v) => Some(v as f64),
            Scalar::Float(v) => Some(v),
            Scalar::Bool(_) => None,
        }
    }

    fn as_i64(self) -> Option<i64> {
        match self {
            Scalar::Int(v) => Some(v),
            Scalar::UInt(v) => i64::try_from(v).ok(),
            Scalar::Float(_) | Scalar::Bool(_) => None,
        }
    }
}

/// A request tensor's `data`, flattened row-major (nested arrays are accepted, as clients send
/// them), read element by element into [`Scalar`]s: no JSON value tree per element, and no more
/// than [`MAX_ELEMENTS`] elements read before the request is refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scalars(pub Vec<Scalar>);

impl<'de> Deserialize<'de> for Scalars {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_seq(Flatten(&mut out))?;
        Ok(Scalars(out))
    }
}

/// Appends the elements of a (possibly nested) array to the vector it holds.
struct Flatten<'a>(&'a mut Vec<Scalar>);

impl Flatten<'_> {
    fn push<E: serde::de::Error>(self, value: Scalar) -> Result<(), E> {
        if self.0.len() as u64 >= MAX_ELEMENTS {
            return Err(E::custom(format!(
                "more than {MAX_ELEMENTS} elements in one tensor"
            )));
        }
        self.0.push(value);
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of numbers or booleans")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Scalar::UInt(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::Float(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v))
    }
}

impl RequestTensor {
    /// Checks the tensor: the datatype known, the element count equal to the shape's, every
    /// value of the datatype's range; gives its bytes.
    pub fn check(&self) -> Result<InputTensor, InputError> {
        let t = self;
        let count = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                InputError(format!(
                    "input `{}`: shape {:?} is too large",
                    t.name, t.shape
                ))
            })?;
        let values = &t.data.0;
        if count != values.len() as u64 {
            return Err(InputError(format!(
                "input `{}`: shape {:?} holds {count} elements, data has {}",
                t.name,
                t.shape,
                values.len()
            )));
        }
        let bad = |i: usize| {
            InputError(format!(
                "input `{}`: element {i} is not a {} value",
                t.name, t.datatype
            ))
        };
        let mut data = Vec::new();
        let dtype = match t.datatype.to_ascii_uppercase().as_str() {
            "FP32" => {
                for (i, v) in values.iter().copied().enumerate() {
                    let x = v.as_f64().ok_or_else(|| bad(i))? as f32;
                    data.extend_from_slice(&x.to_le_bytes());
                }
                Datatype::Fp32
            }
            "FP16" => {
                for (i, v) in values.iter().copied().enumerate() {
                    let x = half::f16::from_f64(v.as_f64().ok_or_else(|| bad(i))?);
                    data.extend_from_slice(&x.to_le_bytes());
                }
                Datatype::Fp16
            }
            "INT64" => {
                for (i, v) in values.iter().copied().enumerate() {
                    data.extend_from_slice(&v.as_i64().ok_or_else(|| bad(i))?.to_le_bytes());
                }
                Datatype::Int64
            }
            "INT32" => {
                for (i, v) in values.iter().copied().enumerate() {
                    let x = v
                        .as_i64()
                        .and_then(|x| i32::try_from(x).ok())
                        .ok_or_else(|| bad(i))?;
                    data.extend_from_slice(&x.to_le_bytes());
                }
                Datatype::Int32
            }
            "UINT8" => {
                for (i, v) in values.iter().copied().enumerate() {
                    data.push(
                        v.as_i64()
                            .and_then(|x| u8::try_from(x).ok())
                            .ok_or_else(|| bad(i))?,
                    );
                }
                Datatype::Uint8
            }
            "BOOL" => {
                for (i, v) in values.iter().copied().enumerate() {
                    let Scalar::Bool(b) = v else {
                        return Err(bad(i));
                    };
                    data.push(u8::from(b));
                }
                Datatype::Bool
            }
            other => {
                return Err(InputError(format!(
                    "input `{}`: datatype `{other}` is not one of FP32, FP16, INT64, INT32, UINT8, BOOL",
                    t.name
                )));
            }
        };
        Ok(InputTensor {
            name: t.name.clone(),
            datatype: dtype,
            shape: t.shape.clone(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_tensors_are_checked_against_shape_and_type() {
        let ok = RequestTensor {
            name: "x".into(),
            shape: vec![2],
            datatype: "FP32".into(),
            data: Scalars(vec![Scalar::Float(1.5), Scalar::Int(-2)]),
        };
        let t = ok.check().expect("valid");
        assert_eq!(t.datatype, Datatype::Fp32);
        assert_eq!(&t.data[..4], &1.5f32.to_le_bytes());
        let short = RequestTensor {
            shape: vec![3],
            ..ok.clone()
        };
        assert!(short.check().unwrap_err().0.contains("3 elements"));
        let text = RequestTensor {
            datatype: "UINT8".into(),
            data: Scalars(vec![Scalar::UInt(300), Scalar::UInt(1)]),
            ..ok.clone()
        };
        assert!(text.check().unwrap_err().0.contains("element 0"));
        let huge = RequestTensor {
            shape: vec![u64::MAX, 2],
            ..ok
        };
        assert!(huge.check().unwrap_err().0.contains("too large"));
    }

    #[test]
    fn reads_flat_and_nested_data_without_a_value_per_element() {
        let t: RequestTensor = serde_json::from_str(
            r#"{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, -2], [3, 4]]}"#,
        )
        .expect("parses");
        assert_eq!(
            t.data.0,
            [
                Scalar::UInt(1),
                Scalar::Int(-2),
                Scalar::UInt(3),
                Scalar::UInt(4)
            ]
        );
        let tensor = t.check().expect("valid");
        assert_eq!(&tensor.data[4..8], &(-2i32).to_le_bytes());
        let bools: RequestTensor = serde_json::from_str(
            r#"{"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]}"#,
        )
        .expect("parses");
        assert_eq!(bools.check().expect("valid").data, [1, 0]);
        for bad in [
            r#"{"name": "x", "shape": [1], "datatype": "FP32", "data": ["1"]}"#,
            r#"{"name": "x", "shape": [1], "datatype": "FP32", "data": [{"a": 1}]}"#,
            r#"{"name": "x", "shape": [1], "datatype": "FP32", "data": 1}"#,
        ] {
            assert!(serde_json::from_str::<RequestTensor>(bad).is_err(), "{bad}");
        }
        let float_as_int: RequestTensor = serde_json::from_str(
            r#"{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}"#,
        )
        .expect("parses");
        assert!(float_as_int.check().is_err());
    }
}
