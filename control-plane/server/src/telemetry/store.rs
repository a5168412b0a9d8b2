//! Time series of the fleet, on a backend of their own (a sled database under `D/telemetry`
//! when serving).
//!
//! One table, three kinds of keys:
//! - `m` + agent id → [`AgentMark`]: the highest batch sequence stored (deduplication), the
//!   agent's dropped-batch count, batches stored;
//! - `a` + resolution + bucket start (big-endian ms) + agent id → [`AgentWindow`]: the host
//!   and the agent's pipelines in that bucket;
//! - `p` + resolution + bucket start + pipeline → [`PipelineWindow`]: the pipeline fleet-wide.
//!
//! Resolutions are 10 s, 1 min and 1 h. Ingest writes 10 s buckets; compaction merges buckets
//! older than a resolution's horizon into the next coarser one, and deletes 1 h buckets past
//! the retention. Every change (a group of batches with their marks, or one compaction step) is
//! one atomic write, so a crash leaves each batch either wholly counted or not at all, and
//! its mark says which.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_proto::telemetry::{HostStats, PipelineStats, TelemetryBatch, merge_into};

use crate::backend::{BackendError, CommitError, KeyRange, Scan, SharedBackend, Table, Write};

const SERIES: Table = Table("series");

/// Windows are kept in postcard: compact, and fast to merge at ingest rates.
mod records {
    use super::TelemetryStoreError;

    pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
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
    fn merge(&mut self, other: &AgentWindow) {
        self.add(other.end_ms, &other.host, &other.pipelines);
    }

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

impl PipelineWindow {
    fn merge(&mut self, other: &PipelineWindow) {
        for p in &other.series {
            merge_into(&mut self.series, p);
        }
    }
}

const MARK: u8 = b'm';
const AGENT: u8 = b'a';
const PIPELINE: u8 = b'p';

fn mark_key(agent: &str) -> Vec<u8> {
    let mut key = vec![MARK];
    key.extend_from_slice(agent.as_bytes());
    key
}

/// `kind` + resolution + start + name.
fn window_key(kind: u8, resolution: u8, start_ms: u64, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + name.len());
    key.push(kind);
    key.push(resolution);
    key.extend_from_slice(&start_ms.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

fn window_prefix(kind: u8, resolution: u8, start_ms: u64) -> Vec<u8> {
    window_key(kind, resolution, start_ms, "")
}

/// Start and name of a window key.
fn parse_window_key(key: &[u8]) -> Option<(u64, &str)> {
    let start = u64::from_be_bytes(key.get(2..10)?.try_into().ok()?);
    let name = std::str::from_utf8(key.get(10..)?).ok()?;
    Some((start, name))
}

/// What one group of batches did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: u64,
    pub duplicates: u64,
    pub points: u64,
}

/// The telemetry database.
#[derive(Debug, Clone)]
pub struct SeriesStore {
    backend: SharedBackend,
    resolutions: [Resolution; 3],
    /// Held exclusively while compaction moves buckets from one resolution to another, shared
    /// by queries, so that no query sees a bucket twice or not at all.
    moving: Arc<RwLock<()>>,
    writers: Writers,
}

/// Who writes the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// One task of one process (a control plane alone on its store): no write can race another.
    One,
    /// Replicas sharing the store: every change holds only if what it read is unchanged, and
    /// runs again when it raced (two replicas merging into one bucket, an agent's batches
    /// arriving at two replicas around a failover).
    Many,
}

/// How often a change that keeps racing others runs before giving up.
const MAX_ATTEMPTS: usize = 16;

