//! The agent's local HTTP API for applications on the same host (design section 7).
//!
//! - `POST /v1/pipelines/{name}/infer`: the body is the input (its `Content-Type` the media
//!   type); the answer is the final payload: a blob as itself, tensors as v2 JSON.
//! - The Open Inference Protocol (KServe v2), as Triton's and KServe's clients speak it
//!   ([`v2`]): health, server and model metadata, model readiness and inference, with the binary
//!   tensor data extension; a pipeline is a model, its serving revision the model's version.
//! - `GET /v1/agent`: who this agent is and whether its link is up.
//!
//! Requests run on the blocking pool, at most one per core at a time; up to [`MAX_WAITING`]
//! more wait, and beyond that the answer is 429. A pipeline that is deployed but not loaded yet
//! answers 503. Errors are `{"error": ...}` naming the step.
//!
//! A request whose `Host` is a name other than `localhost` is refused with 403: a web page
//! that rebinds its own name to 127.0.0.1 (DNS rebinding) cannot reach the API through the
//! browser, which sends the page's name.
//!
//! A request is admitted (or answered 429) before its body is read; connections are capped and
//! their heads and bodies have deadlines ([`connections`]); the API listens on TCP or on a Unix
//! socket ([`address`]).

pub mod address;
pub mod connections;
pub mod grpc;
mod server;
mod v2;

pub use address::{ApiAddress, ApiListener};
pub use connections::{ApiLimits, Connections};
pub use server::{LocalSocket, serve, serve_grpc};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tern_plugin_host::{Blob, Payload};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, info_span};

use crate::link::LinkState;
use crate::oip;
use crate::pipeline::StepError;
use crate::serving::{ServedPipeline, ServingTable};
use crate::telemetry::{TelemetryState, exposition};

/// Requests that may wait for a worker before new ones get 429.
pub const MAX_WAITING: usize = 64;
/// Largest request body.
pub const MAX_BODY: usize = 64 << 20;

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
    /// Pipeline → the revision serving it.
    pub pipelines: BTreeMap<String, u64>,
}

/// Bounds concurrent work: `workers` run, `MAX_WAITING` wait.
#[derive(Debug)]
struct Admission {
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct ApiState {
    info: AgentInfo,
    link: watch::Receiver<LinkState>,
    serving: Arc<ServingTable>,
    telemetry: Arc<TelemetryState>,
    admission: Admission,
    connections: Arc<Connections>,
    /// The gRPC form's connections: the same limits, a table of their own.
    grpc_connections: Arc<Connections>,
}

/// An error answer: a status and `{"error": ...}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// The local API: the state its HTTP and gRPC forms serve from.
#[derive(Debug, Clone)]
pub struct LocalApi {
    state: Arc<ApiState>,
}

impl LocalApi {
    pub fn new(
        info: AgentInfo,
        link: watch::Receiver<LinkState>,
        serving: Arc<ServingTable>,
        telemetry: Arc<TelemetryState>,
        connections: Arc<Connections>,
    ) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            state: Arc::new(ApiState {
                info,
                link,
                serving,
                telemetry,
                admission: Admission {
                    workers: Arc::new(Semaphore::new(workers)),
                    waiting: Arc::new(AtomicUsize::new(0)),
                },
                grpc_connections: Connections::new(*connections.limits()),
                connections,
            }),
        }
    }

    /// The HTTP router.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/v2/health/live",
                get(|| async { Json(serde_json::json!({ "live": true })) }),
            )
            .route("/v2/health/ready", get(ready))
            .route("/v2", get(v2::server_metadata))
            .route("/v2/models/{name}", get(v2::model_metadata))
            .route("/v2/models/{name}/ready", get(v2::model_ready))
            .route("/v2/models/{name}/infer", post(v2::infer))
            .route(
                "/v2/models/{name}/versions/{version}",
                get(v2::model_metadata_at),
            )
            .route(
                "/v2/models/{name}/versions/{version}/ready",
                get(v2::model_ready_at),
            )
            .route(
                "/v2/models/{name}/versions/{version}/infer",
                post(v2::infer_at),
            )
            .route("/v1/pipelines/{name}/infer", post(infer_raw))
            .route("/v1/agent", get(describe))
            .route("/metrics", get(metrics))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(axum::middleware::from_fn(refuse_foreign_hosts))
            .with_state(self.state.clone())
    }

    /// The gRPC service, behind the admission the HTTP form has (see [`grpc::guard`]).
    pub fn grpc(&self) -> grpc::GrpcApi {
        grpc::GrpcApi::new(self.state.clone())
    }
}

