//! `User.usage`: the usage the server settled for a user (see `service::usage`), with maps as
//! lists of keyed entries, GraphQL having no maps.

use std::collections::BTreeMap;

use async_graphql::SimpleObject;

use crate::service;

/// Tasks that ended, by outcome.
#[derive(SimpleObject)]
pub struct UsageTaskCounts {
    /// Tasks that completed.
    pub completed: u64,
    /// Tasks that failed (after their last attempt, or refused by the provider).
    pub failed: u64,
    /// Tasks cancelled by their owner or the admin.
    pub cancelled: u64,
}

/// Images billed and tasks ended for one model, day or API key.
#[derive(SimpleObject)]
pub struct UsageEntry {
    /// The model id, the UTC day (`YYYY-MM-DD`) or the API key id (`admin` for tasks the admin
    /// created).
    pub key: String,
    /// Images the provider billed for these tasks.
    pub images: u64,
    /// These tasks by outcome.
    pub tasks: UsageTaskCounts,
}

/// A user's usage, counted once per task when it became terminal.
#[derive(SimpleObject)]
pub struct Usage {
    /// Images the provider billed (`usage.generated_images`), whether the task completed or not.
    pub images: u64,
    /// Tasks that ended, by outcome.
    pub tasks: UsageTaskCounts,
    /// By model id.
    pub by_model: Vec<UsageEntry>,
    /// By UTC day of the terminal transition, oldest first.
    pub by_day: Vec<UsageEntry>,
    /// By the API key that created the task (`admin` for the admin's).
    pub by_api_key: Vec<UsageEntry>,
}

fn counts(c: &service::TaskCounts) -> UsageTaskCounts {
    UsageTaskCounts {
        completed: c.completed,
        failed: c.failed,
        cancelled: c.cancelled,
    }
}

fn entries(m: &BTreeMap<String, service::UsageTotals>) -> Vec<UsageEntry> {
    m.iter()
        .map(|(k, t)| UsageEntry {
            key: k.clone(),
            images: t.images,
            tasks: counts(&t.tasks),
        })
        .collect()
}

impl From<&service::Usage> for Usage {
    fn from(u: &service::Usage) -> Usage {
        Usage {
            images: u.total.images,
            tasks: counts(&u.total.tasks),
            by_model: entries(&u.by_model),
            by_day: entries(&u.by_day),
            by_api_key: entries(&u.by_api_key),
        }
    }
}
