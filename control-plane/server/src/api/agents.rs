//! Admin API for agents' lifecycle and enrollment tokens: revoke, decommission, relabel, list
//! and withdraw tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tern_proto::api::{AgentView, LabelRequest, TokenView};

use super::{HttpError, agent_view, blocking};
use crate::registry::{AgentChangeError, TokenRecord, TokenWithdrawError};
use crate::state::Shared;

impl From<AgentChangeError> for HttpError {
    fn from(e: AgentChangeError) -> Self {
        let status = match &e {
            AgentChangeError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentChangeError::Revoked(_) => StatusCode::CONFLICT,
            AgentChangeError::Labels(_) => StatusCode::BAD_REQUEST,
            AgentChangeError::Registry(_) => return super::internal(e),
        };
        HttpError(status, e.to_string())
    }
}

impl From<crate::registry::RegistryError> for HttpError {
    fn from(e: crate::registry::RegistryError) -> Self {
        super::internal(e)
    }
}

impl From<TokenWithdrawError> for HttpError {
    fn from(e: TokenWithdrawError) -> Self {
        let status = match &e {
            TokenWithdrawError::NotFound(_) => StatusCode::NOT_FOUND,
            TokenWithdrawError::Used { .. } => StatusCode::CONFLICT,
            TokenWithdrawError::Registry(_) => return super::internal(e),
        };
        HttpError(status, e.to_string())
    }
}

/// `POST /v1/agents/{name}/revoke`.
pub(super) async fn revoke(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, HttpError> {
    let now = tern_clock::unix_millis_now();
    blocking(move || {
        let record = crate::lifecycle::revoke(&shared.lifecycle_context(), &name, now)?;
        Ok::<_, AgentChangeError>(Json(agent_view(&shared, record, now)))
    })
    .await
}

/// `DELETE /v1/agents/{name}`: decommission. Answers with the agent as it was.
pub(super) async fn decommission(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, HttpError> {
    let now = tern_clock::unix_millis_now();
    blocking(move || {
        let view = shared
            .registry
            .agent_by_name(&name)?
            .map(|record| agent_view(&shared, record, now));
        crate::lifecycle::decommission(&shared.lifecycle_context(), &name, now)?;
        view.map(Json)
            .ok_or_else(|| AgentChangeError::NotFound(name.clone()))
    })
    .await
}

/// `POST /v1/agents/{name}/labels`.
pub(super) async fn relabel(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Result<Json<LabelRequest>, JsonRejection>,
) -> Result<Json<AgentView>, HttpError> {
    let Json(request) = body?;
    let now = tern_clock::unix_millis_now();
    blocking(move || {
        let current = shared
            .registry
            .agent_by_name(&name)?
            .ok_or_else(|| AgentChangeError::NotFound(name.clone()))?;
        if !request.overwrite
            && let Some((key, old)) = request.set.iter().find_map(|(k, v)| {
                current
                    .labels
                    .get(k)
                    .filter(|old| *old != v)
                    .map(|old| (k, old))
            })
        {
            return Err(HttpError(
                StatusCode::CONFLICT,
                format!("agent {name} already has label {key}={old}; use --overwrite to change it"),
            ));
        }
        let record = crate::lifecycle::relabel(
            &shared.lifecycle_context(),
            &name,
            &request.set,
            &request.remove,
        )?;
        Ok(Json(agent_view(&shared, record, now)))
    })
    .await
}

fn token_view(record: TokenRecord, now_ms: u64) -> TokenView {
    TokenView {
        expired: record.expires_ms <= now_ms,
        id: record.id,
        labels: record.labels,
        created: tern_clock::rfc3339(record.created_ms),
        expires: tern_clock::rfc3339(record.expires_ms),
    }
}

/// `GET /v1/tokens`: the tokens nobody redeemed yet.
pub(super) async fn tokens(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<TokenView>>, HttpError> {
    let now = tern_clock::unix_millis_now();
    blocking(move || shared.registry.unredeemed_tokens())
        .await
        .map(|list| Json(list.into_iter().map(|t| token_view(t, now)).collect()))
}

/// `DELETE /v1/tokens/{id}`: withdraws an unredeemed token.
pub(super) async fn withdraw_token(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, HttpError> {
    let now = tern_clock::unix_millis_now();
    blocking(move || shared.registry.withdraw_token(&id))
        .await
        .map(|t| Json(token_view(t, now)))
}
