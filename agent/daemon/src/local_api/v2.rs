//! The Open Inference Protocol (KServe v2) over HTTP, as Triton's and KServe's clients speak it
//! with their defaults:
//!
//! - `GET /v2`: server metadata (name, version, extensions);
//! - `GET /v2/models/{name}[/versions/{v}]`: model metadata, with the pipeline's inputs and
//!   outputs ([`oip::metadata`]);
//! - `GET /v2/models/{name}[/versions/{v}]/ready`: 200 when it serves, 503 while it loads;
//! - `POST /v2/models/{name}[/versions/{v}]/infer`: JSON tensors, flat or nested, or the
//!   binary tensor data extension (`Inference-Header-Content-Length`, `binary_data_size` per
//!   input, `binary_data` per output, `binary_data_output`); `outputs` selects and orders the
//!   outputs; other `parameters` are accepted. One BYTES input is a blob.
//!
//! A pipeline is a model; its serving revision is the model's only version, and a request for
//! another version is answered 404.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{Instrument, info_span};

use super::{ApiError, ApiState, admit_body, error, lookup, request_key, run, with_variant};
use crate::oip::{self, metadata};
use crate::serving::ServedPipeline;

/// The extensions of the protocol the agent speaks.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// `GET /v2`.
pub(super) async fn server_metadata(State(state): State<Arc<ApiState>>) -> Response {
    Json(serde_json::json!({
        "name": "tern-agent",
        "version": state.info.version,
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

/// The serving revision of `name` when it is `version` (any when `None`).
pub(super) fn lookup_version(
    state: &ApiState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<ServedPipeline>, ApiError> {
    let pipeline = lookup(state, name)?;
    match version {
        Some(v) if v != pipeline.revision.to_string() => Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "model `{name}` has no version `{v}` on this agent; it serves version {}",
                pipeline.revision
            ),
        )),
        _ => Ok(pipeline),
    }
}

fn metadata_of(state: &ApiState, name: &str, version: Option<&str>) -> Response {
    match lookup_version(state, name, version) {
        Ok(p) => {
            let steps = &p.arms[0].pipeline.steps;
            Json(serde_json::json!({
                "name": p.name,
                "versions": [p.revision.to_string()],
                "platform": "tern",
                "inputs": metadata::inputs(steps.first()),
                "outputs": metadata::outputs(steps.last()),
                "steps": steps.iter().map(|s| s.name()).collect::<Vec<_>>(),
                "variants": p.arms.iter().filter_map(|a| a.variant()).collect::<Vec<_>>(),
            }))
            .into_response()
        }
        Err(response) => response.into_response(),
    }
}

/// `GET /v2/models/{name}`.
pub(super) async fn model_metadata(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Response {
    metadata_of(&state, &name, None)
}

/// `GET /v2/models/{name}/versions/{version}`.
pub(super) async fn model_metadata_at(
    State(state): State<Arc<ApiState>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata_of(&state, &name, Some(&version))
}

fn ready_of(state: &ApiState, name: &str, version: Option<&str>) -> Response {
    match lookup_version(state, name, version) {
        Ok(_) => Json(serde_json::json!({ "name": name, "ready": true })).into_response(),
        Err(response) => response.into_response(),
    }
}

/// `GET /v2/models/{name}/ready`.
pub(super) async fn model_ready(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Response {
    ready_of(&state, &name, None)
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
pub(super) async fn model_ready_at(
    State(state): State<Arc<ApiState>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    ready_of(&state, &name, Some(&version))
}

/// `POST /v2/models/{name}/infer`.
pub(super) async fn infer(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_version(&state, &name, None, &headers, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub(super) async fn infer_at(
    State(state): State<Arc<ApiState>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_version(&state, &name, Some(&version), &headers, body).await
}

fn bad_request(e: oip::InputError) -> Response {
    error(StatusCode::BAD_REQUEST, e.0).into_response()
}

async fn infer_version(
    state: &ApiState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // The revision checked against `version` is the one that runs the request.
    let pipeline = match lookup_version(state, name, version) {
        Ok(pipeline) => pipeline,
        Err(response) => return response.into_response(),
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    if let Some(encoding) = encoding.filter(|e| e != "identity") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{encoding}` is not supported; send the body uncompressed"),
        )
        .into_response();
    }
    let (ticket, body) = match admit_body(state, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response.into_response(),
    };
    let header_length = match headers.get(oip::HEADER_LENGTH).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Inference-Header-Content-Length is not a byte count",
            )
            .into_response();
        }
    };
    let (request, inputs) = match oip::read_request(&body, header_length) {
        Ok(read) => read,
        Err(e) => return bad_request(e),
    };
    drop(body);
    let payload = match oip::payload_from_inputs(inputs) {
        Ok(payload) => payload,
        Err(e) => return bad_request(e),
    };
    let revision = pipeline.revision;
    let span = info_span!("request", path = "/v2/models/{name}/infer", pipeline = %name);
    async {
        let result = match run(state, ticket, pipeline, request_key(headers), payload).await {
            Ok(result) => result,
            Err(response) => return response.into_response(),
        };
        let wanted: Vec<&str> = request
            .outputs
            .iter()
            .flatten()
            .map(|o| o.name.as_str())
            .collect();
        let answer = oip::select(oip::outputs(result.payload), &wanted)
            .and_then(|outputs| oip::http_answer(name, revision, &request, &outputs));
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return bad_request(e),
        };
        let response = match answer.header_length {
            None => ([(header::CONTENT_TYPE, "application/json")], answer.body).into_response(),
            Some(length) => (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (
                        header::HeaderName::from_static(oip::HEADER_LENGTH),
                        length.to_string(),
                    ),
                ],
                answer.body,
            )
                .into_response(),
        };
        with_variant(result.variant.as_deref(), response)
    }
    .instrument(span)
    .await
}
