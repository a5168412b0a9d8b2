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
//!   the last committed release is refused for good. Floors rise only from releases that passed
//!   the checks: a desired pipeline that keeps the serving revision's number but changes a step
//!   or a release is a new run, checked like any other ([`DesiredPipeline::same_run`]).
//! - One generation, one content: a desired state of the generation already applied must say
//!   the same as before, apart from its signing time.
//! - Serving revisions are verified again at every start and after every trust-root rotation;
//!   one that no longer verifies stops serving and is reported.
//! - A revision put aside for the agent's deaths under it ([`crate::exits`]) is neither loaded
//!   nor served while desired states name it: it is reported failed with why. A desired state
//!   that names another revision of the pipeline, or not the pipeline, drops the mark.

use std::collections::{BTreeMap, BTreeSet};

use tern_proto::desired::{DesiredPipeline, DesiredState, DesiredStateError};
use tern_proto::message::{PipelinePhase, PipelineStatus};
use tern_proto::release::{Clocks, Digest, SignedRelease, VersionFloor};
use tern_proto::trust::{Expiry, SignedTrustRoot, TrustUpdate};

use crate::exits::PutAside;

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
    /// Persist this as the serving revision's record (the same run, with other signatures).
    Record(DesiredPipeline),
    /// Stop serving this pipeline's revision (it no longer verifies) and forget it as active;
    /// the pipeline stays wanted and its failure is reported.
    Stop(String),
    /// Persist these floors (they only ever rise).
    RaiseFloors(Vec<(String, VersionFloor)>),
    /// The status changed: report it to the control plane.
    Report,
    /// Forget that this pipeline's revision was put aside: desired states no longer name it.
    ClearPutAside(String),
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
    /// [`DesiredState::content_digest`] of the generation applied, when known.
    applied_content: Option<Digest>,
    pipelines: BTreeMap<String, Slot>,
    /// Why the last trust root offered was refused.
    trust_error: Option<String>,
    /// Revisions put aside for the agent's deaths under them, by pipeline.
    put_aside: BTreeMap<String, PutAside>,
}

/// What the agent had persisted when it started.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub trust: Option<SignedTrustRoot>,
    pub floors: BTreeMap<String, VersionFloor>,
    pub artifacts: BTreeSet<Digest>,
    pub applied_generation: u64,
    /// The content digest of that generation (absent in state written by older agents).
    pub applied_content: Option<Digest>,
    /// The revisions that were serving; [`Reconciler::reverify`] says which may serve again.
    /// None of them is put aside: the driver serves the last-known-good one instead.
    pub serving: Vec<DesiredPipeline>,
    /// Revisions put aside for the agent's deaths under them, by pipeline.
    pub put_aside: BTreeMap<String, PutAside>,
}

impl Reconciler {
    pub fn new(restored: Restored) -> Self {
        let mut reconciler = Self {
            trust: restored.trust,
            floors: restored.floors,
            artifacts: restored.artifacts,
            in_flight: BTreeSet::new(),
            applied_generation: restored.applied_generation,
            applied_content: restored.applied_content,
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
            put_aside: BTreeMap::new(),
        };
        for (name, aside) in restored.put_aside {
            // Reported failed until a desired state names this revision or another.
            let slot = reconciler.pipelines.entry(name.clone()).or_insert(Slot {
                serving: None,
                target: None,
                work: Work::Serving,
            });
            slot.work = Work::Failed(aside.reason.clone());
            reconciler.put_aside.insert(name, aside);
        }
        reconciler
    }

    /// The generation last applied (desired states below it are replays).
    pub fn applied_generation(&self) -> u64 {
        self.applied_generation
    }

    /// The content digest of the generation last applied.
    pub fn applied_content(&self) -> Option<Digest> {
        self.applied_content
    }

    /// The revisions serving now (at start: the ones to load again).
    pub fn serving(&self) -> impl Iterator<Item = &DesiredPipeline> {
        self.pipelines.values().filter_map(|s| s.serving.as_ref())
    }

