//! One agent's control stream as the control plane sees it, with no I/O: the first message is
//! checked into a [`Hello`] (or a refusal), then each message the agent sends is taken in —
//! reports kept within their bounds and budgets, presence and health updated — and what the
//! adapter must do is handed back: frames to send, registry writes, a certificate to renew.
//! The QUIC adapter (the server's `agents`) reads frames, feeds them here and carries out the
//! [`Effect`]s in order.

use tern_proto::message::{Ack, HealthReport, SignedDesiredState, StatusReport};
use tern_proto::{AgentMessage, Capacity, ControlMessage, PROTOCOL_VERSION, Welcome};

use crate::deploy::desired::{DesiredStore, DesiredStoreError, Seen};
use crate::health::HealthTracker;
use crate::presence::{ConnectionId, Presence};
use crate::registry::AgentRecord;
use crate::replica::{Replica, SharedReports};
use crate::reports::AgentReports;

/// Bounds on what an agent reports about itself (it ends up in the registry and on terminals).
const MAX_REPORTED_TEXT: usize = 256;
const MAX_REPORTED_GPUS: usize = 16;

/// Truncates agent-reported text and drops control characters (it is shown on terminals).
pub fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_REPORTED_TEXT)
        .collect()
}

/// An agent's capacity as the registry keeps it: at most 16 GPUs, their texts cleaned.
pub fn clean_capacity(capacity: &Capacity) -> Capacity {
    let mut capacity = capacity.clone();
    capacity.gpus.truncate(MAX_REPORTED_GPUS);
    for gpu in &mut capacity.gpus {
        gpu.name = clean(&gpu.name);
        gpu.backend = clean(&gpu.backend);
        gpu.device_type = clean(&gpu.device_type);
        gpu.driver = clean(&gpu.driver);
    }
    capacity
}

/// Why a connection is closed before it is a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Refused with a reason the agent is told (a `Refused` frame) before the close.
    #[error("refused: {0}")]
    Told(String),
    /// A protocol violation: the connection is closed, the reason in the close.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What an accepted hello says, cleaned for the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub capacity: Capacity,
    pub version: String,
}

/// Checks the first message of `record`'s control stream (`None`: the stream ended first). A
/// revoked agent is refused before this, at the connection.
pub fn hello(record: &AgentRecord, first: Option<AgentMessage>) -> Result<Hello, Refusal> {
    let hello = match first {
        Some(AgentMessage::Hello(hello)) => hello,
        Some(_) => {
            return Err(Refusal::Protocol(
                "the first message must be a hello".into(),
            ));
        }
        None => {
            return Err(Refusal::Protocol(
                "control stream closed before hello".into(),
            ));
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Refusal::Told(format!(
            "protocol version {} is not supported (this control plane speaks {PROTOCOL_VERSION})",
            hello.protocol_version
        )));
    }
    if hello.agent_id != record.id {
        return Err(Refusal::Told(
            "agent id in hello does not match the client certificate".into(),
        ));
    }
    Ok(Hello {
        capacity: clean_capacity(&hello.capacity),
        version: clean(&hello.software_version),
    })
}

/// What a connected agent's record says after `hello`: its capacity, version, address and
/// replica, Ready, heard `now_ms`.
pub fn connected(
    record: &mut AgentRecord,
    hello: &Hello,
    address: &str,
    replica: &str,
    now_ms: u64,
) {
    record.capacity = hello.capacity.clone();
    record.version = hello.version.clone();
    record.last_seen_ms = now_ms;
    record.status = tern_proto::api::AgentStatus::Ready;
    record.address = Some(address.to_owned());
    record.replica = Some(replica.to_owned());
}

/// The welcome a session opens with.
pub fn welcome(heartbeat_interval_ms: u64, now_ms: u64) -> ControlMessage {
    ControlMessage::Welcome(Welcome {
        heartbeat_interval_ms,
        server_time_ms: now_ms,
    })
}

/// What the adapter does for a message, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this frame to the agent.
    Send(ControlMessage),
    /// Write the agent's capacity to its record (a registry write).
    RecordCapacity(Capacity),
    /// Renew the agent's certificate from this CSR and send it the answer (`Renewed`).
    Renew { csr_pem: String },
}

