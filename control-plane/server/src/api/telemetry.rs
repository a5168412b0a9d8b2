//! `GET /v1/top/agents`, `GET /v1/top/pipelines?window=SECONDS` and `GET /metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tern_proto::api::{AgentTop, ExperimentView, PipelineSeries, PipelineTop};

use super::{HttpError, blocking, internal};
use crate::state::Shared;
use crate::telemetry::query::{self, QueryError};

impl From<QueryError> for HttpError {
    fn from(e: QueryError) -> Self {
        internal(e)
    }
}

/// Query of `top pipelines`.
#[derive(Debug, Deserialize)]
pub(crate) struct WindowQuery {
    /// Window length in seconds; without it, since each pipeline was applied.
    window: Option<u64>,
}

pub(crate) async fn top_pipelines(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<WindowQuery>,
) -> Result<Json<Vec<PipelineTop>>, HttpError> {
    if query.window == Some(0) {
        return Err(HttpError(
            StatusCode::BAD_REQUEST,
            "window must be at least one second".into(),
        ));
    }
    let window_ms = query.window.map(|s| s.saturating_mul(1000));
    let rows = blocking(move || {
        query::top_pipelines(
            &shared.query_context(),
            window_ms,
            tern_clock::unix_millis_now(),
        )
    })
    .await?;
    Ok(Json(rows))
}

pub(crate) async fn top_agents(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<AgentTop>>, HttpError> {
    let rows =
        blocking(move || query::top_agents(&shared.query_context(), tern_clock::unix_millis_now()))
            .await?;
    Ok(Json(rows))
}

pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, HttpError> {
    let page = blocking(move || {
        crate::telemetry::exposition::render(
            &shared.exposition_context(),
            tern_clock::unix_millis_now(),
        )
    })
    .await?;
    Ok((
        [(header::CONTENT_TYPE, tern_proto::prometheus::CONTENT_TYPE)],
        page,
    )
        .into_response())
}

/// `GET /v1/experiments/{deployment}?window=SECONDS`.
pub(crate) async fn experiment(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(deployment): axum::extract::Path<String>,
    Query(query): Query<WindowQuery>,
) -> Result<Json<ExperimentView>, HttpError> {
    let window_ms = query.window.map(|s| s.max(1).saturating_mul(1000));
    let name = deployment.clone();
    let view = blocking(move || {
        query::experiment(
            &shared.query_context(),
            &name,
            window_ms,
            tern_clock::unix_millis_now(),
        )
    })
    .await?;
    view.map(Json).ok_or_else(|| {
        HttpError(
            StatusCode::NOT_FOUND,
            format!("deployment `{deployment}` does not exist or has no `variants`"),
        )
    })
}

/// Query of a series: its length and step, in seconds.
#[derive(Debug, Deserialize)]
pub(crate) struct SeriesQuery {
    window: Option<u64>,
    step: Option<u64>,
}

/// Most points a series answer holds.
const MAX_POINTS: u64 = 2_000;

/// `GET /v1/series/pipelines/{name}?window=SECONDS&step=SECONDS` (default: the last hour in
/// one-minute steps).
pub(crate) async fn pipeline_series(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(query): Query<SeriesQuery>,
) -> Result<Json<PipelineSeries>, HttpError> {
    let window = query.window.unwrap_or(3600).clamp(1, 400 * 24 * 3600);
    let step = query.step.unwrap_or(60).clamp(10, 400 * 24 * 3600);
    if window / step > MAX_POINTS {
        return Err(HttpError(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_POINTS} steps per window"),
        ));
    }
    let series = blocking(move || {
        query::pipeline_series(
            &shared.query_context(),
            &name,
            window.saturating_mul(1000),
            step * 1000,
            tern_clock::unix_millis_now(),
        )
    })
    .await?;
    Ok(Json(series))
}
