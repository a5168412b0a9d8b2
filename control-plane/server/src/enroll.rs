//! Enrollment: an agent trades a one-time token and a CSR for its certificate.

use std::net::SocketAddr;

use rand::RngCore;
use tern_proto::api::{EnrollRequest, EnrollResponse};
use tern_proto::labels::{self, LabelError};
use tern_proto::{EnrollmentToken, TokenError};
use tern_transport::PkiError;
use tracing::info;

use crate::registry::{NewAgent, RedeemError, Registry};
use crate::releases::ReleaseStore;

/// What enrollment reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct EnrollContext<'a> {
    pub registry: &'a Registry,
    pub ca: &'a tern_transport::CertificateAuthority,
    pub releases: &'a ReleaseStore,
    pub online_key: &'a tern_proto::signing::SecretKey,
    /// How long agent certificates live.
    pub agent_cert_ttl: std::time::Duration,
    /// This replica, and every replica's address for agents to fail over to.
    pub replica: &'a crate::replica::Replica,
    pub replicas: &'a crate::replica::ReplicaRegistry,
    pub lease_ttl: std::time::Duration,
}

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("enrollment token was issued by another control plane")]
    WrongControlPlane,
    #[error("invalid agent name `{0}`: use 1-63 characters of a-z, 0-9, `-`, `.`, `_`")]
    InvalidName(String),
    #[error(transparent)]
    Labels(#[from] LabelError),
    #[error(transparent)]
    Csr(#[from] PkiError),
    #[error(transparent)]
    Redeem(#[from] RedeemError),
}

/// Checks the request, signs the CSR and records the agent.
pub(crate) fn enroll(
    cx: &EnrollContext<'_>,
    request: &EnrollRequest,
    peer: Option<SocketAddr>,
    now_ms: u64,
) -> Result<EnrollResponse, EnrollError> {
    let token = EnrollmentToken::parse(&request.token)?;
    if token.ca_sha256 != cx.ca.sha256() {
        return Err(EnrollError::WrongControlPlane);
    }
    if !labels::valid_name(&request.name) {
        return Err(EnrollError::InvalidName(request.name.clone()));
    }
    labels::validate(&request.labels)?;
    // Only a live token buys CSR parsing and signing.
    cx.registry.check_token(&token, now_ms)?;

    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    // An agent whose certificate expired enrolls again under its own id.
    let agent_id = (cx.registry)
        .enrollment_id(&request.name, hex::encode(id), now_ms)
        .map_err(RedeemError::from)?;
    let signed = (cx.ca).sign_agent_csr(&request.csr_pem, &agent_id, cx.agent_cert_ttl)?;
    let cert_der = tern_transport::pki::first_certificate(&signed.cert_pem)?;
    let record = cx.registry.redeem(
        &token,
        NewAgent {
            id: agent_id.clone(),
            name: request.name.clone(),
            labels: request.labels.clone(),
            cert_sha256: tern_transport::pki::fingerprint(&cert_der),
            cert_expires_ms: signed.not_after_ms,
            key_sha256: signed.key_sha256,
            address: peer.map(|p| p.to_string()),
        },
        now_ms,
    )?;
    info!(agent = %record.name, id = %record.id, labels = %labels::format(&record.labels), "agent enrolled");
    Ok(EnrollResponse {
        agent_id,
        certificate_pem: signed.cert_pem,
        ca_certificate_pem: cx.ca.cert_pem().to_owned(),
        labels: record.labels,
        online_key: Some(cx.online_key.public()),
        trust_root: cx.releases.trust_root().ok().flatten(),
        replicas: if cx.replica.peers {
            (cx.replicas)
                .agent_addresses(now_ms, cx.lease_ttl.as_millis() as u64)
                .unwrap_or_default()
        } else {
            Vec::new()
        },
    })
}
