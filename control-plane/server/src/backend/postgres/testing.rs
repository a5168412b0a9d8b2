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
        let Some(bin) = binaries() else {
            assert!(
                !std::env::var("TERN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1"),
                "TERN_REQUIRE_POSTGRES=1 but PostgreSQL's server binaries are missing"
            );
            eprintln!("PostgreSQL is not installed: skipped");
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
        let child = spawn(&bin, &data, dir.path());
        let socket_dir = dir.path().display().to_string().replace('/', "%2F");
        let server = Self {
            url: format!("postgres://tern@{socket_dir}:{PORT}/postgres"),
            child,
            bin,
            data,
            dir,
        };
        server.wait_ready();
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
        self.child = spawn(&self.bin, &self.data, self.dir.path());
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

/// Starts `postgres` on `data`, listening on a Unix socket in `dir` only: nothing another
/// test or process binds can be taken for this server.
fn spawn(bin: &Path, data: &Path, dir: &Path) -> Child {
    as_unprivileged(&bin.join("postgres"))
        .arg("-D")
        .arg(data)
        .args(["-p", &PORT.to_string(), "-c", "listen_addresses="])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "fsync=off", "-c", "max_connections=200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts")
}
