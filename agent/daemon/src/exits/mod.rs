//! Runs of the agent that died (design section 6): a revision under which the agent process
//! dies is a failed revision.
//!
//! - [`ledger`]: the pure core: recent unclean exits, and the revisions put aside for them.
//! - [`marker`]: the adapter: the run marker that an orderly stop removes, and what the system
//!   says of a run that died (the supervisor's exit status, the memory cgroup's OOM kills, a
//!   panic message).

pub mod ledger;
pub mod marker;

pub use ledger::{ExitLedger, ExitPolicy, PutAside};
pub use marker::RunMarker;
