//! The inference API on real models: results against ONNX Runtime's, batches, concurrency, and
//! every way a model or a request can be bad.

use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;
use tern_infer::conformance::{Tolerance, compare};
use tern_infer::onnx_pb as pb;
use tern_infer::{
    DType, Device, Dim, InferError, Model, ModelOptions, Placement, Tensor, list_adapters, npy,
};

fn mlp_dir() -> PathBuf {
    tern_infer::conformance::manifest_dir().join("../../examples/models/mlp")
}

fn mlp() -> (Vec<u8>, Tensor, Tensor) {
    let dir = mlp_dir();
    let bytes = std::fs::read(dir.join("model.onnx")).expect("model");
    let input = npy::parse(
        "input",
        &std::fs::read(dir.join("input.npy")).expect("input"),
    )
    .expect("npy");
    let expected = npy::parse(
        "output",
        &std::fs::read(dir.join("expected_output.npy")).expect("output"),
    )
    .expect("npy");
    (bytes, input, expected)
}

fn load(bytes: &[u8], device: Device) -> Result<Model, InferError> {
    Model::load(
        bytes,
        &ModelOptions {
            device,
            ..ModelOptions::default()
        },
    )
}

fn has_gpu() -> bool {
    !list_adapters().is_empty()
}

/// The first `rows` rows of a [N, F] f32 tensor, cycling when `rows` > N.
fn rows(t: &Tensor, rows: usize) -> Tensor {
    let width = t.shape[1] * 4;
    let n = t.shape[0];
    let data = (0..rows)
        .flat_map(|r| t.data[(r % n) * width..(r % n + 1) * width].to_vec())
        .collect();
    Tensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape: vec![rows, t.shape[1]],
        data,
    }
}

#[test]
fn describes_inputs_and_outputs_with_a_symbolic_batch() {
    let (bytes, _, _) = mlp();
    let model = load(&bytes, Device::Cpu).expect("load");
    assert_eq!(model.placement(), Placement::Cpu);
    let input = &model.inputs()[0];
    assert_eq!(input.name, "input");
    assert_eq!(input.dtype, DType::F32);
    assert!(
        matches!(input.shape[0], Dim::Symbol(_)),
        "{:?}",
        input.shape
    );
    assert_eq!(input.shape[1], Dim::Fixed(32));
    assert_eq!(model.outputs()[0].name, "output");
}

#[test]
fn cpu_matches_the_reference_and_serves_concurrent_requests() {
    let (bytes, input, expected) = mlp();
    let model = Arc::new(load(&bytes, Device::Cpu).expect("load"));
    let out = model.run(vec![input.clone()]).expect("run");
    compare(&out[0], &expected, Tolerance::MaxAbs(1e-4)).expect("matches ONNX Runtime");
    concurrent(&model, &input);
}

/// 8 threads, different batch sizes each, all against answers computed one at a time.
fn concurrent(model: &Arc<Model>, input: &Tensor) {
    let want: Vec<Tensor> = (1..=8)
        .map(|b| model.run(vec![rows(input, b)]).expect("run").remove(0))
        .collect();
    std::thread::scope(|s| {
        for (i, want) in want.iter().enumerate() {
            let model = model.clone();
            s.spawn(move || {
                for _ in 0..5 {
                    let got = model
                        .run(vec![rows(input, i + 1)])
                        .expect("concurrent run")
                        .remove(0);
                    compare(&got, want, Tolerance::MaxAbs(1e-5))
                        .expect("same answer under concurrency");
                }
            });
        }
    });
}

