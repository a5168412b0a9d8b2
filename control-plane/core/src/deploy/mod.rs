//! The deployment driver, a service over the stores: gathers what agents report, runs the
//! planning core ([`plan`]) on it, builds and signs each changed desired state, records it
//! ([`desired`]) and hands it back for sending. No I/O: the server sends what it returns.
//!
//! - [`desired`]: what each agent was last given, and what that lets it ask for.
//! - [`plan`]: the pure core: rollouts step, assignments become desired-state changes.

pub mod desired;
pub mod plan;

use std::collections::{BTreeSet, HashMap, HashSet};

use tern_proto::MAX_FRAME_LEN;
use tern_proto::desired::{DesiredPipeline, DesiredState, DesiredStep, DesiredVariant, Warmup};
use tern_proto::manifest::{ArtifactRef, StepKind, VariantSpec};
use tern_proto::message::{PipelinePhase, SignedDesiredState};
use tern_proto::release::Digest;
use tern_proto::signing::SecretKey;
use tern_proto::trust::SignedTrustRoot;
use tracing::{info, warn};

pub use desired::{AgentDesired, DesiredStore, DesiredStoreError};

use crate::catalog::Catalog;
use crate::health::HealthTracker;
use crate::presence::Presence;
use crate::registry::{AgentRecord, Registry};
use crate::releases::ReleaseStore;
use crate::reports::AgentReports;
use crate::rollout::{AgentObservation, Transition};

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

/// One pass: planners step, desired states are recomputed; returns the new generations to
/// send, by agent id.
pub fn step(
    cx: &DeployContext<'_>,
    now_ms: u64,
) -> Result<Vec<(String, SignedDesiredState)>, DeployError> {
    let lock = cx.catalog.lock()?;
    // A revoked agent is given nothing: it is refused at the handshake, and no rollout waits
    // on it.
    let agents: Vec<AgentRecord> = (cx.registry.agents()?.into_iter())
        .filter(|a| a.revoked_ms.is_none())
        .collect();
    let trust = cx.releases.trust_root()?;
    let mut stored = HashMap::new();
    // Agents whose record cannot be read get no new state this pass (planned as having none,
    // they would be given generation 1 again); they still count in their rollouts, and one
    // bad record does not hold up the other agents.
    let mut unreadable = HashSet::new();
    let known: HashSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    // One scan, not a read per agent: a pass over a fleet of thousands stays a few queries.
    for (agent_id, record) in cx.desired.all()? {
        if !known.contains(agent_id.as_str()) {
            continue;
        }
        match record {
            Ok(record) => {
                stored.insert(agent_id, record);
            }
            Err(e) => {
                warn!(agent = %agent_id, error = %e, "cannot read the desired state; the agent is left out of this pass");
                unreadable.insert(agent_id);
            }
        }
    }
    // What each agent says it holds: a store restored from an older backup catches up.
    let applied: HashMap<String, u64> = (agents.iter())
        .filter_map(|a| Some((a.id.clone(), cx.reports.applied_generation(&a.id)?)))
        .collect();
    let plan = plan::plan(
        cx.catalog.deployments()?,
        &agents,
        &stored,
        &applied,
        trust.as_ref().map(|t| t.signed.version),
        &|agent, pipeline, target, window_ms| {
            observe(cx, agent, pipeline, target, window_ms, now_ms)
        },
        now_ms,
    );
    for moved in &plan.moved {
        let (deployment, revision) = (&moved.deployment, moved.revision);
        match &moved.transition {
            Transition::RolledBack { reason } | Transition::Failed { reason } => {
                warn!(%deployment, revision, %reason, "rollout {}", moved.phase)
            }
            other => info!(%deployment, revision, transition = ?other, "rollout"),
        }
    }
    for c in &plan.conflicts {
        warn!(deployment = %c.deployment, agent = %c.agent, pipeline = %c.pipeline, "another deployment already runs this pipeline on this agent; ignored");
    }
    for deployment in &plan.rollouts {
        lock.put_deployment(deployment);
    }
    // Every rollout this pass moved, at once: desired states follow only a plan that landed.
    lock.commit()?;

    let mut out = Vec::new();
    for change in plan.changes {
        if unreadable.contains(change.agent_id.as_str()) {
            continue;
        }
        let mut record = change.record;
        // Built before it is recorded: a state that cannot be built or sent is not half-made,
        // and the next pass tries again. One agent's failure does not hold up the others.
        let built = match build(cx, &change.agent_id, &record, trust.as_ref(), now_ms) {
            Ok(built) => built,
            Err(e) => {
                warn!(agent = %change.agent_name, error = %e, "cannot build the desired state");
                continue;
            }
        };
        record.content = Some(built.content);
        record.artifacts = built.artifacts;
        if !cx.desired.put(&change.agent_id, &record)? {
            warn!(agent = %change.agent_name, generation = record.generation, "another writer gave this generation first; the next pass plans again");
            continue;
        }
        info!(agent = %change.agent_name, generation = record.generation, pipelines = ?record.pipelines, "new desired state");
        out.push((change.agent_id, built.signed));
    }
    Ok(out)
}

