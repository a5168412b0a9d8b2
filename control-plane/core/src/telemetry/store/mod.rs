//! Time series of the fleet: each agent's bookkeeping ([`AgentMark`]: the highest batch
//! sequence stored, for deduplication), and windows per bucket of time — per agent
//! ([`AgentWindow`]: host and pipelines) and per pipeline fleet-wide ([`PipelineWindow`]).
//!
//! Resolutions are 10 s, 1 min and 1 h. Ingest writes 10 s buckets; compaction merges buckets
//! older than a resolution's horizon into the next coarser one, and deletes 1 h buckets past
//! the retention. Every change (a group of batches with their marks, or one compaction step) is
//! atomic, so a crash leaves each batch either wholly counted or not at all, and its mark says
//! which.
//!
//! Two engines keep them, behind one [`SeriesStore`]:
//! - `entries` (here): records merged in place in a backend's ordered table (a sled database
//!   under `D/telemetry` for a control plane alone; memory in tests): read, merge, write.
//! - any [`SeriesEngine`]: the server's PostgreSQL tables partitioned by day
//!   (`store = "postgres://..."`, shared by replicas), whose ingest appends a group's windows
//!   in one multi-row insert, compaction merges rows into coarser ones, and retention drops
//!   whole partitions.
//!
//! What a group of batches adds is folded in memory first ([`fold`], pure), the same for both.

mod entries;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_proto::telemetry::{HostStats, PipelineStats, TelemetryBatch, merge_into};

use crate::backend::{BackendError, FencedBackend, SharedBackend};
use entries::EntrySeries;

/// Windows are kept in postcard: compact, and fast to merge at ingest rates.
pub mod records {
    use super::TelemetryStoreError;

    pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        // Infallible for these types (no maps with non-string keys, no unsized data).
        postcard::to_stdvec(value).unwrap_or_default()
    }

    pub fn decode<T: serde::de::DeserializeOwned>(
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, TelemetryStoreError> {
        postcard::from_bytes(bytes).map_err(|e| TelemetryStoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }
}

/// A failure of the telemetry database.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryStoreError {
    #[error("telemetry storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error("telemetry record `{key}` is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A resolution: its bucket length and how long buckets stay at it before they are merged into
/// the next coarser one (the coarsest: deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub id: u8,
    pub bucket_ms: u64,
    pub horizon_ms: u64,
}

/// 10 s buckets for 6 h, 1 min buckets for 7 days, then 1 h buckets for the retention.
pub fn resolutions(retention: Duration) -> [Resolution; 3] {
    let retention_ms = retention.as_millis() as u64;
    [
        Resolution {
            id: 0,
            bucket_ms: 10_000,
            horizon_ms: 6 * 3_600_000,
        },
        Resolution {
            id: 1,
            bucket_ms: 60_000,
            horizon_ms: 7 * 24 * 3_600_000,
        },
        Resolution {
            id: 2,
            bucket_ms: 3_600_000,
            horizon_ms: retention_ms.max(7 * 24 * 3_600_000),
        },
    ]
}

/// The times the series take from agents at a moment: from the start of the retention to
/// now. A batch's times are clamped into it, so no agent's clock decides which partitions or
/// buckets exist (a day past the retention, or ahead of now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub oldest_ms: u64,
    pub now_ms: u64,
}

impl Accepted {
    /// At `now_ms`, with `resolutions`' coarsest horizon as the retention.
    pub fn at(now_ms: u64, resolutions: &[Resolution; 3]) -> Self {
        Self {
            oldest_ms: now_ms.saturating_sub(resolutions[2].horizon_ms),
            now_ms,
        }
    }

    /// `t`, clamped into the accepted times.
    pub fn clamp(&self, t: u64) -> u64 {
        t.clamp(self.oldest_ms, self.now_ms)
    }
}

/// Per-agent bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentMark {
    /// Highest sequence number stored; a batch at or below it is a duplicate.
    pub seq: u64,
    /// Batches the agent says it dropped for its buffer cap.
    pub dropped: u64,
    /// Batches stored.
    pub batches: u64,
    /// Host of the newest batch and its interval.
    pub host: HostStats,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// One agent in one bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentWindow {
    /// Newest interval end merged in.
    pub end_ms: u64,
    pub host: HostStats,
    pub pipelines: Vec<PipelineStats>,
}