#[test]
fn gpu_matches_the_cpu_for_any_batch_and_under_concurrency() {
    if !has_gpu() {
        tern_skips::skip_unless_required("TERN_REQUIRE_GPU", "there is no GPU adapter");
        return;
    }
    let (bytes, input, expected) = mlp();
    let gpu = Arc::new(load(&bytes, Device::Gpu).expect("load on the GPU"));
    assert!(matches!(gpu.placement(), Placement::Gpu { .. }));
    let cpu = load(&bytes, Device::Cpu).expect("load");
    let out = gpu.run(vec![input.clone()]).expect("run");
    compare(&out[0], &expected, Tolerance::MaxAbs(1e-4)).expect("matches ONNX Runtime");
    for b in [1, 3, 9] {
        let x = rows(&input, b);
        let g = gpu.run(vec![x.clone()]).expect("gpu").remove(0);
        let c = cpu.run(vec![x]).expect("cpu").remove(0);
        assert_eq!(g.shape, vec![b, 3]);
        compare(&g, &c, Tolerance::MaxAbs(1e-4)).expect("gpu = cpu");
    }
    concurrent(&gpu, &input);
    // auto takes a hardware GPU and never a software rasterizer (CI's only adapter).
    let auto = load(&bytes, Device::Auto).expect("auto");
    let software = list_adapters().iter().all(|a| a.device_type == "cpu");
    if software {
        assert_eq!(auto.placement(), Placement::Cpu);
        let reason = auto.fallback_reason().expect("a reason");
        assert!(reason.contains("software"), "{reason}");
    } else {
        assert!(
            matches!(auto.placement(), Placement::Gpu { .. }),
            "auto picks the GPU"
        );
    }
}

#[test]
fn bad_requests_are_named_errors() {
    let (bytes, input, _) = mlp();
    let model = load(&bytes, Device::Cpu).expect("load");
    let mut wrong_type = input.clone();
    wrong_type.dtype = DType::I32;
    let err = model.run(vec![wrong_type]).unwrap_err().to_string();
    assert!(
        err.contains("dtype is int32, the model takes float32"),
        "{err}"
    );
    let narrow = Tensor::from_f32("input", vec![1, 31], &[0.0; 31]);
    let err = model.run(vec![narrow]).unwrap_err().to_string();
    assert!(
        err.contains("the model takes [") && err.contains(", 32]"),
        "{err}"
    );
    let short = Tensor {
        data: vec![0; 7],
        ..input.clone()
    };
    assert!(matches!(
        model.run(vec![short]),
        Err(InferError::BadInput { .. })
    ));
    let err = model.run(vec![]).unwrap_err().to_string();
    assert!(err.contains("input `input`: missing"), "{err}");
    let err = model
        .run(vec![
            input.clone(),
            Tensor {
                name: "extra".into(),
                ..input
            },
        ])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`extra`: the model has no such input"),
        "{err}"
    );
}

#[test]
fn broken_oversized_and_external_models_are_refused() {
    let (bytes, _, _) = mlp();
    let limited = ModelOptions {
        device: Device::Cpu,
        max_model_bytes: 1000,
        ..ModelOptions::default()
    };
    assert!(matches!(
        Model::load(&bytes, &limited),
        Err(InferError::TooLarge { limit: 1000, .. })
    ));
    assert!(matches!(
        load(b"not a model", Device::Cpu),
        Err(InferError::InvalidModel(_))
    ));
    assert!(load(&bytes[..bytes.len() / 2], Device::Cpu).is_err());
    assert!(load(&[], Device::Auto).is_err());

    let mut external = relu_model();
    let graph = external.graph.as_mut().expect("graph");
    graph.initializer.push(pb::TensorProto {
        name: "w".into(),
        dims: vec![4],
        data_type: 1,
        data_location: Some(pb::tensor_proto::DataLocation::External as i32),
        external_data: vec![pb::StringStringEntryProto {
            key: "location".into(),
            value: "../../etc/passwd".into(),
        }],
        ..Default::default()
    });
    let err = load(&external.encode_to_vec(), Device::Auto).unwrap_err();
    assert_eq!(err, InferError::ExternalData { tensor: "w".into() });
}

/// 100 GiB of f32.
const HUGE: i64 = 25 << 30;

