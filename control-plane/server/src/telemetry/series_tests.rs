//! The series store's tests on both engines: records in sled, and PostgreSQL's partitioned
//! tables (skipped without PostgreSQL's binaries, unless `TERN_REQUIRE_POSTGRES=1`).

use std::sync::Arc;
use std::time::Duration;

use tern_proto::telemetry::{PipelineStats, TelemetryBatch};

use super::partitioned::{self, PartitionedSeries};
use super::store::*;
use crate::backend::postgres::testing::{self, TestPostgres};
use crate::backend::{BackendError, FencedBackend, PostgresBackend, SharedBackend};
use tern_proto::telemetry::Histogram;

const DAY: u64 = 24 * 3_600_000;

/// Where a store keeps its series: a sled database, or a PostgreSQL namespace (skipped
/// without PostgreSQL's binaries, unless `TERN_REQUIRE_POSTGRES=1`).
enum Place {
    Sled(tempfile::TempDir),
    Postgres(Arc<TestPostgres>, String),
}

fn places() -> Vec<Place> {
    let mut places = vec![Place::Sled(tempfile::tempdir().expect("tempdir"))];
    if let Some(server) = testing::shared() {
        places.push(Place::Postgres(server, testing::namespace()));
    }
    places
}

fn postgres(server: &TestPostgres, namespace: &str) -> Arc<PostgresBackend> {
    Arc::new(PostgresBackend::connect(&server.url, namespace, 2).expect("connect"))
}

