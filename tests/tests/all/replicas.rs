//! Control-plane replicas on one PostgreSQL (a real server from the machine's packages) and
//! one artifact directory: the second replica is made with `replica init --from`, an agent
//! enrolls at it with a token made at the first, and what is pushed and applied through the
//! first reaches the agent through the second — the first holds the work lease and plans the
//! rollout from the reports the second shares. Then the first is killed (SIGKILL): the second
//! takes the lease once it lapses and rolls the next revision out. And the faults: one token
//! redeemed at both replicas at once enrolls one agent; a holder paused (SIGSTOP) past its
//! lease and resumed writes nothing; a replica refuses a store whose schema is newer; agents
//! whose replica dies fail over to another, keep serving, and their telemetry is counted once.
//! A read-only credential made at one replica is accepted by the other.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tern_control_plane::artifacts::testing as s3_testing;
use tern_control_plane::backend::postgres::testing;
use tern_control_plane::catalog::DeploymentRecord;
use tern_control_plane::deploy::AgentDesired;
use tern_control_plane::lease::{LeaseRecord, WORK};
use tern_control_plane::replica::ReplicaRecord;
use tern_control_plane::rollout::{Phase, Rollout, Transition};
use tern_e2e::{Agent, ControlPlane, FLEET_TIMEOUT, Fleet, join_once, wait_for};
use tern_proto::api::{AgentStatus, PipelineTop};

/// The lease lapses this long after its holder's last renewal (renewed three times a lifetime:
/// long enough that a loaded machine does not let a live holder's lease lapse).
const LEASE_TTL: Duration = Duration::from_secs(4);