/// Why a session ends on a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What a session reads and updates in memory: the reports, presence and health the
/// planners observe, and the desired states given.
#[derive(Debug, Clone, Copy)]
pub struct SessionContext<'a> {
    pub reports: &'a AgentReports,
    pub shared_reports: &'a SharedReports,
    pub presence: &'a Presence,
    pub health: &'a HealthTracker,
    pub desired: &'a DesiredStore,
    pub replica: &'a Replica,
    /// Told of every report kept: the deployment driver plans on it.
    pub fleet: &'a crate::deploy::fleet::Inbox,
}

/// What a session sends once it is welcomed (after the trust chain): the agent's desired
/// state as the outbox holds it. The deployment driver hears of the connect, so an agent whose
/// state changed while it was away gets a new one.
pub fn welcomed(
    cx: &SessionContext<'_>,
    agent_id: &str,
) -> Result<Option<SignedDesiredState>, DesiredStoreError> {
    cx.fleet.touch(agent_id);
    cx.desired.signed(agent_id)
}

/// One open session: the agent, its connection in presence, and what it was given.
#[derive(Debug)]
pub struct AgentSession {
    agent_id: String,
    name: String,
    connection: ConnectionId,
    /// What the agent was given, read once for the session (again when a report names more).
    given: Seen,
}

impl AgentSession {
    /// The session of `record`'s new connection from `address` at `now_ms`: presence counts
    /// it (a newer connection of the agent replaces an older one).
    pub fn open(
        cx: &SessionContext<'_>,
        record: &AgentRecord,
        address: std::net::SocketAddr,
        now_ms: u64,
    ) -> Self {
        let connection = cx.presence.connect(&record.id, address, now_ms);
        Self::new(record, connection)
    }

    /// The session of `record`'s connection `connection` (as presence numbered it).
    pub fn new(record: &AgentRecord, connection: ConnectionId) -> Self {
        Self {
            agent_id: record.id.clone(),
            name: record.name.clone(),
            connection,
            given: Seen::default(),
        }
    }

    /// The session ended; whether it was the agent's live connection here (the adapter then
    /// marks its record NotReady, unless another replica holds it now). The deployment driver
    /// hears of it.
    pub fn close(self, cx: &SessionContext<'_>) -> bool {
        let live = cx.presence.disconnect(&self.agent_id, self.connection);
        if live {
            cx.fleet.touch(&self.agent_id);
        }
        live
    }

    /// Takes in one message from the agent at `now_ms`; what to do, in order.
    pub fn on_message(
        &mut self,
        cx: &SessionContext<'_>,
        message: AgentMessage,
        now_ms: u64,
    ) -> Result<Vec<Effect>, SessionEnd> {
        // A status report held back for the agent's rate budget lands once the budget allows.
        if let Some(held) = cx.reports.release_held(&self.agent_id, now_ms) {
            self.keep_status(cx, held);
        }
        let effects = match message {
            AgentMessage::Heartbeat(hb) => {
                if cx
                    .presence
                    .heartbeat(&self.agent_id, self.connection, now_ms)
                {
                    tracing::info!(agent = %self.name, "agent heard again after silence");
                    cx.fleet.touch(&self.agent_id);
                }
                vec![Effect::Send(ControlMessage::Ack(Ack { seq: hb.seq }))]
            }
            AgentMessage::Status(report) => {
                let seq = report.seq;
                // Cut to the bounds, and within the agent's budget (else held back, counted).
                match cx.reports.admit_status(&self.agent_id, report, now_ms) {
                    Some(report) => self.keep_status(cx, report),
                    None => {
                        tracing::debug!(agent = %self.name, "status report over the agent's rate: held back");
                    }
                }
                vec![Effect::Send(ControlMessage::Ack(Ack { seq }))]
            }
            AgentMessage::Capacity(capacity) => {
                vec![Effect::RecordCapacity(clean_capacity(&capacity))]
            }
            AgentMessage::Health(report) => {
                self.keep_health(cx, report, now_ms);
                Vec::new()
            }
            AgentMessage::Renew { csr_pem } => vec![Effect::Renew { csr_pem }],
            AgentMessage::Exits(report) => {
                let report = crate::reports::bounds::exits(report);
                if let Some(last) = report.exits.last() {
                    tracing::warn!(agent = %self.name, exits = report.exits.len(), last_run = %last.run, reason = %last.reason, "the agent reports unclean exits");
                }
                if cx.replica.peers {
                    (cx.shared_reports).exits(&cx.replica.name, &self.agent_id, &report);
                }
                cx.reports.record_exits(&self.agent_id, report);
                cx.fleet.touch(&self.agent_id);
                Vec::new()
            }
            AgentMessage::Ack(_) => Vec::new(),
            AgentMessage::Hello(_) => return Err(SessionEnd::Protocol("hello sent twice".into())),
        };
        Ok(effects)
    }

