//! The conformance suite on both backends: `../shared/models` and ONNX's backend test data.
//! Prints one line per case and backend; fails on any `fail`, and when fewer cases pass than
//! passed when the minimum was last raised (a case gone unsupported is a regression too). The GPU half runs wherever wgpu
//! finds an adapter (CI installs a software Vulkan one and sets `TERN_REQUIRE_GPU=1`).

use tern_infer::conformance::{self, Outcome, Report};
use tern_infer::{Device, list_adapters};

/// Cases each backend passes (of 120 with the shared fixtures); raise when more pass.
const MIN_PASS_CPU: usize = 117;
const MIN_PASS_GPU: usize = 112;

fn require(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn run_suite(device: Device) -> Vec<Report> {
    let root = conformance::fixtures_dir();
    let cases = conformance::discover(&root);
    if cases.is_empty() {
        assert!(
            !require("TERN_REQUIRE_FIXTURES"),
            "no conformance fixtures under {}",
            root.display()
        );
        eprintln!(
            "conformance: no fixtures under {}; set TERN_FIXTURES",
            root.display()
        );
        return vec![];
    }
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
    let (mut pass, mut unsupported, mut fail) = (0, 0, 0);
    for r in &reports {
        match r.outcome {
            Outcome::Pass { .. } => pass += 1,
            Outcome::Unsupported { .. } => unsupported += 1,
            Outcome::Fail { .. } => fail += 1,
        }
        println!(
            "{:<6} {:<20} {:<48} {}",
            format!("{:?}", r.device).to_lowercase(),
            r.suite,
            r.case,
            r.outcome
        );
    }
    println!(
        "{device:?}: {pass} pass, {unsupported} unsupported, {fail} fail of {}",
        reports.len()
    );
    reports
}

fn check(reports: &[Report], min_pass: usize) {
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
    let passed = reports
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Pass { .. }))
        .count();
    assert!(
        reports.is_empty() || passed >= min_pass,
        "{passed} cases pass, fewer than the {min_pass} that passed before"
    );
    for r in reports.iter().filter(|r| r.suite == "models") {
        assert!(
            matches!(r.outcome, Outcome::Pass { .. }),
            "model {} must run on {:?}: {}",
            r.case,
            r.device,
            r.outcome
        );
    }
}

#[test]
fn cpu_backend_conforms() {
    check(&run_suite(Device::Cpu), MIN_PASS_CPU);
}

#[test]
fn gpu_backend_conforms() {
    if list_adapters().is_empty() {
        assert!(
            !require("TERN_REQUIRE_GPU"),
            "TERN_REQUIRE_GPU=1 but there is no adapter"
        );
        eprintln!("conformance: no GPU adapter, GPU half skipped");
        return;
    }
    check(&run_suite(Device::Gpu), MIN_PASS_GPU);
}
