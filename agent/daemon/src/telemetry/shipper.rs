//! Sends buffered batches to the control plane on a stream of their own, oldest first, a window
//! at a time, and deletes them when the control plane acknowledges them. A broken connection
//! loses nothing: the next one starts again from the oldest batch not acknowledged (the control
//! plane skips what it already stored).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::MAX_FRAME_LEN;
use tern_proto::frame::{self, FrameError};
use tern_proto::io::{read_frame, write_frame};
use tern_proto::message::{StreamOpen, TelemetryAck};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info_span};

use super::buffer::TelemetryBuffer;
use crate::link::stopped;
use crate::store::StoreError;

/// Batches sent and not acknowledged yet, at most.
pub const WINDOW: usize = 64;
/// Pause before a new stream on the same connection after one failed.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("cannot open the telemetry stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("telemetry stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the control plane acknowledged batch {0}, which was never sent")]
    BadAck(u64),
    #[error("the control plane closed the telemetry stream")]
    Closed,
}

/// Ships batches whenever there is a connection, until `shutdown` turns true.
pub async fn ship(
    buffer: Arc<TelemetryBuffer>,
    mut connection: watch::Receiver<Option<quinn::Connection>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            conn = connection.wait_for(Option::is_some) => match conn {
                Ok(conn) => conn.clone(),
                Err(_) => return,
            },
            _ = stopped(&mut shutdown) => return,
        };
        let Some(conn) = conn else { continue };
        let result = tokio::select! {
            result = session(&buffer, &conn).instrument(info_span!("telemetry")) => result,
            _ = stopped(&mut shutdown) => return,
        };
        if let Err(e) = result {
            debug!(error = %e, "telemetry stream ended");
        }
        // The same connection gets a new stream after a pause; a new connection at once.
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = connection.changed() => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

async fn session(buffer: &TelemetryBuffer, conn: &quinn::Connection) -> Result<(), ShipError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &StreamOpen::Telemetry, MAX_FRAME_LEN).await?;
    // Reading a frame is not cancel-safe, so a task owns the receive side.
    let (acks_tx, mut acks) = mpsc::channel::<Result<Option<TelemetryAck>, FrameError>>(WINDOW);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut recv, 64).await;
            let end = !matches!(frame, Ok(Some(_)));
            if acks_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let result = async {
        let mut in_flight = VecDeque::<u64>::new();
        let mut sent_up_to = 0u64;
        loop {
            let added = buffer.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if in_flight.len() < WINDOW {
                for (seq, bytes) in buffer.after(sent_up_to, WINDOW - in_flight.len())? {
                    // Marked first: from the first byte on the wire it may arrive.
                    buffer.shipped(seq)?;
                    // Stored encoded: only the length prefix is added.
                    send.write_all(&frame::header(bytes.len(), MAX_FRAME_LEN)?)
                        .await?;
                    send.write_all(&bytes).await?;
                    in_flight.push_back(seq);
                    sent_up_to = seq;
                }
            }
            tokio::select! {
                ack = acks.recv() => match ack {
                    Some(Ok(Some(TelemetryAck { up_to }))) => {
                        if up_to > sent_up_to {
                            return Err(ShipError::BadAck(up_to));
                        }
                        buffer.ack(up_to)?;
                        while in_flight.front().is_some_and(|seq| *seq <= up_to) {
                            in_flight.pop_front();
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(None)) | None => return Err(ShipError::Closed),
                },
                _ = &mut added, if in_flight.len() < WINDOW => {}
            }
        }
    }
    .await;
    reader.abort();
    let _ = send.finish();
    result
}
