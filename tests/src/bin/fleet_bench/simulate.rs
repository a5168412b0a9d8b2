//! `simulate`: a whole canary rollout across N simulated agents on the fleet core, in virtual
//! time (`tern_e2e::sim`: apply, the deployment driver's passes and outbox that sign every
//! state, every agent's session state machine; the agents take each state as it comes). It
//! prints the wall time, the
//! driver's time per pass and the process's peak memory; beside them, the reference: one pass
//! over the whole fleet as the driver made every 500 ms before it was driven by events.

use std::time::{Duration, Instant};

use anyhow::ensure;
use tern_control_plane::rollout::Phase;
use tern_e2e::sim::{Cadence, Faults, Fleet, STEP_MS, policy};
use tern_e2e::{percentile, resident_memory};

use super::mib;

/// The health window of the rollout's waves.
const WINDOW_MS: u64 = 10_000;

pub fn run(agents: usize, waves: &[u8]) -> anyhow::Result<()> {
    ensure!(waves.last() == Some(&100), "the last wave is 100%");
    let started = Instant::now();
    let mut fleet = Fleet::new(vec![Faults::default(); agents]);
    // Heartbeats and health every 5 s; agents take each state as it comes (what is measured
    // is the control plane); the rules are checked by the test suite's runs.
    fleet.cadence = Cadence {
        heartbeat_every: 10,
        health_every: 10,
        check: false,
        verify: false,
    };
    let enrolled = started.elapsed();
    println!(
        "{agents} agents enrolled in {:.1} s",
        enrolled.as_secs_f64()
    );

    // Revision 1 everywhere at once, then revision 2 in canary waves.
    let deployed = Instant::now();
    fleet.apply(1, policy(&[100], WINDOW_MS));
    let steps = fleet.run_until_settled(20 * 60_000 / STEP_MS);
    ensure!(
        fleet.phase() == Some(&Phase::Complete),
        "revision 1: {:?}",
        fleet.phase()
    );
    fleet.run(4);
    println!(
        "revision 1 to every agent: {steps} steps ({:.0} s virtual), {:.1} s wall",
        (steps * STEP_MS) as f64 / 1000.0,
        deployed.elapsed().as_secs_f64()
    );
    let first_passes = fleet.pass_times.len();

    let rollout = Instant::now();
    fleet.apply(2, policy(waves, WINDOW_MS));
    let steps = fleet.run_until_settled(60 * 60_000 / STEP_MS);
    ensure!(
        fleet.phase() == Some(&Phase::Complete),
        "revision 2: {:?}",
        fleet.phase()
    );
    fleet.run(4);
    let rollout_wall = rollout.elapsed();
    let serving = (fleet.agents.iter())
        .filter(|a| a.serving_revision() == Some(2))
        .count();
    ensure!(serving == agents, "{serving} of {agents} serve revision 2");
    println!(
        "revision 2 in waves {waves:?}: {steps} steps ({:.0} s virtual), {:.1} s wall; {serving} agents serve it",
        (steps * STEP_MS) as f64 / 1000.0,
        rollout_wall.as_secs_f64()
    );

    let passes = &fleet.pass_times[first_passes..];
    let mut times: Vec<Duration> = passes.iter().map(|(t, _, _)| *t).collect();
    times.sort();
    let total: Duration = times.iter().sum();
    let assigned: usize = passes.iter().map(|(_, a, _)| a).sum();
    let signed: usize = passes.iter().map(|(_, _, s)| s).sum();
    println!(
        "driver during the canary rollout: {} passes, {:.1} s in all; per pass p50 {:.2} ms, p99 {:.1} ms, max {:.1} ms; {assigned} agents recomputed, {signed} states signed",
        times.len(),
        total.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    let (reference, changes) = fleet.full_scan();
    println!(
        "reference, one whole-fleet pass (store read + plan, {changes} changes): {:.1} ms; the old driver made one every {STEP_MS} ms: {:.1}x the event-driven passes' median",
        reference.as_secs_f64() * 1e3,
        reference.as_secs_f64() / percentile(&times, 0.5).as_secs_f64().max(1e-9),
    );
    let (_, peak) = resident_memory(std::process::id())?;
    println!(
        "wall {:.1} s in all; peak memory {:.0} MiB",
        started.elapsed().as_secs_f64(),
        mib(peak)
    );
    Ok(())
}