/// An agent's pause before it opens a telemetry stream again on the same connection (`RETRY`
/// of `tern-agent`'s shipper; on a new connection it sends at once): a batch the control plane
/// did not acknowledge is sent again within this long of its stream failing.
const RESEND_PAUSE: Duration = Duration::from_secs(1);

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Two replicas on one new database of `server` and a new bucket of `s3` (a directory under
/// `root` where SeaweedFS is not installed): the first holds the work lease. Returns them
/// with the database's URL.
fn two_replicas(
    server: &testing::TestPostgres,
    s3: Option<&s3_testing::TestS3>,
    root: &Path,
    database: &str,
) -> anyhow::Result<(ControlPlane, ControlPlane, String)> {
    let url = server.database(&format!("{database}_{}", std::process::id()));
    let (artifacts, env) = match s3 {
        Some(s3) => (format!("s3://{}/artifacts", s3.bucket()), s3.aws_env()),
        None => (
            root.join("shared-artifacts").display().to_string(),
            Vec::new(),
        ),
    };
    let (first, second) = ControlPlane::replica_pair(root, &url, artifacts, env, LEASE_TTL)?;
    assert_eq!(
        second.gauge("tern_control_plane_work_lease_held"),
        Some(0.0),
        "one holder at a time"
    );
    Ok((first, second, url))
}

#[test]
fn replicas_share_one_store_and_the_work_moves_when_its_holder_dies() -> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let s3 = s3_testing::shared();
    let (first, mut second, _) = two_replicas(&server, s3.as_deref(), tmp.path(), "replicas")?;

    // A token made at the first is redeemed at the second: one store.
    let token = first.token("site=a", "10m")?;
    let agent = Agent::join(&second, tmp.path(), "edge-1", &token, "")?;
    second.wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    // The first knows it is connected (to the second) from its record.
    first.wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    assert_eq!(
        second.gauge("tern_control_plane_agents_connected"),
        Some(1.0)
    );
    assert_eq!(
        first.gauge("tern_control_plane_agents_connected"),
        Some(0.0)
    );

    let mut fleet = Fleet::around(tmp, first, vec![agent])?;
    // Pushed and applied through the first; the agent is served by the second.
    fleet.serve_topk()?;
    let pipelines = second.ternctl_ok(&["get", "pipelines", "-o", "name"])?;
    assert_eq!(
        pipelines.trim(),
        "pipeline/scores",
        "an apply through one replica is seen through the other"
    );
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200);

    // A read-only credential made at the first (its data dir) is accepted by the second at
    // once, with its role: replicas share their credentials through the store.
    let made = Command::new(tern_e2e::bin("tern-control-plane"))
        .args(["credential", "create", "--role", "read", "--data-dir"])
        .arg(&fleet.cp.dir)
        .output()?;
    anyhow::ensure!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let secret = String::from_utf8(made.stdout)?.trim().to_owned();
    let reader = |args: &[&str]| {
        Command::new(tern_e2e::bin("ternctl"))
            .arg("--config")
            .arg(second.ternctl_config())
            .args(args)
            .env("TERN_ADMIN_TOKEN", &secret)
            .output()
    };
    let listed = wait_for(FLEET_TIMEOUT, "the second accepting the credential", || {
        reader(&["get", "agents"])
            .ok()
            .filter(|o| o.status.success())
    })?;
    assert!(String::from_utf8_lossy(&listed.stdout).contains("edge-1"));
    let refused = reader(&["token", "create"])?;
    assert!(
        !refused.status.success(),
        "a read-only credential made a token"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read-only"));
    // Listed at any replica's data dir with when it was last used, and revoked through the
    // first: the second refuses it from then on.
    let id = String::from_utf8_lossy(&made.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("credential "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let credential = |args: &[&str], dir: &Path| {
        Command::new(tern_e2e::bin("tern-control-plane"))
            .arg("credential")
            .args(args)
            .arg("--data-dir")
            .arg(dir)
            .output()
    };
    let listed = wait_for(
        FLEET_TIMEOUT,
        "the credential's last use written down",
        || {
            let out = credential(&["list", "-o", "json"], &second.dir).ok()?;
            let views: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
            views
                .into_iter()
                .find(|v| v["id"] == id.as_str() && v["last_used_ms"].is_u64())
        },
    )
    .map_err(|e| {
        let out = credential(&["list", "-o", "json"], &second.dir);
        anyhow::anyhow!("{e}: credential {id}: {out:?}")
    })?;
    assert_eq!(listed["role"], "read");
    let revoked = credential(&["revoke", &id], &fleet.cp.dir)?;
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    wait_for(
        FLEET_TIMEOUT,
        "the second refusing the revoked credential",
        || {
            reader(&["get", "agents"])
                .ok()
                .filter(|o| String::from_utf8_lossy(&o.stderr).contains("invalid admin credential"))
        },
    )?;

    // The holder dies: the second takes the work once the lease lapses, and runs the next
    // rollout; the agent, held by the second, serves throughout.
    let held = fleet
        .cp
        .gauge("tern_control_plane_work_lease_epoch")
        .unwrap_or_default();
    if let Some(process) = fleet.cp.process.as_mut() {
        process.kill();
    }
    std::mem::swap(&mut fleet.cp, &mut second);
    wait_for(
        FLEET_TIMEOUT,
        "the second replica taking the work lease",
        || (fleet.cp.holds_work_lease()).then_some(()),
    )?;
    let taken = fleet
        .cp
        .gauge("tern_control_plane_work_lease_epoch")
        .unwrap_or_default();
    assert!(
        taken > held,
        "a new epoch ({taken} after {held}) fences the former holder's writes"
    );
    assert_eq!(fleet.infer(0)?, 200);
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    fleet.wait_serving("edge-1", 2)?;
    assert_eq!(fleet.infer(0)?, 200);
    // `fleet` goes before `server` (declared after it): the replicas stop first.
    drop(fleet);
    drop(second);
    Ok(())
}

#[test]
fn a_token_enrolls_once_a_paused_holder_writes_nothing_and_a_newer_schema_is_refused()
-> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let s3 = s3_testing::shared();
    let (first, mut second, url) =
        two_replicas(&server, s3.as_deref(), tmp.path(), "replica_faults")?;

    // One token, redeemed at both replicas at once: exactly one agent enrolls.
    let token = first.token("site=a", "10m")?;
    let (at_first, at_second) = std::thread::scope(|scope| {
        let a = scope.spawn(|| join_once(first.agent_addr, tmp.path(), "twin-a", &token));
        let b = scope.spawn(|| join_once(second.agent_addr, tmp.path(), "twin-b", &token));
        (a.join(), b.join())
    });
    let (at_first, at_second) = (
        at_first.map_err(|_| anyhow::anyhow!("join thread"))?,
        at_second.map_err(|_| anyhow::anyhow!("join thread"))?,
    );
    assert_eq!(
        u8::from(at_first.status.success()) + u8::from(at_second.status.success()),
        1,
        "exactly one enrollment: {} / {}",
        String::from_utf8_lossy(&at_first.stderr),
        String::from_utf8_lossy(&at_second.stderr)
    );
    let names = second.ternctl_ok(&["get", "agents", "-o", "name"])?;
    assert_eq!(names.lines().count(), 1, "{names}");

    // An agent held by the second; a rollout planned by the first.
    let agent = Agent::join(&second, tmp.path(), "edge-1", &first.token("", "10m")?, "")?;
    first.wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    let mut fleet = Fleet::around(tmp, first, vec![agent])?;
    // The twin that enrolled never runs: rollouts leave it out at once.
    fleet.rollout = "{ healthWindowSeconds: 0, offlineGraceSeconds: 0 }".into();
    fleet.serve_topk()?;
    fleet.wait_serving("edge-1", 1)?;

    // The holder is paused past its lease: the second takes over and rolls revision 2 out.
    let held = work_lease(&url)?;
    let paused = fleet
        .cp
        .process
        .as_ref()
        .map(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("the first replica runs"))?;
    signal(paused, "STOP")?;
    std::mem::swap(&mut fleet.cp, &mut second);
    let resume = scopeguard_cont(paused);
    wait_for(
        FLEET_TIMEOUT,
        "the second replica taking the work lease",
        || (fleet.cp.holds_work_lease()).then_some(()),
    )?;
    // In the store: the lease is the successor's at a later epoch, and every namespace the
    // holder writes (the registry's, the telemetry's) fences writes at that epoch, so that
    // nothing the paused holder sends under its own can land.
    let taken = work_lease(&url)?;
    assert_eq!(
        taken.holder,
        replica_record(&url, &fleet.cp)?.name,
        "the successor holds the lease"
    );
    assert!(
        taken.epoch > held.epoch,
        "a new epoch ({} after {})",
        taken.epoch,
        held.epoch
    );
    for namespace in ["registry", "telemetry"] {
        assert_eq!(
            stored_epoch(&url, namespace)?,
            Some(taken.epoch),
            "the {namespace} namespace fences writes at the successor's epoch"
        );
    }
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    fleet.wait_serving("edge-1", 2)?;
    let given = fleet.agent_view("edge-1")?.desired_generation;
    // The successor's work is done once every desired state gives revision 2 as the stable
    // one (they are written after the rollout that completes): from here on, nothing writes
    // the work's rows unless the former holder does.
    wait_for(FLEET_TIMEOUT, "every desired state on revision 2", || {
        stored::<AgentDesired>(&url, "registry/desired", None)
            .ok()?
            .iter()
            .all(|d| d.pipelines.get("scores").is_none_or(|p| *p == (2, true)))
            .then_some(())
    })?;
    let work = work_rows(&url)?;
    let announced = replica_record(&url, &second)?.seen_ms;

    // Resumed, the former holder finds its term over and writes nothing. Once it has
    // announced itself twice, its lease task has run a whole round after the pause (and its
    // driver with it); the store is then as the successor left it: the lease and its epochs
    // the successor's, and not one row of the work's tables changed.
    drop(resume);
    let mut seen = announced;
    for _ in 0..2 {
        let before = seen;
        seen = wait_for(
            FLEET_TIMEOUT,
            "the former holder announcing itself again",
            || {
                replica_record(&url, &second)
                    .ok()
                    .map(|r| r.seen_ms)
                    .filter(|at| *at > before)
            },
        )?;
    }
    assert_eq!(
        second.gauge("tern_control_plane_work_lease_held"),
        Some(0.0)
    );
    let lease = work_lease(&url)?;
    assert_eq!(
        (&lease.holder, lease.epoch),
        (&taken.holder, taken.epoch),
        "the former holder took the lease back"
    );
    for namespace in ["registry", "telemetry"] {
        assert_eq!(
            stored_epoch(&url, namespace)?,
            Some(taken.epoch),
            "the {namespace} namespace's fence moved after the former holder resumed"
        );
    }
    assert_eq!(
        work_rows(&url)?,
        work,
        "the former holder wrote its work's rows after resuming"
    );
    assert_eq!(fleet.agent_view("edge-1")?.desired_generation, given);
    fleet.wait_serving("edge-1", 2)?;

    // A replica started on a store whose schema is newer than it knows refuses to start.
    testing::execute(&url, "UPDATE tern_schema SET version = version + 1")
        .map_err(anyhow::Error::msg)?;
    let mut third = ControlPlane::replica(fleet.tmp.path(), "c", &fleet.cp)?;
    let refused = third.serve().expect_err("a newer schema");
    assert!(
        refused
            .to_string()
            .contains("newer than this control plane"),
        "{refused}"
    );
    drop(fleet);
    drop(second);
    Ok(())
}

/// Sends SIGCONT to `pid` when dropped: a paused process never outlives a failed test.
fn scopeguard_cont(pid: u32) -> impl Drop {
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = signal(self.0, "CONT");
        }
    }
    Cont(pid)
}

