//! The run marker and what the system says of a run that died: the adapter around the exit
//! ledger.
//!
//! `D/run.json` names the run of the agent that is up, the revisions it serves and loads, and
//! its memory cgroup's OOM-kill count at start; it is rewritten (atomically) whenever those
//! change and removed by an orderly stop, so a marker found at start means the previous run
//! died. Its reason comes from what the system left behind: `D/last-exit.json`, written by
//! `tern-agent record-exit` from the supervisor's exit status (systemd runs it as
//! `ExecStopPost=` with `$SERVICE_RESULT`, `$EXIT_CODE` and `$EXIT_STATUS`); the memory
//! cgroup's `oom_kill` counter (cgroup v2 `memory.events`, v1 `memory.oom_control`), risen since
//! the dead run started; and `D/run.panic`, the last panic message of the run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tern_proto::message::{RunningRevision, UncleanExit};
use tracing::warn;

use crate::data_dir::AgentDataDir;

/// What `D/run.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MarkerRecord {
    run: String,
    pid: u32,
    started_ms: u64,
    /// The memory cgroup's OOM kills when the run started, where the agent can read them.
    oom_kills: Option<u64>,
    serving: BTreeSet<RunningRevision>,
    loading: BTreeSet<RunningRevision>,
}

/// What the supervisor said of the last exit (`D/last-exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorWord {
    pub at_ms: u64,
    /// systemd's `$SERVICE_RESULT`: `success`, `exit-code`, `signal`, `core-dump`,
    /// `oom-kill`, `timeout`, `watchdog`, ...
    pub service_result: Option<String>,
    /// `$EXIT_CODE`: `exited`, `killed` or `dumped`.
    pub exit_code: Option<String>,
    /// `$EXIT_STATUS`: the exit status, or the signal's name.
    pub exit_status: Option<String>,
}

impl SupervisorWord {
    /// From the variables systemd gives `ExecStopPost=` commands.
    pub fn from_env(at_ms: u64) -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            at_ms,
            service_result: var("SERVICE_RESULT"),
            exit_code: var("EXIT_CODE"),
            exit_status: var("EXIT_STATUS"),
        }
    }

    fn describe(&self) -> Option<String> {
        let status = self.exit_status.as_deref().unwrap_or("?");
        let how = match self.exit_code.as_deref() {
            Some("killed") => Some(format!("killed by signal {status}")),
            Some("dumped") => Some(format!("dumped core on signal {status}")),
            Some("exited") => Some(format!("exited with status {status}")),
            _ => None,
        };
        let result = self
            .service_result
            .as_deref()
            .filter(|r| !matches!(*r, "success" | "exit-code" | "signal" | "core-dump"));
        match (how, result) {
            (Some(how), Some(result)) => Some(format!("{how} (the supervisor says: {result})")),
            (Some(how), None) => Some(how),
            (None, Some(result)) => Some(format!("the supervisor says: {result}")),
            (None, None) => None,
        }
    }
}

/// Records the supervisor's word on the exit that just happened (`tern-agent record-exit`).
pub fn record_exit(dir: &AgentDataDir, word: &SupervisorWord) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(word).map_err(std::io::Error::other)?;
    dir.write(&last_exit(dir), &bytes, false)
        .map_err(std::io::Error::other)
}

fn marker(dir: &AgentDataDir) -> PathBuf {
    dir.root().join("run.json")
}

fn last_exit(dir: &AgentDataDir) -> PathBuf {
    dir.root().join("last-exit.json")
}

fn panic_file(dir: &AgentDataDir) -> PathBuf {
    dir.root().join("run.panic")
}

/// The marker of the run that is up.
#[derive(Debug)]
pub struct RunMarker {
    dir: AgentDataDir,
    record: Mutex<MarkerRecord>,
}

