//! The agent's link to its control plane: one QUIC connection with mutual TLS, a control stream
//! (hello, heartbeats, capacity updates, certificate renewal), and reconnection with backoff
//! whenever it breaks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_proto::frame::FrameError;
use tern_proto::io::{read_frame, write_frame};
use tern_proto::{
    AgentMessage, Capacity, ControlMessage, Heartbeat, Hello, MAX_FRAME_LEN, PROTOCOL_VERSION,
    Welcome,
};
use tern_transport::quic::close;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::identity::Credentials;

/// Time the control plane has to answer a hello.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeats that may go unacknowledged before the link is considered dead.
pub const MISSED_ACKS: u32 = 3;
/// Clock difference to the control plane that is worth a warning.
const CLOCK_SKEW_WARNING: Duration = Duration::from_secs(60);
/// Wait before asking again after a refused or unanswered renewal.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// What the rest of the agent may know about the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    /// Why the last attempt or connection failed.
    pub last_error: Option<String>,
    /// Successful connections since start.
    pub connections: u64,
}

/// Why one connection attempt or connection ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot open the control stream: {0}")]
    Stream(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the control plane refused this agent: {0}")]
    Refused(String),
    #[error("protocol violation by the control plane: {0}")]
    Protocol(String),
    #[error("no welcome within {WELCOME_TIMEOUT:?}")]
    WelcomeTimeout,
    #[error("the control plane stopped acknowledging heartbeats")]
    Silent,
    #[error("the control plane closed the control stream")]
    Closed,
}

/// Everything a session needs.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub agent: AgentConfig,
    /// The certificate the link presents; a renewal replaces it for the next connection.
    pub credentials: Credentials,
}

/// How the link and the deployer talk: desired states in, reports out, and the connection for
/// downloads.
#[derive(Debug)]
pub struct DeployChannels {
    /// The newest desired state received (an older one not yet taken is superseded).
    pub desired: watch::Sender<Option<tern_proto::message::SignedDesiredState>>,
    /// The control plane's trust roots, oldest first, as its last connection sent them: set
    /// before the desired state that follows them, so the deployer walks them first.
    pub trust_chain: watch::Sender<Vec<tern_proto::trust::SignedTrustRoot>>,
    pub outbox: mpsc::Receiver<AgentMessage>,
    pub connection: watch::Sender<Option<quinn::Connection>>,
}

/// Keeps the link up until `shutdown` turns true; then closes the connection in an orderly way.
pub async fn maintain(
    link: LinkConfig,
    capacity: watch::Receiver<Capacity>,
    state: watch::Sender<LinkState>,
    mut deploy: DeployChannels,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    // Which of the control plane's addresses the next attempt dials: after a failure or a
    // lost connection, the next one (another replica), so a dead replica is not waited on.
    let mut turn = 0usize;
    loop {
        let result = match resolve_all(&targets(&link.agent)).await {
            Ok(addrs) => {
                let addr = addrs[turn % addrs.len()];
                let span = info_span!("link", control_plane = %addr);
                session(
                    &link,
                    addr,
                    capacity.clone(),
                    &state,
                    &mut deploy,
                    &mut backoff,
                    shutdown.clone(),
                )
                .instrument(span)
                .await
            }
            Err(e) => Err(e),
        };
        turn = turn.wrapping_add(1);
        deploy.connection.send_replace(None);
        state.send_modify(|s| s.connected = false);
        match result {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    warn!(error = %e, failures, "control plane link down; retrying");
                } else {
                    debug!(error = %e, failures, "control plane link down; retrying");
                }
                state.send_modify(|s| s.last_error = Some(e.to_string()));
            }
        }
        let delay = backoff.next_delay(&mut rand::rng());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut shutdown) => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// The control plane's addresses, in the order they are tried: the one enrolled with, then
/// the other replicas it named.
fn targets(agent: &crate::config::AgentConfig) -> Vec<&str> {
    let mut all = vec![agent.control_plane.as_str()];
    for replica in &agent.replicas {
        if !all.contains(&replica.as_str()) {
            all.push(replica);
        }
    }
    all
}

