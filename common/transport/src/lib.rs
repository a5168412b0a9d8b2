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
//! - [`secrets`]: permissions of the data directories and the files that hold secrets.

pub mod https;
pub mod pki;
pub mod quic;
pub mod secrets;
pub mod server_check;
pub mod storage;
pub mod tls;

pub use pki::{CertificateAuthority, IssuedCertificate, PkiError};
pub use tls::{Identity, TlsError};
