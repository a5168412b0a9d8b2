//! What the core's own tests share: stores on one in-memory backend, pushed releases, and a
//! manifest of one pipeline with its deployment.

use std::collections::BTreeMap;
use std::sync::Arc;

use tern_proto::api::ApplyRequest;
use tern_proto::release::{ArtifactKind, Digest, Release};
use tern_proto::signing::{SecretKey, Signed};

use crate::backend::{MemoryBackend, SharedBackend};
use crate::catalog::Catalog;
use crate::deploy::desired::DesiredStore;
use crate::drift::store::DriftStore;
use crate::registry::{NewAgent, Registry};
use crate::releases::{MemoryBlobs, ReleaseStore};

/// The stores of one control plane, on one in-memory backend.
pub struct Stores {
    pub backend: SharedBackend,
    pub registry: Registry,
    pub catalog: Catalog,
    pub releases: ReleaseStore,
    pub desired: DesiredStore,
    pub drift: DriftStore,
}

impl Stores {
    pub fn new() -> Self {
        let backend: SharedBackend = Arc::new(MemoryBackend::new());
        Self {
            backend: backend.clone(),
            registry: Registry::new(backend.clone()),
            catalog: Catalog::new(backend.clone()),
            releases: ReleaseStore::new(backend.clone(), Arc::new(MemoryBlobs::new())),
            desired: DesiredStore::new(backend.clone()),
            drift: DriftStore::new(backend),
        }
    }

    /// Records release `name:version` of `kind`, signed; with `upload`, its bytes too.
    pub fn push(&self, name: &str, version: u64, kind: ArtifactKind, upload: bool) {
        let bytes = format!("{name} {version}").into_bytes();
        let mut release = Signed::unsigned(Release {
            name: name.into(),
            kind,
            version,
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            created_ms: 0,
            expires_ms: None,
            annotations: Default::default(),
        });
        release.sign(&SecretKey::generate());
        self.releases.put_release(&release).expect("release");
        if upload {
            self.releases
                .append(&release.signed.digest, 0, &bytes)
                .expect("upload");
        }
    }

    /// Enrolls agent `id` named `name`, without labels.
    pub fn enroll(&self, id: &str, name: &str) {
        let (token, _) = (self.registry)
            .create_token(BTreeMap::new(), 60_000, [7; 32], 0)
            .expect("token");
        let n = self.registry.agents().expect("agents").len() as u8;
        let agent = NewAgent {
            id: id.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            cert_sha256: [n; 32],
            cert_expires_ms: u64::MAX,
            key_sha256: [n.wrapping_add(100); 32],
            address: None,
        };
        self.registry.redeem(&token, agent, 1).expect("redeem");
    }

    /// Applies `yaml` (or, with `dry_run`, compares it) at `now_ms`.
    pub fn apply(
        &self,
        yaml: &str,
        dry_run: bool,
        now_ms: u64,
    ) -> Result<Vec<tern_proto::api::Change>, crate::apply::ApplyError> {
        crate::apply::apply(
            &self.catalog,
            &self.releases,
            &self.drift,
            &request(yaml, dry_run),
            now_ms,
        )
    }
}

/// Pipeline `scores` of one plugin step `step` configured with `k`, and its deployment to
/// every agent in two canary waves.
pub fn manifest(step: &str, k: u32) -> String {
    format!(
        "apiVersion: tern.dev/v1alpha1\nkind: Pipeline\nmetadata: {{ name: scores }}\nspec:\n  steps:\n    - name: post\n      plugin: {step}\n      config: {{ k: {k} }}\n---\napiVersion: tern.dev/v1alpha1\nkind: Deployment\nmetadata: {{ name: scores }}\nspec:\n  pipeline: scores\n  rollout: {{ strategy: canary, waves: [50, 100] }}\n"
    )
}

pub fn request(yaml: &str, dry_run: bool) -> ApplyRequest {
    ApplyRequest {
        file: "scores.yaml".into(),
        resources: tern_proto::manifest::parse_resources(yaml, "scores.yaml").expect("valid"),
        sources: Vec::new(),
        dry_run,
    }
}
