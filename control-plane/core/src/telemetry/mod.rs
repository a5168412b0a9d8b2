//! Telemetry, as far as it needs no I/O: the fleet's time series ([`store`]) and the queries
//! over them that answer `ternctl top` ([`query`]). Receiving batches from agents, the
//! PostgreSQL engine of the series and the exports are the server's
//! (`tern_control_plane::telemetry`).

pub mod query;
pub mod store;
