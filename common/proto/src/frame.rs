//! Length-prefixed framing: a 4-byte big-endian length, then that many bytes of postcard.
//!
//! A peer controls the length field, so it is checked against a maximum before anything is
//! allocated, and a frame must decode to exactly one message with no bytes left over.

use serde::{Serialize, de::DeserializeOwned};

/// Default maximum payload size of one frame (1 MiB). Control messages are far smaller; artifact
/// chunks are sized below it.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame's length exceeds the maximum; the stream cannot be trusted further.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[source] postcard::Error),
    /// The payload decoded to a message but bytes were left over.
    #[error("malformed frame: {extra} trailing bytes after the message")]
    TrailingBytes { extra: usize },
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[source] postcard::Error),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Reading or writing the stream failed.
    #[error("stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame (prefix and payload).
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(msg, out).map_err(FrameError::Encode)?;
    let prefix = header(out.len() - HEADER_LEN, max)?;
    out[..HEADER_LEN].copy_from_slice(&prefix);
    Ok(out)
}

/// The length prefix of a frame whose payload (already encoded) is `len` bytes.
pub fn header(len: usize, max: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    Ok(prefix.to_be_bytes())
}

/// Reads the payload length from a frame header, refusing lengths over `max`.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one message that must fill `payload` exactly.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { extra: rest.len() });
    }
    Ok(msg)
}

/// Decodes the first frame in `buf`. Returns `Ok(None)` while the frame is incomplete, or the
/// message and the number of bytes it took.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = payload_len(*header, max)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AgentMessage, Heartbeat};

    #[test]
    fn refuses_length_over_maximum_before_reading_payload() {
        let header = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        let err = decode_frame::<AgentMessage>(&header, MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == MAX_FRAME_LEN + 1));
        assert!(err.to_string().contains("exceeds the maximum"));
    }

    #[test]
    fn refuses_to_encode_message_over_maximum() {
        let err = encode_frame(&vec![0u8; 64], 16).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 16, .. }));
    }

    #[test]
    fn waits_for_incomplete_frame() {
        let frame = encode_frame(
            &AgentMessage::Heartbeat(Heartbeat { seq: 300 }),
            MAX_FRAME_LEN,
        )
        .expect("encodes");
        for cut in 0..frame.len() {
            let got = decode_frame::<AgentMessage>(&frame[..cut], MAX_FRAME_LEN).expect("no error");
            assert!(got.is_none(), "decoded from {cut} of {} bytes", frame.len());
        }
        let (msg, used) = decode_frame::<AgentMessage>(&frame, MAX_FRAME_LEN)
            .expect("decodes")
            .expect("complete");
        assert_eq!(msg, AgentMessage::Heartbeat(Heartbeat { seq: 300 }));
        assert_eq!(used, frame.len());
    }

    #[test]
    fn refuses_trailing_bytes_inside_frame() {
        let mut frame =
            encode_frame(&AgentMessage::Heartbeat(Heartbeat { seq: 1 }), 1024).expect("encodes");
        frame.push(0);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        let err = decode_frame::<AgentMessage>(&frame, 1024).unwrap_err();
        assert!(matches!(err, FrameError::TrailingBytes { extra: 1 }));
    }
}
