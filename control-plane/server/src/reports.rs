//! What agents last reported about their pipelines and their unclean exits (in memory; agents
//! report again on every connection).

use std::collections::HashMap;
use std::sync::Mutex;

use tern_proto::message::{ExitReport, MAX_REPORTED_EXITS, PipelineStatus, StatusReport};

/// Longest exit reason kept, in bytes.
const MAX_EXIT_REASON_BYTES: usize = 512;
/// Most revisions kept per exit (serving and loading each).
const MAX_EXIT_REVISIONS: usize = 16;

/// The latest status report and exit report of each agent, by agent id.
#[derive(Debug, Default)]
pub struct AgentReports(
    Mutex<HashMap<String, StatusReport>>,
    Mutex<HashMap<String, ExitReport>>,
);

/// An agent's exit report cut to what the control plane keeps: the newest exits, short
/// reasons, a few revisions each (an agent cannot make it keep more).
pub fn bounded_exits(mut report: ExitReport) -> ExitReport {
    let excess = report.exits.len().saturating_sub(MAX_REPORTED_EXITS);
    report.exits.drain(..excess);
    for exit in &mut report.exits {
        if exit.reason.len() > MAX_EXIT_REASON_BYTES {
            let mut end = MAX_EXIT_REASON_BYTES;
            while !exit.reason.is_char_boundary(end) {
                end -= 1;
            }
            exit.reason.truncate(end);
        }
        exit.serving.truncate(MAX_EXIT_REVISIONS);
        exit.loading.truncate(MAX_EXIT_REVISIONS);
        exit.run.truncate(64);
    }
    report.run.truncate(64);
    report
}

impl AgentReports {
    /// Records an agent's unclean exits (the latest report replaces the one before: it holds
    /// every exit within the agent's window).
    pub fn record_exits(&self, agent: &str, report: ExitReport) {
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_owned(), bounded_exits(report));
    }

    /// The agent's latest exit report.
    pub fn exits(&self, agent: &str) -> Option<ExitReport> {
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .cloned()
    }

    /// How many of the agent's reported unclean exits happened while it served `pipeline`'s
    /// `revision`, and the last one's reason.
    pub fn exits_serving(
        &self,
        agent: &str,
        pipeline: &str,
        revision: u64,
    ) -> Option<(u32, String)> {
        let exits = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let hits: Vec<_> = exits
            .get(agent)?
            .exits
            .iter()
            .filter(|e| {
                e.serving
                    .iter()
                    .any(|r| r.pipeline == pipeline && r.revision == revision)
            })
            .collect();
        let last = hits.last()?;
        Some((
            u32::try_from(hits.len()).unwrap_or(u32::MAX),
            last.reason.clone(),
        ))
    }

    pub fn record(&self, agent: &str, report: StatusReport) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_owned(), report);
    }

    /// The agent's status of pipeline `name`.
    pub fn pipeline(&self, agent: &str, name: &str) -> Option<PipelineStatus> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)?
            .pipelines
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// Every pipeline the agent reported.
    pub fn pipelines(&self, agent: &str) -> Vec<PipelineStatus> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .map(|r| r.pipelines.clone())
            .unwrap_or_default()
    }

    /// Why the agent refused its last desired state or trust root, if it did.
    pub fn refused(&self, agent: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)?
            .refused
            .clone()
    }

    /// What the agent warned about in its last report.
    pub fn warnings(&self, agent: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .map(|r| r.warnings.clone())
            .unwrap_or_default()
    }

    /// Forgets a decommissioned agent.
    pub fn forget(&self, agent: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent);
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(agent);
    }

    /// The desired-state generation the agent last applied.
    pub fn applied_generation(&self, agent: &str) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .map(|r| r.applied_generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::message::{RunningRevision, UncleanExit};

    fn exit(revision: u64, reason: &str) -> UncleanExit {
        UncleanExit {
            run: "r".into(),
            started_ms: 0,
            detected_ms: 1,
            serving: vec![RunningRevision {
                pipeline: "scores".into(),
                revision,
            }],
            loading: vec![RunningRevision {
                pipeline: "scores".into(),
                revision: 9,
            }],
            reason: reason.into(),
        }
    }

    #[test]
    fn exits_count_per_served_revision_and_hostile_reports_are_cut_down() {
        let reports = AgentReports::default();
        let mut exits: Vec<UncleanExit> = (0..100).map(|_| exit(1, "old")).collect();
        exits.push(exit(2, "first"));
        exits.push(exit(2, &"é".repeat(1_000)));
        reports.record_exits(
            "a",
            ExitReport {
                run: "now".into(),
                window_ms: 1,
                exits,
            },
        );
        let kept = reports.exits("a").expect("kept");
        assert_eq!(kept.exits.len(), MAX_REPORTED_EXITS);
        let (count, reason) = reports.exits_serving("a", "scores", 2).expect("two");
        assert_eq!(count, 2);
        assert!(reason.len() <= MAX_EXIT_REASON_BYTES && reason.starts_with('é'));
        assert_eq!(
            reports.exits_serving("a", "scores", 9),
            None,
            "loading is not serving"
        );
        assert_eq!(reports.exits_serving("a", "other", 2), None);
        reports.forget("a");
        assert_eq!(reports.exits("a"), None);
    }
}
