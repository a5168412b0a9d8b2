//! The rollout planner: how one deployment moves its selected agents from a stable pipeline
//! revision to a new one, wave by wave, and back when a wave is unhealthy.
//!
//! A plain state machine: the driver passes what it observes of the selected agents and `now`,
//! and gets back the transitions that happened; [`Rollout::assignment`] says which revision
//! each agent should run. It does no I/O and reads no clock, so tests drive it with virtual
//! time.
//!
//! Rules:
//! - Wave *k* covers the first ⌈n·wavesₖ/100⌉ of the n selected agents (in the driver's stable
//!   order), at least one; agents never leave a wave once in it.
//! - A wave is healthy when every member of it is connected and serves the target revision,
//!   and none has an error rate over `maxErrorRate`. A member offline for longer than the
//!   offline grace (`offlineGraceSeconds`) is left out of that rule and listed
//!   ([`Rollout::left_out`]): edge hosts can be away for days, and converge when they return.
//!   A member left out never counts as healthy: at least one member must be connected and
//!   serving; the next selected agent takes its place in the wave. Until its grace has
//!   passed, an offline member holds the wave.
//! - A wave must stay healthy for the whole health window before the next one starts.
//! - A wave fails when an agent reports that it could not install the target, when an agent's
//!   error rate exceeds the limit, when a member's process exited uncleanly while it served
//!   the target (a crash, an OOM kill: a revision that kills the agent is not healthy however
//!   quickly its supervisor restarts it), or when it is not healthy within the progress
//!   deadline. With
//!   `autoRollback` every agent goes back to what it ran before the rollout began; without it,
//!   the rollout stops where it is until an operator undoes it or applies a new revision.
//! - A rollout that replaces one still in progress starts from the stable revision, and each
//!   agent the replaced one had moved keeps the revision it ran as the one to return to: a
//!   rollback never takes away what was serving.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use tern_proto::manifest::RolloutSpec;

/// How long a wave may take to become healthy before it counts as failed.
pub const DEFAULT_PROGRESS_DEADLINE_MS: u64 = 10 * 60 * 1000;
/// Most transitions kept in a rollout's history.
const MAX_HISTORY: usize = 64;

/// The rules a rollout follows, from the deployment's `spec.rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// Cumulative percentages, ending at 100.
    pub waves: Vec<u8>,
    pub health_window_ms: u64,
    pub max_error_rate: f64,
    pub auto_rollback: bool,
    pub progress_deadline_ms: u64,
    /// How long an offline member holds its wave before it is left out.
    #[serde(default = "default_offline_grace_ms")]
    pub offline_grace_ms: u64,
}

fn default_offline_grace_ms() -> u64 {
    tern_proto::manifest::DEFAULT_OFFLINE_GRACE_SECONDS * 1000
}

impl From<&RolloutSpec> for RolloutPolicy {
    fn from(spec: &RolloutSpec) -> Self {
        Self {
            waves: spec.wave_percents(),
            health_window_ms: spec.health_window_seconds.saturating_mul(1000),
            max_error_rate: spec.max_error_rate,
            auto_rollback: spec.auto_rollback,
            progress_deadline_ms: DEFAULT_PROGRESS_DEADLINE_MS,
            offline_grace_ms: spec.offline_grace_seconds.saturating_mul(1000),
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Waves are rolling out.
    Progressing,
    /// An operator paused it: no new wave starts (failures are still detected).
    Paused,
    /// Every selected agent runs the target.
    Complete,
    /// A wave failed (or an operator undid it) and every agent went back.
    RolledBack { reason: String },
    /// A wave failed and `autoRollback` is off: agents stay where they are.
    Failed { reason: String },
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Complete => "Complete",
            Phase::RolledBack { .. } => "RolledBack",
            Phase::Failed { .. } => "Failed",
        })
    }
}

/// What happened in one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    /// Wave `wave` (0-based) started; `agents` joined the target revision.
    WaveStarted {
        wave: usize,
        agents: Vec<String>,
    },
    /// Agents newly selected while the wave was open joined it.
    AgentsJoined {
        agents: Vec<String>,
    },
    Completed,
    RolledBack {
        reason: String,
    },
    Failed {
        reason: String,
    },
    Paused,
    Resumed,
}

