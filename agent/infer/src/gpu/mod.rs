//! The GPU backend: our own executor on wgpu.
//!
//! tract parses the ONNX model and declutters it into a small set of core ops; [`lower`] turns
//! that graph, once shapes are concrete, into a [`program::Program`] of WGSL kernel dispatches;
//! [`plan::Plan`] uploads the weights once, assigns activation buffers by liveness and records
//! every dispatch of a run into one command buffer. A model with a symbolic batch gets one plan
//! per batch size it sees (a few are kept).

pub mod context;
pub mod kernels;
pub mod lower;
pub mod plan;
pub mod prep;
pub mod program;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

pub use context::{GpuContext, gpu_busy, shared_context};

use crate::error::InferError;
use crate::tensor::Tensor as HostTensor;
use plan::{Plan, WeightCache};

/// Plans kept per model, one per set of input shapes.
const MAX_PLANS: usize = 4;

/// A plan and the input shapes it was built for.
type PlanEntry = (Vec<Vec<usize>>, Arc<Plan>);

/// A model lowered for the GPU.
#[derive(Debug)]
pub struct GpuBackend {
    context: Arc<GpuContext>,
    model: TypedModel,
    plans: Mutex<Vec<PlanEntry>>,
    weights: WeightCache,
}

impl GpuBackend {
    /// Lowers `model` (decluttered; symbolic dimensions allowed). The model is planned once with
    /// every symbol set to 1, so an operator we lack is found here, not at the first request.
    pub fn new(model: &TypedModel, context: Arc<GpuContext>) -> Result<GpuBackend, InferError> {
        let backend = GpuBackend {
            context,
            model: model.clone(),
            plans: Mutex::new(Vec::new()),
            weights: Mutex::new(HashMap::new()),
        };
        let probe = crate::model::unit_shapes(model)?;
        backend.plan_for(&probe)?;
        Ok(backend)
    }

    pub fn adapter_name(&self) -> &str {
        self.context.adapter_name()
    }

    fn plan_for(&self, shapes: &[Vec<usize>]) -> Result<Arc<Plan>, InferError> {
        {
            let plans = self
                .plans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, plan)) = plans.iter().find(|(s, _)| s == shapes) {
                return Ok(plan.clone());
            }
        }
        let concrete = crate::model::bind_input_shapes(&self.model, shapes)?;
        let program = lower::lower(&concrete)?;
        tracing::debug!(
            steps = program.steps.len(),
            buffers = program.buffers.len(),
            "GPU plan built"
        );
        let plan = Arc::new(Plan::new(self.context.clone(), program, &self.weights)?);
        let mut plans = self
            .plans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if plans.len() >= MAX_PLANS {
            plans.remove(0);
        }
        plans.push((shapes.to_vec(), plan.clone()));
        Ok(plan)
    }

    /// Time of one run's dispatches alone, averaged over `repeats` runs in one submission.
    pub fn time_dispatches(
        &self,
        inputs: &[HostTensor],
        repeats: usize,
    ) -> Result<std::time::Duration, InferError> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
        self.plan_for(&shapes)?.time_dispatches(inputs, repeats)
    }

    /// Runs on inputs already ordered and checked against the model.
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, InferError> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
        let plan = self.plan_for(&shapes)?;
        plan.run(inputs)
    }
}
