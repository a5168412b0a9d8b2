//! An in-memory fleet: the control plane's deployment core (`deploy::plan`, with the rollout
//! planner inside) and N agents' reconcilers wired together on a virtual clock, with no socket,
//! no disk and no sleep. Whole rollouts — canary waves, a failing wave rolled back, agents
//! offline during an apply, pause and resume, A/B variants — run in milliseconds.
//!
//! What is real: the planner, the deployment plan, desired-state generations (kept in the
//! control plane's `DesiredStore`, on the in-memory backend) and the agents' reconcilers,
//! which check every release against a real trust root (Ed25519 signatures, version floors).
//! What is simulated: the network (a desired state reaches an online agent at the next step;
//! an offline one gets the newest when it is back), fetching and loading (they succeed at once
//! unless the scenario says a revision fails to load on an agent), traffic (every online
//! agent serves [`REQUESTS_PER_STEP`] requests a step, failing on the revisions the scenario
//! marks bad for it), and crashes: an agent serving a revision the scenario says kills it dies
//! in that step and its supervisor starts it again at once. The restart is real where it
//! matters: the agent's exit ledger counts the death and puts the revision aside after
//! repeated ones, the reconciler starts anew from what the agent persisted (serving the
//! last-known-good revision instead of one put aside), and the control plane hears the exits
//! through its own report store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tern_agent::exits::{ExitLedger, ExitPolicy};
use tern_agent::reconcile::{Action, Reconciler, Restored};
use tern_control_plane::backend::MemoryBackend;
use tern_control_plane::catalog::DeploymentRecord;
use tern_control_plane::deploy::plan::{self, Plan};
use tern_control_plane::deploy::{AgentDesired, DesiredStore};
use tern_control_plane::registry::AgentRecord;
use tern_control_plane::reports::AgentReports;
use tern_control_plane::rollout::{AgentObservation, Phase, Rollout, RolloutPolicy};
use tern_proto::api::AgentStatus;
use tern_proto::desired::{
    DesiredPipeline, DesiredState, DesiredStateError, DesiredStep, DesiredVariant,
};
use tern_proto::manifest::{Device, Resource, VariantSpec};
use tern_proto::message::{
    PipelinePhase, PipelineStatus, RunningRevision, SignedDesiredState, UncleanExit,
};
use tern_proto::release::{ArtifactKind, Digest, Release, SignedRelease, VersionFloor};
use tern_proto::signing::{SecretKey, Signed};
use tern_proto::trust::SignedTrustRoot;

/// Virtual time between two steps (the control plane's deployment interval).
pub const STEP_MS: u64 = 500;
/// Requests each online agent serves per step.
pub const REQUESTS_PER_STEP: u64 = 10;
/// The one pipeline of the simulation, and the model release its revisions pin (revision N
/// runs `model` version N).
pub const PIPELINE: &str = "p";
const MODEL: &str = "model";

/// What can go wrong on one agent; `Faults::default()` is an agent with nothing wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Revisions that fail to load here.
    pub load_fails: BTreeSet<u64>,
    /// Revisions that answer every request with an error here.
    pub errors_on: BTreeSet<u64>,
    /// Steps (inclusive-exclusive) during which the agent is offline.
    pub offline: Vec<(u64, u64)>,
    /// Revisions under which the agent process dies (at every step it serves them).
    pub crashes_on: BTreeSet<u64>,
    /// Steps every message takes, both ways: desired states to the agent, its reports (status,
    /// applied generation, traffic) to the control plane.
    pub delay: u64,
    /// Desired states overtake each other (as over two links, or two replicas): those of odd
    /// generations take [`OVERTAKEN_BY`] steps more, and those due at once arrive newest first.
    pub reorder: bool,
}