    /// Forgets a serving revision the driver could not load again at start; the next desired
    /// state installs it from scratch.
    pub fn forget(&mut self, name: &str) {
        if let Some(slot) = self.pipelines.get_mut(name) {
            slot.serving = None;
            if slot.target.is_none() {
                self.pipelines.remove(name);
            }
        }
    }

    /// Checks every serving revision and every revision in the works against the pinned trust
    /// root and the floors again (at start, and after the trust root changed): a serving
    /// revision that no longer verifies stops serving ([`Action::Stop`]); the next report says
    /// why.
    pub fn reverify(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let names: Vec<String> = self.pipelines.keys().cloned().collect();
        for name in names {
            let slot = &self.pipelines[&name];
            let serving = slot.serving.as_ref().map(|p| self.check_trusted(p));
            let target = slot
                .target
                .as_ref()
                .filter(|_| !matches!(slot.work, Work::Failed(_)))
                .map(|p| self.check_trusted(p));
            let Some(slot) = self.pipelines.get_mut(&name) else {
                continue;
            };
            if let Some(Err(reason)) = target {
                slot.work = Work::Failed(reason);
            }
            if let Some(Err(reason)) = serving {
                let revision = slot.serving.take().map_or(0, |p| p.revision);
                actions.push(Action::Stop(name.clone()));
                if slot.target.is_none() || matches!(slot.work, Work::Failed(_)) {
                    slot.work = Work::Failed(format!(
                        "revision {revision} no longer verifies and stopped serving: {reason}"
                    ));
                }
            }
        }
        actions
    }

    pub fn trust_root(&self) -> Option<&SignedTrustRoot> {
        self.trust.as_ref()
    }

