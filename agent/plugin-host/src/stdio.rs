//! Guest stdout and stderr: each complete line goes to `tracing` under the step's name; the last
//! few stderr lines are kept so that a panic's message can be reported with the trap.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Longest line kept; longer output is cut into lines of this size.
const MAX_LINE: usize = 4096;
/// Recent lines kept for error reports.
const RECENT_LINES: usize = 16;
/// Bytes accepted per write call.
const WRITE_PERMIT: usize = 64 * 1024;
/// Bytes of one instance's stream that reach the log; the rest is dropped (once said so).
const MAX_LOGGED_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
    recent: VecDeque<String>,
    logged_bytes: usize,
}

/// One guest output stream of one instance.
#[derive(Debug, Clone)]
pub(crate) struct GuestOutput {
    step: Arc<str>,
    stream: Stream,
    lines: Arc<Mutex<Lines>>,
}

impl GuestOutput {
    pub fn stdout(step: Arc<str>) -> Self {
        Self {
            step,
            stream: Stream::Stdout,
            lines: Arc::default(),
        }
    }

    pub fn stderr(step: Arc<str>) -> Self {
        Self {
            step,
            stream: Stream::Stderr,
            lines: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, line: &[u8], lines: &mut Lines) {
        // One guest line is one log line: no control characters that could forge more.
        let text: String = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let before = lines.logged_bytes;
        lines.logged_bytes = before.saturating_add(line.len());
        if lines.logged_bytes <= MAX_LOGGED_BYTES {
            match self.stream {
                Stream::Stdout => tracing::info!(step = %self.step, stream = "stdout", "{text}"),
                Stream::Stderr => tracing::warn!(step = %self.step, stream = "stderr", "{text}"),
            }
        } else if before <= MAX_LOGGED_BYTES {
            tracing::warn!(step = %self.step, "plugin output past {MAX_LOGGED_BYTES} bytes is not logged");
        }
        if lines.recent.len() == RECENT_LINES {
            lines.recent.pop_front();
        }
        lines.recent.push_back(text);
    }

    fn write_bytes(&self, mut bytes: &[u8]) {
        let mut lines = self.lock();
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut lines.partial);
            line.extend_from_slice(&bytes[..nl]);
            self.emit(&line, &mut lines);
            bytes = &bytes[nl + 1..];
        }
        lines.partial.extend_from_slice(bytes);
        while lines.partial.len() >= MAX_LINE {
            let rest = lines.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut lines.partial, rest);
            self.emit(&line, &mut lines);
        }
    }

    /// The message of a Rust panic printed to this stream, if any: the text after
    /// "panicked at <location>:", up to the "note:" line.
    pub fn panic_message(&self) -> Option<String> {
        let mut lines = self.lock();
        if !lines.partial.is_empty() {
            let rest = std::mem::take(&mut lines.partial);
            self.emit(&rest, &mut lines);
        }
        let start = lines
            .recent
            .iter()
            .rposition(|l| l.contains("panicked at"))?;
        let message: Vec<&str> = lines
            .recent
            .iter()
            .skip(start + 1)
            .take_while(|l| !l.starts_with("note:"))
            .map(String::as_str)
            .collect();
        Some(if message.is_empty() {
            lines.recent[start].clone()
        } else {
            message.join("\n")
        })
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > WRITE_PERMIT {
            return Err(StreamError::trap("write larger than the permitted size"));
        }
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_a_rust_panic_message() {
        let out = GuestOutput::stderr("s".into());
        out.write_bytes(
            b"starting\nthread '<unnamed>' panicked at src/lib.rs:9:5:\nboom: bad pixel\n",
        );
        out.write_bytes(b"note: run with `RUST_BACKTRACE=1`\n");
        assert_eq!(out.panic_message().as_deref(), Some("boom: bad pixel"));
    }

    #[test]
    fn cuts_endless_lines() {
        let out = GuestOutput::stdout("s".into());
        out.write_bytes(&vec![b'x'; 3 * MAX_LINE + 5]);
        let lines = out.lock();
        assert_eq!(lines.recent.len(), 3);
        assert_eq!(lines.partial.len(), 5);
    }
}