/// One simulated agent.
#[derive(Debug)]
pub struct SimAgent {
    pub record: AgentRecord,
    pub faults: Faults,
    reconciler: Reconciler,
    /// Desired states the control plane sent, signed, with the step each arrives at and the
    /// order it was sent in.
    in_flight: Vec<(u64, u64, SignedDesiredState)>,
    /// States sent to it so far, and the send order of the one it applied last.
    sent: u64,
    applied_sent: u64,
    /// Older generations that arrived after newer ones and were refused as replays.
    pub stale_refused: u64,
    /// (step, status, applied generation) the agent reported, as they travel to the control
    /// plane.
    sent_reports: std::collections::VecDeque<(u64, BTreeMap<String, PipelineStatus>, u64)>,
    /// Pipeline → the run that answers requests.
    pub serving: BTreeMap<String, DesiredPipeline>,
    /// Release name → floor, as the agent persisted them.
    pub floors: BTreeMap<String, VersionFloor>,
    /// What the control plane last heard from it.
    reported: BTreeMap<String, PipelineStatus>,
    /// The generation it last said it applied, as the control plane heard it.
    reported_generation: u64,
    /// (step, revision, requests, errors) of the traffic it served.
    traffic: Vec<(u64, u64, u64, u64)>,
    online: bool,
    /// The step it went offline at, while it is.
    offline_since: Option<u64>,
    /// Its unclean exits and the revisions it put aside, as the agent persists them.
    pub exits: ExitLedger,
    /// Pipeline → the run it served before the serving one (its last-known-good).
    good: BTreeMap<String, DesiredPipeline>,
    /// How many times it died.
    pub deaths: u32,
}

impl SimAgent {
    /// The revision of the pipeline this agent answers with.
    pub fn serving_revision(&self) -> Option<u64> {
        self.serving.get(PIPELINE).map(|p| p.revision)
    }

    /// Every revision this agent ever answered requests with, from its traffic: what it serves
    /// now says nothing of what it served before a rollback.
    pub fn revisions_served(&self) -> BTreeSet<u64> {
        self.traffic
            .iter()
            .map(|(_, revision, _, _)| *revision)
            .collect()
    }
}

/// Something that broke a rule of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub step: u64,
    pub agent: String,
    pub what: String,
}

/// The control plane's side and the agents.
pub struct Fleet {
    step: u64,
    publisher: SecretKey,
    /// The control plane's online key, which signs desired states.
    online_key: SecretKey,
    trust: SignedTrustRoot,
    pub deployment: DeploymentRecord,
    /// What each agent was last given: the control plane's own store, on the in-memory
    /// backend.
    desired: DesiredStore,
    /// What the store holds, as last written: every generation goes through the store's
    /// compare-and-set, and the plan and the checks read this copy (decoding the store's
    /// records at every step would be most of the simulation's time).
    written: HashMap<String, AgentDesired>,
    pub agents: Vec<SimAgent>,
    /// Every rule broken so far.
    pub violations: Vec<Violation>,
    /// Every rollout transition so far, with its step.
    pub transitions: Vec<(u64, plan::Moved)>,
    /// What agents reported of their exits, in the control plane's own store.
    reports: AgentReports,
    /// When agents put a revision aside.
    pub exit_policy: ExitPolicy,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("step", &self.step)
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

fn deployment_manifest(variants: &[VariantSpec]) -> tern_proto::manifest::Deployment {
    let mut yaml = format!(
        "apiVersion: tern.dev/v1alpha1\nkind: Deployment\nmetadata: {{ name: d }}\nspec:\n  pipeline: {PIPELINE}\n  selector: {{ fleet: sim }}\n"
    );
    if !variants.is_empty() {
        yaml.push_str("  variants:\n");
        for v in variants {
            yaml.push_str(&format!(
                "    - {{ model: \"{}\", weight: {} }}\n",
                v.model, v.weight
            ));
        }
    }
    match tern_proto::manifest::parse_resources(&yaml, "sim.yaml")
        .expect("the simulation's deployment is valid")
        .remove(0)
    {
        Resource::Deployment(d) => d,
        Resource::Pipeline(_) => unreachable!("a deployment was written"),
    }
}

impl Fleet {
    /// `agents` agents (`edge-00`, `edge-01`, ...), each with its faults, all selected by one
    /// deployment of [`PIPELINE`] that has no rollout yet.
    pub fn new(faults: Vec<Faults>) -> Self {
        let (root, publisher) = (SecretKey::generate(), SecretKey::generate());
        let trust = SignedTrustRoot::single_keys(1, &root, publisher.public(), 0);
        let agents = faults
            .into_iter()
            .enumerate()
            .map(|(i, faults)| SimAgent {
                record: agent_record(&format!("edge-{i:02}")),
                faults,
                reconciler: Reconciler::new(Restored::default()),
                in_flight: Vec::new(),
                sent: 0,
                applied_sent: 0,
                stale_refused: 0,
                sent_reports: std::collections::VecDeque::new(),
                serving: BTreeMap::new(),
                floors: BTreeMap::new(),
                reported: BTreeMap::new(),
                reported_generation: 0,
                traffic: Vec::new(),
                online: true,
                offline_since: None,
                exits: ExitLedger::default(),
                good: BTreeMap::new(),
                deaths: 0,
            })
            .collect();
        Self {
            step: 0,
            publisher,
            online_key: SecretKey::generate(),
            trust,
            deployment: DeploymentRecord {
                manifest: deployment_manifest(&[]),
                created_ms: 0,
                updated_ms: 0,
                rollout: None,
            },
            desired: DesiredStore::new(Arc::new(MemoryBackend::new())),
            written: HashMap::new(),
            agents,
            violations: Vec::new(),
            transitions: Vec::new(),
            reports: AgentReports::default(),
            exit_policy: ExitPolicy::default(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.step * STEP_MS
    }

    /// Applies revision `revision` of the pipeline: a new rollout, from the stable revision of
    /// the one before (as `ternctl apply` does).
    pub fn apply(&mut self, revision: u64, policy: RolloutPolicy) {
        let now = self.now_ms();
        self.deployment.rollout = Some(match &self.deployment.rollout {
            Some(old) => old.successor(revision, policy, now),
            None => Rollout::new(revision, None, policy, now),
        });
    }

    /// Gives the deployment A/B variants (model versions and weights).
    pub fn set_variants(&mut self, variants: &[(u64, u32)]) {
        let specs: Vec<VariantSpec> = variants
            .iter()
            .map(|&(version, weight)| VariantSpec {
                model: format!("{MODEL}:{version}"),
                weight,
                step: None,
            })
            .collect();
        self.deployment.manifest = deployment_manifest(&specs);
    }

    pub fn pause(&mut self) -> bool {
        let now = self.now_ms();
        self.rollout_mut().is_some_and(|r| r.pause(now))
    }

    pub fn resume(&mut self) -> bool {
        let now = self.now_ms();
        self.rollout_mut().is_some_and(|r| r.resume(now))
    }

    fn rollout_mut(&mut self) -> Option<&mut Rollout> {
        self.deployment.rollout.as_mut()
    }

    pub fn rollout(&self) -> Option<&Rollout> {
        self.deployment.rollout.as_ref()
    }

    /// The rollout's phase.
    pub fn phase(&self) -> Option<&Phase> {
        self.rollout().map(|r| &r.phase)
    }

    /// Steps until the rollout is no longer progressing (or `max_steps` pass); returns the
    /// steps taken.
    pub fn run_until_settled(&mut self, max_steps: u64) -> u64 {
        for taken in 0..max_steps {
            if !matches!(self.phase(), Some(Phase::Progressing)) {
                return taken;
            }
            self.step();
        }
        max_steps
    }

    /// Runs `steps` steps.
    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step();
        }
    }

