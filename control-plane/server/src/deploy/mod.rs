//! The deployment driver: the fleet core's ([`tern_fleet_core::deploy`]), under its old path.

pub use tern_fleet_core::deploy::*;
