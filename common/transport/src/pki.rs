//! Certificates: the control plane's CA, its server certificate, and agent certificates issued
//! from CSRs. Keys are ECDSA P-256.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const SERVER_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Default lifetime of an agent certificate; agents renew at two thirds of it.
pub const DEFAULT_AGENT_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Tolerates clocks of agents that run a little behind the control plane's.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate signing request is invalid: {0}")]
    InvalidCsr(#[source] rcgen::Error),
    #[error("no certificate in PEM input")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The control plane's certificate authority: it issues the server certificate and every agent's
/// client certificate, and is the only trust anchor of agent connections.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("sha256", &hex::encode(self.sha256()))
            .finish_non_exhaustive()
    }
}

/// Valid from a little before now (a tenth of the lifetime at most, so that a short-lived
/// certificate is not mostly backdating) until `lifetime` from now.
fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE.min(lifetime / 10);
    params.not_after = now + lifetime;
}

/// An agent certificate signed from its CSR.
#[derive(Debug, Clone)]
pub struct AgentCertificate {
    pub cert_pem: String,
    /// SHA-256 of the agent's public key: the same key is refused after a revocation.
    pub key_sha256: [u8; 32],
    /// Unix milliseconds after which the certificate is refused.
    pub not_after_ms: u64,
}

/// When a certificate starts and stops being valid, in unix milliseconds.
pub fn validity_of(cert: &CertificateDer<'_>) -> Result<(u64, u64), PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Pem(format!("not an X.509 certificate: {e}")))?;
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64).saturating_mul(1000);
    let validity = parsed.validity();
    Ok((ms(validity.not_before), ms(validity.not_after)))
}

/// SHA-256 of a certificate's public key (its subject public key bits), as
/// [`AgentCertificate::key_sha256`] names it.
pub fn key_fingerprint(cert: &CertificateDer<'_>) -> Result<[u8; 32], PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Pem(format!("not an X.509 certificate: {e}")))?;
    Ok(tern_proto::sha256(
        &parsed.public_key().subject_public_key.data,
    ))
}

impl CertificateAuthority {
    /// Creates a new CA with a fresh key.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tern");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads a CA written by [`Self::cert_pem`] and [`Self::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der = first_certificate(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate's DER: what enrollment tokens pin.
    pub fn sha256(&self) -> [u8; 32] {
        tern_proto::sha256(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// Issues the control plane's server certificate. It always names
    /// [`tern_proto::CONTROL_PLANE_SERVER_NAME`], `localhost` and the loopback addresses, plus
    /// `extra_names` (DNS names or IP addresses operators dial).
    pub fn issue_server(&self, extra_names: &[String]) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate()?;
        let mut names = vec![
            tern_proto::CONTROL_PLANE_SERVER_NAME.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(extra_names.iter().cloned());
        names.dedup();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tern control plane");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, SERVER_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR for `lifetime`. Only the CSR's public key is used (its signature is
    /// checked); the subject is set here, so an agent cannot choose its own identity.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        lifetime: Duration,
    ) -> Result<AgentCertificate, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::InvalidCsr)?;
        let params = agent_params(agent_id, lifetime)?;
        let not_after_ms = (params.not_after.unix_timestamp().max(0) as u64).saturating_mul(1000);
        Ok(AgentCertificate {
            cert_pem: params.signed_by(&csr.public_key, &self.issuer()?)?.pem(),
            key_sha256: tern_proto::sha256(csr.public_key.der_bytes()),
            not_after_ms,
        })
    }

    /// Issues an agent certificate with a fresh key, for tools that stand in for many agents
    /// (the fleet load generator) where the CSR round trip is not what is measured.
    pub fn issue_agent(&self, agent_id: &str) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate()?;
        let cert =
            agent_params(agent_id, DEFAULT_AGENT_CERT_TTL)?.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn agent_params(agent_id: &str, lifetime: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, agent_id);
    params.subject_alt_names = vec![SanType::URI(
        format!("urn:tern:agent:{agent_id}").try_into()?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, lifetime);
    Ok(params)
}

/// A new agent key and a CSR for it. The key stays with the agent.
pub fn agent_key_and_csr(agent_name: &str) -> Result<IssuedCsr, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, agent_name);
    let csr = params.serialize_request(&key)?;
    Ok(IssuedCsr {
        csr_pem: csr.pem()?,
        key_pem: key.serialize_pem(),
    })
}

/// A CSR and the private key it was made for.
pub struct IssuedCsr {
    pub csr_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCsr")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The first certificate of a PEM bundle.
pub fn first_certificate(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    certificates(pem)?
        .into_iter()
        .next()
        .ok_or(PkiError::NoCertificate)
}

/// All certificates of a PEM bundle, in order.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))
}

/// SHA-256 of a certificate's DER: how the control plane recognises an agent's certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    tern_proto::sha256(cert)
}

/// Whether `name` is an IP address (for choosing SAN types).
pub fn is_ip(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_a_pem_round_trip_and_keeps_its_hash() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let again = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
        assert_eq!(ca.sha256(), again.sha256());
    }

    #[test]
    fn signs_csr_with_identity_chosen_by_the_ca() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let csr = agent_key_and_csr("edge-1").expect("csr");
        let signed = ca
            .sign_agent_csr(&csr.csr_pem, "a1b2", DEFAULT_AGENT_CERT_TTL)
            .expect("signed");
        let der = first_certificate(&signed.cert_pem).expect("cert");
        assert_eq!(
            key_fingerprint(&der).expect("key"),
            signed.key_sha256,
            "the key hash of the CSR and of the certificate agree"
        );
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("urn:tern:agent:a1b2"));
        assert!(
            !text.contains("edge-1"),
            "the CSR's subject leaked into the certificate"
        );
    }

    #[test]
    fn refuses_garbage_csr() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let err = ca.sign_agent_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "x",
            DEFAULT_AGENT_CERT_TTL,
        );
        assert!(matches!(err, Err(PkiError::InvalidCsr(_))));
    }

    #[test]
    fn short_lived_certificates_are_barely_backdated() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let csr = agent_key_and_csr("edge-1").expect("csr");
        let signed = ca
            .sign_agent_csr(&csr.csr_pem, "a1", Duration::from_secs(60))
            .expect("signed");
        let der = first_certificate(&signed.cert_pem).expect("cert");
        let (from, until) = validity_of(&der).expect("validity");
        assert_eq!(until, signed.not_after_ms);
        assert!(until - from <= 66_000 + 1_000, "{from}..{until}");
    }
}
