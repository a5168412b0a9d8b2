//! HTTPS APIs: the admin API (bearer-authenticated, for `ternctl`) and the enrollment API (on the
//! agents' address, authenticated by the token in the body).

mod agents;
mod dashboard;
mod deployments;
mod drift;
mod releases;
mod replicas;
mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tern_proto::api::{AgentView, ApiError, EnrollRequest, TokenRequest, TokenResponse};
use tern_transport::PkiError;
use tracing::{Instrument, info_span, warn};

use crate::credentials::Access;
use crate::enroll::EnrollError;
use crate::registry::{AgentRecord, RedeemError};
use crate::state::Shared;

/// Longest token lifetime `POST /v1/tokens` accepts (30 days).
pub const MAX_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// An error answer: a status and `{"error": ...}`.
#[derive(Debug)]
pub struct HttpError(pub StatusCode, pub String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<JsonRejection> for HttpError {
    fn from(r: JsonRejection) -> Self {
        HttpError(StatusCode::BAD_REQUEST, r.body_text())
    }
}

/// How the enrollment API answers a refused enrollment.
impl From<EnrollError> for HttpError {
    fn from(e: EnrollError) -> Self {
        let status = match &e {
            EnrollError::Token(_) | EnrollError::WrongControlPlane => StatusCode::UNAUTHORIZED,
            EnrollError::Redeem(RedeemError::UnknownToken) => StatusCode::UNAUTHORIZED,
            EnrollError::Redeem(RedeemError::Used | RedeemError::Expired) => StatusCode::FORBIDDEN,
            EnrollError::Redeem(RedeemError::NameTaken(_)) => StatusCode::CONFLICT,
            EnrollError::Redeem(RedeemError::RevokedKey) => StatusCode::FORBIDDEN,
            EnrollError::Redeem(RedeemError::Registry(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            EnrollError::Redeem(RedeemError::Labels(_)) => StatusCode::BAD_REQUEST,
            EnrollError::Csr(PkiError::InvalidCsr(_)) => StatusCode::BAD_REQUEST,
            EnrollError::Csr(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EnrollError::InvalidName(_) | EnrollError::Labels(_) => StatusCode::BAD_REQUEST,
        };
        HttpError(status, e.to_string())
    }
}

/// What a request with `method` does, for the credential's role to allow: `GET` and `HEAD`
/// read, everything else writes.
fn access(method: &Method) -> Access {
    if matches!(*method, Method::GET | Method::HEAD) {
        Access::Read
    } else {
        Access::Write
    }
}

/// Runs storage work on the blocking pool, off the threads that serve requests.
pub(crate) async fn blocking<T: Send + 'static, E: Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, HttpError>
where
    HttpError: From<E>,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(internal)?
        .map_err(HttpError::from)
}

pub(crate) fn internal(e: impl std::fmt::Display) -> HttpError {
    warn!(error = %e, "request failed");
    HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The admin API.
pub(crate) fn admin_router(shared: Arc<Shared>) -> Router {
    let protected = Router::new()
        .route("/v1/agents", get(list_agents))
        .route(
            "/v1/agents/{name}",
            get(get_agent).delete(agents::decommission),
        )
        .route("/v1/agents/{name}/revoke", post(agents::revoke))
        .route("/v1/agents/{name}/labels", post(agents::relabel))
        .route("/v1/tokens", post(create_token).get(agents::tokens))
        .route("/v1/tokens/{id}", delete(agents::withdraw_token))
        .route("/v1/replicas", get(replicas::list))
        .route("/v1/releases", get(releases::list).post(releases::publish))
        .route(
            "/v1/artifacts/{digest}",
            get(releases::progress).put(releases::upload).layer(
                axum::extract::DefaultBodyLimit::max(releases::MAX_UPLOAD_CHUNK),
            ),
        )
        .route("/v1/apply", post(deployments::apply))
        .route("/v1/delete", post(deployments::delete))
        .route("/v1/pipelines", get(deployments::pipelines))
        .route("/v1/deployments", get(deployments::deployments))
        .route("/v1/deployments/{name}", get(deployments::deployment))
        .route(
            "/v1/deployments/{name}/rollout/{command}",
            post(deployments::rollout),
        )
        .route("/v1/top/agents", get(telemetry::top_agents))
        .route("/v1/top/pipelines", get(telemetry::top_pipelines))
        .route("/metrics", get(telemetry::metrics))
        .route(
            "/v1/baselines",
            get(drift::baselines).post(drift::create_baseline),
        )
        .route("/v1/alerts", get(drift::alerts))
        .route("/v1/experiments/{deployment}", get(telemetry::experiment))
        .route(
            "/v1/series/pipelines/{name}",
            get(telemetry::pipeline_series),
        )
        .route("/v1/drift/{pipeline}", get(drift::pipeline_drift))
        .route(
            "/v1/trust-root",
            get(releases::trust_root).put(releases::set_trust_root),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            require_admin,
        ));
    // The dashboard's files hold no data; what they show comes through the routes above.
    Router::new()
        .route(
            "/livez",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route("/readyz", get(readyz))
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .merge(protected)
        .layer(middleware::from_fn(request_span))
        .with_state(shared)
}

/// `GET /readyz`, for supervisors and load balancers (no credential): 503 with the reason while
/// the control plane's storage fails.
async fn readyz(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match shared.not_ready() {
        None => Json(serde_json::json!({ "ready": true })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// The enrollment API, served on the agents' TCP address.
pub(crate) fn enrollment_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .fallback(not_found)
        .layer(middleware::from_fn(request_span))
        .with_state(shared)
}

async fn request_span(request: Request, next: Next) -> Response {
    let span = info_span!("request", method = %request.method(), path = %request.uri().path());
    next.run(request).instrument(span).await
}

async fn require_admin(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let now = tern_clock::unix_millis_now();
    match presented.map(|token| shared.credentials.role(token.trim(), now)) {
        Some(Some(role)) if role.allows(access(request.method())) => {
            // A change the store cannot take is refused before it starts: nothing half-made.
            if access(request.method()) == Access::Write
                && let Some(reason) = shared.store_health.as_ref().and_then(|s| s.not_ready())
            {
                return HttpError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the store (PostgreSQL) is unreachable, so nothing was changed; try again once GET /readyz is ready: {reason}"
                    ),
                )
                .into_response();
            }
            next.run(request).await
        }
        Some(Some(_)) => {
            HttpError(StatusCode::FORBIDDEN, "this credential is read-only".into()).into_response()
        }
        Some(None) => {
            HttpError(StatusCode::UNAUTHORIZED, "invalid admin credential".into()).into_response()
        }
        None => HttpError(
            StatusCode::UNAUTHORIZED,
            "missing admin credential (Authorization: Bearer)".into(),
        )
        .into_response(),
    }
}

async fn not_found() -> HttpError {
    HttpError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

/// An agent's record joined with its live presence (or, when another replica holds it, with
/// what its record says).
pub(crate) fn agent_view(shared: &Shared, record: AgentRecord, now_ms: u64) -> AgentView {
    let not_ready_after = shared.config.not_ready_after.as_millis() as u64;
    let status = (shared.replica).status(&shared.presence, &record, now_ms, not_ready_after);
    let here = (!shared.replica.held_elsewhere(&record))
        .then(|| shared.presence.seen(&record.id))
        .flatten();
    let (last_seen, address) = match here {
        Some(seen) => (
            seen.last_seen_ms.max(record.last_seen_ms),
            Some(seen.address.to_string()),
        ),
        None => (record.last_seen_ms, record.address.clone()),
    };
    let desired = shared.desired.get(&record.id).ok().flatten();
    let mut pipelines: Vec<tern_proto::api::AgentPipelineView> = desired
        .iter()
        .flat_map(|d| d.pipelines.iter())
        .map(|(name, (revision, _))| tern_proto::api::AgentPipelineView {
            name: name.clone(),
            desired: Some(*revision),
            serving: None,
            phase: None,
            message: String::new(),
        })
        .collect();
    for status in shared.reports.pipelines(&record.id) {
        let index = match pipelines.iter().position(|p| p.name == status.name) {
            Some(i) => i,
            None => {
                pipelines.push(tern_proto::api::AgentPipelineView {
                    name: status.name.clone(),
                    desired: None,
                    serving: None,
                    phase: None,
                    message: String::new(),
                });
                pipelines.len() - 1
            }
        };
        let view = &mut pipelines[index];
        view.serving = status.serving;
        view.phase = Some(status.phase.to_string());
        view.message = status.message;
    }
    let identity_problem = if let Some(at) = record.revoked_ms {
        Some(format!(
            "revoked at {}: its certificates are refused; `ternctl delete agent {}` forgets it",
            tern_clock::rfc3339(at),
            record.name
        ))
    } else if record.cert_expired(now_ms) {
        Some(format!(
            "its certificate expired at {}: it needs a new token (`ternctl token create`, then `tern-agent join --token ...` on its data dir)",
            tern_clock::rfc3339(record.cert_expires_ms.unwrap_or_default())
        ))
    } else {
        None
    };
    AgentView {
        certificate_expires: record.cert_expires_ms.map(tern_clock::rfc3339),
        revoked: record.revoked_ms.map(tern_clock::rfc3339),
        identity_problem,
        desired_generation: desired.map(|d| d.generation),
        applied_generation: shared.reports.applied_generation(&record.id),
        refused: shared.reports.refused(&record.id),
        warnings: shared.reports.warnings(&record.id),
        pipelines,
        gpus: record
            .capacity
            .gpus
            .iter()
            .map(|g| g.name.clone())
            .collect(),
        id: record.id,
        name: record.name,
        labels: record.labels,
        status,
        first_seen: tern_clock::rfc3339(record.first_seen_ms),
        last_seen: tern_clock::rfc3339(last_seen),
        version: record.version,
        capacity: record.capacity,
        address,
    }
}

async fn list_agents(State(shared): State<Arc<Shared>>) -> Result<Json<Vec<AgentView>>, HttpError> {
    let now = tern_clock::unix_millis_now();
    let records = shared.registry.agents().map_err(internal)?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| agent_view(&shared, r, now))
            .collect(),
    ))
}

async fn get_agent(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, HttpError> {
    let now = tern_clock::unix_millis_now();
    match shared.registry.agent_by_name(&name).map_err(internal)? {
        Some(record) => Ok(Json(agent_view(&shared, record, now))),
        None => Err(HttpError(
            StatusCode::NOT_FOUND,
            format!("no agent named `{name}`"),
        )),
    }
}

async fn create_token(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Json<TokenResponse>, HttpError> {
    let Json(request) = body?;
    tern_proto::labels::validate(&request.labels)
        .map_err(|e| HttpError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if request.ttl_seconds == 0 || request.ttl_seconds > MAX_TOKEN_TTL_SECONDS {
        return Err(HttpError(
            StatusCode::BAD_REQUEST,
            format!("ttl must be between 1 second and {MAX_TOKEN_TTL_SECONDS} seconds"),
        ));
    }
    let now = tern_clock::unix_millis_now();
    let (token, record) = tokio::task::spawn_blocking(move || {
        shared.registry.create_token(
            request.labels,
            request.ttl_seconds * 1000,
            shared.ca.sha256(),
            now,
        )
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(TokenResponse {
        token: token.to_string(),
        expires_at: tern_clock::rfc3339(record.expires_ms),
    }))
}

async fn enroll(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(request) = body?;
    let now = tern_clock::unix_millis_now();
    let name = request.name.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::enroll::enroll(&shared.enroll_context(), &request, Some(peer), now)
    })
    .await
    .map_err(internal)?;
    match result {
        Ok(response) => Ok((StatusCode::CREATED, Json(response)).into_response()),
        Err(e) => {
            warn!(agent = %name, %peer, error = %e, "enrollment refused");
            Err(HttpError::from(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_read() {
        assert_eq!(access(&Method::GET), Access::Read);
        assert_eq!(access(&Method::HEAD), Access::Read);
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(access(&method), Access::Write, "{method}");
        }
    }
}
