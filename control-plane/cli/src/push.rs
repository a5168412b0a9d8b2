//! `ternctl push FILE`: publishes `FILE.release` and uploads FILE in chunks, with a progress
//! bar, resuming from what the control plane already holds.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tern_proto::api::{ReleaseView, UploadProgress};
use tern_transport::https::{HttpsClient, HttpsError};

use crate::keys;

/// Bytes per upload request.
pub const CHUNK: usize = 8 << 20;
/// Attempts per chunk before giving up (the next `push` resumes anyway).
const ATTEMPTS: u32 = 5;

/// Pushes `file` and its release; returns the release as stored.
pub async fn push(api: &HttpsClient, file: &Path, quiet: bool) -> anyhow::Result<ReleaseView> {
    let release_file = keys::release_path(file);
    let signed = keys::read_release(&release_file).with_context(|| {
        format!(
            "no release beside {} (sign it first with `ternctl sign`)",
            file.display()
        )
    })?;
    let (size, digest) = keys::hash(file)?;
    let release = &signed.signed;
    if (size, digest) != (release.size, release.digest) {
        bail!(
            "{} does not match {} (the file changed after signing?)",
            file.display(),
            release_file.display()
        );
    }
    let view: ReleaseView = api
        .post("/v1/releases", &signed)
        .await
        .with_context(|| format!("failed to publish {}", release.reference()))?;
    let path = format!("/v1/artifacts/{}", digest.hex());
    let mut progress: UploadProgress =
        api.get(&path).await.context("failed to ask for progress")?;

    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(size)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(release.reference());
    bar.set_position(progress.received);
    if progress.received > 0 && !progress.complete && !quiet {
        // Also when stderr is no terminal (the bar then draws nothing): logs should say it.
        bar.suspend(|| eprintln!("resuming at byte {} of {size}", progress.received));
    }

    let mut source =
        std::fs::File::open(file).with_context(|| format!("failed to open {}", file.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut failures = 0;
    while !progress.complete {
        let offset = progress.received;
        source.seek(SeekFrom::Start(offset))?;
        let want = (size - offset).min(CHUNK as u64) as usize;
        source
            .read_exact(&mut buf[..want])
            .with_context(|| format!("failed to read {}", file.display()))?;
        let answer = api
            .send(
                hyper::Method::PUT,
                &format!("{path}?offset={offset}"),
                Some(buf[..want].to_vec()),
            )
            .await;
        match answer {
            Ok(body) => {
                progress = serde_json::from_slice(&body).context("invalid upload answer")?;
                failures = 0;
            }
            // Another push moved the upload on, or ours was applied before the answer was lost:
            // ask where it stands and go on from there.
            Err(HttpsError::Status { status: 409, .. }) => {
                progress = api.get(&path).await.context("failed to ask for progress")?;
            }
            Err(e @ HttpsError::Status { .. }) => {
                bar.abandon();
                return Err(e).context("the control plane refused the upload");
            }
            Err(e) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    bar.abandon();
                    return Err(e).context(
                        "upload interrupted; run the same `ternctl push` again to resume",
                    );
                }
                bar.suspend(|| eprintln!("upload interrupted ({e}); retrying"));
                tokio::time::sleep(Duration::from_millis(200 << failures)).await;
                if let Ok(p) = api.get::<UploadProgress>(&path).await {
                    progress = p;
                }
            }
        }
        bar.set_position(progress.received);
    }
    bar.finish();
    Ok(ReleaseView {
        uploaded: progress.received,
        complete: true,
        ..view
    })
}
