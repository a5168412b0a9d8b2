//! Full disks, end to end: a control plane and an agent whose data directories sit on a
//! 48 MiB tmpfs, filled by a file and freed again. Mounting needs root or `sudo` without a
//! password (CI has one or the other and sets `TERN_REQUIRE_MOUNT=1`, so that these tests
//! cannot skip); elsewhere they say so and skip.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tern_e2e::{
    Agent, ControlPlane, FLEET_TIMEOUT, Fleet, Publisher, fast_config, path_str, wait_for,
};
use tern_proto::api::AgentStatus;

/// A small tmpfs mounted on a temporary directory, unmounted when dropped.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Whether `mount` and `umount` go through `sudo` (this process is not root).
    sudo: bool,
}

/// `program` as root: itself when this process is root, else through `sudo -n`.
fn as_root(program: &str, sudo: bool) -> Command {
    if sudo {
        let mut command = Command::new("sudo");
        command.args(["-n", program]);
        command
    } else {
        Command::new(program)
    }
}

impl SmallDisk {
    /// `None` when this process may not mount: not root, and no `sudo` without a password.
    fn mount(mib: u64) -> anyhow::Result<Option<Self>> {
        let ids = |key: &str| -> anyhow::Result<Option<String>> {
            Ok(std::fs::read_to_string("/proc/self/status")?
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned)))
        };
        let (uid, gid) = (ids("Uid:")?, ids("Gid:")?);
        let sudo = uid.as_deref() != Some("0");
        if sudo
            && !Command::new("sudo")
                .args(["-n", "true"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            tern_skips::skip_unless_required(
                "TERN_REQUIRE_MOUNT",
                "mounting a small filesystem needs root or sudo without a password",
            );
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path)?;
        // Owned by this process's user, so that it writes there as it would on its own disk.
        let mut options = format!("size={mib}m");
        if let (true, Some(uid), Some(gid)) = (sudo, uid, gid) {
            options.push_str(&format!(",uid={uid},gid={gid},mode=0755"));
        }
        let status = as_root("mount", sudo)
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(&path)
            .status()?;
        anyhow::ensure!(status.success(), "mount -t tmpfs failed ({status})");
        Ok(Some(Self {
            _dir: dir,
            path,
            sudo,
        }))
    }

    fn free(&self) -> anyhow::Result<u64> {
        Ok(tern_transport::storage::free_space(&self.path)?)
    }

    /// Writes a file until no more than `leave` bytes are free (0: until the disk is full).
    fn fill(&self, leave: u64) -> anyhow::Result<PathBuf> {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler)?;
        let chunk = vec![0x5a; 256 << 10];
        loop {
            let free = self.free()?;
            if free <= leave {
                break;
            }
            let n = (free - leave).min(chunk.len() as u64) as usize;
            match file.write_all(&chunk[..n]) {
                Ok(()) => {}
                Err(e) if tern_transport::storage::is_disk_full(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = file.sync_all();
        Ok(filler)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = as_root("umount", self.sudo)
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A pipeline whose step's config carries `padding` bytes besides its key.
fn pipeline(name: &str, release: &str, padding: usize) -> String {
    let pad = "x".repeat(padding);
    format!(
        r#"apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: {{ name: {name} }}
spec:
  steps:
    - name: post
      plugin: {release}
      config: {{ k: 1, pad: "{pad}" }}
"#
    )
}

/// `ternctl apply` of a pipeline named `name`; whether it worked.
fn apply(cp: &ControlPlane, dir: &Path, name: &str) -> anyhow::Result<bool> {
    apply_padded(cp, dir, name, 0)
}

/// Like [`apply`], with `padding` bytes in the pipeline's step config.
fn apply_padded(cp: &ControlPlane, dir: &Path, name: &str, padding: usize) -> anyhow::Result<bool> {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, pipeline(name, "topk:1", padding))?;
    Ok(cp
        .ternctl(&["apply", "-f", &path_str(&file)?])
        .status
        .success())
}

#[test]
fn a_control_plane_whose_disk_filled_and_was_freed_accepts_apply_and_push_again()
-> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount(48)? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let mut cp = ControlPlane::init(&disk.path, |config| {
        fast_config(config);
        config.min_free_bytes = 1 << 20;
    })?;
    // The logs stay readable whatever happens to the small disk.
    cp.log_dir = tmp.path().to_owned();
    cp.serve()?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    let plugin = tmp.path().join("topk.wasm");
    std::fs::copy(tern_e2e::component("topk"), &plugin)?;
    publisher.sign_and_push(&cp, &plugin, "plugin", "topk", 1)?;
    anyhow::ensure!(apply(&cp, tmp.path(), "before")?, "apply on a roomy disk");

    let filler = disk.fill(0)?;
    // A small record can still land in a page the database already has. If that apply says it
    // worked, it must keep its word through what follows (failing storage, restarts).
    let small_while_full = apply(&cp, tmp.path(), "small-while-full")?;
    // Bigger than the slack of the database's last written pages: this one cannot fit.
    anyhow::ensure!(
        !apply_padded(&cp, tmp.path(), "while-full", 64 << 10)?,
        "apply must fail while the disk is full"
    );
    let second = tmp.path().join("topk-2.wasm");
    std::fs::copy(&plugin, &second)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&second)?
        .write_all(&[0; 1])?;
    publisher.sign(&cp, "publisher", &second, "plugin", "topk", 2)?;
    let refused = cp.ternctl_fails(&["push", "--quiet", &path_str(&second)?])?;
    assert!(!refused.is_empty(), "push says why it failed");
    // Not ready (or already gone for its supervisor to restart it) while storage fails.
    wait_for(
        FLEET_TIMEOUT,
        "the control plane to say it is not ready",
        || {
            let exited = cp.process.as_mut().is_some_and(|p| p.exited());
            let not_ready = cp
                .admin_get("/readyz")
                .err()
                .is_some_and(|e| e.to_string().contains("storage fails"));
            (exited || not_ready).then_some(())
        },
    )?;

    std::fs::remove_file(&filler)?;
    // A supervisor's job: start it again whenever it exits.
    let mut restarts = 0;
    wait_for(Duration::from_secs(90), "apply to work again", || {
        if cp.process.as_mut().is_some_and(|p| p.exited()) {
            restarts += 1;
            cp.serve().ok()?;
        }
        apply(&cp, tmp.path(), "after").ok()?.then_some(())
    })?;
    cp.ternctl_ok(&["push", "--quiet", &path_str(&second)?])?;
    eprintln!(
        "apply and push work again after {restarts} restarts (the small apply on the full disk {})",
        if small_while_full { "worked" } else { "failed" }
    );
    if small_while_full {
        let pipelines = cp.ternctl_ok(&["get", "pipelines"])?;
        assert!(
            pipelines.contains("small-while-full"),
            "an apply that worked on the full disk was lost:\n{pipelines}"
        );
    }
    let metrics = cp.admin_get("/metrics")?;
    let free = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tern_control_plane_storage_free_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no free-space gauge in /metrics"))?;
    assert!(
        free > (8 << 20) as f64,
        "{free} bytes free after the filler went"
    );
    assert!(metrics.contains("tern_control_plane_storage_errors_total"));
    assert!(cp.admin_get("/readyz")?.contains("true"));
    let logs: String = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("serve-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("storage fails; not ready"),
        "the failure was logged (restarts: {restarts})"
    );
    Ok(())
}

