//! Tasks: creating one (parsed by `domain::NewImageTask`, stored as the commit point, then
//! enqueued and announced), reading and listing, the user's transitions (cancel, retry, delete),
//! the compare-and-set `commit` every state change goes through, and the queue's statistics.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::access::{check_id, forbidden, may_see_task, require_admin, require_user};
use super::{page_limit, Page, Service};
use crate::auth::Principal;
use crate::domain::{self, is_valid_id, CreateImageTask, NewImageTask, Task, TaskStatus};
use crate::error::AppError;
use crate::store::{InsertOutcome, TaskQuery};

#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub queue_depth: u64,
    /// How long the oldest pending task has waited since it was created (0 without any).
    pub oldest_pending_age_seconds: f64,
    pub in_flight: u64,
    pub by_status: HashMap<String, u64>,
    pub total: u64,
}

impl Service {
    /// Parses, stores (the commit point), then enqueues and publishes. A failed enqueue is
    /// logged, not returned: the task is stored and the reconciler will run it.
    pub async fn create_image_task(
        &self,
        who: &Principal,
        mut input: CreateImageTask,
    ) -> Result<(Task, bool), AppError> {
        // A user key submits for its own user; naming another is refused after parsing.
        let own = who.user_id();
        if let Some(own) = own {
            if input.user_id.as_deref().is_none_or(|u| u.trim().is_empty()) {
                input.user_id = Some(own.to_string());
            }
        }
        let new = NewImageTask::parse(input, &self.catalog).map_err(AppError::Validation)?;
        let user_id = new.user_id.as_str();
        if own.is_some_and(|o| o != user_id) {
            return Err(forbidden("create tasks for another user"));
        }
        // Held until the task is stored (or refused), so that concurrent submits count it.
        let slot = match who {
            Principal::User { .. } => Some(
                self.admit_submit(user_id, u64::from(new.params.n.get()))
                    .await?,
            ),
            _ => None,
        };
        // A UUID is an id issued here and must name a user; any other opaque id (legacy
        // routes only, admin or auth off) is an owner the older Go server's clients hold, whose
        // user was never created here and is not created now.
        if is_valid_id(user_id) || own.is_some() {
            self.require_known_user(user_id).await?;
        }
        if let Some(w) = &new.webhook {
            self.check_webhook_target(&w.url).await?;
        }

        let now = Utc::now();
        let task = new.into_task(now, self.limits.task_deadline.as_secs());
        self.accept(who, task, slot, now).await
    }

    /// Parses a video request against the video catalogue (every parameter checked before any
    /// provider call), then stores, enqueues and publishes it as an image task is.
    pub async fn create_video_task(
        &self,
        who: &Principal,
        mut input: domain::video::CreateVideoTask,
    ) -> Result<(Task, bool), AppError> {
        let own = who.user_id();
        if let Some(own) = own {
            if input.user_id.as_deref().is_none_or(|u| u.trim().is_empty()) {
                input.user_id = Some(own.to_string());
            }
        }
        let new = domain::video::NewVideoTask::parse(input, &self.video_catalog)
            .map_err(AppError::Validation)?;
        let user_id = new.user_id.as_str();
        if own.is_some_and(|o| o != user_id) {
            return Err(forbidden("create tasks for another user"));
        }
        let slot = match who {
            // A video is no image: the daily image quota does not count it.
            Principal::User { .. } => Some(self.admit_submit(user_id, 0).await?),
            _ => None,
        };
        if is_valid_id(user_id) || own.is_some() {
            self.require_known_user(user_id).await?;
        }
        if let Some(w) = &new.webhook {
            self.check_webhook_target(&w.url).await?;
        }
        let now = Utc::now();
        let task = new.into_task(now, self.limits.task_deadline.as_secs());
        self.accept(who, task, slot, now).await
    }

