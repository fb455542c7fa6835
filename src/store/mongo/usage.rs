//! Usage of terminal tasks: one document per task in `usage_events` (`_id` = task id), written
//! by `replace_task` right after the compare-and-set that made the task terminal, under the
//! same task lock. No multi-document transactions (FerretDB lacks them): the write is an
//! idempotent upsert keyed by task id instead, so a task counts once however often its
//! terminal state is written or re-written.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReplaceOptions;
use mongodb::{Collection, IndexModel};

use super::{backend, MongoStore};
use crate::domain::{Task, TaskStatus};
use crate::store::{usage_day, StoreError, UsageQuery, UsageRow};

const USAGE_WRITE_ATTEMPTS: u32 = 3;

/// What usage rows are summed by: API key, model, day, status.
type UsageKey = (Option<String>, String, String, String);

impl MongoStore {
    fn usage_events(&self) -> Collection<Document> {
        self.db.collection("usage_events")
    }

    pub(super) async fn create_usage_indexes(&self) -> Result<(), StoreError> {
        self.usage_events()
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"user_id": 1, "day": 1})
                    .build(),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Records `t`'s usage when `expected` → `t.status` made it terminal (see the SQLite twin).
    /// The task is stored by then, so a failure is not the caller's: the upsert is tried again
    /// a few times, then logged (the task would go uncounted).
    pub(super) async fn record_usage(&self, t: &Task, expected: TaskStatus) {
        if !t.status.is_terminal() || expected.is_terminal() {
            return;
        }
        for attempt in 1..=USAGE_WRITE_ATTEMPTS {
            match self.upsert_usage(t).await {
                Ok(()) => return,
                Err(e) if attempt == USAGE_WRITE_ATTEMPTS => {
                    tracing::error!(task_id = %t.id, error = %e, "usage of a terminal task could not be recorded");
                }
                Err(e) => {
                    tracing::warn!(task_id = %t.id, error = %e, "recording usage failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                        .await;
                }
            }
        }
    }

    async fn upsert_usage(&self, t: &Task) -> Result<(), StoreError> {
        self.usage_events()
            .replace_one(doc! {"_id": &t.id}, usage_event(t))
            .with_options(ReplaceOptions::builder().upsert(true).build())
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Stores many tasks at once, as they are (terminal ones with their usage), by
    /// `insertMany`s of a thousand: how `bench stored` fills a database. Fails on an id already
    /// stored; not for a running service (no idempotency claims, no write locks, no outbox).
    pub async fn import_tasks(&self, tasks: Vec<Task>) -> Result<(), StoreError> {
        for chunk in tasks.chunks(1_000) {
            let docs = chunk
                .iter()
                .map(super::task_doc)
                .collect::<Result<Vec<_>, _>>()?;
            self.tasks.insert_many(docs).await.map_err(backend)?;
            let events: Vec<Document> = chunk
                .iter()
                .filter(|t| t.status.is_terminal())
                .map(usage_event)
                .collect();
            if !events.is_empty() {
                self.usage_events()
                    .insert_many(events)
                    .await
                    .map_err(backend)?;
            }
        }
        Ok(())
    }
}

/// A terminal task's usage record.
fn usage_event(t: &Task) -> Document {
    doc! {
            "_id": &t.id,
            "user_id": &t.user_id,
            "api_key_id": t.api_key_id.as_deref().map_or(Bson::Null, |k| Bson::String(k.into())),
            "model": &t.model,
            "day": usage_day(t),
            "status": t.status.as_str(),
            "images": i32::try_from(t.generated_images).unwrap_or(i32::MAX),
    }
}

impl MongoStore {
    pub(super) async fn read_usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let mut filter = Document::new();
        if let Some(u) = &q.user_id {
            filter.insert("user_id", u);
        }
        if let Some(k) = &q.api_key_id {
            filter.insert("api_key_id", k);
        }
        let mut day = Document::new();
        if let Some(from) = &q.from_day {
            day.insert("$gte", from);
        }
        if let Some(to) = &q.to_day {
            day.insert("$lte", to);
        }
        if !day.is_empty() {
            filter.insert("day", day);
        }
        // Summed here, not with `$group`: FerretDB's `$sum` of a field answers 0.
        let mut cursor = self
            .usage_events()
            .find(filter)
            .projection(doc! {"api_key_id": 1, "model": 1, "day": 1, "status": 1, "images": 1})
            .await
            .map_err(backend)?;
        let mut sums: BTreeMap<UsageKey, (u64, u64)> = BTreeMap::new();
        while let Some(d) = cursor.try_next().await.map_err(backend)? {
            let text = |k: &str| d.get_str(k).map(str::to_string).map_err(|_| bad(k));
            let at = (
                d.get_str("api_key_id").ok().map(str::to_string),
                text("model")?,
                text("day")?,
                text("status")?,
            );
            let sum = sums.entry(at).or_default();
            sum.0 += 1;
            sum.1 += count(d.get("images"));
        }
        sums.into_iter()
            .map(|((api_key_id, model, day, status), (tasks, images))| {
                Ok(UsageRow {
                    api_key_id,
                    model,
                    day,
                    status: TaskStatus::parse(&status).ok_or_else(|| bad("a known status"))?,
                    tasks,
                    images,
                })
            })
            .collect()
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Backend(format!("usage record without {what}"))
}

/// A stored count, whichever BSON number type the server kept it as.
fn count(v: Option<&Bson>) -> u64 {
    match v {
        Some(Bson::Int32(n)) => (*n).max(0) as u64,
        Some(Bson::Int64(n)) => (*n).max(0) as u64,
        Some(Bson::Double(n)) => n.max(0.0) as u64,
        _ => 0,
    }
}
