//! The QUIC endpoint agents connect to, and the control stream of each agent.
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
use tern_proto::{
    AgentMessage, Capacity, ControlMessage, MAX_FRAME_LEN, PROTOCOL_VERSION, Welcome,
};
use tern_transport::quic::{close, peer_certificate};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::registry::{AgentRecord, RegistryError};
use crate::state::Shared;

/// Time a client has to complete the QUIC handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an agent has after the handshake to open its control stream and say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the endpoint waits at shutdown for agents to receive the close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bounds on what an agent reports about itself (it ends up in the registry and on terminals).
const MAX_REPORTED_TEXT: usize = 256;
const MAX_REPORTED_GPUS: usize = 16;

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

/// Truncates agent-reported text and drops control characters (it is shown on terminals).
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REPORTED_TEXT)
        .collect()
}

fn clean_capacity(capacity: &Capacity) -> Capacity {
    let mut capacity = capacity.clone();
    capacity.gpus.truncate(MAX_REPORTED_GPUS);
    for gpu in &mut capacity.gpus {
        gpu.name = clean(&gpu.name);
        gpu.backend = clean(&gpu.backend);
        gpu.device_type = clean(&gpu.device_type);
        gpu.driver = clean(&gpu.driver);
    }
    capacity
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
    let hello = match hello {
        Some(AgentMessage::Hello(hello)) => hello,
        Some(_) => {
            return Err(SessionError::Protocol(
                "the first message must be a hello".into(),
            ));
        }
        None => {
            return Err(SessionError::Protocol(
                "control stream closed before hello".into(),
            ));
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported (this control plane speaks {PROTOCOL_VERSION})",
            hello.protocol_version
        );
        refuse(&mut send, &reason).await;
        return Err(SessionError::Refused(reason));
    }
    if hello.agent_id != record.id {
        let reason = "agent id in hello does not match the client certificate".to_owned();
        refuse(&mut send, &reason).await;
        return Err(SessionError::Refused(reason));
    }

    let now = tern_clock::unix_millis_now();
    let (slot, mut desired) = watch::channel(None);
    shared.connections.replace(&record.id, conn, slot.clone());
    let connection = shared.presence.connect(&record.id, remote, now);
    // Whatever happens from here on, presence and the connection map are released below.
    let result = async {
        let capacity = clean_capacity(&hello.capacity);
        let version = clean(&hello.software_version);
        let (reported, reported_version) = (capacity.clone(), version.clone());
        let replica = shared.replica.name.clone();
        update_agent(shared, &record.id, move |a| {
            a.capacity = reported.clone();
            a.version = reported_version.clone();
            a.last_seen_ms = now;
            a.status = tern_proto::api::AgentStatus::Ready;
            a.address = Some(remote.to_string());
            a.replica = Some(replica.clone());
        })
        .await?;
        let welcome = Welcome {
            heartbeat_interval_ms: shared.config.heartbeat_interval.as_millis() as u64,
            server_time_ms: now,
        };
        write_frame(&mut send, &ControlMessage::Welcome(welcome), MAX_FRAME_LEN).await?;
        info!(agent = %record.name, %version, gpus = capacity.gpus.len(), "agent connected");
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
        // Its current desired state goes first (built on the blocking pool: storage, signing),
        // unless the driver already put a newer one in the slot.
        let (work, id) = (shared.clone(), record.id.clone());
        match tokio::task::spawn_blocking(move || {
            crate::deploy::current(&work.deploy_context(), &id, now)
        })
        .await
        {
            Ok(Ok(Some(state))) => {
                crate::sessions::offer(&slot, state);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(agent = %record.name, error = %e, "cannot build the desired state"),
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
            connection,
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
    if shared.presence.disconnect(&record.id, connection) {
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
    connection: u64,
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
    // What the agent was given, read once for the session (again when a report names more).
    let mut given = crate::deploy::desired::Seen::default();
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
            handle(shared, (record, connection), &mut given, send, message).await?;
        }
    }
    .await;
    reader.abort();
    result
}

async fn handle(
    shared: &Arc<Shared>,
    (record, connection): (&AgentRecord, u64),
    given: &mut crate::deploy::desired::Seen,
    send: &mut SendStream,
    message: AgentMessage,
) -> Result<(), SessionError> {
    // A status report held back for the agent's rate budget lands once the budget allows.
    if let Some(held) = (shared.reports).release_held(&record.id, tern_clock::unix_millis_now()) {
        if shared.replica.peers {
            (shared.shared_reports).status(&shared.replica.name, &record.id, &held);
        }
        shared.reports.record(&record.id, held);
    }
    match message {
        AgentMessage::Heartbeat(hb) => {
            let now = tern_clock::unix_millis_now();
            if shared.presence.heartbeat(&record.id, connection, now) {
                info!(agent = %record.name, "agent heard again after silence");
            }
            let ack = ControlMessage::Ack(tern_proto::message::Ack { seq: hb.seq });
            write_frame(send, &ack, MAX_FRAME_LEN).await?;
        }
        AgentMessage::Status(report) => {
            debug!(agent = %record.name, generation = report.applied_generation, "status report");
            let ack = ControlMessage::Ack(tern_proto::message::Ack { seq: report.seq });
            // Cut to the bounds, and within the agent's budget (else held back, counted).
            let now = tern_clock::unix_millis_now();
            if let Some(report) = shared.reports.admit_status(&record.id, report, now) {
                // Shared with the replicas that do not hold the agent: staged, and written
                // with others' by the report writer (see `replica::SharedReports`).
                if shared.replica.peers {
                    (shared.shared_reports).status(&shared.replica.name, &record.id, &report);
                }
                shared.reports.record(&record.id, report);
            } else {
                debug!(agent = %record.name, "status report over the agent's rate: held back");
            }
            write_frame(send, &ack, MAX_FRAME_LEN).await?;
        }
        AgentMessage::Capacity(capacity) => {
            let capacity = clean_capacity(&capacity);
            debug!(agent = %record.name, gpus = capacity.gpus.len(), "capacity update");
            update_agent(shared, &record.id, move |a| {
                if a.capacity != capacity {
                    a.capacity = capacity.clone();
                }
            })
            .await?;
        }
        AgentMessage::Health(report) => {
            let now = tern_clock::unix_millis_now();
            let Some(mut report) = shared.reports.admit_health(&record.id, report, now) else {
                debug!(agent = %record.name, "health report over the agent's rate: refused");
                return Ok(());
            };
            let foreign = match shared.desired.keep_given(
                &record.id,
                given,
                &mut report.pipelines,
                |p| (p.name.as_str(), p.revision),
            ) {
                Ok(foreign) => foreign,
                Err(e) => {
                    // Counters are cumulative: the next report carries these requests too.
                    warn!(agent = %record.name, error = %e, "cannot check a health report; skipped");
                    return Ok(());
                }
            };
            if foreign > 0 {
                debug!(agent = %record.name, foreign, "health of revisions the agent was never given: dropped");
                shared.health.count_dropped(foreign);
            }
            if shared.replica.peers {
                (shared.shared_reports).health(&shared.replica.name, &record.id, &report);
            }
            shared
                .health
                .record(&record.id, &report, tern_clock::unix_millis_now());
        }
        AgentMessage::Renew { csr_pem } => {
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
        AgentMessage::Exits(report) => {
            let report = crate::reports::bounds::exits(report);
            if let Some(last) = report.exits.last() {
                warn!(agent = %record.name, exits = report.exits.len(), last_run = %last.run, reason = %last.reason, "the agent reports unclean exits");
            }
            if shared.replica.peers {
                (shared.shared_reports).exits(&shared.replica.name, &record.id, &report);
            }
            shared.reports.record_exits(&record.id, report);
        }
        AgentMessage::Ack(_) => {}
        AgentMessage::Hello(_) => {
            return Err(SessionError::Protocol("hello sent twice".into()));
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
