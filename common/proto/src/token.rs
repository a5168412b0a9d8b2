//! One-time enrollment tokens.
//!
//! A token is `tern1.` followed by the unpadded base64url encoding of 80 bytes:
//! a 16-byte id, a 32-byte secret and the SHA-256 of the control plane's CA certificate.
//! The control plane stores only the id and a hash of the secret; the agent uses the CA hash to
//! authenticate the control plane before it sends anything (no trust on first use).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "tern1.";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const HASH_LEN: usize = 32;
const RAW_LEN: usize = ID_LEN + SECRET_LEN + HASH_LEN;

/// A decoded enrollment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// Public identifier of the token (what the control plane indexes).
    pub id: [u8; ID_LEN],
    /// The secret that proves possession.
    pub secret: [u8; SECRET_LEN],
    /// SHA-256 of the DER of the control plane's CA certificate.
    pub ca_sha256: [u8; HASH_LEN],
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("id", &self.id_hex())
            .field("secret", &"<redacted>")
            .field("ca_sha256", &hex::encode(self.ca_sha256))
            .finish()
    }
}

/// Why a string is not a valid token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a Tern enrollment token (expected it to start with `{PREFIX}`)")]
    Prefix,
    #[error("enrollment token is not valid base64url")]
    Encoding,
    #[error("enrollment token has {got} bytes, expected {RAW_LEN}")]
    Length { got: usize },
}

impl EnrollmentToken {
    /// The token id as lowercase hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// SHA-256 of the secret: what the control plane stores.
    pub fn secret_sha256(&self) -> [u8; 32] {
        crate::sha256(&self.secret)
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Encoding)?;
        let raw: [u8; RAW_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| TokenError::Length { got: raw.len() })?;
        let mut token = EnrollmentToken {
            id: [0; ID_LEN],
            secret: [0; SECRET_LEN],
            ca_sha256: [0; HASH_LEN],
        };
        token.id.copy_from_slice(&raw[..ID_LEN]);
        token
            .secret
            .copy_from_slice(&raw[ID_LEN..ID_LEN + SECRET_LEN]);
        token.ca_sha256.copy_from_slice(&raw[ID_LEN + SECRET_LEN..]);
        Ok(token)
    }
}

impl std::fmt::Display for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = [0u8; RAW_LEN];
        raw[..ID_LEN].copy_from_slice(&self.id);
        raw[ID_LEN..ID_LEN + SECRET_LEN].copy_from_slice(&self.secret);
        raw[ID_LEN + SECRET_LEN..].copy_from_slice(&self.ca_sha256);
        write!(f, "{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

impl std::str::FromStr for EnrollmentToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_hides_secret_in_debug() {
        let token = EnrollmentToken {
            id: [1; 16],
            secret: [2; 32],
            ca_sha256: [3; 32],
        };
        let text = token.to_string();
        assert!(text.starts_with("tern1."));
        assert_eq!(EnrollmentToken::parse(&text), Ok(token.clone()));
        let shown = format!("{token:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            !shown.contains("2, 2") && !shown.contains("0202"),
            "secret leaked: {shown}"
        );
    }

    #[test]
    fn rejects_foreign_and_truncated_tokens() {
        assert_eq!(EnrollmentToken::parse("hello"), Err(TokenError::Prefix));
        assert_eq!(
            EnrollmentToken::parse("tern1.@@@"),
            Err(TokenError::Encoding)
        );
        assert_eq!(
            EnrollmentToken::parse("tern1.AAAA"),
            Err(TokenError::Length { got: 3 })
        );
    }
}
