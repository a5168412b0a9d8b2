//! The local API's accept loops: HTTP/1.1 connections, and the gRPC form's HTTP/2 ones, under
//! the bounds of [`Connections`].

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::Router;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service as _;

use super::address::{ApiListener, ApiStream};
use super::connections::{Connections, Slot, Watched, WatchedBody};

/// Marks a request that came over the Unix socket: no browser reaches it, so the `Host` check
/// against DNS rebinding does not apply.
#[derive(Debug, Clone, Copy)]
pub struct LocalSocket;

/// Serves `router` on `listener` within the bounds of `connections` until `shutdown` turns
/// true; then lets the requests in progress finish.
pub async fn serve(
    listener: ApiListener,
    router: Router,
    connections: std::sync::Arc<Connections>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    accept(
        listener,
        connections,
        shutdown,
        move |stream, slot, stop| {
            let router = router.clone();
            async move {
                match stream {
                    ApiStream::Tcp(s) => connection(s, slot, router, false, stop).await,
                    ApiStream::Unix(s) => connection(s, slot, router, true, stop).await,
                }
            }
        },
    )
    .await
}

/// Accepts connections on `listener` within the bounds of `connections` and runs `serve_one`
/// on each until `shutdown` turns true; then waits for the connections to finish.
async fn accept<F, Fut>(
    listener: ApiListener,
    connections: std::sync::Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
    serve_one: F,
) -> std::io::Result<()>
where
    F: Fn(ApiStream, Slot, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limits = *connections.limits();
    let keeper = tokio::spawn(connections.clone().keep(shutdown.clone()));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was taken: keep
                // serving the ones open, and try again shortly.
                tracing::warn!(error = %e, "local API: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = connections.admit() else {
            let refused = connections.stats.refused.load(Ordering::Relaxed);
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max = limits.max_connections,
                    "local API: every connection is mid-request; a new one was closed"
                );
            }
            continue;
        };
        tasks.spawn(serve_one(stream, slot, shutdown.clone()));
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    keeper.abort();
    Ok(())
}

/// Serves one connection until the client closes it, a deadline or an eviction closes it, or
/// the API stops (then the request in progress finishes first).
async fn connection<S>(
    stream: S,
    slot: Slot,
    router: Router,
    unix: bool,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracked = slot.tracked.clone();
    let io = TokioIo::new(Watched::new(stream, tracked.clone()));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let tracked = tracked.clone();
        tracked.head_read(!request.body().is_end_stream());
        let mut request =
            request.map(|body| axum::body::Body::new(WatchedBody::new(body, tracked.clone())));
        if unix {
            request.extensions_mut().insert(LocalSocket);
        }
        let answer = router.clone().call(request);
        async move {
            let response = answer.await;
            tracked.answered();
            Ok::<_, Infallible>(match response {
                Ok(response) => response,
                Err(never) => match never {},
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "local API connection ended");
            }
        }
        _ = slot.tracked.closed() => {
            tracing::debug!("local API connection closed: past its deadline, or evicted");
        }
        _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(slot);
}

/// Serves the gRPC form of the local API (HTTP/2 without TLS, as gRPC clients speak it to
/// a local server) on `listener`, under the HTTP form's rules: the connection cap and
/// eviction, a head deadline from a connection's first byte to its first call, a body
/// deadline per call, and the admission of [`super::grpc::guard`]. Until `shutdown` turns
/// true; then the calls in progress finish.
pub async fn serve_grpc(
    listener: ApiListener,
    api: super::grpc::GrpcApi,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let connections = api.connections();
    accept(
        listener,
        connections,
        shutdown,
        move |stream, slot, stop| {
            let api = api.clone();
            async move {
                match stream {
                    ApiStream::Tcp(s) => grpc_connection(s, slot, api, stop).await,
                    ApiStream::Unix(s) => grpc_connection(s, slot, api, stop).await,
                }
            }
        },
    )
    .await
}

/// Ends a call's hold on its connection however the call ends (answered, or dropped when
/// the client reset it).
struct OpenStream(std::sync::Arc<super::connections::Tracked>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// Serves one HTTP/2 connection until the client closes it, a deadline or an eviction
/// closes it, or the API stops (then the calls in progress finish first).
async fn grpc_connection<S>(
    stream: S,
    slot: Slot,
    api: super::grpc::GrpcApi,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracked = slot.tracked.clone();
    tracked.expect_http2();
    let io = TokioIo::new(Watched::new(stream, tracked.clone()));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        tracked.stream_opened();
        let open = OpenStream(tracked.clone());
        let (api, tracked) = (api.clone(), tracked.clone());
        async move {
            let response = api.call(request, &tracked).await;
            drop(open);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .max_concurrent_streams(u32::try_from(super::MAX_WAITING).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .timer(hyper_util::rt::TokioTimer::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "gRPC connection ended");
            }
        }
        _ = slot.tracked.closed() => {
            tracing::debug!("gRPC connection closed: past a deadline, or evicted");
            // A message past its deadline: GOAWAY, so that its answer (and the others made)
            // still go out and calls in progress get a moment to end. Otherwise at once.
            if slot.tracked.graceful() {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GOAWAY_GRACE, conn.as_mut()).await;
            }
        }
        _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(slot);
}