/// The records of `table` (`namespace/table`, as `tern_entries` names it) in the store at
/// `url`, read from PostgreSQL itself rather than through a replica: those under `key`, or
/// all of them, in key order. Records are JSON.
fn stored<T: serde::de::DeserializeOwned>(
    url: &str,
    table: &str,
    key: Option<&str>,
) -> anyhow::Result<Vec<T>> {
    let filter = key
        .map(|key| format!(" AND key = convert_to('{key}', 'UTF8')"))
        .unwrap_or_default();
    let rows = testing::query_text(
        url,
        &format!(
            "SELECT convert_from(value, 'UTF8') FROM tern_entries \
             WHERE tbl = '{table}'{filter} ORDER BY key"
        ),
    )
    .map_err(anyhow::Error::msg)?;
    rows.iter()
        .map(|json| serde_json::from_str(json).map_err(anyhow::Error::from))
        .collect()
}

/// The work lease as stored at `url`.
fn work_lease(url: &str) -> anyhow::Result<LeaseRecord> {
    stored::<LeaseRecord>(url, "registry/leases", Some(WORK))?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no work lease stored"))
}

/// The epoch writes to `namespace` at `url` are fenced by (`None`: none stored). Each namespace
/// the holder writes keeps its own, raised by every new holder before its first write there.
fn stored_epoch(url: &str, namespace: &str) -> anyhow::Result<Option<u64>> {
    let rows = testing::query_text(
        url,
        &format!(
            "SELECT encode(value, 'hex') FROM tern_entries \
             WHERE tbl = '{namespace}/lease_epochs' AND key = convert_to('{WORK}', 'UTF8')"
        ),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(rows
        .first()
        .map(|hex| u64::from_str_radix(hex, 16))
        .transpose()?)
}

/// The record `cp` announces itself with (every third of a lease lifetime), as stored at `url`.
fn replica_record(url: &str, cp: &ControlPlane) -> anyhow::Result<ReplicaRecord> {
    let api = cp.api_addr.to_string();
    stored::<ReplicaRecord>(url, "registry/replicas", None)?
        .into_iter()
        .find(|r| r.api_address == api)
        .ok_or_else(|| anyhow::anyhow!("no record of the replica at {api}"))
}

/// The tables of the registry's namespace that the work lease's holder writes through its
/// term: rollouts (`deployments`, with the catalog's generation in `catalog_meta`), desired
/// states with their signed form (`outbox`), drift alerts and pruned enrollment tokens.
const WORK_TABLES: [&str; 6] = [
    "deployments",
    "catalog_meta",
    "desired",
    "outbox",
    "alerts",
    "tokens",
];

/// Every row of [`WORK_TABLES`] at `url`, as `table key digest-of-value`, in order.
fn work_rows(url: &str) -> anyhow::Result<Vec<String>> {
    let tables = WORK_TABLES.map(|t| format!("'registry/{t}'")).join(", ");
    testing::query_text(
        url,
        &format!(
            "SELECT tbl || ' ' || encode(key, 'escape') || ' ' || md5(value) \
             FROM tern_entries WHERE tbl IN ({tables}) ORDER BY tbl, key"
        ),
    )
    .map_err(anyhow::Error::msg)
}

/// The rollout of deployment `scores` as stored at `url`.
fn stored_rollout(url: &str) -> anyhow::Result<Rollout> {
    stored::<DeploymentRecord>(url, "registry/deployments", Some("scores"))?
        .pop()
        .and_then(|d| d.rollout)
        .ok_or_else(|| anyhow::anyhow!("no rollout of deployment scores stored"))
}

/// The waves (0-based, as rollouts keep them) whose start `history` records, in order.
fn wave_starts(history: &[(u64, Transition)]) -> Vec<usize> {
    history
        .iter()
        .filter_map(|(_, transition)| match transition {
            Transition::WaveStarted { wave, .. } => Some(*wave),
            _ => None,
        })
        .collect()
}

/// Requests of pipeline `scores` stored by the fleet, through `cp`.
fn stored_requests(cp: &ControlPlane) -> Option<u64> {
    let text = cp.ternctl_ok(&["top", "pipelines", "-o", "json"]).ok()?;
    let rows: Vec<PipelineTop> = serde_json::from_str(&text).ok()?;
    Some(rows.into_iter().find(|p| p.pipeline == "scores")?.requests)
}

/// [`stored_requests`] through `cp` once the count has held still for longer than twice the
/// agents' [`RESEND_PAUSE`]: a batch sent again after its stream failed has landed by then.
fn settled_requests(cp: &ControlPlane) -> anyhow::Result<u64> {
    let quiet = 2 * RESEND_PAUSE;
    let mut last: Option<(u64, Instant)> = None;
    wait_for(FLEET_TIMEOUT, "the stored requests holding still", || {
        let count = stored_requests(cp)?;
        match last {
            Some((held, since)) if held == count => (since.elapsed() > quiet).then_some(count),
            _ => {
                last = Some((count, Instant::now()));
                None
            }
        }
    })
}

/// Two replicas on a new database of `server`, an agent held by each (telemetry every 200 ms)
/// serving `topk:1`, and 10 requests to each stored: the fleet (around the first) and the
/// second replica.
fn serving_pair(
    server: &testing::TestPostgres,
    database: &str,
) -> anyhow::Result<(Fleet, ControlPlane)> {
    let tmp = tempfile::tempdir()?;
    let (first, second, _) = two_replicas(server, None, tmp.path(), database)?;
    let mut agents = Vec::new();
    for (name, at) in [("edge-1", &first), ("edge-2", &second)] {
        agents.push(Agent::join_with(
            at,
            tmp.path(),
            name,
            &first.token("", "10m")?,
            "",
            &["--telemetry-interval", "200ms"],
        )?);
        first.wait_status(name, AgentStatus::Ready, FLEET_TIMEOUT)?;
    }
    let fleet = Fleet::around(tmp, first, agents)?;
    fleet.serve_topk()?;
    infer_ok(&fleet, 0, 10)?;
    infer_ok(&fleet, 1, 10)?;
    wait_for(FLEET_TIMEOUT, "the first requests stored", || {
        stored_requests(&fleet.cp).filter(|n| *n == 20)
    })?;
    Ok((fleet, second))
}

fn infer_ok(fleet: &Fleet, agent: usize, n: u64) -> anyhow::Result<()> {
    for _ in 0..n {
        anyhow::ensure!(
            fleet.infer(agent)? == 200,
            "a request to agent {agent} failed"
        );
    }
    Ok(())
}

#[test]
fn agents_of_a_dead_replica_fail_over_keep_serving_and_are_counted_once() -> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let s3 = s3_testing::shared();
    let (first, second, _) = two_replicas(&server, s3.as_deref(), tmp.path(), "replica_failover")?;
    // Both agents enroll at the first, and learn where the second is.
    let mut agents = Vec::new();
    for name in ["edge-1", "edge-2"] {
        let token = first.token("site=a", "10m")?;
        let agent = Agent::join_with(
            &first,
            tmp.path(),
            name,
            &token,
            "",
            &["--telemetry-interval", "200ms"],
        )?;
        first.wait_status(name, AgentStatus::Ready, FLEET_TIMEOUT)?;
        let config = std::fs::read_to_string(agent.dir.join("agent.toml"))?;
        assert!(
            config.contains(&second.agent_addr.to_string()),
            "enrollment named the other replica:\n{config}"
        );
        agents.push(agent);
    }
    assert_eq!(
        first.gauge("tern_control_plane_agents_connected"),
        Some(2.0)
    );
    let mut fleet = Fleet::around(tmp, first, agents)?;
    fleet.serve_topk()?;
    for agent in ["edge-1", "edge-2"] {
        fleet.wait_serving(agent, 1)?;
    }
    infer_ok(&fleet, 0, 10)?;
    wait_for(FLEET_TIMEOUT, "the first requests stored", || {
        stored_requests(&fleet.cp).filter(|n| *n == 10)
    })?;

    // The replica holding both agents dies; they serve throughout and move to the other.
    if let Some(process) = fleet.cp.process.as_mut() {
        process.kill();
    }
    let mut second = second;
    std::mem::swap(&mut fleet.cp, &mut second);
    infer_ok(&fleet, 0, 5)?;
    infer_ok(&fleet, 1, 5)?;
    wait_for(
        FLEET_TIMEOUT,
        "both agents connected to the second replica",
        || (fleet.cp.gauge("tern_control_plane_agents_connected") == Some(2.0)).then_some(()),
    )?;
    infer_ok(&fleet, 0, 5)?;
    // Every request counted once across the switch: batches sent to the dead replica and
    // sent again to the living one are stored once. Counted once all have arrived and the
    // count has then held still for longer than the agents take to send a batch again.
    wait_for(FLEET_TIMEOUT, "every request stored", || {
        stored_requests(&fleet.cp).filter(|n| *n >= 25)
    })?;
    assert_eq!(
        settled_requests(&fleet.cp)?,
        25,
        "nothing lost, nothing twice"
    );

    // The second holds the work now: the next revision reaches both agents through it.
    wait_for(
        FLEET_TIMEOUT,
        "the second replica taking the work lease",
        || (fleet.cp.holds_work_lease()).then_some(()),
    )?;
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    for agent in ["edge-1", "edge-2"] {
        fleet.wait_serving(agent, 2)?;
    }
    // `get replicas`: the dead one turns Lost after three lease lifetimes; the living leads.
    let replicas = wait_for(FLEET_TIMEOUT, "the dead replica shown as Lost", || {
        let table = fleet.cp.ternctl_ok(&["get", "replicas"]).ok()?;
        table.contains("Lost").then_some(table)
    })?;
    let leader = replicas
        .lines()
        .find(|l| l.contains(" yes "))
        .unwrap_or_default();
    assert!(
        leader.contains("Ready") && leader.contains(&fleet.cp.agent_addr.to_string()),
        "the living replica leads:\n{replicas}"
    );
    drop(fleet);
    drop(second);
    Ok(())
}

