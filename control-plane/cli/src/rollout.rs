//! `ternctl rollout status`: waits for a rollout's outcome, as `kubectl rollout status` does,
//! so that a CI job can gate on it. The decision of what a state means is `outcome`, pure.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tern_proto::api::DeploymentView;
use tern_transport::https::HttpsClient;

use crate::client;
use crate::output::{self, Format};

/// What a deployment's state says about waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: every selected agent serves the target revision.
    Committed,
    /// Rolled back or failed, with why.
    NotCommitted(String),
    /// Still going (or paused, or not started): a line saying where it is.
    Waiting(String),
}

/// The outcome `view` shows.
pub fn outcome(view: &DeploymentView) -> Outcome {
    let Some(r) = &view.rollout else {
        return Outcome::Waiting(format!(
            "Waiting for deployment \"{}\" to start a rollout...",
            view.name
        ));
    };
    let reason = r.reason.clone().unwrap_or_default();
    match r.phase.as_str() {
        "Complete" => Outcome::Committed,
        "RolledBack" | "Failed" => Outcome::NotCommitted(format!(
            "deployment \"{}\" {}: {}",
            view.name,
            if r.phase == "Failed" {
                "failed"
            } else {
                "rolled back"
            },
            if reason.is_empty() { "-" } else { &reason }
        )),
        phase => {
            let serving = r
                .agents
                .iter()
                .filter(|a| a.serving == Some(r.target_revision))
                .count();
            Outcome::Waiting(format!(
                "Waiting for deployment \"{}\" rollout to finish: {phase}, wave {} of {}, {serving} of {} agents serving revision {}...",
                view.name,
                r.wave,
                r.waves,
                r.agents.len(),
                r.target_revision
            ))
        }
    }
}

/// How often the state is read again while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Prints the rollout's progress until its outcome (or once, without `watch`); the exit code:
/// 0 committed, 1 not (rolled back, failed, still going without `watch`, or `timeout` passed;
/// a zero `timeout` waits for ever).
pub async fn status(
    api: &HttpsClient,
    deployment: &str,
    watch: bool,
    timeout: Duration,
) -> anyhow::Result<u8> {
    let path = format!("/v1/deployments/{}", client::path_segment(deployment));
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let view: DeploymentView = api
            .get(&path)
            .await
            .with_context(|| format!("failed to read the rollout of `{deployment}`"))?;
        match outcome(&view) {
            Outcome::Committed => {
                if !watch {
                    print!("{}", output::rollout(&view, Format::Table)?);
                }
                println!("deployment \"{deployment}\" successfully rolled out");
                return Ok(0);
            }
            Outcome::NotCommitted(why) => {
                if !watch {
                    print!("{}", output::rollout(&view, Format::Table)?);
                }
                eprintln!("{why}");
                return Ok(1);
            }
            Outcome::Waiting(line) => {
                if !watch {
                    print!("{}", output::rollout(&view, Format::Table)?);
                    println!("{line}");
                    return Ok(1);
                }
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
        }
        if !timeout.is_zero() && started.elapsed() >= timeout {
            eprintln!(
                "error: timed out after {} waiting for the rollout of \"{deployment}\"",
                humantime::format_duration(timeout)
            );
            return Ok(1);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::api::RolloutView;

    fn view(phase: &str, reason: Option<&str>) -> DeploymentView {
        DeploymentView {
            name: "d".into(),
            labels: Default::default(),
            annotations: Default::default(),
            pipeline: "p".into(),
            selector: Default::default(),
            strategy: "canary".into(),
            updated: String::new(),
            rollout: Some(RolloutView {
                phase: phase.into(),
                reason: reason.map(str::to_owned),
                target_revision: 2,
                previous_revision: Some(1),
                wave: 1,
                waves: 2,
                started: String::new(),
                history: Vec::new(),
                agents: Vec::new(),
            }),
        }
    }

    #[test]
    fn only_a_complete_rollout_is_committed() {
        assert_eq!(outcome(&view("Complete", None)), Outcome::Committed);
        let Outcome::NotCommitted(why) = outcome(&view("RolledBack", Some("edge-1: errors")))
        else {
            panic!("a rollback is not committed");
        };
        assert!(
            why.contains("rolled back") && why.contains("edge-1: errors"),
            "{why}"
        );
        assert!(matches!(
            outcome(&view("Failed", None)),
            Outcome::NotCommitted(_)
        ));
        for phase in ["Progressing", "Paused"] {
            let Outcome::Waiting(line) = outcome(&view(phase, None)) else {
                panic!("{phase} waits");
            };
            assert!(
                line.contains(phase) && line.contains("wave 1 of 2"),
                "{line}"
            );
        }
        let none = DeploymentView {
            rollout: None,
            ..view("Complete", None)
        };
        assert!(matches!(outcome(&none), Outcome::Waiting(_)));
    }
}
