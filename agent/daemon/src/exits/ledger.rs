//! The exit ledger, a pure core: the agent's recent unclean exits and the revisions it put aside
//! for them. Events and `now` in, decisions out; it reads no clock and touches no file.
//!
//! Rules:
//! - An unclean exit counts against every revision the dead run served or was loading (the
//!   control plane counts only those it served: an operator's kill during a load is common).
//! - Exits older than the window are forgotten; at most [`MAX_REPORTED_EXITS`] are kept.
//! - A revision under which the agent died `max_exits` times within the window is put aside:
//!   it is not served or loaded again while desired states keep naming it. Once a desired state
//!   names another revision of that pipeline (or none), the mark is dropped, so a later desired
//!   state that names the revision anew is a fresh attempt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_proto::message::{ExitReport, MAX_REPORTED_EXITS, UncleanExit};

/// Default of [`ExitPolicy::max_exits`].
pub const DEFAULT_MAX_EXITS: u32 = 3;
/// Default of [`ExitPolicy::window_ms`]: ten minutes.
pub const DEFAULT_EXIT_WINDOW_MS: u64 = 10 * 60 * 1000;

/// When a revision counts as crash-looping (`[exits]` in `agent.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExitPolicy {
    /// Unclean exits under one revision, within the window, that put it aside.
    #[serde(default = "default_max_exits")]
    pub max_exits: u32,
    /// How far back exits count, in milliseconds.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
}

fn default_max_exits() -> u32 {
    DEFAULT_MAX_EXITS
}

fn default_window_ms() -> u64 {
    DEFAULT_EXIT_WINDOW_MS
}

impl Default for ExitPolicy {
    fn default() -> Self {
        Self {
            max_exits: DEFAULT_MAX_EXITS,
            window_ms: DEFAULT_EXIT_WINDOW_MS,
        }
    }
}

/// A revision the agent will not serve or load again while desired states keep naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAside {
    pub revision: u64,
    /// Why, as reported: the count, the window and the last exit's reason.
    pub reason: String,
}

/// The recent unclean exits and the revisions put aside, as the agent persists them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitLedger {
    /// Oldest first.
    exits: Vec<UncleanExit>,
    /// By pipeline.
    put_aside: BTreeMap<String, PutAside>,
}

impl ExitLedger {
    /// Records an unclean exit found at `now_ms`; returns the revisions it put aside, by
    /// pipeline.
    pub fn record(
        &mut self,
        exit: UncleanExit,
        policy: ExitPolicy,
        now_ms: u64,
    ) -> Vec<(String, PutAside)> {
        self.exits.push(exit.clone());
        self.prune(policy, now_ms);
        let mut newly = Vec::new();
        for running in exit.serving.iter().chain(&exit.loading) {
            let count = self.count(&running.pipeline, running.revision);
            let already = self
                .put_aside
                .get(&running.pipeline)
                .is_some_and(|p| p.revision == running.revision);
            if count < policy.max_exits.max(1) || already {
                continue;
            }
            let why = if exit.reason.is_empty() {
                "no reason recorded".to_owned()
            } else {
                exit.reason.clone()
            };
            let put = PutAside {
                revision: running.revision,
                reason: format!(
                    "revision {} put aside: the agent exited {count} times within {} while running it (last: {why})",
                    running.revision,
                    humanize(policy.window_ms),
                ),
            };
            self.put_aside.insert(running.pipeline.clone(), put.clone());
            newly.push((running.pipeline.clone(), put));
        }
        newly
    }

    /// Forgets exits that left the window, and the oldest beyond the most kept.
    pub fn prune(&mut self, policy: ExitPolicy, now_ms: u64) {
        self.exits
            .retain(|e| e.detected_ms.saturating_add(policy.window_ms) >= now_ms);
        let excess = self.exits.len().saturating_sub(MAX_REPORTED_EXITS);
        self.exits.drain(..excess);
    }

    /// Exits kept that ran `pipeline`'s `revision`.
    pub fn count(&self, pipeline: &str, revision: u64) -> u32 {
        let hits = self.exits.iter().filter(|e| {
            (e.serving.iter().chain(&e.loading))
                .any(|r| r.pipeline == pipeline && r.revision == revision)
        });
        u32::try_from(hits.count()).unwrap_or(u32::MAX)
    }

    /// The revision of `pipeline` put aside, if one is.
    pub fn put_aside(&self, pipeline: &str) -> Option<&PutAside> {
        self.put_aside.get(pipeline)
    }

