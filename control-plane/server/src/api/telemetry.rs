//! `GET /v1/top/agents`, `GET /v1/top/pipelines?window=SECONDS` and `GET /metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tern_proto::api::{AgentTop, PipelineTop};

use super::{HttpError, blocking, internal};
use crate::server::Shared;
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
        query::top_pipelines(&shared, window_ms, tern_transport::unix_millis_now())
    })
    .await?;
    Ok(Json(rows))
}

pub(crate) async fn top_agents(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<AgentTop>>, HttpError> {
    let rows =
        blocking(move || query::top_agents(&shared, tern_transport::unix_millis_now())).await?;
    Ok(Json(rows))
}

pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, HttpError> {
    let page = blocking(move || {
        crate::telemetry::exposition::render(&shared, tern_transport::unix_millis_now())
    })
    .await?;
    Ok((
        [(header::CONTENT_TYPE, tern_proto::prometheus::CONTENT_TYPE)],
        page,
    )
        .into_response())
}
