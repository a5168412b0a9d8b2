//! A JSON tensor's `data`, read element by element into typed scalars (no JSON value tree per
//! element), flat or nested as clients send it, and encoded into the datatype's bytes.

use serde::Deserialize;

use super::{Datatype, MAX_ELEMENTS, encode_bytes_elements};

/// One element of a request tensor's `data`, as JSON wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    /// An element of a BYTES tensor.
    Text(String),
}

impl Scalar {
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::Int(v) => Some(v as f64),
            Scalar::UInt(v) => Some(v as f64),
            Scalar::Float(v) => Some(v),
            Scalar::Bool(_) | Scalar::Text(_) => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match *self {
            Scalar::Int(v) => Some(v),
            Scalar::UInt(v) => i64::try_from(v).ok(),
            Scalar::Float(_) | Scalar::Bool(_) | Scalar::Text(_) => None,
        }
    }
}

/// The bytes of `values` as `datatype`, or the index of the first element that is not a value
/// of it.
pub(super) fn encode(values: &[Scalar], datatype: Datatype) -> Result<Vec<u8>, usize> {
    let mut data = Vec::with_capacity(values.len() * datatype.size().unwrap_or(8) as usize);
    for (i, v) in values.iter().enumerate() {
        match datatype {
            Datatype::Fp32 => {
                let x = v.as_f64().ok_or(i)? as f32;
                data.extend_from_slice(&x.to_le_bytes());
            }
            Datatype::Fp16 => {
                let x = half::f16::from_f64(v.as_f64().ok_or(i)?);
                data.extend_from_slice(&x.to_le_bytes());
            }
            Datatype::Int64 => data.extend_from_slice(&v.as_i64().ok_or(i)?.to_le_bytes()),
            Datatype::Int32 => {
                let x = v.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or(i)?;
                data.extend_from_slice(&x.to_le_bytes());
            }
            Datatype::Uint8 => {
                data.push(v.as_i64().and_then(|x| u8::try_from(x).ok()).ok_or(i)?);
            }
            Datatype::Bool => {
                let Scalar::Bool(b) = v else {
                    return Err(i);
                };
                data.push(u8::from(*b));
            }
            Datatype::Bytes => {
                let Scalar::Text(text) = v else {
                    return Err(i);
                };
                data.extend_from_slice(&encode_bytes_elements([text.as_bytes()]));
            }
        }
    }
    Ok(data)
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
        f.write_str("an array of numbers, booleans or strings")
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

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Text(v.to_owned()))
    }
}
