//! The distributed store: MongoDB through the official driver, image bytes in GridFS. Uses only
//! standard commands (no transactions, no partial indexes), so it runs on MongoDB and on
//! MongoDB-compatible servers such as FerretDB alike.
//!
//! Task documents are the serde form of `Task` plus `_id` and a few numeric fields that queries
//! filter on (`due_ms`, `lease_until_ms`, `deadline_ms`): chrono times serialise as strings,
//! which do not compare as times.

mod inserts;
mod locks;
mod queries;
mod usage;
mod videos;
mod webhooks;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::gridfs::GridFsBucket;
use mongodb::options::{ClientOptions, GridFsBucketOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::sync::mpsc;

use crate::domain::{Task, TaskStatus, User};
use crate::store::StoreError;
use inserts::{write_inserts, PendingInsert, MAX_INSERT_BATCH};

pub struct MongoStore {
    db: Database,
    users: Collection<Document>,
    tasks: Collection<Document>,
    idempotency: Collection<Document>,
    api_keys: Collection<Document>,
    images: GridFsBucket,
    /// Video files (`videos.rs`).
    videos: GridFsBucket,
    /// Per-task write locks, for servers whose conditional update is not atomic.
    locks: Option<Collection<Document>>,
    /// New task documents, written together (see `write_inserts`).
    inserts: mpsc::Sender<PendingInsert>,
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
    d.insert("outbox_pending", !t.outbox.is_empty());
    // Only while it can still pass: finished tasks stay out of the sweep's index ranges.
    let deadline = if t.status.is_terminal() {
        Bson::Null
    } else {
        ms(t.deadline_at)
    };
    d.insert("deadline_ms", deadline);
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

/// The setting that says every stored task has its `updated_ms` (`add_change_times`).
const CHANGE_TIMES_FILLED: &str = "migrated:updated_ms";

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
            videos: db.gridfs_bucket(
                GridFsBucketOptions::builder()
                    .bucket_name("videos".to_string())
                    .build(),
            ),
            locks: locked.then(|| db.collection("task_locks")),
            inserts,
            db,
        };
        store.create_indexes().await?;
        store.create_webhook_indexes().await?;
        store.create_usage_indexes().await?;
        store.add_change_times().await?;
        Ok(store)
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
            // A user's page and count by status, and its unfinished tasks (the in-flight quota):
            // ranges of the user's entries, however many tasks others have.
            doc! {"user_id": 1, "status": 1, "_id": -1},
            doc! {"status": 1, "due_ms": 1},
            doc! {"status": 1, "lease_until_ms": 1},
            doc! {"updated_ms": 1, "_id": 1},
            doc! {"status": 1, "deadline_ms": 1},
            doc! {"status": 1, "queue_seq": 1},
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
    /// A start that finds none to fill marks it done (`settings`), and later starts skip the
    /// query: FerretDB answers `$exists: false` by reading every task, so every start cost a
    /// pass over the whole collection.
    async fn add_change_times(&self) -> Result<(), StoreError> {
        let settings = self.db.collection::<Document>("settings");
        if settings
            .find_one(doc! {"_id": CHANGE_TIMES_FILLED})
            .await
            .map_err(backend)?
            .is_some()
        {
            return Ok(());
        }
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
        } else {
            self.mongo_setting_or_insert(CHANGE_TIMES_FILLED, "done")
                .await?;
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
