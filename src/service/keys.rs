//! API keys: the admin makes them for a user; the admin or the owner lists and revokes them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::access::{check_id, require_admin, require_user};
use super::validate::{self, Problems};
use super::Service;
use crate::auth::Principal;
use crate::domain::ApiKey;
use crate::error::AppError;
use crate::events::{Control, ControlHandler};

/// How long a revocation waits for every api process to close the key's sockets.
const REVOKE_WITHIN: Duration = Duration::from_secs(5);

impl Service {
    /// Makes a key for a user (admin only). The secret is in the answer and nowhere else.
    pub async fn create_api_key(
        &self,
        who: &Principal,
        user_id: &str,
        name: Option<&str>,
    ) -> Result<(ApiKey, String), AppError> {
        require_admin(who, "create API keys")?;
        check_id("user_id", user_id)?;
        let mut p = Problems::default();
        let name = validate::key_name(&mut p, name.unwrap_or("default"));
        p.into_result()?;
        if self.store.get_user(user_id).await?.is_none() {
            return Err(AppError::NotFound("user not found".into()));
        }
        let (key, secret) = ApiKey::generate(user_id, &name, Utc::now());
        self.store.insert_api_key(&key).await?;
        tracing::info!(user_id = %user_id, key_id = %key.id, "API key created");
        Ok((key, secret))
    }

    pub async fn list_api_keys(
        &self,
        who: &Principal,
        user_id: Option<&str>,
    ) -> Result<Vec<ApiKey>, AppError> {
        let user_id = match (user_id, who.user_id()) {
            (Some(u), _) => u,
            (None, Some(own)) => own,
            (None, None) => return Err(AppError::invalid("user_id", "user_id is required")),
        };
        check_id("user_id", user_id)?;
        require_user(who, user_id)?;
        Ok(self.store.list_api_keys(user_id).await?)
    }

    /// Sets what this process does with control messages from the event bus (its API's part).
    pub fn on_control(&self, handler: Arc<dyn ControlHandler>) {
        self.events.on_control(handler);
    }

    /// Forgets a key revoked elsewhere (by hash) from this process's cache.
    pub fn forget_key(&self, hash: &str) {
        self.auth.forget(hash);
    }

    /// Revokes a key: the admin any, a user its own. Every process reached by the event bus
    /// forgets the key and closes the sockets it opened (4403) before this returns; should the
    /// bus fail, the stored revocation still holds: other processes' caches forget the key within
    /// their time and open sockets are closed at their next periodic key check.
    pub async fn revoke_api_key(&self, who: &Principal, id: &str) -> Result<ApiKey, AppError> {
        check_id("id", id)?;
        let not_found = || AppError::NotFound("API key not found".into());
        let key = self.store.get_api_key(id).await?.ok_or_else(not_found)?;
        if who.user_id().is_some_and(|own| own != key.user_id) {
            return Err(not_found());
        }
        if !self.store.revoke_api_key(id, Utc::now()).await? {
            return Err(not_found());
        }
        self.auth.forget(&key.hash);
        let revoked = Control::KeyRevoked {
            key_id: key.id.clone(),
            hash: key.hash.clone(),
        };
        if let Err(e) = self.events.control(&revoked, REVOKE_WITHIN).await {
            tracing::warn!(key_id = %key.id, error = %e, "revocation not broadcast; other processes catch up on their own");
        }
        tracing::info!(user_id = %key.user_id, key_id = %key.id, "API key revoked");
        self.store.get_api_key(id).await?.ok_or_else(not_found)
    }
}
