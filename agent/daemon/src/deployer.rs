//! The deployer: the thin async driver of the [`Reconciler`]. It verifies desired states,
//! performs the reconciler's actions (downloads, loading, switching traffic, persisting) and
//! reports to the control plane. The serving table keeps answering throughout, also while the
//! control plane is away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tern_plugin_host::{Blob, Payload, PluginEngine};
use tern_proto::AgentMessage;
use tern_proto::desired::{DesiredPipeline, DesiredVariant, Warmup};
use tern_proto::message::{HealthReport, SignedDesiredState, StatusReport};
use tern_proto::release::{ArtifactKind, Digest, SignedRelease};
use tern_proto::signing::PublicKey;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::fetch::{self, FetchError};
use crate::limits::AgentLimits;
use crate::pipeline::{LoadedPipeline, PipelineStep, StepError};
use crate::reconcile::{Action, Reconciler};
use crate::serving::{Arm, ServedPipeline, ServingTable};
use crate::store::{AgentStore, StoreError};
use crate::telemetry::meter::{PipelineMeter, StepMeter};
use tern_proto::telemetry::StepKind;

/// How often request counters go to the control plane.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts of a download that keeps failing for transient reasons, before it is reported.
const FETCH_ATTEMPTS: u32 = 8;
/// Test hook, for end-to-end tests only (never set it on a real agent): the path `P` of a
/// gate file. See [`Deployer::hold_load`].
pub const HOLD_LOAD_VAR: &str = "TERN_TEST_HOLD_LOAD";
/// How often a load held by the test hook looks at its gate again.
const HOLD_LOAD_POLL: Duration = Duration::from_millis(20);

/// What the deployer's tasks report back.
#[derive(Debug)]
enum Event {
    Fetched(Digest, Result<u64, FetchError>),
    Loaded(DesiredPipeline, Result<Arc<ServedPipeline>, LoadFailure>),
}

/// What the status reports carry besides the reconciler's state.
#[derive(Debug, Default)]
struct Reports {
    seq: u64,
    /// Why the last desired state or trust root was refused.
    refused: Option<String>,
    /// What the last report warned about: a warning that comes with time (a trust root
    /// expiring) is reported when it changes.
    warned: Vec<String>,
}

/// Everything the deployer works with.
#[derive(Debug)]
pub struct Deployer {
    pub agent_id: String,
    pub online_key: PublicKey,
    pub store: AgentStore,
    pub engine: Arc<PluginEngine>,
    /// The agent's bounds on what a desired state may ask.
    pub limits: AgentLimits,
    pub serving: Arc<ServingTable>,
    /// The current connection to the control plane, for downloads.
    pub connection: watch::Receiver<Option<quinn::Connection>>,
    /// Status and health reports for the link to send.
    pub outbox: mpsc::Sender<AgentMessage>,
    /// This run of the agent, its marker, and when a revision counts as crash-looping.
    pub run: String,
    pub exits: crate::exits::ExitPolicy,
    pub marker: Arc<crate::exits::RunMarker>,
    /// The control plane's trust roots, oldest first (from its last connection).
    pub trust_chain: watch::Receiver<Vec<tern_proto::trust::SignedTrustRoot>>,
    /// Test hook, from [`HOLD_LOAD_VAR`] (`None` on every real agent): a gate file `P`. Each
    /// load a desired state starts is marked loading in the run marker, then writes
    /// `P.loading` (`PIPELINE REVISION`) and waits while `P` exists, so that an end-to-end
    /// test can kill the agent while a revision is loading. Loads at start are not held.
    pub hold_load: Option<PathBuf>,
}

/// Why a revision could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("warm-up failed: {0}")]
    Warmup(StepError),
    #[error("warm-up sample is invalid: {0}")]
    Sample(String),
    #[error("{0}")]
    Experiment(String),
    /// Artifacts on disk no longer match their releases; they were deleted.
    #[error("artifact {} on disk no longer matches its release (deleted, to be fetched again)", .0[0])]
    Corrupt(Vec<Digest>),
    #[error("loading task failed: {0}")]
    Task(String),
}