#[test]
fn a_push_while_the_object_store_is_down_fails_clearly_and_resumes_later() -> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    // A server of its own: this test stops it.
    let Some(s3) = s3_testing::TestS3::start() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let (first, second, _) = two_replicas(&server, Some(&s3), tmp.path(), "replica_s3_down")?;
    let agent = Agent::join(&second, tmp.path(), "edge-1", &first.token("", "10m")?, "")?;
    first.wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    let fleet = Fleet::around(tmp, first, vec![agent])?;
    let file = fleet.topk("through-s3", 1 << 20)?;
    fleet
        .publisher
        .sign(&fleet.cp, "publisher", &file, "plugin", "topk", 1)?;
    let path = tern_e2e::path_str(&file)?;

    s3.stop();
    let refused = fleet.cp.ternctl(&["push", "--quiet", &path]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success(),
        "a push with the store down fails"
    );
    assert!(said.contains("artifact store"), "and says why: {said}");

    s3.start_again();
    fleet.cp.ternctl_ok(&["push", "--quiet", &path])?;
    fleet.apply("topk:1", 2)?;
    fleet.wait_phase(1, "Complete")?;
    // The agent, held by the second replica, fetched the artifact from the store through it.
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200);
    drop(fleet);
    drop(second);
    Ok(())
}

