//! How the control plane's stores encode records: JSON values (fields can be added
//! without a migration) and `name\0version` keys that sort by name, then version.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A stored value that no longer parses.
#[derive(Debug, thiserror::Error)]
#[error("record `{key}` is corrupt: {source}")]
pub struct CorruptRecord {
    pub key: String,
    pub source: serde_json::Error,
}

/// The stored form of a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored records always serialize")
}

/// A record read back; `key` names it in the error, which converts into the store's own.
pub fn decode<T: DeserializeOwned, E: From<CorruptRecord>>(
    key: &[u8],
    value: &[u8],
) -> Result<T, E> {
    serde_json::from_slice(value).map_err(|source| {
        CorruptRecord {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        }
        .into()
    })
}

/// `name\0version`, version big-endian: all versions of a name are one ordered range.
pub fn versioned_key(name: &str, version: u64) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The prefix of every [`versioned_key`] of `name`.
pub fn versions_prefix(name: &str) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.push(0);
    key
}
