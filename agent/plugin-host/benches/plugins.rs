//! Plugin host benchmarks. Run after `cargo xtask test` (which builds the components):
//!
//! ```text
//! cargo bench -p tern-plugin-host --bench plugins --profile dev
//! ```
//!
//! The dev profile is the one tests and CI use (dependencies at opt-level 2); the native
//! reference is compiled in the same profile, so the ratios compare like with like.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use tern_plugin_host::{Blob, CpuAccel, EngineOptions, Payload, PluginEngine, StepLimits};

/// The CPU `accel`, as the native build uses: the comparison is WebAssembly against native code.
fn cpu_options() -> EngineOptions {
    EngineOptions {
        accel: std::sync::Arc::new(CpuAccel),
        ..EngineOptions::default()
    }
}
use tern_plugin_sdk::Step as _;

#[path = "../tests/support/components.rs"]
mod components;
use components::component;

/// A 640×480 JPEG with structure (gradients and a pattern), like a camera frame.
fn jpeg_640x480() -> Vec<u8> {
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y / 7) % 256) as u8])
    });
    let mut out = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .expect("encode");
    out
}

const PREP_CONFIG: &str = r#"{"size": 224, "tensor": "input"}"#;

fn image_prep(c: &mut Criterion) {
    let jpeg = jpeg_640x480();
    let engine = PluginEngine::new(cpu_options()).expect("engine");
    let plugin = engine.load_file(&component("image_prep")).expect("loads");
    let step = plugin
        .step("prep", PREP_CONFIG, StepLimits::default())
        .expect("step");
    let input = Payload::Bytes(Blob {
        media_type: "image/jpeg".into(),
        data: jpeg.clone(),
    });

    let mut native = image_prep::ImagePrep::configure(PREP_CONFIG).expect("native step");
    let native_input =
        tern_plugin_sdk::Payload::Bytes(tern_plugin_sdk::Blob::new("image/jpeg", jpeg));

    let mut group = c.benchmark_group("image-prep 640x480 jpeg");
    group.sample_size(30);
    group.bench_function("component", |b| {
        b.iter(|| step.process(&input).expect("runs"))
    });
    group.bench_function("native", |b| {
        b.iter(|| native.process(native_input.clone()).expect("runs"))
    });
    group.finish();
}

fn per_call_overhead(c: &mut Criterion) {
    let engine = PluginEngine::new(cpu_options()).expect("engine");
    let plugin = engine
        .load_file(&component("hostile_fixture"))
        .expect("loads");
    let step = plugin
        .step("echo", r#"{"mode": "echo"}"#, StepLimits::default())
        .expect("step");
    let input = Payload::Bytes(Blob {
        media_type: "application/octet-stream".into(),
        data: vec![7u8; 1024],
    });
    c.bench_function("trivial process, 1 KiB blob", |b| {
        b.iter(|| step.process(&input).expect("echo"))
    });
}

fn instantiate(c: &mut Criterion) {
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..EngineOptions::default()
    })
    .expect("engine");
    let bytes = std::fs::read(component("topk")).expect("read");
    engine.load(&bytes).expect("compile into the cache");
    let plugin = engine.load(&bytes).expect("from the cache");
    // A step instantiates the component and calls `configure` once.
    c.bench_function("instantiate + configure topk (compiled)", |b| {
        b.iter(|| {
            plugin
                .step("post", r#"{"k": 5}"#, StepLimits::default())
                .expect("step")
        })
    });
    c.bench_function("load topk from the on-disk cache", |b| {
        b.iter(|| engine.load(&bytes).expect("cached load"))
    });
}

/// Cold compilation takes seconds: timed directly (3 runs each, 1 in the smoke form that
/// `--test` asks for), not through criterion.
fn cold_compile(runs: usize) {
    println!("\ncold compile (no cache), {runs} run(s) each:");
    println!("| plugin | component size (KiB) | median (ms) | min (ms) |");
    println!("| --- | --- | --- | --- |");
    for name in ["image_prep", "tabular_prep", "topk"] {
        let bytes = std::fs::read(component(name)).expect("read");
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let engine = PluginEngine::new(cpu_options()).expect("engine");
                let start = Instant::now();
                engine.load(&bytes).expect("compiles");
                start.elapsed()
            })
            .collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {} | {:.0} | {:.0} |",
            bytes.len() / 1024,
            ms(times[times.len() / 2]),
            ms(times[0])
        );
    }
}

criterion_group!(benches, image_prep, per_call_overhead, instantiate);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let smoke = std::env::args().any(|a| a == "--test");
    cold_compile(if smoke { 1 } else { 3 });
}
