//! Starting and stopping the control plane: endpoints, background tasks, orderly shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_transport::TlsError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backend::postgres::{Link, Secrets};
use crate::backend::{PostgresBackend, SharedBackend, SledBackend};
use crate::catalog::{Catalog, CatalogError};
use crate::data_dir::{DataDir, LoadError};
use crate::deploy::fleet::Fleet;
use crate::presence::Presence;
use crate::registry::{Registry, RegistryError};
use crate::reports::AgentReports;
use crate::state::Shared;

/// How long the deployment driver gathers reports and records before a pass plans on them.
const BATCH_SPACING: Duration = Duration::from_millis(100);
/// When the deployment driver tries again after a pass failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often silent agents are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often `last_seen` of heard agents is written to the registry.
const PERSIST_INTERVAL: Duration = Duration::from_secs(10);
/// How often used and expired enrollment tokens are deleted.
const TOKEN_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Page cache of the registry's database (agents, releases, pipelines, desired states).
const REGISTRY_CACHE_BYTES: u64 = 16 << 20;
/// Connections to PostgreSQL per database (registry, telemetry) when `store` names one.
const POSTGRES_CONNECTIONS: usize = 4;
/// Page cache of the telemetry database.
pub const TELEMETRY_CACHE_BYTES: u64 = 64 << 20;
/// QUIC idle timeout: a dead agent's connection is dropped after this much silence.
const AGENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `tern-control-plane serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    /// Overrides `listen_agents` of `config.toml`.
    pub listen_agents: Option<SocketAddr>,
    /// Overrides `listen_api` of `config.toml`.
    pub listen_api: Option<SocketAddr>,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("OpenTelemetry export: {0}")]
    Otlp(String),
    #[error("cannot open the {what} database: {source}")]
    Database {
        what: &'static str,
        source: crate::backend::BackendError,
    },
    #[error("cannot read the registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("cannot open the artifact store: {0}")]
    ArtifactStore(#[from] crate::artifacts::ArtifactError),
    #[error("artifacts: {0}")]
    Artifacts(String),
    #[error("cannot open the catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("cannot open the telemetry store: {0}")]
    Telemetry(#[from] crate::telemetry::store::TelemetryStoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running control plane. Dropping it without [`RunningControlPlane::shutdown`] aborts nothing
/// by itself: call `shutdown` for an orderly stop.
#[derive(Debug)]
pub struct RunningControlPlane {
    agent_addr: SocketAddr,
    api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RunningControlPlane {
    /// Starts every endpoint. Returns once all sockets are bound.
    pub async fn start(options: ServeOptions) -> Result<Self, StartError> {
        let dir = DataDir::new(&options.data_dir);
        for change in dir.tighten()? {
            warn!("{change}");
        }
        let loaded = dir.load()?;
        let mut config = loaded.config;
        if let Some(addr) = options.listen_agents {
            config.listen_agents = addr;
        }
        if let Some(addr) = options.listen_api {
            config.listen_api = addr;
        }
        // sled databases in the data directory, or namespaces of one PostgreSQL database.
        let store = config
            .store
            .as_deref()
            .map(|url| {
                let secrets = Secrets::from_env(config.store_password_file.as_deref());
                Link::parse(url, &secrets).map_err(|e| StartError::Database {
                    what: "registry",
                    source: crate::backend::BackendError::storage(e),
                })
            })
            .transpose()?;
        let database = |what: &'static str, path: &std::path::Path, cache_bytes| match &store {
            Some(link) => PostgresBackend::open(link, what, POSTGRES_CONNECTIONS)
                .map(|backend| -> SharedBackend { Arc::new(backend) })
                .map_err(|e| StartError::Database {
                    what,
                    source: crate::backend::BackendError::storage(e),
                }),
            None => SledBackend::open(path, cache_bytes)
                .map(|backend| -> SharedBackend { Arc::new(backend) })
                .map_err(|source| StartError::Database { what, source }),
        };
        let backend = database("registry", &dir.registry(), REGISTRY_CACHE_BYTES)?;
        let registry = Registry::new(backend.clone());
        let artifacts = config
            .artifact_location(dir.artifacts())
            .map_err(StartError::Artifacts)?;
        let (releases, artifacts) = crate::artifacts::open_releases(backend.clone(), &artifacts)?;
        let catalog = Catalog::new(backend.clone());
        let desired = crate::deploy::DesiredStore::new(backend.clone());
        let ca_pem = loaded.ca.cert_pem().to_owned();
        // Replicas share the series in PostgreSQL's partitioned tables; one alone, in sled.
        let series = match &store {
            Some(link) => {
                let backend = PostgresBackend::open(link, "telemetry", POSTGRES_CONNECTIONS)
                    .map_err(|e| StartError::Database {
                        what: "telemetry",
                        source: crate::backend::BackendError::storage(e),
                    })?;
                crate::telemetry::partitioned::series(
                    Arc::new(backend),
                    config.telemetry_retention,
                )?
            }
            None => crate::telemetry::store::SeriesStore::new(
                database("telemetry", &dir.telemetry(), TELEMETRY_CACHE_BYTES)?,
                config.telemetry_retention,
            ),
        };
        let (telemetry, telemetry_writer) = crate::telemetry::Telemetry::new(series);
        let drift = crate::drift::DriftStore::new(backend.clone());
        let revoked = tern_transport::tls::RevokedCertificates::default();
        // Subscribed first, so that no change falls between the reads and the follower.
        let revocations = backend.subscribe();
        for fingerprint in registry.revoked_certificates()? {
            revoked.revoke(fingerprint);
        }
        let storage = tern_transport::storage::StorageMonitor::new(&options.data_dir);
        // On PostgreSQL the local disk's failure still asks for a restart, the database's
        // only makes the replica not ready: it stays up, keeps its agents and refuses writes
        // until the server is back.
        let (probe, store_health): (Probe, _) = match store {
            Some(_) => (
                Box::new(disk_probe(options.data_dir.clone())),
                Some((
                    tern_transport::storage::StorageMonitor::remote(&options.data_dir),
                    storage_probe(backend.clone(), telemetry.store.backend().clone()),
                )),
            ),
            None => (
                Box::new(storage_probe(
                    backend.clone(),
                    telemetry.store.backend().clone(),
                )),
                None,
            ),
        };
        let replica = crate::replica::Replica {
            name: replica_name(),
            peers: store.is_some(),
        };
        let leadership = crate::leadership::Leadership::new(replica.name.clone());
        let planner = Arc::new(tokio::sync::Notify::new());
        let wake = planner.clone();
        let shared = Arc::new(Shared {
            fleet: crate::deploy::fleet::Inbox::with_waker(move || wake.notify_one()),
            planner,
            driver: Default::default(),
            shared_reports: crate::replica::SharedReports::new(backend.clone()),
            replicas: crate::replica::ReplicaRegistry::new(backend.clone()),
            replica,
            leases: crate::lease::LeaseStore::new(
                backend.clone(),
                if store.is_some() {
                    crate::lease::Contenders::Shared
                } else {
                    crate::lease::Contenders::Sole
                },
            ),
            backend,
            leadership,
            storage: storage.clone(),
            store_health: store_health.as_ref().map(|(monitor, _)| monitor.clone()),
            drift,
            telemetry,
            registry,
            catalog,
            reports: AgentReports::default(),
            health: Default::default(),
            desired,
            online_key: loaded.online_key,
            releases,
            artifacts,
            presence: Presence::default(),
            connections: Default::default(),
            config: config.clone(),
            ca: loaded.ca,
            revoked: revoked.clone(),
            credentials: crate::credentials::Credentials::new(
                loaded.admin_token_sha256,
                &options.data_dir,
            ),
        });
        // Credentials replicas share (subscribed above, so none made meanwhile is missed).
        shared
            .credentials
            .read_shared(shared.backend.as_ref())
            .map_err(|source| StartError::Database {
                what: "credentials",
                source,
            })?;

        let transport = tern_transport::quic::transport_config(AGENT_IDLE_TIMEOUT, None);
        let quic_config = tern_transport::tls::quic_server(
            &ca_pem,
            loaded.server_identity.clone(),
            transport,
            revoked,
        )?;
        let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
        let endpoint = quinn::Endpoint::server(quic_config, config.listen_agents)
            .map_err(bind_err("agents (QUIC)", config.listen_agents))?;
        let agent_addr = endpoint
            .local_addr()
            .map_err(bind_err("agents (QUIC)", config.listen_agents))?;
        // Enrollment shares the agents' port number, over TCP.
        let enroll_listener = TcpListener::bind(agent_addr)
            .await
            .map_err(bind_err("enrollment (TCP)", agent_addr))?;
        let api_listener = TcpListener::bind(config.listen_api)
            .await
            .map_err(bind_err("admin API", config.listen_api))?;
        let api_addr = api_listener
            .local_addr()
            .map_err(bind_err("admin API", config.listen_api))?;
        let https = tern_transport::tls::https_server(loaded.server_identity)?;

        let (shutdown, rx) = watch::channel(false);
        let stopped_rx = rx.clone();
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut tasks = vec![
            tokio::spawn(crate::agents::serve(endpoint, shared.clone(), rx.clone())),
            tokio::spawn(tern_transport::https::serve(
                enroll_listener,
                https.clone(),
                crate::api::enrollment_router(shared.clone()),
                stopped(rx.clone()),
            )),
            tokio::spawn(tern_transport::https::serve(
                api_listener,
                https,
                crate::api::admin_router(shared.clone()),
                stopped(rx.clone()),
            )),
            tokio::spawn(hold_work_lease(
                shared.clone(),
                Announcement {
                    agents_address: config.advertise_agents.clone().or_else(|| {
                        (!agent_addr.ip().is_unspecified()).then(|| agent_addr.to_string())
                    }),
                    api_address: api_addr.to_string(),
                    started_ms: tern_clock::unix_millis_now(),
                },
                rx.clone(),
            )),
            tokio::spawn(deployments(shared.clone(), rx.clone())),
            tokio::spawn(write_shared_reports(shared.clone(), rx.clone())),
            tokio::spawn(crate::follow::follow(
                shared.clone(),
                revocations,
                rx.clone(),
            )),
            tokio::spawn(crate::telemetry::ingest::run_writer(
                shared.clone(),
                telemetry_writer,
                rx.clone(),
            )),
            tokio::spawn(tern_transport::storage::watch(storage, probe, rx.clone())),
            tokio::spawn(async move {
                if let Some((monitor, probe)) = store_health {
                    tern_transport::storage::watch(monitor, probe, stopped_rx).await;
                }
            }),
            tokio::spawn(housekeeping(shared.clone(), rx)),
        ];
        let otlp = config
            .otlp_export(|name| std::env::var(name).ok())
            .map_err(StartError::Otlp)?;
        if let Some(export) = otlp {
            let tls = crate::telemetry::otlp::tls_target(&export).map_err(StartError::Otlp)?;
            info!(
                endpoint = %export.target.addr,
                path = %export.target.path,
                tls = export.target.tls,
                headers = export.headers.len(),
                interval = ?export.interval,
                "OpenTelemetry export on"
            );
            tasks.push(tokio::spawn(crate::telemetry::otlp::export(
                shared.clone(),
                export,
                tls,
                shutdown.subscribe(),
            )));
        }
        info!(agents = %agent_addr, api = %api_addr, "control plane serving");
        Ok(Self {
            agent_addr,
            api_addr,
            shutdown,
            tasks,
            shared,
        })
    }

    /// Where agents connect (UDP for QUIC, TCP for enrollment).
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    /// Where the admin API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Resolves with the reason when storage has failed for long enough that the process
    /// should exit and be restarted by its supervisor (a latched store reopens cleanly).
    pub async fn restart_requested(&self) -> String {
        self.shared.storage.restart_requested().await
    }

    /// Agents with an open connection.
    pub fn connected_agents(&self) -> usize {
        self.shared.presence.connected()
    }

    /// Closes every connection, persists presence and flushes the registry.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "a control plane task failed");
            }
        }
        persist_last_seen(&self.shared);
        if let Err(e) = self.shared.registry.flush() {
            warn!(error = %e, "registry flush failed at shutdown");
        }
        let store = self.shared.telemetry.store.clone();
        let flushed = tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|e| Err(crate::backend::BackendError::storage(e).into()));
        if let Err(e) = flushed {
            warn!(error = %e, "telemetry flush failed at shutdown");
        }
        let work = self.shared.clone();
        let released = tokio::task::spawn_blocking(move || {
            crate::leadership::release(&work.leadership, &work.leases);
        });
        if let Err(e) = released.await {
            warn!(error = %e, "releasing the work lease failed");
        }
        info!("control plane stopped");
    }
}

/// A storage probe: `Ok` while the storage it checks works.
type Probe = Box<dyn Fn() -> Result<(), String> + Send + Sync + 'static>;

/// A durable write to the data directory's disk (a replica on PostgreSQL keeps its
/// credentials, keys and uploads there): fails while the disk is full or failing.
fn disk_probe(dir: std::path::PathBuf) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
    move || {
        use std::io::Write as _;
        let path = dir.join(".storage-probe");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&tern_clock::unix_millis_now().to_be_bytes())?;
            file.sync_all()
        };
        write().map_err(|e| format!("data directory {}: {e}", dir.display()))
    }
}

/// A durable write to each database: fails while the disk is full, and for good once the
/// engine has latched an I/O error; on PostgreSQL, while the server cannot be reached.
fn storage_probe(
    registry: SharedBackend,
    telemetry: SharedBackend,
) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
    move || {
        let now = tern_clock::unix_millis_now();
        for (name, backend) in [("registry", &registry), ("telemetry", &telemetry)] {
            crate::backend::probe(backend.as_ref(), now)
                .map_err(|e| format!("{name} store: {e}"))?;
        }
        Ok(())
    }
}

/// This process, as a lease names its holder: the host, the process and a random part (a
/// restarted replica is another holder, and waits for its former lease to lapse).
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// What this replica says of itself in its record.
#[derive(Debug, Clone)]
struct Announcement {
    agents_address: Option<String>,
    api_address: String,
    started_ms: u64,
}

/// Announces this replica and takes or renews the work lease, three times per `lease_ttl`;
/// lets the lease go at shutdown.
async fn hold_work_lease(
    shared: Arc<Shared>,
    me: Announcement,
    mut shutdown: watch::Receiver<bool>,
) {
    let ttl = shared.config.lease_ttl;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let work = shared.clone();
        let me = me.clone();
        let renewed = tokio::task::spawn_blocking(move || {
            let record = crate::replica::ReplicaRecord {
                name: work.replica.name.clone(),
                agents_address: me.agents_address,
                api_address: me.api_address,
                started_ms: me.started_ms,
                seen_ms: tern_clock::unix_millis_now(),
                agents_connected: work.presence.connected() as u64,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            };
            if let Err(e) = work.replicas.announce(&record) {
                warn!(error = %e, "cannot announce this replica");
            }
            let source = crate::leadership::TermSource {
                registry_backend: &work.backend,
                telemetry_backend: work.telemetry.store.backend(),
                catalog: &work.catalog,
                series: &work.telemetry.store,
            };
            let now = (std::time::Instant::now(), tern_clock::unix_millis_now());
            crate::leadership::renew(&work.leadership, &work.leases, source, ttl, now);
        });
        if let Err(e) = renewed.await {
            warn!(error = %e, "work lease task failed");
        }
        // The driver starts (or stops) planning with the term, once it is taken (or lost).
        shared.planner.notify_one();
    }
}

/// Runs the deployment driver while this replica holds the work lease: a pass whenever
/// events wait in its inbox (an apply at once; reports and records gathered for at most
/// [`BATCH_SPACING`]) and at the next rollout deadline; nothing when nothing happens. Sends
/// the desired states each pass made to the agents held here (the other replicas send them on
/// hearing the outbox's commits).
async fn deployments(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    // The fleet as planned on, with the term it was read in.
    let mut fleet: Option<(u64, Fleet)> = None;
    let mut due: Option<tokio::time::Instant> = None;
    let mut last = tokio::time::Instant::now();
    loop {
        let deadline = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = shared.planner.notified() => {}
            _ = deadline => {}
        }
        let Some(term) = shared.leadership.term() else {
            if fleet.take().is_some() {
                info!("the work lease is gone: the fleet is no longer planned here");
            }
            shared.fleet.keep(false);
            due = None;
            continue;
        };
        let mut planned = match fleet.take() {
            Some((epoch, planned)) if epoch == term.epoch => planned,
            _ => {
                // A new term reads the whole fleet at its first pass; events from now on
                // are kept.
                shared.fleet.keep(true);
                Fleet::default()
            }
        };
        // Reports and records gather a little; what an operator did does not wait.
        if !shared.fleet.urgent() {
            let wait = BATCH_SPACING.saturating_sub(last.elapsed());
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        last = tokio::time::Instant::now();
        let (work, epoch) = (shared.clone(), term.epoch);
        let passed = tokio::task::spawn_blocking(move || {
            let now = tern_clock::unix_millis_now();
            let events = work.fleet.take();
            let passed = planned.pass(&work.driver_context(&term), events, now);
            (planned, passed.map(|p| (p, now)))
        })
        .await;
        match passed {
            Ok((planned, Ok((pass, now)))) => {
                let counters = &shared.driver;
                counters.passes.fetch_add(1, Ordering::Relaxed);
                (counters.full_reads).fetch_add(u64::from(pass.read_all), Ordering::Relaxed);
                (counters.signed).fetch_add(pass.sent.len() as u64, Ordering::Relaxed);
                for (agent, state) in pass.sent {
                    shared.connections.send(&agent, state);
                }
                due = pass
                    .next_deadline_ms
                    .map(|at| last + Duration::from_millis(at.saturating_sub(now)));
                fleet = Some((epoch, planned));
            }
            Ok((planned, Err(e))) => {
                warn!(error = %e, "deployment driver failed; it reads the fleet again and retries");
                due = Some(last + RETRY_AFTER);
                fleet = Some((epoch, planned));
            }
            Err(e) => {
                warn!(error = %e, "deployment driver task failed");
                due = Some(last + RETRY_AFTER);
            }
        }
    }
}

/// How often the agents' reports staged for the other replicas are written.
const SHARE_REPORTS_INTERVAL: Duration = Duration::from_millis(500);

/// Writes the reports of the agents held here for the other replicas, in batches, until
/// `shutdown` (then once more). Among replicas only.
async fn write_shared_reports(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    if !shared.replica.peers {
        return;
    }
    let mut tick = tokio::time::interval(SHARE_REPORTS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.changed() => true,
            _ = tick.tick() => false,
        };
        let work = shared.clone();
        match tokio::task::spawn_blocking(move || work.shared_reports.write_staged()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot share the agents' reports with the other replicas")
            }
            Err(e) => warn!(error = %e, "report writer failed"),
        }
        if stopping {
            return;
        }
    }
}

/// Marks silent agents NotReady, persists `last_seen`, prunes spent tokens and lost replicas and
/// judges drift, periodically.
/// Storage work runs on the blocking pool, off the threads that serve agents.
async fn housekeeping(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut persist = tokio::time::interval(PERSIST_INTERVAL);
    let mut prune = tokio::time::interval(TOKEN_PRUNE_INTERVAL);
    let mut drift = tokio::time::interval(shared.config.drift_interval);
    for timer in [&mut sweep, &mut persist, &mut prune, &mut drift] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        let work: fn(&Shared) = tokio::select! {
            _ = shutdown.changed() => return,
            _ = sweep.tick() => mark_silent_agents,
            _ = drift.tick() => judge_drift,
            _ = persist.tick() => persist_last_seen_and_uses,
            _ = prune.tick() => prune_spent,
        };
        let shared = shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || work(&shared)).await {
            warn!(error = %e, "housekeeping task failed");
        }
    }
}

/// Writes down agents' last heartbeats and when each credential was last accepted.
fn persist_last_seen_and_uses(shared: &Shared) {
    persist_last_seen(shared);
    let uses = shared.credentials.take_uses();
    if uses.is_empty() {
        return;
    }
    let written = if shared.replica.peers {
        crate::credentials::Credentials::record_uses_shared(
            shared.backend.as_ref(),
            &shared.replica.name,
            uses,
        )
    } else {
        crate::credentials::Credentials::record_uses(shared.credentials.data_dir(), uses)
    };
    if let Err(e) = written {
        warn!(error = %e, "cannot write down when credentials were last used");
    }
}

fn mark_silent_agents(shared: &Shared) {
    let now = tern_clock::unix_millis_now();
    let not_ready_after = shared.config.not_ready_after.as_millis() as u64;
    for id in shared.presence.take_newly_silent(now, not_ready_after) {
        // Unless the agent moved to another replica meanwhile: that one marks it.
        match shared.registry.update_agent(&id, |a| {
            if shared.replica.may_mark(a) {
                a.status = tern_proto::api::AgentStatus::NotReady;
            }
        }) {
            Ok(Some(a)) if shared.replica.may_mark(&a) => {
                warn!(agent = %a.name, "agent missed its heartbeats; NotReady")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot record agent status"),
        }
    }
}

fn judge_drift(shared: &Shared) {
    let Some(term) = shared.leadership.term() else {
        return;
    };
    let _span = tracing::debug_span!("drift").entered();
    let now = tern_clock::unix_millis_now();
    if let Err(e) = crate::drift::evaluate(&shared.judge_context(&term), now) {
        warn!(error = %e, "cannot judge drift");
    }
}

/// Deletes spent enrollment tokens and the records of replicas silent for a day, once for the
/// fleet (by the holder of the work lease).
fn prune_spent(shared: &Shared) {
    let Some(term) = shared.leadership.term() else {
        return;
    };
    let now = tern_clock::unix_millis_now();
    match term.registry.prune_tokens(now) {
        Ok(0) => {}
        Ok(n) => info!(tokens = n, "pruned used and expired enrollment tokens"),
        Err(e) => warn!(error = %e, "cannot prune enrollment tokens"),
    }
    match term.replicas.forget_lost(now) {
        Ok(0) => {}
        Ok(n) => info!(replicas = n, "forgot replicas silent for a day"),
        Err(e) => warn!(error = %e, "cannot forget lost replicas"),
    }
}

fn persist_last_seen(shared: &Shared) {
    let dirty = shared.presence.take_dirty();
    if let Err(e) = shared.registry.update_agents(&dirty, |a, last_seen| {
        a.last_seen_ms = a.last_seen_ms.max(*last_seen)
    }) {
        warn!(error = %e, "cannot persist last_seen");
    }
}