/// The warm-up sample as a payload.
fn warmup_payload(warmup: &Warmup) -> Result<Payload, LoadFailure> {
    match warmup {
        Warmup::Blob { media_type, data } => Ok(Payload::Bytes(Blob {
            media_type: media_type.clone(),
            data: data.clone(),
        })),
        Warmup::Tensors(json) => {
            let inputs: Vec<crate::oip::RequestTensor> =
                serde_json::from_str(json).map_err(|e| LoadFailure::Sample(e.to_string()))?;
            inputs
                .iter()
                .map(crate::oip::tensor_from_request)
                .collect::<Result<Vec<_>, _>>()
                .map(Payload::Tensors)
                .map_err(|e| LoadFailure::Sample(e.0))
        }
    }
}

/// Why an artifact could not be read back.
enum ArtifactRead {
    Io(std::io::Error),
    /// Its bytes no longer match the release (disk corruption, tampering): deleted.
    Corrupt,
}

/// Reads a verified artifact back and hashes it again: what was verified when it arrived may
/// have changed on disk since.
fn read_artifact(
    store: &AgentStore,
    release: &tern_proto::release::Release,
) -> Result<Vec<u8>, ArtifactRead> {
    let path = store.artifact_path(&release.digest);
    let bytes = std::fs::read(&path).map_err(ArtifactRead::Io)?;
    if release.check_content(&bytes).is_err() {
        warn!(digest = %release.digest, "artifact on disk no longer matches its release; deleted");
        let _ = std::fs::remove_file(&path);
        return Err(ArtifactRead::Corrupt);
    }
    Ok(bytes)
}

/// Loads one arm of a pipeline revision: its steps, with `variant`'s model in place of its step's
/// release when given.
fn load_arm(
    store: &AgentStore,
    engine: &PluginEngine,
    limits: &AgentLimits,
    desired: &DesiredPipeline,
    variant: Option<&DesiredVariant>,
) -> Result<Arm, LoadFailure> {
    let mut steps = Vec::new();
    let mut meters = Vec::new();
    for step in &desired.steps {
        let release = match variant {
            Some(v) if v.step == step.name => &v.release.signed,
            _ => &step.release.signed,
        };
        let bytes = read_artifact(store, release).map_err(|e| match e {
            ArtifactRead::Io(e) => LoadFailure::Step(StepError::ModelInput {
                step: step.name.clone(),
                reason: format!("cannot read artifact {}: {e}", release.digest),
            }),
            ArtifactRead::Corrupt => LoadFailure::Corrupt(vec![release.digest]),
        })?;
        steps.push(match release.kind {
            ArtifactKind::Plugin => {
                let plugin = engine.load(&bytes).map_err(|error| StepError::Load {
                    step: step.name.clone(),
                    error,
                })?;
                let meter = Arc::new(StepMeter::new(&step.name, StepKind::Plugin, ""));
                meters.push(meter.clone());
                PipelineStep::plugin(
                    &plugin,
                    &step.name,
                    &step.config,
                    limits.step_limits(&step.name, step.timeout_ms, step.memory_mib),
                    Some(meter),
                )?
            }
            ArtifactKind::Model => {
                let model =
                    PipelineStep::model(&step.name, &bytes, step.device, limits.max_tensor_bytes)?;
                meters.push(Arc::new(StepMeter::new(
                    &step.name,
                    StepKind::Model,
                    &model.device(),
                )));
                model
            }
        });
    }
    let pipeline = LoadedPipeline { steps };
    let mut meter = PipelineMeter::new(&desired.name, desired.revision, meters);
    meter.variant = variant.map(|v| v.name.clone());
    if let Some(watched) = &desired.monitored_step
        && let Some(index) = desired.steps.iter().position(|s| &s.name == watched)
    {
        let names = pipeline.steps[index].tensor_names();
        meter = meter.with_features(index, names);
    }
    let arm = Arm {
        weight: variant.map_or(100, |v| v.weight),
        pipeline,
        meter,
    };
    if let Some(warmup) = &desired.warmup {
        arm.pipeline
            .run(warmup_payload(warmup)?)
            .map_err(LoadFailure::Warmup)?;
        // What the warm-up measured (custom metrics, memory) is not traffic.
        arm.discard();
    }
    Ok(arm)
}

