//! The agent's data directory.
//!
//! ```text
//! D/agent.toml     control plane address, identity, labels, local API address
//! D/agent.key      the agent's private key (mode 0600; generated here, never sent)
//! D/agent.crt      the agent's certificate, issued by the control plane's CA
//! D/ca.crt         the control plane's CA (pinned at enrollment via the token's hash)
//! D/gpus.json      GPU adapters found by the last discovery
//! D/control-plane.pub   the control plane's online key (signs desired states)
//! D/trust-root.json     the trust root pinned at enrollment (then kept in D/state)
//! D/state/         sled: trust root, version floors, applied generation, active revisions
//! D/artifacts/     verified artifacts by SHA-256 (downloads in progress under partial/)
//! ```
//!
//! `agent.toml` ([`crate::config::AgentConfig`]) is written last at enrollment: its presence
//! means the agent is enrolled.

use crate::config::AgentConfig;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the data dir could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0} is not an enrolled agent's data dir (run `tern-agent join` first)")]
    NotEnrolled(PathBuf),
}

/// Paths of an agent data dir.
#[derive(Debug, Clone)]
pub struct AgentDataDir {
    root: PathBuf,
}

impl AgentDataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("agent.toml")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("agent.key")
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join("agent.crt")
    }
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn gpus(&self) -> PathBuf {
        self.root.join("gpus.json")
    }
    pub fn online_key(&self) -> PathBuf {
        self.root.join("control-plane.pub")
    }
    pub fn trust_root(&self) -> PathBuf {
        self.root.join("trust-root.json")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Compiled plugins (the engine's cache).
    pub fn compiled(&self) -> PathBuf {
        self.root.join("compiled")
    }

    pub fn is_enrolled(&self) -> bool {
        self.config().exists()
    }

    pub fn read(&self, path: &Path) -> Result<String, DataDirError> {
        std::fs::read_to_string(path).map_err(|source| DataDirError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads `agent.toml`.
    pub fn load_config(&self) -> Result<AgentConfig, DataDirError> {
        if !self.is_enrolled() {
            return Err(DataDirError::NotEnrolled(self.root.clone()));
        }
        let path = self.config();
        toml::from_str(&self.read(&path)?).map_err(|e| DataDirError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// Writes a file atomically: a fresh temporary file in the same directory (never one left
    /// behind or planted there), mode 0600 when `secret`, fsync, then rename over `path`.
    pub fn write(&self, path: &Path, bytes: &[u8], secret: bool) -> Result<(), DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.root).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = if secret { 0o600 } else { 0o644 };
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io)?;
        }
        #[cfg(not(unix))]
        let _ = secret;
        tmp.write_all(bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        // The rename itself must survive a power cut, not only the bytes.
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// Writes `agent.toml`.
    pub fn save_config(&self, config: &AgentConfig) -> Result<(), DataDirError> {
        let text = toml::to_string_pretty(config).expect("the agent config always serializes");
        self.write(&self.config(), text.as_bytes(), false)
    }
}
