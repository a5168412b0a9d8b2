//! The QUIC endpoint agents connect to, and the control stream of each agent: the adapter of
//! the fleet core's session ([`crate::agent_session`]), which decides what each message does.
//!
//! The TLS layer has already refused clients without a certificate from our CA; here a connection
//! must also belong to an enrolled agent, open its control stream and say hello in time. Anything
//! malformed closes that one connection, never the endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tern_proto::frame::FrameError;
use tern_proto::io::{read_frame, write_frame};
use tern_proto::message::SignedDesiredState;
use tern_proto::{AgentMessage, ControlMessage, MAX_FRAME_LEN};
use tern_transport::quic::{close, peer_certificate};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::agent_session::{AgentSession, Effect, Refusal, SessionEnd};
use crate::registry::{AgentRecord, RegistryError};
use crate::state::Shared;

/// Time a client has to complete the QUIC handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an agent has after the handshake to open its control stream and say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the endpoint waits at shutdown for agents to receive the close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why an agent connection ended other than by an orderly close.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("client certificate belongs to no enrolled agent")]
    UnknownCertificate,
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("registry task failed: {0}")]
    RegistryTask(#[from] tokio::task::JoinError),
}

impl SessionError {
    fn close_code(&self) -> u32 {
        match self {
            SessionError::UnknownCertificate | SessionError::Refused(_) => close::REFUSED,
            SessionError::Registry(_) | SessionError::RegistryTask(_) => close::INTERNAL,
            _ => close::PROTOCOL,
        }
    }
}

/// Accepts agent connections until `shutdown` turns true, then closes the endpoint.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_agent_connections));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        // A spoofed source address cannot complete a Retry, so it never holds a slot.
        if !incoming.remote_address_validated() {
            if let Err(e) = incoming.retry() {
                debug!(error = %e, "cannot send retry");
            }
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "agent connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                let _permit = permit;
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return debug!(error = %e, "agent handshake failed"),
                    Err(_) => return debug!("agent handshake timed out"),
                };
                if let Err(e) = session(&conn, &shared, remote).await {
                    if conn.close_reason().is_none() {
                        warn!(error = %e, "closing agent connection");
                        conn.close(e.close_code().into(), e.to_string().as_bytes());
                    } else {
                        debug!(error = %e, "agent connection ended");
                    }
                }
            }
            .instrument(info_span!("agent_conn", %remote, agent = tracing::field::Empty)),
        );
    }
    endpoint.close(close::SHUTDOWN.into(), b"control plane shutting down");
    // Let the closes reach the agents, so they reconnect at once instead of timing out.
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

async fn session(
    conn: &Connection,
    shared: &Arc<Shared>,
    remote: SocketAddr,
) -> Result<(), SessionError> {
    let cert = peer_certificate(conn).ok_or(SessionError::UnknownCertificate)?;
    let fingerprint = tern_transport::pki::fingerprint(&cert);
    let record = shared
        .registry
        .agent_by_cert(&fingerprint)?
        .ok_or(SessionError::UnknownCertificate)?;
    tracing::Span::current().record("agent", record.name.as_str());
    // The handshake refuses its current certificates; this catches any other it still holds.
    if record.revoked_ms.is_some() {
        return Err(SessionError::Refused(format!(
            "agent {} is revoked",
            record.name
        )));
    }

    let (mut send, recv, hello) = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await?;
        let first = read_frame::<_, AgentMessage>(&mut recv, MAX_FRAME_LEN).await?;
        Ok::<_, SessionError>((send, recv, first))
    })
    .await
    .map_err(|_| SessionError::HelloTimeout)??;
    let hello = match crate::agent_session::hello(&record, hello) {
        Ok(hello) => hello,
        Err(Refusal::Told(reason)) => {
            refuse(&mut send, &reason).await;
            return Err(SessionError::Refused(reason));
        }
        Err(Refusal::Protocol(reason)) => return Err(SessionError::Protocol(reason)),
    };

    let now = tern_clock::unix_millis_now();
    let (slot, mut desired) = watch::channel(None);
    shared.connections.replace(&record.id, conn, slot.clone());
    let mut session = AgentSession::open(&shared.session_context(), &record, remote, now);
    // Whatever happens from here on, presence and the connection map are released below.
    let result = async {
        let (version, gpus) = (hello.version.clone(), hello.capacity.gpus.len());
        let replica = shared.replica.name.clone();
        update_agent(shared, &record.id, move |a| {
            crate::agent_session::connected(a, &hello, &remote.to_string(), &replica, now);
        })
        .await?;
        let heartbeat_ms = shared.config.heartbeat_interval.as_millis() as u64;
        let welcome = crate::agent_session::welcome(heartbeat_ms, now);
        write_frame(&mut send, &welcome, MAX_FRAME_LEN).await?;
        info!(agent = %record.name, %version, gpus, "agent connected");
        // Every trust root pinned, before any desired state: an agent that missed rotations
        // walks them one by one to the root its next desired state names.
        let work = shared.clone();
        match tokio::task::spawn_blocking(move || work.releases.trust_chain()).await {
            Ok(Ok(chain)) if !chain.is_empty() => {
                write_frame(&mut send, &ControlMessage::TrustChain(chain), MAX_FRAME_LEN).await?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(agent = %record.name, error = %e, "cannot read the trust roots"),
            Err(e) => warn!(agent = %record.name, error = %e, "trust-root task failed"),
        }
        // Its current desired state goes first, as the outbox holds it (read on the blocking
        // pool), unless the driver already put a newer one in the slot. The driver hears of
        // the connect: an agent whose state changed while it was away gets a new one.
        let (work, id) = (shared.clone(), record.id.clone());
        let welcomed = move || crate::agent_session::welcomed(&work.session_context(), &id);
        match tokio::task::spawn_blocking(welcomed).await {
            Ok(Ok(Some(state))) => {
                crate::sessions::offer(&slot, state);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(agent = %record.name, error = %e, "cannot read the desired state"),
            Err(e) => warn!(agent = %record.name, error = %e, "desired-state task failed"),
        }
        drop(slot);
        let transfers = tokio::spawn(
            crate::transfer::serve(conn.clone(), shared.clone(), record.id.clone())
                .instrument(tracing::Span::current()),
        );
        let result = control_loop(
            conn,
            shared,
            &record,
            &mut session,
            &mut send,
            recv,
            &mut desired,
        )
        .await;
        transfers.abort();
        result
    }
    .await;

    shared.connections.remove(&record.id, conn);
    // Presence and the driver hear of it; the record says NotReady unless it is live elsewhere.
    if session.close(&shared.session_context()) {
        let last_seen = shared
            .presence
            .seen(&record.id)
            .map(|s| s.last_seen_ms)
            .unwrap_or(now);
        let work = shared.clone();
        update_agent(shared, &record.id, move |a| {
            // Unless it connected to another replica meanwhile.
            if work.replica.may_mark(a) {
                a.status = tern_proto::api::AgentStatus::NotReady;
                a.last_seen_ms = last_seen;
            }
        })
        .await?;
    }
    let reason = conn
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "stream closed".into());
    info!(agent = %record.name, %reason, "agent disconnected");
    result
}