    fn keep_status(&self, cx: &SessionContext<'_>, report: StatusReport) {
        // Shared with the replicas that do not hold the agent: staged, and written with
        // others' by the report writer (see `replica::SharedReports`).
        if cx.replica.peers {
            (cx.shared_reports).status(&cx.replica.name, &self.agent_id, &report);
        }
        cx.reports.record(&self.agent_id, report);
        cx.fleet.touch(&self.agent_id);
    }

    fn keep_health(&mut self, cx: &SessionContext<'_>, report: HealthReport, now_ms: u64) {
        let Some(mut report) = cx.reports.admit_health(&self.agent_id, report, now_ms) else {
            tracing::debug!(agent = %self.name, "health report over the agent's rate: refused");
            return;
        };
        let foreign = match cx.desired.keep_given(
            &self.agent_id,
            &mut self.given,
            &mut report.pipelines,
            |p| (p.name.as_str(), p.revision),
        ) {
            Ok(foreign) => foreign,
            Err(e) => {
                // Counters are cumulative: the next report carries these requests too.
                tracing::warn!(agent = %self.name, error = %e, "cannot check a health report; skipped");
                return;
            }
        };
        if foreign > 0 {
            tracing::debug!(agent = %self.name, foreign, "health of revisions the agent was never given: dropped");
            cx.health.count_dropped(foreign);
        }
        if cx.replica.peers {
            (cx.shared_reports).health(&cx.replica.name, &self.agent_id, &report);
        }
        cx.health.record(&self.agent_id, &report, now_ms);
        cx.fleet.health(&self.agent_id);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tern_proto::message::{
        GpuAdapter, Heartbeat, PipelineHealth, PipelinePhase, PipelineStatus,
    };

    use super::*;
    use crate::testing::Stores;

    struct Memory {
        reports: AgentReports,
        shared_reports: SharedReports,
        presence: Presence,
        health: HealthTracker,
        replica: Replica,
        fleet: crate::deploy::fleet::Inbox,
    }

    fn memory(stores: &Stores) -> Memory {
        Memory {
            reports: AgentReports::default(),
            shared_reports: SharedReports::new(stores.backend.clone()),
            presence: Presence::default(),
            health: HealthTracker::default(),
            replica: Replica {
                name: "cp".into(),
                peers: false,
            },
            fleet: Default::default(),
        }
    }

    fn context<'a>(stores: &'a Stores, memory: &'a Memory) -> SessionContext<'a> {
        SessionContext {
            reports: &memory.reports,
            shared_reports: &memory.shared_reports,
            presence: &memory.presence,
            health: &memory.health,
            desired: &stores.desired,
            replica: &memory.replica,
            fleet: &memory.fleet,
        }
    }

    fn agent(stores: &Stores) -> AgentRecord {
        stores.enroll("id0", "edge-1");
        stores
            .registry
            .agent("id0")
            .expect("read")
            .expect("enrolled")
    }

    fn hello_from(agent_id: &str, protocol_version: u32) -> AgentMessage {
        AgentMessage::Hello(tern_proto::message::Hello {
            protocol_version,
            agent_id: agent_id.into(),
            name: "edge-1".into(),
            labels: BTreeMap::new(),
            capacity: Capacity {
                gpus: (0..20)
                    .map(|i| GpuAdapter {
                        name: format!("gpu {i}\u{1b}[31m{}", "x".repeat(300)),
                        backend: "vulkan".into(),
                        device_type: "discrete".into(),
                        driver: "d".into(),
                    })
                    .collect(),
                ..Capacity::default()
            },
            software_version: "1.2.3\n".into(),
        })
    }

    fn status(seq: u64, revision: u64) -> AgentMessage {
        AgentMessage::Status(StatusReport {
            seq,
            applied_generation: 1,
            pipelines: vec![PipelineStatus {
                name: "scores".into(),
                revision,
                phase: PipelinePhase::Ready,
                message: String::new(),
                serving: Some(revision),
            }],
            refused: None,
            warnings: Vec::new(),
        })
    }

    #[test]
    fn a_hello_is_checked_and_cleaned() {
        let stores = Stores::new();
        let record = agent(&stores);
        let accepted = hello(&record, Some(hello_from("id0", PROTOCOL_VERSION))).expect("ok");
        assert_eq!(accepted.version, "1.2.3", "control characters dropped");
        assert_eq!(accepted.capacity.gpus.len(), MAX_REPORTED_GPUS);
        let name = &accepted.capacity.gpus[0].name;
        assert!(name.chars().count() == MAX_REPORTED_TEXT && !name.contains('\u{1b}'));

        assert!(matches!(
            hello(&record, Some(hello_from("id0", PROTOCOL_VERSION + 1))),
            Err(Refusal::Told(reason)) if reason.contains("not supported")
        ));
        assert!(matches!(
            hello(&record, Some(hello_from("id9", PROTOCOL_VERSION))),
            Err(Refusal::Told(reason)) if reason.contains("does not match")
        ));
        assert!(matches!(
            hello(&record, Some(status(1, 1))),
            Err(Refusal::Protocol(_))
        ));
        assert!(matches!(hello(&record, None), Err(Refusal::Protocol(_))));
    }

    #[test]
    fn heartbeats_and_status_reports_are_acknowledged_and_kept_within_the_budget() {
        let stores = Stores::new();
        let (record, memory) = (agent(&stores), memory(&stores));
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let connection = memory.presence.connect("id0", address, 0);
        let mut session = AgentSession::new(&record, connection);
        let cx = context(&stores, &memory);

        let effects = session
            .on_message(&cx, AgentMessage::Heartbeat(Heartbeat { seq: 7 }), 500)
            .expect("a heartbeat");
        assert_eq!(effects, [Effect::Send(ControlMessage::Ack(Ack { seq: 7 }))]);
        assert_eq!(
            memory.presence.seen("id0").map(|s| s.last_seen_ms),
            Some(500)
        );

        // A burst past the budget: every report acknowledged, the last one held back...
        for seq in 1..=60 {
            let effects = session
                .on_message(&cx, status(seq, seq), 1_000)
                .expect("status");
            assert_eq!(effects, [Effect::Send(ControlMessage::Ack(Ack { seq }))]);
        }
        let kept = |memory: &Memory| memory.reports.pipeline("id0", "scores").map(|p| p.revision);
        assert!(kept(&memory) < Some(60), "over the budget: held back");
        // ...and taken at the next message once the budget allows.
        session
            .on_message(&cx, AgentMessage::Ack(Ack { seq: 0 }), 10_000)
            .expect("an ack");
        assert_eq!(kept(&memory), Some(60), "the latest report, not lost");
    }

    #[test]
    fn health_of_a_revision_never_given_is_dropped_and_counted() {
        let stores = Stores::new();
        let (record, memory) = (agent(&stores), memory(&stores));
        let mut session = AgentSession::new(&record, 1);
        let cx = context(&stores, &memory);
        let report = HealthReport {
            pipelines: vec![PipelineHealth {
                name: "scores".into(),
                revision: 3,
                requests: 100,
                errors: 0,
            }],
        };
        let effects = session
            .on_message(&cx, AgentMessage::Health(report), 1_000)
            .expect("health");
        assert!(effects.is_empty());
        assert_eq!(memory.health.dropped(), 1);
        assert_eq!(
            memory.health.window("id0", "scores", 3, 60_000, 1_000),
            (0, 0),
            "nothing of it counts towards a rollout"
        );
    }

    #[test]
    fn capacity_and_renewal_are_handed_out_and_a_second_hello_ends_the_session() {
        let stores = Stores::new();
        let (record, memory) = (agent(&stores), memory(&stores));
        let mut session = AgentSession::new(&record, 1);
        let cx = context(&stores, &memory);
        let AgentMessage::Hello(hello) = hello_from("id0", PROTOCOL_VERSION) else {
            unreachable!("a hello")
        };
        let effects = session
            .on_message(&cx, AgentMessage::Capacity(hello.capacity.clone()), 1)
            .expect("capacity");
        assert_eq!(
            effects,
            [Effect::RecordCapacity(clean_capacity(&hello.capacity))]
        );
        let effects = session
            .on_message(
                &cx,
                AgentMessage::Renew {
                    csr_pem: "csr".into(),
                },
                2,
            )
            .expect("renew");
        assert_eq!(
            effects,
            [Effect::Renew {
                csr_pem: "csr".into()
            }]
        );
        assert_eq!(
            session.on_message(&cx, AgentMessage::Hello(hello), 3),
            Err(SessionEnd::Protocol("hello sent twice".into()))
        );
    }
}
