//! Admin API credentials: the admin credential made at `init` (its hash in
//! `D/admin-token.sha256`) and read-only ones for scrapers and the dashboard, made with
//! `tern-control-plane credential create --role read` (hashes in `D/credentials.json`). The file
//! is read again whenever it changes, so a credential made while the control plane runs works at
//! once. A read-only credential may only read (`GET`, `HEAD`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only: `/metrics`, `get`, `top`, `describe`, the dashboard.
    Read,
}

/// What a request does, as far as roles are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Role {
    /// Whether this role may make a request that does `access`.
    pub fn allows(self, access: Access) -> bool {
        self == Role::Admin || access == Access::Read
    }
}

/// One stored credential: its hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub id: String,
    pub role: Role,
    pub sha256: String,
    pub created_ms: u64,
}

/// Why a credential could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn read_records(path: &Path) -> Result<Vec<CredentialRecord>, CredentialError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| CredentialError::Corrupt {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CredentialError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Makes a credential with `role` in the data dir at `root`; returns the secret (shown once).
pub fn create(
    root: &Path,
    role: Role,
    now_ms: u64,
) -> Result<(String, CredentialRecord), CredentialError> {
    let path = root.join("credentials.json");
    let io = |source| CredentialError::Io {
        path: path.clone(),
        source,
    };
    let mut records = read_records(&path)?;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let mut id = [0u8; 4];
    rand::rng().fill_bytes(&mut id);
    let record = CredentialRecord {
        id: hex::encode(id),
        role,
        sha256: hex::encode(tern_proto::sha256(secret.as_bytes())),
        created_ms: now_ms,
    };
    records.push(record.clone());
    let mut tmp = tempfile::NamedTempFile::new_in(root).map_err(io)?;
    std::io::Write::write_all(
        &mut tmp,
        &serde_json::to_vec_pretty(&records).unwrap_or_default(),
    )
    .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok((secret, record))
}

/// `credentials.json` as last read: its modification time and the roles by secret hash.
#[derive(Debug, Default)]
struct Loaded {
    modified: Option<SystemTime>,
    roles: HashMap<[u8; 32], Role>,
}

/// The credentials the admin API accepts.
#[derive(Debug)]
pub struct Credentials {
    admin_sha256: [u8; 32],
    path: PathBuf,
    others: Mutex<Loaded>,
}

impl Credentials {
    pub fn new(admin_sha256: [u8; 32], root: &Path) -> Self {
        Self {
            admin_sha256,
            path: root.join("credentials.json"),
            others: Mutex::default(),
        }
    }

    /// The role of a presented secret, if it is a credential.
    pub fn role(&self, secret: &str) -> Option<Role> {
        let hash = tern_proto::sha256(secret.as_bytes());
        if hash == self.admin_sha256 {
            return Some(Role::Admin);
        }
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified != others.modified {
            match read_records(&self.path) {
                Ok(records) => {
                    others.roles = records
                        .into_iter()
                        .filter_map(|r| {
                            let hash = hex::decode(&r.sha256).ok()?;
                            Some((<[u8; 32]>::try_from(hash.as_slice()).ok()?, r.role))
                        })
                        .collect();
                    others.modified = modified;
                }
                Err(e) => warn!(error = %e, "cannot read the credentials"),
            }
        }
        others.roles.get(&hash).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_made_while_running_is_accepted_with_its_role() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let credentials = Credentials::new(tern_proto::sha256(b"admin"), tmp.path());
        assert_eq!(credentials.role("admin"), Some(Role::Admin));
        assert_eq!(credentials.role("nobody"), None);
        let (secret, record) = create(tmp.path(), Role::Read, 1).expect("create");
        assert_eq!(record.role, Role::Read);
        assert_eq!(credentials.role(&secret), Some(Role::Read));
        assert!(Role::Read.allows(Access::Read));
        assert!(!Role::Read.allows(Access::Write));
        assert!(Role::Admin.allows(Access::Write));
        let text = std::fs::read_to_string(tmp.path().join("credentials.json")).expect("file");
        assert!(!text.contains(&secret), "only the hash is stored");
    }
}
