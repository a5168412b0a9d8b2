//! The agent's durable state (design section 6), in sled under `D/state`, and its artifacts
//! under `D/artifacts`.
//!
//! Trees: `trust` (`root` → signed trust root, JSON), `floors` (release name → version floor,
//! JSON), `meta` (`generation` → the applied desired-state generation, `content` → its
//! content digest, `exits` → the exit ledger, JSON), `active` (pipeline → the serving
//! revision, postcard), `good` (pipeline → the revision it served before, under which the
//! agent never died: what it falls back to when the serving one is put aside). Each is written in one step, so a kill -9 leaves either the
//! old or the new value. Artifacts are written to `partial/<digest>` and renamed into place
//! only after their size and digest matched the release: nothing unverified is ever at
//! `artifacts/<digest>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tern_proto::desired::DesiredPipeline;
use tern_proto::release::{Digest, VersionFloor};
use tern_proto::trust::SignedTrustRoot;

use crate::reconcile::Restored;

/// A failure of the agent's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("agent state storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("agent state record `{key}` is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Handle to the agent's state.
#[derive(Debug, Clone)]
pub struct AgentStore {
    db: sled::Db,
    trust: sled::Tree,
    floors: sled::Tree,
    meta: sled::Tree,
    active: sled::Tree,
    good: sled::Tree,
    artifacts: PathBuf,
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

impl AgentStore {
    /// Opens the state at `state` and the artifact directory `artifacts`.
    pub fn open(state: &Path, artifacts: &Path) -> Result<Self, StoreError> {
        Self::open_with(sled::Config::new().path(state), artifacts)
    }

    /// [`AgentStore::open`] with sled's settings (the path among them) given.
    fn open_with(config: sled::Config, artifacts: &Path) -> Result<Self, StoreError> {
        let partial = artifacts.join("partial");
        std::fs::create_dir_all(&partial).map_err(|source| StoreError::Io {
            path: partial,
            source,
        })?;
        let db = config.cache_capacity(8 << 20).open()?;
        Ok(Self {
            trust: db.open_tree("trust")?,
            floors: db.open_tree("floors")?,
            meta: db.open_tree("meta")?,
            active: db.open_tree("active")?,
            good: db.open_tree("good")?,
            artifacts: artifacts.to_owned(),
            db,
        })
    }

