//! Artifacts by digest in an object store (the `object_store` crate): a local directory by
//! default, any S3-compatible store for replicas (`artifacts = "s3://bucket/prefix"`; endpoint
//! and credentials from the standard `AWS_*` environment variables).
//!
//! Keys: `<hex digest>` for a complete, verified artifact; `uploads/<hex digest>/<offset>` for
//! the chunks of an upload in progress, so an interrupted push resumes where it stopped — at
//! any replica. When the last chunk arrives the chunks are read in order, hashed and written to
//! the artifact's key as one multipart upload that is completed only if the hash matches: no
//! reader ever sees a partial or unverified artifact.
//!
//! The store's calls run on a [`Driver`] runtime, so the blocking methods work from any thread.
//!
//! - `testing`: an S3 server for tests (SeaweedFS), like `backend::postgres::testing`; only in
//!   this crate's tests and with the `testing` feature.

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart};
use sha2::Digest as _;
use tern_proto::release::Digest;

use crate::backend::driver::Driver;
pub use crate::config::ArtifactLocation;
use crate::releases::ArtifactBlobs;
pub use crate::releases::Assembled;

/// The artifact store failed (it is down, refused a request, or its driver stopped).
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact store {location}: {source}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("artifact store {0}: cannot start its client thread: {1}")]
    Thread(String, #[source] std::io::Error),
    #[error("artifact store {0}: its client thread stopped")]
    Stopped(String),
}

/// Artifacts in an object store.
#[derive(Debug)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    location: String,
    driver: Driver,
}

fn artifact_key(digest: &Digest) -> Key {
    Key::from(digest.hex())
}

fn uploads_of(digest: &Digest) -> Key {
    Key::from(format!("uploads/{}", digest.hex()))
}

fn chunk_key(digest: &Digest, offset: u64) -> Key {
    uploads_of(digest).clone().join(format!("{offset:020}"))
}

/// Of an upload's chunks (offset, size, key; by offset), those that follow each other from
/// the start without a gap, and where they end. A chunk that begins inside one before it is
/// passed over.
fn contiguous(chunks: Vec<(u64, u64, Key)>) -> (u64, Vec<Key>) {
    let (mut end, mut keys) = (0, Vec::new());
    for (offset, size, key) in chunks {
        if offset == end {
            end += size;
            keys.push(key);
        } else if offset > end {
            break;
        }
    }
    (end, keys)
}

impl ArtifactStore {
    /// Opens the store at `location` (a directory is created if missing), an S3 store with
    /// the settings of this process's `AWS_*` environment variables.
    pub fn open(location: &ArtifactLocation) -> Result<Self, ArtifactError> {
        let aws: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        Self::open_with(location, &aws)
    }

