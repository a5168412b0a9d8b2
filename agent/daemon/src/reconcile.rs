//! The reconciler: desired state in, actions out (design section 6).
//!
//! A plain state machine, like the control plane's rollout planner: it owns the agent's model
//! of the world (pinned trust root, version floors, verified artifacts, the revision each
//! pipeline serves and the one it works towards) and turns events into [`Action`]s. The driver
//! performs them (fetch, compile, load, switch traffic, persist) and feeds the outcomes back as
//! events. It reads no clock: callers pass the clocks.
//!
//! Rules:
//! - Every release of a revision passes the checks of design section 2 (threshold signatures
//!   by trusted publishers, version floor, expiry) before a byte of it is fetched; the driver
//!   checks size and digest of the bytes before they are stored, so nothing unverified is ever
//!   parsed.
//! - A failure leaves the serving revision serving and is reported with its reason; the same
//!   revision is not retried until the desired state changes.
//! - Version floors rise only when a revision is *committed* (its rollout completed), so an
//!   automatic rollback to the revision before a canary stays possible, while anything below
//!   the last committed release is refused for good.

use std::collections::{BTreeMap, BTreeSet};

use tern_proto::desired::{DesiredPipeline, DesiredState};
use tern_proto::message::{PipelinePhase, PipelineStatus};
use tern_proto::release::{Clocks, Digest, SignedRelease, VersionFloor};
use tern_proto::trust::{SignedTrustRoot, TrustUpdate};

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Persist and use this trust root.
    PinTrustRoot(SignedTrustRoot),
    /// Download this release's artifact, checking size and digest, then report
    /// [`Reconciler::artifact_stored`] or [`Reconciler::artifact_failed`].
    Fetch(SignedRelease),
    /// Compile plugins, load models, warm up; then [`Reconciler::loaded`] or
    /// [`Reconciler::load_failed`].
    Load(DesiredPipeline),
    /// Switch traffic to this (loaded) revision atomically and persist it as active.
    Activate(DesiredPipeline),
    /// Stop serving this pipeline and forget it.
    Remove(String),
    /// Persist these floors (they only ever rise).
    RaiseFloors(Vec<(String, VersionFloor)>),
    /// The status changed: report it to the control plane.
    Report,
}

/// Where a pipeline's newest revision stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Work {
    /// Nothing to do: the target is served.
    Serving,
    Fetching(BTreeSet<Digest>),
    Loading,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Slot {
    serving: Option<DesiredPipeline>,
    /// The revision the desired state asks for, when it is not the serving one.
    target: Option<DesiredPipeline>,
    work: Work,
}

/// The agent's reconciler.
#[derive(Debug, Clone)]
pub struct Reconciler {
    trust: Option<SignedTrustRoot>,
    floors: BTreeMap<String, VersionFloor>,
    artifacts: BTreeSet<Digest>,
    in_flight: BTreeSet<Digest>,
    applied_generation: u64,
    pipelines: BTreeMap<String, Slot>,
    /// Why the last trust root offered was refused.
    trust_error: Option<String>,
}

/// What the agent had persisted when it started.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub trust: Option<SignedTrustRoot>,
    pub floors: BTreeMap<String, VersionFloor>,
    pub artifacts: BTreeSet<Digest>,
    pub applied_generation: u64,
    /// The revisions that were serving (the driver has loaded them again).
    pub serving: Vec<DesiredPipeline>,
}