/// Whether a request's `Host` may reach the local API: an IP address (the client dialled it)
/// or `localhost`, with any port; a missing `Host` (HTTP/1.0) too. Any other name is what DNS
/// rebinding looks like.
pub fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

async fn refuse_foreign_hosts(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.extensions().get::<LocalSocket>().is_some() {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if host_allowed(host) {
        return next.run(request).await;
    }
    tracing::warn!(host = ?host, "request with a foreign Host refused (DNS rebinding?)");
    error(
        StatusCode::FORBIDDEN,
        "Host must be localhost or an IP address of this agent",
    )
    .into_response()
}

/// Why the agent is not ready, or `None` when every deployed pipeline serves. Serving goes on
/// while the control plane is away, so readiness does not depend on the link.
fn not_ready(state: &ApiState) -> Option<String> {
    if let Some(reason) = state.telemetry.storage.not_ready() {
        return Some(format!("storage fails: {reason}"));
    }
    (!state.serving.is_ready()).then(|| "a deployed pipeline is loading".to_owned())
}

/// `GET /v2/health/ready`.
async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    match not_ready(&state) {
        None => Json(serde_json::json!({ "ready": true })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: this host and its pipelines for Prometheus.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut page = exposition::render(&state.info.name, &state.serving, &state.telemetry);
    page.push_str(&connections::exposition(
        &state.info.name,
        &[
            ("http", &state.connections),
            ("grpc", &state.grpc_connections),
        ],
    ));
    (
        [(header::CONTENT_TYPE, tern_proto::prometheus::CONTENT_TYPE)],
        page,
    )
        .into_response()
}

async fn describe(State(state): State<Arc<ApiState>>) -> Json<AgentInfo> {
    let link = state.link.borrow().clone();
    let mut info = state.info.clone();
    info.connected = link.connected;
    info.last_error = link.last_error;
    info.pipelines = state
        .serving
        .all()
        .iter()
        .map(|p| (p.name.clone(), p.revision))
        .collect();
    Json(info)
}

/// The serving revision of `name`, or the answer to give instead.
fn lookup(state: &ApiState, name: &str) -> Result<Arc<ServedPipeline>, ApiError> {
    match state.serving.get(name) {
        Some(p) => Ok(p),
        None if state.serving.is_pending(name) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pipeline `{name}` is deployed but not ready yet"),
        )),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no pipeline named `{name}` runs on this agent"),
        )),
    }
}

/// An admitted request: counted as waiting (while its body is read and until a worker takes
/// it), also when the client goes away and its future is dropped.
#[derive(Debug)]
struct Ticket {
    count: Arc<AtomicUsize>,
    arrived: Instant,
}

impl Admission {
    /// Admits a request before its body is read, or answers 429 when [`MAX_WAITING`] already
    /// wait.
    fn admit(&self) -> Result<Ticket, ApiError> {
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket {
            count: self.waiting.clone(),
            arrived: Instant::now(),
        };
        if ahead >= MAX_WAITING {
            return Err(error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests are waiting; retry later",
            ));
        }
        Ok(ticket)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body of an admitted request, at most [`MAX_BODY`] bytes.
async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        } else {
            error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    })
}

/// Header a client sets to keep its requests on one A/B variant (a user or session id).
pub const KEY_HEADER: &str = "x-tern-key";
/// Header of an answer that names the A/B variant that produced it.
pub const VARIANT_HEADER: &str = "x-tern-variant";

/// What a pipeline run gave, and the A/B variant that gave it.
struct Answer {
    payload: Payload,
    variant: Option<String>,
}

/// `response` with the variant header when there is an experiment.
fn with_variant(variant: Option<&str>, mut response: Response) -> Response {
    if let Some(value) = variant.and_then(|v| header::HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert(VARIANT_HEADER, value);
    }
    response
}

