//! The streams an agent opens besides its control stream. Artifact transfers: each fetch is its
//! own QUIC stream, content-addressed by digest and resumable from any offset (the agent asks
//! for the bytes it does not have yet). An agent may fetch only the artifacts named in its own
//! current or previous desired state; anything else is refused and logged. Telemetry streams
//! go to [`crate::telemetry::ingest`].

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tern_proto::io::{read_frame, write_frame};
use tern_proto::message::{FetchRequest, FetchResponse, StreamOpen};
use tern_proto::release::Digest;
use tracing::{Instrument, debug, info_span, warn};

use crate::state::Shared;

/// Time an agent has to send its request after opening a transfer stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from disk and written to the stream at a time.
const CHUNK: usize = 1 << 20;

/// Why one transfer ended early.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("no request within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error(transparent)]
    Frame(#[from] tern_proto::FrameError),
    #[error("stream closed before the request")]
    NoRequest,
    #[error("cannot read the artifact: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent stopped reading: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Serves the transfer streams an agent opens, until the connection ends.
pub(crate) async fn serve(conn: Connection, shared: Arc<Shared>, agent: String) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (shared, agent) = (shared.clone(), agent.clone());
        tokio::spawn(
            async move {
                if let Err(e) = transfer(&shared, &agent, send, recv).await {
                    debug!(error = %e, "transfer ended early");
                }
            }
            .instrument(info_span!("transfer", digest = tracing::field::Empty)),
        );
    }
}

async fn transfer(
    shared: &Shared,
    agent: &str,
    send: SendStream,
    mut recv: RecvStream,
) -> Result<(), TransferError> {
    let open = tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame::<_, StreamOpen>(&mut recv, 1024),
    )
    .await
    .map_err(|_| TransferError::Timeout)??
    .ok_or(TransferError::NoRequest)?;
    match open {
        StreamOpen::Fetch(request) => fetch(shared, agent, send, request).await,
        StreamOpen::Telemetry => {
            crate::telemetry::ingest::receive(shared, agent, send, recv).await;
            Ok(())
        }
    }
}

async fn fetch(
    shared: &Shared,
    agent: &str,
    mut send: SendStream,
    request: FetchRequest,
) -> Result<(), TransferError> {
    let digest = Digest(request.digest);
    tracing::Span::current().record("digest", digest.short());
    let allowed = match shared.desired.get(agent) {
        Ok(desired) => desired.is_some_and(|d| d.may_fetch(&digest)),
        Err(e) => {
            warn!(agent, error = %e, "cannot read the agent's desired state");
            false
        }
    };
    if !allowed {
        warn!(agent, %digest, "fetch refused: the artifact is not in the agent's desired state");
        let reason = format!("artifact {digest} is not in this agent's desired state");
        write_frame(&mut send, &FetchResponse::Refused { reason }, 1024).await?;
        let _ = send.finish();
        return Ok(());
    }
    let artifacts = &shared.artifacts;
    // Only complete, verified artifacts are under their digest (uploads are assembled apart).
    let size = match artifacts.stored_size(&digest).await {
        Ok(Some(size)) => size,
        Ok(None) => {
            write_frame(&mut send, &FetchResponse::NotFound, 1024).await?;
            let _ = send.finish();
            return Ok(());
        }
        Err(e) => {
            warn!(%digest, error = %e, "cannot reach the artifact store");
            let reason = "the control plane cannot reach its artifact store; try again".to_owned();
            write_frame(&mut send, &FetchResponse::Refused { reason }, 1024).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    if request.offset > size {
        let reason = format!("offset {} is past the end ({size} bytes)", request.offset);
        write_frame(&mut send, &FetchResponse::Refused { reason }, 1024).await?;
        let _ = send.finish();
        return Ok(());
    }
    write_frame(&mut send, &FetchResponse::Sending { size }, 1024).await?;
    let mut sent = request.offset;
    let started = std::time::Instant::now();
    while sent < size {
        let end = sent.saturating_add(CHUNK as u64).min(size);
        let bytes = match artifacts.read(&digest, sent..end).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // The agent resumes from what it has, here or at another replica.
                warn!(%digest, error = %e, "artifact read failed mid-transfer");
                break;
            }
        };
        if bytes.is_empty() {
            warn!(%digest, "artifact shorter than when it was stored");
            break;
        }
        send.write_all(&bytes).await?;
        sent += bytes.len() as u64;
    }
    let _ = send.finish();
    debug!(%digest, from = request.offset, bytes = sent - request.offset, elapsed_ms = started.elapsed().as_millis() as u64, "artifact sent");
    Ok(())
}
