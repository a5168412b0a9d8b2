//! Test support (nothing in `serve` uses it): a backend that behaves as a disk does when the
//! power goes. A commit lands at once in what readers see (the page cache); a commit that is
//! not lazy, and every flush, make everything so far durable (an fsync covers all earlier
//! writes); [`LossyBackend::crash`] drops whatever was not. After
//! [`LossyBackend::fail_after`] more operations, commits and flushes fail with an injected
//! I/O error, in one of two ways a real disk fails: before the write (nothing changed), or at
//! the sync after it (the change is visible but not durable) — until [`LossyBackend::heal`].

use std::sync::{Mutex, MutexGuard};

use super::{
    Backend, BackendError, CommitError, KeyRange, MemoryBackend, NOTIFY_CAPACITY, Notice, Notifier,
    Subscription, Table, Write,
};

/// Where an injected failure strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// The write fails before anything changes.
    BeforeWrite,
    /// The write lands in the page cache, then its sync fails: visible, not durable.
    AtSync,
}

#[derive(Debug, Default)]
struct State {
    /// What readers see.
    live: MemoryBackend,
    /// What would survive a crash.
    durable: MemoryBackend,
    /// Writes in `live` that `durable` lacks, in commit order.
    unsynced: Vec<Write>,
    /// Operations left before failures start (`None`: never).
    fail_after: Option<u64>,
    strike: Option<Strike>,
}

/// See the module's documentation.
#[derive(Debug)]
pub struct LossyBackend {
    state: Mutex<State>,
    changes: Notifier,
}

impl Default for LossyBackend {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changes: Notifier::new(NOTIFY_CAPACITY),
        }
    }
}

/// A copy of `write` that always applies (its conditions held when it was committed).
fn unconditional(write: &Write) -> Write {
    Write {
        conditions: Vec::new(),
        ops: write.ops.clone(),
        lazy: false,
    }
}

fn injected() -> BackendError {
    BackendError::storage(std::io::Error::other("injected I/O error"))
}

impl LossyBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After `operations` more commits and flushes, each fails as `strike` says.
    pub fn fail_after(&self, operations: u64, strike: Strike) {
        let mut state = self.state();
        state.fail_after = Some(operations);
        state.strike = Some(strike);
    }

    /// Failures stop.
    pub fn heal(&self) {
        let mut state = self.state();
        state.fail_after = None;
        state.strike = None;
    }

    /// The power goes: what was not made durable is gone, and readers see the durable state.
    pub fn crash(&self) {
        let mut state = self.state();
        state.unsynced.clear();
        state.live = state.durable.duplicate();
    }

    /// Whether the next operation fails, and how; counts it down.
    fn strikes(state: &mut State) -> Option<Strike> {
        match state.fail_after {
            Some(0) => state.strike,
            Some(n) => {
                state.fail_after = Some(n - 1);
                None
            }
            None => None,
        }
    }

    /// Makes everything in the page cache durable.
    fn sync(state: &mut State) {
        for write in std::mem::take(&mut state.unsynced) {
            // Applies: it has no conditions.
            let _ = state.durable.commit(write);
        }
    }
}

impl Backend for LossyBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.state().live.get(table, key)
    }

    fn visit(
        &self,
        table: Table,
        range: &KeyRange,
        reverse: bool,
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        self.state().live.visit(table, range, reverse, each)
    }

    fn commit(&self, write: Write) -> Result<(), CommitError> {
        let mut state = self.state();
        // A lazy commit has no sync to fail at: its failure is the write's.
        let strike = Self::strikes(&mut state).map(|strike| {
            if write.lazy {
                Strike::BeforeWrite
            } else {
                strike
            }
        });
        if strike == Some(Strike::BeforeWrite) {
            return Err(injected().into());
        }
        let kept = unconditional(&write);
        let lazy = write.lazy;
        let changes = write.changes();
        state.live.commit(write)?;
        state.unsynced.push(kept);
        self.changes.send(Notice::Committed(changes.into()));
        if strike == Some(Strike::AtSync) {
            return Err(injected().into());
        }
        if !lazy {
            Self::sync(&mut state);
        }
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        self.changes.subscribe()
    }

    fn flush(&self) -> Result<(), BackendError> {
        let mut state = self.state();
        if Self::strikes(&mut state).is_some() {
            return Err(injected());
        }
        Self::sync(&mut state);
        Ok(())
    }
}
