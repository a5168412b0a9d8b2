//! `cargo xtask demo`: the quickstart, end to end on loopback (`--replicas N`: the replicas
//! demo).
//!
//! Builds the workspace (the same build as the tests) and the plugins, then runs the
//! `quickstart` binary: a control plane and two agents, keys and a trust root, signed plugins
//! and a generated model pushed, a canary deployment, sample images classified through the
//! agents' local APIs, a new model version in waves, a broken plugin rolled back, shutdown.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

pub fn target_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let out = crate::cargo_command()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// `replicas`: with `--replicas N`, the replicas demo instead: PostgreSQL and SeaweedFS's S3
/// server on loopback, N control-plane replicas, four agents, the leader killed mid-rollout.
pub fn run(replicas: Option<usize>) -> anyhow::Result<()> {
    println!("==> building the workspace and the plugins");
    // The same selection as `cargo xtask test`, so both share one build of everything.
    crate::cargo(&["build", "--locked", "--workspace", "--all-targets"])?;
    crate::build_plugins()?;
    let target = target_dir()?;
    let mut command = match replicas {
        Some(n) => {
            let mut command = Command::new(target.join("debug").join("replicas-demo"));
            command.args(["--replicas", &n.to_string()]);
            command
        }
        None => Command::new(target.join("debug").join("quickstart")),
    };
    let status = command
        .arg("--plugins")
        .arg(target.join("wasm32-wasip2").join("debug"))
        .status()
        .context("failed to run the demo")?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
