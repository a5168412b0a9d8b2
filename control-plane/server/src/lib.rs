//! The Tern control plane.
//!
//! It owns the transport CA and is the only party that issues agent certificates. Agents dial it
//! over QUIC with mutual TLS; operators reach it through the HTTPS admin API (`ternctl`).
//!
//! - [`data_dir`]: the files `init` writes and `serve` reads.
//! - [`config`]: `config.toml`, parsed once into typed settings.
//! - [`backend`]: the storage interface the stores are written against (tables, atomic
//!   writes with compare-and-set conditions, change notifications), on sled, PostgreSQL or
//!   in memory.
//! - [`records`]: how the stores encode records (JSON values, versioned keys).
//! - [`registry`]: enrolled agents and enrollment tokens.
//! - [`releases`]: signed releases, their artifacts, the pinned trust root.
//! - [`artifacts`]: artifacts by digest in an object store (a directory, or S3-compatible).
//! - [`catalog`]: pipelines with their revisions, deployments with their rollout.
//! - [`apply`]: apply, diff and delete of manifests; rollout commands.
//! - [`rollout`]: the rollout planner, a pure state machine.
//! - [`reports`]: what agents last reported about their pipelines.
//! - [`health`]: request counters of pipeline revisions on agents, for rollout gates.
//! - [`lease`]: leases on the work that must happen once among replicas, with fencing epochs.
//! - `leadership`: whether this replica holds the work lease, and its fenced stores.
//! - [`deploy`]: the deployment driver: planners → each agent's signed desired state.
//! - [`transfer`]: the streams agents open: artifact fetches (resumable, content-addressed)
//!   and telemetry.
//! - [`telemetry`]: telemetry ingest (deduplicated, acknowledged when durable), time series
//!   with downsampling and retention, `top` queries and the fleet's `/metrics`.
//! - [`drift`]: drift baselines, PSI per feature per agent and fleet-wide, alerts.
//! - [`replica`]: this replica among others sharing its store, and the agents' reports they
//!   share.
//! - `follow`: what a control plane learns from the store's change notifications.
//! - [`presence`]: which agents are connected and when they were last heard (in memory).
//! - [`credentials`]: the admin credential and read-only ones.
//! - [`enroll`]: redeeming a token for a certificate.
//! - [`lifecycle`]: revoking, decommissioning and relabelling agents; certificate renewal.
//! - [`agents`]: the QUIC endpoint and the per-agent control stream.
//! - [`api`]: the admin API and the enrollment API (axum routers).
//! - [`sessions`]: each agent's live connection and the slot of its next desired state.
//! - [`state`]: the state the adapters share; services get narrow views of it.
//! - [`server`]: starts and stops all of it.

pub mod agents;
pub mod api;
pub mod artifacts;
pub mod backend;
pub mod config;
pub mod credentials;
pub mod data_dir;
pub mod deploy;
pub mod drift;
pub mod enroll;
pub(crate) mod follow;
pub mod lifecycle;
pub mod server;
pub mod sessions;
pub mod state;
pub mod telemetry;
pub mod transfer;

// The fleet core's modules, under the paths they had here.
pub use tern_fleet_core::{
    agent_session, apply, catalog, health, leadership, lease, presence, records, registry,
    releases, replica, reports, rollout,
};

pub use config::ControlPlaneConfig;
pub use data_dir::{DataDir, InitOptions, ReplicaOptions};
pub use server::{RunningControlPlane, ServeOptions, StartError};