/// How long a gRPC connection closed for a deadline or an eviction lets its calls end.
const GOAWAY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;
    use crate::local_api::connections::Phase;
    use crate::local_api::tests::{PATIENCE, wait_until};
    use crate::local_api::{ApiAddress, ApiLimits};

    async fn start(limits: ApiLimits) -> (std::net::SocketAddr, std::sync::Arc<Connections>) {
        let listener = ApiAddress::Tcp(([127, 0, 0, 1], 0).into())
            .bind()
            .await
            .expect("bind");
        let addr = listener.local_address().expect("addr").tcp().expect("tcp");
        let router = Router::new().route("/echo", post(|body: Bytes| async move { body }));
        let table = Connections::new(limits);
        let connections = table.clone();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let _stop = stop;
            let _ = serve(listener, router, connections, stopped).await;
        });
        (addr, table)
    }

    const ECHO: &[u8] = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi";

    /// Sends one whole request on `stream` and reads its answer (the echo's is short).
    async fn echo(stream: &mut TcpStream) -> String {
        stream.write_all(ECHO).await.expect("write");
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
            .await
            .expect("an answer in time")
            .expect("read");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    /// Whether the server closed `stream` (end of stream, or reset) without answering.
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut byte = [0; 1];
        matches!(
            tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_slow_head_or_body_is_cut_off_and_an_idle_keep_alive_is_not() {
        let (addr, _) = start(ApiLimits {
            max_connections: 16,
            header_timeout_ms: 300,
            body_timeout_ms: 300,
        })
        .await;
        let mut slow_head = TcpStream::connect(addr).await.expect("connect");
        slow_head
            .write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .expect("write");
        let mut slow_body = TcpStream::connect(addr).await.expect("connect");
        slow_body
            .write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .expect("write");
        let mut keep_alive = TcpStream::connect(addr).await.expect("connect");
        assert!(echo(&mut keep_alive).await.starts_with("HTTP/1.1 200"));
        assert!(
            closed_by_server(&mut slow_head).await,
            "a head that never ends"
        );
        assert!(
            closed_by_server(&mut slow_body).await,
            "a body that never ends"
        );
        // Idle for longer than either deadline, between requests: still served.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(echo(&mut keep_alive).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection_and_refuses_when_none_is_idle() {
        let (addr, table) = start(ApiLimits {
            max_connections: 2,
            header_timeout_ms: 60_000,
            body_timeout_ms: 60_000,
        })
        .await;
        let mut oldest = TcpStream::connect(addr).await.expect("connect");
        assert!(echo(&mut oldest).await.starts_with("HTTP/1.1 200"));
        let mut second = TcpStream::connect(addr).await.expect("connect");
        assert!(echo(&mut second).await.starts_with("HTTP/1.1 200"));
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert!(
            echo(&mut third).await.starts_with("HTTP/1.1 200"),
            "a new connection is served when the table is full of idle ones"
        );
        assert!(
            closed_by_server(&mut oldest).await,
            "the longest-idle one made room"
        );
        for stream in [&mut second, &mut third] {
            stream
                .write_all(b"POST /echo HTTP/1.1\r\n")
                .await
                .expect("write");
        }
        wait_until("both connections mid-request", || {
            table.count(Phase::Head) == 2
        })
        .await;
        let mut refused = TcpStream::connect(addr).await.expect("connect");
        assert!(
            closed_by_server(&mut refused).await,
            "no idle connection to evict: the new one is closed"
        );
        assert_eq!(table.open_count(), 2);
        let page = crate::local_api::connections::exposition("edge", &[("http", &table)]);
        assert!(
            page.contains(r#"tern_agent_api_connections{agent="edge",api="http"} 2"#),
            "{page}"
        );
        for reason in ["evicted", "refused"] {
            let line = format!(
                r#"tern_agent_api_connections_closed_total{{agent="edge",api="http",reason="{reason}"}} 1"#
            );
            assert!(page.contains(&line), "{page}");
        }
    }
}
