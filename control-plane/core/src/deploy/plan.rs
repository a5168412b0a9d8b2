//! The deployment driver's planning, a pure core: deployments, agents, what agents are
//! observed doing, what each was last given, and `now` in; rollouts moved and desired-state
//! changes out. It reads no store and no clock (observations come through a function the
//! caller gives), so a virtual clock drives it in tests and in the fleet simulation.

use std::collections::{BTreeMap, HashMap};

use tern_proto::manifest::VariantSpec;

use crate::catalog::DeploymentRecord;
use crate::deploy::desired::AgentDesired;
use crate::registry::AgentRecord;
use crate::rollout::{AgentObservation, Phase, Transition};

/// Health window used when a deployment's is 0 (errors still roll back).
pub const MIN_HEALTH_WINDOW_MS: u64 = 10_000;

/// What the planner asks of one selected agent of an active rollout: the agent, the pipeline,
/// the target revision and the health window (ms).
pub type Observe<'a> = dyn Fn(&AgentRecord, &str, u64, u64) -> AgentObservation + 'a;

/// A rollout that moved in this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    pub deployment: String,
    pub revision: u64,
    pub transition: Transition,
    /// The rollout's phase after the pass.
    pub phase: Phase,
}

/// Two deployments give the same pipeline to one agent: the first (by deployment name) wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The deployment that was ignored for this agent.
    pub deployment: String,
    pub agent: String,
    pub pipeline: String,
}

/// An agent's next desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub agent_id: String,
    pub agent_name: String,
    /// The next generation (its content and artifacts are filled in once it is built).
    pub record: AgentDesired,
}

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Deployments whose rollout changed: to be stored.
    pub rollouts: Vec<DeploymentRecord>,
    pub moved: Vec<Moved>,
    pub conflicts: Vec<Conflict>,
    /// Agents whose desired state changes, in the order of `agents`.
    pub changes: Vec<Change>,
}

/// What the deployments give one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given {
    /// Pipeline → (revision, committed).
    pub pipelines: BTreeMap<String, (u64, bool)>,
    /// Pipeline → its deployment's A/B variants.
    pub variants: BTreeMap<String, Vec<VariantSpec>>,
}

/// What deployments give agents, gathered deployment by deployment (in name order: the first
/// to give a pipeline to an agent wins it).
#[derive(Debug, Default)]
pub struct Wanted {
    /// By agent id.
    pub given: HashMap<String, Given>,
    pub conflicts: Vec<Conflict>,
}

/// The agents of `agents` that `deployment` selects, in their order.
pub fn selected<'a>(
    deployment: &DeploymentRecord,
    agents: impl IntoIterator<Item = &'a AgentRecord>,
) -> Vec<&'a AgentRecord> {
    // Built once per deployment, not once per agent.
    let selector = deployment.manifest.spec.selector.selector();
    agents
        .into_iter()
        .filter(|a| selector.matches(&a.labels))
        .collect()
}

/// Steps `deployment`'s rollout, if active, on what its `selected` agents (in a stable order)
/// are observed doing; returns how it moved.
pub fn step_rollout(
    deployment: &mut DeploymentRecord,
    selected: &[&AgentRecord],
    observe: &Observe<'_>,
    now_ms: u64,
) -> Vec<Moved> {
    let name = &deployment.manifest.metadata.name;
    let pipeline = &deployment.manifest.spec.pipeline;
    let Some(rollout) = deployment.rollout.as_mut() else {
        return Vec::new();
    };
    // A finished rollout observes nothing: its agents' state is not even gathered.
    if !rollout.is_active() {
        return Vec::new();
    }
    let window = rollout.policy.health_window_ms.max(MIN_HEALTH_WINDOW_MS);
    let observations: Vec<AgentObservation> = selected
        .iter()
        .map(|a| observe(a, pipeline, rollout.target, window))
        .collect();
    (rollout.observe(&observations, now_ms).into_iter())
        .map(|transition| Moved {
            deployment: name.clone(),
            revision: rollout.target,
            transition,
            phase: rollout.phase.clone(),
        })
        .collect()
}

