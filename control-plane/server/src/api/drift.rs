//! Drift on the admin API: `GET|POST /v1/baselines`, `GET /v1/alerts`,
//! `GET /v1/drift/{pipeline}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tern_proto::api::{AlertView, BaselineCreate, BaselineView, PipelineDrift};
use tracing::info;

use super::{HttpError, blocking, internal};
use crate::drift::{self, AlertRecord, DEFAULT_BINS, DriftError, DriftStoreError};
use crate::state::Shared;

impl From<DriftError> for HttpError {
    fn from(e: DriftError) -> Self {
        let status = match &e {
            DriftError::BadRequest(_)
            | DriftError::Baseline(_)
            | DriftError::Store(
                DriftStoreError::Baseline(_)
                | DriftStoreError::InvalidName
                | DriftStoreError::Raced { .. },
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            DriftError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => return internal(e),
        };
        HttpError(status, e.to_string())
    }
}

/// Longest window a baseline may be built from: the telemetry kept at full resolution is
/// 6 h, coarser buckets keep the same counts, so any span within the retention works.
const MAX_WINDOW_SECONDS: u64 = 365 * 24 * 3600;

pub(crate) async fn create_baseline(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<BaselineCreate>, JsonRejection>,
) -> Result<Json<BaselineView>, HttpError> {
    let Json(request) = body?;
    let view = blocking(move || {
        let now = tern_clock::unix_millis_now();
        let (baseline, source) = match (request.baseline, &request.pipeline) {
            (Some(baseline), None) => (baseline, "file".to_owned()),
            (None, Some(pipeline)) => {
                let seconds = request.window_seconds.unwrap_or(3600);
                if !(1..=MAX_WINDOW_SECONDS).contains(&seconds) {
                    return Err(DriftError::BadRequest(format!(
                        "window_seconds must be 1 to {MAX_WINDOW_SECONDS}"
                    )));
                }
                let bins = request.bins.unwrap_or(DEFAULT_BINS);
                let baseline = drift::baseline_from_window(
                    &shared.drift_context(),
                    pipeline,
                    seconds * 1000,
                    bins,
                    now,
                )?;
                (baseline, format!("pipeline {pipeline}, last {seconds}s"))
            }
            _ => {
                return Err(DriftError::BadRequest(
                    "expected either `baseline` or `pipeline` (with `window_seconds`)".into(),
                ));
            }
        };
        shared
            .drift
            .add_baseline(&request.name, baseline, source, now)
            .map_err(DriftError::from)
    })
    .await?;
    info!(name = %view.name, version = view.version, features = view.features, "baseline created");
    Ok(Json(view))
}

pub(crate) async fn baselines(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<BaselineView>>, HttpError> {
    Ok(Json(
        blocking(move || shared.drift.baselines().map_err(DriftError::from)).await?,
    ))
}

pub(crate) async fn alerts(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<AlertView>>, HttpError> {
    let alerts = blocking(move || shared.drift.alerts().map_err(DriftError::from)).await?;
    Ok(Json(alerts.into_iter().map(alert_view).collect()))
}

pub(crate) async fn pipeline_drift(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<PipelineDrift>, HttpError> {
    let drift = blocking(move || {
        drift::pipeline_drift(
            &shared.drift_context(),
            &name,
            tern_clock::unix_millis_now(),
        )
    })
    .await?;
    Ok(Json(drift))
}

/// An alert as the API shows it.
fn alert_view(alert: AlertRecord) -> AlertView {
    AlertView {
        pipeline: alert.pipeline,
        revision: alert.revision,
        scope: alert.scope,
        feature: alert.feature,
        psi: alert.psi,
        threshold: alert.threshold,
        state: alert.state.as_str().to_owned(),
        since_ms: alert.since_ms,
        updated_ms: alert.updated_ms,
        resolved_ms: alert.resolved_ms,
    }
}
