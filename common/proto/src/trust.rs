//! The trust root: which publisher keys an agent trusts, how many must sign a release, and which
//! offline root keys may replace the trust root itself (design section 2).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::signing::{PublicKey, SecretKey, SignatureError, Signed, Statement};

/// Most keys of either kind one trust root lists.
pub const MAX_KEYS: usize = 64;

/// The body of a trust root document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustRoot {
    /// Increases with every rotation; an agent accepts only a higher one.
    pub version: u64,
    /// Offline keys that sign trust roots: this one, and the next.
    pub root_keys: Vec<PublicKey>,
    /// Distinct root keys that must sign the next trust root.
    pub root_threshold: u32,
    /// Keys that sign releases.
    pub publishers: Vec<PublicKey>,
    /// Distinct publisher keys that must sign each release.
    pub threshold: u32,
    /// Unix milliseconds when it was made.
    pub created_ms: u64,
    /// Unix milliseconds after which agents accept no new release under it (what they run
    /// keeps running); they warn from [`EXPIRY_WARNING_MS`] before. `None`: it does not expire.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// How long before its expiry an agent warns that its trust root expires.
pub const EXPIRY_WARNING_MS: u64 = 30 * 24 * 3600 * 1000;

impl Statement for TrustRoot {
    const DOMAIN: &'static str = "tern trust root v1";

    /// The fields of the first version, then the expiry only when there is one: documents
    /// signed before trust roots could expire still verify, and an expiry cannot be removed
    /// from a signed one.
    fn signed_bytes(&self) -> Vec<u8> {
        let first = (
            self.version,
            &self.root_keys,
            self.root_threshold,
            &self.publishers,
            self.threshold,
            self.created_ms,
        );
        let mut bytes = postcard::to_stdvec(&first).unwrap_or_default();
        if let Some(expires_ms) = self.expires_ms {
            bytes.extend(postcard::to_stdvec(&expires_ms).unwrap_or_default());
        }
        bytes
    }
}

/// Where a trust root stands against the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry, or further away than the warning period.
    Valid,
    /// Expires within the warning period.
    Soon { expires_ms: u64 },
    /// Expired: no new release is accepted under it.
    Expired { expires_ms: u64 },
}

impl TrustRoot {
    /// Its state at `now_ms`.
    pub fn expiry(&self, now_ms: u64) -> Expiry {
        match self.expires_ms {
            Some(expires_ms) if now_ms >= expires_ms => Expiry::Expired { expires_ms },
            Some(expires_ms) if now_ms.saturating_add(EXPIRY_WARNING_MS) >= expires_ms => {
                Expiry::Soon { expires_ms }
            }
            _ => Expiry::Valid,
        }
    }
}

/// A trust root with its root keys' signatures: the content of `trust-root.json`.
pub type SignedTrustRoot = Signed<TrustRoot>;

/// Why a trust root was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("trust root is invalid: {0}")]
    Invalid(String),
    #[error("trust root version {offered} is not newer than the pinned version {current}")]
    NotNewer { current: u64, offered: u64 },
    #[error("trust root version {version} differs from the pinned document of the same version")]
    Conflict { version: u64 },
    #[error("trust root version {version} is not signed by the current root keys: {source}")]
    NotSignedByCurrentRoot {
        version: u64,
        source: SignatureError,
    },
    #[error("trust root version {version} is not signed by its own root keys: {source}")]
    NotSelfSigned {
        version: u64,
        source: SignatureError,
    },
    /// Each root is checked against the one before it: an agent behind by several rotations
    /// takes the chain of them, never a jump (old root keys cannot sign a root far ahead).
    #[error(
        "trust root version {offered} skips versions: the pinned version is {current}, so only {} may follow it",
        current + 1
    )]
    SkipsVersions { current: u64, offered: u64 },
}

fn distinct(keys: &[PublicKey], what: &str, threshold: u32) -> Result<(), TrustError> {
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(TrustError::Invalid(format!(
            "expected 1 to {MAX_KEYS} {what} keys, got {}",
            keys.len()
        )));
    }
    if keys.iter().collect::<BTreeSet<_>>().len() != keys.len() {
        return Err(TrustError::Invalid(format!("a {what} key is listed twice")));
    }
    if threshold == 0 || threshold as usize > keys.len() {
        return Err(TrustError::Invalid(format!(
            "{what} threshold {threshold} must be between 1 and the {} {what} key(s)",
            keys.len()
        )));
    }
    Ok(())
}