#[test]
fn the_leader_killed_mid_canary_hands_the_rollout_over_without_a_wave_skipped_or_run_twice()
-> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    let s3 = s3_testing::shared();
    let tmp = tempfile::tempdir()?;
    let (first, mut second, url) =
        two_replicas(&server, s3.as_deref(), tmp.path(), "replica_canary")?;
    // Four agents, held by the replica that survives.
    let mut agents = Vec::new();
    for name in ["edge-1", "edge-2", "edge-3", "edge-4"] {
        agents.push(Agent::join(
            &second,
            tmp.path(),
            name,
            &first.token("", "10m")?,
            "",
        )?);
        first.wait_status(name, AgentStatus::Ready, FLEET_TIMEOUT)?;
    }
    let mut fleet = Fleet::around(tmp, first, agents)?;
    fleet.serve_topk()?;
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    let canary = tern_e2e::scores_manifest(
        "top",
        "plugin: topk:2\n      config: { k: 2 }",
        "{ strategy: canary, waves: [25, 50, 100], healthWindowSeconds: 5 }",
    );
    fleet
        .cp
        .apply_manifest(&fleet.tmp.path().join("canary.yaml"), canary)?;
    // The kill is an event: the canary seen in the store in its first wave, and no further.
    // That wave (one agent of four) stays healthy for 5 s before the next starts, a hundred
    // polls long, time enough for a loaded machine to stop one process and kill another; a rollout seen past it fails the test.
    let seen = wait_for(FLEET_TIMEOUT, "the canary under way", || {
        stored_rollout(&url)
            .ok()
            .filter(|r| r.target == 2 && !r.history.is_empty())
    })?;
    anyhow::ensure!(
        seen.phase == Phase::Progressing && seen.wave == 0,
        "the canary got past its first wave before the kill: {seen:#?}"
    );
    // The holder dies in the first wave. The survivor is held (SIGSTOP) across the kill, so
    // that the store, read right after, holds all the dead holder wrote and nothing else.
    let survivor = second
        .process
        .as_ref()
        .map(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("the second replica runs"))?;
    signal(survivor, "STOP")?;
    let resume = scopeguard_cont(survivor);
    if let Some(process) = fleet.cp.process.as_mut() {
        process.kill();
    }
    let at_kill = stored_rollout(&url)?;
    drop(resume);
    assert!(
        at_kill.phase == Phase::Progressing
            && at_kill.wave == 0
            && wave_starts(&at_kill.history) == [0],
        "the kill landed in wave 1, the only one started: {at_kill:#?}"
    );
    // The survivor takes over and runs the others.
    std::mem::swap(&mut fleet.cp, &mut second);
    let done = fleet.wait_phase(2, "Complete")?;
    let rollout = done.rollout.expect("the rollout");
    let waves: Vec<&str> = rollout
        .history
        .iter()
        .map(|(_, what)| what.as_str())
        .filter(|what| what.starts_with("wave "))
        .collect();
    assert_eq!(
        waves.len(),
        3,
        "three waves, each once: {:#?}",
        rollout.history
    );
    for (i, wave) in waves.iter().enumerate() {
        assert!(
            wave.starts_with(&format!("wave {} started", i + 1)),
            "in order, none skipped: {:#?}",
            rollout.history
        );
    }
    // The survivor went on with the rollout as the holder left it (its history then is the
    // start of the history now) and started waves 2 and 3, once each: wave 1 was completed
    // once, by the survivor, and not run again.
    let finished = stored_rollout(&url)?;
    assert!(
        finished.history.starts_with(&at_kill.history),
        "the survivor went on from where the holder died: {:#?}\nthen: {:#?}",
        finished.history,
        at_kill.history
    );
    assert_eq!(
        wave_starts(&finished.history[at_kill.history.len()..]),
        [1, 2],
        "the survivor's waves: {:#?}",
        finished.history
    );
    for agent in ["edge-1", "edge-2", "edge-3", "edge-4"] {
        fleet.wait_serving(agent, 2)?;
    }
    drop(fleet);
    drop(second);
    Ok(())
}

