//! The backend on PostgreSQL (`store = "postgres://..."`), for control planes whose state
//! must outlive one machine: every table of every store in one relation `tern_entries`
//! (`tbl`, `key`, `value`), keyed by a namespace and the table's name, in bytewise key order.
//! A commit is one serializable transaction that reads its conditions under row locks
//! (`FOR UPDATE`), so a condition cannot change before the write lands, and a serialization
//! failure is retried; a lazy write commits without waiting for the WAL flush.
//!
//! `tokio-postgres` connections are driven by a runtime on a thread of their own, so that the
//! blocking methods of [`Backend`] can wait on them from any thread (an async one included)
//! without nesting runtimes. Commits are announced to this process's subscribers, in the
//! order this process made them; other processes' commits are not announced yet.

mod schema;
pub mod testing;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use futures_executor::block_on;
use tokio::sync::{broadcast, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel, NoTls};
use tracing::warn;

pub use schema::SchemaError;

use super::{
    Backend, BackendError, Changes, CommitError, KeyRange, NOTIFY_CAPACITY, Op, Table, Write,
};

/// Rows fetched per page of a range scan.
const PAGE: i64 = 256;
/// Attempts at a commit that keeps failing serialization before giving up.
const MAX_ATTEMPTS: usize = 8;

/// Why the backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot start the PostgreSQL driver thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The thread that drives the connections; stopping it closes them.
#[derive(Debug)]
struct Driver {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A PostgreSQL database; cheap to share behind an `Arc`.
pub struct PostgresBackend {
    /// Prefix of every table's name: stores that used to be separate databases stay apart.
    namespace: String,
    clients: Vec<Mutex<Client>>,
    next: AtomicUsize,
    commits: Mutex<()>,
    changes: broadcast::Sender<Changes>,
    _driver: Driver,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("namespace", &self.namespace)
            .field("connections", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// Whether a failed transaction may succeed when run again.
fn retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl PostgresBackend {
    /// Connects `connections` times to `url` (`postgres://user@host:port/db`), brings the
    /// schema up to date (refusing a newer one) and keeps `namespace`'s tables apart from
    /// others in the same database.
    pub fn connect(url: &str, namespace: &str, connections: usize) -> Result<Self, OpenError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let url = url.to_owned();
        let count = connections.max(1);
        let thread = std::thread::Builder::new()
            .name("postgres-driver".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(OpenError::Thread(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut clients = Vec::with_capacity(count);
                    for _ in 0..count {
                        match tokio_postgres::connect(&url, NoTls).await {
                            Ok((client, connection)) => {
                                tokio::spawn(async move {
                                    if let Err(error) = connection.await {
                                        warn!(%error, "a PostgreSQL connection ended");
                                    }
                                });
                                clients.push(client);
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(OpenError::Connect(e)));
                                return;
                            }
                        }
                    }
                    let _ = ready_tx.send(Ok(clients));
                    let _ = stop_rx.await;
                });
            })
            .map_err(OpenError::Thread)?;
        let driver = Driver {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let mut clients = match ready_rx.recv() {
            Ok(result) => result?,
            Err(_) => {
                return Err(OpenError::Thread(std::io::Error::other(
                    "the driver thread ended before connecting",
                )));
            }
        };
        if let Some(first) = clients.first_mut() {
            block_on(schema::migrate(first))?;
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            clients: clients.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            commits: Mutex::new(()),
            changes: broadcast::channel(NOTIFY_CAPACITY).0,
            _driver: driver,
        })
    }

    /// A connection of the pool, taken in turn.
    fn client(&self) -> MutexGuard<'_, Client> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored name of `table`.
    fn name(&self, table: Table) -> String {
        format!("{}/{}", self.namespace, table.0)
    }

