//! The Open Inference Protocol (KServe v2) JSON forms of tensors and payloads: what the local
//! API answers and `run-local` prints, and the request tensors the local API accepts.

use base64::Engine as _;
use serde::Deserialize;
use tern_plugin_host::{Dtype, Payload, Tensor};

/// Most elements one request tensor may have.
pub const MAX_ELEMENTS: u64 = 64 << 20;

fn half_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

fn tensor_json(t: &Tensor) -> serde_json::Value {
    use serde_json::json;
    let (datatype, data): (&str, Vec<serde_json::Value>) = match t.dtype {
        Dtype::Fp32 => (
            "FP32",
            t.data
                .chunks_exact(4)
                .map(|b| json!(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        ),
        Dtype::Fp16 => (
            "FP16",
            t.data
                .chunks_exact(2)
                .map(|b| json!(half_to_f32(u16::from_le_bytes([b[0], b[1]]))))
                .collect(),
        ),
        Dtype::Int64 => (
            "INT64",
            t.data
                .chunks_exact(8)
                .map(|b| {
                    json!(i64::from_le_bytes([
                        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
                    ]))
                })
                .collect(),
        ),
        Dtype::Int32 => (
            "INT32",
            t.data
                .chunks_exact(4)
                .map(|b| json!(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        ),
        Dtype::Uint8 => ("UINT8", t.data.iter().map(|b| json!(b)).collect()),
        Dtype::Boolean => ("BOOL", t.data.iter().map(|b| json!(*b != 0)).collect()),
    };
    json!({ "name": t.name, "datatype": datatype, "shape": t.shape, "data": data })
}

/// The final payload as `run-local` prints it: tensors in the Open Inference Protocol response
/// form, a JSON blob as-is, any other blob as `{"media_type", "data_base64"}`.
pub fn payload_json(payload: &Payload) -> serde_json::Value {
    match payload {
        Payload::Tensors(tensors) => {
            serde_json::json!({ "outputs": tensors.iter().map(tensor_json).collect::<Vec<_>>() })
        }
        Payload::Bytes(blob) => {
            let is_json = blob
                .media_type
                .split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json");
            match serde_json::from_slice(&blob.data) {
                Ok(value) if is_json => value,
                _ => serde_json::json!({
                    "media_type": blob.media_type,
                    "data_base64": base64::engine::general_purpose::STANDARD.encode(&blob.data),
                }),
            }
        }
    }
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

/// A v2 request's tensor as a plugin tensor: the datatype known, the element count equal to the
/// shape's, every value of the datatype's range.
pub fn tensor_from_request(t: &RequestTensor) -> Result<Tensor, String> {
    let count = t
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("input `{}`: shape {:?} is too large", t.name, t.shape))?;
    let values = &t.data.0;
    if count != values.len() as u64 {
        return Err(format!(
            "input `{}`: shape {:?} holds {count} elements, data has {}",
            t.name,
            t.shape,
            values.len()
        ));
    }
    let bad = |i: usize| {
        format!(
            "input `{}`: element {i} is not a {} value",
            t.name, t.datatype
        )
    };
    let mut data = Vec::new();
    let dtype = match t.datatype.to_ascii_uppercase().as_str() {
        "FP32" => {
            for (i, v) in values.iter().copied().enumerate() {
                let x = v.as_f64().ok_or_else(|| bad(i))? as f32;
                data.extend_from_slice(&x.to_le_bytes());
            }
            Dtype::Fp32
        }
        "FP16" => {
            for (i, v) in values.iter().copied().enumerate() {
                let x = half::f16::from_f64(v.as_f64().ok_or_else(|| bad(i))?);
                data.extend_from_slice(&x.to_le_bytes());
            }
            Dtype::Fp16
        }
        "INT64" => {
            for (i, v) in values.iter().copied().enumerate() {
                data.extend_from_slice(&v.as_i64().ok_or_else(|| bad(i))?.to_le_bytes());
            }
            Dtype::Int64
        }
        "INT32" => {
            for (i, v) in values.iter().copied().enumerate() {
                let x = v
                    .as_i64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| bad(i))?;
                data.extend_from_slice(&x.to_le_bytes());
            }
            Dtype::Int32
        }
        "UINT8" => {
            for (i, v) in values.iter().copied().enumerate() {
                data.push(
                    v.as_i64()
                        .and_then(|x| u8::try_from(x).ok())
                        .ok_or_else(|| bad(i))?,
                );
            }
            Dtype::Uint8
        }
        "BOOL" => {
            for (i, v) in values.iter().copied().enumerate() {
                let Scalar::Bool(b) = v else {
                    return Err(bad(i));
                };
                data.push(u8::from(b));
            }
            Dtype::Boolean
        }
        other => {
            return Err(format!(
                "input `{}`: datatype `{other}` is not one of FP32, FP16, INT64, INT32, UINT8, BOOL",
                t.name
            ));
        }
    };
    Ok(Tensor {
        name: t.name.clone(),
        dtype,
        shape: t.shape.clone(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_plugin_host::Blob;

    #[test]
    fn prints_tensors_in_the_inference_protocol_form() {
        let t = Tensor {
            name: "y".into(),
            dtype: Dtype::Fp32,
            shape: vec![2],
            data: [1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let json = payload_json(&Payload::Tensors(vec![t]));
        assert_eq!(
            json,
            serde_json::json!({"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.5, -2.0]}]})
        );
        let blob = payload_json(&Payload::Bytes(Blob {
            media_type: "image/png".into(),
            data: vec![1, 2],
        }));
        assert_eq!(blob["data_base64"], "AQI=");
        let answer = payload_json(&Payload::Bytes(Blob {
            media_type: "application/json".into(),
            data: br#"{"a":1}"#.to_vec(),
        }));
        assert_eq!(answer, serde_json::json!({"a": 1}));
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
    }

    #[test]
    fn request_tensors_are_checked_against_shape_and_type() {
        let ok = RequestTensor {
            name: "x".into(),
            shape: vec![2],
            datatype: "FP32".into(),
            data: Scalars(vec![Scalar::Float(1.5), Scalar::Int(-2)]),
        };
        let t = tensor_from_request(&ok).expect("valid");
        assert_eq!(
            payload_json(&Payload::Tensors(vec![t]))["outputs"][0]["data"][0],
            1.5
        );
        let short = RequestTensor {
            shape: vec![3],
            ..ok.clone()
        };
        assert!(
            tensor_from_request(&short)
                .unwrap_err()
                .contains("3 elements")
        );
        let text = RequestTensor {
            datatype: "UINT8".into(),
            data: Scalars(vec![Scalar::UInt(300), Scalar::UInt(1)]),
            ..ok.clone()
        };
        assert!(
            tensor_from_request(&text)
                .unwrap_err()
                .contains("element 0")
        );
        let huge = RequestTensor {
            shape: vec![u64::MAX, 2],
            ..ok
        };
        assert!(
            tensor_from_request(&huge)
                .unwrap_err()
                .contains("too large")
        );
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
        let tensor = tensor_from_request(&t).expect("valid");
        assert_eq!(&tensor.data[4..8], &(-2i32).to_le_bytes());
        let bools: RequestTensor = serde_json::from_str(
            r#"{"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]}"#,
        )
        .expect("parses");
        assert_eq!(tensor_from_request(&bools).expect("valid").data, [1, 0]);
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
        assert!(tensor_from_request(&float_as_int).is_err());
    }
}
