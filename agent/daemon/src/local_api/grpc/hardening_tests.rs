//! The gRPC form under the HTTP form's rules, tried as the HTTP form's tests try it: a head
//! that never ends, a message that never ends, a full queue, a message larger than anything
//! served accepts, a full connection table, and the Unix socket. Frames are sent by hand
//! over a real HTTP/2 connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::super::address::ApiAddress;
use super::super::connections::{Connections, Phase};
use super::super::tests::{PATIENCE, local_api, wait_until};
use super::super::{ApiLimits, LocalApi, MAX_WAITING, serve_grpc};
use super::guard::{INFER_PATH, SMALL_MESSAGE};
use crate::serving::ServingTable;

const LIVE_PATH: &str = "/inference.GRPCInferenceService/ServerLive";

struct Server {
    address: ApiAddress,
    api: LocalApi,
    table: Arc<Connections>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start(limits: ApiLimits, unix: bool) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = if unix {
        ApiAddress::Unix(dir.path().join("grpc.sock"))
    } else {
        ApiAddress::Tcp(([127, 0, 0, 1], 0).into())
    };
    let listener = address.bind().await.expect("bind");
    let address = listener.local_address().expect("address");
    let api = local_api(Arc::new(ServingTable::default()), Connections::new(limits));
    let grpc = api.grpc();
    let table = grpc.connections();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        let _ = serve_grpc(listener, grpc, stopped).await;
    });
    Server {
        address,
        api,
        table,
        _stop: stop,
        _dir: dir,
    }
}

fn limits(max_connections: usize, timeout_ms: u64) -> ApiLimits {
    ApiLimits {
        max_connections,
        header_timeout_ms: timeout_ms,
        body_timeout_ms: timeout_ms,
    }
}

type Client = h2::client::SendRequest<Bytes>;

async fn h2_over<S>(io: S) -> Client
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn connect(address: &ApiAddress) -> Client {
    match address {
        ApiAddress::Tcp(addr) => h2_over(TcpStream::connect(addr).await.expect("connect")).await,
        ApiAddress::Unix(path) => {
            h2_over(
                tokio::net::UnixStream::connect(path)
                    .await
                    .expect("connect"),
            )
            .await
        }
    }
}

