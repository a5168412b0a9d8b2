//! An in-memory fleet driven through the control plane's own path: manifests applied by the
//! fleet core's `apply`, the deployment driver's passes (`deploy::fleet`: the planner and the
//! outbox that signs every desired state) fed by the change feed and by the sessions, each
//! agent's session state machine (`agent_session`: what the control plane takes from its
//! messages, what it sends when the agent connects), and N agents' reconcilers — on the
//! in-memory backend and a virtual clock, with no socket, no disk and no sleep. Whole rollouts
//! (canary waves, a failing wave rolled back, agents offline during an apply, pause and resume,
//! A/B variants, crash loops) run in milliseconds.
//!
//! Nothing of the control plane is copied here: the simulation only carries messages. What is
//! simulated: the links (every message takes [`Faults::delay`] steps each way; desired states
//! may overtake each other, [`Faults::reorder`]; a link may lose a desired state,
//! [`Faults::drops`], which costs the connection, and the agent connects again at the next
//! step and is sent what the outbox holds), fetching and loading (they succeed at once unless
//! the scenario says a revision fails to load on an agent), traffic (every online agent serves
//! [`REQUESTS_PER_STEP`] requests a step, failing on the revisions the scenario marks bad for
//! it), and crashes: an agent serving a revision the scenario says kills it dies in that step
//! and its supervisor starts it again at once. The restart is real where it matters: the
//! agent's exit ledger counts the death and puts the revision aside after repeated ones, the
//! reconciler starts anew from what the agent persisted (serving the last-known-good revision
//! instead of one put aside), and the new run connects again and reports its exits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use tern_agent::exits::{ExitLedger, ExitPolicy};
use tern_agent::reconcile::{Action, Reconciler, Restored};
use tern_control_plane::agent_session::{AgentSession, SessionContext, welcomed};
use tern_control_plane::apply::{RolloutCommand, rollout_command};
use tern_control_plane::backend::{
    Changes, MemoryBackend, Notice, SharedBackend, Subscription, TryRecvError,
};
use tern_control_plane::catalog::{Catalog, DeploymentRecord};
use tern_control_plane::deploy::fleet::{Fleet as Planner, Inbox};
use tern_control_plane::deploy::plan::Moved;
use tern_control_plane::deploy::{DeployContext, DesiredStore};
use tern_control_plane::drift::DriftStore;
use tern_control_plane::health::HealthTracker;
use tern_control_plane::presence::Presence;
use tern_control_plane::registry::{AgentRecord, NewAgent, Registry};
use tern_control_plane::releases::{MemoryBlobs, ReleaseStore};
use tern_control_plane::replica::{Replica, SharedReports};
use tern_control_plane::reports::AgentReports;
use tern_control_plane::rollout::{AgentObservation, Phase, Rollout, RolloutPolicy, Transition};
use tern_proto::AgentMessage;
use tern_proto::api::ApplyRequest;
use tern_proto::desired::{DesiredPipeline, DesiredStateError};
use tern_proto::message::{
    HealthReport, Heartbeat, PipelineHealth, RunningRevision, SignedDesiredState, StatusReport,
    UncleanExit,
};
use tern_proto::release::{ArtifactKind, Digest, Release, VersionFloor};
use tern_proto::signing::{SecretKey, Signed};
use tern_proto::trust::SignedTrustRoot;

/// Virtual time between two steps.
pub const STEP_MS: u64 = 500;
/// Requests each online agent serves per step.
pub const REQUESTS_PER_STEP: u64 = 10;
/// How often agents send what they send on a timer, and whether the fleet's rules are checked
/// at every step (a benchmark of a large fleet spaces the first and skips the second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Steps between two heartbeats of an agent.
    pub heartbeat_every: u64,
    /// Steps between two health reports of an agent.
    pub health_every: u64,
    /// Whether [`Violation`]s are looked for at every step.
    pub check: bool,
    /// Whether agents check what they are sent and run their reconciler (off: a benchmark of
    /// the control plane takes each state as it comes and serves what it says at once).
    pub verify: bool,
}