#[test]
fn an_agent_whose_disk_filled_is_not_ready_then_serves_again_after_a_restart() -> anyhow::Result<()>
{
    let Some(disk) = SmallDisk::mount(48)? else {
        return Ok(());
    };
    let mut fleet = Fleet::start(0)?;
    let token = fleet.cp.token("site=a", "10m")?;
    // The data dir and the log on the small disk: a log that cannot be written must not stop
    // anything either.
    let root = disk.path.clone();
    let agent = Agent::join_with(&fleet.cp, &root, "edge-1", &token, "", &[])?;
    fleet.agents.push(agent);
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    fleet.serve_topk()?;
    let api = fleet.agents[0].api_addr()?;
    let ready = || {
        tern_e2e::http(api, "GET", "/v2/health/ready", "text/plain", b"")
            .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
    };
    assert_eq!(ready()?.0, 200);

    let filler = disk.fill(0)?;
    wait_for(FLEET_TIMEOUT, "the agent to say it is not ready", || {
        let process = &mut fleet.agents[0].process;
        if process.exited() {
            return Some(());
        }
        let (status, body) = ready().ok()?;
        (status == 503 && body.contains("storage fails")).then_some(())
    })?;
    // The disk stays full until storage has failed for longer than `RESTART_AFTER`: then the
    // agent stops by itself, asking its supervisor for a restart.
    wait_for(
        FLEET_TIMEOUT,
        "the agent to exit while its disk is full",
        || fleet.agents[0].process.exited().then_some(()),
    )?;
    let mut exit_codes = vec![fleet.agents[0].process.exit_code()];
    std::fs::remove_file(&filler)?;
    // A supervisor's job: start it again whenever it exits. On the freed disk it reopens its
    // store cleanly and has no reason to stop again.
    fleet.agents[0] = Agent::run(&root, "edge-1")?;
    wait_for(FLEET_TIMEOUT, "the agent to serve again", || {
        if fleet.agents[0].process.exited() {
            exit_codes.push(fleet.agents[0].process.exit_code());
            fleet.agents[0] = Agent::run(&root, "edge-1").ok()?;
        }
        (fleet.infer(0).ok()? == 200 && ready().ok()?.0 == 200).then_some(())
    })
    .map_err(|e| {
        let log = fleet.agents[0].process.log_text();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        anyhow::anyhow!(
            "{e}; ready: {:?}; infer: {:?}; log: {tail:#?}",
            ready(),
            fleet.infer(0)
        )
    })?;
    let restart = Some(i32::from(tern_transport::storage::EXIT_RESTART));
    assert_eq!(
        exit_codes.len(),
        1,
        "one stop, on the full disk, and none after the room came back: {exit_codes:?}"
    );
    assert!(
        exit_codes.iter().all(|c| *c == restart),
        "an agent stops only with status 75, asking its supervisor for a restart: {exit_codes:?}"
    );
    Ok(())
}

