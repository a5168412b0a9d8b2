//! How a test that cannot run here says so.
//!
//! The test runner counts a test that returns early as passed and shows nothing of what it
//! printed. A test that lacks something it needs (a GPU adapter, a server binary, a Python
//! package, root) calls [`skip`] instead: that prints `SKIPPED <binary> <test>: <reason>`
//! straight to the process's standard error, past the runner's capture, and appends the same
//! record to the file `$TERN_SKIP_LOG` names. `cargo xtask test` sets that file, ends with
//! `N passed, N failed, N skipped` naming each skipped test, and, in CI, fails on a skip not
//! listed in `.ci/allowed-skips`.
//!
//! Where CI installs what a test needs it sets `TERN_REQUIRE_<WHAT>=1`, and
//! [`skip_unless_required`] then fails the test instead of skipping it.

use std::fmt::Display;
use std::io::Write;

/// The variable naming the file skips are appended to.
pub const LOG_VARIABLE: &str = "TERN_SKIP_LOG";

/// One skip as `cargo xtask test` reads it back: a line of three tab-separated fields.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    /// The test binary (`api`, `tern_e2e`, ...) without cargo's hash suffix.
    pub binary: String,
    /// The test's path inside its binary, as the runner names it.
    pub test: String,
    /// Why it could not run.
    pub reason: String,
}

impl Skip {
    /// The log line (tabs and newlines in the fields become spaces).
    pub fn to_line(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        format!(
            "{}\t{}\t{}\n",
            clean(&self.binary),
            clean(&self.test),
            clean(&self.reason)
        )
    }

    /// Reads a log line back; `None` for one that is not a skip record.
    pub fn parse(line: &str) -> Option<Skip> {
        let mut fields = line.trim_end_matches(['\n', '\r']).splitn(3, '\t');
        let (binary, test, reason) = (fields.next()?, fields.next()?, fields.next()?);
        Some(Skip {
            binary: binary.to_owned(),
            test: test.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// `binary test`, the name `.ci/allowed-skips` lists.
    pub fn name(&self) -> String {
        format!("{} {}", self.binary, self.test)
    }
}

/// Whether `variable` is `1`: CI installed what a test needs and requires it to run.
pub fn required(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|v| v == "1")
}

/// Records that the running test skips, for `reason`. The caller then returns.
pub fn skip(reason: impl Display) {
    let skip = Skip {
        binary: binary_name(),
        test: test_name(),
        reason: reason.to_string(),
    };
    // Straight to the descriptor: `eprintln!` is captured by the runner and shown only on failure.
    let _ = std::io::stderr()
        .write_all(format!("SKIPPED {} {}: {}\n", skip.binary, skip.test, skip.reason).as_bytes());
    if let Some(path) = std::env::var_os(LOG_VARIABLE) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(skip.to_line().as_bytes()));
        if let Err(e) = appended {
            let _ = std::io::stderr().write_all(
                format!(
                    "cannot record the skip in {}: {e}\n",
                    path.to_string_lossy()
                )
                .as_bytes(),
            );
        }
    }
}

/// Skips for `reason`, unless `variable` is `1`: then the test fails, saying what is missing.
pub fn skip_unless_required(variable: &str, reason: impl Display) {
    assert!(!required(variable), "{variable}=1 but {reason}");
    skip(reason);
}

/// The test binary's name without cargo's `-<hash>` suffix.
fn binary_name() -> String {
    let stem = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    match stem.rsplit_once('-') {
        Some((name, hash)) if !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => stem,
    }
}

/// The runner names each test's thread after the test.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("an unnamed thread")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_with_its_fields_cleaned() {
        let skip = Skip {
            binary: "api".into(),
            test: "fuzz::gpu_runs".into(),
            reason: "no adapter\tat all\n".into(),
        };
        let back = Skip::parse(&skip.to_line()).expect("a record");
        assert_eq!(back.reason, "no adapter at all ");
        assert_eq!(back.name(), "api fuzz::gpu_runs");
        assert_eq!(Skip::parse("not a record"), None);
    }

    #[test]
    fn a_skip_names_this_test_and_binary() {
        assert_eq!(test_name(), "tests::a_skip_names_this_test_and_binary");
        assert_eq!(binary_name(), "tern_skips");
    }
}
