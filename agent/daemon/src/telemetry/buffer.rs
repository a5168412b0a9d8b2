//! Telemetry batches waiting for the control plane's acknowledgement, in the agent's sled
//! database (tree `telemetry`), so that they survive restarts and weeks offline.
//!
//! Keys: `b` + sequence number (big-endian) → the batch (postcard); `m/next` → the next
//! sequence number; `m/dropped` → batches dropped for the cap so far; `m/shipped` → the highest
//! sequence number handed to the control plane. A batch, the counters and any drops it causes
//! are written in one atomic sled batch. When the buffer would grow past its cap, the oldest
//! batches go first and are counted; the count travels in every later batch, the batch whose
//! append made the drops included, so that a sequence number is always the batches delivered or
//! kept plus the batches dropped. A batch once handed to the control plane is never dropped: it
//! may have arrived, and counting it dropped as well would count it twice. It stays until
//! acknowledged, and the oldest batches not yet handed over go instead; the shipper hands over
//! at most a window of unacknowledged batches, so that is all the buffer exceeds its cap by.

use std::sync::Mutex;

use tern_proto::telemetry::TelemetryBatch;
use tokio::sync::Notify;
use tracing::warn;

use crate::store::StoreError;

const BATCH_PREFIX: u8 = b'b';
const NEXT_KEY: &[u8] = b"m/next";
const DROPPED_KEY: &[u8] = b"m/dropped";
const SHIPPED_KEY: &[u8] = b"m/shipped";

/// Default cap on buffered telemetry: about a month of 10 s batches of a busy agent.
pub const DEFAULT_BUFFER_BYTES: u64 = 256 << 20;

