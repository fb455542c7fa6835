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

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::task_cache::TaskCache;
use super::{ChangeCursor, ImageBlob, InsertOutcome, Store, StoreError, TaskQuery};
use crate::config::SyncMode;
use crate::domain::{ApiKey, Task, TaskStatus, User};

pub struct SqliteStore {
    // Fields drop in this order: the image lane is closed before the main lane frees the data
    // folder's lock, so a store opened on the folder right after never meets either still open.
    images: Lane,
    /// Users, tasks, API keys; holds the data folder's lock.
    main: Lane,
    /// Tasks for polls. Every method that changes a task row tells it, after the commit: `keep`
    /// for a new version, `remove` (or `clear`) for anything else.
    tasks: TaskCache,
}

/// One database: its writer thread (the only write connection), checkpointer and readers.
struct Lane {
    writes: Option<mpsc::Sender<WriteJob>>,
    writer: Option<std::thread::JoinHandle<()>>,
    readers: Arc<Readers>,
    path: PathBuf,
}

/// Which column of `images` a deletion matches.
enum ImageKey {
    Id,
    Task,
}

/// File names in the data folder.
const MAIN_FILE: &str = "volcengine-ai-server.sqlite3";
const IMAGES_FILE: &str = "volcengine-ai-server-images.sqlite3";

/// One write: runs on the writer's connection inside the batch's transaction (or is told why
/// there is none) and says whether it succeeded; the returned `Finish` answers its caller once
/// the batch's fate is known.
type WriteJob = Box<dyn FnOnce(Result<&Connection, &str>) -> (bool, Finish) + Send>;
/// Called with `None` after the COMMIT, or with the reason the batch was not committed.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

/// Writes taken into one transaction at most; bounds the time a write waits behind others.
const MAX_BATCH: usize = 256;

/// Idle read connections; one is opened when none is free.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = self
            .idle
            .lock()
            .map_err(|_| StoreError::Backend("reader pool mutex poisoned".into()))?
            .pop();
        let conn = match taken {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        out
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    conn.execute_batch("PRAGMA busy_timeout=5000;")
        .map_err(backend)?;
    Ok(conn)
}

/// The writer thread: takes every write queued, runs each in a savepoint of one transaction,
/// commits once, then answers them all. Holds the data folder's lock until its connection is
/// closed, so a new store on the same folder never overlaps it.
fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<WriteJob>,
    lock: Option<File>,
    checkpointer: Checkpointer,
) {
    let step = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
    };
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = step("BEGIN IMMEDIATE") {
            let e = format!("begin: {e}");
            for job in batch {
                let (_, finish) = job(Err(&e));
                finish(Some(&e));
            }
            continue;
        }
        let mut finishes = Vec::with_capacity(batch.len());
        // Some errors (a full disk, an I/O error) make SQLite roll the whole transaction back by
        // itself; a SAVEPOINT after that would open a transaction of its own and commit the
        // rest of the batch one by one, while its callers are told it failed.
        let mut lost: Option<String> = None;
        for job in batch {
            if lost.is_none() && conn.is_autocommit() {
                lost = Some("the transaction was rolled back by an earlier error".into());
            }
            if let Some(e) = &lost {
                let (_, finish) = job(Err(e));
                finishes.push(finish);
                continue;
            }
            if let Err(e) = step("SAVEPOINT w") {
                let (_, finish) = job(Err(&format!("savepoint: {e}")));
                finishes.push(finish);
                continue;
            }
            // A panicking write loses its answer (its caller sees the channel closed) but not
            // the writer, nor the other writes of the batch.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(&conn))));
            let ok = matches!(ran, Ok((true, _)));
            if !ok {
                let _ = step("ROLLBACK TO w");
            }
            let _ = step("RELEASE w");
            if let Ok((_, finish)) = ran {
                finishes.push(finish);
            }
        }
        let committed = match lost {
            Some(e) => Err(e),
            None if conn.is_autocommit() => {
                Err("the transaction was rolled back by an earlier error".into())
            }
            None => step("COMMIT").map_err(|e| format!("commit: {e}")),
        };
        if committed.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let err = committed.err();
        for finish in finishes {
            finish(err.as_deref());
        }
        if err.is_none() {
            checkpointer.nudge();
        }
    }
    checkpointer.stop();
    drop(conn);
    drop(lock);
}

