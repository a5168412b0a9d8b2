//! The gRPC form under the HTTP form's admission: a `ModelInfer` call takes its place among the
//! requests that wait from its head, before a byte of its message is read or decoded (a full
//! queue is answered RESOURCE_EXHAUSTED at once); every call's message must arrive within the
//! body deadline (DEADLINE_EXCEEDED) and be no larger than the served pipelines accept
//! (RESOURCE_EXHAUSTED), so the memory `ModelInfer` calls hold while they are read is bounded
//! by the queue's length times that size. A message past its deadline also closes its
//! connection, as the HTTP form's body deadline does.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tonic::Status;
use tower::ServiceExt as _;

use super::super::connections::{Connections, Tracked};
use super::super::{ApiState, MAX_BODY, Ticket};
use super::InferenceService;
use super::generated::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::pipeline::PipelineStep;
use crate::serving::{ServedPipeline, ServingTable};

/// The path of the one call that runs a pipeline.
pub const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
/// Largest message of the other calls (readiness, metadata: a name and a version), which
/// take no place in the queue: what they can hold is this per call, on at most
/// [`super::super::MAX_WAITING`] calls per connection.
pub const SMALL_MESSAGE: usize = 4 << 10;
/// Room for a message's framing, names and parameters beside its tensors.
const FRAMING: usize = 64 << 10;
/// Typed `contents` may take more room than raw bytes: a negative INT8 is a 10-byte varint.
const TYPED_FACTOR: usize = 10;

/// The place in the queue a call took from its head, handed to the handler.
#[derive(Debug, Clone)]
pub(in super::super) struct Admitted(Arc<Mutex<Option<Ticket>>>);

impl Admitted {
    pub(in super::super) fn take(&self) -> Option<Ticket> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The gRPC form of the local API: the service, its admission and its connections.
#[derive(Debug, Clone)]
pub struct GrpcApi {
    state: Arc<ApiState>,
    server: GrpcInferenceServiceServer<InferenceService>,
}

impl GrpcApi {
    pub(in super::super) fn new(state: Arc<ApiState>) -> Self {
        let server = InferenceService::new(state.clone()).into_server();
        Self { state, server }
    }

    /// The connections of the gRPC form (their own table, the HTTP form's limits).
    pub fn connections(&self) -> Arc<Connections> {
        self.state.grpc_connections.clone()
    }

    /// The tonic service alone, without the guard or the connection table: what served the
    /// gRPC form before it had them (kept for the comparison in the `grpc` bench).
    pub fn bare(&self) -> GrpcInferenceServiceServer<InferenceService> {
        self.server.clone()
    }

