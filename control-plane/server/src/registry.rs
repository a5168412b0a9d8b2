//! The durable registry: enrolled agents and enrollment tokens, in sled.
//!
//! Trees: `agents` (id → record), `agent_names` (name → id), `agent_certs` (certificate SHA-256 →
//! id), `tokens` (token id → record). Records are JSON so that fields can be added without a
//! migration. Enrollment touches all four trees in one transaction, so a token is redeemed exactly
//! once and a name is never given twice.

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
                if names.get(agent.name.as_bytes())?.is_some() {
                    return Err(abort(RedeemError::NameTaken(agent.name.clone())));
                }
                let mut labels = agent.labels.clone();
                labels.extend(record.labels.clone());
                tern_proto::labels::validate(&labels).map_err(|e| abort(RedeemError::Labels(e)))?;
                let agent_record = AgentRecord {
                    id: agent.id.clone(),
                    name: agent.name.clone(),
                    labels,
                    capacity: Capacity::default(),
                    version: String::new(),
                    first_seen_ms: now_ms,
                    last_seen_ms: now_ms,
                    status: AgentStatus::NotReady,
                    address: agent.address.clone(),
                    cert_sha256: hex::encode(agent.cert_sha256),
                };
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
        let reg = Registry::open(tmp.path()).expect("reopen");
        let agents = reg.agents().expect("list");
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].version, "9.9.9");
    }
}