    /// One step: agents come and go, the control plane plans and sends, agents apply what
    /// reached them and serve traffic; then the rules are checked.
    pub fn step(&mut self) {
        let step = self.step;
        for agent in &mut self.agents {
            agent.online = !agent
                .faults
                .offline
                .iter()
                .any(|&(from, to)| (from..to).contains(&step));
            agent.offline_since = match (agent.online, agent.offline_since) {
                (true, _) => None,
                (false, since) => Some(since.unwrap_or(step)),
            };
        }
        let now = self.now_ms();
        let plan = self.plan(now);
        for moved in plan.moved {
            self.transitions.push((step, moved));
        }
        if let Some(record) = plan.rollouts.into_iter().next() {
            self.deployment = record;
        }
        for change in plan.changes {
            let signed =
                (self.desired_state(&change.agent_id, &change.record, now)).sign(&self.online_key);
            let written = self
                .desired
                .put(&change.agent_id, &change.record, &signed)
                .expect("the in-memory store does not fail");
            assert!(written, "one writer never races itself");
            self.written
                .insert(change.agent_id.clone(), change.record.clone());
            if let Some(agent) = self
                .agents
                .iter_mut()
                .find(|a| a.record.id == change.agent_id)
            {
                send(agent, signed, step);
            }
        }
        let online_key = self.online_key.public();
        for agent in &mut self.agents {
            if !agent.online {
                continue;
            }
            for (order, signed) in arrived(agent, step) {
                let generation = signed.generation;
                let applied = agent.reconciler.applied_generation();
                let opened = signed
                    .open(&online_key, &agent.record.id, applied)
                    .and_then(|state| agent.reconciler.desired(state, now));
                match opened {
                    Ok(actions) => {
                        agent.applied_sent = order;
                        perform(agent, actions);
                    }
                    // Refused as older than what it applied: right only for a state sent
                    // before that one (overtaken on the way), never for one sent after it.
                    Err(DesiredStateError::Replay { .. }) if order < agent.applied_sent => {
                        agent.stale_refused += 1;
                    }
                    Err(e) => self.violations.push(Violation {
                        step,
                        agent: agent.record.name.clone(),
                        what: format!("generation {generation} refused: {e}"),
                    }),
                }
            }
            let status = agent
                .reconciler
                .status()
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect();
            let applied = agent.reconciler.applied_generation();
            agent.sent_reports.push_back((step, status, applied));
            // What has reached the control plane by now, the newest of it.
            while agent
                .sent_reports
                .get(1)
                .is_some_and(|(sent, _, _)| sent + agent.faults.delay <= step)
            {
                agent.sent_reports.pop_front();
            }
            if let Some((sent, status, applied)) = agent.sent_reports.front()
                && sent + agent.faults.delay <= step
            {
                agent.reported = status.clone();
                agent.reported_generation = *applied;
            }
            if let Some(revision) = agent.serving_revision()
                && agent.faults.crashes_on.contains(&revision)
            {
                let state = self.written.get(&agent.record.id).map(|record| {
                    desired_state(&self.publisher, &self.trust, &agent.record.id, record, now)
                });
                crash(
                    agent,
                    &self.trust,
                    self.exit_policy,
                    &self.reports,
                    state,
                    (&self.online_key, step),
                    now,
                );
                continue;
            }
            if let Some(revision) = agent.serving_revision() {
                let errors = if agent.faults.errors_on.contains(&revision) {
                    REQUESTS_PER_STEP
                } else {
                    0
                };
                agent
                    .traffic
                    .push((step, revision, REQUESTS_PER_STEP, errors));
            }
        }
        self.check(step);
        self.step += 1;
    }

