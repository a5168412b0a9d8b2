//! Store-and-forward telemetry (design section 8).
//!
//! Requests record into per-revision [`meter`]s without locks. Once per interval the collector
//! takes every meter (also of revisions switched out since), samples the [`host`], and appends
//! one batch to the durable [`buffer`]; the [`shipper`] sends batches whenever the link is up
//! and deletes them only when the control plane acknowledges them. [`exposition`] renders the
//! same numbers for Prometheus on the local API.

pub mod buffer;
pub mod exposition;
pub mod features;
pub mod host;
pub mod meter;
pub mod shipper;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_proto::telemetry::{HostStats, TelemetryBatch};
use tern_proto::{Capacity, MAX_FRAME_LEN};
use tokio::sync::watch;
use tracing::{debug, warn};

use buffer::TelemetryBuffer;
use host::HostSampler;

use crate::serving::ServingTable;

/// What the local API's `/metrics` shows besides the pipelines' totals.
#[derive(Debug)]
pub struct TelemetryState {
    pub buffer: Arc<TelemetryBuffer>,
    /// The host as last sampled.
    pub host: Mutex<HostStats>,
    /// Free space and failures of the data directory's storage.
    pub storage: Arc<tern_transport::storage::StorageMonitor>,
}

/// Shrinks a batch that would not fit in one frame: custom observations go first, then
/// feature distributions lose resolution, then they go, then custom counters.
fn fit_frame(batch: &mut TelemetryBatch) {
    let limit = MAX_FRAME_LEN / 2;
    // Counted, not encoded: the buffer encodes the batch once, when it stores it.
    let size = |b: &TelemetryBatch| {
        postcard::serialize_with_flavor(b, postcard::ser_flavors::Size::default())
            .unwrap_or(usize::MAX)
    };
    if size(batch) <= limit {
        return;
    }
    warn!(
        bytes = size(batch),
        "telemetry batch too large: dropping custom metrics and features"
    );
    for p in &mut batch.pipelines {
        p.steps.iter_mut().for_each(|s| s.observations.clear());
    }
    for bits in [2, 4, 6] {
        if size(batch) <= limit {
            return;
        }
        let features = batch
            .pipelines
            .iter_mut()
            .flat_map(|p| p.features.iter_mut());
        features.for_each(|f| f.coarsen(bits));
    }
    if size(batch) <= limit {
        return;
    }
    batch.pipelines.iter_mut().for_each(|p| p.features.clear());
    for p in &mut batch.pipelines {
        p.steps.iter_mut().for_each(|s| s.counters.clear());
    }
}

/// One batch from everything measured since the previous one.
fn take_batch(
    serving: &ServingTable,
    sampler: &mut HostSampler,
    capacity: &Capacity,
    start_ms: u64,
    end_ms: u64,
) -> TelemetryBatch {
    let mut pipelines: Vec<_> = serving
        .all()
        .iter()
        .flat_map(|served| served.take())
        .collect();
    for served in serving.take_retired() {
        // A revision that was switched out and then saw nothing has nothing to say.
        pipelines.extend(served.take().into_iter().filter(|s| s.requests > 0));
        // Requests that started on it may still be running: it is looked at again until
        // nothing but the retired list holds it.
        if Arc::strong_count(&served) > 1 {
            serving.retire(Some(served));
        }
    }
    let adapters: Vec<String> = capacity.gpus.iter().map(|g| g.name.clone()).collect();
    let mut batch = TelemetryBatch {
        seq: 0,
        start_ms,
        end_ms,
        host: sampler.sample(&adapters),
        pipelines,
        dropped_batches: 0,
    };
    fit_frame(&mut batch);
    batch
}

/// Appends a batch every `interval` until `shutdown`, and one last at shutdown.
pub async fn collect(
    serving: Arc<ServingTable>,
    state: Arc<TelemetryState>,
    sampler: HostSampler,
    capacity: watch::Receiver<Capacity>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let sampler = Arc::new(Mutex::new(sampler));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut start_ms = tern_clock::unix_millis_now();
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = crate::link::stopped(&mut shutdown) => true,
        };
        let end_ms = tern_clock::unix_millis_now();
        let (serving, state, sampler) = (serving.clone(), state.clone(), sampler.clone());
        let capacity = capacity.borrow().clone();
        let appended = tokio::task::spawn_blocking(move || {
            let mut sampler = sampler.lock().unwrap_or_else(|p| p.into_inner());
            let batch = take_batch(&serving, &mut sampler, &capacity, start_ms, end_ms);
            *state.host.lock().unwrap_or_else(|p| p.into_inner()) = batch.host.clone();
            state.buffer.append(batch)
        })
        .await;
        match appended {
            Ok(Ok(seq)) => debug!(seq, "telemetry batch stored"),
            Ok(Err(e)) => warn!(error = %e, "cannot store a telemetry batch"),
            Err(e) => warn!(error = %e, "telemetry task failed"),
        }
        start_ms = end_ms;
        if last {
            return;
        }
    }
}
