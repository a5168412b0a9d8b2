//! The gRPC messages to and from the agent's tensors (`xtask`'s tests check that the generated
//! code is what the generator writes from the tree).

use super::convert;
use super::generated::model_infer_request::InferInputTensor;
use super::generated::*;
use crate::oip::{Datatype, OutputTensor};

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: Default::default(),
        contents: None,
    }
}

#[test]
fn reads_typed_contents_and_raw_contents() {
    let typed = InferInputTensor {
        contents: Some(InferTensorContents {
            fp32_contents: vec![1.5, -2.0],
            ..Default::default()
        }),
        ..input("x", "FP32", &[1, 2])
    };
    let tensors = convert::inputs(vec![typed], Vec::new()).expect("valid");
    assert_eq!(&tensors[0].data[..4], &1.5f32.to_le_bytes());
    assert_eq!(tensors[0].shape, [1, 2]);

    let raw: Vec<u8> = [3i64].iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = convert::inputs(vec![input("k", "INT64", &[1])], vec![raw]).expect("valid");
    assert_eq!(tensors[0].datatype, Datatype::Int64);

    let blob = InferInputTensor {
        contents: Some(InferTensorContents {
            bytes_contents: vec![b"\x89PNG".to_vec()],
            ..Default::default()
        }),
        ..input("img", "BYTES", &[1])
    };
    let tensors = convert::inputs(vec![blob], Vec::new()).expect("valid");
    assert_eq!(tensors[0].data, [4, 0, 0, 0, 0x89, b'P', b'N', b'G']);
}

#[test]
fn malformed_inputs_are_refused_with_the_input_named() {
    let short = convert::inputs(vec![input("x", "FP32", &[1, 3])], vec![vec![0; 8]]).unwrap_err();
    assert!(
        short.0.contains("input `x`") && short.0.contains("12 bytes"),
        "{short}"
    );
    let negative = convert::inputs(vec![input("x", "FP32", &[-1])], Vec::new()).unwrap_err();
    assert!(negative.0.contains("negative"), "{negative}");
    let uneven = convert::inputs(
        vec![input("a", "UINT8", &[1]), input("b", "UINT8", &[1])],
        vec![vec![1]],
    )
    .unwrap_err();
    assert!(uneven.0.contains("1 entries for 2 inputs"), "{uneven}");
    let empty = convert::inputs(vec![input("x", "FP32", &[2])], Vec::new()).unwrap_err();
    assert!(empty.0.contains("input `x`"), "{empty}");
}

#[test]
fn answers_with_raw_output_contents() {
    let outputs = vec![
        OutputTensor {
            name: "y".into(),
            datatype: Datatype::Fp32,
            shape: vec![1],
            data: 2.5f32.to_le_bytes().to_vec(),
            content_type: None,
        },
        OutputTensor {
            name: "output".into(),
            datatype: Datatype::Bytes,
            shape: vec![1],
            data: vec![1, 0, 0, 0, b'x'],
            content_type: Some("text/plain".into()),
        },
    ];
    let answer = convert::answer("m".into(), 4, "r".into(), outputs);
    assert_eq!(answer.model_version, "4");
    assert_eq!(answer.raw_output_contents[0], 2.5f32.to_le_bytes());
    assert_eq!(answer.outputs[1].datatype, "BYTES");
    assert!(answer.outputs[1].parameters.contains_key("content_type"));
}
