//! The embedded store: two SQLite databases in the data folder (WAL mode), one for users, tasks
//! and keys, one for image bytes. Records are kept as JSON documents beside the few columns that
//! queries filter on, the same shape the MongoDB store keeps, so both serialise the domain types
//! alike.
//!
//! Each database is a lane of its own (writer thread, checkpointer, readers): a burst of finished
//! tasks writes megabytes of images, and in one database every state change (the completions
//! themselves, submits) queued behind those bytes. The image lane's threads also run at a lower
//! priority (`sys::lower_thread_priority`), like the worker that feeds them. An image is stored
//! before the task that names it commits, and deleted before its task is, so the image database
//! may hold an image no task names (a crash between the two) but a task never names a missing
//! image.
//!
//! One process owns a data folder at a time (an OS file lock on `data/LOCK`): the embedded worker
//! may then treat every task still `processing` at start as orphaned by a crash.
//!
//! Writes go to one writer thread that owns the only write connection and commits whatever
//! writes have queued up meanwhile in one transaction (group commit): a commit costs the same
//! for one row or a hundred, so under load each write pays a share of it. Every write runs in a
//! savepoint of its own, so one that fails leaves the others of its batch untouched, and its
//! caller hears back only after the batch's COMMIT returned — an acknowledged write is as
//! durable as with a commit of its own (`EMBEDDED_SYNC`).
//!
//! Reads use a pool of read connections (WAL: they never wait for the writer).

mod lane;
mod lists;
mod queries;
mod schema;
mod usage;
mod videos;
mod webhooks;

use std::fs::File;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};

use crate::config::SyncMode;
use crate::domain::Task;
use crate::store::task_cache::{TaskCache, TaskCacheBounds};
use crate::store::StoreError;
use lane::{open_writer, Lane, LaneSpec, CHECKPOINT_EVERY, IMAGE_CHECKPOINT_EVERY};
use schema::{
    add_change_column, add_deadline_column, add_status_counts, move_legacy_images, IMAGES_SCHEMA,
    SCHEMA,
};

pub struct SqliteStore {
    // Fields drop in this order: the image lane is closed before the main lane frees the data
    // folder's lock, so a store opened on the folder right after never meets either still open.
    images: Lane,
    /// Users, tasks, API keys; holds the data folder's lock.
    main: Lane,
    /// Tasks for polls. Every method that changes a task row tells it, after the commit: `keep`
    /// for a new version, `remove` (or `clear`) for anything else.
    tasks: TaskCache,
    /// Video files (`videos.rs`).
    videos: std::path::PathBuf,
}

/// Which column of `images` a deletion matches.
enum ImageKey {
    Id,
    Task,
}

/// File names in the data folder.
const MAIN_FILE: &str = "volcengine-ai-server.sqlite3";
const IMAGES_FILE: &str = "volcengine-ai-server-images.sqlite3";

fn backend(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("decode: {e}")))
}

fn ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

/// Columns derived from a task document, kept beside it for queries.
struct TaskCols {
    due_ms: Option<i64>,
    lease_until_ms: Option<i64>,
    updated_ms: i64,
    /// Only while the task can still pass it: finished tasks stay out of the sweep's index
    /// ranges.
    deadline_ms: Option<i64>,
}

fn cols(t: &Task) -> TaskCols {
    TaskCols {
        due_ms: ms(t.not_before),
        lease_until_ms: ms(t.lease_until),
        updated_ms: t.updated_at.timestamp_millis(),
        deadline_ms: ms(t.deadline_at).filter(|_| !t.status.is_terminal()),
    }
}

/// A new task's row (`insert_task`, `import_tasks`).
const INSERT_TASK: &str = "INSERT INTO tasks (id, user_id, status, version, due_ms, lease_owner, \
     lease_until_ms, idem_key, doc, updated_ms, deadline_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