impl Default for Cadence {
    /// A heartbeat every step, health every second (as the agent sends them), rules checked.
    fn default() -> Self {
        Self {
            heartbeat_every: 1,
            health_every: 2,
            check: true,
            verify: true,
        }
    }
}
/// The one pipeline of the simulation, and the model release its revisions pin (revision N
/// runs `model` version N).
pub const PIPELINE: &str = "p";
const DEPLOYMENT: &str = "d";
const MODEL: &str = "model";
/// Model versions pushed (and so the revisions a scenario may apply).
const MODEL_VERSIONS: u64 = 8;

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
    /// Steps every message takes, both ways: desired states to the agent, its reports
    /// (heartbeats, status, health, exits) to the control plane.
    pub delay: u64,
    /// Desired states overtake each other (as over two links, or two replicas): those of odd
    /// generations take [`OVERTAKEN_BY`] steps more, and those due at once arrive newest first.
    pub reorder: bool,
    /// The link loses every second desired state sent on it, and with it the connection.
    pub drops: bool,
    /// The agent is held by a second replica, which sends it what the outbox gained when it
    /// hears the commit: [`Fleet::replica_lag`] steps late.
    pub elsewhere: bool,
}

/// One simulated agent.
#[derive(Debug)]
pub struct SimAgent {
    pub record: AgentRecord,
    pub faults: Faults,
    reconciler: Reconciler,
    /// Desired states on their way, signed, with the step each arrives at and the order it
    /// was sent in.
    in_flight: Vec<(u64, u64, SignedDesiredState)>,
    /// States sent to it so far, and the send order of the one it applied last.
    sent: u64,
    applied_sent: u64,
    /// Older generations that arrived after newer ones and were refused as replays.
    pub stale_refused: u64,
    /// Desired states its link lost.
    pub lost: u64,
    /// Messages on their way to the control plane, with the step they were sent at.
    outgoing: VecDeque<(u64, AgentMessage)>,
    /// Its session at the control plane, while connected.
    session: Option<AgentSession>,
    /// Its connection was lost: it connects again at the next step.
    reconnect: bool,
    /// The last status it reported on this connection (applied generation, pipelines).
    last_status: Option<(u64, Vec<tern_proto::message::PipelineStatus>)>,
    seq: u64,
    /// Pipeline → the run that answers requests.
    pub serving: BTreeMap<String, DesiredPipeline>,
    /// Release name → floor, as the agent persisted them.
    pub floors: BTreeMap<String, VersionFloor>,
    /// Revision of [`PIPELINE`] → (requests, errors) this run served: its health counters.
    counters: BTreeMap<u64, (u64, u64)>,
    /// Every revision it answered requests with.
    served: BTreeSet<u64>,
    /// With [`Cadence::verify`] off: the generation it took last and its pipelines' status.
    taken: Option<(u64, Vec<tern_proto::message::PipelineStatus>)>,
    online: bool,
    /// Its unclean exits and the revisions it put aside, as the agent persists them.
    pub exits: ExitLedger,
    /// Pipeline → the run it served before the serving one (its last-known-good).
    good: BTreeMap<String, DesiredPipeline>,
    /// How many times it died.
    pub deaths: u32,
}

impl SimAgent {
    fn new(record: AgentRecord, faults: Faults) -> Self {
        Self {
            record,
            faults,
            reconciler: Reconciler::new(Restored::default()),
            in_flight: Vec::new(),
            sent: 0,
            applied_sent: 0,
            stale_refused: 0,
            lost: 0,
            outgoing: VecDeque::new(),
            session: None,
            reconnect: false,
            last_status: None,
            seq: 0,
            serving: BTreeMap::new(),
            floors: BTreeMap::new(),
            counters: BTreeMap::new(),
            served: BTreeSet::new(),
            taken: None,
            online: true,
            exits: ExitLedger::default(),
            good: BTreeMap::new(),
            deaths: 0,
        }
    }

    /// The revision of the pipeline this agent answers with.
    pub fn serving_revision(&self) -> Option<u64> {
        self.serving.get(PIPELINE).map(|p| p.revision)
    }

    /// Every revision this agent ever answered requests with: what it serves now says nothing
    /// of what it served before a rollback.
    pub fn revisions_served(&self) -> BTreeSet<u64> {
        self.served.clone()
    }