/// How long the checkpointer lets commits gather before copying them into the database file.
/// Short: a WAL that runs far ahead of the checkpoint makes every read search a larger index.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The image database's: see `LaneSpec::checkpoint_every` where it is set.
const IMAGE_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies committed WAL frames into the database file on a thread and connection of its own.
/// SQLite's automatic checkpoint would run inside the writer's COMMIT whenever the WAL passes
/// 1,000 pages, copying and syncing while every write of the next batch waits: it was the 25 ms
/// tail of a submit. A PASSIVE checkpoint never blocks the writer nor the readers. (Tried and
/// left out: a TRUNCATE checkpoint once writes pause, to empty the WAL; it makes starting
/// readers wait on its lock, and the poll p99 doubled.)
struct Checkpointer {
    nudges: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(spec: &LaneSpec<'_>) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(&spec.path).map_err(backend)?;
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let (background, every) = (spec.background, spec.checkpoint_every);
        let thread = std::thread::Builder::new()
            .name(spec.checkpointer_name.into())
            .spawn(move || {
                if background {
                    crate::sys::lower_thread_priority();
                }
                while rx.recv().is_ok() {
                    std::thread::sleep(every);
                    while rx.try_recv().is_ok() {}
                    if let Err(e) = conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
                    }
                }
                // Closing the last connection checkpoints what is left and removes the WAL.
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer {
            nudges: Some(tx),
            thread: Some(thread),
        })
    }

    /// Tells the checkpointer there is something to copy; never waits.
    fn nudge(&self) {
        if let Some(tx) = &self.nudges {
            let _ = tx.try_send(());
        }
    }

    fn stop(mut self) {
        drop(self.nudges.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email_key TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    due_ms INTEGER,
    lease_owner TEXT,
    lease_until_ms INTEGER,
    idem_key TEXT,
    doc TEXT NOT NULL,
    updated_ms INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_user ON tasks (user_id, id);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, id);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idem ON tasks (user_id, idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_by_user ON api_keys (user_id, id);
CREATE INDEX IF NOT EXISTS tasks_active ON tasks (user_id, status);
";

const IMAGES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_task ON images (task_id);
";

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
}

fn cols(t: &Task) -> TaskCols {
    TaskCols {
        due_ms: ms(t.not_before),
        lease_until_ms: ms(t.lease_until),
        updated_ms: t.updated_at.timestamp_millis(),
    }
}

/// How a lane's database is set up and its threads named.
struct LaneSpec<'a> {
    path: PathBuf,
    sync: SyncMode,
    schema: &'a str,
    writer_name: &'a str,
    checkpointer_name: &'a str,
    /// Its threads run at a lower priority.
    background: bool,
    /// `PRAGMA page_size` for a new database.
    page_size: u32,
    /// How long the checkpointer lets commits gather (`CHECKPOINT_EVERY` for the main lane).
    checkpoint_every: std::time::Duration,
}

/// Opens a lane's write connection (creating the database and its tables if needed).
fn open_writer(spec: &LaneSpec<'_>) -> Result<Connection, StoreError> {
    let conn = Connection::open(&spec.path).map_err(backend)?;
    let synchronous = match spec.sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    // Takes effect only while the database is empty (before journal_mode=WAL writes to it).
    conn.execute_batch(&format!("PRAGMA page_size={};", spec.page_size))
        .map_err(backend)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; \
         PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=5000; PRAGMA wal_autocheckpoint=0;"
    ))
    .map_err(backend)?;
    conn.execute_batch(spec.schema).map_err(backend)?;
    Ok(conn)
}

