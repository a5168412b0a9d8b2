//! A backend in memory: tables of ordered maps behind one lock, for tests and simulations.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{
    Backend, BackendError, Changes, CommitError, KeyRange, NOTIFY_CAPACITY, Notice, Notifier, Op,
    Subscription, Table, Write, conditions_hold,
};

type Tables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Everything in memory; gone when dropped.
#[derive(Debug)]
pub struct MemoryBackend {
    tables: Mutex<Tables>,
    changes: Notifier,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            tables: Mutex::default(),
            changes: Notifier::new(NOTIFY_CAPACITY),
        }
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything in it now, with no subscribers.
    pub(super) fn duplicate(&self) -> Self {
        Self {
            tables: Mutex::new(self.tables().clone()),
            changes: Notifier::new(NOTIFY_CAPACITY),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self
            .tables()
            .get(&table)
            .and_then(|entries| entries.get(key))
            .cloned())
    }

    fn visit(
        &self,
        table: Table,
        range: &KeyRange,
        reverse: bool,
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        if range.is_empty() {
            return Ok(());
        }
        let tables = self.tables();
        let Some(entries) = tables.get(&table) else {
            return Ok(());
        };
        let mut found = entries.range::<[u8], _>(range.bounds());
        while let Some((k, v)) = if reverse {
            found.next_back()
        } else {
            found.next()
        } {
            if !each(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, write: Write) -> Result<(), CommitError> {
        let mut tables = self.tables();
        let hold = conditions_hold(&write.conditions, |table, key| {
            Ok(tables.get(&table).and_then(|entries| entries.get(key)))
        })?;
        if !hold {
            return Err(CommitError::Conflict);
        }
        // Only for someone to send it to. Counted under the lock, which readers take too: one
        // that subscribes later reads what this commit wrote.
        let changes: Option<Changes> =
            (self.changes.subscribers() > 0).then(|| write.changes().into());
        for op in write.ops {
            match op {
                Op::Put { table, key, value } => {
                    tables.entry(table).or_default().insert(key, value);
                }
                Op::Delete { table, key } => {
                    if let Some(entries) = tables.get_mut(&table) {
                        entries.remove(&key);
                    }
                }
            }
        }
        // Sent under the lock: subscribers see commits in the order they were applied.
        if let Some(changes) = changes {
            self.changes.send(Notice::Committed(changes));
        }
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        self.changes.subscribe()
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
