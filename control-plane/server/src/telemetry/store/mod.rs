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
//! - `entries`: records merged in place in a backend's ordered table (a sled database under
//!   `D/telemetry` for a control plane alone; memory in tests): read, merge, write.
//! - `partitioned`: PostgreSQL tables partitioned by day (`store = "postgres://..."`, shared by
//!   replicas): each ingest group appends its windows in one multi-row insert, compaction merges
//!   rows into coarser ones, and retention drops whole partitions.
//!
//! What a group of batches adds is folded in memory first ([`fold`], pure), the same for both.

mod entries;
mod partitioned;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_proto::telemetry::{HostStats, PipelineStats, TelemetryBatch, merge_into};

use crate::backend::{BackendError, FencedBackend, PostgresBackend, SharedBackend};
use entries::EntrySeries;
use partitioned::PartitionedSeries;

/// Windows are kept in postcard: compact, and fast to merge at ingest rates.
mod records {
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
fn collect_marks<'r>(
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
struct Folded<'a> {
    /// The marks of the group's agents after it.
    marks: BTreeMap<&'a str, AgentMark>,
    /// Each agent's windows of the group, by 10 s bucket start.
    agents: BTreeMap<(u64, &'a str), AgentWindow>,
    /// Each pipeline's windows of the group, by 10 s bucket start.
    pipelines: BTreeMap<(u64, &'a str), PipelineWindow>,
    outcome: IngestOutcome,
    /// Per batch of the group: stored now (not a duplicate).
    stored: Vec<bool>,
}

/// Folds a group of batches (agent id, batch), in order, into the windows they add at `raw`
/// resolution, skipping those at or below their agent's mark (`mark_of` reads a mark the first
/// time an agent appears). `accepted` bounds timestamps from agents whose clock runs ahead or
/// far behind.
fn fold<'a, E>(
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
pub(super) fn filed_at(batch: &TelemetryBatch, accepted: Accepted) -> u64 {
    accepted
        .clamp(batch.end_ms)
        .saturating_sub(1)
        .max(accepted.clamp(batch.start_ms))
}

/// A window of the series: merged with another of the same name (an interval more, or a
/// finer bucket into a coarser one).
trait Window: Default + Serialize + serde::de::DeserializeOwned {
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
enum Kind {
    Agent,
    Pipeline,
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
    Partitioned(PartitionedSeries),
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

    /// Series in PostgreSQL tables of `backend`'s namespace, partitioned by day (created when
    /// missing), which any number of replicas write at once.
    pub fn partitioned(
        backend: Arc<PostgresBackend>,
        retention: Duration,
    ) -> Result<Self, TelemetryStoreError> {
        Ok(Self {
            engine: Engine::Partitioned(PartitionedSeries::open(backend.clone())?),
            backend,
            resolutions: resolutions(retention),
        })
    }

    /// The same series, with every compaction fenced by `fenced`'s lease and epoch (the
    /// holder of the work lease): writes through it, or checked against the epoch it keeps.
    pub fn fenced(&self, fenced: FencedBackend) -> Self {
        let engine = match &self.engine {
            Engine::Entries(entries) => Engine::Entries(entries.on(Arc::new(fenced))),
            Engine::Partitioned(partitioned) => {
                Engine::Partitioned(partitioned.fenced(fenced.lease(), fenced.epoch()))
            }
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

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.flush().await,
            // Every ingest commits synchronously.
            Engine::Partitioned(_) => Ok(()),
        }
    }

    /// Every agent's mark.
    pub fn marks(&self) -> Result<HashMap<String, AgentMark>, TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.marks(),
            Engine::Partitioned(partitioned) => partitioned.marks(),
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
            Engine::Partitioned(partitioned) => partitioned.ingest(group, accepted, raw),
        }
    }

    /// Merges buckets past each resolution's horizon into the next coarser one and deletes
    /// the coarsest past the retention. Returns the buckets rewritten.
    pub fn compact(&self, now_ms: u64) -> Result<u64, TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.compact(&self.resolutions, now_ms),
            Engine::Partitioned(partitioned) => partitioned.compact(&self.resolutions, now_ms),
        }
    }

    /// Windows of `kind` whose bucket starts in `[from_ms, to_ms]`, at every resolution; with
    /// `only`, those of that name alone (others are not decoded).
    fn windows<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        span: (u64, u64),
        only: Option<&str>,
        each: impl FnMut(u64, &str, T),
    ) -> Result<(), TelemetryStoreError> {
        match &self.engine {
            Engine::Entries(entries) => entries.windows(&self.resolutions, kind, span, only, each),
            Engine::Partitioned(partitioned) => {
                partitioned.windows(&self.resolutions, kind, span, only, each)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::postgres::testing::{self, TestPostgres};
    use tern_proto::telemetry::Histogram;

    const DAY: u64 = 24 * 3_600_000;

    /// Where a store keeps its series: a sled database, or a PostgreSQL namespace (skipped
    /// without PostgreSQL's binaries, unless `TERN_REQUIRE_POSTGRES=1`).
    enum Place {
        Sled(tempfile::TempDir),
        Postgres(Arc<TestPostgres>, String),
    }

    fn places() -> Vec<Place> {
        let mut places = vec![Place::Sled(tempfile::tempdir().expect("tempdir"))];
        if let Some(server) = testing::shared() {
            places.push(Place::Postgres(server, testing::namespace()));
        }
        places
    }

    fn postgres(server: &TestPostgres, namespace: &str) -> Arc<PostgresBackend> {
        Arc::new(PostgresBackend::connect(&server.url, namespace, 2).expect("connect"))
    }

    impl Place {
        /// A store on it, as a control plane opens one (again: the same series).
        fn open(&self, retention: Duration) -> SeriesStore {
            match self {
                Place::Sled(dir) => {
                    // sled's flusher thread lets go of the file lock a moment after a drop.
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    loop {
                        match crate::backend::SledBackend::open(dir.path(), 1 << 20) {
                            Ok(backend) => return SeriesStore::new(Arc::new(backend), retention),
                            Err(e) => {
                                assert!(std::time::Instant::now() < deadline, "reopen: {e}");
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                }
                Place::Postgres(server, namespace) => {
                    SeriesStore::partitioned(postgres(server, namespace), retention)
                        .expect("open the series")
                }
            }
        }
    }

    fn window_counts(store: &SeriesStore) -> [u64; 3] {
        match &store.engine {
            Engine::Entries(entries) => entries.window_counts(&store.resolutions),
            Engine::Partitioned(partitioned) => partitioned.window_counts(&store.resolutions),
        }
    }

    fn batch(seq: u64, start_ms: u64, requests: u64) -> TelemetryBatch {
        let mut latency_us = Histogram::default();
        for _ in 0..requests {
            latency_us.record(1_000);
        }
        TelemetryBatch {
            seq,
            start_ms,
            end_ms: start_ms + 10_000,
            pipelines: vec![PipelineStats {
                pipeline: "scores".into(),
                revision: 1,
                requests,
                latency_us,
                ..PipelineStats::default()
            }],
            ..TelemetryBatch::default()
        }
    }

    fn refs(group: &[(String, TelemetryBatch)]) -> Vec<(&str, &TelemetryBatch)> {
        group.iter().map(|(a, b)| (a.as_str(), b)).collect()
    }

    fn requests(store: &SeriesStore, from: u64, to: u64) -> u64 {
        store
            .pipelines(from, to, None)
            .expect("query")
            .get("scores")
            .map_or(0, |(_, s)| s.iter().map(|p| p.requests).sum())
    }

    /// A query from just past a bucket's start reads a batch that began in the bucket before
    /// and ended after that time: its traffic may be after the query's start (an experiment
    /// counted from its apply once missed the first second of its requests so). The boundary
    /// here is midnight too: on PostgreSQL the batch goes to the next day's partition.
    #[test]
    fn a_batch_across_a_bucket_boundary_is_read_from_its_end() {
        for place in places() {
            let now = 100 * DAY + 120_000;
            let store = place.open(Duration::from_secs(90 * 86_400));
            let boundary = 100 * DAY;
            let mut across = batch(1, boundary - 500, 35);
            across.end_ms = boundary + 500;
            let after = batch(2, boundary + 500, 10);
            let group = [
                ("agent-1".to_owned(), across),
                ("agent-1".to_owned(), after),
            ];
            store.ingest(&refs(&group), now).expect("ingest");
            assert_eq!(requests(&store, boundary + 42, now), 45);
            assert_eq!(
                store.agents(boundary + 42, now).expect("agents")["agent-1"].pipelines[0].requests,
                45
            );
        }
    }

    #[test]
    fn duplicates_are_skipped_across_groups_and_reopening() {
        for place in places() {
            let retention = Duration::from_secs(90 * 86_400);
            let now = 100 * DAY;
            let store = place.open(retention);
            let group: Vec<_> = (1..=5)
                .map(|s| {
                    (
                        "agent-1".to_owned(),
                        batch(s, now - 60_000 + s * 10_000, 10),
                    )
                })
                .collect();
            let (outcome, stored) = store.ingest(&refs(&group), now).expect("ingest");
            assert_eq!((outcome.stored, outcome.duplicates), (5, 0));
            assert!(stored.iter().all(|s| *s));
            // Resent after a lost ack, with one new batch, and again after a restart.
            let mut again = group[3..].to_vec();
            again.push(("agent-1".to_owned(), batch(6, now - 1_000, 10)));
            let (outcome, stored) = store.ingest(&refs(&again), now).expect("ingest");
            assert_eq!((outcome.stored, outcome.duplicates), (1, 2));
            assert_eq!(stored, [false, false, true]);
            drop(store);
            let store = place.open(retention);
            let (outcome, _) = store.ingest(&refs(&group), now).expect("ingest");
            assert_eq!(outcome.stored, 0);
            assert_eq!(requests(&store, now - DAY, now), 60);
            assert_eq!(store.marks().expect("marks")["agent-1"].seq, 6);
            let agents = store.agents(now - DAY, now).expect("agents");
            assert_eq!(agents["agent-1"].pipelines[0].requests, 60);
        }
    }

    #[test]
    fn an_agents_clock_decides_no_partition_past_the_retention_or_ahead_of_now() {
        for place in places() {
            let now = 20_000 * DAY;
            let store = place.open(Duration::from_secs(30 * 86_400));
            // Batches claiming each of 2,000 past days, the epoch, and next year.
            let group: Vec<_> = (0..2_000u64)
                .map(|d| ("a".to_owned(), batch(d + 1, now - (d + 100) * DAY, 1)))
                .chain([
                    ("a".to_owned(), batch(2_001, 0, 1)),
                    ("a".to_owned(), batch(2_002, now + 365 * DAY, 1)),
                ])
                .collect();
            let (outcome, _) = store.ingest(&refs(&group), now).expect("ingest");
            assert_eq!(outcome.stored, 2_002, "every batch is taken, clamped");
            let oldest = now - 30 * DAY;
            assert_eq!(requests(&store, oldest - DAY, now + DAY), 2_002);
            assert_eq!(
                requests(&store, 0, oldest - 1),
                0,
                "nothing before the retention"
            );
            if let Engine::Partitioned(partitioned) = &store.engine {
                let days = partitioned.partition_days();
                let (first, last) = (oldest as i64 / DAY as i64, now as i64 / DAY as i64);
                assert!(
                    !days.is_empty() && days.iter().all(|d| (first..=last).contains(d)),
                    "partitions only within the retention: {days:?}"
                );
                assert!(days.len() <= 2, "{days:?}");
            }
        }
    }

    #[test]
    fn compaction_downsamples_keeps_totals_and_applies_retention() {
        for place in places() {
            let now = 100 * DAY;
            let store = place.open(Duration::from_secs(30 * 86_400));
            // A week of 10 s batches ending an hour ago, and one from 40 days ago (stored
            // then: a batch older than the retention when it arrives is clamped into it).
            let start = now - 7 * DAY - 3_600_000;
            let week: Vec<_> = (0..7 * 8640u64)
                .map(|i| ("a".to_owned(), batch(i + 2, start + i * 10_000, 1)))
                .collect();
            let old = vec![("a".to_owned(), batch(1, now - 40 * DAY, 7))];
            store
                .ingest(&refs(&old), now - 40 * DAY + 60_000)
                .expect("ingest");
            for chunk in week.chunks(1000) {
                store.ingest(&refs(chunk), now).expect("ingest");
            }
            let total = requests(&store, 0, now);
            assert_eq!(total, 7 * 8640 + 7);
            store.compact(now).expect("compact");
            let [raw, minutes, hours] = window_counts(&store);
            assert!(
                raw <= 2 * 6 * 360 + 2,
                "10 s buckets only for the last 6 h: {raw}"
            );
            assert!(minutes > 0 && hours > 0);
            assert_eq!(
                requests(&store, 0, now),
                7 * 8640,
                "the 40-day-old bucket is past retention"
            );
            assert_eq!(
                requests(&store, now - 3 * DAY, now),
                3 * 8640 - 360,
                "the window's buckets, at any resolution"
            );
            let agents = store.agents(0, now).expect("agents");
            assert_eq!(agents["a"].pipelines[0].requests, 7 * 8640);
            // Compacting again changes nothing.
            store.compact(now).expect("compact");
            assert_eq!(requests(&store, 0, now), 7 * 8640);
            if let Engine::Partitioned(partitioned) = &store.engine {
                let days = partitioned.partition_days();
                assert!(
                    !days.contains(&60),
                    "the day past retention was dropped whole: {days:?}"
                );
                assert!(days.contains(&99), "{days:?}");
            }
        }
    }

    #[test]
    fn replicas_writing_one_bucket_at_once_lose_nothing_and_count_a_batch_once() {
        let Some(server) = testing::shared() else {
            return;
        };
        let namespace = testing::namespace();
        let retention = Duration::from_secs(90 * 86_400);
        let replicas: Vec<SeriesStore> = (0..2)
            .map(|_| {
                SeriesStore::partitioned(postgres(&server, &namespace), retention).expect("open")
            })
            .collect();
        let now = 100 * DAY;
        // Agents' batches all land in one pipeline bucket; each batch arrives at both replicas
        // (an agent that switched replicas sends its backlog again).
        std::thread::scope(|scope| {
            for store in &replicas {
                scope.spawn(move || {
                    for agent in 0..8 {
                        for seq in 1..=5u64 {
                            let batch = batch(seq, now - 50_000 + seq, 3);
                            let name = format!("agent-{agent}");
                            store.ingest(&[(&name, &batch)], now).expect("ingest");
                        }
                    }
                });
            }
        });
        assert_eq!(
            requests(&replicas[0], now - DAY, now),
            8 * 5 * 3,
            "every batch counted once, none lost to a race"
        );
        // Settled, the bucket is one row per pipeline; the totals stay.
        replicas[1].compact(now + 60_000).expect("compact");
        assert_eq!(requests(&replicas[0], now - DAY, now), 8 * 5 * 3);
        let rows = match &replicas[0].engine {
            Engine::Partitioned(p) => p.window_counts(&replicas[0].resolutions)[0],
            Engine::Entries(_) => unreachable!("partitioned"),
        };
        assert_eq!(
            rows,
            8 * 5 + 1,
            "a row per agent's batch, the pipeline's rows merged into one"
        );
    }

    #[test]
    fn a_crowded_bucket_is_downsampled_in_slices_of_names() {
        let Some(server) = testing::shared() else {
            return;
        };
        let store = SeriesStore::partitioned(
            postgres(&server, &testing::namespace()),
            Duration::from_secs(30 * 86_400),
        )
        .expect("open");
        let now = 100 * DAY;
        // More agents in one minute, a day ago, than one compaction transaction moves.
        let agents = 2 * partitioned::SLICE_ROWS + 100;
        let group: Vec<_> = (0..agents)
            .map(|i| {
                (
                    format!("agent-{i:05}"),
                    batch(1, now - DAY + (i as u64 % 6) * 10_000, 1),
                )
            })
            .collect();
        for chunk in group.chunks(2048) {
            store.ingest(&refs(chunk), now).expect("ingest");
        }
        store.compact(now).expect("compact");
        assert_eq!(
            window_counts(&store),
            [0, agents as u64 + 1, 0],
            "a row per agent and one for the pipeline, in the minute's bucket"
        );
        assert_eq!(requests(&store, 0, now), agents as u64);
        assert_eq!(store.agents(0, now).expect("agents").len(), agents);
    }

    #[test]
    fn a_former_lease_holder_compacts_nothing() {
        let Some(server) = testing::shared() else {
            return;
        };
        let namespace = testing::namespace();
        let backend = postgres(&server, &namespace);
        let shared: SharedBackend = backend.clone();
        let store =
            SeriesStore::partitioned(backend, Duration::from_secs(30 * 86_400)).expect("open");
        let now = 100 * DAY;
        let old = vec![("a".to_owned(), batch(1, now - 7 * DAY, 4))];
        store.ingest(&refs(&old), now).expect("ingest");
        let former =
            store.fenced(FencedBackend::claim(shared.clone(), "work", 1).expect("claim epoch 1"));
        // The successor claims epoch 2 before the former holder, paused, resumes.
        let successor = FencedBackend::claim(shared, "work", 2).expect("claim epoch 2");
        let refused = former.compact(now);
        assert!(
            matches!(
                refused,
                Err(TelemetryStoreError::Storage(BackendError::Fenced {
                    epoch: 1,
                    ..
                }))
            ),
            "{refused:?}"
        );
        assert_eq!(window_counts(&store), [2, 0, 0], "nothing moved");
        store
            .fenced(successor)
            .compact(now)
            .expect("the holder compacts");
        assert_eq!(window_counts(&store), [0, 2, 0]);
        assert_eq!(requests(&store, 0, now), 4);
    }
}
