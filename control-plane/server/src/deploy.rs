//! The deployment driver: runs every deployment's rollout planner on what agents report, turns
//! the planners' assignments into each agent's desired state, and signs and sends a new
//! generation whenever an agent's desired state changes.
//!
//! Tree `desired` (agent id → [`AgentDesired`], JSON) keeps the generation and what it held,
//! so generations only ever grow, across restarts too. It also says what the agent may ask of
//! the control plane: the artifacts of its current and previous generation, and health and
//! telemetry only for the pipeline revisions it was given.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tern_proto::MAX_FRAME_LEN;
use tern_proto::desired::{DesiredPipeline, DesiredState, DesiredStep, DesiredVariant, Warmup};
use tern_proto::manifest::{ArtifactRef, StepKind, VariantSpec};
use tern_proto::message::{PipelinePhase, SignedDesiredState};
use tern_proto::release::Digest;
use tern_proto::trust::SignedTrustRoot;

use crate::records::{decode, encode};
use tracing::{info, warn};

use crate::registry::AgentRecord;
use crate::rollout::{AgentObservation, Transition};
use crate::server::Shared;

/// Health window used when a deployment's is 0 (errors still roll back).
const MIN_HEALTH_WINDOW_MS: u64 = 10_000;

/// What an agent was last given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentDesired {
    pub generation: u64,
    /// Pipeline → (revision, committed).
    pub pipelines: BTreeMap<String, (u64, bool)>,
    /// Version of the trust root it carries.
    pub trust_version: Option<u64>,
    /// Pipeline → the A/B variants its deployment gives (absent: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Vec<VariantSpec>>,
    /// [`tern_proto::desired::DesiredState::content_digest`] of the generation as built and
    /// sent (absent in records of older versions): one generation, one content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Digest>,
    /// The artifacts this generation names, and those the one before it named: the only ones
    /// the agent may fetch.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub artifacts: BTreeSet<Digest>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub previous_artifacts: BTreeSet<Digest>,
    /// Pipeline → the revisions this agent was ever given (the latest
    /// [`GIVEN_REVISIONS`]): the only ones it may report health and telemetry for, also
    /// late, after weeks offline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub given: BTreeMap<String, BTreeSet<u64>>,
}

/// Revisions per pipeline remembered in [`AgentDesired::given`].
pub const GIVEN_REVISIONS: usize = 16;
/// Pipelines remembered in [`AgentDesired::given`]; past that, those the agent no longer runs
/// are forgotten first.
pub const GIVEN_PIPELINES: usize = 256;

impl AgentDesired {
    /// The generation after `previous` (the first when there is none), giving `pipelines`.
    fn successor(
        previous: Option<&AgentDesired>,
        pipelines: BTreeMap<String, (u64, bool)>,
        trust_version: Option<u64>,
        variants: BTreeMap<String, Vec<VariantSpec>>,
    ) -> Self {
        let mut given = previous.map(|p| p.given.clone()).unwrap_or_default();
        for (name, &(revision, _)) in &pipelines {
            let revisions = given.entry(name.clone()).or_default();
            revisions.insert(revision);
            while revisions.len() > GIVEN_REVISIONS {
                revisions.pop_first();
            }
        }
        while given.len() > GIVEN_PIPELINES {
            let Some(stale) = given.keys().find(|n| !pipelines.contains_key(*n)).cloned() else {
                break;
            };
            given.remove(&stale);
        }
        Self {
            generation: previous.map_or(0, |p| p.generation) + 1,
            pipelines,
            trust_version,
            variants,
            content: None,
            artifacts: BTreeSet::new(),
            previous_artifacts: previous.map(|p| p.artifacts.clone()).unwrap_or_default(),
            given,
        }
    }

    /// Whether the agent may fetch `digest`: it is named in its current or previous generation.
    pub fn may_fetch(&self, digest: &Digest) -> bool {
        self.artifacts.contains(digest) || self.previous_artifacts.contains(digest)
    }

