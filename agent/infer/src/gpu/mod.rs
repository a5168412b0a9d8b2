//! The GPU backend: our own executor on wgpu.
//!
//! tract parses the ONNX model and declutters it into a small set of core ops; [`lower`] turns
//! that graph, once shapes are concrete, into a [`program::Program`] of WGSL kernel dispatches;
//! [`plan::Plan`] uploads the weights once, assigns activation buffers by liveness and records
//! every dispatch of a run into one command buffer. A model with a symbolic batch gets one plan
//! per batch size it sees (a few are kept: [`crate::plans`]).

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
use crate::plans::{PlanCache, bind_input_shapes, unit_shapes};
use crate::tensor::Tensor as HostTensor;
use plan::{Plan, WeightCache};

/// A model lowered for the GPU.
#[derive(Debug)]
pub struct GpuBackend {
    context: Arc<GpuContext>,
    model: TypedModel,
    plans: PlanCache<Plan>,
    weights: WeightCache,
}

impl GpuBackend {
    /// Lowers `model` (decluttered; symbolic dimensions allowed). The model is planned once with
    /// every symbol set to 1, so an operator we lack is found here, not at the first request.
    pub fn new(model: &TypedModel, context: Arc<GpuContext>) -> Result<GpuBackend, InferError> {
        let backend = GpuBackend {
            context,
            model: model.clone(),
            plans: PlanCache::default(),
            weights: Mutex::new(HashMap::new()),
        };
        let probe = unit_shapes(model)?;
        backend.plan_for(&probe)?;
        Ok(backend)
    }

    pub fn adapter_name(&self) -> &str {
        self.context.adapter_name()
    }

    fn plan_for(&self, shapes: &[Vec<usize>]) -> Result<Arc<Plan>, InferError> {
        self.plans.get_or_build(shapes, || {
            let concrete = bind_input_shapes(&self.model, shapes)?;
            let program = lower::lower(&concrete)?;
            tracing::debug!(
                steps = program.steps.len(),
                buffers = program.buffers.len(),
                "GPU plan built"
            );
            Plan::new(self.context.clone(), program, &self.weights)
        })
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
