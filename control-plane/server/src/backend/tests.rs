//! The contract every backend keeps, checked against each.

use std::sync::Arc;

use super::*;

const A: Table = Table("a");
const B: Table = Table("b");

/// A backend and what the assertions call it.
type Named = (&'static str, Arc<dyn Backend>);

/// Every backend, empty: PostgreSQL's on a server shared by the tests running at once (each
/// backend in a namespace of its own), which stays up while the guard is held.
fn backends() -> (Vec<Named>, Option<Arc<postgres::testing::TestPostgres>>) {
    let mut all: Vec<Named> = vec![
        ("memory", Arc::new(MemoryBackend::new())),
        ("sled", Arc::new(SledBackend::temporary().expect("sled"))),
        // Without faults or crashes, the lossy one keeps the contract too.
        ("lossy", Arc::new(lossy::LossyBackend::new())),
    ];
    let server = postgres::testing::shared();
    if let Some(server) = &server {
        let backend = PostgresBackend::connect(&server.url, &postgres::testing::namespace(), 4)
            .expect("connect to PostgreSQL");
        all.push(("postgres", Arc::new(backend)));
    }
    (all, server)
}

fn keys(entries: &[Entry]) -> Vec<&[u8]> {
    entries.iter().map(|(k, _)| k.as_slice()).collect()
}

#[test]
fn reads_what_was_committed_in_key_order() {
    let (all, _server) = backends();
    for (name, backend) in all {
        assert_eq!(backend.get(A, b"k").expect("get"), None, "{name}");
        backend
            .commit(
                Write::new()
                    .put(A, "b", b"2".to_vec())
                    .put(A, "a", b"1".to_vec())
                    .put(A, "ab", b"3".to_vec())
                    .put(B, "a", b"other".to_vec()),
            )
            .expect("commit");
        assert_eq!(
            backend.get(A, b"a").expect("get"),
            Some(b"1".to_vec()),
            "{name}"
        );
        let all = backend
            .range(A, &KeyRange::all(), Scan::All)
            .expect("range");
        assert_eq!(keys(&all), [&b"a"[..], b"ab", b"b"], "{name}");
        let prefixed = backend
            .range(A, &KeyRange::prefix("a"), Scan::All)
            .expect("range");
        assert_eq!(keys(&prefixed), [&b"a"[..], b"ab"], "{name}");
        let last = backend
            .range(A, &KeyRange::prefix("a"), Scan::Last(1))
            .expect("range");
        assert_eq!(keys(&last), [&b"ab"[..]], "{name}");
        let first = backend
            .range(A, &KeyRange::between("a", "b"), Scan::First(1))
            .expect("range");
        assert_eq!(keys(&first), [&b"a"[..]], "{name}");
        backend.commit(Write::new().delete(A, "a")).expect("delete");
        assert_eq!(backend.get(A, b"a").expect("get"), None, "{name}");
        assert_eq!(
            backend.get(B, b"a").expect("get"),
            Some(b"other".to_vec()),
            "tables are apart ({name})"
        );
    }
}

#[test]
fn the_last_operation_on_a_key_wins_and_many_keys_read_at_once() {
    let (all, _server) = backends();
    for (name, backend) in all {
        backend
            .commit(Write::new().put(A, "gone", b"0".to_vec()))
            .expect("commit");
        backend
            .commit(
                Write::new()
                    .only_if(A, "gone", Some(b"0".to_vec()))
                    .only_if(A, "never", None)
                    .put(A, "k", b"1".to_vec())
                    .put(A, "k", b"2".to_vec())
                    .delete(A, "gone")
                    .put(A, "back", b"x".to_vec())
                    .delete(A, "back")
                    .put(A, "back", b"3".to_vec())
                    .put(B, "k", b"b".to_vec()),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let keys: Vec<Vec<u8>> = ["k", "gone", "back", "absent", "k"]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        assert_eq!(
            backend.get_many(A, &keys).expect("get_many"),
            [
                Some(b"2".to_vec()),
                None,
                Some(b"3".to_vec()),
                None,
                Some(b"2".to_vec())
            ],
            "{name}"
        );
        assert_eq!(
            backend.get(B, b"k").expect("get"),
            Some(b"b".to_vec()),
            "{name}"
        );
        // Read together in a transaction, the keys are its conditions.
        let raced = transact(backend.as_ref(), |txn| {
            let values = txn.get_many(A, &keys)?;
            assert_eq!(values[4], values[0], "a key asked twice reads the same");
            if values[0].as_deref() == Some(b"2") {
                backend
                    .commit(Write::new().put(A, "k", b"raced".to_vec()))
                    .map_err(CommitError::into_backend)?;
            }
            txn.put(A, "seen", values[0].clone().unwrap_or_default());
            Ok::<_, BackendError>(())
        });
        raced.expect("ran again after the race");
        assert_eq!(
            backend.get(A, b"seen").expect("get"),
            Some(b"raced".to_vec()),
            "{name}: the write decided on the first read did not land"
        );
    }
}

#[test]
fn a_failed_condition_writes_nothing_in_any_table() {
    let (all, _server) = backends();
    for (name, backend) in all {
        backend
            .commit(Write::new().put(A, "k", b"1".to_vec()))
            .expect("commit");
        let stale = Write::new()
            .only_if(A, "k", Some(b"0".to_vec()))
            .put(A, "k", b"2".to_vec())
            .put(B, "other", b"x".to_vec());
        assert!(
            matches!(backend.commit(stale), Err(CommitError::Conflict)),
            "{name}"
        );
        assert_eq!(
            backend.get(A, b"k").expect("get"),
            Some(b"1".to_vec()),
            "{name}"
        );
        assert_eq!(backend.get(B, b"other").expect("get"), None, "{name}");
        let absent = Write::new()
            .only_if(A, "k", None)
            .put(A, "k", b"3".to_vec());
        assert!(
            matches!(backend.commit(absent), Err(CommitError::Conflict)),
            "{name}: create-if-absent on a present key"
        );
        let current = Write::new()
            .only_if(A, "k", Some(b"1".to_vec()))
            .only_if(B, "other", None)
            .put(A, "k", b"2".to_vec())
            .put(B, "other", b"x".to_vec());
        backend.commit(current).expect("conditions hold");
        assert_eq!(
            backend.get(A, b"k").expect("get"),
            Some(b"2".to_vec()),
            "{name}"
        );
        assert_eq!(
            backend.get(B, b"other").expect("get"),
            Some(b"x".to_vec()),
            "{name}"
        );
    }
}

#[test]
fn subscribers_see_every_commit_in_order_and_nothing_of_a_conflict() {
    let (all, _server) = backends();
    for (name, backend) in all {
        let mut changes = backend.subscribe();
        backend
            .commit(
                Write::new()
                    .put(A, "k", b"1".to_vec())
                    .put(B, "j", b"2".to_vec()),
            )
            .expect("commit");
        let _ = backend.commit(
            Write::new()
                .only_if(A, "k", None)
                .put(A, "k", b"x".to_vec()),
        );
        backend.commit(Write::new().delete(A, "k")).expect("commit");
        let mut committed = || match changes.try_recv() {
            Ok(Notice::Committed(changes)) => changes,
            other => panic!("{name}: {other:?}"),
        };
        let first = committed();
        assert_eq!(
            first.as_ref(),
            [
                Change {
                    table: A,
                    key: b"k".to_vec(),
                    value: Some(b"1".to_vec())
                },
                Change {
                    table: B,
                    key: b"j".to_vec(),
                    value: Some(b"2".to_vec())
                },
            ],
            "{name}"
        );
        let second = committed();
        assert_eq!(
            second.as_ref(),
            [Change {
                table: A,
                key: b"k".to_vec(),
                value: None
            }],
            "{name}: the conflict announced nothing"
        );
        assert!(changes.try_recv().is_err(), "{name}");
    }
}

#[test]
fn transactions_run_again_when_they_raced_and_never_lose_an_update() {
    let (all, _server) = backends();
    for (name, backend) in all {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let backend = backend.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        transact::<_, BackendError>(backend.as_ref(), |txn| {
                            let n = txn
                                .get(A, b"counter")?
                                .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
                            txn.put(A, "counter", (n + 1).to_be_bytes().to_vec());
                            Ok(())
                        })
                        .expect("transact");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let value = backend.get(A, b"counter").expect("get").expect("counter");
        assert_eq!(
            u64::from_be_bytes(value.try_into().expect("8 bytes")),
            100,
            "{name}"
        );
    }
}

#[test]
fn a_transaction_reads_its_own_writes_and_an_error_writes_nothing() {
    let (all, _server) = backends();
    for (name, backend) in all {
        let seen = transact::<_, BackendError>(backend.as_ref(), |txn| {
            txn.put(A, "k", b"mine".to_vec());
            txn.get(A, b"k")
        })
        .expect("transact");
        assert_eq!(seen, Some(b"mine".to_vec()), "{name}");
        #[derive(Debug)]
        struct Refused;
        impl From<BackendError> for Refused {
            fn from(_: BackendError) -> Self {
                Refused
            }
        }
        let refused = transact(backend.as_ref(), |txn| {
            txn.put(A, "k", b"not kept".to_vec());
            Err::<(), _>(Refused)
        });
        assert!(refused.is_err(), "{name}");
        assert_eq!(
            backend.get(A, b"k").expect("get"),
            Some(b"mine".to_vec()),
            "{name}"
        );
    }
}

#[test]
fn an_error_decided_on_reads_that_changed_meanwhile_runs_again() {
    let (all, _server) = backends();
    for (name, backend) in all {
        backend
            .commit(Write::new().put(A, "record", b"old".to_vec()))
            .expect("commit");
        let mut attempts = 0;
        let outcome = transact::<_, BackendError>(backend.as_ref(), |txn| {
            attempts += 1;
            let record = txn.get(A, b"record")?;
            if attempts == 1 {
                // Another writer changes what was read before this attempt decides.
                backend
                    .commit(Write::new().put(A, "record", b"new".to_vec()))
                    .expect("the other writer");
            }
            match record.as_deref() {
                Some(b"new") => Ok(()),
                _ => Err(BackendError::Contended { attempts: 0 }),
            }
        });
        assert!(outcome.is_ok(), "{name}: {outcome:?}");
        assert_eq!(attempts, 2, "{name}");

        // An error decided on reads that still hold is the answer, at once.
        let mut attempts = 0;
        let outcome = transact::<(), BackendError>(backend.as_ref(), |txn| {
            attempts += 1;
            txn.get(A, b"record")?;
            Err(BackendError::Contended { attempts: 0 })
        });
        assert!(outcome.is_err(), "{name}");
        assert_eq!(attempts, 1, "{name}");
    }
}

#[test]
fn sled_keeps_commits_across_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let backend = SledBackend::open(dir.path(), 1 << 20).expect("open");
        backend
            .commit(Write::new().put(A, "k", b"kept".to_vec()))
            .expect("commit");
    }
    // sled's flusher thread lets go of the file lock a moment after the drop.
    let reopened = (0..100)
        .find_map(|_| {
            SledBackend::open(dir.path(), 1 << 20).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            })
        })
        .expect("reopen");
    assert_eq!(reopened.get(A, b"k").expect("get"), Some(b"kept".to_vec()));
}