#[test]
fn replicas_reconnect_after_postgresql_restarts_under_load_and_go_on() -> anyhow::Result<()> {
    // A server of its own: this test restarts it.
    let Some(mut server) = testing::TestPostgres::start() else {
        return Ok(());
    };
    let (fleet, second) = serving_pair(&server, "replica_pg_restart")?;
    let fleet_reads = |cps: [&ControlPlane; 2]| -> f64 {
        (cps.iter())
            .filter_map(|cp| cp.gauge("tern_control_plane_deploy_fleet_reads_total"))
            .sum()
    };
    let reads_before = fleet_reads([&fleet.cp, &second]);

    // The database goes away and comes back while agents serve and report.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let traffic = scope.spawn(|| -> anyhow::Result<()> {
            for _ in 0..10 {
                infer_ok(&fleet, 0, 1)?;
                infer_ok(&fleet, 1, 1)?;
                std::thread::sleep(Duration::from_millis(150));
            }
            Ok(())
        });
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
        traffic
            .join()
            .map_err(|_| anyhow::anyhow!("traffic thread"))??;
        Ok(())
    })?;
    // Both replicas work again, and nothing acknowledged was lost: every request, those
    // made while the server was down included, is stored once.
    // (Waited for as long as agents take to send again after the restart, then until the
    // count holds still for longer than an agent's resend pause.)
    wait_for(FLEET_TIMEOUT, "telemetry flowing again", || {
        stored_requests(&fleet.cp).filter(|n| *n >= 40)
    })?;
    let settled = settled_requests(&fleet.cp)?;
    assert_eq!(
        settled, 40,
        "the 20 requests made around the restart, each once"
    );
    infer_ok(&fleet, 0, 5)?;
    infer_ok(&fleet, 1, 5)?;
    wait_for(
        FLEET_TIMEOUT,
        "the requests after the restart stored",
        || stored_requests(&fleet.cp).filter(|n| *n >= settled + 10),
    )?;
    assert_eq!(settled_requests(&fleet.cp)?, settled + 10, "once each");
    assert_eq!(
        stored_requests(&second),
        Some(settled + 10),
        "the same through the other"
    );
    // And the work goes on: a new revision rolls out, to the agents of both replicas. The
    // change feed lost track while the server was away, so the driver read the fleet again
    // (a pass over what it missed, not a scan every so often).
    fleet.push(&fleet.topk("after", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    fleet.wait_serving("edge-1", 2)?;
    fleet.wait_serving("edge-2", 2)?;
    let reads_after = fleet_reads([&fleet.cp, &second]);
    assert!(
        reads_after > reads_before,
        "the driver read the fleet again after the feed was lost ({reads_before} -> {reads_after})"
    );
    drop(fleet);
    drop(second);
    Ok(())
}

#[test]
fn a_replica_that_falls_behind_loses_its_agents_to_one_that_sends_what_the_outbox_holds()
-> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let (first, second, _) = two_replicas(&server, None, tmp.path(), "replica_behind")?;
    // edge-1 held by the first (the lease holder), edge-2 by the second.
    let mut agents = Vec::new();
    for (name, at) in [("edge-1", &first), ("edge-2", &second)] {
        agents.push(Agent::join(
            at,
            tmp.path(),
            name,
            &first.token("", "10m")?,
            "",
        )?);
        first.wait_status(name, AgentStatus::Ready, FLEET_TIMEOUT)?;
    }
    let mut fleet = Fleet::around(tmp, first, agents)?;
    fleet.rollout = "{ healthWindowSeconds: 0 }".into();
    fleet.serve_topk()?;
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    let signed_before = fleet
        .cp
        .gauge("tern_control_plane_desired_states_signed_total")
        .unwrap_or(0.0);

    // The second replica stops (as a process starved of CPU or stuck in I/O would) and
    // revision 2 is applied: the holder signs both agents' states into the outbox once. The
    // second's agent stops hearing acknowledgements, fails over to the first, and is sent
    // what the outbox holds for it there.
    let behind = second
        .process
        .as_ref()
        .map(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("the second replica runs"))?;
    signal(behind, "STOP")?;
    let resume = scopeguard_cont(behind);
    fleet.apply("topk:2", 2)?;
    fleet.wait_serving("edge-1", 2)?;
    fleet.wait_serving("edge-2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    let signed = fleet
        .cp
        .gauge("tern_control_plane_desired_states_signed_total")
        .unwrap_or(0.0);
    assert!(
        signed >= signed_before + 2.0,
        "the holder signed both new states ({signed_before} -> {signed})"
    );

    // Resumed, it catches up with the store: its old session of edge-2 is superseded, it
    // signs nothing, and nothing it sends takes the agent back.
    drop(resume);
    wait_for(FLEET_TIMEOUT, "the resumed replica answering", || {
        second
            .gauge("tern_control_plane_desired_states_signed_total")
            .map(|n| (n, ()))
    })
    .map(|(n, ())| assert_eq!(n, 0.0, "a replica without the lease signs nothing"))?;
    std::thread::sleep(Duration::from_secs(2));
    let edge2 = fleet.agent_view("edge-2")?;
    assert_eq!(edge2.refused, None, "no stale state reached it: {edge2:?}");
    assert_eq!(edge2.applied_generation, edge2.desired_generation);
    fleet.wait_serving("edge-2", 2)?;
    assert_eq!(fleet.infer(1)?, 200);
    Ok(())
}

/// A control stream at `addr` with the identity in `dir`, after a hello: the connection, and
/// a task reading what the control plane sends.
async fn session_as(
    addr: std::net::SocketAddr,
    dir: &tern_agent::AgentDataDir,
    name: &str,
) -> anyhow::Result<quinn::Connection> {
    use tern_proto::{AgentMessage, Capacity, Hello, MAX_FRAME_LEN, PROTOCOL_VERSION};
    let identity =
        tern_transport::Identity::from_pem(&dir.read(&dir.cert())?, &dir.read(&dir.key())?)?;
    let transport = tern_transport::quic::transport_config(Duration::from_secs(30), None);
    let client = tern_transport::tls::quic_client(&dir.read(&dir.ca())?, identity, transport)?;
    let endpoint = tern_transport::quic::client_endpoint(addr)?;
    let conn = endpoint
        .connect_with(client, addr, tern_proto::CONTROL_PLANE_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_id: dir.load_config()?.agent_id,
        name: name.into(),
        labels: Default::default(),
        capacity: Capacity::default(),
        software_version: "0".into(),
    });
    tern_proto::io::write_frame(&mut send, &hello, MAX_FRAME_LEN).await?;
    let welcome: Option<tern_proto::ControlMessage> =
        tern_proto::io::read_frame(&mut recv, MAX_FRAME_LEN).await?;
    anyhow::ensure!(
        matches!(welcome, Some(tern_proto::ControlMessage::Welcome(_))),
        "no welcome: {welcome:?}"
    );
    tokio::spawn(async move {
        let _send = send;
        while let Ok(Some(_)) =
            tern_proto::io::read_frame::<_, tern_proto::ControlMessage>(&mut recv, MAX_FRAME_LEN)
                .await
        {}
    });
    Ok(conn)
}

