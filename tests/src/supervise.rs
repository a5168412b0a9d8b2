//! An agent under a supervisor, as systemd runs it (`Restart=always`, `RestartSec=`,
//! `ExecStopPost=tern-agent record-exit`, a memory cgroup as `MemoryMax=` makes one): each run
//! is started in the cgroup, and when it exits the supervisor records how (`$EXIT_CODE`,
//! `$EXIT_STATUS`, `$SERVICE_RESULT`, the cgroup's OOM kills) and starts the next one.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::bin;

/// A memory cgroup with a limit (cgroup v1's memory controller or v2), removed when dropped.
#[derive(Debug)]
pub struct MemoryCgroup {
    path: PathBuf,
    /// `memory.oom_control` (v1) or `memory.events` (v2).
    events: PathBuf,
}

impl MemoryCgroup {
    /// A cgroup named `name` limited to `limit` bytes; `None` when this process cannot make
    /// one (not root, no memory controller): then the test skips, unless
    /// `TERN_REQUIRE_CGROUP=1` (CI as root), where it fails.
    pub fn create(name: &str, limit: u64) -> anyhow::Result<Option<Self>> {
        let made = Self::make(name, limit);
        match made {
            Ok(cgroup) => Ok(Some(cgroup)),
            Err(e) if std::env::var("TERN_REQUIRE_CGROUP").is_ok_and(|v| v == "1") => {
                Err(e.context("TERN_REQUIRE_CGROUP=1 but no memory cgroup can be made"))
            }
            Err(e) => {
                tern_skips::skip(format!("no memory cgroup can be made here ({e:#})"));
                Ok(None)
            }
        }
    }

    fn make(name: &str, limit: u64) -> anyhow::Result<Self> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() {
            let path = v1.join(name);
            std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
            std::fs::write(path.join("memory.limit_in_bytes"), limit.to_string())
                .context("set memory.limit_in_bytes")?;
            return Ok(Self {
                events: path.join("memory.oom_control"),
                path,
            });
        }
        let v2 = Path::new("/sys/fs/cgroup");
        anyhow::ensure!(
            std::fs::read_to_string(v2.join("cgroup.controllers"))?.contains("memory"),
            "no memory controller in cgroup v2"
        );
        let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
        let path = v2.join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        std::fs::write(path.join("memory.max"), limit.to_string()).context("set memory.max")?;
        let _ = std::fs::write(path.join("memory.swap.max"), "0");
        Ok(Self {
            events: path.join("memory.events"),
            path,
        })
    }

    /// OOM kills the kernel counted in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(&self.events)
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once every run has exited; a cgroup directory is removed with rmdir.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `tern-agent run` on `dir` under a restart loop, each run in `cgroup` when given.
#[derive(Debug)]
pub struct Supervised {
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    /// How each run ended, in order (the supervisor's words).
    pub exits: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    /// Starts the loop: runs log to `logs/NAME-run-N.log`; `restart_sec` between an exit and
    /// the next run.
    pub fn start(
        dir: &Path,
        cgroup: Option<Arc<MemoryCgroup>>,
        logs: &Path,
        name: &str,
        restart_sec: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(0));
        let exits = Arc::new(Mutex::new(Vec::new()));
        let (dir, logs, name) = (dir.to_owned(), logs.to_owned(), name.to_owned());
        let (stop2, pid2, exits2) = (stop.clone(), pid.clone(), exits.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !stop2.load(Ordering::SeqCst) {
                n += 1;
                let log = logs.join(format!("{name}-run-s{n}.log"));
                let Ok(file) = std::fs::File::create(&log) else {
                    return;
                };
                let oom_kills = || cgroup.as_ref().map_or(0, |c| c.oom_kills());
                let oom_before = oom_kills();
                // The run joins the cgroup before it becomes the agent: nothing it allocates is
                // outside the limit.
                let join = cgroup
                    .as_ref()
                    .map(|c| format!("echo $$ > '{}' && ", c.procs().display()))
                    .unwrap_or_default();
                let script = format!(
                    "{join}exec '{}' run --data-dir '{}'",
                    bin("tern-agent").display(),
                    dir.display()
                );
                let Ok(stderr) = file.try_clone() else { return };
                let child = Command::new("sh")
                    .args(["-c", &script])
                    .env("TERN_LOG", "info,tern_agent=debug")
                    .stdin(Stdio::null())
                    .stdout(file)
                    .stderr(stderr)
                    .spawn();
                let Ok(mut child) = child else { return };
                pid2.store(child.id(), Ordering::SeqCst);
                let status = child.wait();
                pid2.store(0, Ordering::SeqCst);
                let Ok(status) = status else { return };
                // What systemd hands `ExecStopPost=`.
                let oom = oom_kills() > oom_before;
                let (code, value, result) = match (status.code(), status.signal()) {
                    (Some(0), _) => ("exited", "0".to_owned(), "success"),
                    (Some(c), _) => ("exited", c.to_string(), "exit-code"),
                    (None, Some(s)) => (
                        "killed",
                        signal_name(s),
                        if oom { "oom-kill" } else { "signal" },
                    ),
                    (None, None) => ("exited", "?".to_owned(), "exit-code"),
                };
                let _ = Command::new(bin("tern-agent"))
                    .args(["record-exit", "--data-dir"])
                    .arg(&dir)
                    .env("EXIT_CODE", code)
                    .env("EXIT_STATUS", &value)
                    .env("SERVICE_RESULT", result)
                    .status();
                if let Ok(mut exits) = exits2.lock() {
                    exits.push(format!("{code} {value} ({result})"));
                }
                std::thread::sleep(restart_sec);
            }
        });
        Self {
            stop,
            pid,
            exits,
            thread: Some(thread),
        }
    }

    /// The run that is up (0: none).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// How many runs have ended.
    pub fn exit_count(&self) -> usize {
        self.exits.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Stops the loop: SIGTERM to the run that is up, then no restart.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        9 => "KILL".into(),
        15 => "TERM".into(),
        6 => "ABRT".into(),
        11 => "SEGV".into(),
        other => other.to_string(),
    }
}
