//! A lane: one SQLite database with its writer thread (the only write connection, committing
//! every queued write in one transaction), its checkpointer and its pool of read connections.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::Connection;

use super::backend;
use crate::config::SyncMode;
use crate::store::StoreError;

/// One database: its writer thread (the only write connection), checkpointer and readers.
pub(super) struct Lane {
    writes: Option<mpsc::Sender<WriteJob>>,
    writer: Option<std::thread::JoinHandle<()>>,
    readers: Arc<Readers>,
    pub(super) path: PathBuf,
}

/// One write: runs on the writer's connection inside the batch's transaction (or is told why
/// there is none) and says whether it succeeded; the returned `Finish` answers its caller once
/// the batch's fate is known.
type WriteJob = Box<dyn FnOnce(Result<&Connection, &str>) -> (bool, Finish) + Send>;
/// Called with `None` after the COMMIT, or with the reason the batch was not committed.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

/// Writes taken into one transaction at most; bounds the time a write waits behind others.
const MAX_BATCH: usize = 256;

/// Idle read connections; one is opened when none is free, and one handed back while
/// `MAX_IDLE_READERS` are idle is closed. Reads run on the async threads (lookups) and on the
/// blocking pool (scans), which grows under a burst: kept, every reader a burst ever needed
/// stayed open with its page cache filled, up to 2 MiB each (a heap profile after 3,000 tasks
/// found most of the heap there).
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Readers kept open between reads: more than the async threads plus the few scans that run at
/// once in steady use, so a reader is rarely opened (a few hundred microseconds) outside bursts.
const MAX_IDLE_READERS: usize = 8;

/// A reader's page cache, in KiB (SQLite's default is 2 MiB per connection). A reader's pages
/// are dropped whenever another connection has written since its last read, which under load is
/// every read; the operating system's page cache holds the file anyway.
const READER_CACHE_KIB: u32 = 256;

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
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
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
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout=5000; PRAGMA cache_size=-{READER_CACHE_KIB};"
    ))
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
pub(super) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The image database's: see `LaneSpec::checkpoint_every` where it is set.
pub(super) const IMAGE_CHECKPOINT_EVERY: std::time::Duration =
    std::time::Duration::from_millis(500);

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

/// How a lane's database is set up and its threads named.
pub(super) struct LaneSpec<'a> {
    pub(super) path: PathBuf,
    pub(super) sync: SyncMode,
    pub(super) schema: &'a str,
    pub(super) writer_name: &'a str,
    pub(super) checkpointer_name: &'a str,
    /// Its threads run at a lower priority.
    pub(super) background: bool,
    /// `PRAGMA page_size` for a new database.
    pub(super) page_size: u32,
    /// How long the checkpointer lets commits gather (`CHECKPOINT_EVERY` for the main lane).
    pub(super) checkpoint_every: std::time::Duration,
}

/// Opens a lane's write connection (creating the database and its tables if needed).
pub(super) fn open_writer(spec: &LaneSpec<'_>) -> Result<Connection, StoreError> {
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
    pub(super) fn start(
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
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
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
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
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
    pub(super) fn lookup<T>(
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