/// Why `conn` was closed by the control plane.
async fn closed_reason(conn: &quinn::Connection) -> anyhow::Result<String> {
    let ended = tokio::time::timeout(FLEET_TIMEOUT, conn.closed()).await?;
    Ok(match ended {
        quinn::ConnectionError::ApplicationClosed(c) => {
            String::from_utf8_lossy(&c.reason).into_owned()
        }
        other => other.to_string(),
    })
}

#[test]
fn one_session_per_agent_across_replicas_and_a_revoke_anywhere_closes_it_everywhere()
-> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let (first, second, _url) = two_replicas(&server, None, tmp.path(), "replica_sessions")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // One identity, connected at the second, then at the first: the newest session stands,
    // the one at the second is closed and says why.
    let twin = tern_e2e::enroll(&first, tmp.path(), "twin")?;
    let at_second = runtime.block_on(session_as(second.agent_addr, &twin, "twin"))?;
    first.wait_status("twin", AgentStatus::Ready, FLEET_TIMEOUT)?;
    let at_first = runtime.block_on(session_as(first.agent_addr, &twin, "twin"))?;
    let reason = runtime.block_on(closed_reason(&at_second))?;
    assert!(
        reason.contains("superseded by a newer connection of this agent at replica"),
        "{reason}"
    );
    assert!(
        at_first.close_reason().is_none(),
        "the newest session stands"
    );
    drop(at_first);

    // A real agent held by the second, revoked through the first: its session at the second
    // closes, and it is refused everywhere from then on.
    let agent = Agent::join(&second, tmp.path(), "edge-1", &first.token("", "10m")?, "")?;
    first.wait_status("edge-1", AgentStatus::Ready, FLEET_TIMEOUT)?;
    let api = agent.api_addr()?;
    let link_up = || -> Option<bool> {
        let (_, body) = tern_e2e::http(api, "GET", "/v1/agent", "text/plain", b"").ok()?;
        let info: serde_json::Value = serde_json::from_slice(&body).ok()?;
        info["connected"].as_bool()
    };
    wait_for(FLEET_TIMEOUT, "the agent's link up", || {
        (link_up() == Some(true)).then_some(())
    })?;
    first.ternctl_ok(&["revoke", "agent", "edge-1"])?;
    wait_for(
        FLEET_TIMEOUT,
        "the agent's session closed at the second",
        || (link_up() == Some(false)).then_some(()),
    )?;
    wait_for(FLEET_TIMEOUT, "no replica holding it", || {
        (second.gauge("tern_control_plane_agents_connected") == Some(0.0)
            && first.gauge("tern_control_plane_agents_connected") == Some(0.0))
        .then_some(())
    })?;
    // It keeps trying and is refused at both: still down a while later.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(link_up(), Some(false));
    let log = agent.process.log_text();
    assert!(log.contains("revoked"), "the agent was told why:\n{log}");
    drop(agent);
    drop(first);
    drop(second);
    Ok(())
}

