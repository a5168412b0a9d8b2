//! The contract every backend keeps, checked against each.

use std::sync::Arc;

use super::*;

const A: Table = Table("a");
const B: Table = Table("b");

fn backends() -> Vec<(&'static str, Arc<dyn Backend>)> {
    vec![
        ("memory", Arc::new(MemoryBackend::new())),
        ("sled", Arc::new(SledBackend::temporary().expect("sled"))),
    ]
}

fn keys(entries: &[Entry]) -> Vec<&[u8]> {
    entries.iter().map(|(k, _)| k.as_slice()).collect()
}

#[test]
fn reads_what_was_committed_in_key_order() {
    for (name, backend) in backends() {
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
fn a_failed_condition_writes_nothing_in_any_table() {
    for (name, backend) in backends() {
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
    for (name, backend) in backends() {
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
        let first = changes.try_recv().expect("first commit");
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
        let second = changes.try_recv().expect("second commit");
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
    for (name, backend) in backends() {
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
    for (name, backend) in backends() {
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
    for (name, backend) in backends() {
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
fn key_ranges_end_after_every_key_of_a_prefix() {
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
    assert_eq!(prefix_end(&[0xff, 0xff]), None);
    assert!(KeyRange::between("b", "a").is_empty());
}
