//! Writes fenced by a lease's epoch: a [`FencedBackend`] adds to every commit the condition
//! that the lease's epoch key still holds the epoch it was made with. A holder that lost its
//! lease while paused — and did not notice — cannot overwrite what its successor wrote: the
//! successor raised the epoch before its first write.
//!
//! The epoch key lives in every backend a holder writes to: taking a lease raises it where
//! the lease is kept, and [`FencedBackend::claim`] raises it in any other backend before the
//! first fenced write there.

use super::{
    Backend, BackendError, CommitError, Condition, KeyRange, SharedBackend, Subscription, Table,
    Write, transact,
};

/// Table of lease epochs: lease name → epoch (u64, big-endian).
pub const EPOCHS: Table = Table("lease_epochs");

/// The stored form of an epoch.
pub fn epoch_bytes(epoch: u64) -> Vec<u8> {
    epoch.to_be_bytes().to_vec()
}

/// The epoch stored under `lease`, 0 when none is.
pub fn stored_epoch(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// A backend whose every commit holds only while `lease`'s epoch is `epoch`.
#[derive(Debug, Clone)]
pub struct FencedBackend {
    inner: SharedBackend,
    lease: &'static str,
    epoch: u64,
}

impl FencedBackend {
    /// Fences writes to `inner` by `lease`'s `epoch`, raising the stored epoch to it first;
    /// [`BackendError::Fenced`] when a later epoch is stored already (the lease moved on).
    pub fn claim(
        inner: SharedBackend,
        lease: &'static str,
        epoch: u64,
    ) -> Result<Self, BackendError> {
        transact(inner.as_ref(), |txn| {
            let stored = stored_epoch(txn.get(EPOCHS, lease.as_bytes())?.as_deref());
            if stored > epoch {
                return Err(BackendError::Fenced { lease, epoch });
            }
            if stored < epoch {
                txn.put(EPOCHS, lease.as_bytes(), epoch_bytes(epoch));
            }
            Ok(())
        })?;
        Ok(Self {
            inner,
            lease,
            epoch,
        })
    }

    /// The lease writes are fenced by.
    pub fn lease(&self) -> &'static str {
        self.lease
    }

    /// The epoch writes are fenced by.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn fence(&self) -> Condition {
        Condition {
            table: EPOCHS,
            key: self.lease.as_bytes().to_vec(),
            expected: Some(epoch_bytes(self.epoch)),
        }
    }
}

impl Backend for FencedBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(table, key)
    }

    fn get_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        self.inner.get_many(table, keys)
    }

    fn visit(
        &self,
        table: Table,
        range: &KeyRange,
        reverse: bool,
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        self.inner.visit(table, range, reverse, each)
    }

    /// A commit whose fence no longer holds is refused with [`BackendError::Fenced`] (not a
    /// conflict: running it again cannot help).
    fn commit(&self, mut write: Write) -> Result<(), CommitError> {
        write.conditions.push(self.fence());
        match self.inner.commit(write) {
            Err(CommitError::Conflict) => {
                let held = self.inner.get(EPOCHS, self.lease.as_bytes())?;
                if held != Some(epoch_bytes(self.epoch)) {
                    return Err(CommitError::Backend(BackendError::Fenced {
                        lease: self.lease,
                        epoch: self.epoch,
                    }));
                }
                Err(CommitError::Conflict)
            }
            other => other,
        }
    }

    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.inner.flush()
    }
}