#[test]
fn postgres_pages_long_ranges_shares_state_and_refuses_a_newer_schema() {
    let Some(server) = postgres::testing::shared() else {
        return;
    };
    let namespace = postgres::testing::namespace();
    let one = PostgresBackend::connect(&server.url, &namespace, 2).expect("connect");
    // More entries than one page of a scan, written lazily, then flushed.
    let mut write = Write::new().lazily();
    for i in 0u32..600 {
        write = write.put(A, i.to_be_bytes().to_vec(), i.to_le_bytes().to_vec());
    }
    one.commit(write).expect("commit");
    one.flush().expect("flush");
    // Another process's view of the same database (a replica) reads what the first wrote.
    let two = PostgresBackend::connect(&server.url, &namespace, 1).expect("connect");
    let all = two.range(A, &KeyRange::all(), Scan::All).expect("range");
    assert_eq!(all.len(), 600);
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "key order across pages"
    );
    let last = two
        .range(A, &KeyRange::all(), Scan::Last(300))
        .expect("range");
    assert_eq!(last.len(), 300);
    assert_eq!(last[0].0, 599u32.to_be_bytes());
    assert_eq!(last[299].0, 300u32.to_be_bytes());
    let between = two
        .range(
            A,
            &KeyRange::between(10u32.to_be_bytes(), 20u32.to_be_bytes()),
            Scan::All,
        )
        .expect("range");
    assert_eq!(between.len(), 10);
    // A namespace is apart from the others.
    let other =
        PostgresBackend::connect(&server.url, &postgres::testing::namespace(), 1).expect("connect");
    assert_eq!(other.get(A, &0u32.to_be_bytes()).expect("get"), None);

    // A database whose schema is newer than this build is refused, naming both versions.
    let url = server.database(&format!("newer_{}", namespace.replace('-', "_")));
    drop(PostgresBackend::connect(&url, "x", 1).expect("migrates an empty database"));
    postgres::testing::execute(&url, "UPDATE tern_schema SET version = version + 1")
        .expect("bump the schema");
    let refused = PostgresBackend::connect(&url, "x", 1).expect_err("a newer schema");
    assert!(
        refused
            .to_string()
            .contains("newer than this control plane"),
        "{refused}"
    );
}

