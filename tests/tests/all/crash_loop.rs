//! Revisions that kill the agent process are failed revisions, on both sides. Agents run under
//! a restart loop as systemd runs them (`tern_e2e::supervise`), each in a memory cgroup of
//! 1 GiB. Revision 2 of the `count` pipeline answers ordinary requests, but a request with a
//! large `n` makes its model (a `Range` whose length the request decides) fill gigabytes, and
//! the kernel's OOM killer ends the agent. Making a memory cgroup needs root (as CI runs, with
//! `TERN_REQUIRE_CGROUP=1` so that these tests cannot skip); elsewhere they say so and pass
//! without running.

use std::sync::Arc;
use std::time::Duration;

use tern_e2e::counter::{self, apply};
use tern_e2e::supervise::{MemoryCgroup, Supervised};
use tern_e2e::{FLEET_TIMEOUT, Fleet, wait_for};

/// Each agent's memory limit.
const LIMIT_BYTES: u64 = 1 << 30;
/// What kills revision 2: `Range(0, n)` of 1.5e9 floats is 6 GB.
const KILLER: f64 = 1.5e9;

/// Agents of a fleet, each under its supervisor in its own memory cgroup, serving
/// `counter:1`.
struct CrashFleet {
    fleet: Fleet,
    supervised: Vec<Supervised>,
    _cgroups: Vec<Arc<MemoryCgroup>>,
}

impl CrashFleet {
    fn start(agents: usize, tag: &str) -> anyhow::Result<Option<Self>> {
        let mut cgroups = Vec::new();
        for i in 1..=agents {
            let name = format!("tern-e2e-{tag}-{}-{i}", std::process::id());
            match MemoryCgroup::create(&name, LIMIT_BYTES)? {
                Some(cgroup) => cgroups.push(Arc::new(cgroup)),
                None => return Ok(None),
            }
        }
        let mut fleet = Fleet::start(agents)?;
        counter::serve_version_one(&fleet)?;
        // From here on the agents run as a supervisor runs them.
        let mut supervised = Vec::new();
        for (agent, cgroup) in fleet.agents.iter_mut().zip(&cgroups) {
            agent.process.terminate(Duration::from_secs(20))?;
            supervised.push(Supervised::start(
                &agent.dir,
                Some(cgroup.clone()),
                fleet.tmp.path(),
                &agent.name,
                Duration::from_millis(500),
            ));
        }
        let this = Self {
            fleet,
            supervised,
            _cgroups: cgroups,
        };
        for i in 0..agents {
            this.wait_revision(i, 1, "revision 1 serving under the supervisor")?;
        }
        Ok(Some(this))
    }

    /// Asks agent `i` to count to `n` (see [`counter::count`]).
    fn count(&self, i: usize, n: f64) -> Option<f64> {
        counter::count(self.fleet.agents[i].api_addr().ok()?, n)
    }

    /// Waits until agent `i` answers with `revision`.
    fn wait_revision(&self, i: usize, revision: u64, what: &str) -> anyhow::Result<()> {
        counter::wait_revision(self.fleet.agents[i].api_addr()?, revision, what)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs(i)))
    }

    /// Sends the request that kills revision 2 to agent `i`, and waits for the supervisor to
    /// see the run end.
    fn kill_with_a_request(&self, i: usize) -> anyhow::Result<()> {
        let before = self.supervised[i].exit_count();
        assert_eq!(self.count(i, KILLER), None, "revision 2 cannot answer that");
        wait_for(FLEET_TIMEOUT, "the supervisor to see the run end", || {
            (self.supervised[i].exit_count() > before).then_some(())
        })
    }

    fn logs(&self, i: usize) -> String {
        self.fleet.cp.agent_logs(&self.fleet.agents[i].name)
    }
}

