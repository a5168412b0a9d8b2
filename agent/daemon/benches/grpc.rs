//! What the gRPC form's hardening costs a call: the same `ModelInfer` on the MLP example
//! (a real ONNX model on tract, [4, 32] FP32 in raw contents) over one HTTP/2 connection on
//! loopback, served the way the form was before (tonic's own server, nothing in front) and
//! the way it is now (the local API's connection table, head and body deadlines, the queue
//! place taken before decoding, the message bounded by what is served). Run with:
//!
//! ```text
//! cargo bench --workspace --bench grpc --profile dev
//! ```

// The tonic server's future is deep (as in the crate itself).
#![recursion_limit = "256"]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message as _;
use tern_agent::local_api::grpc::generated::ModelInferRequest;
use tern_agent::local_api::grpc::generated::model_infer_request::InferInputTensor;
use tern_agent::local_api::{AgentInfo, ApiAddress, ApiLimits, Connections, LocalApi};
use tern_agent::pipeline::LoadedPipeline;
use tern_agent::serving::{Arm, ServedPipeline, ServingTable};
use tern_agent::telemetry::TelemetryState;
use tokio::sync::watch;

#[path = "support/mlp.rs"]
mod mlp;

fn local_api() -> LocalApi {
    let serving = Arc::new(ServingTable::default());
    serving.switch(Arc::new(ServedPipeline::new(
        "mlp",
        1,
        vec![Arm {
            weight: 100,
            pipeline: LoadedPipeline {
                steps: vec![mlp::step()],
            },
            meter: mlp::meter(),
        }],
    )));
    let db = sled::Config::new().temporary(true).open().expect("db");
    let telemetry = Arc::new(TelemetryState {
        buffer: Arc::new(
            tern_agent::telemetry::buffer::TelemetryBuffer::open(&db, 1 << 20).expect("buffer"),
        ),
        host: Default::default(),
        storage: tern_transport::storage::StorageMonitor::new(&std::env::temp_dir()),
    });
    let info = AgentInfo {
        id: "bench".into(),
        name: "bench".into(),
        labels: BTreeMap::new(),
        version: "0".into(),
        control_plane: "-".into(),
        connected: false,
        last_error: None,
        pipelines: BTreeMap::new(),
    };
    LocalApi::new(
        info,
        watch::channel(Default::default()).1,
        serving,
        telemetry,
        Connections::new(ApiLimits::default()),
    )
}

/// One `ModelInfer` of the MLP, framed for gRPC.
fn request() -> Bytes {
    let message = ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![4, 32],
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![vec![0; 4 * 32 * 4]],
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    frame.into()
}

async fn connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (client, connection) = h2::client::handshake(stream).await.expect("handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// One call, answered whole: its gRPC status.
async fn call(client: &h2::client::SendRequest<Bytes>, body: Bytes) -> String {
    let request =
        axum::http::Request::post("http://localhost/inference.GRPCInferenceService/ModelInfer")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
    let mut client = client.clone().ready().await.expect("ready");
    let (response, mut send) = client.send_request(request, false).expect("send");
    send.send_data(body, true).expect("data");
    let mut body = response.await.expect("response").into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn grpc(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let api = local_api();
    let (_stop, stopped) = watch::channel(false);
    let (bare, guarded) = runtime.block_on(async {
        let bare = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let bare_addr = bare.local_addr().expect("addr");
        let service = api.grpc().bare();
        tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(bare).with_nodelay(Some(true));
            let _ = tonic::transport::Server::builder()
                .concurrency_limit_per_connection(tern_agent::local_api::MAX_WAITING)
                .serve_with_incoming(service, incoming)
                .await;
        });
        let listener = ApiAddress::Tcp(([127, 0, 0, 1], 0).into())
            .bind()
            .await
            .expect("bind");
        let guarded_addr = listener.local_address().expect("addr").tcp().expect("tcp");
        let grpc = api.grpc();
        tokio::spawn(async move {
            let _ = tern_agent::local_api::serve_grpc(listener, grpc, stopped).await;
        });
        (connect(bare_addr).await, connect(guarded_addr).await)
    });
    let body = request();
    for client in [&bare, &guarded] {
        assert_eq!(
            runtime.block_on(call(client, body.clone())),
            "0",
            "the MLP answers"
        );
    }
    let mut group = c.benchmark_group("grpc ModelInfer (MLP)");
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("before: tonic's server alone", |b| {
        b.iter(|| runtime.block_on(call(&bare, body.clone())))
    });
    group.bench_function("now: under the local API's rules", |b| {
        b.iter(|| runtime.block_on(call(&guarded, body.clone())))
    });
    group.finish();
}

criterion_group!(benches, grpc);
criterion_main!(benches);
