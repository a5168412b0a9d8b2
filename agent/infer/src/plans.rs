//! Plans per set of input shapes, for both backends. tract's kernels and our GPU lowering are
//! both much faster on concrete shapes than on a symbolic batch, so a model gets one plan per
//! set of input shapes it sees; a few are kept ([`MAX_PLANS`]), the oldest going first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;

use crate::error::InferError;

/// Plans kept per model, one per set of input shapes.
pub const MAX_PLANS: usize = 4;

/// The shapes of a model's inputs, in input order.
type Shapes = Vec<Vec<usize>>;

/// The plans of one model, by input shapes.
#[derive(Debug)]
pub(crate) struct PlanCache<P> {
    plans: Mutex<Vec<(Shapes, Arc<P>)>>,
}

impl<P> Default for PlanCache<P> {
    fn default() -> Self {
        Self {
            plans: Mutex::new(Vec::new()),
        }
    }
}

impl<P> PlanCache<P> {
    /// The plan for `shapes`, built by `build` when none is kept. Two requests of a new shape
    /// at once may both build it; the cache keeps one.
    pub fn get_or_build(
        &self,
        shapes: &[Vec<usize>],
        build: impl FnOnce() -> Result<P, InferError>,
    ) -> Result<Arc<P>, InferError> {
        if let Some((_, plan)) = self.lock().iter().find(|(s, _)| s == shapes) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(build()?);
        let mut plans = self.lock();
        if let Some((_, kept)) = plans.iter().find(|(s, _)| s == shapes) {
            return Ok(kept.clone());
        }
        if plans.len() >= MAX_PLANS {
            plans.remove(0);
        }
        plans.push((shapes.to_vec(), plan.clone()));
        Ok(plan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Shapes, Arc<P>)>> {
        self.plans.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `model` with every symbolic input dimension bound from `shapes`, re-decluttered so that shape
/// computations fold away. Backends plan per input shape with it.
pub(crate) fn bind_input_shapes(
    model: &TypedModel,
    shapes: &[Vec<usize>],
) -> Result<TypedModel, InferError> {
    let mut values: HashMap<Symbol, TDim> = HashMap::new();
    let inputs = model
        .input_outlets()
        .map_err(|e| InferError::Internal(format!("{e:#}")))?;
    for (outlet, shape) in inputs.iter().zip(shapes) {
        let fact = model
            .outlet_fact(*outlet)
            .map_err(|e| InferError::Internal(format!("{e:#}")))?;
        for (dim, &n) in fact.shape.iter().zip(shape) {
            if let TDim::Sym(s) = dim {
                values.insert(s.clone(), (n as i64).into());
            }
        }
    }
    if values.is_empty() {
        return Ok(model.clone());
    }
    model
        .set_symbols(&values)
        .and_then(TypedModel::into_decluttered)
        .map_err(|e| InferError::InvalidModel(format!("binding input shapes: {e:#}")))
}

/// Each input's shape with symbolic dimensions at 1: the shapes a model is planned for at load.
pub(crate) fn unit_shapes(model: &TypedModel) -> Result<Vec<Vec<usize>>, InferError> {
    model
        .input_outlets()
        .map_err(|e| InferError::Internal(format!("{e:#}")))?
        .iter()
        .map(|&o| {
            model
                .outlet_fact(o)
                .map(|f| f.shape.iter().map(|d| d.to_usize().unwrap_or(1)).collect())
                .map_err(|e| InferError::Internal(format!("{e:#}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_built_once_per_shape_and_the_oldest_goes_first() {
        let cache: PlanCache<usize> = PlanCache::default();
        let builds = std::cell::Cell::new(0);
        let get = |batch: usize| {
            *cache
                .get_or_build(&[vec![batch, 3]], || {
                    builds.set(builds.get() + 1);
                    Ok(batch)
                })
                .expect("built")
        };
        assert_eq!(get(1), 1);
        assert_eq!(get(1), 1);
        assert_eq!(builds.get(), 1, "kept");
        for batch in 2..=MAX_PLANS + 1 {
            get(batch);
        }
        assert_eq!(builds.get(), MAX_PLANS + 1);
        get(MAX_PLANS + 1);
        assert_eq!(builds.get(), MAX_PLANS + 1, "the newest is kept");
        get(1);
        assert_eq!(builds.get(), MAX_PLANS + 2, "the oldest went");
    }

    #[test]
    fn a_failed_build_keeps_nothing() {
        let cache: PlanCache<usize> = PlanCache::default();
        let failed = cache.get_or_build(&[vec![1]], || Err(InferError::Internal("no".into())));
        assert!(failed.is_err());
        assert_eq!(*cache.get_or_build(&[vec![1]], || Ok(7)).expect("built"), 7);
    }
}
