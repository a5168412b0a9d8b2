//! The host running real components built from `plugins/` (by `cargo xtask test`, for
//! wasm32-wasip2): reference plugins, and fixtures that misbehave on purpose.

use std::sync::Arc;
use std::time::Duration;

use tern_plugin_host::{
    Blob, Dtype, EngineOptions, ErrorKind, FailureCause, LoadError, Payload, PluginEngine,
    RecordedMetrics, Step, StepLimits, Tensor,
};

#[path = "support/components.rs"]
mod components;
use components::component;

#[path = "support/accel_calls.rs"]
mod accel_calls;

fn engine() -> PluginEngine {
    PluginEngine::new(EngineOptions::default()).expect("engine")
}

fn hostile(
    engine: &PluginEngine,
    mode: &str,
    limits: StepLimits,
) -> Result<Step, tern_plugin_host::StepFailure> {
    let plugin = engine
        .load_file(&component("hostile_fixture"))
        .expect("fixture loads");
    plugin.step("hostile", &format!(r#"{{"mode": "{mode}"}}"#), limits)
}

fn text(t: &str) -> Payload {
    Payload::Bytes(Blob {
        media_type: "text/plain".into(),
        data: t.as_bytes().to_vec(),
    })
}

fn limits(timeout_ms: u64, memory_mib: u64) -> StepLimits {
    StepLimits::from_manifest(Some(timeout_ms), Some(memory_mib))
}

fn echoes(step: &Step) {
    match step
        .process(&text("echo"))
        .expect("the next request is served")
    {
        Payload::Bytes(b) => assert_eq!(b.data, b"echo"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn infinite_loop_stops_at_its_deadline_and_the_next_request_is_served() {
    let engine = engine();
    let step = hostile(&engine, "input", limits(100, 64)).expect("step");
    // The deadline is what stops it (the cause says so); how fast is for benchmarks.
    let err = step
        .process(&text("loop"))
        .expect_err("must not return normally");
    assert_eq!(
        err.cause,
        FailureCause::Timeout(Duration::from_millis(100)),
        "{err}"
    );
    assert!(err.to_string().starts_with("step hostile:"), "{err}");
    echoes(&step);
}

#[test]
fn growing_memory_past_the_limit_fails_cleanly() {
    let engine = engine();
    let step = hostile(&engine, "input", limits(5_000, 32)).expect("step");
    let err = step.process(&text("grow")).expect_err("must fail");
    assert_eq!(
        err.cause,
        FailureCause::MemoryLimit {
            limit_mib: 32,
            output: false
        },
        "{err}"
    );
    echoes(&step);
}

#[test]
fn aliased_output_is_bounded_by_the_steps_own_memory_limit() {
    let engine = engine();
    let step = hostile(&engine, "input", limits(5_000, 32)).expect("step");
    // 64 lists aliasing one 1 MiB buffer: 64 MiB to copy, under wasmtime's default budget of
    // 128 MiB per call, over this step's 32 MiB.
    let err = step.process(&text("alias:64")).expect_err("must fail");
    assert_eq!(
        err.cause,
        FailureCause::MemoryLimit {
            limit_mib: 32,
            output: true
        },
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("step hostile: memory limit of 32 MiB exceeded by its output"),
        "{err}"
    );
    // 4,096 of them (4 GiB) fail the same way, and the step keeps serving.
    let err = step.process(&text("alias")).expect_err("must fail");
    assert!(
        matches!(err.cause, FailureCause::MemoryLimit { output: true, .. }),
        "{err}"
    );
    echoes(&step);
}

#[test]
fn unbounded_recursion_traps() {
    let engine = engine();
    let step = hostile(&engine, "input", limits(5_000, 64)).expect("step");
    let err = step.process(&text("recurse")).expect_err("must trap");
    assert!(
        matches!(&err.cause, FailureCause::Trap(m) if m.contains("stack")),
        "{err}"
    );
    echoes(&step);
}

#[test]
fn guest_panic_becomes_a_step_error_with_its_message() {
    let engine = engine();
    let step = hostile(&engine, "input", StepLimits::default()).expect("step");
    let err = step.process(&text("panic")).expect_err("must fail");
    assert!(
        matches!(&err.cause, FailureCause::Panic(m) if m.contains("hostile fixture panicked on purpose")),
        "{err}"
    );
    echoes(&step);
}

#[test]
fn guest_errors_keep_the_instance_and_traps_discard_it() {
    let engine = engine();
    let step = hostile(&engine, "input", StepLimits::default()).expect("step");
    assert_eq!(step.idle_instances(), 1);
    let err = step.process(&text("fail")).expect_err("must fail");
    assert!(
        matches!(
            &err.cause,
            FailureCause::Guest {
                kind: ErrorKind::InvalidInput,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        step.idle_instances(),
        1,
        "a step-error must not cost the instance"
    );
    step.process(&text("panic")).expect_err("must fail");
    assert_eq!(
        step.idle_instances(),
        0,
        "a trapped instance must be discarded"
    );
    echoes(&step);
    assert_eq!(step.idle_instances(), 1);
}

#[test]
fn plugins_get_no_files_environment_sockets_or_clock() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let engine = engine();
    let plugin = engine
        .load_file(&component("hostile_fixture"))
        .expect("loads");
    let step = plugin
        .step(
            "probe",
            &format!(r#"{{"mode": "probe", "port": {port}}}"#),
            StepLimits::default(),
        )
        .expect("step");
    let Payload::Bytes(out) = step.process(&text("")).expect("probe runs") else {
        panic!("expected JSON")
    };
    let seen: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.data).expect("JSON");
    for key in [
        "read_file",
        "list_root",
        "write_file",
        "home",
        "tcp_connect",
        "udp_bind",
        "dns",
    ] {
        assert!(seen[key].starts_with("error"), "{key}: {}", seen[key]);
    }
    assert_eq!(seen["env_vars"], "0");
    assert_eq!(seen["args"], "0");
    assert_eq!(seen["wall_clock_secs"], "ok: 0", "the clock must be frozen");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        listener.accept().is_err(),
        "the plugin reached a host socket"
    );
    assert!(!std::path::Path::new("/tmp/tern-escape").exists());
}

#[test]
fn misbehaving_configure_fails_the_step_at_creation() {
    let engine = engine();
    let err = hostile(&engine, "configure-fail", StepLimits::default()).expect_err("refused");
    assert!(
        matches!(
            &err.cause,
            FailureCause::Configure {
                kind: ErrorKind::InvalidConfig,
                ..
            }
        ),
        "{err}"
    );
    let err = hostile(&engine, "configure-loop", limits(50, 64)).expect_err("stopped");
    assert_eq!(err.cause, FailureCause::Timeout(Duration::from_millis(50)));
}

#[test]
fn eight_concurrent_requests_to_one_step_complete_correctly() {
    let engine = engine();
    let plugin = engine.load_file(&component("topk")).expect("loads");
    let step = Arc::new(
        plugin
            .step("post", r#"{"k": 1}"#, StepLimits::default())
            .expect("step"),
    );
    let threads: Vec<_> = (0..8usize)
        .map(|i| {
            let step = step.clone();
            std::thread::spawn(move || {
                for round in 0..10usize {
                    let hot = (i + round) % 16;
                    let mut logits = [0f32; 16];
                    logits[hot] = 10.0;
                    let data = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let input = Payload::Tensors(vec![Tensor {
                        name: "logits".into(),
                        dtype: Dtype::Fp32,
                        shape: vec![1, 16],
                        data,
                    }]);
                    let Payload::Bytes(out) = step.process(&input).expect("processed") else {
                        panic!("blob")
                    };
                    let json: serde_json::Value = serde_json::from_slice(&out.data).expect("JSON");
                    assert_eq!(
                        json["predictions"][0][0]["index"], hot,
                        "thread {i} round {round}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread finished");
    }
}

#[test]
fn refuses_components_that_are_not_plugins() {
    let engine = engine();
    let wrong = engine
        .load_file(&component("wrong_world_fixture"))
        .expect_err("wrong world");
    assert!(matches!(wrong, LoadError::WrongWorld(_)), "{wrong}");
    // The smallest core module: header only.
    let core = engine.load(b"\0asm\x01\0\0\0").expect_err("core module");
    assert!(matches!(core, LoadError::CoreModule), "{core}");
    let garbage = engine
        .load(b"GIF89a, not wasm at all")
        .expect_err("garbage");
    assert!(matches!(garbage, LoadError::NotWasm), "{garbage}");
    let mut truncated = std::fs::read(component("topk")).expect("read");
    truncated.truncate(truncated.len() / 2);
    let broken = engine.load(&truncated).expect_err("truncated");
    assert!(matches!(broken, LoadError::Compile(_)), "{broken}");
}

#[test]
fn custom_metrics_reach_the_host() {
    let metrics = Arc::new(RecordedMetrics::default());
    let engine = PluginEngine::new(EngineOptions {
        metrics: metrics.clone(),
        ..EngineOptions::default()
    })
    .expect("engine");
    let step = hostile(&engine, "metrics", StepLimits::default()).expect("step");
    for _ in 0..3 {
        step.process(&text("x")).expect("runs");
    }
    assert_eq!(metrics.counter("hostile", "calls"), 3);
    assert_eq!(metrics.observations("hostile", "size"), vec![42.0; 3]);
}

#[test]
fn compiled_components_are_cached_on_disk_and_reused() {
    let cache = tempfile::tempdir().expect("tempdir");
    let options = EngineOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..EngineOptions::default()
    };
    let bytes = std::fs::read(component("topk")).expect("read");
    let first = PluginEngine::new(options.clone())
        .expect("engine")
        .load(&bytes)
        .expect("compiles");
    let entries: Vec<_> = std::fs::read_dir(cache.path()).expect("list").collect();
    assert_eq!(entries.len(), 1, "one cache entry");
    let second = PluginEngine::new(options.clone())
        .expect("engine")
        .load(&bytes)
        .expect("from cache");
    assert_eq!(first.digest(), second.digest());
    let entry = entries
        .into_iter()
        .next()
        .expect("entry")
        .expect("entry")
        .path();

    // Prove loads come from the cache: put another plugin's compilation under topk's entry, and
    // loading topk's bytes runs that plugin (whose configure wants `columns`).
    let other = tempfile::tempdir().expect("tempdir");
    let other_options = EngineOptions {
        cache_dir: Some(other.path().to_owned()),
        ..EngineOptions::default()
    };
    PluginEngine::new(other_options)
        .expect("engine")
        .load_file(&component("tabular_prep"))
        .expect("compiles");
    let other_entry = std::fs::read_dir(other.path())
        .expect("list")
        .next()
        .expect("entry")
        .expect("entry")
        .path();
    std::fs::copy(&other_entry, &entry).expect("swap the entry");
    let swapped = PluginEngine::new(options.clone())
        .expect("engine")
        .load(&bytes)
        .expect("loads");
    let err = swapped
        .step("post", "{}", StepLimits::default())
        .expect_err("it is tabular-prep now");
    assert!(err.to_string().contains("columns"), "{err}");

    // A corrupt entry is discarded and the component compiled again.
    std::fs::write(&entry, b"corrupt").expect("corrupt the entry");
    let third = PluginEngine::new(options)
        .expect("engine")
        .load(&bytes)
        .expect("recompiled");
    third
        .step("post", "{}", StepLimits::default())
        .expect("usable");
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode");
    out
}

#[test]
fn reference_plugins_run_as_components() {
    let engine = engine();
    let prep = engine
        .load_file(&component("image_prep"))
        .expect("image-prep loads");
    let prep = prep
        .step(
            "prep",
            r#"{"size": 32, "tensor": "pixels"}"#,
            StepLimits::default(),
        )
        .expect("step");
    let out = prep
        .process(&Payload::Bytes(Blob {
            media_type: "image/png".into(),
            data: png(64, 48),
        }))
        .expect("runs");
    let Payload::Tensors(t) = out else {
        panic!("tensors")
    };
    assert_eq!(
        (t[0].name.as_str(), t[0].dtype, t[0].shape.as_slice()),
        ("pixels", Dtype::Fp32, &[1u64, 3, 32, 32][..])
    );
    // The blue channel is constant 128: normalized with ImageNet's mean and std everywhere.
    let values: Vec<f32> = t[0]
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (red, green) = (&values[..1024], &values[1024..2048]);
    // Red grows along x and green along y in the source: the resized NCHW planes keep that.
    for row in 0..32 {
        assert!(
            red[row * 32..row * 32 + 32]
                .windows(2)
                .all(|w| w[0] <= w[1]),
            "red row {row}"
        );
    }
    for col in 0..32 {
        assert!(
            (0..31).all(|y| green[y * 32 + col] <= green[(y + 1) * 32 + col]),
            "green column {col}"
        );
    }
    assert!(red[31] > red[0] && green[31 * 32] > green[0]);
    let blue = (128.0 / 255.0 - 0.406) / 0.225;
    assert!(values[2048..].iter().all(|v| (v - blue).abs() < 1e-4));
    let bad = prep.process(&Payload::Bytes(Blob {
        media_type: "image/png".into(),
        data: b"garbage".to_vec(),
    }));
    assert!(matches!(
        bad.expect_err("refused").cause,
        FailureCause::Guest {
            kind: ErrorKind::InvalidInput,
            ..
        }
    ));

    let tab = engine
        .load_file(&component("tabular_prep"))
        .expect("tabular-prep loads");
    let tab = tab
        .step(
            "features",
            r#"{"columns": ["a", "b"], "means": [1, 2], "stds": [2, 4]}"#,
            StepLimits::default(),
        )
        .expect("step");
    let out = tab
        .process(&Payload::Bytes(Blob {
            media_type: "text/csv".into(),
            data: b"5,10\n".to_vec(),
        }))
        .expect("runs");
    let Payload::Tensors(t) = out else {
        panic!("tensors")
    };
    let values: Vec<f32> = t[0]
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(values, vec![2.0, 2.0]);
}

#[test]
fn sleeping_is_refused_instead_of_blocking_the_host() {
    let engine = engine();
    let step = hostile(&engine, "input", limits(100, 64)).expect("step");
    let err = step.process(&text("sleep")).expect_err("must not sleep");
    assert!(
        matches!(&err.cause, FailureCause::Trap(m) | FailureCause::Panic(m) if m.contains("cannot sleep")),
        "{err}"
    );
    echoes(&step);
}

/// More concurrent requests than `max_instances` wait for an instance instead of failing, and
/// the instances alive at once (busy, idle or being made) never exceed the cap. Each thread
/// first sends a request that spins to its deadline, holding an instance at least that long,
/// so that the threads really contend; those instances are discarded and others made.
#[test]
fn concurrency_beyond_the_instance_cap_waits_instead_of_failing() {
    const CAP: usize = 2;
    const THREADS: usize = 6;
    let engine = engine();
    let deadline = Duration::from_millis(200);
    let capped = StepLimits {
        timeout: deadline,
        max_instances: CAP,
        // Below the cap, so that instances are also retired under load, not only kept.
        max_idle_instances: 1,
        ..StepLimits::default()
    };
    let step = Arc::new(hostile(&engine, "input", capped).expect("step"));
    let start = Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (step, start) = (step.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let err = step
                    .process(&text("loop"))
                    .expect_err("spins until its deadline");
                assert_eq!(err.cause, FailureCause::Timeout(deadline), "{err}");
                for _ in 0..20 {
                    let Payload::Bytes(out) = step.process(&text("echo")).expect("served") else {
                        panic!("blob")
                    };
                    assert_eq!(out.data, b"echo");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let peak = step.peak_live_instances();
    assert!(
        peak <= CAP,
        "{peak} instances alive at once, over the cap of {CAP}"
    );
    assert_eq!(peak, CAP, "the requests never ran side by side");
    assert!(step.idle_instances() <= 1);
}

/// What the fuzzer kept for the `accel_calls` target under `fuzz/<kind>/accel_calls/`: its
/// seeds (`seeds`), or the inputs that once broke the host (`regressions`).
fn kept_accel_inputs(kind: &str) -> Vec<Vec<u8>> {
    // Where cargo runs the test: a build is shared between checkouts at different paths.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../fuzz")
        .join(kind)
        .join("accel_calls");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
        .collect()
}

#[test]
fn a_hostile_guest_calling_accel_with_any_arguments_gets_an_answer_or_an_error() {
    use proptest::prelude::*;
    let engine = engine();
    let step = hostile(&engine, "accel", limits(2_000, 64)).expect("step");
    for data in accel_calls::edge_cases() {
        accel_calls::check(&step, &data);
    }
    let seeds = kept_accel_inputs("seeds");
    assert!(
        !seeds.is_empty(),
        "accel_calls: no seed under fuzz/seeds/accel_calls/"
    );
    for data in seeds.into_iter().chain(kept_accel_inputs("regressions")) {
        accel_calls::check(&step, &data);
    }
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        failure_persistence: None,
        ..Default::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..160), |data| {
            accel_calls::check(&step, &data);
            Ok(())
        })
        .expect("every call answered or refused");
}
