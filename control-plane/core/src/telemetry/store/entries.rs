//! The series as records in one ordered table of a backend (sled for a control plane alone,
//! memory in tests), merged in place by their one writer. Three kinds of keys:
//! - `m` + agent id → [`AgentMark`];
//! - `a` + resolution + bucket start (big-endian ms) + agent id → [`AgentWindow`];
//! - `p` + resolution + bucket start + pipeline → [`PipelineWindow`].
//!
//! An ingest group or a compaction slice is one atomic write; writes are lazy and
//! [`EntrySeries::flush`] makes them durable before the writer acknowledges anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tern_proto::telemetry::TelemetryBatch;

use super::{
    Accepted, AgentMark, AgentWindow, EachWindow, IngestOutcome, Kind, PipelineWindow, Resolution,
    TelemetryStoreError, Window, collect_marks, fold, records,
};
use crate::backend::{CommitError, KeyRange, Scan, SharedBackend, Table, Write};

const SERIES: Table = Table("series");

const MARK: u8 = b'm';
const AGENT: u8 = b'a';
const PIPELINE: u8 = b'p';

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Agent => AGENT,
        Kind::Pipeline => PIPELINE,
    }
}

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

/// The records engine.
#[derive(Debug, Clone)]
pub(super) struct EntrySeries {
    backend: SharedBackend,
    /// Held exclusively while compaction moves buckets from one resolution to another, shared
    /// by queries, so that no query sees a bucket twice or not at all.
    moving: Arc<RwLock<()>>,
}

impl EntrySeries {
    pub(super) fn new(backend: SharedBackend) -> Self {
        Self {
            backend,
            moving: Arc::default(),
        }
    }

    /// The same records through another handle on their backend (one whose writes are
    /// fenced), sharing this one's lock against queries.
    pub(super) fn on(&self, backend: SharedBackend) -> Self {
        Self {
            backend,
            moving: self.moving.clone(),
        }
    }

    pub(super) fn flush(&self) -> Result<(), TelemetryStoreError> {
        Ok(self.backend.flush()?)
    }

    fn commit(&self, write: Write) -> Result<(), TelemetryStoreError> {
        if !write.is_empty() {
            self.backend
                .commit(write.lazily())
                .map_err(CommitError::into_backend)?;
        }
        Ok(())
    }

