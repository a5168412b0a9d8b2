//! Releases: the signed statement for one artifact, and the rules an agent enforces before it
//! parses a single byte of that artifact (design section 2).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::signing::{SignatureError, Signed, Statement};
use crate::trust::TrustRoot;

/// Most annotations one release may carry, and their longest key or value.
pub const MAX_ANNOTATIONS: usize = 32;
pub const MAX_ANNOTATION_LEN: usize = 256;

/// SHA-256 of an artifact: `sha256:<hex>` in text, 32 bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(crate::sha256(bytes))
    }

    /// Length and digest of everything `reader` yields, read in 1 MiB pieces.
    pub fn of_reader(reader: impl std::io::Read) -> std::io::Result<(u64, Self)> {
        let mut hasher = Hasher::default();
        hasher.update_from(reader)?;
        Ok(hasher.finish())
    }

    /// The hex digits alone (file names, URLs).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }

    /// Reads `sha256:<hex>` or bare hex.
    pub fn parse(text: &str) -> Option<Self> {
        let hex_digits = text.strip_prefix("sha256:").unwrap_or(text);
        let bytes = hex::decode(hex_digits).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Self)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Self::parse(&text).ok_or_else(|| serde::de::Error::custom("expected sha256:<64 hex>"))
        } else {
            <[u8; 32]>::deserialize(d).map(Self)
        }
    }
}

/// A digest computed piece by piece (downloads hash as the bytes arrive).
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    sha: sha2::Sha256,
    len: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Adds everything `reader` yields.
    pub fn update_from(&mut self, mut reader: impl std::io::Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf)? {
                0 => return Ok(()),
                n => self.update(&buf[..n]),
            }
        }
    }

    /// Length and digest of what was added.
    pub fn finish(self) -> (u64, Digest) {
        use sha2::Digest as _;
        (self.len, Digest(self.sha.finalize().into()))
    }
}

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A WebAssembly component of the `tern:pipeline/plugin` world.
    Plugin,
    /// An ONNX model.
    Model,
}

impl std::fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArtifactKind::Plugin => "plugin",
            ArtifactKind::Model => "model",
        })
    }
}

/// The statement a publisher signs for one artifact.
///
/// No field is skipped when absent: the postcard encoding, which signatures cover, must decode
/// to the same value on every agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Release {
    pub name: String,
    pub kind: ArtifactKind,
    pub version: u64,
    pub digest: Digest,
    /// Length of the artifact in bytes; agents stop reading there.
    pub size: u64,
    /// Unix milliseconds when it was signed.
    pub created_ms: u64,
    /// Unix milliseconds after which no agent accepts it.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Statement for Release {
    const DOMAIN: &'static str = "tern release v1";
}

/// A release with its publishers' signatures: the content of a `FILE.release`.
pub type SignedRelease = Signed<Release>;

impl Release {
    /// `name:version`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// The highest version of a release name an agent has accepted, and the content it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFloor {
    pub version: u64,
    pub digest: Digest,
}

/// The clocks a release's expiry is checked against: the agent's own and the control plane's
/// signed time, so that neither a slow local clock nor a lying control plane extends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clocks {
    pub local_ms: u64,
    pub control_plane_ms: u64,
}

/// Why a release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release {reference}: {source}")]
    Signature {
        reference: String,
        source: SignatureError,
    },
    #[error("release {reference}: invalid: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("release {reference} is below the version floor {floor} of `{name}` on this agent")]
    BelowFloor {
        reference: String,
        name: String,
        floor: u64,
    },
    #[error("release {reference} names other content than the {reference} already accepted")]
    Equivocation { reference: String },
    #[error("release {reference} expired at {expires_ms} (unix ms)")]
    Expired { reference: String, expires_ms: u64 },
    #[error("artifact of {reference} is {actual} bytes, the release says {expected}")]
    Size {
        reference: String,
        expected: u64,
        actual: u64,
    },
    #[error("artifact of {reference} has digest {actual}, the release says {expected}")]
    Digest {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
}

impl SignedRelease {
    /// The checks of the statement alone, in the order of design section 2: signatures from a
    /// threshold of trusted publishers, the version floor, expiry. Nothing of the artifact is
    /// needed, so an agent runs them before it fetches a byte.
    pub fn check(
        &self,
        trust: &TrustRoot,
        floor: Option<VersionFloor>,
        clocks: Clocks,
    ) -> Result<(), ReleaseError> {
        self.check_trusted(trust, floor)?;
        let release = &self.signed;
        if let Some(expires_ms) = release.expires_ms
            && clocks.local_ms.max(clocks.control_plane_ms) >= expires_ms
        {
            return Err(ReleaseError::Expired {
                reference: release.reference(),
                expires_ms,
            });
        }
        Ok(())
    }

    /// The checks without expiry: what a release that already serves must keep passing when
    /// the trust root or the floors change (an agent keeps serving a release that expired
    /// after it was accepted).
    pub fn check_trusted(
        &self,
        trust: &TrustRoot,
        floor: Option<VersionFloor>,
    ) -> Result<(), ReleaseError> {
        let release = &self.signed;
        let reference = release.reference();
        release.validate()?;
        self.verify(&trust.publishers, trust.threshold)
            .map_err(|source| ReleaseError::Signature {
                reference: reference.clone(),
                source,
            })?;
        if let Some(floor) = floor {
            if release.version < floor.version {
                return Err(ReleaseError::BelowFloor {
                    reference,
                    name: release.name.clone(),
                    floor: floor.version,
                });
            }
            if release.version == floor.version && release.digest != floor.digest {
                return Err(ReleaseError::Equivocation { reference });
            }
        }
        Ok(())
    }
}