    /// Every revision put aside, by pipeline.
    pub fn all_put_aside(&self) -> &BTreeMap<String, PutAside> {
        &self.put_aside
    }

    /// Drops the mark of `pipeline` (a desired state no longer names its revision). Returns
    /// whether there was one.
    pub fn clear(&mut self, pipeline: &str) -> bool {
        self.put_aside.remove(pipeline).is_some()
    }

    /// What the agent reports of its exits, when it has any within the window.
    pub fn report(&self, run: &str, policy: ExitPolicy, now_ms: u64) -> Option<ExitReport> {
        let mut kept = self.clone();
        kept.prune(policy, now_ms);
        (!kept.exits.is_empty()).then(|| ExitReport {
            run: run.to_owned(),
            window_ms: policy.window_ms,
            exits: kept.exits,
        })
    }
}

/// `600000` → `10m`, `90000` → `90s`.
fn humanize(ms: u64) -> String {
    match ms {
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::message::RunningRevision;

    const MINUTE: u64 = 60_000;

    fn exit(at_ms: u64, revisions: &[(&str, u64)], reason: &str) -> UncleanExit {
        UncleanExit {
            run: format!("run-{at_ms}"),
            started_ms: at_ms.saturating_sub(1_000),
            detected_ms: at_ms,
            serving: revisions
                .iter()
                .map(|(pipeline, revision)| RunningRevision {
                    pipeline: (*pipeline).to_owned(),
                    revision: *revision,
                })
                .collect(),
            loading: Vec::new(),
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn the_third_exit_within_the_window_puts_the_revision_aside() {
        let policy = ExitPolicy::default();
        let mut ledger = ExitLedger::default();
        assert!(
            ledger
                .record(exit(0, &[("scores", 2)], "x"), policy, 0)
                .is_empty()
        );
        assert!(
            ledger
                .record(exit(MINUTE, &[("scores", 2)], "x"), policy, MINUTE)
                .is_empty()
        );
        let put = ledger.record(
            exit(
                2 * MINUTE,
                &[("scores", 2), ("other", 1)],
                "killed by signal KILL",
            ),
            policy,
            2 * MINUTE,
        );
        assert_eq!(put.len(), 1, "{put:?}");
        assert_eq!(put[0].0, "scores");
        assert_eq!(put[0].1.revision, 2);
        assert!(
            put[0].1.reason.contains("exited 3 times within 10m")
                && put[0].1.reason.contains("killed by signal KILL"),
            "{}",
            put[0].1.reason
        );
        assert_eq!(ledger.put_aside("other"), None, "one exit only");
        // A fourth exit does not put it aside twice.
        assert!(
            ledger
                .record(exit(3 * MINUTE, &[("scores", 2)], ""), policy, 3 * MINUTE)
                .is_empty()
        );
    }

    #[test]
    fn exits_spread_wider_than_the_window_never_add_up() {
        let policy = ExitPolicy::default();
        let mut ledger = ExitLedger::default();
        for i in 0..10 {
            let at = i * 6 * MINUTE;
            assert!(
                ledger
                    .record(exit(at, &[("scores", 2)], ""), policy, at)
                    .is_empty(),
                "exit {i}"
            );
        }
        assert_eq!(ledger.count("scores", 2), 2);
        assert!(ledger.report("r", policy, 100 * MINUTE).is_none());
    }

    #[test]
    fn a_mark_once_cleared_lets_the_revision_be_tried_anew() {
        let policy = ExitPolicy {
            max_exits: 1,
            window_ms: MINUTE,
        };
        let mut ledger = ExitLedger::default();
        assert_eq!(ledger.record(exit(0, &[("p", 4)], ""), policy, 0).len(), 1);
        assert!(ledger.clear("p"));
        assert!(!ledger.clear("p"));
        assert_eq!(ledger.put_aside("p"), None);
        assert_eq!(
            ledger.count("p", 4),
            1,
            "the exits themselves stay reported"
        );
    }

    #[test]
    fn reports_carry_only_the_window_and_at_most_the_most_kept() {
        let policy = ExitPolicy {
            max_exits: 1_000,
            window_ms: 1_000_000,
        };
        let mut ledger = ExitLedger::default();
        for at in 0..(MAX_REPORTED_EXITS as u64 + 8) {
            ledger.record(exit(at, &[("p", 1)], ""), policy, at);
        }
        let report = ledger.report("now", policy, 100).expect("exits");
        assert_eq!(report.exits.len(), MAX_REPORTED_EXITS);
        assert_eq!(report.exits[0].detected_ms, 8, "the oldest went first");
        assert_eq!(report.run, "now");
    }
}
