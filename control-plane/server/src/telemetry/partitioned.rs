//! The series in PostgreSQL, which replicas write at once. Per namespace `ns`:
//! - `tern_series_{ns}` (kind, resolution, bucket start in ms, name, postcard window),
//!   partitioned by range of bucket start, one partition per UTC day
//!   (`tern_series_{ns}_{day}`, created on first use);
//! - `tern_marks_{ns}` (agent → postcard [`AgentMark`]).
//!
//! Ingest is one transaction per group of batches, four statements whatever its size: the
//! group's marks are locked (`FOR UPDATE`: an agent's batches sent to two replicas around a
//! failover are stored once), its windows appended in one multi-row insert, its marks
//! updated in one. It commits synchronously, so the writer acknowledges what is on disk.
//!
//! A window may be several rows (one per group that wrote it); queries merge them, reading
//! every resolution in one snapshot. Compaction merges the rows of a settled 10 s pipeline
//! bucket into one, moves rows past a resolution's horizon into one row per coarser bucket,
//! and drops whole partitions past the retention; each step is one transaction that, when the
//! series are fenced, holds only while the work lease's epoch is the one it was given.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_executor::block_on;
use tern_proto::telemetry::TelemetryBatch;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Row, Transaction};

use super::store::{
    Accepted, AgentMark, AgentWindow, EachWindow, IngestOutcome, Kind, PipelineWindow, Resolution,
    SeriesEngine, SeriesStore, TelemetryStoreError, Window, collect_marks, fold, records,
};
use crate::backend::postgres::retryable;
use crate::backend::{BackendError, EPOCHS, PostgresBackend, stored_epoch};

const DAY_MS: i64 = 86_400_000;
/// The advisory lock under which partitions are created and dropped ("tern_ser").
const PARTITIONS_LOCK: i64 = 0x7465_726e_5f73_6572;
/// Attempts at a transaction that keeps racing others.
const MAX_ATTEMPTS: usize = 8;
/// Rows fetched per page of a query.
const PAGE: i32 = 4096;
/// Rows moved per compaction transaction, about (whole coarse buckets up to this many).
const ROWS: i64 = 16_384;
#[cfg(test)]
pub(crate) const SLICE_ROWS: usize = ROWS as usize;
/// Names (agents, pipelines) moved per transaction from a coarse bucket of more rows.
const SLICE: i64 = 1024;
/// A 10 s pipeline bucket's rows are merged into one once this long past its end (batches
/// arrive late by a telemetry interval or two).
const SETTLED_MS: u64 = 30_000;

fn kind_code(kind: Kind) -> i16 {
    match kind {
        Kind::Agent => 0,
        Kind::Pipeline => 1,
    }
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The namespace's table names, quoted.
#[derive(Debug)]
struct Names {
    series: String,
    marks: String,
    index: String,
    /// The unquoted series name, which partition names extend.
    prefix: String,
    /// `tbl` of the lease epochs in `tern_entries`.
    epochs: String,
}

impl Names {
    fn new(backend: &PostgresBackend) -> Self {
        let ns = backend.namespace();
        Self {
            series: format!("\"tern_series_{ns}\""),
            marks: format!("\"tern_marks_{ns}\""),
            index: format!("\"tern_series_{ns}_idx\""),
            prefix: format!("tern_series_{ns}_"),
            epochs: backend.name(EPOCHS),
        }
    }

    fn partition(&self, day: i64) -> String {
        format!("\"{}{day}\"", self.prefix)
    }

    /// The day of a partition's name.
    fn day_of(&self, relation: &str) -> Option<i64> {
        relation.strip_prefix(&self.prefix)?.parse().ok()
    }
}

/// How one attempt at a transaction ended.
enum Step<T> {
    Done(T),
    /// It raced another (serialization failure, deadlock): run it again.
    Again,
    /// A row fell in a partition dropped since (by another replica's retention).
    NoPartition,
    /// The lease moved past the epoch the series are fenced by: nothing was written.
    Fenced,
}

/// Sorts the errors that another attempt may cure into steps.
fn sorted<T>(
    result: Result<Step<T>, tokio_postgres::Error>,
) -> Result<Step<T>, tokio_postgres::Error> {
    match result {
        Err(e) if retryable(&e) => Ok(Step::Again),
        Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => Ok(Step::NoPartition),
        other => other,
    }
}

/// The partitioned engine.
#[derive(Debug, Clone)]
pub struct PartitionedSeries {
    backend: Arc<PostgresBackend>,
    names: Arc<Names>,
    /// Days whose partition is known to exist.
    days: Arc<Mutex<BTreeSet<i64>>>,
    /// The lease and epoch compaction holds only under.
    fence: Option<(&'static str, u64)>,
}

/// The days of the namespace's partitions.
async fn partitions(
    client: &impl GenericClient,
    names: &Names,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1)",
            &[&names.series],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| names.day_of(row.get::<_, &str>(0)))
        .collect())
}

