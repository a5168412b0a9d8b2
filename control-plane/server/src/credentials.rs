//! Admin API credentials: the admin credential made at `init` (its hash in
//! `D/admin-token.sha256`) and read-only ones for scrapers and the dashboard, made with
//! `tern-control-plane credential create --role read`. A control plane alone keeps their hashes
//! in `D/credentials.json`, read again whenever it changes, so a credential made while the
//! control plane runs works at once. Replicas (`store` set) keep them in the store they share
//! (table `credentials`, hash → [`CredentialRecord`]): every replica holds them in memory,
//! follows the store's changes, and accepts a credential made through any of them at once. A
//! read-only credential may only read (`GET`, `HEAD`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::backend::{Backend, BackendError, Change, CommitError, KeyRange, Scan, Table, Write};

/// Credentials replicas share: hash (hex) → [`CredentialRecord`] (JSON).
const CREDENTIALS: Table = Table("credentials");

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
    #[error("cannot store the credential: {0}")]
    Storage(#[from] BackendError),
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

/// A new credential's secret (shown once) and its record.
fn make(role: Role, now_ms: u64) -> (String, CredentialRecord) {
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
    (secret, record)
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
    let (secret, record) = make(role, now_ms);
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

/// Makes a credential with `role` in the store replicas share; returns the secret (shown once).
pub fn create_shared(
    backend: &dyn Backend,
    role: Role,
    now_ms: u64,
) -> Result<(String, CredentialRecord), CredentialError> {
    let (secret, record) = make(role, now_ms);
    let value = serde_json::to_vec(&record).unwrap_or_default();
    backend
        .commit(Write::new().put(CREDENTIALS, record.sha256.clone(), value))
        .map_err(CommitError::into_backend)?;
    Ok((secret, record))
}

/// A secret's SHA-256 from its hex text; `None` for what is not one.
fn hash_of(hex_text: impl AsRef<[u8]>) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(hex::decode(hex_text).ok()?.as_slice()).ok()
}

/// A stored credential's hash and role; `None` for what is not one.
fn shared_role(key: &[u8], value: &[u8]) -> Option<([u8; 32], Role)> {
    let record: CredentialRecord = serde_json::from_slice(value).ok()?;
    Some((hash_of(key)?, record.role))
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
    /// Those in the store replicas share, as last read and followed.
    shared: RwLock<HashMap<[u8; 32], Role>>,
}

impl Credentials {
    pub fn new(admin_sha256: [u8; 32], root: &Path) -> Self {
        Self {
            admin_sha256,
            path: root.join("credentials.json"),
            others: Mutex::default(),
            shared: RwLock::default(),
        }
    }

    /// Reads the credentials of the shared store again (at start, and after changes may
    /// have gone unheard).
    pub fn read_shared(&self, backend: &dyn Backend) -> Result<(), BackendError> {
        let roles = backend
            .range(CREDENTIALS, &KeyRange::all(), Scan::All)?
            .iter()
            .filter_map(|(key, value)| shared_role(key, value))
            .collect();
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = roles;
        Ok(())
    }

    /// Follows a commit of the shared store: credentials made (or removed) through any replica.
    pub fn heard(&self, changes: &[Change]) {
        let mut shared = self.shared.write().unwrap_or_else(|p| p.into_inner());
        for change in changes.iter().filter(|c| c.table == CREDENTIALS) {
            match change
                .value
                .as_deref()
                .and_then(|v| shared_role(&change.key, v))
            {
                Some((hash, role)) => {
                    shared.insert(hash, role);
                }
                None => {
                    if let Some(hash) = hash_of(&change.key) {
                        shared.remove(&hash);
                    }
                }
            }
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
                        .filter_map(|r| Some((hash_of(&r.sha256)?, r.role)))
                        .collect();
                    others.modified = modified;
                }
                Err(e) => warn!(error = %e, "cannot read the credentials"),
            }
        }
        if let Some(role) = others.roles.get(&hash) {
            return Some(*role);
        }
        drop(others);
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .copied()
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

    #[test]
    fn a_credential_made_through_one_replica_is_accepted_by_another() {
        let store = crate::backend::MemoryBackend::new();
        let mut heard = store.subscribe();
        let (one, other) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let first = Credentials::new(tern_proto::sha256(b"admin"), one.path());
        let second = Credentials::new(tern_proto::sha256(b"admin"), other.path());
        let (old, _) = create_shared(&store, Role::Read, 1).expect("create");
        first.read_shared(&store).expect("read");
        second.read_shared(&store).expect("read");
        assert_eq!(second.role(&old), Some(Role::Read), "read at start");
        // Made through the first while both run: the second hears the commit.
        let (new, record) = create_shared(&store, Role::Admin, 2).expect("create");
        assert_eq!(second.role(&new), None);
        while let Ok(crate::backend::Notice::Committed(changes)) = heard.try_recv() {
            second.heard(&changes);
        }
        assert_eq!(second.role(&new), Some(Role::Admin));
        assert_eq!(first.role("nobody"), None);
        let stored = store
            .get(CREDENTIALS, record.sha256.as_bytes())
            .expect("get")
            .expect("stored");
        assert!(
            !String::from_utf8_lossy(&stored).contains(&new),
            "only the hash is stored"
        );
    }
}