impl AgentWindow {
    /// Adds one interval of the agent: the newest host wins, pipelines merge.
    fn add(&mut self, end_ms: u64, host: &HostStats, pipelines: &[PipelineStats]) {
        if end_ms >= self.end_ms {
            self.end_ms = end_ms;
            self.host = host.clone();
        }
        for p in pipelines {
            merge_into(&mut self.pipelines, p);
        }
    }
}

/// One pipeline, fleet-wide, in one bucket: per revision and variant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineWindow {
    pub series: Vec<PipelineStats>,
}

/// Every agent's mark from what is stored (agent, bytes; empty: a mark not written yet);
/// corrupt ones are logged and skipped.
pub fn collect_marks<'r>(
    stored: impl IntoIterator<Item = (String, &'r [u8])>,
) -> HashMap<String, AgentMark> {
    let mut out = HashMap::new();
    for (agent, bytes) in stored {
        if bytes.is_empty() {
            out.insert(agent, AgentMark::default());
            continue;
        }
        match records::decode(agent.as_bytes(), bytes) {
            Ok(mark) => {
                out.insert(agent, mark);
            }
            Err(e) => tracing::warn!(error = %e, "corrupt telemetry mark skipped"),
        }
    }
    out
}

/// What one group of batches did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: u64,
    pub duplicates: u64,
    pub points: u64,
}

/// What a group of batches adds, folded in memory.
#[derive(Debug, Default)]
pub struct Folded<'a> {
    /// The marks of the group's agents after it.
    pub marks: BTreeMap<&'a str, AgentMark>,
    /// Each agent's windows of the group, by 10 s bucket start.
    pub agents: BTreeMap<(u64, &'a str), AgentWindow>,
    /// Each pipeline's windows of the group, by 10 s bucket start.
    pub pipelines: BTreeMap<(u64, &'a str), PipelineWindow>,
    pub outcome: IngestOutcome,
    /// Per batch of the group: stored now (not a duplicate).
    pub stored: Vec<bool>,
}

/// Folds a group of batches (agent id, batch), in order, into the windows they add at `raw`
/// resolution, skipping those at or below their agent's mark (`mark_of` reads a mark the first
/// time an agent appears). `accepted` bounds timestamps from agents whose clock runs ahead or
/// far behind.
pub fn fold<'a, E>(
    group: &[(&'a str, &'a TelemetryBatch)],
    accepted: Accepted,
    raw: Resolution,
    mut mark_of: impl FnMut(&'a str) -> Result<AgentMark, E>,
) -> Result<Folded<'a>, E> {
    let mut folded = Folded {
        stored: Vec::with_capacity(group.len()),
        ..Folded::default()
    };
    for &(agent, batch) in group {
        let mark = match folded.marks.entry(agent) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(mark_of(agent)?),
        };
        if batch.seq <= mark.seq {
            folded.outcome.duplicates += 1;
            folded.stored.push(false);
            continue;
        }
        mark.seq = batch.seq;
        mark.dropped = mark.dropped.max(batch.dropped_batches);
        mark.batches += 1;
        let end_ms = accepted.clamp(batch.end_ms);
        if end_ms >= mark.end_ms {
            mark.start_ms = accepted.clamp(batch.start_ms).min(end_ms);
            mark.end_ms = end_ms;
            mark.host = batch.host.clone();
        }
        folded.outcome.stored += 1;
        folded.outcome.points += batch.points();
        folded.stored.push(true);

        let start = filed_at(batch, accepted) / raw.bucket_ms * raw.bucket_ms;
        folded
            .agents
            .entry((start, agent))
            .or_default()
            .add(end_ms, &batch.host, &batch.pipelines);
        for stats in &batch.pipelines {
            let window = folded
                .pipelines
                .entry((start, stats.pipeline.as_str()))
                .or_default();
            merge_into(&mut window.series, stats);
        }
    }
    Ok(folded)
}

/// The time a batch is filed at: its last millisecond, clamped. A batch spans an interval (more
/// when the agent's ticks stall), and one that began before a window's start but holds traffic
/// after it must be read by that window, never left out with its first bucket. Both engines
/// file by this time, and the partitioned one makes the partition of its day.
pub fn filed_at(batch: &TelemetryBatch, accepted: Accepted) -> u64 {
    accepted
        .clamp(batch.end_ms)
        .saturating_sub(1)
        .max(accepted.clamp(batch.start_ms))
}