    /// Whether the agent may report on `pipeline`'s `revision`: it was given that revision.
    pub fn may_report(&self, pipeline: &str, revision: u64) -> bool {
        self.given
            .get(pipeline)
            .is_some_and(|revisions| revisions.contains(&revision))
    }
}

/// A desired state built for sending, with what the record keeps of it.
#[derive(Debug)]
pub(crate) struct Built {
    pub signed: SignedDesiredState,
    pub content: Digest,
    pub artifacts: BTreeSet<Digest>,
}

/// Why the driver could not do its work this time.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Releases(#[from] crate::releases::ReleaseStoreError),
    #[error("desired-state storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("desired-state {0}")]
    Corrupt(#[from] crate::records::CorruptRecord),
    #[error("desired state of agent {agent} cannot be built: {reason}")]
    Build { agent: String, reason: String },
}

fn observe(
    shared: &Shared,
    agent: &AgentRecord,
    pipeline: &str,
    target: u64,
    window_ms: u64,
    now_ms: u64,
) -> AgentObservation {
    let status = shared.reports.pipeline(&agent.id, pipeline);
    let (requests, errors) = shared.health.window(
        &agent.id,
        pipeline,
        target,
        window_ms.max(MIN_HEALTH_WINDOW_MS),
        now_ms,
    );
    AgentObservation {
        agent: agent.name.clone(),
        connected: shared.presence.seen(&agent.id).is_some_and(|s| s.connected),
        serving: status.as_ref().and_then(|s| s.serving),
        reported: status.map(|s| {
            let failed = (s.phase == PipelinePhase::Failed).then_some(s.message);
            (s.revision, failed)
        }),
        requests,
        errors,
    }
}

/// One pass: planners step, desired states are recomputed; returns the new generations to
/// send, by agent id.
pub(crate) fn step(
    shared: &Shared,
    now_ms: u64,
) -> Result<Vec<(String, SignedDesiredState)>, DeployError> {
    let _guard = shared.catalog.lock();
    let agents = shared.registry.agents()?;
    let trust = shared.releases.trust_root()?;
    let mut wanted: HashMap<String, BTreeMap<String, (u64, bool)>> = HashMap::new();
    let mut experiments: HashMap<String, BTreeMap<String, Vec<VariantSpec>>> = HashMap::new();
    for mut deployment in shared.catalog.deployments()? {
        let spec = deployment.manifest.spec.clone();
        let name = deployment.manifest.metadata.name.clone();
        let selected: Vec<&AgentRecord> = agents
            .iter()
            .filter(|a| tern_proto::labels::matches(&spec.selector, &a.labels))
            .collect();
        let Some(rollout) = deployment.rollout.as_mut() else {
            continue;
        };
        let before = rollout.clone();
        // A finished rollout observes nothing: its agents' state is not even gathered.
        if rollout.is_active() {
            let observations: Vec<AgentObservation> = selected
                .iter()
                .map(|a| {
                    observe(
                        shared,
                        a,
                        &spec.pipeline,
                        rollout.target,
                        rollout.policy.health_window_ms,
                        now_ms,
                    )
                })
                .collect();
            for transition in rollout.observe(&observations, now_ms) {
                match &transition {
                    Transition::RolledBack { reason } | Transition::Failed { reason } => {
                        warn!(deployment = %name, revision = rollout.target, %reason, "rollout {}", rollout.phase)
                    }
                    other => {
                        info!(deployment = %name, revision = rollout.target, transition = ?other, "rollout")
                    }
                }
            }
        }
        let stable = rollout.stable();
        for agent in &selected {
            let Some(revision) = rollout.assignment(&agent.name) else {
                continue;
            };
            let entry = wanted.entry(agent.id.clone()).or_default();
            if entry.contains_key(&spec.pipeline) {
                warn!(deployment = %name, agent = %agent.name, pipeline = %spec.pipeline, "another deployment already runs this pipeline on this agent; ignored");
                continue;
            }
            entry.insert(spec.pipeline.clone(), (revision, stable == Some(revision)));
            if !spec.variants.is_empty() {
                experiments
                    .entry(agent.id.clone())
                    .or_default()
                    .insert(spec.pipeline.clone(), spec.variants.clone());
            }
        }
        if *rollout != before {
            shared.catalog.put_deployment(&deployment)?;
        }
    }

    let mut out = Vec::new();
    let trust_version = trust.as_ref().map(|t| t.signed.version);
    for agent in &agents {
        let pipelines = wanted.remove(&agent.id).unwrap_or_default();
        let variants = experiments.remove(&agent.id).unwrap_or_default();
        let stored = shared.desired_state(&agent.id)?;
        if stored.as_ref().is_some_and(|s| {
            s.pipelines == pipelines && s.trust_version == trust_version && s.variants == variants
        }) {
            continue;
        }
        let mut record =
            AgentDesired::successor(stored.as_ref(), pipelines, trust_version, variants);
        // Built before it is recorded: a state that cannot be built or sent is not half-made,
        // and the next pass tries again. One agent's failure does not hold up the others.
        let built = match build(shared, &agent.id, &record, trust.as_ref(), now_ms) {
            Ok(built) => built,
            Err(e) => {
                warn!(agent = %agent.name, error = %e, "cannot build the desired state");
                continue;
            }
        };
        record.content = Some(built.content);
        record.artifacts = built.artifacts;
        shared.put_desired_state(&agent.id, &record)?;
        info!(agent = %agent.name, generation = record.generation, pipelines = ?record.pipelines, "new desired state");
        out.push((agent.id.clone(), built.signed));
    }
    Ok(out)
}