/// Merges rows (bucket, name, body) of `kind` into one window per name and `into` bucket.
fn merge_rows(kind: Kind, rows: &[Row], into: Resolution) -> BTreeMap<(i64, String), Vec<u8>> {
    fn merge<T: Window>(rows: &[Row], into: Resolution) -> BTreeMap<(i64, String), Vec<u8>> {
        let mut merged: BTreeMap<(i64, String), T> = BTreeMap::new();
        let bucket_ms = ms(into.bucket_ms);
        for row in rows {
            let (bucket, name, body): (i64, &str, &[u8]) = (row.get(0), row.get(1), row.get(2));
            match records::decode::<T>(name.as_bytes(), body) {
                Ok(window) => merged
                    .entry((bucket.div_euclid(bucket_ms) * bucket_ms, name.to_owned()))
                    .or_default()
                    .merge(&window),
                Err(e) => tracing::warn!(error = %e, "corrupt telemetry bucket dropped"),
            }
        }
        merged
            .into_iter()
            .map(|(key, window)| (key, records::encode(&window)))
            .collect()
    }
    match kind {
        Kind::Agent => merge::<AgentWindow>(rows, into),
        Kind::Pipeline => merge::<PipelineWindow>(rows, into),
    }
}

impl PartitionedSeries {
    /// Creates the namespace's tables where missing and learns its partitions.
    pub fn open(backend: Arc<PostgresBackend>) -> Result<Self, TelemetryStoreError> {
        let names = Names::new(&backend);
        let days = backend.run(|client| {
            block_on(async {
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITIONS_LOCK])
                    .await?;
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {series} (\
                         kind SMALLINT NOT NULL, resolution SMALLINT NOT NULL, \
                         bucket BIGINT NOT NULL, name TEXT NOT NULL, body BYTEA NOT NULL\
                     ) PARTITION BY RANGE (bucket); \
                     CREATE INDEX IF NOT EXISTS {index} ON {series} (kind, resolution, bucket, name); \
                     CREATE TABLE IF NOT EXISTS {marks} (agent TEXT PRIMARY KEY, body BYTEA NOT NULL)",
                    series = names.series,
                    index = names.index,
                    marks = names.marks,
                ))
                .await?;
                let days = partitions(&tx, &names).await?;
                tx.commit().await?;
                Ok(days)
            })
        })?;
        Ok(Self {
            backend,
            names: Arc::new(names),
            days: Arc::new(Mutex::new(days.into_iter().collect())),
            fence: None,
        })
    }

    /// The same series, compaction fenced by `lease` at `epoch`.
    fn fenced(&self, lease: &'static str, epoch: u64) -> Self {
        Self {
            fence: Some((lease, epoch)),
            ..self.clone()
        }
    }

    fn known_days(&self) -> std::sync::MutexGuard<'_, BTreeSet<i64>> {
        self.days.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the partitions of `days` that are not known to exist.
    fn ensure(&self, days: &BTreeSet<i64>) -> Result<(), TelemetryStoreError> {
        let missing: Vec<i64> = days.difference(&self.known_days()).copied().collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.backend.run(|client| {
            block_on(async {
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITIONS_LOCK])
                    .await?;
                for day in &missing {
                    tx.batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})",
                        self.names.partition(*day),
                        self.names.series,
                        day.saturating_mul(DAY_MS),
                        day.saturating_add(1).saturating_mul(DAY_MS),
                    ))
                    .await?;
                }
                tx.commit().await
            })
        })?;
        self.known_days().extend(missing);
        Ok(())
    }

    /// Runs `work` until it is done: again when it raced another transaction, after `prepare`
    /// again when a partition it wrote into was dropped meanwhile.
    fn step<T>(
        &self,
        mut prepare: impl FnMut() -> Result<(), TelemetryStoreError>,
        mut work: impl FnMut(&mut Client) -> Result<Step<T>, tokio_postgres::Error>,
    ) -> Result<T, TelemetryStoreError> {
        for _ in 0..MAX_ATTEMPTS {
            prepare()?;
            match self.backend.run(|client| sorted(work(client)))? {
                Step::Done(value) => return Ok(value),
                Step::Again => {
                    std::thread::sleep(Duration::from_micros(rand::random_range(50..2_000)));
                }
                Step::NoPartition => self.known_days().clear(),
                Step::Fenced => {
                    let (lease, epoch) = self.fence.unwrap_or(("work", 0));
                    return Err(BackendError::Fenced { lease, epoch }.into());
                }
            }
        }
        Err(BackendError::Contended {
            attempts: MAX_ATTEMPTS,
        }
        .into())
    }

    /// A transaction for one compaction step, if the fence holds (always, unfenced); it then
    /// holds until the transaction ends (the epoch's row is read `FOR SHARE`: a successor's
    /// claim waits for this step). `None`: the lease moved on, and nothing may be written.
    async fn begin_fenced<'c>(
        &self,
        client: &'c mut Client,
    ) -> Result<Option<Transaction<'c>>, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let Some((lease, epoch)) = self.fence else {
            return Ok(Some(tx));
        };
        let row = tx
            .query_opt(
                "SELECT value FROM tern_entries WHERE tbl = $1 AND key = $2 FOR SHARE",
                &[&self.names.epochs, &lease.as_bytes()],
            )
            .await?;
        let stored: Option<Vec<u8>> = row.map(|r| r.get(0));
        Ok((stored_epoch(stored.as_deref()) == epoch).then_some(tx))
    }

    fn marks(&self) -> Result<HashMap<String, AgentMark>, TelemetryStoreError> {
        let sql = format!("SELECT agent, body FROM {}", self.names.marks);
        let rows = self
            .backend
            .run(|client| block_on(client.query(&sql, &[])))?;
        Ok(collect_marks(rows.iter().map(|row| {
            (row.get::<_, String>(0), row.get::<_, &[u8]>(1))
        })))
    }

    fn ingest(
        &self,
        group: &[(&str, &TelemetryBatch)],
        accepted: Accepted,
        raw: Resolution,
    ) -> Result<(IngestOutcome, Vec<bool>), TelemetryStoreError> {
        let mut agents: Vec<&str> = group.iter().map(|(agent, _)| *agent).collect();
        agents.sort_unstable();
        agents.dedup();
        let days: BTreeSet<i64> = group
            .iter()
            .map(|(_, batch)| ms(super::store::filed_at(batch, accepted)).div_euclid(DAY_MS))
            .collect();
        self.step(
            || self.ensure(&days),
            |client| block_on(self.try_ingest(client, group, &agents, accepted, raw)),
        )
    }

    async fn try_ingest(
        &self,
        client: &mut Client,
        group: &[(&str, &TelemetryBatch)],
        agents: &[&str],
        accepted: Accepted,
        raw: Resolution,
    ) -> Result<Step<(IngestOutcome, Vec<bool>)>, tokio_postgres::Error> {
        let marks_table = &self.names.marks;
        let tx = client.transaction().await?;
        tx.execute(
            &format!(
                "INSERT INTO {marks_table} (agent, body) SELECT a, ''::bytea FROM unnest($1::text[]) AS a \
                 ON CONFLICT (agent) DO NOTHING"
            ),
            &[&agents],
        )
        .await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT agent, body FROM {marks_table} WHERE agent = ANY($1) ORDER BY agent FOR UPDATE"
                ),
                &[&agents],
            )
            .await?;
        let mut stored: HashMap<&str, AgentMark> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (agent, body): (&str, &[u8]) = (row.get(0), row.get(1));
            let mark = match records::decode(agent.as_bytes(), body) {
                Ok(mark) => mark,
                Err(e) => {
                    if !body.is_empty() {
                        tracing::warn!(error = %e, "corrupt telemetry mark replaced");
                    }
                    AgentMark::default()
                }
            };
            stored.insert(agent, mark);
        }
        let folded = match fold(group, accepted, raw, |agent| {
            Ok::<_, std::convert::Infallible>(stored.remove(agent).unwrap_or_default())
        }) {
            Ok(folded) => folded,
            Err(never) => match never {},
        };
        let resolution = i16::from(raw.id);
        let mut windows = WindowRows::default();
        for ((start, agent), window) in &folded.agents {
            windows.push(Kind::Agent, resolution, *start, agent, window);
        }
        for ((start, pipeline), window) in &folded.pipelines {
            windows.push(Kind::Pipeline, resolution, *start, pipeline, window);
        }
        windows.insert(&tx, &self.names.series).await?;
        let (names, bodies): (Vec<&str>, Vec<Vec<u8>>) = folded
            .marks
            .iter()
            .map(|(agent, mark)| (*agent, records::encode(mark)))
            .unzip();
        tx.execute(
            &format!(
                "UPDATE {marks_table} AS m SET body = u.body \
                 FROM unnest($1::text[], $2::bytea[]) AS u(agent, body) WHERE m.agent = u.agent"
            ),
            &[&names, &bodies],
        )
        .await?;
        tx.commit().await?;
        Ok(Step::Done((folded.outcome, folded.stored)))
    }

    fn compact(
        &self,
        resolutions: &[Resolution; 3],
        now_ms: u64,
    ) -> Result<u64, TelemetryStoreError> {
        let raw = resolutions[0];
        let mut moved = self.settle(raw, now_ms.saturating_sub(SETTLED_MS + raw.bucket_ms))?;
        for pair in resolutions.windows(2) {
            let (fine, coarse) = (pair[0], pair[1]);
            let cutoff = now_ms.saturating_sub(fine.horizon_ms);
            for kind in [Kind::Agent, Kind::Pipeline] {
                moved += self.downsample(kind, fine, coarse, cutoff)?;
            }
        }
        let last = resolutions[2];
        moved += self.expire(last, now_ms.saturating_sub(last.horizon_ms))?;
        Ok(moved)
    }

    /// Merges the rows of each 10 s pipeline bucket that starts before `before` and has
    /// several into one: fleet-wide queries then read a row per pipeline and bucket.
    fn settle(&self, raw: Resolution, before: u64) -> Result<u64, TelemetryStoreError> {
        let series = &self.names.series;
        let (kind, resolution) = (kind_code(Kind::Pipeline), i16::from(raw.id));
        let mut moved = 0;
        loop {
            let n = self.step(
                || Ok(()),
                |client| {
                    block_on(async {
                        let Some(tx) = self.begin_fenced(client).await? else {
                            return Ok(Step::Fenced);
                        };
                        let due = tx
                            .query(
                                &format!(
                                    "SELECT bucket, name FROM {series} \
                                     WHERE kind = $1 AND resolution = $2 AND bucket < $3 \
                                     GROUP BY bucket, name HAVING count(*) > 1 LIMIT {SLICE}"
                                ),
                                &[&kind, &resolution, &ms(before)],
                            )
                            .await?;
                        if due.is_empty() {
                            return Ok(Step::Done(0));
                        }
                        let buckets: Vec<i64> = due.iter().map(|r| r.get(0)).collect();
                        let names: Vec<&str> = due.iter().map(|r| r.get(1)).collect();
                        let rows = tx
                            .query(
                                &format!(
                                    "DELETE FROM {series} WHERE kind = $1 AND resolution = $2 \
                                     AND (bucket, name) IN (SELECT * FROM unnest($3::bigint[], $4::text[])) \
                                     RETURNING bucket, name, body"
                                ),
                                &[&kind, &resolution, &buckets, &names],
                            )
                            .await?;
                        self.put_merged(&tx, Kind::Pipeline, &rows, raw).await?;
                        tx.commit().await?;
                        Ok(Step::Done(due.len()))
                    })
                },
            )?;
            moved += n as u64;
            if n < SLICE as usize {
                return Ok(moved);
            }
        }
    }

    /// Moves rows of `kind` at `fine` resolution whose bucket starts before `cutoff` into one
    /// row per name and `coarse` bucket, oldest first, about [`ROWS`] rows per transaction.
    fn downsample(
        &self,
        kind: Kind,
        fine: Resolution,
        coarse: Resolution,
        cutoff: u64,
    ) -> Result<u64, TelemetryStoreError> {
        let series = &self.names.series;
        let (code, resolution) = (kind_code(kind), i16::from(fine.id));
        let cutoff = ms(cutoff);
        let mut moved = 0;
        loop {
            let n = self.step(
                || Ok(()),
                |client| {
                    block_on(async {
                        let Some(tx) = self.begin_fenced(client).await? else {
                            return Ok(Step::Fenced);
                        };
                        let oldest: Option<i64> = tx
                            .query_one(
                                &format!(
                                    "SELECT min(bucket) FROM {series} \
                                     WHERE kind = $1 AND resolution = $2 AND bucket < $3"
                                ),
                                &[&code, &resolution, &cutoff],
                            )
                            .await?
                            .get(0);
                        let Some(oldest) = oldest else {
                            return Ok(Step::Done(0));
                        };
                        let coarse_ms = ms(coarse.bucket_ms);
                        let start = oldest.div_euclid(coarse_ms) * coarse_ms;
                        // As many whole coarse buckets as hold fewer than ROWS rows; when the
                        // first alone holds more, its names a slice at a time.
                        let far: Option<i64> = tx
                            .query_opt(
                                &format!(
                                    "SELECT bucket FROM {series} WHERE kind = $1 AND resolution = $2 \
                                     AND bucket >= $3 AND bucket < $4 ORDER BY bucket OFFSET {ROWS} LIMIT 1"
                                ),
                                &[&code, &resolution, &start, &cutoff],
                            )
                            .await?
                            .map(|row| row.get(0));
                        let whole = far.map(|b| b.div_euclid(coarse_ms) * coarse_ms);
                        let rows = match whole {
                            Some(end) if end <= start => {
                                let end = start.saturating_add(coarse_ms).min(cutoff);
                                let names: Vec<String> = tx
                                    .query(
                                        &format!(
                                            "SELECT DISTINCT name FROM {series} WHERE kind = $1 \
                                             AND resolution = $2 AND bucket >= $3 AND bucket < $4 \
                                             ORDER BY name LIMIT {SLICE}"
                                        ),
                                        &[&code, &resolution, &start, &end],
                                    )
                                    .await?
                                    .iter()
                                    .map(|r| r.get(0))
                                    .collect();
                                tx.query(
                                    &format!(
                                        "DELETE FROM {series} WHERE kind = $1 AND resolution = $2 \
                                         AND bucket >= $3 AND bucket < $4 AND name = ANY($5) \
                                         RETURNING bucket, name, body"
                                    ),
                                    &[&code, &resolution, &start, &end, &names],
                                )
                                .await?
                            }
                            _ => {
                                let end = whole.unwrap_or(cutoff).min(cutoff);
                                tx.query(
                                    &format!(
                                        "DELETE FROM {series} WHERE kind = $1 AND resolution = $2 \
                                         AND bucket >= $3 AND bucket < $4 RETURNING bucket, name, body"
                                    ),
                                    &[&code, &resolution, &start, &end],
                                )
                                .await?
                            }
                        };
                        self.put_merged(&tx, kind, &rows, coarse).await?;
                        tx.commit().await?;
                        Ok(Step::Done(rows.len()))
                    })
                },
            )?;
            if n == 0 {
                return Ok(moved);
            }
            moved += n as u64;
        }
    }

    /// Inserts `rows` of `kind` merged into one row per name and `into` bucket.
    async fn put_merged(
        &self,
        tx: &Transaction<'_>,
        kind: Kind,
        rows: &[Row],
        into: Resolution,
    ) -> Result<(), tokio_postgres::Error> {
        let mut windows = WindowRows::default();
        for ((bucket, name), body) in merge_rows(kind, rows, into) {
            windows.push_encoded(kind, i16::from(into.id), bucket, name, body);
        }
        windows.insert(tx, &self.names.series).await
    }

    /// Deletes rows at the coarsest resolution whose bucket starts before `cutoff`: whole
    /// partitions dropped, the rest of the day deleted.
    fn expire(&self, last: Resolution, cutoff: u64) -> Result<u64, TelemetryStoreError> {
        let series = &self.names.series;
        let cutoff = ms(cutoff);
        let (moved, dropped) = self.step(
            || Ok(()),
            |client| {
                block_on(async {
                    let Some(tx) = self.begin_fenced(client).await? else {
                        return Ok(Step::Fenced);
                    };
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITIONS_LOCK])
                        .await?;
                    let mut moved = 0u64;
                    let mut dropped = Vec::new();
                    for day in partitions(&tx, &self.names).await? {
                        if day.saturating_add(1).saturating_mul(DAY_MS) > cutoff {
                            continue;
                        }
                        let partition = self.names.partition(day);
                        let rows: i64 = tx
                            .query_one(&format!("SELECT count(*) FROM {partition}"), &[])
                            .await?
                            .get(0);
                        tx.batch_execute(&format!("DROP TABLE {partition}")).await?;
                        moved += u64::try_from(rows).unwrap_or(0);
                        dropped.push(day);
                    }
                    moved += tx
                        .execute(
                            &format!("DELETE FROM {series} WHERE resolution = $1 AND bucket < $2"),
                            &[&i16::from(last.id), &cutoff],
                        )
                        .await?;
                    tx.commit().await?;
                    Ok(Step::Done((moved, dropped)))
                })
            },
        )?;
        let mut known = self.known_days();
        for day in dropped {
            known.remove(&day);
        }
        Ok(moved)
    }

    fn windows_of(
        &self,
        resolutions: &[Resolution; 3],
        kind: Kind,
        (from_ms, to_ms): (u64, u64),
        only: Option<&str>,
        each: &mut EachWindow<'_>,
    ) -> Result<(), TelemetryStoreError> {
        let code = kind_code(kind);
        let sql = format!(
            "SELECT bucket, name, body FROM {} WHERE kind = $1 AND resolution = $2 \
             AND bucket >= $3 AND bucket <= $4{}",
            self.names.series,
            if only.is_some() { " AND name = $5" } else { "" }
        );
        let mut corrupt = None;
        // Once, not again after a lost connection: rows already handed over stay handed.
        self.backend.once(|client| {
            block_on(async {
                // One snapshot for every resolution: compaction moves rows between them.
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                for resolution in resolutions {
                    // A coarse bucket that began before `from_ms` still holds data inside.
                    let first = ms(from_ms / resolution.bucket_ms * resolution.bucket_ms);
                    let (id, last) = (i16::from(resolution.id), ms(to_ms));
                    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&code, &id, &first, &last];
                    if let Some(name) = &only {
                        params.push(name);
                    }
                    let portal = tx.bind(sql.as_str(), &params).await?;
                    loop {
                        let rows = tx.query_portal(&portal, PAGE).await?;
                        for row in &rows {
                            let (bucket, name, body): (i64, &str, &[u8]) =
                                (row.get(0), row.get(1), row.get(2));
                            if let Err(e) = each(u64::try_from(bucket).unwrap_or(0), name, body) {
                                corrupt = Some(e);
                                return tx.commit().await;
                            }
                        }
                        if rows.len() < PAGE as usize {
                            break;
                        }
                    }
                }
                tx.commit().await
            })
        })?;
        match corrupt {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Rows of the series table, per resolution.
    fn rows_per_resolution(
        &self,
        resolutions: &[Resolution; 3],
    ) -> Result<[u64; 3], TelemetryStoreError> {
        let mut counts = [0u64; 3];
        for resolution in resolutions {
            let sql = format!(
                "SELECT count(*) FROM {} WHERE resolution = $1",
                self.names.series
            );
            let id = i16::from(resolution.id);
            let n: i64 = self
                .backend
                .run(|client| block_on(client.query_one(&sql, &[&id])))?
                .get(0);
            counts[resolution.id as usize] = u64::try_from(n).unwrap_or(0);
        }
        Ok(counts)
    }

    /// The days whose partition exists (tests).
    #[cfg(test)]
    pub(crate) fn partition_days(&self) -> Vec<i64> {
        self.backend
            .run(|client| block_on(partitions(client, &self.names)))
            .expect("partitions")
    }
}

