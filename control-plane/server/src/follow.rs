//! What a control plane learns from its store's change notifications: certificates revoked
//! by any task (or replica) — refused from the next handshake, and the agent's session here
//! closed — and, among replicas sharing a store, the desired states the work lease's holder
//! made for agents this replica holds, the reports of agents the others hold, and agents that
//! connected to another replica (one live session per agent: the newest connection's, so the
//! one here is closed). After a gap in the notifications it reads what it follows again.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backend::{Notice, RecvError, Subscription};
use crate::replica::Heard;
use crate::state::Shared;

/// Follows `notices` until `shutdown`.
pub(crate) async fn follow(
    shared: Arc<Shared>,
    mut notices: Subscription,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let received = tokio::select! {
            _ = shutdown.changed() => return,
            received = notices.recv() => received,
        };
        match received {
            Ok(Notice::Committed(changes)) => {
                for fingerprint in crate::registry::revoked_by(&changes) {
                    shared.revoked.revoke(fingerprint);
                }
                for agent in crate::registry::revoked_agents(&changes) {
                    if shared.connections.holds(&agent) {
                        info!(%agent, "revoked: its session here is closed");
                        shared.connections.close(&agent, "the agent was revoked");
                    }
                }
                shared.credentials.heard(&changes);
                shared.fleet.heard(&changes);
                if !shared.replica.peers {
                    continue;
                }
                for (agent, holder) in crate::registry::holders(&changes) {
                    if holder != shared.replica.name && shared.connections.holds(&agent) {
                        info!(%agent, %holder, "the agent connected to another replica: its older session here is closed");
                        shared.connections.close(
                            &agent,
                            &format!(
                                "superseded by a newer connection of this agent at replica {holder}"
                            ),
                        );
                    }
                }
                // Another replica's report of an agent held here is stale (written late, by a
                // replica that was paused or cut off while the agent moved): this session's
                // own reports are newer.
                for heard in crate::replica::heard(&changes, &shared.replica.name) {
                    let agent = heard.agent().to_owned();
                    if !shared.connections.holds(&agent) {
                        // The lease holder plans on it, as on its own agents' reports.
                        match &heard {
                            Heard::Health { .. } => shared.fleet.health(&agent),
                            Heard::Status { .. } | Heard::Exits { .. } => {
                                shared.fleet.touch(&agent)
                            }
                        }
                        record(&shared, heard);
                    }
                }
                // What the outbox gained for agents held here (the holder of the work lease
                // sends what it makes at once; this is for the others).
                let mut unreadable = Vec::new();
                for (agent, signed) in crate::deploy::desired::sent(&changes) {
                    if !shared.connections.holds(&agent) {
                        continue;
                    }
                    match signed {
                        Ok(state) => {
                            let generation = state.generation;
                            if shared.connections.send(&agent, state) {
                                debug!(%agent, generation, "desired state from the outbox sent");
                            }
                        }
                        Err(_) => unreadable.push(agent),
                    }
                }
                if !unreadable.is_empty() {
                    send_stored(&shared, unreadable).await;
                }
            }
            Ok(Notice::Missed) | Err(RecvError::Lagged(_)) => {
                warn!("fell behind the store's changes; reading what this replica follows again");
                shared.fleet.missed();
                read_again(&shared).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// A report another replica heard, as if this one had.
fn record(shared: &Shared, heard: Heard) {
    match heard {
        Heard::Status { agent, report } => shared.reports.record(&agent, report),
        Heard::Health { agent, report } => {
            shared
                .health
                .record(&agent, &report, tern_clock::unix_millis_now());
        }
        Heard::Exits { agent, report } => shared.reports.record_exits(&agent, report),
    }
}

/// Sends each of `agents` (held here) its desired state as the outbox holds it, unless it
/// has it already.
async fn send_stored(shared: &Arc<Shared>, agents: Vec<String>) {
    let work = shared.clone();
    let sent = tokio::task::spawn_blocking(move || {
        for agent in agents {
            match work.desired.signed(&agent) {
                Ok(Some(state)) => {
                    let generation = state.generation;
                    if work.connections.send(&agent, state) {
                        debug!(%agent, generation, "desired state from the outbox sent");
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(%agent, error = %e, "cannot read the desired state"),
            }
        }
    });
    if let Err(e) = sent.await {
        warn!(error = %e, "desired-state task failed");
    }
}

/// Reads revocations again and, among replicas, the shared reports and the desired states of
/// the agents held here.
async fn read_again(shared: &Arc<Shared>) {
    let work = shared.clone();
    let read = tokio::task::spawn_blocking(move || {
        match work.registry.revoked_certificates() {
            Ok(all) => all.into_iter().for_each(|f| work.revoked.revoke(f)),
            Err(e) => warn!(error = %e, "cannot read revocations"),
        }
        if let Err(e) = work.credentials.read_shared(work.backend.as_ref()) {
            warn!(error = %e, "cannot read the shared credentials");
        }
        if work.replica.peers {
            match work.shared_reports.statuses() {
                Ok(all) => {
                    for (agent, report) in all {
                        if !work.connections.holds(&agent) {
                            work.reports.record(&agent, report);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the agents' shared reports"),
            }
            match work.shared_reports.exits_all() {
                Ok(all) => {
                    for (agent, report) in all {
                        if !work.connections.holds(&agent) {
                            work.reports.record_exits(&agent, report);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the agents' shared exit reports"),
            }
        }
    });
    if let Err(e) = read.await {
        warn!(error = %e, "revocation reader failed");
    }
    if shared.replica.peers {
        // The outbox in one scan: only agents whose signed generation is newer than what
        // their stream was handed get theirs again (no read per agent held).
        let work = shared.clone();
        let read = tokio::task::spawn_blocking(move || match work.desired.signed_all() {
            Ok(all) => {
                for (agent, signed) in all {
                    if !work.connections.holds(&agent) {
                        continue;
                    }
                    match signed {
                        Ok(state) => {
                            work.connections.send(&agent, state);
                        }
                        Err(e) => warn!(%agent, error = %e, "cannot read the desired state"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the desired states"),
        });
        if let Err(e) = read.await {
            warn!(error = %e, "desired-state task failed");
        }
    }
}
