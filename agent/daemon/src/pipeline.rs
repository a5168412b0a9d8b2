//! A pipeline ready to run: plugin steps (compiled components with their limits and instance
//! pools) and model steps (loaded and planned), run in order on one payload. Shared by
//! `run-local` and the daemon's local API.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tern_infer::{InferError, Model, ModelOptions};
use tern_plugin_host::{
    ErrorKind, FailureCause, LoadError, MetricsSink, Payload, Plugin, Step, StepFailure, StepLimits,
};
use tern_proto::manifest;
use tern_proto::telemetry::BAD_INPUT;

use crate::telemetry::meter::PipelineMeter;
use crate::tensors;

/// Why a step could not be loaded or failed on a request. Every message starts with
/// `step <name>:`.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A plugin step failed (trap, deadline, memory, or its own error).
    #[error(transparent)]
    Plugin(#[from] StepFailure),
    #[error("step {step}: {error}")]
    Model { step: String, error: InferError },
    #[error("step {step}: {reason}")]
    ModelInput { step: String, reason: String },
    #[error("step {step}: {error}")]
    Load { step: String, error: LoadError },
}

impl StepError {
    /// The kind of error, as telemetry counts it. `bad-input` is the client's fault; every
    /// other kind counts against the pipeline.
    pub fn kind(&self) -> &'static str {
        match self {
            StepError::Plugin(failure) => match &failure.cause {
                FailureCause::Guest {
                    kind: ErrorKind::InvalidInput,
                    ..
                } => BAD_INPUT,
                FailureCause::Guest { .. } => "plugin-error",
                FailureCause::Configure { .. } | FailureCause::Instantiate(_) => "instantiate",
                FailureCause::Timeout(_) => "timeout",
                FailureCause::MemoryLimit { .. } => "memory",
                FailureCause::Panic(_) => "panic",
                FailureCause::Trap(_) => "trap",
                FailureCause::InvalidOutput(_) => "invalid-output",
            },
            StepError::Model {
                error: InferError::BadInput { .. },
                ..
            } => BAD_INPUT,
            StepError::Model { .. } => "model",
            StepError::ModelInput { .. } => BAD_INPUT,
            StepError::Load { .. } => "load",
        }
    }

    /// Whether the request itself was bad (a client error) rather than the pipeline.
    pub fn is_bad_input(&self) -> bool {
        self.kind() == BAD_INPUT
    }
}

/// One step of a loaded pipeline.
#[derive(Debug)]
pub enum PipelineStep {
    Plugin(Step),
    Model { name: String, model: Model },
}

impl PipelineStep {
    /// A plugin step from a compiled plugin; its custom metrics go to `metrics` when given.
    pub fn plugin(
        plugin: &Plugin,
        name: &str,
        config: &str,
        limits: StepLimits,
        metrics: Option<Arc<dyn MetricsSink>>,
    ) -> Result<Self, StepError> {
        Ok(PipelineStep::Plugin(
            plugin.step_with_metrics(name, config, limits, metrics)?,
        ))
    }

    /// A model step's declared input and output names (empty for a plugin).
    pub fn tensor_names(&self) -> Vec<String> {
        match self {
            PipelineStep::Plugin(_) => Vec::new(),
            PipelineStep::Model { model, .. } => model
                .inputs()
                .iter()
                .chain(model.outputs())
                .map(|io| io.name.clone())
                .collect(),
        }
    }

    /// Where the step runs: `cpu` or the GPU adapter for a model, empty for a plugin.
    pub fn device(&self) -> String {
        match self {
            PipelineStep::Plugin(_) => String::new(),
            PipelineStep::Model { model, .. } => match model.placement() {
                tern_infer::Placement::Cpu => "cpu".to_owned(),
                tern_infer::Placement::Gpu { adapter } => adapter,
            },
        }
    }

