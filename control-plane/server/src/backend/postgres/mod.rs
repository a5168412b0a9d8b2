//! The backend on PostgreSQL (`store = "postgres://..."`), for control planes whose state
//! must outlive one machine and replicas that share it: every table of every store in one
//! relation `tern_entries` (`tbl`, `key`, `value`), keyed by a namespace and the table's
//! name, in bytewise key order. A commit is one serializable transaction that reads its
//! conditions under row locks (`FOR UPDATE`), so a condition cannot change before the write
//! lands, and a serialization failure is retried; a lazy write commits without waiting for
//! the WAL flush. A commit is a few statements whatever its size (its conditions in one query,
//! its puts in one multi-row upsert, its deletes in one), and [`Backend::get_many`] reads many
//! keys in one.
//!
//! - `pool`: the connections, driven on a thread of their own and opened again when lost.
//! - `feed`: every process's commits, heard through `LISTEN`/`NOTIFY` in commit order.
//! - `schema`: versioned migrations, a newer schema refused.

mod feed;
mod link;
mod passfile;
mod pool;
mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_executor::block_on;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel};

pub use link::{Link, LinkError, Secrets, check_url};
pub use pool::ConnectError;
pub use schema::SchemaError;

use super::driver::Driver;
use super::{
    Backend, BackendError, CommitError, KeyRange, NOTIFY_CAPACITY, Op, Subscription, Table, Write,
};
use feed::{Body, Feed, Stamp};
use pool::Pool;

/// Rows fetched per page of a range scan.
const PAGE: i64 = 256;
/// Attempts at a commit that keeps failing serialization before giving up.
const MAX_ATTEMPTS: usize = 8;
/// How long opening waits for the change feed to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a commit waits to hear itself back before telling subscribers they missed it.
const HEARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Notices kept in `tern_notices` are pruned after every this many stored ones.
const PRUNE_NOTICES_EVERY: u64 = 64;
/// Most notices kept in `tern_notices` (the newest; with the age bound, the table stays small
/// whatever writes it); a listener that falls further behind hears it missed them.
const MAX_NOTICES: i64 = if cfg!(test) { 32 } else { 4096 };
/// Longest namespace (it names a notification channel, at most 63 bytes).
const MAX_NAMESPACE: usize = 40;

/// Why the backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot start the PostgreSQL driver thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("namespace {0:?}: use at most 40 of a-z, 0-9, `_` and `-`")]
    Namespace(String),
    #[error("the PostgreSQL change feed did not start listening within {0:?}")]
    Listen(Duration),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// A PostgreSQL database; cheap to share behind an `Arc`.
pub struct PostgresBackend {
    /// Prefix of every table's name: stores that used to be separate databases stay apart.
    namespace: String,
    channel: String,
    pool: Pool,
    /// This backend's commits, in order: the stamp's sequence, taken under the lock.
    commits: Mutex<u64>,
    origin: u64,
    stored_notices: AtomicU64,
    /// The pool's reopen count when the oldest lazy commit not yet flushed was made: a flush
    /// after the connections were opened again (the server may have restarted and lost it)
    /// cannot vouch for it.
    unflushed: Mutex<Option<u64>>,
    feed: Arc<Feed>,
    driver: Driver,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("namespace", &self.namespace)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// Rows of one statement, as its array parameters.
#[derive(Default)]
struct Columns<'a> {
    tables: Vec<String>,
    keys: Vec<&'a [u8]>,
    values: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, table: String, key: &'a [u8], value: &'a [u8]) {
        self.tables.push(table);
        self.keys.push(key);
        self.values.push(value);
    }
}

/// Whether a failed transaction may succeed when run again.
pub fn retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
    )
}

