//! Ed25519 keys and signed documents (design section 2).
//!
//! Every signed thing is a [`Signed`] envelope: a typed body and the signatures over it. A
//! signature covers a domain string and the body's postcard encoding, so a signature made for
//! one kind of document can never be replayed as another, and the JSON form of a document
//! (what people read and files hold) is never what is signed: re-encoding the parsed body is.

use std::collections::BTreeSet;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 private key in PKCS#8 PEM: {0}")]
    Private(String),
    #[error("not an Ed25519 public key (SPKI PEM or 64 hex digits): {0}")]
    Public(String),
}

/// Why a signed document was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signed by {valid} trusted key(s); {required} required")]
    BelowThreshold { valid: usize, required: usize },
    #[error("a threshold of 0 accepts anything; it must be at least 1")]
    ZeroThreshold,
}

/// A public key: who may sign releases, trust roots or desired states.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Short identifier shown to people and written next to signatures: the first 8 bytes of
    /// the key's SHA-256, in hex. Verification never trusts it; it only finds the key to try.
    pub fn id(&self) -> String {
        hex::encode(&crate::sha256(&self.0)[..8])
    }

    /// Reads `NAME.pub` (SPKI PEM, as `openssl pkey -pubout` writes) or 64 hex digits.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() == 64
            && let Ok(bytes) = hex::decode(text)
            && let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Ok(Self(bytes));
        }
        VerifyingKey::from_public_key_pem(text)
            .map(|k| Self(k.to_bytes()))
            .map_err(|e| KeyError::Public(e.to_string()))
    }

    /// SPKI PEM.
    pub fn to_pem(&self) -> String {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .and_then(|k| k.to_public_key_pem(LineEnding::LF).ok())
            .unwrap_or_default()
    }

    /// Whether `signature` is this key's signature over `message` in `domain`.
    pub fn verifies(&self, domain: &str, message: &[u8], signature: &[u8]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        key.verify_strict(&domain_separated(domain, message), &signature)
            .is_ok()
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map(Self)
                .map_err(|_| serde::de::Error::custom("expected 64 hex digits"))
        } else {
            <[u8; 32]>::deserialize(d).map(Self)
        }
    }
}

