//! Per-task write locks, for MongoDB-compatible servers whose conditional update is not atomic
//! (FerretDB 1.x); MongoDB itself runs without them.

use std::time::Duration;

use chrono::Utc;
use mongodb::bson::{doc, Document};
use mongodb::Collection;

use super::{backend, is_duplicate, MongoStore};
use crate::store::StoreError;

/// FerretDB 1.x runs a filtered update as "query, then write by `_id`": two writers can both
/// match the same `(id, version)` and both "win" a compare-and-set. On such a server every task
/// write first takes a lock document whose unique `_id` is the task id (an insert is atomic
/// there too) and drops it after the write. MongoDB itself needs none of this.
const LOCK_STALE_MS: i64 = 30_000;
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Held {
    id: String,
    owner: String,
    /// Until `unlock` deleted the lock. A write cancelled between taking and dropping its lock
    /// (its request dropped, or the worker's calls aborted at a shutdown deadline) drops the
    /// guard with this still set, and the drop deletes the lock from a task of its own: the
    /// task's next writer (the shutdown's own hand-back among them) would otherwise wait
    /// `LOCK_WAIT` and fail, and every writer after it until the lock went stale.
    locks: Option<Collection<Document>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(locks) = self.locks.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let filter =
            doc! {"_id": std::mem::take(&mut self.id), "owner": std::mem::take(&mut self.owner)};
        rt.spawn(async move {
            if let Err(e) = locks.delete_one(filter).await {
                tracing::warn!(error = %e, "could not release a cancelled write's task lock");
            }
        });
    }
}

impl MongoStore {
    /// Takes the task's write lock (when locking is on), waiting while another writer holds it
    /// and taking over a lock left by a writer that died holding it.
    pub(super) async fn lock(&self, id: &str) -> Result<Option<Held>, StoreError> {
        let Some(locks) = &self.locks else {
            return Ok(None);
        };
        let owner = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let now = Utc::now().timestamp_millis();
            match locks
                .insert_one(doc! {"_id": id, "owner": &owner, "at": now})
                .await
            {
                Ok(_) => {
                    return Ok(Some(Held {
                        id: id.to_string(),
                        owner,
                        locks: Some(locks.clone()),
                    }))
                }
                Err(e) if is_duplicate(&e) => {
                    let stale = locks
                        .find_one(doc! {"_id": id, "at": {"$lt": now - LOCK_STALE_MS}})
                        .await
                        .map_err(backend)?;
                    if let Some(old) = stale {
                        tracing::warn!(task_id = %id, "taking over a stale task write lock");
                        locks
                            .delete_one(
                                doc! {"_id": id, "owner": old.get_str("owner").unwrap_or_default()},
                            )
                            .await
                            .map_err(backend)?;
                        continue;
                    }
                }
                Err(e) => return Err(backend(e)),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Unavailable(format!("task {id} stayed locked")));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub(super) async fn unlock(&self, held: Option<Held>) {
        let Some(mut h) = held else {
            return;
        };
        if let Some(locks) = &h.locks {
            if let Err(e) = locks
                .delete_one(doc! {"_id": &h.id, "owner": &h.owner})
                .await
            {
                // Left behind, it goes stale and the next writer takes it over.
                tracing::warn!(task_id = %h.id, error = %e, "could not release a task write lock");
            }
        }
        // Only now: were this delete cancelled half-way, the guard's drop would still do it.
        h.locks = None;
    }
}
