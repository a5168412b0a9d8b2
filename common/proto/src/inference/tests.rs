//! Request tensors: JSON and binary forms, checks and the errors that name the input.

use super::*;

fn tensor(json: &str) -> RequestTensor {
    serde_json::from_str(json).expect("parses")
}

#[test]
fn request_tensors_are_checked_against_shape_and_type() {
    let ok = RequestTensor {
        name: "x".into(),
        shape: vec![2],
        datatype: "FP32".into(),
        data: Some(Scalars(vec![Scalar::Float(1.5), Scalar::Int(-2)])),
        parameters: TensorParameters::default(),
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
        data: Some(Scalars(vec![Scalar::UInt(300), Scalar::UInt(1)])),
        ..ok.clone()
    };
    assert!(text.check().unwrap_err().0.contains("element 0"));
    let huge = RequestTensor {
        shape: vec![u64::MAX, 2],
        ..ok.clone()
    };
    assert!(huge.check().unwrap_err().0.contains("too large"));
    let wide = RequestTensor {
        datatype: "FP64".into(),
        ..ok.clone()
    };
    let refused = wide.check().unwrap_err().0;
    assert!(
        refused.contains("input `x`") && refused.contains("BYTES"),
        "{refused}"
    );
    let empty = RequestTensor { data: None, ..ok };
    assert!(empty.check().unwrap_err().0.contains("binary_data_size"));
}

#[test]
fn reads_flat_and_nested_data_without_a_value_per_element() {
    let t =
        tensor(r#"{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, -2], [3, 4]]}"#);
    assert_eq!(
        t.data.as_ref().map(|d| d.0.clone()),
        Some(vec![
            Scalar::UInt(1),
            Scalar::Int(-2),
            Scalar::UInt(3),
            Scalar::UInt(4)
        ])
    );
    let checked = t.check().expect("valid");
    assert_eq!(&checked.data[4..8], &(-2i32).to_le_bytes());
    let bools = tensor(r#"{"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]}"#);
    assert_eq!(bools.check().expect("valid").data, [1, 0]);
    for bad in [
        r#"{"name": "x", "shape": [1], "datatype": "FP32", "data": [{"a": 1}]}"#,
        r#"{"name": "x", "shape": [1], "datatype": "FP32", "data": 1}"#,
        r#"{"name": "x", "shape": [1], "datatype": "FP32", "data": "1"}"#,
    ] {
        assert!(serde_json::from_str::<RequestTensor>(bad).is_err(), "{bad}");
    }
    let text_as_float = tensor(r#"{"name": "x", "shape": [1], "datatype": "FP32", "data": ["1"]}"#);
    assert!(text_as_float.check().unwrap_err().0.contains("element 0"));
    let float_as_int = tensor(r#"{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}"#);
    assert!(float_as_int.check().is_err());
}

#[test]
fn bytes_tensors_are_length_prefixed_strings() {
    let t = tensor(r#"{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["ab", ""]}"#);
    let checked = t.check().expect("valid");
    assert_eq!(checked.data, [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    assert_eq!(
        bytes_elements(&checked.data).expect("framed"),
        [&b"ab"[..], &b""[..]]
    );
    assert!(
        bytes_elements(&[5, 0, 0, 0, 1])
            .unwrap_err()
            .contains("says 5 bytes")
    );
    assert!(
        bytes_elements(&[1, 0])
            .unwrap_err()
            .contains("4-byte length")
    );
    let number = tensor(r#"{"name": "s", "shape": [1], "datatype": "BYTES", "data": [1]}"#);
    assert!(number.check().is_err());
}

/// A binary-extension body: the JSON part, then `binary`.
fn body(json: &serde_json::Value, binary: &[u8]) -> (Vec<u8>, String) {
    let header = json.to_string().into_bytes();
    let length = header.len().to_string();
    ([header, binary.to_vec()].concat(), length)
}

#[test]
fn reads_binary_inputs_in_order_after_the_json_part() {
    let floats: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let image = encode_bytes_elements([&b"\x89PNG"[..]]);
    let json = serde_json::json!({
        "id": "7",
        "inputs": [
            {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [true]},
            {"name": "img", "shape": [1], "datatype": "BYTES",
             "parameters": {"binary_data_size": image.len(), "content_type": "image/png"}}
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": false}}],
        "parameters": {"binary_data_output": true, "priority": 3}
    });
    let (bytes, length) = body(&json, &[floats.clone(), image.clone()].concat());
    let (request, tensors) = read_request(&bytes, Some(&length)).expect("valid");
    assert_eq!(request.id.as_deref(), Some("7"));
    assert_eq!(tensors[0].data, floats);
    assert_eq!(tensors[1].data, [1]);
    assert_eq!(tensors[2].data, image);
    assert_eq!(tensors[2].content_type.as_deref(), Some("image/png"));
    assert!(!request.binary_output("y"), "the output's own choice wins");
    assert!(
        request.binary_output("z"),
        "binary_data_output for the rest"
    );
}

#[test]
fn a_malformed_binary_request_is_refused_with_the_input_named() {
    let json = serde_json::json!({"inputs": [
        {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    ]});
    let (bytes, length) = body(&json, &[0; 8]);
    let past = (bytes.len() + 1).to_string();
    let refused = read_request(&bytes, Some(&past)).unwrap_err().0;
    assert!(refused.contains("past the end"), "{refused}");
    let refused = read_request(&bytes[..bytes.len() - 1], Some(&length))
        .unwrap_err()
        .0;
    assert!(refused.contains("input `x`"), "{refused}");
    let refused = read_request(&[bytes.clone(), vec![0]].concat(), Some(&length))
        .unwrap_err()
        .0;
    assert!(refused.contains("after the last"), "{refused}");
    let refused = read_request(&bytes, Some("eight")).unwrap_err().0;
    assert!(refused.contains("not a byte count"), "{refused}");
    // A size that does not match the shape and datatype.
    let json = serde_json::json!({"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    ]});
    let (bytes, length) = body(&json, &[0; 8]);
    let refused = read_request(&bytes, Some(&length)).unwrap_err().0;
    assert!(
        refused.contains("input `x`") && refused.contains("12 bytes"),
        "{refused}"
    );
    // Binary data without the header that says where the JSON ends.
    let refused = read_request(&bytes, None).unwrap_err().0;
    assert!(refused.contains("invalid request"), "{refused}");
}
