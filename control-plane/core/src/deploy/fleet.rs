//! The fleet as the work lease's holder keeps it: agents, what each was given and the
//! deployments, in memory, read once per term and then kept current by events (an apply, a
//! report, a connect, a record written by any replica and heard through the change feed).
//! A pass plans only what the events since the last one touched, and its outbox is the only
//! place a desired state is built and signed: it records each new generation with its signed
//! form ([`super::desired`]), and sessions on every replica send that.
//!
//! Events wait in an [`Inbox`] (filled by sessions and the change feed while a pass runs);
//! [`Fleet::pass`] takes them. Time moves rollouts only at their deadlines
//! ([`Pass::next_deadline_ms`]): no pass reads the whole fleet again, except at the start of a
//! term, after the change feed lost track ([`Inbox::missed`]) and after a pass failed. A
//! health report only steps the rollouts that observe its agent; a status report, a connect or
//! a record also recomputes what the agent is given.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tern_proto::message::SignedDesiredState;
use tern_proto::release::Digest;
use tern_proto::trust::SignedTrustRoot;
use tracing::{info, warn};

use super::desired::AgentDesired;
use super::plan::{self, Given, Moved, Observe, Wanted};
use super::{DeployContext, DeployError, Lookups, build, observe};
use crate::backend::Change;
use crate::catalog::DeploymentRecord;
use crate::registry::AgentRecord;
use crate::rollout::Transition;

/// What happened since the last pass.
#[derive(Debug, Default)]
pub struct Events {
    /// Agents (by id) that reported their status, connected or went away: what each is given
    /// is recomputed, and the active rollouts that select it step.
    agents: BTreeSet<String>,
    /// Agents (by id) that reported health only: the active rollouts that select them step.
    health: BTreeSet<String>,
    /// Agent records written (by id; `None`: deleted).
    records: BTreeMap<String, Option<AgentRecord>>,
    /// Releases written (new, or co-signed).
    releases: BTreeSet<Digest>,
    /// The catalog or the trust root changed.
    catalog: bool,
    /// The change feed lost track: everything is read again.
    missed: bool,
}

impl Events {
    /// Whether a pass should run at once (a change an operator made), not with the next
    /// batch of reports and records.
    pub fn urgent(&self) -> bool {
        self.catalog || self.missed || !self.releases.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.health.is_empty()
            && self.records.is_empty()
            && !self.urgent()
    }
}

/// Where events wait for the next pass; filled from any thread, each event calling the
/// waker the server gave (which wakes its planner).
#[derive(Default)]
pub struct Inbox {
    events: Mutex<Events>,
    wake: Option<Box<dyn Fn() + Send + Sync>>,
    /// Off on a replica that does not hold the work lease: events are dropped (a term starts
    /// by reading the whole fleet).
    closed: AtomicBool,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox that calls `wake` after every event.
    pub fn with_waker(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            events: Mutex::default(),
            wake: Some(Box::new(wake)),
            closed: AtomicBool::new(false),
        }
    }

    /// Drops events from now on (`false`) or keeps them again (`true`; what came meanwhile is
    /// gone: the next pass reads the whole fleet).
    pub fn keep(&self, keep: bool) {
        if !keep {
            self.take();
        }
        self.closed.store(!keep, Ordering::Relaxed);
    }

    fn with(&self, f: impl FnOnce(&mut Events)) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        f(&mut self.events());
        if let Some(wake) = &self.wake {
            wake();
        }
    }

    /// `agent` reported, connected or went away.
    pub fn touch(&self, agent_id: &str) {
        self.with(|e| {
            if !e.agents.contains(agent_id) {
                e.agents.insert(agent_id.to_owned());
            }
        });
    }

    /// `agent` reported its health: only the rollouts that observe it care.
    pub fn health(&self, agent_id: &str) {
        self.with(|e| {
            if !e.health.contains(agent_id) {
                e.health.insert(agent_id.to_owned());
            }
        });
    }

    /// What a commit heard through the change feed changed of the fleet; returns whether it
    /// touched anything a pass plans on.
    pub fn heard(&self, changes: &[Change]) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let records: Vec<_> = crate::registry::written(changes).collect();
        let (releases, trust) = crate::releases::changed(changes);
        let catalog = trust || crate::catalog::changed(changes);
        if records.is_empty() && releases.is_empty() && !catalog {
            return false;
        }
        self.with(|e| {
            e.records.extend(records);
            e.releases.extend(releases);
            e.catalog |= catalog;
        });
        true
    }

    /// The change feed lost track of commits.
    pub fn missed(&self) {
        self.with(|e| e.missed = true);
    }

    /// Whether the waiting events ask for a pass at once.
    pub fn urgent(&self) -> bool {
        self.events().urgent()
    }

    /// The events so far; the inbox starts empty again.
    pub fn take(&self) -> Events {
        std::mem::take(&mut *self.events())
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// New desired states recorded in the outbox, by agent id: the holder's sessions send
    /// them at once (the other replicas', on hearing the commit).
    pub sent: Vec<(String, SignedDesiredState)>,
    /// Rollouts that moved.
    pub moved: Vec<Moved>,
    /// Deployments whose rollouts were stepped.
    pub planned: usize,
    /// Agents whose desired state was recomputed.
    pub assigned: usize,
    /// When time alone moves a rollout next: the next pass is due then at the latest.
    pub next_deadline_ms: Option<u64>,
    /// Whether it read the whole fleet first (a new term, a lost feed, a failed pass).
    pub read_all: bool,
}

