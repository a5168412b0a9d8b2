//! The backend on disk: a sled database, one sled tree per table. Commits are serialized by
//! a lock, so that conditions hold until the write lands and commits are announced in the
//! order they were applied; a commit is one sled write, batch or transaction (whichever
//! covers its keys atomically).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    Backend, BackendError, Changes, CommitError, KeyRange, NOTIFY_CAPACITY, Notice, Notifier, Op,
    Subscription, Table, Write, conditions_hold,
};

/// A sled database; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SledBackend {
    db: sled::Db,
    trees: RwLock<HashMap<Table, sled::Tree>>,
    commits: Mutex<()>,
    changes: Notifier,
}

impl SledBackend {
    /// Opens (or creates) the database at `path`, with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, BackendError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(BackendError::storage)?;
        Ok(Self::from_db(db))
    }

    /// A database that lives in memory and in a temporary file, gone when dropped.
    pub fn temporary() -> Result<Self, BackendError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(BackendError::storage)?;
        Ok(Self::from_db(db))
    }

    fn from_db(db: sled::Db) -> Self {
        Self {
            db,
            trees: RwLock::default(),
            commits: Mutex::new(()),
            changes: Notifier::new(NOTIFY_CAPACITY),
        }
    }

    fn tree(&self, table: Table) -> Result<sled::Tree, BackendError> {
        if let Some(tree) = self
            .trees
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&table)
        {
            return Ok(tree.clone());
        }
        let tree = self.db.open_tree(table.0).map_err(BackendError::storage)?;
        self.trees
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table, tree.clone());
        Ok(tree)
    }
}

impl SledBackend {
    /// Applies `ops` (on `tables`, sorted and distinct) atomically, in the cheapest way sled
    /// offers: one key is one insert or remove; one tree a batch; several trees a transaction.
    /// (sled's batches and transactions wait for any flush in progress in the process; a
    /// single-key write does not.)
    fn apply(&self, tables: &[Table], ops: &[Op]) -> Result<(), BackendError> {
        let storage = BackendError::storage;
        match (tables, ops) {
            (_, []) => Ok(()),
            (_, [Op::Put { table, key, value }]) => {
                self.tree(*table)?
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(storage)?;
                Ok(())
            }
            (_, [Op::Delete { table, key }]) => {
                self.tree(*table)?.remove(key.as_slice()).map_err(storage)?;
                Ok(())
            }
            ([table], _) => {
                let mut batch = sled::Batch::default();
                for op in ops {
                    match op {
                        Op::Put { key, value, .. } => {
                            batch.insert(key.as_slice(), value.as_slice())
                        }
                        Op::Delete { key, .. } => batch.remove(key.as_slice()),
                    }
                }
                self.tree(*table)?.apply_batch(batch).map_err(storage)
            }
            _ => {
                let trees = tables
                    .iter()
                    .map(|t| self.tree(*t))
                    .collect::<Result<Vec<_>, _>>()?;
                let at = |table: Table| tables.binary_search(&table).unwrap_or(0);
                trees
                    .as_slice()
                    .transaction(|view| {
                        for op in ops {
                            match op {
                                Op::Put { table, key, value } => {
                                    view[at(*table)].insert(key.as_slice(), value.as_slice())?;
                                }
                                Op::Delete { table, key } => {
                                    view[at(*table)].remove(key.as_slice())?;
                                }
                            }
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e: TransactionError<()>| match e {
                        TransactionError::Storage(e) => storage(e),
                        TransactionError::Abort(()) => {
                            BackendError::storage(std::io::Error::other("transaction aborted"))
                        }
                    })
            }
        }
    }
}

impl Backend for SledBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self
            .tree(table)?
            .get(key)
            .map_err(BackendError::storage)?
            .map(|v| v.to_vec()))
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
        let mut found = self.tree(table)?.range::<&[u8], _>(range.bounds());
        while let Some(entry) = if reverse {
            found.next_back()
        } else {
            found.next()
        } {
            let (k, v) = entry.map_err(BackendError::storage)?;
            if !each(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, write: Write) -> Result<(), CommitError> {
        let mut tables: Vec<Table> = write.ops.iter().map(Op::table).collect();
        tables.sort();
        tables.dedup();
        // Built outside the lock, and only for someone to send it to.
        let mut changes: Option<Changes> =
            (self.changes.subscribers() > 0).then(|| write.changes().into());
        {
            // Every write of this database goes through here: under this lock, what a
            // condition reads cannot change before the write lands.
            let _order = self.commits.lock().unwrap_or_else(|p| p.into_inner());
            let hold = conditions_hold(&write.conditions, |table, key| {
                self.tree(table)?.get(key).map_err(BackendError::storage)
            })?;
            if !hold {
                return Err(CommitError::Conflict);
            }
            self.apply(&tables, &write.ops)?;
            // Counted again after the write landed: readers do not take this lock, so one
            // that subscribed since may have read the values this write replaced.
            if self.changes.subscribers() > 0 {
                let changes = changes.take().unwrap_or_else(|| write.changes().into());
                self.changes.send(Notice::Committed(changes));
            }
        }
        if !write.lazy {
            self.db.flush().map_err(BackendError::storage)?;
        }
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        self.changes.subscribe()
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush().map_err(BackendError::storage)?;
        Ok(())
    }
}
