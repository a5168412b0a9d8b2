//! Drift monitoring: the fleet core's ([`tern_fleet_core::drift`]), under its old path.

pub use tern_fleet_core::drift::*;
