//! What each agent was last given ([`AgentDesired`]) and where it is kept ([`DesiredStore`]).
//!
//! Table `desired` (agent id → [`AgentDesired`], JSON) keeps the generation and what it held,
//! so generations only ever grow, across restarts too. It also says what the agent may ask of
//! the control plane: the artifacts of its current and previous generation, and health and
//! telemetry only for the pipeline revisions it was given.
//!
//! Table `outbox` (agent id → [`SignedDesiredState`], postcard) is the same generation as
//! built and signed, written in the same transaction: the outbox every session, on any
//! replica, sends from. Only the work lease's holder builds and signs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tern_proto::manifest::VariantSpec;
use tern_proto::message::SignedDesiredState;
use tern_proto::release::Digest;

use crate::backend::{BackendError, KeyRange, Scan, SharedBackend, Table, Write, transact};
use crate::records::{CorruptRecord, decode, encode};

const DESIRED: Table = Table("desired");
const OUTBOX: Table = Table("outbox");

/// The signed desired states `changes` put in the outbox, by agent id (`Err`: the record
/// cannot be read; the caller reads it again, which says why).
pub fn sent(
    changes: &[crate::backend::Change],
) -> impl Iterator<Item = (String, SignedReadable)> + '_ {
    changes
        .iter()
        .filter(|c| c.table == OUTBOX)
        .filter_map(|c| {
            let value = c.value.as_deref()?;
            Some((
                String::from_utf8(c.key.clone()).ok()?,
                open_signed(&c.key, value),
            ))
        })
}

