//! The conformance suite on both backends: the project's generated fixtures (common
//! architectures), `../shared/models` and ONNX's backend test data.
//! Prints a table of every case with its verdict on each backend; fails on any `fail`, on a
//! generated fixture or shared model that does not pass, and when more cases do not pass
//! than did not when the maximum was last lowered (a case gone unsupported is a regression too)
//! or, with the whole shared set, when fewer pass than passed then.
//! The GPU half runs wherever wgpu finds an adapter (CI installs a software Vulkan one and sets
//! `TERN_REQUIRE_GPU=1`).

use tern_infer::conformance::{self, Outcome, Report};
use tern_infer::{Device, list_adapters};

/// Cases each backend may leave unpassed (3 and 8 of 127: the 7 generated fixtures and the 120
/// shared ones); lower when more pass. A count of what does not pass, not of what does, so a smaller fixture set (a checkout
/// without ONNX's test data, say) is judged by the same rule.
const MAX_NOT_PASSING_CPU: usize = 3;
const MAX_NOT_PASSING_GPU: usize = 8;
/// Cases each backend passes with the whole shared set (`TERN_REQUIRE_FIXTURES=1`, as in CI):
/// fewer means cases went missing, not only that some stopped passing.
const MIN_PASS_CPU: usize = 124;
const MIN_PASS_GPU: usize = 119;

fn run_suite(device: Device) -> Vec<Report> {
    let root = conformance::fixtures_dir();
    let shared = conformance::discover(&root);
    if shared.is_empty() {
        // Only the generated cases run: a partial skip, shown as one.
        tern_skips::skip_unless_required(
            "TERN_REQUIRE_FIXTURES",
            format!(
                "no shared fixtures under {} (set TERN_FIXTURES): the generated cases only",
                root.display()
            ),
        );
    }
    let mut cases = conformance::discover_generated();
    assert!(
        cases.len() >= 7,
        "the generated fixtures are missing from {}",
        conformance::generated_dir().display()
    );
    cases.extend(shared);
    let reports: Vec<Report> = std::thread::scope(|s| {
        let chunks: Vec<_> = cases.chunks(cases.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| conformance::run_case(c, device))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("suite thread"))
            .collect()
    });
    reports
}

/// A verdict in a table cell: `pass`, `unsupported (why)` or `FAIL (why)`.
fn cell(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Pass { max_abs_diff } => format!("pass ({max_abs_diff:.1e})"),
        Outcome::Unsupported { reason } => format!("unsupported: {reason}"),
        Outcome::Fail { reason } => format!("FAIL: {reason}"),
    }
}

/// The report: one row per case, one column per backend, then each backend's totals.
fn print_table(backends: &[&[Report]]) {
    let Some(first) = backends.first() else {
        return;
    };
    let names: Vec<String> = backends
        .iter()
        .filter_map(|r| r.first())
        .map(|r| format!("{:?}", r.device).to_lowercase())
        .collect();
    println!("| suite | case | {} |", names.join(" | "));
    println!("| --- | --- |{}", " --- |".repeat(names.len()));
    for (i, report) in first.iter().enumerate() {
        let cells: Vec<String> = backends
            .iter()
            .map(|reports| {
                reports
                    .get(i)
                    .map_or_else(String::new, |r| cell(&r.outcome))
            })
            .collect();
        println!(
            "| {} | {} | {} |",
            report.suite,
            report.case,
            cells.join(" | ")
        );
    }
    for reports in backends {
        let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
        let device = reports
            .first()
            .map_or_else(String::new, |r| format!("{:?}", r.device).to_lowercase());
        println!(
            "{device}: {} pass, {} unsupported, {} fail of {}",
            count(|o| matches!(o, Outcome::Pass { .. })),
            count(|o| matches!(o, Outcome::Unsupported { .. })),
            count(|o| matches!(o, Outcome::Fail { .. })),
            reports.len()
        );
    }
}

