//! Model latency, side by side in one run: our CPU backend against bare tract on the same model,
//! our GPU backend, ONNX Runtime on one thread (when Python has it), and the GPU matmul rate.
//!
//! ```text
//! cargo bench --workspace --bench models --profile dev -- [options]
//!   --models DIR...   model folders with model.onnx and input.npy (default: the fixtures)
//!   --runs N          timed runs per case (default 50)
//!   --batch N         repeat the input's rows to batch N (default: the input's batch)
//!   --gpu             also run the GPU backend
//!   --ort             also run ONNX Runtime (python3 with onnxruntime), one thread
//!   --matmul N        GPU f32 matmul N×N×N: kernel time and TFLOP/s
//!   --test            smoke form: 2 runs per case (what `cargo xtask test` runs)
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;
use tern_infer::onnx_pb as pb;
use tern_infer::tract_onnx::prelude::*;
use tern_infer::{Device, Model, ModelOptions, Tensor, npy};

struct Args {
    models: Vec<PathBuf>,
    runs: usize,
    batch: Option<usize>,
    gpu: bool,
    ort: bool,
    matmul: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        models: vec![],
        runs: 50,
        batch: None,
        gpu: false,
        ort: false,
        matmul: None,
    };
    let mut it = std::env::args().skip(1).peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--models" => {
                while let Some(m) = it.next_if(|m| !m.starts_with("--")) {
                    a.models.push(PathBuf::from(m));
                }
            }
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(50),
            "--batch" => a.batch = it.next().and_then(|v| v.parse().ok()),
            "--gpu" => a.gpu = true,
            "--ort" => a.ort = true,
            "--matmul" => a.matmul = it.next().and_then(|v| v.parse().ok()),
            "--test" => a.runs = 2,
            _ => {} // cargo bench passes --bench
        }
    }
    if a.models.is_empty() && a.matmul.is_none() {
        let root = tern_infer::conformance::fixtures_dir().join("models");
        a.models = ["squeezenet1_1", "mobilenet_v2"]
            .iter()
            .map(|m| root.join(m))
            .filter(|p| p.is_dir())
            .collect();
        if a.models.is_empty() {
            a.models
                .push(tern_infer::conformance::manifest_dir().join("../../examples/models/mlp"));
        }
    }
    a
}

/// Like [`time`] for two calls, alternating them run by run.
fn time_pair(
    runs: usize,
    mut f: impl FnMut(),
    mut g: impl FnMut(),
) -> ((Duration, Duration), (Duration, Duration)) {
    for _ in 0..3 {
        f();
        g();
    }
    let (mut fs, mut gs) = (vec![], vec![]);
    for _ in 0..runs {
        let start = Instant::now();
        f();
        fs.push(start.elapsed());
        let start = Instant::now();
        g();
        gs.push(start.elapsed());
    }
    (quantiles(fs), quantiles(gs))
}

fn quantiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 9 / 10])
}

