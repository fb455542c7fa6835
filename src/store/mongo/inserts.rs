//! New tasks: submits arriving together written as one `insertMany`, and the idempotency claim
//! a task with a key takes before it is written.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::Collection;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::locks::LOCK_WAIT;
use super::{backend, is_duplicate, MongoStore, DUPLICATE_KEY};
use crate::domain::Task;
use crate::store::{Store, StoreError};

/// Submits arriving together are stored by one `insertMany` instead of one `insert` each: a
/// command's round trip, its journal commit (and its wait for a majority) are shared by the
/// batch. FerretDB on SQLite stores ~6× as many tasks per second so (800 inserts/s one by one,
/// 4,800 – 5,400 in batches, 64 writers), and MongoDB saves the round trips and commits.
/// Nothing waits for a batch to fill: a lone submit is written at once, and batches form only
/// while earlier ones are in flight.
const INSERT_BATCHES_IN_FLIGHT: usize = 2;
pub(super) const MAX_INSERT_BATCH: usize = 128;

pub(super) struct PendingInsert {
    pub(super) doc: Document,
    pub(super) done: oneshot::Sender<Result<(), StoreError>>,
}

/// Takes the inserts queued while the previous batches were in flight and writes them as one
/// unordered `insertMany`: a document refused (its `_id` taken) fails alone, and each caller
/// hears its own document's outcome only after the server acknowledged the command.
pub(super) async fn write_inserts(
    tasks: Collection<Document>,
    mut queued: mpsc::Receiver<PendingInsert>,
) {
    let in_flight = Arc::new(Semaphore::new(INSERT_BATCHES_IN_FLIGHT));
    while let Some(first) = queued.recv().await {
        // Waiting for a free slot is what lets the next batch gather.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_INSERT_BATCH {
            match queued.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let tasks = tasks.clone();
        tokio::spawn(async move {
            let outcomes = insert_batch(&tasks, &batch).await;
            drop(slot);
            for (p, outcome) in batch.into_iter().zip(outcomes) {
                // A caller that went away (its request dropped) needs no answer; its task is
                // stored all the same and the reconciler runs it.
                let _ = p.done.send(outcome);
            }
        });
    }
}

async fn insert_batch(
    tasks: &Collection<Document>,
    batch: &[PendingInsert],
) -> Vec<Result<(), StoreError>> {
    let result = tasks
        .insert_many(batch.iter().map(|p| &p.doc))
        .ordered(false)
        .await;
    let e = match result {
        Ok(_) => return batch.iter().map(|_| Ok(())).collect(),
        Err(e) => e,
    };
    if let ErrorKind::InsertMany(m) = e.kind.as_ref() {
        if m.write_concern_error.is_none() {
            if let Some(errors) = &m.write_errors {
                // Only the documents named failed; the others are stored.
                let mut out: Vec<Result<(), StoreError>> = batch.iter().map(|_| Ok(())).collect();
                for w in errors {
                    if let Some(slot) = out.get_mut(w.index) {
                        *slot = Err(if w.code == DUPLICATE_KEY {
                            StoreError::Conflict("task id already exists".into())
                        } else {
                            StoreError::Backend(w.message.clone())
                        });
                    }
                }
                return out;
            }
        }
    }
    // The command itself failed or was not acknowledged as asked: every document's outcome is
    // unknown, as a single insert's would be.
    tracing::warn!(tasks = batch.len(), error = %e, "storing a batch of new tasks failed");
    batch.iter().map(|_| Err(backend(e.clone()))).collect()
}

/// An idempotency claim this old whose task is not stored was left by a crash (see `claim_key`).
const CLAIM_STALE_MS: i64 = 30_000;

impl MongoStore {
    /// Claims `task`'s idempotency key for it (`None`), or finds the task holding the key. The
    /// claim's unique `_id` is what makes a replay find the first task; it is written before the
    /// task, so a claim whose task is not stored is either a task being written right now or one
    /// a crash left behind. Only a stale one is taken over: taking over a fresh one let
    /// concurrent submits under one key store a task each.
    pub(super) async fn claim_key(
        &self,
        claim_id: &str,
        task: &Task,
    ) -> Result<Option<Task>, StoreError> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Unavailable(
                    "the idempotency key is held by a task still being stored".into(),
                ));
            }
            let now = Utc::now().timestamp_millis();
            let claim =
                doc! {"_id": claim_id, "user_id": &task.user_id, "task_id": &task.id, "at": now};
            match self.idempotency.insert_one(claim).await {
                Ok(_) => return Ok(None),
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(backend(e)),
            }
            let Some(held) = self
                .idempotency
                .find_one(doc! {"_id": claim_id})
                .await
                .map_err(backend)?
            else {
                continue; // released meanwhile
            };
            let holder = held.get_str("task_id").unwrap_or_default().to_string();
            if holder == task.id {
                return Ok(None); // claimed by an earlier try of this very insert
            }
            if let Some(t) = self.get_task(&holder).await? {
                return Ok(Some(t));
            }
            // Claims written by earlier versions carry no time.
            let stale = held
                .get_i64("at")
                .map_or(true, |at| at < now - CLAIM_STALE_MS);
            if stale {
                tracing::warn!(task_id = %task.id, stale_task_id = %holder,
                    "taking over an idempotency key whose task was never stored");
                self.idempotency
                    .delete_one(doc! {"_id": claim_id, "task_id": &holder})
                    .await
                    .map_err(backend)?;
                continue;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