/// The values a change read (`None`: absent), which it expects unchanged when it commits.
type Reads = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl SeriesStore {
    pub fn new(backend: SharedBackend, retention: Duration, writers: Writers) -> Self {
        Self {
            backend,
            resolutions: resolutions(retention),
            moving: Arc::default(),
            writers,
        }
    }

    /// The same series through another handle on their backend (one whose writes are
    /// fenced), sharing this store's lock against queries.
    pub fn on(&self, backend: SharedBackend) -> Self {
        Self {
            backend,
            resolutions: self.resolutions,
            moving: self.moving.clone(),
            writers: self.writers,
        }
    }

    /// The backend, for the storage probe.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), TelemetryStoreError> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || backend.flush())
            .await
            .map_err(BackendError::storage)??;
        Ok(())
    }

    fn commit(&self, write: Write) -> Result<(), TelemetryStoreError> {
        if !write.is_empty() {
            self.backend
                .commit(write.lazily())
                .map_err(CommitError::into_backend)?;
        }
        Ok(())
    }

    /// Commits `write` on the condition that `reads` are unchanged (with several writers);
    /// `Ok(false)` when they changed and nothing was written.
    fn commit_checked(&self, mut write: Write, reads: Reads) -> Result<bool, TelemetryStoreError> {
        if write.is_empty() {
            return Ok(true);
        }
        if self.writers == Writers::Many {
            for (key, value) in reads {
                write = write.only_if(SERIES, key, value);
            }
        }
        match self.backend.commit(write.lazily()) {
            Ok(()) => Ok(true),
            Err(CommitError::Conflict) => Ok(false),
            Err(CommitError::Backend(e)) => Err(e.into()),
        }
    }

    /// Runs `attempt` until its change commits on what it read.
    fn until_committed<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Option<T>, TelemetryStoreError>,
    ) -> Result<T, TelemetryStoreError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(done) = attempt()? {
                return Ok(done);
            }
            std::thread::sleep(Duration::from_micros(rand::random_range(50..2_000)));
        }
        Err(BackendError::Contended {
            attempts: MAX_ATTEMPTS,
        }
        .into())
    }

    /// A record to merge into: a corrupt one is logged and started afresh, so that one bad
    /// record never blocks the agents it does not belong to.
    fn get_or_fresh<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &[u8],
        reads: &mut Reads,
    ) -> Result<T, TelemetryStoreError> {
        let bytes = self.backend.get(SERIES, key)?;
        let value = match bytes.as_deref().map(|b| records::decode(key, b)) {
            None => Ok(T::default()),
            Some(Ok(found)) => Ok(found),
            Some(Err(TelemetryStoreError::Corrupt { key, reason })) => {
                tracing::warn!(%key, %reason, "corrupt telemetry record replaced");
                Ok(T::default())
            }
            Some(Err(e)) => Err(e),
        };
        reads.push((key.to_vec(), bytes));
        value
    }

    /// Every agent's mark.
    pub fn marks(&self) -> Result<HashMap<String, AgentMark>, TelemetryStoreError> {
        let mut out = HashMap::new();
        for (key, bytes) in self
            .backend
            .range(SERIES, &KeyRange::prefix([MARK]), Scan::All)?
        {
            let agent = String::from_utf8_lossy(&key[1..]).into_owned();
            match records::decode(&key, &bytes) {
                Ok(mark) => {
                    out.insert(agent, mark);
                }
                Err(e) => tracing::warn!(error = %e, "corrupt telemetry mark skipped"),
            }
        }
        Ok(out)
    }

    /// Stores a group of batches (agent id, batch), in order, skipping those already stored,
    /// in one atomic write. `now_ms` bounds timestamps from agents whose clock runs ahead.
    pub fn ingest(
        &self,
        group: &[(&str, &TelemetryBatch)],
        now_ms: u64,
    ) -> Result<(IngestOutcome, Vec<bool>), TelemetryStoreError> {
        self.until_committed(|| self.try_ingest(group, now_ms))
    }

    /// One attempt at [`SeriesStore::ingest`]: `None` when it raced another writer.
    fn try_ingest(
        &self,
        group: &[(&str, &TelemetryBatch)],
        now_ms: u64,
    ) -> Result<Option<(IngestOutcome, Vec<bool>)>, TelemetryStoreError> {
        let mut reads = Reads::new();
        let raw = self.resolutions[0];
        let mut marks: HashMap<&str, AgentMark> = HashMap::new();
        let mut agents: BTreeMap<Vec<u8>, AgentWindow> = BTreeMap::new();
        let mut pipelines: BTreeMap<Vec<u8>, PipelineWindow> = BTreeMap::new();
        let mut outcome = IngestOutcome::default();
        let mut stored = Vec::with_capacity(group.len());
        for &(agent, batch) in group {
            let mark = match marks.entry(agent) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.get_or_fresh(&mark_key(agent), &mut reads)?)
                }
            };
            if batch.seq <= mark.seq {
                outcome.duplicates += 1;
                stored.push(false);
                continue;
            }
            mark.seq = batch.seq;
            mark.dropped = mark.dropped.max(batch.dropped_batches);
            mark.batches += 1;
            let end_ms = batch.end_ms.min(now_ms);
            if end_ms >= mark.end_ms {
                mark.start_ms = batch.start_ms.min(end_ms);
                mark.end_ms = end_ms;
                mark.host = batch.host.clone();
            }
            outcome.stored += 1;
            outcome.points += batch.points();
            stored.push(true);

            let start = batch.start_ms.min(now_ms) / raw.bucket_ms * raw.bucket_ms;
            let key = window_key(AGENT, raw.id, start, agent);
            if !agents.contains_key(&key) {
                let existing = self.get_or_fresh(&key, &mut reads)?;
                agents.insert(key.clone(), existing);
            }
            if let Some(window) = agents.get_mut(&key) {
                window.add(end_ms, &batch.host, &batch.pipelines);
            }
            for stats in &batch.pipelines {
                let key = window_key(PIPELINE, raw.id, start, &stats.pipeline);
                if !pipelines.contains_key(&key) {
                    let existing = self.get_or_fresh(&key, &mut reads)?;
                    pipelines.insert(key.clone(), existing);
                }
                if let Some(window) = pipelines.get_mut(&key) {
                    merge_into(&mut window.series, stats);
                }
            }
        }
        let mut write = Write::new();
        for (agent, mark) in &marks {
            write = write.put(SERIES, mark_key(agent), records::encode(mark));
        }
        for (key, window) in agents {
            write = write.put(SERIES, key, records::encode(&window));
        }
        for (key, window) in pipelines {
            write = write.put(SERIES, key, records::encode(&window));
        }
        Ok(self
            .commit_checked(write, reads)?
            .then_some((outcome, stored)))
    }

    /// Merges buckets past each resolution's horizon into the next coarser one and deletes
    /// the coarsest past the retention. Returns the buckets rewritten.
    pub fn compact(&self, now_ms: u64) -> Result<u64, TelemetryStoreError> {
        let mut moved = 0;
        for pair in self.resolutions.windows(2) {
            let (fine, coarse) = (pair[0], pair[1]);
            let cutoff = now_ms.saturating_sub(fine.horizon_ms);
            moved +=
                self.downsample::<AgentWindow>(AGENT, fine, coarse, cutoff, |a, b| a.merge(b))?;
            moved +=
                self.downsample::<PipelineWindow>(PIPELINE, fine, coarse, cutoff, |a, b| {
                    a.merge(b)
                })?;
        }
        let last = self.resolutions[2];
        let cutoff = now_ms.saturating_sub(last.horizon_ms);
        for kind in [AGENT, PIPELINE] {
            let expired = KeyRange::between(
                window_prefix(kind, last.id, 0),
                window_prefix(kind, last.id, cutoff),
            );
            let mut write = Write::new();
            for (key, _) in self.backend.range(SERIES, &expired, Scan::All)? {
                write = write.delete(SERIES, key);
                moved += 1;
            }
            self.commit(write)?;
        }
        Ok(moved)
    }

    fn downsample<T>(
        &self,
        kind: u8,
        fine: Resolution,
        coarse: Resolution,
        cutoff: u64,
        merge: impl Fn(&mut T, &T),
    ) -> Result<u64, TelemetryStoreError>
    where
        T: Default + Serialize + serde::de::DeserializeOwned,
    {
        // In slices, so one compaction never holds a huge write in memory.
        const SLICE: usize = 4096;
        let mut moved = 0;
        loop {
            let n = self.until_committed(|| {
                let mut merged: BTreeMap<Vec<u8>, T> = BTreeMap::new();
                let mut reads = Reads::new();
                let mut write = Write::new();
                let due = KeyRange::between(
                    window_prefix(kind, fine.id, 0),
                    window_prefix(kind, fine.id, cutoff),
                );
                let slice = self.backend.range(SERIES, &due, Scan::First(SLICE))?;
                let n = slice.len();
                for (key, bytes) in slice {
                    write = write.delete(SERIES, key.clone());
                    reads.push((key.clone(), Some(bytes.clone())));
                    let Some((start, name)) = parse_window_key(&key) else {
                        continue;
                    };
                    let window: T = match records::decode(&key, &bytes) {
                        Ok(window) => window,
                        Err(e) => {
                            tracing::warn!(error = %e, "corrupt telemetry bucket dropped");
                            continue;
                        }
                    };
                    let target = window_key(
                        kind,
                        coarse.id,
                        start / coarse.bucket_ms * coarse.bucket_ms,
                        name,
                    );
                    if !merged.contains_key(&target) {
                        let existing = self.get_or_fresh(&target, &mut reads)?;
                        merged.insert(target.clone(), existing);
                    }
                    if let Some(into) = merged.get_mut(&target) {
                        merge(into, &window);
                    }
                }
                for (key, window) in merged {
                    write = write.put(SERIES, key, records::encode(&window));
                }
                let _exclusive = self.moving.write().unwrap_or_else(|p| p.into_inner());
                Ok(self.commit_checked(write, reads)?.then_some(n))
            })?;
            moved += n as u64;
            if n < SLICE {
                return Ok(moved);
            }
        }
    }

    /// Windows of `kind` whose bucket starts in `[from_ms, to_ms]`, at every resolution; with
    /// `only`, those of that name alone (others are not decoded).
    fn windows<T: serde::de::DeserializeOwned>(
        &self,
        kind: u8,
        (from_ms, to_ms): (u64, u64),
        only: Option<&str>,
        mut each: impl FnMut(u64, &str, T),
    ) -> Result<(), TelemetryStoreError> {
        // Compaction moves buckets between resolutions: not while a query reads them.
        let _shared = self.moving.read().unwrap_or_else(|p| p.into_inner());
        for resolution in self.resolutions {
            // A coarse bucket that began before `from_ms` still holds data inside the window.
            let first = from_ms / resolution.bucket_ms * resolution.bucket_ms;
            let range = KeyRange::between(
                window_prefix(kind, resolution.id, first),
                window_prefix(kind, resolution.id, to_ms.saturating_add(1)),
            );
            let mut corrupt = None;
            self.backend
                .visit(SERIES, &range, false, &mut |key, bytes| {
                    if let Some((start, name)) = parse_window_key(key)
                        && only.is_none_or(|o| o == name)
                    {
                        match records::decode(key, bytes) {
                            Ok(window) => each(start, name, window),
                            Err(e) => {
                                corrupt = Some(e);
                                return false;
                            }
                        }
                    }
                    true
                })?;
            if let Some(e) = corrupt {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Each pipeline's series merged over `[from_ms, to_ms]`, with the oldest bucket start seen.
    pub fn pipelines(
        &self,
        from_ms: u64,
        to_ms: u64,
        only: Option<&str>,
    ) -> Result<BTreeMap<String, (u64, Vec<PipelineStats>)>, TelemetryStoreError> {
        let mut out: BTreeMap<String, (u64, Vec<PipelineStats>)> = BTreeMap::new();
        self.windows::<PipelineWindow>(PIPELINE, (from_ms, to_ms), only, |start, name, window| {
            let (first, series) = out.entry(name.to_owned()).or_insert((start, Vec::new()));
            *first = (*first).min(start);
            for stats in &window.series {
                merge_into(series, stats);
            }
        })?;
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
            PIPELINE,
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
        self.windows::<AgentWindow>(AGENT, (from_ms, to_ms), None, |_, name, window| {
            out.entry(name.to_owned()).or_default().merge(&window);
        })?;
        Ok(out)
    }

    /// Number of windows stored per resolution (agents and pipelines).
    #[cfg(test)]
    fn window_counts(&self) -> [u64; 3] {
        let mut counts = [0u64; 3];
        for kind in [AGENT, PIPELINE] {
            for resolution in self.resolutions {
                counts[resolution.id as usize] += crate::backend::count(
                    self.backend.as_ref(),
                    SERIES,
                    &KeyRange::prefix([kind, resolution.id]),
                )
                .expect("count");
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::telemetry::Histogram;

    /// A store on a sled database at `path`.
    fn open(path: &std::path::Path, retention: Duration) -> Result<SeriesStore, BackendError> {
        let backend = crate::backend::SledBackend::open(path, 1 << 20)?;
        Ok(SeriesStore::new(Arc::new(backend), retention, Writers::One))
    }

    const DAY: u64 = 24 * 3_600_000;

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

    /// Polls `open` until it succeeds (10 s at most).
    fn reopened<T>(mut open: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(value) = open() {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the store never reopened"
            );
            std::thread::sleep(Duration::from_millis(20));
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

    #[test]
    fn replicas_writing_one_bucket_at_once_lose_nothing_and_count_a_batch_once() {
        let backend: SharedBackend = Arc::new(crate::backend::MemoryBackend::new());
        let retention = Duration::from_secs(90 * 86_400);
        let replicas: Vec<SeriesStore> = (0..2)
            .map(|_| SeriesStore::new(backend.clone(), retention, Writers::Many))
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
    }

    #[test]
    fn duplicates_are_skipped_across_groups_and_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 100 * DAY;
        let store = open(dir.path(), Duration::from_secs(90 * 86_400)).expect("open");
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
        // sled's flusher thread lets go of the database's file lock a moment after the drop.
        let store = reopened(|| open(dir.path(), Duration::from_secs(90 * 86_400)).ok());
        let (outcome, _) = store.ingest(&refs(&group), now).expect("ingest");
        assert_eq!(outcome.stored, 0);
        assert_eq!(requests(&store, now - DAY, now), 60);
        assert_eq!(store.marks().expect("marks")["agent-1"].seq, 6);
    }

    #[test]
    fn compaction_downsamples_keeps_totals_and_applies_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 100 * DAY;
        let store = open(dir.path(), Duration::from_secs(30 * 86_400)).expect("open");
        // A week of 10 s batches ending an hour ago, and one from 40 days ago.
        let start = now - 7 * DAY - 3_600_000;
        let week: Vec<_> = (0..7 * 8640u64)
            .map(|i| ("a".to_owned(), batch(i + 2, start + i * 10_000, 1)))
            .collect();
        let old = vec![("a".to_owned(), batch(1, now - 40 * DAY, 7))];
        store.ingest(&refs(&old), now).expect("ingest");
        for chunk in week.chunks(1000) {
            store.ingest(&refs(chunk), now).expect("ingest");
        }
        let total = requests(&store, 0, now);
        assert_eq!(total, 7 * 8640 + 7);
        store.compact(now).expect("compact");
        let [raw, minutes, hours] = store.window_counts();
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
    }
}
