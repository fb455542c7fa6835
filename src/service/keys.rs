//! API keys: the admin makes them for a user; the admin or the owner lists and revokes them.

use chrono::Utc;

use super::access::{check_id, require_admin, require_user};
use super::validate::{self, Problems};
use super::Service;
use crate::auth::Principal;
use crate::domain::ApiKey;
use crate::error::AppError;

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

    /// Revokes a key: the admin any, a user its own. Takes effect at once in this process and
    /// within the authenticator's cache time in the others.
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
        self.auth.forget(&key);
        tracing::info!(user_id = %key.user_id, key_id = %key.id, "API key revoked");
        self.store.get_api_key(id).await?.ok_or_else(not_found)
    }
}
