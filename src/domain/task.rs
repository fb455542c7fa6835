//! A task and its state machine: every transition (start, complete, requeue, fail, cancel,
//! retry) is a function from one version of the task to the next, checked here and stored by the
//! service with a compare-and-set.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::webhook::{WebhookDelivery, WebhookTarget};

pub const TASK_KIND_IMAGE: &str = "image_generation";
pub const TASK_KIND_VIDEO: &str = "video_generation";

/// What a task makes. Stored as `image_generation` / `video_generation` (the string the field
/// held before videos existed); a stored task without it is an image task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    #[default]
    #[serde(rename = "image_generation", alias = "image")]
    Image,
    #[serde(rename = "video_generation", alias = "video")]
    Video,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Image => TASK_KIND_IMAGE,
            TaskKind::Video => TASK_KIND_VIDEO,
        }
    }
}
/// `error.code` of a task failed because it was not finished by its deadline.
pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Created with a later start (`delay`, `run_at`); becomes pending when due.
    Scheduled,
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Scheduled,
        TaskStatus::Pending,
        TaskStatus::Processing,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Pending => "pending",
            TaskStatus::Processing => "processing",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the client asked the model for, beyond the prompt. Compatibility fields of the old server
/// (`quality`, `style`, `options`) are kept so that they are echoed back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageParams {
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    #[serde(default)]
    pub watermark: bool,
    /// Reference images (URLs or data URLs) for image-to-image models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Upper bound of output images (Seedream 4.x groups); 1 means a single image.
    #[serde(default = "one")]
    pub n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An image we hold ourselves: the bytes live in the store under `id`, so the URL we hand out
/// outlives the provider's 24-hour link (kept as `provider_url` for reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredImage {
    pub id: String,
    pub provider_url: Option<String>,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub content_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub images: Vec<StoredImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<StoredVideo>,
}

/// A video we hold ourselves (the provider's link expires after 24 h): the MP4 lives in the
/// store's video files under `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVideo {
    pub id: String,
    pub provider_url: Option<String>,
    pub bytes: u64,
    pub content_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// Images the provider made for a task that were not all kept (a download or the store failed).
/// The next attempt downloads these again, while the provider's URLs are valid, instead of
/// paying for a new generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnkeptImages {
    pub images: Vec<ProviderImage>,
    pub request_id: Option<String>,
    pub generated_at: DateTime<Utc>,
    /// What the provider billed for the call that made these (`usage.generated_images`).
    #[serde(default)]
    pub billed: u32,
    /// Fingerprint of the API key that made them (`provider::key_fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<String>,
}

/// One generated image at the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderImage {
    pub url: String,
    /// `WxH` when the provider says.
    pub size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub user_id: String,
    #[serde(default)]
    pub kind: TaskKind,
    /// Provider model id (friendly names are resolved at creation).
    pub model: String,
    pub prompt: String,
    pub params: ImageParams,
    /// What a video task asks for (`kind` video only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<super::video::VideoParams>,
    /// The provider's own id of the task it runs for a video: stored the moment the provider
    /// answers, so that a task that has one is tracked, never submitted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_task_id: Option<String>,
    pub status: TaskStatus,
    /// Incremented by every change; writers compare-and-set on it.
    pub version: i64,
    /// Attempts started for this task: a provider call, or the download of images an earlier
    /// call made (see `unkept`).
    pub attempts: u32,
    pub result: Option<TaskResult>,
    pub error: Option<TaskError>,
    pub idempotency_key: Option<String>,
    /// Fingerprint of the creating request, to tell a replay from a conflicting reuse of a key.
    pub request_hash: Option<String>,
    /// A pending task is not run before this time (retry backoff); a scheduled one becomes
    /// pending then.
    pub not_before: Option<DateTime<Utc>>,
    /// When the client asked the task to start (`delay`, `run_at`), kept after it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// How long the task may take from its start (its due time, for a scheduled task) to a
    /// terminal state; a user's retry gets this much again. `None` for tasks stored before
    /// deadlines existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// Not terminal by then, the task fails with `DEADLINE_EXCEEDED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub provider_request_id: Option<String>,
    /// Its number in the queue's order, given each time it becomes pending (created, promoted,
    /// requeued, retried): how far back in the queue it waits (`service::queue_clock`). `None`
    /// for tasks that never waited, or were stored before numbering existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_seq: Option<u64>,
    /// Fingerprint of the provider API key that made the images (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unkept: Option<UnkeptImages>,
    /// The user key that created the task (`None` for the admin): usage is counted per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    /// Images the provider billed for this task over all its calls (`usage.generated_images`),
    /// kept or not: what its usage counts once it is terminal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generated_images: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Where the task's events are posted, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
    /// Webhook events made by the changes to this task and not yet handed to the delivery log:
    /// the store writes them in the same write as the change (see `Store::replace_task`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<WebhookDelivery>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("a {from} task cannot be {action}")]