/// The experiment's arms with their releases, on the step they replace.
fn variants(
    shared: &Shared,
    spec: &tern_proto::manifest::PipelineSpec,
    wanted: Option<&Vec<VariantSpec>>,
) -> Result<Vec<DesiredVariant>, String> {
    let Some(wanted) = wanted else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for v in wanted {
        let step = tern_proto::manifest::model_step(&spec.steps, v.step.as_deref())
            .map(|s| s.name.clone())
            .ok_or("the experiment's pipeline has no such model step")?;
        let Some(ArtifactRef::Release { name, version }) = ArtifactRef::parse(&v.model) else {
            return Err(format!("variant {} is not `name:version`", v.model));
        };
        let release = shared
            .releases
            .release(&name, version)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("release {} is gone", v.model))?;
        out.push(DesiredVariant {
            name: v.model.clone(),
            weight: v.weight,
            step,
            release,
        });
    }
    Ok(out)
}

/// Builds and signs the desired state `record` describes.
pub(crate) fn build(
    shared: &Shared,
    agent_id: &str,
    record: &AgentDesired,
    trust: Option<&SignedTrustRoot>,
    now_ms: u64,
) -> Result<Built, DeployError> {
    let build_error = |reason: String| DeployError::Build {
        agent: agent_id.to_owned(),
        reason,
    };
    let mut pipelines = Vec::new();
    for (name, &(revision, committed)) in &record.pipelines {
        let pipeline = shared
            .catalog
            .revision(name, revision)?
            .ok_or_else(|| build_error(format!("pipeline {name} revision {revision} is gone")))?;
        let mut steps = Vec::new();
        for (spec, pinned) in pipeline.manifest.spec.steps.iter().zip(&pipeline.pinned) {
            let reference = match spec.kind() {
                StepKind::Plugin(r) | StepKind::Model(r) => r,
            };
            let Some(ArtifactRef::Release {
                name: release,
                version,
            }) = ArtifactRef::parse(reference)
            else {
                return Err(build_error(format!("step {} has no release", spec.name)));
            };
            let signed = shared
                .releases
                .release(&release, version)?
                .filter(|r| r.signed.digest == pinned.digest)
                .ok_or_else(|| build_error(format!("release {reference} is gone or changed")))?;
            steps.push(DesiredStep {
                name: spec.name.clone(),
                release: signed,
                config: spec.config_json(),
                timeout_ms: spec.limits.and_then(|l| l.timeout_ms),
                memory_mib: spec.limits.and_then(|l| l.memory_mib),
                device: spec.device.unwrap_or_default(),
            });
        }
        let spec = &pipeline.manifest.spec;
        let variants = variants(shared, spec, record.variants.get(name))
            .map_err(|reason| build_error(format!("pipeline {name}: {reason}")))?;
        // The drift step, or the experiment's: its output distribution is compared per variant.
        let monitored_step = spec
            .monitoring
            .as_ref()
            .and_then(|m| m.watched_step(&spec.steps))
            .map(str::to_owned)
            .or_else(|| variants.first().map(|v| v.step.clone()));
        pipelines.push(DesiredPipeline {
            name: name.clone(),
            revision,
            steps,
            committed,
            warmup: spec.warmup.as_ref().and_then(warmup),
            monitored_step,
            variants,
        });
    }
    let state = DesiredState {
        agent_id: agent_id.to_owned(),
        generation: record.generation,
        issued_ms: now_ms,
        trust_root: trust.cloned(),
        pipelines,
    };
    let signed = state.sign(&shared.online_key);
    // It travels in one control-stream frame.
    let size = signed.body.len() + signed.signature.len() + 64;
    if size > MAX_FRAME_LEN {
        return Err(build_error(format!(
            "it would be {size} bytes, over the {MAX_FRAME_LEN}-byte frame (fewer pipelines or smaller warm-up samples)"
        )));
    }
    let artifacts = (state.pipelines.iter())
        .flat_map(|p| p.releases().map(|r| r.signed.digest))
        .collect();
    Ok(Built {
        signed,
        content: state.content_digest(),
        artifacts,
    })
}

