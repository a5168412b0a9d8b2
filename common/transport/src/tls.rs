//! rustls configurations. Every config uses the ring provider and, for QUIC, TLS 1.3 only.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::pki;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("no private key in PEM input")]
    NoKey,
    #[error("invalid private key: {0}")]
    Key(String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("no usable root certificate on this system ({0}); name a CA file instead")]
    NoSystemRoots(String),
}

/// The crypto provider every Tern connection uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Parses a PEM certificate chain and a PEM private key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = pki::certificates(chain_pem)?;
        if chain.is_empty() {
            return Err(pki::PkiError::NoCertificate.into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
            other => TlsError::Key(other.to_string()),
        })?;
        Ok(Self { chain, key })
    }
}

/// The certificates of `ca_pem` as trust anchors (at least one).
pub fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pki::certificates(ca_pem)? {
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(pki::PkiError::NoCertificate.into());
    }
    Ok(Arc::new(roots))
}

/// Certificates (by SHA-256 of their DER) the QUIC server refuses in the handshake although the
/// CA issued them: revoked agents'. Shared with whoever revokes; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RevokedCertificates(Arc<RwLock<HashSet<[u8; 32]>>>);

impl RevokedCertificates {
    /// Refuses `fingerprint` from the next handshake on.
    pub fn revoke(&self, fingerprint: [u8; 32]) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint);
    }

    pub fn is_revoked(&self, fingerprint: &[u8; 32]) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(fingerprint)
    }
}

/// The CA's verifier (chain and validity period: an expired certificate is refused), then the
/// revocation list.
#[derive(Debug)]
struct AgentVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevokedCertificates,
}

impl ClientCertVerifier for AgentVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.is_revoked(&pki::fingerprint(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// QUIC server side of agent connections: the client must present a certificate issued by the
/// CA, valid now and not revoked, or the handshake fails.
pub fn quic_server(
    ca_pem: &str,
    identity: Identity,
    transport: Arc<quinn::TransportConfig>,
    revoked: RevokedCertificates,
) -> Result<quinn::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider()).build()?;
    let verifier = Arc::new(AgentVerifier { inner, revoked });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![tern_proto::ALPN.to_vec()];
    // 0-RTT would let a replayed first flight change state.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// QUIC client side of an agent connection: trusts only the control plane's CA and presents the
/// agent's certificate.
pub fn quic_client(
    ca_pem: &str,
    identity: Identity,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![tern_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// Server-authenticated HTTPS (admin API, enrollment). Send the CA in the chain so that enrolling
/// agents can match it against their token.
pub fn https_server(identity: Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// HTTPS client that trusts only the given CA (ternctl → admin API).
pub fn https_client(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// An HTTPS client for a receiver outside the fleet (an OpenTelemetry collector): it trusts
/// `ca_pem` when given, else the system's root certificates, and presents `identity` when the
/// receiver asks for a client certificate.
pub fn https_client_for(
    ca_pem: Option<&str>,
    identity: Option<Identity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = match ca_pem {
        Some(pem) => roots(pem)?,
        None => system_roots()?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The system's trusted root certificates (`/etc/ssl/certs` and the like, or `SSL_CERT_FILE`).
pub fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| "none found".to_owned());
        return Err(TlsError::NoSystemRoots(why));
    }
    Ok(Arc::new(store))
}

/// HTTPS client for enrollment: the agent knows only the SHA-256 of the control plane's CA (from
/// the token). The server must send that CA in its chain, and its certificate must verify against
/// it; anything else fails the handshake before a byte of the token is sent.
pub fn https_client_pinned_by_ca_hash(
    ca_sha256: [u8; 32],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = Arc::new(CaHashVerifier {
        ca_sha256,
        signatures: HandshakeSignatures(provider()),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The half of a server certificate verifier that checks the handshake's signatures with
/// the provider's algorithms, whatever the other half does with the certificate itself.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeSignatures(pub(crate) Arc<CryptoProvider>);

impl HandshakeSignatures {
    pub(crate) fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub(crate) fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct CaHashVerifier {
    ca_sha256: [u8; 32],
    signatures: HandshakeSignatures,
}

impl ServerCertVerifier for CaHashVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| tern_proto::sha256(c) == self.ca_sha256)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the control plane's CA does not match the enrollment token".to_owned(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.signatures.0.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}
