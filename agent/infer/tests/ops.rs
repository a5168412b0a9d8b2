//! Each operator the GPU executor lowers, as a one-node ONNX model, on the GPU against tract on
//! the CPU with the same random inputs. Skipped without an adapter (CI has one).

use prost::Message;
use tern_infer::onnx_pb as pb;
use tern_infer::{Device, Model, ModelOptions, Placement, Tensor, list_adapters};

struct Input {
    name: &'static str,
    shape: Vec<usize>,
    /// ONNX element type: 1 float, 7 int64.
    elem: i32,
}

fn info(name: &str, elem: i32, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d as i64)),
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

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 2,
        i,
        ..Default::default()
    }
}

fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 1,
        f,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_s(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 3,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn f32_init(name: &str, shape: &[usize], seed: u64) -> pb::TensorProto {
    let values = random(shape.iter().product(), seed);
    pb::TensorProto {
        name: name.into(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: 1,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_init(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// Deterministic values in [-2, 2).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Runs `op` on both backends and compares every output (atol 1e-4, rtol 1e-3).
fn check(
    op: &str,
    inputs: &[Input],
    outputs: &[(&str, &[usize])],
    attrs: Vec<pb::AttributeProto>,
    inits: Vec<pb::TensorProto>,
) {
    let mut node_inputs: Vec<String> = inputs.iter().map(|i| i.name.to_owned()).collect();
    node_inputs.extend(inits.iter().map(|t| t.name.clone()));
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                op_type: op.into(),
                name: format!("{op}_node"),
                input: node_inputs,
                output: outputs.iter().map(|(n, _)| (*n).to_owned()).collect(),
                attribute: attrs,
                ..Default::default()
            }],
            input: inputs
                .iter()
                .map(|i| info(i.name, i.elem, &i.shape))
                .collect(),
            output: outputs.iter().map(|(n, s)| info(n, 1, s)).collect(),
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    let feeds: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(k, i)| {
            let n: usize = i.shape.iter().product();
            if i.elem == 7 {
                Tensor {
                    name: i.name.into(),
                    dtype: tern_infer::DType::I64,
                    shape: i.shape.clone(),
                    data: (0..n as i64)
                        .map(|v| (v * 7) % 5)
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                }
            } else {
                Tensor::from_f32(i.name, i.shape.clone(), &random(n, k as u64 + 1))
            }
        })
        .collect();
    let cpu = Model::load(
        &bytes,
        &ModelOptions {
            device: Device::Cpu,
            ..ModelOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{op} on cpu: {e}"));
    let gpu = Model::load(
        &bytes,
        &ModelOptions {
            device: Device::Gpu,
            ..ModelOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{op} on gpu: {e}"));
    assert!(matches!(gpu.placement(), Placement::Gpu { .. }));
    let want = cpu
        .run(feeds.clone())
        .unwrap_or_else(|e| panic!("{op} cpu run: {e}"));
    let got = gpu
        .run(feeds)
        .unwrap_or_else(|e| panic!("{op} gpu run: {e}"));
    assert_eq!(want.len(), got.len(), "{op}");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!((w.dtype, &w.shape), (g.dtype, &g.shape), "{op}");
        for (i, (a, b)) in g.to_f64_vec().iter().zip(w.to_f64_vec()).enumerate() {
            let same = (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-4 + 1e-3 * b.abs();
            assert!(
                same,
                "{op} output `{}` element {i}: gpu {a}, cpu {b}",
                w.name
            );
        }
    }
}

fn x(shape: &[usize]) -> Vec<Input> {
    vec![Input {
        name: "x",
        shape: shape.to_vec(),
        elem: 1,
    }]
}

#[test]
fn every_listed_operator_matches_tract() {
    if list_adapters().is_empty() {
        tern_skips::skip_unless_required("TERN_REQUIRE_GPU", "there is no GPU adapter");
        return;
    }
    let s = [2usize, 3, 4, 5];
    for op in [
        "Relu",
        "Sigmoid",
        "Tanh",
        "Erf",
        "Sqrt",
        "Abs",
        "Exp",
        "Neg",
        "HardSwish",
        "Softsign",
    ] {
        check(op, &x(&s), &[("y", &s)], vec![], vec![]);
    }
    check(
        "HardSigmoid",
        &x(&s),
        &[("y", &s)],
        vec![attr_f("alpha", 0.3), attr_f("beta", 0.4)],
        vec![],
    );
    check(
        "LeakyRelu",
        &x(&s),
        &[("y", &s)],
        vec![attr_f("alpha", 0.1)],
        vec![],
    );
    check("Gelu", &x(&s), &[("y", &s)], vec![], vec![]);
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min"] {
        check(
            op,
            &[
                Input {
                    name: "a",
                    shape: s.to_vec(),
                    elem: 1,
                },
                Input {
                    name: "b",
                    shape: vec![3, 1, 5],
                    elem: 1,
                },
            ],
            &[("y", &s)],
            vec![],
            vec![],
        );
    }
    check(
        "Pow",
        &x(&s),
        &[("y", &s)],
        vec![],
        vec![f32_init("e", &[1], 7)],
    );
    check(
        "Clip",
        &x(&s),
        &[("y", &s)],
        vec![],
        vec![f32_init("lo", &[], 1), f32_init("hi", &[], 2)],
    );
    check(
        "Softmax",
        &x(&s),
        &[("y", &s)],
        vec![attr_i("axis", -1)],
        vec![],
    );
    check(
        "LayerNormalization",
        &x(&s),
        &[("y", &s)],
        vec![attr_i("axis", -1), attr_f("epsilon", 1e-5)],
        vec![f32_init("scale", &[5], 3), f32_init("bias", &[5], 4)],
    );
    check(
        "BatchNormalization",
        &x(&s),
        &[("y", &s)],
        vec![attr_f("epsilon", 1e-5)],
        vec![
            f32_init("g", &[3], 1),
            f32_init("b", &[3], 2),
            f32_init("m", &[3], 3),
            pb::TensorProto {
                raw_data: [0.5f32, 1.5, 2.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                ..f32_init("v", &[3], 4)
            },
        ],
    );
    check(
        "ReduceMean",
        &x(&s),
        &[("y", &[2, 1, 4, 1])],
        vec![attr_ints("axes", &[1, 3])],
        vec![],
    );
    check(
        "ReduceSum",
        &x(&s),
        &[("y", &[2, 3, 4])],
        vec![attr_i("keepdims", 0)],
        vec![i64_init("axes", &[3])],
    );
    check(
        "Transpose",
        &x(&s),
        &[("y", &[5, 2, 4, 3])],
        vec![attr_ints("perm", &[3, 0, 2, 1])],
        vec![],
    );
    check(
        "Flatten",
        &x(&s),
        &[("y", &[6, 20])],
        vec![attr_i("axis", 2)],
        vec![],
    );
    check(
        "Reshape",
        &x(&s),
        &[("y", &[4, 30])],
        vec![],
        vec![i64_init("shape", &[4, -1])],
    );
    check(
        "Unsqueeze",
        &x(&s),
        &[("y", &[2, 1, 3, 4, 5])],
        vec![],
        vec![i64_init("axes", &[1])],
    );
    check(
        "Squeeze",
        &x(&[2, 1, 4]),
        &[("y", &[2, 4])],
        vec![],
        vec![i64_init("axes", &[1])],
    );
    check(
        "Concat",
        &[
            Input {
                name: "a",
                shape: vec![2, 3, 4],
                elem: 1,
            },
            Input {
                name: "b",
                shape: vec![2, 2, 4],
                elem: 1,
            },
        ],
        &[("y", &[2, 5, 4])],
        vec![attr_i("axis", 1)],
        vec![],
    );
    check(
        "Split",
        &x(&[2, 6, 4]),
        &[("y0", &[2, 2, 4]), ("y1", &[2, 4, 4])],
        vec![attr_i("axis", 1)],
        vec![i64_init("split", &[2, 4])],
    );
    check(
        "Slice",
        &x(&s),
        &[("y", &[2, 2, 2, 5])],
        vec![],
        vec![
            i64_init("starts", &[1, 0]),
            i64_init("ends", &[3, 4]),
            i64_init("axes", &[1, 2]),
            i64_init("steps", &[1, 2]),
        ],
    );
    check(
        "Gather",
        &[Input {
            name: "ids",
            shape: vec![2, 3],
            elem: 7,
        }],
        &[("y", &[2, 3, 8])],
        vec![attr_i("axis", 0)],
        vec![f32_init("table", &[5, 8], 9)],
    );
    check(
        "MatMul",
        &[
            Input {
                name: "a",
                shape: vec![2, 3, 7, 9],
                elem: 1,
            },
            Input {
                name: "b",
                shape: vec![3, 9, 5],
                elem: 1,
            },
        ],
        &[("y", &[2, 3, 7, 5])],
        vec![],
        vec![],
    );
    check(
        "Gemm",
        &x(&[4, 9]),
        &[("y", &[4, 6])],
        vec![
            attr_i("transB", 1),
            attr_f("alpha", 0.5),
            attr_f("beta", 2.0),
        ],
        vec![f32_init("w", &[6, 9], 5), f32_init("c", &[6], 6)],
    );
    let img = [1usize, 4, 9, 11];
    check(
        "Conv",
        &x(&img),
        &[("y", &[1, 6, 5, 6])],
        vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_ints("dilations", &[1, 1]),
        ],
        vec![f32_init("w", &[6, 4, 3, 3], 2), f32_init("b", &[6], 3)],
    );
    check(
        "Conv",
        &x(&img),
        &[("y", &[1, 4, 9, 11])],
        vec![attr_i("group", 4), attr_ints("pads", &[1, 1, 1, 1])],
        vec![f32_init("w", &[4, 1, 3, 3], 2)],
    );
    check(
        "Conv",
        &x(&img),
        &[("y", &[1, 6, 5, 7])],
        vec![attr_i("group", 2), attr_ints("dilations", &[2, 2])],
        vec![f32_init("w", &[6, 2, 3, 3], 2)],
    );
    // grouped, through the implicit GEMM (36 products per output), with a bias per group
    check(
        "Conv",
        &x(&[1, 8, 9, 11]),
        &[("y", &[1, 6, 9, 11])],
        vec![attr_i("group", 2), attr_ints("pads", &[1, 1, 1, 1])],
        vec![f32_init("w", &[6, 4, 3, 3], 2), f32_init("b", &[6], 3)],
    );
    check(
        "MaxPool",
        &x(&img),
        &[("y", &[1, 4, 4, 5])],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
        ],
        vec![],
    );
    check(
        "AveragePool",
        &x(&img),
        &[("y", &[1, 4, 5, 6])],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
        vec![],
    );
    check(
        "GlobalAveragePool",
        &x(&img),
        &[("y", &[1, 4, 1, 1])],
        vec![],
        vec![],
    );
}

/// Integer arithmetic keeps tract's semantics (truncating division, remainder with the
/// dividend's sign) and narrowing casts wrap, on negative values too.
#[test]
fn integer_ops_and_narrowing_casts_match_tract() {
    if list_adapters().is_empty() {
        tern_skips::skip_unless_required("TERN_REQUIRE_GPU", "there is no GPU adapter");
        return;
    }
    let node = |op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| {
        pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            node: vec![
                node("Div", &["a", "b"], "q", vec![]),
                node("Mod", &["a", "b"], "r", vec![attr_i("fmod", 1)]),
                node("Cast", &["a"], "c", vec![attr_i("to", 2)]),
            ],
            input: vec![info("a", 7, &[8]), info("b", 7, &[8])],
            output: vec![info("q", 7, &[8]), info("r", 7, &[8]), info("c", 2, &[8])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    let ints = |name: &str, v: [i64; 8]| Tensor {
        name: name.into(),
        dtype: tern_infer::DType::I64,
        shape: vec![8],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let feeds = vec![
        ints("a", [-7, 7, -7, 7, 300, -300, 0, 255]),
        ints("b", [2, 2, -2, -3, 7, 7, 5, 256]),
    ];
    let cpu = Model::load(
        &bytes,
        &ModelOptions {
            device: Device::Cpu,
            ..ModelOptions::default()
        },
    )
    .expect("cpu");
    let gpu = Model::load(
        &bytes,
        &ModelOptions {
            device: Device::Gpu,
            ..ModelOptions::default()
        },
    )
    .expect("gpu");
    let want = cpu.run(feeds.clone()).expect("cpu run");
    let got = gpu.run(feeds).expect("gpu run");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(
            (w.dtype, w.to_f64_vec()),
            (g.dtype, g.to_f64_vec()),
            "output `{}`",
            w.name
        );
    }
}

/// Long rows go to the kernels with a workgroup per row (a strided share per invocation, then
/// a tree): rows that are not a multiple of the workgroup, softmax along an inner axis, several
/// reduced axes, and more rows than one grid dimension holds.
#[test]
fn long_rows_reduce_and_softmax_with_a_workgroup_each() {
    if list_adapters().is_empty() {
        tern_skips::skip_unless_required("TERN_REQUIRE_GPU", "there is no GPU adapter");
        return;
    }
    for (shape, axis) in [(&[3usize, 1000][..], -1), (&[2, 300, 5][..], 1)] {
        for op in ["Softmax", "LogSoftmax"] {
            check(
                op,
                &x(shape),
                &[("y", shape)],
                vec![attr_i("axis", axis)],
                vec![],
            );
        }
    }
    check(
        "ReduceMax",
        &x(&[4, 30, 50]),
        &[("y", &[4, 1, 1])],
        vec![attr_ints("axes", &[1, 2])],
        vec![],
    );
    check(
        "ReduceMean",
        &x(&[2, 700, 3]),
        &[("y", &[2, 1, 3])],
        vec![attr_ints("axes", &[1])],
        vec![],
    );
    check(
        "ReduceSum",
        &x(&[66_000, 64]),
        &[("y", &[66_000])],
        vec![attr_i("keepdims", 0)],
        vec![i64_init("axes", &[1])],
    );
    check(
        "ReduceMin",
        &x(&[5, 257]),
        &[("y", &[5, 1])],
        vec![attr_ints("axes", &[1])],
        vec![],
    );
}

/// Einsum in its general forms, each lowered as one batched GEMM: several summed axes (merged),
/// an axis only one operand has (summed first), and more batch axes than the kernel's four
/// (neighbours merged).
#[test]
fn general_contractions_match_tract() {
    if list_adapters().is_empty() {
        tern_skips::skip_unless_required("TERN_REQUIRE_GPU", "there is no GPU adapter");
        return;
    }
    let two = |a: &[usize], b: &[usize]| {
        vec![
            Input {
                name: "a",
                shape: a.to_vec(),
                elem: 1,
            },
            Input {
                name: "b",
                shape: b.to_vec(),
                elem: 1,
            },
        ]
    };
    for (equation, a, b, y) in [
        (
            "bhqk,hkc->bqc",
            &[2usize, 3, 4, 5][..],
            &[3usize, 5, 6][..],
            &[2usize, 4, 6][..],
        ),
        ("nchw,kcwh->nk", &[2, 3, 4, 5], &[7, 3, 5, 4], &[2, 7]),
        ("ij,jk->k", &[3, 4], &[4, 5], &[5]),
        ("ij,kj->i", &[3, 4], &[5, 4], &[3]),
        (
            "abcdehi,abcdeij->abcdehj",
            &[2, 2, 2, 3, 2, 3, 4],
            &[2, 2, 2, 3, 2, 4, 3],
            &[2, 2, 2, 3, 2, 3, 3],
        ),
    ] {
        check(
            "Einsum",
            &two(a, b),
            &[("y", y)],
            vec![attr_s("equation", equation)],
            vec![],
        );
    }
}