impl Reconciler {
    pub fn new(restored: Restored) -> Self {
        Self {
            trust: restored.trust,
            floors: restored.floors,
            artifacts: restored.artifacts,
            in_flight: BTreeSet::new(),
            applied_generation: restored.applied_generation,
            pipelines: restored
                .serving
                .into_iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        Slot {
                            serving: Some(p),
                            target: None,
                            work: Work::Serving,
                        },
                    )
                })
                .collect(),
            trust_error: None,
        }
    }

    /// The generation last applied (desired states below it are replays).
    pub fn applied_generation(&self) -> u64 {
        self.applied_generation
    }

    pub fn trust_root(&self) -> Option<&SignedTrustRoot> {
        self.trust.as_ref()
    }

    /// Applies a desired state whose signature, agent and generation the driver checked
    /// ([`tern_proto::message::SignedDesiredState::open`]).
    pub fn desired(&mut self, state: DesiredState, local_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(offered) = state.trust_root {
            match offered.accept(self.trust.as_ref()) {
                Ok(TrustUpdate::Accepted) => {
                    self.trust = Some(offered.clone());
                    self.trust_error = None;
                    actions.push(Action::PinTrustRoot(offered));
                }
                Ok(TrustUpdate::Unchanged) => self.trust_error = None,
                Err(e) => self.trust_error = Some(format!("trust root refused: {e}")),
            }
        }
        let clocks = Clocks {
            local_ms,
            control_plane_ms: state.issued_ms,
        };
        let wanted: BTreeSet<String> = state.pipelines.iter().map(|p| p.name.clone()).collect();
        for pipeline in state.pipelines {
            self.want(pipeline, clocks, &mut actions);
        }
        let gone: Vec<String> = self
            .pipelines
            .keys()
            .filter(|name| !wanted.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            self.pipelines.remove(&name);
            actions.push(Action::Remove(name));
        }
        self.applied_generation = state.generation;
        actions.push(Action::Report);
        actions
    }

    fn want(&mut self, pipeline: DesiredPipeline, clocks: Clocks, actions: &mut Vec<Action>) {
        let name = pipeline.name.clone();
        let slot = self.pipelines.entry(name.clone()).or_insert(Slot {
            serving: None,
            target: None,
            work: Work::Serving,
        });
        if slot.serving.as_ref().is_some_and(|s| s.same_run(&pipeline)) {
            // Back to (or still on) the serving revision: drop any other work.
            slot.target = None;
            slot.work = Work::Serving;
            let committed = pipeline.committed;
            slot.serving = Some(pipeline);
            if committed {
                self.commit(&name, actions);
            }
            return;
        }
        if let Some(target) = slot.target.as_mut().filter(|t| t.same_run(&pipeline)) {
            // Already working on it (or failed on it): only the committed flag may change.
            target.committed = pipeline.committed;
            return;
        }
        let verdict = self.check(&pipeline, clocks);
        let slot = self.pipelines.get_mut(&name).expect("inserted above");
        slot.target = Some(pipeline.clone());
        match verdict {
            Err(reason) => slot.work = Work::Failed(reason),
            Ok(()) => {
                let missing: BTreeSet<Digest> = pipeline
                    .releases()
                    .map(|r| r.signed.digest)
                    .filter(|d| !self.artifacts.contains(d))
                    .collect();
                if missing.is_empty() {
                    slot.work = Work::Loading;
                    actions.push(Action::Load(pipeline));
                    return;
                }
                for release in pipeline.releases() {
                    let digest = release.signed.digest;
                    if missing.contains(&digest) && self.in_flight.insert(digest) {
                        actions.push(Action::Fetch(release.clone()));
                    }
                }
                slot.work = Work::Fetching(missing);
            }
        }
    }

    /// The release checks of design section 2 for every step.
    fn check(&self, pipeline: &DesiredPipeline, clocks: Clocks) -> Result<(), String> {
        let trust = self
            .trust
            .as_ref()
            .ok_or("no trust root is pinned on this agent")?;
        for step in &pipeline.steps {
            let release = &step.release;
            release
                .check(
                    &trust.signed,
                    self.floors.get(&release.signed.name).copied(),
                    clocks,
                )
                .map_err(|e| format!("step {}: {e}", step.name))?;
        }
        // Variants are checked like steps (an experiment cannot bring back a version below
        // the floor), but do not raise floors when committed: both arms must stay loadable.
        for variant in &pipeline.variants {
            variant
                .release
                .check(
                    &trust.signed,
                    self.floors.get(&variant.release.signed.name).copied(),
                    clocks,
                )
                .map_err(|e| format!("variant {}: {e}", variant.name))?;
        }
        Ok(())
    }

    /// Raises the floors to the releases of the serving revision of `name`.
    fn commit(&mut self, name: &str, actions: &mut Vec<Action>) {
        let Some(serving) = self.pipelines.get(name).and_then(|s| s.serving.as_ref()) else {
            return;
        };
        let mut raised = Vec::new();
        // A step an experiment replaces does not run as such: its release raises no floor (the
        // variants' releases do not either, so every arm stays loadable).
        let replaced = |step: &str| serving.variants.iter().any(|v| v.step == step);
        for step in serving.steps.iter().filter(|s| !replaced(&s.name)) {
            let r = &step.release.signed;
            let floor = VersionFloor {
                version: r.version,
                digest: r.digest,
            };
            let higher = self
                .floors
                .get(&r.name)
                .is_none_or(|f| f.version < floor.version);
            if higher {
                self.floors.insert(r.name.clone(), floor);
                raised.push((r.name.clone(), floor));
            }
        }
        if !raised.is_empty() {
            actions.push(Action::RaiseFloors(raised));
        }
    }

    /// An artifact was downloaded and matched its release.
    pub fn artifact_stored(&mut self, digest: Digest) -> Vec<Action> {
        self.in_flight.remove(&digest);
        self.artifacts.insert(digest);
        let mut actions = Vec::new();
        for slot in self.pipelines.values_mut() {
            if let Work::Fetching(missing) = &mut slot.work {
                missing.remove(&digest);
                if missing.is_empty()
                    && let Some(target) = &slot.target
                {
                    slot.work = Work::Loading;
                    actions.push(Action::Load(target.clone()));
                }
            }
        }
        if !actions.is_empty() {
            actions.push(Action::Report);
        }
        actions
    }

    /// An artifact could not be downloaded or did not match its release.
    pub fn artifact_failed(&mut self, digest: Digest, reason: &str) -> Vec<Action> {
        self.in_flight.remove(&digest);
        let mut failed = false;
        for slot in self.pipelines.values_mut() {
            if matches!(&slot.work, Work::Fetching(missing) if missing.contains(&digest)) {
                slot.work = Work::Failed(reason.to_owned());
                failed = true;
            }
        }
        if failed { vec![Action::Report] } else { vec![] }
    }

    /// Whether `desired` is what `desired.name` is being loaded for now (a load that finishes
    /// after the experiment changed is stale).
    pub fn is_target(&self, desired: &DesiredPipeline) -> bool {
        self.pipelines
            .get(&desired.name)
            .and_then(|slot| slot.target.as_ref())
            .is_some_and(|t| t.same_run(desired))
    }

    /// A revision was compiled, loaded and warmed up.
    pub fn loaded(&mut self, name: &str, revision: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(slot) = self.pipelines.get_mut(name) else {
            return actions;
        };
        if slot.work != Work::Loading || slot.target.as_ref().map(|t| t.revision) != Some(revision)
        {
            return actions;
        }
        let target = slot.target.take();
        slot.work = Work::Serving;
        slot.serving = target.clone();
        if let Some(target) = target {
            let committed = target.committed;
            actions.push(Action::Activate(target));
            if committed {
                self.commit(name, &mut actions);
            }
        }
        actions.push(Action::Report);
        actions
    }

    /// A revision could not be loaded.
    pub fn load_failed(&mut self, name: &str, revision: u64, reason: &str) -> Vec<Action> {
        match self.pipelines.get_mut(name) {
            Some(slot) if slot.target.as_ref().map(|t| t.revision) == Some(revision) => {
                slot.work = Work::Failed(reason.to_owned());
                vec![Action::Report]
            }
            _ => vec![],
        }
    }

    /// Each pipeline's status, as reported to the control plane.
    pub fn status(&self) -> Vec<PipelineStatus> {
        self.pipelines
            .iter()
            .map(|(name, slot)| {
                let serving = slot.serving.as_ref().map(|s| s.revision);
                let revision = slot
                    .target
                    .as_ref()
                    .map(|t| t.revision)
                    .or(serving)
                    .unwrap_or(0);
                let (phase, message) = match &slot.work {
                    Work::Serving => (PipelinePhase::Ready, String::new()),
                    Work::Fetching(missing) => (
                        PipelinePhase::Fetching,
                        format!("{} artifact(s) to fetch", missing.len()),
                    ),
                    Work::Loading => (PipelinePhase::Loading, String::new()),
                    Work::Failed(reason) => (PipelinePhase::Failed, reason.clone()),
                };
                let message = match (&self.trust_error, message.is_empty()) {
                    (Some(trust), true) => trust.clone(),
                    _ => message,
                };
                PipelineStatus {
                    name: name.clone(),
                    revision,
                    phase,
                    message,
                    serving,
                }
            })
            .collect()
    }

    /// Why the last trust root was refused, if it was.
    pub fn trust_error(&self) -> Option<&str> {
        self.trust_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::desired::DesiredStep;
    use tern_proto::manifest::Device;
    use tern_proto::release::{ArtifactKind, Release};
    use tern_proto::signing::{SecretKey, Signed};
    use tern_proto::trust::TrustRoot;

    struct World {
        root: SecretKey,
        publisher: SecretKey,
        trust: SignedTrustRoot,
    }

    impl World {
        fn new() -> Self {
            let (root, publisher) = (SecretKey::generate(), SecretKey::generate());
            let mut trust = Signed::unsigned(TrustRoot {
                version: 1,
                root_keys: vec![root.public()],
                root_threshold: 1,
                publishers: vec![publisher.public()],
                threshold: 1,
                created_ms: 0,
            });
            trust.sign(&root);
            Self {
                root,
                publisher,
                trust,
            }
        }

        fn release(&self, name: &str, version: u64, key: &SecretKey) -> SignedRelease {
            let bytes = format!("{name} {version}");
            let mut r = Signed::unsigned(Release {
                name: name.into(),
                kind: ArtifactKind::Plugin,
                version,
                digest: Digest::of(bytes.as_bytes()),
                size: bytes.len() as u64,
                created_ms: 0,
                expires_ms: None,
                annotations: Default::default(),
            });
            r.sign(key);
            r
        }

        fn pipeline(&self, revision: u64, version: u64, committed: bool) -> DesiredPipeline {
            DesiredPipeline {
                name: "p".into(),
                revision,
                committed,
                warmup: None,
                monitored_step: None,
                variants: vec![],
                steps: vec![DesiredStep {
                    name: "post".into(),
                    release: self.release("topk", version, &self.publisher),
                    config: "{}".into(),
                    timeout_ms: None,
                    memory_mib: None,
                    device: Device::Auto,
                }],
            }
        }

        fn state(&self, generation: u64, pipelines: Vec<DesiredPipeline>) -> DesiredState {
            DesiredState {
                agent_id: "a".into(),
                generation,
                issued_ms: 1_000,
                trust_root: Some(self.trust.clone()),
                pipelines,
            }
        }
    }

    fn fetched(actions: &[Action]) -> Vec<Digest> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch(r) => Some(r.signed.digest),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fetches_loads_and_switches_to_a_new_revision() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let v1 = w.pipeline(1, 1, false);
        let actions = r.desired(w.state(1, vec![v1.clone()]), 1_000);
        assert!(matches!(actions[0], Action::PinTrustRoot(_)));
        let wanted = fetched(&actions);
        assert_eq!(wanted.len(), 1);
        assert_eq!(r.status()[0].phase, PipelinePhase::Fetching);
        // The same desired state again asks for nothing twice.
        assert!(fetched(&r.desired(w.state(1, vec![v1.clone()]), 1_000)).is_empty());
        let actions = r.artifact_stored(wanted[0]);
        assert!(matches!(&actions[0], Action::Load(p) if p.revision == 1));
        let actions = r.loaded("p", 1);
        assert!(matches!(&actions[0], Action::Activate(p) if p.revision == 1));
        let status = &r.status()[0];
        assert_eq!(
            (status.phase, status.serving, status.revision),
            (PipelinePhase::Ready, Some(1), 1)
        );
        assert_eq!(r.applied_generation(), 1);
    }

    #[test]
    fn rejects_release_signed_by_unknown_key_and_keeps_serving() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let v1 = w.pipeline(1, 1, true);
        let a = r.desired(w.state(1, vec![v1.clone()]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        r.loaded("p", 1);
        let mut forged = w.pipeline(2, 2, false);
        forged.steps[0].release = w.release("topk", 2, &SecretKey::generate());
        let actions = r.desired(w.state(2, vec![forged]), 1_000);
        assert!(
            fetched(&actions).is_empty(),
            "nothing fetched for a forged release"
        );
        let status = &r.status()[0];
        assert_eq!(status.phase, PipelinePhase::Failed);
        assert!(
            status.message.contains("signed by 0 trusted key"),
            "{status:?}"
        );
        assert_eq!(status.serving, Some(1), "the old revision keeps serving");
    }

    #[test]
    fn floors_rise_on_commit_so_a_canary_can_roll_back_but_not_below() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        // v1 committed, v2 on trial.
        let v1 = w.pipeline(1, 1, true);
        let a = r.desired(w.state(1, vec![v1.clone()]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        let a = r.loaded("p", 1);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::RaiseFloors(f) if f[0].1.version == 1))
        );
        let v2 = w.pipeline(2, 2, false);
        let a = r.desired(w.state(2, vec![v2.clone()]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        let a = r.loaded("p", 2);
        assert!(!a.iter().any(|a| matches!(a, Action::RaiseFloors(_))));
        // The canary fails: back to revision 1, whose artifact is still here.
        let a = r.desired(w.state(3, vec![v1.clone()]), 1_000);
        assert!(
            matches!(a.first(), Some(Action::Load(p)) if p.revision == 1),
            "{a:?}"
        );
        r.loaded("p", 1);
        assert_eq!(r.status()[0].serving, Some(1));
        // v3 completes its rollout: now v1 and v2 are below the floor.
        let v3 = w.pipeline(4, 3, true);
        let a = r.desired(w.state(4, vec![v3]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        let a = r.loaded("p", 4);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::RaiseFloors(f) if f[0].1.version == 3))
        );
        r.desired(w.state(5, vec![w.pipeline(5, 2, false)]), 1_000);
        let status = &r.status()[0];
        assert_eq!(status.phase, PipelinePhase::Failed);
        assert!(
            status.message.contains("below the version floor 3"),
            "{status:?}"
        );
        assert_eq!(status.serving, Some(4));
    }

    #[test]
    fn an_experiment_fetches_every_arm_and_raises_no_floor_for_its_step() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let mut p = w.pipeline(1, 3, true);
        for version in [2, 3] {
            p.variants.push(tern_proto::desired::DesiredVariant {
                name: format!("topk:{version}"),
                weight: 50,
                step: "post".into(),
                release: w.release("topk", version, &w.publisher),
            });
        }
        let a = r.desired(w.state(1, vec![p.clone()]), 1_000);
        let digests = fetched(&a);
        assert_eq!(digests.len(), 2, "the step's and the other arm's: {a:?}");
        for digest in digests {
            r.artifact_stored(digest);
        }
        let a = r.loaded("p", 1);
        assert!(
            !a.iter().any(|a| matches!(a, Action::RaiseFloors(_))),
            "committing an experiment raises no floor: {a:?}"
        );
        // New weights are a new run of the same revision: loaded again.
        p.variants[0].weight = 90;
        p.variants[1].weight = 10;
        let a = r.desired(w.state(2, vec![p]), 1_000);
        assert!(matches!(a.first(), Some(Action::Load(_))), "{a:?}");
    }

    #[test]
    fn a_forged_trust_root_is_refused_and_reported() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        r.desired(w.state(1, vec![w.pipeline(1, 1, false)]), 1_000);
        let attacker = SecretKey::generate();
        let mut forged = Signed::unsigned(TrustRoot {
            version: 2,
            root_keys: vec![attacker.public()],
            root_threshold: 1,
            publishers: vec![attacker.public()],
            threshold: 1,
            created_ms: 0,
        });
        forged.sign(&attacker);
        let mut state = w.state(2, vec![w.pipeline(1, 1, false)]);
        state.trust_root = Some(forged);
        let actions = r.desired(state, 1_000);
        assert!(!actions.iter().any(|a| matches!(a, Action::PinTrustRoot(_))));
        assert!(
            r.trust_error()
                .is_some_and(|e| e.contains("not signed by the current root"))
        );
        assert_eq!(r.trust_root().map(|t| t.signed.version), Some(1));
        // A rotation signed by the current root is taken.
        let mut rotated = Signed::unsigned(TrustRoot {
            version: 2,
            ..w.trust.signed.clone()
        });
        rotated.sign(&w.root);
        let mut state = w.state(3, vec![w.pipeline(1, 1, false)]);
        state.trust_root = Some(rotated);
        assert!(matches!(
            r.desired(state, 1_000)[0],
            Action::PinTrustRoot(_)
        ));
    }

    #[test]
    fn removes_pipelines_no_longer_wanted_and_reports_fetch_failures() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let a = r.desired(w.state(1, vec![w.pipeline(1, 1, false)]), 1_000);
        let digest = fetched(&a)[0];
        r.artifact_failed(digest, "digest mismatch");
        assert_eq!(r.status()[0].phase, PipelinePhase::Failed);
        let a = r.desired(w.state(2, vec![]), 1_000);
        assert!(a.contains(&Action::Remove("p".into())));
        assert!(r.status().is_empty());
    }
}
