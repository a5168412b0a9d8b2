//! Test support (used by this crate's tests and the end-to-end ones; nothing in `serve` calls
//! it): a PostgreSQL server for tests, `initdb` and `postgres` from the machine's packages
//! (`/usr/lib/postgresql/*/bin`, or `TERN_POSTGRES_BIN`), in a temporary directory, reached
//! through a Unix socket there, run as an unprivileged user when the tests run as root (`initdb` refuses
//! root). Without the binaries the caller skips, unless `TERN_REQUIRE_POSTGRES=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The server the tests running at once share (started by the first, stopped with the last),
/// or `None` (a skip) where PostgreSQL is not installed.
pub fn shared() -> Option<Arc<TestPostgres>> {
    static SHARED: Mutex<Weak<TestPostgres>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(server) = slot.upgrade() {
        return Some(server);
    }
    let server = Arc::new(TestPostgres::start()?);
    *slot = Arc::downgrade(&server);
    Some(server)
}

/// A namespace no other backend of this test run uses.
pub fn namespace() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running server, stopped and deleted when dropped.
#[derive(Debug)]
pub struct TestPostgres {
    pub url: String,
    child: Child,
    bin: PathBuf,
    data: PathBuf,
    dir: tempfile::TempDir,
    /// The port of its socket, and of its TCP listener when it has one.
    port: u16,
    /// Settings beyond [`spawn`]'s own (`-c name=value` pairs).
    settings: Vec<String>,
}

/// A server that also listens on loopback TCP with TLS: see [`TestPostgres::start_tls`].
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The server's certificate chain and key (PEM).
    pub cert_pem: String,
    pub key_pem: String,
    /// The password of the `tern` role, which TCP clients must give (SCRAM).
    pub password: String,
}

/// The directory of PostgreSQL's server binaries, if the machine has them.
fn binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TERN_POSTGRES_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// `program` run as the unprivileged `nobody` when we are root, else as ourselves.
fn as_unprivileged(program: &Path) -> Command {
    // Root is uid 0: the owner of this process's own /proc entry.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "nobody", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl TestPostgres {
    /// Starts a server, or `None` (a skip) where PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Starts a server that, besides its socket, listens on `127.0.0.1:port` for TLS only:
    /// `hostssl` with SCRAM for the `tern` role, any TCP connection without TLS refused.
    pub fn start_tls(tls: &TlsSettings) -> Option<Self> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&TlsSettings>) -> Option<Self> {
        let Some(bin) = binaries() else {
            tern_skips::skip_unless_required(
                "TERN_REQUIRE_POSTGRES",
                "PostgreSQL's server binaries are missing",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        // The unprivileged user must own the directory it works in.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let status = as_unprivileged(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "tern", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        let (port, settings) = match tls {
            None => (PORT, vec!["listen_addresses=".to_owned()]),
            Some(tls) => {
                install_tls(dir.path(), &data, tls);
                let settings = [
                    "listen_addresses=127.0.0.1",
                    "ssl=on",
                    "ssl_cert_file=server.crt",
                    "ssl_key_file=server.key",
                    "password_encryption=scram-sha-256",
                ];
                (tls.port, settings.map(str::to_owned).to_vec())
            }
        };
        let child = spawn(&bin, &data, dir.path(), port, &settings);
        let socket_dir = dir.path().display().to_string().replace('/', "%2F");
        let server = Self {
            url: format!("postgres://tern@{socket_dir}:{port}/postgres"),
            child,
            bin,
            data,
            dir,
            port,
            settings,
        };
        server.wait_ready();
        if let Some(tls) = tls {
            let password = tls.password.replace('\'', "''");
            execute(
                &server.url,
                &format!("ALTER ROLE tern PASSWORD '{password}'"),
            )
            .expect("the role's password is set");
        }
        Some(server)
    }

    /// Ready once it answers a query: it accepts connections while it is still starting.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(error) = execute(&self.url, "SELECT 1") {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {error}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (every connection drops, as in a crash) and starts it again
    /// on the same data and socket.
    pub fn restart(&mut self) {
        self.stop();
        self.up();
    }

    /// Stops the server at once, for an outage: [`TestPostgres::up`] ends it.
    pub fn down(&mut self) {
        self.stop();
    }

    /// Starts the stopped server again on the same data and socket.
    pub fn up(&mut self) {
        self.child = spawn(
            &self.bin,
            &self.data,
            self.dir.path(),
            self.port,
            &self.settings,
        );
        self.wait_ready();
    }

    fn stop(&mut self) {
        let _ = as_unprivileged(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new database of the server, for a test that must start empty; its URL.
    pub fn database(&self, name: &str) -> String {
        execute(&self.url, &format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
        let server = self.url.trim_end_matches("/postgres");
        format!("{server}/{name}")
    }
}

/// Runs `work` on a connection of its own to `url`, on a runtime of its own.
fn on_connection<T, F>(
    url: &str,
    work: impl FnOnce(tokio_postgres::Client) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let result = work(client).await.map_err(|e| e.to_string());
        let _ = driver.await;
        result
    })
}

/// Runs `sql` on a connection of its own to `url`.
pub fn execute(url: &str, sql: &str) -> Result<(), String> {
    on_connection(url, |client| async move { client.batch_execute(sql).await })
}

/// The first column of every row `sql` returns on a connection of its own to `url`, as text
/// (for benches reading the server's statistics).
pub fn query_text(url: &str, sql: &str) -> Result<Vec<String>, String> {
    on_connection(url, |client| async move {
        client
            .query(sql, &[])
            .await?
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect()
    })
}

/// The first column of the first row `sql` returns on a connection of its own to `url`, as
/// a number (for benches reading the server's statistics).
pub fn query_number(url: &str, sql: &str) -> Result<i64, String> {
    on_connection(url, |client| async move {
        client.query_one(sql, &[]).await?.try_get::<_, i64>(0)
    })
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port in the socket's name (`.s.PGSQL.5432`); no TCP port is opened.
const PORT: u16 = 5432;

/// Starts `postgres` on `data`, listening on a Unix socket in `dir` (and where `settings`
/// say): without a TCP listener, nothing another test or process binds can be taken for it.
fn spawn(bin: &Path, data: &Path, dir: &Path, port: u16, settings: &[String]) -> Child {
    let mut command = as_unprivileged(&bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "fsync=off", "-c", "max_connections=200"]);
    for setting in settings {
        command.arg("-c").arg(setting);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts")
}

/// Puts the server's certificate and key in `data` (the key 0600, owned by the user the
/// server runs as, as it demands) and lets TCP clients in with TLS and a password only.
fn install_tls(dir: &Path, data: &Path, tls: &TlsSettings) {
    let hba = "local all all trust\n\
               hostssl all tern 127.0.0.1/32 scram-sha-256\n\
               hostnossl all all 127.0.0.1/32 reject\n";
    for (name, text) in [
        ("server.crt", tls.cert_pem.as_str()),
        ("server.key", &tls.key_pem),
        ("pg_hba.conf", hba),
    ] {
        let staged = dir.join(name);
        std::fs::write(&staged, text).expect("stage the file");
        let status = as_unprivileged(Path::new("/usr/bin/install"))
            .args(["-m", "600"])
            .arg(&staged)
            .arg(data.join(name))
            .status()
            .expect("install runs");
        assert!(status.success(), "install {name} failed");
        std::fs::remove_file(&staged).expect("remove the staged file");
    }
}
