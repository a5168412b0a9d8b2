//! Where drift baselines and alerts are kept, in the control plane's backend.
//!
//! A baseline version, once stored, never changes (pipelines name it). Alerts are
//! [`AlertRecord`]s keyed by (pipeline, scope, feature); a judgement's changes are written in
//! one batch.

use serde::{Deserialize, Serialize};
use tern_proto::api::BaselineView;
use tern_proto::drift::Baseline;
use tern_proto::manifest::{BaselineRef, MonitoringSpec};

use crate::backend::{BackendError, CommitError, KeyRange, Scan, SharedBackend, Table, Write};
use crate::records::{CorruptRecord, decode, encode, versioned_key, versions_prefix};

/// `name\0version` → [`StoredBaseline`].
const BASELINES: Table = Table("baselines");
/// [`AlertKey`] → [`AlertRecord`].
const ALERTS: Table = Table("alerts");

/// Why the drift store failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum DriftStoreError {
    #[error("drift storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    #[error("invalid baseline: {0}")]
    Baseline(#[from] tern_proto::drift::BaselineError),
    #[error("a baseline name is 1-63 characters of a-z, 0-9, `-`, `.`, `_`")]
    InvalidName,
    #[error("baseline {name}:{version} was created at the same time; try again")]
    Raced { name: String, version: u64 },
}

/// A change to the alerts, as a judgement decides it.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    Put(AlertRecord),
    Remove(AlertKey),
}

/// A baseline as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredBaseline {
    baseline: Baseline,
    created_ms: u64,
    source: String,
}

/// Whether an alert is firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    /// As the API and the CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// A drift alert as stored: one feature of one pipeline, on one agent or fleet-wide. (Records
/// written before the state was typed hold the same JSON.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub pipeline: String,
    pub revision: u64,
    /// `fleet`, or the agent's name.
    pub scope: String,
    pub feature: String,
    /// The latest PSI, and the threshold it is judged against.
    pub psi: f64,
    pub threshold: f64,
    pub state: AlertState,
    pub since_ms: u64,
    pub updated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
}

impl AlertRecord {
    pub fn key(&self) -> AlertKey {
        AlertKey::new(&self.pipeline, &self.scope, &self.feature)
    }

    /// The alert resolved at `now_ms`, with the reading that resolved it if there was one.
    pub fn resolve(mut self, psi: Option<f64>, now_ms: u64) -> Self {
        if let Some(psi) = psi {
            self.psi = psi;
        }
        self.state = AlertState::Resolved;
        self.updated_ms = now_ms;
        self.resolved_ms = Some(now_ms);
        self
    }
}

/// `pipeline\0scope\0feature`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlertKey(Vec<u8>);

impl AlertKey {
    pub fn new(pipeline: &str, scope: &str, feature: &str) -> Self {
        Self([pipeline, scope, feature].join("\0").into_bytes())
    }
}

/// Baselines and alerts, in the control plane's backend.
#[derive(Debug, Clone)]
pub struct DriftStore {
    backend: SharedBackend,
}

impl DriftStore {
    pub fn new(backend: SharedBackend) -> Self {
        Self { backend }
    }

