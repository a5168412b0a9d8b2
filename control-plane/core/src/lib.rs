//! The fleet core of the Tern control plane: what the control plane knows and decides about
//! its fleet, with no I/O. It depends on no async runtime, network, HTTP or database crate
//! (`cargo xtask tidy` checks the resolved dependencies), so every decision here runs in a
//! unit test or a simulation with a virtual clock; the server crate drives it with real
//! storage engines, QUIC and HTTP.
//!
//! - [`backend`]: the storage interface the stores are written against (tables, atomic
//!   writes with compare-and-set conditions, change notifications), in memory and fenced.
//! - [`records`]: how the stores encode records (JSON values, versioned keys).
//! - [`registry`]: enrolled agents and enrollment tokens.
//! - [`catalog`]: pipelines with their revisions, deployments with their rollout.
//! - [`lease`]: leases on the work that must happen once among replicas, with fencing epochs.
//! - [`leadership`]: whether this replica holds the work lease, and its fenced stores.
//! - [`replica`]: replicas sharing a store, and the agents' reports they share.
//! - [`releases`]: signed releases, their artifacts (behind [`releases::ArtifactBlobs`]), the
//!   pinned trust root.
//! - [`apply`]: apply, diff and delete of manifests; rollout commands.
//! - [`agent_session`]: one agent's control stream: messages in; frames to send and store writes
//!   out.
//! - [`deploy`]: the deployment driver: planners → each agent's signed desired state.
//! - [`drift`]: drift baselines, PSI per feature per agent and fleet-wide, alerts.
//! - [`telemetry`]: the fleet's time series, with downsampling and retention, and the `top`
//!   queries over them.
//! - [`rollout`]: the rollout planner, a pure state machine.
//! - [`reports`]: what agents last reported about their pipelines.
//! - [`health`]: request counters of pipeline revisions on agents, for rollout gates.
//! - [`presence`]: which agents are connected and when they were last heard (in memory).

pub mod agent_session;
pub mod apply;
pub mod backend;
pub mod catalog;
pub mod deploy;
pub mod drift;
pub mod health;
pub mod leadership;
pub mod lease;
pub mod presence;
pub mod records;
pub mod registry;
pub mod releases;
pub mod replica;
pub mod reports;
pub mod rollout;
pub mod telemetry;
#[cfg(test)]
mod testing;