impl TrustRoot {
    /// Shape checks: keys present and distinct, thresholds reachable.
    pub fn validate(&self) -> Result<(), TrustError> {
        distinct(&self.root_keys, "root", self.root_threshold)?;
        distinct(&self.publishers, "publisher", self.threshold)
    }
}

/// What accepting a trust root would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustUpdate {
    /// The document is the one already pinned.
    Unchanged,
    /// The document replaces the pinned one (or is the first).
    Accepted,
}

impl SignedTrustRoot {
    /// The smallest trust root: one root key, which signs it, and one publisher key, each
    /// enough alone, made at `created_ms` and never expiring.
    pub fn single_keys(
        version: u64,
        root: &SecretKey,
        publisher: PublicKey,
        created_ms: u64,
    ) -> Self {
        let mut doc = Signed::unsigned(TrustRoot {
            version,
            root_keys: vec![root.public()],
            root_threshold: 1,
            publishers: vec![publisher],
            threshold: 1,
            created_ms,
            expires_ms: None,
        });
        doc.sign(root);
        doc
    }

    /// Decides whether this document may be pinned, given the one pinned now (`None`: the
    /// first, trusted on first use, which must be signed by a threshold of its own root keys).
    /// A successor needs a higher version and a threshold of the *current* root keys, so a
    /// control plane that forges one gets nowhere.
    pub fn accept(&self, current: Option<&SignedTrustRoot>) -> Result<TrustUpdate, TrustError> {
        let offered = &self.signed;
        offered.validate()?;
        self.verify(&offered.root_keys, offered.root_threshold)
            .map_err(|source| TrustError::NotSelfSigned {
                version: offered.version,
                source,
            })?;
        let Some(current) = current else {
            return Ok(TrustUpdate::Accepted);
        };
        let pinned = &current.signed;
        if offered.version == pinned.version {
            return if offered == pinned {
                Ok(TrustUpdate::Unchanged)
            } else {
                Err(TrustError::Conflict {
                    version: offered.version,
                })
            };
        }
        if offered.version < pinned.version {
            return Err(TrustError::NotNewer {
                current: pinned.version,
                offered: offered.version,
            });
        }
        if offered.version != pinned.version + 1 {
            return Err(TrustError::SkipsVersions {
                current: pinned.version,
                offered: offered.version,
            });
        }
        self.verify(&pinned.root_keys, pinned.root_threshold)
            .map_err(|source| TrustError::NotSignedByCurrentRoot {
                version: offered.version,
                source,
            })?;
        Ok(TrustUpdate::Accepted)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::signing::SecretKey;

    /// A trust root with the given publishers and a throwaway root key.
    pub(crate) fn root_with(publishers: &[PublicKey], threshold: u32) -> TrustRoot {
        TrustRoot {
            version: 1,
            root_keys: vec![SecretKey::generate().public()],
            root_threshold: 1,
            publishers: publishers.to_vec(),
            threshold,
            created_ms: 0,
            expires_ms: None,
        }
    }

    fn signed(body: TrustRoot, keys: &[&SecretKey]) -> SignedTrustRoot {
        let mut doc = Signed::unsigned(body);
        for key in keys {
            doc.sign(key);
        }
        doc
    }

    #[test]
    fn first_trust_root_must_be_self_signed() {
        let (root, other, publisher) = (
            SecretKey::generate(),
            SecretKey::generate(),
            SecretKey::generate(),
        );
        let body = TrustRoot {
            root_keys: vec![root.public()],
            ..root_with(&[publisher.public()], 1)
        };
        assert_eq!(
            signed(body.clone(), &[&root]).accept(None),
            Ok(TrustUpdate::Accepted)
        );
        assert!(matches!(
            signed(body, &[&other]).accept(None),
            Err(TrustError::NotSelfSigned { .. })
        ));
    }

    #[test]
    fn rejects_trust_root_not_signed_by_current_root() {
        let (root, attacker, publisher) = (
            SecretKey::generate(),
            SecretKey::generate(),
            SecretKey::generate(),
        );
        let v1 = TrustRoot {
            root_keys: vec![root.public()],
            ..root_with(&[publisher.public()], 1)
        };
        let pinned = signed(v1.clone(), &[&root]);
        // An attacker's self-signed v2 that swaps in its own keys.
        let forged = signed(
            TrustRoot {
                version: 2,
                root_keys: vec![attacker.public()],
                publishers: vec![attacker.public()],
                ..v1.clone()
            },
            &[&attacker],
        );
        assert!(matches!(
            forged.accept(Some(&pinned)),
            Err(TrustError::NotSignedByCurrentRoot { .. })
        ));
        // A rotation to a new root key, signed by the old root and the new one.
        let new_root = SecretKey::generate();
        let rotated = signed(
            TrustRoot {
                version: 2,
                root_keys: vec![new_root.public()],
                ..v1.clone()
            },
            &[&root, &new_root],
        );
        assert_eq!(rotated.accept(Some(&pinned)), Ok(TrustUpdate::Accepted));
        assert_eq!(pinned.accept(Some(&pinned)), Ok(TrustUpdate::Unchanged));
        assert!(matches!(
            pinned.accept(Some(&rotated)),
            Err(TrustError::NotNewer {
                current: 2,
                offered: 1
            })
        ));
        let same_version = signed(
            TrustRoot {
                threshold: 1,
                created_ms: 9,
                ..v1
            },
            &[&root],
        );
        assert!(matches!(
            same_version.accept(Some(&pinned)),
            Err(TrustError::Conflict { version: 1 })
        ));
    }

    #[test]
    fn a_root_that_skips_versions_is_refused_and_the_chain_is_taken_one_by_one() {
        let keys: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate()).collect();
        let publisher = SecretKey::generate();
        // Version N has root key N-1; each rotation is signed by the old root and the new one.
        let chain: Vec<SignedTrustRoot> = (1..=4u64)
            .map(|version| {
                let key = &keys[version as usize - 1];
                let body = TrustRoot {
                    version,
                    root_keys: vec![key.public()],
                    ..root_with(&[publisher.public()], 1)
                };
                let mut signers = vec![key];
                if version > 1 {
                    signers.push(&keys[version as usize - 2]);
                }
                signed(body, &signers)
            })
            .collect();
        // Version 3 signed by version 1's keys too: still a jump.
        let mut jump = chain[2].clone();
        jump.sign(&keys[0]);
        assert_eq!(
            jump.accept(Some(&chain[0])),
            Err(TrustError::SkipsVersions {
                current: 1,
                offered: 3
            })
        );
        let mut pinned = chain[0].clone();
        for next in &chain[1..] {
            assert_eq!(next.accept(Some(&pinned)), Ok(TrustUpdate::Accepted));
            pinned = next.clone();
        }
        assert_eq!(pinned.signed.version, 4);
    }

