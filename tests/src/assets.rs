//! What the quickstart deploys, generated here so nothing is downloaded: a small image model
//! (colour classes) in two versions, and sample images.

use prost::Message;
use tern_infer::onnx_pb as pb;

/// Side of the square images the model takes (image-prep resizes to it).
pub const MODEL_SIDE: usize = 32;

/// Class labels of each model version.
pub fn labels(version: u64) -> Vec<&'static str> {
    match version {
        1 => vec!["red", "green", "blue", "gray"],
        _ => vec!["red", "green", "blue", "gray", "yellow"],
    }
}

/// Per-class weights on the mean red, green and blue, and a bias: a linear classifier over
/// the image's mean colour.
fn weights(version: u64) -> Vec<([f32; 3], f32)> {
    let mut w = vec![
        ([6.0, -3.0, -3.0], 0.0),
        ([-3.0, 6.0, -3.0], 0.0),
        ([-3.0, -3.0, 6.0], 0.0),
        ([0.0, 0.0, 0.0], 0.8),
    ];
    if version >= 2 {
        // Yellow is red and green without blue; red and green give way to it.
        w[0].0 = [6.0, -5.0, -3.0];
        w[1].0 = [-5.0, 6.0, -3.0];
        w.push(([4.0, 4.0, -8.0], -2.0));
    }
    w
}

/// A float tensor's name and shape, as ONNX declares graph inputs and outputs.
pub fn info(name: &str, shape: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn floats(name: &str, dims: &[i64], values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values,
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: format!("{op}_{output}"),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        attribute,
        ..Default::default()
    }
}

