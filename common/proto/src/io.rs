//! Frames over async streams (QUIC streams, TCP, in-memory pipes).

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameError, HEADER_LEN};

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = frame::encode_frame(msg, max)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = r.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = frame::payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    frame::decode_payload(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AgentMessage, Heartbeat};

    #[tokio::test]
    async fn frames_cross_a_stream_and_eof_ends_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for seq in 0..10 {
                let msg = AgentMessage::Heartbeat(Heartbeat { seq });
                write_frame(&mut a, &msg, 1024).await.expect("writes");
            }
        });
        for seq in 0..10 {
            let got: Option<AgentMessage> = read_frame(&mut b, 1024).await.expect("reads");
            assert_eq!(got, Some(AgentMessage::Heartbeat(Heartbeat { seq })));
        }
        writer.await.expect("writer finished");
        let end: Option<AgentMessage> = read_frame(&mut b, 1024).await.expect("clean end");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn stream_ending_inside_frame_is_truncated() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1, 2]).await.expect("writes");
        drop(a);
        let err = read_frame::<_, AgentMessage>(&mut b, 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }
}