fn valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl PostgresBackend {
    /// Connects `connections` times to `url` (`postgres://user@host:port/db`), brings the
    /// schema up to date (refusing a newer one), starts hearing every process's commits and
    /// keeps `namespace`'s tables apart from others in the same database.
    pub fn connect(url: &str, namespace: &str, connections: usize) -> Result<Self, OpenError> {
        Self::open(
            &Link::parse(url, &Secrets::default())?,
            namespace,
            connections,
        )
    }

    /// As [`PostgresBackend::connect`], over `link` (its TLS and password settled).
    pub fn open(link: &Link, namespace: &str, connections: usize) -> Result<Self, OpenError> {
        if !valid_namespace(namespace) {
            return Err(OpenError::Namespace(namespace.to_owned()));
        }
        let driver = Driver::start("postgres-driver").map_err(OpenError::Thread)?;
        let pool = Pool::open(&driver, link, connections)?;
        {
            let mut first = pool.get(&driver)?;
            block_on(schema::migrate(first.client()))?;
            // Rows of processes long gone (each process writes one under a random origin).
            block_on(
                first
                    .client()
                    .batch_execute("DELETE FROM tern_flushes WHERE at < now() - interval '1 day'"),
            )
            .map_err(SchemaError::from)?;
        }
        let origin = rand::random::<u64>();
        let feed = Arc::new(Feed::new(origin, NOTIFY_CAPACITY));
        let channel = feed::channel(namespace);
        driver.spawn(feed::listen(link.clone(), channel.clone(), feed.clone()));
        if !feed.wait_listening(LISTEN_TIMEOUT) {
            return Err(OpenError::Listen(LISTEN_TIMEOUT));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            channel,
            pool,
            commits: Mutex::new(0),
            origin,
            stored_notices: AtomicU64::new(0),
            unflushed: Mutex::new(None),
            feed,
            driver,
        })
    }

    /// Whether commits of other processes are heard now (not while the change feed's
    /// connection is being opened again).
    pub fn hears_changes(&self) -> bool {
        self.feed.listening()
    }

    /// The namespace this backend's tables are kept apart in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The stored name of `table` (the `tbl` column of `tern_entries`).
    pub fn name(&self, table: Table) -> String {
        format!("{}/{}", self.namespace, table.0)
    }

    /// Runs `work` once on a connection of the pool, for stores with tables of their own
    /// (`work` drives the client's futures with `futures_executor::block_on`; the driver
    /// thread runs the connections). A connection found closed is opened again for the next.
    pub fn once<T>(
        &self,
        work: impl FnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, BackendError> {
        let mut lease = self.pool.get(&self.driver).map_err(BackendError::storage)?;
        let result = work(lease.client());
        if result.is_err() {
            lease.check();
        }
        result.map_err(BackendError::storage)
    }

    /// Like [`PostgresBackend::once`], and once more on a fresh connection when the one it
    /// ran on had closed (the server restarted since): for work that may run twice.
    pub fn run<T>(
        &self,
        mut query: impl FnMut(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, BackendError> {
        let mut again = true;
        loop {
            let mut lease = self.pool.get(&self.driver).map_err(BackendError::storage)?;
            match query(lease.client()) {
                Ok(value) => return Ok(value),
                Err(e) => {
                    let closed = lease.client().is_closed();
                    lease.check();
                    if !(closed && again) {
                        return Err(BackendError::storage(e));
                    }
                    again = false;
                }
            }
        }
    }

    /// Runs `write` in one serializable transaction that also notifies every listener:
    /// `Ok(false)` when a condition did not hold (nothing written).
    async fn apply(
        &self,
        client: &mut Client,
        write: &Write,
        stamp: Stamp,
        changes: &[u8],
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
        // Conditions in one query, their rows locked until the commit.
        if !write.conditions.is_empty() {
            let tables: Vec<String> = write
                .conditions
                .iter()
                .map(|c| self.name(c.table))
                .collect();
            let keys: Vec<&[u8]> = write.conditions.iter().map(|c| c.key.as_slice()).collect();
            let rows = tx
                .query(
                    "SELECT e.tbl, e.key, e.value FROM tern_entries e \
                     JOIN unnest($1::text[], $2::bytea[]) AS c(tbl, key) \
                     ON e.tbl = c.tbl AND e.key = c.key FOR UPDATE OF e",
                    &[&tables, &keys],
                )
                .await?;
            let held: HashMap<(&str, &[u8]), &[u8]> = rows
                .iter()
                .map(|row| ((row.get(0), row.get(1)), row.get(2)))
                .collect();
            let holds = write.conditions.iter().zip(&tables).all(|(c, table)| {
                held.get(&(table.as_str(), c.key.as_slice())).copied() == c.expected.as_deref()
            });
            if !holds {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        // The operations' outcome per key (the last one wins), in one statement per kind.
        let mut outcome: BTreeMap<(String, &[u8]), Option<&[u8]>> = BTreeMap::new();
        for op in &write.ops {
            match op {
                Op::Put { table, key, value } => {
                    outcome.insert((self.name(*table), key), Some(value));
                }
                Op::Delete { table, key } => {
                    outcome.insert((self.name(*table), key), None);
                }
            }
        }
        let (mut put, mut deleted) = (Columns::default(), Columns::default());
        for ((table, key), value) in outcome {
            match value {
                Some(value) => put.push(table, key, value),
                None => deleted.push(table, key, &[]),
            }
        }
        if !put.tables.is_empty() {
            tx.execute(
                "INSERT INTO tern_entries (tbl, key, value) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                &[&put.tables, &put.keys, &put.values],
            )
            .await?;
        }
        if !deleted.tables.is_empty() {
            tx.execute(
                "DELETE FROM tern_entries e USING unnest($1::text[], $2::bytea[]) AS d(tbl, key) \
                 WHERE e.tbl = d.tbl AND e.key = d.key",
                &[&deleted.tables, &deleted.keys],
            )
            .await?;
        }
        if !write.ops.is_empty() {
            let body = if changes.len() <= feed::INLINE_LIMIT {
                Body::Inline(changes.to_vec())
            } else {
                if self
                    .stored_notices
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(PRUNE_NOTICES_EVERY)
                {
                    tx.execute(
                        "DELETE FROM tern_notices WHERE created < now() - interval '10 minutes' \
                         OR id <= (SELECT max(id) FROM tern_notices) - $1",
                        &[&MAX_NOTICES],
                    )
                    .await?;
                }
                let row = tx
                    .query_one(
                        "INSERT INTO tern_notices (body) VALUES ($1) RETURNING id",
                        &[&changes],
                    )
                    .await?;
                Body::Stored(row.get(0))
            };
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&self.channel, &feed::payload(stamp, &body)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl Backend for PostgresBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let name = self.name(table);
        let row = self.run(|client| {
            block_on(client.query_opt(
                "SELECT value FROM tern_entries WHERE tbl = $1 AND key = $2",
                &[&name, &key],
            ))
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    /// One query for every key.
    fn get_many(
        &self,
        table: Table,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let name = self.name(table);
        let rows = self.run(|client| {
            block_on(client.query(
                "SELECT key, value FROM tern_entries WHERE tbl = $1 AND key = ANY($2)",
                &[&name, &keys],
            ))
        })?;
        let found: HashMap<&[u8], &[u8]> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        Ok(keys
            .iter()
            .map(|key| found.get(key.as_slice()).map(|v| v.to_vec()))
            .collect())
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
            let rows = self.run(|client| match &upper {
                Some(upper) => block_on(client.query(&sql, &[&name, &lower, upper])),
                None => block_on(client.query(&sql, &[&name, &lower])),
            })?;
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

    /// Subscribers hear of the commit from the change feed, in the order every process's
    /// commits were made; the commit waits (briefly) until they have.
    fn commit(&self, write: Write) -> Result<(), CommitError> {
        // Commits of this backend are made one at a time, in the order of their stamps.
        let mut sequence = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        *sequence += 1;
        let stamp = Stamp {
            origin: self.origin,
            seq: *sequence,
        };
        let changes = feed::encode_changes(&write.changes());
        let mut lease = self
            .pool
            .get(&self.driver)
            .map_err(|e| CommitError::Backend(BackendError::storage(e)))?;
        let incarnation = self.pool.reopened();
        for _ in 0..MAX_ATTEMPTS {
            match block_on(self.apply(lease.client(), &write, stamp, &changes)) {
                Ok(true) => {
                    drop(lease);
                    if write.lazy {
                        let mut unflushed =
                            self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
                        unflushed.get_or_insert(incarnation);
                    }
                    if !write.ops.is_empty() && self.feed.notices.subscribers() > 0 {
                        self.feed.wait_heard(stamp.seq, HEARD_TIMEOUT);
                    }
                    return Ok(());
                }
                Ok(false) => return Err(CommitError::Conflict),
                Err(e) if retryable(&e) => continue,
                Err(e) => {
                    lease.check();
                    return Err(CommitError::Backend(BackendError::storage(e)));
                }
            }
        }
        Err(CommitError::Backend(BackendError::Contended {
            attempts: MAX_ATTEMPTS,
        }))
    }

    fn subscribe(&self) -> Subscription {
        self.feed.notices.subscribe()
    }

    /// Lazy commits reach the disk with the next synchronous commit record (the WAL is one
    /// sequence). PostgreSQL waits for the disk only at the commit of a transaction that wrote
    /// WAL (an id alone is not enough), so a flush updates this process's row of
    /// `tern_flushes` and commits synchronously. On
    /// the server the lazy commits were made on: when connections had to be opened again since
    /// (the server may have restarted and lost them), the flush fails, so that nothing is
    /// acknowledged as durable that may not be (the writers send it again).
    fn flush(&self) -> Result<(), BackendError> {
        // Looked at, and cleared only once the flush ran (a flush that failed vouches for
        // nothing, and the next one judges the same commits).
        let pending = *self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
        let mut lease = self.pool.get(&self.driver).map_err(BackendError::storage)?;
        let flushed = block_on(async {
            let tx = lease.client().transaction().await?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await?;
            tx.execute(
                "INSERT INTO tern_flushes (origin, at) VALUES ($1, now()) \
                 ON CONFLICT (origin) DO UPDATE SET at = EXCLUDED.at",
                &[&(self.origin as i64)],
            )
            .await?;
            tx.commit().await
        });
        lease.check();
        flushed.map_err(BackendError::storage)?;
        {
            let mut unflushed = self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
            if *unflushed == pending {
                *unflushed = None;
            }
        }
        match pending {
            Some(incarnation) if self.pool.reopened() != incarnation => {
                Err(BackendError::storage(std::io::Error::other(
                    "the connection to PostgreSQL was lost since writes made without waiting for the disk; they may be lost",
                )))
            }
            _ => Ok(()),
        }
    }
}
