//! Pipelines (every revision kept) and deployments (with their rollout), in the control
//! plane's backend.
//!
//! Tables: `pipelines` (name → latest [`PipelineRecord`]), `pipeline_revisions`
//! (`name\0revision` → [`PipelineRecord`] as applied), `deployments` (name →
//! [`DeploymentRecord`]), `catalog_meta` (`generation`: how many changes the catalog has had).
//! Records are JSON. Changes are made under a [`CatalogLock`]: one at a time in a process, and
//! across the replicas that share a store each write holds only if the catalog's generation is
//! still the one the lock read (else [`CatalogError::Changed`], and nothing is written), so a
//! change decided on what another replica has since changed never lands. Each resource is
//! written in one atomic write (a pipeline's revision and its latest entry together), and
//! applying is idempotent, so an apply cut short is finished by running it again.

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

    /// Holds the catalog for a change (apply, delete, rollout command, planner step): what is
    /// read from now on is what the change is decided on, and its writes hold only if nobody
    /// changed the catalog meanwhile.
    pub fn lock(&self) -> Result<CatalogLock<'_>, CatalogError> {
        let held = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.backend.get(META, GENERATION)?;
        Ok(CatalogLock {
            catalog: self,
            _held: held,
            generation: std::cell::RefCell::new(generation),
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
            .and_then(|(key, _)| key.get(key.len().saturating_sub(8)..))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Records a new latest revision.
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
#[derive(Debug)]
pub struct CatalogLock<'a> {
    catalog: &'a Catalog,
    _held: MutexGuard<'a, ()>,
    /// The generation the change is decided on (`None`: the catalog never changed).
    generation: std::cell::RefCell<Option<Vec<u8>>>,
}

impl CatalogLock<'_> {
    /// Applies `write` if the catalog is still at the generation this change read, and moves
    /// it to the next.
    fn commit(&self, write: Write) -> Result<(), CatalogError> {
        let read = self.generation.take();
        let next = read
            .as_deref()
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        let next = next.to_be_bytes().to_vec();
        let result =
            self.catalog
                .backend
                .commit(write.only_if(META, GENERATION, read.clone()).put(
                    META,
                    GENERATION,
                    next.clone(),
                ));
        match result {
            Ok(()) => {
                self.generation.replace(Some(next));
                Ok(())
            }
            Err(CommitError::Conflict) => {
                self.generation.replace(read);
                Err(CatalogError::Changed)
            }
            Err(CommitError::Backend(e)) => {
                self.generation.replace(read);
                Err(e.into())
            }
        }
    }

    fn delete(&self, table: Table, name: &str) -> Result<bool, CatalogError> {
        let existed = self.catalog.backend.get(table, name.as_bytes())?.is_some();
        if existed {
            self.commit(Write::new().delete(table, name.as_bytes()))?;
        }
        Ok(existed)
    }

    pub fn put_pipeline(&self, record: &PipelineRecord) -> Result<(), CatalogError> {
        let name = &record.manifest.metadata.name;
        self.commit(
            Write::new()
                .put(
                    REVISIONS,
                    versioned_key(name, record.revision),
                    encode(record),
                )
                .put(PIPELINES, name.as_bytes(), encode(record)),
        )
    }

    /// Removes a pipeline from the list (its revisions stay, for agents still running them
    /// and for history).
    pub fn delete_pipeline(&self, name: &str) -> Result<bool, CatalogError> {
        self.delete(PIPELINES, name)
    }

    pub fn put_deployment(&self, record: &DeploymentRecord) -> Result<(), CatalogError> {
        self.commit(Write::new().put(
            DEPLOYMENTS,
            record.manifest.metadata.name.as_bytes(),
            encode(record),
        ))
    }

    pub fn delete_deployment(&self, name: &str) -> Result<bool, CatalogError> {
        self.delete(DEPLOYMENTS, name)
    }
}
