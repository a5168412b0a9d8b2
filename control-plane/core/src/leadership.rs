//! Which replica does the work that must happen once: a task holds (or waits for) the work
//! lease ([`crate::lease`]) and, while this replica holds it, offers the once-only tasks a
//! [`Term`] — the stores they write, fenced by the lease's epoch. A single control plane holds
//! the lease from its first renewal on; replicas sharing a store hand it over when the holder
//! stops (at once) or dies (after `lease_ttl`).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::backend::{BackendError, FencedBackend, SharedBackend};
use crate::catalog::Catalog;
use crate::deploy::desired::DesiredStore;
use crate::drift::store::DriftStore;
use crate::lease::{LeaseStore, Standing, WORK};
use crate::registry::Registry;
use crate::replica::ReplicaRegistry;
use crate::telemetry::store::SeriesStore;

/// The part of the lease's lifetime a holder gives up to clock drift and a slow renewal: it
/// stops working this long before the lease could lapse for the others.
const MARGIN_DIVISOR: u32 = 5;

/// The stores the once-only work writes, fenced by one epoch of the work lease.
#[derive(Debug)]
pub struct Term {
    pub epoch: u64,
    pub catalog: Catalog,
    pub desired: DesiredStore,
    pub drift: DriftStore,
    pub registry: Registry,
    /// For forgetting lost replicas: a paused former holder must not delete a record a
    /// live replica just wrote again.
    pub replicas: ReplicaRegistry,
    pub series: SeriesStore,
    /// Until when this replica may act on the term (its own monotonic clock).
    valid_until: Mutex<Instant>,
}