pub struct TransitionError {
    pub from: TaskStatus,
    pub action: &'static str,
}

impl Task {
    /// The task without its reference images, for events: no subscriber reads them (neither
    /// GraphQL's `Task` nor REST's answers carry them) and each may weigh 14 MB, while an event
    /// is kept in broadcast buffers after it is read and crossed Redis to every process.
    pub fn without_reference_images(&self) -> Task {
        // A copy, as the publishers made before; what matters is what is kept.
        let mut t = self.clone();
        t.params.images = Vec::new();
        if let Some(v) = t.video.as_mut() {
            v.frames = Vec::new();
        }
        t
    }

    /// A newly accepted task: pending, version 1, no attempt yet.
    pub fn new_pending(
        user_id: String,
        model: String,
        prompt: String,
        params: ImageParams,
        idempotency: Option<(String, String)>,
        now: DateTime<Utc>,
    ) -> Task {
        let (idempotency_key, request_hash) = idempotency.unzip();
        Task {
            id: super::new_id(),
            user_id,
            kind: TaskKind::Image,
            model,
            prompt,
            params,
            video: None,
            provider_task_id: None,
            status: TaskStatus::Pending,
            version: 1,
            attempts: 0,
            result: None,
            error: None,
            idempotency_key,
            request_hash,
            not_before: None,
            run_at: None,
            deadline_secs: None,
            deadline_at: None,
            lease_owner: None,
            lease_until: None,
            provider_request_id: None,
            queue_seq: None,
            provider_key: None,
            unkept: None,
            api_key_id: None,
            generated_images: 0,
            created_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            webhook: None,
            outbox: Vec::new(),
        }
    }

    /// The same new task, held back until `at`: scheduled, due then.
    pub fn scheduled_for(mut self, at: DateTime<Utc>) -> Task {
        self.status = TaskStatus::Scheduled;
        self.not_before = Some(at);
        self.run_at = Some(at);
        self
    }

    /// The same new task with `secs` to finish, counted from when it may start.
    pub fn with_deadline(mut self, secs: u64) -> Task {
        let start = self.run_at.unwrap_or(self.created_at);
        self.deadline_secs = Some(secs);
        self.deadline_at = Some(start + deadline_span(secs));
        self
    }

