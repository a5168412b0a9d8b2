//! Which agents are connected and when each was last heard, kept in memory.
//!
//! Heartbeats arrive every few seconds from every agent; writing each to disk would make the
//! store the bottleneck of a large fleet. Presence records them in memory, and the server
//! persists `last_seen` on connect, on disconnect and periodically.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tern_proto::api::AgentStatus;

/// Identifies one connection of an agent, so that a late disconnect of an old connection does not
/// mark a reconnected agent as gone.
pub type ConnectionId = u64;

#[derive(Debug, Clone, Copy)]
struct Live {
    connection: ConnectionId,
    connected: bool,
    last_seen_ms: u64,
    /// `last_seen_ms` changed since it was last persisted.
    dirty: bool,
    /// The agent was reported NotReady for silence (and persisted as such).
    reported_silent: bool,
    address: SocketAddr,
}

/// The status of an agent at `now_ms`.
pub fn status_at(
    connected: bool,
    last_seen_ms: u64,
    now_ms: u64,
    not_ready_after_ms: u64,
) -> AgentStatus {
    if connected && now_ms.saturating_sub(last_seen_ms) <= not_ready_after_ms {
        AgentStatus::Ready
    } else {
        AgentStatus::NotReady
    }
}

/// What presence knows about one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub connected: bool,
    pub last_seen_ms: u64,
    pub address: SocketAddr,
}

/// Live presence of every agent that connected since the control plane started.
#[derive(Debug, Default)]
pub struct Presence {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_connection: ConnectionId,
    agents: HashMap<String, Live>,
}

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-updated entry (all writes are single
        // assignments), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new connection of `agent` and returns its id.
    pub fn connect(&self, agent: &str, address: SocketAddr, now_ms: u64) -> ConnectionId {
        let mut inner = self.lock();
        inner.next_connection += 1;
        let connection = inner.next_connection;
        inner.agents.insert(
            agent.to_owned(),
            Live {
                connection,
                connected: true,
                last_seen_ms: now_ms,
                dirty: false,
                reported_silent: false,
                address,
            },
        );
        connection
    }

    /// Records a heartbeat. Returns whether the agent had been reported silent (it is back).
    pub fn heartbeat(&self, agent: &str, connection: ConnectionId, now_ms: u64) -> bool {
        let mut inner = self.lock();
        match inner.agents.get_mut(agent) {
            Some(live) if live.connection == connection => {
                live.last_seen_ms = now_ms;
                live.dirty = true;
                std::mem::take(&mut live.reported_silent)
            }
            _ => false,
        }
    }

    /// Records the end of a connection. Returns false if a newer connection replaced it.
    pub fn disconnect(&self, agent: &str, connection: ConnectionId) -> bool {
        let mut inner = self.lock();
        match inner.agents.get_mut(agent) {
            Some(live) if live.connection == connection => {
                live.connected = false;
                true
            }
            _ => false,
        }
    }

    /// Forgets a decommissioned agent.
    pub fn forget(&self, agent: &str) {
        self.lock().agents.remove(agent);
    }

    /// Whether `agent` is Ready at `now_ms`: connected and heard within `not_ready_after_ms`.
    pub fn status(&self, agent: &str, now_ms: u64, not_ready_after_ms: u64) -> AgentStatus {
        match self.seen(agent) {
            Some(seen) => status_at(
                seen.connected,
                seen.last_seen_ms,
                now_ms,
                not_ready_after_ms,
            ),
            None => AgentStatus::NotReady,
        }
    }

    /// What is known about `agent`, if it connected since start.
    pub fn seen(&self, agent: &str) -> Option<Seen> {
        self.lock().agents.get(agent).map(|l| Seen {
            connected: l.connected,
            last_seen_ms: l.last_seen_ms,
            address: l.address,
        })
    }

    /// Takes the agents whose `last_seen` changed since the last call, for persisting.
    pub fn take_dirty(&self) -> Vec<(String, u64)> {
        let mut inner = self.lock();
        inner
            .agents
            .iter_mut()
            .filter(|(_, l)| l.dirty)
            .map(|(id, l)| {
                l.dirty = false;
                (id.clone(), l.last_seen_ms)
            })
            .collect()
    }

    /// Agents that are connected but silent for longer than `not_ready_after_ms` and were not yet
    /// reported; each is returned once until it is heard again.
    pub fn take_newly_silent(&self, now_ms: u64, not_ready_after_ms: u64) -> Vec<String> {
        let mut inner = self.lock();
        inner
            .agents
            .iter_mut()
            .filter(|(_, l)| {
                l.connected
                    && !l.reported_silent
                    && status_at(true, l.last_seen_ms, now_ms, not_ready_after_ms)
                        == AgentStatus::NotReady
            })
            .map(|(id, l)| {
                l.reported_silent = true;
                id.clone()
            })
            .collect()
    }

    /// Number of agents with an open connection.
    pub fn connected(&self) -> usize {
        self.lock().agents.values().filter(|l| l.connected).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().expect("addr")
    }

    #[test]
    fn agent_turns_not_ready_after_silence_and_ready_when_heard() {
        assert_eq!(status_at(true, 1_000, 16_000, 15_000), AgentStatus::Ready);
        assert_eq!(
            status_at(true, 1_000, 16_001, 15_000),
            AgentStatus::NotReady
        );
        assert_eq!(
            status_at(false, 1_000, 1_000, 15_000),
            AgentStatus::NotReady
        );

        let p = Presence::default();
        let c = p.connect("a", addr(), 0);
        assert!(p.take_newly_silent(10_000, 15_000).is_empty());
        assert_eq!(p.take_newly_silent(20_000, 15_000), vec!["a".to_owned()]);
        assert!(
            p.take_newly_silent(21_000, 15_000).is_empty(),
            "reported once"
        );
        assert!(p.heartbeat("a", c, 22_000), "back after silence");
        assert_eq!(p.take_dirty(), vec![("a".to_owned(), 22_000)]);
        assert!(p.take_dirty().is_empty());
    }

    #[test]
    fn late_disconnect_of_old_connection_keeps_new_one() {
        let p = Presence::default();
        let old = p.connect("a", addr(), 0);
        let new = p.connect("a", addr(), 5);
        assert!(!p.disconnect("a", old));
        assert!(p.seen("a").expect("seen").connected);
        assert!(
            !p.heartbeat("a", old, 9),
            "old connection's heartbeat ignored"
        );
        assert!(p.disconnect("a", new));
        assert!(!p.seen("a").expect("seen").connected);
    }
}