impl Lane {
    /// Starts the lane's threads on `conn` (from `open_writer`); `lock` is held until the
    /// writer's connection is closed.
    fn start(
        spec: &LaneSpec<'_>,
        conn: Connection,
        lock: Option<File>,
    ) -> Result<Lane, StoreError> {
        let checkpointer = Checkpointer::start(spec)?;
        let readers = Arc::new(Readers {
            path: spec.path.clone(),
            idle: Mutex::new(vec![open_reader(&spec.path)?]),
        });
        let (tx, rx) = mpsc::channel();
        let background = spec.background;
        let writer = std::thread::Builder::new()
            .name(spec.writer_name.into())
            .spawn(move || {
                if background {
                    crate::sys::lower_thread_priority();
                }
                writer_loop(conn, rx, lock, checkpointer)
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Lane {
            writes: Some(tx),
            writer: Some(writer),
            readers,
            path: spec.path.clone(),
        })
    }

    /// Runs `f` in the writer's next batch and answers once that batch is committed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let result = match conn {
                Ok(c) => f(c),
                Err(e) => Err(StoreError::Backend(e.to_string())),
            };
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit_error| {
                let result = match (result, commit_error) {
                    (Ok(_), Some(e)) => Err(StoreError::Backend(e.to_string())),
                    (r, _) => r,
                };
                let _ = tx.send(result);
            });
            (ok, finish)
        });
        self.writes
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store closed".into()))?
            .send(job)
            .map_err(|_| StoreError::Backend("the store's writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("store write failed".into()))?
    }

    /// Runs a read on a pooled read connection off the async threads: scans and counts take
    /// milliseconds on a large table.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// A lookup by primary key, on the calling thread. Handing it to the blocking pool costs
    /// two thread wake-ups, several times the lookup itself (a few B-tree pages of a WAL database
    /// already in the page cache), and was the largest share of a poll's cost.
    fn lookup<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.readers.with(f)
    }
}

