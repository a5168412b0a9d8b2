//! Storage health, shared by the control plane and the agent: a full or failing disk must not
//! leave a process that looks healthy and fails every write (sled latches its first I/O error
//! until the database is reopened).
//!
//! A probe (a small write and a flush of the process's databases) runs every
//! [`PROBE_INTERVAL`]. The pure [`StorageHealth`] judges the results: the first failure makes
//! the process not ready; a failure that lasts [`RESTART_AFTER`] asks the process to exit so
//! that its supervisor (systemd's `Restart=on-failure`, a Kubernetes restart policy) starts it
//! again on a store that reopens cleanly. A store reached over the network (PostgreSQL) is
//! watched by a [`StorageMonitor::remote`]: while it fails the process is not ready, however
//! long, and never asks for a restart (a restart would not bring the server back, and would
//! drop every agent). The [`StorageMonitor`] keeps what `/metrics` and the readiness endpoints
//! show: free bytes, errors counted, the reason it is not ready.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How often the probe runs.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long storage may keep failing before the process asks to be restarted.
pub const RESTART_AFTER: Duration = Duration::from_secs(5);
/// Exit status of a process that stops for its supervisor to restart it (`EX_TEMPFAIL`).
pub const EXIT_RESTART: u8 = 75;
/// A probe that takes longer than this counts as a failure (a hung disk is a failing one).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest orderly stop after a restart was asked for; then the process exits regardless
/// (a write stuck in a failing disk must not keep it alive).
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Makes sure the process exits with [`EXIT_RESTART`] within [`STOP_DEADLINE`] from now,
/// whatever its orderly stop waits for.
pub fn exit_for_restart_soon() {
    std::thread::spawn(|| {
        std::thread::sleep(STOP_DEADLINE);
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"the orderly stop took too long; exiting for a restart\n",
        );
        std::process::exit(i32::from(EXIT_RESTART));
    });
}

/// What a probe result means for the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Storage works.
    Ready,
    /// Storage fails; the process stays up but says it is not ready.
    NotReady { reason: String },
    /// Storage has failed for [`RESTART_AFTER`]: exit for a restart.
    Restart { reason: String },
}

/// The judge of probe results (events and `now` in, a verdict out).
#[derive(Debug, Clone, Default)]
pub struct StorageHealth {
    failing_since_ms: Option<u64>,
}

impl StorageHealth {
    pub fn observe(&mut self, probe: Result<(), String>, now_ms: u64) -> Verdict {
        match probe {
            Ok(()) => {
                self.failing_since_ms = None;
                Verdict::Ready
            }
            Err(reason) => {
                let since = *self.failing_since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= RESTART_AFTER.as_millis() as u64 {
                    Verdict::Restart { reason }
                } else {
                    Verdict::NotReady { reason }
                }
            }
        }
    }
}

/// Whether an I/O error means the disk is full.
pub fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull || error.raw_os_error() == Some(28)
}

/// Bytes available to this process on the filesystem holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    fs2::available_space(path)
}

/// What the storage probe found, for `/metrics` and readiness.
#[derive(Debug)]
pub struct StorageMonitor {
    /// Whether a lasting failure asks for a restart (a local disk), or only makes the process
    /// not ready (a database server that is away: a restart would not bring it back).
    restarts: bool,
    path: PathBuf,
    free_bytes: AtomicU64,
    errors: AtomicU64,
    not_ready: std::sync::Mutex<Option<String>>,
    restart: watch::Sender<Option<String>>,
}

impl StorageMonitor {
    /// A monitor of the data directory `path`.
    pub fn new(path: &Path) -> Arc<Self> {
        Self::with_restarts(path, true)
    }

    /// A monitor of a store reached over the network (PostgreSQL): while it fails the process
    /// is not ready, however long; it never asks for a restart.
    pub fn remote(path: &Path) -> Arc<Self> {
        Self::with_restarts(path, false)
    }

    fn with_restarts(path: &Path, restarts: bool) -> Arc<Self> {
        let monitor = Arc::new(Self {
            restarts,
            path: path.to_owned(),
            free_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            not_ready: std::sync::Mutex::new(None),
            restart: watch::channel(None).0,
        });
        monitor.refresh_free_space();
        monitor
    }

    /// Reads the free space again; returns it.
    pub fn refresh_free_space(&self) -> u64 {
        let free = free_space(&self.path).unwrap_or(0);
        self.free_bytes.store(free, Ordering::Relaxed);
        free
    }

    /// Bytes free on the data directory's filesystem, as of the last probe.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    /// Storage errors seen since start (failed probes and failed writes reported).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Counts a failed write that a request or task saw.
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Why the process is not ready, if storage fails.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves with the reason once storage has failed for long enough that the process
    /// should exit for a restart.
    pub async fn restart_requested(&self) -> String {
        let mut rx = self.restart.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The monitor lives as long as its subscribers: never.
            Err(_) => std::future::pending().await,
        }
    }

    fn apply(&self, verdict: &Verdict) {
        let verdict = &match verdict {
            Verdict::Restart { reason } if !self.restarts => Verdict::NotReady {
                reason: reason.clone(),
            },
            other => other.clone(),
        };
        let reason = match verdict {
            Verdict::Ready => None,
            Verdict::NotReady { reason } | Verdict::Restart { reason } => Some(reason.clone()),
        };
        if reason.is_some() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        if let Verdict::Restart { reason } = verdict {
            self.restart.send_replace(Some(reason.clone()));
        }
    }
}

