//! The plugin engine: configuring wasmtime and the linker, and loading components.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::accel::{Accel, AutoAccel};
use crate::bindings::{Plugin as Bindings, PluginPre};
use crate::cache::CompileCache;
use crate::error::{LoadError, StepFailure};
use crate::limits::StepLimits;
use crate::metrics::{MetricsSink, NoMetrics};
use crate::runtime::EngineShared;
use crate::state::StepState;
use crate::step::Step;

/// Wasm stack a call may use before it traps.
const MAX_WASM_STACK: usize = 1 << 20;

/// How to build a [`PluginEngine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled components are cached (none: compile on every load).
    pub cache_dir: Option<PathBuf>,
    /// Receives plugins' custom metrics.
    pub metrics: Arc<dyn MetricsSink>,
    /// Serves the `accel` interface.
    pub accel: Arc<dyn Accel>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            metrics: Arc::new(NoMetrics),
            accel: Arc::new(AutoAccel::default()),
        }
    }
}

impl std::fmt::Debug for dyn MetricsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSink")
    }
}

/// The WASI clock interface whose timers we replace.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Plugins get no clock, and no way to wait: a timer would block the host thread inside a host
/// call, where the epoch deadline cannot interrupt it. Subscribing to one traps instead.
fn forbid_timers(linker: &mut Linker<StepState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::format_err!(
                "plugins cannot sleep or wait for time"
            ))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::format_err!(
                "plugins cannot sleep or wait for time"
            ))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Loads and runs plugins. Cheap to share (`Arc` inside); one per agent.
#[derive(Clone)]
pub struct PluginEngine {
    shared: Arc<EngineShared>,
    cache: Option<Arc<CompileCache>>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    pub fn new(options: EngineOptions) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;

        let mut linker = Linker::new(&engine);
        // WASI is linked so that components built for wasm32-wasip2 instantiate; each store's
        // context grants nothing (see `Step::new_state`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        forbid_timers(&mut linker).map_err(|e| LoadError::Engine(e.to_string()))?;
        Bindings::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| LoadError::Engine(e.to_string()))?;

        let cache = match &options.cache_dir {
            Some(dir) => Some(Arc::new(CompileCache::open(dir, &engine)?)),
            None => None,
        };
        Ok(Self {
            shared: Arc::new(EngineShared::new(
                engine,
                linker,
                options.metrics,
                options.accel,
            )?),
            cache,
        })
    }

    /// Reads and loads a component file.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Compiles a component (or takes it from the cache) and checks that it is a
    /// `tern:pipeline/plugin`.
    #[tracing::instrument(skip_all, fields(bytes = bytes.len()))]
    pub fn load(&self, bytes: &[u8]) -> Result<Plugin, LoadError> {
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(LoadError::CoreModule),
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm),
        }
        let digest: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(bytes).into()
        };
        let engine = &self.shared.engine;
        let cached = self.cache.as_ref().and_then(|c| c.load(engine, &digest));
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(engine, bytes)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                // A full or read-only cache slows the next start; it must not fail this load.
                if let Some(cache) = &self.cache
                    && let Err(e) = cache.store(&component, &digest)
                {
                    tracing::warn!(error = %e, "cannot cache the compiled component");
                }
                component
            }
        };
        let instance_pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre =
            PluginPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        Ok(Plugin {
            pre,
            digest,
            shared: self.shared.clone(),
        })
    }
}

/// A loaded, checked component; steps are made from it.
#[derive(Clone)]
pub struct Plugin {
    pre: PluginPre<StepState>,
    digest: [u8; 32],
    shared: Arc<EngineShared>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("digest", &hex::encode(self.digest))
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// SHA-256 of the component's bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// A step running this plugin with `config` (JSON) under `limits`. One instance is created
    /// and configured now, so a bad configuration fails here rather than on the first request.
    pub fn step(&self, name: &str, config: &str, limits: StepLimits) -> Result<Step, StepFailure> {
        self.step_with_metrics(name, config, limits, None)
    }

    /// Like [`Plugin::step`], with the step's custom metrics going to `metrics`, when given,
    /// instead of the engine's sink.
    pub fn step_with_metrics(
        &self,
        name: &str,
        config: &str,
        limits: StepLimits,
        metrics: Option<Arc<dyn MetricsSink>>,
    ) -> Result<Step, StepFailure> {
        Step::new(
            name,
            config,
            limits,
            self.pre.clone(),
            self.shared.clone(),
            metrics,
        )
    }
}
