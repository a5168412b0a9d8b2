//! `fleet-bench failover`: two control-plane replicas on one PostgreSQL (started here, as the
//! tests do) and one agent held by the replica that does not hold the work lease. Each run
//! kills (SIGKILL) the holder, applies the next revision through the survivor at once, and
//! times the survivor taking the lease, the next desired state sent (the agent's record shows
//! its generation), and the agent serving it; then starts the killed replica again. The
//! target is kill → next desired state ≤ `lease_ttl` + 2 s.

use std::time::{Duration, Instant};

use anyhow::Context;
use tern_control_plane::backend::postgres::testing::TestPostgres;
use tern_e2e::{Agent, ControlPlane, FLEET_TIMEOUT, Fleet, wait_for};
use tern_proto::api::AgentStatus;

/// Polls `done` every 10 ms; the time from `since` when it first holds.
fn until(since: Instant, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    while !done() {
        anyhow::ensure!(since.elapsed() < FLEET_TIMEOUT, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(since.elapsed())
}

pub fn run(runs: usize, lease_ttl: Duration) -> anyhow::Result<()> {
    let server = TestPostgres::start().context("PostgreSQL's server binaries are needed")?;
    let tmp = tempfile::tempdir()?;
    let artifacts = tmp.path().join("shared-artifacts").display().to_string();
    let (first, mut second) =
        ControlPlane::replica_pair(tmp.path(), &server.url, artifacts, Vec::new(), lease_ttl)?;
    let agent = Agent::join(&second, tmp.path(), "edge-1", &first.token("", "10m")?, "")?;
    first.wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    let mut fleet = Fleet::around(tmp, first, vec![agent])?;
    fleet.serve_topk()?;
    for version in 2..=runs as u64 + 1 {
        fleet.push(&fleet.topk(&format!("v{version}"), 0)?, version)?;
    }
    let mut rows = Vec::new();
    for run in 1..=runs {
        // `fleet.cp` holds the lease; `second` is the survivor-to-be. (Waited for: the killed
        // replica, started again, may be taking the lease back just now.)
        wait_for(FLEET_TIMEOUT, "one replica holding the lease", || {
            (fleet.cp.holds_work_lease() || second.holds_work_lease()).then_some(())
        })?;
        if !fleet.cp.holds_work_lease() {
            std::mem::swap(&mut fleet.cp, &mut second);
        }
        anyhow::ensure!(fleet.cp.holds_work_lease(), "one replica holds the lease");
        let generation = second.agent("edge-1")?.desired_generation;
        let killed = Instant::now();
        if let Some(process) = fleet.cp.process.as_mut() {
            process.kill();
        }
        std::mem::swap(&mut fleet.cp, &mut second);
        let revision = run as u64 + 1;
        fleet.apply(&format!("topk:{revision}"), 2)?;
        let lease = until(killed, "the survivor taking the lease", || {
            fleet.cp.holds_work_lease()
        })?;
        let sent = until(killed, "the next desired state", || {
            fleet
                .cp
                .agent("edge-1")
                .is_ok_and(|a| a.desired_generation > generation)
        })?;
        fleet.wait_serving("edge-1", revision)?;
        let serving = killed.elapsed();
        println!(
            "run {run}: lease {:.2} s, desired state sent {:.2} s, serving {:.2} s",
            lease.as_secs_f64(),
            sent.as_secs_f64(),
            serving.as_secs_f64()
        );
        rows.push((lease, sent, serving));
        // The killed replica comes back (a fresh process) and follows.
        second.serve()?;
    }
    let secs = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<f64> = rows.iter().map(|r| f(r).as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (lease_p50, lease_max) = secs(|r| r.0);
    let (sent_p50, sent_max) = secs(|r| r.1);
    let (serving_p50, serving_max) = secs(|r| r.2);
    let target = lease_ttl.as_secs_f64() + 2.0;
    println!(
        "\n| lease_ttl | kill → lease taken, p50 / max | kill → next desired state sent, p50 / max | target (ttl + 2 s) | kill → agent serving it, p50 / max | runs |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {:.1} s | {lease_p50:.2} / {lease_max:.2} s | {sent_p50:.2} / {sent_max:.2} s | {target:.1} s ({}) | {serving_p50:.2} / {serving_max:.2} s | {runs} |",
        lease_ttl.as_secs_f64(),
        if sent_max <= target { "met" } else { "not met" },
    );
    drop(fleet);
    drop(second);
    drop(server);
    Ok(())
}