/// Windows to insert, as the columns of one multi-row insert.
#[derive(Default)]
struct WindowRows<'a> {
    kinds: Vec<i16>,
    resolutions: Vec<i16>,
    buckets: Vec<i64>,
    names: Vec<std::borrow::Cow<'a, str>>,
    bodies: Vec<Vec<u8>>,
}

impl<'a> WindowRows<'a> {
    fn push<T: serde::Serialize>(
        &mut self,
        kind: Kind,
        resolution: i16,
        bucket: u64,
        name: &'a str,
        window: &T,
    ) {
        self.push_encoded(
            kind,
            resolution,
            ms(bucket),
            std::borrow::Cow::Borrowed(name),
            records::encode(window),
        );
    }

    fn push_encoded(
        &mut self,
        kind: Kind,
        resolution: i16,
        bucket: i64,
        name: impl Into<std::borrow::Cow<'a, str>>,
        body: Vec<u8>,
    ) {
        self.kinds.push(kind_code(kind));
        self.resolutions.push(resolution);
        self.buckets.push(bucket);
        self.names.push(name.into());
        self.bodies.push(body);
    }

    async fn insert(
        &self,
        tx: &Transaction<'_>,
        series: &str,
    ) -> Result<(), tokio_postgres::Error> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.names.iter().map(|n| n.as_ref()).collect();
        tx.execute(
            &format!(
                "INSERT INTO {series} (kind, resolution, bucket, name, body) \
                 SELECT * FROM unnest($1::smallint[], $2::smallint[], $3::bigint[], $4::text[], $5::bytea[])"
            ),
            &[
                &self.kinds,
                &self.resolutions,
                &self.buckets,
                &names,
                &self.bodies,
            ],
        )
        .await?;
        Ok(())
    }
}

