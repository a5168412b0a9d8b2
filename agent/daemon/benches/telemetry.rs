//! What telemetry costs a request: the same pipeline run with and without its meter, and the
//! meter's recording alone. Run with:
//!
//! ```text
//! cargo bench -p tern-agent --bench telemetry --profile dev
//! ```
//!
//! With drift monitoring the model's inputs and outputs are also recorded per feature.
//! The pipeline is the MLP example (a real ONNX model on tract); a request through the local
//! API adds HTTP and scheduling on top, so the share measured here is an upper bound.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/mlp.rs"]
mod mlp;

use tern_agent::pipeline::LoadedPipeline;
use tern_agent::telemetry::meter::{PipelineMeter, StepMeter};
use tern_plugin_host::Payload;
use tern_proto::telemetry::StepKind;

fn mlp() -> (LoadedPipeline, Payload) {
    let input = std::fs::read(mlp::dir().join("input.npy")).expect("input.npy");
    let tensor = tern_agent::npy::parse("input", &input).expect("input parses");
    (
        LoadedPipeline {
            steps: vec![mlp::step()],
        },
        Payload::Tensors(vec![tensor]),
    )
}

fn telemetry(c: &mut Criterion) {
    let (pipeline, payload) = mlp();
    let meter = mlp::meter();
    let mut group = c.benchmark_group("request");
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("without telemetry", |b| {
        b.iter(|| pipeline.run(payload.clone()).expect("runs"))
    });
    group.bench_function("with telemetry", |b| {
        b.iter(|| {
            let result = pipeline.run_metered(payload.clone(), &meter);
            meter.record_request(Duration::from_micros(3), Duration::from_micros(90), None);
            result.expect("runs")
        })
    });
    // Drift monitoring on: the model's 4×32 inputs and 4×3 outputs into per-feature
    // distributions as well.
    let monitored = PipelineMeter::new(
        "mlp",
        1,
        vec![Arc::new(StepMeter::new("classify", StepKind::Model, "cpu"))],
    )
    .with_features(0, vec![]);
    group.bench_function("with telemetry and drift monitoring", |b| {
        b.iter(|| {
            let result = pipeline.run_metered(payload.clone(), &monitored);
            monitored.record_request(Duration::from_micros(3), Duration::from_micros(90), None);
            result.expect("runs")
        })
    });
    group.finish();
    c.bench_function("meter alone (one request, one step)", |b| {
        b.iter(|| {
            meter.record_step(0, Duration::from_micros(80), None);
            meter.record_request(Duration::from_micros(3), Duration::from_micros(90), None);
        })
    });
    if let Payload::Tensors(inputs) = &payload {
        let outputs = match pipeline.run(payload.clone()) {
            Ok(Payload::Tensors(outputs)) => outputs,
            _ => panic!("the MLP gives tensors"),
        };
        let features = monitored.features.as_ref().expect("monitored");
        c.bench_function("feature meter alone (4x32 inputs, 4x3 outputs)", |b| {
            b.iter(|| {
                features.record("input", inputs);
                features.record("output", &outputs);
            })
        });
    }
    // What the collector does once per interval.
    c.bench_function("take a batch entry", |b| {
        b.iter(|| meter.take(&pipeline.take_peak_memory()))
    });
}

criterion_group!(benches, telemetry);
criterion_main!(benches);
