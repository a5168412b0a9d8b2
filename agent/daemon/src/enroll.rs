//! `tern-agent join`: enroll with a one-time token.
//!
//! The token carries the SHA-256 of the control plane's CA. The TLS handshake of the enrollment
//! request fails unless the control plane presents that CA, so the token is never sent to an
//! impostor. The private key is generated here and never leaves the agent: only a CSR is sent.
//!
//! An agent whose certificate expired (it was offline past its lifetime) enrolls again the same
//! way on its own data dir: it keeps its identity, its state (trust root, version floors) and
//! its artifacts, and gets a new key and certificate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tern_proto::api::{EnrollRequest, EnrollResponse};
use tern_proto::labels::{self, LabelError};
use tern_proto::trust::SignedTrustRoot;
use tern_proto::{EnrollmentToken, TokenError};
use tern_transport::https::{HttpsClient, HttpsError};
use tern_transport::{PkiError, TlsError};
use tracing::info;

use crate::config::{AgentConfig, DEFAULT_LISTEN_API};
use crate::data_dir::{AgentDataDir, DataDirError};

/// Options of `tern-agent join`.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `host:port` of the control plane's agent address.
    pub control_plane: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub listen_api: Option<crate::local_api::ApiAddress>,
    /// Where the local API's gRPC form listens; none when absent.
    pub listen_grpc: Option<crate::local_api::ApiAddress>,
    /// Bounds on the local API's connections.
    pub api: crate::local_api::ApiLimits,
    /// A trust root given out of band, pinned instead of the control plane's.
    pub trust_root: Option<PathBuf>,
    pub telemetry: crate::config::TelemetryConfig,
    /// The agent's bounds on plugin and model limits.
    pub limits: crate::limits::AgentLimits,
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0} already holds an enrolled agent; use `tern-agent run --data-dir {0}`")]
    AlreadyEnrolled(String),
    #[error("{dir} holds agent `{enrolled}`, not `{asked}`")]
    OtherAgent {
        dir: String,
        enrolled: String,
        asked: String,
    },
    #[error("the control plane enrolled this host as a new agent ({0}) instead of renewing it")]
    NewIdentity(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("invalid agent name `{0}`: use 1-63 characters of a-z, 0-9, `-`, `.`, `_`")]
    InvalidName(String),
    #[error(transparent)]
    Labels(#[from] LabelError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the control plane refused enrollment: {0}")]
    Refused(String),
    #[error("cannot reach the control plane: {0}")]
    Unreachable(HttpsError),
    #[error("the control plane answered with a CA that does not match the token")]
    CaMismatch,
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("the control plane gave no key for desired states (is it older than this agent?)")]
    NoOnlineKey,
    #[error("trust root {path}: {reason}")]
    TrustRoot { path: String, reason: String },
}

/// Enrolls and writes the agent's data dir. Returns the config `run` starts from.
pub async fn join(options: &JoinOptions) -> Result<AgentConfig, JoinError> {
    let dir = AgentDataDir::new(&options.data_dir);
    let expired = expired_enrollment(&dir, options)?;
    let token = EnrollmentToken::parse(&options.token)?;
    if !labels::valid_name(&options.name) {
        return Err(JoinError::InvalidName(options.name.clone()));
    }
    labels::validate(&options.labels)?;
    let pinned = options
        .trust_root
        .as_ref()
        .map(|path| {
            let bad = |reason: String| JoinError::TrustRoot {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let root: SignedTrustRoot =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            root.accept(None).map_err(|e| bad(e.to_string()))?;
            Ok::<_, JoinError>(root)
        })
        .transpose()?;

    let csr = tern_transport::pki::agent_key_and_csr(&options.name)?;
    let tls = tern_transport::tls::https_client_pinned_by_ca_hash(token.ca_sha256)?;
    let client = HttpsClient::new(options.control_plane.clone(), tls);
    let request = EnrollRequest {
        token: options.token.trim().to_owned(),
        name: options.name.clone(),
        labels: options.labels.clone(),
        csr_pem: csr.csr_pem,
    };
    let response: EnrollResponse =
        client
            .post("/v1/enroll", &request)
            .await
            .map_err(|e| match e {
                HttpsError::Status { message, .. } => JoinError::Refused(message),
                other => JoinError::Unreachable(other),
            })?;
    let ca = tern_transport::pki::first_certificate(&response.ca_certificate_pem)?;
    if tern_proto::sha256(&ca) != token.ca_sha256 {
        return Err(JoinError::CaMismatch);
    }

    if let Some(old) = &expired
        && old.agent_id != response.agent_id
    {
        return Err(JoinError::NewIdentity(response.agent_id));
    }
    crate::identity::discard_pending(&dir)?;
    dir.write(&dir.key(), csr.key_pem.as_bytes(), true)?;
    dir.write(&dir.cert(), response.certificate_pem.as_bytes(), false)?;
    dir.write(&dir.ca(), response.ca_certificate_pem.as_bytes(), false)?;
    let online_key = response.online_key.ok_or(JoinError::NoOnlineKey)?;
    dir.write(&dir.online_key(), online_key.to_pem().as_bytes(), false)?;
    // Pinned out of band, or the control plane's on first use (verified self-signed).
    let trust_root = pinned.or(response.trust_root.filter(|root| root.accept(None).is_ok()));
    if let Some(root) = trust_root {
        let text = serde_json::to_string_pretty(&root).unwrap_or_default();
        dir.write(&dir.trust_root(), text.as_bytes(), false)?;
    }
    // The control plane's other replicas, for failing over (the one dialled comes first).
    let replicas: Vec<String> = (response.replicas.iter())
        .filter(|r| **r != options.control_plane)
        .cloned()
        .collect();
    let config = match expired {
        // Enrolled again: its own settings stay.
        Some(old) => AgentConfig {
            control_plane: options.control_plane.clone(),
            replicas: replicas.clone(),
            labels: response.labels,
            ..old
        },
        None => AgentConfig {
            control_plane: options.control_plane.clone(),
            replicas,
            agent_id: response.agent_id,
            name: options.name.clone(),
            labels: response.labels,
            listen_api: options.listen_api.clone().unwrap_or_else(|| {
                crate::local_api::ApiAddress::Tcp(
                    DEFAULT_LISTEN_API.parse().expect("valid default address"),
                )
            }),
            listen_grpc: options.listen_grpc.clone(),
            api: options.api,
            telemetry: options.telemetry,
            limits: options.limits,
            exits: Default::default(),
        },
    };
    dir.save_config(&config)?;
    info!(agent = %config.name, id = %config.agent_id, "enrolled");
    Ok(config)
}

/// The configuration of an agent enrolled in `dir` whose certificate expired (it may enroll
/// again); `None` when `dir` holds no agent. An enrolled agent with a valid certificate must
/// not enroll twice.
fn expired_enrollment(
    dir: &AgentDataDir,
    options: &JoinOptions,
) -> Result<Option<AgentConfig>, JoinError> {
    if !dir.is_enrolled() {
        return Ok(None);
    }
    let config = dir.load_config()?;
    let cert = tern_transport::pki::first_certificate(&dir.read(&dir.cert())?)?;
    let (_, not_after_ms) = tern_transport::pki::validity_of(&cert)?;
    if tern_clock::unix_millis_now() < not_after_ms {
        return Err(JoinError::AlreadyEnrolled(
            options.data_dir.display().to_string(),
        ));
    }
    if config.name != options.name {
        return Err(JoinError::OtherAgent {
            dir: options.data_dir.display().to_string(),
            enrolled: config.name,
            asked: options.name.clone(),
        });
    }
    Ok(Some(config))
}
