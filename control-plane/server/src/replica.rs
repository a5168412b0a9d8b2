//! This replica among others that share its store: its name, and what it shares with them of
//! the agents it holds — their status and health reports, which the holder of the work lease
//! plans rollouts on, and every replica's API shows. Replicas write them to the store
//! (lazily: the next report replaces a lost one) and hear each other's through the store's
//! change notifications ([`heard`]). A control plane alone on its store shares nothing.

use serde::{Deserialize, Serialize};
use tern_proto::api::AgentStatus;
use tern_proto::message::{HealthReport, StatusReport};

use crate::backend::{
    BackendError, Change, CommitError, KeyRange, Scan, SharedBackend, Table, Write,
};
use crate::presence::Presence;
use crate::registry::AgentRecord;

/// Agent id → [`Observed`] status report.
const REPORTS: Table = Table("agent_reports");
/// Agent id → [`Observed`] health report.
const HEALTH: Table = Table("agent_health");

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
        }
    }
    out
}

/// The reports replicas share, in the store.
#[derive(Debug, Clone)]
pub struct SharedReports {
    backend: SharedBackend,
}

impl SharedReports {
    pub fn new(backend: SharedBackend) -> Self {
        Self { backend }
    }

    fn put(&self, table: Table, agent: &str, value: Vec<u8>) -> Result<(), BackendError> {
        self.backend
            .commit(Write::new().put(table, agent, value).lazily())
            .map_err(CommitError::into_backend)
    }

    pub fn status(&self, me: &str, agent: &str, report: &StatusReport) -> Result<(), BackendError> {
        self.put(REPORTS, agent, encode(me, report))
    }

    pub fn health(&self, me: &str, agent: &str, report: &HealthReport) -> Result<(), BackendError> {
        self.put(HEALTH, agent, encode(me, report))
    }

    /// Every agent's latest status report, by whichever replica heard it (after a gap in the
    /// change notifications, or at start).
    pub fn statuses(&self) -> Result<Vec<(String, StatusReport)>, BackendError> {
        Ok(self
            .backend
            .range(REPORTS, &KeyRange::all(), Scan::All)?
            .into_iter()
            .filter_map(|(key, value)| {
                let agent = String::from_utf8(key).ok()?;
                let observed =
                    postcard::from_bytes::<Observed<String, StatusReport>>(&value).ok()?;
                Some((agent, observed.report))
            })
            .collect())
    }

    /// Forgets a decommissioned agent's reports.
    pub fn forget(&self, agent: &str) -> Result<(), BackendError> {
        self.backend
            .commit(Write::new().delete(REPORTS, agent).delete(HEALTH, agent))
            .map_err(CommitError::into_backend)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::{MemoryBackend, Notice};

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
        shared.status("a", "agent-1", &status).expect("status");
        shared.health("b", "agent-2", &health).expect("health");
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
