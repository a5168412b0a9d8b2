//! How many reports of each kind one agent may have taken per second: a token bucket per agent
//! and kind, pure (`now` in, a yes or no out). Past it, reports are refused and counted; the
//! agent's latest refused status report is kept aside and taken once the bucket allows.

use std::collections::HashMap;

/// Reports of one kind per agent per second, over time.
pub const REPORTS_PER_SECOND: u64 = 10;
/// Reports of one kind one agent may send at once (a desired state's burst of statuses).
pub const REPORT_BURST: u64 = 40;

/// The kinds of report that are budgeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportKind {
    Status,
    Health,
}

impl ReportKind {
    pub fn label(self) -> &'static str {
        match self {
            ReportKind::Status => "status",
            ReportKind::Health => "health",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a report.
    milli: u64,
    at_ms: u64,
}

/// The budgets of every agent.
#[derive(Debug, Default)]
pub struct ReportBudget {
    buckets: HashMap<(String, ReportKind), Bucket>,
}

impl ReportBudget {
    /// Whether `agent` may have one more report of `kind` taken at `now_ms` (and, if so, takes
    /// it from its budget).
    pub fn take(&mut self, agent: &str, kind: ReportKind, now_ms: u64) -> bool {
        let full = REPORT_BURST * 1_000;
        let bucket = self
            .buckets
            .entry((agent.to_owned(), kind))
            .or_insert(Bucket {
                milli: full,
                at_ms: now_ms,
            });
        let elapsed = now_ms.saturating_sub(bucket.at_ms);
        bucket.milli = (bucket.milli + elapsed.saturating_mul(REPORTS_PER_SECOND)).min(full);
        bucket.at_ms = bucket.at_ms.max(now_ms);
        if bucket.milli < 1_000 {
            return false;
        }
        bucket.milli -= 1_000;
        true
    }

    /// Forgets a decommissioned agent.
    pub fn forget(&mut self, agent: &str) {
        self.buckets.retain(|(a, _), _| a != agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_held_to_the_rate_and_kinds_and_agents_are_apart() {
        let mut budget = ReportBudget::default();
        let taken = (0..100)
            .filter(|_| budget.take("a", ReportKind::Status, 0))
            .count() as u64;
        assert_eq!(taken, REPORT_BURST);
        assert!(budget.take("a", ReportKind::Health, 0), "another kind");
        assert!(budget.take("b", ReportKind::Status, 0), "another agent");
        // A second later, the rate's worth again.
        let taken = (0..100)
            .filter(|_| budget.take("a", ReportKind::Status, 1_000))
            .count() as u64;
        assert_eq!(taken, REPORTS_PER_SECOND);
        // An ordinary agent (a report a second) is never refused.
        let mut ordinary = ReportBudget::default();
        assert!((0..10_000).all(|s| ordinary.take("c", ReportKind::Health, s * 1_000)));
        budget.forget("a");
        assert!(
            budget.take("a", ReportKind::Status, 1_000),
            "a fresh budget"
        );
    }
}
