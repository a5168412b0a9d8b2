//! The pipelines an agent serves right now: the table the local API reads and the deployer
//! switches atomically, one pipeline at a time, with per-revision request counters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tern_proto::message::PipelineHealth;
use tern_proto::telemetry::PipelineStats;

use crate::pipeline::LoadedPipeline;
use crate::telemetry::meter::PipelineMeter;

/// One arm of a served revision: the pipeline as loaded for one A/B variant (or the only one),
/// with its share of requests and its measurements.
#[derive(Debug)]
pub struct Arm {
    /// Percent of requests (100 without an experiment).
    pub weight: u32,
    pub pipeline: LoadedPipeline,
    /// Its `variant` names the arm (`None` without an experiment).
    pub meter: PipelineMeter,
}

impl Arm {
    pub fn variant(&self) -> Option<&str> {
        self.meter.variant.as_deref()
    }

    /// What this arm measured since the last take: its meter's counts, with the pipeline's
    /// peak memory per step.
    pub fn take(&self) -> PipelineStats {
        self.meter.take(&self.pipeline.take_peak_memory())
    }

    /// Forgets what this arm measured since the last take (a warm-up is not traffic).
    pub fn discard(&self) {
        self.pipeline.take_peak_memory();
        self.meter.discard();
    }
}

/// One revision of a pipeline, loaded and answering requests, with its measurements.
#[derive(Debug)]
pub struct ServedPipeline {
    pub name: String,
    pub revision: u64,
    /// At least one.
    pub arms: Vec<Arm>,
    /// Picks the arm of requests without a key.
    draws: AtomicU64,
}

/// A well-mixed 64-bit value of `x` (SplitMix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl ServedPipeline {
    pub fn new(name: &str, revision: u64, arms: Vec<Arm>) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            name: name.to_owned(),
            revision,
            arms,
            draws: AtomicU64::new(seed),
        }
    }

    /// The arm a request runs on: by weight, at random, or, when the request carries `key`,
    /// always the same arm for the same key (while the weights stay the same).
    pub fn route(&self, key: Option<&str>) -> &Arm {
        let total: u64 = self.arms.iter().map(|a| u64::from(a.weight)).sum();
        let draw = match key {
            Some(key) => {
                // FNV-1a: stable across processes and releases, unlike std's hasher.
                let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                mix(hash)
            }
            None => mix(self.draws.fetch_add(1, Ordering::Relaxed)),
        };
        let mut point = draw % total.max(1);
        for arm in &self.arms {
            if point < u64::from(arm.weight) {
                return arm;
            }
            point -= u64::from(arm.weight);
        }
        &self.arms[0]
    }

    /// Totals since the revision was loaded, all arms together.
    pub fn totals(&self) -> PipelineStats {
        let mut all = PipelineStats::default();
        for arm in &self.arms {
            all.merge(&arm.meter.totals());
        }
        all
    }

    /// Counters since the revision was loaded, for the rollout health gates.
    pub fn health(&self) -> PipelineHealth {
        let (mut requests, mut errors) = (0u64, 0u64);
        for arm in &self.arms {
            let (r, e) = arm.meter.request_counts();
            requests = requests.saturating_add(r);
            errors = errors.saturating_add(e);
        }
        PipelineHealth {
            name: self.name.clone(),
            revision: self.revision,
            requests,
            errors,
        }
    }

    /// What every arm measured since the last take.
    pub fn take(&self) -> Vec<PipelineStats> {
        self.arms.iter().map(Arm::take).collect()
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

    /// The largest of `measure` over the served pipelines, read in place (no copy of the
    /// table: a request's path may ask).
    pub fn largest(&self, measure: impl Fn(&ServedPipeline) -> usize) -> Option<usize> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|pipeline| measure(pipeline))
            .max()
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
