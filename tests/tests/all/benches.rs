//! The smoke form of every mode of `fleet-bench` and `deploy-bench`: tiny sizes, a second or
//! two each, so that the figures of BENCHMARKS.md stay reproducible from a fresh clone. What
//! is checked is that each mode runs to its table, not how fast anything is. (`cargo xtask test`
//! runs the smoke form of the cargo benches too: `cargo bench ... -- --test`.)

use std::process::Command;

use tern_e2e::bin;

/// Runs `binary ARGS`, requires success, and returns its standard output.
fn run(binary: &str, args: &[&str]) -> String {
    let out = Command::new(bin(binary))
        .args(args)
        .env("TERN_LOG", "warn")
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{binary} {}` failed ({}):\n{stdout}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The rows of the markdown table whose first cell starts with `first`, as cells.
fn rows(stdout: &str, first: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .map(|l| {
            l.trim_end_matches(" |")
                .split(" | ")
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells[0].starts_with(first))
        .collect()
}

/// The cell at `column` of the one row starting with `first`, as a number.
fn number(stdout: &str, first: &str, column: usize) -> f64 {
    let rows = rows(stdout, first);
    assert_eq!(rows.len(), 1, "one `{first}` row in:\n{stdout}");
    rows[0][column]
        .parse()
        .unwrap_or_else(|_| panic!("a number at column {column} of `{first}` in:\n{stdout}"))
}

#[test]
fn fleet_bench_agent_idle() {
    let out = run("fleet-bench", &["agent-idle", "--settle", "1s"]);
    assert!(number(&out, "tern-agent", 1) > 0.0);
    assert!(number(&out, "bare mTLS QUIC client", 1) > 0.0);
}

#[test]
fn fleet_bench_agent_start() {
    let out = run("fleet-bench", &["agent-start", "--runs", "1"]);
    assert!(number(&out, "tern-agent run", 1) > 0.0);
    assert!(number(&out, "bare mTLS QUIC client", 1) > 0.0);
}

#[test]
fn fleet_bench_connections() {
    let out = run(
        "fleet-bench",
        &["connections", "--agents", "2,4", "--window", "1s"],
    );
    assert_eq!(number(&out, "2", 0), 2.0, "2 agents listed Ready");
    assert_eq!(number(&out, "4", 0), 4.0, "then 4");
}

#[test]
fn fleet_bench_simulate() {
    let out = run("fleet-bench", &["simulate", "--agents", "40"]);
    assert!(out.contains("40 agents serve it"), "{out}");
    assert!(out.contains("reference, one whole-fleet pass"), "{out}");
}

#[test]
fn fleet_bench_telemetry() {
    let out = run(
        "fleet-bench",
        &["telemetry", "--agents", "4", "--window", "1s"],
    );
    let ingested = rows(&out, "")
        .into_iter()
        .find_map(|cells| cells[0].parse::<f64>().ok());
    assert!(
        ingested.is_some_and(|points| points > 0.0),
        "points ingested over QUIC in:\n{out}"
    );
}

/// Whether a server the bench starts itself is required here (`TERN_REQUIRE_...=1`, as in
/// CI); elsewhere that bench's smoke run is skipped.
fn required(variable: &str) -> bool {
    let required = tern_skips::required(variable);
    if !required {
        tern_skips::skip(format!("{variable} is not 1"));
    }
    required
}

#[test]
fn fleet_bench_telemetry_on_postgresql() {
    if !required("TERN_REQUIRE_POSTGRES") {
        return;
    }
    let out = run(
        "fleet-bench",
        &["telemetry", "--agents", "4", "--window", "1s", "--postgres"],
    );
    assert!(out.contains("PostgreSQL (partitioned tables"), "{out}");
}

#[test]
fn fleet_bench_connections_over_replicas() {
    if !required("TERN_REQUIRE_POSTGRES") {
        return;
    }
    let out = run(
        "fleet-bench",
        &[
            "connections",
            "--replicas",
            "2",
            "--agents",
            "4",
            "--window",
            "1s",
        ],
    );
    assert_eq!(number(&out, "4", 0), 4.0, "4 agents listed Ready");
    let spread = &rows(&out, "4")[0][1];
    assert!(
        spread.starts_with("2, ") && spread.contains(" / 2, "),
        "two agents held by each replica: {spread}"
    );
}

#[test]
fn fleet_bench_failover() {
    if !required("TERN_REQUIRE_POSTGRES") {
        return;
    }
    let out = run(
        "fleet-bench",
        &["failover", "--runs", "1", "--lease-ttl", "2s"],
    );
    assert!(
        number(&out, "2.0 s", 5) == 1.0,
        "one run measured in:\n{out}"
    );
    let lease = &rows(&out, "2.0 s")[0][1];
    assert!(
        lease
            .split(' ')
            .next()
            .and_then(|p50| p50.parse::<f64>().ok())
            .is_some_and(|p50| p50 > 0.0),
        "the takeover timed: {lease}"
    );
}

#[test]
fn deploy_bench_push() {
    let s3 = std::env::var("TERN_REQUIRE_S3").is_ok_and(|v| v == "1");
    let mut args = vec!["push", "--agents", "1", "--megabytes", "1"];
    if s3 {
        args.push("--s3");
    }
    let out = run("deploy-bench", &args);
    assert_eq!(rows(&out, "data directory").len(), 1, "{out}");
    if s3 {
        assert_eq!(rows(&out, "S3 (SeaweedFS)").len(), 1, "{out}");
    }
}

#[test]
fn deploy_bench_local_api() {
    let out = run("deploy-bench", &["local-api", "--requests", "20"]);
    let p50 = rows(&out, "p50");
    assert!(
        p50.len() == 1 && p50[0][1].ends_with(" µs") && p50[0][2].ends_with(" µs"),
        "the pipeline's and the reference's median in:\n{out}"
    );
}

#[test]
fn deploy_bench_revoke() {
    let out = run("deploy-bench", &["revoke", "--agents", "1"]);
    let p50 = rows(&out, "p50");
    assert!(
        p50.len() == 1 && p50[0][1].ends_with(" ms"),
        "revocation to the connection closed in:\n{out}"
    );
}

#[test]
fn deploy_bench_crash() {
    let out = run("deploy-bench", &["crash", "--agents", "2", "--runs", "1"]);
    let p50 = rows(&out, "p50");
    assert!(
        p50.len() == 1 && p50[0][1..].iter().all(|cell| cell.ends_with(" s")),
        "death to rollback, to every agent back, and a plain restart in:\n{out}"
    );
}

#[test]
fn deploy_bench_revoke_across_replicas() {
    if !required("TERN_REQUIRE_POSTGRES") {
        return;
    }
    let out = run("deploy-bench", &["revoke", "--agents", "1", "--replicas"]);
    let p50 = rows(&out, "p50");
    assert!(
        p50.len() == 1 && p50[0][1].ends_with(" ms"),
        "revocation at one replica to the connection closed at the other in:\n{out}"
    );
}

#[test]
fn deploy_bench_renewal() {
    let out = run("deploy-bench", &["renewal", "--seconds", "1"]);
    assert_eq!(number(&out, "failed", 2), 0.0, "no request failed:\n{out}");
}

#[test]
fn deploy_bench_triton() {
    if !tern_e2e::triton_clients_available() {
        return;
    }
    let out = run("deploy-bench", &["triton", "--requests", "20"]);
    for case in [
        "mlp: tritonclient HTTP, JSON",
        "mlp: tritonclient HTTP, binary",
        "mlp: tritonclient gRPC",
        "pixels: bare client, binary",
    ] {
        assert!(number(&out, case, 3) > 0.0, "{case}");
    }
}
