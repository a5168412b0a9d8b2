//! This replica among others that share its store: its name, and what it shares with them of
//! the agents it holds — their status and health reports, which the holder of the work lease
//! plans rollouts on, and every replica's API shows. Replicas stage them in memory and write
//! the latest of each agent's in batches (lazily: the next report replaces a lost one), and
//! hear each other's through the store's change notifications ([`heard`]). A control plane alone on its store shares nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tern_proto::api::AgentStatus;
use tern_proto::message::{ExitReport, HealthReport, StatusReport};

use crate::backend::{
    BackendError, Change, CommitError, KeyRange, Scan, SharedBackend, Table, Write,
};
use crate::presence::Presence;
use crate::registry::AgentRecord;

/// Replica name → [`ReplicaRecord`].
const REPLICAS: Table = Table("replicas");
/// Agent id → [`Observed`] status report.
const REPORTS: Table = Table("agent_reports");
/// Agent id → [`Observed`] health report.
const HEALTH: Table = Table("agent_health");
/// Agent id → [`Observed`] exit report.
const EXITS: Table = Table("agent_exits");

/// This replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// This process, as leases and agent records name it.
    pub name: String,
    /// Whether other replicas share the store (PostgreSQL), or this process is alone on it.
    pub peers: bool,
}

impl Replica {
    /// Whether another replica holds the agent's connection: its record, not this replica's
    /// presence, says whether it is connected.
    pub fn held_elsewhere(&self, record: &AgentRecord) -> bool {
        self.peers && record.replica.as_deref().is_some_and(|r| r != self.name)
    }

    /// Whether the agent is connected (to this replica or, by its record, to another).
    pub fn connected(&self, presence: &Presence, record: &AgentRecord) -> bool {
        if self.held_elsewhere(record) {
            record.status == AgentStatus::Ready
        } else {
            presence.seen(&record.id).is_some_and(|s| s.connected)
        }
    }

    /// The agent's status at `now_ms`: from this replica's presence, or from its record when
    /// another replica holds it (that one marks it NotReady when it falls silent).
    pub fn status(
        &self,
        presence: &Presence,
        record: &AgentRecord,
        now_ms: u64,
        not_ready_after_ms: u64,
    ) -> AgentStatus {
        if self.held_elsewhere(record) {
            record.status
        } else {
            presence.status(&record.id, now_ms, not_ready_after_ms)
        }
    }

    /// Whether this replica may write the agent's connection status: it holds the agent, or
    /// nobody else does.
    pub fn may_mark(&self, record: &AgentRecord) -> bool {
        !self.held_elsewhere(record)
    }
}

/// A replica as it announces itself (every third of `lease_ttl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub name: String,
    /// Where agents reach it, when it knows (`advertise_agents`, or a specific listen address).
    pub agents_address: Option<String>,
    pub api_address: String,
    pub started_ms: u64,
    /// When it last announced itself.
    pub seen_ms: u64,
    pub agents_connected: u64,
    pub version: String,
}

impl ReplicaRecord {
    /// Whether it announced itself within three lease lifetimes of `now_ms`.
    pub fn live(&self, now_ms: u64, lease_ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.seen_ms) <= lease_ttl_ms.saturating_mul(3)
    }
}

/// How long a replica that stopped announcing itself stays listed (as `Lost`).
const FORGET_LOST_AFTER_MS: u64 = 24 * 3_600_000;

/// The replicas of the control plane, in the store.
#[derive(Debug, Clone)]
pub struct ReplicaRegistry {
    backend: SharedBackend,
}

impl ReplicaRegistry {
    pub fn new(backend: SharedBackend) -> Self {
        Self { backend }
    }

    /// Writes this replica's record (lazily: the next announcement replaces a lost one).
    pub fn announce(&self, record: &ReplicaRecord) -> Result<(), BackendError> {
        let value = serde_json::to_vec(record).unwrap_or_default();
        self.backend
            .commit(
                Write::new()
                    .put(REPLICAS, record.name.as_str(), value)
                    .lazily(),
            )
            .map_err(CommitError::into_backend)
    }

