#![no_main]
//! A hostile guest's `accel` calls with arbitrary arguments, through the real component
//! boundary: the hostile fixture (mode `accel`) turns each input into one call. The fixture's
//! component comes from `TERN_HOSTILE_FIXTURE` (`cargo xtask fuzz` sets it to the one
//! `cargo xtask test` builds).

use std::sync::OnceLock;

use tern_plugin_host::{EngineOptions, PluginEngine, Step, StepLimits};

#[path = "../../agent/plugin-host/tests/support/accel_calls.rs"]
#[allow(dead_code)]
mod accel_calls;

fn step() -> &'static Step {
    static STEP: OnceLock<(PluginEngine, Step)> = OnceLock::new();
    &STEP
        .get_or_init(|| {
            let path = std::env::var_os("TERN_HOSTILE_FIXTURE")
                .expect("TERN_HOSTILE_FIXTURE names hostile_fixture.wasm");
            let engine = PluginEngine::new(EngineOptions::default()).expect("engine");
            let plugin = engine.load_file(std::path::Path::new(&path)).expect("fixture");
            let step = plugin
                .step(
                    "hostile",
                    r#"{"mode": "accel"}"#,
                    StepLimits::from_manifest(Some(2_000), Some(64)),
                )
                .expect("step");
            (engine, step)
        })
        .1
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| accel_calls::check(step(), data));
