//! Request counters of pipeline revisions on agents, over time, for rollout health gates (in
//! memory: after a restart the gates wait for fresh reports).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tern_proto::message::HealthReport;

/// How long samples are kept.
const KEEP_MS: u64 = 3600 * 1000;
/// Most samples kept per agent and revision.
const MAX_SAMPLES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    requests: u64,
    errors: u64,
}

type Key = (String, String, u64);

/// Samples of cumulative counters per (agent id, pipeline, revision).
#[derive(Debug, Default)]
pub struct HealthTracker {
    samples: Mutex<HashMap<Key, VecDeque<Sample>>>,
    /// Entries dropped because the agent was never given that revision.
    dropped: AtomicU64,
}

impl HealthTracker {
    /// Counts report entries dropped before [`Self::record`].
    pub fn count_dropped(&self, entries: usize) {
        self.dropped.fetch_add(entries as u64, Ordering::Relaxed);
    }

    /// Forgets a decommissioned agent's samples.
    pub fn forget(&self, agent: &str) {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _, _), _| id != agent);
    }

    /// Report entries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records a report received at `now_ms`.
    pub fn record(&self, agent: &str, report: &HealthReport, now_ms: u64) {
        let mut map = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        for p in &report.pipelines {
            let samples = map
                .entry((agent.to_owned(), p.name.clone(), p.revision))
                .or_default();
            // Counters restart from zero when the agent restarts: start a new series.
            if samples.back().is_some_and(|s| p.requests < s.requests) {
                samples.clear();
            }
            samples.push_back(Sample {
                at_ms: now_ms,
                requests: p.requests,
                errors: p.errors,
            });
            while samples.len() > MAX_SAMPLES
                || samples
                    .front()
                    .is_some_and(|s| now_ms.saturating_sub(s.at_ms) > KEEP_MS)
            {
                samples.pop_front();
            }
        }
    }

    /// Requests and errors of a revision on an agent within the last `window_ms`.
    pub fn window(
        &self,
        agent: &str,
        pipeline: &str,
        revision: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> (u64, u64) {
        let map = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(samples) = map.get(&(agent.to_owned(), pipeline.to_owned(), revision)) else {
            return (0, 0);
        };
        let Some(last) = samples.back() else {
            return (0, 0);
        };
        let since = now_ms.saturating_sub(window_ms);
        // The newest sample at or before the window's start is the baseline; without one, the
        // counters since the revision loaded all fall in the window.
        let base = samples
            .iter()
            .rev()
            .find(|s| s.at_ms <= since)
            .map(|s| (s.requests, s.errors))
            .unwrap_or((0, 0));
        (
            last.requests.saturating_sub(base.0),
            last.errors.saturating_sub(base.1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::message::PipelineHealth;

    fn report(requests: u64, errors: u64) -> HealthReport {
        HealthReport {
            pipelines: vec![PipelineHealth {
                name: "p".into(),
                revision: 2,
                requests,
                errors,
            }],
        }
    }

    #[test]
    fn counts_only_what_happened_in_the_window() {
        let t = HealthTracker::default();
        t.record("a", &report(10, 0), 1_000);
        assert_eq!(t.window("a", "p", 2, 5_000, 1_000), (10, 0));
        t.record("a", &report(30, 5), 8_000);
        assert_eq!(t.window("a", "p", 2, 5_000, 8_000), (20, 5));
        assert_eq!(t.window("a", "p", 1, 5_000, 8_000), (0, 0));
        // After an agent restart its counters start over.
        t.record("a", &report(3, 3), 9_000);
        assert_eq!(t.window("a", "p", 2, 5_000, 9_000), (3, 3));
    }
}
