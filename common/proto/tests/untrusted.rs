//! Replays every input kept under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
//! through the same checks the fuzz targets run: what a fuzzer once found stays found.

#[path = "untrusted/checks.rs"]
mod checks;

use std::path::PathBuf;

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    // Where cargo runs the test from now: a build may come from another checkout sharing the
    // target dir, whose path `env!` would have kept.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let dir = manifest_dir.join("../../fuzz").join(kind).join(target);
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
fn every_kept_input_passes_its_check() {
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        for kind in ["seeds", "regressions"] {
            for (path, bytes) in inputs(kind, target) {
                let outcome = std::panic::catch_unwind(|| check(&bytes));
                assert!(outcome.is_ok(), "{target}: {} panics", path.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= checks::TARGETS.len(), "seeds are missing");
}
