//! A user: the owner of tasks and API keys, unique by email without regard to case.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl User {
    /// Emails are unique without regard to case; stores index this form.
    pub fn email_key(email: &str) -> String {
        email.trim().to_lowercase()
    }
}