    /// Every replica record stored, with its key.
    fn stored(&self) -> Result<Vec<(Vec<u8>, ReplicaRecord)>, BackendError> {
        let mut out = Vec::new();
        for (key, value) in self.backend.range(REPLICAS, &KeyRange::all(), Scan::All)? {
            match serde_json::from_slice::<ReplicaRecord>(&value) {
                Ok(record) => out.push((key, record)),
                Err(e) => tracing::warn!(error = %e, "an unreadable replica record"),
            }
        }
        Ok(out)
    }

    /// Every replica that announced itself in the last day, by name (reads only).
    pub fn all(&self, now_ms: u64) -> Result<Vec<ReplicaRecord>, BackendError> {
        Ok(self
            .stored()?
            .into_iter()
            .map(|(_, record)| record)
            .filter(|r| now_ms.saturating_sub(r.seen_ms) <= FORGET_LOST_AFTER_MS)
            .collect())
    }

    /// Deletes the records of replicas silent for a day (housekeeping, by the holder of the
    /// work lease, through its fenced backend); how many. Each only as it was read: a replica
    /// that announced itself meanwhile is kept.
    pub fn forget_lost(&self, now_ms: u64) -> Result<usize, BackendError> {
        let mut forgotten = 0;
        for (key, value) in self.backend.range(REPLICAS, &KeyRange::all(), Scan::All)? {
            let Ok(record) = serde_json::from_slice::<ReplicaRecord>(&value) else {
                continue;
            };
            if now_ms.saturating_sub(record.seen_ms) <= FORGET_LOST_AFTER_MS {
                continue;
            }
            let forget = Write::new()
                .only_if(REPLICAS, key.clone(), Some(value))
                .delete(REPLICAS, key);
            match self.backend.commit(forget) {
                Ok(()) => forgotten += 1,
                Err(CommitError::Conflict) => {}
                Err(CommitError::Backend(e)) => return Err(e),
            }
        }
        Ok(forgotten)
    }

    /// Where agents reach the live replicas, for enrollment to hand out.
    pub fn agent_addresses(
        &self,
        now_ms: u64,
        lease_ttl_ms: u64,
    ) -> Result<Vec<String>, BackendError> {
        Ok(self
            .all(now_ms)?
            .into_iter()
            .filter(|r| r.live(now_ms, lease_ttl_ms))
            .filter_map(|r| r.agents_address)
            .collect())
    }
}

/// A report as shared: who heard it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Observed<R, T> {
    replica: R,
    report: T,
}

/// What one replica heard from an agent another replica holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    Status { agent: String, report: StatusReport },
    Health { agent: String, report: HealthReport },
    Exits { agent: String, report: ExitReport },
}

impl Heard {
    /// The agent the report is about.
    pub fn agent(&self) -> &str {
        match self {
            Heard::Status { agent, .. }
            | Heard::Health { agent, .. }
            | Heard::Exits { agent, .. } => agent,
        }
    }
}

fn encode<T: Serialize>(replica: &str, report: &T) -> Vec<u8> {
    postcard::to_allocvec(&Observed { replica, report }).unwrap_or_default()
}