fn open_signed(key: &[u8], value: &[u8]) -> Result<SignedDesiredState, DesiredStoreError> {
    postcard::from_bytes(value).map_err(|source| DesiredStoreError::CorruptSigned {
        agent: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// Agents whose states one transaction of [`DesiredStore::put_many`] records.
pub const PUT_BATCH: usize = 256;

/// Why the desired-state store failed.
#[derive(Debug, thiserror::Error)]
pub enum DesiredStoreError {
    #[error("desired-state storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error("desired-state {0}")]
    Corrupt(#[from] CorruptRecord),
    #[error("the signed desired state of agent {agent} is corrupt: {source}")]
    CorruptSigned {
        agent: String,
        source: postcard::Error,
    },
}

/// What an agent was last given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentDesired {
    pub generation: u64,
    /// Pipeline → (revision, committed).
    pub pipelines: BTreeMap<String, (u64, bool)>,
    /// Version of the trust root it carries.
    pub trust_version: Option<u64>,
    /// Pipeline → the A/B variants its deployment gives (absent: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Vec<VariantSpec>>,
    /// [`tern_proto::desired::DesiredState::content_digest`] of the generation as built and
    /// sent (absent in records of older versions): one generation, one content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Digest>,
    /// The artifacts this generation names, and those the one before it named: the only ones
    /// the agent may fetch.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub artifacts: BTreeSet<Digest>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub previous_artifacts: BTreeSet<Digest>,
    /// Pipeline → the revisions this agent was ever given (the latest
    /// [`GIVEN_REVISIONS`]): the only ones it may report health and telemetry for, also
    /// late, after weeks offline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub given: BTreeMap<String, BTreeSet<u64>>,
}

/// Revisions per pipeline remembered in [`AgentDesired::given`].
pub const GIVEN_REVISIONS: usize = 16;
/// Pipelines remembered in [`AgentDesired::given`]; past that, those the agent no longer runs
/// are forgotten first.
pub const GIVEN_PIPELINES: usize = 256;

impl AgentDesired {
    /// The generation after `previous` (the first when there is none), giving `pipelines`.
    pub fn successor(
        previous: Option<&AgentDesired>,
        pipelines: BTreeMap<String, (u64, bool)>,
        trust_version: Option<u64>,
        variants: BTreeMap<String, Vec<VariantSpec>>,
    ) -> Self {
        let mut given = previous.map(|p| p.given.clone()).unwrap_or_default();
        for (name, &(revision, _)) in &pipelines {
            let revisions = given.entry(name.clone()).or_default();
            revisions.insert(revision);
            while revisions.len() > GIVEN_REVISIONS {
                revisions.pop_first();
            }
        }
        while given.len() > GIVEN_PIPELINES {
            let Some(stale) = given.keys().find(|n| !pipelines.contains_key(*n)).cloned() else {
                break;
            };
            given.remove(&stale);
        }
        Self {
            generation: previous.map_or(0, |p| p.generation) + 1,
            pipelines,
            trust_version,
            variants,
            content: None,
            artifacts: BTreeSet::new(),
            previous_artifacts: previous.map(|p| p.artifacts.clone()).unwrap_or_default(),
            given,
        }
    }

    /// Whether it gives the same as `pipelines`, `trust_version` and `variants` would.
    pub fn gives(
        &self,
        pipelines: &BTreeMap<String, (u64, bool)>,
        trust_version: Option<u64>,
        variants: &BTreeMap<String, Vec<VariantSpec>>,
    ) -> bool {
        self.pipelines == *pipelines
            && self.trust_version == trust_version
            && self.variants == *variants
    }

    /// Whether the agent may fetch `digest`: it is named in its current or previous generation.
    pub fn may_fetch(&self, digest: &Digest) -> bool {
        self.artifacts.contains(digest) || self.previous_artifacts.contains(digest)
    }

    /// Whether the agent may report on `pipeline`'s `revision`: it was given that revision.
    pub fn may_report(&self, pipeline: &str, revision: u64) -> bool {
        self.given
            .get(pipeline)
            .is_some_and(|revisions| revisions.contains(&revision))
    }
}

/// Agent id → what it was last given, in the control plane's backend.
#[derive(Debug, Clone)]
pub struct DesiredStore {
    backend: SharedBackend,
}

impl DesiredStore {
    pub fn new(backend: SharedBackend) -> Self {
        Self { backend }
    }

    /// What `agent_id` was last given.
    pub fn get(&self, agent_id: &str) -> Result<Option<AgentDesired>, DesiredStoreError> {
        self.backend
            .get(DESIRED, agent_id.as_bytes())?
            .map(|v| decode(agent_id.as_bytes(), &v))
            .transpose()
    }

    /// What every agent was last given, by agent id, in one scan (a pass over the fleet
    /// reads them all); a record that cannot be decoded is its agent's error alone.
    pub fn all(&self) -> Result<Vec<(String, Readable)>, DesiredStoreError> {
        Ok(self
            .backend
            .range(DESIRED, &KeyRange::all(), Scan::All)?
            .into_iter()
            .map(|(key, value)| {
                let record = decode(&key, &value);
                (String::from_utf8_lossy(&key).into_owned(), record)
            })
            .collect())
    }

    /// Records what `agent_id` is given now, and the state as signed for sending, durably, if
    /// `record`'s generation is higher than the one stored (none stored counts as 0), checked
    /// and written in one transaction: two writers never give one generation twice, and none
    /// goes back. `false`: the stored generation is as high or higher (another writer got
    /// there first), and nothing was written.
    pub fn put(
        &self,
        agent_id: &str,
        record: &AgentDesired,
        signed: &SignedDesiredState,
    ) -> Result<bool, DesiredStoreError> {
        let frame = postcard::to_allocvec(signed).expect("a signed desired state serializes");
        transact(self.backend.as_ref(), |txn| {
            let stored = txn
                .get(DESIRED, agent_id.as_bytes())?
                .map(|v| decode::<AgentDesired, DesiredStoreError>(agent_id.as_bytes(), &v))
                .transpose()?;
            if stored.map_or(0, |s| s.generation) >= record.generation {
                return Ok(false);
            }
            txn.put(DESIRED, agent_id, encode(record));
            txn.put(OUTBOX, agent_id, frame.clone());
            Ok(true)
        })
    }

    /// [`DesiredStore::put`] for many agents, in transactions of [`PUT_BATCH`] (a pass that
    /// gives a wave its states waits on a few commits, not one per agent); whether each was
    /// written, in order.
    pub fn put_many(
        &self,
        entries: &[(&str, &AgentDesired, &SignedDesiredState)],
    ) -> Result<Vec<bool>, DesiredStoreError> {
        let mut written = Vec::with_capacity(entries.len());
        for batch in entries.chunks(PUT_BATCH) {
            let frames: Vec<Vec<u8>> = (batch.iter())
                .map(|(_, _, signed)| {
                    postcard::to_allocvec(signed).expect("a signed desired state serializes")
                })
                .collect();
            let keys: Vec<Vec<u8>> = batch
                .iter()
                .map(|(a, _, _)| a.as_bytes().to_vec())
                .collect();
            let done = transact(self.backend.as_ref(), |txn| {
                let stored = txn.get_many(DESIRED, &keys)?;
                let mut done = Vec::with_capacity(batch.len());
                for (((agent, record, _), frame), stored) in batch.iter().zip(&frames).zip(stored) {
                    let generation = match stored {
                        Some(v) => {
                            decode::<AgentDesired, DesiredStoreError>(agent.as_bytes(), &v)?
                                .generation
                        }
                        None => 0,
                    };
                    let higher = record.generation > generation;
                    if higher {
                        txn.put(DESIRED, *agent, encode(*record));
                        txn.put(OUTBOX, *agent, frame.clone());
                    }
                    done.push(higher);
                }
                Ok::<_, DesiredStoreError>(done)
            })?;
            written.extend(done);
        }
        Ok(written)
    }

    /// The signed desired state of `agent_id` to send (none: it was never given one, or its
    /// record is from a version without an outbox and the work lease's holder has not
    /// signed it again yet).
    pub fn signed(&self, agent_id: &str) -> Result<Option<SignedDesiredState>, DesiredStoreError> {
        self.backend
            .get(OUTBOX, agent_id.as_bytes())?
            .map(|v| open_signed(agent_id.as_bytes(), &v))
            .transpose()
    }

    /// Every agent's signed desired state in one scan, by agent id; a record that cannot be
    /// read is its agent's error alone.
    pub fn signed_all(&self) -> Result<Vec<(String, SignedReadable)>, DesiredStoreError> {
        Ok((self
            .backend
            .range(OUTBOX, &KeyRange::all(), Scan::All)?
            .into_iter())
        .map(|(key, value)| {
            let signed = open_signed(&key, &value);
            (String::from_utf8_lossy(&key).into_owned(), signed)
        })
        .collect())
    }

    /// Forgets a decommissioned agent's desired state.
    pub fn forget(&self, agent_id: &str) -> Result<(), DesiredStoreError> {
        self.backend
            .commit(
                Write::new()
                    .delete(DESIRED, agent_id)
                    .delete(OUTBOX, agent_id),
            )
            .map_err(crate::backend::CommitError::into_backend)?;
        Ok(())
    }

    /// Keeps only the entries (of a health report or a telemetry batch) about pipeline
    /// revisions `agent_id` was given, so that one agent cannot write into another pipeline's
    /// figures or grow what the control plane keeps; returns how many it dropped. What the
    /// agent was given is read once per `seen` (a session, a telemetry stream) and again only
    /// when an entry names a revision the copy lacks (a desired state given since). When it
    /// cannot be read, nothing is dropped and the error is returned: the caller must not take
    /// the entries (an agent sends a batch again until it is acknowledged).
    pub fn keep_given<T>(
        &self,
        agent_id: &str,
        seen: &mut Seen,
        entries: &mut Vec<T>,
        key: impl Fn(&T) -> (&str, u64),
    ) -> Result<usize, DesiredStoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let allowed = |seen: &Seen, entry: &T| {
            let (pipeline, revision) = key(entry);
            seen.0
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|d| d.may_report(pipeline, revision))
        };
        if seen.0.is_none() || !entries.iter().all(|e| allowed(seen, e)) {
            seen.0 = Some(self.get(agent_id)?);
        }
        let before = entries.len();
        entries.retain(|entry| allowed(seen, entry));
        Ok(before - entries.len())
    }
}

/// One agent's stored desired state, or why it cannot be read.
pub type Readable = Result<AgentDesired, DesiredStoreError>;

/// One agent's signed desired state in the outbox, or why it cannot be read.
pub type SignedReadable = Result<SignedDesiredState, DesiredStoreError>;

/// What an agent was given, as a stream last read it (`None`: not read yet).
#[derive(Debug, Default)]
pub struct Seen(Option<Option<AgentDesired>>);

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the signed form of `record` (the store keeps it as given).
    fn signed(record: &AgentDesired) -> SignedDesiredState {
        SignedDesiredState {
            generation: record.generation,
            body: format!("{:?}", record.pipelines).into_bytes(),
            signature: vec![7; 64],
        }
    }

    fn pipelines(entries: &[(&str, u64)]) -> BTreeMap<String, (u64, bool)> {
        entries
            .iter()
            .map(|&(name, revision)| (name.to_owned(), (revision, false)))
            .collect()
    }

    #[test]
    fn a_stream_reads_what_was_given_once_and_again_for_a_revision_given_since() {
        let store = DesiredStore::new(std::sync::Arc::new(crate::backend::MemoryBackend::new()));
        let first = AgentDesired::successor(None, pipelines(&[("p", 1)]), None, BTreeMap::new());
        assert!(store.put("a", &first, &signed(&first)).expect("put"));
        let mut seen = Seen::default();
        fn key<'e>(entry: &'e (&'static str, u64)) -> (&'e str, u64) {
            (entry.0, entry.1)
        }
        let mut batch = vec![("p", 1), ("p", 2), ("q", 1)];
        assert_eq!(
            store
                .keep_given("a", &mut seen, &mut batch, key)
                .expect("keep"),
            2
        );
        assert_eq!(batch, [("p", 1)]);
        // Revision 2 is given while the stream is open: a batch naming it reads again.
        let second =
            AgentDesired::successor(Some(&first), pipelines(&[("p", 2)]), None, BTreeMap::new());
        assert!(store.put("a", &second, &signed(&second)).expect("put"));
        let mut batch = vec![("p", 1), ("p", 2), ("q", 1)];
        assert_eq!(
            store
                .keep_given("a", &mut seen, &mut batch, key)
                .expect("keep"),
            1
        );
        assert_eq!(batch, [("p", 1), ("p", 2)], "both revisions given");
    }

    #[test]
    fn a_generation_is_written_only_over_the_one_it_succeeds() {
        let store = DesiredStore::new(std::sync::Arc::new(crate::backend::MemoryBackend::new()));
        let first = AgentDesired::successor(None, pipelines(&[("p", 1)]), None, BTreeMap::new());
        assert!(store.put("a", &first, &signed(&first)).expect("put"));
        // A second writer that built generation 1 too, from nothing: refused, nothing written.
        let rival = AgentDesired::successor(None, pipelines(&[("p", 9)]), None, BTreeMap::new());
        assert!(!store.put("a", &rival, &signed(&rival)).expect("put"));
        assert_eq!(store.get("a").expect("get"), Some(first.clone()));
        assert_eq!(
            store.signed("a").expect("get"),
            Some(signed(&first)),
            "the outbox keeps the generation that won"
        );
        let second =
            AgentDesired::successor(Some(&first), pipelines(&[("p", 2)]), None, BTreeMap::new());
        assert!(store.put("a", &second, &signed(&second)).expect("put"));
        assert_eq!(store.get("a").expect("get").map(|d| d.generation), Some(2));
        store.forget("a").expect("forget");
        assert_eq!(store.get("a").expect("get"), None);
        assert_eq!(store.signed("a").expect("get"), None);
    }

    #[test]
    fn many_generations_are_written_together_each_only_over_the_one_it_succeeds() {
        let store = DesiredStore::new(std::sync::Arc::new(crate::backend::MemoryBackend::new()));
        let first = AgentDesired::successor(None, pipelines(&[("p", 1)]), None, BTreeMap::new());
        assert!(store.put("b", &first, &signed(&first)).expect("put"));
        // More agents than one transaction takes, and one (b) whose generation is not new.
        let agents: Vec<String> = (0..PUT_BATCH + 3).map(|i| format!("a{i}")).collect();
        let mut entries: Vec<(&str, &AgentDesired, SignedDesiredState)> = (agents.iter())
            .map(|a| (a.as_str(), &first, signed(&first)))
            .collect();
        entries.insert(1, ("b", &first, signed(&first)));
        let refs: Vec<(&str, &AgentDesired, &SignedDesiredState)> =
            entries.iter().map(|(a, r, s)| (*a, *r, s)).collect();
        let written = store.put_many(&refs).expect("put many");
        assert_eq!(written.len(), PUT_BATCH + 4);
        assert_eq!(written.iter().filter(|w| !**w).count(), 1);
        assert!(!written[1], "b holds generation 1 already");
        let last = agents.last().expect("agents");
        assert_eq!(store.signed(last).expect("get"), Some(signed(&first)));
        assert_eq!(store.get(last).expect("get").map(|d| d.generation), Some(1));
    }

    #[test]
    fn an_agent_may_fetch_its_current_and_previous_artifacts_only() {
        let first = AgentDesired {
            artifacts: [Digest::of(b"v1")].into(),
            ..AgentDesired::successor(None, pipelines(&[("p", 1)]), None, BTreeMap::new())
        };
        let second = AgentDesired {
            artifacts: [Digest::of(b"v2")].into(),
            ..AgentDesired::successor(Some(&first), pipelines(&[("p", 2)]), None, BTreeMap::new())
        };
        assert_eq!(second.generation, 2);
        assert!(second.may_fetch(&Digest::of(b"v2")));
        assert!(second.may_fetch(&Digest::of(b"v1")), "a rollback target");
        let third =
            AgentDesired::successor(Some(&second), pipelines(&[("p", 3)]), None, BTreeMap::new());
        assert!(!third.may_fetch(&Digest::of(b"v1")), "two generations back");
        assert!(!third.may_fetch(&Digest::of(b"other")));
    }

    #[test]
    fn an_agent_may_report_on_revisions_it_was_given_within_bounds() {
        let mut record =
            AgentDesired::successor(None, pipelines(&[("p", 1)]), None, BTreeMap::new());
        for revision in 2..40 {
            record = AgentDesired::successor(
                Some(&record),
                pipelines(&[("p", revision)]),
                None,
                BTreeMap::new(),
            );
        }
        // Gone from the desired state, still reportable (telemetry arrives late).
        record =
            AgentDesired::successor(Some(&record), pipelines(&[("q", 1)]), None, BTreeMap::new());
        assert!(record.may_report("p", 39));
        assert!(record.may_report("q", 1));
        assert!(
            !record.may_report("p", 1),
            "only the latest revisions are kept"
        );
        assert_eq!(record.given["p"].len(), GIVEN_REVISIONS);
        assert!(!record.may_report("other", 1));
        // The pipelines remembered are bounded; the ones it runs are never forgotten.
        let many: Vec<(String, u64)> = (0..GIVEN_PIPELINES + 10)
            .map(|i| (format!("p{i:04}"), 1))
            .collect();
        for (name, revision) in &many {
            record = AgentDesired::successor(
                Some(&record),
                pipelines(&[(name.as_str(), *revision), ("q", 1)]),
                None,
                BTreeMap::new(),
            );
        }
        assert!(record.given.len() <= GIVEN_PIPELINES);
        assert!(record.may_report("q", 1));
        assert!(record.may_report(&many[many.len() - 1].0, 1));
    }
}