    pub fn baseline(&self, name: &str, version: u64) -> Result<Option<Baseline>, DriftStoreError> {
        let key = versioned_key(name, version);
        match self.backend.get(BASELINES, &key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(
                decode::<StoredBaseline, DriftStoreError>(&key, &bytes)?.baseline,
            )),
        }
    }

    /// Stores `baseline` as the next version of `name` (created only if that version is
    /// still free: a stored version never changes).
    pub fn add_baseline(
        &self,
        name: &str,
        baseline: Baseline,
        source: String,
        now_ms: u64,
    ) -> Result<BaselineView, DriftStoreError> {
        if !tern_proto::labels::valid_name(name) {
            return Err(DriftStoreError::InvalidName);
        }
        baseline.validate()?;
        let prefix = versions_prefix(name);
        let last =
            self.backend
                .range(BASELINES, &KeyRange::prefix(prefix.clone()), Scan::Last(1))?;
        let version = match last.first() {
            Some((key, _)) => {
                let bytes: [u8; 8] = key[prefix.len()..].try_into().unwrap_or([0; 8]);
                u64::from_be_bytes(bytes) + 1
            }
            None => 1,
        };
        let stored = StoredBaseline {
            baseline,
            created_ms: now_ms,
            source,
        };
        let key = versioned_key(name, version);
        let write =
            Write::new()
                .only_if(BASELINES, key.clone(), None)
                .put(BASELINES, key, encode(&stored));
        match self.backend.commit(write) {
            Ok(()) => Ok(view(name, version, stored, true)),
            Err(CommitError::Conflict) => Err(DriftStoreError::Raced {
                name: name.to_owned(),
                version,
            }),
            Err(CommitError::Backend(e)) => Err(e.into()),
        }
    }

    /// Every stored baseline, by name then version.
    pub fn baselines(&self) -> Result<Vec<BaselineView>, DriftStoreError> {
        let mut out = Vec::new();
        for (key, bytes) in self.backend.range(BASELINES, &KeyRange::all(), Scan::All)? {
            let Some(split) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let name = String::from_utf8_lossy(&key[..split]).into_owned();
            let version = key[split + 1..]
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let stored: StoredBaseline = decode::<_, DriftStoreError>(&key, &bytes)?;
            out.push(view(&name, version, stored, false));
        }
        Ok(out)
    }

    /// Every alert: firing first, then by pipeline, scope and feature.
    pub fn alerts(&self) -> Result<Vec<AlertRecord>, DriftStoreError> {
        let mut out = Vec::new();
        for (key, bytes) in self.backend.range(ALERTS, &KeyRange::all(), Scan::All)? {
            out.push(decode::<AlertRecord, DriftStoreError>(&key, &bytes)?);
        }
        out.sort_by_key(|a| a.state != AlertState::Firing);
        Ok(out)
    }

    /// Writes a judgement's changes in one atomic write, durably.
    pub fn apply(&self, changes: &[AlertChange]) -> Result<(), DriftStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let write = changes
            .iter()
            .fold(Write::new(), |write, change| match change {
                AlertChange::Put(alert) => write.put(ALERTS, alert.key().0, encode(alert)),
                AlertChange::Remove(key) => write.delete(ALERTS, key.0.clone()),
            });
        self.backend
            .commit(write)
            .map_err(CommitError::into_backend)?;
        Ok(())
    }
}

fn view(name: &str, version: u64, stored: StoredBaseline, with_baseline: bool) -> BaselineView {
    BaselineView {
        name: name.to_owned(),
        version,
        features: stored.baseline.features.len(),
        created_ms: stored.created_ms,
        source: stored.source,
        baseline: with_baseline.then_some(stored.baseline),
    }
}

/// Whether a stored baseline `monitoring` names exists (checked when a pipeline is applied).
pub fn check_reference(drift: &DriftStore, monitoring: &MonitoringSpec) -> Result<(), String> {
    match monitoring.baseline.as_deref().and_then(BaselineRef::parse) {
        Some(BaselineRef::Stored { name, version }) => match drift.baseline(&name, version) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "baseline `{name}:{version}` does not exist (create it with `ternctl baseline create`)"
            )),
            Err(e) => Err(e.to_string()),
        },
        Some(BaselineRef::File(_)) => Err(
            "a local file cannot be read here; send the baseline as `baselineData` (ternctl does)"
                .into(),
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_written_before_the_state_was_typed_still_read() {
        let old = tern_proto::api::AlertView {
            pipeline: "p".into(),
            revision: 2,
            scope: "fleet".into(),
            feature: "f".into(),
            psi: 0.4,
            threshold: 0.2,
            state: "firing".into(),
            since_ms: 1,
            updated_ms: 2,
            resolved_ms: None,
        };
        let json = serde_json::to_vec(&old).expect("encode");
        let record: AlertRecord = serde_json::from_slice(&json).expect("decode");
        assert_eq!(record.state, AlertState::Firing);
        assert_eq!(
            serde_json::to_vec(&record).expect("encode"),
            json,
            "same JSON"
        );
    }

    #[test]
    fn a_judgement_is_applied_in_one_batch_and_read_back_firing_first() {
        let store = DriftStore::new(std::sync::Arc::new(crate::backend::MemoryBackend::new()));
        let alert = |scope: &str, state| AlertRecord {
            pipeline: "p".into(),
            revision: 1,
            scope: scope.into(),
            feature: "f".into(),
            psi: 0.5,
            threshold: 0.2,
            state,
            since_ms: 0,
            updated_ms: 0,
            resolved_ms: None,
        };
        let (a, b) = (
            alert("a", AlertState::Resolved),
            alert("b", AlertState::Firing),
        );
        store
            .apply(&[AlertChange::Put(a.clone()), AlertChange::Put(b.clone())])
            .expect("apply");
        assert_eq!(store.alerts().expect("read"), [b.clone(), a.clone()]);
        store.apply(&[AlertChange::Remove(b.key())]).expect("apply");
        assert_eq!(store.alerts().expect("read"), [a]);
    }
}
