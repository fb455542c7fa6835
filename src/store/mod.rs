//! Persistence seam. The store is the truth about users, tasks and image bytes: the queue and
//! the event bus only carry hints, and anything they lose is recovered from here.
//!
//! Implementations: `sqlite` (the embedded default, a data folder). Every task state change goes
//! through [`Store::replace_task`], a compare-and-set on `(id, version, status)`.

pub mod mongo;
pub mod sqlite;
pub(crate) mod task_cache;

pub use task_cache::TaskCacheBounds;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{ApiKey, Task, TaskStatus, User, WebhookDelivery};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit (duplicate email). The message is safe to show.
    #[error("{0}")]
    Conflict(String),
    /// The backend cannot be reached or is busy; worth retrying later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Backend(String),
}

/// Bytes of one stored image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBlob {
    pub id: String,
    pub task_id: String,
    pub content_type: String,
    /// Shared, not copied, from the download to the store's writer and out to a client.
    pub data: bytes::Bytes,
}

/// Bytes as they arrive or leave: a video is never held whole in memory.
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// What the store knows of a stored video.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoFile {
    pub len: u64,
    pub content_type: String,
}

fn no_videos() -> StoreError {
    StoreError::Backend("this store keeps no videos".into())
}

#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub user_id: Option<String>,
    pub status: Option<TaskStatus>,
    /// Return tasks older than this task id (ids sort by creation time).
    pub before_id: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

/// A place in the order of task changes: `(updated_at` in milliseconds`, id)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeCursor {
    pub updated_ms: i64,
    pub id: String,
}

impl ChangeCursor {
    /// Just before every change at or after `ms` (ids are never empty).
    pub fn from_ms(ms: i64) -> ChangeCursor {
        ChangeCursor {
            updated_ms: ms,
            id: String::new(),
        }
    }

    /// Where `task`'s current version sits.
    pub fn of(task: &Task) -> ChangeCursor {
        ChangeCursor {
            updated_ms: task.updated_at.timestamp_millis(),
            id: task.id.clone(),
        }
    }
}

/// Which usage to read: one user's (or everybody's), optionally one API key's, between two UTC
/// days (`YYYY-MM-DD`, both included).
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
    pub from_day: Option<String>,
    pub to_day: Option<String>,
}

/// Terminal tasks of one key, model, day and status, and the images they were billed for.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// `None` for tasks the admin created.
    pub api_key_id: Option<String>,
    pub model: String,
    pub day: String,
    pub status: TaskStatus,
    pub tasks: u64,
    pub images: u64,
}

/// The UTC day a terminal task counts on.
pub fn usage_day(task: &Task) -> String {
    task.completed_at
        .unwrap_or(task.updated_at)
        .format("%Y-%m-%d")
        .to_string()
}

/// What inserting a task with an idempotency key found.
#[derive(Debug)]
pub enum InsertOutcome {
    Inserted,
    /// The user already has a task under this idempotency key.
    Existing(Box<Task>),
}

