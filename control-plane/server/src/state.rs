//! The control plane's state: every store, the live sessions and the keys, built once by
//! `server` and shared by the adapters (admin API, agent sessions, transfers, telemetry
//! ingest). Services never see it whole: each gets the narrow view it works on
//! ([`crate::deploy::DeployContext`], [`crate::drift::DriftContext`], ...).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tern_transport::CertificateAuthority;

use crate::catalog::Catalog;
use crate::config::ControlPlaneConfig;
use crate::presence::Presence;
use crate::registry::Registry;
use crate::releases::ReleaseStore;
use crate::reports::AgentReports;

/// State shared by every endpoint and task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub registry: Registry,
    pub presence: Presence,
    pub connections: crate::sessions::Connections,
    pub config: ControlPlaneConfig,
    pub ca: CertificateAuthority,
    /// Certificates the QUIC endpoint refuses in the handshake (revoked agents').
    pub revoked: tern_transport::tls::RevokedCertificates,
    pub credentials: crate::credentials::Credentials,
    pub releases: ReleaseStore,
    /// The artifacts' bytes, which the release store also writes (transfers read them).
    pub artifacts: std::sync::Arc<crate::artifacts::ArtifactStore>,
    pub catalog: Catalog,
    pub reports: AgentReports,
    pub health: crate::health::HealthTracker,
    /// Agent id → the last desired state given.
    pub desired: crate::deploy::DesiredStore,
    pub online_key: tern_proto::signing::SecretKey,
    pub telemetry: crate::telemetry::Telemetry,
    /// Drift baselines and alerts.
    pub drift: crate::drift::DriftStore,
    /// Free space and failures of the data directory's storage.
    pub storage: Arc<tern_transport::storage::StorageMonitor>,
    /// Whether the store reached over the network (PostgreSQL) answers; `None` on sled.
    pub store_health: Option<Arc<tern_transport::storage::StorageMonitor>>,
    /// This replica, and whether others share its store.
    pub replica: crate::replica::Replica,
    /// Every replica's record (address, agents, when last seen).
    pub replicas: crate::replica::ReplicaRegistry,
    /// Agents' reports, shared with the other replicas (when there are any).
    pub shared_reports: crate::replica::SharedReports,
    /// The backend of the registry's namespace (where leases are kept).
    pub backend: crate::backend::SharedBackend,
    pub leases: crate::lease::LeaseStore,
    /// Whether this replica holds the work lease, with its fenced stores.
    pub leadership: crate::leadership::Leadership,
    /// What the deployment driver plans on next (reports, connects, records and applies
    /// heard); kept only while this replica holds the work lease.
    pub fleet: crate::deploy::fleet::Inbox,
    /// Wakes the deployment driver (the inbox's waker).
    pub planner: Arc<tokio::sync::Notify>,
    /// What the deployment driver did here since the process started.
    pub driver: DriverCounters,
}