#[test]
fn a_model_declaring_a_huge_tensor_is_refused_before_anything_is_allocated() {
    // A declared input of 100 GiB.
    let mut input = relu_model();
    let graph = input.graph.as_mut().expect("graph");
    graph.input = vec![value_info("x", 1, &[Some(1), Some(HUGE)])];
    graph.output = vec![value_info("y", 1, &[Some(1), Some(HUGE)])];
    let err = load(&input.encode_to_vec(), Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, InferError::TensorTooLarge { tensor, bytes, .. } if tensor == "x" && *bytes == 100 << 30),
        "{err}"
    );
    // An initializer that claims 100 GiB with no data behind it.
    let mut weights = relu_model();
    weights
        .graph
        .as_mut()
        .expect("graph")
        .initializer
        .push(pb::TensorProto {
            name: "w".into(),
            dims: vec![HUGE],
            data_type: 1,
            ..Default::default()
        });
    let err = load(&weights.encode_to_vec(), Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, InferError::TensorTooLarge { tensor, .. } if tensor == "w"),
        "{err}"
    );
    // A shape only tract infers: ConstantOfShape of a constant [1, HUGE].
    let shape = pb::TensorProto {
        name: "shape".into(),
        dims: vec![2],
        data_type: 7,
        int64_data: vec![1, HUGE],
        ..Default::default()
    };
    let mut inferred = one_node_model(
        pb::NodeProto {
            op_type: "ConstantOfShape".into(),
            input: vec!["shape".into()],
            output: vec!["y".into()],
            name: "fill".into(),
            ..Default::default()
        },
        vec![shape],
    );
    let graph = inferred.graph.as_mut().expect("graph");
    graph.input.clear();
    graph.output = vec![value_info("y", 1, &[None, None])];
    let err = load(&inferred.encode_to_vec(), Device::Cpu).unwrap_err();
    assert!(matches!(&err, InferError::TensorTooLarge { .. }), "{err}");
    // Under a bound of its own, a small model is refused too: the bound is the operator's.
    let strict = ModelOptions {
        device: Device::Cpu,
        max_tensor_bytes: 8,
        ..ModelOptions::default()
    };
    assert!(matches!(
        Model::load(&relu_model().encode_to_vec(), &strict),
        Err(InferError::TensorTooLarge { limit: 8, .. })
    ));
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(n) => Value::DimValue(*n),
                                None => Value::DimParam("N".into()),
                            }),
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

fn one_node_model(node: pb::NodeProto, initializer: Vec<pb::TensorProto>) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: vec![node],
            input: vec![value_info("x", 1, &[None, Some(4)])],
            output: vec![value_info("y", 1, &[None, Some(4)])],
            initializer,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn relu_model() -> pb::ModelProto {
    one_node_model(
        pb::NodeProto {
            op_type: "Relu".into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            name: "relu".into(),
            ..Default::default()
        },
        vec![],
    )
}

/// CumSum: an operator tract runs and our GPU executor does not.
fn cumsum_model() -> pb::ModelProto {
    let axis = pb::TensorProto {
        name: "axis".into(),
        dims: vec![],
        data_type: 7,
        int64_data: vec![1],
        ..Default::default()
    };
    one_node_model(
        pb::NodeProto {
            op_type: "CumSum".into(),
            input: vec!["x".into(), "axis".into()],
            output: vec!["y".into()],
            name: "running".into(),
            ..Default::default()
        },
        vec![axis],
    )
}

#[test]
fn auto_falls_back_to_the_cpu_and_says_which_op() {
    let bytes = cumsum_model().encode_to_vec();
    let x = Tensor::from_f32("x", vec![1, 4], &[1.0, 2.0, 3.0, 4.0]);
    let auto = load(&bytes, Device::Auto).expect("auto loads");
    assert_eq!(auto.placement(), Placement::Cpu);
    let reason = auto.fallback_reason().expect("a reason");
    let y = auto.run(vec![x]).expect("run").remove(0);
    assert_eq!(y.to_f64_vec(), vec![1.0, 3.0, 6.0, 10.0]);
    let hardware = list_adapters().iter().any(|a| a.device_type != "cpu");
    if hardware {
        assert!(reason.to_lowercase().contains("cumsum"), "{reason}");
    }
    if has_gpu() {
        let err = load(&bytes, Device::Gpu).unwrap_err();
        assert!(matches!(err, InferError::UnsupportedOp { .. }), "{err}");
        assert!(err.to_string().contains("running"), "names the node: {err}");
        assert!(err.to_string().contains("CumSum"), "names the op: {err}");
    } else {
        assert!(reason.contains("adapter"), "{reason}");
    }
}

