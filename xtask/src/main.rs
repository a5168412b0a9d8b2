//! Project tasks. `cargo xtask demo` runs the quickstart end to end; `cargo xtask test` runs every
//! test; `cargo xtask lint` checks formatting, clippy and the architecture (`cargo xtask tidy`);
//! `cargo xtask fuzz` runs the fuzz targets.
//!
//! Every task uses the dev profile, so tests, the demo and CI share one build.

mod demo;
mod deny;
mod fuzz;
mod io_free;
mod suite;
mod tidy;

use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str =
    "usage: cargo xtask <demo|test|lint|tidy|plugins|fuzz|protogen|schemas|fixtures>

  demo [--replicas N]
         start a control plane and two agents in temporary directories, enroll them,
         show the fleet, and shut everything down; with --replicas N, N control-plane
         replicas on PostgreSQL and SeaweedFS's S3 server (both started on loopback),
         four agents, and the replica holding the work lease killed mid-rollout
  test   build the binaries, run every test of the workspace and the smoke form of
         every benchmark
  lint     cargo fmt --check, cargo clippy --all-targets -D warnings, and tidy
  tidy     check ARCHITECTURE.md against the code: every crate named, every source file
           with a module doc comment, the layer tables kept, no import cycles where none
           may be; prints the modules in import cycles of each crate
  plugins  build the plugins as components and copy them to examples/plugins/
  fuzz [SECONDS] [TARGET...]
           run each fuzz target for SECONDS (default 600) with nightly and cargo-fuzz
  protogen regenerate the local API's gRPC code from proto/inference.proto (pure Rust,
           no protoc; tools/protogen builds apart from the workspace)
  schemas  regenerate the manifest kinds' JSON Schemas in schemas/ from their types
  fixtures rebuild the generated model fixtures in agent/infer/fixtures/models and the example
           models' expected outputs (python3 with onnx, onnxruntime and numpy)";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => match args.get(1).map(String::as_str) {
            None => demo::run(None),
            Some("--replicas") => match args.get(2).and_then(|n| n.parse().ok()) {
                Some(n) if n >= 2 => demo::run(Some(n)),
                _ => Err(anyhow::anyhow!("--replicas takes a number of at least 2")),
            },
            Some(other) => Err(anyhow::anyhow!("demo: unknown argument {other}\n{USAGE}")),
        },
        Some("test") => test(&args[1..]),
        Some("lint") => lint(),
        Some("plugins") => plugins(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("tidy") => tidy::run(),
        Some("protogen") => protogen(),
        Some("schemas") => schemas(),
        Some("fixtures") => fixtures(),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A `cargo` command without the variables `cargo run` set for this task (its manifest dir,
/// package name and version): build scripts that watch them (ring's, through cc) would run
/// again whenever their values change — from a direct `cargo build` to `cargo xtask`, and
/// between checkouts sharing one target dir — and rebuild everything above them.
pub fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "OUT_DIR"
            )
        {
            command.env_remove(&*name);
        }
    }
    command
}

/// Runs `cargo ARGS`, failing if it fails.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = cargo_command()
        .args(args)
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Makes sure the wasm32-wasip2 target is installed (plugins are built for it); rustup does not
/// add it by itself when auto-install is off.
fn ensure_wasm_target() -> anyhow::Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        eprintln!("xtask: rustup not found; assuming the wasm32-wasip2 target is available");
        return Ok(());
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()?;
    if !status.success() {
        bail!("`rustup target add wasm32-wasip2` failed");
    }
    Ok(())
}

/// Packages built as WebAssembly components: the reference plugins and the test fixtures.
pub const PLUGINS: &[&str] = &[
    "image-prep",
    "tabular-prep",
    "topk",
    "hostile-fixture",
    "wrong-world-fixture",
];

/// Builds every plugin for wasm32-wasip2 (dev profile; the components land in
/// `<target>/wasm32-wasip2/debug/*.wasm`).
pub fn build_plugins() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let mut args = vec!["build", "--locked", "--target", "wasm32-wasip2"];
    for plugin in PLUGINS {
        args.extend(["-p", plugin]);
    }
    cargo(&args)
}