/// What the deployment driver did since the process started (for `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct DriverCounters {
    pub passes: std::sync::atomic::AtomicU64,
    /// Passes that read the whole fleet first (a new term, a lost feed, a failed pass).
    pub full_reads: std::sync::atomic::AtomicU64,
    /// Desired states built, signed and put in the outbox.
    pub signed: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Why this process is not ready, if it is not: its disk fails, or its store is
    /// unreachable.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if let Some(reason) = self.storage.not_ready() {
            return Some(format!("storage fails: {reason}"));
        }
        let store = self.store_health.as_ref()?.not_ready()?;
        Some(format!("the store (PostgreSQL) is unreachable: {store}"))
    }

    /// Enrollment's view.
    pub(crate) fn enroll_context(&self) -> crate::enroll::EnrollContext<'_> {
        crate::enroll::EnrollContext {
            registry: &self.registry,
            ca: &self.ca,
            releases: &self.releases,
            online_key: &self.online_key,
            agent_cert_ttl: self.config.agent_cert_ttl,
            replica: &self.replica,
            replicas: &self.replicas,
            lease_ttl: self.config.lease_ttl,
        }
    }

    /// The view of an agent's lifecycle (revocation, decommissioning, relabelling, renewal).
    pub(crate) fn lifecycle_context(&self) -> crate::lifecycle::LifecycleContext<'_> {
        crate::lifecycle::LifecycleContext {
            registry: &self.registry,
            revoked: &self.revoked,
            connections: &self.connections,
            catalog: &self.catalog,
            desired: &self.desired,
            health: &self.health,
            reports: &self.reports,
            shared_reports: &self.shared_reports,
            presence: &self.presence,
            ca: &self.ca,
            agent_cert_ttl: self.config.agent_cert_ttl,
        }
    }

    /// The telemetry queries' view.
    pub(crate) fn query_context(&self) -> crate::telemetry::query::QueryContext<'_> {
        crate::telemetry::query::QueryContext {
            catalog: &self.catalog,
            registry: &self.registry,
            series: &self.telemetry.store,
            presence: &self.presence,
            replica: &self.replica,
            not_ready_after_ms: self.config.not_ready_after.as_millis() as u64,
        }
    }

    /// The view the fleet's metrics are rendered from.
    pub(crate) fn exposition_context(&self) -> crate::telemetry::exposition::ExpositionContext<'_> {
        crate::telemetry::exposition::ExpositionContext {
            query: self.query_context(),
            telemetry: &self.telemetry,
            health: &self.health,
            reports: &self.reports,
            store_not_ready: (self.store_health.as_ref()).is_some_and(|s| s.not_ready().is_some()),
            storage: &self.storage,
            replica: crate::telemetry::exposition::ReplicaGauges {
                work_lease_epoch: self.leadership.epoch(),
                agents_connected: self.presence.connected(),
                deploy_passes: self.driver.passes.load(Ordering::Relaxed),
                deploy_full_reads: self.driver.full_reads.load(Ordering::Relaxed),
                desired_signed: self.driver.signed.load(Ordering::Relaxed),
            },
        }
    }

    /// Drift monitoring's view of the stores.
    pub(crate) fn drift_context(&self) -> crate::drift::DriftContext<'_> {
        crate::drift::DriftContext {
            catalog: &self.catalog,
            registry: &self.registry,
            series: &self.telemetry.store,
            store: &self.drift,
            window: self.config.drift_window,
        }
    }

    /// The drift evaluator's view: alerts written through `term`'s store.
    pub(crate) fn judge_context<'a>(
        &'a self,
        term: &'a crate::leadership::Term,
    ) -> crate::drift::DriftContext<'a> {
        crate::drift::DriftContext {
            store: &term.drift,
            ..self.drift_context()
        }
    }

    /// The deployment driver's view of the stores, writing through `term`'s.
    pub(crate) fn driver_context<'a>(
        &'a self,
        term: &'a crate::leadership::Term,
    ) -> crate::deploy::DeployContext<'a> {
        crate::deploy::DeployContext {
            catalog: &term.catalog,
            desired: &term.desired,
            ..self.deploy_context()
        }
    }

    /// What an agent's session reads and updates in memory.
    pub(crate) fn session_context(&self) -> crate::agent_session::SessionContext<'_> {
        crate::agent_session::SessionContext {
            reports: &self.reports,
            shared_reports: &self.shared_reports,
            presence: &self.presence,
            health: &self.health,
            desired: &self.desired,
            replica: &self.replica,
            fleet: &self.fleet,
        }
    }

    /// The view agent sessions build desired states in (an agent's current one on connect).
    pub(crate) fn deploy_context(&self) -> crate::deploy::DeployContext<'_> {
        crate::deploy::DeployContext {
            registry: &self.registry,
            catalog: &self.catalog,
            releases: &self.releases,
            desired: &self.desired,
            reports: &self.reports,
            health: &self.health,
            presence: &self.presence,
            online_key: &self.online_key,
            replica: &self.replica,
        }
    }
}