    /// Puts `message` on its way to the control plane at `step`.
    fn report(&mut self, message: AgentMessage, step: u64) {
        self.outgoing.push_back((step, message));
    }
}

/// Something that broke a rule of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub step: u64,
    pub agent: String,
    pub what: String,
}

/// One control plane alone: its stores on one in-memory backend, what it keeps in memory, and
/// the change feed its follower reads.
struct ControlPlane {
    registry: Registry,
    catalog: Catalog,
    releases: ReleaseStore,
    desired: DesiredStore,
    drift: DriftStore,
    reports: AgentReports,
    shared_reports: SharedReports,
    health: HealthTracker,
    presence: Presence,
    replica: Replica,
    online_key: SecretKey,
    inbox: Inbox,
    feed: Subscription,
    /// The follower stops reading the feed until this step, and then finds it lagged.
    stalled_until: Option<u64>,
    /// The second replica's feed (when it holds agents), and the commits it has heard with the
    /// step it heard them.
    other: Option<Subscription>,
    heard_elsewhere: VecDeque<(u64, Changes)>,
}

impl ControlPlane {
    fn new(trust: &SignedTrustRoot, publisher: &SecretKey, other: bool) -> Self {
        let backend: SharedBackend = Arc::new(MemoryBackend::new());
        let cp = Self {
            feed: backend.subscribe(),
            stalled_until: None,
            other: other.then(|| backend.subscribe()),
            heard_elsewhere: VecDeque::new(),
            registry: Registry::new(backend.clone()),
            catalog: Catalog::new(backend.clone()),
            releases: ReleaseStore::new(backend.clone(), Arc::new(MemoryBlobs::new())),
            desired: DesiredStore::new(backend.clone()),
            drift: DriftStore::new(backend.clone()),
            reports: AgentReports::default(),
            shared_reports: SharedReports::new(backend),
            health: HealthTracker::default(),
            presence: Presence::default(),
            replica: Replica {
                name: "cp".into(),
                peers: false,
            },
            online_key: SecretKey::generate(),
            inbox: Inbox::default(),
        };
        cp.releases.set_trust_root(trust).expect("the first root");
        for version in 1..=MODEL_VERSIONS {
            let bytes = format!("{MODEL} {version}").into_bytes();
            let mut release = Signed::unsigned(Release {
                name: MODEL.into(),
                kind: ArtifactKind::Model,
                version,
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
                created_ms: 0,
                expires_ms: None,
                annotations: Default::default(),
            });
            release.sign(publisher);
            cp.releases.put_release(&release).expect("pushed");
            (cp.releases)
                .append(&release.signed.digest, 0, &bytes)
                .expect("uploaded");
        }
        cp
    }

