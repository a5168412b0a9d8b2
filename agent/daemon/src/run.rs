//! `tern-agent run`: start every part of an enrolled agent and stop them in order.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use tern_plugin_host::{EngineOptions, PluginEngine};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::capacity;
use crate::data_dir::{AgentDataDir, DataDirError};
use crate::deployer::Deployer;
use crate::exits::{ExitLedger, ExitPolicy, RunMarker};
use crate::identity::Credentials;
use crate::limits::AgentLimits;
use crate::link::{self, DeployChannels, LinkConfig, LinkState};
use crate::local_api::{self, AgentInfo};
use crate::reconcile::{Action, Reconciler};
use crate::serving::ServingTable;
use crate::store::AgentStore;
use crate::telemetry::buffer::TelemetryBuffer;
use crate::telemetry::host::HostSampler;
use crate::telemetry::{self, TelemetryState};
use tern_proto::desired::DesiredPipeline;

/// Idle timeout of the link; heartbeats keep it busy, so it only fires when the peer is gone.
const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// QUIC keep-alives, in case heartbeats are slowed down by configuration.
const LINK_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("cannot listen for the local API on {addr}: {source}")]
    Bind {
        addr: local_api::ApiAddress,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: not the control plane's key: {reason}")]
    OnlineKey { path: String, reason: String },
    #[error("cannot start the plugin engine: {0}")]
    Engine(#[from] tern_plugin_host::LoadError),
    #[error("storage keeps failing ({0}): stopped for the supervisor to restart the agent")]
    Storage(String),
    #[error("cannot make the data dir the owner's alone: {0}")]
    Permissions(std::io::Error),
    #[error("cannot write the run marker in {path}: {source}")]
    Marker {
        path: String,
        source: std::io::Error,
    },
}

/// Runs the agent in `dir` until `shutdown` completes.
pub async fn run(dir: AgentDataDir, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let config = dir.load_config()?;
    // The agent's key is its identity: the data dir and the key are the owner's alone.
    for change in tern_transport::secrets::tighten(dir.root(), &[&dir.key()])
        .map_err(RunError::Permissions)?
    {
        warn!("{change}");
    }
    let transport =
        tern_transport::quic::agent_transport_config(LINK_IDLE_TIMEOUT, Some(LINK_KEEP_ALIVE));
    let credentials = Credentials::load(&dir, transport)?;

    let bind_error = |source| RunError::Bind {
        addr: config.listen_api.clone(),
        source,
    };
    let listener = config.listen_api.bind().await.map_err(bind_error)?;
    let api_addr = listener.local_address().map_err(bind_error)?;
    let grpc_listener = match &config.listen_grpc {
        Some(addr) => Some(addr.bind().await.map_err(|source| RunError::Bind {
            addr: addr.clone(),
            source,
        })?),
        None => None,
    };
    let grpc_addr = grpc_listener.as_ref().and_then(|l| l.local_address().ok());

    let online_key_path = dir.online_key();
    let online_key = tern_proto::signing::PublicKey::from_text(&dir.read(&online_key_path)?)
        .map_err(|e| RunError::OnlineKey {
            path: online_key_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let store = AgentStore::open(&dir.state(), &dir.artifacts())?;
    let engine = Arc::new(PluginEngine::new(EngineOptions {
        cache_dir: Some(dir.compiled()),
        ..EngineOptions::default()
    })?);
    let run_id = format!("{:016x}", rand::random::<u64>());
    let (marker, ledger) = start_run(&dir, &store, &run_id, config.exits)?;
    let marker = Arc::new(marker);
    // A start that fails on its storage is an orderly stop, not a death of what it serves.
    let stopped = |e: RunError| {
        marker.finish();
        e
    };
    let serving = Arc::new(ServingTable::default());
    let reconciler = restore(
        &dir,
        &store,
        &engine,
        &config.limits,
        &serving,
        &ledger,
        &marker,
    )
    .await
    .map_err(stopped)?;
    let buffer = TelemetryBuffer::open(store.db(), config.telemetry.buffer_bytes)
        .map_err(|e| stopped(e.into()))?;
    let telemetry = Arc::new(TelemetryState {
        buffer: Arc::new(buffer),
        host: Default::default(),
        storage: tern_transport::storage::StorageMonitor::new(dir.root()),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let storage_watch = tokio::spawn(tern_transport::storage::watch(
        telemetry.storage.clone(),
        storage_probe(store.db().clone()),
        stop_rx.clone(),
    ));
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
        pipelines: Default::default(),
    };
    let api_connections = local_api::Connections::new(config.api);
    let local = local_api::LocalApi::new(
        info,
        state_rx,
        serving.clone(),
        telemetry.clone(),
        api_connections.clone(),
    );
    let http = local_api::serve(listener, local.router(), api_connections, stop_rx.clone());
    let grpc = grpc_listener.map(|l| local_api::serve_grpc(l, local.grpc(), stop_rx.clone()));
    // One task for both forms: they stop together.
    let api = tokio::spawn(async move {
        match grpc {
            None => http.await,
            Some(grpc) => {
                let (http, grpc) = tokio::join!(http, grpc);
                http.and(grpc)
            }
        }
    });
    let (desired_tx, desired_rx) = watch::channel(None);
    let (chain_tx, chain_rx) = watch::channel(Vec::new());
    let (outbox_tx, outbox_rx) = mpsc::channel(64);
    let (connection_tx, connection_rx) = watch::channel(None);
    let collector = tokio::spawn(telemetry::collect(
        serving.clone(),
        telemetry.clone(),
        HostSampler::new(dir.root(), vec![dir.artifacts(), dir.compiled()]),
        capacity_rx.clone(),
        Duration::from_millis(config.telemetry.interval_ms.max(1)),
        stop_rx.clone(),
    ));
    let shipper = tokio::spawn(telemetry::shipper::ship(
        telemetry.buffer.clone(),
        connection_rx.clone(),
        stop_rx.clone(),
    ));
    let link = tokio::spawn(link::maintain(
        LinkConfig {
            agent: config.clone(),
            credentials,
        },
        capacity_rx,
        state_tx,
        DeployChannels {
            desired: desired_tx,
            trust_chain: chain_tx,
            outbox: outbox_rx,
            connection: connection_tx,
        },
        stop_rx.clone(),
    ));
    let deployer = tokio::spawn(
        Deployer {
            agent_id: config.agent_id.clone(),
            online_key,
            store: store.clone(),
            engine,
            limits: config.limits,
            serving: serving.clone(),
            connection: connection_rx,
            outbox: outbox_tx,
            run: run_id.clone(),
            exits: config.exits,
            marker: marker.clone(),
            trust_chain: chain_rx,
            // Read here once; set only by end-to-end tests.
            hold_load: std::env::var_os(crate::deployer::HOLD_LOAD_VAR)
                .filter(|gate| !gate.is_empty())
                .map(std::path::PathBuf::from),
        }
        .run(reconciler, desired_rx, stop_rx.clone()),
    );
    // Releasing the executable's code pages reads /proc/self/smaps and relies on Linux's
    // MADV_DONTNEED; elsewhere there is no such task.
    #[cfg(target_os = "linux")]
    let code_release = Some(tokio::spawn(crate::working_set::release_periodically(
        stop_rx.clone(),
    )));
    #[cfg(not(target_os = "linux"))]
    let code_release: Option<tokio::task::JoinHandle<()>> = None;
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
    match grpc_addr {
        Some(grpc) => {
            info!(agent = %config.name, id = %config.agent_id, run = %run_id, local_api = %api_addr, local_grpc = %grpc, "agent running")
        }
        None => {
            info!(agent = %config.name, id = %config.agent_id, run = %run_id, local_api = %api_addr, "agent running")
        }
    }

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        reason = telemetry.storage.restart_requested() => {
            tern_transport::storage::exit_for_restart_soon();
            Err(RunError::Storage(reason))
        }
    };
    info!("shutting down");
    let _ = stop_tx.send(true);
    crate::shutdown::stop_in_order(
        crate::shutdown::Running {
            aborted: [probe, deployer, shipper]
                .into_iter()
                .chain(code_release)
                .collect(),
            collector,
            link,
            api,
            storage_watch,
        },
        (outcome.is_ok()).then_some(&store),
    )
    .await;
    // An orderly stop, also the one that asks the supervisor for a restart: no run died.
    marker.finish();
    info!("agent stopped");
    outcome
}

/// Starts this run's marker; when the previous run died, records its exit in the ledger (and
/// puts aside the revisions it died under too often).
fn start_run(
    dir: &AgentDataDir,
    store: &AgentStore,
    run: &str,
    policy: ExitPolicy,
) -> Result<(RunMarker, ExitLedger), RunError> {
    crate::exits::marker::record_panics(dir);
    let now = tern_clock::unix_millis_now();
    let (marker, exit) = RunMarker::start(dir, run, now).map_err(|source| RunError::Marker {
        path: dir.root().display().to_string(),
        source,
    })?;
    let mut ledger = store.exit_ledger()?;
    if let Some(exit) = exit {
        let revisions: Vec<String> = (exit.serving.iter().chain(&exit.loading))
            .map(|r| format!("{}:{}", r.pipeline, r.revision))
            .collect();
        warn!(run = %exit.run, revisions = ?revisions, reason = %exit.reason, "the previous run of the agent exited uncleanly");
        for (pipeline, aside) in ledger.record(exit, policy, now) {
            warn!(%pipeline, revision = aside.revision, reason = %aside.reason, "revision put aside");
        }
    }
    ledger.prune(policy, now);
    store.put_exit_ledger(&ledger)?;
    Ok((marker, ledger))
}

/// A write and a flush of the agent's database: fails while the disk is full, and for good once
/// sled has latched an I/O error (then the agent exits for its supervisor to restart it).
fn storage_probe(db: sled::Db) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
    move || {
        let now = tern_clock::unix_millis_now().to_be_bytes();
        db.insert("storage_probe", &now)
            .and_then(|_| db.flush())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Loads the revisions that were serving when the agent stopped, before it serves anything:
/// only those that still verify against the pinned trust root and the floors.
async fn restore(
    dir: &AgentDataDir,
    store: &AgentStore,
    engine: &Arc<PluginEngine>,
    limits: &AgentLimits,
    serving: &Arc<ServingTable>,
    ledger: &ExitLedger,
    marker: &RunMarker,
) -> Result<Reconciler, RunError> {
    let mut restored = store.restore()?;
    // A revision put aside does not serve again: the one before it does, when the agent kept
    // one it never died under.
    let mut kept = Vec::new();
    for pipeline in std::mem::take(&mut restored.serving) {
        let Some(aside) = ledger
            .put_aside(&pipeline.name)
            .filter(|a| a.revision == pipeline.revision)
        else {
            kept.push(pipeline);
            continue;
        };
        match store.last_good(&pipeline.name)? {
            Some(good)
                if good.revision != aside.revision
                    && ledger.count(&good.name, good.revision) == 0 =>
            {
                warn!(pipeline = %pipeline.name, put_aside = aside.revision, serving = good.revision, "serving the last-known-good revision instead");
                store.activate(&good, false)?;
                kept.push(good);
            }
            _ => {
                warn!(pipeline = %pipeline.name, put_aside = aside.revision, "no last-known-good revision: not serving");
                store.remove(&pipeline.name)?;
            }
        }
    }
    restored.serving = kept;
    restored.put_aside = ledger.all_put_aside().clone();
    if restored.trust.is_none()
        && let Ok(text) = std::fs::read_to_string(dir.trust_root())
        && let Ok(root) = serde_json::from_str::<tern_proto::trust::SignedTrustRoot>(&text)
        && root.accept(None).is_ok()
    {
        // Pinned at enrollment; from now on the store holds it.
        store.pin_trust_root(&root)?;
        restored.trust = Some(root);
    }
    let mut reconciler = Reconciler::new(restored);
    for action in reconciler.reverify() {
        if let Action::Stop(name) = action {
            // Reported with the reason once the link is up.
            warn!(pipeline = %name, "the revision that was serving no longer verifies; not started");
            store.remove(&name)?;
        }
    }
    let wanted: Vec<DesiredPipeline> = reconciler.serving().cloned().collect();
    for desired in wanted {
        let (copy, engine, d, limits) = (store.clone(), engine.clone(), desired.clone(), *limits);
        // A load that kills the agent counts against the revision as serving would.
        marker.loading(&desired.name, desired.revision, true);
        let result =
            tokio::task::spawn_blocking(move || crate::deployer::load(&copy, &engine, &limits, &d))
                .await;
        marker.loading(&desired.name, desired.revision, false);
        let error = match result {
            Ok(Ok(pipeline)) => {
                info!(pipeline = %desired.name, revision = desired.revision, "serving again after restart");
                serving.switch(Arc::new(pipeline));
                marker.serving(&desired.name, Some(desired.revision));
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // Forgotten, so the next desired state installs it again from scratch.
        warn!(pipeline = %desired.name, %error, "cannot load the revision that was serving");
        store.remove(&desired.name)?;
        reconciler.forget(&desired.name);
    }
    Ok(reconciler)
}
