//! The `Store` methods over the two lanes: users, tasks, idempotency keys, API keys and images.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::webhooks::{without_outbox, write_outbox};
use super::{
    backend, collect_docs, cols, is_unique_violation, read_task, to_json, ImageKey, SqliteStore,
    TaskCols, INSERT_TASK,
};
use crate::domain::{ApiKey, Task, TaskStatus, User, WebhookDelivery};
use crate::store::{
    ByteStream, ChangeCursor, ImageBlob, InsertOutcome, Store, StoreError, TaskQuery, UsageQuery,
    UsageRow, VideoFile,
};

/// One range of `tasks_due`, however many tasks are stored (a test holds the plan).
pub(super) const DUE_SCHEDULED: &str = "SELECT doc FROM tasks \
     WHERE status = 'scheduled' AND due_ms <= ?1 ORDER BY due_ms LIMIT ?2";

/// Ranges of `tasks_deadline`, one per unfinished status (a test holds the plan).
pub(super) const PAST_DEADLINE: &str = "SELECT doc FROM tasks \
     WHERE status IN ('scheduled', 'pending', 'processing') AND deadline_ms <= ?1 LIMIT ?2";

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
                    deadline_ms,
                } = cols(&t);
                let inserted = c.prepare_cached(INSERT_TASK).and_then(|mut s| {
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
                        updated_ms,
                        deadline_ms
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
        self.read(move |c| super::lists::list(c, &q)).await
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
        self.read(move |c| super::lists::count(c, user_id.as_deref(), status))
            .await
    }

    async fn replace_task(
        &self,
        task: &Task,
        expected_version: i64,
        expected_status: TaskStatus,
    ) -> Result<bool, StoreError> {
        self.replace_if(task, expected_version, expected_status, None)
            .await
    }

    async fn take_expired(
        &self,
        task: &Task,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let before = Some(now.timestamp_millis());
        self.replace_if(task, expected_version, TaskStatus::Processing, before)
            .await
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

    async fn due_scheduled(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let now = now.timestamp_millis();
        self.read(move |c| {
            let mut s = c.prepare_cached(DUE_SCHEDULED).map_err(backend)?;
            collect_docs(&mut s, params![now, limit as i64])
        })
        .await
    }

    async fn past_deadline(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let now = now.timestamp_millis();
        self.read(move |c| {
            let mut s = c.prepare_cached(PAST_DEADLINE).map_err(backend)?;
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

    async fn pending_seq_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        // Pending tasks only, through the status index, once per start: an index on the number
        // would cost every write a parse of its document.
        self.read(|c| {
            c.query_row(
                "SELECT MIN(json_extract(doc, '$.queue_seq')), MAX(json_extract(doc, '$.queue_seq')) \
                 FROM tasks WHERE status = 'pending'",
                [],
                |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
            )
            .map_err(backend)
            .map(|range| match range {
                (Some(lo), Some(hi)) => Some((lo.max(0) as u64, hi.max(0) as u64)),
                _ => None,
            })
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
                 AND status IN ('scheduled', 'pending', 'processing')",
            )
            .and_then(|mut s| s.query_row([id], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }

    async fn active_task_images(&self, user_id: &str) -> Result<u64, StoreError> {
        let id = user_id.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COALESCE(SUM(COALESCE(json_extract(doc, '$.params.n'), 1)), 0) \
                 FROM tasks WHERE user_id = ?1 \
                 AND status IN ('scheduled', 'pending', 'processing')",
            )
            .and_then(|mut s| s.query_row([id], |r| r.get::<_, i64>(0)))
            .map(|n| u64::try_from(n).unwrap_or(0))
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

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let q = query.clone();
        self.read(move |c| super::usage::query(c, &q)).await
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
        self.read(super::lists::status_counts).await
    }

    async fn setting_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<(String, bool), StoreError> {
        self.sqlite_setting_or_insert(name, candidate).await
    }

    async fn claim_webhooks(
        &self,
        claim: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.sqlite_claim_webhooks(claim, now, lease_until, limit)
            .await
    }

    async fn renew_webhook(
        &self,
        id: &str,
        claim: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.sqlite_renew_webhook(id, claim, lease_until).await
    }

    async fn finish_webhook(&self, d: &WebhookDelivery, claim: &str) -> Result<bool, StoreError> {
        self.sqlite_finish_webhook(d, claim).await
    }

    async fn webhook_deliveries(&self, task_id: &str) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.sqlite_webhook_deliveries(task_id).await
    }

    async fn redeliver_webhook(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        self.sqlite_redeliver_webhook(id, now).await
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

    async fn put_video(
        &self,
        id: &str,
        _task_id: &str,
        _content_type: &str,
        body: ByteStream,
    ) -> Result<u64, StoreError> {
        super::videos::put(&self.videos, id, body).await
    }

    async fn video_file(&self, id: &str) -> Result<Option<VideoFile>, StoreError> {
        super::videos::stat(&self.videos, id).await
    }

    async fn read_video(&self, id: &str, start: u64, len: u64) -> Result<ByteStream, StoreError> {
        super::videos::read(&self.videos, id, start, len).await
    }

    async fn delete_videos(&self, ids: &[String]) -> Result<(), StoreError> {
        super::videos::delete(&self.videos, ids).await
    }
}

impl SqliteStore {
    /// `replace_task`, and with `lease_ended_before` only while the stored lease ended before it.
    async fn replace_if(
        &self,
        task: &Task,
        expected_version: i64,
        expected_status: TaskStatus,
        lease_ended_before: Option<i64>,
    ) -> Result<bool, StoreError> {
        let doc = to_json(&without_outbox(task))?;
        let t = task.clone();
        let since = self.tasks.generation();
        let outcome = self
            .write(move |c| {
                let TaskCols {
                    due_ms,
                    lease_until_ms,
                    updated_ms,
                    deadline_ms,
                } = cols(&t);
                let n = c
                .prepare_cached(
                    "UPDATE tasks SET status = ?2, version = ?3, due_ms = ?4, lease_owner = ?5, \
                     lease_until_ms = ?6, doc = ?7, updated_ms = ?10, deadline_ms = ?11 \
                     WHERE id = ?1 AND version = ?8 AND status = ?9 \
                     AND (?12 IS NULL OR lease_until_ms < ?12)",
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
                        updated_ms,
                        deadline_ms,
                        lease_ended_before
                    ])
                })
                .map_err(backend)?;
                if n == 1 {
                    write_outbox(c, &t)?;
                    super::usage::record(c, &t, expected_status)?;
                }
                Ok(n == 1)
            })
            .await?;
        if outcome {
            self.tasks.keep(&without_outbox(task), since);
        }
        Ok(outcome)
    }
}
