//! Pipelines (every revision kept) and deployments (with their rollout), in sled.
//!
//! Trees: `pipelines` (name → latest [`PipelineRecord`]), `pipeline_revisions`
//! (`name\0revision` → [`PipelineRecord`] as applied), `deployments` (name →
//! [`DeploymentRecord`]). Records are JSON. Applies are serialized by a lock; each resource is
//! written in one step, and applying is idempotent, so an apply cut short is finished by
//! running it again.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tern_proto::api::PinnedStep;
use tern_proto::manifest::{Deployment, Pipeline};

use crate::records::{CorruptRecord, decode, encode, versioned_key, versions_prefix};
use crate::rollout::Rollout;

/// A failure of the storage itself.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog storage failed: {0}")]
    Storage(#[from] sled::Error),
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
    pipelines: sled::Tree,
    revisions: sled::Tree,
    deployments: sled::Tree,
    changes: Mutex<()>,
}

impl Catalog {
    pub fn open(db: &sled::Db) -> Result<Self, CatalogError> {
        Ok(Self {
            pipelines: db.open_tree("pipelines")?,
            revisions: db.open_tree("pipeline_revisions")?,
            deployments: db.open_tree("deployments")?,
            changes: Mutex::new(()),
        })
    }

    /// Held while a change (apply, delete, rollout command, planner step) reads and writes.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest revision of a pipeline.
    pub fn pipeline(&self, name: &str) -> Result<Option<PipelineRecord>, CatalogError> {
        self.pipelines
            .get(name.as_bytes())?
            .map(|v| decode(name.as_bytes(), &v))
            .transpose()
    }

    /// One revision of a pipeline.
    pub fn revision(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<PipelineRecord>, CatalogError> {
        let key = versioned_key(name, revision);
        self.revisions
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// The highest revision ever recorded for `name`, deleted or not: a pipeline applied again
    /// after a delete continues from it, so a revision number never names two contents.
    pub fn last_revision(&self, name: &str) -> Result<u64, CatalogError> {
        match self
            .revisions
            .scan_prefix(versions_prefix(name))
            .next_back()
        {
            Some(entry) => {
                let (key, _) = entry?;
                Ok(key
                    .get(key.len().saturating_sub(8)..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0))
            }
            None => Ok(0),
        }
    }

    /// Records a new latest revision.
    pub fn put_pipeline(&self, record: &PipelineRecord) -> Result<(), CatalogError> {
        let name = &record.manifest.metadata.name;
        self.revisions
            .insert(versioned_key(name, record.revision), encode(record))?;
        self.pipelines.insert(name.as_bytes(), encode(record))?;
        self.pipelines.flush()?;
        Ok(())
    }

    /// Removes a pipeline from the list (its revisions stay, for agents still running them
    /// and for history).
    pub fn delete_pipeline(&self, name: &str) -> Result<bool, CatalogError> {
        let removed = self.pipelines.remove(name.as_bytes())?.is_some();
        self.pipelines.flush()?;
        Ok(removed)
    }

    pub fn pipelines(&self) -> Result<Vec<PipelineRecord>, CatalogError> {
        self.pipelines
            .iter()
            .map(|e| {
                let (k, v) = e?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, CatalogError> {
        self.deployments
            .get(name.as_bytes())?
            .map(|v| decode(name.as_bytes(), &v))
            .transpose()
    }

    pub fn put_deployment(&self, record: &DeploymentRecord) -> Result<(), CatalogError> {
        self.deployments
            .insert(record.manifest.metadata.name.as_bytes(), encode(record))?;
        self.deployments.flush()?;
        Ok(())
    }

    pub fn delete_deployment(&self, name: &str) -> Result<bool, CatalogError> {
        let removed = self.deployments.remove(name.as_bytes())?.is_some();
        self.deployments.flush()?;
        Ok(removed)
    }

    /// Every deployment, by name.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, CatalogError> {
        self.deployments
            .iter()
            .map(|e| {
                let (k, v) = e?;
                decode(&k, &v)
            })
            .collect()
    }
}
