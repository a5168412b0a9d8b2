//! Drift, as far as it needs no I/O: baselines and alerts, and the judge that turns readings
//! into alert changes. Computing drift from telemetry is the server's
//! (`tern_control_plane::drift`).
//!
//! - [`judge`]: readings and alerts in, alert changes out (pure).
//! - [`store`]: baselines and alerts.

pub mod judge;
pub mod store;
