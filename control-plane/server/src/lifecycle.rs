//! An agent's identity over time (design section 6a): revocation, decommissioning, relabelling
//! and certificate renewal. Each is a registry change plus what follows from it at once: a
//! revoked certificate is refused from the next handshake and the live connection closes, a
//! decommissioned agent leaves every view, a relabelled one is re-targeted by the next
//! deployment pass.

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::catalog::Catalog;
use crate::deploy::DesiredStore;
use crate::health::HealthTracker;
use crate::presence::Presence;
use crate::registry::{AgentChangeError, AgentRecord, Registry};
use crate::reports::AgentReports;
use crate::sessions::Connections;

/// What the lifecycle of an agent reads and writes: the registry, what the QUIC endpoint
/// refuses and holds open, and every store that keeps something of an agent.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleContext<'a> {
    pub registry: &'a Registry,
    pub revoked: &'a tern_transport::tls::RevokedCertificates,
    pub connections: &'a Connections,
    pub catalog: &'a Catalog,
    pub desired: &'a DesiredStore,
    pub health: &'a HealthTracker,
    pub reports: &'a AgentReports,
    pub shared_reports: &'a crate::replica::SharedReports,
    pub presence: &'a Presence,
    pub ca: &'a tern_transport::CertificateAuthority,
    /// How long agent certificates live.
    pub agent_cert_ttl: std::time::Duration,
}

/// Why a renewal was refused (the agent is told).
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Change(#[from] AgentChangeError),
    #[error(transparent)]
    Csr(#[from] tern_transport::PkiError),
    #[error("a renewal needs a fresh key")]
    SameKey,
    #[error("this key belongs to a revoked agent")]
    RevokedKey,
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// Revokes `name`: its certificates are refused in the handshake from now on, also after a
/// restart, and its live connection is closed.
pub(crate) fn revoke(
    cx: &LifecycleContext<'_>,
    name: &str,
    now_ms: u64,
) -> Result<AgentRecord, AgentChangeError> {
    let (record, fingerprints) = cx.registry.revoke(name, now_ms)?;
    refuse(cx, &record, &fingerprints, "revoked");
    info!(agent = %record.name, id = %record.id, "agent revoked");
    Ok(record)
}

/// Decommissions `name`: revokes it, then forgets it in the registry, its desired state, health,
/// reports and presence. The name may enroll again with a new token (and a new key).
pub(crate) fn decommission(
    cx: &LifecycleContext<'_>,
    name: &str,
    now_ms: u64,
) -> Result<AgentRecord, AgentChangeError> {
    // No desired state is planned for the agent while it is being forgotten.
    let _held = cx.catalog.hold();
    let (record, fingerprints) = cx.registry.delete(name, now_ms)?;
    refuse(cx, &record, &fingerprints, "decommissioned");
    if let Err(e) = cx.desired.forget(&record.id) {
        warn!(agent = %record.name, error = %e, "cannot forget the agent's desired state");
    }
    cx.health.forget(&record.id);
    cx.reports.forget(&record.id);
    // And what replicas share of them, so that no replica reads them back after a gap.
    if let Err(e) = cx.shared_reports.forget(&record.id) {
        warn!(agent = %record.name, error = %e, "cannot forget the agent's shared reports");
    }
    cx.presence.forget(&record.id);
    info!(agent = %record.name, id = %record.id, "agent decommissioned");
    Ok(record)
}

/// Refuses `fingerprints` in future handshakes and closes the agent's connection.
fn refuse(cx: &LifecycleContext<'_>, record: &AgentRecord, fingerprints: &[[u8; 32]], why: &str) {
    for fingerprint in fingerprints {
        cx.revoked.revoke(*fingerprint);
    }
    cx.connections
        .close(&record.id, &format!("agent {} was {why}", record.name));
}

/// Sets and removes labels of `name` (kubectl's `k=v` and `k-`); deployments re-target on the
/// next pass, without the agent reconnecting.
pub(crate) fn relabel(
    cx: &LifecycleContext<'_>,
    name: &str,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<AgentRecord, AgentChangeError> {
    let record = cx.registry.relabel(name, set, remove)?;
    info!(agent = %record.name, labels = %tern_proto::labels::format(&record.labels), "agent relabelled");
    Ok(record)
}

/// Signs a renewal CSR of connected agent `record` (a fresh key) and records the certificate.
pub(crate) fn renew(
    cx: &LifecycleContext<'_>,
    record: &AgentRecord,
    csr_pem: &str,
) -> Result<String, RenewError> {
    let signed = cx
        .ca
        .sign_agent_csr(csr_pem, &record.id, cx.agent_cert_ttl)?;
    let key = hex::encode(signed.key_sha256);
    if record.key_sha256.as_deref() == Some(key.as_str()) {
        return Err(RenewError::SameKey);
    }
    if cx.registry.is_key_revoked(&signed.key_sha256)? {
        return Err(RenewError::RevokedKey);
    }
    let cert = tern_transport::pki::first_certificate(&signed.cert_pem)?;
    cx.registry.renew(
        &record.id,
        tern_transport::pki::fingerprint(&cert),
        signed.key_sha256,
        signed.not_after_ms,
    )?;
    info!(agent = %record.name, expires = %tern_clock::rfc3339(signed.not_after_ms), "certificate renewed");
    Ok(signed.cert_pem)
}