/// Changes agent `id`'s registry record, on the blocking pool: the registry's transaction
/// waits on the backend's commit lock and pauses between retries.
async fn update_agent(
    shared: &Arc<Shared>,
    id: &str,
    change: impl Fn(&mut AgentRecord) + Send + 'static,
) -> Result<(), SessionError> {
    let (work, id) = (shared.clone(), id.to_owned());
    tokio::task::spawn_blocking(move || work.registry.update_agent(&id, change)).await??;
    Ok(())
}

async fn control_loop(
    conn: &Connection,
    shared: &Arc<Shared>,
    record: &AgentRecord,
    session: &mut AgentSession,
    send: &mut SendStream,
    mut recv: RecvStream,
    desired: &mut watch::Receiver<Option<SignedDesiredState>>,
) -> Result<(), SessionError> {
    // Reading a frame is not cancel-safe, so a task owns the receive side.
    let (frames_tx, mut frames) = mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame::<_, AgentMessage>(&mut recv, MAX_FRAME_LEN).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let result = async {
        loop {
            let frame = tokio::select! {
                frame = frames.recv() => frame,
                Ok(()) = desired.changed() => {
                    let state = desired.borrow_and_update().clone();
                    if let Some(state) = state {
                        write_frame(send, &ControlMessage::DesiredState(state), MAX_FRAME_LEN).await?;
                    }
                    continue;
                }
            };
            let message = match frame {
                Some(Ok(Some(m))) => m,
                Some(Ok(None)) | None => return Ok(()),
                // The peer closed or lost the connection: an ordinary end, not a protocol error.
                Some(Err(FrameError::Io(_))) if conn.close_reason().is_some() => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
            };
            let now = tern_clock::unix_millis_now();
            let effects = (session.on_message(&shared.session_context(), message, now))
                .map_err(|SessionEnd::Protocol(reason)| SessionError::Protocol(reason))?;
            for effect in effects {
                carry_out(shared, record, send, effect).await?;
            }
        }
    }
    .await;
    reader.abort();
    result
}

/// Does what the session asked for a message.
async fn carry_out(
    shared: &Arc<Shared>,
    record: &AgentRecord,
    send: &mut SendStream,
    effect: Effect,
) -> Result<(), SessionError> {
    match effect {
        Effect::Send(message) => write_frame(send, &message, MAX_FRAME_LEN).await?,
        Effect::RecordCapacity(capacity) => {
            debug!(agent = %record.name, gpus = capacity.gpus.len(), "capacity update");
            update_agent(shared, &record.id, move |a| {
                if a.capacity != capacity {
                    a.capacity = capacity.clone();
                }
            })
            .await?;
        }
        Effect::Renew { csr_pem } => {
            let (work, id) = (shared.clone(), record.id.clone());
            let answer = tokio::task::spawn_blocking(move || {
                // The record as stored now (a renewal since the connection began counts).
                let record = (work.registry.agent(&id))
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("agent {id} is no longer enrolled"))?;
                crate::lifecycle::renew(&work.lifecycle_context(), &record, &csr_pem)
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(reason) = &answer {
                warn!(agent = %record.name, %reason, "certificate renewal refused");
            }
            write_frame(send, &ControlMessage::Renewed(answer), MAX_FRAME_LEN).await?;
        }
    }
    Ok(())
}

async fn refuse(send: &mut SendStream, reason: &str) {
    let message = ControlMessage::Refused {
        reason: reason.to_owned(),
    };
    if write_frame(send, &message, MAX_FRAME_LEN).await.is_ok() {
        let _ = send.finish();
        // Give the refusal a moment to reach the agent before the connection closes.
        let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    }
}
