//! A network partition in the middle of a download, with the agent up: its link to the
//! control plane runs through a loopback proxy that delays every datagram and then drops
//! them all for a while. The agent keeps serving what it runs, the download picks up where
//! it stopped once the link heals, and the rollout completes without the agent restarting.

use std::time::Duration;

use tern_e2e::proxy::UdpProxy;
use tern_e2e::{Agent, Fleet, wait_for};
use tern_proto::api::AgentStatus;

const TIMEOUT: Duration = tern_e2e::FLEET_TIMEOUT;
const BIG: usize = 32 << 20;

#[test]
fn a_partition_mid_download_heals_and_the_rollout_completes_with_the_agent_up() -> anyhow::Result<()>
{
    let mut fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    let proxy = UdpProxy::start(fleet.cp.agent_addr)?;
    proxy.delay(Duration::from_millis(2));

    // The agent reaches its control plane through the proxy only.
    fleet.agents[0].process.terminate(TIMEOUT)?;
    let data = tern_agent::AgentDataDir::new(&fleet.agents[0].dir);
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(data.config())?)?;
    config.insert("control_plane".into(), proxy.addr.to_string().into());
    config.remove("replicas");
    std::fs::write(data.config(), toml::to_string(&config)?)?;
    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::Ready, TIMEOUT)?;
    let pid = fleet.agents[0].process.pid();

    let big = fleet.topk("big", BIG)?;
    fleet.push(&big, 2)?;
    let release = tern_e2e::Publisher::release(&big)?;
    let partial = fleet.agents[0]
        .dir
        .join("artifacts")
        .join("partial")
        .join(release.signed.digest.hex());
    proxy.partition_after(4 << 20);
    fleet.apply("topk:2", 2)?;
    wait_for(TIMEOUT, "the link to be cut mid-download", || {
        proxy.partitioned().then_some(())
    })?;

    // Cut off for 4 s: the agent serves what it runs, and has part of the artifact.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        fleet.infer(0)?,
        200,
        "revision 1 serves during the partition"
    );
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        have > 0 && have < release.signed.size,
        "part of the artifact is down: {have} of {}",
        release.signed.size
    );
    assert!(!fleet.agents[0].process.exited(), "the agent is up");
    assert!(
        proxy
            .link
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    proxy.heal();
    fleet.wait_phase(2, "Complete")?;
    fleet.wait_serving("edge-1", 2)?;
    assert_eq!(fleet.infer(0)?, 200);
    assert!(
        !fleet.agents[0].process.exited() && fleet.agents[0].process.pid() == pid,
        "the same agent process throughout"
    );
    assert!(!partial.exists(), "the partial file became the artifact");
    Ok(())
}