impl Drop for Lane {
    /// Lets the writer finish what is queued and close (the main lane then frees the folder's
    /// lock).
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Data folders of earlier versions have no `updated_ms` column (what `tasksUpdated` re-reads a
/// gap by): added and filled from the documents once, in one transaction, so a crash leaves
/// either the old table or the whole change.
fn add_change_column(main: &mut Connection) -> Result<(), StoreError> {
    let present = main
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'updated_ms'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    let tx = main.transaction().map_err(backend)?;
    if !present {
        tx.execute_batch("ALTER TABLE tasks ADD COLUMN updated_ms INTEGER")
            .map_err(backend)?;
        // Read from the documents the way new writes compute it (SQLite's date functions round
        // to the millisecond where chrono truncates).
        let mut filled = 0u64;
        {
            let mut read = tx.prepare("SELECT doc FROM tasks").map_err(backend)?;
            let mut write = tx
                .prepare("UPDATE tasks SET updated_ms = ?2 WHERE id = ?1")
                .map_err(backend)?;
            // Row by row: the whole table may not fit in memory.
            let rows = read
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            for row in rows {
                let t: Task = from_json(&row.map_err(backend)?)?;
                write
                    .execute(params![t.id, t.updated_at.timestamp_millis()])
                    .map_err(backend)?;
                filled += 1;
            }
        }
        tracing::info!(tasks = filled, "added the tasks' change times");
    }
    tx.execute_batch("CREATE INDEX IF NOT EXISTS tasks_changed ON tasks (updated_ms, id)")
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Data folders of earlier versions kept the images in the main database: moved into the image
/// database once, at start. Idempotent, so a move cut short by a crash is finished next time.
fn move_legacy_images(main: &Connection, images_path: &Path) -> Result<(), StoreError> {
    let legacy: bool = main
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'images'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    if !legacy {
        return Ok(());
    }
    let path = images_path
        .to_str()
        .ok_or_else(|| StoreError::Backend("the data folder's path is not UTF-8".into()))?;
    main.execute("ATTACH DATABASE ?1 AS img", [path])
        .map_err(backend)?;
    let moved = main
        .execute(
            "INSERT OR IGNORE INTO img.images (id, task_id, content_type, data) \
             SELECT id, task_id, content_type, data FROM main.images",
            [],
        )
        .and_then(|n| main.execute_batch("DROP TABLE main.images").map(|_| n));
    let detached = main.execute_batch("DETACH DATABASE img");
    let moved = moved.map_err(backend)?;
    detached.map_err(backend)?;
    tracing::info!(images = moved, "moved the images into their own database");
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the databases in `dir`, taking the folder's lock. Up to
    /// `task_cache` tasks are kept in memory for polls (`TASK_CACHE_SIZE`).
    pub fn open(dir: &Path, sync: SyncMode, task_cache: usize) -> Result<SqliteStore, StoreError> {
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
        let images_conn = open_writer(&images_spec)?;
        move_legacy_images(&main_conn, &images_spec.path)?;
        add_change_column(&mut main_conn)?;
        let images = Lane::start(&images_spec, images_conn, None)?;
        let main = Lane::start(&main_spec, main_conn, Some(lock))?;
        Ok(SqliteStore {
            images,
            main,
            tasks: TaskCache::new(task_cache),
        })
    }

    pub fn path(&self) -> &Path {
        &self.main.path
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

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lookup(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }

    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        let (id, key, doc) = (
            user.id.clone(),
            User::email_key(&user.email),
            to_json(user)?,
        );
        self.write(move |c| {
            c.prepare_cached("INSERT INTO users (id, email_key, doc) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![id, key, doc]))
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict("a user with this email already exists".into())
                    } else {
                        backend(e)
                    }
                })?;
            Ok(())
        })
        .await
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.lookup(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM users WHERE id = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [id])?.pop())
        })
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let key = User::email_key(email);
        self.lookup(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM users WHERE email_key = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [key])?.pop())
        })
    }

    async fn get_users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let ids = ids.to_vec();
        self.lookup(move |c| {
            // json_each keeps this one statement for any number of ids.
            let list = to_json(&ids)?;
            let mut s = c
                .prepare_cached(
                    "SELECT doc FROM users WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .map_err(backend)?;
            collect_docs(&mut s, [list])
        })
    }

    async fn list_users(
        &self,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let after = after_id.unwrap_or("").to_string();
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM users WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(backend)?;
            collect_docs(&mut s, params![after, limit as i64])
        })
        .await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(backend)
        })
        .await
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let (id, key, doc) = (
            user.id.clone(),
            User::email_key(&user.email),
            to_json(user)?,
        );
        self.write(move |c| {
            let n = c
                .prepare_cached("UPDATE users SET email_key = ?2, doc = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, key, doc]))
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict("a user with this email already exists".into())
                    } else {
                        backend(e)
                    }
                })?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        // Images first (see the module's comment on the two databases).
        let user = id.clone();
        let tasks: Vec<String> = self
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT id FROM tasks WHERE user_id = ?1")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([&user], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)
            })
            .await?;
        self.delete_images_by(ImageKey::Task, &tasks).await?;
        let deleted = self
            .write(move |c| {
                c.execute("DELETE FROM tasks WHERE user_id = ?1", [&id])
                    .map_err(backend)?;
                c.execute("DELETE FROM api_keys WHERE user_id = ?1", [&id])
                    .map_err(backend)?;
                let n = c
                    .execute("DELETE FROM users WHERE id = ?1", [&id])
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await;
        // All, not the ids read above: a task inserted since would be missed.
        self.tasks.clear();
        deleted
    }

    async fn insert_task(&self, task: &Task) -> Result<InsertOutcome, StoreError> {
        let doc = to_json(task)?;
        let t = task.clone();
        let since = self.tasks.generation();
        let outcome = self
            .write(move |c| {
                let TaskCols {
                    due_ms,
                    lease_until_ms,
                    updated_ms,
                } = cols(&t);
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO tasks (id, user_id, status, version, due_ms, lease_owner, \
                     lease_until_ms, idem_key, doc, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            t.id,
                            t.user_id,
                            t.status.as_str(),
                            t.version,
                            due_ms,
                            t.lease_owner,
                            lease_until_ms,
                            t.idempotency_key,
                            doc,
                            updated_ms
                        ])
                    });
                match inserted {
                    Ok(_) => Ok(InsertOutcome::Inserted),
                    Err(e) if is_unique_violation(&e) && t.idempotency_key.is_some() => {
                        let mut s = c
                            .prepare_cached(
                                "SELECT doc FROM tasks WHERE user_id = ?1 AND idem_key = ?2",
                            )
                            .map_err(backend)?;
                        match collect_docs::<Task>(&mut s, params![t.user_id, t.idempotency_key])?
                            .pop()
                        {
                            Some(existing) => Ok(InsertOutcome::Existing(Box::new(existing))),
                            None => Err(StoreError::Conflict("task id already exists".into())),
                        }
                    }
                    Err(e) if is_unique_violation(&e) => {
                        Err(StoreError::Conflict("task id already exists".into()))
                    }
                    Err(e) => Err(backend(e)),
                }
            })
            .await?;
        if matches!(outcome, InsertOutcome::Inserted) {
            self.tasks.keep(task, since);
        }
        Ok(outcome)
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        if let Some(t) = self.tasks.get(id) {
            return Ok(Some(Task::clone(&t)));
        }
        let since = self.tasks.generation();
        let found = self.lookup(|c| read_task(c, id))?;
        if let Some(t) = &found {
            self.tasks.keep(t, since);
        }
        Ok(found)
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT doc FROM tasks \
                     WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR status = ?2) \
                       AND (?3 IS NULL OR id < ?3) \
                     ORDER BY id DESC LIMIT ?4 OFFSET ?5",
                )
                .map_err(backend)?;
            collect_docs(
                &mut s,
                params![
                    q.user_id,
                    q.status.map(|st| st.as_str()),
                    q.before_id,
                    q.limit as i64,
                    q.offset as i64
                ],
            )
        })
        .await
    }

    async fn tasks_changed(
        &self,
        user_id: Option<&str>,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let (user_id, after) = (user_id.map(str::to_string), after.clone());
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT doc FROM tasks WHERE (updated_ms, id) > (?1, ?2) \
                       AND (?3 IS NULL OR user_id = ?3) \
                     ORDER BY updated_ms, id LIMIT ?4",
                )
                .map_err(backend)?;
            collect_docs(
                &mut s,
                params![after.updated_ms, after.id, user_id, limit as i64],
            )
        })
        .await
    }

    async fn count_tasks(
        &self,
        user_id: Option<&str>,
        status: Option<TaskStatus>,
    ) -> Result<u64, StoreError> {
        let user_id = user_id.map(str::to_string);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COUNT(*) FROM tasks WHERE (?1 IS NULL OR user_id = ?1) \
                 AND (?2 IS NULL OR status = ?2)",
            )
            .and_then(|mut s| {
                s.query_row(params![user_id, status.map(|st| st.as_str())], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }

    async fn replace_task(
        &self,
        task: &Task,
        expected_version: i64,
        expected_status: TaskStatus,
    ) -> Result<bool, StoreError> {
        let doc = to_json(task)?;
        let t = task.clone();
        let since = self.tasks.generation();
        let outcome = self
            .write(move |c| {
                let TaskCols {
                    due_ms,
                    lease_until_ms,
                    updated_ms,
                } = cols(&t);
                let n = c
                .prepare_cached(
                    "UPDATE tasks SET status = ?2, version = ?3, due_ms = ?4, lease_owner = ?5, \
                     lease_until_ms = ?6, doc = ?7, updated_ms = ?10 \
                     WHERE id = ?1 AND version = ?8 AND status = ?9",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        t.id,
                        t.status.as_str(),
                        t.version,
                        due_ms,
                        t.lease_owner,
                        lease_until_ms,
                        doc,
                        expected_version,
                        expected_status.as_str(),
                        updated_ms
                    ])
                })
                .map_err(backend)?;
                Ok(n == 1)
            })
            .await?;
        if outcome {
            self.tasks.keep(task, since);
        }
        Ok(outcome)
    }

    async fn extend_lease(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (task_id, owner) = (id.to_string(), owner.to_string());
        let extended = self
            .write(move |c| {
                let Some(mut task) = read_task(c, &task_id)? else {
                    return Ok(false);
                };
                if task.status != TaskStatus::Processing
                    || task.lease_owner.as_deref() != Some(&owner)
                {
                    return Ok(false);
                }
                task.lease_until = Some(until);
                let n = c
                .execute(
                    "UPDATE tasks SET lease_until_ms = ?2, doc = ?3 WHERE id = ?1 AND version = ?4",
                    params![task_id, until.timestamp_millis(), to_json(&task)?, task.version],
                )
                .map_err(backend)?;
                Ok(n == 1)
            })
            .await;
        // A new lease is no new version, so the cached one cannot be told from it.
        self.tasks.remove(id);
        extended
    }

    async fn due_tasks(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Task>, StoreError> {
        let now = now.timestamp_millis();
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT doc FROM tasks \
                     WHERE (status = 'pending' AND (due_ms IS NULL OR due_ms <= ?1)) \
                        OR (status = 'processing' AND lease_until_ms < ?1) \
                     ORDER BY id LIMIT ?2",
                )
                .map_err(backend)?;
            collect_docs(&mut s, params![now, limit as i64])
        })
        .await
    }

    async fn oldest_pending(&self) -> Result<Option<Task>, StoreError> {
        self.read(|c| {
            let mut s = c
                .prepare_cached(
                    "SELECT doc FROM tasks WHERE status = 'pending' ORDER BY id LIMIT 1",
                )
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [])?.pop())
        })
        .await
    }

    async fn processing_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached(
                    "SELECT doc FROM tasks WHERE status = 'processing' ORDER BY id LIMIT ?1",
                )
                .map_err(backend)?;
            collect_docs(&mut s, [limit as i64])
        })
        .await
    }

    async fn delete_task(&self, id: &str) -> Result<bool, StoreError> {
        let task_id = id.to_string();
        self.delete_images_by(ImageKey::Task, std::slice::from_ref(&task_id))
            .await?;
        let deleted = self
            .write(move |c| {
                let n = c
                    .execute("DELETE FROM tasks WHERE id = ?1", [&task_id])
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await;
        self.tasks.remove(id);
        deleted
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<u64, StoreError> {
        let id = user_id.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COUNT(*) FROM tasks WHERE user_id = ?1 \
                 AND status IN ('pending', 'processing')",
            )
            .and_then(|mut s| s.query_row([id], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }

    async fn release_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
        task_id: &str,
    ) -> Result<(), StoreError> {
        let (u, k, t) = (user_id.to_string(), key.to_string(), task_id.to_string());
        let released = self
            .write(move |c| {
                // Only the claim (the indexed column): the document keeps the key the task was
                // created under, as in MongoDB, where a writer holding the task may write it back.
                c.prepare_cached(
                    "UPDATE tasks SET idem_key = NULL \
                     WHERE id = ?1 AND user_id = ?2 AND idem_key = ?3",
                )
                .and_then(|mut s| s.execute(params![t, u, k]))
                .map(|_| ())
                .map_err(backend)
            })
            .await;
        self.tasks.remove(task_id);
        released
    }

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let (id, user, hash, doc) = (
            key.id.clone(),
            key.user_id.clone(),
            key.hash.clone(),
            to_json(key)?,
        );
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO api_keys (id, user_id, hash, doc) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![id, user, hash, doc]))
            .map(|_| ())
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("API key already exists".into())
                } else {
                    backend(e)
                }
            })
        })
        .await
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM api_keys WHERE id = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [id])?.pop())
        })
        .await
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.to_string();
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM api_keys WHERE hash = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [hash])?.pop())
        })
        .await
    }

    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let id = user_id.to_string();
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM api_keys WHERE user_id = ?1 ORDER BY id")
                .map_err(backend)?;
            collect_docs(&mut s, [id])
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let (id, at) = (id.to_string(), crate::domain::rfc3339(at));
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE api_keys SET doc = json_set(doc, '$.revoked_at', \
                 COALESCE(json_extract(doc, '$.revoked_at'), ?2)) WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, at]))
            .map(|n| n == 1)
            .map_err(backend)
        })
        .await
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let (id, at) = (id.to_string(), crate::domain::rfc3339(at));
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE api_keys SET doc = json_set(doc, '$.last_used_at', ?2) WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, at]))
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn status_counts(&self) -> Result<HashMap<TaskStatus, u64>, StoreError> {
        self.read(|c| {
            let mut s = c
                .prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                .map_err(backend)?;
            let rows = s
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            let mut out = HashMap::new();
            for row in rows {
                let (status, n) = row.map_err(backend)?;
                if let Some(st) = TaskStatus::parse(&status) {
                    out.insert(st, n as u64);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_image(&self, image: &ImageBlob) -> Result<(), StoreError> {
        let img = image.clone();
        self.images.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO images (id, task_id, content_type, data) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![img.id, img.task_id, img.content_type, &img.data[..]]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_image(&self, id: &str) -> Result<Option<ImageBlob>, StoreError> {
        let id = id.to_string();
        self.images
            .read(move |c| {
                c.prepare_cached("SELECT id, task_id, content_type, data FROM images WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([id], |r| {
                            Ok(ImageBlob {
                                id: r.get(0)?,
                                task_id: r.get(1)?,
                                content_type: r.get(2)?,
                                data: r.get::<_, Vec<u8>>(3)?.into(),
                            })
                        })
                        .optional()
                    })
                    .map_err(backend)
            })
            .await
    }

    async fn delete_images(&self, ids: &[String]) -> Result<(), StoreError> {
        self.delete_images_by(ImageKey::Id, ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data folder of an earlier version (no change times) opens with its tasks' change times
    /// filled in from their documents, so `tasks_changed` finds them in change order; new and
    /// replaced tasks keep the order.
    #[tokio::test]
    async fn change_times_of_an_earlier_layout_are_filled_and_kept() {
        use crate::domain::{ImageParams, Task};
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |s: &str| s.parse::<DateTime<chrono::Utc>>().expect("time");
        let mut old_task = Task::new_pending(
            "u1".into(),
            "m".into(),
            "p".into(),
            ImageParams::default(),
            None,
            at("2026-01-02T03:04:05.678901Z"),
        );
        old_task.id = "t-old".into();
        {
            let old = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            old.execute_batch(
                "CREATE TABLE tasks (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, \
                 status TEXT NOT NULL, version INTEGER NOT NULL, due_ms INTEGER, \
                 lease_owner TEXT, lease_until_ms INTEGER, idem_key TEXT, doc TEXT NOT NULL);",
            )
            .expect("old schema");
            old.execute(
                "INSERT INTO tasks (id, user_id, status, version, doc) \
                 VALUES (?1, 'u1', 'pending', 1, ?2)",
                params![old_task.id, to_json(&old_task).expect("json")],
            )
            .expect("insert");
        }
        let store = SqliteStore::open(dir.path(), SyncMode::Normal, 100).expect("open store");
        let mut other = old_task.clone();
        other.id = "t-other-user".into();
        other.user_id = "u2".into();
        other.updated_at = at("2026-01-02T03:04:06Z");
        store.insert_task(&other).await.expect("insert");
        let mut newer = old_task.clone();
        newer.id = "t-new".into();
        newer.updated_at = at("2026-01-02T03:04:07Z");
        store.insert_task(&newer).await.expect("insert");

        let ids = |ts: Vec<Task>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
        let all = store
            .tasks_changed(Some("u1"), &ChangeCursor::default(), 10)
            .await
            .expect("read");
        assert_eq!(ids(all), ["t-old", "t-new"]);
        let since = ChangeCursor::of(&old_task);
        assert_eq!(since.updated_ms, 1_767_323_045_678);
        let after_old = store.tasks_changed(None, &since, 10).await.expect("read");
        assert_eq!(ids(after_old), ["t-other-user", "t-new"]);

        // A new version moves the old task to the end of the order.
        let mut replaced = old_task.clone();
        replaced.version = 2;
        replaced.updated_at = at("2026-01-02T03:04:08Z");
        assert!(store
            .replace_task(&replaced, 1, crate::domain::TaskStatus::Pending)
            .await
            .expect("replace"));
        let paged = store
            .tasks_changed(None, &ChangeCursor::from_ms(0), 2)
            .await
            .expect("read");
        assert_eq!(ids(paged), ["t-other-user", "t-new"]);
        let rest = store
            .tasks_changed(None, &ChangeCursor::from_ms(1_767_323_047_000), 2)
            .await
            .expect("read");
        assert_eq!(ids(rest), ["t-new", "t-old"]);
    }

    /// A data folder of an earlier version (images inside the main database) opens with every
    /// image readable, moved into the image database; opening it again changes nothing.
    #[tokio::test]
    async fn images_of_an_earlier_layout_are_moved_and_still_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let old = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            old.execute_batch(SCHEMA).expect("schema");
            old.execute_batch(IMAGES_SCHEMA)
                .expect("legacy images table");
            old.execute(
                "INSERT INTO images (id, task_id, content_type, data) VALUES ('i1', 't1', 'image/png', x'89504e47')",
                [],
            )
            .expect("insert");
        }
        for _ in 0..2 {
            let store = SqliteStore::open(dir.path(), SyncMode::Normal, 100).expect("open store");
            let img = store
                .get_image("i1")
                .await
                .expect("read")
                .expect("still there");
            assert_eq!(img.task_id, "t1");
            assert_eq!(img.content_type, "image/png");
            assert_eq!(&img.data[..], b"\x89PNG");
            drop(store);
            let main = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            let tables: i64 = main
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = 'images'",
                    [],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(tables, 0, "the main database keeps no images table");
        }
    }
}
