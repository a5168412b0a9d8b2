//! Replays every input kept under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
//! through the same checks the fuzz targets run: what a fuzzer once found stays found. Every
//! fuzz target (a file under `fuzz/fuzz_targets/`) must have seeds, and a replay here or in the
//! test named in [`REPLAYED_ELSEWHERE`].

#[path = "untrusted/checks.rs"]
mod checks;

use std::path::PathBuf;

/// Fuzz targets whose check needs more than this crate (a Wasm engine and the hostile
/// fixture), each with the test that replays its kept inputs.
const REPLAYED_ELSEWHERE: &[(&str, &str)] = &[(
    "accel_calls",
    "agent/plugin-host/tests/plugins.rs: \
     a_hostile_guest_calling_accel_with_any_arguments_gets_an_answer_or_an_error",
)];

fn fuzz_dir() -> PathBuf {
    // Where cargo runs the test from now: a build may come from another checkout sharing the
    // target dir, whose path `env!` would have kept.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("../../fuzz")
}

/// The names of the entries of `dir` that `keep` picks (by path), sorted.
fn names_in(dir: &std::path::Path, keep: fn(&std::path::Path) -> Option<String>) -> Vec<String> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut names: Vec<String> = entries.filter_map(|e| keep(&e.ok()?.path())).collect();
    names.sort();
    names
}

/// The fuzz targets: the files `fuzz/fuzz_targets/<target>.rs`.
fn fuzz_targets() -> Vec<String> {
    names_in(&fuzz_dir().join("fuzz_targets"), |path| {
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            return None;
        }
        Some(path.file_stem()?.to_str()?.to_owned())
    })
}

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("readable input");
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_fuzz_target_has_seeds_and_a_replay() {
    let targets = fuzz_targets();
    assert!(
        targets.len() >= checks::TARGETS.len() + REPLAYED_ELSEWHERE.len(),
        "fuzz targets found under fuzz/fuzz_targets: {targets:?}"
    );
    for target in &targets {
        let here = checks::TARGETS
            .iter()
            .any(|(name, _)| *name == target.as_str());
        let elsewhere = REPLAYED_ELSEWHERE
            .iter()
            .any(|(name, _)| *name == target.as_str());
        assert!(
            here != elsewhere,
            "fuzz target {target}: needs exactly one replay, a check in untrusted/checks.rs \
             or an entry of REPLAYED_ELSEWHERE (here: {here}, elsewhere: {elsewhere})"
        );
        assert!(
            !inputs("seeds", target).is_empty(),
            "fuzz target {target}: no seed under fuzz/seeds/{target}/"
        );
    }
    let replayed = checks::TARGETS
        .iter()
        .map(|(name, _)| *name)
        .chain(REPLAYED_ELSEWHERE.iter().map(|(name, _)| *name));
    for name in replayed {
        assert!(
            targets.iter().any(|t| t == name),
            "{name} is replayed but is no fuzz target: {targets:?}"
        );
    }
    // Seeds and regressions of a target that is gone would be replayed by nothing.
    for kind in ["seeds", "regressions"] {
        let folders = names_in(&fuzz_dir().join(kind), |path| {
            if !path.is_dir() {
                return None;
            }
            Some(path.file_name()?.to_str()?.to_owned())
        });
        for folder in folders {
            assert!(
                targets.contains(&folder),
                "fuzz/{kind}/{folder}/ belongs to no fuzz target: {targets:?}"
            );
        }
    }
}

#[test]
fn every_kept_input_passes_its_check() {
    for (target, check) in checks::TARGETS {
        let mut seeds = 0;
        for kind in ["seeds", "regressions"] {
            for (path, bytes) in inputs(kind, target) {
                let outcome = std::panic::catch_unwind(|| check(&bytes));
                assert!(outcome.is_ok(), "{target}: {} panics", path.display());
                if kind == "seeds" {
                    seeds += 1;
                }
            }
        }
        assert!(
            seeds >= 1,
            "{target}: no seed replayed from fuzz/seeds/{target}/"
        );
    }
}