    /// Everything the reconciler starts from.
    pub fn restore(&self) -> Result<Restored, StoreError> {
        let trust = self
            .trust
            .get("root")?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(b"root", e)))
            .transpose()?;
        let mut floors = BTreeMap::new();
        for entry in self.floors.iter() {
            let (k, v) = entry?;
            let floor: VersionFloor = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            floors.insert(String::from_utf8_lossy(&k).into_owned(), floor);
        }
        let applied_generation = self
            .meta
            .get("generation")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let applied_content = self
            .meta
            .get("content")?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok())
            .map(Digest);
        let mut serving = Vec::new();
        for entry in self.active.iter() {
            let (k, v) = entry?;
            serving.push(postcard::from_bytes::<DesiredPipeline>(&v).map_err(|e| corrupt(&k, e))?);
        }
        Ok(Restored {
            trust,
            floors,
            artifacts: self.artifacts()?,
            applied_generation,
            applied_content,
            serving,
            put_aside: BTreeMap::new(),
        })
    }

    /// The digests of the complete artifacts on disk.
    pub fn artifacts(&self) -> Result<BTreeSet<Digest>, StoreError> {
        let entries = std::fs::read_dir(&self.artifacts).map_err(|source| StoreError::Io {
            path: self.artifacts.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| Digest::parse(&e.file_name().to_string_lossy()))
            .collect())
    }

    /// Pins a trust root (the reconciler decided it may be).
    pub fn pin_trust_root(&self, root: &SignedTrustRoot) -> Result<(), StoreError> {
        self.trust
            .insert("root", serde_json::to_vec(root).unwrap_or_default())?;
        self.trust.flush()?;
        Ok(())
    }

    /// Raises floors; a lower value than the stored one never replaces it.
    pub fn raise_floors(&self, floors: &[(String, VersionFloor)]) -> Result<(), StoreError> {
        for (name, floor) in floors {
            let bytes = serde_json::to_vec(floor).unwrap_or_default();
            self.floors.fetch_and_update(name.as_bytes(), |old| {
                let keep = old
                    .and_then(|o| serde_json::from_slice::<VersionFloor>(o).ok())
                    .is_some_and(|o| o.version >= floor.version);
                if keep {
                    old.map(|o| o.to_vec())
                } else {
                    Some(bytes.clone())
                }
            })?;
        }
        self.floors.flush()?;
        Ok(())
    }

    /// Records the generation applied and its content digest, in one atomic write.
    pub fn set_applied_generation(
        &self,
        generation: u64,
        content: Option<Digest>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert("generation", &generation.to_be_bytes()[..]);
        match content {
            Some(digest) => batch.insert("content", &digest.0[..]),
            None => batch.remove("content"),
        }
        self.meta.apply_batch(batch)?;
        self.meta.flush()?;
        Ok(())
    }

    /// Records `pipeline` as the serving revision of its name. With `keep_good`, the revision
    /// it replaces (another revision number) becomes the pipeline's last-known-good one.
    pub fn activate(&self, pipeline: &DesiredPipeline, keep_good: bool) -> Result<(), StoreError> {
        let key = pipeline.name.as_bytes();
        let bytes = postcard::to_stdvec(pipeline).map_err(|e| corrupt(key, e))?;
        if keep_good
            && let Some(before) = self.active.get(key)?
            && postcard::from_bytes::<DesiredPipeline>(&before)
                .is_ok_and(|b| b.revision != pipeline.revision)
        {
            // Written first: a crash in between leaves the old revision active and good.
            self.good.insert(key, before)?;
            self.good.flush()?;
        }
        self.active.insert(key, bytes)?;
        self.active.flush()?;
        Ok(())
    }

    /// The revision `pipeline` served before the one serving now, if the agent kept one.
    pub fn last_good(&self, pipeline: &str) -> Result<Option<DesiredPipeline>, StoreError> {
        self.good
            .get(pipeline.as_bytes())?
            .map(|v| postcard::from_bytes(&v).map_err(|e| corrupt(pipeline.as_bytes(), e)))
            .transpose()
    }

    /// The exit ledger (empty when none was kept).
    pub fn exit_ledger(&self) -> Result<crate::exits::ExitLedger, StoreError> {
        self.meta
            .get("exits")?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(b"exits", e)))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Persists the exit ledger.
    pub fn put_exit_ledger(&self, ledger: &crate::exits::ExitLedger) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(ledger).map_err(|e| corrupt(b"exits", e))?;
        self.meta.insert("exits", bytes)?;
        self.meta.flush()?;
        Ok(())
    }

    pub fn remove(&self, pipeline: &str) -> Result<(), StoreError> {
        self.active.remove(pipeline.as_bytes())?;
        self.active.flush()?;
        Ok(())
    }

    /// Where a verified artifact lives.
    pub fn artifact_path(&self, digest: &Digest) -> PathBuf {
        self.artifacts.join(digest.hex())
    }

    /// Where the download of an artifact accumulates.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.artifacts.join("partial").join(digest.hex())
    }

    /// The database, for parts of the agent that keep their own trees (telemetry).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state directory as a crash leaves it when nothing was written since the last
    /// flush: the store is abandoned unflushed (sled writing nothing on its own: no background
    /// flush) and its files copied, so what the store did not flush is gone. The copy opens as
    /// the agent's next start would. (A flush is sled's write and fsync in one; what the
    /// kernel had not put on disk is beyond a copy.)
    fn crash_image(store: AgentStore, state: &Path, to: &Path) -> AgentStore {
        std::mem::forget(store);
        std::fs::create_dir_all(to).expect("image dir");
        for entry in std::fs::read_dir(state).expect("state dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().expect("a name"))).expect("copy");
            }
        }
        AgentStore::open_with(
            sled::Config::new().path(to).flush_every_ms(None),
            &to.with_extension("artifacts"),
        )
        .expect("the image opens")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

        /// Every change the store acknowledged is in the state a crash leaves, whatever was
        /// lost around it: each write syncs before it returns.
        #[test]
        fn what_the_store_acknowledged_survives_a_crash_that_loses_unsynced_writes(
            steps in proptest::collection::vec((0u8..4, proptest::bool::weighted(0.25)), 1..24),
        ) {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut state = tmp.path().join("state-0");
            let mut store = AgentStore::open_with(
                sled::Config::new().path(&state).flush_every_ms(None),
                &tmp.path().join("artifacts"),
            )
            .expect("open");
            let (mut floor, mut generation, mut revision) = (0u64, 0u64, 0u64);
            for (i, (what, crash)) in steps.into_iter().enumerate() {
                match what {
                    0 => {
                        floor += 1;
                        let version = VersionFloor { version: floor, digest: Digest::of(&[1]) };
                        store.raise_floors(&[("m".into(), version)]).expect("floor");
                    }
                    1 => {
                        generation += 1;
                        store.set_applied_generation(generation, None).expect("generation");
                    }
                    2 => {
                        revision += 1;
                        let pipeline = DesiredPipeline {
                            name: "p".into(),
                            revision,
                            steps: vec![],
                            committed: false,
                            warmup: None,
                            monitored_step: None,
                            variants: vec![],
                        };
                        store.activate(&pipeline, true).expect("activate");
                    }
                    _ => {
                        // A write of its own, not synced: what a crash may take.
                        store.db.insert("unsynced", &[1]).expect("insert");
                    }
                }
                if crash {
                    let image = tmp.path().join(format!("state-{}", i + 1));
                    store = crash_image(store, &state, &image);
                    state = image;
                    let restored = store.restore().expect("restore");
                    proptest::prop_assert_eq!(restored.applied_generation, generation);
                    proptest::prop_assert_eq!(
                        restored.floors.get("m").map(|f| f.version),
                        (floor > 0).then_some(floor)
                    );
                    let serving = restored.serving.first().map(|p| p.revision);
                    proptest::prop_assert_eq!(serving, (revision > 0).then_some(revision));
                }
            }
        }
    }

    #[test]
    fn floors_only_rise_and_state_survives_reopen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (state, artifacts) = (tmp.path().join("state"), tmp.path().join("artifacts"));
        let floor = |version| VersionFloor {
            version,
            digest: Digest::of(&[version as u8]),
        };
        {
            let store = AgentStore::open(&state, &artifacts).expect("open");
            store
                .raise_floors(&[("topk".into(), floor(3))])
                .expect("raise");
            store
                .raise_floors(&[("topk".into(), floor(2))])
                .expect("lower is ignored");
            store
                .set_applied_generation(7, Some(Digest::of(b"state")))
                .expect("generation");
            store
                .activate(
                    &DesiredPipeline {
                        name: "p".into(),
                        revision: 4,
                        steps: vec![],
                        committed: true,
                        warmup: None,
                        monitored_step: None,
                        variants: vec![],
                    },
                    true,
                )
                .expect("activate");
            let digest = Digest::of(b"x");
            std::fs::write(store.artifact_path(&digest), b"x").expect("artifact");
            std::fs::write(store.partial_path(&Digest::of(b"y")), b"y").expect("partial");
        }
        // sled's flusher thread lets go of the file lock a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match AgentStore::open(&state, &artifacts) {
                Ok(store) => break store,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        let restored = store.restore().expect("restore");
        assert_eq!(restored.floors.get("topk"), Some(&floor(3)));
        assert_eq!(restored.applied_generation, 7);
        assert_eq!(restored.applied_content, Some(Digest::of(b"state")));
        assert_eq!(restored.serving[0].revision, 4);
        assert_eq!(
            restored.artifacts.into_iter().collect::<Vec<_>>(),
            [Digest::of(b"x")],
            "partial downloads are not artifacts"
        );
    }
}
