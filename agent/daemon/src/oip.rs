//! The Open Inference Protocol (KServe v2) JSON forms of tensors and payloads: what the local
//! API answers and `run-local` prints, and the request tensors the local API accepts.

use base64::Engine as _;
use tern_plugin_host::{Dtype, Payload, Tensor};
pub use tern_proto::inference::{
    Datatype, InputError, InputTensor, RequestTensor, Scalar, Scalars,
};

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

/// A checked request tensor as a plugin tensor.
pub fn tensor_from_input(t: InputTensor) -> Tensor {
    let dtype = match t.datatype {
        Datatype::Fp32 => Dtype::Fp32,
        Datatype::Fp16 => Dtype::Fp16,
        Datatype::Int64 => Dtype::Int64,
        Datatype::Int32 => Dtype::Int32,
        Datatype::Uint8 => Dtype::Uint8,
        Datatype::Bool => Dtype::Boolean,
    };
    Tensor {
        name: t.name,
        dtype,
        shape: t.shape,
        data: t.data,
    }
}

/// A v2 request's tensor as a plugin tensor, checked.
pub fn tensor_from_request(t: &RequestTensor) -> Result<Tensor, InputError> {
    t.check().map(tensor_from_input)
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
}