/// What the planner sees of one selected agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentObservation {
    pub agent: String,
    pub connected: bool,
    /// How long it has been offline (0 while connected).
    pub offline_ms: u64,
    /// Its unclean exits while it served the target revision, as it reported them: how many,
    /// and the last one's reason.
    pub exits: Option<(u32, String)>,
    /// The revision of this deployment's pipeline the agent answers requests with.
    pub serving: Option<u64>,
    /// The revision it reports working on, and whether installing it failed (with why).
    pub reported: Option<(u64, Option<String>)>,
    /// Requests and errors on the target revision within the health window.
    pub requests: u64,
    pub errors: u64,
}

/// One rollout of a deployment to a target pipeline revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub target: u64,
    /// What agents ran before (the revision they return to); `None`: the pipeline is new.
    pub previous: Option<u64>,
    pub policy: RolloutPolicy,
    pub phase: Phase,
    /// Index of the current wave.
    pub wave: usize,
    pub started_ms: u64,
    pub wave_started_ms: u64,
    pub healthy_since_ms: Option<u64>,
    /// Agents assigned the target, in the order they joined.
    pub members: Vec<String>,
    /// Agents that ran another revision than `previous` when this rollout began (the rollout it
    /// replaced had moved them): they run it until they join, and return to it on a rollback.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub returns: BTreeMap<String, u64>,
    /// Members of the current wave offline past the grace at the last step: left out of its
    /// health, never counted healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// Recent transitions with their time (unix ms), oldest first.
    pub history: Vec<(u64, Transition)>,
}

impl Rollout {
    /// A rollout of `target`, replacing `previous` (the stable revision).
    pub fn new(target: u64, previous: Option<u64>, policy: RolloutPolicy, now_ms: u64) -> Self {
        Self {
            target,
            previous,
            policy,
            phase: Phase::Progressing,
            wave: 0,
            started_ms: now_ms,
            wave_started_ms: now_ms,
            healthy_since_ms: None,
            members: Vec::new(),
            returns: BTreeMap::new(),
            left_out: Vec::new(),
            history: Vec::new(),
        }
    }

    /// The rollout of `target` that replaces this one: from this one's stable revision, and
    /// every agent this one moved elsewhere returns, on a rollback, to what it runs now.
    pub fn successor(&self, target: u64, policy: RolloutPolicy, now_ms: u64) -> Self {
        let previous = self.stable();
        let assignments = self.assignments();
        let returns = (self.members.iter())
            .chain(self.returns.keys())
            .filter_map(|agent| Some((agent.clone(), assignments.of(agent)?)))
            .filter(|(_, revision)| Some(*revision) != previous)
            .collect();
        Self {
            returns,
            ..Self::new(target, previous, policy, now_ms)
        }
    }

    /// What `agent` runs when it is not (or no longer) on the target.
    fn fallback(&self, agent: &str) -> Option<u64> {
        self.returns.get(agent).copied().or(self.previous)
    }

    /// The revision agents may rely on: the target once complete, else the previous one.
    pub fn stable(&self) -> Option<u64> {
        match self.phase {
            Phase::Complete => Some(self.target),
            _ => self.previous,
        }
    }

    /// The revision `agent` should run (`None`: not this pipeline at all).
    pub fn assignment(&self, agent: &str) -> Option<u64> {
        self.assignment_where(agent, self.members.iter().any(|m| m == agent))
    }

    fn assignment_where(&self, agent: &str, member: bool) -> Option<u64> {
        match &self.phase {
            Phase::Complete => Some(self.target),
            Phase::RolledBack { .. } => self.fallback(agent),
            Phase::Progressing | Phase::Paused | Phase::Failed { .. } => {
                if member {
                    Some(self.target)
                } else {
                    self.fallback(agent)
                }
            }
        }
    }

