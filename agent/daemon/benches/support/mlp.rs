//! The MLP example as the benches serve it: its directory, its one model step on the CPU, and
//! that step's meter.

use std::path::PathBuf;
use std::sync::Arc;

use tern_agent::pipeline::PipelineStep;
use tern_agent::telemetry::meter::{PipelineMeter, StepMeter};
use tern_proto::manifest::Device;
use tern_proto::telemetry::StepKind;

/// `examples/models/mlp`, found from where cargo runs the bench now (a build may come from
/// another checkout sharing the target dir).
pub fn dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../examples/models/mlp")
}

/// The MLP as the step `classify`, on tract.
pub fn step() -> PipelineStep {
    PipelineStep::model_file(
        "classify",
        &dir().join("model.onnx"),
        Device::Cpu,
        tern_infer::DEFAULT_MAX_TENSOR_BYTES,
    )
    .expect("the MLP example loads")
}

/// The meter of pipeline `mlp` revision 1, with its one step.
pub fn meter() -> PipelineMeter {
    PipelineMeter::new(
        "mlp",
        1,
        vec![Arc::new(StepMeter::new("classify", StepKind::Model, "cpu"))],
    )
}