/// A gRPC message frame around `message`.
fn framed(message: &[u8]) -> Bytes {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// Opens a call to `path`; the message is sent by the caller.
async fn open_call(
    client: &Client,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = axum::http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let mut client = client.clone().ready().await.expect("ready");
    client.send_request(request, false).expect("send")
}

/// The call's gRPC status (from its headers, or its trailers) and message (percent-decoded).
async fn finish(response: h2::client::ResponseFuture) -> (String, String) {
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("an answer in time")
        .expect("a response");
    let field = |headers: &axum::http::HeaderMap, name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    };
    if let Some(status) = field(response.headers(), "grpc-status") {
        let message = field(response.headers(), "grpc-message").unwrap_or_default();
        return (status, message);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    (
        field(&trailers, "grpc-status").unwrap_or_default(),
        field(&trailers, "grpc-message").unwrap_or_default(),
    )
}

/// `ServerLive`, whole: its status.
async fn live(client: &Client) -> String {
    let (response, mut send) = open_call(client, LIVE_PATH).await;
    send.send_data(framed(&[]), true).expect("send");
    finish(response).await.0
}

/// Whether the server closed `stream` without answering.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0; 256];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            // The server's SETTINGS, sent as the connection opens.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Whether `client`'s connection is gone: a new call on it fails.
async fn is_closed(client: &Client) -> bool {
    let Ok(Ok(mut ready)) = tokio::time::timeout(PATIENCE, client.clone().ready()).await else {
        return true;
    };
    let request = axum::http::Request::post(format!("http://localhost{LIVE_PATH}"))
        .header("content-type", "application/grpc")
        .body(())
        .expect("request");
    match ready.send_request(request, true) {
        Err(_) => true,
        Ok((response, _)) => matches!(
            tokio::time::timeout(PATIENCE, response).await,
            Ok(Err(_)) | Err(_)
        ),
    }
}

#[tokio::test]
async fn a_slow_head_or_message_is_cut_off_and_an_idle_connection_is_not() {
    let server = start(limits(16, 1_000), false).await;
    let ApiAddress::Tcp(addr) = server.address else {
        unreachable!("a TCP server")
    };
    // Half the connection preface, then nothing.
    let mut slow_head = TcpStream::connect(addr).await.expect("connect");
    slow_head
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    // A whole preface, then no call for longer than either deadline: idle, not cut.
    let waiting = connect(&server.address).await;
    // A call whose message never ends: refused at its deadline, and its connection closed,
    // as the HTTP form's body deadline closes its connection.
    let stalled = connect(&server.address).await;
    let (response, mut send) = open_call(&stalled, INFER_PATH).await;
    send.send_data(Bytes::from_static(&[0, 0, 0, 0, 9, 1]), false)
        .expect("send");
    let (status, message) = finish(response).await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(
        message.contains("did not arrive within 1000 ms"),
        "{message}"
    );
    assert!(
        closed_by_server(&mut slow_head).await,
        "a preface that never ends"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(live(&waiting).await, "0", "a first call after a long wait");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        live(&waiting).await,
        "0",
        "idle between calls: still served"
    );
    assert!(
        is_closed(&stalled).await,
        "the stalled message's connection"
    );
    let page = super::super::connections::exposition("edge", &[("grpc", &server.table)]);
    for reason in ["head_timeout", "body_timeout"] {
        let line = format!(
            r#"tern_agent_api_connections_closed_total{{agent="edge",api="grpc",reason="{reason}"}} 1"#
        );
        assert!(page.contains(&line), "{page}");
    }
}

#[tokio::test]
async fn a_full_queue_is_answered_before_the_message_is_read() {
    let server = start(limits(16, 60_000), false).await;
    let held: Vec<_> = (0..MAX_WAITING)
        .map(|_| server.api.state.admission.admit().expect("a place"))
        .collect();
    let client = connect(&server.address).await;
    // The head only: the message is never sent, and the answer comes all the same.
    let (response, _send) = open_call(&client, INFER_PATH).await;
    let (status, message) = finish(response).await;
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED: {message}");
    assert!(message.contains("too many requests"), "{message}");
    drop(held);
    assert_eq!(live(&client).await, "0", "the connection still serves");
}

#[tokio::test]
async fn a_message_larger_than_the_served_pipelines_accept_is_refused() {
    let server = start(limits(16, 60_000), false).await;
    let client = connect(&server.address).await;
    let (response, mut send) = open_call(&client, INFER_PATH).await;
    // Nothing is served: a message past the small calls' size is more than any accepts.
    let big = vec![7u8; SMALL_MESSAGE + 1024];
    send.send_data(framed(&big), true).expect("send");
    let (status, message) = finish(response).await;
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED: {message}");
    assert!(
        message.contains(&format!("larger than the {SMALL_MESSAGE} bytes")),
        "{message}"
    );
    assert_eq!(
        server
            .api
            .state
            .admission
            .waiting
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "its place in the queue was given back"
    );
}

#[tokio::test]
async fn a_full_table_evicts_the_longest_idle_connection_and_refuses_when_none_is_idle() {
    let server = start(limits(2, 60_000), false).await;
    let ApiAddress::Tcp(addr) = server.address else {
        unreachable!("a TCP server")
    };
    let oldest = connect(&server.address).await;
    assert_eq!(live(&oldest).await, "0");
    let second = connect(&server.address).await;
    assert_eq!(live(&second).await, "0");
    let third = connect(&server.address).await;
    assert_eq!(
        live(&third).await,
        "0",
        "a new connection is served when the table is full of idle ones"
    );
    wait_until("the oldest evicted", || server.table.open_count() == 2).await;
    // Both left mid-call: their messages never end.
    let mut calls = Vec::new();
    for client in [&second, &third] {
        let (response, mut send) = open_call(client, INFER_PATH).await;
        send.send_data(Bytes::from_static(&[0, 0, 0, 0, 9]), false)
            .expect("send");
        calls.push((response, send));
    }
    wait_until("both connections mid-call", || {
        server.table.count(Phase::Busy) == 2
    })
    .await;
    let mut refused = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_by_server(&mut refused).await,
        "no idle connection to evict: the new one is closed"
    );
    assert_eq!(server.table.open_count(), 2);
    let page = super::super::connections::exposition("edge", &[("grpc", &server.table)]);
    for reason in ["evicted", "refused"] {
        let line = format!(
            r#"tern_agent_api_connections_closed_total{{agent="edge",api="grpc",reason="{reason}"}} 1"#
        );
        assert!(page.contains(&line), "{page}");
    }
}

#[tokio::test]
async fn the_grpc_form_listens_on_a_unix_socket() {
    let server = start(limits(16, 60_000), true).await;
    assert!(matches!(server.address, ApiAddress::Unix(_)));
    let client = connect(&server.address).await;
    assert_eq!(live(&client).await, "0");
}