    /// Stores a parsed new task (the commit point), then enqueues and publishes it; an
    /// idempotent replay answers the earlier task (`false`).
    async fn accept(
        &self,
        who: &Principal,
        mut task: Task,
        mut slot: Option<super::admission::SubmitSlot<'_>>,
        now: chrono::DateTime<Utc>,
    ) -> Result<(Task, bool), AppError> {
        if let Principal::User { key_id, .. } = who {
            task.api_key_id = Some(key_id.clone());
        }
        if task.status == TaskStatus::Pending {
            task.queue_seq = self.queue_number(&task.id).await;
        }
        let earlier = self.insert_new_task(&task, now).await?;
        if let (None, Some(polls)) = (&earlier, &self.polls) {
            polls.wrote(&task);
        }
        // Stored (or answered by an earlier task): other submits now count it in the store.
        if let Some(s) = slot.take() {
            s.release().await;
        }
        if let Some(existing) = earlier {
            return if existing.request_hash == task.request_hash {
                Ok((existing, false))
            } else {
                Err(AppError::Conflict(
                    "idempotency key was already used with a different request".into(),
                ))
            };
        }
        tracing::info!(task_id = %task.id, user_id = %task.user_id, model = %task.model, status = %task.status, "task accepted");
        // A scheduled task is queued by the promoter once due (worker::timers), not now: a
        // queue entry waiting for days would be lost with the process (embedded) or the Redis.
        let queued = match task.status {
            TaskStatus::Pending => self.queue.enqueue(&task.id, None).await,
            _ => Ok(()),
        };
        if let Err(e) = queued {
            tracing::warn!(task_id = %task.id, error = %e, "enqueue failed; the reconciler will pick the task up");
        }
        self.publish(&task).await;
        Ok((task, true))
    }

    /// Inserts a new task; with its idempotency key already taken (and not expired), the task
    /// holding it. An expired key is released and taken over.
    async fn insert_new_task(
        &self,
        task: &Task,
        now: chrono::DateTime<Utc>,
    ) -> Result<Option<Task>, AppError> {
        for _ in 0..3 {
            match self.store.insert_task(task).await? {
                InsertOutcome::Inserted => return Ok(None),
                InsertOutcome::Existing(existing) => {
                    let ttl = chrono::Duration::from_std(self.limits.idempotency_ttl)
                        .unwrap_or(chrono::Duration::MAX);
                    if existing.created_at + ttl > now {
                        return Ok(Some(*existing));
                    }
                    let (Some(key), user) = (&task.idempotency_key, &task.user_id) else {
                        return Ok(Some(*existing));
                    };
                    tracing::info!(task_id = %existing.id, "idempotency key expired; releasing it");
                    self.store
                        .release_idempotency_key(user, key, &existing.id)
                        .await?;
                }
            }
        }
        Err(AppError::Conflict(
            "idempotency key is being reused concurrently; try again".into(),
        ))
    }

    pub async fn get_task(&self, who: &Principal, id: &str) -> Result<Task, AppError> {
        self.find_task(who, id)
            .await?
            .ok_or_else(|| AppError::NotFound("task not found".into()))
    }

    pub async fn find_task(&self, who: &Principal, id: &str) -> Result<Option<Task>, AppError> {
        check_id("id", id)?;
        Ok(self
            .store
            .get_task(id)
            .await?
            .filter(|t| may_see_task(who, t)))
    }

    /// A task for a poll (the REST task and result routes, GraphQL `task`): from this process's
    /// memory when it can vouch for it (see `service::polls`), else from the store. Never used
    /// to make a change: what it answers may lack the reference images.
    pub async fn poll_task(&self, who: &Principal, id: &str) -> Result<Option<Task>, AppError> {
        let Some(polls) = &self.polls else {
            return self.find_task(who, id).await;
        };
        check_id("id", id)?;
        if let Some((t, aging)) = polls.get(id) {
            if aging {
                self.refresh_poll(polls, id);
            }
            return Ok(may_see_task(who, &t).then(|| Task::clone(&t)));
        }
        let since = polls.reading();
        let read = self.store.get_task(id).await?;
        if let (Some(t), Some(since)) = (&read, since) {
            polls.keep(t, since);
        }
        Ok(read.filter(|t| may_see_task(who, t)))
    }