/// The warm-up sample of a manifest (validated when applied; `file` was inlined by ternctl).
fn warmup(spec: &tern_proto::manifest::WarmupSpec) -> Option<Warmup> {
    use base64::Engine as _;
    if let Some(inputs) = &spec.inputs {
        return Some(Warmup::Tensors(inputs.to_string()));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(spec.data_base64.as_ref()?)
        .ok()?;
    Some(Warmup::Blob {
        media_type: spec.media_type.clone()?,
        data,
    })
}

/// The current desired state of an agent, signed for sending (on connect). When it no longer
/// builds to the content its generation was sent with (a release gained a co-signature since,
/// or the record is from an older version), it becomes a new generation: agents refuse a
/// generation they know with other content.
pub(crate) fn current(
    shared: &Shared,
    agent_id: &str,
    now_ms: u64,
) -> Result<Option<SignedDesiredState>, DeployError> {
    let _guard = shared.catalog.lock();
    let Some(stored) = shared.desired_state(agent_id)? else {
        return Ok(None);
    };
    let trust = shared.releases.trust_root()?;
    let built = build(shared, agent_id, &stored, trust.as_ref(), now_ms)?;
    if stored.content == Some(built.content) {
        return Ok(Some(built.signed));
    }
    let mut record = AgentDesired::successor(
        Some(&stored),
        stored.pipelines.clone(),
        stored.trust_version,
        stored.variants.clone(),
    );
    let built = build(shared, agent_id, &record, trust.as_ref(), now_ms)?;
    record.content = Some(built.content);
    record.artifacts = built.artifacts;
    shared.put_desired_state(agent_id, &record)?;
    info!(
        agent = agent_id,
        generation = record.generation,
        "desired state rebuilt with other content: a new generation"
    );
    Ok(Some(built.signed))
}

impl Shared {
    /// Keeps only the entries (of a health report or a telemetry batch) about pipeline
    /// revisions `agent_id` was given, so that one agent cannot write into another pipeline's
    /// figures or grow what the control plane keeps; returns how many it dropped.
    pub(crate) fn keep_given<T>(
        &self,
        agent_id: &str,
        entries: &mut Vec<T>,
        key: impl Fn(&T) -> (&str, u64),
    ) -> usize {
        if entries.is_empty() {
            return 0;
        }
        let desired = match self.desired_state(agent_id) {
            Ok(desired) => desired,
            Err(e) => {
                warn!(agent = agent_id, error = %e, "cannot read the agent's desired state");
                None
            }
        };
        let before = entries.len();
        entries.retain(|entry| {
            let (pipeline, revision) = key(entry);
            desired
                .as_ref()
                .is_some_and(|d| d.may_report(pipeline, revision))
        });
        before - entries.len()
    }

    /// What `agent_id` was last given.
    pub(crate) fn desired_state(
        &self,
        agent_id: &str,
    ) -> Result<Option<AgentDesired>, DeployError> {
        self.desired
            .get(agent_id.as_bytes())?
            .map(|v| decode(agent_id.as_bytes(), &v))
            .transpose()
    }

    /// Forgets a decommissioned agent's desired state.
    pub(crate) fn forget_desired_state(&self, agent_id: &str) -> Result<(), DeployError> {
        self.desired.remove(agent_id.as_bytes())?;
        self.desired.flush()?;
        Ok(())
    }

    fn put_desired_state(&self, agent_id: &str, record: &AgentDesired) -> Result<(), DeployError> {
        self.desired.insert(agent_id.as_bytes(), encode(record))?;
        self.desired.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipelines(entries: &[(&str, u64)]) -> BTreeMap<String, (u64, bool)> {
        entries
            .iter()
            .map(|&(name, revision)| (name.to_owned(), (revision, false)))
            .collect()
    }

    #[test]
    fn an_agent_may_fetch_its_current_and_previous_artifacts_only() {
        let first = AgentDesired {
            artifacts: [Digest::of(b"v1")].into(),
            ..AgentDesired::successor(None, pipelines(&[("p", 1)]), None, BTreeMap::new())
        };
        let second = AgentDesired {
            artifacts: [Digest::of(b"v2")].into(),
            ..AgentDesired::successor(Some(&first), pipelines(&[("p", 2)]), None, BTreeMap::new())
        };
        assert_eq!(second.generation, 2);
        assert!(second.may_fetch(&Digest::of(b"v2")));
        assert!(second.may_fetch(&Digest::of(b"v1")), "a rollback target");
        let third =
            AgentDesired::successor(Some(&second), pipelines(&[("p", 3)]), None, BTreeMap::new());
        assert!(!third.may_fetch(&Digest::of(b"v1")), "two generations back");
        assert!(!third.may_fetch(&Digest::of(b"other")));
    }

    #[test]
    fn an_agent_may_report_on_revisions_it_was_given_within_bounds() {
        let mut record =
            AgentDesired::successor(None, pipelines(&[("p", 1)]), None, BTreeMap::new());
        for revision in 2..40 {
            record = AgentDesired::successor(
                Some(&record),
                pipelines(&[("p", revision)]),
                None,
                BTreeMap::new(),
            );
        }
        // Gone from the desired state, still reportable (telemetry arrives late).
        record =
            AgentDesired::successor(Some(&record), pipelines(&[("q", 1)]), None, BTreeMap::new());
        assert!(record.may_report("p", 39));
        assert!(record.may_report("q", 1));
        assert!(
            !record.may_report("p", 1),
            "only the latest revisions are kept"
        );
        assert_eq!(record.given["p"].len(), GIVEN_REVISIONS);
        assert!(!record.may_report("other", 1));
        // The pipelines remembered are bounded; the ones it runs are never forgotten.
        let many: Vec<(String, u64)> = (0..GIVEN_PIPELINES + 10)
            .map(|i| (format!("p{i:04}"), 1))
            .collect();
        for (name, revision) in &many {
            record = AgentDesired::successor(
                Some(&record),
                pipelines(&[(name.as_str(), *revision), ("q", 1)]),
                None,
                BTreeMap::new(),
            );
        }
        assert!(record.given.len() <= GIVEN_PIPELINES);
        assert!(record.may_report("q", 1));
        assert!(record.may_report(&many[many.len() - 1].0, 1));
    }
}
