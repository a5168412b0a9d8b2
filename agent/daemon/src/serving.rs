//! The pipelines an agent serves right now: the table the local API reads and the deployer
//! switches atomically, one pipeline at a time, with per-revision request counters.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tern_proto::message::PipelineHealth;

use crate::pipeline::LoadedPipeline;

/// Latencies kept for percentiles.
const LATENCY_SAMPLES: usize = 1024;

/// One revision of a pipeline, loaded and answering requests.
#[derive(Debug)]
pub struct ServedPipeline {
    pub name: String,
    pub revision: u64,
    pub pipeline: LoadedPipeline,
    requests: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<VecDeque<u64>>,
}

impl ServedPipeline {
    pub fn new(name: &str, revision: u64, pipeline: LoadedPipeline) -> Self {
        Self {
            name: name.to_owned(),
            revision,
            pipeline,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latencies_us: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
        }
    }

    /// Counts one request; `failed` when a step failed (not for bad input).
    pub fn record(&self, latency: Duration, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut samples = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(latency.as_micros() as u64);
    }

    /// Counters since the revision was loaded.
    pub fn health(&self) -> PipelineHealth {
        let mut samples: Vec<u64> = self
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        samples.sort_unstable();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        PipelineHealth {
            name: self.name.clone(),
            revision: self.revision,
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_p50_us: at(0.5),
            latency_p99_us: at(0.99),
        }
    }
}

/// Pipeline name → the revision serving it, and the pipelines wanted but not serving yet.
#[derive(Debug, Default)]
pub struct ServingTable(
    RwLock<BTreeMap<String, Arc<ServedPipeline>>>,
    RwLock<BTreeSet<String>>,
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
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pipeline.name.clone(), pipeline);
    }

    pub fn remove(&self, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
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