    /// Re-reads a polled task in the background before its entry expires (one read at a time).
    fn refresh_poll(&self, polls: &std::sync::Arc<super::polls::PollCache>, id: &str) {
        let Some(refresh) = polls.refreshing(id) else {
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let since = refresh.cache().reading();
            match store.get_task(refresh.id()).await {
                Ok(Some(t)) => {
                    if let Some(since) = since {
                        refresh.cache().keep(&t, since);
                    }
                }
                // Deleted through another process.
                Ok(None) => refresh.cache().forget(refresh.id()),
                Err(e) => {
                    tracing::debug!(task_id = %refresh.id(), error = %e, "poll cache re-read failed")
                }
            }
        });
    }

    /// As [`Service::poll_task`], `NotFound` when there is no such task (or not the caller's).
    pub async fn poll_task_or_404(&self, who: &Principal, id: &str) -> Result<Task, AppError> {
        self.poll_task(who, id)
            .await?
            .ok_or_else(|| AppError::NotFound("task not found".into()))
    }

    /// A user key lists its own tasks (`user_id` may be left out); the admin anyone's, or all.
    pub async fn list_tasks(
        &self,
        who: &Principal,
        user_id: Option<&str>,
        status: Option<TaskStatus>,
        before_id: Option<&str>,
        offset: usize,
        limit: Option<i64>,
    ) -> Result<Page<Task>, AppError> {
        let limit = page_limit(limit)?;
        // The stores take a signed 64-bit offset (SQLite's OFFSET, MongoDB's skip); beyond it a
        // value wrapped to a negative one, which both read as none: the first page.
        if i64::try_from(offset).is_err() {
            return Err(AppError::invalid(
                "offset",
                format!("must be between 0 and {}", i64::MAX),
            ));
        }
        if let Some(u) = user_id {
            // Tasks may belong to an opaque owner id of the older Go server's clients.
            if !domain::is_opaque_id(u) {
                check_id("user_id", u)?;
            }
            require_user(who, u)?;
        }
        let user_id = user_id.or(who.user_id());
        if let Some(c) = before_id {
            check_id("cursor", c)?;
        }
        let query = TaskQuery {
            user_id: user_id.map(str::to_string),
            status,
            before_id: before_id.map(str::to_string),
            offset,
            limit: limit + 1,
        };
        let mut items = self.store.list_tasks(&query).await?;
        let has_more = items.len() > limit;
        items.truncate(limit);
        let total = self.store.count_tasks(user_id, status).await?;
        Ok(Page {
            items,
            has_more,
            total,
        })
    }

    /// Applies a user-requested transition, re-reading and trying again when a worker changed the
    /// task in between.
    async fn user_transition(
        &self,
        who: &Principal,
        id: &str,
        change: impl Fn(&Task) -> Result<Task, domain::TransitionError>,
    ) -> Result<Task, AppError> {
        for _ in 0..8 {
            let current = self.get_task(who, id).await?;
            let next = change(&current).map_err(|e| AppError::Conflict(format!("{e}")))?;
            if let Some(t) = self.commit(&current, next).await? {
                return Ok(t);
            }
        }
        Err(AppError::Conflict(
            "task is changing too quickly; try again".into(),
        ))
    }

    pub async fn cancel_task(&self, who: &Principal, id: &str) -> Result<Task, AppError> {
        let t = self
            .user_transition(who, id, |t| t.cancel(Utc::now()))
            .await?;
        tracing::info!(task_id = %t.id, "task cancelled");
        Ok(t)
    }

    pub async fn retry_task(&self, who: &Principal, id: &str) -> Result<Task, AppError> {
        let t = self
            .user_transition(who, id, |t| t.retry(Utc::now()))
            .await?;
        tracing::info!(task_id = %t.id, "task retried");
        if let Err(e) = self.queue.enqueue(&t.id, None).await {
            tracing::warn!(task_id = %t.id, error = %e, "enqueue failed; the reconciler will pick the task up");
        }
        Ok(t)
    }

    /// Deletes a finished task and its images. Running tasks must be cancelled first.
    pub async fn delete_task(&self, who: &Principal, id: &str) -> Result<Task, AppError> {
        let t = self.get_task(who, id).await?;
        if !t.status.is_terminal() {
            return Err(AppError::Conflict(format!(
                "a {} task cannot be deleted; cancel it first",
                t.status
            )));
        }
        let deleted = self.store.delete_task(id).await;
        // Forgotten whatever the answer: the store may have deleted it before failing to say so.
        if let Some(polls) = &self.polls {
            polls.forget(id);
        }
        if !deleted? {
            return Err(AppError::NotFound("task not found".into()));
        }
        tracing::info!(task_id = %id, "task deleted");
        Ok(t)
    }

    /// The older Go server's DELETE: any task goes, a pending or processing one cancelled first
    /// (so a worker's late result is refused by the compare-and-set). `None` when there was no
    /// such task, which the Go server answered as a success too.
    pub async fn discard_task(&self, who: &Principal, id: &str) -> Result<Option<Task>, AppError> {
        let Some(t) = self.find_task(who, id).await? else {
            return Ok(None);
        };
        if !t.status.is_terminal() {
            match self.cancel_task(who, id).await {
                // Finished meanwhile: terminal now, so it can go.
                Ok(_) | Err(AppError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match self.delete_task(who, id).await {
            Ok(t) => Ok(Some(t)),
            Err(AppError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores `next` if `current` is still what the store holds, then publishes it. `None` when
    /// somebody else changed the task first.
    /// The change's webhook events go into the task's outbox, which the store writes with it.
    pub async fn commit(&self, current: &Task, next: Task) -> Result<Option<Task>, AppError> {
        let (next, wake) = self.prepared(current, next).await;
        let stored = self
            .store
            .replace_task(&next, current.version, current.status)
            .await?;
        self.committed(stored, current, next, wake).await
    }

    /// `commit` of a processing task whose lease ran out, only while it still has: a heartbeat
    /// that landed since the lease was seen expired keeps the task with its live worker.
    pub async fn commit_expired(
        &self,
        current: &Task,
        next: Task,
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, AppError> {
        let (next, wake) = self.prepared(current, next).await;
        let stored = self.store.take_expired(&next, current.version, now).await?;
        self.committed(stored, current, next, wake).await
    }

    /// `next` as it is to be stored: numbered again when back in the queue, the change's webhook
    /// events in its outbox; and whether there are new events to deliver.
    async fn prepared(&self, current: &Task, mut next: Task) -> (Task, bool) {
        if next.status == TaskStatus::Pending && current.status != TaskStatus::Pending {
            // Back in the queue (promoted, requeued, retried): at its end.
            next.queue_seq = self.queue_number(&next.id).await;
        }
        let events = domain::webhook::events_for(current, &next);
        let wake = !events.is_empty();
        next.outbox.extend(events);
        (next, wake)
    }

    async fn committed(
        &self,
        stored: bool,
        current: &Task,
        next: Task,
        wake: bool,
    ) -> Result<Option<Task>, AppError> {
        if stored {
            metrics::counter!("task_transitions_total", "status" => next.status.as_str())
                .increment(1);
            if let Some(polls) = &self.polls {
                polls.wrote(&next);
            }
            if current.status == TaskStatus::Pending && next.status == TaskStatus::Processing {
                self.taken_from_queue(current).await;
            }
            if wake {
                self.webhook_wake.notify_one();
            }
            if next.outbox.is_empty() {
                self.publish(&next).await;
            } else {
                // Subscribers see the task, not its undelivered events.
                let mut shown = next.clone();
                shown.outbox.clear();
                self.publish(&shown).await;
            }
            Ok(Some(next))
        } else {
            Ok(None)
        }
    }

    /// The task's next queue number; `None` (no position shown) when the queue cannot give one.
    async fn queue_number(&self, task_id: &str) -> Option<u64> {
        match self.queue.next_seq().await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(task_id = %task_id, error = %e, "no queue number; its position will not be shown");
                None
            }
        }
    }

    async fn taken_from_queue(&self, task: &Task) {
        let Some(seq) = task.queue_seq else { return };
        if let Err(e) = self.queue.taken(seq).await {
            // Positions behind it read high until the next start moves the mark.
            tracing::warn!(task_id = %task.id, error = %e, "could not move the queue's taken mark");
        }
    }

    async fn publish(&self, task: &Task) {
        // How long a change took from being made to being announced (the store write between).
        let lag = (Utc::now() - task.updated_at).to_std().unwrap_or_default();
        metrics::histogram!("task_event_lag_seconds", "status" => task.status.as_str())
            .record(lag.as_secs_f64());
        if let Err(e) = self.events.publish(task).await {
            // Subscribers re-read the store on their resync interval; nothing is lost.
            tracing::warn!(task_id = %task.id, error = %e, "publishing the task event failed");
        }
    }

    /// Whose tasks a subscription to every task change of `user_id` follows: a user key only its
    /// own (the default), the admin any user's or, without one, all users' (`None`).
    pub fn task_scope(
        &self,
        who: &Principal,
        user_id: Option<&str>,
    ) -> Result<Option<String>, AppError> {
        if let Some(u) = user_id {
            check_id("userId", u)?;
            require_user(who, u)?;
        }
        Ok(user_id.or(who.user_id()).map(str::to_string))
    }

    pub async fn queue_stats(&self, who: &Principal) -> Result<QueueStats, AppError> {
        require_admin(who, "read queue statistics")?;
        let counts = self.store.status_counts().await?;
        let depth = self.queue.depth().await?;
        let by_status: HashMap<String, u64> = TaskStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), counts.get(s).copied().unwrap_or(0)))
            .collect();
        let oldest = self.store.oldest_pending().await?;
        let age = oldest
            .map(|t| (Utc::now() - t.created_at).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        Ok(QueueStats {
            queue_depth: depth,
            oldest_pending_age_seconds: age,
            in_flight: counts.get(&TaskStatus::Processing).copied().unwrap_or(0),
            total: by_status.values().sum(),
            by_status,
        })
    }
}
