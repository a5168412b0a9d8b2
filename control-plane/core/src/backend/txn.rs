//! Read-modify-write changes as optimistic transactions: what a [`Transaction`] reads becomes
//! a condition of its [`Write`], so the write applies only if nothing it read has changed
//! since; [`transact`] runs the body again when it raced.

use std::collections::{BTreeMap, BTreeSet};

use super::{Backend, BackendError, CommitError, Table, Write};

/// How often [`transact`] runs a change that keeps racing others before it gives up.
pub const MAX_ATTEMPTS: usize = 64;

/// The longest pause between two attempts.
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(4);

/// A change being built: reads see its own writes first.
#[derive(Debug)]
pub struct Transaction<'a> {
    backend: &'a dyn Backend,
    /// What this transaction wrote (`None`: deleted), by table and key.
    written: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
    /// Keys read from the backend (each a condition of the write once).
    read: BTreeSet<(Table, Vec<u8>)>,
    write: Write,
}

impl<'a> Transaction<'a> {
    fn new(backend: &'a dyn Backend) -> Self {
        Self {
            backend,
            written: BTreeMap::new(),
            read: BTreeSet::new(),
            write: Write::new(),
        }
    }

    /// The value of `key`: what this transaction wrote, else what the backend holds (which the
    /// commit will expect to be unchanged).
    pub fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        if let Some(value) = self.written.get(&(table, key.to_vec())) {
            return Ok(value.clone());
        }
        let value = self.backend.get(table, key)?;
        if self.read.insert((table, key.to_vec())) {
            self.write = std::mem::take(&mut self.write).only_if(table, key, value.clone());
        }
        Ok(value)
    }

    /// The values of `keys`, as [`Transaction::get`] reads each, the backend asked once.
    pub fn get_many(
        &mut self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let unread: Vec<Vec<u8>> = keys
            .iter()
            .filter(|key| !self.written.contains_key(&(table, key.to_vec())))
            .cloned()
            .collect();
        let stored: BTreeMap<Vec<u8>, Option<Vec<u8>>> = unread
            .iter()
            .cloned()
            .zip(self.backend.get_many(table, &unread)?)
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.written.get(&(table, key.clone())) {
                out.push(value.clone());
                continue;
            }
            let value = stored.get(key).cloned().flatten();
            if !self.read.contains(&(table, key.clone())) {
                self.read.insert((table, key.clone()));
                self.write =
                    std::mem::take(&mut self.write).only_if(table, key.clone(), value.clone());
            }
            out.push(value);
        }
        Ok(out)
    }

    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        let key = key.into();
        self.written
            .insert((table, key.clone()), Some(value.clone()));
        self.write = std::mem::take(&mut self.write).put(table, key, value);
    }

    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.written.insert((table, key.clone()), None);
        self.write = std::mem::take(&mut self.write).delete(table, key);
    }

    /// Commits without waiting for the disk.
    pub fn lazily(&mut self) {
        self.write.lazy = true;
    }
}

/// After the `attempt`-th conflict: a random pause that doubles up to [`MAX_PAUSE`], so that
/// writers racing for one key spread out instead of colliding again in step.
fn pause(attempt: usize) {
    use rand::Rng;
    let ceiling = (std::time::Duration::from_micros(20) * (1 << attempt.min(8))).min(MAX_PAUSE);
    let pause = rand::rng().random_range(std::time::Duration::ZERO..=ceiling);
    std::thread::sleep(pause);
}

/// Runs `body` and commits what it wrote, on the condition that what it read is unchanged;
/// runs it again after a conflict, up to [`MAX_ATTEMPTS`] times. An error from `body` aborts:
/// nothing is written. Reads are not of one moment, so an error decided on reads that another
/// writer changed meanwhile (a record and its index, each read before and after that writer)
/// is not trusted: the body runs again.
pub fn transact<T, E: From<BackendError>>(
    backend: &dyn Backend,
    mut body: impl FnMut(&mut Transaction<'_>) -> Result<T, E>,
) -> Result<T, E> {
    for attempt in 0..MAX_ATTEMPTS {
        let mut txn = Transaction::new(backend);
        let value = match body(&mut txn) {
            Ok(value) => value,
            Err(e) => {
                let still = super::conditions_hold(&txn.write.conditions, |table, key| {
                    backend.get(table, key)
                });
                if still.unwrap_or(true) {
                    return Err(e);
                }
                pause(attempt);
                continue;
            }
        };
        if txn.write.is_empty() {
            return Ok(value);
        }
        match backend.commit(txn.write) {
            Ok(()) => return Ok(value),
            Err(CommitError::Conflict) => pause(attempt),
            Err(CommitError::Backend(e)) => return Err(e.into()),
        }
    }
    Err(BackendError::Contended {
        attempts: MAX_ATTEMPTS,
    }
    .into())
}
