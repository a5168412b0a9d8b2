//! `cargo deny check` in `cargo xtask lint`: licenses, bans and sources from the lockfile
//! (`deny.toml` says what is allowed), and the RustSec advisories. The advisory database is
//! fetched from GitHub; where that cannot be reached (an offline builder), the advisories are
//! reported as not checked, loudly, and the rest still must pass.

use anyhow::{Context, bail};

/// The cargo-deny release `.ci/run` installs.
const VERSION: &str = "0.20.2";

pub fn run() -> anyhow::Result<()> {
    let version = super::cargo_command()
        .args(["deny", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(version) = version else {
        bail!(
            "cargo-deny is needed: `cargo install --locked cargo-deny --version {VERSION}` \
             (`.ci/run` installs it)"
        );
    };
    println!("==> {version}: licenses, bans, sources");
    super::cargo(&["deny", "--locked", "check", "licenses", "bans", "sources"])?;
    println!("==> {version}: advisories");
    let advisories = super::cargo_command()
        .args(["deny", "--locked", "check", "advisories"])
        .output()
        .context("cargo deny check advisories")?;
    let stderr = String::from_utf8_lossy(&advisories.stderr);
    if advisories.status.success() {
        println!("advisories ok");
        return Ok(());
    }
    if stderr.contains("failed to fetch advisory database") {
        println!(
            "WARNING: advisories NOT checked: the RustSec database cannot be fetched from here \
             ({}); run `cargo deny check advisories` where GitHub is reachable",
            stderr
                .lines()
                .find(|l| l.contains("failed to fetch"))
                .unwrap_or("offline")
                .trim()
        );
        return Ok(());
    }
    eprintln!("{stderr}");
    bail!("cargo deny check advisories failed")
}
