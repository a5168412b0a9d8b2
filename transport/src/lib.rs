//! Transport plumbing shared by the control plane, the agent and `ternctl`.
//!
//! This crate is the only one that builds TLS configurations, so every connection in Tern uses the
//! same provider (ring), protocol versions and verification rules:
//!
//! - [`pki`]: the control plane's CA, server certificates, agent CSRs and certificates.
//! - [`tls`]: rustls configurations: mutual TLS for QUIC, server-auth HTTPS, and the enrollment
//!   verifier that authenticates a control plane by the CA hash in a token.
//! - [`quic`]: QUIC endpoint and transport settings.
//! - [`https`]: a small HTTPS server loop for axum routers and a JSON client.
//! - [`storage`]: storage health (a probe, readiness, a restart when the disk keeps failing).

pub mod https;
pub mod pki;
pub mod quic;
pub mod storage;
pub mod tls;

pub use pki::{CertificateAuthority, IssuedCertificate, PkiError};
pub use tls::{Identity, TlsError};

/// Current wall-clock time as unix milliseconds (0 if the clock is before 1970).
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats unix milliseconds as RFC 3339 (UTC, second precision).
pub fn rfc3339(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_305_600_000), "2026-11-22T00:00:00Z");
    }
}
