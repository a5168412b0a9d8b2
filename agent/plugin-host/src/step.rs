//! A configured step and its pool of instances.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::Store;

use wasmtime_wasi::WasiCtxBuilder;

use crate::bindings::{Plugin as Bindings, PluginPre};
use crate::error::{FailureCause, StepFailure};
use crate::limits::StepLimits;
use crate::metrics::MetricsSink;
use crate::output;
use crate::runtime::{EPOCH_TICK, EngineShared};
use crate::state::{MemoryCap, StepState};
use crate::stdio::GuestOutput;
use crate::{Payload, StepError};

/// WASI resources (streams, pollables) one instance may hold.
const MAX_GUEST_RESOURCES: usize = 1024;

/// A clock frozen at zero: plugins get no time source.
struct Frozen;

impl wasmtime_wasi::HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// An instance ready for requests: configured, not poisoned by a trap.
struct Live {
    store: Store<StepState>,
    bindings: Bindings,
    _counted: Counted,
}

/// The instances of one step that exist, counted by the instances themselves rather than by
/// the pool's admission bookkeeping (`Step::alive`), so that a slip in that bookkeeping shows.
#[derive(Debug, Default)]
struct InstanceCount {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// One instance's place in its step's [`InstanceCount`], from the creation of its store until
/// it is dropped.
struct Counted(Arc<InstanceCount>);

impl Counted {
    fn new(count: &Arc<InstanceCount>) -> Self {
        let now = count.now.fetch_add(1, Ordering::SeqCst) + 1;
        count.peak.fetch_max(now, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One pipeline step: a plugin, its configuration and limits, and warm instances.
/// `process` may be called from many threads at once; each call gets an instance of its own, up
/// to `max_instances`, beyond which calls wait for one.
pub struct Step {
    name: Arc<str>,
    config: Arc<str>,
    limits: StepLimits,
    pre: PluginPre<StepState>,
    shared: Arc<EngineShared>,
    idle: Mutex<Vec<Live>>,
    /// Instances alive (idle or busy).
    alive: Mutex<usize>,
    released: Condvar,
    /// Instances that exist, as they count themselves.
    instances: Arc<InstanceCount>,
    /// Where this step's custom metrics go.
    metrics: Arc<dyn MetricsSink>,
    /// Largest linear memory an instance had after a call, since [`Step::take_peak_memory`].
    peak_memory: AtomicU64,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Step {
    pub(crate) fn new(
        name: &str,
        config: &str,
        limits: StepLimits,
        pre: PluginPre<StepState>,
        shared: Arc<EngineShared>,
        metrics: Option<Arc<dyn MetricsSink>>,
    ) -> Result<Self, StepFailure> {
        let step = Self {
            metrics: metrics.unwrap_or_else(|| shared.metrics.clone()),
            peak_memory: AtomicU64::new(0),
            name: name.into(),
            config: config.into(),
            limits,
            pre,
            shared,
            idle: Mutex::new(Vec::new()),
            alive: Mutex::new(1),
            released: Condvar::new(),
            instances: Arc::default(),
        };
        let first = step.instantiate()?;
        step.give_back(first);
        Ok(step)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> StepLimits {
        self.limits
    }

    fn fail(&self, cause: FailureCause) -> StepFailure {
        StepFailure {
            step: self.name.to_string(),
            cause,
        }
    }

    /// Ticks until the deadline: rounded up, plus one because the current tick may be about to
    /// end, so a deadline never fires early.
    fn deadline_ticks(&self) -> u64 {
        self.limits
            .timeout
            .as_nanos()
            .div_ceil(EPOCH_TICK.as_nanos()) as u64
            + 1
    }

    fn new_state(&self) -> StepState {
        let stderr = GuestOutput::stderr(self.name.clone());
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput::stdout(self.name.clone()))
            .stderr(stderr.clone())
            .wall_clock(Frozen)
            .monotonic_clock(Frozen)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = wasmtime::component::ResourceTable::new();
        table.set_max_capacity(MAX_GUEST_RESOURCES);
        StepState {
            wasi,
            table,
            memory: MemoryCap::new(self.limits.memory_bytes),
            step: self.name.clone(),
            stderr,
            metrics: self.metrics.clone(),
            accel: self.shared.accel.clone(),
        }
    }

    /// A fresh instance, configured. The caller has counted it in `alive`.
    fn instantiate(&self) -> Result<Live, StepFailure> {
        // Counted from its store on: that is where its memory lives, configured or not.
        let counted = Counted::new(&self.instances);
        let mut store = Store::new(&self.shared.engine, self.new_state());
        store.limiter(|state| &mut state.memory);
        // What wasmtime copies out of the guest in one call (its output) is bounded by the
        // step's own memory limit, not by the engine's default of 128 MiB per call.
        store.set_hostcall_fuel(self.limits.memory_bytes);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = match self.pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => {
                let cause = match classify(&store, &e, self.limits) {
                    FailureCause::Trap(msg) => FailureCause::Instantiate(msg),
                    other => other,
                };
                return Err(self.fail(cause));
            }
        };
        store.set_epoch_deadline(self.deadline_ticks());
        match bindings
            .tern_pipeline_step()
            .call_configure(&mut store, &self.config)
        {
            Ok(Ok(())) => Ok(Live {
                store,
                bindings,
                _counted: counted,
            }),
            Ok(Err(StepError { kind, message })) => {
                Err(self.fail(FailureCause::Configure { kind, message }))
            }
            Err(e) => Err(self.fail(classify(&store, &e, self.limits))),
        }
    }

    /// Returns a healthy instance to the pool, or retires it when the pool is full.
    fn give_back(&self, live: Live) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.limits.max_idle_instances {
            idle.push(live);
            drop(idle);
            self.released.notify_one();
        } else {
            drop(idle);
            // Gone before its slot frees, so that the next instance never overlaps it.
            drop(live);
            self.retire();
        }
    }

    /// An instance is gone (discarded after a trap, or not kept): its slot frees.
    fn retire(&self) {
        let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        *alive = alive.saturating_sub(1);
        self.released.notify_one();
    }

    /// An idle instance, or a new one when fewer than `max_instances` exist; otherwise waits for
    /// one to come back.
    fn acquire(&self) -> Result<Live, StepFailure> {
        loop {
            if let Some(live) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                return Ok(live);
            }
            let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
            if *alive < self.limits.max_instances {
                *alive += 1;
                drop(alive);
                return self.instantiate().inspect_err(|_| self.retire());
            }
            // Woken when an instance returns or retires; the timeout covers a wake-up that
            // happened between the idle check and the wait.
            let _ = self.released.wait_timeout(alive, Duration::from_millis(5));
        }
    }

    /// Calls `process` and checks its output.
    fn call_process(
        &self,
        live: &mut Live,
        input: &Payload,
    ) -> wasmtime::Result<Result<Payload, FailureCause>> {
        let result = live
            .bindings
            .tern_pipeline_step()
            .call_process(&mut live.store, input)?;
        Ok(match result {
            Ok(payload) => output::validate(&payload)
                .map(|()| payload)
                .map_err(FailureCause::InvalidOutput),
            Err(StepError { kind, message }) => Err(FailureCause::Guest { kind, message }),
        })
    }

    /// Runs one request. A failure of the guest's own making (`step-error`) keeps the instance;
    /// a trap, deadline, memory overrun or unusable output discards it.
    pub fn process(&self, input: &Payload) -> Result<Payload, StepFailure> {
        let _span = tracing::debug_span!("step", step = %self.name).entered();
        let mut live = self.acquire()?;
        live.store.set_epoch_deadline(self.deadline_ticks());
        let result = self.call_process(&mut live, input);
        self.peak_memory.fetch_max(
            live.store.data().memory.used_bytes as u64,
            Ordering::Relaxed,
        );
        let cause = match result {
            Ok(Ok(output)) => {
                self.give_back(live);
                return Ok(output);
            }
            Ok(Err(cause @ FailureCause::Guest { .. })) => {
                self.give_back(live);
                return Err(self.fail(cause));
            }
            Ok(Err(cause)) => cause,
            Err(e) => classify(&live.store, &e, self.limits),
        };
        drop(live);
        self.retire();
        tracing::warn!(step = %self.name, %cause, "instance discarded");
        Err(self.fail(cause))
    }

    /// The largest linear memory (all memories of one instance) seen after a call since the
    /// last time this was asked, in bytes; resets to 0.
    pub fn take_peak_memory(&self) -> u64 {
        self.peak_memory.swap(0, Ordering::Relaxed)
    }

    /// The most instances this step has had at once (busy, idle, or being configured) since it
    /// was made. Never above [`StepLimits::max_instances`]: the cap bounds the step's memory.
    pub fn peak_live_instances(&self) -> usize {
        self.instances.peak.load(Ordering::SeqCst)
    }

    /// Instances kept warm right now.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What wasmtime says when a copy out of the guest exceeds the store's hostcall fuel.
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Names the cause of a trap.
fn classify(store: &Store<StepState>, error: &wasmtime::Error, limits: StepLimits) -> FailureCause {
    let state = store.data();
    if state.memory.exceeded {
        return FailureCause::MemoryLimit {
            limit_mib: limits.memory_bytes >> 20,
            output: false,
        };
    }
    // wasmtime's own error type for it is private: its message is what it says.
    if (error.chain()).any(|e| e.to_string().contains(HOSTCALL_FUEL_EXHAUSTED)) {
        return FailureCause::MemoryLimit {
            limit_mib: limits.memory_bytes >> 20,
            output: true,
        };
    }
    let trap = error.downcast_ref::<wasmtime::Trap>();
    if let Some(wasmtime::Trap::Interrupt) = trap {
        return FailureCause::Timeout(limits.timeout);
    }
    if let Some(message) = state.stderr.panic_message() {
        return FailureCause::Panic(message);
    }
    FailureCause::Trap(match trap {
        Some(wasmtime::Trap::StackOverflow) => "wasm stack exhausted (unbounded recursion?)".into(),
        // Languages with a shadow stack in linear memory (Rust, C) overflow it this way.
        Some(wasmtime::Trap::MemoryOutOfBounds) => {
            "out-of-bounds memory access (a stack overflow in the guest, or a bad pointer)".into()
        }
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    })
}
