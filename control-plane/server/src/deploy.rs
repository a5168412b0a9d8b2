//! The deployment driver: runs every deployment's rollout planner on what agents report, turns
//! the planners' assignments into each agent's desired state, and signs and sends a new
//! generation whenever an agent's desired state changes.
//!
//! Tree `desired` (agent id → [`AgentDesired`], JSON) keeps the generation and what it held,
//! so generations only ever grow, across restarts too.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tern_proto::MAX_FRAME_LEN;
use tern_proto::desired::{DesiredPipeline, DesiredState, DesiredStep, DesiredVariant, Warmup};
use tern_proto::manifest::{ArtifactRef, StepKind, VariantSpec};
use tern_proto::message::{PipelinePhase, SignedDesiredState};
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
        let record = AgentDesired {
            generation: stored.map(|s| s.generation).unwrap_or(0) + 1,
            pipelines,
            trust_version,
            variants,
        };
        // Built before it is recorded: a state that cannot be built or sent is not half-made,
        // and the next pass tries again. One agent's failure does not hold up the others.
        let signed = match build(shared, &agent.id, &record, trust.as_ref(), now_ms) {
            Ok(signed) => signed,
            Err(e) => {
                warn!(agent = %agent.name, error = %e, "cannot build the desired state");
                continue;
            }
        };
        shared.put_desired_state(&agent.id, &record)?;
        info!(agent = %agent.name, generation = record.generation, pipelines = ?record.pipelines, "new desired state");
        out.push((agent.id.clone(), signed));
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
) -> Result<SignedDesiredState, DeployError> {
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
    Ok(signed)
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

/// The current desired state of an agent, signed for sending (on connect).
pub(crate) fn current(
    shared: &Shared,
    agent_id: &str,
    now_ms: u64,
) -> Result<Option<SignedDesiredState>, DeployError> {
    match shared.desired_state(agent_id)? {
        Some(record) => {
            let trust = shared.releases.trust_root()?;
            build(shared, agent_id, &record, trust.as_ref(), now_ms).map(Some)
        }
        None => Ok(None),
    }
}

impl Shared {
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

    fn put_desired_state(&self, agent_id: &str, record: &AgentDesired) -> Result<(), DeployError> {
        self.desired.insert(agent_id.as_bytes(), encode(record))?;
        self.desired.flush()?;
        Ok(())
    }
}
