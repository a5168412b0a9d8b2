//! The CPU backend: tract's optimized plan, with a pool of run states so that concurrent requests
//! do not serialize on one state and do not rebuild one per request.

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{SimplePlan, SimpleState};

use crate::error::InferError;

/// States kept for reuse; more concurrent requests than this build their own and drop them.
const MAX_POOLED_STATES: usize = 16;

/// An optimized tract plan and its state pool.
#[derive(Debug)]
pub struct CpuBackend {
    plan: Arc<TypedSimplePlan>,
    states: Mutex<Vec<TypedSimpleState>>,
}

impl CpuBackend {
    /// Optimizes `model` (decluttered, possibly with a symbolic batch) into a runnable plan.
    pub fn new(model: TypedModel) -> Result<CpuBackend, InferError> {
        let optimized = model
            .into_optimized()
            .map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
        let plan =
            SimplePlan::new(optimized).map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
        Ok(CpuBackend {
            plan,
            states: Mutex::new(Vec::new()),
        })
    }

    /// Runs one request. Inputs are in the model's input order.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>, InferError> {
        let pooled = self.states.lock().ok().and_then(|mut s| s.pop());
        let mut state = match pooled {
            Some(state) => state,
            None => {
                SimpleState::new(&self.plan).map_err(|e| InferError::Internal(format!("{e:#}")))?
            }
        };
        let outputs = state
            .run(inputs)
            .map_err(|e| InferError::Run(format!("{e:#}")))?;
        if let Ok(mut states) = self.states.lock()
            && states.len() < MAX_POOLED_STATES
        {
            states.push(state);
        }
        Ok(outputs)
    }
}
