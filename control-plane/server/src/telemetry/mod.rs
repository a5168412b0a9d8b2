//! Telemetry from agents (design section 8): batches arrive on each agent's telemetry stream,
//! one writer stores them in groups ([`store`]) and acknowledges each only after the group is
//! durable, so an agent deletes nothing the control plane could still lose ([`ingest`]).
//! [`query`] answers `ternctl top`; [`exposition`] renders the fleet for Prometheus, and
//! [`otlp`] exports it.
//!
//! This module holds the telemetry side's state: the series store, the queue between the
//! streams and the writer, and the totals since the start.

pub mod exposition;
pub mod ingest;
pub mod otlp;
pub mod partitioned;
#[cfg(test)]
mod series_tests;
// The series and the queries over them are the fleet core's.
pub use tern_fleet_core::telemetry::{query, store};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use tern_proto::telemetry::{Counts, Histogram, TelemetryBatch, merge_counts};
use tokio::sync::mpsc;

use store::{IngestOutcome, SeriesStore};

/// Batches waiting for the writer, at most (then agents' streams wait).
const QUEUE: usize = 4_096;

/// What the writer tells a telemetry stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// Stored (or already stored) up to this sequence number.
    Stored(u64),
    /// A group could not be stored: the stream is reset and the agent sends again from its
    /// oldest unacknowledged batch.
    Failed,
}

/// A batch waiting to be stored, and where its acknowledgement goes.
#[derive(Debug)]
pub(crate) struct Ingest {
    pub agent: String,
    pub batch: TelemetryBatch,
    pub ack: mpsc::UnboundedSender<Outcome>,
    /// Set when a batch of this stream failed: its later batches are not stored either, or the
    /// agent's mark would pass over the one that failed.
    pub failed: Arc<AtomicBool>,
}

/// Totals since the control plane started, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct FleetTotals {
    pub batches: u64,
    pub duplicates: u64,
    pub points: u64,
    /// (pipeline, revision) → requests, errors by kind, latency.
    pub pipelines: BTreeMap<(String, u64), (u64, Counts, Histogram)>,
}

/// The telemetry side of the control plane.
#[derive(Debug)]
pub struct Telemetry {
    pub store: SeriesStore,
    pub(crate) queue: mpsc::Sender<Ingest>,
    pub totals: Mutex<FleetTotals>,
    /// Pipeline entries of batches dropped because the agent was never given that revision.
    pub dropped_foreign: AtomicU64,
}

/// The writer's end of the queue, taken by [`ingest::run_writer`].
#[derive(Debug)]
pub struct Writer(pub(crate) mpsc::Receiver<Ingest>);

impl Telemetry {
    pub fn new(store: SeriesStore) -> (Self, Writer) {
        let (queue, rx) = mpsc::channel(QUEUE);
        (
            Self {
                store,
                queue,
                totals: Mutex::default(),
                dropped_foreign: AtomicU64::new(0),
            },
            Writer(rx),
        )
    }

    pub fn totals(&self) -> FleetTotals {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn count(&self, group: &[Ingest], stored: &[bool], outcome: IngestOutcome) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        totals.batches += outcome.stored;
        totals.duplicates += outcome.duplicates;
        totals.points += outcome.points;
        for (item, _) in group.iter().zip(stored).filter(|(_, s)| **s) {
            for p in &item.batch.pipelines {
                let entry = totals
                    .pipelines
                    .entry((p.pipeline.clone(), p.revision))
                    .or_default();
                entry.0 = entry.0.saturating_add(p.requests);
                merge_counts(&mut entry.1, &p.errors);
                entry.2.merge(&p.latency_us);
            }
        }
    }
}
