//! The deployment driver, a service over the stores: the work lease's holder keeps the fleet
//! in memory ([`fleet`]), fed by events; each pass runs the planning core ([`plan`]) on what
//! the events touched, builds and signs each changed desired state ([`build`]) and records it
//! in the outbox ([`desired`]). No I/O: the server runs the passes and sends what they return;
//! every replica's sessions send what the outbox holds.
//!
//! - [`fleet`]: the fleet in memory, its events, and the pass with its outbox.
//! - [`desired`]: what each agent was last given, signed for sending, and what that lets it
//!   ask for.
//! - [`plan`]: the pure core: rollouts step, assignments become desired-state changes.

pub mod desired;
pub mod fleet;
pub mod plan;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tern_proto::MAX_FRAME_LEN;
use tern_proto::desired::{DesiredPipeline, DesiredState, DesiredStep, DesiredVariant, Warmup};
use tern_proto::manifest::{ArtifactRef, StepKind, VariantSpec};
use tern_proto::message::{PipelinePhase, SignedDesiredState};
use tern_proto::release::{Digest, SignedRelease};
use tern_proto::signing::SecretKey;
use tern_proto::trust::SignedTrustRoot;

pub use desired::{AgentDesired, DesiredStore, DesiredStoreError};

use crate::catalog::{Catalog, PipelineRecord};
use crate::health::HealthTracker;
use crate::presence::Presence;
use crate::registry::{AgentRecord, Registry};
use crate::releases::ReleaseStore;
use crate::reports::AgentReports;
use crate::rollout::AgentObservation;

/// What the driver reads and writes: the stores, what agents are observed doing, and the key
/// desired states are signed with.
#[derive(Debug, Clone, Copy)]
pub struct DeployContext<'a> {
    pub registry: &'a Registry,
    pub catalog: &'a Catalog,
    pub releases: &'a ReleaseStore,
    pub desired: &'a DesiredStore,
    pub reports: &'a AgentReports,
    pub health: &'a HealthTracker,
    pub presence: &'a Presence,
    pub online_key: &'a SecretKey,
    /// This replica: whose presence knows an agent held here; another's is in its record.
    pub replica: &'a crate::replica::Replica,
}

/// A desired state built for sending, with what the record keeps of it.
#[derive(Debug)]
pub struct Built {
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
    #[error(transparent)]
    Desired(#[from] DesiredStoreError),
    #[error("desired state of agent {agent} cannot be built: {reason}")]
    Build { agent: String, reason: String },
}

/// What `agent` is observed doing with `pipeline` (target revision `target`, health over
/// `window_ms`).
fn observe(
    cx: &DeployContext<'_>,
    agent: &AgentRecord,
    pipeline: &str,
    target: u64,
    window_ms: u64,
    now_ms: u64,
) -> AgentObservation {
    let status = cx.reports.pipeline(&agent.id, pipeline);
    let (requests, errors) = cx
        .health
        .window(&agent.id, pipeline, target, window_ms, now_ms);
    let connected = cx.replica.connected(cx.presence, agent);
    // This replica's presence knows best when an agent held here was last heard.
    let last_seen_ms = (cx.presence.seen(&agent.id))
        .filter(|_| !cx.replica.held_elsewhere(agent))
        .map_or(agent.last_seen_ms, |s| {
            s.last_seen_ms.max(agent.last_seen_ms)
        });
    AgentObservation {
        agent: agent.name.clone(),
        connected,
        offline_ms: if connected {
            0
        } else {
            now_ms.saturating_sub(last_seen_ms)
        },
        exits: cx.reports.exits_serving(&agent.id, pipeline, target),
        serving: status.as_ref().and_then(|s| s.serving),
        reported: status.map(|s| {
            let failed = (s.phase == PipelinePhase::Failed).then_some(s.message);
            (s.revision, failed)
        }),
        requests,
        errors,
    }
}

/// What building desired states reads, each read once per pass however many agents share it:
/// pipeline revisions (never changed once recorded) and releases (read again at the next pass,
/// where a co-signature shows).
#[derive(Debug, Default)]
pub struct Lookups {
    revisions: RefCell<Read<Arc<PipelineRecord>>>,
    releases: RefCell<Read<SignedRelease>>,
}

/// What was read, by (name, revision or version); `None`: there is none.
type Read<T> = HashMap<(String, u64), Option<T>>;

impl Lookups {
    fn revision(
        &self,
        cx: &DeployContext<'_>,
        name: &str,
        revision: u64,
    ) -> Result<Option<Arc<PipelineRecord>>, DeployError> {
        let key = (name.to_owned(), revision);
        if let Some(found) = self.revisions.borrow().get(&key) {
            return Ok(found.clone());
        }
        let found = cx.catalog.revision(name, revision)?.map(Arc::new);
        self.revisions.borrow_mut().insert(key, found.clone());
        Ok(found)
    }

    fn release(
        &self,
        cx: &DeployContext<'_>,
        name: &str,
        version: u64,
    ) -> Result<Option<SignedRelease>, DeployError> {
        let key = (name.to_owned(), version);
        if let Some(found) = self.releases.borrow().get(&key) {
            return Ok(found.clone());
        }
        let found = cx.releases.release(name, version)?;
        self.releases.borrow_mut().insert(key, found.clone());
        Ok(found)
    }
}

/// The experiment's arms with their releases, on the step they replace.
fn variants(
    cx: &DeployContext<'_>,
    lookups: &Lookups,
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
        let release = lookups
            .release(cx, &name, version)
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

/// Builds and signs the desired state `record` describes (`lookups`: what this pass read).
pub fn build(
    cx: &DeployContext<'_>,
    lookups: &Lookups,
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
        let pipeline = lookups
            .revision(cx, name, revision)?
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
            let signed = lookups
                .release(cx, &release, version)?
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
        let variants = variants(cx, lookups, spec, record.variants.get(name))
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
    let signed = state.sign(cx.online_key);
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

#[cfg(test)]
mod tests;
