//! The storage interface the control plane's stores are written against: named tables of
//! ordered byte keys and byte values, atomic multi-table writes guarded by compare-and-set
//! conditions, and change notifications.
//!
//! The stores never name an engine: they read with [`Backend::get`] and [`Backend::range`],
//! and change with a [`Write`] — every put and delete of one change plus the values it expects
//! to find — that [`Backend::commit`] applies wholly or not at all. Read-modify-write changes
//! run through [`transact`]: reads become conditions, and a change that raced another is run
//! again. Every commit is announced to [`Backend::subscribe`]rs, in commit order, so that a
//! task can follow changes another one made ([`Notifier`]: a bounded broadcast that needs no
//! runtime); an engine shared by several processes says when commits may have gone unheard
//! ([`Notice::Missed`]).
//!
//! Here: the interface, [`MemoryBackend`] (tests and simulations), [`FencedBackend`] (wraps
//! any engine for the holder of a lease) and `lossy` (tests only: loses what was not synced at
//! a crash and fails operations on command). The engines that do I/O — sled on disk,
//! PostgreSQL — live in the server crate and pass the same contract suite.

mod fenced;
pub mod lossy;
mod memory;
mod notify;
mod txn;

use std::ops::Bound;
use std::sync::Arc;

pub use fenced::{EPOCHS, FencedBackend, epoch_bytes, stored_epoch};
pub use memory::MemoryBackend;
pub use notify::{Notifier, RecvError, Subscription, TryRecvError};
pub use txn::{Transaction, transact};

/// A table's name. Tables exist once written to; reading one that never was finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Table(pub &'static str);

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// One stored entry.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The storage itself failed (a full disk, an I/O error, a poisoned engine). Its text is the
/// engine's own, so that an operator reads what the disk said.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("a change kept racing others ({attempts} attempts); try again")]
    Contended { attempts: usize },
    /// A write fenced by a lease's epoch after the lease moved on (see [`FencedBackend`]).
    #[error(
        "the {lease} lease moved past epoch {epoch}: this replica no longer holds it, and its write was refused"
    )]
    Fenced { lease: &'static str, epoch: u64 },
}

impl BackendError {
    pub fn storage(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Storage(Box::new(error))
    }
}

/// Why a [`Write`] was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A condition did not hold: nothing was written.
    #[error("a value changed since it was read")]
    Conflict,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl CommitError {
    /// For writes without conditions, which cannot conflict.
    pub fn into_backend(self) -> BackendError {
        match self {
            CommitError::Backend(e) => e,
            CommitError::Conflict => BackendError::Contended { attempts: 1 },
        }
    }
}

/// A change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
}

impl Op {
    pub fn table(&self) -> Table {
        match self {
            Op::Put { table, .. } | Op::Delete { table, .. } => *table,
        }
    }
}

/// What a key must hold for a [`Write`] to apply: `expected` (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub table: Table,
    pub key: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

/// One atomic change: applied wholly, durably and only if every condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Write {
    pub conditions: Vec<Condition>,
    pub ops: Vec<Op>,
    /// Whether the commit returns before the change is on disk (presence's periodic
    /// `last_seen`, which the next persist writes again). Default: durable.
    pub lazy: bool,
}

impl Write {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(mut self, table: Table, key: impl Into<Vec<u8>>, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value,
        });
        self
    }

    pub fn delete(mut self, table: Table, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Delete {
            table,
            key: key.into(),
        });
        self
    }

    /// Applies only if `key` holds `expected` (`None`: only if it is absent).
    pub fn only_if(
        mut self,
        table: Table,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
    ) -> Self {
        self.conditions.push(Condition {
            table,
            key: key.into(),
            expected,
        });
        self
    }

    /// Returns before the change is flushed to disk.
    pub fn lazily(mut self) -> Self {
        self.lazy = true;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// What subscribers are told when it is committed (for engines).
    pub fn changes(&self) -> Vec<Change> {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { table, key, value } => Change {
                    table: *table,
                    key: key.clone(),
                    value: Some(value.clone()),
                },
                Op::Delete { table, key } => Change {
                    table: *table,
                    key: key.clone(),
                    value: None,
                },
            })
            .collect()
    }
}