/// A private signing key. Publishers hold theirs; the control plane holds only its online key.
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self(SigningKey::from_bytes(&seed))
    }

    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), readable by OpenSSL.
    pub fn to_pem(&self) -> String {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .unwrap_or_default()
    }

    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(text.trim())
            .map(Self)
            .map_err(|e| KeyError::Private(e.to_string()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` in `domain`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Vec<u8> {
        self.0
            .sign(&domain_separated(domain, message))
            .to_bytes()
            .to_vec()
    }
}

fn domain_separated(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + 1 + message.len());
    bytes.extend_from_slice(domain.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

/// A document kind that can be signed: its domain string keeps signatures of different kinds
/// apart.
pub trait Statement: Serialize + DeserializeOwned {
    const DOMAIN: &'static str;

    /// The bytes a signature covers: the postcard encoding of the body.
    fn signed_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignatureEntry {
    /// [`PublicKey::id`] of the signer (a hint; the signature itself is what counts).
    pub key_id: String,
    #[serde(with = "base64_bytes")]
    pub signature: Vec<u8>,
}

/// A body with its signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed<T> {
    pub signed: T,
    pub signatures: Vec<SignatureEntry>,
}

impl<T: Statement> Signed<T> {
    /// An envelope with no signatures yet.
    pub fn unsigned(body: T) -> Self {
        Self {
            signed: body,
            signatures: Vec::new(),
        }
    }

    /// Adds `key`'s signature (replacing an earlier one by the same key).
    pub fn sign(&mut self, key: &SecretKey) {
        let id = key.public().id();
        self.signatures.retain(|s| s.key_id != id);
        self.signatures.push(SignatureEntry {
            key_id: id,
            signature: key.sign(T::DOMAIN, &self.signed.signed_bytes()),
        });
    }

    /// The distinct keys of `trusted` that signed the body.
    pub fn signers<'k>(&self, trusted: &'k [PublicKey]) -> BTreeSet<&'k PublicKey> {
        let message = self.signed.signed_bytes();
        let mut valid = BTreeSet::new();
        for entry in &self.signatures {
            // The id is only a hint: try every trusted key it could name.
            for key in trusted.iter().filter(|k| k.id() == entry.key_id) {
                if key.verifies(T::DOMAIN, &message, &entry.signature) {
                    valid.insert(key);
                }
            }
        }
        valid
    }

    /// Checks that at least `threshold` distinct keys of `trusted` signed the body.
    pub fn verify(&self, trusted: &[PublicKey], threshold: u32) -> Result<(), SignatureError> {
        if threshold == 0 {
            return Err(SignatureError::ZeroThreshold);
        }
        let valid = self.signers(trusted).len();
        let required = threshold as usize;
        if valid < required {
            return Err(SignatureError::BelowThreshold { valid, required });
        }
        Ok(())
    }
}

/// Bytes as standard base64 in human-readable formats, as bytes otherwise.
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(serde::de::Error::custom)
        } else {
            <Vec<u8>>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
    }
    impl Statement for Note {
        const DOMAIN: &'static str = "tern test note v1";
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct OtherNote {
        text: String,
    }
    impl Statement for OtherNote {
        const DOMAIN: &'static str = "tern test other v1";
    }

    #[test]
    fn keys_round_trip_through_pem_and_hex() {
        let key = SecretKey::generate();
        let again = SecretKey::from_pem(&key.to_pem()).expect("pem");
        assert_eq!(again.public(), key.public());
        let public = key.public();
        assert_eq!(PublicKey::from_text(&public.to_pem()), Ok(public));
        assert_eq!(
            PublicKey::from_text(&hex::encode(public.as_bytes())),
            Ok(public)
        );
        assert!(SecretKey::from_pem(&public.to_pem()).is_err());
        assert!(PublicKey::from_text("not a key").is_err());
    }

    #[test]
    fn threshold_counts_distinct_trusted_signers_only() {
        let (a, b, stranger) = (
            SecretKey::generate(),
            SecretKey::generate(),
            SecretKey::generate(),
        );
        let trusted = [a.public(), b.public()];
        let mut doc = Signed::unsigned(Note { text: "hi".into() });
        doc.sign(&a);
        doc.sign(&a);
        doc.sign(&stranger);
        assert_eq!(doc.signatures.len(), 2, "re-signing replaces");
        assert!(doc.verify(&trusted, 1).is_ok());
        assert_eq!(
            doc.verify(&trusted, 2),
            Err(SignatureError::BelowThreshold {
                valid: 1,
                required: 2
            })
        );
        // A copied signature under another key's id does not count twice.
        let copied = SignatureEntry {
            key_id: b.public().id(),
            signature: doc.signatures[0].signature.clone(),
        };
        doc.signatures.push(copied);
        assert!(doc.verify(&trusted, 2).is_err());
        doc.sign(&b);
        assert!(doc.verify(&trusted, 2).is_ok());
        assert_eq!(doc.verify(&trusted, 0), Err(SignatureError::ZeroThreshold));
    }

    #[test]
    fn signatures_cover_the_body_and_its_domain() {
        let key = SecretKey::generate();
        let mut doc = Signed::unsigned(Note {
            text: "pay 1".into(),
        });
        doc.sign(&key);
        let mut tampered = doc.clone();
        tampered.signed.text = "pay 9".into();
        assert!(tampered.verify(&[key.public()], 1).is_err());
        // The same bytes signed in another domain do not verify here.
        let other = Signed {
            signed: OtherNote {
                text: "pay 1".into(),
            },
            signatures: doc.signatures.clone(),
        };
        assert!(other.verify(&[key.public()], 1).is_err());
        let json = serde_json::to_string(&doc).expect("json");
        let back: Signed<Note> = serde_json::from_str(&json).expect("parse");
        assert!(back.verify(&[key.public()], 1).is_ok());
    }
}