/// The fleet the work lease's holder plans on.
#[derive(Debug, Default)]
pub struct Fleet {
    /// False until read (and after the change feed lost track).
    loaded: bool,
    /// By name (the order rollouts fill their waves in); revoked agents are left out.
    agents: BTreeMap<String, AgentRecord>,
    /// Agent id → name.
    names: HashMap<String, String>,
    /// Agent id → what it was last given (records that cannot be read are left out, and their
    /// agents get nothing new until they can).
    desired: HashMap<String, AgentDesired>,
    unreadable: HashSet<String>,
    /// Agents whose record has no signed state in the outbox at its generation (written by
    /// an older version): signed again at the next pass.
    unsigned: HashSet<String>,
    deployments: BTreeMap<String, DeploymentRecord>,
    /// The catalog generation `deployments` were read at.
    catalog_generation: Option<u64>,
    trust_version: Option<u64>,
    /// Deployment → when time alone moves its rollout next.
    due: BTreeMap<String, u64>,
    /// Agents whose desired state could not be built: tried again at every pass.
    retry: HashSet<String>,
}

impl Fleet {
    /// Agents the fleet holds (revoked ones left out).
    pub fn agents(&self) -> usize {
        self.agents.len()
    }

    /// Reads the whole fleet: at the start of a term, and after the change feed lost track.
    fn load(&mut self, cx: &DeployContext<'_>) -> Result<(), DeployError> {
        let agents = cx.registry.agents()?;
        self.agents = (agents.into_iter())
            .filter(|a| a.revoked_ms.is_none())
            .map(|a| (a.name.clone(), a))
            .collect();
        self.names = (self.agents.values())
            .map(|a| (a.id.clone(), a.name.clone()))
            .collect();
        self.desired.clear();
        self.unreadable.clear();
        for (agent, record) in cx.desired.all()? {
            match record {
                Ok(record) => {
                    self.desired.insert(agent, record);
                }
                Err(e) => {
                    warn!(%agent, error = %e, "cannot read the desired state; the agent gets nothing new until it can be read");
                    self.unreadable.insert(agent);
                }
            }
        }
        let signed: HashMap<String, u64> = (cx.desired.signed_all()?.into_iter())
            .filter_map(|(agent, s)| Some((agent, s.ok()?.generation)))
            .collect();
        self.unsigned = (self.desired.iter())
            .filter(|(agent, d)| signed.get(*agent) != Some(&d.generation))
            .map(|(agent, _)| agent.clone())
            .collect();
        self.catalog_generation = None;
        self.deployments.clear();
        self.trust_version = None;
        self.due.clear();
        self.retry.clear();
        self.loaded = true;
        info!(
            agents = self.agents.len(),
            desired = self.desired.len(),
            "fleet read for planning"
        );
        Ok(())
    }

    /// One pass over what `events` touched (everything, the first time): rollouts step,
    /// changed desired states are built, signed and recorded in the outbox. After an error
    /// (the store gone for a while, the catalog changed under the pass) the next pass reads
    /// the whole fleet again: what this one left undone is not lost.
    pub fn pass(
        &mut self,
        cx: &DeployContext<'_>,
        events: Events,
        now_ms: u64,
    ) -> Result<Pass, DeployError> {
        let passed = self.pass_touched(cx, events, now_ms);
        if passed.is_err() {
            self.loaded = false;
        }
        passed
    }

