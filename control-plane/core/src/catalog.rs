//! Pipelines (every revision kept) and deployments (with their rollout), in the control
//! plane's backend.
//!
//! Tables: `pipelines` (name → latest [`PipelineRecord`]), `pipeline_revisions`
//! (`name\0revision` → [`PipelineRecord`] as applied), `deployments` (name →
//! [`DeploymentRecord`]), `catalog_meta` (`generation`: how many changes the catalog has had).
//! Records are JSON. Changes are made under a [`CatalogLock`]: one at a time in a process, and
//! across the replicas that share a store each write holds only if the catalog's generation is
//! still the one the lock read (else [`CatalogError::Changed`], and nothing is written), so a
//! change decided on what another replica has since changed never lands. A change (an apply
//! of a whole file, a delete, a rollout command, a planner pass) is one atomic write, its
//! generation bump included: it lands wholly or not at all.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tern_proto::api::PinnedStep;
use tern_proto::manifest::{Deployment, Pipeline};

use crate::backend::{BackendError, CommitError, KeyRange, Scan, SharedBackend, Table, Write};
use crate::records::{CorruptRecord, decode, encode, versioned_key, versions_prefix};

const PIPELINES: Table = Table("pipelines");
const REVISIONS: Table = Table("pipeline_revisions");
const DEPLOYMENTS: Table = Table("deployments");
const META: Table = Table("catalog_meta");
const GENERATION: &[u8] = b"generation";
use crate::rollout::Rollout;

/// A failure of the storage itself.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error("catalog {0}")]
    Corrupt(#[from] CorruptRecord),
    #[error(
        "the catalog changed meanwhile (another replica applied a change); nothing was written: try again"
    )]
    Changed,
}

/// One revision of a pipeline: the manifest as applied and the releases it pins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRecord {
    pub manifest: Pipeline,
    pub revision: u64,
    pub pinned: Vec<PinnedStep>,
    pub applied_ms: u64,
}

/// A deployment and its current rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub manifest: Deployment,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The latest rollout (kept when complete: it says what agents run).
    pub rollout: Option<Rollout>,
}

/// Handle to the catalog.
#[derive(Debug)]
pub struct Catalog {
    backend: SharedBackend,
    /// Held by a [`CatalogLock`]; shared with the catalogs [`Catalog::on`] makes.
    changes: Arc<Mutex<()>>,
}

impl Catalog {
    pub fn new(backend: SharedBackend) -> Self {
        Self {
            backend,
            changes: Arc::default(),
        }
    }

    /// The same catalog through another handle on its backend (one whose writes are fenced),
    /// sharing this one's lock.
    pub fn on(&self, backend: SharedBackend) -> Self {
        Self {
            backend,
            changes: self.changes.clone(),
        }
    }