fn request_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Runs `payload` through `pipeline` (on the A/B arm `key` or chance picks) on a worker.
async fn run(
    state: &ApiState,
    ticket: Ticket,
    pipeline: Arc<ServedPipeline>,
    key: Option<String>,
    payload: Payload,
) -> Result<Answer, ApiError> {
    let permit = state
        .admission
        .workers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let arrived = ticket.arrived;
    drop(ticket);
    let span = info_span!("infer", pipeline = %pipeline.name, revision = pipeline.revision);
    let runner = pipeline.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _entered = span.entered();
        let started = Instant::now();
        let queued = started - arrived;
        let arm = runner.route(key.as_deref());
        let result = arm.pipeline.run_metered(payload, &arm.meter);
        arm.meter.record_request(
            queued,
            started.elapsed(),
            result.as_ref().err().map(StepError::kind),
        );
        result.map(|payload| Answer {
            payload,
            variant: arm.variant().map(str::to_owned),
        })
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match result {
        Ok(answer) => Ok(answer),
        Err(e) => {
            let bad_input = e.is_bad_input();
            let status = if bad_input {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            Err(error(status, e.to_string()))
        }
    }
}

/// The serving revision of `name`, a place among the requests that wait, then the body: in that
/// order, so that a request that cannot run is answered before its body is read.
async fn admit(
    state: &ApiState,
    name: &str,
    body: Body,
) -> Result<(Arc<ServedPipeline>, Ticket, axum::body::Bytes), ApiError> {
    let pipeline = lookup(state, name)?;
    let (ticket, body) = admit_body(state, body).await?;
    Ok((pipeline, ticket, body))
}

/// A place among the requests that wait, then the body, for a pipeline already looked up.
async fn admit_body(state: &ApiState, body: Body) -> Result<(Ticket, axum::body::Bytes), ApiError> {
    let ticket = state.admission.admit()?;
    let body = read_body(body).await?;
    Ok((ticket, body))
}

/// `POST /v1/pipelines/{name}/infer`.
async fn infer_raw(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (pipeline, ticket, body) = match admit(&state, &name, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response.into_response(),
    };
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let payload = Payload::Bytes(Blob {
        media_type,
        data: body.to_vec(),
    });
    let span = info_span!("request", path = "/v1/pipelines/{name}/infer", pipeline = %name);
    async {
        match run(&state, ticket, pipeline, request_key(&headers), payload).await {
            Ok(Answer { payload, variant }) => with_variant(
                variant.as_deref(),
                match payload {
                    Payload::Bytes(blob) => {
                        ([(header::CONTENT_TYPE, blob.media_type)], blob.data).into_response()
                    }
                    tensors => Json(oip::payload_json(&tensors)).into_response(),
                },
            ),
            Err(response) => response.into_response(),
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn api(serving: Arc<ServingTable>) -> Router {
        api_with(serving, Connections::new(ApiLimits::default()))
    }

    fn api_with(serving: Arc<ServingTable>, connections: Arc<Connections>) -> Router {
        local_api(serving, connections).router()
    }

    /// How long a test waits for something that happens in milliseconds.
    pub(super) const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

    /// Waits (at most [`PATIENCE`]) until `done`.
    pub(super) async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited too long for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The local API over `serving`, for this module's tests and the gRPC form's.
    pub(super) fn local_api(serving: Arc<ServingTable>, connections: Arc<Connections>) -> LocalApi {
        let info = AgentInfo {
            id: "a".into(),
            name: "edge".into(),
            labels: BTreeMap::new(),
            version: "0".into(),
            control_plane: "cp:1".into(),
            connected: false,
            last_error: None,
            pipelines: BTreeMap::new(),
        };
        let db = sled::Config::new().temporary(true).open().expect("db");
        let telemetry = Arc::new(TelemetryState {
            buffer: Arc::new(
                crate::telemetry::buffer::TelemetryBuffer::open(&db, 1 << 20).expect("buffer"),
            ),
            host: Default::default(),
            storage: tern_transport::storage::StorageMonitor::new(&std::env::temp_dir()),
        });
        LocalApi::new(
            info,
            watch::channel(LinkState::default()).1,
            serving,
            telemetry,
            connections,
        )
    }

    async fn status(router: &Router, method: &str, path: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from("x"))
            .expect("request");
        router
            .clone()
            .oneshot(request)
            .await
            .map(|r| r.status())
            .unwrap_or(StatusCode::IM_A_TEAPOT)
    }

    #[test]
    fn only_local_names_and_addresses_pass_the_host_check() {
        for host in [
            "localhost",
            "localhost:7480",
            "LOCALHOST.",
            "api.localhost:1",
            "127.0.0.1:7480",
            "10.1.2.3",
            "[::1]:7480",
            "[::1]",
        ] {
            assert!(host_allowed(Some(host)), "{host}");
        }
        assert!(host_allowed(None));
        for host in [
            "evil.example",
            "evil.example:7480",
            "localhost.evil.example",
            "",
            "\u{fffd}",
        ] {
            assert!(!host_allowed(Some(host)), "{host}");
        }
    }

    #[tokio::test]
    async fn a_foreign_host_is_refused() {
        let router = api(Arc::new(ServingTable::default()));
        let request = Request::builder()
            .uri("/v2/health/live")
            .header(header::HOST, "evil.example")
            .body(Body::empty())
            .expect("request");
        let answer = router.oneshot(request).await.expect("answer");
        assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn answers_503_while_a_deployed_pipeline_loads_and_404_for_unknown_ones() {
        let serving = Arc::new(ServingTable::default());
        serving.set_pending(["colors".to_owned()].into());
        let router = api(serving.clone());
        let infer = "/v1/pipelines/colors/infer";
        assert_eq!(
            status(&router, "POST", infer).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(&router, "POST", "/v2/models/colors/infer").await,
            StatusCode::SERVICE_UNAVAILABLE,
            "no body is read for a pipeline that cannot run it"
        );
        assert_eq!(
            status(&router, "GET", "/v2/health/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(&router, "POST", "/v1/pipelines/other/infer").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(&router, "GET", "/v2/health/live").await,
            StatusCode::OK
        );
        serving.set_pending(Default::default());
        assert_eq!(
            status(&router, "GET", "/v2/health/ready").await,
            StatusCode::OK
        );
    }

    /// Sends `request` on a fresh connection to `address` and reads the answer to its end.
    async fn exchange(address: &ApiAddress, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut answer = Vec::new();
        let io = async {
            match address {
                ApiAddress::Tcp(addr) => {
                    let mut s = tokio::net::TcpStream::connect(addr).await?;
                    s.write_all(request).await?;
                    s.read_to_end(&mut answer).await
                }
                ApiAddress::Unix(path) => {
                    let mut s = tokio::net::UnixStream::connect(path).await?;
                    s.write_all(request).await?;
                    s.read_to_end(&mut answer).await
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), io)
            .await
            .expect("an answer in time")
            .expect("exchange");
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn start(address: ApiAddress, serving: Arc<ServingTable>) -> ApiAddress {
        let listener = address.bind().await.expect("bind");
        let bound = listener.local_address().expect("address");
        let (stop, stopped) = watch::channel(false);
        let connections = Connections::new(ApiLimits::default());
        let router = api_with(serving, connections.clone());
        tokio::spawn(async move {
            let _stop = stop;
            let _ = serve(listener, router, connections, stopped).await;
        });
        bound
    }

    #[tokio::test]
    async fn serves_on_a_unix_socket_where_no_browser_reaches() {
        let dir = tempfile::tempdir().expect("tmp");
        let address = start(
            ApiAddress::Unix(dir.path().join("api.sock")),
            Arc::new(ServingTable::default()),
        )
        .await;
        let request =
            b"GET /v2/health/live HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
        let answer = exchange(&address, request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#"{"live":true}"#), "{answer}");
        let tcp = start(
            ApiAddress::Tcp(([127, 0, 0, 1], 0).into()),
            Arc::new(ServingTable::default()),
        )
        .await;
        let answer = exchange(&tcp, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "over TCP the Host is checked: {answer}"
        );
    }

    #[tokio::test]
    async fn a_request_is_answered_before_its_body_is_read() {
        let serving = Arc::new(ServingTable::default());
        serving.set_pending(["colors".to_owned()].into());
        let address = start(ApiAddress::Tcp(([127, 0, 0, 1], 0).into()), serving).await;
        // A gigabyte announced and none sent: the answer cannot wait for the body.
        for (path, status) in [
            ("/v1/pipelines/colors/infer", "503"),
            ("/v2/models/colors/infer", "503"),
            ("/v1/pipelines/other/infer", "404"),
        ] {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\n\r\n"
            );
            let answer = exchange(&address, request.as_bytes()).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{path}: {answer}"
            );
        }
    }
}