    fn pass_touched(
        &mut self,
        cx: &DeployContext<'_>,
        events: Events,
        now_ms: u64,
    ) -> Result<Pass, DeployError> {
        let mut everything = false;
        if !self.loaded || events.missed {
            // Marked unread first: a read that fails is tried again at the next pass.
            self.loaded = false;
            self.load(cx)?;
            everything = true;
        }
        // Agents whose desired state is recomputed.
        let mut affected: BTreeSet<String> = BTreeSet::new();
        // Deployments whose rollouts step.
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        // Labels of agents new, gone, revoked or relabelled (before, after): the deployments
        // that select either step.
        let mut relabelled = Vec::new();
        for (id, record) in events.records {
            let record = record.filter(|r| r.revoked_ms.is_none());
            let before = (self.names.remove(&id)).and_then(|name| self.agents.remove(&name));
            let (old, new) = (
                before.map(|b| b.labels),
                record.as_ref().map(|r| r.labels.clone()),
            );
            if old != new {
                relabelled.push((old, new));
            }
            match record {
                Some(record) => {
                    self.names.insert(id.clone(), record.name.clone());
                    self.agents.insert(record.name.clone(), record);
                    affected.insert(id);
                }
                None => {
                    self.desired.remove(&id);
                    self.unsigned.remove(&id);
                    self.unreadable.remove(&id);
                }
            }
        }
        affected.extend(
            events
                .agents
                .into_iter()
                .filter(|a| self.names.contains_key(a)),
        );

        let lock = cx.catalog.lock()?;
        let generation = lock.generation();
        // Every catalog write moves its generation: an unchanged one (this pass's own commit
        // heard back, a trust root pinned) needs no read.
        if everything || generation != self.catalog_generation {
            let fresh: BTreeMap<String, DeploymentRecord> = (lock.deployments()?.into_iter())
                .map(|d| (d.manifest.metadata.name.clone(), d))
                .collect();
            // Deployments added, changed or deleted: their agents, old and new.
            let names: BTreeSet<&String> = fresh.keys().chain(self.deployments.keys()).collect();
            for name in names {
                let (old, new) = (self.deployments.get(name), fresh.get(name));
                if old == new {
                    continue;
                }
                dirty.insert(name.clone());
                for d in old.into_iter().chain(new) {
                    affected.extend(
                        plan::selected(d, self.agents.values())
                            .into_iter()
                            .map(|a| a.id.clone()),
                    );
                }
            }
            self.deployments = fresh;
            self.catalog_generation = generation;
        }
        let trust = cx.releases.trust_root()?;
        let trust_version = trust.as_ref().map(|t| t.signed.version);
        if everything || trust_version != self.trust_version {
            affected.extend(self.names.keys().cloned());
            dirty.extend(self.deployments.keys().cloned());
            self.trust_version = trust_version;
        }
        for (name, deployment) in &self.deployments {
            let selector = deployment.manifest.spec.selector.selector();
            let selects = |labels: &Option<BTreeMap<String, String>>| {
                labels.as_ref().is_some_and(|l| selector.matches(l))
            };
            if relabelled
                .iter()
                .any(|(old, new)| selects(old) || selects(new))
            {
                dirty.insert(name.clone());
            }
        }
        // Agents with no signed state at their generation get a new one; those whose releases
        // were co-signed since get theirs with the new signatures, if that changes them.
        let unsigned = std::mem::take(&mut self.unsigned);
        let cosigned: HashSet<String> = if events.releases.is_empty() {
            HashSet::new()
        } else {
            (self.desired.iter())
                .filter(|(_, d)| d.artifacts.iter().any(|a| events.releases.contains(a)))
                .map(|(agent, _)| agent.clone())
                .collect()
        };
        affected.extend(unsigned.iter().chain(&cosigned).cloned());
        affected.extend(std::mem::take(&mut self.retry));

        // Active rollouts step when one of their agents was heard from, or at a deadline.
        for (name, deployment) in &self.deployments {
            if !deployment.rollout.as_ref().is_some_and(|r| r.is_active()) {
                continue;
            }
            let due = self.due.get(name).is_some_and(|&at| at <= now_ms);
            let selector = deployment.manifest.spec.selector.selector();
            let heard = affected.iter().chain(&events.health).any(|id| {
                (self.names.get(id).and_then(|n| self.agents.get(n)))
                    .is_some_and(|a| selector.matches(&a.labels))
            });
            if due || heard {
                dirty.insert(name.clone());
            }
        }

        let mut out = Pass {
            planned: dirty.len(),
            read_all: everything,
            ..Pass::default()
        };
        let observe = |agent: &AgentRecord, pipeline: &str, target: u64, window_ms: u64| {
            observe(cx, agent, pipeline, target, window_ms, now_ms)
        };
        let mut stepped = Vec::new();
        for name in &dirty {
            let Some(deployment) = self.deployments.get(name) else {
                self.due.remove(name);
                continue;
            };
            let mut deployment = deployment.clone();
            let selected = plan::selected(&deployment, self.agents.values());
            let moved = plan::step_rollout(&mut deployment, &selected, &observe, now_ms);
            let due = deadline(&deployment, &selected, &observe, now_ms);
            match due {
                Some(at) => self.due.insert(name.clone(), at),
                None => self.due.remove(name),
            };
            let before = self.deployments.get(name);
            if before.is_some_and(|b| gives_otherwise(b, &deployment)) {
                affected.extend(selected.iter().map(|a| a.id.clone()));
            }
            if !moved.is_empty() || Some(&deployment) != before {
                stepped.push(deployment);
            }
            out.moved.extend(moved);
        }
        for moved in &out.moved {
            let (deployment, revision) = (&moved.deployment, moved.revision);
            match &moved.transition {
                Transition::RolledBack { reason } | Transition::Failed { reason } => {
                    warn!(%deployment, revision, %reason, "rollout {}", moved.phase)
                }
                other => info!(%deployment, revision, transition = ?other, "rollout"),
            }
        }
        for deployment in &stepped {
            lock.put_deployment(deployment);
        }
        // Every rollout this pass moved, at once: desired states follow only a plan that
        // landed. One that did not (the catalog changed meanwhile) is planned again.
        lock.commit()?;
        self.catalog_generation = lock.generation();
        for deployment in stepped {
            (self.deployments).insert(deployment.manifest.metadata.name.clone(), deployment);
        }
        drop(lock);

        // What the deployments give the affected agents, deployment by deployment.
        let (agents, names) = (&self.agents, &self.names);
        let members: Vec<&AgentRecord> = (affected.iter())
            .filter_map(|id| agents.get(names.get(id)?))
            .collect();
        let mut wanted = Wanted::default();
        for deployment in self.deployments.values() {
            plan::give(
                deployment,
                &plan::selected(deployment, members.iter().copied()),
                &mut wanted,
            );
        }
        for c in &wanted.conflicts {
            warn!(deployment = %c.deployment, agent = %c.agent, pipeline = %c.pipeline, "another deployment already runs this pipeline on this agent; ignored");
        }
        out.assigned = members.len();
        let lookups = Lookups::default();
        let mut changes = Vec::new();
        for agent in members {
            if self.unreadable.contains(&agent.id) {
                continue;
            }
            let given: Given = wanted.given.remove(&agent.id).unwrap_or_default();
            let holds = cx.reports.applied_generation(&agent.id).unwrap_or(0);
            let previous = self.desired.get(&agent.id);
            let again = |previous: &AgentDesired| {
                AgentDesired::successor(
                    Some(previous),
                    previous.pipelines.clone(),
                    previous.trust_version,
                    previous.variants.clone(),
                )
            };
            let record = match (
                plan::change(agent, given, previous, holds, trust_version),
                previous,
            ) {
                (Some(change), _) => change.record,
                (None, Some(previous)) if unsigned.contains(&agent.id) => again(previous),
                (None, Some(previous))
                    if cosigned.contains(&agent.id)
                        && rebuilt(cx, &lookups, &agent.id, previous, trust.as_ref(), now_ms) =>
                {
                    again(previous)
                }
                (None, _) => continue,
            };
            changes.push((agent, record));
        }
        let kept = (&mut self.desired, &mut self.unreadable, &mut self.retry);
        out.sent = outbox(cx, kept, changes, (&lookups, trust.as_ref()), now_ms)?;
        out.next_deadline_ms = self.due.values().min().copied();
        Ok(out)
    }
}