/// The [`HOLD_LOAD_VAR`] test hook (blocking, on the loading thread): says which revision is
/// loading in `gate.loading`, then waits while `gate` exists.
fn hold_load(gate: &Path, desired: &DesiredPipeline) {
    let mut marker = gate.as_os_str().to_owned();
    marker.push(".loading");
    let marker = PathBuf::from(marker);
    let what = format!("{} {}\n", desired.name, desired.revision);
    if let Err(e) = std::fs::write(&marker, what) {
        warn!(marker = %marker.display(), error = %e, "test hook: cannot write the loading marker");
    }
    warn!(gate = %gate.display(), "test hook: the load waits while the gate exists");
    while gate.exists() {
        std::thread::sleep(HOLD_LOAD_POLL);
    }
}

/// Loads a pipeline revision from verified artifacts (blocking: compiles and plans), one arm
/// per A/B variant, and runs the warm-up sample through each when the manifest gives one.
pub fn load(
    store: &AgentStore,
    engine: &PluginEngine,
    limits: &AgentLimits,
    desired: &DesiredPipeline,
) -> Result<ServedPipeline, LoadFailure> {
    for variant in &desired.variants {
        let replaced = desired.steps.iter().find(|s| s.name == variant.step);
        if replaced.is_none_or(|s| s.release.signed.kind != ArtifactKind::Model) {
            return Err(LoadFailure::Experiment(format!(
                "variant {} replaces step {}, which is not a model step of this revision",
                variant.name, variant.step
            )));
        }
    }
    let arms = if desired.variants.is_empty() {
        vec![load_arm(store, engine, limits, desired, None)?]
    } else {
        desired
            .variants
            .iter()
            .map(|v| load_arm(store, engine, limits, desired, Some(v)))
            .collect::<Result<_, _>>()?
    };
    Ok(ServedPipeline::new(&desired.name, desired.revision, arms))
}