/// Adds what `deployment` gives its `selected` agents to `wanted`.
pub fn give(deployment: &DeploymentRecord, selected: &[&AgentRecord], wanted: &mut Wanted) {
    let Some(rollout) = deployment.rollout.as_ref() else {
        return;
    };
    let spec = &deployment.manifest.spec;
    let stable = rollout.stable();
    let assignments = rollout.assignments();
    for agent in selected {
        let Some(revision) = assignments.of(&agent.name) else {
            continue;
        };
        let given = wanted.given.entry(agent.id.clone()).or_default();
        if given.pipelines.contains_key(&spec.pipeline) {
            wanted.conflicts.push(Conflict {
                deployment: deployment.manifest.metadata.name.clone(),
                agent: agent.name.clone(),
                pipeline: spec.pipeline.clone(),
            });
            continue;
        }
        (given.pipelines).insert(spec.pipeline.clone(), (revision, stable == Some(revision)));
        if !spec.variants.is_empty() {
            (given.variants).insert(spec.pipeline.clone(), spec.variants.clone());
        }
    }
}

/// `agent`'s next desired state, if what it is `given` differs from what it was last given
/// (`previous`), or if it holds a generation above that one (`holds`: the store was restored
/// from an older backup, or lost a write in a failover): it gets its state again under a
/// generation above the one it holds, as it refuses anything at or below it.
pub fn change(
    agent: &AgentRecord,
    given: Given,
    previous: Option<&AgentDesired>,
    holds: u64,
    trust_version: Option<u64>,
) -> Option<Change> {
    let behind = holds > previous.map_or(0, |p| p.generation);
    if !behind
        && previous.is_some_and(|s| s.gives(&given.pipelines, trust_version, &given.variants))
    {
        return None;
    }
    let mut record =
        AgentDesired::successor(previous, given.pipelines, trust_version, given.variants);
    record.generation = record.generation.max(holds + 1);
    Some(Change {
        agent_id: agent.id.clone(),
        agent_name: agent.name.clone(),
        record,
    })
}

