//! Finding ternctl.toml and connecting to the admin API.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tern_proto::api::CliConfig;
use tern_transport::https::HttpsClient;

/// `~/.config/tern/ternctl.toml`.
fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/tern/ternctl.toml"))
}

/// Reads the config (flag, then `TERN_CONFIG`, then the default path), applies
/// `TERN_CONTROL_PLANE` and `TERN_ADMIN_TOKEN`, and builds a client.
pub fn connect(explicit: Option<&Path>) -> anyhow::Result<HttpsClient> {
    let (config, path) = load_config(explicit)?;
    let tls = tern_transport::tls::https_client(&config.ca_certificate)
        .with_context(|| format!("invalid ca_certificate in {}", path.display()))?;
    Ok(HttpsClient::new(config.api, tls).with_bearer(config.admin_token))
}

/// The config (flag, then `TERN_CONFIG`, then the default path) with `TERN_CONTROL_PLANE` and
/// `TERN_ADMIN_TOKEN` applied, and the file it came from.
pub fn load_config(explicit: Option<&Path>) -> anyhow::Result<(CliConfig, PathBuf)> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => match default_config_path() {
            Some(p) => p,
            None => bail!("no --config given and HOME is not set"),
        },
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "failed to read {} (copy the ternctl.toml written by `tern-control-plane init`, or pass --config)",
            path.display()
        )
    })?;
    let mut config: CliConfig =
        toml::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))?;
    if let Ok(addr) = std::env::var("TERN_CONTROL_PLANE") {
        config.api = addr;
    }
    if let Ok(token) = std::env::var("TERN_ADMIN_TOKEN") {
        config.admin_token = token;
    }
    Ok((config, path))
}

/// Percent-encodes a value for use as one URL path segment.
pub fn path_segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