/// Fails on any failing case, on more than `max_not_passing` cases that do not pass, on fewer
/// than `min_pass` passing where the whole shared set is required, and on a shared model that
/// does not run. No reports (no fixtures, and none required: [`run_suite`]
/// fails when `TERN_REQUIRE_FIXTURES=1`) pass.
fn check(reports: &[Report], max_not_passing: usize, min_pass: usize) {
    let fails: Vec<String> = reports
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail { .. }))
        .map(|r| format!("{}/{}: {}", r.suite, r.case, r.outcome))
        .collect();
    assert!(
        fails.is_empty(),
        "{} failing cases:\n{}",
        fails.len(),
        fails.join("\n")
    );
    let not_passing: Vec<String> = reports
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Pass { .. }))
        .map(|r| format!("{}/{}: {}", r.suite, r.case, r.outcome))
        .collect();
    assert!(
        not_passing.len() <= max_not_passing,
        "{} of {} cases do not pass, more than the {max_not_passing} that did not before:\n{}",
        not_passing.len(),
        reports.len(),
        not_passing.join("\n")
    );
    let passed = reports.len() - not_passing.len();
    assert!(
        !tern_skips::required("TERN_REQUIRE_FIXTURES") || passed >= min_pass,
        "{passed} cases pass, fewer than the {min_pass} of the whole shared set"
    );
    for r in reports
        .iter()
        .filter(|r| r.suite == "models" || r.suite == "generated")
    {
        assert!(
            matches!(r.outcome, Outcome::Pass { .. }),
            "model {} must run on {:?}: {}",
            r.case,
            r.device,
            r.outcome
        );
    }
}

/// Both backends over the same cases (at once: each also splits its cases in two), one table.
#[test]
fn both_backends_conform() {
    let gpu = !list_adapters().is_empty();
    if !gpu {
        tern_skips::skip_unless_required(
            "TERN_REQUIRE_GPU",
            "there is no GPU adapter: the CPU half only",
        );
    }
    let (cpu, gpu) = std::thread::scope(|s| {
        let cpu = s.spawn(|| run_suite(Device::Cpu));
        let gpu = gpu.then(|| s.spawn(|| run_suite(Device::Gpu)));
        (
            cpu.join().expect("cpu suite"),
            gpu.map(|h| h.join().expect("gpu suite")),
        )
    });
    let mut backends: Vec<&[Report]> = vec![&cpu];
    if let Some(gpu) = &gpu {
        backends.push(gpu);
    }
    print_table(&backends);
    check(&cpu, MAX_NOT_PASSING_CPU, MIN_PASS_CPU);
    if let Some(gpu) = &gpu {
        check(gpu, MAX_NOT_PASSING_GPU, MIN_PASS_GPU);
    }
}

/// The generated fixtures in the repository are what `fixtures/make_models.py` builds: the
/// same model and input bytes, and outputs within 1e-6 (ONNX Runtime may round differently
/// from one release to the next); so are the example models' expected outputs
/// (`examples/models/*`, whose models come from PyTorch). Needs python3 with onnx, onnxruntime and numpy (CI installs
/// them and sets `TERN_REQUIRE_ONNX=1`); skipped without.
#[test]
fn the_generated_fixtures_are_what_the_script_builds() {
    let found = std::process::Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        tern_skips::skip_unless_required(
            "TERN_REQUIRE_ONNX",
            "python3 with onnx, onnxruntime and numpy is missing",
        );
        return;
    }
    let out = tempfile::tempdir().expect("a temporary directory");
    let examples_out = tempfile::tempdir().expect("a temporary directory");
    let script = conformance::manifest_dir().join("fixtures/make_models.py");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg(out.path())
        .arg(examples_out.path())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "make_models.py failed");
    let read = |dir: &std::path::Path| {
        let bytes = std::fs::read(dir.join("expected_output.npy")).expect("outputs");
        tern_infer::npy::parse("output", &bytes).expect("an npy file")
    };
    let committed = conformance::discover_generated();
    assert!(!committed.is_empty());
    for case in &committed {
        let built = out.path().join(&case.name);
        for file in ["model.onnx", "input.npy"] {
            let a = std::fs::read(case.dir.join(file)).expect("committed file");
            let b = std::fs::read(built.join(file)).expect("built file");
            assert!(
                a == b,
                "{}/{file} differs from what make_models.py builds; run `cargo xtask fixtures`",
                case.name
            );
        }
        let diff = conformance::compare(
            &read(&built),
            &read(&case.dir),
            conformance::Tolerance::MaxAbs(1e-6),
        );
        assert!(diff.is_ok(), "{}: {diff:?}", case.name);
    }
    let built: Vec<String> = std::fs::read_dir(out.path())
        .expect("built fixtures")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(built.len(), committed.len(), "{built:?}");
    let examples = conformance::manifest_dir().join("../../examples/models");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("the example models") {
        let dir = entry.expect("an example model").path();
        if !dir.join("model.onnx").is_file() {
            continue;
        }
        let name = dir
            .file_name()
            .expect("a directory name")
            .to_string_lossy()
            .into_owned();
        let diff = conformance::compare(
            &read(&examples_out.path().join(&name)),
            &read(&dir),
            conformance::Tolerance::MaxAbs(1e-6),
        );
        assert!(
            diff.is_ok(),
            "examples/models/{name}: {diff:?}; run `cargo xtask fixtures`"
        );
        checked += 1;
    }
    assert!(checked > 0, "no example model in {}", examples.display());
}
