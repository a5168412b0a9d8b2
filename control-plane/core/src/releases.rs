//! The release store: signed releases and their artifacts, content-addressed, and the pinned
//! trust root.
//!
//! Tables (in the control plane's backend): `releases` (`name\0version` → signed release JSON),
//! `artifact_sizes` (digest → size, from the first release naming it), `trust` (`root` → the
//! pinned trust root, `v/<version>` → every one pinned, JSON). The artifacts' bytes are kept by
//! an [`ArtifactBlobs`]: the server's object store (a directory, or an S3-compatible store
//! that replicas share), or [`MemoryBlobs`] in tests and simulations. An interrupted push
//! resumes where it stopped, and no reader ever sees a half-written or unverified artifact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tern_proto::api::UploadProgress;
use tern_proto::message::MAX_TRUST_CHAIN;
use tern_proto::release::{Digest, SignedRelease};
use tern_proto::trust::{SignedTrustRoot, TrustError, TrustUpdate};

use crate::backend::{
    BackendError, CommitError, KeyRange, Scan, SharedBackend, Table, Write, transact,
};
use crate::records::{CorruptRecord, decode, encode, versioned_key};

const RELEASES: Table = Table("releases");
const SIZES: Table = Table("artifact_sizes");
const TRUST: Table = Table("trust");

/// The history key of trust root `version`: zero-padded, so keys sort by version.
fn history_key(version: u64) -> String {
    format!("v/{version:020}")
}

/// The store of the artifacts' bytes failed (it is down, or refused a request); its text is
/// the store's own.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ArtifactError(Box<dyn std::error::Error + Send + Sync>);

impl ArtifactError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }
}

/// The result of assembling an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assembled {
    /// Verified and stored under its digest.
    Complete,
    /// The bytes hash to another digest: the upload was discarded.
    Mismatch(Digest),
}

/// Where the artifacts' bytes are kept: complete artifacts under their digest, and the chunks
/// of uploads under way. Blocking, like [`crate::backend::Backend`].
pub trait ArtifactBlobs: Send + Sync + std::fmt::Debug {
    /// The size of the complete artifact, if it is stored.
    fn size(&self, digest: &Digest) -> Result<Option<u64>, ArtifactError>;
    /// How many bytes of `digest`'s upload are stored, from the start without a gap.
    fn received(&self, digest: &Digest) -> Result<u64, ArtifactError>;
    /// Stores the chunk of `digest`'s upload that starts at `offset`.
    fn put_chunk(&self, digest: &Digest, offset: u64, bytes: &[u8]) -> Result<(), ArtifactError>;
    /// Joins the upload's chunks into the artifact if they hash to `digest` and are `size`
    /// bytes long; discards the chunks either way.
    fn assemble(&self, digest: &Digest, size: u64) -> Result<Assembled, ArtifactError>;
}

/// Artifacts in memory, for tests and simulations.
#[derive(Debug, Default)]
pub struct MemoryBlobs {
    state: Mutex<Blobs>,
}

#[derive(Debug, Default)]
struct Blobs {
    complete: BTreeMap<Digest, Vec<u8>>,
    /// Per upload: chunks by offset.
    uploads: BTreeMap<Digest, BTreeMap<u64, Vec<u8>>>,
}

impl MemoryBlobs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes of a complete artifact.
    pub fn artifact(&self, digest: &Digest) -> Option<Vec<u8>> {
        self.blobs().complete.get(digest).cloned()
    }

    fn blobs(&self) -> std::sync::MutexGuard<'_, Blobs> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bytes of `chunks` that follow on from offset 0 without a gap.
fn contiguous(chunks: &BTreeMap<u64, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (offset, bytes) in chunks {
        if *offset != out.len() as u64 {
            break;
        }
        out.extend_from_slice(bytes);
    }
    out
}

impl ArtifactBlobs for MemoryBlobs {
    fn size(&self, digest: &Digest) -> Result<Option<u64>, ArtifactError> {
        Ok(self.blobs().complete.get(digest).map(|b| b.len() as u64))
    }

    fn received(&self, digest: &Digest) -> Result<u64, ArtifactError> {
        let blobs = self.blobs();
        Ok(blobs
            .uploads
            .get(digest)
            .map_or(0, |chunks| contiguous(chunks).len() as u64))
    }