    /// A record to merge into: a corrupt one is logged and started afresh, so that one bad
    /// record never blocks the agents it does not belong to.
    fn get_or_fresh<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &[u8],
    ) -> Result<T, TelemetryStoreError> {
        match self.backend.get(SERIES, key)? {
            None => Ok(T::default()),
            Some(bytes) => match records::decode(key, &bytes) {
                Ok(found) => Ok(found),
                Err(TelemetryStoreError::Corrupt { key, reason }) => {
                    tracing::warn!(%key, %reason, "corrupt telemetry record replaced");
                    Ok(T::default())
                }
                Err(e) => Err(e),
            },
        }
    }

    pub(super) fn marks(&self) -> Result<HashMap<String, AgentMark>, TelemetryStoreError> {
        let stored = self
            .backend
            .range(SERIES, &KeyRange::prefix([MARK]), Scan::All)?;
        Ok(collect_marks(stored.iter().map(|(key, bytes)| {
            (
                String::from_utf8_lossy(&key[1..]).into_owned(),
                bytes.as_slice(),
            )
        })))
    }

    pub(super) fn ingest(
        &self,
        group: &[(&str, &TelemetryBatch)],
        accepted: Accepted,
        raw: Resolution,
    ) -> Result<(IngestOutcome, Vec<bool>), TelemetryStoreError> {
        let folded = fold(group, accepted, raw, |agent| {
            self.get_or_fresh::<AgentMark>(&mark_key(agent))
        })?;
        let mut write = Write::new();
        for (agent, mark) in &folded.marks {
            write = write.put(SERIES, mark_key(agent), records::encode(mark));
        }
        for ((start, agent), window) in &folded.agents {
            let key = window_key(AGENT, raw.id, *start, agent);
            let mut stored: AgentWindow = self.get_or_fresh(&key)?;
            stored.merge(window);
            write = write.put(SERIES, key, records::encode(&stored));
        }
        for ((start, pipeline), window) in &folded.pipelines {
            let key = window_key(PIPELINE, raw.id, *start, pipeline);
            let mut stored: PipelineWindow = self.get_or_fresh(&key)?;
            stored.merge(window);
            write = write.put(SERIES, key, records::encode(&stored));
        }
        self.commit(write)?;
        Ok((folded.outcome, folded.stored))
    }

    pub(super) fn compact(
        &self,
        resolutions: &[Resolution; 3],
        now_ms: u64,
    ) -> Result<u64, TelemetryStoreError> {
        let mut moved = 0;
        for pair in resolutions.windows(2) {
            let (fine, coarse) = (pair[0], pair[1]);
            let cutoff = now_ms.saturating_sub(fine.horizon_ms);
            moved += self.downsample::<AgentWindow>(AGENT, fine, coarse, cutoff)?;
            moved += self.downsample::<PipelineWindow>(PIPELINE, fine, coarse, cutoff)?;
        }
        let last = resolutions[2];
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

    fn downsample<T: Window>(
        &self,
        kind: u8,
        fine: Resolution,
        coarse: Resolution,
        cutoff: u64,
    ) -> Result<u64, TelemetryStoreError> {
        // In slices, so one compaction never holds a huge write in memory.
        const SLICE: usize = 4096;
        let mut moved = 0;
        loop {
            let mut merged: BTreeMap<Vec<u8>, T> = BTreeMap::new();
            let mut write = Write::new();
            let due = KeyRange::between(
                window_prefix(kind, fine.id, 0),
                window_prefix(kind, fine.id, cutoff),
            );
            let slice = self.backend.range(SERIES, &due, Scan::First(SLICE))?;
            let n = slice.len();
            for (key, bytes) in slice {
                write = write.delete(SERIES, key.clone());
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
                    let existing = self.get_or_fresh(&target)?;
                    merged.insert(target.clone(), existing);
                }
                if let Some(into) = merged.get_mut(&target) {
                    into.merge(&window);
                }
            }
            for (key, window) in merged {
                write = write.put(SERIES, key, records::encode(&window));
            }
            {
                let _exclusive = self.moving.write().unwrap_or_else(|p| p.into_inner());
                self.commit(write)?;
            }
            moved += n as u64;
            if n < SLICE {
                return Ok(moved);
            }
        }
    }

    pub(super) fn windows(
        &self,
        resolutions: &[Resolution; 3],
        kind: Kind,
        (from_ms, to_ms): (u64, u64),
        only: Option<&str>,
        each: &mut EachWindow<'_>,
    ) -> Result<(), TelemetryStoreError> {
        let kind = kind_byte(kind);
        // Compaction moves buckets between resolutions: not while a query reads them.
        let _shared = self.moving.read().unwrap_or_else(|p| p.into_inner());
        for resolution in resolutions {
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
                        && let Err(e) = each(start, name, bytes)
                    {
                        corrupt = Some(e);
                        return false;
                    }
                    true
                })?;
            if let Some(e) = corrupt {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Number of windows stored per resolution (agents and pipelines).
    pub(super) fn window_counts(
        &self,
        resolutions: &[Resolution; 3],
    ) -> Result<[u64; 3], TelemetryStoreError> {
        let mut counts = [0u64; 3];
        for kind in [AGENT, PIPELINE] {
            for resolution in resolutions {
                counts[resolution.id as usize] += crate::backend::count(
                    self.backend.as_ref(),
                    SERIES,
                    &KeyRange::prefix([kind, resolution.id]),
                )?;
            }
        }
        Ok(counts)
    }
}
