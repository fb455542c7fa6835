//! Users: created by the admin, read and renamed by the admin or their own key, their email
//! changed by the admin only; deleting one deletes its tasks.

use chrono::Utc;

use super::access::{check_id, forbidden, require_admin, require_user};
use super::validate::{self, Problems};
use super::{page_limit, Page, Service};
use crate::auth::Principal;
use crate::domain::{self, User};
use crate::error::AppError;

#[derive(Debug, Clone, Default)]
pub struct CreateUser {
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, Default)]
pub struct UpdateUser {
    pub email: Option<String>,
    pub name: Option<String>,
}

impl Service {
    pub async fn create_user(&self, who: &Principal, input: CreateUser) -> Result<User, AppError> {
        require_admin(who, "create users")?;
        let mut p = Problems::default();
        let email = validate::email(&mut p, "email", &input.email);
        let name = validate::name(&mut p, "name", &input.name);
        p.into_result()?;
        let now = Utc::now();
        let user = User {
            id: domain::new_id(),
            email,
            name,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_user(&user).await?;
        tracing::info!(user_id = %user.id, "user created");
        Ok(user)
    }

    pub async fn get_user(&self, who: &Principal, id: &str) -> Result<User, AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        self.store
            .get_user(id)
            .await?
            .ok_or_else(|| AppError::NotFound("user not found".into()))
    }

    pub async fn find_user(&self, who: &Principal, id: &str) -> Result<Option<User>, AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        Ok(self.store.get_user(id).await?)
    }

    /// A user key may look up only its own email: anything else is forbidden whether or not
    /// the address exists, so keys cannot be used to probe for other users.
    pub async fn user_by_email(
        &self,
        who: &Principal,
        email: &str,
    ) -> Result<Option<User>, AppError> {
        let mut p = Problems::default();
        let email = validate::email(&mut p, "email", email);
        p.into_result()?;
        if let Some(own) = who.user_id() {
            let me = self.store.get_user(own).await?;
            return match me {
                Some(u) if User::email_key(&u.email) == User::email_key(&email) => Ok(Some(u)),
                _ => Err(forbidden("look up other users")),
            };
        }
        Ok(self.store.get_user_by_email(&email).await?)
    }

    pub async fn list_users(
        &self,
        who: &Principal,
        after: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<User>, AppError> {
        require_admin(who, "list users")?;
        let limit = page_limit(limit)?;
        if let Some(a) = after {
            check_id("after", a)?;
        }
        let mut items = self.store.list_users(after, limit + 1).await?;
        let has_more = items.len() > limit;
        items.truncate(limit);
        let total = self.store.count_users().await?;
        Ok(Page {
            items,
            has_more,
            total,
        })
    }

    pub async fn update_user(
        &self,
        who: &Principal,
        id: &str,
        input: UpdateUser,
    ) -> Result<User, AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        let mut p = Problems::default();
        let email = input.email.map(|e| validate::email(&mut p, "email", &e));
        let name = input.name.map(|n| validate::name(&mut p, "name", &n));
        p.into_result()?;
        let mut user = self.get_user(who, id).await?;
        if let Some(e) = email.filter(|e| User::email_key(e) != User::email_key(&user.email)) {
            // A change to a taken address answers 409 and to a free one 200: let a user key make
            // it and it learns who else is registered. So the admin changes emails; a user key
            // gets the same 403 whatever the address (its current one is a no-op).
            require_admin(who, "change an email (the admin can)")?;
            user.email = e;
        }
        if let Some(n) = name {
            user.name = n;
        }
        user.updated_at = Utc::now();
        if !self.store.update_user(&user).await? {
            return Err(AppError::NotFound("user not found".into()));
        }
        Ok(user)
    }

    pub async fn delete_user(&self, who: &Principal, id: &str) -> Result<(), AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        let deleted = self.store.delete_user(id).await;
        // Its tasks went with it; which of them this process holds is not worth finding out.
        if let Some(polls) = &self.polls {
            polls.forget_all();
        }
        let deleted = deleted?;
        // After the deletion: a submit checking the user meanwhile may have remembered it.
        self.known_users.0.remove(id);
        if deleted {
            tracing::info!(user_id = %id, "user deleted with its tasks");
            Ok(())
        } else {
            Err(AppError::NotFound("user not found".into()))
        }
    }
}
