//! The I/O-free crates stay free of I/O: `cargo xtask tidy` asks cargo what building each of
//! them alone pulls in (`cargo tree -p CRATE -e normal`: cargo's own resolution, features as
//! that build would unify them, not the text of `use` lines) and fails on any async runtime,
//! network, TLS, HTTP or database crate among them.

use anyhow::{Context, bail};

/// The crates that must do no I/O.
pub const IO_FREE: &[&str] = &["tern-fleet-core"];

/// Crates that do I/O: async runtimes, network and TLS, HTTP, databases and object stores.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "socket2",
    "quinn",
    "quinn-proto",
    "rustls",
    "tokio-rustls",
    "native-tls",
    "openssl",
    "openssl-sys",
    "async-io",
    "curl",
    "ureq",
    "hyper",
    "hyper-util",
    "h2",
    "axum",
    "tower",
    "tonic",
    "reqwest",
    "sled",
    "tokio-postgres",
    "postgres",
    "rusqlite",
    "redis",
    "object_store",
    "tern-transport",
];

/// The names of the crates `tree` (`cargo tree --prefix none --format {p}`) lists that do
/// I/O, sorted, once each.
pub fn forbidden_in(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN.contains(name))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The problems of each I/O-free crate: every crate that does I/O it depends on.
pub fn check() -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in IO_FREE {
        let out = crate::cargo_command()
            .args(["tree", "--locked", "-p", krate, "-e", "normal"])
            .args(["--prefix", "none", "--format", "{p}"])
            .output()
            .context("failed to run cargo tree")?;
        if !out.status.success() {
            bail!(
                "`cargo tree -p {krate}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let found = forbidden_in(&String::from_utf8_lossy(&out.stdout));
        if !found.is_empty() {
            problems.push(format!(
                "{krate} must do no I/O but depends on {}",
                found.join(", ")
            ));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_and_databases_are_found_by_name() {
        let tree = "tern-fleet-core v0.1.0 (/w/control-plane/core)\nserde v1.0.228\n\
                    tokio v1.48.0\ntokio-macros v2.6.0\nsled v0.34.7\ntokio v1.48.0\n";
        assert_eq!(forbidden_in(tree), ["sled", "tokio"]);
        assert!(forbidden_in("serde v1.0.228\ntern-proto v0.1.0 (/w)\n").is_empty());
    }

    #[test]
    fn the_fleet_core_pulls_in_no_io_crate() {
        // The real check, as tidy runs it: what building the crate alone would pull in.
        assert_eq!(check().expect("cargo tree"), Vec::<String>::new());
    }
}