    fn deploy(&self) -> DeployContext<'_> {
        DeployContext {
            registry: &self.registry,
            catalog: &self.catalog,
            releases: &self.releases,
            desired: &self.desired,
            reports: &self.reports,
            health: &self.health,
            presence: &self.presence,
            online_key: &self.online_key,
            replica: &self.replica,
        }
    }

    fn session(&self) -> SessionContext<'_> {
        SessionContext {
            reports: &self.reports,
            shared_reports: &self.shared_reports,
            presence: &self.presence,
            health: &self.health,
            desired: &self.desired,
            replica: &self.replica,
            fleet: &self.inbox,
        }
    }

    /// What the change feed brought since, into the driver's inbox (the server's follower). A
    /// follower that fell behind is told what it missed, and the driver reads the fleet again.
    fn follow(&mut self, step: u64) {
        match self.stalled_until {
            Some(until) if step < until => return,
            Some(_) => {
                // It fell behind for the whole stall: what was held for it is gone.
                while self.feed.try_recv().is_ok() {}
                self.inbox.missed();
                self.stalled_until = None;
            }
            None => {}
        }
        loop {
            match self.feed.try_recv() {
                Ok(Notice::Committed(changes)) => {
                    self.inbox.heard(&changes);
                }
                Ok(Notice::Missed) | Err(TryRecvError::Lagged(_)) => self.inbox.missed(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    /// Enrolls agent `name` with the simulation's label.
    fn enroll(&self, i: usize, name: &str) -> AgentRecord {
        let labels: BTreeMap<String, String> = [("fleet".to_owned(), "sim".to_owned())].into();
        let (token, _) = (self.registry)
            .create_token(labels, 60_000, [7; 32], 0)
            .expect("a token");
        let mut print = [0; 32];
        print[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let agent = NewAgent {
            id: format!("id-{name}"),
            name: name.to_owned(),
            labels: BTreeMap::new(),
            cert_sha256: print,
            cert_expires_ms: u64::MAX,
            key_sha256: print.map(|b| b ^ 0xff),
            address: None,
        };
        self.registry.redeem(&token, agent, 0).expect("enrolled")
    }
}

/// The control plane and the agents.
pub struct Fleet {
    step: u64,
    cp: ControlPlane,
    planner: Planner,
    /// When the driver's next pass is due without an event.
    due: Option<u64>,
    trust: SignedTrustRoot,
    /// The deployment as stored after the last step.
    pub deployment: Option<DeploymentRecord>,
    /// What was last applied (revision and policy), and the deployment's variants.
    applied: Option<(u64, RolloutPolicy)>,
    variants: Vec<(u64, u32)>,
    pub agents: Vec<SimAgent>,
    /// Every rule broken so far.
    pub violations: Vec<Violation>,
    /// Every rollout transition so far, with its step.
    pub transitions: Vec<(u64, Moved)>,
    /// When agents put a revision aside.
    pub exit_policy: ExitPolicy,
    /// Steps the second replica (holding the agents with [`Faults::elsewhere`]) hears commits
    /// late.
    pub replica_lag: u64,
    /// Times the work lease moved to another replica.
    pub leader_changes: u32,
    /// The waves started so far: (rollout start, revision, wave).
    waves: BTreeSet<(u64, u64, usize)>,
    /// Agent id → its index in `agents`.
    index: std::collections::HashMap<String, usize>,
    /// Passes of the driver, and those that read the whole fleet first.
    pub passes: u64,
    pub full_reads: u64,
    /// Each pass of the driver: how long it took, the agents it recomputed and the states it
    /// signed.
    pub pass_times: Vec<(std::time::Duration, usize, usize)>,
    pub cadence: Cadence,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("step", &self.step)
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// `agents` agents (`edge-00`, `edge-01`, ...), each with its faults; nothing applied yet.
    pub fn new(faults: Vec<Faults>) -> Self {
        let (root, publisher) = (SecretKey::generate(), SecretKey::generate());
        let trust = SignedTrustRoot::single_keys(1, &root, publisher.public(), 0);
        let other = faults.iter().any(|f| f.elsewhere);
        let cp = ControlPlane::new(&trust, &publisher, other);
        let agents: Vec<SimAgent> = (faults.into_iter().enumerate())
            .map(|(i, faults)| SimAgent::new(cp.enroll(i, &format!("edge-{i:02}")), faults))
            .collect();
        let index = (agents.iter().enumerate())
            .map(|(i, a)| (a.record.id.clone(), i))
            .collect();
        Self {
            step: 0,
            cp,
            planner: Planner::default(),
            due: Some(0),
            trust,
            deployment: None,
            applied: None,
            variants: Vec::new(),
            agents,
            violations: Vec::new(),
            transitions: Vec::new(),
            exit_policy: ExitPolicy::default(),
            replica_lag: 0,
            leader_changes: 0,
            waves: BTreeSet::new(),
            index,
            passes: 0,
            full_reads: 0,
            pass_times: Vec::new(),
            cadence: Cadence::default(),
        }
    }

    /// The work lease moves to another replica: its driver starts with an empty inbox (events
    /// the old one had not planned on are gone) and reads the whole fleet at its first pass.
    pub fn change_leader(&mut self) {
        self.planner = Planner::default();
        self.cp.inbox.take();
        self.due = Some(self.now_ms());
        self.leader_changes += 1;
    }

    /// The driver's follower falls behind the change feed for `steps` steps: it hears nothing
    /// meanwhile, then learns it lagged.
    pub fn stall_feed(&mut self, steps: u64) {
        self.cp.stalled_until = Some(self.step + steps);
    }

    pub fn now_ms(&self) -> u64 {
        self.step * STEP_MS
    }

    /// Applies the pipeline at revision `revision` (running model version `revision`) and its
    /// deployment under `policy`, as `ternctl apply` does: a new revision starts a new
    /// rollout. Revisions are numbered by the catalog, so a scenario applies them in order.
    pub fn apply(&mut self, revision: u64, policy: RolloutPolicy) {
        self.applied = Some((revision, policy));
        self.apply_manifests();
    }

    /// Gives the deployment A/B variants (model versions and weights), applied at once if the
    /// deployment is.
    pub fn set_variants(&mut self, variants: &[(u64, u32)]) {
        self.variants = variants.to_vec();
        if self.applied.is_some() {
            self.apply_manifests();
        }
    }

    fn apply_manifests(&mut self) {
        let Some((revision, policy)) = &self.applied else {
            return;
        };
        let yaml = manifests(*revision, policy, &self.variants);
        let request = ApplyRequest {
            file: "sim.yaml".into(),
            resources: tern_proto::manifest::parse_resources(&yaml, "sim.yaml")
                .expect("the simulation's manifests are valid"),
            sources: Vec::new(),
            dry_run: false,
        };
        let cp = &self.cp;
        let changes = tern_control_plane::apply::apply(
            &cp.catalog,
            &cp.releases,
            &cp.drift,
            &request,
            self.now_ms(),
        )
        .expect("applied");
        let given = changes.iter().find_map(|c| c.revision);
        assert_eq!(given, Some(*revision), "revisions are applied in order");
        self.refresh();
    }

    pub fn pause(&mut self) -> bool {
        self.command(RolloutCommand::Pause)
    }

    pub fn resume(&mut self) -> bool {
        self.command(RolloutCommand::Resume)
    }

    /// An operator's undo: back to the stable revision.
    pub fn undo(&mut self) -> bool {
        self.command(RolloutCommand::Undo)
    }

    fn command(&mut self, command: RolloutCommand) -> bool {
        let done = rollout_command(&self.cp.catalog, DEPLOYMENT, command, self.now_ms()).is_ok();
        self.refresh();
        done
    }

    fn refresh(&mut self) {
        self.deployment = self.cp.catalog.deployment(DEPLOYMENT).expect("readable");
    }

    pub fn rollout(&self) -> Option<&Rollout> {
        self.deployment.as_ref()?.rollout.as_ref()
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

    /// One step: agents come and go, what they sent reaches the control plane, the driver
    /// passes on the events (or a deadline) and its outbox sends, agents apply what reached
    /// them and serve traffic; then the rules are checked.
    pub fn step(&mut self) {
        let (step, now) = (self.step, self.now_ms());
        self.connect(step, now);
        self.deliver(step, now);
        self.drive(step, now);
        let online_key = self.cp.online_key.public();
        let cadence = self.cadence;
        for i in 0..self.agents.len() {
            let agent = &mut self.agents[i];
            if !agent.online {
                continue;
            }
            let arrivals = arrived(agent, step);
            // Its status changes only with what arrives (or is to be told on a new connection).
            let changed = !arrivals.is_empty() || agent.last_status.is_none();
            for (order, signed) in arrivals {
                if !cadence.verify {
                    take(agent, &signed);
                    continue;
                }
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
            // A heartbeat every step, a status report when it changed (or on a new
            // connection), health every second: as the agent's own loop sends them.
            agent.seq += 1;
            if step.is_multiple_of(cadence.heartbeat_every) {
                agent.report(AgentMessage::Heartbeat(Heartbeat { seq: agent.seq }), step);
            }
            let status = match (&agent.taken, changed) {
                (_, false) => None,
                (Some(taken), true) => Some(taken.clone()),
                (None, true) => Some((
                    agent.reconciler.applied_generation(),
                    agent.reconciler.status(),
                )),
            };
            if let Some(status) = status
                && agent.last_status.as_ref() != Some(&status)
            {
                agent.last_status = Some(status.clone());
                let (applied_generation, pipelines) = status;
                let report = StatusReport {
                    seq: agent.seq,
                    applied_generation,
                    pipelines,
                    refused: None,
                    warnings: Vec::new(),
                };
                agent.report(AgentMessage::Status(report), step);
            }
            if let Some(revision) = agent.serving_revision()
                && agent.faults.crashes_on.contains(&revision)
            {
                crash(self, i, step, now);
                continue;
            }
            if let Some(revision) = agent.serving_revision() {
                let errors = if agent.faults.errors_on.contains(&revision) {
                    REQUESTS_PER_STEP
                } else {
                    0
                };
                agent.served.insert(revision);
                let counters = agent.counters.entry(revision).or_default();
                *counters = (counters.0 + REQUESTS_PER_STEP, counters.1 + errors);
            }
            if !step.is_multiple_of(cadence.health_every) {
                continue;
            }
            let health = HealthReport {
                pipelines: (agent.counters.iter())
                    .map(|(&revision, &(requests, errors))| PipelineHealth {
                        name: PIPELINE.to_owned(),
                        revision,
                        requests,
                        errors,
                    })
                    .collect(),
            };
            agent.report(AgentMessage::Health(health), step);
        }
        if self.cadence.check {
            self.check(step);
        }
        self.step += 1;
    }

    /// Agents come and go: one that leaves closes its session (what was on its way is lost
    /// with the connection); one that is back, or lost its connection, opens a new one and is
    /// sent what the outbox holds.
    fn connect(&mut self, step: u64, now: u64) {
        for (i, agent) in self.agents.iter_mut().enumerate() {
            agent.online =
                !(agent.faults.offline.iter()).any(|&(from, to)| (from..to).contains(&step));
            if (!agent.online || agent.reconnect)
                && let Some(session) = agent.session.take()
            {
                session.close(&self.cp.session());
                agent.outgoing.clear();
                agent.in_flight.clear();
            }
            agent.reconnect = false;
            if agent.online && agent.session.is_none() {
                open(&self.cp, agent, i, step, now);
            }
        }
    }

    /// What the agents sent that has arrived by now, through their sessions.
    fn deliver(&mut self, step: u64, now: u64) {
        let cx = self.cp.session();
        for agent in &mut self.agents {
            let Some(session) = agent.session.as_mut() else {
                continue;
            };
            while let Some((sent, _)) = agent.outgoing.front()
                && sent + agent.faults.delay <= step
            {
                let Some((_, message)) = agent.outgoing.pop_front() else {
                    break;
                };
                if let Err(e) = session.on_message(&cx, message, now) {
                    self.violations.push(Violation {
                        step,
                        agent: agent.record.name.clone(),
                        what: format!("the session ended: {e:?}"),
                    });
                }
            }
        }
    }

    /// The deployment driver, as the lease holder's loop runs it: a pass when events wait or
    /// a deadline came; what its outbox made goes to the agents' sessions.
    fn drive(&mut self, step: u64, now: u64) {
        self.cp.follow(step);
        self.relay(step);
        let events = self.cp.inbox.take();
        if events.is_empty() && self.due.is_none_or(|due| due > now) {
            return;
        }
        let started = std::time::Instant::now();
        let pass = (self.planner.pass(&self.cp.deploy(), events, now))
            .expect("the in-memory stores do not fail");
        (self.pass_times).push((started.elapsed(), pass.assigned, pass.sent.len()));
        self.due = pass.next_deadline_ms;
        self.passes += 1;
        self.full_reads += u64::from(pass.read_all);
        // No wave of one rollout starts twice, whichever driver runs it.
        self.refresh();
        let started_ms = self.rollout().map(|r| r.started_ms);
        for moved in pass.moved {
            if let (Transition::WaveStarted { wave, .. }, Some(started_ms)) =
                (&moved.transition, started_ms)
                && !self.waves.insert((started_ms, moved.revision, *wave))
            {
                self.violations.push(Violation {
                    step,
                    agent: String::new(),
                    what: format!("wave {wave} of revision {} started twice", moved.revision),
                });
            }
            self.transitions.push((step, moved));
        }
        // The agents held here get theirs at once; the other replica's, when it hears it.
        for (agent_id, signed) in pass.sent {
            if let Some(agent) = (self.index.get(&agent_id)).map(|&i| &mut self.agents[i])
                && agent.session.is_some()
                && !agent.faults.elsewhere
            {
                send(agent, signed, step);
            }
        }
    }

    /// The second replica: it hears the outbox's commits [`Fleet::replica_lag`] steps late and
    /// sends each agent it holds what the commit wrote for it (as the server's follower does).
    fn relay(&mut self, step: u64) {
        let Some(other) = self.cp.other.as_mut() else {
            return;
        };
        while let Ok(notice) = other.try_recv() {
            if let Notice::Committed(changes) = notice {
                self.cp.heard_elsewhere.push_back((step, changes));
            }
        }
        while let Some((heard, _)) = self.cp.heard_elsewhere.front()
            && heard + self.replica_lag <= step
        {
            let Some((_, changes)) = self.cp.heard_elsewhere.pop_front() else {
                break;
            };
            for (agent_id, signed) in tern_control_plane::deploy::desired::sent(&changes) {
                let signed = signed.expect("the outbox's records read back");
                if let Some(agent) = (self.index.get(&agent_id)).map(|&i| &mut self.agents[i])
                    && agent.session.is_some()
                    && agent.faults.elsewhere
                {
                    send(agent, signed, step);
                }
            }
        }
    }

    /// The reference for the driver's passes: one pass over the whole fleet as the driver made
    /// every 500 ms before it was driven by events — every agent's record, every desired
    /// state and every deployment read from the store, and the plan over all of them (every
    /// agent observed healthy, serving the target) — and how long it took. Nothing is written.
    pub fn full_scan(&self) -> (std::time::Duration, usize) {
        let started = std::time::Instant::now();
        let cp = &self.cp;
        let agents = cp.registry.agents().expect("readable");
        let stored: std::collections::HashMap<String, _> = (cp.desired.all().expect("readable"))
            .into_iter()
            .filter_map(|(agent, record)| Some((agent, record.ok()?)))
            .collect();
        let deployments = cp.catalog.deployments().expect("readable");
        let applied = std::collections::HashMap::new();
        let observe = |agent: &AgentRecord, _: &str, target: u64, _: u64| AgentObservation {
            agent: agent.name.clone(),
            connected: true,
            offline_ms: 0,
            exits: None,
            serving: Some(target),
            reported: Some((target, None)),
            requests: 0,
            errors: 0,
        };
        let plan = tern_control_plane::deploy::plan::plan(
            deployments,
            &agents,
            &stored,
            &applied,
            Some(self.trust.signed.version),
            &observe,
            self.now_ms(),
        );
        (started.elapsed(), plan.changes.len())
    }

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
                let given = (self.cp.desired.get(&agent.record.id))
                    .expect("readable")
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

/// The simulation's pipeline at `revision` and its deployment under `policy`, as YAML.
fn manifests(revision: u64, policy: &RolloutPolicy, variants: &[(u64, u32)]) -> String {
    assert!(
        policy.health_window_ms.is_multiple_of(1000)
            && policy.offline_grace_ms.is_multiple_of(1000),
        "manifests say seconds"
    );
    assert_eq!(
        policy.progress_deadline_ms,
        tern_control_plane::rollout::DEFAULT_PROGRESS_DEADLINE_MS
    );
    let waves: Vec<String> = policy.waves.iter().map(u8::to_string).collect();
    let mut yaml = format!(
        "apiVersion: tern.dev/v1alpha1\nkind: Pipeline\nmetadata: {{ name: {PIPELINE} }}\nspec:\n  steps:\n    - name: infer\n      model: \"{MODEL}:{revision}\"\n---\napiVersion: tern.dev/v1alpha1\nkind: Deployment\nmetadata: {{ name: {DEPLOYMENT} }}\nspec:\n  pipeline: {PIPELINE}\n  selector: {{ fleet: sim }}\n  rollout: {{ strategy: canary, waves: [{}], healthWindowSeconds: {}, maxErrorRate: {}, autoRollback: {}, offlineGraceSeconds: {} }}\n",
        waves.join(", "),
        policy.health_window_ms / 1000,
        policy.max_error_rate,
        policy.auto_rollback,
        policy.offline_grace_ms / 1000,
    );
    if !variants.is_empty() {
        yaml.push_str("  variants:\n");
        for (version, weight) in variants {
            yaml.push_str(&format!(
                "    - {{ model: \"{MODEL}:{version}\", weight: {weight} }}\n"
            ));
        }
    }
    yaml
}

/// Agent `i` connects: a new session, and what the outbox holds for it on its way.
fn open(cp: &ControlPlane, agent: &mut SimAgent, i: usize, step: u64, now: u64) {
    let [_, a, b, c] = (i as u32).to_be_bytes();
    let address = SocketAddr::from(([127, a, b, c], 10_000));
    let session = AgentSession::open(&cp.session(), &agent.record, address, now);
    agent.session = Some(session);
    agent.last_status = None;
    if let Some(signed) = welcomed(&cp.session(), &agent.record.id).expect("readable") {
        send(agent, signed, step);
    }
}

/// Takes `signed` without checking it (a benchmark's agent): it serves what the state says at
/// once, unless it took a newer one already.
fn take(agent: &mut SimAgent, signed: &SignedDesiredState) {
    if agent
        .taken
        .as_ref()
        .is_some_and(|(g, _)| *g >= signed.generation)
    {
        return;
    }
    let Ok(state) = postcard::from_bytes::<tern_proto::desired::DesiredState>(&signed.body) else {
        return;
    };
    let status = (state.pipelines.iter())
        .map(|p| tern_proto::message::PipelineStatus {
            name: p.name.clone(),
            revision: p.revision,
            phase: tern_proto::message::PipelinePhase::Ready,
            message: String::new(),
            serving: Some(p.revision),
        })
        .collect();
    agent.serving = (state.pipelines.into_iter())
        .map(|p| (p.name.clone(), p))
        .collect();
    agent.taken = Some((signed.generation, status));
}

/// Performs `actions` as an agent's driver would, at once: fetches succeed, loads succeed
/// unless the revision fails to load on this agent.
fn perform(agent: &mut SimAgent, actions: Vec<Action>) {
    let mut queue: VecDeque<Action> = actions.into();
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

/// Agent `i` dies while it serves what it serves; its supervisor starts it again at once. The
/// new run records the exit (and may put the revision aside), starts from what the agent
/// persisted, connects again (its old session closes) and tells the control plane its exits.
fn crash(fleet: &mut Fleet, i: usize, step: u64, now: u64) {
    let (trust, policy) = (&fleet.trust, fleet.exit_policy);
    let agent = &mut fleet.agents[i];
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
    // The new run: new counters, a new connection, its exits told.
    agent.counters.clear();
    if let Some(session) = agent.session.take() {
        session.close(&fleet.cp.session());
    }
    agent.outgoing.clear();
    agent.in_flight.clear();
    open(&fleet.cp, agent, i, step, now);
    if let Some(report) = agent.exits.report(&agent.record.name, policy, now) {
        agent.report(AgentMessage::Exits(report), step);
    }
}

/// Steps more a reordering link holds a desired state of an odd generation.
pub const OVERTAKEN_BY: u64 = 3;

/// Puts `signed` on its way to `agent` at `step`; a link that drops loses every second one,
/// and the connection with it.
fn send(agent: &mut SimAgent, signed: SignedDesiredState, step: u64) {
    agent.sent += 1;
    if agent.faults.drops && agent.sent.is_multiple_of(2) {
        agent.lost += 1;
        agent.reconnect = true;
        return;
    }
    let held = if agent.faults.reorder && signed.generation % 2 == 1 {
        OVERTAKEN_BY
    } else {
        0
    };
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

/// A rollout policy: cumulative waves, a health window, auto-rollback.
pub fn policy(waves: &[u8], health_window_ms: u64) -> RolloutPolicy {
    RolloutPolicy {
        waves: waves.to_vec(),
        health_window_ms,
        max_error_rate: 0.05,
        auto_rollback: true,
        progress_deadline_ms: tern_control_plane::rollout::DEFAULT_PROGRESS_DEADLINE_MS,
        offline_grace_ms: OFFLINE_GRACE_MS,
    }
}

/// How long an offline member holds its wave in [`policy`].
pub const OFFLINE_GRACE_MS: u64 = 60_000;