    /// A model step from ONNX bytes; a model declaring a tensor over `max_tensor_bytes` is
    /// refused before anything is allocated for it.
    pub fn model(
        name: &str,
        bytes: &[u8],
        device: manifest::Device,
        max_tensor_bytes: u64,
    ) -> Result<Self, StepError> {
        let device = match device {
            manifest::Device::Auto => tern_infer::Device::Auto,
            manifest::Device::Cpu => tern_infer::Device::Cpu,
            manifest::Device::Gpu => tern_infer::Device::Gpu,
        };
        let model = Model::load(
            bytes,
            &ModelOptions {
                device,
                max_tensor_bytes,
                ..ModelOptions::default()
            },
        )
        .map_err(|error| StepError::Model {
            step: name.to_owned(),
            error,
        })?;
        match model.fallback_reason() {
            Some(reason) if device == tern_infer::Device::Auto => {
                tracing::info!(step = name, placement = %model.placement(), reason, "model loaded")
            }
            _ => tracing::info!(step = name, placement = %model.placement(), "model loaded"),
        }
        Ok(PipelineStep::Model {
            name: name.to_owned(),
            model,
        })
    }

    /// Reads a model file (for `run-local`).
    pub fn model_file(
        name: &str,
        path: &Path,
        device: manifest::Device,
        max_tensor_bytes: u64,
    ) -> Result<Self, StepError> {
        let bytes = std::fs::read(path).map_err(|e| StepError::ModelInput {
            step: name.to_owned(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::model(name, &bytes, device, max_tensor_bytes)
    }

    pub fn name(&self) -> &str {
        match self {
            PipelineStep::Plugin(step) => step.name(),
            PipelineStep::Model { name, .. } => name,
        }
    }

    /// Runs the step on one payload.
    pub fn process(&self, payload: Payload) -> Result<Payload, StepError> {
        let _span = tracing::debug_span!("step", step = self.name()).entered();
        match self {
            PipelineStep::Plugin(step) => Ok(step.process(&payload)?),
            PipelineStep::Model { name, model } => {
                let bad = |reason: String| StepError::ModelInput {
                    step: name.clone(),
                    reason,
                };
                let Payload::Tensors(inputs) = payload else {
                    return Err(bad(
                        "a model takes tensors; the previous step gave a blob".into()
                    ));
                };
                let inputs = inputs
                    .into_iter()
                    .map(tensors::to_model)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let outputs = model.run(inputs).map_err(|error| StepError::Model {
                    step: name.clone(),
                    error,
                })?;
                outputs
                    .into_iter()
                    .map(tensors::to_plugin)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Payload::Tensors)
                    .map_err(bad)
            }
        }
    }
}

/// Steps in order.
#[derive(Debug)]
pub struct LoadedPipeline {
    pub steps: Vec<PipelineStep>,
}

impl LoadedPipeline {
    /// Each step's peak memory since the last time this was asked (0 for model steps).
    pub fn take_peak_memory(&self) -> Vec<u64> {
        self.steps
            .iter()
            .map(|step| match step {
                PipelineStep::Plugin(s) => s.take_peak_memory(),
                PipelineStep::Model { .. } => 0,
            })
            .collect()
    }

    /// Runs every step in order.
    pub fn run(&self, mut payload: Payload) -> Result<Payload, StepError> {
        for step in &self.steps {
            payload = step.process(payload)?;
        }
        Ok(payload)
    }

    /// Runs every step in order, recording each step's time and error in `meter`.
    pub fn run_metered(
        &self,
        mut payload: Payload,
        meter: &PipelineMeter,
    ) -> Result<Payload, StepError> {
        for (index, step) in self.steps.iter().enumerate() {
            let watched = meter.features.as_ref().filter(|f| f.step == index);
            if let (Some(features), Payload::Tensors(inputs)) = (watched, &payload) {
                features.record("input", inputs);
            }
            let started = Instant::now();
            match step.process(payload) {
                Ok(output) => {
                    meter.record_step(index, started.elapsed(), None);
                    if let (Some(features), Payload::Tensors(outputs)) = (watched, &output) {
                        features.record("output", outputs);
                    }
                    payload = output;
                }
                Err(error) => {
                    meter.record_step(index, started.elapsed(), Some(error.kind()));
                    return Err(error);
                }
            }
        }
        Ok(payload)
    }
}