    /// [`ArtifactStore::open`] with the `AWS_*` settings given (`AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...).
    pub fn open_with(
        location: &ArtifactLocation,
        aws: &[(String, String)],
    ) -> Result<Self, ArtifactError> {
        let name = location.to_string();
        let store_error = |source| ArtifactError::Store {
            location: name.clone(),
            source,
        };
        let store: Arc<dyn ObjectStore> = match location {
            ArtifactLocation::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    store_error(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    })
                })?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .map_err(store_error)?,
                )
            }
            ArtifactLocation::S3 { bucket, prefix } => {
                // The HTTP client's TLS uses the process's rustls provider: ring, as everywhere
                // else here (a provider installed already stays).
                let _ = rustls::crypto::ring::default_provider().install_default();
                // Bounded waits first; the `AWS_*` settings (timeouts included) may override.
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_timeout(Duration::from_secs(60)),
                    )
                    .with_retry(object_store::RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(15),
                        ..object_store::RetryConfig::default()
                    });
                for (key, value) in aws {
                    if let Ok(config) = key.to_ascii_lowercase().parse() {
                        builder = builder.with_config(config, value);
                    }
                }
                let s3 = builder
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(store_error)?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        s3,
                        Key::from(prefix.as_str()),
                    ))
                }
            }
        };
        let driver =
            Driver::start("artifact-store").map_err(|e| ArtifactError::Thread(name.clone(), e))?;
        Ok(Self {
            store,
            location: name,
            driver,
        })
    }

    fn error(&self, source: object_store::Error) -> ArtifactError {
        ArtifactError::Store {
            location: self.location.clone(),
            source,
        }
    }

    /// Runs `work` on the store's client runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, ArtifactError> {
        self.driver
            .run(work)
            .ok_or_else(|| ArtifactError::Stopped(self.location.clone()))?
            .map_err(|e| self.error(e))
    }

    /// The size of the complete artifact, if it is stored.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>, ArtifactError> {
        futures_executor::block_on(self.stored_size(digest))
    }

    /// The chunks of `digest`'s upload, by offset.
    fn chunks(&self, digest: &Digest) -> Result<Vec<(u64, u64, Key)>, ArtifactError> {
        let (store, prefix) = (self.store.clone(), uploads_of(digest));
        let mut chunks = self.run(async move {
            let mut listed = store.list(Some(&prefix));
            let mut out = Vec::new();
            while let Some(meta) = listed.next().await {
                let meta = meta?;
                if let Some(offset) = meta.location.filename().and_then(|f| f.parse().ok()) {
                    out.push((offset, meta.size, meta.location));
                }
            }
            Ok(out)
        })?;
        chunks.sort_by_key(|(offset, _, _)| *offset);
        Ok(chunks)
    }

    /// How many bytes of `digest`'s upload are stored, from the start without a gap.
    pub fn received(&self, digest: &Digest) -> Result<u64, ArtifactError> {
        Ok(contiguous(self.chunks(digest)?).0)
    }

    /// Stores the chunk of `digest`'s upload that starts at `offset`.
    pub fn put_chunk(
        &self,
        digest: &Digest,
        offset: u64,
        bytes: Bytes,
    ) -> Result<(), ArtifactError> {
        let (store, key) = (self.store.clone(), chunk_key(digest, offset));
        self.run(async move { store.put(&key, PutPayload::from(bytes)).await.map(|_| ()) })
    }

    /// Reads the chunks of `digest`'s upload in order, hashing them into a multipart upload to
    /// its key that is completed only if they hash to `digest`; deletes the chunks either way.
    pub fn assemble(&self, digest: &Digest, size: u64) -> Result<Assembled, ArtifactError> {
        let (_, chunks) = contiguous(self.chunks(digest)?);
        let (store, key, expected) = (self.store.clone(), artifact_key(digest), *digest);
        let keys = chunks.clone();
        let assembled = self.run(async move {
            let mut upload = WriteMultipart::new(store.put_multipart(&key).await?);
            let mut hasher = sha2::Sha256::new();
            let mut written = 0u64;
            let copied: Result<(), object_store::Error> = async {
                for chunk in &keys {
                    let bytes = store.get(chunk).await?.bytes().await?;
                    hasher.update(&bytes);
                    written += bytes.len() as u64;
                    upload.wait_for_capacity(4).await?;
                    upload.put(bytes);
                }
                Ok(())
            }
            .await;
            if let Err(e) = copied {
                // No half-made multipart upload left behind in the store.
                let _ = upload.abort().await;
                return Err(e);
            }
            let actual = Digest(hasher.finalize().into());
            if actual == expected && written == size {
                upload.finish().await?;
                Ok(Assembled::Complete)
            } else {
                upload.abort().await?;
                Ok(Assembled::Mismatch(actual))
            }
        })?;
        let store = self.store.clone();
        self.run(async move {
            for chunk in &chunks {
                match store.delete(chunk).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        Ok(assembled)
    }

    /// [`ArtifactStore::size`], awaitable from any runtime.
    pub async fn stored_size(&self, digest: &Digest) -> Result<Option<u64>, ArtifactError> {
        let (store, key) = (self.store.clone(), artifact_key(digest));
        self.driver
            .start_task(async move {
                match store.head(&key).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|_| ArtifactError::Stopped(self.location.clone()))?
            .map_err(|e| self.error(e))
    }

    /// Bytes `range` of the complete artifact, read on the store's runtime (awaitable from
    /// any runtime).
    pub async fn read(&self, digest: &Digest, range: Range<u64>) -> Result<Bytes, ArtifactError> {
        let (store, key) = (self.store.clone(), artifact_key(digest));
        self.driver
            .start_task(async move { store.get_range(&key, range).await })
            .await
            .map_err(|_| ArtifactError::Stopped(self.location.clone()))?
            .map_err(|e| self.error(e))
    }
}

/// Opens the release store on `backend` with the artifacts' bytes at `location`. The artifact
/// store comes back too, for those who read artifacts (transfers to agents).
pub fn open_releases(
    backend: crate::backend::SharedBackend,
    location: &ArtifactLocation,
) -> Result<(crate::releases::ReleaseStore, Arc<ArtifactStore>), ArtifactError> {
    let artifacts = Arc::new(ArtifactStore::open(location)?);
    Ok((
        crate::releases::ReleaseStore::new(backend, artifacts.clone()),
        artifacts,
    ))
}

/// The release store keeps its artifacts here; the store's errors keep their text.
impl ArtifactBlobs for ArtifactStore {
    fn size(&self, digest: &Digest) -> Result<Option<u64>, crate::releases::ArtifactError> {
        ArtifactStore::size(self, digest).map_err(crate::releases::ArtifactError::new)
    }

    fn received(&self, digest: &Digest) -> Result<u64, crate::releases::ArtifactError> {
        ArtifactStore::received(self, digest).map_err(crate::releases::ArtifactError::new)
    }

    fn put_chunk(
        &self,
        digest: &Digest,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), crate::releases::ArtifactError> {
        ArtifactStore::put_chunk(self, digest, offset, Bytes::copy_from_slice(bytes))
            .map_err(crate::releases::ArtifactError::new)
    }

    fn assemble(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<Assembled, crate::releases::ArtifactError> {
        ArtifactStore::assemble(self, digest, size).map_err(crate::releases::ArtifactError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_read_from_the_config() {
        assert_eq!(
            ArtifactLocation::parse("s3://tern/fleet/a/"),
            Ok(ArtifactLocation::S3 {
                bucket: "tern".into(),
                prefix: "fleet/a".into()
            })
        );
        assert_eq!(
            ArtifactLocation::parse("file:///srv/tern"),
            Ok(ArtifactLocation::Dir("/srv/tern".into()))
        );
        assert!(ArtifactLocation::parse("relative/dir").is_err());
        assert!(ArtifactLocation::parse("s3:///no-bucket").is_err());
    }

    #[test]
    fn an_upload_in_chunks_completes_only_on_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = ArtifactLocation::Dir(dir.path().to_owned());
        uploads_complete_only_on_their_digest(&ArtifactStore::open(&local).expect("open"));
        if let Some(s3) = testing::shared() {
            let location = ArtifactLocation::S3 {
                bucket: s3.bucket(),
                prefix: "fleet/a".into(),
            };
            let store = ArtifactStore::open_with(&location, &s3.aws_env()).expect("open");
            uploads_complete_only_on_their_digest(&store);
        }
    }

    /// The test server checks signatures as a real S3 store does: a request signed with
    /// another secret, or not signed, is refused, and the store's error says why.
    #[test]
    fn the_s3_store_is_refused_without_the_right_secret() {
        let Some(s3) = testing::shared() else {
            return;
        };
        let location = ArtifactLocation::S3 {
            bucket: s3.bucket(),
            prefix: "fleet/a".into(),
        };
        let with = |key: &str, value: &str| {
            let mut env: Vec<(String, String)> =
                s3.aws_env().into_iter().filter(|(k, _)| k != key).collect();
            env.push((key.to_owned(), value.to_owned()));
            env
        };
        let bytes = Bytes::from_static(b"signed");
        let digest = Digest::of(&bytes);
        for (env, answer) in [
            (
                with("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
                "SignatureDoesNotMatch",
            ),
            (with("AWS_SKIP_SIGNATURE", "true"), "AccessDenied"),
        ] {
            let store = ArtifactStore::open_with(&location, &env).expect("open");
            let error = store
                .put_chunk(&digest, 0, bytes.clone())
                .expect_err("refused");
            assert!(
                matches!(
                    &error,
                    ArtifactError::Store {
                        source: object_store::Error::PermissionDenied { .. },
                        ..
                    }
                ),
                "{error}"
            );
            assert!(error.to_string().contains(answer), "{error}");
            assert!(store.received(&digest).is_err(), "a listing is refused too");
        }
        let store = ArtifactStore::open_with(&location, &s3.aws_env()).expect("open");
        store.put_chunk(&digest, 0, bytes).expect("chunk");
        assert_eq!(store.received(&digest).expect("received"), 6);
    }

    fn uploads_complete_only_on_their_digest(store: &ArtifactStore) {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&bytes);
        store
            .put_chunk(&digest, 0, Bytes::copy_from_slice(&bytes[..60_000]))
            .expect("chunk");
        assert_eq!(store.received(&digest).expect("received"), 60_000);
        assert_eq!(
            store.size(&digest).expect("size"),
            None,
            "not before it is whole"
        );
        store
            .put_chunk(&digest, 60_000, Bytes::copy_from_slice(&bytes[60_000..]))
            .expect("chunk");
        assert_eq!(
            store
                .assemble(&digest, bytes.len() as u64)
                .expect("assemble"),
            Assembled::Complete
        );
        assert_eq!(store.size(&digest).expect("size"), Some(100_000));
        assert_eq!(store.received(&digest).expect("received"), 0, "chunks gone");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let tail = runtime
            .block_on(store.read(&digest, 99_990..100_000))
            .expect("read");
        assert_eq!(tail.as_ref(), &bytes[99_990..]);

        // Other bytes under a digest: nothing is stored.
        let wrong = Digest::of(b"something else");
        store
            .put_chunk(&wrong, 0, Bytes::from_static(b"not it"))
            .expect("chunk");
        assert_eq!(
            store.assemble(&wrong, 6).expect("assemble"),
            Assembled::Mismatch(Digest::of(b"not it"))
        );
        assert_eq!(store.size(&wrong).expect("size"), None);
    }
}
