//! The durable registry: enrolled agents and enrollment tokens, in sled.
//!
//! Trees: `agents` (id → record), `agent_names` (name → id), `agent_certs` (certificate SHA-256 →
//! id), `tokens` (token id → record), `revoked_certs` (certificate SHA-256 → agent id) and
//! `revoked_keys` (public key SHA-256 → agent id). Records are JSON so that fields can be added
//! without a migration. Enrollment touches the first four trees in one transaction, so a token is
//! redeemed exactly once and a name is never given twice. Revocation outlives the agent's record:
//! a decommissioned agent's certificates and key stay refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tern_proto::api::AgentStatus;
use tern_proto::{Capacity, EnrollmentToken};

use crate::records::{CorruptRecord, decode, encode};

/// A failure of the storage itself.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry storage failed: {0}")]
    Storage(#[from] sled::Error),
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
    db: sled::Db,
    agents: sled::Tree,
    names: sled::Tree,
    certs: sled::Tree,
    tokens: sled::Tree,
    revoked_certs: sled::Tree,
    revoked_keys: sled::Tree,
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

impl Registry {
    /// Opens (or creates) the registry at `path`.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(16 << 20)
            .open()?;
        Ok(Self {
            agents: db.open_tree("agents")?,
            names: db.open_tree("agent_names")?,
            certs: db.open_tree("agent_certs")?,
            tokens: db.open_tree("tokens")?,
            revoked_certs: db.open_tree("revoked_certs")?,
            revoked_keys: db.open_tree("revoked_keys")?,
            db,
        })
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
        self.tokens.insert(record.id.as_bytes(), encode(&record))?;
        self.tokens.flush()?;
        Ok((token, record))
    }

    /// Checks a token without using it, so that a request with a bad token costs no signing.
    /// [`Self::redeem`] checks again, atomically.
    pub fn check_token(&self, token: &EnrollmentToken, now_ms: u64) -> Result<(), RedeemError> {
        let id = token.id_hex();
        let raw = self
            .tokens
            .get(id.as_bytes())
            .map_err(RegistryError::from)?
            .ok_or(RedeemError::UnknownToken)?;
        let record: TokenRecord = decode::<_, RegistryError>(id.as_bytes(), &raw)?;
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

    /// Deletes tokens that were used or expired more than a day ago (until then, a late attempt
    /// still gets a precise "used" or "expired" answer). Returns how many were deleted.
    pub fn prune_tokens(&self, now_ms: u64) -> Result<usize, RegistryError> {
        const KEEP_MS: u64 = 24 * 3600 * 1000;
        let mut pruned = 0;
        for entry in self.tokens.iter() {
            let (k, v) = entry?;
            let record: TokenRecord = decode::<_, RegistryError>(&k, &v)?;
            let spent =
                record.used_by.is_some() && now_ms.saturating_sub(record.created_ms) > KEEP_MS;
            let stale = now_ms.saturating_sub(record.expires_ms) > KEEP_MS;
            if (spent || stale) && self.tokens.remove(&k)?.is_some() {
                pruned += 1;
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
        let secret_sha256 = hex::encode(token.secret_sha256());
        if self.is_key_revoked(&agent.key_sha256)? {
            return Err(RedeemError::RevokedKey);
        }
        let result = (&self.tokens, &self.agents, &self.names, &self.certs).transaction(
            |(tokens, agents, names, certs)| {
                let abort = ConflictableTransactionError::Abort;
                let raw = tokens
                    .get(token_id.as_bytes())?
                    .ok_or(abort(RedeemError::UnknownToken))?;
                let mut record: TokenRecord = decode(token_id.as_bytes(), &raw)
                    .map_err(|e| abort(RedeemError::Registry(e)))?;
                if record.secret_sha256 != secret_sha256 {
                    return Err(abort(RedeemError::UnknownToken));
                }
                if record.used_by.is_some() {
                    return Err(abort(RedeemError::Used));
                }
                if now_ms >= record.expires_ms {
                    return Err(abort(RedeemError::Expired));
                }
                // A name is given once, unless its agent's certificate expired: then the same
                // agent (same id, same state on the host) enrolls again with a new token.
                let existing: Option<AgentRecord> = match names.get(agent.name.as_bytes())? {
                    Some(id) => agents
                        .get(&id)?
                        .map(|v| decode(&id, &v))
                        .transpose()
                        .map_err(|e| abort(RedeemError::Registry(e)))?,
                    None => None,
                };
                if let Some(old) = &existing
                    && (old.id != agent.id || old.revoked_ms.is_some() || !old.cert_expired(now_ms))
                {
                    return Err(abort(RedeemError::NameTaken(agent.name.clone())));
                }
                let mut labels = existing
                    .as_ref()
                    .map_or_else(|| agent.labels.clone(), |old| old.labels.clone());
                labels.extend(record.labels.clone());
                tern_proto::labels::validate(&labels).map_err(|e| abort(RedeemError::Labels(e)))?;
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
                    cert_sha256: hex::encode(agent.cert_sha256),
                    previous_cert_sha256: None,
                    cert_expires_ms: Some(agent.cert_expires_ms),
                    key_sha256: Some(hex::encode(agent.key_sha256)),
                    revoked_ms: None,
                };
                if let Some(old) = &existing {
                    for fingerprint in old.cert_fingerprints() {
                        certs.remove(&fingerprint[..])?;
                    }
                }
                record.used_by = Some(agent.id.clone());
                tokens.insert(token_id.as_bytes(), encode(&record))?;
                agents.insert(agent.id.as_bytes(), encode(&agent_record))?;
                names.insert(agent.name.as_bytes(), agent.id.as_bytes())?;
                certs.insert(&agent.cert_sha256[..], agent.id.as_bytes())?;
                Ok(agent_record)
            },
        );
        let record = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => RedeemError::Registry(e.into()),
        })?;
        self.db.flush().map_err(RegistryError::from)?;
        Ok(record)
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
        Ok(self.revoked_keys.contains_key(key_sha256)?)
    }

    /// Every certificate revoked so far (the QUIC endpoint refuses them in the handshake).
    pub fn revoked_certificates(&self) -> Result<Vec<[u8; 32]>, RegistryError> {
        let mut all = Vec::new();
        for entry in self.revoked_certs.iter() {
            let (k, _) = entry?;
            if let Ok(fingerprint) = <[u8; 32]>::try_from(k.as_ref()) {
                all.push(fingerprint);
            }
        }
        Ok(all)
    }

    /// Revokes `name`: its certificates and key are refused from now on. Returns the record and
    /// the certificates to refuse; revoking again changes nothing.
    pub fn revoke(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<(AgentRecord, Vec<[u8; 32]>), AgentChangeError> {
        let record = self
            .agent_by_name(name)?
            .ok_or_else(|| AgentChangeError::NotFound(name.to_owned()))?;
        let fingerprints = record.cert_fingerprints();
        let mut batch = sled::Batch::default();
        for fingerprint in &fingerprints {
            batch.insert(&fingerprint[..], record.id.as_bytes());
        }
        self.revoked_certs
            .apply_batch(batch)
            .map_err(RegistryError::from)?;
        if let Some(key) = record.key_sha256.as_ref().and_then(|k| hex::decode(k).ok()) {
            (self.revoked_keys)
                .insert(key, record.id.as_bytes())
                .map_err(RegistryError::from)?;
        }
        let record = self
            .update_agent(&record.id, |a| {
                a.revoked_ms.get_or_insert(now_ms);
            })?
            .ok_or_else(|| AgentChangeError::NotFound(name.to_owned()))?;
        self.db.flush().map_err(RegistryError::from)?;
        Ok((record, fingerprints))
    }

    /// Decommissions `name`: revokes it, then forgets it (its name may enroll again with a new
    /// token and a new key). Returns what it was and the certificates to refuse.
    pub fn delete(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<(AgentRecord, Vec<[u8; 32]>), AgentChangeError> {
        let (record, fingerprints) = self.revoke(name, now_ms)?;
        let result =
            (&self.agents, &self.names, &self.certs).transaction(|(agents, names, certs)| {
                agents.remove(record.id.as_bytes())?;
                if names.get(record.name.as_bytes())?.as_deref() == Some(record.id.as_bytes()) {
                    names.remove(record.name.as_bytes())?;
                }
                for fingerprint in &fingerprints {
                    certs.remove(&fingerprint[..])?;
                }
                Ok::<_, ConflictableTransactionError<RegistryError>>(())
            });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        })?;
        self.db.flush().map_err(RegistryError::from)?;
        Ok((record, fingerprints))
    }

    /// Sets and removes labels of `name` (`set` wins over an existing value; `remove` names keys).
    pub fn relabel(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<AgentRecord, AgentChangeError> {
        let record = self
            .agent_by_name(name)?
            .ok_or_else(|| AgentChangeError::NotFound(name.to_owned()))?;
        if record.revoked_ms.is_some() {
            return Err(AgentChangeError::Revoked(name.to_owned()));
        }
        let mut labels = record.labels.clone();
        for key in remove {
            labels.remove(key);
        }
        labels.extend(set.clone());
        tern_proto::labels::validate(&labels)?;
        let updated = self
            .update_agent(&record.id, |a| a.labels = labels.clone())?
            .ok_or_else(|| AgentChangeError::NotFound(name.to_owned()))?;
        self.agents.flush().map_err(RegistryError::from)?;
        Ok(updated)
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
        let record = self
            .agent(id)?
            .ok_or_else(|| AgentChangeError::NotFound(id.to_owned()))?;
        if record.revoked_ms.is_some() {
            return Err(AgentChangeError::Revoked(record.name));
        }
        let stale = record.previous_cert_sha256.clone();
        let updated = self
            .update_agent(id, |a| {
                a.previous_cert_sha256 = Some(std::mem::replace(
                    &mut a.cert_sha256,
                    hex::encode(cert_sha256),
                ));
                a.cert_expires_ms = Some(expires_ms);
                a.key_sha256 = Some(hex::encode(key_sha256));
            })?
            .ok_or_else(|| AgentChangeError::NotFound(id.to_owned()))?;
        (self.certs)
            .insert(&cert_sha256[..], id.as_bytes())
            .map_err(RegistryError::from)?;
        if let Some(stale) = stale.and_then(|h| hex::decode(h).ok()) {
            self.certs.remove(stale).map_err(RegistryError::from)?;
        }
        self.db.flush().map_err(RegistryError::from)?;
        Ok(updated)
    }

    /// Tokens not redeemed yet (expired ones too, until they are pruned), oldest first.
    pub fn unredeemed_tokens(&self) -> Result<Vec<TokenRecord>, RegistryError> {
        let mut all = Vec::new();
        for entry in self.tokens.iter() {
            let (k, v) = entry?;
            let record: TokenRecord = decode::<_, RegistryError>(&k, &v)?;
            if record.used_by.is_none() {
                all.push(record);
            }
        }
        all.sort_by_key(|t| t.created_ms);
        Ok(all)
    }

    /// Withdraws an unredeemed token: it can no longer enroll anyone.
    pub fn withdraw_token(&self, id: &str) -> Result<TokenRecord, TokenWithdrawError> {
        let raw = self
            .tokens
            .get(id.as_bytes())
            .map_err(RegistryError::from)?
            .ok_or_else(|| TokenWithdrawError::NotFound(id.to_owned()))?;
        let record: TokenRecord = decode::<_, RegistryError>(id.as_bytes(), &raw)?;
        if let Some(agent) = record.used_by.clone() {
            return Err(TokenWithdrawError::Used {
                id: id.to_owned(),
                agent,
            });
        }
        // Only if nobody redeemed it in between.
        let swapped = self
            .tokens
            .compare_and_swap(id.as_bytes(), Some(raw), None::<&[u8]>)
            .map_err(RegistryError::from)?;
        if swapped.is_err() {
            return Err(TokenWithdrawError::NotFound(id.to_owned()));
        }
        self.tokens.flush().map_err(RegistryError::from)?;
        Ok(record)
    }

    /// The agent a certificate was issued to.
    pub fn agent_by_cert(
        &self,
        cert_sha256: &[u8; 32],
    ) -> Result<Option<AgentRecord>, RegistryError> {
        match self.certs.get(cert_sha256)? {
            Some(id) => self.agent(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRecord>, RegistryError> {
        self.agents
            .get(id.as_bytes())?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    pub fn agent_by_name(&self, name: &str) -> Result<Option<AgentRecord>, RegistryError> {
        match self.names.get(name.as_bytes())? {
            Some(id) => self.agent(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Every agent, ordered by name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, RegistryError> {
        let mut all = Vec::new();
        for entry in self.agents.iter() {
            let (k, v) = entry?;
            all.push(decode::<AgentRecord, RegistryError>(&k, &v)?);
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Changes one agent's record in place (read-modify-write, retried on conflict).
    pub fn update_agent(
        &self,
        id: &str,
        change: impl Fn(&mut AgentRecord),
    ) -> Result<Option<AgentRecord>, RegistryError> {
        let mut corrupt = None;
        let updated = self.agents.update_and_fetch(id.as_bytes(), |old| {
            let old = old?;
            match serde_json::from_slice::<AgentRecord>(old) {
                Ok(mut record) => {
                    change(&mut record);
                    Some(encode(&record))
                }
                Err(e) => {
                    corrupt = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        if let Some(source) = corrupt {
            return Err(CorruptRecord {
                key: id.to_owned(),
                source,
            }
            .into());
        }
        updated.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// The database, for stores that keep their own trees in it.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let tmp = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(tmp.path()).expect("open");
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
        let tmp = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(tmp.path()).expect("open");
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
        let tmp = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(tmp.path()).expect("open");
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
    fn survives_reopen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let reg = Registry::open(tmp.path()).expect("open");
            let (token, _) = reg
                .create_token(BTreeMap::new(), 1_000, [7; 32], 0)
                .expect("token");
            reg.redeem(&token, new_agent("id1", "edge-1"), 1)
                .expect("redeemed");
            reg.update_agent("id1", |a| a.version = "9.9.9".into())
                .expect("update");
            reg.flush().expect("flush");
        }
        // sled's flusher thread lets go of the file lock a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let reg = loop {
            match Registry::open(tmp.path()) {
                Ok(reg) => break reg,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        let agents = reg.agents().expect("list");
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].version, "9.9.9");
    }

    #[test]
    fn revocation_and_deletion_outlive_the_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(tmp.path()).expect("open");
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
        let tmp = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(tmp.path()).expect("open");
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
        let tmp = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(tmp.path()).expect("open");
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
