//! Payloads from request tensors, and answers as JSON or binary data.

use super::*;

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn logits() -> Tensor {
    Tensor {
        name: "y".into(),
        dtype: Dtype::Fp32,
        shape: vec![2],
        data: floats(&[1.5, -2.0]),
    }
}

fn request(json: serde_json::Value) -> InferRequest {
    serde_json::from_value(json).expect("a request")
}

#[test]
fn prints_tensors_in_the_inference_protocol_form() {
    let json = payload_json(&Payload::Tensors(vec![logits()]));
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
    let halves = Tensor {
        dtype: Dtype::Fp16,
        data: [0x3c00u16, 0xc000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        ..logits()
    };
    let json = payload_json(&Payload::Tensors(vec![halves]));
    assert_eq!(json["outputs"][0]["data"], serde_json::json!([1.0, -2.0]));
}

fn bytes_input(elements: &[&[u8]], content_type: Option<&str>) -> InputTensor {
    InputTensor {
        name: "img".into(),
        datatype: Datatype::Bytes,
        shape: vec![elements.len() as u64],
        data: encode_bytes_elements(elements.iter().copied()),
        content_type: content_type.map(str::to_owned),
    }
}

#[test]
fn one_bytes_input_is_a_blob_and_the_rest_are_tensors() {
    let Payload::Bytes(blob) =
        payload_from_inputs(vec![bytes_input(&[b"\x89PNG"], Some("image/png"))]).expect("a blob")
    else {
        panic!("a blob");
    };
    assert_eq!(blob.media_type, "image/png");
    assert_eq!(blob.data, b"\x89PNG");
    let Payload::Bytes(untyped) =
        payload_from_inputs(vec![bytes_input(&[b"x"], None)]).expect("a blob")
    else {
        panic!("a blob");
    };
    assert_eq!(untyped.media_type, "application/octet-stream");
    let two = payload_from_inputs(vec![bytes_input(&[b"a", b"b"], None)]).unwrap_err();
    assert!(two.0.contains("2 elements"), "{two}");
    let x = InputTensor {
        name: "x".into(),
        datatype: Datatype::Fp32,
        shape: vec![1],
        data: floats(&[1.0]),
        content_type: None,
    };
    let mixed = payload_from_inputs(vec![x.clone(), bytes_input(&[b"a"], None)]).unwrap_err();
    assert!(mixed.0.contains("input `img`"), "{mixed}");
    let Payload::Tensors(tensors) = payload_from_inputs(vec![x]).expect("tensors") else {
        panic!("tensors");
    };
    assert_eq!(tensors[0].dtype, Dtype::Fp32);
}

/// The JSON part and the binary part of an answer.
fn split(answer: &HttpAnswer) -> (serde_json::Value, &[u8]) {
    let at = answer.header_length.unwrap_or(answer.body.len());
    let json = serde_json::from_slice(&answer.body[..at]).expect("JSON");
    (json, &answer.body[at..])
}

#[test]
fn answers_each_output_as_json_or_binary_as_asked() {
    let both = outputs(Payload::Tensors(vec![
        logits(),
        Tensor {
            name: "class".into(),
            dtype: Dtype::Int64,
            shape: vec![1],
            data: 7i64.to_le_bytes().to_vec(),
        },
    ]));
    let json_only = request(serde_json::json!({"id": "r", "inputs": []}));
    let answer = http_answer("m", 3, &json_only, &both).expect("answer");
    assert_eq!(answer.header_length, None);
    let (json, binary) = split(&answer);
    assert!(binary.is_empty());
    assert_eq!(json["model_version"], "3");
    assert_eq!(json["id"], "r");
    assert_eq!(json["outputs"][1]["data"], serde_json::json!([7]));

    let mixed = request(serde_json::json!({
        "inputs": [],
        "outputs": [{"name": "class", "parameters": {"binary_data": false}}, {"name": "y"}],
        "parameters": {"binary_data_output": true}
    }));
    let wanted: Vec<&str> = ["class", "y"].to_vec();
    let chosen = select(both.clone(), &wanted).expect("both exist");
    let answer = http_answer("m", 3, &mixed, &chosen).expect("answer");
    let (json, binary) = split(&answer);
    assert_eq!(json["outputs"][0]["name"], "class");
    assert_eq!(json["outputs"][0]["data"], serde_json::json!([7]));
    assert_eq!(json["outputs"][1]["parameters"]["binary_data_size"], 8);
    assert_eq!(binary, floats(&[1.5, -2.0]));

    let unknown = select(both, &["z"]).unwrap_err();
    assert!(
        unknown.0.contains("output `z`") && unknown.0.contains("y, class"),
        "{unknown}"
    );
}

#[test]
fn a_blob_is_a_bytes_output_and_binary_when_it_is_not_text() {
    let answer_for = |data: &[u8]| {
        let blob = outputs(Payload::Bytes(Blob {
            media_type: "application/octet-stream".into(),
            data: data.to_vec(),
        }));
        let json_only = request(serde_json::json!({"inputs": []}));
        http_answer("m", 1, &json_only, &blob).expect("answer")
    };
    let text = answer_for(br#"{"label":"cat"}"#);
    let (json, _) = split(&text);
    assert_eq!(json["outputs"][0]["name"], BLOB_OUTPUT);
    assert_eq!(json["outputs"][0]["datatype"], "BYTES");
    assert_eq!(json["outputs"][0]["data"][0], r#"{"label":"cat"}"#);
    let binary = answer_for(&[0xff, 0xfe]);
    let (json, rest) = split(&binary);
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 6);
    assert_eq!(rest, [2, 0, 0, 0, 0xff, 0xfe]);
}