/// A window of the series: merged with another of the same name (an interval more, or a
/// finer bucket into a coarser one).
pub trait Window: Default + Serialize + serde::de::DeserializeOwned {
    fn merge(&mut self, other: &Self);
}

impl Window for AgentWindow {
    fn merge(&mut self, other: &Self) {
        self.add(other.end_ms, &other.host, &other.pipelines);
    }
}

impl Window for PipelineWindow {
    fn merge(&mut self, other: &Self) {
        for p in &other.series {
            merge_into(&mut self.series, p);
        }
    }
}

/// Which windows a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Agent,
    Pipeline,
}

/// What a window read calls with each window: bucket start, name, the encoded window.
pub type EachWindow<'a> = dyn FnMut(u64, &str, &[u8]) -> Result<(), TelemetryStoreError> + 'a;

/// An engine that keeps the series elsewhere (the server's PostgreSQL tables, partitioned by
/// day), behind a [`SeriesStore`]. Blocking, like [`crate::backend::Backend`].
pub trait SeriesEngine: Send + Sync + std::fmt::Debug {
    /// Every agent's mark.
    fn marks(&self) -> Result<HashMap<String, AgentMark>, TelemetryStoreError>;

    /// Stores a group of batches, skipping those already stored, in one atomic write.
    fn ingest(
        &self,
        group: &[(&str, &TelemetryBatch)],
        accepted: Accepted,
        raw: Resolution,
    ) -> Result<(IngestOutcome, Vec<bool>), TelemetryStoreError>;

    /// One compaction pass (see [`SeriesStore::compact`]).
    fn compact(
        &self,
        resolutions: &[Resolution; 3],
        now_ms: u64,
    ) -> Result<u64, TelemetryStoreError>;

    /// Calls `each` with every stored window of `kind` (bucket start, name, encoded window)
    /// whose bucket starts in `span`, at every resolution; with `only`, of that name alone.
    fn windows(
        &self,
        resolutions: &[Resolution; 3],
        kind: Kind,
        span: (u64, u64),
        only: Option<&str>,
        each: &mut EachWindow<'_>,
    ) -> Result<(), TelemetryStoreError>;

    /// The same series, with every compaction fenced by `lease` at `epoch`.
    fn fenced(&self, lease: &'static str, epoch: u64) -> Arc<dyn SeriesEngine>;

    /// Windows stored per resolution (agents and pipelines).
    fn window_counts(&self, resolutions: &[Resolution; 3])
    -> Result<[u64; 3], TelemetryStoreError>;
}

/// The telemetry database.
#[derive(Debug, Clone)]
pub struct SeriesStore {
    engine: Engine,
    /// The backend, for the storage probe.
    backend: SharedBackend,
    resolutions: [Resolution; 3],
}

#[derive(Debug, Clone)]
enum Engine {
    Entries(EntrySeries),
    Other(Arc<dyn SeriesEngine>),
}

impl SeriesStore {
    /// Series kept as records in `backend`'s table, written by one process (sled; memory).
    pub fn new(backend: SharedBackend, retention: Duration) -> Self {
        Self {
            engine: Engine::Entries(EntrySeries::new(backend.clone())),
            backend,
            resolutions: resolutions(retention),
        }
    }

    /// Series kept by `engine`, on `backend` (for the storage probe).
    pub fn on_engine(
        engine: Arc<dyn SeriesEngine>,
        backend: SharedBackend,
        retention: Duration,
    ) -> Self {
        Self {
            engine: Engine::Other(engine),
            backend,
            resolutions: resolutions(retention),
        }
    }

    /// The same series, with every compaction fenced by `fenced`'s lease and epoch (the
    /// holder of the work lease): writes through it, or checked against the epoch it keeps.
    pub fn fenced(&self, fenced: FencedBackend) -> Self {
        let engine = match &self.engine {
            Engine::Entries(entries) => Engine::Entries(entries.on(Arc::new(fenced))),
            Engine::Other(other) => Engine::Other(other.fenced(fenced.lease(), fenced.epoch())),
        };
        Self {
            engine,
            backend: self.backend.clone(),
            resolutions: self.resolutions,
        }
    }

