//! `tern-agent run`: start every part of an enrolled agent and stop them in order.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tern_transport::{Identity, TlsError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::capacity;
use crate::data_dir::{AgentDataDir, DataDirError};
use crate::link::{self, LinkConfig, LinkState};
use crate::local_api::{self, AgentInfo};

/// Idle timeout of the link; heartbeats keep it busy, so it only fires when the peer is gone.
const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// QUIC keep-alives, in case heartbeats are slowed down by configuration.
const LINK_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Longest an orderly shutdown waits for the link to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("the agent's identity is unusable: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen for the local API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the agent in `dir` until `shutdown` completes.
pub async fn run(dir: AgentDataDir, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let config = dir.load_config()?;
    let identity = Identity::from_pem(&dir.read(&dir.cert())?, &dir.read(&dir.key())?)?;
    let ca_pem = dir.read(&dir.ca())?;
    let transport =
        tern_transport::quic::transport_config(LINK_IDLE_TIMEOUT, Some(LINK_KEEP_ALIVE));
    let client = tern_transport::tls::quic_client(&ca_pem, identity, transport)?;

    let listener = TcpListener::bind(config.listen_api)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.listen_api,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: config.listen_api,
        source,
    })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (capacity_tx, capacity_rx) = watch::channel(capacity::host_capacity(&dir));
    let (state_tx, state_rx) = watch::channel(LinkState::default());

    let info = AgentInfo {
        id: config.agent_id.clone(),
        name: config.name.clone(),
        labels: config.labels.clone(),
        version: crate::VERSION.to_owned(),
        control_plane: config.control_plane.clone(),
        connected: false,
        last_error: None,
    };
    let api = tokio::spawn(local_api::serve(
        listener,
        local_api::router(info, state_rx),
        stop_rx.clone(),
    ));
    let link = tokio::spawn(link::maintain(
        LinkConfig {
            agent: config.clone(),
            client,
        },
        capacity_rx,
        state_tx,
        stop_rx.clone(),
    ));
    let probe_dir = dir.clone();
    let probe = tokio::spawn(async move {
        if let Some(gpus) = capacity::discover_gpus(&probe_dir).await {
            capacity_tx.send_if_modified(|c| {
                let changed = c.gpus != gpus;
                c.gpus = gpus;
                changed
            });
        }
    });
    info!(agent = %config.name, id = %config.agent_id, local_api = %api_addr, "agent running");

    shutdown.await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    probe.abort();
    if tokio::time::timeout(SHUTDOWN_GRACE, link).await.is_err() {
        warn!("control plane link did not close in time");
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, api).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "local API ended with an error"),
        Err(_) => warn!("local API did not stop in time"),
        _ => {}
    }
    info!("agent stopped");
    Ok(())
}