    /// Answers one call on the connection `tracked` follows.
    pub async fn call(
        &self,
        request: axum::http::Request<Incoming>,
        tracked: &Arc<Tracked>,
    ) -> axum::http::Response<tonic::body::Body> {
        let infer = request.uri().path() == INFER_PATH;
        let (mut parts, body) = request.into_parts();
        let limit = if infer {
            match self.state.admission.admit() {
                Ok(ticket) => {
                    parts
                        .extensions
                        .insert(Admitted(Arc::new(Mutex::new(Some(ticket)))));
                }
                Err(refused) => return super::status(refused).into_http(),
            }
            accepted_bytes(&self.state.serving)
        } else {
            SMALL_MESSAGE
        };
        let connections = self.state.grpc_connections.clone();
        let timeout = Duration::from_millis(connections.limits().body_timeout_ms);
        let body = Bounded::new(body, limit, timeout, connections, tracked.clone());
        let request = axum::http::Request::from_parts(parts, body);
        match self.server.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// The most bytes a `ModelInfer` message may take: what the largest served pipeline accepts.
pub fn accepted_bytes(serving: &ServingTable) -> usize {
    serving
        .largest(accepts)
        .unwrap_or(SMALL_MESSAGE)
        .min(MAX_BODY)
}

/// What one pipeline's first steps (one per A/B arm) take: a plugin no more than its memory
/// limit; a model what [`model_accepts`] says.
fn accepts(pipeline: &ServedPipeline) -> usize {
    pipeline
        .arms
        .iter()
        .map(|arm| match arm.pipeline.steps.first() {
            Some(PipelineStep::Plugin(step)) => step.limits().memory_bytes.saturating_add(FRAMING),
            Some(PipelineStep::Model { model, .. }) => model_accepts(model.inputs()),
            None => SMALL_MESSAGE,
        })
        .max()
        .unwrap_or(SMALL_MESSAGE)
}

/// A model with fixed input shapes takes its tensors' bytes (as typed contents at worst, and
/// framing); one with a symbolic dimension, the local API's largest body.
pub fn model_accepts(inputs: &[tern_infer::IoSpec]) -> usize {
    inputs
        .iter()
        .map(|input| {
            input
                .shape
                .iter()
                .try_fold(input.dtype.size(), |bytes, dim| match dim {
                    tern_infer::Dim::Fixed(n) => bytes.checked_mul(*n),
                    tern_infer::Dim::Symbol(_) => None,
                })
        })
        .try_fold(0usize, |sum, bytes| sum.checked_add(bytes?))
        .map_or(MAX_BODY, |raw| {
            raw.saturating_mul(TYPED_FACTOR).saturating_add(FRAMING)
        })
        .min(MAX_BODY)
}

/// A call's message, cut off past `limit` bytes or past its deadline (from its head).
struct Bounded {
    inner: Incoming,
    read: usize,
    /// The first message's 5-byte prefix (flag, then length), as it arrives.
    prefix: [u8; 5],
    limit: usize,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    connections: Arc<Connections>,
    /// The connection, closed when the message misses its deadline.
    tracked: Arc<Tracked>,
}

impl Bounded {
    fn new(
        inner: Incoming,
        limit: usize,
        timeout: Duration,
        connections: Arc<Connections>,
        tracked: Arc<Tracked>,
    ) -> Self {
        let done = inner.is_end_stream();
        Self {
            inner,
            read: 0,
            prefix: [0; 5],
            limit,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            done,
            connections,
            tracked,
        }
    }
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if !self.done && self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.connections
                .stats
                .body_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.tracked.close_gracefully();
            let message = format!(
                "the request's message did not arrive within {} ms",
                self.timeout.as_millis()
            );
            return Poll::Ready(Some(Err(Status::deadline_exceeded(message))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let before = self.read;
                    self.read = self.read.saturating_add(data.len());
                    // The length a message declares is refused before its bytes are awaited.
                    for (i, byte) in data.iter().take(5usize.saturating_sub(before)).enumerate() {
                        self.prefix[before + i] = *byte;
                    }
                    let declared = (self.read >= 5).then(|| {
                        let [_, length @ ..] = self.prefix;
                        usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX)
                    });
                    if self.read > self.limit.saturating_add(5)
                        || declared.is_some_and(|d| d > self.limit)
                    {
                        self.done = true;
                        let message = format!(
                            "the request's message is larger than the {} bytes the served \
                             pipelines accept",
                            self.limit
                        );
                        return Poll::Ready(Some(Err(Status::resource_exhausted(message))));
                    }
                }
                if self.inner.is_end_stream() {
                    self.done = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(Status::from_error(Box::new(e)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tern_infer::{DType, Dim, IoSpec};

    use super::*;

    fn input(dtype: DType, shape: Vec<Dim>) -> IoSpec {
        IoSpec {
            name: "x".into(),
            dtype,
            shape,
        }
    }

    #[test]
    fn a_model_accepts_its_fixed_tensors_bytes_and_a_symbolic_one_the_largest_body() {
        let image = input(DType::F32, [1, 3, 224, 224].map(Dim::Fixed).to_vec());
        let mask = input(DType::U8, vec![Dim::Fixed(224), Dim::Fixed(224)]);
        let raw = 3 * 224 * 224 * 4 + 224 * 224;
        assert_eq!(
            model_accepts(&[image.clone(), mask]),
            raw * TYPED_FACTOR + FRAMING
        );
        let batch = input(DType::F32, vec![Dim::Symbol("n".into()), Dim::Fixed(32)]);
        assert_eq!(model_accepts(&[image.clone(), batch]), MAX_BODY);
        let vast = input(DType::F32, vec![Dim::Fixed(usize::MAX), Dim::Fixed(2)]);
        assert_eq!(model_accepts(&[vast]), MAX_BODY, "no overflow");
        assert_eq!(model_accepts(&[]), FRAMING);
    }
}