/// Builds the plugins and copies the components next to the example manifests.
fn plugins() -> anyhow::Result<()> {
    build_plugins()?;
    let components = demo::target_dir()?.join("wasm32-wasip2").join("debug");
    let out = manifest_dir().join("../examples/plugins");
    std::fs::create_dir_all(&out)?;
    for plugin in PLUGINS {
        let file = format!("{}.wasm", plugin.replace('-', "_"));
        std::fs::copy(components.join(&file), out.join(&file))
            .with_context(|| format!("copy {file}"))?;
        println!("examples/plugins/{file}");
    }
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    build_plugins()?;
    // The end-to-end tests run the real binaries: build them in the same profile first.
    cargo(&["build", "--locked", "--workspace", "--all-targets"])?;
    let log = suite::fresh_log(&demo::target_dir()?)?;
    // Every binary runs even after one fails, so the account at the end is whole.
    let mut args = vec!["test", "--locked", "--workspace", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    let mut tally = suite::Tally::default();
    let passed = suite::run_tests(&args, &log, &mut tally)?;
    if passed {
        bench_smoke(&log)?;
    } else if tally.failed.is_empty() {
        // A build or a harness failed before any test could: nothing to add up.
        bail!("`cargo {}` failed", args.join(" "));
    }
    let allowed = manifest_dir().join("../.ci/allowed-skips");
    let deny = tern_skips::required("TERN_DENY_SKIPS").then_some(allowed.as_path());
    suite::conclude(&tally, &suite::skips(&log)?, deny)
}

/// The smoke form of every cargo bench and mode (criterion's `--test` runs each benchmark once;
/// `models` takes `--test` for two runs a case), so the figures of BENCHMARKS.md stay
/// reproducible. `fleet-bench` and `deploy-bench` are smoke-run by `tests/tests/all/benches.rs`.
/// The ONNX Runtime reference (`models --ort`) needs Python's onnxruntime and is left out.
/// A mode left out for want of fixtures or a Vulkan driver is recorded in `log` as a skip.
fn bench_smoke(log: &std::path::Path) -> anyhow::Result<()> {
    let bench = ["bench", "--locked", "--workspace", "--profile", "dev"];
    let run = |extra: &[&str]| cargo(&[&bench[..], extra].concat());
    let skip = |test: &str, reason: String| {
        suite::record(
            log,
            &tern_skips::Skip {
                binary: "xtask".into(),
                test: test.into(),
                reason,
            },
        )
    };
    run(&["--bench", "plugins", "--bench", "telemetry", "--", "--test"])?;
    let fixtures = std::env::var_os("TERN_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../shared"));
    if !fixtures.join("models").is_dir() {
        if tern_skips::required("TERN_REQUIRE_FIXTURES") {
            bail!(
                "TERN_REQUIRE_FIXTURES=1 but {} has no models",
                fixtures.display()
            );
        }
        return skip(
            "bench-models",
            format!("no model fixtures in {}", fixtures.display()),
        );
    }
    run(&["--bench", "models", "--", "--test"])?;
    let vulkan = std::fs::read_dir("/usr/share/vulkan/icd.d")
        .is_ok_and(|mut drivers| drivers.next().is_some());
    if !vulkan {
        if tern_skips::required("TERN_REQUIRE_GPU") {
            bail!("TERN_REQUIRE_GPU=1 but no Vulkan driver is installed");
        }
        return skip("bench-models-gpu", "no Vulkan driver installed".into());
    }
    // The GPU backend on the smallest fixture: on a software adapter the image models take
    // minutes.
    let mlp = fixtures.join("models/tabular_mlp");
    let mlp = mlp.to_string_lossy();
    run(&[
        "--bench", "models", "--", "--test", "--gpu", "--models", &mlp,
    ])?;
    run(&["--bench", "models", "--", "--test", "--matmul", "64"])
}

/// Runs `tools/protogen` (its own lock file and target directory) on the repository.
fn protogen() -> anyhow::Result<()> {
    run_protogen(None)?;
    cargo(&["fmt", "--all"])
}

/// The gRPC code `tools/protogen` generates, in the tree or at `out` (unformatted).
fn run_protogen(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let root = manifest_dir().join("..");
    let tool = root.join("tools/protogen");
    let target = demo::target_dir()?.join("protogen");
    let status = cargo_command()
        .current_dir(&tool)
        .env("CARGO_TARGET_DIR", &target)
        .args(["run", "--quiet", "--locked", "--"])
        .arg(&root)
        .args(out)
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("tools/protogen failed ({status})");
    }
    Ok(())
}

/// Writes `schemas/` from the manifest types: the test that checks them writes them instead
/// with `TERN_WRITE_SCHEMAS=1`.
fn schemas() -> anyhow::Result<()> {
    let status = cargo_command()
        .env("TERN_WRITE_SCHEMAS", "1")
        .args([
            "test",
            "--locked",
            "--workspace",
            "--lib",
            "--",
            "--exact",
            "manifest::schema::tests::the_published_schemas_are_current",
        ])
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("writing the schemas failed ({status})");
    }
    Ok(())
}

/// Rebuilds the conformance suite's generated fixtures (seeded models written with ONNX's
/// helpers, outputs from ONNX Runtime) and the example models' expected outputs (ONNX
/// Runtime's, for their committed model and input).
fn fixtures() -> anyhow::Result<()> {
    let dir = manifest_dir().join("../agent/infer/fixtures");
    let status = Command::new("python3")
        .arg(dir.join("make_models.py"))
        .arg(dir.join("models"))
        .arg(manifest_dir().join("../examples/models"))
        .status()
        .context("failed to run python3")?;
    if !status.success() {
        bail!("make_models.py failed ({status}); it needs `pip install onnx onnxruntime numpy`");
    }
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    tidy::run()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    deny::run()
}

/// This package's directory: where cargo says it is now (the build may come from a checkout
/// at another path sharing the target directory), else where it was built.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed gRPC code is what `cargo xtask protogen` writes from the proto and the
    /// generator in the tree: regenerated (`tools/protogen`, formatted as `cargo fmt` does) and
    /// compared byte for byte, so a stale file or a hand edit fails.
    #[test]
    fn the_generated_grpc_code_is_what_protogen_writes_from_the_tree() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let fresh = dir.path().join("generated.rs");
        run_protogen(Some(&fresh))?;
        let status = Command::new("rustfmt")
            .args(["--edition", "2024"])
            .arg(&fresh)
            .status()
            .context("failed to run rustfmt")?;
        anyhow::ensure!(status.success(), "rustfmt failed ({status})");
        let committed = manifest_dir().join("../agent/daemon/src/local_api/grpc/generated.rs");
        assert!(
            std::fs::read_to_string(&fresh)? == std::fs::read_to_string(&committed)?,
            "{} is not what `cargo xtask protogen` writes from the tree: run it",
            committed.display()
        );
        Ok(())
    }
}