#[test]
fn a_revision_that_kills_its_canary_is_rolled_back_everywhere() -> anyhow::Result<()> {
    let Some(mut crash) = CrashFleet::start(2, "canary")? else {
        return Ok(());
    };
    apply(
        &crash.fleet,
        "counter:2",
        "{ strategy: canary, waves: [50, 100], healthWindowSeconds: 60 }",
    )?;
    crash.wait_revision(0, 2, "the canary serving revision 2")?;
    crash.kill_with_a_request(0)?;

    // The canary's supervisor restarts it at once and it serves revision 2 again, connected:
    // only its report of the exit fails the wave.
    let view = crash.fleet.wait_deployment("count", 2, "RolledBack")?;
    let reason = view
        .rollout
        .as_ref()
        .and_then(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.starts_with("agent edge-1 exited 1 times on revision 2"),
        "{reason}"
    );
    assert!(
        reason.contains("killed by signal KILL (the supervisor says: oom-kill)")
            && reason.contains("OOM killer"),
        "the system's own words: {reason}"
    );
    let status = crash
        .fleet
        .cp
        .ternctl(&["rollout", "status", "count", "--watch=false"]);
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success(), "not committed");
    assert!(
        printed.contains("EXITS") && printed.contains("exited 1 times on revision 2"),
        "{printed}"
    );

    // Everywhere back on revision 1, which counts to anything.
    crash.wait_revision(0, 1, "the canary back on revision 1")?;
    crash.wait_revision(1, 1, "the other agent on revision 1")?;
    assert_eq!(crash.count(0, KILLER), Some(2.0 * KILLER));
    assert_eq!(crash.supervised[1].exit_count(), 0, "edge-2 never ran it");
    assert_eq!(crash.supervised[0].exit_count(), 1);
    for s in &mut crash.supervised {
        s.stop();
    }
    Ok(())
}

#[test]
fn an_agent_puts_aside_a_revision_it_keeps_dying_under_and_serves_the_last_good()
-> anyhow::Result<()> {
    let Some(mut crash) = CrashFleet::start(1, "aside")? else {
        return Ok(());
    };
    // Without automatic rollback the control plane holds the agent on revision 2 after its
    // first death: the agent decides for itself.
    apply(
        &crash.fleet,
        "counter:2",
        "{ healthWindowSeconds: 60, autoRollback: false }",
    )?;
    for death in 1..=3 {
        crash.wait_revision(0, 2, &format!("revision 2 serving before death {death}"))?;
        crash.kill_with_a_request(0)?;
    }
    // The third death within ten minutes puts it aside: the run after it serves revision 1
    // before any request, and says why.
    crash.wait_revision(0, 1, "the last-known-good revision serving")?;
    let agent = wait_for(
        FLEET_TIMEOUT,
        "the agent's report of the revision put aside",
        || {
            let view = crash.fleet.agent_view("edge-1").ok()?;
            let p = view.pipelines.into_iter().find(|p| p.name == "count")?;
            (p.phase.as_deref() == Some("Failed") && p.message.contains("put aside")).then_some(p)
        },
    )?;
    assert_eq!(agent.serving, Some(1));
    assert!(
        agent.message.contains("exited 3 times within 10m"),
        "{}",
        agent.message
    );
    let rollout = crash.fleet.deployment("count")?.rollout.expect("a rollout");
    assert_eq!(rollout.phase, "Failed", "held where it was: {rollout:?}");
    // It never loads revision 2 again while desired states name it.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(crash.count(0, 3.0), Some(6.0));
    assert_eq!(crash.supervised[0].exit_count(), 3);

    // An operator's undo names revision 1: the mark is dropped, and all is Ready.
    crash.fleet.cp.ternctl_ok(&["rollout", "undo", "count"])?;
    wait_for(FLEET_TIMEOUT, "the agent Ready on revision 1", || {
        let view = crash.fleet.agent_view("edge-1").ok()?;
        let p = view.pipelines.into_iter().find(|p| p.name == "count")?;
        (p.phase.as_deref() == Some("Ready") && p.serving == Some(1)).then_some(())
    })?;
    crash.supervised[0].stop();
    Ok(())
}