impl RunMarker {
    /// Starts run `run` at `now_ms`: reads what the previous run left (an unclean exit, when it
    /// left a marker) and writes this run's marker.
    pub fn start(
        dir: &AgentDataDir,
        run: &str,
        now_ms: u64,
    ) -> std::io::Result<(Self, Option<UncleanExit>)> {
        let previous = match std::fs::read(marker(dir)) {
            Ok(bytes) => Some(serde_json::from_slice::<MarkerRecord>(&bytes).unwrap_or_else(
                |e| {
                    warn!(error = %e, "the previous run's marker is unreadable; counted as an unclean exit of no known revision");
                    MarkerRecord::default()
                },
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let oom_kills = oom_kills();
        let exit = previous.map(|before| {
            let mut reasons = Vec::new();
            if let Some(word) = read_json::<SupervisorWord>(&last_exit(dir))
                .filter(|w| w.at_ms >= before.started_ms)
                .and_then(|w| w.describe())
            {
                reasons.push(word);
            }
            if let (Some(then), Some(now)) = (before.oom_kills, oom_kills)
                && now > then
            {
                reasons.push(format!(
                    "the kernel's OOM killer killed {} process(es) of its memory cgroup (limit reached)",
                    now - then
                ));
            }
            if let Ok(message) = std::fs::read_to_string(panic_file(dir))
                && !message.trim().is_empty()
            {
                reasons.push(format!("last panic: {}", message.trim()));
            }
            UncleanExit {
                run: before.run,
                started_ms: before.started_ms,
                detected_ms: now_ms,
                serving: before.serving.into_iter().collect(),
                loading: before.loading.into_iter().collect(),
                reason: reasons.join("; "),
            }
        });
        for stale in [last_exit(dir), panic_file(dir)] {
            let _ = std::fs::remove_file(stale);
        }
        let this = Self {
            dir: dir.clone(),
            record: Mutex::new(MarkerRecord {
                run: run.to_owned(),
                pid: std::process::id(),
                started_ms: now_ms,
                oom_kills,
                ..MarkerRecord::default()
            }),
        };
        this.write()?;
        Ok((this, exit))
    }

    fn write(&self) -> std::io::Result<()> {
        let bytes = {
            let record = self.record.lock().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&*record).map_err(std::io::Error::other)?
        };
        self.dir
            .write(&marker(&self.dir), &bytes, false)
            .map_err(std::io::Error::other)
    }

    fn change(&self, change: impl FnOnce(&mut MarkerRecord) -> bool) {
        let changed = change(&mut self.record.lock().unwrap_or_else(|p| p.into_inner()));
        if changed && let Err(e) = self.write() {
            warn!(error = %e, "cannot update the run marker");
        }
    }

    /// `pipeline` now serves `revision` (`None`: nothing).
    pub fn serving(&self, pipeline: &str, revision: Option<u64>) {
        self.change(|record| {
            let before = record.serving.clone();
            record.serving.retain(|r| r.pipeline != pipeline);
            if let Some(revision) = revision {
                record.serving.insert(RunningRevision {
                    pipeline: pipeline.to_owned(),
                    revision,
                });
            }
            record.serving != before
        });
    }

    /// `pipeline`'s `revision` started (`true`) or finished (`false`) loading.
    pub fn loading(&self, pipeline: &str, revision: u64, on: bool) {
        let running = RunningRevision {
            pipeline: pipeline.to_owned(),
            revision,
        };
        self.change(|record| {
            if on {
                record.loading.insert(running)
            } else {
                record.loading.remove(&running)
            }
        });
    }

    /// An orderly stop: the marker goes.
    pub fn finish(&self) {
        if let Err(e) = std::fs::remove_file(marker(&self.dir))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(error = %e, "cannot remove the run marker");
        }
    }
}

/// Keeps the message of the run's last panic in `D/run.panic`, after the usual report: read
/// only if the run then dies.
pub fn record_panics(dir: &AgentDataDir) {
    let path = panic_file(dir);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let _ = std::fs::write(&path, info.to_string());
    }));
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The OOM kills the kernel counted in this process's memory cgroup, where it can be read.
pub fn oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    oom_kills_in(&cgroups, Path::new("/sys/fs/cgroup"))
}

