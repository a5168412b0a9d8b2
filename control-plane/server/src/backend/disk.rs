//! The backend on disk: a sled database, one sled tree per table. A commit is one sled
//! transaction over the trees it touches; commits are serialized by a lock so that they are
//! announced in the order they were applied.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::broadcast;

use super::{
    Backend, BackendError, Changes, CommitError, KeyRange, NOTIFY_CAPACITY, Op, Table, Write,
};

/// A sled database; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SledBackend {
    db: sled::Db,
    trees: RwLock<HashMap<Table, sled::Tree>>,
    commits: Mutex<()>,
    changes: broadcast::Sender<Changes>,
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
            changes: broadcast::channel(NOTIFY_CAPACITY).0,
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

/// Why a sled transaction stopped.
enum Abort {
    Conflict,
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
        let mut tables: Vec<Table> = write
            .conditions
            .iter()
            .map(|c| c.table)
            .chain(write.ops.iter().map(|op| match op {
                Op::Put { table, .. } | Op::Delete { table, .. } => *table,
            }))
            .collect();
        tables.sort();
        tables.dedup();
        let trees = tables
            .iter()
            .map(|t| self.tree(*t))
            .collect::<Result<Vec<_>, _>>()?;
        let at = |table: Table| tables.binary_search(&table).unwrap_or(0);
        let changes: Changes = write.changes().into();
        {
            let _order = self.commits.lock().unwrap_or_else(|p| p.into_inner());
            let result = trees.as_slice().transaction(|view| {
                for condition in &write.conditions {
                    let current = view[at(condition.table)].get(&condition.key)?;
                    if current.as_deref() != condition.expected.as_deref() {
                        return Err(ConflictableTransactionError::Abort(Abort::Conflict));
                    }
                }
                for op in &write.ops {
                    match op {
                        Op::Put { table, key, value } => {
                            view[at(*table)].insert(key.as_slice(), value.as_slice())?;
                        }
                        Op::Delete { table, key } => {
                            view[at(*table)].remove(key.as_slice())?;
                        }
                    }
                }
                Ok(())
            });
            match result {
                Ok(()) => {}
                Err(TransactionError::Abort(Abort::Conflict)) => return Err(CommitError::Conflict),
                Err(TransactionError::Storage(e)) => {
                    return Err(BackendError::storage(e).into());
                }
            }
            let _ = self.changes.send(changes);
        }
        if !write.lazy {
            self.db.flush().map_err(BackendError::storage)?;
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Changes> {
        self.changes.subscribe()
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush().map_err(BackendError::storage)?;
        Ok(())
    }
}