/// Every address `targets` resolve to (a name may have several: one per replica), in order,
/// without repeats. Names that do not resolve are skipped while another does.
async fn resolve_all(targets: &[&str]) -> Result<Vec<SocketAddr>, SessionError> {
    let mut addrs = Vec::new();
    let mut failed = None;
    for target in targets {
        match tokio::net::lookup_host(*target).await {
            Ok(found) => {
                for addr in found {
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
            }
            Err(e) => failed = Some(SessionError::Resolve((*target).to_owned(), e)),
        }
    }
    if addrs.is_empty() {
        return Err(failed.unwrap_or_else(|| {
            SessionError::Resolve(
                targets.join(", "),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            )
        }));
    }
    Ok(addrs)
}

/// Dials, opens the control stream, says hello and waits for the welcome.
async fn establish(
    link: &LinkConfig,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    hello: Hello,
) -> Result<
    (
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        Welcome,
    ),
    SessionError,
> {
    let validity = link.credentials.validity();
    if validity.expired(tern_clock::unix_millis_now()) {
        warn!(
            expired = %tern_clock::rfc3339(validity.not_after_ms),
            "this agent's certificate expired: enroll again with a new token (`tern-agent join --token ...` on this data dir)"
        );
    }
    let conn = endpoint
        .connect_with(
            link.credentials.client(),
            addr,
            tern_proto::CONTROL_PLANE_SERVER_NAME,
        )?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &AgentMessage::Hello(hello), MAX_FRAME_LEN).await?;
    let first = tokio::time::timeout(WELCOME_TIMEOUT, read_frame(&mut recv, MAX_FRAME_LEN))
        .await
        .map_err(|_| SessionError::WelcomeTimeout)?;
    let welcome = match first {
        Err(FrameError::Io(_)) if conn.close_reason().is_some() => {
            return Err(conn
                .close_reason()
                .map(SessionError::Connection)
                .unwrap_or(SessionError::Closed));
        }
        Err(e) => return Err(e.into()),
        Ok(Some(ControlMessage::Welcome(w))) => w,
        Ok(Some(ControlMessage::Refused { reason })) => return Err(SessionError::Refused(reason)),
        Ok(Some(_)) => return Err(SessionError::Protocol("expected a welcome".into())),
        Ok(None) => return Err(SessionError::Closed),
    };
    Ok((conn, send, recv, welcome))
}

/// One connection, from dial to its end. `Ok(())` only on shutdown.
async fn session(
    link: &LinkConfig,
    addr: SocketAddr,
    mut capacity: watch::Receiver<Capacity>,
    state: &watch::Sender<LinkState>,
    deploy: &mut DeployChannels,
    backoff: &mut Backoff,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let endpoint = tern_transport::quic::client_endpoint(addr)
        .map_err(|e| SessionError::Resolve(link.agent.control_plane.clone(), e))?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_id: link.agent.agent_id.clone(),
        name: link.agent.name.clone(),
        labels: link.agent.labels.clone(),
        capacity: capacity.borrow_and_update().clone(),
        software_version: crate::VERSION.to_owned(),
    };
    // Every step until the welcome can hang on a silent peer: all of it yields to shutdown.
    let (conn, mut send, mut recv, welcome) = tokio::select! {
        established = establish(link, &endpoint, addr, hello) => established?,
        _ = stopped(&mut shutdown) => {
            endpoint.close(close::SHUTDOWN.into(), b"agent shutting down");
            return Ok(());
        }
    };
    backoff.reset();
    let skew = tern_clock::unix_millis_now().abs_diff(welcome.server_time_ms);
    if skew > CLOCK_SKEW_WARNING.as_millis() as u64 {
        warn!(skew_ms = skew, "clock differs from the control plane's");
    }
    state.send_modify(|s| {
        s.connected = true;
        s.last_error = None;
        s.connections += 1;
    });
    info!(remote = %addr, "connected to control plane");
    deploy.connection.send_replace(Some(conn.clone()));

    // Reading a frame is not cancel-safe, so a task owns the receive side.
    let (frames_tx, mut frames) = mpsc::channel::<Result<Option<ControlMessage>, FrameError>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut recv, MAX_FRAME_LEN).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let result = control_loop(
        link,
        &conn,
        &mut send,
        &mut frames,
        &mut capacity,
        deploy,
        &mut shutdown,
        welcome.heartbeat_interval_ms,
    )
    .await;
    reader.abort();
    match &result {
        Ok(()) => {
            conn.close(close::SHUTDOWN.into(), b"agent shutting down");
            // Let the close reach the control plane, so it marks us NotReady at once.
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        Err(e) => conn.close(close::PROTOCOL.into(), e.to_string().as_bytes()),
    }
    result
}

