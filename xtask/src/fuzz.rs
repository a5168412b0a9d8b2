//! `cargo xtask fuzz [SECONDS] [TARGET...]`: builds the fuzz targets in `fuzz/` with nightly and
//! cargo-fuzz (libFuzzer, AddressSanitizer), runs each for SECONDS (default 600) from its seeds
//! and the corpus kept from earlier runs, and prints what each did. A crash fails the task and
//! names the input to add to `fuzz/regressions/TARGET/`, which `cargo xtask test` replays.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The targets in `fuzz/Cargo.toml`, each a check of `common/proto/tests/untrusted`, and
/// `accel_calls`, a hostile guest's host calls (`agent/plugin-host/tests/support`).
pub const TARGETS: &[&str] = &[
    "frame",
    "desired_state",
    "release_json",
    "trust_root_json",
    "inference_json",
    "inference_binary",
    "manifest_yaml",
    "accel_calls",
];

/// What one target's run did.
struct Outcome {
    target: String,
    executions: u64,
    per_second: u64,
    corpus: usize,
    crash: Option<PathBuf>,
}

/// `cargo +nightly ARGS` through rustup, whatever toolchain this task runs under.
fn nightly_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly");
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(var);
    }
    command
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let seconds: u64 = match args.first() {
        Some(s) => s
            .parse()
            .with_context(|| format!("SECONDS must be a number, not `{s}`"))?,
        None => 600,
    };
    let chosen: Vec<&str> = match args.get(1..) {
        Some(names) if !names.is_empty() => names.iter().map(String::as_str).collect(),
        _ => TARGETS.to_vec(),
    };
    if let Some(unknown) = chosen.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "no fuzz target `{unknown}`; the targets: {}",
            TARGETS.join(", ")
        );
    }
    let installed = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        bail!(
            "cargo-fuzz on the nightly toolchain is needed: `rustup toolchain install nightly` \
             and `cargo +nightly install cargo-fuzz`"
        );
    }
    let fuzz_dir = super::manifest_dir().join("../fuzz");
    let fuzz_dir = fuzz_dir.canonicalize().unwrap_or(fuzz_dir);
    let target_dir = crate::demo::target_dir()?.join("fuzz");
    let common = |command: &mut Command| {
        command
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(&target_dir);
    };
    let mut build = nightly_cargo();
    build.args(["fuzz", "build", "-O"]);
    common(&mut build);
    if !build.status().context("cargo fuzz build")?.success() {
        bail!("the fuzz targets did not build");
    }
    let mut outcomes = Vec::new();
    for target in chosen {
        outcomes.push(fuzz_one(target, seconds, &fuzz_dir, &common)?);
    }
    println!(
        "\n{:<16} {:>8} {:>14} {:>10} {:>7}  RESULT",
        "TARGET", "SECONDS", "EXECUTIONS", "EXECS/S", "CORPUS"
    );
    for o in &outcomes {
        let result = o
            .crash
            .as_ref()
            .map_or("no crash".to_owned(), |p| format!("CRASH {}", p.display()));
        println!(
            "{:<16} {seconds:>8} {:>14} {:>10} {:>7}  {result}",
            o.target, o.executions, o.per_second, o.corpus
        );
    }
    if outcomes.iter().any(|o| o.crash.is_some()) {
        bail!(
            "a fuzz target crashed: reproduce with `cargo +nightly fuzz run TARGET FILE`, fix it, \
             and copy FILE to fuzz/regressions/TARGET/"
        );
    }
    Ok(())
}

fn fuzz_one(
    target: &str,
    seconds: u64,
    fuzz_dir: &Path,
    common: &dyn Fn(&mut Command),
) -> anyhow::Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let log = fuzz_dir.join("artifacts").join(format!("{target}.log"));
    let before: Vec<PathBuf> = crashes(&artifacts);
    println!("fuzzing {target} for {seconds} s (log: {})", log.display());
    let mut command = nightly_cargo();
    command.args(["fuzz", "run", "-O"]);
    common(&mut command);
    // The component `accel_calls` drives, as `cargo xtask test` builds it.
    command.env(
        "TERN_HOSTILE_FIXTURE",
        crate::demo::target_dir()?.join("wasm32-wasip2/debug/hostile_fixture.wasm"),
    );
    command
        .arg(target)
        .arg(&corpus)
        .arg(fuzz_dir.join("seeds").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg("-rss_limit_mb=4096")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let status = command.status().context("cargo fuzz run")?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| rest.trim_start_matches(':').trim().parse::<u64>().ok())
            .next_back()
            .unwrap_or(0)
    };
    let crash = crashes(&artifacts)
        .into_iter()
        .find(|p| !before.contains(p))
        .or_else(|| (!status.success()).then(|| log.clone()));
    Ok(Outcome {
        target: target.to_owned(),
        executions: stat("stat::number_of_executed_units"),
        per_second: stat("stat::average_exec_per_sec"),
        corpus: std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
        crash,
    })
}

/// The inputs libFuzzer saved for `target` as failures.
fn crashes(artifacts: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(artifacts)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        ["crash-", "oom-", "timeout-", "leak-"]
                            .iter()
                            .any(|k| n.starts_with(k))
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
