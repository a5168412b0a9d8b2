//! Leases on work that must happen once among replicas (the deployment driver, the drift
//! evaluator, telemetry compaction, token pruning, the OTLP export).
//!
//! A lease is a record in the shared store: who holds it, its epoch, and until when. The pure
//! core ([`decide`]) says, from the record and the time, whether a replica takes the lease,
//! renews it or follows its holder; [`LeaseStore`] applies that decision as a compare-and-set
//! write, so two replicas never both take it. Taking a lease raises its epoch, and the holder's
//! writes are fenced by that epoch ([`crate::backend::FencedBackend`]): a holder that was
//! paused past its lease and resumes cannot overwrite its successor's work.

use serde::{Deserialize, Serialize};

use crate::backend::{
    BackendError, EPOCHS, KeyRange, Scan, SharedBackend, Table, epoch_bytes, stored_epoch, transact,
};
use crate::records::{CorruptRecord, decode, encode};

/// The lease on all the work that must happen once.
pub const WORK: &str = "work";

const LEASES: Table = Table("leases");

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holding replica (its process: a restarted replica takes the lease anew).
    pub holder: String,
    pub epoch: u64,
    /// When the holder took it (this epoch), in Unix milliseconds.
    pub taken_ms: u64,
    /// When it lapses unless renewed.
    pub expires_ms: u64,
}

/// What a replica does about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (or the holder let it lapse): take it, with a new epoch.
    Take(LeaseRecord),
    /// This replica holds it: extend it.
    Renew(LeaseRecord),
    /// Another replica holds it.
    Follow,
}

/// Who may hold a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contenders {
    /// Replicas sharing the store.
    Shared,
    /// This process alone (a store only one process can open): another holder is a former
    /// process of this control plane, gone, and its lease is taken over without waiting.
    Sole,
}

/// What `me` does about a lease held as `current` (`last_epoch`: the highest epoch ever
/// stored for it), at `now_ms`, for leases lasting `ttl_ms`.
pub fn decide(
    current: Option<&LeaseRecord>,
    last_epoch: u64,
    me: &str,
    contenders: Contenders,
    now_ms: u64,
    ttl_ms: u64,
) -> Decision {
    let expires_ms = now_ms.saturating_add(ttl_ms);
    match current {
        Some(lease) if lease.holder == me && now_ms < lease.expires_ms => {
            Decision::Renew(LeaseRecord {
                expires_ms,
                ..lease.clone()
            })
        }
        Some(lease) if now_ms < lease.expires_ms && contenders == Contenders::Shared => {
            Decision::Follow
        }
        lapsed => Decision::Take(LeaseRecord {
            holder: me.to_owned(),
            epoch: last_epoch.max(lapsed.map_or(0, |l| l.epoch)) + 1,
            taken_ms: now_ms,
            expires_ms,
        }),
    }
}

/// Where a replica stands after trying to hold a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It holds the lease at this epoch until `expires_ms`.
    Holder { epoch: u64, expires_ms: u64 },
    /// Another does (or did, and its lease lapsed just now).
    Follower,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error("lease {0}")]
    Corrupt(#[from] CorruptRecord),
}

/// Leases, in the shared store.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    backend: SharedBackend,
    contenders: Contenders,
}

impl LeaseStore {
    pub fn new(backend: SharedBackend, contenders: Contenders) -> Self {
        Self {
            backend,
            contenders,
        }
    }

    /// Takes or renews lease `name` for `me` if it is free or already `me`'s.
    pub fn hold(
        &self,
        name: &'static str,
        me: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Standing, LeaseError> {
        transact(self.backend.as_ref(), |txn| {
            let current: Option<LeaseRecord> = match txn.get(LEASES, name.as_bytes())? {
                Some(bytes) => match decode::<_, LeaseError>(name.as_bytes(), &bytes) {
                    Ok(lease) => Some(lease),
                    // A record nobody can read holds nobody: it is taken over.
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable lease record replaced");
                        None
                    }
                },
                None => None,
            };
            let last_epoch = stored_epoch(txn.get(EPOCHS, name.as_bytes())?.as_deref());
            Ok(
                match decide(
                    current.as_ref(),
                    last_epoch,
                    me,
                    self.contenders,
                    now_ms,
                    ttl_ms,
                ) {
                    Decision::Take(lease) => {
                        txn.put(EPOCHS, name.as_bytes(), epoch_bytes(lease.epoch));
                        txn.put(LEASES, name.as_bytes(), encode(&lease));
                        Standing::Holder {
                            epoch: lease.epoch,
                            expires_ms: lease.expires_ms,
                        }
                    }
                    Decision::Renew(lease) => {
                        txn.put(LEASES, name.as_bytes(), encode(&lease));
                        Standing::Holder {
                            epoch: lease.epoch,
                            expires_ms: lease.expires_ms,
                        }
                    }
                    Decision::Follow => Standing::Follower,
                },
            )
        })
    }