    fn plan(&self, now: u64) -> Plan {
        let records: Vec<AgentRecord> = self.agents.iter().map(|a| a.record.clone()).collect();
        let by_id: HashMap<&str, &SimAgent> = self
            .agents
            .iter()
            .map(|a| (a.record.id.as_str(), a))
            .collect();
        let observe = |record: &AgentRecord, pipeline: &str, target: u64, window_ms: u64| {
            let agent = by_id[record.id.as_str()];
            let status = agent.reported.get(pipeline);
            let since = now.saturating_sub(window_ms) / STEP_MS;
            // Traffic reaches the control plane as late as the agent's reports do.
            let heard = (now / STEP_MS).saturating_sub(agent.faults.delay);
            let (requests, errors) = agent
                .traffic
                .iter()
                .filter(|(s, revision, _, _)| *s >= since && *s <= heard && *revision == target)
                .fold((0, 0), |(r, e), (_, _, req, err)| (r + req, e + err));
            AgentObservation {
                agent: record.name.clone(),
                connected: agent.online,
                offline_ms: agent
                    .offline_since
                    .map_or(0, |since| now.saturating_sub(since * STEP_MS)),
                exits: self.reports.exits_serving(&record.id, pipeline, target),
                serving: status.and_then(|s| s.serving),
                reported: status.map(|s| {
                    let failed = (s.phase == PipelinePhase::Failed).then(|| s.message.clone());
                    (s.revision, failed)
                }),
                requests,
                errors,
            }
        };
        let applied: HashMap<String, u64> = (self.agents.iter())
            .map(|a| (a.record.id.clone(), a.reported_generation))
            .collect();
        plan::plan(
            vec![self.deployment.clone()],
            &records,
            &self.written,
            &applied,
            Some(self.trust.signed.version),
            &observe,
            now,
        )
    }