#[test]
fn a_relu_runs_the_same_on_every_device() {
    let bytes = relu_model().encode_to_vec();
    let x = Tensor::from_f32(
        "x",
        vec![2, 4],
        &[-1.0, 2.0, -3.0, 4.0, 0.5, -0.5, 0.0, 9.0],
    );
    let mut devices = vec![Device::Cpu, Device::Auto];
    if has_gpu() {
        devices.push(Device::Gpu);
    }
    for device in devices {
        let model = load(&bytes, device).expect("load");
        let y = model.run(vec![x.clone()]).expect("run").remove(0);
        assert_eq!(
            y.to_f64_vec(),
            vec![0.0, 2.0, 0.0, 4.0, 0.5, 0.0, 0.0, 9.0],
            "{device:?}"
        );
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// How a load of bad bytes on the CPU may fail: a refusal naming what is wrong. Never
    /// `Panicked` (tract panicked, and only the catch saved the process) nor `Internal` (an
    /// invariant of ours broke); neither may a corrupted model reach.
    fn is_a_refusal_of_the_model(err: &InferError) -> bool {
        matches!(
            err,
            InferError::TooLarge { .. }
                | InferError::TensorTooLarge { .. }
                | InferError::ExternalData { .. }
                | InferError::InvalidModel(_)
                | InferError::Unsupported { .. }
        )
    }

    /// How a run of a corrupted model that loaded may fail: the input does not fit what the
    /// model now declares, planning for the input's shapes fails, or tract fails while running.
    fn is_a_refusal_of_the_run(err: &InferError) -> bool {
        matches!(
            err,
            InferError::BadInput { .. }
                | InferError::InvalidModel(_)
                | InferError::Unsupported { .. }
                | InferError::Run(_)
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Corrupted models load and run, or are refused plainly: tract never panics on them
        /// (a caught panic would be `Panicked`) and no invariant of ours breaks.
        #[test]
        fn corrupted_models_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = relu_model().encode_to_vec();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            match load(&bytes, Device::Cpu) {
                Ok(model) => {
                    let input = Tensor::from_f32("x", vec![1, 4], &[1.0; 4]);
                    if let Err(err) = model.run(vec![input]) {
                        prop_assert!(is_a_refusal_of_the_run(&err), "run: {err:?}");
                    }
                }
                Err(err) => {
                    prop_assert!(is_a_refusal_of_the_model(&err), "load: {err:?}");
                }
            }
        }

        /// Arbitrary bytes load or are refused plainly, never through a caught panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(err) = load(&bytes, Device::Cpu) {
                prop_assert!(is_a_refusal_of_the_model(&err), "load: {err:?}");
            }
        }
    }
}

#[test]
fn model_runs_add_to_the_gpus_busy_time() {
    if !has_gpu() {
        tern_skips::skip_unless_required("TERN_REQUIRE_GPU", "there is no GPU adapter");
        return;
    }
    let (bytes, input, _) = mlp();
    let gpu = load(&bytes, Device::Gpu).expect("load on the GPU");
    let (adapter, before) = tern_infer::gpu_busy().expect("the GPU context exists");
    assert!(!adapter.is_empty());
    let before = before.expect("the adapter times compute passes (TIMESTAMP_QUERY)");
    for _ in 0..20 {
        gpu.run(vec![input.clone()]).expect("run");
    }
    let after = tern_infer::gpu_busy()
        .and_then(|(_, busy)| busy)
        .expect("busy time");
    // The counter is process-wide and other tests of this binary use the GPU at the same time,
    // so only growth is this test's own: never a duration.
    assert!(after > before, "busy {before:?} → {after:?}");
}