/// Whether every one of `conditions` holds, `current` reading a key's value as the commit
/// sees it (under the engine's commit lock when a commit checks them; for engines).
pub fn conditions_hold<V: AsRef<[u8]>>(
    conditions: &[Condition],
    mut current: impl FnMut(Table, &[u8]) -> Result<Option<V>, BackendError>,
) -> Result<bool, BackendError> {
    for condition in conditions {
        let value = current(condition.table, &condition.key)?;
        let held: Option<&[u8]> = value.as_ref().map(|v| v.as_ref());
        if held != condition.expected.as_deref() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One key's new value after a commit (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The changes of one commit, in the order of its operations.
pub type Changes = Arc<[Change]>;

/// What a subscriber hears.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The changes of one commit.
    Committed(Changes),
    /// Commits may have gone unheard (an engine shared by several processes lost its feed
    /// of them for a while): a subscriber reads what it follows again, as after lagging.
    Missed,
}

/// How many commits a subscriber may fall behind before it is told it lagged (and must read
/// what it follows again).
pub const NOTIFY_CAPACITY: usize = 1024;

/// A range of keys: `start` inclusive, `end` exclusive (`None`: to the end of the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key of a table.
    pub fn all() -> Self {
        Self {
            start: Vec::new(),
            end: None,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        Self { start, end }
    }

    /// Keys from `start` (inclusive) to `end` (exclusive).
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: Some(end.into()),
        }
    }

    /// The range as bounds of an ordered map (for engines).
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (
            Bound::Included(self.start.as_slice()),
            match &self.end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            },
        )
    }

    /// Whether no key can fall in it.
    pub fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|end| *end <= self.start)
    }
}

/// The first key after every key that starts with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Which end of a range [`Backend::range`] starts from, and how many entries it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Every entry, in key order.
    All,
    /// The first `n` in key order.
    First(usize),
    /// The last `n`, in reverse key order.
    Last(usize),
}

/// A storage engine. Every method is blocking: async callers use the blocking pool.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The value of `key` in `table`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// The values of `keys` in `table`, in their order (engines that pay a round trip per
    /// read answer them all in one).
    fn get_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().map(|key| self.get(table, key)).collect()
    }

    /// Calls `each` with the entries of `table` in `range`, in key order (`reverse`: from the
    /// end), until it returns `false`. `each` must not call the backend.
    fn visit(
        &self,
        table: Table,
        range: &KeyRange,
        reverse: bool,
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError>;

    /// The entries of `table` in `range`, as `scan` says.
    fn range(
        &self,
        table: Table,
        range: &KeyRange,
        scan: Scan,
    ) -> Result<Vec<Entry>, BackendError> {
        let (reverse, limit) = match scan {
            Scan::All => (false, usize::MAX),
            Scan::First(n) => (false, n),
            Scan::Last(n) => (true, n),
        };
        let mut out = Vec::new();
        if limit > 0 {
            self.visit(table, range, reverse, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// Applies `write` atomically if all its conditions hold ([`CommitError::Conflict`]
    /// otherwise, and nothing is written). Subscribers hear of the change once readers can
    /// see it, in commit order; then, unless the write is lazy, the commit waits until it is
    /// on disk. A failed flush is reported as an error although the change is already visible
    /// and announced.
    fn commit(&self, write: Write) -> Result<(), CommitError>;

    /// The changes of every commit from now on, in commit order (on an engine that several
    /// processes share, theirs too).
    fn subscribe(&self) -> Subscription;

    /// Puts everything committed so far on disk (lazy writes too).
    fn flush(&self) -> Result<(), BackendError>;
}

/// What stores share: a handle to the backend.
pub type SharedBackend = Arc<dyn Backend>;

/// The number of entries of `table` in `range` (visits them: for gauges, not hot paths).
pub fn count(backend: &dyn Backend, table: Table, range: &KeyRange) -> Result<u64, BackendError> {
    let mut n = 0;
    backend.visit(table, range, false, &mut |_, _| {
        n += 1;
        true
    })?;
    Ok(n)
}

/// Writes and flushes a probe value: fails while the disk is full, and for good once the
/// engine has latched an I/O error.
pub fn probe(backend: &dyn Backend, now_ms: u64) -> Result<(), BackendError> {
    const PROBE: Table = Table("storage_probe");
    backend
        .commit(Write::new().put(PROBE, "probe", now_ms.to_be_bytes().to_vec()))
        .map_err(CommitError::into_backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_end_after_every_key_of_a_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert!(KeyRange::between("b", "a").is_empty());
    }
}