    /// Whether the task should have been terminal by `now`.
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        !self.status.is_terminal() && self.deadline_at.is_some_and(|d| d <= now)
    }

    pub fn image_url_id(&self) -> Option<&str> {
        self.result
            .as_ref()
            .and_then(|r| r.images.first())
            .map(|i| i.id.as_str())
    }

    /// The next version of this task: every transition starts here so that the version and the
    /// update time can never be forgotten.
    fn next(&self, status: TaskStatus, now: DateTime<Utc>) -> Task {
        let mut t = self.clone();
        t.status = status;
        t.version += 1;
        t.updated_at = now;
        t
    }

    fn check(&self, allowed: &[TaskStatus], action: &'static str) -> Result<(), TransitionError> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(TransitionError {
                from: self.status,
                action,
            })
        }
    }

    /// scheduled → pending: the task is due and may be queued.
    pub fn promote(&self, now: DateTime<Utc>) -> Result<Task, TransitionError> {
        self.check(&[TaskStatus::Scheduled], "promoted")?;
        let mut t = self.next(TaskStatus::Pending, now);
        t.not_before = None;
        Ok(t)
    }

    /// pending → processing: a worker takes the task under a lease.
    pub fn start(
        &self,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Task, TransitionError> {
        self.check(&[TaskStatus::Pending], "started")?;
        let mut t = self.next(TaskStatus::Processing, now);
        t.attempts += 1;
        t.lease_owner = Some(owner.to_string());
        t.lease_until = Some(lease_until);
        t.not_before = None;
        t.started_at = Some(now);
        Ok(t)
    }

    /// processing → completed.
    pub fn complete(
        &self,
        images: Vec<StoredImage>,
        request_id: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Task, TransitionError> {
        self.check(&[TaskStatus::Processing], "completed")?;
        let mut t = self.next(TaskStatus::Completed, now);
        t.result = Some(TaskResult {
            images,
            video: None,
        });
        t.error = None;
        t.unkept = None;
        t.provider_request_id = request_id.or(t.provider_request_id);
        t.lease_owner = None;
        t.lease_until = None;
        t.completed_at = Some(now);
        Ok(t)
    }

    /// processing → processing with the provider's task id: the provider has the task, which
    /// is from now on tracked there and never submitted again.
    pub fn track(
        &self,
        provider_task_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Task, TransitionError> {
        self.check(&[TaskStatus::Processing], "tracked")?;
        let mut t = self.next(TaskStatus::Processing, now);
        t.provider_task_id = Some(provider_task_id.to_string());
        Ok(t)
    }

    /// processing → completed with a stored video.
    pub fn complete_video(
        &self,
        video: StoredVideo,
        now: DateTime<Utc>,
    ) -> Result<Task, TransitionError> {
        let mut t = self.complete(Vec::new(), None, now)?;
        t.result = Some(TaskResult {
            images: Vec::new(),
            video: Some(video),
        });
        Ok(t)
    }

    /// processing → failed, for good.
    pub fn fail(
        &self,
        error: TaskError,
        request_id: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Task, TransitionError> {
        self.check(&[TaskStatus::Processing], "failed")?;
        let mut t = self.next(TaskStatus::Failed, now);
        t.error = Some(error);
        t.provider_request_id = request_id.or(t.provider_request_id);
        t.lease_owner = None;
        t.lease_until = None;
        t.completed_at = Some(now);
        Ok(t)
    }

    /// processing → pending: the attempt did not finish (retryable provider error, expired lease
    /// of a dead worker) and the task runs again from `not_before`.
    pub fn requeue(
        &self,
        error: Option<TaskError>,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Task, TransitionError> {
        self.check(&[TaskStatus::Processing], "requeued")?;
        let mut t = self.next(TaskStatus::Pending, now);
        if error.is_some() {
            t.error = error;
        }
        t.lease_owner = None;
        t.lease_until = None;
        t.not_before = Some(not_before);
        Ok(t)
    }

    /// processing → pending after the provider refused for rate (a 429): the task waits for
    /// the pace and tries again, and the attempt it started is given back, since nothing was
    /// attempted but a call the provider would not take yet. Bounded by the task's deadline,
    /// not by its attempts.
    pub fn requeue_paced(
        &self,
        error: TaskError,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Task, TransitionError> {
        let mut t = self.requeue(Some(error), not_before, now)?;
        t.attempts = t.attempts.saturating_sub(1);
        Ok(t)
    }

    /// scheduled | pending | processing → cancelled. A worker still holding a cancelled task
    /// loses its compare-and-set and drops whatever it produced.
    pub fn cancel(&self, now: DateTime<Utc>) -> Result<Task, TransitionError> {
        self.check(
            &[
                TaskStatus::Scheduled,
                TaskStatus::Pending,
                TaskStatus::Processing,
            ],
            "cancelled",
        )?;
        let mut t = self.next(TaskStatus::Cancelled, now);
        t.lease_owner = None;
        t.lease_until = None;
        t.not_before = None;
        t.completed_at = Some(now);
        Ok(t)
    }

    /// scheduled | pending | processing → failed with `DEADLINE_EXCEEDED`: the task was not
    /// finished in time. A worker still holding it loses its compare-and-set, as on a cancel.
    pub fn expire(&self, now: DateTime<Utc>) -> Result<Task, TransitionError> {
        self.check(
            &[
                TaskStatus::Scheduled,
                TaskStatus::Pending,
                TaskStatus::Processing,
            ],
            "expired",
        )?;
        let mut t = self.next(TaskStatus::Failed, now);
        t.error = Some(TaskError {
            code: DEADLINE_EXCEEDED.into(),
            message: match self.deadline_secs {
                Some(s) => format!("the task did not finish within its deadline of {s} s"),
                None => "the task did not finish within its deadline".into(),
            },
            retryable: false,
        });
        t.lease_owner = None;
        t.lease_until = None;
        t.not_before = None;
        t.completed_at = Some(now);
        Ok(t)
    }

    /// failed | cancelled → pending: a user asks for another go. Attempts count from zero again
    /// so that the automatic retry budget applies afresh.
    pub fn retry(&self, now: DateTime<Utc>) -> Result<Task, TransitionError> {
        self.check(&[TaskStatus::Failed, TaskStatus::Cancelled], "retried")?;
        let mut t = self.next(TaskStatus::Pending, now);
        t.attempts = 0;
        t.error = None;
        t.result = None;
        // The provider's task (if any) ended; another go is a new one.
        t.provider_task_id = None;
        t.not_before = None;
        t.started_at = None;
        t.completed_at = None;
        // The whole deadline again, from now: the old one has passed or nearly.
        t.deadline_at = t.deadline_secs.map(|s| now + deadline_span(s));
        Ok(t)
    }
}

fn deadline_span(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX).min(i64::MAX / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        let t = Task::new_pending(
            "u".into(),
            "m".into(),
            "p".into(),
            ImageParams::default(),
            None,
            Utc::now(),
        );
        assert_eq!(
            (t.status, t.version, t.attempts),
            (TaskStatus::Pending, 1, 0)
        );
        t
    }

    #[test]
    fn every_transition_bumps_the_version_and_checks_the_source_state() {
        let now = Utc::now();
        let t = task();
        let p = t.start("w", now, now).expect("start");
        assert_eq!(
            (p.status, p.version, p.attempts),
            (TaskStatus::Processing, 2, 1)
        );
        assert!(
            t.complete(vec![], None, now).is_err(),
            "pending cannot complete"
        );
        let c = p.complete(vec![], Some("r".into()), now).expect("complete");
        assert_eq!((c.status, c.version), (TaskStatus::Completed, 3));
        assert!(c.cancel(now).is_err(), "completed cannot be cancelled");
        assert!(c.retry(now).is_err(), "completed cannot be retried");
        let f = p
            .fail(
                TaskError {
                    code: "X".into(),
                    message: "m".into(),
                    retryable: false,
                },
                None,
                now,
            )
            .expect("fail");
        let r = f.retry(now).expect("retry");
        assert_eq!(
            (r.status, r.attempts, r.error.clone()),
            (TaskStatus::Pending, 0, None)
        );
        let x = p.cancel(now).expect("cancel processing");
        assert_eq!(x.status, TaskStatus::Cancelled);
        let q = p.requeue(None, now, now).expect("requeue");
        assert_eq!(
            (q.status, q.version, q.lease_owner.clone()),
            (TaskStatus::Pending, 3, None)
        );
    }

    #[test]
    fn a_stored_task_without_a_kind_is_an_image_task() {
        let mut doc = serde_json::to_value(task()).expect("encode");
        assert_eq!(doc["kind"], TASK_KIND_IMAGE, "stored as before videos");
        doc.as_object_mut().expect("object").remove("kind");
        let t: Task = serde_json::from_value(doc.clone()).expect("decode");
        assert_eq!(t.kind, TaskKind::Image);
        doc["kind"] = serde_json::json!(TASK_KIND_VIDEO);
        let t: Task = serde_json::from_value(doc).expect("decode");
        assert_eq!(
            (t.kind, t.video, t.provider_task_id),
            (TaskKind::Video, None, None)
        );
    }

    #[test]
    fn a_scheduled_task_is_promoted_or_cancelled_but_never_started() {
        let now = Utc::now();
        let at = now + chrono::Duration::seconds(60);
        let s = task().scheduled_for(at);
        assert_eq!(
            (s.status, s.not_before, s.run_at, s.version),
            (TaskStatus::Scheduled, Some(at), Some(at), 1)
        );
        assert!(s.start("w", now, now).is_err(), "not before it is due");
        assert!(s.promote(now).is_ok());
        let p = s.promote(at).expect("promote");
        assert_eq!(
            (p.status, p.not_before, p.run_at, p.version),
            (TaskStatus::Pending, None, Some(at), 2)
        );
        assert!(p.promote(at).is_err(), "promoted once");
        let c = s.cancel(now).expect("cancel scheduled");
        assert_eq!((c.status, c.not_before), (TaskStatus::Cancelled, None));
    }

    #[test]
    fn a_deadline_counts_from_the_start_and_fails_any_unfinished_state() {
        let now = Utc::now();
        let secs = |n| chrono::Duration::seconds(n);
        let t = task().with_deadline(60);
        assert_eq!(t.deadline_at, Some(t.created_at + secs(60)));
        let s = task().scheduled_for(now + secs(100)).with_deadline(60);
        assert_eq!(s.deadline_at, Some(now + secs(160)), "from the due time");
        assert!(!s.is_overdue(now + secs(159)));
        assert!(s.is_overdue(now + secs(160)));

        let p = t.start("w", now, now).expect("start");
        for unfinished in [&t, &s, &p] {
            let f = unfinished.expire(now).expect("expire");
            let e = f.error.clone().expect("error");
            assert_eq!(
                (
                    f.status,
                    e.code.as_str(),
                    e.retryable,
                    f.lease_owner.clone()
                ),
                (TaskStatus::Failed, DEADLINE_EXCEEDED, false, None)
            );
            assert_eq!(f.version, unfinished.version + 1);
            assert!(!f.is_overdue(now + secs(1000)), "terminal: never overdue");
        }
        let done = p.complete(vec![], None, now).expect("complete");
        assert!(
            done.expire(now).is_err(),
            "a finished task keeps its outcome"
        );
        let failed = p.expire(now).expect("expire");
        let later = now + secs(3600);
        let again = failed.retry(later).expect("retry");
        assert_eq!(
            again.deadline_at,
            Some(later + secs(60)),
            "a fresh deadline"
        );
    }
}
