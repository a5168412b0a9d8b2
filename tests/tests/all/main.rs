//! The end-to-end tests, in one test binary (one link step instead of one per file): real
//! `tern-control-plane`, `tern-agent` and `ternctl` processes on loopback, the in-memory fleet
//! simulation, and the smoke forms of the bench binaries. Run one file's tests with
//! `cargo test --workspace --test all -- FILE::`.

mod attacks;
mod benches;
mod compromised;
mod crash_loop;
mod dashboard;
mod deployments;
mod drift;
mod enrollment;
mod examples;
mod experiment;
mod faults;
mod full_disk;
mod handshake;
mod impostors;
mod install;
mod kubectl;
mod lifecycle;
mod lost_writes;
mod manifests;
mod otlp;
mod partition;
mod postgres_store;
mod postgres_tls;
mod recovery;
mod releases;
mod replicas;
mod run_local;
mod simulation;
mod telemetry;
mod triton;
