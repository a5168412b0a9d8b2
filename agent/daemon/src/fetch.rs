//! Downloading an artifact from the control plane: one QUIC stream per artifact, resuming from
//! the bytes already downloaded, reading no further than the release's size, and keeping the
//! file only if its digest matches the signed release.

use std::io::Write;

use tern_proto::io::{read_frame, write_frame};
use tern_proto::message::{FetchRequest, FetchResponse, StreamOpen};
use tern_proto::release::{Digest, Hasher, Release, ReleaseError};
use tracing::{debug, info};

use crate::store::AgentStore;

/// Bytes read from the stream at a time.
const CHUNK: usize = 1 << 20;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connection to the control plane lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("transfer stream failed: {0}")]
    Stream(String),
    #[error("the control plane does not have artifact {0}")]
    NotFound(Digest),
    #[error("the control plane refused the transfer: {0}")]
    Refused(String),
    #[error("the control plane offers {offered} bytes; the release says {expected}")]
    SizeMismatch { offered: u64, expected: u64 },
    /// The bytes do not match the signed release: never retried with the same bytes.
    #[error(transparent)]
    Verification(#[from] ReleaseError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "not enough disk for {needed} more bytes: {free} bytes free, and the agent keeps \
         {keep} free (min-free-disk-bytes)"
    )]
    NoSpace { needed: u64, free: u64, keep: u64 },
}

impl FetchError {
    /// Whether trying again later may succeed (the link broke, not the content).
    pub fn is_transient(&self) -> bool {
        matches!(self, FetchError::Connection(_) | FetchError::Stream(_))
    }
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Downloads `release`'s artifact into the store, leaving at least `keep_free` bytes free on
/// the disk. Returns the bytes transferred this time. A download that fails for want of space
/// deletes what it wrote: a partial file must not keep the disk full.
pub async fn fetch(
    conn: &quinn::Connection,
    store: &AgentStore,
    release: &Release,
    keep_free: u64,
) -> Result<u64, FetchError> {
    let digest = release.digest;
    let partial = store.partial_path(&digest);
    let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if have > release.size {
        // Longer than the release: never trust it.
        std::fs::remove_file(&partial).map_err(io(&partial))?;
        have = 0;
    }
    let needed = release.size - have;
    if let Some(dir) = partial.parent()
        && let Ok(free) = tern_transport::storage::free_space(dir)
        && free < needed.saturating_add(keep_free)
    {
        let _ = std::fs::remove_file(&partial);
        return Err(FetchError::NoSpace {
            needed: release.size,
            free: free + have,
            keep: keep_free,
        });
    }
    let result = download(conn, release, &partial, have).await;
    if let Err(FetchError::Io { source, .. }) = &result
        && tern_transport::storage::is_disk_full(source)
    {
        // Resuming would need the space that is missing: give the disk back.
        let _ = std::fs::remove_file(&partial);
    }
    let received = result?;
    let done = store.artifact_path(&digest);
    std::fs::rename(&partial, &done).map_err(io(&done))?;
    // The rename itself must survive a power cut, not only the bytes.
    if let Some(dir) = done.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    debug!(%digest, bytes = received, "artifact verified and stored");
    Ok(received)
}

/// Streams the artifact into `partial` from byte `have`, and checks the whole file's digest.
async fn download(
    conn: &quinn::Connection,
    release: &Release,
    partial: &std::path::Path,
    have: u64,
) -> Result<u64, FetchError> {
    let digest = release.digest;
    let partial = partial.to_owned();
    let stream = |e: &dyn std::fmt::Display| FetchError::Stream(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await?;
    let request = FetchRequest {
        digest: digest.0,
        offset: have,
    };
    write_frame(&mut send, &StreamOpen::Fetch(request), 1024)
        .await
        .map_err(|e| stream(&e))?;
    let _ = send.finish();
    let response = read_frame::<_, FetchResponse>(&mut recv, 1024)
        .await
        .map_err(|e| stream(&e))?
        .ok_or_else(|| FetchError::Stream("stream closed before an answer".into()))?;
    match response {
        FetchResponse::Sending { size } if size == release.size => {}
        FetchResponse::Sending { size } => {
            return Err(FetchError::SizeMismatch {
                offered: size,
                expected: release.size,
            });
        }
        FetchResponse::NotFound => return Err(FetchError::NotFound(digest)),
        FetchResponse::Refused { reason } => return Err(FetchError::Refused(reason)),
    }
    // The bytes kept from an earlier attempt are hashed once; the rest as they arrive.
    let mut hasher = Hasher::default();
    if have > 0 {
        info!(%digest, from = have, size = release.size, "resuming download");
        // Up to the whole artifact: on the blocking pool, off the threads serving requests.
        let kept = partial.clone();
        hasher = tokio::task::spawn_blocking(move || {
            let mut hasher = Hasher::default();
            let file = std::fs::File::open(&kept)?;
            hasher.update_from(std::io::Read::take(file, have))?;
            Ok::<_, std::io::Error>(hasher)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|hashed| hashed)
        .map_err(io(&partial))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(io(&partial))?;
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    let mut at = have;
    while at < release.size {
        // Never read past the size the release states: no endless data.
        let want = (release.size - at).min(CHUNK as u64) as usize;
        let n = match recv.read(&mut buf[..want]).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Err(FetchError::Stream(format!(
                    "stream ended at byte {at} of {}",
                    release.size
                )));
            }
            Err(e) => return Err(stream(&e)),
        };
        file.write_all(&buf[..n]).map_err(io(&partial))?;
        hasher.update(&buf[..n]);
        at += n as u64;
        received += n as u64;
    }
    file.sync_all().map_err(io(&partial))?;
    drop(file);
    let (length, actual) = hasher.finish();
    if let Err(e) = release.check_digest(length, actual) {
        // Bad bytes are discarded, so the next attempt starts from zero.
        let _ = std::fs::remove_file(&partial);
        return Err(e.into());
    }
    Ok(received)
}