    /// [`Rollout::assignment`] for many agents: the members looked up in a set, not a list.
    pub fn assignments(&self) -> Assignments<'_> {
        Assignments {
            rollout: self,
            members: self.members.iter().map(String::as_str).collect(),
        }
    }

    /// When time alone moves this rollout next (its wave healthy for the whole health window,
    /// or the progress deadline passed), as the rollout stands; `None`: only what agents do
    /// moves it. An offline member's grace is the caller's: it knows when the member left.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.phase != Phase::Progressing {
            return None;
        }
        Some(match self.healthy_since_ms {
            Some(since) => since.saturating_add(self.policy.health_window_ms),
            None => (self.wave_started_ms)
                .saturating_add(self.policy.progress_deadline_ms)
                .saturating_add(1),
        })
    }

    /// Whether the rollout still changes anything by itself.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Progressing | Phase::Paused)
    }

    fn record(&mut self, now_ms: u64, transition: Transition, out: &mut Vec<Transition>) {
        self.history.push((now_ms, transition.clone()));
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
        out.push(transition);
    }

    /// Agents in wave `wave` when `n` are selected.
    fn wave_size(&self, wave: usize, n: usize) -> usize {
        let percent = usize::from(self.policy.waves.get(wave).copied().unwrap_or(100));
        (n * percent).div_ceil(100).clamp(n.min(1), n)
    }

    /// Adds selected agents, in order, until the current wave is full; returns those added.
    /// Members left out (offline past the grace) do not fill it: the next agents take their
    /// place, so a canary of an agent that is away does not stall the rollout.
    fn fill_wave(&mut self, agents: &[AgentObservation]) -> Vec<String> {
        let wanted = self.wave_size(self.wave, agents.len());
        let left_out: HashSet<&str> = self.left_out.iter().map(String::as_str).collect();
        let present = (self.members.iter())
            .filter(|m| !left_out.contains(m.as_str()))
            .count();
        let members: HashSet<&str> = self.members.iter().map(String::as_str).collect();
        let joined: Vec<String> = agents
            .iter()
            .filter(|a| !members.contains(a.agent.as_str()))
            .take(wanted.saturating_sub(present))
            .map(|a| a.agent.clone())
            .collect();
        self.members.extend(joined.iter().cloned());
        joined
    }

    /// One step: takes what the driver observed of every selected agent (in a stable order)
    /// and returns what changed.
    pub fn observe(&mut self, agents: &[AgentObservation], now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        if !self.is_active() {
            return out;
        }
        // Agents no longer selected leave; new ones fill the current wave. Sets, not scans:
        // a wave of a 100,000-agent fleet is checked in linear time.
        let selected: HashSet<&str> = agents.iter().map(|a| a.agent.as_str()).collect();
        self.members.retain(|m| selected.contains(m.as_str()));
        let joined = self.fill_wave(agents);
        if !joined.is_empty() {
            let transition = if self.history.is_empty() {
                Transition::WaveStarted {
                    wave: self.wave,
                    agents: joined,
                }
            } else {
                Transition::AgentsJoined { agents: joined }
            };
            self.record(now_ms, transition, &mut out);
        }

        let member_set: HashSet<&str> = self.members.iter().map(String::as_str).collect();
        let members: Vec<&AgentObservation> = agents
            .iter()
            .filter(|a| member_set.contains(a.agent.as_str()))
            .collect();
        if let Some(reason) = self.failure(&members, now_ms) {
            self.fail(reason, now_ms, &mut out);
            return out;
        }
        if self.phase == Phase::Paused {
            return out;
        }
        let grace = self.policy.offline_grace_ms;
        let (left_out, counted): (Vec<&AgentObservation>, Vec<&AgentObservation>) = members
            .iter()
            .partition(|a| !a.connected && a.offline_ms > grace);
        self.left_out = left_out.iter().map(|a| a.agent.clone()).collect();
        let healthy = !counted.is_empty()
            && counted
                .iter()
                .all(|a| a.connected && a.serving == Some(self.target));
        if !healthy {
            self.healthy_since_ms = None;
            return out;
        }
        let since = *self.healthy_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) < self.policy.health_window_ms {
            return out;
        }
        if self.wave + 1 >= self.policy.waves.len() && self.members.len() == agents.len() {
            self.phase = Phase::Complete;
            self.record(now_ms, Transition::Completed, &mut out);
            return out;
        }
        if self.wave + 1 < self.policy.waves.len() {
            self.wave += 1;
        }
        self.wave_started_ms = now_ms;
        self.healthy_since_ms = None;
        let joined = self.fill_wave(agents);
        self.record(
            now_ms,
            Transition::WaveStarted {
                wave: self.wave,
                agents: joined,
            },
            &mut out,
        );
        out
    }

    /// Why the current wave failed, if it did.
    fn failure(&self, members: &[&AgentObservation], now_ms: u64) -> Option<String> {
        for a in members {
            if let Some((count, reason)) = &a.exits
                && *count > 0
            {
                let why = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" (last: {reason})")
                };
                return Some(format!(
                    "agent {} exited {count} times on revision {}{why}",
                    a.agent, self.target
                ));
            }
            if let Some((revision, Some(message))) = &a.reported
                && *revision == self.target
            {
                return Some(format!(
                    "agent {} could not run revision {}: {message}",
                    a.agent, self.target
                ));
            }
            if a.requests > 0 {
                let rate = a.errors as f64 / a.requests as f64;
                if rate > self.policy.max_error_rate {
                    return Some(format!(
                        "agent {} failed {} of {} requests on revision {} ({:.0}% > {:.0}%)",
                        a.agent,
                        a.errors,
                        a.requests,
                        self.target,
                        rate * 100.0,
                        self.policy.max_error_rate * 100.0
                    ));
                }
            }
        }
        let waited = now_ms.saturating_sub(self.wave_started_ms);
        (self.phase == Phase::Progressing
            && self.healthy_since_ms.is_none()
            && waited > self.policy.progress_deadline_ms)
            .then(|| {
                format!(
                    "wave {} was not healthy within {}s",
                    self.wave + 1,
                    self.policy.progress_deadline_ms / 1000
                )
            })
    }

    fn fail(&mut self, reason: String, now_ms: u64, out: &mut Vec<Transition>) {
        if self.policy.auto_rollback {
            self.phase = Phase::RolledBack {
                reason: reason.clone(),
            };
            self.record(now_ms, Transition::RolledBack { reason }, out);
        } else {
            self.phase = Phase::Failed {
                reason: reason.clone(),
            };
            self.record(now_ms, Transition::Failed { reason }, out);
        }
    }

    /// Stops new waves from starting. Returns false when there is nothing to pause.
    pub fn pause(&mut self, now_ms: u64) -> bool {
        if self.phase != Phase::Progressing {
            return false;
        }
        self.phase = Phase::Paused;
        self.record(now_ms, Transition::Paused, &mut Vec::new());
        true
    }

    /// Lets a paused rollout go on. Returns false when it was not paused.
    pub fn resume(&mut self, now_ms: u64) -> bool {
        if self.phase != Phase::Paused {
            return false;
        }
        self.phase = Phase::Progressing;
        // The deadline counts from the resume, not from before the pause.
        self.wave_started_ms = now_ms;
        self.healthy_since_ms = None;
        self.record(now_ms, Transition::Resumed, &mut Vec::new());
        true
    }

    /// Sends every agent back to the previous revision, whatever the phase. Returns false when
    /// it already was rolled back.
    pub fn undo(&mut self, now_ms: u64) -> bool {
        if matches!(self.phase, Phase::RolledBack { .. }) {
            return false;
        }
        let reason = "undone by an operator".to_owned();
        self.phase = Phase::RolledBack {
            reason: reason.clone(),
        };
        self.record(now_ms, Transition::RolledBack { reason }, &mut Vec::new());
        true
    }
}