impl Deployer {
    /// Runs until `desired` closes or `shutdown` turns true.
    pub async fn run(
        self,
        mut reconciler: Reconciler,
        mut desired: watch::Receiver<Option<SignedDesiredState>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (events_tx, mut events) = mpsc::channel::<Event>(64);
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connection = self.connection.clone();
        let mut chain = self.trust_chain.clone();
        let mut reports = Reports::default();
        loop {
            let mut loaded: Option<Arc<ServedPipeline>> = None;
            let actions = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                changed = desired.changed() => {
                    if changed.is_err() { return; }
                    let Some(signed) = desired.borrow_and_update().clone() else { continue };
                    // The roots the control plane sent before this state come first: the
                    // state's own root may be several rotations ahead of the pinned one.
                    let walked = self.walk_chain(&mut reconciler, &mut chain, &mut reports);
                    let generation = signed.generation;
                    let opened = signed
                        .open(&self.online_key, &self.agent_id, reconciler.applied_generation())
                        .and_then(|state| {
                            info!(generation, pipelines = state.pipelines.len(), "desired state");
                            reconciler.desired(state, tern_clock::unix_millis_now())
                        });
                    match opened {
                        Ok(actions) => {
                            // `desired` ends with a report, which carries this.
                            reports.refused = reconciler.trust_error().map(str::to_owned);
                            let content = reconciler.applied_content();
                            if let Err(e) = self.store.set_applied_generation(generation, content) {
                                warn!(error = %e, "cannot persist the applied generation");
                            }
                            walked.into_iter().chain(actions).collect()
                        }
                        Err(e) => {
                            warn!(generation, error = %e, "desired state refused");
                            reports.refused = Some(e.to_string());
                            walked.into_iter().chain([Action::Report]).collect()
                        }
                    }
                }
                Some(event) = events.recv() => match event {
                    Event::Fetched(digest, Ok(bytes)) => {
                        info!(%digest, bytes, "artifact downloaded and verified");
                        reconciler.artifact_stored(digest)
                    }
                    Event::Fetched(digest, Err(e)) => {
                        warn!(%digest, error = %e, "artifact refused or unavailable");
                        reconciler.artifact_failed(digest, &e.to_string())
                    }
                    Event::Loaded(desired, _) if !reconciler.is_target(&desired) => {
                        // The experiment changed while it loaded: its own load is under way.
                        continue;
                    }
                    Event::Loaded(desired, Ok(pipeline)) => {
                        // Activated below if still wanted; dropped here otherwise.
                        loaded = Some(pipeline);
                        reconciler.loaded(&desired.name, desired.revision)
                    }
                    Event::Loaded(desired, Err(LoadFailure::Corrupt(lost))) => {
                        reconciler.artifacts_lost(&desired.name, desired.revision, &lost)
                    }
                    Event::Loaded(desired, Err(reason)) => {
                        let (name, revision) = (&desired.name, desired.revision);
                        warn!(pipeline = %name, revision, %reason, "revision failed to load");
                        reconciler.load_failed(name, revision, &reason.to_string())
                    }
                },
                _ = health.tick() => {
                    // Counters are cumulative: while the link is down there is nothing to queue.
                    if connection.borrow().is_none() {
                        continue;
                    }
                    let pipelines: Vec<_> = self.serving.all().iter().map(|p| p.health()).collect();
                    if !pipelines.is_empty() {
                        let _ = self.outbox.try_send(AgentMessage::Health(HealthReport { pipelines }));
                    }
                    if reconciler.warnings(tern_clock::unix_millis_now()) == reports.warned {
                        continue;
                    }
                    vec![Action::Report]
                }
                changed = chain.changed() => {
                    if changed.is_err() { return; }
                    let walked = self.walk_chain(&mut reconciler, &mut chain, &mut reports);
                    if walked.is_empty() { continue }
                    walked
                }
                changed = connection.changed() => {
                    if changed.is_err() { return; }
                    // A new connection: the control plane may have restarted and forgotten us.
                    if connection.borrow_and_update().is_none() { continue }
                    self.report_exits();
                    vec![Action::Report]
                }
            };
            for action in actions {
                if let Err(e) =
                    self.perform(action, &events_tx, &mut loaded, &reconciler, &mut reports)
                {
                    warn!(error = %e, "cannot persist the agent's state");
                }
            }
        }
    }

    /// Pins the roots of the control plane's chain the pinned one leads to, one by one; the
    /// actions that follow (pins, serving revisions checked again, a report).
    fn walk_chain(
        &self,
        reconciler: &mut Reconciler,
        chain: &mut watch::Receiver<Vec<tern_proto::trust::SignedTrustRoot>>,
        reports: &mut Reports,
    ) -> Vec<Action> {
        let roots = chain.borrow_and_update().clone();
        let actions = reconciler.walk_trust_chain(&roots);
        if !actions.is_empty() {
            reports.refused = reconciler.trust_error().map(str::to_owned);
        }
        actions
    }

    /// Sends the unclean exits within the window, if there are any.
    fn report_exits(&self) {
        let ledger = match self.store.exit_ledger() {
            Ok(ledger) => ledger,
            Err(e) => {
                warn!(error = %e, "cannot read the exit ledger");
                return;
            }
        };
        if let Some(report) = ledger.report(&self.run, self.exits, tern_clock::unix_millis_now()) {
            let _ = self.outbox.try_send(AgentMessage::Exits(report));
        }
    }

    /// Whether the revision `pipeline` serves now may become its last-known-good one: the
    /// agent never died under it within the window.
    fn serving_is_good(&self, pipeline: &str) -> bool {
        let Some(serving) = self.serving.get(pipeline) else {
            return false;
        };
        self.store
            .exit_ledger()
            .is_ok_and(|ledger| ledger.count(pipeline, serving.revision) == 0)
    }

    fn perform(
        &self,
        action: Action,
        events: &mpsc::Sender<Event>,
        loaded: &mut Option<Arc<ServedPipeline>>,
        reconciler: &Reconciler,
        reports: &mut Reports,
    ) -> Result<(), StoreError> {
        match action {
            Action::PinTrustRoot(root) => {
                info!(version = root.signed.version, "trust root pinned");
                self.store.pin_trust_root(&root)?;
            }
            Action::RaiseFloors(floors) => self.store.raise_floors(&floors)?,
            Action::Fetch(release) => self.spawn_fetch(release, events.clone()),
            Action::Load(desired) => self.spawn_load(desired, events.clone()),
            Action::Activate(desired) => {
                // Persisted first: after a crash the agent restarts on this revision.
                self.store
                    .activate(&desired, self.serving_is_good(&desired.name))?;
                if let Some(pipeline) = loaded.take() {
                    self.serving.switch(pipeline);
                    self.marker.serving(&desired.name, Some(desired.revision));
                    info!(pipeline = %desired.name, revision = desired.revision, "now serving");
                }
            }
            Action::Remove(name) => {
                self.store.remove(&name)?;
                self.serving.remove(&name);
                self.marker.serving(&name, None);
                info!(pipeline = %name, "removed");
            }
            Action::Record(desired) => self.store.activate(&desired, false)?,
            Action::Stop(name) => {
                self.store.remove(&name)?;
                self.serving.remove(&name);
                self.marker.serving(&name, None);
                warn!(pipeline = %name, "stopped serving: the revision no longer verifies");
            }
            Action::ClearPutAside(name) => {
                let mut ledger = self.store.exit_ledger()?;
                if ledger.clear(&name) {
                    self.store.put_exit_ledger(&ledger)?;
                    info!(pipeline = %name, "desired states no longer name the revision put aside: the mark is dropped");
                }
            }
            Action::Report => {
                let status = reconciler.status();
                self.serving.set_pending(
                    status
                        .iter()
                        .filter(|p| p.serving.is_none())
                        .map(|p| p.name.clone())
                        .collect(),
                );
                reports.seq += 1;
                let report = StatusReport {
                    seq: reports.seq,
                    applied_generation: reconciler.applied_generation(),
                    pipelines: status,
                    refused: reports.refused.clone(),
                    warnings: reconciler.warnings(tern_clock::unix_millis_now()),
                };
                reports.warned.clone_from(&report.warnings);
                let _ = self.outbox.try_send(AgentMessage::Status(report));
            }
        }
        Ok(())
    }

    fn spawn_fetch(&self, release: SignedRelease, events: mpsc::Sender<Event>) {
        let store = self.store.clone();
        let mut connection = self.connection.clone();
        let keep_free = self.limits.min_free_disk_bytes;
        let release = release.signed;
        let span =
            info_span!("fetch", release = %release.reference(), digest = %release.digest.short());
        tokio::spawn(
            async move {
                let mut attempt = 0;
                let result = loop {
                    // Wait for a link; downloads resume where they stopped.
                    let conn = match connection.wait_for(Option::is_some).await {
                        Ok(conn) => conn.clone(),
                        Err(_) => return,
                    };
                    let Some(conn) = conn else { continue };
                    let kept = || {
                        std::fs::metadata(store.partial_path(&release.digest))
                            .map_or(0, |m| m.len())
                    };
                    let before = kept();
                    match fetch::fetch(&conn, &store, &release, keep_free).await {
                        Err(e) if e.is_transient() && attempt < FETCH_ATTEMPTS => {
                            // Only attempts that got nothing count towards giving up.
                            attempt = if kept() > before { 1 } else { attempt + 1 };
                            tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                        }
                        other => break other,
                    }
                };
                let _ = events.send(Event::Fetched(release.digest, result)).await;
            }
            .instrument(span),
        );
    }

    fn spawn_load(&self, desired: DesiredPipeline, events: mpsc::Sender<Event>) {
        // A load that kills the agent counts against the revision as serving would.
        self.marker.loading(&desired.name, desired.revision, true);
        let store = self.store.clone();
        let engine = self.engine.clone();
        let limits = self.limits;
        let marker = self.marker.clone();
        let hold = self.hold_load.clone();
        let span = info_span!("load", pipeline = %desired.name, revision = desired.revision);
        tokio::spawn(
            async move {
                let wanted = desired.clone();
                let result = tokio::task::spawn_blocking(move || {
                    if let Some(gate) = &hold {
                        hold_load(gate, &desired);
                    }
                    load(&store, &engine, &limits, &desired)
                })
                .await
                .map_err(|e| LoadFailure::Task(e.to_string()))
                .and_then(|r| r.map(Arc::new));
                marker.loading(&wanted.name, wanted.revision, false);
                let _ = events.send(Event::Loaded(wanted, result)).await;
            }
            .instrument(span),
        );
    }
}