/// [`oom_kills`] from `/proc/self/cgroup`'s text and the cgroup filesystem at `root`: the v1
/// memory controller's `memory.oom_control` where one is mounted, else v2's `memory.events`.
fn oom_kills_in(cgroups: &str, root: &Path) -> Option<u64> {
    let counter = |file: PathBuf| -> Option<u64> {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    };
    let relative = |path: &str| path.trim_start_matches('/').to_owned();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory")
            && let Some(n) = counter(
                root.join("memory")
                    .join(relative(path))
                    .join("memory.oom_control"),
            )
        {
            return Some(n);
        }
    }
    let unified = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let path = relative(unified);
    counter(root.join(&path).join("memory.events"))
        .or_else(|| counter(root.join("unified").join(&path).join("memory.events")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_left_behind_is_an_unclean_exit_with_the_systems_reasons() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = AgentDataDir::new(tmp.path());
        let (first, exit) = RunMarker::start(&dir, "one", 1_000).expect("start");
        assert_eq!(exit, None, "no marker before the first run");
        first.serving("scores", Some(2));
        first.loading("scores", 3, true);
        // The run dies; its supervisor records how, as systemd's ExecStopPost would.
        record_exit(
            &dir,
            &SupervisorWord {
                at_ms: 2_000,
                service_result: Some("oom-kill".into()),
                exit_code: Some("killed".into()),
                exit_status: Some("KILL".into()),
            },
        )
        .expect("record");
        std::fs::write(panic_file(&dir), "panicked at src/x.rs:1:1: boom").expect("panic");
        let (second, exit) = RunMarker::start(&dir, "two", 3_000).expect("start");
        let exit = exit.expect("an unclean exit");
        assert_eq!(exit.run, "one");
        assert_eq!((exit.started_ms, exit.detected_ms), (1_000, 3_000));
        let names = |revisions: &[RunningRevision]| -> Vec<(String, u64)> {
            revisions
                .iter()
                .map(|r| (r.pipeline.clone(), r.revision))
                .collect()
        };
        assert_eq!(names(&exit.serving), [("scores".into(), 2)]);
        assert_eq!(names(&exit.loading), [("scores".into(), 3)]);
        assert!(
            exit.reason
                .contains("killed by signal KILL (the supervisor says: oom-kill)")
                && exit
                    .reason
                    .contains("last panic: panicked at src/x.rs:1:1: boom"),
            "{}",
            exit.reason
        );
        // An orderly stop leaves nothing to find.
        second.finish();
        let (_, exit) = RunMarker::start(&dir, "three", 4_000).expect("start");
        assert_eq!(exit, None);
    }

    #[test]
    fn a_supervisor_word_older_than_the_dead_run_is_not_its_reason() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = AgentDataDir::new(tmp.path());
        let (_run, _) = RunMarker::start(&dir, "one", 5_000).expect("start");
        record_exit(&dir, &SupervisorWord::from_env(4_000)).expect("record");
        let (_, exit) = RunMarker::start(&dir, "two", 6_000).expect("start");
        assert_eq!(exit.expect("unclean").reason, "");
    }

    #[test]
    fn oom_kills_are_read_from_either_cgroup_version() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let v1 = tmp.path().join("memory/svc");
        std::fs::create_dir_all(&v1).expect("dir");
        std::fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
        )
        .expect("write");
        assert_eq!(oom_kills_in("4:memory:/svc\n0::/\n", tmp.path()), Some(4));
        let v2 = tmp.path().join("system.slice/agent.service");
        std::fs::create_dir_all(&v2).expect("dir");
        std::fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n",
        )
        .expect("write");
        assert_eq!(
            oom_kills_in("0::/system.slice/agent.service\n", tmp.path()),
            Some(2)
        );
        assert_eq!(oom_kills_in("0::/elsewhere\n", tmp.path()), None);
    }
}