#[test]
fn an_agent_short_of_disk_keeps_serving_says_why_and_keeps_its_disk() -> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount(48)? else {
        return Ok(());
    };
    let mut fleet = Fleet::start(0)?;
    let token = fleet.cp.token("site=a", "10m")?;
    let agent = Agent::join_with(
        &fleet.cp,
        &disk.path,
        "edge-1",
        &token,
        "",
        &["--min-free-disk-bytes", &(4u64 << 20).to_string()],
    )?;
    fleet.agents.push(agent);
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    fleet.serve_topk()?;
    assert_eq!(fleet.infer(0)?, 200);

    let filler = disk.fill(12 << 20)?;
    let free_before = disk.free()?;
    // Twice the room there is.
    fleet.push(&fleet.topk("big", 24 << 20)?, 2)?;
    fleet.apply("topk:2", 2)?;
    let reason = fleet.failure("edge-1", 2)?;
    assert!(reason.contains("not enough disk"), "{reason}");
    fleet.wait_phase(2, "RolledBack")?;
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200, "still serving what it served");
    let partial = disk.path.join("edge-1/artifacts/partial");
    let left: Vec<_> = std::fs::read_dir(&partial)?.collect();
    assert!(left.is_empty(), "no partial download left: {left:?}");
    assert!(
        disk.free()? + (1 << 20) >= free_before,
        "the disk is as free as before the download"
    );
    let (status, metrics) = tern_e2e::http(
        fleet.agents[0].api_addr()?,
        "GET",
        "/metrics",
        "text/plain",
        b"",
    )?;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("tern_agent_storage_ready{agent=\"edge-1\"} 1"),
        "{metrics}"
    );
    drop(filler);
    Ok(())
}
