//! The control plane on PostgreSQL (`store = "postgres://..."`): a real server from the
//! machine's packages, started for the test as an unprivileged user. Agents enroll, a release
//! is pushed and rolled out, and after a restart of the control plane everything — agents,
//! releases, the pipeline's revision, the completed rollout — is read back from PostgreSQL,
//! not from a sled database (none is created), and the agent serves throughout.

use tern_control_plane::backend::postgres::testing;
use tern_control_plane::data_dir::DataDir;
use tern_e2e::Fleet;

#[test]
fn a_control_plane_on_postgresql_keeps_its_fleet_across_a_restart() -> anyhow::Result<()> {
    let Some(server) = testing::shared() else {
        return Ok(());
    };
    let url = server.database(&format!("store_{}", std::process::id()));
    let store = url.clone();
    let mut fleet = Fleet::start_tuned(1, &[], move |config| config.store = Some(store))?;
    fleet.serve_topk()?;
    assert_eq!(fleet.infer(0)?, 200);

    fleet.cp.stop()?;
    assert_eq!(
        fleet.infer(0)?,
        200,
        "the agent serves while the control plane is down"
    );
    fleet.cp.serve()?;
    let data = DataDir::new(&fleet.cp.dir);
    assert!(
        !data.registry().exists() && !data.telemetry().exists(),
        "no sled database: the records are in PostgreSQL"
    );
    let agents = fleet.cp.ternctl_ok(&["get", "agents", "-o", "name"])?;
    assert_eq!(agents.trim(), "agent/edge-1");
    let releases = fleet.cp.ternctl_ok(&["get", "releases", "-o", "name"])?;
    assert_eq!(releases.trim(), "release/topk:1");
    let rollout = fleet.rollout()?.rollout.expect("the rollout");
    assert_eq!(
        (rollout.target_revision, rollout.phase.as_str()),
        (1, "Complete")
    );
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200);

    // A second apply after the restart builds on what PostgreSQL kept: revision 2.
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    fleet.apply("topk:2", 2)?;
    fleet.wait_phase(2, "Complete")?;
    // `fleet` goes before `server` (declared after it): the control plane stops first.
    Ok(())
}
