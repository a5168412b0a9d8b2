//! The storage backend the control plane's stores are written against: its interface, the
//! in-memory and the fenced backends are the fleet core's ([`tern_fleet_core::backend`]),
//! re-exported here with the engines that do I/O.
//!
//! Every commit is announced to [`Backend::subscribe`]rs, in commit order: sled tells its own
//! process (sled's database is locked by one process); PostgreSQL tells every process that
//! shares it, through `LISTEN`/`NOTIFY`, and says when commits may have gone unheard
//! ([`Notice::Missed`]).
//!
//! Three backends implement the five required methods (`get`, `visit`, `commit`,
//! `subscribe`, `flush`; `get_many` and `range` have defaults): [`SledBackend`] (a sled
//! database on disk, what a single control plane runs), [`PostgresBackend`]
//! (`store = "postgres://..."`, what replicas share) and [`MemoryBackend`] (tests and
//! simulations); one contract suite (`tests`) tests them all. `driver` runs the clients whose
//! futures the blocking methods wait on.

mod disk;
pub mod driver;
pub mod postgres;
#[cfg(test)]
mod tests;

// The interface, the in-memory and fenced backends: the fleet core's.
pub use tern_fleet_core::backend::*;

pub use disk::SledBackend;
pub use postgres::PostgresBackend;
