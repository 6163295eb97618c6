//! Secrets: generation, hashing and constant-time comparison.
//!
//! Enrollment secrets, sensor credentials and API key secrets are 32 random
//! bytes from the operating system's generator, shown once as hex and stored
//! only as SHA-256 hashes.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of API keys; the digit is the format version.
pub const API_KEY_PREFIX: &str = "PKA1.";

/// A new secret as 64 hex digits.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Checks `secret` against a stored hash.
pub fn secret_matches(secret: &str, stored: &[u8; 32]) -> bool {
    hashes_equal(&sha256(secret), stored)
}

/// Formats an API key as the one token users pass as `Bearer`.
pub fn format_api_key(id: &str, secret: &str) -> String {
    format!("{API_KEY_PREFIX}{id}.{secret}")
}

/// Splits an API key into (id, secret); `None` when it is not one.
pub fn parse_api_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.trim().strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    if id.is_empty() || secret.is_empty() {
        return None;
    }
    Some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_check_accepts_only_the_secret() {
        let secret = new_secret();
        assert_eq!(secret.len(), 64);
        let stored = sha256(&secret);
        assert!(secret_matches(&secret, &stored));
        assert!(!secret_matches(&new_secret(), &stored));
        assert!(!secret_matches("", &stored));
    }

    #[test]
    fn api_key_round_trips() {
        let token = format_api_key("abc", "def");
        assert_eq!(parse_api_key(&token), Some(("abc", "def")));
        assert_eq!(parse_api_key("Bearer x"), None);
        assert_eq!(parse_api_key("PKA1.abc"), None);
        assert_eq!(parse_api_key("PKA1..x"), None);
    }
}
