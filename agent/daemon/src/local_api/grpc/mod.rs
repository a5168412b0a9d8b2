//! The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`) on the
//! optional `--listen-grpc` address: the same pipelines, admission control and telemetry as
//! the HTTP form ([`super::v2`]). Inputs come as typed `contents` or as
//! `raw_input_contents`; outputs always go back as `raw_output_contents`, as Triton's and
//! KServe's clients read them. Errors are gRPC statuses: an unknown model is NOT_FOUND, bad
//! input INVALID_ARGUMENT, a pipeline still loading UNAVAILABLE, a full queue
//! RESOURCE_EXHAUSTED.

mod convert;
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod generated;
pub mod guard;

use std::sync::Arc;

use axum::http::StatusCode;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use super::{ApiError, ApiState, run};
use crate::oip::{self, metadata};
use generated::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use generated::*;
pub use guard::GrpcApi;

/// The status of an error answer.
fn status(e: ApiError) -> Status {
    let ApiError(code, message) = e;
    match code {
        StatusCode::BAD_REQUEST => Status::invalid_argument(message),
        StatusCode::NOT_FOUND => Status::not_found(message),
        StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(message),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => {
            Status::resource_exhausted(message)
        }
        _ => Status::internal(message),
    }
}

/// The gRPC service over the local API's state.
#[derive(Debug, Clone)]
pub struct InferenceService {
    state: Arc<ApiState>,
}

impl InferenceService {
    pub(super) fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }

    /// The tonic service, taking messages as large as the HTTP form's bodies (the guard cuts
    /// them to what the served pipelines accept before tonic sees them).
    pub fn into_server(self) -> GrpcInferenceServiceServer<Self> {
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(super::MAX_BODY)
            .max_encoding_message_size(super::MAX_BODY)
    }

    fn lookup(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Arc<crate::serving::ServedPipeline>, Status> {
        let version = (!version.is_empty()).then_some(version);
        super::v2::lookup_version(&self.state, name, version).map_err(status)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: super::not_ready(&self.state).is_none(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = match self.lookup(&request.name, &request.version) {
            Ok(_) => true,
            Err(e) if e.code() == tonic::Code::Unavailable => false,
            Err(e) => return Err(e),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "tern-agent".to_owned(),
            version: self.state.info.version.clone(),
            extensions: super::v2::EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let pipeline = self.lookup(&request.name, &request.version)?;
        let steps = &pipeline.arms[0].pipeline.steps;
        let described = |list: Vec<metadata::TensorMetadata>| {
            list.into_iter()
                .map(|t| model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: pipeline.name.clone(),
            versions: vec![pipeline.revision.to_string()],
            platform: "tern".to_owned(),
            inputs: described(metadata::inputs(steps.first())),
            outputs: described(metadata::outputs(steps.last())),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let key = request
            .metadata()
            .get(super::KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Taken from the call's head, before its message was read (see [`guard`]).
        let admitted = request
            .extensions()
            .get::<guard::Admitted>()
            .and_then(guard::Admitted::take);
        let request = request.into_inner();
        let name = request.model_name.clone();
        let pipeline = self.lookup(&name, &request.model_version)?;
        let ticket = match admitted {
            Some(ticket) => ticket,
            None => self.state.admission.admit().map_err(status)?,
        };
        let (inputs, wanted) = convert::inputs(request.inputs, request.raw_input_contents)
            .map_err(|e| Status::invalid_argument(e.0))
            .map(|inputs| {
                let wanted: Vec<String> = request.outputs.into_iter().map(|o| o.name).collect();
                (inputs, wanted)
            })?;
        let payload =
            oip::payload_from_inputs(inputs).map_err(|e| Status::invalid_argument(e.0))?;
        let revision = pipeline.revision;
        let span = info_span!("request", rpc = "ModelInfer", pipeline = %name);
        async {
            let result = run(&self.state, ticket, pipeline, key, payload)
                .await
                .map_err(status)?;
            let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
            let outputs = oip::select(oip::outputs(result.payload), &wanted)
                .map_err(|e| Status::invalid_argument(e.0))?;
            let mut response =
                Response::new(convert::answer(name.clone(), revision, request.id, outputs));
            if let Some(value) = result
                .variant
                .as_deref()
                .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok())
            {
                response.metadata_mut().insert(super::VARIANT_HEADER, value);
            }
            Ok(response)
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hardening_tests;