/// The experiment's arms with their releases, on the step they replace.
fn variants(
    releases: &ReleaseStore,
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
        let release = releases
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
pub fn build(
    cx: &DeployContext<'_>,
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
        let pipeline = cx
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
            let signed = cx
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
        let variants = variants(cx.releases, spec, record.variants.get(name))
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

/// The current desired state of an agent, signed for sending (on connect). When it no longer
/// builds to the content its generation was sent with (a release gained a co-signature since,
/// or the record is from an older version), it becomes a new generation: agents refuse a
/// generation they know with other content.
pub fn current(
    cx: &DeployContext<'_>,
    agent_id: &str,
    now_ms: u64,
) -> Result<Option<SignedDesiredState>, DeployError> {
    let _held = cx.catalog.hold();
    let Some(stored) = cx.desired.get(agent_id)? else {
        return Ok(None);
    };
    let trust = cx.releases.trust_root()?;
    let built = build(cx, agent_id, &stored, trust.as_ref(), now_ms)?;
    if stored.content == Some(built.content) {
        return Ok(Some(built.signed));
    }
    let mut record = AgentDesired::successor(
        Some(&stored),
        stored.pipelines.clone(),
        stored.trust_version,
        stored.variants.clone(),
    );
    let built = build(cx, agent_id, &record, trust.as_ref(), now_ms)?;
    record.content = Some(built.content);
    record.artifacts = built.artifacts;
    if !cx.desired.put(agent_id, &record)? {
        // Another writer gave a newer generation meanwhile: that one is current.
        return Ok(None);
    }
    info!(
        agent = agent_id,
        generation = record.generation,
        "desired state rebuilt with other content: a new generation"
    );
    Ok(Some(built.signed))
}

#[cfg(test)]
mod tests {
    use tern_proto::release::ArtifactKind;

    use super::*;
    use crate::replica::Replica;
    use crate::testing::{Stores, manifest};

    /// What a control plane alone keeps in memory beside its stores.
    struct Observed {
        reports: AgentReports,
        health: HealthTracker,
        presence: Presence,
        replica: Replica,
        key: SecretKey,
    }

    fn observed() -> Observed {
        Observed {
            reports: AgentReports::default(),
            health: HealthTracker::default(),
            presence: Presence::default(),
            replica: Replica {
                name: "cp".into(),
                peers: false,
            },
            key: SecretKey::generate(),
        }
    }

    fn context<'a>(stores: &'a Stores, seen: &'a Observed) -> DeployContext<'a> {
        DeployContext {
            registry: &stores.registry,
            catalog: &stores.catalog,
            releases: &stores.releases,
            desired: &stores.desired,
            reports: &seen.reports,
            health: &seen.health,
            presence: &seen.presence,
            online_key: &seen.key,
            replica: &seen.replica,
        }
    }

    /// Enrolls and connects agents `id0`… named `edge-1`….
    fn enroll(stores: &Stores, seen: &Observed, agents: u8) {
        for i in 0..agents {
            stores.enroll(&format!("id{i}"), &format!("edge-{}", i + 1));
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(i)));
            seen.presence.connect(&format!("id{i}"), address, 1);
        }
    }

    #[test]
    fn a_pass_gives_the_first_wave_the_pipeline_signed_and_the_next_pass_nothing_new() {
        let (stores, seen) = (Stores::new(), observed());
        enroll(&stores, &seen, 2);
        stores.push("topk", 2, ArtifactKind::Plugin, true);
        stores
            .apply(&manifest("topk:2", 2), false, 10)
            .expect("apply");

        let mut sent = step(&context(&stores, &seen), 20).expect("a pass");
        sent.sort_by(|a, b| a.0.cmp(&b.0));
        let mut given = Vec::new();
        for (agent, signed) in &sent {
            let state = signed
                .open(&seen.key.public(), agent, 0)
                .expect("signed by the online key, for that agent");
            assert!(signed.open(&seen.key.public(), "another", 0).is_err());
            assert_eq!(state.generation, 1);
            let recorded = stores.desired.get(agent).expect("read").expect("recorded");
            assert_eq!(
                (recorded.generation, recorded.content),
                (1, Some(state.content_digest()))
            );
            let pipelines: Vec<(String, u64)> = (state.pipelines.iter())
                .map(|p| (p.name.clone(), p.revision))
                .collect();
            given.push((agent.clone(), pipelines));
        }
        assert_eq!(
            given,
            [
                ("id0".to_owned(), vec![("scores".to_owned(), 1)]),
                ("id1".to_owned(), vec![]),
            ],
            "the first wave (half of two agents) runs revision 1; the second waits"
        );
        let rollout = (stores.catalog.deployment("scores").expect("read"))
            .and_then(|d| d.rollout)
            .expect("the rollout");
        assert_eq!(
            (rollout.wave, rollout.members),
            (0, vec!["edge-1".to_owned()])
        );
        assert!(
            step(&context(&stores, &seen), 30)
                .expect("a pass")
                .is_empty(),
            "nothing changed: nothing sent again"
        );
    }

    #[test]
    fn a_revoked_agent_is_given_nothing() {
        let (stores, seen) = (Stores::new(), observed());
        enroll(&stores, &seen, 1);
        stores.registry.revoke("edge-1", 5).expect("revoke");
        stores.push("topk", 2, ArtifactKind::Plugin, true);
        stores
            .apply(&manifest("topk:2", 2), false, 10)
            .expect("apply");
        assert!(
            step(&context(&stores, &seen), 20)
                .expect("a pass")
                .is_empty()
        );
        assert!(stores.desired.get("id0").expect("read").is_none());
    }
}
