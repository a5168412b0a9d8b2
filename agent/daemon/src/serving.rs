//! The pipelines an agent serves right now: the table the local API reads and the deployer
//! switches atomically, one pipeline at a time, with per-revision request counters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use tern_proto::message::PipelineHealth;

use crate::pipeline::LoadedPipeline;
use crate::telemetry::meter::PipelineMeter;

/// One revision of a pipeline, loaded and answering requests, with its measurements.
#[derive(Debug)]
pub struct ServedPipeline {
    pub name: String,
    pub revision: u64,
    pub pipeline: LoadedPipeline,
    pub meter: PipelineMeter,
}

impl ServedPipeline {
    pub fn new(pipeline: LoadedPipeline, meter: PipelineMeter) -> Self {
        Self {
            name: meter.pipeline.clone(),
            revision: meter.revision,
            pipeline,
            meter,
        }
    }

    /// Counters since the revision was loaded, for the rollout health gates.
    pub fn health(&self) -> PipelineHealth {
        let totals = self.meter.totals();
        PipelineHealth {
            name: self.name.clone(),
            revision: self.revision,
            requests: totals.requests,
            errors: totals.failures(),
            latency_p50_us: totals.latency_us.quantile(0.5),
            latency_p99_us: totals.latency_us.quantile(0.99),
        }
    }
}

/// Pipeline name → the revision serving it, and the pipelines wanted but not serving yet.
#[derive(Debug, Default)]
pub struct ServingTable(
    RwLock<BTreeMap<String, Arc<ServedPipeline>>>,
    RwLock<BTreeSet<String>>,
    /// Revisions switched out or removed since telemetry last took their measurements.
    Mutex<Vec<Arc<ServedPipeline>>>,
);

impl ServingTable {
    /// Records which pipelines are wanted but have no serving revision yet.
    pub fn set_pending(&self, names: BTreeSet<String>) {
        *self.1.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Whether `name` is wanted but not serving yet (requests get 503).
    pub fn is_pending(&self, name: &str) -> bool {
        self.1
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    /// Whether every wanted pipeline is serving.
    pub fn is_ready(&self) -> bool {
        self.1.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The revision serving `name`; requests keep the `Arc` they got even if it is replaced.
    pub fn get(&self, name: &str) -> Option<Arc<ServedPipeline>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Switches `name` to `pipeline` in one step.
    pub fn switch(&self, pipeline: Arc<ServedPipeline>) {
        let old = self
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pipeline.name.clone(), pipeline);
        self.retire(old);
    }

    pub fn remove(&self, name: &str) {
        let old = self
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.retire(old);
    }

    /// Keeps `old` for telemetry's last look at its meter.
    pub fn retire(&self, old: Option<Arc<ServedPipeline>>) {
        if let Some(old) = old {
            self.2.lock().unwrap_or_else(|p| p.into_inner()).push(old);
        }
    }

    /// Revisions that stopped serving since the last call: their last measurements are still
    /// to be taken.
    pub fn take_retired(&self) -> Vec<Arc<ServedPipeline>> {
        std::mem::take(&mut *self.2.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every served pipeline.
    pub fn all(&self) -> Vec<Arc<ServedPipeline>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
