//! The durable registry: enrolled agents and enrollment tokens, in the control plane's
//! backend.
//!
//! Tables: `agents` (id → record), `agent_names` (name → id), `agent_certs` (certificate SHA-256 →
//! id), `tokens` (token id → record), `revoked_certs` (certificate SHA-256 → agent id) and
//! `revoked_keys` (public key SHA-256 → agent id). Records are JSON so that fields can be added
//! without a migration. Enrollment touches the first four tables in one transaction, so a token is
//! redeemed exactly once and a name is never given twice. Revocation outlives the agent's record:
//! a decommissioned agent's certificates and key stay refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_proto::api::AgentStatus;
use tern_proto::{Capacity, EnrollmentToken};

use crate::backend::{
    BackendError, Change, CommitError, KeyRange, Scan, SharedBackend, Table, Transaction, Write,
    transact,
};
use crate::records::{CorruptRecord, decode, encode};

const AGENTS: Table = Table("agents");
const NAMES: Table = Table("agent_names");
const CERTS: Table = Table("agent_certs");
const TOKENS: Table = Table("tokens");
const REVOKED_CERTS: Table = Table("revoked_certs");
const REVOKED_KEYS: Table = Table("revoked_keys");

/// A failure of the storage itself.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error("registry {0}")]
    Corrupt(#[from] CorruptRecord),
}

/// Why a token was not redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("enrollment token is not valid for this control plane")]
    UnknownToken,
    #[error("enrollment token was already used")]
    Used,
    #[error("enrollment token expired")]
    Expired,
    #[error("an agent named `{0}` is already enrolled")]
    NameTaken(String),
    #[error("this key belongs to a revoked agent; enroll with a new key")]
    RevokedKey,
    #[error("the token's labels and the requested labels together are invalid: {0}")]
    Labels(#[from] tern_proto::labels::LabelError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub version: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Last status written (on hello, disconnect and silence); live status comes from presence.
    pub status: AgentStatus,
    #[serde(default)]
    pub address: Option<String>,
    /// The control-plane replica that holds (or last held) its connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Hex SHA-256 of the agent's certificate.
    pub cert_sha256: String,
    /// The certificate before the last renewal, still accepted until it expires (the agent may
    /// not have stored the new one yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_cert_sha256: Option<String>,
    /// Unix ms when its certificate expires (absent for certificates issued before expiry was
    /// tracked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_ms: Option<u64>,
    /// Hex SHA-256 of its public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// When it was revoked: its certificates and key are refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

impl AgentRecord {
    /// Whether its certificate expired by `now_ms` (it must enroll again with a new token).
    pub fn cert_expired(&self, now_ms: u64) -> bool {
        self.cert_expires_ms.is_some_and(|e| e <= now_ms)
    }

    /// The certificates that identify it: the current one and the one before a renewal.
    pub fn cert_fingerprints(&self) -> Vec<[u8; 32]> {
        std::iter::once(&self.cert_sha256)
            .chain(&self.previous_cert_sha256)
            .filter_map(|h| hex::decode(h).ok())
            .filter_map(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .collect()
    }
}

/// A one-time enrollment token as stored (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The agent that redeemed it.
    pub used_by: Option<String>,
}

/// What redeeming a token creates.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: String,
    pub name: String,
    /// Labels the agent asked for; the token's win on conflict.
    pub labels: BTreeMap<String, String>,
    pub cert_sha256: [u8; 32],
    pub cert_expires_ms: u64,
    pub key_sha256: [u8; 32],
    pub address: Option<String>,
}

/// Handle to the registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    backend: SharedBackend,
}