impl Release {
    /// Shape checks that need no key: a valid name and bounded annotations.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let invalid = |reason: String| ReleaseError::Invalid {
            reference: self.reference(),
            reason,
        };
        if !crate::labels::valid_name(&self.name) {
            return Err(invalid(
                "name must be 1-63 characters of a-z, 0-9, `-`, `.`, `_`".into(),
            ));
        }
        if self.annotations.len() > MAX_ANNOTATIONS
            || self
                .annotations
                .iter()
                .any(|(k, v)| k.len() > MAX_ANNOTATION_LEN || v.len() > MAX_ANNOTATION_LEN)
        {
            return Err(invalid(format!(
                "at most {MAX_ANNOTATIONS} annotations of at most {MAX_ANNOTATION_LEN} bytes"
            )));
        }
        Ok(())
    }

    /// Checks downloaded bytes against the statement: length first, then digest.
    pub fn check_content(&self, bytes: &[u8]) -> Result<(), ReleaseError> {
        self.check_digest(bytes.len() as u64, Digest::of(bytes))
    }

    /// Like [`Self::check_content`], for content hashed while it streamed.
    pub fn check_digest(&self, size: u64, digest: Digest) -> Result<(), ReleaseError> {
        if size != self.size {
            return Err(ReleaseError::Size {
                reference: self.reference(),
                expected: self.size,
                actual: size,
            });
        }
        if digest != self.digest {
            return Err(ReleaseError::Digest {
                reference: self.reference(),
                expected: self.digest,
                actual: digest,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SecretKey;
    use crate::trust::tests::root_with;

    fn release(version: u64, bytes: &[u8]) -> Release {
        Release {
            name: "image-prep".into(),
            kind: ArtifactKind::Plugin,
            version,
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            created_ms: 1_000,
            expires_ms: None,
            annotations: BTreeMap::new(),
        }
    }

    const NOW: Clocks = Clocks {
        local_ms: 5_000,
        control_plane_ms: 5_000,
    };

    #[test]
    fn accepts_a_release_signed_by_enough_publishers() {
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let trust = root_with(&[a.public(), b.public()], 2);
        let mut signed = Signed::unsigned(release(3, b"wasm"));
        signed.sign(&a);
        assert!(matches!(
            signed.check(&trust, None, NOW),
            Err(ReleaseError::Signature { .. })
        ));
        signed.sign(&b);
        signed.check(&trust, None, NOW).expect("two of two");
        signed.signed.check_content(b"wasm").expect("content");
    }

    #[test]
    fn rejects_release_signed_by_unknown_key() {
        let (a, stranger) = (SecretKey::generate(), SecretKey::generate());
        let trust = root_with(&[a.public()], 1);
        let mut signed = Signed::unsigned(release(3, b"wasm"));
        signed.sign(&stranger);
        let e = signed.check(&trust, None, NOW).expect_err("unknown key");
        assert!(e.to_string().contains("signed by 0 trusted key"), "{e}");
    }

    #[test]
    fn rejects_release_below_version_floor_and_equivocation() {
        let a = SecretKey::generate();
        let trust = root_with(&[a.public()], 1);
        let floor = VersionFloor {
            version: 3,
            digest: Digest::of(b"v3"),
        };
        let mut old = Signed::unsigned(release(2, b"v2"));
        old.sign(&a);
        assert!(matches!(
            old.check(&trust, Some(floor), NOW),
            Err(ReleaseError::BelowFloor { floor: 3, .. })
        ));
        let mut same = Signed::unsigned(release(3, b"v3"));
        same.sign(&a);
        same.check(&trust, Some(floor), NOW)
            .expect("the accepted release again");
        let mut other = Signed::unsigned(release(3, b"evil"));
        other.sign(&a);
        assert!(matches!(
            other.check(&trust, Some(floor), NOW),
            Err(ReleaseError::Equivocation { .. })
        ));
    }

    #[test]
    fn rejects_expired_release_by_either_clock() {
        let a = SecretKey::generate();
        let trust = root_with(&[a.public()], 1);
        let mut r = release(1, b"x");
        r.expires_ms = Some(4_000);
        let mut signed = Signed::unsigned(r);
        signed.sign(&a);
        let slow_local = Clocks {
            local_ms: 1_000,
            control_plane_ms: 5_000,
        };
        assert!(matches!(
            signed.check(&trust, None, slow_local),
            Err(ReleaseError::Expired { .. })
        ));
        let early = Clocks {
            local_ms: 3_000,
            control_plane_ms: 3_000,
        };
        signed.check(&trust, None, early).expect("not yet expired");
    }

    #[test]
    fn rejects_tampered_content_and_wrong_size() {
        let r = release(1, b"model bytes");
        assert!(matches!(
            r.check_content(b"model bytez"),
            Err(ReleaseError::Digest { .. })
        ));
        assert!(matches!(
            r.check_content(b"model bytes and more"),
            Err(ReleaseError::Size { .. })
        ));
    }

    #[test]
    fn release_files_are_readable_json() {
        let a = SecretKey::generate();
        let mut signed = Signed::unsigned(release(7, b"x"));
        signed.sign(&a);
        let json = serde_json::to_string_pretty(&signed).expect("json");
        assert!(json.contains("\"digest\": \"sha256:"), "{json}");
        let back: SignedRelease = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, signed);
        let wire = postcard::to_stdvec(&signed).expect("postcard");
        let back: SignedRelease = postcard::from_bytes(&wire).expect("decode");
        assert_eq!(back, signed);
        assert!(
            serde_json::from_str::<SignedRelease>(&json.replace("\"size\"", "\"sizes\"")).is_err()
        );
    }
}