fn batch_key(seq: u64) -> [u8; 9] {
    let mut key = [BATCH_PREFIX; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> Option<u64> {
    match key {
        [BATCH_PREFIX, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match tree.get(key)? {
        None => Ok(0),
        Some(v) => v
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: "not a counter".into(),
            }),
    }
}

#[derive(Debug)]
struct Counters {
    next_seq: u64,
    dropped: u64,
    /// The highest sequence number handed to the control plane.
    shipped: u64,
    bytes: u64,
    batches: u64,
}

/// The durable queue of batches.
#[derive(Debug)]
pub struct TelemetryBuffer {
    tree: sled::Tree,
    cap_bytes: u64,
    counters: Mutex<Counters>,
    /// Woken when a batch is added.
    pub added: Notify,
}

/// A stored batch: its sequence number and its postcard encoding.
pub type StoredBatch = (u64, sled::IVec);

impl TelemetryBuffer {
    /// Opens the buffer in `db`, holding at most `cap_bytes` of batches.
    pub fn open(db: &sled::Db, cap_bytes: u64) -> Result<Self, StoreError> {
        let tree = db.open_tree("telemetry")?;
        let (mut bytes, mut batches) = (0u64, 0u64);
        for entry in tree.scan_prefix([BATCH_PREFIX]) {
            let (_, value) = entry?;
            bytes += value.len() as u64;
            batches += 1;
        }
        let next_seq = read_u64(&tree, NEXT_KEY)?.max(1);
        let dropped = read_u64(&tree, DROPPED_KEY)?;
        let shipped = read_u64(&tree, SHIPPED_KEY)?;
        Ok(Self {
            tree,
            cap_bytes,
            counters: Mutex::new(Counters {
                next_seq,
                dropped,
                shipped,
                bytes,
                batches,
            }),
            added: Notify::new(),
        })
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `batch`, stores it, and drops the oldest batches if the cap requires. Returns
    /// its sequence number. The batch counts the drops made to fit it, so that its sequence
    /// number is always the batches kept or delivered plus the batches dropped.
    pub fn append(&self, mut batch: TelemetryBatch) -> Result<u64, StoreError> {
        let mut counters = self.counters();
        let seq = counters.next_seq;
        batch.seq = seq;
        batch.host.buffered_bytes = counters.bytes;
        let mut write = sled::Batch::default();
        let (mut freed, mut dropped_now) = (0u64, 0u64);
        // The oldest not yet handed to the control plane go first.
        let mut oldest = self
            .tree
            .range(batch_key(counters.shipped.saturating_add(1))..=batch_key(u64::MAX));
        // Each drop may lengthen the count's encoding, so encode again until the batch fits.
        let encoded = loop {
            batch.dropped_batches = counters.dropped + dropped_now;
            let encoded = postcard::to_stdvec(&batch).map_err(|e| StoreError::Corrupt {
                key: format!("telemetry batch {seq}"),
                reason: e.to_string(),
            })?;
            if counters.bytes - freed + encoded.len() as u64 <= self.cap_bytes {
                break encoded;
            }
            match oldest.next() {
                Some(entry) => {
                    let (key, value) = entry?;
                    freed += value.len() as u64;
                    dropped_now += 1;
                    write.remove(key);
                }
                // Nothing is left to drop but the batches handed to the control plane: over
                // the cap until they are acknowledged (or, alone, a batch larger than the cap).
                None => break encoded,
            }
        };
        write.insert(&batch_key(seq), encoded.as_slice());
        write.insert(NEXT_KEY, &(seq + 1).to_be_bytes());
        write.insert(DROPPED_KEY, &(counters.dropped + dropped_now).to_be_bytes());
        self.tree.apply_batch(write)?;
        counters.next_seq = seq + 1;
        counters.dropped += dropped_now;
        counters.bytes = counters.bytes - freed + encoded.len() as u64;
        counters.batches = counters.batches + 1 - dropped_now;
        drop(counters);
        if dropped_now > 0 {
            warn!(
                dropped = dropped_now,
                cap_bytes = self.cap_bytes,
                "telemetry buffer full: dropped the oldest batches"
            );
        }
        self.added.notify_waiters();
        Ok(seq)
    }

    /// Up to `limit` batches with a sequence number above `after`, oldest first.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<StoredBatch>, StoreError> {
        let start = batch_key(after.saturating_add(1));
        let end = batch_key(u64::MAX);
        let mut out = Vec::new();
        for entry in self.tree.range(start..=end).take(limit) {
            let (key, value) = entry?;
            if let Some(seq) = seq_of(&key) {
                out.push((seq, value));
            }
        }
        Ok(out)
    }

    /// Notes that every batch up to and including `seq` was handed to the control plane: they
    /// are no longer dropped for the cap, only deleted by an acknowledgement.
    pub fn shipped(&self, seq: u64) -> Result<(), StoreError> {
        let mut counters = self.counters();
        if seq > counters.shipped {
            self.tree.insert(SHIPPED_KEY, &seq.to_be_bytes())?;
            counters.shipped = seq;
        }
        Ok(())
    }

    /// Deletes every batch up to and including `up_to`: the control plane has it.
    pub fn ack(&self, up_to: u64) -> Result<(), StoreError> {
        let mut counters = self.counters();
        let mut write = sled::Batch::default();
        let (mut freed, mut removed) = (0u64, 0u64);
        for entry in self.tree.range(batch_key(0)..=batch_key(up_to)) {
            let (key, value) = entry?;
            freed += value.len() as u64;
            removed += 1;
            write.remove(key);
        }
        self.tree.apply_batch(write)?;
        counters.bytes -= freed;
        counters.batches -= removed;
        Ok(())
    }

    /// Batches dropped for the cap, in total.
    pub fn dropped(&self) -> u64 {
        self.counters().dropped
    }

    /// Bytes and number of batches waiting.
    pub fn pending(&self) -> (u64, u64) {
        let counters = self.counters();
        (counters.bytes, counters.batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(requests: u64) -> TelemetryBatch {
        TelemetryBatch {
            pipelines: vec![tern_proto::telemetry::PipelineStats {
                pipeline: "p".into(),
                requests,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn decode(stored: &StoredBatch) -> TelemetryBatch {
        postcard::from_bytes(&stored.1).expect("decodes")
    }

    #[test]
    fn batches_survive_reopening_and_go_only_when_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("db");
        let buffer = TelemetryBuffer::open(&db, 1 << 20).expect("open");
        for r in 1..=5 {
            assert_eq!(buffer.append(batch(r)).expect("append"), r);
        }
        buffer.ack(2).expect("ack");
        drop(buffer);
        let buffer = TelemetryBuffer::open(&db, 1 << 20).expect("reopen");
        let left = buffer.after(0, 10).expect("read");
        assert_eq!(left.iter().map(|b| b.0).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(decode(&left[0]).pipelines[0].requests, 3);
        assert_eq!(buffer.after(3, 1).expect("read")[0].0, 4);
        assert_eq!(
            buffer.append(batch(6)).expect("append"),
            6,
            "numbers continue"
        );
        assert_eq!(buffer.pending().1, 4);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("db");
        let size = postcard::to_stdvec(&batch(1)).expect("encodes").len() as u64;
        let buffer = TelemetryBuffer::open(&db, size * 3 + 2).expect("open");
        for r in 1..=10 {
            buffer.append(batch(r)).expect("append");
        }
        let left: Vec<u64> = buffer
            .after(0, 100)
            .expect("read")
            .iter()
            .map(|b| b.0)
            .collect();
        assert!(left.len() >= 2, "{left:?}");
        let kept = (11 - left.len() as u64..=10).collect::<Vec<_>>();
        assert_eq!(left, kept, "the newest are kept, the oldest dropped");
        let dropped = 10 - left.len() as u64;
        assert_eq!(buffer.dropped(), dropped);
        let newest = decode(&buffer.after(9, 1).expect("read")[0]);
        assert_eq!(
            newest.dropped_batches, dropped,
            "the newest batch carries the count so far"
        );
        assert!(buffer.pending().0 <= size * 3 + 2);
        drop(buffer);
        assert_eq!(
            TelemetryBuffer::open(&db, 1 << 20)
                .expect("reopen")
                .dropped(),
            dropped
        );
    }

    #[test]
    fn every_batch_counts_the_drops_its_own_append_made() {
        // The control plane checks `batches received + dropped == last seq` against the
        // newest batch; that holds only if a batch counts the drops that made room for it.
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("db");
        let size = postcard::to_stdvec(&batch(1)).expect("encodes").len() as u64;
        let buffer = TelemetryBuffer::open(&db, size * 3 + 2).expect("open");
        for r in 1..=10 {
            let seq = buffer.append(batch(r)).expect("append");
            let newest = decode(&buffer.after(seq - 1, 1).expect("read")[0]);
            assert_eq!(newest.dropped_batches, buffer.dropped(), "batch {seq}");
            assert_eq!(
                newest.dropped_batches + buffer.pending().1,
                seq,
                "kept + dropped = sequence after batch {seq}"
            );
        }
        assert!(buffer.dropped() > 0, "the cap made drops");
    }

    #[test]
    fn a_batch_handed_to_the_control_plane_is_kept_until_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("db");
        let size = postcard::to_stdvec(&batch(1)).expect("encodes").len() as u64;
        let buffer = TelemetryBuffer::open(&db, size * 3 + 2).expect("open");
        for r in 1..=3 {
            buffer.append(batch(r)).expect("append");
        }
        buffer.shipped(2).expect("shipped");
        drop(buffer);
        // The mark survives a restart of the agent.
        let buffer = TelemetryBuffer::open(&db, size * 3 + 2).expect("reopen");
        for r in 4..=6 {
            buffer.append(batch(r)).expect("append");
        }
        let seqs = |buffer: &TelemetryBuffer| -> Vec<u64> {
            let stored = buffer.after(0, 100).expect("read");
            stored.iter().map(|b| b.0).collect()
        };
        assert_eq!(
            seqs(&buffer),
            [1, 2, 6],
            "1 and 2 may have arrived: 3 to 5 went"
        );
        assert_eq!(buffer.dropped(), 3);
        buffer.ack(2).expect("ack");
        for r in 7..=9 {
            buffer.append(batch(r)).expect("append");
        }
        assert_eq!(seqs(&buffer), [7, 8, 9], "the oldest go again");
        assert_eq!(buffer.dropped(), 4);
        assert_eq!(
            2 + buffer.dropped() + buffer.pending().1,
            9,
            "delivered + dropped + kept"
        );
    }
}