    /// The desired state `record` describes, as the control plane builds and signs it.
    fn desired_state(&self, agent_id: &str, record: &AgentDesired, now: u64) -> DesiredState {
        desired_state(&self.publisher, &self.trust, agent_id, record, now)
    }
}

/// The desired state `record` describes, as the control plane builds and signs it.
fn desired_state(
    publisher: &SecretKey,
    trust: &SignedTrustRoot,
    agent_id: &str,
    record: &AgentDesired,
    now: u64,
) -> DesiredState {
    let release = |version| release(publisher, version);
    let pipelines = record
        .pipelines
        .iter()
        .map(|(name, &(revision, committed))| DesiredPipeline {
            name: name.clone(),
            revision,
            committed,
            warmup: None,
            monitored_step: record.variants.get(name).map(|_| "infer".to_owned()),
            variants: record
                .variants
                .get(name)
                .into_iter()
                .flatten()
                .map(|v| {
                    let version = v
                        .model
                        .rsplit_once(':')
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(1);
                    DesiredVariant {
                        name: v.model.clone(),
                        weight: v.weight,
                        step: "infer".into(),
                        release: release(version),
                    }
                })
                .collect(),
            steps: vec![DesiredStep {
                name: "infer".into(),
                release: release(revision),
                config: "{}".into(),
                timeout_ms: None,
                memory_mib: None,
                device: Device::Auto,
            }],
        })
        .collect();
    DesiredState {
        agent_id: agent_id.to_owned(),
        generation: record.generation,
        issued_ms: now,
        trust_root: Some(trust.clone()),
        pipelines,
    }
}

/// The model release a revision runs, signed by the publisher.
fn release(publisher: &SecretKey, version: u64) -> SignedRelease {
    let bytes = format!("{MODEL} {version}");
    let mut release = Signed::unsigned(Release {
        name: MODEL.into(),
        kind: ArtifactKind::Model,
        version,
        digest: Digest::of(bytes.as_bytes()),
        size: bytes.len() as u64,
        created_ms: 0,
        expires_ms: None,
        annotations: Default::default(),
    });
    release.sign(publisher);
    release
}

impl Fleet {
    /// The rules no step may break: an agent serves nothing below its floors, and what it
    /// serves is a revision the control plane gave it.
    fn check(&mut self, step: u64) {
        for agent in &self.agents {
            for run in agent.serving.values() {
                let releases = run
                    .steps
                    .iter()
                    .map(|s| &s.release)
                    .chain(run.variants.iter().map(|v| &v.release));
                for release in releases {
                    let floor = agent.floors.get(&release.signed.name);
                    if floor.is_some_and(|f| release.signed.version < f.version) {
                        self.violations.push(Violation {
                            step,
                            agent: agent.record.name.clone(),
                            what: format!(
                                "serves {} {} below its floor {:?}",
                                release.signed.name, release.signed.version, floor
                            ),
                        });
                    }
                }
                let given = self
                    .written
                    .get(&agent.record.id)
                    .is_some_and(|d| d.may_report(&run.name, run.revision));
                if !given {
                    self.violations.push(Violation {
                        step,
                        agent: agent.record.name.clone(),
                        what: format!("serves revision {} it was never given", run.revision),
                    });
                }
            }
        }
    }
}

/// Performs `actions` as an agent's driver would, at once: fetches succeed, loads succeed
/// unless the revision fails to load on this agent.
fn perform(agent: &mut SimAgent, actions: Vec<Action>) {
    let mut queue: std::collections::VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        let more = match action {
            Action::PinTrustRoot(_) | Action::Record(_) | Action::Report => Vec::new(),
            Action::Fetch(release) => agent.reconciler.artifact_stored(release.signed.digest),
            Action::Load(desired) => {
                if agent.faults.load_fails.contains(&desired.revision) {
                    agent.reconciler.load_failed(
                        &desired.name,
                        desired.revision,
                        "simulated load failure",
                    )
                } else {
                    agent.reconciler.loaded(&desired.name, desired.revision)
                }
            }
            Action::Activate(desired) => {
                let name = desired.name.clone();
                if let Some(before) = agent.serving.insert(name.clone(), desired)
                    && agent.exits.count(&name, before.revision) == 0
                {
                    agent.good.insert(name, before);
                }
                Vec::new()
            }
            Action::ClearPutAside(name) => {
                agent.exits.clear(&name);
                Vec::new()
            }
            Action::Remove(name) | Action::Stop(name) => {
                agent.serving.remove(&name);
                Vec::new()
            }
            Action::RaiseFloors(floors) => {
                for (name, floor) in floors {
                    let kept = agent.floors.entry(name).or_insert(floor);
                    if floor.version > kept.version {
                        *kept = floor;
                    }
                }
                Vec::new()
            }
        };
        queue.extend(more);
    }
}

