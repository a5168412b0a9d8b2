//! The CPU backend: tract's optimized plans, one per input shape ([`crate::plans`]), each with
//! a pool of run states so that concurrent requests neither serialize on one state nor rebuild
//! one per request.

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{SimplePlan, SimpleState};

use crate::error::InferError;
use crate::plans::{PlanCache, bind_input_shapes, unit_shapes};

/// States kept for reuse per plan; more concurrent requests than this build their own.
const MAX_POOLED_STATES: usize = 16;

#[derive(Debug)]
struct Plan {
    plan: Arc<TypedSimplePlan>,
    states: Mutex<Vec<TypedSimpleState>>,
}

/// The decluttered model and its optimized plans.
#[derive(Debug)]
pub struct CpuBackend {
    model: TypedModel,
    plans: PlanCache<Plan>,
}

impl CpuBackend {
    /// Takes `model` (decluttered, possibly with a symbolic batch) and optimizes it for the
    /// shapes it has with every symbol at 1, so a model tract cannot optimize fails here.
    pub fn new(model: TypedModel) -> Result<CpuBackend, InferError> {
        let backend = CpuBackend {
            model,
            plans: PlanCache::default(),
        };
        backend.plan_for(&unit_shapes(&backend.model)?)?;
        Ok(backend)
    }

    fn plan_for(&self, shapes: &[Vec<usize>]) -> Result<Arc<Plan>, InferError> {
        self.plans.get_or_build(shapes, || {
            let optimized = bind_input_shapes(&self.model, shapes)?
                .into_optimized()
                .map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
            let plan = SimplePlan::new(optimized)
                .map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
            Ok(Plan {
                plan,
                states: Mutex::new(Vec::new()),
            })
        })
    }

    /// Runs one request. Inputs are in the model's input order.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>, InferError> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|v| v.shape().to_vec()).collect();
        let plan = self.plan_for(&shapes)?;
        let pooled = plan.states.lock().ok().and_then(|mut s| s.pop());
        let mut state = match pooled {
            Some(state) => state,
            None => {
                SimpleState::new(&plan.plan).map_err(|e| InferError::Internal(format!("{e:#}")))?
            }
        };
        let outputs = state
            .run(inputs)
            .map_err(|e| InferError::Run(format!("{e:#}")))?;
        if let Ok(mut states) = plan.states.lock()
            && states.len() < MAX_POOLED_STATES
        {
            states.push(state);
        }
        Ok(outputs)
    }
}