    /// Holds the catalog against changes in this process, for work that only reads it (the
    /// generation is not read: nothing is committed through this).
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the catalog for a change (apply, delete, rollout command, planner step): what is
    /// read from now on is what the change is decided on, and its writes hold only if nobody
    /// changed the catalog meanwhile.
    pub fn lock(&self) -> Result<CatalogLock<'_>, CatalogError> {
        let held = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.backend.get(META, GENERATION)?;
        Ok(CatalogLock {
            catalog: self,
            _held: held,
            generation: RefCell::new(generation),
            staged: RefCell::default(),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, CatalogError> {
        self.backend
            .get(table, key)?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn all<T: serde::de::DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, CatalogError> {
        self.backend
            .range(table, &KeyRange::all(), Scan::All)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The latest revision of a pipeline.
    pub fn pipeline(&self, name: &str) -> Result<Option<PipelineRecord>, CatalogError> {
        self.get(PIPELINES, name.as_bytes())
    }

    /// One revision of a pipeline.
    pub fn revision(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<PipelineRecord>, CatalogError> {
        self.get(REVISIONS, &versioned_key(name, revision))
    }

    /// The highest revision ever recorded for `name`, deleted or not: a pipeline applied again
    /// after a delete continues from it, so a revision number never names two contents.
    pub fn last_revision(&self, name: &str) -> Result<u64, CatalogError> {
        let last = self.backend.range(
            REVISIONS,
            &KeyRange::prefix(versions_prefix(name)),
            Scan::Last(1),
        )?;
        Ok(last
            .first()
            .and_then(|(key, _)| revision_of(key))
            .unwrap_or(0))
    }

    /// Every pipeline's latest revision, by name.
    pub fn pipelines(&self) -> Result<Vec<PipelineRecord>, CatalogError> {
        self.all(PIPELINES)
    }

    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, CatalogError> {
        self.get(DEPLOYMENTS, name.as_bytes())
    }

    /// Every deployment, by name.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, CatalogError> {
        self.all(DEPLOYMENTS)
    }
}

/// The catalog held for one change ([`Catalog::lock`]); its writes are the catalog's only ones.
/// They are staged, read back through the lock (a change sees its own writes), and land
/// together in one atomic write at [`CatalogLock::commit`]: a change cut short (an error, a
/// refusal) writes nothing, and a lock dropped uncommitted discards its writes.
#[derive(Debug)]
pub struct CatalogLock<'a> {
    catalog: &'a Catalog,
    _held: MutexGuard<'a, ()>,
    /// The generation the change is decided on (`None`: the catalog never changed).
    generation: RefCell<Option<Vec<u8>>>,
    /// This change's writes, by table and key (`None`: deleted).
    staged: RefCell<Staged>,
}

impl CatalogLock<'_> {
    /// Applies the change's writes so far in one atomic write if the catalog is still at the
    /// generation this change read, and moves it to the next ([`CatalogError::Changed`], and
    /// nothing written, otherwise). Nothing staged: nothing to commit. The lock stays held.
    pub fn commit(&self) -> Result<(), CatalogError> {
        let staged = self.staged.take();
        if staged.is_empty() {
            return Ok(());
        }
        let read = self.generation.borrow().clone();
        let next = read
            .as_deref()
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        let next = next.to_be_bytes().to_vec();
        let mut write =
            Write::new()
                .only_if(META, GENERATION, read)
                .put(META, GENERATION, next.clone());
        for ((table, key), value) in staged {
            write = match value {
                Some(value) => write.put(table, key, value),
                None => write.delete(table, key),
            };
        }
        match self.catalog.backend.commit(write) {
            Ok(()) => {
                self.generation.replace(Some(next));
                Ok(())
            }
            Err(CommitError::Conflict) => Err(CatalogError::Changed),
            Err(CommitError::Backend(e)) => Err(e.into()),
        }
    }

    /// The catalog's generation as this change read it, or as its last commit left it
    /// (`None`: the catalog never changed).
    pub fn generation(&self) -> Option<u64> {
        (self.generation.borrow().as_deref())
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map(u64::from_be_bytes)
    }

    fn stage(&self, table: Table, key: &[u8], value: Option<Vec<u8>>) {
        self.staged
            .borrow_mut()
            .insert((table, key.to_vec()), value);
    }

    /// A key's value as this change sees it: its own write, else the store's.
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, CatalogError> {
        let staged = self.staged.borrow().get(&(table, key.to_vec())).cloned();
        match staged {
            Some(value) => value.map(|v| decode(key, &v)).transpose(),
            None => self.catalog.get(table, key),
        }
    }

    /// Every record of `table` as this change sees it, in key order.
    fn all<T: serde::de::DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, CatalogError> {
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = self
            .catalog
            .backend
            .range(table, &KeyRange::all(), Scan::All)?
            .into_iter()
            .collect();
        for ((_, key), value) in self
            .staged
            .borrow()
            .iter()
            .filter(|((t, _), _)| *t == table)
        {
            match value {
                Some(value) => entries.insert(key.clone(), value.clone()),
                None => entries.remove(key),
            };
        }
        entries.iter().map(|(k, v)| decode(k, v)).collect()
    }

    pub fn pipeline(&self, name: &str) -> Result<Option<PipelineRecord>, CatalogError> {
        self.get(PIPELINES, name.as_bytes())
    }

    pub fn revision(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<PipelineRecord>, CatalogError> {
        self.get(REVISIONS, &versioned_key(name, revision))
    }

    /// As [`Catalog::last_revision`], this change's revisions included.
    pub fn last_revision(&self, name: &str) -> Result<u64, CatalogError> {
        let stored = self.catalog.last_revision(name)?;
        let prefix = versions_prefix(name);
        let staged = self
            .staged
            .borrow()
            .keys()
            .filter(|(table, key)| *table == REVISIONS && key.starts_with(&prefix))
            .filter_map(|(_, key)| revision_of(key))
            .max()
            .unwrap_or(0);
        Ok(stored.max(staged))
    }

    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, CatalogError> {
        self.get(DEPLOYMENTS, name.as_bytes())
    }

    /// Every deployment, by name.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, CatalogError> {
        self.all(DEPLOYMENTS)
    }

    fn delete(&self, table: Table, name: &str) -> Result<bool, CatalogError> {
        let staged = self
            .staged
            .borrow()
            .get(&(table, name.as_bytes().to_vec()))
            .map(Option::is_some);
        let existed = match staged {
            Some(existed) => existed,
            None => self.catalog.backend.get(table, name.as_bytes())?.is_some(),
        };
        if existed {
            self.stage(table, name.as_bytes(), None);
        }
        Ok(existed)
    }

    pub fn put_pipeline(&self, record: &PipelineRecord) {
        let name = &record.manifest.metadata.name;
        let encoded = encode(record);
        self.stage(
            REVISIONS,
            &versioned_key(name, record.revision),
            Some(encoded.clone()),
        );
        self.stage(PIPELINES, name.as_bytes(), Some(encoded));
    }

    /// Removes a pipeline from the list (its revisions stay, for agents still running them
    /// and for history).
    pub fn delete_pipeline(&self, name: &str) -> Result<bool, CatalogError> {
        self.delete(PIPELINES, name)
    }

    pub fn put_deployment(&self, record: &DeploymentRecord) {
        self.stage(
            DEPLOYMENTS,
            record.manifest.metadata.name.as_bytes(),
            Some(encode(record)),
        );
    }

    pub fn delete_deployment(&self, name: &str) -> Result<bool, CatalogError> {
        self.delete(DEPLOYMENTS, name)
    }
}

/// A change's writes, by table and key (`None`: deleted).
type Staged = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// The revision at the end of a `pipeline_revisions` key.
/// Whether a commit changed the catalog (every change does so through its generation).
pub fn changed(changes: &[crate::backend::Change]) -> bool {
    changes.iter().any(|c| c.table == META)
}

fn revision_of(key: &[u8]) -> Option<u64> {
    key.get(key.len().checked_sub(8)?..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str) -> DeploymentRecord {
        let yaml = format!(
            "apiVersion: tern.dev/v1alpha1\nkind: Deployment\nmetadata: {{ name: {name} }}\nspec:\n  pipeline: scores\n  selector: {{}}\n"
        );
        let manifest = match tern_proto::manifest::parse_resources(&yaml, "test.yaml")
            .expect("valid deployment")
            .remove(0)
        {
            tern_proto::manifest::Resource::Deployment(d) => d,
            other => panic!("not a deployment: {other:?}"),
        };
        DeploymentRecord {
            manifest,
            created_ms: 0,
            updated_ms: 0,
            rollout: None,
        }
    }

    #[test]
    fn a_change_sees_its_own_writes_and_lands_whole_or_not_at_all() {
        let backend: SharedBackend = Arc::new(crate::backend::MemoryBackend::new());
        let catalog = Catalog::new(backend.clone());
        let lock = catalog.lock().expect("lock");
        lock.put_deployment(&deployment("a"));
        lock.put_deployment(&deployment("b"));
        assert!(lock.delete_deployment("a").expect("delete"));
        let names = |records: Vec<DeploymentRecord>| -> Vec<String> {
            records
                .into_iter()
                .map(|d| d.manifest.metadata.name)
                .collect()
        };
        assert_eq!(names(lock.deployments().expect("read")), ["b"]);
        assert!(
            catalog.deployments().expect("read").is_empty(),
            "nothing lands before the commit"
        );
        lock.commit().expect("commit");
        drop(lock);
        assert_eq!(names(catalog.deployments().expect("read")), ["b"]);

        // A change dropped half-way (an error after some writes) leaves nothing behind.
        {
            let lock = catalog.lock().expect("lock");
            lock.put_deployment(&deployment("c"));
            assert!(lock.delete_deployment("b").expect("delete"));
        }
        assert_eq!(names(catalog.deployments().expect("read")), ["b"]);

        // Another replica (a catalog of its own on the same store) changed it meanwhile:
        // the whole change is refused.
        let other = Catalog::new(backend);
        let lock = catalog.lock().expect("lock");
        lock.put_deployment(&deployment("d"));
        lock.put_deployment(&deployment("e"));
        let elsewhere = other.lock().expect("lock");
        elsewhere.put_deployment(&deployment("f"));
        elsewhere.commit().expect("commit");
        assert!(matches!(lock.commit(), Err(CatalogError::Changed)));
        assert_eq!(names(catalog.deployments().expect("read")), ["b", "f"]);
    }
}
