//! HTTPS: a server loop that runs an axum router behind rustls, and a small JSON client.
//!
//! Both are HTTP/1.1: the admin API and enrollment are low-volume request/response APIs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::ServiceExt;
use tracing::{Instrument, debug, info_span};

/// Concurrent HTTPS connections one server accepts; further ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one HTTPS connection may stay open (these APIs answer in milliseconds).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Time a client has to send a request's headers (a slow client cannot hold a slot).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body the client reads.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Time the client gives one request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return debug!("TLS handshake timed out"),
                };
                // Handlers see the client's address as axum's `ConnectInfo`.
                let service = hyper::service::service_fn(
                    move |mut request: hyper::Request<hyper::body::Incoming>| {
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        app.clone().oneshot(request)
                    },
                );
                let serving = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tls), service);
                // A slow body or a slow reader cannot hold a slot for longer than this.
                match tokio::time::timeout(CONNECTION_DEADLINE, serving).await {
                    Ok(Err(e)) => debug!(error = %e, "connection ended with an error"),
                    Err(_) => debug!("connection deadline passed; closing"),
                    Ok(Ok(())) => {}
                }
            }
            .instrument(info_span!("https_conn", %peer)),
        );
    }
}

/// Why an HTTPS request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("request to {addr} timed out")]
    Timeout { addr: String },
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("response body too large or unreadable")]
    Body,
    #[error("{message} (HTTP {status})")]
    Status { status: u16, message: String },
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A client for one HTTPS server.
#[derive(Clone)]
pub struct HttpsClient {
    addr: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    bearer: Option<String>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpsClient {
    /// A client for `addr` (`host:port`) that verifies the server as
    /// [`tern_proto::CONTROL_PLANE_SERVER_NAME`].
    pub fn new(addr: impl Into<String>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            addr: addr.into(),
            server_name: ServerName::try_from(tern_proto::CONTROL_PLANE_SERVER_NAME)
                .expect("the control plane's server name is a valid DNS name"),
            tls,
            bearer: None,
        }
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path`, decoding a JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, HttpsError> {
        let body = self.send(hyper::Method::GET, path, None).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, HttpsError> {
        self.send_json(hyper::Method::POST, path, body).await
    }

    /// `method path` with a JSON body, decoding a JSON answer.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: &B,
    ) -> Result<T, HttpsError> {
        let body = serde_json::to_vec(body)?;
        let answer = self.send(method, path, Some(body)).await?;
        Ok(serde_json::from_slice(&answer)?)
    }

    /// Sends one request; a non-2xx answer becomes [`HttpsError::Status`] with the server's
    /// `{error}` message.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, HttpsError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| HttpsError::Timeout {
                addr: self.addr.clone(),
            })?
    }

    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, HttpsError> {
        let addr = self.resolve().await?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpsError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| HttpsError::Tls {
                addr: self.addr.clone(),
                source,
            })?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, tern_proto::CONTROL_PLANE_SERVER_NAME)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let (status, body) = send_on(tls, request).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<tern_proto::api::ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(HttpsError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }

    async fn resolve(&self) -> Result<SocketAddr, HttpsError> {
        resolve(&self.addr).await
    }
}

/// Sends `request` over HTTP/1.1 on `io` (TCP, or TLS over TCP) and reads the answer, its body
/// bounded by [`MAX_RESPONSE_BYTES`].
async fn send_on<S>(
    io: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), HttpsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "client connection ended with an error");
        }
    });
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|_| HttpsError::Body)?
        .to_bytes();
    Ok((status, body))
}

async fn resolve(addr: &str) -> Result<SocketAddr, HttpsError> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| HttpsError::Resolve {
            addr: addr.to_owned(),
            source,
        })?;
    addrs.next().ok_or_else(|| HttpsError::Resolve {
        addr: addr.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    })
}

/// TLS for a [`post_once`]: the client configuration and the name the server's certificate
/// must carry.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// One POST over HTTP/1.1 to `addr` (`host:port`), over TLS when `tls` is given, for
/// receivers outside the fleet such as an OpenTelemetry collector; a non-2xx answer is
/// [`HttpsError::Status`].
pub async fn post_once(
    addr: &str,
    tls: Option<&TlsTarget>,
    path: &str,
    content_type: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<Bytes, HttpsError> {
    let exchange = async {
        let resolved = resolve(addr).await?;
        let tcp = TcpStream::connect(resolved)
            .await
            .map_err(|source| HttpsError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let mut request = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let (status, body) = match tls {
            Some(tls) => {
                let stream = TlsConnector::from(tls.config.clone())
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|source| HttpsError::Tls {
                        addr: addr.to_owned(),
                        source,
                    })?;
                send_on(stream, request).await?
            }
            None => send_on(tcp, request).await?,
        };
        if !status.is_success() {
            return Err(HttpsError::Status {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| HttpsError::Timeout {
            addr: addr.to_owned(),
        })?
}