    /// Lets lease `name` lapse now if `me` still holds it at `epoch` (an orderly stop), so
    /// that another replica takes it without waiting for it to expire.
    pub fn release(&self, name: &'static str, me: &str, epoch: u64) -> Result<(), LeaseError> {
        transact(self.backend.as_ref(), |txn| {
            let Some(bytes) = txn.get(LEASES, name.as_bytes())? else {
                return Ok(());
            };
            let mut lease: LeaseRecord = decode::<_, LeaseError>(name.as_bytes(), &bytes)?;
            if lease.holder == me && lease.epoch == epoch {
                lease.expires_ms = 0;
                txn.put(LEASES, name.as_bytes(), encode(&lease));
            }
            Ok(())
        })
    }

    /// Every lease as stored.
    pub fn leases(&self) -> Result<Vec<(String, LeaseRecord)>, LeaseError> {
        self.backend
            .range(LEASES, &KeyRange::all(), Scan::All)?
            .iter()
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(k).into_owned(),
                    decode::<_, LeaseError>(k, v)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::{Backend, BackendError, CommitError, FencedBackend, MemoryBackend, Write};

    const TTL: u64 = 10_000;

    #[test]
    fn a_lease_is_taken_when_free_renewed_by_its_holder_and_taken_over_once_it_lapses() {
        use Contenders::Shared;
        let taken = decide(None, 0, "a", Shared, 1_000, TTL);
        let Decision::Take(lease) = taken else {
            panic!("free: taken")
        };
        assert_eq!((lease.epoch, lease.expires_ms), (1, 11_000));
        assert_eq!(
            decide(Some(&lease), 1, "b", Shared, 10_999, TTL),
            Decision::Follow
        );
        let Decision::Renew(renewed) = decide(Some(&lease), 1, "a", Shared, 5_000, TTL) else {
            panic!("renewed by its holder")
        };
        assert_eq!((renewed.epoch, renewed.expires_ms), (1, 15_000));
        // Lapsed: another takes it with the next epoch, and the old holder may not renew.
        let Decision::Take(next) = decide(Some(&renewed), 1, "b", Shared, 15_000, TTL) else {
            panic!("lapsed: taken over")
        };
        assert_eq!((next.holder.as_str(), next.epoch), ("b", 2));
        assert!(matches!(
            decide(Some(&next), 2, "a", Shared, 16_000, TTL),
            Decision::Follow
        ));
        // Alone on its store, a restarted control plane takes its former process's lease.
        let Decision::Take(restarted) = decide(Some(&next), 2, "a2", Contenders::Sole, 16_000, TTL)
        else {
            panic!("taken over at once")
        };
        assert_eq!(restarted.epoch, 3);
        // An epoch never goes back, even when the record was lost.
        let Decision::Take(after_loss) = decide(None, 7, "c", Shared, 20_000, TTL) else {
            panic!("taken")
        };
        assert_eq!(after_loss.epoch, 8);
    }

    #[test]
    fn one_holder_at_a_time_and_a_paused_former_holder_writes_nothing() {
        let backend: SharedBackend = Arc::new(MemoryBackend::new());
        let leases = LeaseStore::new(backend.clone(), Contenders::Shared);
        let a = leases.hold(WORK, "a", 0, TTL).expect("hold");
        assert_eq!(
            a,
            Standing::Holder {
                epoch: 1,
                expires_ms: TTL
            }
        );
        assert_eq!(
            leases.hold(WORK, "b", 1, TTL).expect("hold"),
            Standing::Follower
        );
        let fenced_a = FencedBackend::claim(backend.clone(), WORK, 1).expect("claim");
        const T: Table = Table("work");
        fenced_a
            .commit(Write::new().put(T, "k", b"a".to_vec()))
            .expect("the holder writes");

        // `a` is paused past its lease; `b` takes over and writes.
        assert_eq!(
            leases.hold(WORK, "b", TTL + 1, TTL).expect("hold"),
            Standing::Holder {
                epoch: 2,
                expires_ms: 2 * TTL + 1
            }
        );
        let fenced_b = FencedBackend::claim(backend.clone(), WORK, 2).expect("claim");
        fenced_b
            .commit(Write::new().put(T, "k", b"b".to_vec()))
            .expect("the successor writes");
        // `a` resumes, unaware: every write it makes is refused, and says why.
        let refused = fenced_a
            .commit(Write::new().put(T, "k", b"stale".to_vec()))
            .expect_err("fenced");
        assert!(
            matches!(
                refused,
                CommitError::Backend(BackendError::Fenced { epoch: 1, .. })
            ),
            "{refused:?}"
        );
        assert_eq!(backend.get(T, b"k").expect("get"), Some(b"b".to_vec()));
        assert!(matches!(
            FencedBackend::claim(backend.clone(), WORK, 1),
            Err(BackendError::Fenced { .. })
        ));
        assert_eq!(
            leases.hold(WORK, "a", TTL + 2, TTL).expect("hold"),
            Standing::Follower
        );

        // An orderly stop lets the lease lapse at once: the next replica takes it.
        leases.release(WORK, "b", 2).expect("release");
        assert!(matches!(
            leases.hold(WORK, "c", TTL + 3, TTL).expect("hold"),
            Standing::Holder { epoch: 3, .. }
        ));
        assert_eq!(leases.leases().expect("leases")[0].1.holder, "c");
    }
}
