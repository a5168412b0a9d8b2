//! What agents last reported about their pipelines and their unclean exits (in memory; agents
//! report again on every connection), admitted within bounds.
//!
//! - [`bounds`]: what is kept of a report (lists, names and texts cut).
//! - [`budget`]: how many reports per second one agent may have taken.

pub mod bounds;
pub mod budget;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tern_proto::message::{ExitReport, HealthReport, PipelineStatus, StatusReport};

use budget::ReportBudget;
pub use budget::ReportKind;

/// Why a report was refused or cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the agent's budget of reports per second.
    Rate,
    /// Over the bounds: cut down before it was kept.
    Size,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Size => "size",
        }
    }
}

/// The latest status report and exit report of each agent, by agent id.
#[derive(Debug, Default)]
pub struct AgentReports {
    statuses: Mutex<HashMap<String, StatusReport>>,
    exits: Mutex<HashMap<String, ExitReport>>,
    budget: Mutex<ReportBudget>,
    /// The latest status report refused for the rate, by agent: taken once the budget allows.
    held: Mutex<HashMap<String, StatusReport>>,
    /// Refusals: [status, health] × [rate, size].
    refusals: [[AtomicU64; 2]; 2],
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentReports {
    /// Records an agent's unclean exits (the latest report replaces the one before: it holds
    /// every exit within the agent's window).
    pub fn record_exits(&self, agent: &str, report: ExitReport) {
        lock(&self.exits).insert(agent.to_owned(), bounds::exits(report));
    }

    fn count(&self, kind: ReportKind, why: Refusal) {
        let k = usize::from(kind == ReportKind::Health);
        let r = usize::from(why == Refusal::Size);
        self.refusals[k][r].fetch_add(1, Ordering::Relaxed);
    }

    /// Reports of `kind` refused (rate) or cut (size) so far.
    pub fn refusals(&self, kind: ReportKind, why: Refusal) -> u64 {
        let k = usize::from(kind == ReportKind::Health);
        let r = usize::from(why == Refusal::Size);
        self.refusals[k][r].load(Ordering::Relaxed)
    }

    /// Admits an agent's status report at `now_ms`: cut to the bounds, then taken if the
    /// agent's budget allows — the report to record and share. Otherwise it is held aside
    /// (the latest only) until [`AgentReports::release_held`] finds budget for it.
    pub fn admit_status(
        &self,
        agent: &str,
        report: StatusReport,
        now_ms: u64,
    ) -> Option<StatusReport> {
        let (report, cut) = bounds::status(report);
        if cut {
            self.count(ReportKind::Status, Refusal::Size);
        }
        if lock(&self.budget).take(agent, ReportKind::Status, now_ms) {
            lock(&self.held).remove(agent);
            return Some(report);
        }
        self.count(ReportKind::Status, Refusal::Rate);
        lock(&self.held).insert(agent.to_owned(), report);
        None
    }

    /// The agent's held status report, once its budget allows (asked at each of its messages).
    pub fn release_held(&self, agent: &str, now_ms: u64) -> Option<StatusReport> {
        let mut held = lock(&self.held);
        if !held.contains_key(agent) || !lock(&self.budget).take(agent, ReportKind::Status, now_ms)
        {
            return None;
        }
        held.remove(agent)
    }

    /// Admits an agent's health report at `now_ms`: cut to the bounds, and taken if the
    /// agent's budget allows (counters are cumulative: the next one carries a refused one's).
    pub fn admit_health(
        &self,
        agent: &str,
        report: HealthReport,
        now_ms: u64,
    ) -> Option<HealthReport> {
        let (report, cut) = bounds::health(report);
        if cut {
            self.count(ReportKind::Health, Refusal::Size);
        }
        if lock(&self.budget).take(agent, ReportKind::Health, now_ms) {
            return Some(report);
        }
        self.count(ReportKind::Health, Refusal::Rate);
        None
    }

    /// The agent's latest exit report.
    pub fn exits(&self, agent: &str) -> Option<ExitReport> {
        lock(&self.exits).get(agent).cloned()
    }

    /// How many of the agent's reported unclean exits happened while it served `pipeline`'s
    /// `revision`, and the last one's reason.
    pub fn exits_serving(
        &self,
        agent: &str,
        pipeline: &str,
        revision: u64,
    ) -> Option<(u32, String)> {
        let exits = lock(&self.exits);
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
        lock(&self.statuses).insert(agent.to_owned(), report);
    }

    /// The agent's status of pipeline `name`.
    pub fn pipeline(&self, agent: &str, name: &str) -> Option<PipelineStatus> {
        lock(&self.statuses)
            .get(agent)?
            .pipelines
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// Every pipeline the agent reported.
    pub fn pipelines(&self, agent: &str) -> Vec<PipelineStatus> {
        lock(&self.statuses)
            .get(agent)
            .map(|r| r.pipelines.clone())
            .unwrap_or_default()
    }

    /// Why the agent refused its last desired state or trust root, if it did.
    pub fn refused(&self, agent: &str) -> Option<String> {
        lock(&self.statuses).get(agent)?.refused.clone()
    }

    /// What the agent warned about in its last report.
    pub fn warnings(&self, agent: &str) -> Vec<String> {
        lock(&self.statuses)
            .get(agent)
            .map(|r| r.warnings.clone())
            .unwrap_or_default()
    }

    /// Forgets a decommissioned agent.
    pub fn forget(&self, agent: &str) {
        lock(&self.statuses).remove(agent);
        lock(&self.exits).remove(agent);
        lock(&self.held).remove(agent);
        lock(&self.budget).forget(agent);
    }

    /// The desired-state generation the agent last applied.
    pub fn applied_generation(&self, agent: &str) -> Option<u64> {
        lock(&self.statuses)
            .get(agent)
            .map(|r| r.applied_generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::message::{MAX_REPORTED_EXITS, RunningRevision, UncleanExit};

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
        assert!(reason.len() <= bounds::MAX_REPORT_TEXT && reason.starts_with('é'));
        assert_eq!(
            reports.exits_serving("a", "scores", 9),
            None,
            "loading is not serving"
        );
        assert_eq!(reports.exits_serving("a", "other", 2), None);
        reports.forget("a");
        assert_eq!(reports.exits("a"), None);
    }

    fn status(seq: u64) -> StatusReport {
        StatusReport {
            seq,
            applied_generation: seq,
            pipelines: vec![],
            refused: None,
            warnings: vec![],
        }
    }

    #[test]
    fn a_flood_of_status_reports_is_refused_and_counted_and_the_latest_lands_later() {
        let reports = AgentReports::default();
        let taken = (1..=100)
            .filter_map(|seq| reports.admit_status("a", status(seq), 0))
            .count() as u64;
        assert_eq!(taken, budget::REPORT_BURST);
        assert_eq!(
            reports.refusals(ReportKind::Status, Refusal::Rate),
            100 - budget::REPORT_BURST
        );
        assert_eq!(reports.release_held("a", 0), None, "no budget yet");
        // The latest refused report is taken at the agent's next message with budget.
        let held = reports.release_held("a", 1_000).expect("held");
        assert_eq!(held.seq, 100);
        assert_eq!(reports.release_held("a", 2_000), None, "taken once");
        // Health reports have their own budget.
        let health = HealthReport { pipelines: vec![] };
        assert!(reports.admit_health("a", health, 0).is_some());
    }
}
