//! The embedded store: one SQLite database in the data folder (WAL mode), holding users, tasks
//! and image bytes. Records are kept as JSON documents beside the few columns that queries
//! filter on, the same shape the MongoDB store keeps, so both serialise the domain types alike.
//!
//! One process owns a data folder at a time (an OS file lock on `data/LOCK`): the embedded worker
//! may then treat every task still `processing` at start as orphaned by a crash.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{ImageBlob, InsertOutcome, Store, StoreError, TaskQuery};
use crate::config::SyncMode;
use crate::domain::{ApiKey, Task, TaskStatus, User};

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    // Held for the life of the store: the OS lock is released when the file is closed.
    _lock: File,
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
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_user ON tasks (user_id, id);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, id);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idem ON tasks (user_id, idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_task ON images (task_id);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_by_user ON api_keys (user_id, id);
CREATE INDEX IF NOT EXISTS tasks_active ON tasks (user_id, status);
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
}

fn cols(t: &Task) -> TaskCols {
    TaskCols {
        due_ms: ms(t.not_before),
        lease_until_ms: ms(t.lease_until),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir`, taking the folder's lock.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<SqliteStore, StoreError> {
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
        let path = dir.join("volcengine-ai-server.sqlite3");
        let conn = Connection::open(&path).map_err(backend)?;
        let synchronous = match sync {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; \
             PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=5000;"
        ))
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection off the async threads: SQLite calls block.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("connection mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
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
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        let (id, key, doc) = (
            user.id.clone(),
            User::email_key(&user.email),
            to_json(user)?,
        );
        self.run(move |c| {
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
        self.run(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM users WHERE id = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [id])?.pop())
        })
        .await
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let key = User::email_key(email);
        self.run(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM users WHERE email_key = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [key])?.pop())
        })
        .await
    }

    async fn get_users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let ids = ids.to_vec();
        self.run(move |c| {
            // json_each keeps this one statement for any number of ids.
            let list = to_json(&ids)?;
            let mut s = c
                .prepare_cached(
                    "SELECT doc FROM users WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .map_err(backend)?;
            collect_docs(&mut s, [list])
        })
        .await
    }

    async fn list_users(
        &self,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let after = after_id.unwrap_or("").to_string();
        self.run(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM users WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(backend)?;
            collect_docs(&mut s, params![after, limit as i64])
        })
        .await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.run(|c| {
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
        self.run(move |c| {
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
        self.run(move |c| {
            let tx = c.transaction().map_err(backend)?;
            tx.execute(
                "DELETE FROM images WHERE task_id IN (SELECT id FROM tasks WHERE user_id = ?1)",
                [&id],
            )
            .map_err(backend)?;
            tx.execute("DELETE FROM tasks WHERE user_id = ?1", [&id])
                .map_err(backend)?;
            tx.execute("DELETE FROM api_keys WHERE user_id = ?1", [&id])
                .map_err(backend)?;
            let n = tx
                .execute("DELETE FROM users WHERE id = ?1", [&id])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn insert_task(&self, task: &Task) -> Result<InsertOutcome, StoreError> {
        let doc = to_json(task)?;
        let t = task.clone();
        self.run(move |c| {
            let TaskCols {
                due_ms,
                lease_until_ms,
            } = cols(&t);
            let inserted = c
                .prepare_cached(
                    "INSERT INTO tasks (id, user_id, status, version, due_ms, lease_owner, \
                     lease_until_ms, idem_key, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
                        doc
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
                    match collect_docs::<Task>(&mut s, params![t.user_id, t.idempotency_key])?.pop()
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
        .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let id = id.to_string();
        self.run(move |c| read_task(c, &id)).await
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let q = q.clone();
        self.run(move |c| {
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

    async fn count_tasks(
        &self,
        user_id: Option<&str>,
        status: Option<TaskStatus>,
    ) -> Result<u64, StoreError> {
        let user_id = user_id.map(str::to_string);
        self.run(move |c| {
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
        self.run(move |c| {
            let TaskCols {
                due_ms,
                lease_until_ms,
            } = cols(&t);
            let n = c
                .prepare_cached(
                    "UPDATE tasks SET status = ?2, version = ?3, due_ms = ?4, lease_owner = ?5, \
                     lease_until_ms = ?6, doc = ?7 WHERE id = ?1 AND version = ?8 AND status = ?9",
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
                        expected_status.as_str()
                    ])
                })
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn extend_lease(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.run(move |c| {
            let tx = c.transaction().map_err(backend)?;
            let Some(mut task) = read_task(&tx, &id)? else {
                return Ok(false);
            };
            if task.status != TaskStatus::Processing || task.lease_owner.as_deref() != Some(&owner)
            {
                return Ok(false);
            }
            task.lease_until = Some(until);
            let n = tx
                .execute(
                    "UPDATE tasks SET lease_until_ms = ?2, doc = ?3 WHERE id = ?1 AND version = ?4",
                    params![id, until.timestamp_millis(), to_json(&task)?, task.version],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn due_tasks(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Task>, StoreError> {
        let now = now.timestamp_millis();
        self.run(move |c| {
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
        self.run(|c| {
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
        self.run(move |c| {
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
        let id = id.to_string();
        self.run(move |c| {
            let tx = c.transaction().map_err(backend)?;
            tx.execute("DELETE FROM images WHERE task_id = ?1", [&id])
                .map_err(backend)?;
            let n = tx
                .execute("DELETE FROM tasks WHERE id = ?1", [&id])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<u64, StoreError> {
        let id = user_id.to_string();
        self.run(move |c| {
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
        self.run(move |c| {
            c.prepare_cached(
                "UPDATE tasks SET idem_key = NULL, \
                 doc = json_set(doc, '$.idempotency_key', NULL) \
                 WHERE id = ?1 AND user_id = ?2 AND idem_key = ?3",
            )
            .and_then(|mut s| s.execute(params![t, u, k]))
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let (id, user, hash, doc) = (
            key.id.clone(),
            key.user_id.clone(),
            key.hash.clone(),
            to_json(key)?,
        );
        self.run(move |c| {
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
        self.run(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM api_keys WHERE id = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [id])?.pop())
        })
        .await
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.to_string();
        self.run(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM api_keys WHERE hash = ?1")
                .map_err(backend)?;
            Ok(collect_docs(&mut s, [hash])?.pop())
        })
        .await
    }

    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let id = user_id.to_string();
        self.run(move |c| {
            let mut s = c
                .prepare_cached("SELECT doc FROM api_keys WHERE user_id = ?1 ORDER BY id")
                .map_err(backend)?;
            collect_docs(&mut s, [id])
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let (id, at) = (id.to_string(), crate::http::rfc3339(at));
        self.run(move |c| {
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
        let (id, at) = (id.to_string(), crate::http::rfc3339(at));
        self.run(move |c| {
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
        self.run(|c| {
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
        self.run(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO images (id, task_id, content_type, data) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![img.id, img.task_id, img.content_type, img.data]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_image(&self, id: &str) -> Result<Option<ImageBlob>, StoreError> {
        let id = id.to_string();
        self.run(move |c| {
            c.prepare_cached("SELECT id, task_id, content_type, data FROM images WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([id], |r| {
                        Ok(ImageBlob {
                            id: r.get(0)?,
                            task_id: r.get(1)?,
                            content_type: r.get(2)?,
                            data: r.get(3)?,
                        })
                    })
                    .optional()
                })
                .map_err(backend)
        })
        .await
    }

    async fn delete_images(&self, ids: &[String]) -> Result<(), StoreError> {
        let list = to_json(&ids)?;
        self.run(move |c| {
            c.execute(
                "DELETE FROM images WHERE id IN (SELECT value FROM json_each(?1))",
                [list],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