/// How many times the agent's runs connected to a control plane, from its logs.
fn connections(fleet: &Fleet, agent: &str) -> usize {
    fleet
        .cp
        .agent_logs(agent)
        .matches("connected to control plane")
        .count()
}

#[test]
fn a_postgresql_outage_of_30_seconds_is_ridden_out_without_an_exit_or_a_reconnect()
-> anyhow::Result<()> {
    // A server of its own: this test takes it down.
    let Some(mut server) = testing::TestPostgres::start() else {
        return Ok(());
    };
    let (mut fleet, mut second) = serving_pair(&server, "replica_pg_outage")?;
    let before = [connections(&fleet, "edge-1"), connections(&fleet, "edge-2")];

    // The database is away for 30 s while the agents serve and report.
    server.down();
    let outage = std::time::Instant::now();
    // Both replicas say why they are not ready, and refuse changes clearly.
    for cp in [&fleet.cp, &second] {
        let said = wait_for(FLEET_TIMEOUT, "readyz naming the store", || {
            cp.admin_get("/readyz")
                .err()
                .map(|e| e.to_string())
                .filter(|e| e.contains("PostgreSQL"))
        })?;
        assert!(
            said.contains("503") || said.contains("unreachable"),
            "{said}"
        );
    }
    let refused = fleet
        .cp
        .ternctl_fails(&["token", "create", "--labels", "site=b"])?;
    assert!(
        refused.contains("the store (PostgreSQL) is unreachable, so nothing was changed"),
        "{refused}"
    );
    let mut made = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        infer_ok(&fleet, 0, 1)?;
        infer_ok(&fleet, 1, 1)?;
        made += 2;
        std::thread::sleep(Duration::from_secs(2));
    }
    server.up();

    // No replica exited, no agent connected again, and every request of the outage is
    // stored once.
    for cp in [&mut fleet.cp, &mut second] {
        let process = cp
            .process
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("a replica"))?;
        assert!(
            !process.exited(),
            "a replica exited:\n{}",
            process.log_text()
        );
    }
    let expected = 20 + made;
    wait_for(FLEET_TIMEOUT, "the outage's telemetry stored", || {
        stored_requests(&fleet.cp).filter(|n| *n >= expected)
    })?;
    assert_eq!(settled_requests(&fleet.cp)?, expected, "each request once");
    assert_eq!(
        [connections(&fleet, "edge-1"), connections(&fleet, "edge-2")],
        before,
        "no agent connected again"
    );
    // Changes are taken again within seconds.
    wait_for(FLEET_TIMEOUT, "the first replica ready", || {
        fleet.cp.admin_get("/readyz").ok()
    })?;
    fleet.push(&fleet.topk("after", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    drop(fleet);
    drop(second);
    Ok(())
}