/// The assignments of one rollout ([`Rollout::assignments`]).
#[derive(Debug)]
pub struct Assignments<'a> {
    rollout: &'a Rollout,
    members: HashSet<&'a str>,
}

impl Assignments<'_> {
    /// The revision `agent` should run, as [`Rollout::assignment`] says.
    pub fn of(&self, agent: &str) -> Option<u64> {
        self.rollout
            .assignment_where(agent, self.members.contains(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(waves: &[u8], window_ms: u64) -> RolloutPolicy {
        RolloutPolicy {
            waves: waves.to_vec(),
            health_window_ms: window_ms,
            max_error_rate: 0.02,
            auto_rollback: true,
            progress_deadline_ms: 60_000,
            offline_grace_ms: 10_000,
        }
    }

    /// Ten agents; `serving` gives each one's serving revision.
    fn fleet(n: usize, serving: impl Fn(usize) -> Option<u64>) -> Vec<AgentObservation> {
        (0..n)
            .map(|i| AgentObservation {
                agent: format!("agent-{i:02}"),
                connected: true,
                offline_ms: 0,
                exits: None,
                serving: serving(i),
                reported: serving(i).map(|r| (r, None)),
                requests: 0,
                errors: 0,
            })
            .collect()
    }

    /// Observations where the members of `rollout` serve the revision they are assigned.
    fn converged(rollout: &Rollout, n: usize) -> Vec<AgentObservation> {
        fleet(n, |i| rollout.assignment(&format!("agent-{i:02}")))
    }

    #[test]
    fn canary_waves_advance_only_after_the_health_window() {
        let mut r = Rollout::new(2, Some(1), policy(&[10, 50, 100], 5_000), 0);
        let t = r.observe(&fleet(10, |_| Some(1)), 0);
        assert_eq!(
            t,
            [Transition::WaveStarted {
                wave: 0,
                agents: vec!["agent-00".into()]
            }]
        );
        assert_eq!(r.assignment("agent-00"), Some(2));
        assert_eq!(r.assignment("agent-01"), Some(1));

        // Converged, but the window has not passed yet.
        assert!(r.observe(&converged(&r, 10), 1_000).is_empty());
        assert!(r.observe(&converged(&r, 10), 5_999).is_empty());
        let t = r.observe(&converged(&r, 10), 6_000);
        assert!(
            matches!(&t[..], [Transition::WaveStarted { wave: 1, agents }] if agents.len() == 4)
        );
        // Wave 2 agents are not yet serving: the window restarts once they are.
        assert!(
            r.observe(&fleet(10, |i| Some(if i == 0 { 2 } else { 1 })), 7_000)
                .is_empty()
        );
        assert!(r.observe(&converged(&r, 10), 8_000).is_empty());
        let t = r.observe(&converged(&r, 10), 13_000);
        assert!(
            matches!(&t[..], [Transition::WaveStarted { wave: 2, agents }] if agents.len() == 5)
        );
        r.observe(&converged(&r, 10), 14_000);
        assert_eq!(
            r.observe(&converged(&r, 10), 19_000),
            [Transition::Completed]
        );
        assert_eq!(r.phase, Phase::Complete);
        assert_eq!(r.stable(), Some(2));
        assert!((0..10).all(|i| r.assignment(&format!("agent-{i:02}")) == Some(2)));
    }

    #[test]
    fn failing_canary_rolls_back_and_the_next_wave_never_starts() {
        let mut r = Rollout::new(5, Some(4), policy(&[10, 100], 1_000), 0);
        r.observe(&fleet(10, |_| Some(4)), 0);
        let mut seen = converged(&r, 10);
        seen[0].requests = 20;
        seen[0].errors = 20;
        let t = r.observe(&seen, 500);
        assert!(
            matches!(&t[..], [Transition::RolledBack { reason }] if reason.contains("agent-00 failed 20 of 20")),
            "{t:?}"
        );
        assert!((0..10).all(|i| r.assignment(&format!("agent-{i:02}")) == Some(4)));
        // Whatever comes later, nothing moves.
        assert!(r.observe(&converged(&r, 10), 100_000).is_empty());
        assert_eq!(r.members, ["agent-00"]);
    }

    #[test]
    fn an_install_failure_fails_the_wave_and_without_auto_rollback_it_holds() {
        let mut p = policy(&[50, 100], 0);
        p.auto_rollback = false;
        let mut r = Rollout::new(3, Some(2), p, 0);
        r.observe(&fleet(4, |_| Some(2)), 0);
        let mut seen = fleet(4, |_| Some(2));
        seen[1].reported = Some((3, Some("digest mismatch".into())));
        let t = r.observe(&seen, 10);
        assert!(
            matches!(&t[..], [Transition::Failed { reason }] if reason.contains("digest mismatch"))
        );
        assert_eq!(r.assignment("agent-00"), Some(3), "held where it was");
        assert_eq!(r.assignment("agent-03"), Some(2));
        assert!(r.undo(20));
        assert_eq!(r.assignment("agent-00"), Some(2));
    }

    #[test]
    fn an_offline_member_holds_its_wave_until_the_grace_then_is_left_out_and_listed() {
        let mut r = Rollout::new(2, None, policy(&[100], 0), 0);
        r.observe(&fleet(3, |_| None), 0);
        let mut seen = fleet(3, |_| None);
        seen[2].connected = false;
        seen[2].offline_ms = 5_000;
        seen[0].serving = Some(2);
        seen[1].serving = Some(2);
        assert!(
            r.observe(&seen, 1).is_empty(),
            "within the grace it holds the wave"
        );
        assert!(r.left_out.is_empty());
        seen[2].offline_ms = 10_001;
        assert_eq!(r.observe(&seen, 2), [Transition::Completed]);
        assert_eq!(r.left_out, ["agent-02"]);
        assert_eq!(r.assignment("agent-02"), Some(2), "converges when back");
    }

    #[test]
    fn members_left_out_never_count_as_healthy() {
        let mut r = Rollout::new(2, None, policy(&[100], 0), 0);
        r.observe(&fleet(2, |_| None), 0);
        let mut seen = fleet(2, |_| Some(2));
        for a in &mut seen {
            a.connected = false;
            a.offline_ms = 60_000;
        }
        assert!(r.observe(&seen, 1).is_empty(), "nobody connected serves");
        assert_eq!(r.left_out.len(), 2);
        assert!(matches!(r.phase, Phase::Progressing));
    }

    #[test]
    fn a_member_that_died_on_the_target_fails_the_wave_even_when_it_serves_again() {
        let mut r = Rollout::new(3, Some(2), policy(&[50, 100], 60_000), 0);
        r.observe(&fleet(4, |_| Some(2)), 0);
        // The canary restarted after a crash and serves the target again, connected: before
        // this rule the wave passed and the crash spread.
        let mut seen = converged(&r, 4);
        seen[0].exits = Some((1, "killed by signal KILL".into()));
        let t = r.observe(&seen, 1_000);
        assert!(
            matches!(&t[..], [Transition::RolledBack { reason }]
                if reason == "agent agent-00 exited 1 times on revision 3 (last: killed by signal KILL)"),
            "{t:?}"
        );
        assert!((0..4).all(|i| r.assignment(&format!("agent-{i:02}")) == Some(2)));
    }

    #[test]
    fn a_member_that_dropped_off_while_serving_the_target_holds_the_wave() {
        let mut r = Rollout::new(3, Some(2), policy(&[50, 100], 1_000), 0);
        r.observe(&fleet(2, |_| Some(2)), 0);
        let mut seen = converged(&r, 2);
        assert!(r.observe(&seen, 1).is_empty());
        // It drops off mid-window: the window starts over when it is back, not before.
        seen[0].connected = false;
        seen[0].offline_ms = 500;
        assert!(r.observe(&seen, 900).is_empty());
        assert!(
            r.observe(&seen, 2_000).is_empty(),
            "not healthy while it is away"
        );
        assert_eq!(r.healthy_since_ms, None);
        seen[0].connected = true;
        seen[0].offline_ms = 0;
        assert!(r.observe(&seen, 2_500).is_empty());
        assert!(matches!(
            &r.observe(&seen, 3_500)[..],
            [Transition::WaveStarted { wave: 1, .. }]
        ));
    }

    #[test]
    fn a_wave_that_never_becomes_healthy_fails_at_the_deadline() {
        let mut r = Rollout::new(2, Some(1), policy(&[100], 0), 0);
        r.observe(&fleet(2, |_| Some(1)), 0);
        assert!(r.observe(&fleet(2, |_| Some(1)), 60_000).is_empty());
        let t = r.observe(&fleet(2, |_| Some(1)), 60_001);
        assert!(
            matches!(&t[..], [Transition::RolledBack { reason }] if reason.contains("not healthy"))
        );
    }

    #[test]
    fn pause_holds_the_wave_and_resume_restarts_the_clock() {
        let mut r = Rollout::new(2, Some(1), policy(&[50, 100], 0), 0);
        r.observe(&fleet(2, |_| Some(1)), 0);
        assert!(r.pause(1));
        assert!(!r.pause(1));
        assert!(r.observe(&converged(&r, 2), 2).is_empty());
        assert_eq!(r.assignment("agent-01"), Some(1));
        // Even paused, a failing wave rolls back.
        let mut seen = converged(&r, 2);
        seen[0].requests = 1;
        seen[0].errors = 1;
        let mut paused = r.clone();
        assert!(matches!(
            &paused.observe(&seen, 3)[..],
            [Transition::RolledBack { .. }]
        ));
        assert!(r.resume(100_000));
        assert!(matches!(
            &r.observe(&converged(&r, 2), 100_001)[..],
            [Transition::WaveStarted { wave: 1, .. }]
        ));
    }

    #[test]
    fn agents_selected_later_join_the_open_wave_or_the_complete_target() {
        let mut r = Rollout::new(2, Some(1), policy(&[50, 100], 0), 0);
        r.observe(&fleet(2, |_| Some(1)), 0);
        assert_eq!(r.members.len(), 1);
        let t = r.observe(&fleet(4, |i| Some(if i == 0 { 2 } else { 1 })), 1);
        assert_eq!(
            t,
            [Transition::AgentsJoined {
                agents: vec!["agent-01".into()]
            }]
        );
        let mut done = r.clone();
        done.phase = Phase::Complete;
        assert_eq!(done.assignment("agent-09"), Some(2));
    }

    #[test]
    fn wave_sizes_round_up_and_never_skip_the_first_agent() {
        let r = Rollout::new(2, None, policy(&[10, 50, 100], 0), 0);
        assert_eq!(r.wave_size(0, 3), 1);
        assert_eq!(r.wave_size(1, 3), 2);
        assert_eq!(r.wave_size(2, 3), 3);
        assert_eq!(r.wave_size(0, 0), 0);
        assert_eq!(r.wave_size(0, 25), 3);
    }

    #[test]
    fn a_rollback_returns_each_agent_to_what_it_served_before_the_failed_rollout_began() {
        // Revision 1 of a new pipeline is in its canary wave: agent-00 serves it, agent-01
        // runs nothing yet.
        let mut first = Rollout::new(1, None, policy(&[50, 100], 60_000), 0);
        first.observe(&fleet(2, |_| None), 0);
        assert_eq!(first.members, ["agent-00"]);
        // Revision 2 is applied before the window ends, and fails on its canary.
        let mut second = first.successor(2, policy(&[50, 100], 60_000), 1_000);
        assert_eq!(second.previous, None);
        assert_eq!(
            second.assignment("agent-00"),
            Some(1),
            "still on 1 until it joins"
        );
        second.observe(&fleet(2, |i| (i == 0).then_some(1)), 1_000);
        let mut seen = converged(&second, 2);
        seen[0].reported = Some((2, Some("the model does not load".into())));
        second.observe(&seen, 2_000);
        assert!(matches!(second.phase, Phase::RolledBack { .. }));
        assert_eq!(
            second.assignment("agent-00"),
            Some(1),
            "back to what it served"
        );
        assert_eq!(second.assignment("agent-01"), None);
        // A third rollout after that remembers it too, and an undo of a Complete one too.
        let third = second.successor(3, policy(&[100], 0), 3_000);
        assert_eq!(third.assignment("agent-00"), Some(1));
        let done = Rollout {
            phase: Phase::Complete,
            ..Rollout::new(4, Some(3), policy(&[100], 0), 0)
        };
        assert!(done.successor(5, policy(&[100], 0), 0).returns.is_empty());
    }
}
