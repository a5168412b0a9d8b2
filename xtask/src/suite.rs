//! `cargo xtask test`'s account of the suite: every test binary's results added up, and the
//! tests that skipped named.
//!
//! The runner counts a skipped test as passed; tests record their skips through `tern-skips`
//! in the file this module hands them (`TERN_SKIP_LOG`), so the last line says
//! `N passed, N failed, N skipped` and names each. With `TERN_DENY_SKIPS=1` (CI), a skip that
//! `.ci/allowed-skips` does not list fails the run.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tern_skips::Skip;

/// What the runner printed, added up over every test binary.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    /// Tests the runner counted as passed (skips included).
    pub passed: u64,
    /// Tests that failed, by name.
    pub failed: Vec<String>,
    /// Tests marked `#[ignore]`, by name.
    pub ignored: Vec<String>,
}

impl Tally {
    /// Reads one line of a test binary's output.
    pub fn read(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            if let Some(passed) = field(rest, "passed") {
                self.passed += passed;
            }
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" ... FAILED") {
                self.failed.push(name.to_owned());
            } else if let Some((name, _)) = rest.split_once(" ... ignored") {
                self.ignored.push(name.to_owned());
            }
        }
    }
}

/// The number before `what` in `ok. 3 passed; 0 failed; ...`.
fn field(summary: &str, what: &str) -> Option<u64> {
    summary.split(';').find_map(|part| {
        let mut words = part.split_whitespace().rev();
        (words.next()? == what).then_some(())?;
        words.next()?.parse().ok()
    })
}

/// Where this run's skips are recorded: emptied before the run.
pub fn fresh_log(target: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(target)?;
    let log = target.join("tern-skips.log");
    match std::fs::remove_file(&log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove {}", log.display()));
        }
        _ => {}
    }
    Ok(log)
}

/// Records a skip of xtask's own (a bench smoke run it leaves out).
pub fn record(log: &Path, skip: &Skip) -> anyhow::Result<()> {
    eprintln!("SKIPPED {}: {}", skip.name(), skip.reason);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(skip.to_line().as_bytes()))
        .with_context(|| format!("append to {}", log.display()))
}

/// Runs `cargo test ARGS` with skips recorded in `log`, echoing its output, and adds it up.
/// Returns whether cargo succeeded.
pub fn run_tests(args: &[&str], log: &Path, tally: &mut Tally) -> anyhow::Result<bool> {
    let mut child = crate::cargo_command()
        .args(args)
        .env(tern_skips::LOG_VARIABLE, log)
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to run cargo")?;
    let stdout = child.stdout.take().context("cargo's output")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read cargo's output")?;
        writeln!(out, "{line}")?;
        tally.read(&line);
    }
    Ok(child.wait().context("wait for cargo")?.success())
}

/// The skips recorded in `log`, each once.
pub fn skips(log: &Path) -> anyhow::Result<BTreeSet<Skip>> {
    match std::fs::read_to_string(log) {
        Ok(text) => Ok(text.lines().filter_map(Skip::parse).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", log.display())),
    }
}

/// The suite's last lines: the counts, then each failed and skipped test. Fails when a test
/// failed, or, given `allowed` (`.ci/allowed-skips` under `TERN_DENY_SKIPS=1`), when a skip is
/// not listed there.
pub fn conclude(
    tally: &Tally,
    skips: &BTreeSet<Skip>,
    allowed: Option<&Path>,
) -> anyhow::Result<()> {
    let skipped: BTreeSet<(String, String)> = skips
        .iter()
        .map(|s| (s.name(), s.reason.clone()))
        .chain(
            tally
                .ignored
                .iter()
                .map(|name| (name.clone(), "#[ignore]".to_owned())),
        )
        .collect();
    // A skipped test returned, so the runner counted it as passed (benches' skips are xtask's).
    let counted = skips.iter().filter(|s| s.binary != "xtask").count() as u64;
    println!();
    for name in &tally.failed {
        println!("FAILED  {name}");
    }
    for (name, reason) in &skipped {
        println!("SKIPPED {name}: {reason}");
    }
    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed.saturating_sub(counted),
        tally.failed.len(),
        skipped.len()
    );
    if !tally.failed.is_empty() {
        bail!("{} tests failed", tally.failed.len());
    }
    if let Some(allowed) = allowed {
        let allowed = allowed_skips(allowed)?;
        let denied: Vec<&String> = skipped
            .iter()
            .map(|(name, _)| name)
            .filter(|name| !allowed.contains(*name))
            .collect();
        if !denied.is_empty() {
            bail!(
                "TERN_DENY_SKIPS=1 and {} skips are not in .ci/allowed-skips: {denied:?}",
                denied.len()
            );
        }
    }
    Ok(())
}

/// The names `.ci/allowed-skips` lists, one a line (`binary test`, `#` starts a comment).
fn allowed_skips(path: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runners_lines_add_up() {
        let mut tally = Tally::default();
        for line in [
            "running 3 tests",
            "test a::b ... ok",
            "test a::c ... FAILED",
            "test a::d ... ignored, needs a GPU",
            "test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            tally.read(line);
        }
        assert_eq!(
            tally,
            Tally {
                passed: 13,
                failed: vec!["a::c".into()],
                ignored: vec!["a::d".into()],
            }
        );
    }

    #[test]
    fn a_skip_not_allowed_fails_only_when_skips_are_denied() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let allowed = dir.path().join("allowed");
        std::fs::write(&allowed, "# none\napi gpu_test  # no adapter on CI\n")?;
        let skip = |test: &str| Skip {
            binary: "api".into(),
            test: test.into(),
            reason: "no adapter".into(),
        };
        let tally = Tally {
            passed: 2,
            ..Tally::default()
        };
        let listed: BTreeSet<Skip> = [skip("gpu_test")].into();
        let unlisted: BTreeSet<Skip> = [skip("other")].into();
        assert!(allowed_skips(&allowed)?.contains("api gpu_test"));
        conclude(&tally, &listed, Some(&allowed))?;
        conclude(&tally, &unlisted, None)?;
        let err = conclude(&tally, &unlisted, Some(&allowed)).expect_err("denied");
        assert!(err.to_string().contains("api other"), "{err}");
        Ok(())
    }
}