/// Builds and signs each agent's next record of `changes`, records them all in the outbox (in
/// a few transactions), and returns the states to send (`kept`: the fleet's copy of what each
/// agent was given, those it cannot read, and those to build again). One agent's failure does
/// not hold up the others.
fn outbox(
    cx: &DeployContext<'_>,
    (desired, unreadable, retry): (
        &mut HashMap<String, AgentDesired>,
        &mut HashSet<String>,
        &mut HashSet<String>,
    ),
    changes: Vec<(&AgentRecord, AgentDesired)>,
    (lookups, trust): (&Lookups, Option<&SignedTrustRoot>),
    now_ms: u64,
) -> Result<Vec<(String, SignedDesiredState)>, DeployError> {
    // Built before they are recorded: a state that cannot be built or sent is not half-made,
    // and the next pass tries again.
    let mut built = Vec::with_capacity(changes.len());
    for (agent, mut record) in changes {
        match build(cx, lookups, &agent.id, &record, trust, now_ms) {
            Ok(b) => {
                record.content = Some(b.content);
                record.artifacts = b.artifacts;
                built.push((agent, record, b.signed));
            }
            Err(e) => {
                warn!(agent = %agent.name, error = %e, "cannot build the desired state; tried again at the next pass");
                retry.insert(agent.id.clone());
            }
        }
    }
    let entries: Vec<(&str, &AgentDesired, &SignedDesiredState)> = (built.iter())
        .map(|(agent, record, signed)| (agent.id.as_str(), record, signed))
        .collect();
    let written = cx.desired.put_many(&entries)?;
    let mut sent = Vec::with_capacity(built.len());
    for ((agent, record, signed), written) in built.into_iter().zip(written) {
        if !written {
            warn!(agent = %agent.name, generation = record.generation, "another writer gave this generation first; its record is read again");
            match cx.desired.get(&agent.id) {
                Ok(Some(stored)) => {
                    desired.insert(agent.id.clone(), stored);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(agent = %agent.name, error = %e, "cannot read the desired state");
                    unreadable.insert(agent.id.clone());
                }
            }
            continue;
        }
        info!(agent = %agent.name, generation = record.generation, pipelines = ?record.pipelines, "new desired state");
        desired.insert(agent.id.clone(), record);
        sent.push((agent.id.clone(), signed));
    }
    Ok(sent)
}

