//! What agents last reported about their pipelines (in memory; agents report again on every
//! connection).

use std::collections::HashMap;
use std::sync::Mutex;

use tern_proto::message::{PipelineStatus, StatusReport};

/// The latest status report of each agent, by agent id.
#[derive(Debug, Default)]
pub struct AgentReports(Mutex<HashMap<String, StatusReport>>);

impl AgentReports {
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