/// The rules every implementation keeps are pinned by `tests/suites/store_contract`, run against
/// each of them. Every `limit` means "at most": 0 reads nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Name for logs and `/health`.
    fn kind(&self) -> &'static str;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Fails with `Conflict` when the email (case-insensitive) is taken.
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// One round trip for many ids (the GraphQL DataLoader); missing ids are left out.
    async fn get_users(&self, ids: &[String]) -> Result<Vec<User>, StoreError>;
    /// Users in id order, after `after_id`.
    async fn list_users(
        &self,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError>;
    async fn count_users(&self) -> Result<u64, StoreError>;
    /// Replaces a user record; `false` when it does not exist. `Conflict` on a taken email.
    async fn update_user(&self, user: &User) -> Result<bool, StoreError>;
    /// Deletes the user with its tasks, their images and its API keys; `false` when it did not
    /// exist.
    async fn delete_user(&self, id: &str) -> Result<bool, StoreError>;

    /// Inserts a new task. With an idempotency key already used by the same user, nothing is
    /// written and the existing task is returned.
    async fn insert_task(&self, task: &Task) -> Result<InsertOutcome, StoreError>;
    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError>;
    /// Newest first.
    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError>;
    /// Tasks (of one user, or all) whose current version sits after `after`, oldest change
    /// first: how a `tasksUpdated` subscription re-reads what a gap in its events lost.
    async fn tasks_changed(
        &self,
        user_id: Option<&str>,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError>;
    async fn count_tasks(
        &self,
        user_id: Option<&str>,
        status: Option<TaskStatus>,
    ) -> Result<u64, StoreError>;
    /// Writes `task` only if the stored one still has `expected_version` and `expected_status`.
    /// `false` means somebody else changed it first; nothing was written. The webhook events in
    /// `task.outbox` are written in the same step (an event whose id is already stored is left
    /// as it is), so a crash can never keep the change and lose its events. A write that makes the
    /// task terminal records its usage in the same step, keyed by task id: a task counts once,
    /// with its last terminal state (a user's retry that ends again replaces the record),
    /// whatever the retries, crashes and polls.
    async fn replace_task(
        &self,
        task: &Task,
        expected_version: i64,
        expected_status: TaskStatus,
    ) -> Result<bool, StoreError>;
    /// Writes `task` over a processing task only if the stored one still has `expected_version`
    /// and its lease still ended before `now`. A heartbeat does not make a new version, so a
    /// version check alone lets a reconciler that saw the lease expired take the task from a
    /// worker whose heartbeat landed since, and its paid provider call is then made twice.
    async fn take_expired(
        &self,
        task: &Task,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Extends the lease of a processing task held by `owner`, without a new version (a heartbeat
    /// is not a change clients see). `false` when the task is no longer held by `owner`.
    async fn extend_lease(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Pending tasks due at `now` and processing tasks whose lease ran out, oldest first.
    async fn due_tasks(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Task>, StoreError>;
    /// Scheduled tasks due at `now`, earliest first: one range of the `(status, due time)`
    /// index, so the promoter's pass costs the same however many tasks are stored.
    async fn due_scheduled(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError>;
    /// Unfinished (scheduled, pending, processing) tasks whose deadline is at or before `now`,
    /// in no particular order: ranges of the `(status, deadline)` index that hold unfinished
    /// tasks only, so the sweep costs the same however many tasks are stored.
    async fn past_deadline(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError>;
    /// The pending task created first (the queue's oldest wait), if any.
    async fn oldest_pending(&self) -> Result<Option<Task>, StoreError>;
    /// The lowest and highest queue numbers (`Task::queue_seq`) of pending tasks, `None` when
    /// none has one: where the queue's numbering resumes at start. Read once per start.
    async fn pending_seq_range(&self) -> Result<Option<(u64, u64)>, StoreError>;
    /// Processing tasks, whoever holds them (crash recovery of the embedded single process).
    async fn processing_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError>;
    /// Deletes a task and its images; `false` when it did not exist.
    async fn delete_task(&self, id: &str) -> Result<bool, StoreError>;
    async fn status_counts(&self) -> Result<HashMap<TaskStatus, u64>, StoreError>;

    /// Counts the user's unfinished (scheduled, pending, processing) tasks: the in-flight quota.
    async fn count_active_tasks(&self, user_id: &str) -> Result<u64, StoreError>;
    /// The images the user's unfinished tasks ask for (the sum of their `n`): what the daily
    /// image quota holds back for them until their usage is settled.
    async fn active_task_images(&self, user_id: &str) -> Result<u64, StoreError>;
    /// Frees an expired idempotency key held by `task_id`, so a new task may take it. Nothing
    /// happens when another task holds it by now. The task itself is not changed (it keeps the
    /// key it was created under in `idempotency_key`).
    async fn release_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
        task_id: &str,
    ) -> Result<(), StoreError>;

    /// Usage of terminal tasks, summed by key, model, day and status.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    /// The key whose secret hashes to `hash`, revoked or not.
    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;
    /// The user's keys, oldest first.
    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError>;
    /// Marks the key revoked at `at` unless it already is; `false` when it does not exist.
    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Records a use. Touches only `last_used_at`, so it can never undo a revocation.
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// The value stored under `name`, or `candidate` stored now when there was none (then
    /// `true`): how processes agree on a generated secret.
    async fn setting_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<(String, bool), StoreError>;
    /// Webhook deliveries due at `now` (pending, next attempt reached), oldest due first, each
    /// claimed under `claim` until `lease_until`: nobody else gets it before then, and if the
    /// claimer dies it is due again at `lease_until`.
    async fn claim_webhooks(
        &self,
        claim: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Moves a claim's end to `lease_until` while it is still `claim`'s (nobody claimed the
    /// delivery since, even if the lease ran out meanwhile); `false` otherwise.
    async fn renew_webhook(
        &self,
        id: &str,
        claim: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Stores a claimed delivery's state after an attempt and ends the claim; `false` when the
    /// claim was lost (it ran out and somebody else claimed the delivery).
    async fn finish_webhook(
        &self,
        delivery: &WebhookDelivery,
        claim: &str,
    ) -> Result<bool, StoreError>;
    /// A task's deliveries, oldest first.
    async fn webhook_deliveries(&self, task_id: &str) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Makes a delivery due at `now` from a fresh schedule, whatever its state, unless it is
    /// being attempted under a live claim (then it is left to that attempt); the delivery as
    /// stored then, or `None` when there is no such delivery.
    async fn redeliver_webhook(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookDelivery>, StoreError>;

    async fn put_image(&self, image: &ImageBlob) -> Result<(), StoreError>;
    async fn get_image(&self, id: &str) -> Result<Option<ImageBlob>, StoreError>;
    async fn delete_images(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Stores a video from `body` as it arrives (files in the data folder, GridFS); its length.
    /// An id put again holds the new bytes.
    async fn put_video(
        &self,
        _id: &str,
        _task_id: &str,
        _content_type: &str,
        _body: ByteStream,
    ) -> Result<u64, StoreError> {
        Err(no_videos())
    }
    async fn video_file(&self, _id: &str) -> Result<Option<VideoFile>, StoreError> {
        Ok(None)
    }
    /// `len` bytes of the video from `start` (a range the caller checked against its length).
    async fn read_video(
        &self,
        _id: &str,
        _start: u64,
        _len: u64,
    ) -> Result<ByteStream, StoreError> {
        Err(no_videos())
    }
    async fn delete_videos(&self, _ids: &[String]) -> Result<(), StoreError> {
        Ok(())
    }
}