impl Term {
    fn valid(&self, now: Instant) -> bool {
        now < *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the once-only tasks ask: whether this replica may work now, and with which stores.
#[derive(Debug)]
pub struct Leadership {
    /// This process, as the lease names its holder (the replica's name).
    pub me: String,
    term: RwLock<Option<Arc<Term>>>,
}

impl Leadership {
    pub fn new(me: String) -> Self {
        Self {
            me,
            term: RwLock::new(None),
        }
    }

    /// The term this replica holds now, if any.
    pub fn term(&self) -> Option<Arc<Term>> {
        let term = self.held()?;
        term.valid(Instant::now()).then_some(term)
    }

    /// The term held, valid or not.
    fn held(&self) -> Option<Arc<Term>> {
        self.term.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Holds `term` from now on; the one held before.
    fn replace(&self, term: Option<Arc<Term>>) -> Option<Arc<Term>> {
        std::mem::replace(
            &mut *self.term.write().unwrap_or_else(|p| p.into_inner()),
            term,
        )
    }

    /// The epoch held now (0: none), for `/metrics`.
    pub fn epoch(&self) -> u64 {
        self.term().map_or(0, |t| t.epoch)
    }
}

/// What a term's stores are built from: the unfenced stores (whose in-process locks the
/// fenced ones share) and the backends.
#[derive(Debug, Clone, Copy)]
pub struct TermSource<'a> {
    pub registry_backend: &'a SharedBackend,
    pub telemetry_backend: &'a SharedBackend,
    pub catalog: &'a Catalog,
    pub series: &'a SeriesStore,
}

fn open_term(
    source: TermSource<'_>,
    epoch: u64,
    valid_until: Instant,
) -> Result<Term, BackendError> {
    let registry: SharedBackend = Arc::new(FencedBackend::claim(
        source.registry_backend.clone(),
        WORK,
        epoch,
    )?);
    let telemetry = FencedBackend::claim(source.telemetry_backend.clone(), WORK, epoch)?;
    Ok(Term {
        epoch,
        catalog: source.catalog.on(registry.clone()),
        desired: DesiredStore::new(registry.clone()),
        drift: DriftStore::new(registry.clone()),
        replicas: ReplicaRegistry::new(registry.clone()),
        registry: Registry::new(registry),
        series: source.series.fenced(telemetry),
        valid_until: Mutex::new(valid_until),
    })
}

/// One attempt at holding the lease (the server makes three per `ttl`): renews the term held,
/// opens a new one when the lease was taken, ends it when another replica holds the lease.
/// `now`: when the attempt was sent (this replica's monotonic clock, which the term's validity
/// is measured on) and the wall clock then, which the lease's record is in.
pub fn renew(
    leadership: &Leadership,
    leases: &LeaseStore,
    source: TermSource<'_>,
    ttl: Duration,
    (sent, now_ms): (Instant, u64),
) {
    let held = leadership.held();
    let margin = ttl / MARGIN_DIVISOR;
    match leases.hold(WORK, &leadership.me, now_ms, ttl.as_millis() as u64) {
        Ok(Standing::Holder { epoch, .. }) => {
            let valid_until = sent + ttl - margin;
            match held {
                Some(term) if term.epoch == epoch => {
                    *term.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = valid_until;
                }
                _ => match open_term(source, epoch, valid_until) {
                    Ok(term) => {
                        info!(epoch, holder = %leadership.me, "took the work lease: this replica runs rollouts, drift, compaction and exports");
                        leadership.replace(Some(Arc::new(term)));
                    }
                    Err(e) => {
                        warn!(epoch, error = %e, "took the work lease but cannot fence its stores");
                        leadership.replace(None);
                    }
                },
            }
        }
        Ok(Standing::Follower) => {
            if held.is_some() {
                warn!(holder = %leadership.me, "lost the work lease to another replica");
                leadership.replace(None);
            }
        }
        Err(e) => {
            // Unrenewed, the term runs out by itself ([`Leadership::term`] checks it).
            warn!(error = %e, "cannot renew the work lease");
        }
    }
}

/// Lets the lease go (an orderly stop), so another replica takes it at once.
pub fn release(leadership: &Leadership, leases: &LeaseStore) {
    if let Some(term) = leadership.replace(None) {
        match leases.release(WORK, &leadership.me, term.epoch) {
            Ok(()) => info!(epoch = term.epoch, "released the work lease"),
            Err(e) => warn!(error = %e, "cannot release the work lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::replica::ReplicaRecord;

    const DAY_MS: u64 = 24 * 3_600_000;

    fn term(backend: &SharedBackend, epoch: u64) -> Result<Term, BackendError> {
        let catalog = Catalog::new(backend.clone());
        let series = SeriesStore::new(backend.clone(), Duration::from_secs(3_600));
        let source = TermSource {
            registry_backend: backend,
            telemetry_backend: backend,
            catalog: &catalog,
            series: &series,
        };
        open_term(source, epoch, Instant::now() + Duration::from_secs(60))
    }

    fn replica(name: &str, seen_ms: u64) -> ReplicaRecord {
        ReplicaRecord {
            name: name.into(),
            agents_address: None,
            api_address: "127.0.0.1:1".into(),
            started_ms: 0,
            seen_ms,
            agents_connected: 0,
            version: "test".into(),
        }
    }

    #[test]
    fn a_paused_former_holder_forgets_no_replica() {
        let backend: SharedBackend = Arc::new(MemoryBackend::new());
        let unfenced = ReplicaRegistry::new(backend.clone());
        unfenced.announce(&replica("gone", 0)).expect("announce");
        let former = term(&backend, 1).expect("term 1");
        // The holder pauses; the lease moves on, and the successor fences its epoch.
        let successor = term(&backend, 2).expect("term 2");
        let refused = former.replicas.forget_lost(2 * DAY_MS);
        assert!(
            matches!(refused, Err(BackendError::Fenced { epoch: 1, .. })),
            "{refused:?}"
        );
        assert_eq!(unfenced.all(DAY_MS).expect("read").len(), 1, "kept");
        assert_eq!(
            successor.replicas.forget_lost(2 * DAY_MS).expect("forget"),
            1,
            "the holder forgets it"
        );
        assert!(unfenced.all(0).expect("read").is_empty());
    }
}