    fn put_chunk(&self, digest: &Digest, offset: u64, bytes: &[u8]) -> Result<(), ArtifactError> {
        self.blobs()
            .uploads
            .entry(*digest)
            .or_default()
            .insert(offset, bytes.to_vec());
        Ok(())
    }

    fn assemble(&self, digest: &Digest, size: u64) -> Result<Assembled, ArtifactError> {
        let mut blobs = self.blobs();
        let bytes = blobs
            .uploads
            .remove(digest)
            .map(|chunks| contiguous(&chunks))
            .unwrap_or_default();
        let actual = Digest::of(&bytes);
        if actual == *digest && bytes.len() as u64 == size {
            blobs.complete.insert(*digest, bytes);
            Ok(Assembled::Complete)
        } else {
            Ok(Assembled::Mismatch(actual))
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseStoreError {
    #[error("release storage failed: {0}")]
    Storage(#[from] BackendError),
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    #[error("release store {0}")]
    Corrupt(#[from] CorruptRecord),
    #[error("{reference} already exists with other content ({existing}); publish a new version")]
    Conflict { reference: String, existing: Digest },
    #[error("no release names artifact {0}; push the release first")]
    UnknownArtifact(Digest),
    #[error("upload of {digest} is at byte {received}, not {offset}")]
    WrongOffset {
        digest: Digest,
        received: u64,
        offset: u64,
    },
    #[error("upload of {digest} would exceed its size of {size} bytes")]
    TooLong { digest: Digest, size: u64 },
    #[error("uploaded bytes hash to {actual}, not {expected}; the upload was discarded")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Whether [`ReleaseStore::put_release`] stored something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The same release was already there (signatures are merged).
    Unchanged,
}

/// Handle to the release store.
#[derive(Debug)]
pub struct ReleaseStore {
    backend: SharedBackend,
    artifacts: Arc<dyn ArtifactBlobs>,
    /// Serializes appends, so two pushes of one artifact cannot interleave.
    uploads: Mutex<()>,
    /// Serializes read-then-write changes of releases and the trust root, so two publishers
    /// cannot both pass a check that only one of them may pass.
    changes: Mutex<()>,
}

impl ReleaseStore {
    /// The store on `backend`, with the artifacts' bytes in `artifacts`.
    pub fn new(backend: SharedBackend, artifacts: Arc<dyn ArtifactBlobs>) -> Self {
        Self {
            backend,
            artifacts,
            uploads: Mutex::new(()),
            changes: Mutex::new(()),
        }
    }

    /// Whether the whole artifact is stored and verified.
    pub fn is_complete(&self, digest: &Digest) -> Result<bool, ReleaseStoreError> {
        Ok(self.artifacts.size(digest)?.is_some())
    }

    /// Records a release (its signatures are checked by the caller). The same `name:version`
    /// with other content is refused; with the same content, new signatures are merged in.
    pub fn put_release(&self, signed: &SignedRelease) -> Result<PutOutcome, ReleaseStoreError> {
        let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let release = &signed.signed;
        let k = versioned_key(&release.name, release.version);
        // What it reads becomes a condition of the write: a release or a size stored meanwhile
        // (by another writer of the backend) runs this again.
        transact(self.backend.as_ref(), |txn| {
            let existing = txn
                .get(RELEASES, &k)?
                .map(|v| decode::<SignedRelease, ReleaseStoreError>(&k, &v))
                .transpose()?;
            let outcome = match existing {
                Some(mut existing) => {
                    if existing.signed != *release {
                        return Err(ReleaseStoreError::Conflict {
                            reference: release.reference(),
                            existing: existing.signed.digest,
                        });
                    }
                    let before = existing.signatures.len();
                    for entry in &signed.signatures {
                        if !existing.signatures.contains(entry) {
                            existing.signatures.push(entry.clone());
                        }
                    }
                    if existing.signatures.len() != before {
                        txn.put(RELEASES, k.clone(), encode(&existing));
                    }
                    PutOutcome::Unchanged
                }
                None => {
                    txn.put(RELEASES, k.clone(), encode(signed));
                    PutOutcome::Created
                }
            };
            // The first release naming an artifact gives its size; later ones never change it.
            if txn.get(SIZES, &release.digest.0)?.is_none() {
                txn.put(SIZES, release.digest.0, release.size.to_be_bytes().to_vec());
            }
            Ok(outcome)
        })
    }

    /// One release.
    pub fn release(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<SignedRelease>, ReleaseStoreError> {
        let k = versioned_key(name, version);
        self.backend
            .get(RELEASES, &k)?
            .map(|v| decode(&k, &v))
            .transpose()
    }

    /// Every release, by name then version.
    pub fn releases(&self) -> Result<Vec<SignedRelease>, ReleaseStoreError> {
        self.backend
            .range(RELEASES, &KeyRange::all(), Scan::All)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The size the releases give for `digest`.
    fn size_of(&self, digest: &Digest) -> Result<u64, ReleaseStoreError> {
        let raw = self
            .backend
            .get(SIZES, &digest.0)?
            .ok_or(ReleaseStoreError::UnknownArtifact(*digest))?;
        Ok(<[u8; 8]>::try_from(raw.as_slice())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// How much of `digest` is stored.
    pub fn progress(&self, digest: &Digest) -> Result<UploadProgress, ReleaseStoreError> {
        let size = self.size_of(digest)?;
        if self.is_complete(digest)? {
            return Ok(UploadProgress {
                received: size,
                size,
                complete: true,
            });
        }
        Ok(UploadProgress {
            received: self.artifacts.received(digest)?,
            size,
            complete: false,
        })
    }

    /// Appends `bytes` at `offset` to the upload of `digest`. When the last byte arrives, the
    /// whole artifact is hashed; a match makes it complete, a mismatch discards the upload.
    pub fn append(
        &self,
        digest: &Digest,
        offset: u64,
        bytes: &[u8],
    ) -> Result<UploadProgress, ReleaseStoreError> {
        let _guard = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let progress = self.progress(digest)?;
        if progress.complete {
            return Ok(progress);
        }
        if offset != progress.received {
            return Err(ReleaseStoreError::WrongOffset {
                digest: *digest,
                received: progress.received,
                offset,
            });
        }
        let end = offset.saturating_add(bytes.len() as u64);
        if end > progress.size {
            return Err(ReleaseStoreError::TooLong {
                digest: *digest,
                size: progress.size,
            });
        }
        if !bytes.is_empty() {
            self.artifacts.put_chunk(digest, offset, bytes)?;
        }
        if end < progress.size {
            return Ok(UploadProgress {
                received: end,
                ..progress
            });
        }
        match self.artifacts.assemble(digest, progress.size)? {
            Assembled::Complete => Ok(UploadProgress {
                received: end,
                size: progress.size,
                complete: true,
            }),
            Assembled::Mismatch(actual) => Err(ReleaseStoreError::DigestMismatch {
                expected: *digest,
                actual,
            }),
        }
    }

    /// The pinned trust root, if one was set.
    pub fn trust_root(&self) -> Result<Option<SignedTrustRoot>, ReleaseStoreError> {
        self.backend
            .get(TRUST, b"root")?
            .map(|v| decode(b"root", &v))
            .transpose()
    }

    /// Pins `offered` if it is the first trust root or a valid successor of the pinned one;
    /// every root pinned is kept (`v/<version>`), for agents that missed rotations.
    pub fn set_trust_root(
        &self,
        offered: &SignedTrustRoot,
    ) -> Result<TrustUpdate, ReleaseStoreError> {
        let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.trust_root()?;
        let update = offered.accept(current.as_ref())?;
        if update == TrustUpdate::Accepted {
            let mut write = Write::new().put(TRUST, "root", encode(offered)).put(
                TRUST,
                history_key(offered.signed.version),
                encode(offered),
            );
            // A store from before the history kept only the pinned root: it joins it now.
            if let Some(current) = &current {
                write = write.put(TRUST, history_key(current.signed.version), encode(current));
            }
            self.backend
                .commit(write)
                .map_err(CommitError::into_backend)?;
        }
        Ok(update)
    }

    /// The trust roots pinned so far, oldest first: the newest [`MAX_TRUST_CHAIN`], each
    /// signed by the root keys of the one before.
    pub fn trust_chain(&self) -> Result<Vec<SignedTrustRoot>, ReleaseStoreError> {
        let range = KeyRange::prefix(b"v/");
        let mut chain: Vec<SignedTrustRoot> = self
            .backend
            .range(TRUST, &range, Scan::All)?
            .iter()
            .map(|(key, value)| decode(key, value))
            .collect::<Result<_, ReleaseStoreError>>()?;
        if chain.is_empty() {
            chain.extend(self.trust_root()?);
        }
        let excess = chain.len().saturating_sub(MAX_TRUST_CHAIN);
        chain.drain(..excess);
        Ok(chain)
    }
}

/// What a commit changed of the releases: the digests of release records it wrote (a new
/// release, or one that gained a co-signature), and whether it pinned a trust root.
pub fn changed(changes: &[crate::backend::Change]) -> (Vec<Digest>, bool) {
    let digests = (changes.iter())
        .filter(|c| c.table == RELEASES)
        .filter_map(|c| {
            let record: SignedRelease = serde_json::from_slice(c.value.as_deref()?).ok()?;
            Some(record.signed.digest)
        })
        .collect();
    (digests, changes.iter().any(|c| c.table == TRUST))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::release::{ArtifactKind, Release};
    use tern_proto::signing::{SecretKey, Signed};

    fn signed(version: u64, bytes: &[u8], key: &SecretKey) -> SignedRelease {
        let mut s = Signed::unsigned(Release {
            name: "topk".into(),
            kind: ArtifactKind::Plugin,
            version,
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            created_ms: 0,
            expires_ms: None,
            annotations: Default::default(),
        });
        s.sign(key);
        s
    }

    fn store() -> (ReleaseStore, Arc<MemoryBlobs>) {
        let backend = Arc::new(crate::backend::MemoryBackend::new());
        let blobs = Arc::new(MemoryBlobs::new());
        (ReleaseStore::new(backend, blobs.clone()), blobs)
    }

    #[test]
    fn resumes_an_upload_and_completes_on_the_digest() {
        let (store, blobs) = store();
        let key = SecretKey::generate();
        let bytes = b"0123456789abcdef".repeat(100);
        let release = signed(1, &bytes, &key);
        let digest = release.signed.digest;
        assert!(matches!(
            store.append(&digest, 0, &bytes),
            Err(ReleaseStoreError::UnknownArtifact(_))
        ));
        assert_eq!(
            store.put_release(&release).expect("put"),
            PutOutcome::Created
        );
        let p = store
            .append(&digest, 0, &bytes[..700])
            .expect("first chunk");
        assert_eq!((p.received, p.complete), (700, false));
        // A client that lost track is told where to resume.
        assert!(matches!(
            store.append(&digest, 0, &bytes[..10]),
            Err(ReleaseStoreError::WrongOffset { received: 700, .. })
        ));
        let p = store.append(&digest, 700, &bytes[700..]).expect("rest");
        assert!(p.complete);
        assert_eq!(
            blobs.artifact(&digest),
            Some(bytes),
            "a complete artifact under its digest"
        );
        assert!(store.progress(&digest).expect("progress").complete);
    }

    #[test]
    fn discards_an_upload_that_does_not_match_its_digest() {
        let (store, _) = store();
        let release = signed(1, b"good bytes", &SecretKey::generate());
        let digest = release.signed.digest;
        store.put_release(&release).expect("put");
        assert!(matches!(
            store.append(&digest, 0, b"evil bytes"),
            Err(ReleaseStoreError::DigestMismatch { .. })
        ));
        assert_eq!(store.progress(&digest).expect("progress").received, 0);
        assert!(matches!(
            store.append(&digest, 0, b"good bytes and more"),
            Err(ReleaseStoreError::TooLong { .. })
        ));
        assert!(
            store
                .append(&digest, 0, b"good bytes")
                .expect("good")
                .complete
        );
    }

    #[test]
    fn refuses_a_second_content_under_one_version_and_merges_signatures() {
        let (store, _) = store();
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let first = signed(2, b"one", &a);
        store.put_release(&first).expect("put");
        assert!(matches!(
            store.put_release(&signed(2, b"two", &a)),
            Err(ReleaseStoreError::Conflict { .. })
        ));
        let mut cosigned = first.clone();
        cosigned.signatures.clear();
        cosigned.sign(&b);
        assert_eq!(
            store.put_release(&cosigned).expect("cosign"),
            PutOutcome::Unchanged
        );
        let stored = store.release("topk", 2).expect("get").expect("present");
        assert_eq!(stored.signatures.len(), 2);
    }
}