    /// The backend, for the storage probe.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// Makes everything written so far durable (blocking).
    pub fn flush(&self) -> Result<(), TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.flush(),
            // Every ingest commits synchronously.
            Engine::Other(_) => Ok(()),
        }
    }

    /// Every agent's mark.
    pub fn marks(&self) -> Result<HashMap<String, AgentMark>, TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.marks(),
            Engine::Other(other) => other.marks(),
        }
    }

    /// Stores a group of batches (agent id, batch), in order, skipping those already stored,
    /// in one atomic write. Timestamps are clamped to the retention before `now_ms` and to
    /// `now_ms` itself ([`Accepted`]).
    pub fn ingest(
        &self,
        group: &[(&str, &TelemetryBatch)],
        now_ms: u64,
    ) -> Result<(IngestOutcome, Vec<bool>), TelemetryStoreError> {
        let raw = self.resolutions[0];
        let accepted = Accepted::at(now_ms, &self.resolutions);
        match &self.engine {
            Engine::Entries(entries) => entries.ingest(group, accepted, raw),
            Engine::Other(other) => other.ingest(group, accepted, raw),
        }
    }

    /// Merges buckets past each resolution's horizon into the next coarser one and deletes
    /// the coarsest past the retention. Returns the buckets rewritten.
    pub fn compact(&self, now_ms: u64) -> Result<u64, TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.compact(&self.resolutions, now_ms),
            Engine::Other(other) => other.compact(&self.resolutions, now_ms),
        }
    }

    /// Windows stored per resolution (agents and pipelines), counted: for tests.
    pub fn window_counts(&self) -> Result<[u64; 3], TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.window_counts(&self.resolutions),
            Engine::Other(other) => other.window_counts(&self.resolutions),
        }
    }

    /// Windows of `kind` whose bucket starts in `[from_ms, to_ms]`, at every resolution; with
    /// `only`, those of that name alone (others are not decoded).
    fn windows<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        span: (u64, u64),
        only: Option<&str>,
        mut each: impl FnMut(u64, &str, T),
    ) -> Result<(), TelemetryStoreError> {
        let mut decoded = |start: u64, name: &str, bytes: &[u8]| {
            each(start, name, records::decode(name.as_bytes(), bytes)?);
            Ok(())
        };
        match &self.engine {
            Engine::Entries(entries) => {
                entries.windows(&self.resolutions, kind, span, only, &mut decoded)
            }
            Engine::Other(other) => {
                other.windows(&self.resolutions, kind, span, only, &mut decoded)
            }
        }
    }

    /// Each pipeline's series merged over `[from_ms, to_ms]`, with the oldest bucket start seen.
    pub fn pipelines(
        &self,
        from_ms: u64,
        to_ms: u64,
        only: Option<&str>,
    ) -> Result<BTreeMap<String, (u64, Vec<PipelineStats>)>, TelemetryStoreError> {
        let mut out: BTreeMap<String, (u64, Vec<PipelineStats>)> = BTreeMap::new();
        self.windows::<PipelineWindow>(
            Kind::Pipeline,
            (from_ms, to_ms),
            only,
            |start, name, window| {
                let (first, series) = out.entry(name.to_owned()).or_insert((start, Vec::new()));
                *first = (*first).min(start);
                for stats in &window.series {
                    merge_into(series, stats);
                }
            },
        )?;
        Ok(out)
    }

    /// Pipeline `name` over `[from_ms, to_ms]` in steps of `step_ms`: each step's start and
    /// its series (revisions, variants) merged. Steps without data are left out.
    pub fn pipeline_series(
        &self,
        name: &str,
        from_ms: u64,
        to_ms: u64,
        step_ms: u64,
    ) -> Result<BTreeMap<u64, PipelineStats>, TelemetryStoreError> {
        let step_ms = step_ms.max(1);
        let mut out: BTreeMap<u64, PipelineStats> = BTreeMap::new();
        self.windows::<PipelineWindow>(
            Kind::Pipeline,
            (from_ms, to_ms),
            Some(name),
            |start, _, window| {
                let slot = out.entry(start / step_ms * step_ms).or_default();
                for stats in &window.series {
                    slot.merge(stats);
                }
            },
        )?;
        Ok(out)
    }

    /// Each agent's windows merged over `[from_ms, to_ms]`.
    pub fn agents(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<String, AgentWindow>, TelemetryStoreError> {
        let mut out: BTreeMap<String, AgentWindow> = BTreeMap::new();
        self.windows::<AgentWindow>(Kind::Agent, (from_ms, to_ms), None, |_, name, window| {
            out.entry(name.to_owned()).or_default().merge(&window);
        })?;
        Ok(out)
    }
}