/// Why a change to an agent could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AgentChangeError {
    #[error("no agent named `{0}`")]
    NotFound(String),
    #[error("agent `{0}` is revoked")]
    Revoked(String),
    #[error(transparent)]
    Labels(#[from] tern_proto::labels::LabelError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Why a token could not be withdrawn.
#[derive(Debug, thiserror::Error)]
pub enum TokenWithdrawError {
    #[error("no unredeemed token `{0}`")]
    NotFound(String),
    #[error("token `{id}` was already used by agent {agent}")]
    Used { id: String, agent: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Storage failures of the registry's changes are registry failures.
macro_rules! storage_is_registry {
    ($($error:ty),*) => {$(
        impl From<BackendError> for $error {
            fn from(e: BackendError) -> Self {
                RegistryError::from(e).into()
            }
        }
    )*};
}
storage_is_registry!(RedeemError, AgentChangeError, TokenWithdrawError);

/// A record read inside a transaction.
fn read<T: serde::de::DeserializeOwned>(
    txn: &mut Transaction<'_>,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, RegistryError> {
    txn.get(table, key)?.map(|v| decode(key, &v)).transpose()
}

impl Registry {
    pub fn new(backend: SharedBackend) -> Self {
        Self { backend }
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, RegistryError> {
        self.backend
            .get(table, key)?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, RegistryError> {
        self.backend
            .range(TOKENS, &KeyRange::all(), Scan::All)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// Creates a token; returns its text form (shown once) and what was stored.
    pub fn create_token(
        &self,
        labels: BTreeMap<String, String>,
        ttl_ms: u64,
        ca_sha256: [u8; 32],
        now_ms: u64,
    ) -> Result<(EnrollmentToken, TokenRecord), RegistryError> {
        use rand::RngCore;
        let mut token = EnrollmentToken {
            id: [0; 16],
            secret: [0; 32],
            ca_sha256,
        };
        rand::rng().fill_bytes(&mut token.id);
        rand::rng().fill_bytes(&mut token.secret);
        let record = TokenRecord {
            id: token.id_hex(),
            secret_sha256: hex::encode(token.secret_sha256()),
            labels,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            used_by: None,
        };
        self.backend
            .commit(Write::new().put(TOKENS, record.id.as_bytes(), encode(&record)))
            .map_err(CommitError::into_backend)?;
        Ok((token, record))
    }

    /// Checks a token without using it, so that a request with a bad token costs no signing.
    /// [`Self::redeem`] checks again, atomically.
    pub fn check_token(&self, token: &EnrollmentToken, now_ms: u64) -> Result<(), RedeemError> {
        let record: TokenRecord = self
            .get(TOKENS, token.id_hex().as_bytes())?
            .ok_or(RedeemError::UnknownToken)?;
        check(&record, token, now_ms)
    }

    /// Deletes tokens that were used or expired more than a day ago (until then, a late attempt
    /// still gets a precise "used" or "expired" answer). Returns how many were deleted.
    pub fn prune_tokens(&self, now_ms: u64) -> Result<usize, RegistryError> {
        const KEEP_MS: u64 = 24 * 3600 * 1000;
        let mut pruned = 0;
        for (key, value) in self.backend.range(TOKENS, &KeyRange::all(), Scan::All)? {
            let record: TokenRecord = decode::<_, RegistryError>(&key, &value)?;
            let spent =
                record.used_by.is_some() && now_ms.saturating_sub(record.created_ms) > KEEP_MS;
            let stale = now_ms.saturating_sub(record.expires_ms) > KEEP_MS;
            if !(spent || stale) {
                continue;
            }
            // Only as it was read: a token redeemed meanwhile is judged again next time.
            let write = Write::new()
                .only_if(TOKENS, key.clone(), Some(value))
                .delete(TOKENS, key);
            match self.backend.commit(write) {
                Ok(()) => pruned += 1,
                Err(CommitError::Conflict) => {}
                Err(CommitError::Backend(e)) => return Err(e.into()),
            }
        }
        Ok(pruned)
    }

    /// Redeems `token` for a new agent, atomically: the token is marked used, and the agent, its
    /// name and its certificate are recorded, or nothing changes.
    pub fn redeem(
        &self,
        token: &EnrollmentToken,
        agent: NewAgent,
        now_ms: u64,
    ) -> Result<AgentRecord, RedeemError> {
        let token_id = token.id_hex();
        if self.is_key_revoked(&agent.key_sha256)? {
            return Err(RedeemError::RevokedKey);
        }
        transact(self.backend.as_ref(), |txn| {
            let mut record: TokenRecord =
                read(txn, TOKENS, token_id.as_bytes())?.ok_or(RedeemError::UnknownToken)?;
            check(&record, token, now_ms)?;
            // A name is given once, unless its agent's certificate expired: then the same
            // agent (same id, same state on the host) enrolls again with a new token.
            let existing: Option<AgentRecord> = match txn.get(NAMES, agent.name.as_bytes())? {
                Some(id) => read(txn, AGENTS, &id)?,
                None => None,
            };
            if let Some(old) = &existing
                && (old.id != agent.id || old.revoked_ms.is_some() || !old.cert_expired(now_ms))
            {
                return Err(RedeemError::NameTaken(agent.name.clone()));
            }
            let mut labels = existing
                .as_ref()
                .map_or_else(|| agent.labels.clone(), |old| old.labels.clone());
            labels.extend(record.labels.clone());
            tern_proto::labels::validate(&labels)?;
            let agent_record = AgentRecord {
                id: agent.id.clone(),
                name: agent.name.clone(),
                labels,
                capacity: existing
                    .as_ref()
                    .map(|o| o.capacity.clone())
                    .unwrap_or_default(),
                version: existing
                    .as_ref()
                    .map(|o| o.version.clone())
                    .unwrap_or_default(),
                first_seen_ms: existing.as_ref().map_or(now_ms, |o| o.first_seen_ms),
                last_seen_ms: now_ms,
                status: AgentStatus::NotReady,
                address: agent.address.clone(),
                replica: None,
                cert_sha256: hex::encode(agent.cert_sha256),
                previous_cert_sha256: None,
                cert_expires_ms: Some(agent.cert_expires_ms),
                key_sha256: Some(hex::encode(agent.key_sha256)),
                revoked_ms: None,
            };
            if let Some(old) = &existing {
                for fingerprint in old.cert_fingerprints() {
                    txn.delete(CERTS, &fingerprint[..]);
                }
            }
            record.used_by = Some(agent.id.clone());
            txn.put(TOKENS, token_id.as_bytes(), encode(&record));
            txn.put(AGENTS, agent.id.as_bytes(), encode(&agent_record));
            txn.put(NAMES, agent.name.as_bytes(), agent.id.as_bytes().to_vec());
            txn.put(CERTS, &agent.cert_sha256[..], agent.id.as_bytes().to_vec());
            Ok(agent_record)
        })
    }

    /// The id to enroll `name` under: its own when it is enrolled and its certificate expired
    /// (not revoked), else `fresh`.
    pub fn enrollment_id(
        &self,
        name: &str,
        fresh: String,
        now_ms: u64,
    ) -> Result<String, RegistryError> {
        Ok(match self.agent_by_name(name)? {
            Some(old) if old.revoked_ms.is_none() && old.cert_expired(now_ms) => old.id,
            _ => fresh,
        })
    }

    /// Whether a public key belongs to a revoked agent.
    pub fn is_key_revoked(&self, key_sha256: &[u8; 32]) -> Result<bool, RegistryError> {
        Ok(self.backend.get(REVOKED_KEYS, key_sha256)?.is_some())
    }

    /// Every certificate revoked so far (the QUIC endpoint refuses them in the handshake).
    pub fn revoked_certificates(&self) -> Result<Vec<[u8; 32]>, RegistryError> {
        Ok(self
            .backend
            .range(REVOKED_CERTS, &KeyRange::all(), Scan::All)?
            .iter()
            .filter_map(|(k, _)| <[u8; 32]>::try_from(k.as_slice()).ok())
            .collect())
    }

    /// Revokes `name`: its certificates and key are refused from now on. Returns the record and
    /// the certificates to refuse; revoking again changes nothing.
    pub fn revoke(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<(AgentRecord, Vec<[u8; 32]>), AgentChangeError> {
        transact(self.backend.as_ref(), |txn| {
            let mut record = self.by_name_in(txn, name)?;
            let fingerprints = revoke_in(txn, &mut record, now_ms);
            txn.put(AGENTS, record.id.as_bytes(), encode(&record));
            Ok((record, fingerprints))
        })
    }

    /// The record of `name`, read inside `txn`.
    fn by_name_in(
        &self,
        txn: &mut Transaction<'_>,
        name: &str,
    ) -> Result<AgentRecord, AgentChangeError> {
        let id = txn
            .get(NAMES, name.as_bytes())
            .map_err(RegistryError::from)?
            .ok_or_else(|| AgentChangeError::NotFound(name.to_owned()))?;
        read(txn, AGENTS, &id)?.ok_or_else(|| AgentChangeError::NotFound(name.to_owned()))
    }

    /// Decommissions `name`: revokes it and forgets it, in one change (its name may enroll
    /// again with a new token and a new key). Returns what it was and the certificates to
    /// refuse.
    pub fn delete(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<(AgentRecord, Vec<[u8; 32]>), AgentChangeError> {
        transact(self.backend.as_ref(), |txn| {
            let mut record = self.by_name_in(txn, name)?;
            let fingerprints = revoke_in(txn, &mut record, now_ms);
            for fingerprint in &fingerprints {
                txn.delete(CERTS, &fingerprint[..]);
            }
            txn.delete(AGENTS, record.id.as_bytes());
            txn.delete(NAMES, record.name.as_bytes());
            Ok((record, fingerprints))
        })
    }

    /// Sets and removes labels of `name` (`set` wins over an existing value; `remove` names keys).
    pub fn relabel(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<AgentRecord, AgentChangeError> {
        transact(self.backend.as_ref(), |txn| {
            let mut record = self.by_name_in(txn, name)?;
            if record.revoked_ms.is_some() {
                return Err(AgentChangeError::Revoked(name.to_owned()));
            }
            for key in remove {
                record.labels.remove(key);
            }
            record.labels.extend(set.clone());
            tern_proto::labels::validate(&record.labels)?;
            txn.put(AGENTS, record.id.as_bytes(), encode(&record));
            Ok(record)
        })
    }

    /// Records a renewed certificate of agent `id`: the new one and the one it replaces are
    /// accepted (until the old one expires), the one before is forgotten.
    pub fn renew(
        &self,
        id: &str,
        cert_sha256: [u8; 32],
        key_sha256: [u8; 32],
        expires_ms: u64,
    ) -> Result<AgentRecord, AgentChangeError> {
        transact(self.backend.as_ref(), |txn| {
            let mut record: AgentRecord = read(txn, AGENTS, id.as_bytes())?
                .ok_or_else(|| AgentChangeError::NotFound(id.to_owned()))?;
            if record.revoked_ms.is_some() {
                return Err(AgentChangeError::Revoked(record.name));
            }
            if let Some(stale) = record
                .previous_cert_sha256
                .as_ref()
                .and_then(|h| hex::decode(h).ok())
            {
                txn.delete(CERTS, stale);
            }
            record.previous_cert_sha256 = Some(std::mem::replace(
                &mut record.cert_sha256,
                hex::encode(cert_sha256),
            ));
            record.cert_expires_ms = Some(expires_ms);
            record.key_sha256 = Some(hex::encode(key_sha256));
            txn.put(CERTS, &cert_sha256[..], id.as_bytes().to_vec());
            txn.put(AGENTS, id.as_bytes(), encode(&record));
            Ok(record)
        })
    }

    /// Tokens not redeemed yet (expired ones too, until they are pruned), oldest first.
    pub fn unredeemed_tokens(&self) -> Result<Vec<TokenRecord>, RegistryError> {
        let mut all: Vec<TokenRecord> = self
            .tokens()?
            .into_iter()
            .filter(|t| t.used_by.is_none())
            .collect();
        all.sort_by_key(|t| t.created_ms);
        Ok(all)
    }

    /// Withdraws an unredeemed token: it can no longer enroll anyone.
    pub fn withdraw_token(&self, id: &str) -> Result<TokenRecord, TokenWithdrawError> {
        transact(self.backend.as_ref(), |txn| {
            // Only if nobody redeems it in between: the read is the commit's condition.
            let record: TokenRecord = read(txn, TOKENS, id.as_bytes())?
                .ok_or_else(|| TokenWithdrawError::NotFound(id.to_owned()))?;
            if let Some(agent) = record.used_by.clone() {
                return Err(TokenWithdrawError::Used {
                    id: id.to_owned(),
                    agent,
                });
            }
            txn.delete(TOKENS, id.as_bytes());
            Ok(record)
        })
    }

    /// The agent a certificate was issued to.
    pub fn agent_by_cert(
        &self,
        cert_sha256: &[u8; 32],
    ) -> Result<Option<AgentRecord>, RegistryError> {
        match self.backend.get(CERTS, cert_sha256)? {
            Some(id) => self.agent(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRecord>, RegistryError> {
        self.get(AGENTS, id.as_bytes())
    }

    pub fn agent_by_name(&self, name: &str) -> Result<Option<AgentRecord>, RegistryError> {
        match self.backend.get(NAMES, name.as_bytes())? {
            Some(id) => self.agent(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Every agent, ordered by name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, RegistryError> {
        let mut all: Vec<AgentRecord> = self
            .backend
            .range(AGENTS, &KeyRange::all(), Scan::All)?
            .iter()
            .map(|(k, v)| decode::<AgentRecord, RegistryError>(k, v))
            .collect::<Result<_, _>>()?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Changes one agent's record in place (read-modify-write, run again on conflict). Not
    /// flushed at once: what changes here (presence, capacity, version) is written again on
    /// the next connect or persist, and everything else flushes it soon.
    pub fn update_agent(
        &self,
        id: &str,
        change: impl Fn(&mut AgentRecord),
    ) -> Result<Option<AgentRecord>, RegistryError> {
        transact(self.backend.as_ref(), |txn| {
            let Some(mut record) = read::<AgentRecord>(txn, AGENTS, id.as_bytes())? else {
                return Ok(None);
            };
            let before = record.clone();
            change(&mut record);
            // A change that changed nothing writes nothing.
            if record != before {
                txn.put(AGENTS, id.as_bytes(), encode(&record));
                txn.lazily();
            }
            Ok(Some(record))
        })
    }

    /// Changes many agents' records (`each`: id and what to apply) in transactions of a few
    /// hundred, read in one query each; not flushed at once, as [`Registry::update_agent`].
    /// Agents without a record, or with one that cannot be read, are skipped.
    pub fn update_agents<T>(
        &self,
        each: &[(String, T)],
        change: impl Fn(&mut AgentRecord, &T),
    ) -> Result<(), RegistryError> {
        const CHUNK: usize = 256;
        for chunk in each.chunks(CHUNK) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|(id, _)| id.as_bytes().to_vec()).collect();
            transact(self.backend.as_ref(), |txn| {
                for ((key, value), (_, input)) in
                    keys.iter().zip(txn.get_many(AGENTS, &keys)?).zip(chunk)
                {
                    let Some(value) = value else {
                        continue;
                    };
                    // One agent's bad record does not hold up the others.
                    let mut record = match decode::<AgentRecord, RegistryError>(key, &value) {
                        Ok(record) => record,
                        Err(e) => {
                            tracing::warn!(error = %e, "agent record skipped");
                            continue;
                        }
                    };
                    change(&mut record, input);
                    txn.put(AGENTS, key.clone(), encode(&record));
                }
                txn.lazily();
                Ok::<_, RegistryError>(())
            })?;
        }
        Ok(())
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.backend.flush()?;
        Ok(())
    }
}

/// The certificates a commit revoked, from the backend's change notifications: how the QUIC
/// endpoint learns of revocations that another task made.
pub fn revoked_by(changes: &[Change]) -> Vec<[u8; 32]> {
    changes
        .iter()
        .filter(|c| c.table == REVOKED_CERTS && c.value.is_some())
        .filter_map(|c| <[u8; 32]>::try_from(c.key.as_slice()).ok())
        .collect()
}

/// The agents (by id) whose certificates a commit revoked: every replica closes their
/// sessions, whichever revoked them.
pub fn revoked_agents(changes: &[Change]) -> std::collections::BTreeSet<String> {
    changes
        .iter()
        .filter(|c| c.table == REVOKED_CERTS)
        .filter_map(|c| String::from_utf8(c.value.as_ref()?.clone()).ok())
        .collect()
}

/// The agent records a commit wrote, by agent id (`None`: deleted, or unreadable).
pub fn written(changes: &[Change]) -> impl Iterator<Item = (String, Option<AgentRecord>)> + '_ {
    changes.iter().filter(|c| c.table == AGENTS).map(|c| {
        let record =
            (c.value.as_deref()).and_then(|v| decode::<AgentRecord, RegistryError>(&c.key, v).ok());
        (String::from_utf8_lossy(&c.key).into_owned(), record)
    })
}

/// The connected agents (id, replica holding the connection) whose records a commit wrote:
/// one live session per agent across replicas, the newest connection's.
pub fn holders(changes: &[Change]) -> Vec<(String, String)> {
    changes
        .iter()
        .filter(|c| c.table == AGENTS)
        .filter_map(|c| decode::<AgentRecord, RegistryError>(&c.key, c.value.as_deref()?).ok())
        .filter(|a| a.status == AgentStatus::Ready)
        .filter_map(|a| Some((a.id, a.replica?)))
        .collect()
}

/// Refuses `record`'s certificates and key from now on (tables that outlive the record) and
/// marks it revoked; returns the certificates. The caller writes or deletes the record.
fn revoke_in(txn: &mut Transaction<'_>, record: &mut AgentRecord, now_ms: u64) -> Vec<[u8; 32]> {
    let fingerprints = record.cert_fingerprints();
    for fingerprint in &fingerprints {
        txn.put(
            REVOKED_CERTS,
            &fingerprint[..],
            record.id.as_bytes().to_vec(),
        );
    }
    if let Some(key) = record.key_sha256.as_ref().and_then(|k| hex::decode(k).ok()) {
        txn.put(REVOKED_KEYS, key, record.id.as_bytes().to_vec());
    }
    record.revoked_ms.get_or_insert(now_ms);
    fingerprints
}

/// Whether `token` may redeem `record` at `now_ms`.
fn check(record: &TokenRecord, token: &EnrollmentToken, now_ms: u64) -> Result<(), RedeemError> {
    if record.secret_sha256 != hex::encode(token.secret_sha256()) {
        return Err(RedeemError::UnknownToken);
    }
    if record.used_by.is_some() {
        return Err(RedeemError::Used);
    }
    if now_ms >= record.expires_ms {
        return Err(RedeemError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(std::sync::Arc::new(crate::backend::MemoryBackend::new()))
    }

    fn new_agent(id: &str, name: &str) -> NewAgent {
        NewAgent {
            id: id.into(),
            name: name.into(),
            labels: tern_proto::labels::parse("site=a,tier=x").expect("labels"),
            cert_sha256: tern_proto::sha256(id.as_bytes()),
            cert_expires_ms: 1_000_000,
            key_sha256: tern_proto::sha256(format!("key of {id}").as_bytes()),
            address: None,
        }
    }

    #[test]
    fn token_is_redeemed_once_and_its_labels_win() {
        let reg = registry();
        let labels = tern_proto::labels::parse("site=b").expect("labels");
        let (token, _) = reg
            .create_token(labels, 60_000, [7; 32], 1_000)
            .expect("token");

        let agent = reg
            .redeem(&token, new_agent("id1", "edge-1"), 2_000)
            .expect("redeemed");
        assert_eq!(agent.labels.get("site").map(String::as_str), Some("b"));
        assert_eq!(agent.labels.get("tier").map(String::as_str), Some("x"));
        assert!(matches!(
            reg.redeem(&token, new_agent("id2", "edge-2"), 2_000),
            Err(RedeemError::Used)
        ));
        assert!(reg.agent_by_name("edge-2").expect("lookup").is_none());
        let by_cert = reg
            .agent_by_cert(&tern_proto::sha256(b"id1"))
            .expect("lookup");
        assert_eq!(by_cert.map(|a| a.name), Some("edge-1".to_owned()));
    }

    #[test]
    fn refuses_expired_forged_and_duplicate_name() {
        let reg = registry();
        let (token, _) = reg
            .create_token(BTreeMap::new(), 10, [7; 32], 1_000)
            .expect("token");
        assert!(matches!(
            reg.redeem(&token, new_agent("i", "n"), 1_010),
            Err(RedeemError::Expired)
        ));

        let mut forged = token.clone();
        forged.secret[0] ^= 1;
        assert!(matches!(
            reg.redeem(&forged, new_agent("i", "n"), 1_000),
            Err(RedeemError::UnknownToken)
        ));

        let (t1, _) = reg
            .create_token(BTreeMap::new(), 1_000, [7; 32], 1_000)
            .expect("token");
        let (t2, _) = reg
            .create_token(BTreeMap::new(), 1_000, [7; 32], 1_000)
            .expect("token");
        reg.redeem(&t1, new_agent("i1", "same"), 1_000)
            .expect("first");
        assert!(matches!(
            reg.redeem(&t2, new_agent("i2", "same"), 1_000),
            Err(RedeemError::NameTaken(_))
        ));
        // The refused redemption did not consume the token.
        reg.redeem(&t2, new_agent("i2", "other"), 1_000)
            .expect("token still usable");
    }

    #[test]
    fn prunes_only_tokens_spent_more_than_a_day_ago() {
        let reg = registry();
        let day = 24 * 3600 * 1000;
        let (used, _) = reg
            .create_token(BTreeMap::new(), day, [7; 32], 0)
            .expect("token");
        reg.redeem(&used, new_agent("i", "n"), 1).expect("redeemed");
        let (_expired, _) = reg
            .create_token(BTreeMap::new(), 10, [7; 32], 0)
            .expect("token");
        let (fresh, _) = reg
            .create_token(BTreeMap::new(), 10 * day, [7; 32], 0)
            .expect("token");
        assert_eq!(reg.prune_tokens(1000).expect("prune"), 0);
        assert_eq!(reg.prune_tokens(2 * day).expect("prune"), 2);
        reg.check_token(&fresh, 2 * day).expect("fresh token kept");
        assert!(matches!(
            reg.check_token(&used, 2 * day),
            Err(RedeemError::UnknownToken)
        ));
    }

    #[test]
    fn what_was_flushed_survives_a_crash() {
        let backend = std::sync::Arc::new(crate::backend::lossy::LossyBackend::new());
        let reg = Registry::new(backend.clone());
        let (token, _) = reg
            .create_token(BTreeMap::new(), 1_000, [7; 32], 0)
            .expect("token");
        reg.redeem(&token, new_agent("id1", "edge-1"), 1)
            .expect("redeemed");
        reg.update_agent("id1", |a| a.version = "9.9.9".into())
            .expect("update");
        reg.flush().expect("flush");
        backend.crash();
        let reg = Registry::new(backend);
        let agents = reg.agents().expect("list");
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].version, "9.9.9");
    }

    #[test]
    fn subscribers_learn_of_revocations_from_the_changes() {
        let backend: SharedBackend = std::sync::Arc::new(crate::backend::MemoryBackend::new());
        let reg = Registry::new(backend.clone());
        let (token, _) = reg
            .create_token(BTreeMap::new(), 60_000, [7; 32], 0)
            .expect("token");
        reg.redeem(&token, new_agent("id1", "edge-1"), 1)
            .expect("redeemed");
        let mut changes = backend.subscribe();
        reg.relabel(
            "edge-1",
            &tern_proto::labels::parse("a=b").expect("labels"),
            &[],
        )
        .expect("relabel");
        reg.revoke("edge-1", 5).expect("revoke");
        let committed = |notice| match notice {
            Ok(crate::backend::Notice::Committed(changes)) => changes,
            other => panic!("{other:?}"),
        };
        let relabelled = committed(changes.try_recv());
        assert!(revoked_by(&relabelled).is_empty());
        let revoked = committed(changes.try_recv());
        assert_eq!(revoked_by(&revoked), [tern_proto::sha256(b"id1")]);
    }

    #[test]
    fn revocation_and_deletion_outlive_the_record() {
        let reg = registry();
        let (token, _) = reg
            .create_token(BTreeMap::new(), 60_000, [7; 32], 0)
            .expect("token");
        reg.redeem(&token, new_agent("id1", "edge-1"), 1)
            .expect("redeemed");
        let (record, revoked) = reg.revoke("edge-1", 5).expect("revoke");
        assert_eq!(record.revoked_ms, Some(5));
        assert_eq!(revoked, [tern_proto::sha256(b"id1")]);
        assert!(matches!(
            reg.relabel("edge-1", &BTreeMap::new(), &[]),
            Err(AgentChangeError::Revoked(_))
        ));
        reg.delete("edge-1", 6).expect("delete");
        assert!(reg.agent_by_name("edge-1").expect("lookup").is_none());
        assert!(
            reg.agent_by_cert(&tern_proto::sha256(b"id1"))
                .expect("lookup")
                .is_none()
        );
        assert_eq!(
            reg.revoked_certificates().expect("revoked"),
            [tern_proto::sha256(b"id1")],
            "still refused after the record is gone"
        );
        // The name enrolls again with a new token, but never with the old key.
        let (again, _) = reg
            .create_token(BTreeMap::new(), 60_000, [7; 32], 0)
            .expect("token");
        let mut same_key = new_agent("id2", "edge-1");
        same_key.key_sha256 = tern_proto::sha256(b"key of id1");
        assert!(matches!(
            reg.redeem(&again, same_key, 7),
            Err(RedeemError::RevokedKey)
        ));
        reg.redeem(&again, new_agent("id2", "edge-1"), 7)
            .expect("a new key enrolls the name again");
    }

    #[test]
    fn an_expired_agent_enrolls_again_under_its_own_id() {
        let reg = registry();
        let (first, _) = reg
            .create_token(BTreeMap::new(), 60_000, [7; 32], 0)
            .expect("token");
        reg.redeem(&first, new_agent("id1", "edge-1"), 1)
            .expect("redeemed");
        let (second, _) = reg
            .create_token(BTreeMap::new(), 10_000_000, [7; 32], 0)
            .expect("token");
        let before_expiry = reg
            .enrollment_id("edge-1", "fresh".into(), 999_999)
            .expect("id");
        assert_eq!(before_expiry, "fresh");
        assert!(matches!(
            reg.redeem(&second, new_agent("id1", "edge-1"), 999_999),
            Err(RedeemError::NameTaken(_))
        ));
        let after_expiry = reg
            .enrollment_id("edge-1", "fresh".into(), 1_000_000)
            .expect("id");
        assert_eq!(after_expiry, "id1");
        let mut renewed = new_agent("id1", "edge-1");
        renewed.cert_sha256 = [9; 32];
        let record = reg
            .redeem(&second, renewed, 1_000_000)
            .expect("re-enrolled");
        assert_eq!((record.id.as_str(), record.first_seen_ms), ("id1", 1));
        assert!(reg.agent_by_cert(&[9; 32]).expect("lookup").is_some());
        assert!(
            reg.agent_by_cert(&tern_proto::sha256(b"id1"))
                .expect("lookup")
                .is_none(),
            "the expired certificate is forgotten"
        );
    }

    #[test]
    fn tokens_are_listed_until_redeemed_and_can_be_withdrawn() {
        let reg = registry();
        let (used, _) = reg
            .create_token(BTreeMap::new(), 60_000, [7; 32], 0)
            .expect("token");
        let (open, record) = reg
            .create_token(BTreeMap::new(), 60_000, [7; 32], 1)
            .expect("token");
        reg.redeem(&used, new_agent("id1", "edge-1"), 2)
            .expect("redeemed");
        let listed: Vec<String> = reg
            .unredeemed_tokens()
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(listed, std::slice::from_ref(&record.id));
        assert!(matches!(
            reg.withdraw_token(&used.id_hex()),
            Err(TokenWithdrawError::Used { .. })
        ));
        reg.withdraw_token(&record.id).expect("withdrawn");
        assert!(matches!(
            reg.redeem(&open, new_agent("id2", "edge-2"), 3),
            Err(RedeemError::UnknownToken)
        ));
        assert!(reg.unredeemed_tokens().expect("list").is_empty());
    }
}
