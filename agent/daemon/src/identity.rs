//! The agent's certificate over time (design section 6a): which key and certificate it
//! presents, when it renews (two thirds into the certificate's life, over its mutual-TLS link,
//! with a fresh key that never leaves the host), and how a renewed pair is stored so that a crash
//! at any point leaves a key and a certificate that belong together.

use std::sync::{Arc, Mutex};

use tern_transport::{Identity, TlsError};

use crate::data_dir::{AgentDataDir, DataDirError};

/// Why the agent's identity is unusable.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("the agent's identity is unusable: {0}")]
    Tls(#[from] TlsError),
    #[error("the agent's certificate is unreadable: {0}")]
    Pki(#[from] tern_transport::PkiError),
}

/// When the certificate is valid, in unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

impl Validity {
    /// Two thirds into the certificate's life: time to renew.
    pub fn renew_at_ms(&self) -> u64 {
        let life = self.not_after_ms.saturating_sub(self.not_before_ms);
        self.not_before_ms.saturating_add(life / 3 * 2)
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.not_after_ms
    }
}

/// The file a renewed key and certificate are written to first, together, in one atomic write;
/// then they replace `agent.key` and `agent.crt`, and the file goes. Whenever it exists, it is
/// the current pair.
fn renewed(dir: &AgentDataDir) -> std::path::PathBuf {
    dir.root().join("agent-renewed.pem")
}

/// Drops a renewed pair that was never promoted (before a new enrollment writes its own).
pub fn discard_pending(dir: &AgentDataDir) -> Result<(), DataDirError> {
    let pending = renewed(dir);
    match std::fs::remove_file(&pending) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataDirError::Io {
            path: pending,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Reads the agent's key and certificate (a renewed pair not yet promoted first).
fn read_pair(dir: &AgentDataDir) -> Result<(String, String), IdentityError> {
    let pending = renewed(dir);
    if pending.exists() {
        let both = dir.read(&pending)?;
        // Promote it: the key file first; until the pending file is gone, it is what counts.
        let (key, cert) = split_pair(&both);
        dir.write(&dir.key(), key.as_bytes(), true)?;
        dir.write(&dir.cert(), cert.as_bytes(), false)?;
        std::fs::remove_file(&pending).map_err(|source| DataDirError::Io {
            path: pending.clone(),
            source,
        })?;
        return Ok((cert, key));
    }
    Ok((dir.read(&dir.cert())?, dir.read(&dir.key())?))
}

/// The key and the certificate of a renewed pair (the key's PEM block comes first).
fn split_pair(both: &str) -> (String, String) {
    match both.find("-----BEGIN CERTIFICATE-----") {
        Some(at) => (both[..at].to_owned(), both[at..].to_owned()),
        None => (both.to_owned(), String::new()),
    }
}

/// What the link presents to the control plane, replaced after each renewal.
#[derive(Debug, Clone)]
pub struct Credentials {
    dir: AgentDataDir,
    ca_pem: String,
    transport: Arc<quinn::TransportConfig>,
    current: Arc<Mutex<(quinn::ClientConfig, Validity)>>,
}

impl Credentials {
    /// Loads the agent's identity from its data dir.
    pub fn load(
        dir: &AgentDataDir,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<Self, IdentityError> {
        let ca_pem = dir.read(&dir.ca())?;
        let (cert, key) = read_pair(dir)?;
        let current = Self::build(&ca_pem, &cert, &key, &transport)?;
        Ok(Self {
            dir: dir.clone(),
            ca_pem,
            transport,
            current: Arc::new(Mutex::new(current)),
        })
    }

    fn build(
        ca_pem: &str,
        cert: &str,
        key: &str,
        transport: &Arc<quinn::TransportConfig>,
    ) -> Result<(quinn::ClientConfig, Validity), IdentityError> {
        let identity = Identity::from_pem(cert, key)?;
        let (not_before_ms, not_after_ms) = tern_transport::pki::validity_of(&identity.chain[0])?;
        let client = tern_transport::tls::quic_client(ca_pem, identity, transport.clone())?;
        Ok((
            client,
            Validity {
                not_before_ms,
                not_after_ms,
            },
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (quinn::ClientConfig, Validity)> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TLS client with the current certificate.
    pub fn client(&self) -> quinn::ClientConfig {
        self.lock().0.clone()
    }

    pub fn validity(&self) -> Validity {
        self.lock().1
    }

    /// Stores a renewed certificate with the key it was made for, and presents it from the next
    /// connection on (the current one stays up: nothing is dropped).
    pub fn install(&self, cert_pem: &str, key_pem: &str) -> Result<Validity, IdentityError> {
        let built = Self::build(&self.ca_pem, cert_pem, key_pem, &self.transport)?;
        let validity = built.1;
        let both = format!("{key_pem}{cert_pem}");
        self.dir.write(&renewed(&self.dir), both.as_bytes(), true)?;
        read_pair(&self.dir)?;
        *self.lock() = built;
        Ok(validity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_two_thirds_into_the_certificates_life() {
        let v = Validity {
            not_before_ms: 1_000,
            not_after_ms: 31_000,
        };
        assert_eq!(v.renew_at_ms(), 21_000);
        assert!(!v.expired(30_999));
        assert!(v.expired(31_000));
    }

    #[test]
    fn a_renewed_pair_replaces_the_files_and_survives_a_crash_before_promotion() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = AgentDataDir::new(tmp.path());
        let ca = tern_transport::CertificateAuthority::generate("test").expect("ca");
        dir.write(&dir.ca(), ca.cert_pem().as_bytes(), false)
            .expect("ca");
        let issue = || {
            let csr = tern_transport::pki::agent_key_and_csr("edge").expect("csr");
            let signed = ca
                .sign_agent_csr(&csr.csr_pem, "a1", std::time::Duration::from_secs(60))
                .expect("signed");
            (signed.cert_pem, csr.key_pem)
        };
        let (cert, key) = issue();
        dir.write(&dir.cert(), cert.as_bytes(), false)
            .expect("cert");
        dir.write(&dir.key(), key.as_bytes(), true).expect("key");
        let transport =
            tern_transport::quic::agent_transport_config(std::time::Duration::from_secs(30), None);
        let credentials = Credentials::load(&dir, transport.clone()).expect("load");
        let (cert2, key2) = issue();
        credentials.install(&cert2, &key2).expect("install");
        assert_eq!(dir.read(&dir.cert()).expect("cert"), cert2);
        assert_eq!(dir.read(&dir.key()).expect("key"), key2);
        assert!(!renewed(&dir).exists());
        // A crash after the pending pair was written, before it replaced the files: the next
        // start promotes it.
        let (cert3, key3) = issue();
        dir.write(&renewed(&dir), format!("{key3}{cert3}").as_bytes(), true)
            .expect("pending");
        Credentials::load(&dir, transport).expect("load again");
        assert_eq!(dir.read(&dir.cert()).expect("cert"), cert3);
        assert_eq!(dir.read(&dir.key()).expect("key"), key3);
    }
}