/// The agent dies while it serves what it serves; its supervisor starts it again at once. The
/// new run records the exit (and may put the revision aside), starts from what the agent
/// persisted, tells the control plane its exits, and gets the current desired state again on
/// its new connection.
fn crash(
    agent: &mut SimAgent,
    trust: &SignedTrustRoot,
    policy: ExitPolicy,
    reports: &AgentReports,
    current: Option<DesiredState>,
    (online_key, step): (&SecretKey, u64),
    now: u64,
) {
    agent.deaths += 1;
    let exit = UncleanExit {
        run: format!("{}-{}", agent.record.name, agent.deaths),
        started_ms: now,
        detected_ms: now,
        serving: (agent.serving.values())
            .map(|p| RunningRevision {
                pipeline: p.name.clone(),
                revision: p.revision,
            })
            .collect(),
        loading: Vec::new(),
        reason: "simulated crash".into(),
    };
    agent.exits.record(exit, policy, now);
    // What a restart serves: the revision it served, or the one before it when put aside.
    let names: Vec<String> = agent.serving.keys().cloned().collect();
    for name in names {
        let aside = agent.exits.put_aside(&name).map(|a| a.revision);
        if agent.serving.get(&name).map(|p| p.revision) == aside {
            match agent.good.get(&name).cloned() {
                Some(good) => {
                    agent.serving.insert(name, good);
                }
                None => {
                    agent.serving.remove(&name);
                }
            }
        }
    }
    let before = &agent.reconciler;
    agent.reconciler = Reconciler::new(Restored {
        trust: Some(trust.clone()),
        floors: agent.floors.clone(),
        artifacts: Default::default(),
        applied_generation: before.applied_generation(),
        applied_content: before.applied_content(),
        serving: agent.serving.values().cloned().collect(),
        put_aside: agent.exits.all_put_aside().clone(),
    });
    // As the agent's start does: what no longer verifies (the last-known-good revision below a
    // floor the one put aside raised) does not serve.
    for action in agent.reconciler.reverify() {
        if let Action::Stop(name) = action {
            agent.serving.remove(&name);
        }
    }
    if let Some(report) = agent.exits.report(&agent.record.name, policy, now) {
        reports.record_exits(&agent.record.id, report);
    }
    if let Some(state) = current {
        send(agent, state.sign(online_key), step);
    }
}

/// Steps more a reordering link holds a desired state of an odd generation.
pub const OVERTAKEN_BY: u64 = 3;

/// Puts `signed` on its way to `agent` at `step`.
fn send(agent: &mut SimAgent, signed: SignedDesiredState, step: u64) {
    let held = if agent.faults.reorder && signed.generation % 2 == 1 {
        OVERTAKEN_BY
    } else {
        0
    };
    agent.sent += 1;
    agent
        .in_flight
        .push((step + agent.faults.delay + held, agent.sent, signed));
}

/// The desired states that reach `agent` at `step`, in the order they arrive, with the order
/// they were sent in.
fn arrived(agent: &mut SimAgent, step: u64) -> Vec<(u64, SignedDesiredState)> {
    let (mut due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut agent.in_flight)
        .into_iter()
        .partition(|(at, _, _)| *at <= step);
    agent.in_flight = later;
    due.sort_by_key(|(at, order, _)| (*at, *order));
    if agent.faults.reorder {
        due.reverse();
    }
    due.into_iter()
        .map(|(_, order, signed)| (order, signed))
        .collect()
}

fn agent_record(name: &str) -> AgentRecord {
    AgentRecord {
        id: format!("id-{name}"),
        name: name.to_owned(),
        labels: [("fleet".to_owned(), "sim".to_owned())].into(),
        capacity: Default::default(),
        version: String::new(),
        first_seen_ms: 0,
        last_seen_ms: 0,
        status: AgentStatus::Ready,
        address: None,
        replica: None,
        cert_sha256: String::new(),
        previous_cert_sha256: None,
        cert_expires_ms: None,
        key_sha256: None,
        revoked_ms: None,
    }
}

/// A rollout policy: cumulative waves, a health window, auto-rollback.
pub fn policy(waves: &[u8], health_window_ms: u64) -> RolloutPolicy {
    RolloutPolicy {
        waves: waves.to_vec(),
        health_window_ms,
        max_error_rate: 0.05,
        auto_rollback: true,
        progress_deadline_ms: 10 * 60_000,
        offline_grace_ms: OFFLINE_GRACE_MS,
    }
}

/// How long an offline member holds its wave in [`policy`].
pub const OFFLINE_GRACE_MS: u64 = 60_000;