/// The reports of other replicas among `changes` (this replica's own are skipped).
pub fn heard(changes: &[Change], me: &str) -> Vec<Heard> {
    let mut out = Vec::new();
    for change in changes {
        let (Some(value), Ok(agent)) = (&change.value, std::str::from_utf8(&change.key)) else {
            continue;
        };
        let agent = agent.to_owned();
        if change.table == REPORTS {
            match postcard::from_bytes::<Observed<String, StatusReport>>(value) {
                Ok(o) if o.replica != me => out.push(Heard::Status {
                    agent,
                    report: o.report,
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!(%agent, error = %e, "an unreadable shared status report"),
            }
        } else if change.table == HEALTH {
            match postcard::from_bytes::<Observed<String, HealthReport>>(value) {
                Ok(o) if o.replica != me => out.push(Heard::Health {
                    agent,
                    report: o.report,
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!(%agent, error = %e, "an unreadable shared health report"),
            }
        } else if change.table == EXITS {
            match postcard::from_bytes::<Observed<String, ExitReport>>(value) {
                Ok(o) if o.replica != me => out.push(Heard::Exits {
                    agent,
                    report: o.report,
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!(%agent, error = %e, "an unreadable shared exit report"),
            }
        }
    }
    out
}

/// Reports staged for the store, by table and agent: the latest of each.
type Staged = BTreeMap<(Table, String), Vec<u8>>;

/// Reports written per commit, at most.
const REPORTS_PER_WRITE: usize = 256;

/// The reports replicas share, in the store: an agent's latest status and health reports,
/// staged in memory as they arrive (nothing waits on the store on an agent's control stream)
/// and written in batches by [`SharedReports::write_staged`]. A later report replaces one
/// not written yet: status is state, and health counters are cumulative.
#[derive(Debug, Clone)]
pub struct SharedReports {
    backend: SharedBackend,
    staged: Arc<Mutex<Staged>>,
}

impl SharedReports {
    pub fn new(backend: SharedBackend) -> Self {
        Self {
            backend,
            staged: Arc::default(),
        }
    }

    fn stage(&self, table: Table, agent: &str, value: Vec<u8>) {
        self.staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((table, agent.to_owned()), value);
    }

    pub fn status(&self, me: &str, agent: &str, report: &StatusReport) {
        self.stage(REPORTS, agent, encode(me, report));
    }

    pub fn health(&self, me: &str, agent: &str, report: &HealthReport) {
        self.stage(HEALTH, agent, encode(me, report));
    }

    pub fn exits(&self, me: &str, agent: &str, report: &ExitReport) {
        self.stage(EXITS, agent, encode(me, report));
    }

    /// Writes the reports staged since the last call, [`REPORTS_PER_WRITE`] per commit;
    /// how many. Those a failed commit did not write are staged again (unless a newer one
    /// came meanwhile).
    pub fn write_staged(&self) -> Result<usize, BackendError> {
        let staged = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|p| p.into_inner()));
        let entries: Vec<((Table, String), Vec<u8>)> = staged.into_iter().collect();
        for (written, chunk) in entries.chunks(REPORTS_PER_WRITE).enumerate() {
            let write = chunk
                .iter()
                .fold(Write::new().lazily(), |w, ((table, agent), value)| {
                    w.put(*table, agent.as_str(), value.clone())
                });
            if let Err(e) = self.backend.commit(write) {
                let mut again = self.staged.lock().unwrap_or_else(|p| p.into_inner());
                for (key, value) in &entries[written * REPORTS_PER_WRITE..] {
                    again.entry(key.clone()).or_insert_with(|| value.clone());
                }
                return Err(e.into_backend());
            }
        }
        Ok(entries.len())
    }

    /// Every agent's latest status report, by whichever replica heard it (after a gap in the
    /// change notifications, or at start).
    pub fn statuses(&self) -> Result<Vec<(String, StatusReport)>, BackendError> {
        self.all(REPORTS)
    }

    /// Every agent's latest exit report, like [`SharedReports::statuses`].
    pub fn exits_all(&self) -> Result<Vec<(String, ExitReport)>, BackendError> {
        self.all(EXITS)
    }

    fn all<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<Vec<(String, T)>, BackendError> {
        Ok(self
            .backend
            .range(table, &KeyRange::all(), Scan::All)?
            .into_iter()
            .filter_map(|(key, value)| {
                let agent = String::from_utf8(key).ok()?;
                let observed = postcard::from_bytes::<Observed<String, T>>(&value).ok()?;
                Some((agent, observed.report))
            })
            .collect())
    }

    /// Forgets a decommissioned agent's reports.
    pub fn forget(&self, agent: &str) -> Result<(), BackendError> {
        self.staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, staged), _| staged != agent);
        self.backend
            .commit(
                Write::new()
                    .delete(REPORTS, agent)
                    .delete(HEALTH, agent)
                    .delete(EXITS, agent),
            )
            .map_err(CommitError::into_backend)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::{MemoryBackend, Notice};

    #[test]
    fn a_replica_silent_for_a_day_is_left_out_of_reads_and_forgotten_by_housekeeping() {
        let backend: SharedBackend = Arc::new(MemoryBackend::new());
        let replicas = ReplicaRegistry::new(backend.clone());
        let record = |name: &str, seen_ms| ReplicaRecord {
            name: name.into(),
            agents_address: None,
            api_address: "127.0.0.1:1".into(),
            started_ms: 0,
            seen_ms,
            agents_connected: 0,
            version: "0".into(),
        };
        let now = 10 * FORGET_LOST_AFTER_MS;
        replicas
            .announce(&record("gone", now - FORGET_LOST_AFTER_MS - 1))
            .expect("announce");
        replicas
            .announce(&record("here", now - 1))
            .expect("announce");
        let names =
            |all: Vec<ReplicaRecord>| -> Vec<String> { all.into_iter().map(|r| r.name).collect() };
        assert_eq!(names(replicas.all(now).expect("all")), ["here"]);
        assert_eq!(
            backend
                .range(REPLICAS, &KeyRange::all(), Scan::All)
                .expect("range")
                .len(),
            2,
            "a read writes nothing"
        );
        assert_eq!(replicas.forget_lost(now).expect("forget"), 1);
        assert_eq!(
            backend
                .range(REPLICAS, &KeyRange::all(), Scan::All)
                .expect("range")
                .len(),
            1
        );
        assert_eq!(names(replicas.all(now).expect("all")), ["here"]);
    }

    #[test]
    fn a_replica_hears_the_reports_of_agents_others_hold_and_not_its_own() {
        let backend: SharedBackend = Arc::new(MemoryBackend::new());
        let shared = SharedReports::new(backend.clone());
        let mut notices = backend.subscribe();
        let status = StatusReport {
            seq: 3,
            applied_generation: 2,
            pipelines: Vec::new(),
            refused: None,
            warnings: vec!["low disk".into()],
        };
        let health = HealthReport {
            pipelines: Vec::new(),
        };
        shared.status("a", "agent-1", &status);
        shared.health("b", "agent-2", &health);
        assert_eq!(shared.write_staged().expect("write"), 2, "in one batch");
        let mut heard_by = |me: &str| -> Vec<Heard> {
            let mut all = Vec::new();
            while let Ok(Notice::Committed(changes)) = notices.try_recv() {
                all.extend(heard(&changes, me));
            }
            all
        };
        assert_eq!(
            heard_by("b"),
            [Heard::Status {
                agent: "agent-1".into(),
                report: status.clone()
            }],
            "b hears a's agent and not its own"
        );
        assert_eq!(
            shared.statuses().expect("statuses"),
            [("agent-1".to_owned(), status)]
        );
        shared.forget("agent-1").expect("forget");
        assert!(shared.statuses().expect("statuses").is_empty());

        let mut record: AgentRecord = serde_json::from_value(serde_json::json!({
            "id": "agent-1", "name": "edge-1", "labels": {}, "first_seen_ms": 0,
            "last_seen_ms": 0, "status": "Ready", "cert_sha256": "00",
            "replica": "a"
        }))
        .expect("record");
        let b = Replica {
            name: "b".into(),
            peers: true,
        };
        assert!(b.held_elsewhere(&record) && !b.may_mark(&record));
        record.replica = Some("b".into());
        assert!(!b.held_elsewhere(&record) && b.may_mark(&record));
        let alone = Replica {
            name: "c".into(),
            peers: false,
        };
        assert!(!alone.held_elsewhere(&record), "alone, presence says");
    }
}