    /// Walks the control plane's chain of trust roots (any order; the control plane sends
    /// them oldest first) from the pinned one: each root one version above the pinned one is
    /// pinned if it passes design section 2's checks against it, until one is refused or the
    /// chain ends. Serving revisions are checked again after a rotation. Nothing is pinned
    /// without a root to start from (the first comes with enrollment).
    pub fn walk_trust_chain(&mut self, chain: &[SignedTrustRoot]) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(mut pinned) = self.trust.clone() else {
            return actions;
        };
        let mut ahead: Vec<&SignedTrustRoot> = chain
            .iter()
            .filter(|r| r.signed.version > pinned.signed.version)
            .collect();
        ahead.sort_by_key(|r| r.signed.version);
        let mut refused = None;
        for root in ahead {
            match root.accept(Some(&pinned)) {
                Ok(TrustUpdate::Accepted) => {
                    pinned = root.clone();
                    actions.push(Action::PinTrustRoot(root.clone()));
                }
                Ok(TrustUpdate::Unchanged) => {}
                Err(e) => {
                    refused = Some(format!("trust root refused: {e}"));
                    break;
                }
            }
        }
        if actions.is_empty() {
            if refused.is_some() {
                self.trust_error = refused;
                actions.push(Action::Report);
            }
            return actions;
        }
        self.trust = Some(pinned);
        self.trust_error = refused;
        actions.extend(self.reverify());
        actions.push(Action::Report);
        actions
    }

    /// Applies a desired state whose signature, agent and generation the driver checked
    /// ([`tern_proto::message::SignedDesiredState::open`]). A state of the generation already
    /// applied with other content is refused, changing nothing.
    pub fn desired(
        &mut self,
        state: DesiredState,
        local_ms: u64,
    ) -> Result<Vec<Action>, DesiredStateError> {
        let content = state.content_digest();
        if state.generation == self.applied_generation
            && self.applied_content.is_some_and(|c| c != content)
        {
            return Err(DesiredStateError::Equivocation {
                generation: state.generation,
            });
        }
        let mut actions = Vec::new();
        let mut rotated = false;
        if let Some(offered) = state.trust_root {
            match offered.accept(self.trust.as_ref()) {
                Ok(TrustUpdate::Accepted) => {
                    self.trust = Some(offered.clone());
                    self.trust_error = None;
                    actions.push(Action::PinTrustRoot(offered));
                    rotated = true;
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
            if self.put_aside.remove(&name).is_some() {
                actions.push(Action::ClearPutAside(name.clone()));
            }
            actions.push(Action::Remove(name));
        }
        if rotated {
            // What the old root allowed may not be allowed any more.
            actions.extend(self.reverify());
        }
        self.applied_generation = state.generation;
        self.applied_content = Some(content);
        actions.push(Action::Report);
        Ok(actions)
    }

    fn want(&mut self, pipeline: DesiredPipeline, clocks: Clocks, actions: &mut Vec<Action>) {
        let name = pipeline.name.clone();
        if self
            .put_aside
            .get(&name)
            .is_some_and(|aside| aside.revision != pipeline.revision)
        {
            self.put_aside.remove(&name);
            actions.push(Action::ClearPutAside(name.clone()));
        }
        let slot = self.pipelines.entry(name.clone()).or_insert(Slot {
            serving: None,
            target: None,
            work: Work::Serving,
        });
        let same = slot.serving.as_ref().is_some_and(|s| s.same_run(&pipeline));
        // The same run may come with other signatures (a co-signature added before the trust
        // root asks for it): taken only if they verify, else the copy that was checked stays.
        let resigned = same && self.check_trusted(&pipeline).is_ok();
        let slot = self.pipelines.get_mut(&name).expect("inserted above");
        if let Some(serving) = slot.serving.as_mut().filter(|_| same) {
            // Back to (or still on) the serving revision: drop any other work.
            if resigned && serving.releases().ne(pipeline.releases()) {
                *serving = pipeline.clone();
                actions.push(Action::Record(pipeline.clone()));
            }
            serving.committed = pipeline.committed;
            slot.target = None;
            slot.work = Work::Serving;
            if pipeline.committed {
                self.commit(&name, actions);
            }
            return;
        }
        if let Some(target) = slot.target.as_mut().filter(|t| t.same_run(&pipeline)) {
            // Already working on it (or failed on it): only the committed flag may change.
            target.committed = pipeline.committed;
            return;
        }
        let verdict = match self.put_aside.get(&name) {
            Some(aside) => Err(aside.reason.clone()),
            None => self.check(&pipeline, clocks),
        };
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

    /// The release checks of design section 2 for every step and variant.
    fn check(&self, pipeline: &DesiredPipeline, clocks: Clocks) -> Result<(), String> {
        self.check_with(pipeline, Some(clocks))
    }

    /// The checks a serving revision must keep passing: signatures by the pinned trust root and
    /// the floors (a release that expires while it serves keeps serving).
    fn check_trusted(&self, pipeline: &DesiredPipeline) -> Result<(), String> {
        self.check_with(pipeline, None)
    }

    fn check_with(&self, pipeline: &DesiredPipeline, clocks: Option<Clocks>) -> Result<(), String> {
        let trust = self
            .trust
            .as_ref()
            .ok_or("no trust root is pinned on this agent")?;
        if let Some(clocks) = clocks
            && let Expiry::Expired { expires_ms } =
                (trust.signed).expiry(clocks.local_ms.max(clocks.control_plane_ms))
        {
            return Err(format!(
                "trust root version {} expired at {}: no new release is accepted until the root signs a new one",
                trust.signed.version,
                tern_clock::rfc3339(expires_ms)
            ));
        }
        let check = |release: &SignedRelease| {
            let floor = self.floors.get(&release.signed.name).copied();
            match clocks {
                Some(clocks) => release.check(&trust.signed, floor, clocks),
                None => release.check_trusted(&trust.signed, floor),
            }
        };
        for step in &pipeline.steps {
            check(&step.release).map_err(|e| format!("step {}: {e}", step.name))?;
        }
        // Variants are checked like steps (an experiment cannot bring back a version below
        // the floor), but do not raise floors when committed: both arms must stay loadable.
        for variant in &pipeline.variants {
            check(&variant.release).map_err(|e| format!("variant {}: {e}", variant.name))?;
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

    /// Loading `name`'s `revision` found artifacts on disk that no longer match their releases
    /// (the driver deleted them): they are fetched again before the revision loads.
    pub fn artifacts_lost(&mut self, name: &str, revision: u64, lost: &[Digest]) -> Vec<Action> {
        for digest in lost {
            self.artifacts.remove(digest);
        }
        let mut actions = Vec::new();
        let Some(slot) = self.pipelines.get_mut(name) else {
            return actions;
        };
        let Some(target) = slot.target.as_ref().filter(|t| t.revision == revision) else {
            return actions;
        };
        if slot.work != Work::Loading {
            return actions;
        }
        for release in target.releases() {
            let digest = release.signed.digest;
            if lost.contains(&digest) && self.in_flight.insert(digest) {
                actions.push(Action::Fetch(release.clone()));
            }
        }
        slot.work = Work::Fetching(lost.iter().copied().collect());
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
                let aside = self.put_aside.get(name).map(|a| a.revision);
                let revision = slot
                    .target
                    .as_ref()
                    .map(|t| t.revision)
                    .or(aside)
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

    /// What the operator should know about this agent's trust before it becomes a failure.
    pub fn warnings(&self, now_ms: u64) -> Vec<String> {
        let Some(trust) = &self.trust else {
            return Vec::new();
        };
        let version = trust.signed.version;
        match trust.signed.expiry(now_ms) {
            Expiry::Valid => Vec::new(),
            Expiry::Soon { expires_ms } => vec![format!(
                "trust root version {version} expires at {}: have the root sign a new one (`ternctl trust rotate`)",
                tern_clock::rfc3339(expires_ms)
            )],
            Expiry::Expired { expires_ms } => vec![format!(
                "trust root version {version} expired at {}: new releases are refused; what runs keeps running",
                tern_clock::rfc3339(expires_ms)
            )],
        }
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
            let trust = SignedTrustRoot::single_keys(1, &root, publisher.public(), 0);
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

    impl Reconciler {
        /// A desired state the test expects to be accepted.
        fn apply(&mut self, state: DesiredState, local_ms: u64) -> Vec<Action> {
            self.desired(state, local_ms).expect("accepted")
        }
    }

    /// `r` serving `p` (all its artifacts fetched and loaded).
    fn serve(r: &mut Reconciler, w: &World, generation: u64, p: &DesiredPipeline) -> Vec<Action> {
        let a = r.apply(w.state(generation, vec![p.clone()]), 1_000);
        for digest in fetched(&a) {
            r.artifact_stored(digest);
        }
        r.loaded(&p.name, p.revision)
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
        let actions = r.apply(w.state(1, vec![v1.clone()]), 1_000);
        assert!(matches!(actions[0], Action::PinTrustRoot(_)));
        let wanted = fetched(&actions);
        assert_eq!(wanted.len(), 1);
        assert_eq!(r.status()[0].phase, PipelinePhase::Fetching);
        // The same desired state again asks for nothing twice.
        assert!(fetched(&r.apply(w.state(1, vec![v1.clone()]), 1_000)).is_empty());
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
        let a = r.apply(w.state(1, vec![v1.clone()]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        r.loaded("p", 1);
        let mut forged = w.pipeline(2, 2, false);
        forged.steps[0].release = w.release("topk", 2, &SecretKey::generate());
        let actions = r.apply(w.state(2, vec![forged]), 1_000);
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
        let a = r.apply(w.state(1, vec![v1.clone()]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        let a = r.loaded("p", 1);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::RaiseFloors(f) if f[0].1.version == 1))
        );
        let v2 = w.pipeline(2, 2, false);
        let a = r.apply(w.state(2, vec![v2.clone()]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        let a = r.loaded("p", 2);
        assert!(!a.iter().any(|a| matches!(a, Action::RaiseFloors(_))));
        // The canary fails: back to revision 1, whose artifact is still here.
        let a = r.apply(w.state(3, vec![v1.clone()]), 1_000);
        assert!(
            matches!(a.first(), Some(Action::Load(p)) if p.revision == 1),
            "{a:?}"
        );
        r.loaded("p", 1);
        assert_eq!(r.status()[0].serving, Some(1));
        // v3 completes its rollout: now v1 and v2 are below the floor.
        let v3 = w.pipeline(4, 3, true);
        let a = r.apply(w.state(4, vec![v3]), 1_000);
        r.artifact_stored(fetched(&a)[0]);
        let a = r.loaded("p", 4);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::RaiseFloors(f) if f[0].1.version == 3))
        );
        r.apply(w.state(5, vec![w.pipeline(5, 2, false)]), 1_000);
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
        let a = r.apply(w.state(1, vec![p.clone()]), 1_000);
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
        let a = r.apply(w.state(2, vec![p]), 1_000);
        assert!(matches!(a.first(), Some(Action::Load(_))), "{a:?}");
    }

    #[test]
    fn a_forged_trust_root_is_refused_and_reported() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        r.apply(w.state(1, vec![w.pipeline(1, 1, false)]), 1_000);
        let attacker = SecretKey::generate();
        let forged = SignedTrustRoot::single_keys(2, &attacker, attacker.public(), 0);
        let mut state = w.state(2, vec![w.pipeline(1, 1, false)]);
        state.trust_root = Some(forged);
        let actions = r.apply(state, 1_000);
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
        assert!(matches!(r.apply(state, 1_000)[0], Action::PinTrustRoot(_)));
    }

    #[test]
    fn an_agent_behind_by_three_rotations_walks_the_chain_to_the_newest_root() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        serve(&mut r, &w, 1, &w.pipeline(1, 1, false));
        // Three rotations, each to new root keys, each signed by the one before.
        let mut chain = vec![w.trust.clone()];
        let keys: Vec<SecretKey> = (2..=4).map(|_| SecretKey::generate()).collect();
        for (i, key) in keys.iter().enumerate() {
            let mut next = Signed::unsigned(TrustRoot {
                version: i as u64 + 2,
                root_keys: vec![key.public()],
                ..w.trust.signed.clone()
            });
            next.sign(key);
            next.sign(if i == 0 { &w.root } else { &keys[i - 1] });
            chain.push(next);
        }
        // The newest alone is a jump the agent refuses.
        let mut state = w.state(2, vec![w.pipeline(1, 1, false)]);
        state.trust_root = chain.last().cloned();
        r.apply(state, 1_000);
        assert!(
            r.trust_error()
                .is_some_and(|e| e.contains("skips versions")),
            "{:?}",
            r.trust_error()
        );
        // The chain (in any order), each checked against the one before.
        let mut shuffled = chain.clone();
        shuffled.reverse();
        let actions = r.walk_trust_chain(&shuffled);
        let pinned: Vec<u64> = actions
            .iter()
            .filter_map(|a| match a {
                Action::PinTrustRoot(root) => Some(root.signed.version),
                _ => None,
            })
            .collect();
        assert_eq!(pinned, [2, 3, 4]);
        assert_eq!(r.trust_root().map(|t| t.signed.version), Some(4));
        assert_eq!(r.trust_error(), None);
        assert_eq!(r.serving().count(), 1, "what runs still verifies");
        assert!(
            r.walk_trust_chain(&chain).is_empty(),
            "nothing left to walk"
        );
    }

    #[test]
    fn a_chain_stops_at_the_first_root_the_one_before_did_not_sign() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        serve(&mut r, &w, 1, &w.pipeline(1, 1, false));
        let mut v2 = Signed::unsigned(TrustRoot {
            version: 2,
            ..w.trust.signed.clone()
        });
        v2.sign(&w.root);
        let attacker = SecretKey::generate();
        let forged = SignedTrustRoot::single_keys(3, &attacker, attacker.public(), 0);
        let actions = r.walk_trust_chain(&[w.trust.clone(), v2, forged]);
        assert!(matches!(&actions[0], Action::PinTrustRoot(root) if root.signed.version == 2));
        assert_eq!(r.trust_root().map(|t| t.signed.version), Some(2));
        assert!(
            r.trust_error()
                .is_some_and(|e| e.contains("version 3 is not signed by the current root")),
            "{:?}",
            r.trust_error()
        );
    }

    #[test]
    fn a_revision_put_aside_is_not_loaded_while_named_and_is_forgotten_once_not() {
        let w = World::new();
        let (v1, v2) = (w.pipeline(1, 1, false), w.pipeline(2, 2, false));
        // At start the agent serves v1 instead of v2, which it put aside.
        let aside = PutAside {
            revision: 2,
            reason: "revision 2 put aside: the agent exited 3 times".into(),
        };
        let mut r = Reconciler::new(Restored {
            trust: Some(w.trust.clone()),
            applied_generation: 4,
            serving: vec![v1.clone()],
            put_aside: [("p".to_owned(), aside.clone())].into(),
            ..Restored::default()
        });
        let status = &r.status()[0];
        assert_eq!(
            (status.phase, status.revision, status.serving),
            (PipelinePhase::Failed, 2, Some(1))
        );
        assert_eq!(status.message, aside.reason);
        // The control plane still names v2: nothing is fetched or loaded.
        let actions = r.apply(w.state(5, vec![v2.clone()]), 1_000);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Fetch(_) | Action::Load(_))),
            "{actions:?}"
        );
        assert_eq!(r.status()[0].message, aside.reason);
        // A rollback names v1: the mark goes, and a later state may name v2 anew.
        let actions = r.apply(w.state(6, vec![v1.clone()]), 1_000);
        assert!(actions.contains(&Action::ClearPutAside("p".into())));
        assert_eq!(r.status()[0].phase, PipelinePhase::Ready);
        let actions = r.apply(w.state(7, vec![v2]), 1_000);
        assert!(actions.iter().any(|a| matches!(a, Action::Fetch(_))));
    }

    #[test]
    fn removes_pipelines_no_longer_wanted_and_reports_fetch_failures() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let a = r.apply(w.state(1, vec![w.pipeline(1, 1, false)]), 1_000);
        let digest = fetched(&a)[0];
        r.artifact_failed(digest, "digest mismatch");
        assert_eq!(r.status()[0].phase, PipelinePhase::Failed);
        let a = r.apply(w.state(2, vec![]), 1_000);
        assert!(a.contains(&Action::Remove("p".into())));
        assert!(r.status().is_empty());
    }

    #[test]
    fn a_changed_step_under_the_serving_revision_number_is_checked_like_a_new_revision() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let v1 = w.pipeline(1, 1, false);
        serve(&mut r, &w, 1, &v1);
        // A compromised control plane keeps revision 1 but swaps in a release of its own,
        // committed so that it would raise the floor.
        let mut forged = w.pipeline(1, 9, true);
        forged.steps[0].release = w.release("topk", 9, &SecretKey::generate());
        let a = r.apply(w.state(2, vec![forged]), 1_000);
        assert!(fetched(&a).is_empty(), "{a:?}");
        assert!(
            !a.iter().any(|a| matches!(a, Action::RaiseFloors(_))),
            "{a:?}"
        );
        let status = &r.status()[0];
        assert_eq!(status.phase, PipelinePhase::Failed);
        assert!(status.message.contains("trusted key"), "{status:?}");
        assert_eq!(
            status.serving,
            Some(1),
            "the checked revision keeps serving"
        );
        // A genuine change under the same number is a new run: fetched and loaded.
        let changed = w.pipeline(1, 2, false);
        let a = r.apply(w.state(3, vec![changed]), 1_000);
        assert_eq!(fetched(&a).len(), 1, "{a:?}");
        // Committing the original raises the floor from the copy that was checked.
        let a = r.apply(w.state(4, vec![w.pipeline(1, 1, true)]), 1_000);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::RaiseFloors(f) if f[0].1.version == 1)),
            "{a:?}"
        );
    }

    #[test]
    fn an_equal_generation_with_other_content_is_refused() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        r.apply(w.state(5, vec![w.pipeline(1, 1, false)]), 1_000);
        let mut resigned = w.state(5, vec![w.pipeline(1, 1, false)]);
        resigned.issued_ms = 9_999;
        assert!(
            r.desired(resigned, 1_000).is_ok(),
            "the same content signed later is the same generation"
        );
        let other = w.state(5, vec![w.pipeline(2, 2, false)]);
        assert_eq!(
            r.desired(other, 1_000),
            Err(DesiredStateError::Equivocation { generation: 5 })
        );
        assert_eq!(r.status()[0].revision, 1, "nothing changed");
        // A restarted agent remembers the content of the generation it applied.
        let mut again = Reconciler::new(Restored {
            applied_generation: 5,
            applied_content: r.applied_content(),
            ..Restored::default()
        });
        assert!(again.desired(w.state(5, vec![]), 1_000).is_err());
        assert!(again.desired(w.state(6, vec![]), 1_000).is_ok());
    }

    #[test]
    fn a_trust_rotation_that_drops_a_publisher_stops_what_only_it_signed() {
        let w = World::new();
        let other = SecretKey::generate();
        let mut both = Signed::unsigned(TrustRoot {
            version: 2,
            publishers: vec![w.publisher.public(), other.public()],
            ..w.trust.signed.clone()
        });
        both.sign(&w.root);
        let mut r = Reconciler::new(Restored::default());
        let mut state = w.state(1, vec![]);
        state.trust_root = Some(both);
        r.apply(state, 1_000);
        // `p` is signed by the first publisher only, `q` by the other one.
        let p = w.pipeline(1, 1, true);
        let mut q = w.pipeline(1, 1, true);
        q.name = "q".into();
        q.steps[0].release = w.release("other", 1, &other);
        let mut state = w.state(2, vec![p.clone(), q.clone()]);
        state.trust_root = None;
        let a = r.apply(state, 1_000);
        for digest in fetched(&a) {
            r.artifact_stored(digest);
        }
        r.loaded("p", 1);
        r.loaded("q", 1);
        assert_eq!(r.serving().count(), 2);
        // The root drops the first publisher.
        let mut dropped = Signed::unsigned(TrustRoot {
            version: 3,
            publishers: vec![other.public()],
            ..w.trust.signed.clone()
        });
        dropped.sign(&w.root);
        let mut state = w.state(3, vec![p, q]);
        state.trust_root = Some(dropped);
        let a = r.apply(state, 1_000);
        assert!(a.contains(&Action::Stop("p".into())), "{a:?}");
        assert!(!a.contains(&Action::Stop("q".into())), "{a:?}");
        let status = r.status();
        assert_eq!(status[0].name, "p");
        assert_eq!(status[0].serving, None);
        assert_eq!(status[0].phase, PipelinePhase::Failed);
        assert!(
            status[0].message.contains("no longer verifies"),
            "{status:?}"
        );
        assert_eq!(status[1].serving, Some(1), "q still serves");
    }

    #[test]
    fn at_start_a_restored_revision_that_no_longer_verifies_does_not_serve() {
        let w = World::new();
        let good = w.pipeline(1, 3, true);
        let mut forged = w.pipeline(1, 4, true);
        forged.name = "forged".into();
        forged.steps[0].release = w.release("topk", 4, &SecretKey::generate());
        let mut below = w.pipeline(1, 2, true);
        below.name = "below".into();
        let mut floors = BTreeMap::new();
        floors.insert(
            "topk".to_owned(),
            VersionFloor {
                version: 3,
                digest: good.steps[0].release.signed.digest,
            },
        );
        let mut r = Reconciler::new(Restored {
            trust: Some(w.trust.clone()),
            floors,
            serving: vec![good, forged, below],
            ..Restored::default()
        });
        let a = r.reverify();
        assert!(a.contains(&Action::Stop("forged".into())), "{a:?}");
        assert!(a.contains(&Action::Stop("below".into())), "{a:?}");
        let serving: Vec<&str> = r.serving().map(|p| p.name.as_str()).collect();
        assert_eq!(serving, ["p"]);
        let below = r.status().into_iter().find(|s| s.name == "below");
        assert!(
            below.is_some_and(|s| s.message.contains("below the version floor 3")),
            "{:?}",
            r.status()
        );
    }

    #[test]
    fn an_artifact_corrupt_on_disk_is_fetched_again() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let v1 = w.pipeline(1, 1, false);
        let a = r.apply(w.state(1, vec![v1.clone()]), 1_000);
        let digest = fetched(&a)[0];
        let a = r.artifact_stored(digest);
        assert!(matches!(a[0], Action::Load(_)));
        let a = r.artifacts_lost("p", 1, &[digest]);
        assert_eq!(fetched(&a), [digest]);
        assert_eq!(r.status()[0].phase, PipelinePhase::Fetching);
        let a = r.artifact_stored(digest);
        assert!(matches!(a[0], Action::Load(_)), "{a:?}");
    }

    #[test]
    fn other_signatures_on_the_serving_revision_are_taken_only_if_they_verify() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let v1 = w.pipeline(1, 1, true);
        serve(&mut r, &w, 1, &v1);
        let mut cosigned = v1.clone();
        cosigned.steps[0].release.sign(&SecretKey::generate());
        let a = r.apply(w.state(2, vec![cosigned.clone()]), 1_000);
        assert!(a.contains(&Action::Record(cosigned)), "{a:?}");
        // Signatures of strangers only: the checked copy stays, nothing is reloaded.
        let mut stripped = w.pipeline(1, 1, true);
        stripped.steps[0].release = w.release("topk", 1, &SecretKey::generate());
        let a = r.apply(w.state(3, vec![stripped]), 1_000);
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::Record(_) | Action::Load(_) | Action::Stop(_))),
            "{a:?}"
        );
        assert!(r.reverify().is_empty(), "the serving copy still verifies");
    }

    #[test]
    fn an_expired_trust_root_refuses_new_releases_and_keeps_what_runs() {
        let w = World::new();
        let mut r = Reconciler::new(Restored::default());
        let v1 = w.pipeline(1, 1, true);
        serve(&mut r, &w, 1, &v1);
        assert!(r.warnings(1_000).is_empty());
        let mut expiring = Signed::unsigned(TrustRoot {
            version: 2,
            expires_ms: Some(100_000_000_000),
            ..w.trust.signed.clone()
        });
        expiring.sign(&w.root);
        let mut state = w.state(2, vec![v1.clone()]);
        state.trust_root = Some(expiring);
        r.apply(state, 1_000);
        let soon = 100_000_000_000 - 24 * 3600 * 1000;
        assert!(
            r.warnings(soon)[0].contains("expires at"),
            "{:?}",
            r.warnings(soon)
        );
        // Past the expiry (by the agent's clock): the serving revision stays, a new one is
        // refused.
        let later = 100_000_000_001;
        assert!(r.warnings(later)[0].contains("expired"));
        r.apply(w.state(3, vec![v1.clone()]), later);
        assert_eq!(r.status()[0].serving, Some(1));
        assert_eq!(r.status()[0].phase, PipelinePhase::Ready);
        let a = r.apply(w.state(4, vec![w.pipeline(2, 2, false)]), later);
        assert!(fetched(&a).is_empty());
        let status = &r.status()[0];
        assert_eq!(status.phase, PipelinePhase::Failed);
        assert!(status.message.contains("expired"), "{status:?}");
        assert_eq!(status.serving, Some(1));
    }
}