/// The series of `backend`'s namespace in partitioned tables (created when missing), which any
/// number of replicas write at once.
pub fn series(
    backend: Arc<PostgresBackend>,
    retention: Duration,
) -> Result<SeriesStore, TelemetryStoreError> {
    let engine = Arc::new(PartitionedSeries::open(backend.clone())?);
    Ok(SeriesStore::on_engine(engine, backend, retention))
}

impl SeriesEngine for PartitionedSeries {
    fn marks(&self) -> Result<HashMap<String, AgentMark>, TelemetryStoreError> {
        PartitionedSeries::marks(self)
    }

    fn ingest(
        &self,
        group: &[(&str, &TelemetryBatch)],
        accepted: Accepted,
        raw: Resolution,
    ) -> Result<(IngestOutcome, Vec<bool>), TelemetryStoreError> {
        PartitionedSeries::ingest(self, group, accepted, raw)
    }

    fn compact(
        &self,
        resolutions: &[Resolution; 3],
        now_ms: u64,
    ) -> Result<u64, TelemetryStoreError> {
        PartitionedSeries::compact(self, resolutions, now_ms)
    }

    fn windows(
        &self,
        resolutions: &[Resolution; 3],
        kind: Kind,
        span: (u64, u64),
        only: Option<&str>,
        each: &mut EachWindow<'_>,
    ) -> Result<(), TelemetryStoreError> {
        self.windows_of(resolutions, kind, span, only, each)
    }

    fn fenced(&self, lease: &'static str, epoch: u64) -> Arc<dyn SeriesEngine> {
        Arc::new(PartitionedSeries::fenced(self, lease, epoch))
    }

    fn window_counts(
        &self,
        resolutions: &[Resolution; 3],
    ) -> Result<[u64; 3], TelemetryStoreError> {
        self.rows_per_resolution(resolutions)
    }
}
