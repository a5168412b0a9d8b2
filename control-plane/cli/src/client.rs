//! Finding ternctl.toml and connecting to the admin API.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tern_proto::api::CliConfig;
use tern_transport::https::HttpsClient;

pub use crate::contexts::ConfigFile;

/// `~/.config/tern/ternctl.toml`.
fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/tern/ternctl.toml"))
}

/// Which config: the file (flag, then `TERN_CONFIG`, then the default path) and the context
/// (`--context`, else the file's current one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub file: Option<&'a Path>,
    pub context: Option<&'a str>,
}

/// Reads the config, applies `TERN_CONTROL_PLANE` and `TERN_ADMIN_TOKEN`, and builds a client.
pub fn connect(target: Target<'_>) -> anyhow::Result<HttpsClient> {
    let (config, path) = load_config(target)?;
    let tls = tern_transport::tls::https_client(&config.ca_certificate)
        .with_context(|| format!("invalid ca_certificate in {}", path.display()))?;
    Ok(HttpsClient::new(config.api, tls).with_bearer(config.admin_token))
}

/// The config file's path: the flag, then `TERN_CONFIG` (clap reads both), then the default.
pub fn config_path(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_owned()),
        None => match default_config_path() {
            Some(p) => Ok(p),
            None => bail!("no --config given and HOME is not set"),
        },
    }
}

/// The control plane `target` names, with `TERN_CONTROL_PLANE` and `TERN_ADMIN_TOKEN` applied,
/// and the file it came from.
pub fn load_config(target: Target<'_>) -> anyhow::Result<(CliConfig, PathBuf)> {
    let path = config_path(target.file)?;
    let file = ConfigFile::read(&path)?;
    let mut config = file.context(target.context)?.1.clone();
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
