//! Usage settled on the server: what each user's (and each key's) terminal tasks cost, read
//! from the records the store writes with each terminal transition, never from client polls.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;

use super::access::{check_id, require_user};
use super::Service;
use crate::auth::Principal;
use crate::domain::TaskStatus;
use crate::error::AppError;
use crate::store::{UsageQuery, UsageRow};

/// What `by_api_key` files tasks the admin created under (they have no user key).
pub const ADMIN_KEY: &str = "admin";

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TaskCounts {
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// Images billed and tasks ended, of some slice of the usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UsageTotals {
    pub images: u64,
    pub tasks: TaskCounts,
}

impl UsageTotals {
    fn add(&mut self, row: &UsageRow) {
        self.images += row.images;
        match row.status {
            TaskStatus::Completed => self.tasks.completed += row.tasks,
            TaskStatus::Failed => self.tasks.failed += row.tasks,
            TaskStatus::Cancelled => self.tasks.cancelled += row.tasks,
            // Only terminal tasks are recorded.
            _ => {}
        }
    }
}

/// A user's usage: the totals, and the same by model, by UTC day and by API key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    #[serde(flatten)]
    pub total: UsageTotals,
    pub by_model: BTreeMap<String, UsageTotals>,
    pub by_day: BTreeMap<String, UsageTotals>,
    pub by_api_key: BTreeMap<String, UsageTotals>,
}

impl Usage {
    fn of(rows: &[UsageRow]) -> Usage {
        let mut u = Usage::default();
        for r in rows {
            u.total.add(r);
            u.by_model.entry(r.model.clone()).or_default().add(r);
            u.by_day.entry(r.day.clone()).or_default().add(r);
            let key = r.api_key_id.clone().unwrap_or_else(|| ADMIN_KEY.into());
            u.by_api_key.entry(key).or_default().add(r);
        }
        u
    }
}

/// Which usage a caller asks for: days are UTC dates, both ends included.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub api_key_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A day as `YYYY-MM-DD`; an RFC 3339 time counts as its UTC day.
fn parse_day(field: &str, value: &str) -> Result<NaiveDate, AppError> {
    let v = value.trim();
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .or_else(|_| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc).date_naive())
        })
        .map_err(|_| AppError::invalid(field, "must be a date (YYYY-MM-DD) or an RFC 3339 time"))
}

impl Service {
    /// The user's usage (the admin's for anyone, a user key's for its own user only).
    pub async fn user_usage(
        &self,
        who: &Principal,
        user_id: &str,
        filter: UsageFilter,
    ) -> Result<Usage, AppError> {
        check_id("id", user_id)?;
        require_user(who, user_id)?;
        let from = filter
            .from
            .as_deref()
            .map(|d| parse_day("from", d))
            .transpose()?;
        let to = filter
            .to
            .as_deref()
            .map(|d| parse_day("to", d))
            .transpose()?;
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(AppError::invalid("from", "must not be after `to`"));
            }
        }
        if let Some(k) = &filter.api_key_id {
            check_id("api_key_id", k)?;
        }
        if self.store.get_user(user_id).await?.is_none() {
            return Err(AppError::NotFound("user not found".into()));
        }
        let rows = self
            .store
            .usage(&UsageQuery {
                user_id: Some(user_id.to_string()),
                api_key_id: filter.api_key_id,
                from_day: from.map(|d| d.format("%Y-%m-%d").to_string()),
                to_day: to.map(|d| d.format("%Y-%m-%d").to_string()),
            })
            .await?;
        Ok(Usage::of(&rows))
    }
}