/// The instant (on tokio's clock) at unix time `at_ms`, or now if that has passed.
fn instant_at(at_ms: u64) -> tokio::time::Instant {
    let wait = at_ms.saturating_sub(tern_clock::unix_millis_now());
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

#[allow(clippy::too_many_arguments)]
async fn control_loop(
    link: &LinkConfig,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    frames: &mut mpsc::Receiver<Result<Option<ControlMessage>, FrameError>>,
    capacity: &mut watch::Receiver<Capacity>,
    deploy: &mut DeployChannels,
    shutdown: &mut watch::Receiver<bool>,
    heartbeat_interval_ms: u64,
) -> Result<(), SessionError> {
    let interval = Duration::from_millis(heartbeat_interval_ms.max(100));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut last_ack = Instant::now();
    // Once every capacity sender is gone, `changed()` fails at once: stop polling it, or the loop
    // would spin.
    let mut capacity_open = true;
    // The key of a renewal asked for, until the certificate arrives.
    let mut renewing: Option<String> = None;
    let mut renew_at = instant_at(link.credentials.validity().renew_at_ms());
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_ack.elapsed() > interval * MISSED_ACKS {
                    return Err(SessionError::Silent);
                }
                seq += 1;
                write_frame(send, &AgentMessage::Heartbeat(Heartbeat { seq }), MAX_FRAME_LEN).await?;
            }
            frame = frames.recv() => match frame {
                Some(Ok(Some(ControlMessage::Ack(_)))) => last_ack = Instant::now(),
                Some(Ok(Some(ControlMessage::Refused { reason }))) => return Err(SessionError::Refused(reason)),
                Some(Ok(Some(ControlMessage::DesiredState(d)))) => {
                    debug!(generation = d.generation, "desired state received");
                    deploy.desired.send_replace(Some(d));
                }
                Some(Ok(Some(ControlMessage::Welcome(_)))) => {
                    return Err(SessionError::Protocol("welcome sent twice".into()));
                }
                Some(Ok(Some(ControlMessage::Renewed(answer)))) => {
                    renew_at = renewed(link, answer, renewing.take());
                }
                Some(Ok(Some(ControlMessage::TrustChain(mut chain)))) => {
                    let excess = chain.len().saturating_sub(tern_proto::message::MAX_TRUST_CHAIN);
                    chain.drain(..excess);
                    debug!(roots = chain.len(), "trust chain received");
                    deploy.trust_chain.send_replace(chain);
                }
                Some(Ok(None)) | None => {
                    return Err(conn.close_reason().map(SessionError::Connection).unwrap_or(SessionError::Closed));
                }
                Some(Err(FrameError::Io(_))) if conn.close_reason().is_some() => {
                    return Err(conn.close_reason().map(SessionError::Connection).unwrap_or(SessionError::Closed));
                }
                Some(Err(e)) => return Err(e.into()),
            },
            changed = capacity.changed(), if capacity_open => {
                if changed.is_ok() {
                    let update = capacity.borrow_and_update().clone();
                    write_frame(send, &AgentMessage::Capacity(update), MAX_FRAME_LEN).await?;
                } else {
                    capacity_open = false;
                }
            }
            Some(message) = deploy.outbox.recv() => {
                write_frame(send, &message, MAX_FRAME_LEN).await?;
            }
            _ = tokio::time::sleep_until(renew_at) => {
                // A fresh key for every renewal; only its CSR leaves the host.
                match tern_transport::pki::agent_key_and_csr(&link.agent.name) {
                    Ok(csr) => {
                        info!("renewing this agent's certificate");
                        write_frame(send, &AgentMessage::Renew { csr_pem: csr.csr_pem }, MAX_FRAME_LEN).await?;
                        renewing = Some(csr.key_pem);
                    }
                    Err(e) => warn!(error = %e, "cannot make a key for the renewal"),
                }
                renew_at = tokio::time::Instant::now() + RENEW_RETRY;
            }
            _ = stopped(shutdown) => return Ok(()),
        }
    }
}

/// Takes the control plane's answer to a renewal; returns when to renew next.
fn renewed(
    link: &LinkConfig,
    answer: Result<String, String>,
    key: Option<String>,
) -> tokio::time::Instant {
    let retry = tokio::time::Instant::now() + RENEW_RETRY;
    match (answer, key) {
        (Ok(cert), Some(key)) => match link.credentials.install(&cert, &key) {
            Ok(validity) => {
                info!(until = %tern_clock::rfc3339(validity.not_after_ms), "certificate renewed");
                instant_at(validity.renew_at_ms())
            }
            Err(e) => {
                warn!(error = %e, "cannot store the renewed certificate");
                retry
            }
        },
        (Ok(_), None) => {
            warn!("a certificate arrived that this agent did not ask for; ignored");
            retry
        }
        (Err(reason), _) => {
            warn!(%reason, "certificate renewal refused");
            retry
        }
    }
}

/// Completes once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