/// One pass over everything: every active rollout observes its selected agents and steps;
/// then each agent's desired state is recomputed from the rollouts' assignments and compared
/// with what it was last given (`stored`, by agent id; `applied`: the generation each says it
/// holds, see [`change`]).
pub fn plan(
    deployments: Vec<DeploymentRecord>,
    agents: &[AgentRecord],
    stored: &HashMap<String, AgentDesired>,
    applied: &HashMap<String, u64>,
    trust_version: Option<u64>,
    observe: &Observe<'_>,
    now_ms: u64,
) -> Plan {
    let mut out = Plan::default();
    let mut wanted = Wanted::default();
    for mut deployment in deployments {
        let selected = selected(&deployment, agents);
        let before = deployment.rollout.clone();
        out.moved
            .extend(step_rollout(&mut deployment, &selected, observe, now_ms));
        give(&deployment, &selected, &mut wanted);
        if deployment.rollout != before {
            out.rollouts.push(deployment);
        }
    }
    out.conflicts = wanted.conflicts;
    for agent in agents {
        let given = wanted.given.remove(&agent.id).unwrap_or_default();
        let holds = applied.get(&agent.id).copied().unwrap_or(0);
        out.changes.extend(change(
            agent,
            given,
            stored.get(&agent.id),
            holds,
            trust_version,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Rollout, RolloutPolicy};
    use tern_proto::manifest::Deployment;

    const MINUTE: u64 = 60_000;

    fn agent(name: &str, labels: &[(&str, &str)]) -> AgentRecord {
        AgentRecord {
            id: format!("id-{name}"),
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            capacity: Default::default(),
            version: String::new(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            status: tern_proto::api::AgentStatus::Ready,
            address: None,
            replica: None,
            cert_sha256: String::new(),
            previous_cert_sha256: None,
            cert_expires_ms: None,
            key_sha256: None,
            revoked_ms: None,
        }
    }

    fn deployment(name: &str, pipeline: &str, selector: &str, extra: &str) -> Deployment {
        let yaml = format!(
            "apiVersion: tern.dev/v1alpha1\nkind: Deployment\nmetadata: {{ name: {name} }}\nspec:\n  pipeline: {pipeline}\n  selector: {{ {selector} }}\n{extra}"
        );
        match tern_proto::manifest::parse_resources(&yaml, "test.yaml")
            .expect("valid deployment")
            .remove(0)
        {
            tern_proto::manifest::Resource::Deployment(d) => d,
            other => panic!("not a deployment: {other:?}"),
        }
    }

    fn record(manifest: Deployment, rollout: Rollout) -> DeploymentRecord {
        DeploymentRecord {
            manifest,
            created_ms: 0,
            updated_ms: 0,
            rollout: Some(rollout),
        }
    }

    fn policy(waves: &[u8]) -> RolloutPolicy {
        RolloutPolicy {
            waves: waves.to_vec(),
            health_window_ms: MINUTE,
            max_error_rate: 0.05,
            auto_rollback: true,
            progress_deadline_ms: 10 * MINUTE,
            offline_grace_ms: 0,
        }
    }

    /// Every agent connected and serving `serving` without errors.
    fn serving(serving: u64) -> impl Fn(&AgentRecord, &str, u64, u64) -> AgentObservation {
        move |agent, _, _, _| AgentObservation {
            agent: agent.name.clone(),
            connected: true,
            offline_ms: 0,
            exits: None,
            serving: Some(serving),
            reported: Some((serving, None)),
            requests: 100,
            errors: 0,
        }
    }

    #[test]
    fn a_new_pipeline_reaches_the_first_wave_only_then_everyone_once_healthy() {
        let agents: Vec<AgentRecord> = (1..=4)
            .map(|i| agent(&format!("edge-{i}"), &[("site", "a")]))
            .collect();
        let d = record(
            deployment("d", "p", "site: a", ""),
            Rollout::new(1, None, policy(&[25, 100]), 0),
        );
        let first = plan(
            vec![d],
            &agents,
            &HashMap::new(),
            &HashMap::new(),
            None,
            &serving(1),
            0,
        );
        assert_eq!(first.rollouts.len(), 1, "the rollout moved: stored");
        assert!(matches!(
            first.moved[0].transition,
            Transition::WaveStarted { wave: 0, .. }
        ));
        let given: Vec<&str> = first
            .changes
            .iter()
            .filter(|c| !c.record.pipelines.is_empty())
            .map(|c| c.agent_name.as_str())
            .collect();
        assert_eq!(given, ["edge-1"], "25% of 4 agents, in name order");
        assert_eq!(
            first.changes.len(),
            4,
            "the others get an empty first generation"
        );
        assert_eq!(first.changes[0].record.pipelines["p"], (1, false));

        // The wave stays healthy for the window: the next one starts.
        let stored: HashMap<String, AgentDesired> = first
            .changes
            .iter()
            .map(|c| (c.agent_id.clone(), c.record.clone()))
            .collect();
        let d = first.rollouts.into_iter().next().expect("moved");
        let healthy = plan(
            vec![d],
            &agents,
            &stored,
            &HashMap::new(),
            None,
            &serving(1),
            MINUTE,
        );
        let d = healthy.rollouts.into_iter().next().expect("moved");
        let after = plan(
            vec![d],
            &agents,
            &stored,
            &HashMap::new(),
            None,
            &serving(1),
            2 * MINUTE + 1,
        );
        let names: Vec<&str> = after
            .changes
            .iter()
            .map(|c| c.agent_name.as_str())
            .collect();
        assert_eq!(
            names,
            ["edge-2", "edge-3", "edge-4"],
            "edge-1 already has it"
        );
        assert!(after.changes.iter().all(|c| c.record.generation == 2));
    }

    #[test]
    fn nothing_changes_for_an_agent_that_already_has_what_it_should() {
        let agents = vec![agent("edge-1", &[("site", "a")])];
        let mut complete = Rollout::new(3, Some(2), policy(&[100]), 0);
        complete.phase = Phase::Complete;
        let d = record(deployment("d", "p", "site: a", ""), complete);
        let given = AgentDesired::successor(
            None,
            [("p".to_owned(), (3, true))].into(),
            Some(1),
            BTreeMap::new(),
        );
        let stored = HashMap::from([("id-edge-1".to_owned(), given.clone())]);
        let observe = |_: &AgentRecord, _: &str, _: u64, _: u64| -> AgentObservation {
            panic!("a finished rollout observes nothing")
        };
        let same = plan(
            vec![d.clone()],
            &agents,
            &stored,
            &HashMap::new(),
            Some(1),
            &observe,
            MINUTE,
        );
        assert!(same.changes.is_empty() && same.rollouts.is_empty());

        // A new trust root is a new generation with the same pipelines.
        let rooted = plan(
            vec![d.clone()],
            &agents,
            &stored,
            &HashMap::new(),
            Some(2),
            &observe,
            MINUTE,
        );
        assert_eq!(rooted.changes.len(), 1);
        assert_eq!(rooted.changes[0].record.generation, given.generation + 1);
        assert_eq!(rooted.changes[0].record.pipelines, given.pipelines);

        // The agent holds what it was given: nothing to do.
        let holds = HashMap::from([("id-edge-1".to_owned(), given.generation)]);
        let caught_up = plan(
            vec![d.clone()],
            &agents,
            &stored,
            &holds,
            Some(1),
            &observe,
            MINUTE,
        );
        assert!(caught_up.changes.is_empty());
        // The store went back (a restored backup): the agent holds generation 7, above the
        // stored one. The same content comes again above what it holds.
        let ahead = HashMap::from([("id-edge-1".to_owned(), 7)]);
        let again = plan(vec![d], &agents, &stored, &ahead, Some(1), &observe, MINUTE);
        assert_eq!(again.changes.len(), 1);
        assert_eq!(again.changes[0].record.generation, 8);
        assert_eq!(again.changes[0].record.pipelines, given.pipelines);
    }

    #[test]
    fn a_pipeline_two_deployments_give_one_agent_goes_to_the_first() {
        let agents = vec![agent("edge-1", &[("site", "a"), ("tier", "x")])];
        let mut one = Rollout::new(1, None, policy(&[100]), 0);
        one.phase = Phase::Complete;
        let mut two = Rollout::new(2, None, policy(&[100]), 0);
        two.phase = Phase::Complete;
        let out = plan(
            vec![
                record(deployment("a", "p", "site: a", ""), one),
                record(deployment("b", "p", "tier: x", ""), two),
            ],
            &agents,
            &HashMap::new(),
            &HashMap::new(),
            None,
            &serving(1),
            0,
        );
        assert_eq!(
            out.conflicts,
            [Conflict {
                deployment: "b".into(),
                agent: "edge-1".into(),
                pipeline: "p".into()
            }]
        );
        assert_eq!(out.changes[0].record.pipelines["p"], (1, true));
    }

    #[test]
    fn errors_past_the_limit_roll_the_wave_back_to_the_stable_revision() {
        let agents: Vec<AgentRecord> = (1..=2)
            .map(|i| agent(&format!("edge-{i}"), &[("site", "a")]))
            .collect();
        let d = record(
            deployment("d", "p", "site: a", ""),
            Rollout::new(2, Some(1), policy(&[50, 100]), 0),
        );
        let first = plan(
            vec![d],
            &agents,
            &HashMap::new(),
            &HashMap::new(),
            None,
            &serving(1),
            0,
        );
        assert_eq!(first.changes[0].record.pipelines["p"], (2, false));
        assert_eq!(first.changes[1].record.pipelines["p"], (1, true));
        let stored: HashMap<String, AgentDesired> = first
            .changes
            .iter()
            .map(|c| (c.agent_id.clone(), c.record.clone()))
            .collect();
        let failing = |agent: &AgentRecord, _: &str, target: u64, window: u64| {
            assert_eq!(window, MINUTE, "the deployment's health window");
            AgentObservation {
                agent: agent.name.clone(),
                connected: true,
                offline_ms: 0,
                exits: None,
                serving: Some(target),
                reported: Some((target, None)),
                requests: 100,
                errors: 50,
            }
        };
        let d = first.rollouts.into_iter().next().expect("moved");
        let back = plan(
            vec![d],
            &agents,
            &stored,
            &HashMap::new(),
            None,
            &failing,
            1_000,
        );
        assert!(matches!(
            back.moved.last().map(|m| &m.phase),
            Some(Phase::RolledBack { .. })
        ));
        assert_eq!(back.changes.len(), 1, "only the canary changes");
        assert_eq!(back.changes[0].agent_name, "edge-1");
        assert_eq!(back.changes[0].record.pipelines["p"], (1, true));
    }
}