/// Median and 90th percentile of `runs` timed calls after 3 warm-ups.
fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..3 {
        f();
    }
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    quantiles(samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn batched(t: &Tensor, batch: usize) -> Tensor {
    let row = t.data.len() / t.shape[0];
    let data = (0..batch)
        .flat_map(|b| t.data[(b % t.shape[0]) * row..(b % t.shape[0] + 1) * row].to_vec())
        .collect();
    let mut shape = t.shape.clone();
    shape[0] = batch;
    Tensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
        data,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    println!("| model | batch | engine | median ms | p90 ms | vs tract alone |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for dir in &a.models {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join("model.onnx");
        let bytes = std::fs::read(&path)?;
        let mut input = npy::parse("input", &std::fs::read(dir.join("input.npy"))?)?;
        if let Some(b) = a.batch {
            input = batched(&input, b);
        }
        let batch = input.shape[0];

        let values: Vec<f32> = input
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let tract_input =
            tract_ndarray::ArrayD::from_shape_vec(input.shape.clone(), values)?.into_tensor();

        // Reference: tract alone, with the same calls as our CPU backend (declutter, bind the
        // batch, declutter, optimize) and one state kept across runs.
        let typed = tract_onnx::onnx()
            .model_for_path(&path)?
            .into_typed()?
            .into_decluttered()?;
        let mut symbols = std::collections::HashMap::new();
        for (dim, &n) in typed.input_fact(0)?.shape.iter().zip(&input.shape) {
            if let TDim::Sym(s) = dim {
                symbols.insert(s.clone(), TDim::from(n as i64));
            }
        }
        let same = typed
            .set_symbols(&symbols)?
            .into_decluttered()?
            .into_optimized()?
            .into_runnable()?;
        let mut state = tract_onnx::tract_core::internal::SimpleState::new(&same)?;
        let cpu = Model::load(
            &bytes,
            &ModelOptions {
                device: Device::Cpu,
                ..ModelOptions::default()
            },
        )?;
        // Interleaved, so that drift on a shared machine hits both alike.
        let ((bare, bare90), (tern, tern90)) = time_pair(
            a.runs,
            || {
                state
                    .run(tvec![tract_input.clone().into()])
                    .expect("tract run");
            },
            || {
                cpu.run(vec![input.clone()]).expect("cpu run");
            },
        );
        println!(
            "| {name} | {batch} | tract alone, same calls, state kept | {:.2} | {:.2} | 1.00× |",
            ms(bare),
            ms(bare90)
        );

        // tract as its README has it: fix the input shape, optimize, run.
        let readme = tract_onnx::onnx()
            .model_for_path(&path)?
            .with_input_fact(0, f32::fact(&input.shape).into())?
            .into_optimized()?
            .into_runnable()?;
        let (t, t90) = time(a.runs, || {
            readme
                .run(tvec![tract_input.clone().into()])
                .expect("tract run");
        });
        println!(
            "| {name} | {batch} | tract as its README shows | {:.2} | {:.2} | {:.3}× |",
            ms(t),
            ms(t90),
            t.as_secs_f64() / bare.as_secs_f64()
        );

        let (t, t90) = (tern, tern90);
        println!(
            "| {name} | {batch} | tern cpu | {:.2} | {:.2} | {:.3}× |",
            ms(t),
            ms(t90),
            t.as_secs_f64() / bare.as_secs_f64()
        );

        if a.gpu {
            let gpu = Model::load(
                &bytes,
                &ModelOptions {
                    device: Device::Gpu,
                    ..ModelOptions::default()
                },
            )?;
            let (t, t90) = time(a.runs, || {
                gpu.run(vec![input.clone()]).expect("gpu run");
            });
            println!(
                "| {name} | {batch} | tern gpu ({}) end to end | {:.2} | {:.2} | {:.3}× |",
                gpu.placement(),
                ms(t),
                ms(t90),
                t.as_secs_f64() / bare.as_secs_f64()
            );
            if let Some(Ok(k)) = gpu.time_gpu_dispatches(vec![input.clone()], 20) {
                println!(
                    "| {name} | {batch} | tern gpu kernels only | {:.3} | | |",
                    ms(k)
                );
            }
        }
        if a.ort {
            let script = tern_infer::conformance::manifest_dir().join("benches/ort_reference.py");
            let out = Command::new("python3")
                .arg(script)
                .arg(&path)
                .arg(dir.join("input.npy"))
                .arg(a.runs.to_string())
                .arg(batch.to_string())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            match text.split_whitespace().collect::<Vec<_>>()[..] {
                [median, p90] => {
                    let median: f64 = median.parse()?;
                    println!(
                        "| {name} | {batch} | onnxruntime 1 thread | {median:.2} | {p90} | {:.3}× |",
                        median / ms(bare)
                    );
                }
                _ => println!(
                    "| {name} | {batch} | onnxruntime | unavailable: {} | | |",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ),
            }
        }
    }
    if let Some(n) = a.matmul {
        matmul(n)?;
    }
    Ok(())
}

/// Y = X · W with W an initializer: the GPU kernel's rate without transfers.
fn matmul(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let info = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(Value::DimValue(n as i64)),
                            ..Default::default()
                        };
                        2
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let weights: Vec<u8> = (0..n * n)
        .flat_map(|i| ((i % 17) as f32 * 0.01).to_le_bytes())
        .collect();
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                op_type: "MatMul".into(),
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![info("x")],
            output: vec![info("y")],
            initializer: vec![pb::TensorProto {
                name: "w".into(),
                dims: vec![n as i64, n as i64],
                data_type: 1,
                raw_data: weights,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let gpu = Model::load(
        &model.encode_to_vec(),
        &ModelOptions {
            device: Device::Gpu,
            ..ModelOptions::default()
        },
    )?;
    let x = Tensor::from_f32("x", vec![n, n], &vec![0.5; n * n]);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        if let Some(t) = gpu.time_gpu_dispatches(vec![x.clone()], 10) {
            best = best.min(t?);
        }
    }
    let flops = 2.0 * (n as f64).powi(3);
    println!();
    println!("| f32 matmul | adapter | kernel ms (best of 5 × 10) | TFLOP/s |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {n}×{n}×{n} | {} | {:.3} | {:.2} |",
        gpu.placement(),
        ms(best),
        flops / best.as_secs_f64() / 1e12
    );
    Ok(())
}
