//! Users' API keys: generated secrets that are shown once and stored only as their SHA-256.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Secrets start with this, so a leaked key is recognisable by secret scanners and in support
/// requests, and cannot be mistaken for the provider's key.
pub const KEY_PREFIX: &str = "vas_";

/// A user's API key as stored: only the SHA-256 of the secret, never the secret itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The first characters of the secret, shown in listings so a user can tell keys apart.
    pub prefix: String,
    /// Hex SHA-256 of the whole secret. Keys are 256 random bits, so a plain hash (no salt, no
    /// slow KDF) is enough: there is nothing to brute-force.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// A fresh key for `user_id`: the record to store and the secret to show once.
    pub fn generate(user_id: &str, name: &str, now: DateTime<Utc>) -> (ApiKey, String) {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = format!("{KEY_PREFIX}{}", hex(&raw));
        let key = ApiKey {
            id: super::new_id(),
            user_id: user_id.to_string(),
            name: name.to_string(),
            prefix: secret.chars().take(KEY_PREFIX.len() + 8).collect(),
            hash: hash_secret(&secret),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        (key, secret)
    }

    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_random_and_stored_hashed() {
        let now = Utc::now();
        let (a, sa) = ApiKey::generate("u", "ci", now);
        let (b, sb) = ApiKey::generate("u", "ci", now);
        assert_ne!(sa, sb);
        assert!(sa.starts_with(KEY_PREFIX) && sa.len() == KEY_PREFIX.len() + 64);
        assert_eq!(a.hash, hash_secret(&sa));
        assert_ne!(a.hash, b.hash);
        assert!(!a.hash.contains(&sa[KEY_PREFIX.len()..]));
        assert!(sa.starts_with(&a.prefix) && a.prefix.len() == 12);
    }
}
