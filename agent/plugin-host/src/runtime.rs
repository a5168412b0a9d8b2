//! What every step of every plugin shares: the wasmtime engine, the linker, where custom metrics
//! and `accel` calls go, and the ticker that advances the engine's epoch (what makes deadlines
//! fire).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::accel::Accel;
use crate::error::LoadError;
use crate::metrics::MetricsSink;
use crate::state::StepState;

/// Granularity of deadlines: the engine's epoch advances this often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Advances the engine's epoch until dropped; that is what makes deadlines fire.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Without the ticker no deadline would ever fire, so failing to start it is an error.
    fn start(engine: Engine) -> Result<Self, LoadError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tern-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the deadline ticker: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What every step of every plugin shares.
pub(crate) struct EngineShared {
    pub engine: Engine,
    pub linker: Linker<StepState>,
    pub metrics: Arc<dyn MetricsSink>,
    pub accel: Arc<dyn Accel>,
    _ticker: EpochTicker,
}

impl EngineShared {
    /// Starts the deadline ticker of `engine`.
    pub(crate) fn new(
        engine: Engine,
        linker: Linker<StepState>,
        metrics: Arc<dyn MetricsSink>,
        accel: Arc<dyn Accel>,
    ) -> Result<Self, LoadError> {
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Self {
            engine,
            linker,
            metrics,
            accel,
            _ticker: ticker,
        })
    }
}
