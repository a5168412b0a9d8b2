//! Releases, artifact uploads and the trust root on the admin API.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tern_proto::api::{ReleaseView, UploadProgress};
use tern_proto::release::{Clocks, Digest, SignedRelease};
use tern_proto::trust::{SignedTrustRoot, TrustUpdate};
use tracing::{info, warn};

use super::{HttpError, blocking, internal};
use crate::releases::{PutOutcome, ReleaseStoreError};
use crate::state::Shared;

/// Largest chunk one upload request may carry.
pub const MAX_UPLOAD_CHUNK: usize = 16 << 20;

impl From<ReleaseStoreError> for HttpError {
    fn from(e: ReleaseStoreError) -> Self {
        let status = match &e {
            ReleaseStoreError::Conflict { .. } | ReleaseStoreError::WrongOffset { .. } => {
                StatusCode::CONFLICT
            }
            ReleaseStoreError::UnknownArtifact(_) => StatusCode::NOT_FOUND,
            ReleaseStoreError::TooLong { .. }
            | ReleaseStoreError::DigestMismatch { .. }
            | ReleaseStoreError::Trust(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // The push resumes from what is stored once the store answers again.
            ReleaseStoreError::Artifacts(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => return internal(e),
        };
        HttpError(status, e.to_string())
    }
}

pub(crate) fn view(shared: &Shared, signed: &SignedRelease) -> ReleaseView {
    let release = &signed.signed;
    let progress = shared.releases.progress(&release.digest).ok();
    ReleaseView {
        name: release.name.clone(),
        kind: release.kind,
        version: release.version,
        digest: release.digest,
        size: release.size,
        created: tern_clock::rfc3339(release.created_ms),
        expires: release.expires_ms.map(tern_clock::rfc3339),
        signers: signed.signatures.iter().map(|s| s.key_id.clone()).collect(),
        uploaded: progress.map(|p| p.received).unwrap_or(0),
        complete: progress.is_some_and(|p| p.complete),
    }
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<ReleaseView>>, HttpError> {
    let views = blocking(move || {
        let all = shared.releases.releases()?;
        Ok::<_, ReleaseStoreError>(all.iter().map(|r| view(&shared, r)).collect())
    })
    .await?;
    Ok(Json(views))
}

/// `POST /v1/releases`: checks the release against the pinned trust root (the agents check
/// again; this only spares a publisher a rollout that every agent would refuse) and records it.
pub(crate) async fn publish(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<SignedRelease>, JsonRejection>,
) -> Result<(StatusCode, Json<ReleaseView>), HttpError> {
    let Json(signed) = body?;
    blocking(move || {
        let trust = shared.releases.trust_root()?.ok_or_else(|| {
            ReleaseStoreError::Trust(tern_proto::trust::TrustError::Invalid(
                "no trust root is pinned yet; run `ternctl trust init` first".into(),
            ))
        })?;
        let now = tern_clock::unix_millis_now();
        let clocks = Clocks {
            local_ms: now,
            control_plane_ms: now,
        };
        if let Err(e) = signed.check(&trust.signed, None, clocks) {
            return Ok::<_, ReleaseStoreError>(Err(HttpError(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
            )));
        }
        let outcome = shared.releases.put_release(&signed)?;
        let status = match outcome {
            PutOutcome::Created => {
                info!(release = %signed.signed.reference(), digest = %signed.signed.digest, "release published");
                StatusCode::CREATED
            }
            PutOutcome::Unchanged => StatusCode::OK,
        };
        Ok(Ok((status, Json(view(&shared, &signed)))))
    })
    .await?
}

fn digest(text: &str) -> Result<Digest, HttpError> {
    Digest::parse(text).ok_or_else(|| {
        HttpError(
            StatusCode::BAD_REQUEST,
            format!("`{text}` is not a SHA-256 digest"),
        )
    })
}

pub(crate) async fn progress(
    State(shared): State<Arc<Shared>>,
    Path(text): Path<String>,
) -> Result<Json<UploadProgress>, HttpError> {
    let digest = digest(&text)?;
    Ok(Json(
        blocking(move || shared.releases.progress(&digest)).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    offset: u64,
}

/// `PUT /v1/artifacts/{digest}?offset=N`: one chunk of an upload.
pub(crate) async fn upload(
    State(shared): State<Arc<Shared>>,
    Path(text): Path<String>,
    Query(query): Query<UploadQuery>,
    bytes: Bytes,
) -> Result<Json<UploadProgress>, HttpError> {
    let digest = digest(&text)?;
    let free = shared.storage.refresh_free_space();
    let keep = shared.config.min_free_bytes;
    if free.saturating_sub(bytes.len() as u64) < keep {
        warn!(%digest, free, keep, "artifact upload refused: the disk is nearly full");
        return Err(HttpError(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the control plane's disk has {free} bytes free and keeps {keep} free \
                 (min_free_bytes); free space, then push again to resume"
            ),
        ));
    }
    let storage = shared.storage.clone();
    let progress = blocking(move || shared.releases.append(&digest, query.offset, &bytes))
        .await
        .inspect_err(|e| {
            if e.0 == StatusCode::INTERNAL_SERVER_ERROR {
                storage.record_error();
            }
        })?;
    if progress.complete {
        info!(%digest, size = progress.size, "artifact stored");
    }
    Ok(Json(progress))
}

pub(crate) async fn trust_root(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<SignedTrustRoot>, HttpError> {
    blocking(move || shared.releases.trust_root())
        .await?
        .map(Json)
        .ok_or_else(|| {
            HttpError(
                StatusCode::NOT_FOUND,
                "no trust root is pinned yet; run `ternctl trust init`".into(),
            )
        })
}

/// `PUT /v1/trust-root`: the first trust root, or a rotation signed by the current root keys.
pub(crate) async fn set_trust_root(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<SignedTrustRoot>, JsonRejection>,
) -> Result<Json<SignedTrustRoot>, HttpError> {
    let Json(offered) = body?;
    let stored = offered.clone();
    let update = blocking(move || shared.releases.set_trust_root(&stored)).await?;
    if update == TrustUpdate::Accepted {
        info!(
            version = offered.signed.version,
            publishers = offered.signed.publishers.len(),
            threshold = offered.signed.threshold,
            "trust root pinned"
        );
    }
    Ok(Json(offered))
}
