//! Admin API credentials: the admin credential made at `init` (its hash in
//! `D/admin-token.sha256`) and read-only ones for scrapers and the dashboard, made with
//! `tern-control-plane credential create --role read`. A control plane alone keeps their hashes
//! in `D/credentials.json`, read again whenever it changes, so a credential made while the
//! control plane runs works at once. Replicas (`store` set) keep them in the store they share
//! (table `credentials`, hash → [`CredentialRecord`]): every replica holds them in memory,
//! follows the store's changes, and accepts a credential made through any of them at once. A
//! read-only credential may only read (`GET`, `HEAD`).
//!
//! A credential may expire (`--ttl`), and is revoked by removing its record (`credential
//! revoke ID`): every replica hears it. Each process notes when it last accepted each
//! credential and writes that down every few seconds (`D/credentials-used.json` alone, table
//! `credential_uses` among replicas), for `credential list`.

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
/// When each replica last accepted each credential: `id\0replica` → unix ms (8 bytes, big
/// endian).
const USES: Table = Table("credential_uses");
/// Where a control plane alone notes when it last accepted each credential.
const USES_FILE: &str = "credentials-used.json";

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
    /// When it stops being accepted; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// A credential as `credential list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialView {
    #[serde(flatten)]
    pub record: CredentialRecord,
    /// When a control plane last accepted it (written down every few seconds).
    pub last_used_ms: Option<u64>,
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
    #[error("no credential {0}: `tern-control-plane credential list` shows them")]
    NotFound(String),
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
fn make(role: Role, now_ms: u64, ttl_ms: Option<u64>) -> (String, CredentialRecord) {
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
        expires_ms: ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
    };
    (secret, record)
}