impl SqliteStore {
    /// Opens (creating if needed) the databases in `dir`, taking the folder's lock. Tasks are
    /// kept in memory for polls up to `task_cache` (`TASK_CACHE_SIZE`, `TASK_CACHE_BYTES`).
    pub fn open(
        dir: &Path,
        sync: SyncMode,
        task_cache: TaskCacheBounds,
    ) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("cannot create data folder {}: {e}", dir.display()))
        })?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| {
            StoreError::Backend(format!("cannot open {}: {e}", lock_path.display()))
        })?;
        lock.try_lock().map_err(|_| {
            StoreError::Backend(format!(
                "data folder {} is in use by another process (lock {} is held)",
                dir.display(),
                lock_path.display()
            ))
        })?;
        let main_spec = LaneSpec {
            path: dir.join(MAIN_FILE),
            sync,
            schema: SCHEMA,
            writer_name: "sqlite-writer",
            checkpointer_name: "sqlite-checkpoint",
            background: false,
            page_size: 4096,
            checkpoint_every: CHECKPOINT_EVERY,
        };
        let images_spec = LaneSpec {
            path: dir.join(IMAGES_FILE),
            sync,
            schema: IMAGES_SCHEMA,
            writer_name: "sqlite-img-writer",
            checkpointer_name: "sqlite-img-ckpt",
            background: true,
            // An image (tens to hundreds of KiB) in a few large pages rather than dozens of
            // small ones: fewer WAL frames, checksums and writes, for the writer and the
            // checkpointer alike.
            page_size: 65536,
            // Images are read rarely, so a longer WAL costs little; fewer checkpoints, fewer
            // syncs.
            checkpoint_every: IMAGE_CHECKPOINT_EVERY,
        };
        let mut main_conn = open_writer(&main_spec)?;
        main_conn
            .execute_batch(webhooks::WEBHOOK_SCHEMA)
            .map_err(backend)?;
        let images_conn = open_writer(&images_spec)?;
        move_legacy_images(&main_conn, &images_spec.path)?;
        add_change_column(&mut main_conn)?;
        add_deadline_column(&main_conn)?;
        add_status_counts(&mut main_conn)?;
        let images = Lane::start(&images_spec, images_conn, None)?;
        let main = Lane::start(&main_spec, main_conn, Some(lock))?;
        Ok(SqliteStore {
            images,
            main,
            tasks: TaskCache::new(task_cache),
            videos: dir.join("videos"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.main.path
    }

    /// Stores many tasks at once, as they are (terminal ones with their usage), a few thousand
    /// to a transaction: how `bench stored` fills a data folder with a million tasks in seconds
    /// rather than a million submits. Fails on an id already stored; not for a running service
    /// (it skips the task cache, the idempotency lookup and the webhook outbox).
    pub async fn import_tasks(&self, tasks: Vec<Task>) -> Result<(), StoreError> {
        let mut tasks = tasks.into_iter().peekable();
        while tasks.peek().is_some() {
            let chunk: Vec<Task> = tasks.by_ref().take(5_000).collect();
            self.write(move |c| {
                let mut s = c.prepare_cached(INSERT_TASK).map_err(backend)?;
                for t in &chunk {
                    let TaskCols {
                        due_ms,
                        lease_until_ms,
                        updated_ms,
                        deadline_ms,
                    } = cols(t);
                    s.execute(rusqlite::params![
                        t.id,
                        t.user_id,
                        t.status.as_str(),
                        t.version,
                        due_ms,
                        t.lease_owner,
                        lease_until_ms,
                        t.idempotency_key,
                        to_json(t)?,
                        updated_ms,
                        deadline_ms
                    ])
                    .map_err(backend)?;
                    usage::record(c, t, crate::domain::TaskStatus::Pending)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Deletes the images whose `id`, or whose `task_id`, is one of `keys`.
    async fn delete_images_by(&self, by: ImageKey, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let list = to_json(&keys)?;
        let sql = match by {
            ImageKey::Id => "DELETE FROM images WHERE id IN (SELECT value FROM json_each(?1))",
            ImageKey::Task => {
                "DELETE FROM images WHERE task_id IN (SELECT value FROM json_each(?1))"
            }
        };
        self.images
            .write(move |c| {
                c.execute(sql, [list]).map_err(backend)?;
                Ok(())
            })
            .await
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.main.write(f).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.main.read(f).await
    }

    fn lookup<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.main.lookup(f)
    }
}

fn read_task(conn: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM tasks WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(backend)?;
    doc.map(|d| from_json(&d)).transpose()
}

fn collect_docs<T: serde::de::DeserializeOwned>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let rows = stmt
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(from_json(&row.map_err(backend)?)?);
    }
    Ok(out)
}
