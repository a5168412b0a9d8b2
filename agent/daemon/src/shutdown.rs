//! Stopping the agent: the signals that ask for it, and the order its parts stop in.

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::warn;

use crate::store::AgentStore;

/// Longest an orderly shutdown waits for each part that finishes its work (the telemetry
/// collector, the link, the local API).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Completes on SIGTERM or Ctrl-C.
pub async fn signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The agent's running parts, as `run` started them.
#[derive(Debug)]
pub(crate) struct Running {
    /// Parts with nothing to finish: stopped at once (GPU probe, deployer, shipper, code
    /// release).
    pub aborted: Vec<JoinHandle<()>>,
    /// Stores the last partial interval of telemetry.
    pub collector: JoinHandle<()>,
    /// Closes the connection to the control plane.
    pub link: JoinHandle<()>,
    /// Stops accepting and finishes the requests under way.
    pub api: JoinHandle<std::io::Result<()>>,
    pub storage_watch: JoinHandle<()>,
}

/// Stops every part in order, once the stop signal went out: first what has nothing to finish,
/// then telemetry (its last batch is stored before the state is flushed), the link and the
/// local API, each within [`SHUTDOWN_GRACE`]; then flushes `store`, unless it is failing (a
/// write could hang in the disk).
pub(crate) async fn stop_in_order(running: Running, store: Option<&AgentStore>) {
    for part in &running.aborted {
        part.abort();
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, running.collector)
        .await
        .is_err()
    {
        warn!("telemetry did not store its last batch in time");
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, running.link)
        .await
        .is_err()
    {
        warn!("control plane link did not close in time");
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, running.api).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "local API ended with an error"),
        Err(_) => warn!("local API did not stop in time"),
        _ => {}
    }
    if let Some(store) = store
        && let Err(e) = store.flush()
    {
        warn!(error = %e, "cannot flush the agent's state");
    }
    running.storage_watch.abort();
}