    /// Runs `write` in one serializable transaction: `Ok(false)` when a condition did not hold
    /// (nothing written).
    async fn apply(
        client: &mut Client,
        name: impl Fn(Table) -> String,
        write: &Write,
    ) -> Result<bool, tokio_postgres::Error> {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await?;
        if write.lazy {
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await?;
        }
        for condition in &write.conditions {
            let row = tx
                .query_opt(
                    "SELECT value FROM tern_entries WHERE tbl = $1 AND key = $2 FOR UPDATE",
                    &[&name(condition.table), &condition.key],
                )
                .await?;
            let held: Option<Vec<u8>> = row.map(|r| r.get(0));
            if held.as_deref() != condition.expected.as_deref() {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        for op in &write.ops {
            match op {
                Op::Put { table, key, value } => {
                    tx.execute(
                        "INSERT INTO tern_entries (tbl, key, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                        &[&name(*table), key, value],
                    )
                    .await?;
                }
                Op::Delete { table, key } => {
                    tx.execute(
                        "DELETE FROM tern_entries WHERE tbl = $1 AND key = $2",
                        &[&name(*table), key],
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl Backend for PostgresBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let client = self.client();
        let row = block_on(client.query_opt(
            "SELECT value FROM tern_entries WHERE tbl = $1 AND key = $2",
            &[&self.name(table), &key],
        ))
        .map_err(BackendError::storage)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn visit(
        &self,
        table: Table,
        range: &KeyRange,
        reverse: bool,
        each: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        let name = self.name(table);
        // The last key handed over: the next page starts past it.
        let mut last: Option<Vec<u8>> = None;
        loop {
            let (lower_op, lower, upper) = match (&last, reverse) {
                (None, _) => (">=", range.start.clone(), range.end.clone()),
                (Some(last), false) => (">", last.clone(), range.end.clone()),
                (Some(last), true) => (">=", range.start.clone(), Some(last.clone())),
            };
            let sql = format!(
                "SELECT key, value FROM tern_entries WHERE tbl = $1 AND key {lower_op} $2{} \
                 ORDER BY key {} LIMIT {PAGE}",
                if upper.is_some() { " AND key < $3" } else { "" },
                if reverse { "DESC" } else { "ASC" },
            );
            let rows = {
                let client = self.client();
                match &upper {
                    Some(upper) => block_on(client.query(&sql, &[&name, &lower, upper])),
                    None => block_on(client.query(&sql, &[&name, &lower])),
                }
                .map_err(BackendError::storage)?
            };
            let full = rows.len() as i64 == PAGE;
            for row in &rows {
                let key: &[u8] = row.get(0);
                let value: &[u8] = row.get(1);
                if !each(key, value) {
                    return Ok(());
                }
            }
            match rows.last() {
                Some(row) if full => last = Some(row.get::<_, Vec<u8>>(0)),
                _ => return Ok(()),
            }
        }
    }

    fn commit(&self, write: Write) -> Result<(), CommitError> {
        // Commits of this process are applied and announced one at a time, in order.
        let _order = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        let mut client = self.client();
        let name = |table: Table| self.name(table);
        for _ in 0..MAX_ATTEMPTS {
            match block_on(Self::apply(&mut client, name, &write)) {
                Ok(true) => {
                    if self.changes.receiver_count() > 0 {
                        let _ = self.changes.send(write.changes().into());
                    }
                    return Ok(());
                }
                Ok(false) => return Err(CommitError::Conflict),
                Err(e) if retryable(&e) => continue,
                Err(e) => return Err(CommitError::Backend(BackendError::storage(e))),
            }
        }
        Err(CommitError::Backend(BackendError::Contended {
            attempts: MAX_ATTEMPTS,
        }))
    }

    fn subscribe(&self) -> broadcast::Receiver<Changes> {
        self.changes.subscribe()
    }

    /// Lazy commits reach the disk with the next synchronous commit record (the WAL is one
    /// sequence): a transaction that takes a transaction id writes one and waits for it.
    fn flush(&self) -> Result<(), BackendError> {
        let client = self.client();
        block_on(client.batch_execute("SELECT pg_catalog.txid_current()"))
            .map_err(BackendError::storage)
    }
}