#[test]
fn postgres_keeps_few_notices_whatever_writes_them() {
    let Some(server) = postgres::testing::shared() else {
        return;
    };
    // A database of its own: other tests' notices do not count here.
    let url = server.database(&format!(
        "notices_{}",
        postgres::testing::namespace().replace('-', "_")
    ));
    let one = PostgresBackend::connect(&url, "n", 2).expect("connect");
    let mut heard = one.subscribe();
    // Commits too large for a notification's payload: each leaves a notice row.
    let big = vec![7u8; 8_000];
    for i in 0u32..200 {
        one.commit(Write::new().put(A, i.to_be_bytes().to_vec(), big.clone()))
            .expect("commit");
    }
    let kept =
        postgres::testing::query_number(&url, "SELECT count(*) FROM tern_notices").expect("count");
    assert!(
        kept <= MAX_NOTICES_IN_TESTS + 64,
        "{kept} notices kept of 200"
    );
    // Listeners still hear every commit, the last one too.
    let mut last = None;
    loop {
        match heard.try_recv() {
            Ok(Notice::Committed(changes)) => last = changes.last().map(|c| c.key.clone()),
            Ok(Notice::Missed) => panic!("a commit was missed"),
            Err(TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(last, Some(199u32.to_be_bytes().to_vec()));
}

/// `MAX_NOTICES` as the test build has it.
const MAX_NOTICES_IN_TESTS: i64 = 32;

/// The next notice `heard` gets within ten seconds.
fn next_notice(heard: &mut Subscription) -> Notice {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match heard.try_recv() {
            Ok(notice) => return notice,
            Err(TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("no notice: {e}"),
        }
    }
}

fn committed(notice: Notice) -> Vec<Change> {
    match notice {
        Notice::Committed(changes) => changes.to_vec(),
        Notice::Missed => panic!("a commit, not a gap"),
    }
}

#[test]
fn postgres_tells_every_process_of_every_commit_in_order_and_reconnects_after_a_restart() {
    let Some(mut server) = postgres::testing::TestPostgres::start() else {
        return;
    };
    let namespace = postgres::testing::namespace();
    // Two processes' views of one database: replicas.
    let one = PostgresBackend::connect(&server.url, &namespace, 2).expect("connect");
    let two = PostgresBackend::connect(&server.url, &namespace, 2).expect("connect");
    let mut heard_by_two = two.subscribe();
    let mut heard_by_one = one.subscribe();
    let big = vec![7u8; 20_000];
    one.commit(Write::new().put(A, "k", b"1".to_vec()))
        .expect("commit");
    two.commit(Write::new().put(A, "k", b"2".to_vec()))
        .expect("commit");
    assert!(matches!(
        one.commit(
            Write::new()
                .only_if(A, "k", None)
                .put(A, "k", b"x".to_vec())
        ),
        Err(CommitError::Conflict)
    ));
    // Over the notification payload's limit: the changes travel through a table.
    one.commit(Write::new().put(B, "big", big.clone()).delete(A, "k"))
        .expect("commit");
    for heard in [&mut heard_by_two, &mut heard_by_one] {
        let values: Vec<Vec<Change>> = (0..3).map(|_| committed(next_notice(heard))).collect();
        assert_eq!(values[0][0].value.as_deref(), Some(&b"1"[..]));
        assert_eq!(
            values[1][0].value.as_deref(),
            Some(&b"2"[..]),
            "in commit order"
        );
        assert_eq!(
            values[2],
            [
                Change {
                    table: B,
                    key: b"big".to_vec(),
                    value: Some(big.clone())
                },
                Change {
                    table: A,
                    key: b"k".to_vec(),
                    value: None
                }
            ]
        );
        assert!(heard.try_recv().is_err(), "the conflict announced nothing");
    }

    // The server restarts: connections are opened again, subscribers are told they may have
    // missed commits, and then hear the new ones.
    server.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(one.hears_changes() && two.hears_changes()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the feeds did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    one.commit(Write::new().put(A, "after", b"3".to_vec()))
        .expect("a commit after the restart, on a connection opened again");
    assert_eq!(
        two.get(A, b"after").expect("a read after the restart"),
        Some(b"3".to_vec())
    );
    let mut gap = false;
    loop {
        match next_notice(&mut heard_by_two) {
            Notice::Missed => gap = true,
            Notice::Committed(changes) => {
                assert!(gap, "the lost feed was told before later commits");
                assert_eq!(changes[0].key, b"after");
                break;
            }
        }
    }
}

#[test]
fn postgres_flush_makes_lazy_commits_survive_a_crash() {
    let Some(mut server) = postgres::testing::TestPostgres::start() else {
        return;
    };
    let namespace = postgres::testing::namespace();
    let backend = PostgresBackend::connect(&server.url, &namespace, 1).expect("connect");
    for round in 0..3u8 {
        for i in 0..40u8 {
            backend
                .commit(Write::new().put(A, [round, i].to_vec(), vec![i]).lazily())
                .expect("commit");
        }
        backend.flush().expect("flush");
        // Killed at once: only what reached the WAL on disk survives.
        server.restart();
        let stored = backend
            .range(A, &KeyRange::prefix([round]), Scan::All)
            .expect("read after the restart");
        assert_eq!(stored.len(), 40, "round {round}: every flushed commit kept");
    }
    // A lazy commit the server may have lost before a flush: the flush says so.
    backend
        .commit(Write::new().put(A, "unsure", vec![1]).lazily())
        .expect("commit");
    server.restart();
    assert!(
        backend.get(A, b"probe").is_ok(),
        "reads go on after the restart"
    );
    assert!(
        backend.flush().is_err(),
        "a flush cannot vouch for a commit made before the server restarted"
    );
    backend.flush().expect("later flushes succeed again");
}