/// Whether `record` no longer builds to the content it was sent with (a release it names
/// gained a co-signature since): agents refuse a generation they know with other content, so
/// it goes out as a new one.
fn rebuilt(
    cx: &DeployContext<'_>,
    lookups: &Lookups,
    agent_id: &str,
    record: &AgentDesired,
    trust: Option<&SignedTrustRoot>,
    now_ms: u64,
) -> bool {
    build(cx, lookups, agent_id, record, trust, now_ms)
        .is_ok_and(|b| record.content != Some(b.content))
}

/// Whether `after`'s rollout may give an agent another revision than `before`'s did (a
/// rollout that only counted its health window gives everyone the same as before).
fn gives_otherwise(before: &DeploymentRecord, after: &DeploymentRecord) -> bool {
    match (&before.rollout, &after.rollout) {
        (Some(b), Some(a)) => {
            (b.target, b.previous, &b.phase, &b.members, &b.returns)
                != (a.target, a.previous, &a.phase, &a.members, &a.returns)
        }
        (b, a) => b.is_some() != a.is_some(),
    }
}

/// When time alone moves `deployment`'s rollout next: its own deadline, or the end of the
/// grace of a member that is offline.
fn deadline(
    deployment: &DeploymentRecord,
    selected: &[&AgentRecord],
    observe: &Observe<'_>,
    now_ms: u64,
) -> Option<u64> {
    let rollout = deployment.rollout.as_ref().filter(|r| r.is_active())?;
    let mut due = rollout.next_deadline_ms();
    let members: HashSet<&str> = rollout.members.iter().map(String::as_str).collect();
    let grace = rollout.policy.offline_grace_ms;
    let window = rollout
        .policy
        .health_window_ms
        .max(plan::MIN_HEALTH_WINDOW_MS);
    let pipeline = &deployment.manifest.spec.pipeline;
    for agent in selected
        .iter()
        .filter(|a| members.contains(a.name.as_str()))
    {
        let seen = observe(agent, pipeline, rollout.target, window);
        if !seen.connected && seen.offline_ms <= grace {
            let at = now_ms + (grace - seen.offline_ms) + 1;
            due = Some(due.map_or(at, |d| d.min(at)));
        }
    }
    due
}
