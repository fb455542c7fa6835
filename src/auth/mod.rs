//! Who is calling: API keys in, a [`Principal`] out. What a principal may do is decided in the
//! service layer (`service::access`), once for REST, GraphQL and subscriptions alike.
//!
//! Keys travel as `Authorization: Bearer <key>` on HTTP and in the `connection_init` payload on
//! WebSockets. The admin key comes from `ADMIN_API_KEY`; user keys are made by the admin and
//! stored as SHA-256 hashes. Without `ADMIN_API_KEY` auth is off: the server only starts bound to
//! loopback, and a request without a key acts as the admin (a request with a user key still acts
//! as that user, so clients behave the same in both modes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::cache::TtlCache;
use crate::domain::api_key::{hash_secret, KEY_PREFIX};
use crate::domain::ApiKey;
use crate::error::AppError;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator: the admin key, or any caller while auth is off.
    Admin,
    /// A user's key: sees and changes only that user and its tasks.
    User { user_id: String, key_id: String },
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// The user a user key belongs to; `None` for the admin.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::User { user_id, .. } => Some(user_id),
        }
    }

    /// What logs and metrics call this caller (never the secret).
    pub fn label(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::User { key_id, .. } => key_label(key_id),
        }
    }
}

/// The label of a user key's principal.
pub fn key_label(key_id: &str) -> String {
    format!("key:{key_id}")
}

/// How long a looked-up key is trusted before the store is asked again. A revocation through
/// this process takes effect at once; through another process within this time.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// `last_used_at` is written at most this often per key and process: a write per request would
/// double the store's write load for nothing anyone reads at that precision.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Bounds the cache against a flood of random keys (each miss is one store lookup anyway).
const CACHE_MAX: usize = 10_000;

pub struct Authenticator {
    admin_hash: Option<[u8; 32]>,
    store: Arc<dyn Store>,
    /// Keys (or their absence) by hash.
    cache: TtlCache<Option<ApiKey>>,
    touched: Mutex<HashMap<String, Instant>>,
}

impl Authenticator {
    pub fn new(admin_key: Option<&str>, store: Arc<dyn Store>) -> Authenticator {
        Authenticator {
            admin_hash: admin_key.map(|k| Sha256::digest(k.as_bytes()).into()),
            store,
            cache: TtlCache::new(CACHE_TTL, CACHE_MAX),
            touched: Mutex::default(),
        }
    }

    /// Auth is on when an admin key is configured.
    pub fn enabled(&self) -> bool {
        self.admin_hash.is_some()
    }

    /// Resolves an `Authorization` header value (or the same text from a WebSocket
    /// `connection_init`). `None` is a request without credentials.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AppError> {
        let Some(raw) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return if self.enabled() {
                Err(AppError::Unauthenticated(
                    "an API key is required: send Authorization: Bearer <key>".into(),
                ))
            } else {
                Ok(Principal::Admin)
            };
        };
        let secret = bearer(raw).ok_or_else(|| {
            AppError::Unauthenticated("the Authorization header must be Bearer <key>".into())
        })?;
        if let Some(admin) = &self.admin_hash {
            let given: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            // Compare digests in constant time: no early exit on the first differing byte.
            if given
                .iter()
                .zip(admin)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
            {
                return Ok(Principal::Admin);
            }
        }
        let invalid = || AppError::Unauthenticated("invalid or revoked API key".into());
        if !secret.starts_with(KEY_PREFIX) || secret.len() > 128 {
            return Err(invalid());
        }
        let hash = hash_secret(secret);
        let key = self.lookup(&hash).await?.ok_or_else(invalid)?;
        if !key.is_active() {
            return Err(invalid());
        }
        self.touch(&key).await;
        Ok(Principal::User {
            user_id: key.user_id,
            key_id: key.id,
        })
    }

    async fn lookup(&self, hash: &str) -> Result<Option<ApiKey>, AppError> {
        if let Some(key) = self.cache.get(hash) {
            return Ok(key);
        }
        let key = self.store.find_api_key(hash).await?;
        self.cache.insert(hash, key.clone());
        Ok(key)
    }

    async fn touch(&self, key: &ApiKey) {
        let due = match self.touched.lock() {
            Ok(mut t) => {
                let due = t.get(&key.id).is_none_or(|at| at.elapsed() >= TOUCH_EVERY);
                if due {
                    if t.len() >= CACHE_MAX {
                        t.clear();
                    }
                    t.insert(key.id.clone(), Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            if let Err(e) = self.store.touch_api_key(&key.id, Utc::now()).await {
                tracing::warn!(key_id = %key.id, error = %e, "recording the key's last use failed");
            }
        }
    }

    /// Drops a key, by its hash, from this process's cache (after a revocation).
    pub fn forget(&self, hash: &str) {
        self.cache.remove(hash);
    }
}

/// The key in `Bearer <key>`; a bare key is taken too (WebSocket payloads often omit the scheme).
fn bearer(value: &str) -> Option<&str> {
    let key = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return None,
        None => value,
    };
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_graphic())).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer a\u{7f}b"), None);
    }
}