impl Place {
    /// A store on it, as a control plane opens one (again: the same series).
    fn open(&self, retention: Duration) -> SeriesStore {
        match self {
            Place::Sled(dir) => {
                // sled's flusher thread lets go of the file lock a moment after a drop.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    match crate::backend::SledBackend::open(dir.path(), 1 << 20) {
                        Ok(backend) => return SeriesStore::new(Arc::new(backend), retention),
                        Err(e) => {
                            assert!(std::time::Instant::now() < deadline, "reopen: {e}");
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            }
            Place::Postgres(server, namespace) => {
                partitioned::series(postgres(server, namespace), retention)
                    .expect("open the series")
            }
        }
    }

    /// The partitioned engine on it, when it is PostgreSQL (for what only it has: partitions).
    fn partitioned(&self) -> Option<PartitionedSeries> {
        match self {
            Place::Sled(_) => None,
            Place::Postgres(server, namespace) => {
                Some(PartitionedSeries::open(postgres(server, namespace)).expect("open the engine"))
            }
        }
    }
}

fn window_counts(store: &SeriesStore) -> [u64; 3] {
    store.window_counts().expect("count")
}

fn batch(seq: u64, start_ms: u64, requests: u64) -> TelemetryBatch {
    let mut latency_us = Histogram::default();
    for _ in 0..requests {
        latency_us.record(1_000);
    }
    TelemetryBatch {
        seq,
        start_ms,
        end_ms: start_ms + 10_000,
        pipelines: vec![PipelineStats {
            pipeline: "scores".into(),
            revision: 1,
            requests,
            latency_us,
            ..PipelineStats::default()
        }],
        ..TelemetryBatch::default()
    }
}

fn refs(group: &[(String, TelemetryBatch)]) -> Vec<(&str, &TelemetryBatch)> {
    group.iter().map(|(a, b)| (a.as_str(), b)).collect()
}

fn requests(store: &SeriesStore, from: u64, to: u64) -> u64 {
    store
        .pipelines(from, to, None)
        .expect("query")
        .get("scores")
        .map_or(0, |(_, s)| s.iter().map(|p| p.requests).sum())
}

/// A query from just past a bucket's start reads a batch that began in the bucket before
/// and ended after that time: its traffic may be after the query's start (an experiment
/// counted from its apply once missed the first second of its requests so). The boundary
/// here is midnight too: on PostgreSQL the batch goes to the next day's partition.
#[test]
fn a_batch_across_a_bucket_boundary_is_read_from_its_end() {
    for place in places() {
        let now = 100 * DAY + 120_000;
        let store = place.open(Duration::from_secs(90 * 86_400));
        let boundary = 100 * DAY;
        let mut across = batch(1, boundary - 500, 35);
        across.end_ms = boundary + 500;
        let after = batch(2, boundary + 500, 10);
        let group = [
            ("agent-1".to_owned(), across),
            ("agent-1".to_owned(), after),
        ];
        store.ingest(&refs(&group), now).expect("ingest");
        assert_eq!(requests(&store, boundary + 42, now), 45);
        assert_eq!(
            store.agents(boundary + 42, now).expect("agents")["agent-1"].pipelines[0].requests,
            45
        );
    }
}

#[test]
fn duplicates_are_skipped_across_groups_and_reopening() {
    for place in places() {
        let retention = Duration::from_secs(90 * 86_400);
        let now = 100 * DAY;
        let store = place.open(retention);
        let group: Vec<_> = (1..=5)
            .map(|s| {
                (
                    "agent-1".to_owned(),
                    batch(s, now - 60_000 + s * 10_000, 10),
                )
            })
            .collect();
        let (outcome, stored) = store.ingest(&refs(&group), now).expect("ingest");
        assert_eq!((outcome.stored, outcome.duplicates), (5, 0));
        assert!(stored.iter().all(|s| *s));
        // Resent after a lost ack, with one new batch, and again after a restart.
        let mut again = group[3..].to_vec();
        again.push(("agent-1".to_owned(), batch(6, now - 1_000, 10)));
        let (outcome, stored) = store.ingest(&refs(&again), now).expect("ingest");
        assert_eq!((outcome.stored, outcome.duplicates), (1, 2));
        assert_eq!(stored, [false, false, true]);
        drop(store);
        let store = place.open(retention);
        let (outcome, _) = store.ingest(&refs(&group), now).expect("ingest");
        assert_eq!(outcome.stored, 0);
        assert_eq!(requests(&store, now - DAY, now), 60);
        assert_eq!(store.marks().expect("marks")["agent-1"].seq, 6);
        let agents = store.agents(now - DAY, now).expect("agents");
        assert_eq!(agents["agent-1"].pipelines[0].requests, 60);
    }
}

#[test]
fn an_agents_clock_decides_no_partition_past_the_retention_or_ahead_of_now() {
    for place in places() {
        let now = 20_000 * DAY;
        let store = place.open(Duration::from_secs(30 * 86_400));
        // Batches claiming each of 2,000 past days, the epoch, and next year.
        let group: Vec<_> = (0..2_000u64)
            .map(|d| ("a".to_owned(), batch(d + 1, now - (d + 100) * DAY, 1)))
            .chain([
                ("a".to_owned(), batch(2_001, 0, 1)),
                ("a".to_owned(), batch(2_002, now + 365 * DAY, 1)),
            ])
            .collect();
        let (outcome, _) = store.ingest(&refs(&group), now).expect("ingest");
        assert_eq!(outcome.stored, 2_002, "every batch is taken, clamped");
        let oldest = now - 30 * DAY;
        assert_eq!(requests(&store, oldest - DAY, now + DAY), 2_002);
        assert_eq!(
            requests(&store, 0, oldest - 1),
            0,
            "nothing before the retention"
        );
        if let Some(partitioned) = place.partitioned() {
            let days = partitioned.partition_days();
            let (first, last) = (oldest as i64 / DAY as i64, now as i64 / DAY as i64);
            assert!(
                !days.is_empty() && days.iter().all(|d| (first..=last).contains(d)),
                "partitions only within the retention: {days:?}"
            );
            assert!(days.len() <= 2, "{days:?}");
        }
    }
}

#[test]
fn compaction_downsamples_keeps_totals_and_applies_retention() {
    for place in places() {
        let now = 100 * DAY;
        let store = place.open(Duration::from_secs(30 * 86_400));
        // A week of 10 s batches ending an hour ago, and one from 40 days ago (stored
        // then: a batch older than the retention when it arrives is clamped into it).
        let start = now - 7 * DAY - 3_600_000;
        let week: Vec<_> = (0..7 * 8640u64)
            .map(|i| ("a".to_owned(), batch(i + 2, start + i * 10_000, 1)))
            .collect();
        let old = vec![("a".to_owned(), batch(1, now - 40 * DAY, 7))];
        store
            .ingest(&refs(&old), now - 40 * DAY + 60_000)
            .expect("ingest");
        for chunk in week.chunks(1000) {
            store.ingest(&refs(chunk), now).expect("ingest");
        }
        let total = requests(&store, 0, now);
        assert_eq!(total, 7 * 8640 + 7);
        store.compact(now).expect("compact");
        let [raw, minutes, hours] = window_counts(&store);
        assert!(
            raw <= 2 * 6 * 360 + 2,
            "10 s buckets only for the last 6 h: {raw}"
        );
        assert!(minutes > 0 && hours > 0);
        assert_eq!(
            requests(&store, 0, now),
            7 * 8640,
            "the 40-day-old bucket is past retention"
        );
        assert_eq!(
            requests(&store, now - 3 * DAY, now),
            3 * 8640 - 360,
            "the window's buckets, at any resolution"
        );
        let agents = store.agents(0, now).expect("agents");
        assert_eq!(agents["a"].pipelines[0].requests, 7 * 8640);
        // Compacting again changes nothing.
        store.compact(now).expect("compact");
        assert_eq!(requests(&store, 0, now), 7 * 8640);
        if let Some(partitioned) = place.partitioned() {
            let days = partitioned.partition_days();
            assert!(
                !days.contains(&60),
                "the day past retention was dropped whole: {days:?}"
            );
            assert!(days.contains(&99), "{days:?}");
        }
    }
}

#[test]
fn replicas_writing_one_bucket_at_once_lose_nothing_and_count_a_batch_once() {
    let Some(server) = testing::shared() else {
        return;
    };
    let namespace = testing::namespace();
    let retention = Duration::from_secs(90 * 86_400);
    let replicas: Vec<SeriesStore> = (0..2)
        .map(|_| partitioned::series(postgres(&server, &namespace), retention).expect("open"))
        .collect();
    let now = 100 * DAY;
    // Agents' batches all land in one pipeline bucket; each batch arrives at both replicas
    // (an agent that switched replicas sends its backlog again).
    std::thread::scope(|scope| {
        for store in &replicas {
            scope.spawn(move || {
                for agent in 0..8 {
                    for seq in 1..=5u64 {
                        let batch = batch(seq, now - 50_000 + seq, 3);
                        let name = format!("agent-{agent}");
                        store.ingest(&[(&name, &batch)], now).expect("ingest");
                    }
                }
            });
        }
    });
    assert_eq!(
        requests(&replicas[0], now - DAY, now),
        8 * 5 * 3,
        "every batch counted once, none lost to a race"
    );
    // Settled, the bucket is one row per pipeline; the totals stay.
    replicas[1].compact(now + 60_000).expect("compact");
    assert_eq!(requests(&replicas[0], now - DAY, now), 8 * 5 * 3);
    let rows = window_counts(&replicas[0])[0];
    assert_eq!(
        rows,
        8 * 5 + 1,
        "a row per agent's batch, the pipeline's rows merged into one"
    );
}

#[test]
fn a_crowded_bucket_is_downsampled_in_slices_of_names() {
    let Some(server) = testing::shared() else {
        return;
    };
    let store = partitioned::series(
        postgres(&server, &testing::namespace()),
        Duration::from_secs(30 * 86_400),
    )
    .expect("open");
    let now = 100 * DAY;
    // More agents in one minute, a day ago, than one compaction transaction moves.
    let agents = 2 * partitioned::SLICE_ROWS + 100;
    let group: Vec<_> = (0..agents)
        .map(|i| {
            (
                format!("agent-{i:05}"),
                batch(1, now - DAY + (i as u64 % 6) * 10_000, 1),
            )
        })
        .collect();
    for chunk in group.chunks(2048) {
        store.ingest(&refs(chunk), now).expect("ingest");
    }
    store.compact(now).expect("compact");
    assert_eq!(
        window_counts(&store),
        [0, agents as u64 + 1, 0],
        "a row per agent and one for the pipeline, in the minute's bucket"
    );
    assert_eq!(requests(&store, 0, now), agents as u64);
    assert_eq!(store.agents(0, now).expect("agents").len(), agents);
}

#[test]
fn a_former_lease_holder_compacts_nothing() {
    let Some(server) = testing::shared() else {
        return;
    };
    let namespace = testing::namespace();
    let backend = postgres(&server, &namespace);
    let shared: SharedBackend = backend.clone();
    let store = partitioned::series(backend, Duration::from_secs(30 * 86_400)).expect("open");
    let now = 100 * DAY;
    let old = vec![("a".to_owned(), batch(1, now - 7 * DAY, 4))];
    store.ingest(&refs(&old), now).expect("ingest");
    let former =
        store.fenced(FencedBackend::claim(shared.clone(), "work", 1).expect("claim epoch 1"));
    // The successor claims epoch 2 before the former holder, paused, resumes.
    let successor = FencedBackend::claim(shared, "work", 2).expect("claim epoch 2");
    let refused = former.compact(now);
    assert!(
        matches!(
            refused,
            Err(TelemetryStoreError::Storage(BackendError::Fenced {
                epoch: 1,
                ..
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(window_counts(&store), [2, 0, 0], "nothing moved");
    store
        .fenced(successor)
        .compact(now)
        .expect("the holder compacts");
    assert_eq!(window_counts(&store), [0, 2, 0]);
    assert_eq!(requests(&store, 0, now), 4);
}