/// The colour classifier, version `version`, as ONNX: input `input` [1, 3, 32, 32] (NCHW,
/// pixels in [0, 1]) → GlobalAveragePool → Flatten → Gemm → `logits` [1, classes].
pub fn color_model(version: u64) -> Vec<u8> {
    let w = weights(version);
    let classes = w.len() as i64;
    let side = MODEL_SIDE as i64;
    let trans_b = pb::AttributeProto {
        name: "transB".into(),
        r#type: 2,
        i: 1,
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        producer_name: "tern quickstart".into(),
        model_version: version as i64,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: format!("color-net-v{version}"),
            node: vec![
                node("GlobalAveragePool", &["input"], "pooled", vec![]),
                node("Flatten", &["pooled"], "mean_rgb", vec![]),
                node(
                    "Gemm",
                    &["mean_rgb", "weight", "bias"],
                    "logits",
                    vec![trans_b],
                ),
            ],
            input: vec![info("input", &[1, 3, side, side])],
            output: vec![info("logits", &[1, classes])],
            initializer: vec![
                floats(
                    "weight",
                    &[classes, 3],
                    w.iter().flat_map(|(row, _)| row.iter().copied()).collect(),
                ),
                floats("bias", &[classes], w.iter().map(|(_, b)| *b).collect()),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// An image tensor's first pixel: input `image` [1, 224, 224, 3] (NHWC) → Slice → `pixel`
/// [1, 1, 1, 3]. No compute to speak of: what a request costs is the transport of 150,528
/// floats.
pub fn first_pixel_model() -> Vec<u8> {
    let ints = |name: &str, values: &[i64]| pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values.to_vec(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "first-pixel".into(),
            node: vec![node(
                "Slice",
                &["image", "starts", "ends", "axes"],
                "pixel",
                vec![],
            )],
            input: vec![info("image", &[1, 224, 224, 3])],
            output: vec![info("pixel", &[1, 1, 1, 3])],
            initializer: vec![
                ints("starts", &[0, 0]),
                ints("ends", &[1, 1]),
                ints("axes", &[1, 2]),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A model that declares a 100 GiB input (`Relu` of `[1, 25 Gi]` f32): a few hundred bytes
/// that would make a careless loader allocate the host's memory away.
pub fn huge_tensor_model() -> Vec<u8> {
    let huge = 25 << 30;
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "huge".into(),
            node: vec![node("Relu", &["x"], "y", vec![])],
            input: vec![info("x", &[1, huge])],
            output: vec![info("y", &[1, huge])],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// The counter of the crash-loop tests, input `n` [1] → `out` [1]. Version 1 doubles `n`;
/// version 2 sums `0, 1, ..., n - 1` through `Range`, a tensor whose size the request decides
/// (a data-dependent shape): `n = 3` answers 3, and a large `n` makes the process allocate and
/// fill `4·n` bytes, which under a memory cgroup's limit gets it killed by the kernel.
pub fn counter_model(version: u64) -> Vec<u8> {
    let scalar = |name: &str, value: f32| pb::TensorProto {
        name: name.into(),
        dims: vec![],
        data_type: 1,
        float_data: vec![value],
        ..Default::default()
    };
    let (nodes, initializer) = if version == 1 {
        (
            vec![node("Mul", &["n", "two"], "out", vec![])],
            vec![floats("two", &[1], vec![2.0])],
        )
    } else {
        let keepdims = pb::AttributeProto {
            name: "keepdims".into(),
            r#type: 2,
            i: 1,
            ..Default::default()
        };
        (
            vec![
                node("Squeeze", &["n", "axes"], "limit", vec![]),
                node("Range", &["zero", "limit", "one"], "seq", vec![]),
                node("ReduceSum", &["seq"], "out", vec![keepdims]),
            ],
            vec![
                scalar("zero", 0.0),
                scalar("one", 1.0),
                pb::TensorProto {
                    name: "axes".into(),
                    dims: vec![1],
                    data_type: 7,
                    int64_data: vec![0],
                    ..Default::default()
                },
            ],
        )
    };
    let model = pb::ModelProto {
        ir_version: 8,
        model_version: version as i64,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: format!("counter-v{version}"),
            node: nodes,
            input: vec![info("n", &[1])],
            output: vec![info("out", &[1])],
            initializer,
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A 64×64 PNG of `rgb` with a little deterministic noise, like a photo of a coloured part.
pub fn sample_png(rgb: [u8; 3]) -> Vec<u8> {
    let mut image = image::RgbImage::new(64, 64);
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        let noise = ((x * 7 + y * 13) % 17) as i16 - 8;
        for (c, value) in rgb.iter().enumerate() {
            pixel.0[c] = (i16::from(*value) + noise).clamp(0, 255) as u8;
        }
    }
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    image::ImageEncoder::write_image(
        encoder,
        image.as_raw(),
        64,
        64,
        image::ExtendedColorType::Rgb8,
    )
    .map(|()| bytes)
    .unwrap_or_default()
}

/// The quickstart's sample images: name and colour.
pub const SAMPLES: [(&str, [u8; 3]); 5] = [
    ("red-part.png", [210, 40, 35]),
    ("green-part.png", [40, 190, 60]),
    ("blue-part.png", [30, 60, 200]),
    ("steel-part.png", [128, 130, 135]),
    ("yellow-part.png", [225, 210, 40]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use tern_infer::{Model, ModelOptions, Tensor};

    /// The image-prep plugin's output for a solid colour: [1, 3, 32, 32] of pixel/255.
    fn solid(rgb: [u8; 3]) -> Tensor {
        let plane = MODEL_SIDE * MODEL_SIDE;
        let data: Vec<f32> = rgb
            .iter()
            .flat_map(|&c| std::iter::repeat_n(f32::from(c) / 255.0, plane))
            .collect();
        Tensor::from_f32("input", vec![1, 3, MODEL_SIDE, MODEL_SIDE], &data)
    }

    fn classify(version: u64, rgb: [u8; 3]) -> &'static str {
        let model = Model::load(&color_model(version), &ModelOptions::default()).expect("loads");
        let out = model.run(vec![solid(rgb)]).expect("runs");
        let logits = out[0].to_f64_vec();
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        labels(version)[best]
    }

    #[test]
    fn the_generated_models_tell_the_sample_colours_apart() {
        for (name, rgb) in SAMPLES {
            let expected = name.split('-').next().unwrap_or_default();
            let v2 = classify(2, rgb);
            let want = if expected == "steel" {
                "gray"
            } else {
                expected
            };
            assert_eq!(v2, want, "{name} on version 2");
            if want != "yellow" {
                assert_eq!(classify(1, rgb), want, "{name} on version 1");
            }
        }
        assert!(!sample_png([1, 2, 3]).is_empty());
    }
}
