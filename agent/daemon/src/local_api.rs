//! The agent's local HTTP API for applications on the same host (design section 7).
//!
//! Today it answers health probes and describes the agent; the inference endpoints arrive with
//! deployments.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::link::LinkState;

/// `GET /v1/agent`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub control_plane: String,
    /// Whether the link to the control plane is up right now.
    pub connected: bool,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct ApiState {
    info: AgentInfo,
    link: watch::Receiver<LinkState>,
}

/// The router of the local API.
pub fn router(info: AgentInfo, link: watch::Receiver<LinkState>) -> Router {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        // No pipeline to wait for yet: a running agent is ready. Serving keeps going while the
        // control plane is away, so readiness does not depend on the link.
        .route(
            "/v2/health/ready",
            get(|| async { Json(serde_json::json!({ "ready": true })) }),
        )
        .route("/v1/agent", get(describe))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "error": "no such endpoint" })),
            )
        })
        .with_state(Arc::new(ApiState { info, link }))
}

async fn describe(State(state): State<Arc<ApiState>>) -> Json<AgentInfo> {
    let link = state.link.borrow().clone();
    let mut info = state.info.clone();
    info.connected = link.connected;
    info.last_error = link.last_error;
    Json(info)
}

/// Serves the local API until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}
