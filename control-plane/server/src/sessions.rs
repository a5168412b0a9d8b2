//! The live sessions of agents: each agent's open QUIC connection and the slot of its control
//! stream's next desired state. In memory; a newer connection of an agent replaces (closes) the
//! older one, so an agent never holds more than one.

use std::collections::HashMap;
use std::sync::Mutex;

use quinn::Connection;
use tern_proto::message::SignedDesiredState;
use tern_transport::quic::close;
use tokio::sync::watch;

/// The newest desired state for one agent's control stream: only the latest matters, so a
/// newer one replaces one not yet sent, and none is ever dropped for lack of room.
pub(crate) type DesiredSlot = watch::Sender<Option<SignedDesiredState>>;

/// Puts `state` in `slot` unless the slot holds that generation or a newer one; whether it
/// did.
pub(crate) fn offer(slot: &DesiredSlot, state: SignedDesiredState) -> bool {
    slot.send_if_modified(|current| {
        let newer = current
            .as_ref()
            .is_some_and(|c| c.generation >= state.generation);
        if !newer {
            *current = Some(state);
        }
        !newer
    })
}

/// The open connection of each agent, so that a newer one replaces (closes) an older one and an
/// agent never holds more than one, with the slot for its desired state.
#[derive(Debug, Default)]
pub struct Connections(Mutex<HashMap<String, (Connection, DesiredSlot)>>);

impl Connections {
    pub(crate) fn replace(&self, agent: &str, conn: &Connection, outbox: DesiredSlot) {
        let old = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_owned(), (conn.clone(), outbox));
        if let Some((old, _)) = old.filter(|(old, _)| old.stable_id() != conn.stable_id()) {
            old.close(
                close::REFUSED.into(),
                b"replaced by a newer connection of this agent",
            );
        }
    }

    pub(crate) fn remove(&self, agent: &str, conn: &Connection) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(agent)
            .is_some_and(|(c, _)| c.stable_id() == conn.stable_id())
        {
            map.remove(agent);
        }
    }

    /// Closes the agent's connection, if it has one (it was revoked or decommissioned).
    pub(crate) fn close(&self, agent: &str, reason: &str) {
        let conn = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent)
            .map(|(conn, _)| conn);
        if let Some(conn) = conn {
            conn.close(close::REFUSED.into(), reason.as_bytes());
        }
    }

    /// Hands `state` to the agent's control stream, unless the stream has that generation or
    /// a newer one already; whether it did. Without a connection it is not kept: the agent
    /// gets its current desired state when it connects.
    pub(crate) fn send(&self, agent: &str, state: SignedDesiredState) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(agent).is_some_and(|(_, slot)| offer(slot, state))
    }

    /// Whether the agent has a connection here.
    pub(crate) fn holds(&self, agent: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(agent)
    }
}
