//! The distributed store: MongoDB through the official driver, image bytes in GridFS. Uses only
//! standard commands (no transactions, no partial indexes), so it runs on MongoDB and on
//! MongoDB-compatible servers such as FerretDB alike.
//!
//! Task documents are the serde form of `Task` plus `_id` and a few numeric fields that queries
//! filter on (`due_ms`, `lease_until_ms`): chrono times serialise as strings, which do not
//! compare as times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{AsyncReadExt, AsyncWriteExt, TryStreamExt};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::gridfs::GridFsBucket;
use mongodb::options::{ClientOptions, GridFsBucketOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{ChangeCursor, ImageBlob, InsertOutcome, Store, StoreError, TaskQuery};
use crate::domain::{ApiKey, Task, TaskStatus, User};

pub struct MongoStore {
    db: Database,
    users: Collection<Document>,
    tasks: Collection<Document>,
    idempotency: Collection<Document>,
    api_keys: Collection<Document>,
    images: GridFsBucket,
    /// Per-task write locks, for servers whose conditional update is not atomic.
    locks: Option<Collection<Document>>,
    /// New task documents, written together (see `write_inserts`).
    inserts: mpsc::Sender<PendingInsert>,
}

/// Submits arriving together are stored by one `insertMany` instead of one `insert` each: a
/// command's round trip, its journal commit (and its wait for a majority) are shared by the
/// batch. FerretDB on SQLite stores ~6× as many tasks per second so (800 inserts/s one by one,
/// 4,800 – 5,400 in batches, 64 writers), and MongoDB saves the round trips and commits.
/// Nothing waits for a batch to fill: a lone submit is written at once, and batches form only
/// while earlier ones are in flight.
const INSERT_BATCHES_IN_FLIGHT: usize = 2;
const MAX_INSERT_BATCH: usize = 128;

struct PendingInsert {
    doc: Document,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Takes the inserts queued while the previous batches were in flight and writes them as one
/// unordered `insertMany`: a document refused (its `_id` taken) fails alone, and each caller
/// hears its own document's outcome only after the server acknowledged the command.
async fn write_inserts(tasks: Collection<Document>, mut queued: mpsc::Receiver<PendingInsert>) {
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

/// FerretDB 1.x runs a filtered update as "query, then write by `_id`": two writers can both
/// match the same `(id, version)` and both "win" a compare-and-set. On such a server every task
/// write first takes a lock document whose unique `_id` is the task id (an insert is atomic
/// there too) and drops it after the write. MongoDB itself needs none of this.
const LOCK_STALE_MS: i64 = 30_000;
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// An idempotency claim this old whose task is not stored was left by a crash (see `claim_key`).
const CLAIM_STALE_MS: i64 = 30_000;

struct Held {
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

pub struct MongoOptions<'a> {
    pub url: &'a str,
    /// Database name when the URL names none.
    pub database: &'a str,
    /// `majority` for acknowledged writes that survive a primary failover.
    pub majority_writes: bool,
    /// How long to wait for a reachable server before answering `Unavailable`.
    pub timeout: Duration,
    /// Serialise task writes with lock documents: `Some(true)` always, `Some(false)` never,
    /// `None` when the server is FerretDB (its updates are not atomic).
    pub write_locks: Option<bool>,
}

const DUPLICATE_KEY: i32 = 11000;

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        // FerretDB 1.x (SQLite backend) reports a unique index hit on update as InternalError
        // (code 1) naming the SQLite constraint instead of 11000.
        ErrorKind::Command(c) => {
            c.code == DUPLICATE_KEY
                || (c.code == 1 && c.message.contains("UNIQUE constraint failed"))
        }
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|es| es.iter().any(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

fn backend(e: mongodb::error::Error) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Document, StoreError> {
    bson::to_document(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(d: Document) -> Result<T, StoreError> {
    bson::from_document(d).map_err(|e| StoreError::Backend(format!("decode: {e}")))
}

fn ms(t: Option<DateTime<Utc>>) -> Bson {
    t.map(|t| Bson::Int64(t.timestamp_millis()))
        .unwrap_or(Bson::Null)
}

/// Where a task document keeps `params.options`: as JSON text. The options are whatever JSON a
/// client sent, and BSON field names cannot be any string (MongoDB and FerretDB refuse keys
/// starting with `$`, FerretDB keys with a `.`, BSON itself NUL bytes) nor BSON numbers any JSON
/// number (integers above `i64::MAX`): as a sub-document such a task could not be stored at all.
/// Documents written before keep a sub-document in `params.options`, read as before.
const OPTIONS_JSON: &str = "options_json";

fn task_doc(t: &Task) -> Result<Document, StoreError> {
    let mut d = match &t.params.options {
        None => encode(t)?,
        Some(options) => {
            let mut plain = t.clone();
            plain.params.options = None;
            let mut d = encode(&plain)?;
            let text = serde_json::to_string(options)
                .map_err(|e| StoreError::Backend(format!("encode: {e}")))?;
            d.insert(OPTIONS_JSON, text);
            d
        }
    };
    d.insert("_id", t.id.clone());
    // Pending tasks without a delay are due from the epoch on.
    let due = match (t.status, t.not_before) {
        (TaskStatus::Pending, None) => Bson::Int64(0),
        (_, nb) => ms(nb),
    };
    d.insert("due_ms", due);
    d.insert("lease_until_ms", ms(t.lease_until));
    d.insert("updated_ms", t.updated_at.timestamp_millis());
    Ok(d)
}

fn user_doc(u: &User) -> Result<Document, StoreError> {
    let mut d = encode(u)?;
    d.insert("_id", u.id.clone());
    d.insert("email_key", User::email_key(&u.email));
    Ok(d)
}

fn decode_task(mut d: Document) -> Result<Task, StoreError> {
    let options = d.remove(OPTIONS_JSON);
    let mut t: Task = decode(d)?;
    if let Some(Bson::String(text)) = options {
        t.params.options = Some(
            serde_json::from_str(&text).map_err(|e| StoreError::Backend(format!("decode: {e}")))?,
        );
    }
    Ok(t)
}

async fn collect_tasks(cursor: mongodb::Cursor<Document>) -> Result<Vec<Task>, StoreError> {
    let docs: Vec<Document> = cursor.try_collect().await.map_err(backend)?;
    docs.into_iter().map(decode_task).collect()
}

async fn collect<T: serde::de::DeserializeOwned>(
    cursor: mongodb::Cursor<Document>,
) -> Result<Vec<T>, StoreError> {
    let docs: Vec<Document> = cursor.try_collect().await.map_err(backend)?;
    docs.into_iter().map(decode).collect()
}

/// `limit` as the driver takes it. MongoDB reads a negative limit as "one batch of that many", so
/// larger ones saturate; it reads 0 as "no limit", so callers answer 0 without a query.
fn find_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn idem_id(user_id: &str, key: &str) -> String {
    format!("{user_id}\u{1f}{key}")
}

impl MongoStore {
    /// Connects and creates the collections' indexes (idempotent).
    pub async fn connect(o: MongoOptions<'_>) -> Result<MongoStore, StoreError> {
        let mut opts = ClientOptions::parse(o.url)
            .await
            .map_err(|e| StoreError::Backend(format!("MONGO_URL: {e}")))?;
        opts.app_name = Some("volcengine-ai-server".into());
        opts.server_selection_timeout = Some(o.timeout);
        opts.connect_timeout = Some(o.timeout);
        if o.majority_writes {
            opts.write_concern = Some(WriteConcern::majority());
        }
        let client = Client::with_options(opts).map_err(backend)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database(o.database));
        let ferretdb = db
            .run_command(doc! {"buildInfo": 1})
            .await
            .map_err(backend)?
            .contains_key("ferretdbVersion");
        let locked = o.write_locks.unwrap_or(ferretdb);
        if locked {
            tracing::info!(
                ferretdb,
                "task writes are serialised with lock documents (non-atomic conditional updates)"
            );
        }
        let tasks: Collection<Document> = db.collection("tasks");
        let (inserts, queued) = mpsc::channel(4 * MAX_INSERT_BATCH);
        tokio::spawn(write_inserts(tasks.clone(), queued));
        let store = MongoStore {
            users: db.collection("users"),
            tasks,
            idempotency: db.collection("idempotency_keys"),
            api_keys: db.collection("api_keys"),
            images: db.gridfs_bucket(
                GridFsBucketOptions::builder()
                    .bucket_name("images".to_string())
                    .build(),
            ),
            locks: locked.then(|| db.collection("task_locks")),
            inserts,
            db,
        };
        store.create_indexes().await?;
        store.add_change_times().await?;
        Ok(store)
    }

    /// Takes the task's write lock (when locking is on), waiting while another writer holds it
    /// and taking over a lock left by a writer that died holding it.
    async fn lock(&self, id: &str) -> Result<Option<Held>, StoreError> {
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

    async fn unlock(&self, held: Option<Held>) {
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

    /// Claims `task`'s idempotency key for it (`None`), or finds the task holding the key. The
    /// claim's unique `_id` is what makes a replay find the first task; it is written before the
    /// task, so a claim whose task is not stored is either a task being written right now or one
    /// a crash left behind. Only a stale one is taken over: taking over a fresh one let
    /// concurrent submits under one key store a task each.
    async fn claim_key(&self, claim_id: &str, task: &Task) -> Result<Option<Task>, StoreError> {
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

    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexOptions::builder().unique(true).build();
        self.users
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"email_key": 1})
                    .options(unique.clone())
                    .build(),
            )
            .await
            .map_err(backend)?;
        for keys in [
            doc! {"user_id": 1, "_id": -1},
            doc! {"status": 1, "due_ms": 1},
            doc! {"status": 1, "lease_until_ms": 1},
            doc! {"updated_ms": 1, "_id": 1},
        ] {
            self.tasks
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(backend)?;
        }
        self.idempotency
            .create_index(IndexModel::builder().keys(doc! {"task_id": 1}).build())
            .await
            .map_err(backend)?;
        self.api_keys
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"hash": 1})
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .map_err(backend)?;
        self.api_keys
            .create_index(IndexModel::builder().keys(doc! {"user_id": 1}).build())
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Tasks written by earlier versions have no `updated_ms` (what `tasksUpdated` re-reads a
    /// gap by): set from their documents once. Idempotent, so a run cut short finishes next time.
    async fn add_change_times(&self) -> Result<(), StoreError> {
        let mut cursor = self
            .tasks
            .find(doc! {"updated_ms": {"$exists": false}})
            .await
            .map_err(backend)?;
        let mut filled = 0u64;
        while let Some(d) = cursor.try_next().await.map_err(backend)? {
            let t = decode_task(d)?;
            self.tasks
                .update_one(
                    doc! {"_id": &t.id, "updated_ms": {"$exists": false}},
                    doc! {"$set": {"updated_ms": t.updated_at.timestamp_millis()}},
                )
                .await
                .map_err(backend)?;
            filled += 1;
        }
        if filled > 0 {
            tracing::info!(tasks = filled, "added the tasks' change times");
        }
        Ok(())
    }

    async fn delete_images_of(&self, task_ids: &[String]) -> Result<(), StoreError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let files: Vec<_> = self
            .images
            .find(doc! {"metadata.task_id": {"$in": task_ids}})
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        for f in files {
            self.images.delete(f.id).await.map_err(backend)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        match self.users.insert_one(user_doc(user)?).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict(
                "a user with this email already exists".into(),
            )),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.users
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.users
            .find_one(doc! {"email_key": User::email_key(email)})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn get_users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let cursor = self
            .users
            .find(doc! {"_id": {"$in": ids}})
            .await
            .map_err(backend)?;
        collect(cursor).await
    }

    async fn list_users(
        &self,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after_id {
            Some(a) => doc! {"_id": {"$gt": a}},
            None => doc! {},
        };
        let cursor = self
            .users
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect(cursor).await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.users.count_documents(doc! {}).await.map_err(backend)
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let taken = self
            .users
            .find_one(doc! {"email_key": User::email_key(&user.email), "_id": {"$ne": &user.id}})
            .await
            .map_err(backend)?;
        if taken.is_some() {
            // A user that is gone is not updated, whoever has the email now (as in SQLite).
            let exists = self
                .users
                .find_one(doc! {"_id": &user.id})
                .projection(doc! {"_id": 1})
                .await
                .map_err(backend)?
                .is_some();
            if !exists {
                return Ok(false);
            }
            return Err(StoreError::Conflict(
                "a user with this email already exists".into(),
            ));
        }
        match self
            .users
            .replace_one(doc! {"_id": &user.id}, user_doc(user)?)
            .await
        {
            Ok(r) => Ok(r.matched_count == 1),
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict(
                "a user with this email already exists".into(),
            )),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let task_ids: Vec<String> = self
            .tasks
            .find(doc! {"user_id": id})
            .projection(doc! {"_id": 1})
            .await
            .map_err(backend)?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(backend)?
            .into_iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        self.delete_images_of(&task_ids).await?;
        self.tasks
            .delete_many(doc! {"user_id": id})
            .await
            .map_err(backend)?;
        self.idempotency
            .delete_many(doc! {"user_id": id})
            .await
            .map_err(backend)?;
        self.api_keys
            .delete_many(doc! {"user_id": id})
            .await
            .map_err(backend)?;
        let r = self
            .users
            .delete_one(doc! {"_id": id})
            .await
            .map_err(backend)?;
        Ok(r.deleted_count == 1)
    }

    async fn insert_task(&self, task: &Task) -> Result<InsertOutcome, StoreError> {
        let claim_id = task
            .idempotency_key
            .as_ref()
            .map(|key| idem_id(&task.user_id, key));
        if let Some(claim_id) = &claim_id {
            if let Some(existing) = self.claim_key(claim_id, task).await? {
                return Ok(InsertOutcome::Existing(Box::new(existing)));
            }
        }
        let (done, outcome) = oneshot::channel();
        let queued = PendingInsert {
            doc: task_doc(task)?,
            done,
        };
        let gone = || StoreError::Unavailable("the store is shutting down".into());
        self.inserts.send(queued).await.map_err(|_| gone())?;
        let stored = outcome.await.map_err(|_| gone())?;
        if let (Err(StoreError::Conflict(_)), Some(claim_id)) = (&stored, &claim_id) {
            // Refused (its id is taken), so the key must not stay claimed for it: the next task
            // under the key would be answered with whichever task has that id.
            self.idempotency
                .delete_one(doc! {"_id": claim_id, "task_id": &task.id})
                .await
                .map_err(backend)?;
        }
        stored?;
        Ok(InsertOutcome::Inserted)
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.tasks
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .map(decode_task)
            .transpose()
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {};
        if let Some(u) = &q.user_id {
            filter.insert("user_id", u);
        }
        if let Some(s) = q.status {
            filter.insert("status", s.as_str());
        }
        if let Some(b) = &q.before_id {
            filter.insert("_id", doc! {"$lt": b});
        }
        let cursor = self
            .tasks
            .find(filter)
            .sort(doc! {"_id": -1})
            .skip(q.offset as u64)
            .limit(find_limit(q.limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn tasks_changed(
        &self,
        user_id: Option<&str>,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {"$or": [
            {"updated_ms": {"$gt": after.updated_ms}},
            {"updated_ms": after.updated_ms, "_id": {"$gt": &after.id}},
        ]};
        if let Some(u) = user_id {
            filter.insert("user_id", u);
        }
        let cursor = self
            .tasks
            .find(filter)
            .sort(doc! {"updated_ms": 1, "_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn count_tasks(
        &self,
        user_id: Option<&str>,
        status: Option<TaskStatus>,
    ) -> Result<u64, StoreError> {
        let mut filter = doc! {};
        if let Some(u) = user_id {
            filter.insert("user_id", u);
        }
        if let Some(s) = status {
            filter.insert("status", s.as_str());
        }
        self.tasks.count_documents(filter).await.map_err(backend)
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<u64, StoreError> {
        self.tasks
            .count_documents(
                doc! {"user_id": user_id, "status": {"$in": ["pending", "processing"]}},
            )
            .await
            .map_err(backend)
    }

    async fn release_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
        task_id: &str,
    ) -> Result<(), StoreError> {
        self.idempotency
            .delete_one(doc! {"_id": idem_id(user_id, key), "task_id": task_id})
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut d = encode(key)?;
        d.insert("_id", key.id.clone());
        match self.api_keys.insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => {
                Err(StoreError::Conflict("API key already exists".into()))
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys
            .find_one(doc! {"hash": hash})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let cursor = self
            .api_keys
            .find(doc! {"user_id": user_id})
            .sort(doc! {"_id": 1})
            .await
            .map_err(backend)?;
        collect(cursor).await
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let r = self
            .api_keys
            .update_one(
                doc! {"_id": id, "revoked_at": Bson::Null},
                doc! {"$set": {"revoked_at": crate::domain::rfc3339(at)}},
            )
            .await
            .map_err(backend)?;
        if r.matched_count == 1 {
            return Ok(true);
        }
        Ok(self.get_api_key(id).await?.is_some())
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.api_keys
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"last_used_at": crate::domain::rfc3339(at)}},
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn replace_task(
        &self,
        task: &Task,
        expected_version: i64,
        expected_status: TaskStatus,
    ) -> Result<bool, StoreError> {
        let new = task_doc(task)?;
        let held = self.lock(&task.id).await?;
        let r = self
            .tasks
            .replace_one(
                doc! {"_id": &task.id, "version": expected_version, "status": expected_status.as_str()},
                new,
            )
            .await
            .map_err(backend);
        self.unlock(held).await;
        Ok(r?.matched_count == 1)
    }

    async fn extend_lease(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let until_bson =
            bson::to_bson(&until).map_err(|e| StoreError::Backend(format!("encode: {e}")))?;
        let held = self.lock(id).await?;
        let r = self
            .tasks
            .update_one(
                doc! {"_id": id, "status": "processing", "lease_owner": owner},
                doc! {"$set": {"lease_until": until_bson, "lease_until_ms": until.timestamp_millis()}},
            )
            .await
            .map_err(backend);
        self.unlock(held).await;
        Ok(r?.matched_count == 1)
    }

    async fn due_tasks(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now.timestamp_millis();
        let cursor = self
            .tasks
            .find(doc! {"$or": [
                {"status": "pending", "due_ms": {"$lte": now}},
                {"status": "processing", "lease_until_ms": {"$lt": now}},
            ]})
            .sort(doc! {"_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn oldest_pending(&self) -> Result<Option<Task>, StoreError> {
        self.tasks
            .find_one(doc! {"status": "pending"})
            .sort(doc! {"_id": 1})
            .await
            .map_err(backend)?
            .map(decode_task)
            .transpose()
    }

    async fn processing_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cursor = self
            .tasks
            .find(doc! {"status": "processing"})
            .sort(doc! {"_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn delete_task(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_images_of(&[id.to_string()]).await?;
        self.idempotency
            .delete_many(doc! {"task_id": id})
            .await
            .map_err(backend)?;
        let r = self
            .tasks
            .delete_one(doc! {"_id": id})
            .await
            .map_err(backend)?;
        Ok(r.deleted_count == 1)
    }

    async fn status_counts(&self) -> Result<HashMap<TaskStatus, u64>, StoreError> {
        let mut out = HashMap::new();
        // One count per status keeps to the commands every compatible server has.
        for st in TaskStatus::ALL {
            let n = self
                .tasks
                .count_documents(doc! {"status": st.as_str()})
                .await
                .map_err(backend)?;
            if n > 0 {
                out.insert(st, n);
            }
        }
        Ok(out)
    }

    async fn put_image(&self, image: &ImageBlob) -> Result<(), StoreError> {
        // An id put again holds the new bytes, as in the embedded store (so a retried put
        // succeeds). GridFS itself refuses a second file under an id only when the upload closes,
        // and its clean-up then deletes every chunk under the id: the first image's too.
        let present = self
            .images
            .find_one(doc! {"_id": &image.id})
            .await
            .map_err(backend)?
            .is_some();
        if present {
            self.delete_images(std::slice::from_ref(&image.id)).await?;
        }
        let mut up = self
            .images
            .open_upload_stream(format!("{}.img", image.id))
            .id(Bson::String(image.id.clone()))
            .metadata(doc! {"task_id": &image.task_id, "content_type": &image.content_type})
            .await
            .map_err(backend)?;
        up.write_all(&image.data)
            .await
            .map_err(|e| StoreError::Unavailable(format!("GridFS write: {e}")))?;
        up.close()
            .await
            .map_err(|e| StoreError::Unavailable(format!("GridFS close: {e}")))?;
        Ok(())
    }

    async fn get_image(&self, id: &str) -> Result<Option<ImageBlob>, StoreError> {
        let Some(file) = self
            .images
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let meta = file.metadata.clone().unwrap_or_default();
        let mut stream = self
            .images
            .open_download_stream(Bson::String(id.to_string()))
            .await
            .map_err(backend)?;
        let mut data = Vec::with_capacity(file.length as usize);
        stream
            .read_to_end(&mut data)
            .await
            .map_err(|e| StoreError::Unavailable(format!("GridFS read: {e}")))?;
        Ok(Some(ImageBlob {
            id: id.to_string(),
            task_id: meta.get_str("task_id").unwrap_or_default().to_string(),
            content_type: meta
                .get_str("content_type")
                .unwrap_or("application/octet-stream")
                .to_string(),
            data: data.into(),
        }))
    }

    async fn delete_images(&self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            match self.images.delete(Bson::String(id.clone())).await {
                Ok(()) => {}
                // Already gone is what we wanted.
                Err(e) if matches!(e.kind.as_ref(), ErrorKind::GridFs(_)) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }
}
