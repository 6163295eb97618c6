//! Installation keys.
//!
//! Format: the prefix `PK1.` followed by unpadded base64url of a JSON object
//! with these members, all strings:
//!
//! | member | meaning |
//! | --- | --- |
//! | `u` | server URL for sensors, `https://host:port` |
//! | `o` | organisation id (UUID) |
//! | `k` | installation key id (UUID) |
//! | `s` | enrollment secret, 64 hex digits |
//! | `f` | SHA-256 of the server certificate (DER), 64 hex digits; the sensor pins it |
//!
//! The whole key is one token that survives shells, YAML and Kubernetes
//! Secrets without quoting.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Prefix of every installation key; the digit is the format version.
pub const PREFIX: &str = "PK1.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationKey {
    #[serde(rename = "u")]
    pub url: String,
    #[serde(rename = "o")]
    pub org_id: String,
    #[serde(rename = "k")]
    pub key_id: String,
    #[serde(rename = "s")]
    pub secret: String,
    #[serde(rename = "f")]
    pub cert_sha256: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("installation key is empty")]
    Empty,
    #[error("installation key does not start with {PREFIX:?}; copy the whole key printed by `picket-server key create`")]
    Prefix,
    #[error("installation key is not valid base64url after {PREFIX:?}; it may have been cut or changed when copied")]
    Base64,
    #[error("installation key payload is not the expected JSON object: {0}")]
    Json(String),
    #[error("installation key field {field} is invalid: {reason}")]
    Field {
        field: &'static str,
        reason: &'static str,
    },
}

impl InstallationKey {
    /// Encodes the key as the one-token string users copy.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("key fields are plain strings");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses and validates a key string. Surrounding whitespace is ignored,
    /// because keys often arrive from files and Secrets with a newline.
    pub fn decode(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let body = text.strip_prefix(PREFIX).ok_or(KeyError::Prefix)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| KeyError::Base64)?;
        let key: InstallationKey =
            serde_json::from_slice(&json).map_err(|e| KeyError::Json(e.to_string()))?;
        key.validate()?;
        Ok(key)
    }

    fn validate(&self) -> Result<(), KeyError> {
        if !(self.url.starts_with("https://") && self.url.len() > "https://".len()) {
            return Err(KeyError::Field {
                field: "u",
                reason: "must be an https:// URL",
            });
        }
        if uuid::Uuid::parse_str(&self.org_id).is_err() {
            return Err(KeyError::Field {
                field: "o",
                reason: "must be a UUID",
            });
        }
        if uuid::Uuid::parse_str(&self.key_id).is_err() {
            return Err(KeyError::Field {
                field: "k",
                reason: "must be a UUID",
            });
        }
        if !is_hex(&self.secret, 64) {
            return Err(KeyError::Field {
                field: "s",
                reason: "must be 64 hex digits",
            });
        }
        if !is_hex(&self.cert_sha256, 64) {
            return Err(KeyError::Field {
                field: "f",
                reason: "must be 64 hex digits",
            });
        }
        Ok(())
    }
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InstallationKey {
        InstallationKey {
            url: "https://127.0.0.1:4443".into(),
            org_id: "6f1c2a43-6f3e-4c43-9a43-2f7f1b0d7a11".into(),
            key_id: "0b9d8f7e-1c2d-4e3f-8a9b-0c1d2e3f4a5b".into(),
            secret: "ab".repeat(32),
            cert_sha256: "cd".repeat(32),
        }
    }

    #[test]
    fn key_round_trips() {
        let key = sample();
        assert_eq!(InstallationKey::decode(&key.encode()).unwrap(), key);
        assert_eq!(
            InstallationKey::decode(&format!("  {}\n", key.encode())).unwrap(),
            key
        );
    }

    #[test]
    fn malformed_keys_are_rejected_with_reason() {
        assert_eq!(InstallationKey::decode(""), Err(KeyError::Empty));
        assert_eq!(InstallationKey::decode("hello"), Err(KeyError::Prefix));
        assert_eq!(InstallationKey::decode("PK1.***"), Err(KeyError::Base64));
        let encoded = sample().encode();
        let cut = &encoded[..encoded.len() - 10];
        assert!(InstallationKey::decode(cut).is_err());
        let mut bad = sample();
        bad.secret = "zz".into();
        assert!(matches!(
            InstallationKey::decode(&bad.encode()),
            Err(KeyError::Field { field: "s", .. })
        ));
    }
}