/// Writes `records` as `credentials.json` in `root`, atomically.
fn write_records(root: &Path, records: &[CredentialRecord]) -> Result<(), CredentialError> {
    let path = root.join("credentials.json");
    let io = |source| CredentialError::Io {
        path: path.clone(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(root).map_err(io)?;
    std::io::Write::write_all(
        &mut tmp,
        &serde_json::to_vec_pretty(records).unwrap_or_default(),
    )
    .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Makes a credential with `role` in the data dir at `root`; returns the secret (shown once).
pub fn create(
    root: &Path,
    role: Role,
    now_ms: u64,
    ttl_ms: Option<u64>,
) -> Result<(String, CredentialRecord), CredentialError> {
    let mut records = read_records(&root.join("credentials.json"))?;
    let (secret, record) = make(role, now_ms, ttl_ms);
    records.push(record.clone());
    write_records(root, &records)?;
    Ok((secret, record))
}

/// Makes a credential with `role` in the store replicas share; returns the secret (shown once).
pub fn create_shared(
    backend: &dyn Backend,
    role: Role,
    now_ms: u64,
    ttl_ms: Option<u64>,
) -> Result<(String, CredentialRecord), CredentialError> {
    let (secret, record) = make(role, now_ms, ttl_ms);
    let value = serde_json::to_vec(&record).unwrap_or_default();
    backend
        .commit(Write::new().put(CREDENTIALS, record.sha256.clone(), value))
        .map_err(CommitError::into_backend)?;
    Ok((secret, record))
}

/// The credentials of a control plane alone (data dir `root`), with their last use.
pub fn list(root: &Path) -> Result<Vec<CredentialView>, CredentialError> {
    let uses: HashMap<String, u64> = read_json(&root.join(USES_FILE)).unwrap_or_default();
    Ok(read_records(&root.join("credentials.json"))?
        .into_iter()
        .map(|record| CredentialView {
            last_used_ms: uses.get(&record.id).copied(),
            record,
        })
        .collect())
}

/// The credentials replicas share, with their last use at any replica.
pub fn list_shared(backend: &dyn Backend) -> Result<Vec<CredentialView>, CredentialError> {
    let mut uses: HashMap<String, u64> = HashMap::new();
    for (key, value) in backend.range(USES, &KeyRange::all(), Scan::All)? {
        let id = key.split(|b| *b == 0).next().unwrap_or_default();
        let (Ok(id), Ok(at)) = (
            std::str::from_utf8(id),
            <[u8; 8]>::try_from(value.as_slice()),
        ) else {
            continue;
        };
        let at = u64::from_be_bytes(at);
        let last = uses.entry(id.to_owned()).or_default();
        *last = (*last).max(at);
    }
    let mut views: Vec<CredentialView> = backend
        .range(CREDENTIALS, &KeyRange::all(), Scan::All)?
        .iter()
        .filter_map(|(_, value)| serde_json::from_slice::<CredentialRecord>(value).ok())
        .map(|record| CredentialView {
            last_used_ms: uses.get(&record.id).copied(),
            record,
        })
        .collect();
    views.sort_by_key(|v| v.record.created_ms);
    Ok(views)
}

/// Revokes credential `id` of a control plane alone: it is accepted no more.
pub fn revoke(root: &Path, id: &str) -> Result<CredentialRecord, CredentialError> {
    let mut records = read_records(&root.join("credentials.json"))?;
    let at = (records.iter())
        .position(|r| r.id == id)
        .ok_or_else(|| CredentialError::NotFound(id.to_owned()))?;
    let record = records.remove(at);
    write_records(root, &records)?;
    Ok(record)
}

/// Revokes credential `id` in the store replicas share: every replica hears it.
pub fn revoke_shared(backend: &dyn Backend, id: &str) -> Result<CredentialRecord, CredentialError> {
    let record = list_shared(backend)?
        .into_iter()
        .map(|v| v.record)
        .find(|r| r.id == id)
        .ok_or_else(|| CredentialError::NotFound(id.to_owned()))?;
    backend
        .commit(Write::new().delete(CREDENTIALS, record.sha256.clone()))
        .map_err(CommitError::into_backend)?;
    Ok(record)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A secret's SHA-256 from its hex text; `None` for what is not one.
fn hash_of(hex_text: impl AsRef<[u8]>) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(hex::decode(hex_text).ok()?.as_slice()).ok()
}

/// What a process keeps of a credential it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    id: String,
    role: Role,
    expires_ms: Option<u64>,
}

impl From<CredentialRecord> for Accepted {
    fn from(r: CredentialRecord) -> Self {
        Self {
            id: r.id,
            role: r.role,
            expires_ms: r.expires_ms,
        }
    }
}

/// A stored credential's hash and what is accepted of it; `None` for what is not one.
fn shared_role(key: &[u8], value: &[u8]) -> Option<([u8; 32], Accepted)> {
    let record: CredentialRecord = serde_json::from_slice(value).ok()?;
    Some((hash_of(key)?, record.into()))
}

/// `credentials.json` as last read: its modification time and the credentials by secret hash.
#[derive(Debug, Default)]
struct Loaded {
    modified: Option<SystemTime>,
    roles: HashMap<[u8; 32], Accepted>,
}

/// The credentials the admin API accepts.
#[derive(Debug)]
pub struct Credentials {
    admin_sha256: [u8; 32],
    path: PathBuf,
    others: Mutex<Loaded>,
    /// Those in the store replicas share, as last read and followed.
    shared: RwLock<HashMap<[u8; 32], Accepted>>,
    /// When each credential (by id) was last accepted, since last written down.
    uses: Mutex<HashMap<String, u64>>,
}

impl Credentials {
    pub fn new(admin_sha256: [u8; 32], root: &Path) -> Self {
        Self {
            admin_sha256,
            path: root.join("credentials.json"),
            others: Mutex::default(),
            shared: RwLock::default(),
            uses: Mutex::default(),
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

    /// The role of a presented secret at `now_ms`, if it is a credential that has not expired.
    pub fn role(&self, secret: &str, now_ms: u64) -> Option<Role> {
        let hash = tern_proto::sha256(secret.as_bytes());
        if hash == self.admin_sha256 {
            return Some(Role::Admin);
        }
        let accepted = self.find(&hash)?;
        if accepted.expires_ms.is_some_and(|at| now_ms >= at) {
            return None;
        }
        self.uses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(accepted.id, now_ms);
        Some(accepted.role)
    }

    /// The data dir whose `credentials.json` this process reads.
    pub fn data_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The uses noted since the last call (credential id → when last accepted).
    pub fn take_uses(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.uses.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes `uses` down in data dir `root` (a control plane alone), keeping later ones.
    pub fn record_uses(root: &Path, uses: HashMap<String, u64>) -> Result<(), CredentialError> {
        let path = root.join(USES_FILE);
        let mut all: HashMap<String, u64> = read_json(&path).unwrap_or_default();
        for (id, at) in uses {
            let last = all.entry(id).or_default();
            *last = (*last).max(at);
        }
        let io = |source| CredentialError::Io {
            path: path.clone(),
            source,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(root).map_err(io)?;
        std::io::Write::write_all(&mut tmp, &serde_json::to_vec(&all).unwrap_or_default())
            .map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Writes `uses` down in the store replicas share, as `replica`'s (lazily).
    pub fn record_uses_shared(
        backend: &dyn Backend,
        replica: &str,
        uses: HashMap<String, u64>,
    ) -> Result<(), CredentialError> {
        let write = uses.into_iter().fold(Write::new().lazily(), |w, (id, at)| {
            w.put(USES, format!("{id}\0{replica}"), at.to_be_bytes().to_vec())
        });
        backend.commit(write).map_err(CommitError::into_backend)?;
        Ok(())
    }

    fn find(&self, hash: &[u8; 32]) -> Option<Accepted> {
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified != others.modified {
            match read_records(&self.path) {
                Ok(records) => {
                    others.roles = records
                        .into_iter()
                        .filter_map(|r| Some((hash_of(&r.sha256)?, r.into())))
                        .collect();
                    others.modified = modified;
                }
                Err(e) => warn!(error = %e, "cannot read the credentials"),
            }
        }
        if let Some(accepted) = others.roles.get(hash) {
            return Some(accepted.clone());
        }
        drop(others);
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_made_while_running_is_accepted_with_its_role() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let credentials = Credentials::new(tern_proto::sha256(b"admin"), tmp.path());
        assert_eq!(credentials.role("admin", 0), Some(Role::Admin));
        assert_eq!(credentials.role("nobody", 0), None);
        let (secret, record) = create(tmp.path(), Role::Read, 1, None).expect("create");
        assert_eq!(record.role, Role::Read);
        assert_eq!(credentials.role(&secret, 0), Some(Role::Read));
        assert!(Role::Read.allows(Access::Read));
        assert!(!Role::Read.allows(Access::Write));
        assert!(Role::Admin.allows(Access::Write));
        let text = std::fs::read_to_string(tmp.path().join("credentials.json")).expect("file");
        assert!(!text.contains(&secret), "only the hash is stored");
    }

    #[test]
    fn credentials_expire_are_revoked_and_listed_with_their_last_use() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let credentials = Credentials::new(tern_proto::sha256(b"admin"), tmp.path());
        let (short, record) = create(tmp.path(), Role::Read, 1_000, Some(60_000)).expect("create");
        assert_eq!(record.expires_ms, Some(61_000));
        let (long, kept) = create(tmp.path(), Role::Admin, 1_000, None).expect("create");
        assert_eq!(credentials.role(&short, 60_999), Some(Role::Read));
        assert_eq!(credentials.role(&short, 61_000), None, "expired");
        assert_eq!(credentials.role(&long, 70_000), Some(Role::Admin));
        Credentials::record_uses(tmp.path(), credentials.take_uses()).expect("uses");
        let listed = list(tmp.path()).expect("list");
        let last = |id: &str| {
            listed
                .iter()
                .find(|v| v.record.id == id)
                .and_then(|v| v.last_used_ms)
        };
        assert_eq!(last(&record.id), Some(60_999));
        assert_eq!(last(&kept.id), Some(70_000));
        assert!(credentials.take_uses().is_empty(), "written down once");
        // Revoked: refused from the next request on.
        revoke(tmp.path(), &kept.id).expect("revoke");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::File::open(tmp.path().join("credentials.json"))
            .and_then(|f| f.set_modified(SystemTime::now()))
            .expect("touch");
        assert_eq!(credentials.role(&long, 70_001), None);
        assert!(matches!(
            revoke(tmp.path(), &kept.id),
            Err(CredentialError::NotFound(_))
        ));
        assert_eq!(
            credentials.role("admin", u64::MAX),
            Some(Role::Admin),
            "the init credential stays"
        );
    }

    #[test]
    fn a_credential_revoked_through_one_replica_is_refused_by_another() {
        let store = crate::backend::MemoryBackend::new();
        let mut heard = store.subscribe();
        let other = tempfile::tempdir().expect("tempdir");
        let second = Credentials::new(tern_proto::sha256(b"admin"), other.path());
        let (secret, record) = create_shared(&store, Role::Read, 1, None).expect("create");
        second.read_shared(&store).expect("read");
        assert_eq!(second.role(&secret, 5), Some(Role::Read));
        Credentials::record_uses_shared(&store, "a", second.take_uses()).expect("uses");
        Credentials::record_uses_shared(&store, "b", [(record.id.clone(), 9)].into())
            .expect("uses");
        let listed = list_shared(&store).expect("list");
        assert_eq!(listed[0].last_used_ms, Some(9), "the latest at any replica");
        revoke_shared(&store, &record.id).expect("revoke");
        while let Ok(crate::backend::Notice::Committed(changes)) = heard.try_recv() {
            second.heard(&changes);
        }
        assert_eq!(second.role(&secret, 10), None);
        assert!(list_shared(&store).expect("list").is_empty());
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
        let (old, _) = create_shared(&store, Role::Read, 1, None).expect("create");
        first.read_shared(&store).expect("read");
        second.read_shared(&store).expect("read");
        assert_eq!(second.role(&old, 0), Some(Role::Read), "read at start");
        // Made through the first while both run: the second hears the commit.
        let (new, record) = create_shared(&store, Role::Admin, 2, None).expect("create");
        assert_eq!(second.role(&new, 0), None);
        while let Ok(crate::backend::Notice::Committed(changes)) = heard.try_recv() {
            second.heard(&changes);
        }
        assert_eq!(second.role(&new, 0), Some(Role::Admin));
        assert_eq!(first.role("nobody", 0), None);
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