/// Probes storage with `probe` (on the blocking pool) every [`PROBE_INTERVAL`] until `stop`
/// turns true, keeping `monitor` up to date.
pub async fn watch<P>(monitor: Arc<StorageMonitor>, probe: P, mut stop: watch::Receiver<bool>)
where
    P: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    let probe = Arc::new(probe);
    let mut health = StorageHealth::default();
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A probe stuck in the disk is waited for, not started again.
    let mut running: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let handle = running.get_or_insert_with(|| {
            let (probe, watched) = (probe.clone(), monitor.clone());
            tokio::task::spawn_blocking(move || {
                watched.refresh_free_space();
                probe()
            })
        });
        let result = match tokio::time::timeout(PROBE_TIMEOUT, handle).await {
            Ok(joined) => {
                running = None;
                joined.unwrap_or_else(|e| Err(format!("the storage probe failed: {e}")))
            }
            Err(_) => Err(format!(
                "a write and flush did not finish within {PROBE_TIMEOUT:?}"
            )),
        };
        let verdict = match health.observe(result, tern_clock::unix_millis_now()) {
            Verdict::Restart { reason } if !monitor.restarts => Verdict::NotReady { reason },
            verdict => verdict,
        };
        match &verdict {
            Verdict::Ready => {
                if monitor.not_ready().is_some() {
                    tracing::info!("storage works again");
                }
            }
            Verdict::NotReady { reason } => {
                tracing::error!(%reason, free_bytes = monitor.free_bytes(), "storage fails; not ready");
            }
            Verdict::Restart { reason } => {
                tracing::error!(%reason, "storage kept failing; exiting for a restart");
            }
        }
        monitor.apply(&verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_not_ready_at_once_and_a_restart_when_it_lasts() {
        let mut health = StorageHealth::default();
        assert_eq!(health.observe(Ok(()), 0), Verdict::Ready);
        let full = || Err("No space left on device".to_owned());
        assert!(matches!(
            health.observe(full(), 1_000),
            Verdict::NotReady { .. }
        ));
        assert!(matches!(
            health.observe(full(), 5_999),
            Verdict::NotReady { .. }
        ));
        assert_eq!(
            health.observe(full(), 6_000),
            Verdict::Restart {
                reason: "No space left on device".into()
            }
        );
        // A success in between starts the count again.
        let mut health = StorageHealth::default();
        health.observe(full(), 0);
        assert_eq!(health.observe(Ok(()), 4_000), Verdict::Ready);
        assert!(matches!(
            health.observe(full(), 8_000),
            Verdict::NotReady { .. }
        ));
    }

    /// Polls `done` (the watch runs on the probe's own real-time pace) for at most `limit`.
    async fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !done() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    #[tokio::test]
    async fn the_watch_shows_what_the_probe_found_and_asks_for_a_restart_when_it_lasts() {
        let dir = tempfile::tempdir().expect("tmp");
        let monitor = StorageMonitor::new(dir.path());
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe = {
            let failing = failing.clone();
            move || {
                if failing.load(Ordering::SeqCst) {
                    Err("No space left on device".to_owned())
                } else {
                    Ok(())
                }
            }
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let watcher = tokio::spawn(watch(monitor.clone(), probe, stop_rx));

        // The first failed probe: not ready at once, with the probe's reason; no restart yet.
        // Bounds generous for a loaded machine: only a probe that never lands fails them.
        assert!(
            within(RESTART_AFTER, || monitor.not_ready().is_some()).await,
            "a failing probe makes the process not ready"
        );
        assert_eq!(
            monitor.not_ready().as_deref(),
            Some("No space left on device")
        );
        assert!(monitor.errors() >= 1, "the failed probe is counted");
        // Only while the failure is younger than `RESTART_AFTER` (a starved test may look later).
        if started.elapsed() < RESTART_AFTER {
            assert!(monitor.restart.borrow().is_none(), "no restart at once");
        }
        assert!(
            monitor.free_bytes() > 0,
            "the data dir's free space is known"
        );

        // Still failing after `RESTART_AFTER`: the process is asked to exit for a restart.
        let reason = tokio::time::timeout(
            RESTART_AFTER + PROBE_INTERVAL * 5,
            monitor.restart_requested(),
        )
        .await
        .expect("a lasting failure asks for a restart");
        assert_eq!(reason, "No space left on device");
        assert!(
            started.elapsed() + Duration::from_millis(100) >= RESTART_AFTER,
            "the restart came after {:?}, before the failure lasted {RESTART_AFTER:?}",
            started.elapsed()
        );
        let probes = RESTART_AFTER.as_secs() / PROBE_INTERVAL.as_secs() + 1;
        assert!(
            monitor.errors() >= probes,
            "every failed probe counts: {} errors",
            monitor.errors()
        );

        // The probe works again: ready again.
        failing.store(false, Ordering::SeqCst);
        assert!(
            within(PROBE_INTERVAL * 3, || monitor.not_ready().is_none()).await,
            "a working probe makes the process ready again"
        );
        stop_tx.send(true).expect("the watch listens");
        tokio::time::timeout(PROBE_INTERVAL * 3, watcher)
            .await
            .expect("the watch stops when told")
            .expect("the watch task");
    }

    #[tokio::test]
    async fn a_remote_store_that_stays_away_is_not_ready_and_never_asks_for_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let monitor = StorageMonitor::remote(dir.path());
        monitor.apply(&Verdict::Restart {
            reason: "connection refused".into(),
        });
        assert_eq!(monitor.not_ready().as_deref(), Some("connection refused"));
        let asked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            monitor.restart_requested(),
        )
        .await;
        assert!(asked.is_err(), "no restart is asked for");
        monitor.apply(&Verdict::Ready);
        assert_eq!(monitor.not_ready(), None);
    }

    #[test]
    fn enospc_is_a_full_disk() {
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(28)));
        assert!(!is_disk_full(&std::io::Error::from_raw_os_error(2)));
    }
}
