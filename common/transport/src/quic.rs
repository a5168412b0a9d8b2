//! QUIC endpoints and transport settings for agent connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

/// Transport settings shared by both ends. The idle timeout is what tells the control plane that a
/// silent agent is gone when its process died without closing the connection.
pub fn transport_config(
    idle_timeout: Duration,
    keep_alive: Option<Duration>,
) -> Arc<quinn::TransportConfig> {
    Arc::new(settings(idle_timeout, keep_alive))
}

/// The agent's side: as [`transport_config`], with receive windows sized for artifact
/// downloads (the agent trusts its control plane not to park data it never reads).
pub fn agent_transport_config(
    idle_timeout: Duration,
    keep_alive: Option<Duration>,
) -> Arc<quinn::TransportConfig> {
    let mut t = settings(idle_timeout, keep_alive);
    t.stream_receive_window(DOWNLOAD_WINDOW.into());
    t.receive_window((2 * DOWNLOAD_WINDOW).into());
    Arc::new(t)
}

/// Receive window per artifact download stream on agents.
const DOWNLOAD_WINDOW: u32 = 16 << 20;

fn settings(idle_timeout: Duration, keep_alive: Option<Duration>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Search for the path's MTU beyond Ethernet's (jumbo frames, loopback): far fewer packets
    // per artifact. Probing is safe at any bound; a black hole falls back to 1200.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(u16::MAX);
    t.mtu_discovery_config(Some(mtu));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(keep_alive);
    // Few streams per connection (control, later transfers and telemetry), and receive buffers
    // bounded to about one maximum frame per stream: a peer cannot park megabytes per stream in
    // streams nobody reads.
    let frame_window = (tern_proto::MAX_FRAME_LEN + 64 * 1024) as u32;
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(frame_window.into());
    t.receive_window((2 * frame_window).into());
    t.datagram_receive_buffer_size(None);
    t
}

/// A client endpoint bound to an ephemeral port of the right address family for `remote`.
pub fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(bind)
}

/// The certificate the peer authenticated with, if any.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// Application error codes used when closing agent connections.
pub mod close {
    /// Orderly shutdown of either side.
    pub const SHUTDOWN: u32 = 0;
    /// The peer broke the protocol (bad frame, unexpected message).
    pub const PROTOCOL: u32 = 1;
    /// The peer is not (or no longer) allowed to connect.
    pub const REFUSED: u32 = 2;
    /// The control plane is at its connection limit.
    pub const BUSY: u32 = 3;
    /// The control plane failed internally (storage); the agent should retry later.
    pub const INTERNAL: u32 = 4;
}
