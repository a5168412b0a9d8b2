//! Pipelines (every revision kept) and deployments (with their rollout), in the control
//! plane's backend.
//!
//! Tables: `pipelines` (name → latest [`PipelineRecord`]), `pipeline_revisions`
//! (`name\0revision` → [`PipelineRecord`] as applied), `deployments` (name →
//! [`DeploymentRecord`]). Records are JSON. Applies are serialized by a lock; each resource is
//! written in one atomic write (a pipeline's revision and its latest entry together), and
//! applying is idempotent, so an apply cut short is finished by running it again.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tern_proto::api::PinnedStep;
use tern_proto::manifest::{Deployment, Pipeline};

use crate::backend::{
    BackendError, CommitError, KeyRange, Scan, SharedBackend, Table, Write, transact,
};
use crate::records::{CorruptRecord, decode, encode, versioned_key, versions_prefix};

const PIPELINES: Table = Table("pipelines");
const REVISIONS: Table = Table("pipeline_revisions");
const DEPLOYMENTS: Table = Table("deployments");
use crate::rollout::Rollout;

/// A failure of the storage itself.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error("catalog {0}")]
    Corrupt(#[from] CorruptRecord),
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
    changes: Mutex<()>,
}

impl Catalog {
    pub fn new(backend: SharedBackend) -> Self {
        Self {
            backend,
            changes: Mutex::new(()),
        }
    }

    /// Held while a change (apply, delete, rollout command, planner step) reads and writes.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
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

    fn commit(&self, write: Write) -> Result<(), CatalogError> {
        self.backend
            .commit(write)
            .map_err(CommitError::into_backend)?;
        Ok(())
    }

    /// Deletes `name` from `table`; whether it was there. The read is a condition of the
    /// delete (a change by another writer in between runs both again), so the answer is true
    /// of what the delete removed.
    fn delete(&self, table: Table, name: &str) -> Result<bool, CatalogError> {
        transact(self.backend.as_ref(), |txn| {
            let existed = txn.get(table, name.as_bytes())?.is_some();
            txn.delete(table, name.as_bytes());
            Ok(existed)
        })
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
            .and_then(|(key, _)| key.get(key.len().saturating_sub(8)..))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Records a new latest revision.
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

    pub fn pipelines(&self) -> Result<Vec<PipelineRecord>, CatalogError> {
        self.all(PIPELINES)
    }

    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, CatalogError> {
        self.get(DEPLOYMENTS, name.as_bytes())
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

    /// Every deployment, by name.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, CatalogError> {
        self.all(DEPLOYMENTS)
    }
}