/// tract#2390: an initializer whose `raw_data` is shorter than its shape says once panicked in
/// `copy_from_slice` while loading; now a clear refusal.
#[test]
fn an_initializer_whose_raw_data_disagrees_with_its_shape_is_refused() {
    let mut model = relu_model();
    if let Some(graph) = model.graph.as_mut() {
        graph.initializer.push(pb::TensorProto {
            name: "w".into(),
            dims: vec![110],
            data_type: 1,
            raw_data: vec![0; 12],
            ..Default::default()
        });
    }
    let err = load(&model.encode_to_vec(), Device::Cpu).expect_err("refused");
    assert!(
        matches!(&err, InferError::InvalidModel(m) if m.contains("does not match shape")),
        "{err}"
    );
}

/// tract#2391: nodes with fewer operands than their operator needs once panicked indexing
/// their inputs in shape inference; now each is refused, naming the count.
#[test]
fn nodes_with_too_few_operands_are_refused() {
    let axis = pb::AttributeProto {
        name: "axis".into(),
        r#type: 2,
        i: 1,
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>| pb::NodeProto {
        op_type: op.into(),
        name: op.to_lowercase(),
        input: inputs.iter().map(|i| (*i).to_owned()).collect(),
        output: vec!["y".into()],
        attribute,
        ..Default::default()
    };
    for node in [
        node("Concat", &[], vec![axis]),
        node("Gemm", &["x"], Vec::new()),
        node("Reshape", &["x"], Vec::new()),
    ] {
        let op = node.op_type.clone();
        let err = load(
            &one_node_model(node, Vec::new()).encode_to_vec(),
            Device::Cpu,
        )
        .expect_err("refused");
        assert!(
            matches!(&err, InferError::InvalidModel(m) if m.contains("input")),
            "{op}: {err}"
        );
    }
}

/// A graph output that names no value of the graph (one corrupted byte of a name does it) is
/// refused plainly; tract looked it up and panicked.
#[test]
fn a_graph_output_that_names_no_value_is_refused() {
    let mut model = relu_model();
    if let Some(graph) = model.graph.as_mut() {
        graph.output[0].name = "nowhere".into();
    }
    let err = load(&model.encode_to_vec(), Device::Cpu).expect_err("refused");
    assert!(
        matches!(&err, InferError::InvalidModel(m) if m.contains("`nowhere`")),
        "{err}"
    );
}

/// The process survives a panic inside tract: a panic tract still has (a STRING initializer
/// given as raw bytes: "unimplemented") is caught as an error and counted, and the next model
/// loads in the same process. The fuzz tests above pin the other side: bad bytes never reach a
/// panic at all.
#[test]
fn a_panic_inside_tract_is_an_error_and_the_next_model_still_loads() {
    let caught_before = tern_infer::panics_caught();
    let mut model = relu_model();
    if let Some(graph) = model.graph.as_mut() {
        graph.initializer.push(pb::TensorProto {
            name: "s".into(),
            dims: vec![1],
            data_type: 8,
            raw_data: b"abc".to_vec(),
            ..Default::default()
        });
    }
    let err = load(&model.encode_to_vec(), Device::Cpu).expect_err("refused");
    // Should tract come to refuse it plainly, this test needs another panic to show the catch.
    assert!(matches!(&err, InferError::Panicked { .. }), "{err}");
    // Process-wide, and other tests of this binary load models at the same time: only growth
    // is this test's own.
    let caught_after = tern_infer::panics_caught();
    assert!(
        caught_after > caught_before,
        "caught panics {caught_before} → {caught_after}"
    );
    load(&relu_model().encode_to_vec(), Device::Cpu).expect("a good model loads after it");
}