    #[test]
    fn rejects_unreachable_thresholds_and_duplicate_keys() {
        let k = SecretKey::generate().public();
        let mut body = root_with(&[k], 2);
        assert!(matches!(body.validate(), Err(TrustError::Invalid(_))));
        body.threshold = 1;
        body.publishers = vec![k, k];
        assert!(matches!(body.validate(), Err(TrustError::Invalid(_))));
        body.publishers = vec![k];
        body.root_threshold = 0;
        assert!(matches!(body.validate(), Err(TrustError::Invalid(_))));
    }

    #[test]
    fn an_expiry_is_signed_and_documents_without_one_verify_as_before() {
        let (root, publisher) = (SecretKey::generate(), SecretKey::generate());
        let body = TrustRoot {
            root_keys: vec![root.public()],
            ..root_with(&[publisher.public()], 1)
        };
        // Without an expiry the signed bytes are the first version's encoding.
        let first_version = postcard::to_stdvec(&(
            body.version,
            &body.root_keys,
            body.root_threshold,
            &body.publishers,
            body.threshold,
            body.created_ms,
        ))
        .expect("encodes");
        assert_eq!(body.signed_bytes(), first_version);
        let expiring = signed(
            TrustRoot {
                expires_ms: Some(EXPIRY_WARNING_MS + 1_000),
                ..body.clone()
            },
            &[&root],
        );
        assert_eq!(expiring.accept(None), Ok(TrustUpdate::Accepted));
        // Removing (or moving) the expiry breaks the signature.
        let mut stripped = expiring.clone();
        stripped.signed.expires_ms = None;
        assert!(matches!(
            stripped.accept(None),
            Err(TrustError::NotSelfSigned { .. })
        ));
        stripped.signed.expires_ms = Some(u64::MAX);
        assert!(matches!(
            stripped.accept(None),
            Err(TrustError::NotSelfSigned { .. })
        ));
        let t = &expiring.signed;
        let at = EXPIRY_WARNING_MS + 1_000;
        assert_eq!(t.expiry(999), Expiry::Valid);
        assert_eq!(t.expiry(1_000), Expiry::Soon { expires_ms: at });
        assert_eq!(t.expiry(at), Expiry::Expired { expires_ms: at });
        assert_eq!(body.expiry(u64::MAX), Expiry::Valid);
    }
}
