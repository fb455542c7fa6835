//! Provider-side tasks — videos (Seedance on Ark, Jimeng) and Jimeng's images: submitted once
//! to the provider, then tracked there until they finish.
//!
//! The provider's task id is stored (a compare-and-set, `Task::track`) the moment the provider
//! answers; a task that has one is never submitted again — after a crash it is requeued with it,
//! taken by a worker and tracked. Tracking costs a bounded request rate whatever the backlog:
//! one list request (`filter.task_ids`, up to `VIDEO_LIST_BATCH` tasks) per
//! `VIDEO_LIST_INTERVAL` at most, each task due again at a tenth of its expected duration
//! (`VIDEO_POLL_MIN` to `VIDEO_POLL_MAX`). A finished video is streamed from the provider into
//! the store at once (its link expires) and the task completed; finished images are kept the
//! way Ark's are (`worker::images`). Jimeng has no batch read: its tasks in a batch are read
//! one GetResult each, a few at a time, at the same per-task intervals (images are expected to
//! take `IMAGE_EXPECTED_SECS`). Cancelling a task reaches the
//! provider (DELETE): from the task's event, or at the latest at the next lease renewal.
//!
//! With a public URL, Seedance tasks are submitted with a `callback_url` carrying the task's
//! secret token (`service::callbacks` checks it). A callback becomes a look: the tracker holding
//! the task fetches its state (GET, at most `VIDEO_GET_PER_SECOND`; looks beyond that go into
//! the next list request). Such tasks are still polled, at `VIDEO_CALLBACK_POLL` at most often,
//! in case a callback is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::config::VideoConfig;
use crate::domain::{StoredVideo, Task, TaskError, TaskKind, TaskStatus};
use crate::events::{Channel, Event};
use crate::provider::{
    ProviderError, RemoteImage, RemoteSubmit, RemoteTask, VideoProvider, VideoState, VideoSubmit,
};

/// Download attempts of a finished video before its task fails (the link is good for 24 h;
/// the next poll tries again).
const MAX_DOWNLOAD_TRIES: u32 = 5;

/// The video side of a worker process.
pub struct VideoWorker {
    pub(super) provider: Arc<dyn VideoProvider>,
    cfg: VideoConfig,
    /// Where callbacks reach this service (`PUBLIC_BASE_URL`), when tasks are submitted with one.
    callback_base: Option<String>,
    tracked: std::sync::Mutex<HashMap<String, Tracked>>,
    /// Videos downloaded at once.
    downloads: Arc<tokio::sync::Semaphore>,
    /// GETs this process may still send now (refilled at `get_per_second`).
    gets: std::sync::Mutex<Bucket>,
    /// When the last list request was sent: the next waits until `list_interval` has passed
    /// (ticks are that far apart, but the lease renewals before a poll take varying time, and
    /// two lists within one second are a 429 at Ark).
    last_list: std::sync::Mutex<Option<Instant>>,
}

struct Tracked {
    task: Task,
    provider_id: String,
    next_poll: Instant,
    next_renew: Instant,
    /// A download of its video is under way.
    downloading: bool,
    download_tries: u32,
    /// Submitted with a callback URL: polled at the slower fallback interval.
    callback: bool,
    /// A callback asked for a look that has not been made yet (no GET left this second).
    look_pending: bool,
    /// A GET of its state is in flight.
    looking: bool,
}

/// A token bucket: `rate` a second, at most a second's worth at once.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, rate: u32) -> bool {
        let now = Instant::now();
        let rate = f64::from(rate.max(1));
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl VideoWorker {
    /// `public_base`: where the provider reaches this service, if it can (`PUBLIC_BASE_URL`);
    /// Seedance tasks are then submitted with a callback unless `VIDEO_CALLBACKS` is false.
    pub fn new(
        provider: Arc<dyn VideoProvider>,
        cfg: VideoConfig,
        downloads: usize,
        public_base: Option<&str>,
    ) -> VideoWorker {
        let callback_base = public_base
            .filter(|_| cfg.callbacks)
            .map(|b| b.trim_end_matches('/').to_string());
        VideoWorker {
            gets: std::sync::Mutex::new(Bucket {
                tokens: f64::from(cfg.get_per_second),
                at: Instant::now(),
            }),
            provider,
            cfg,
            callback_base,
            last_list: std::sync::Mutex::new(None),
            tracked: Default::default(),
            downloads: Arc::new(tokio::sync::Semaphore::new(downloads.max(1))),
        }
    }

    /// Time between two polls of a task expected to take `expected_secs`; at least
    /// `VIDEO_CALLBACK_POLL` when its provider calls back.
    fn interval(&self, expected_secs: u64, callback: bool) -> Duration {
        let regular = Duration::from_secs(expected_secs)
            .div_f64(10.0)
            .clamp(self.cfg.poll_min, self.cfg.poll_max);
        if callback {
            regular.max(self.cfg.callback_poll)
        } else {
            regular
        }
    }

    /// The callback URL of `task` (a Seedance video: Jimeng's API has none), when this process
    /// submits with callbacks.
    fn callback_url(&self, task: &Task) -> Option<String> {
        let base = self.callback_base.as_ref()?;
        if task.kind != TaskKind::Video
            || crate::domain::ProviderFamily::of_model(&task.model)
                == crate::domain::ProviderFamily::Jimeng
        {
            return None;
        }
        let token = task.video.as_ref()?.callback_token.as_ref()?;
        Some(format!("{base}/api/v1/callbacks/video/{}/{token}", task.id))
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Tracked>) -> R) -> Option<R> {
        self.tracked.lock().ok().map(|mut t| f(&mut t))
    }

    /// Tasks this process tracks now.
    pub fn tracked(&self) -> usize {
        self.with(|t| t.len()).unwrap_or(0)
    }
}

/// What a task is expected to take at the provider, seconds (its polls are spaced by it).
fn expected_secs(task: &Task) -> u64 {
    task.video
        .as_ref()
        .map_or(crate::domain::jimeng::IMAGE_EXPECTED_SECS, |v| {
            v.expected_secs
        })
}

/// The provider's handle on a tracked task.
fn remote(task: &Task, provider_id: &str) -> RemoteTask {
    RemoteTask {
        id: provider_id.to_string(),
        model: task.model.clone(),
        watermark: task.params.watermark,
    }
}

fn video_request(task: &Task, callback_url: Option<String>) -> VideoSubmit {
    let v = task
        .video
        .clone()
        .unwrap_or_else(|| crate::domain::video::VideoParams {
            duration: 5,
            ratio: "16:9".into(),
            resolution: "720p".into(),
            seed: None,
            camera_fixed: false,
            watermark: false,
            frames: Vec::new(),
            frame_count: 0,
            expected_secs: 60,
            callback_token: None,
        });
    VideoSubmit {
        task_id: task.id.clone(),
        model: task.model.clone(),
        prompt: task.prompt.clone(),
        duration: v.duration,
        ratio: v.ratio,
        resolution: v.resolution,
        seed: v.seed,
        camera_fixed: v.camera_fixed,
        watermark: v.watermark,
        frames: v.frames,
        callback_url,
    }
}

impl Worker {
    /// What to submit for a task: its video, or (Jimeng) its images.
    fn submit_request(&self, task: &Task) -> Result<RemoteSubmit, ProviderError> {
        if task.kind == TaskKind::Video {
            let callback = self.video.as_ref().and_then(|v| v.callback_url(task));
            return Ok(RemoteSubmit::Video(video_request(task, callback)));
        }
        match self.service.catalog().find(&task.model) {
            Some(spec) => Ok(RemoteSubmit::Images(super::images::generate_request(
                task, spec,
            ))),
            None => Err(ProviderError::ours(
                "UnknownModel",
                format!("model {} is no longer configured", task.model),
                false,
            )),
        }
    }

    /// A claimed provider-side task (a video, or Jimeng's images): submitted unless the provider
    /// already has it, then tracked.
    pub(super) async fn start_video(&self, running: Task) -> Result<(), crate::error::AppError> {
        let now = Utc::now();
        let Some(video) = &self.video else {
            let e = ProviderError::ours(
                "VideoUnavailable",
                "this worker runs no video provider",
                false,
            );
            return self.record_error(&running, e, None, 0, now).await;
        };
        let running = match running.provider_task_id.clone() {
            Some(pid) => {
                tracing::info!(provider_task_id = %pid, "tracking the provider's task again (not resubmitted)");
                running
            }
            None => {
                let submitted = match self.submit_request(&running) {
                    Ok(req) => self.submit_paced(video, &req).await,
                    Err(e) => Err(e),
                };
                let pid = match submitted {
                    Ok(pid) => pid,
                    Err(e) if e.is_pace_signal() => {
                        let wait = super::submit::throttled_wait(&e);
                        return self.requeue_paced(&running, &e, None, wait, now).await;
                    }
                    Err(e) => return self.record_error(&running, e, None, 0, now).await,
                };
                metrics::counter!("video_submits_total").increment(1);
                let Ok(next) = running.track(&pid, Utc::now()) else {
                    return Ok(());
                };
                match self.commit(&running, next).await? {
                    Some(t) => {
                        tracing::info!(provider_task_id = %pid, "video submitted; tracking it");
                        t
                    }
                    None => {
                        tracing::info!(provider_task_id = %pid, "task changed while submitting; cancelling at the provider");
                        cancel_at_provider(video, &remote(&running, &pid)).await;
                        return Ok(());
                    }
                }
            }
        };
        let Some(pid) = running.provider_task_id.clone() else {
            return Ok(());
        };
        let expected = expected_secs(&running);
        // A task submitted before a restart was given a callback if it has a token and callbacks
        // are on now (the base URL is the deployment's, the same before and after).
        let callback = video.callback_url(&running).is_some();
        let now = Instant::now();
        let renew = self.cfg.lease / 3;
        video.with(|t| {
            t.insert(
                running.id.clone(),
                Tracked {
                    task: running,
                    provider_id: pid,
                    next_poll: now + video.interval(expected, callback),
                    next_renew: now + renew,
                    downloading: false,
                    download_tries: 0,
                    callback,
                    look_pending: false,
                    looking: false,
                },
            )
        });
        Ok(())
    }
}

async fn cancel_at_provider(video: &VideoWorker, task: &RemoteTask) {
    let pid = &task.id;
    match video.provider.cancel(task).await {
        Ok(()) => tracing::info!(provider_task_id = %pid, "provider task cancelled"),
        // A running task cannot be cancelled at Ark; it finishes and is dropped here.
        Err(e) => {
            tracing::info!(provider_task_id = %pid, error = %e, "provider refused the cancel")
        }
    }
}

/// The tracking loop of a worker process with a video provider.
pub async fn run(worker: Arc<Worker>, shutdown: CancellationToken) {
    let Some(video) = worker.video.as_ref() else {
        return;
    };
    let mut events = worker.backends.events.subscribe(Channel::All).await.ok();
    let mut looks = worker.backends.events.looks().await.ok();
    let mut tick = tokio::time::interval(video.cfg.list_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Looks left waiting for a GET are retried as the budget refills.
    let mut get_tick =
        tokio::time::interval(Duration::from_secs(1) / video.cfg.get_per_second.max(1));
    get_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = async {
            match events.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        let look = async {
            match looks.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = event => match ev {
                Some(Event::Updated(t)) => on_event(&worker, video, &t).await,
                Some(Event::Gap) => {}
                None => events = None,
            },
            id = look => match id {
                Some(id) => on_look(&worker, video, &id),
                None => looks = None,
            },
            _ = get_tick.tick() => look_pending(&worker, video),
            _ = tick.tick() => {
                renew(&worker, video).await;
                if let Some(pause) = poll_once(&worker, video).await {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// A tracked task that ended here (cancelled, failed by its deadline): stop tracking it and
/// stop the provider's.
async fn on_event(worker: &Worker, video: &VideoWorker, t: &Task) {
    if !matches!(t.status, TaskStatus::Cancelled | TaskStatus::Failed) {
        return;
    }
    let Some(gone) = video.with(|m| m.remove(&t.id)).flatten() else {
        return;
    };
    let _ = worker;
    cancel_at_provider(video, &remote(&gone.task, &gone.provider_id)).await;
}

/// Extends the leases of tracked tasks that are due; a task that is no longer ours (cancelled,
/// expired, taken over) is dropped, and its provider task cancelled if ours ended.
async fn renew(worker: &Worker, video: &VideoWorker) {
    let now = Instant::now();
    let due: Vec<String> = video
        .with(|m| {
            m.iter()
                .filter(|(_, t)| t.next_renew <= now)
                .map(|(id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default();
    let lease = worker.cfg.lease;
    for id in due {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        match worker
            .backends
            .store
            .extend_lease(&id, &worker.id, until)
            .await
        {
            Ok(true) => {
                video.with(|m| {
                    if let Some(t) = m.get_mut(&id) {
                        t.next_renew = now + lease / 3;
                    }
                });
            }
            Ok(false) => {
                let Some(gone) = video.with(|m| m.remove(&id)).flatten() else {
                    continue;
                };
                let ended = matches!(
                    worker.backends.store.get_task(&id).await,
                    Ok(Some(t)) if matches!(t.status, TaskStatus::Cancelled | TaskStatus::Failed)
                );
                if ended {
                    cancel_at_provider(video, &remote(&gone.task, &gone.provider_id)).await;
                }
            }
            Err(e) => tracing::warn!(task_id = %id, error = %e, "video lease renewal failed"),
        }
    }
}

/// One list request for the tasks most overdue for a poll; a pause to take after a refusal.
async fn poll_once(worker: &Arc<Worker>, video: &VideoWorker) -> Option<Duration> {
    let now = Instant::now();
    // Tasks a callback announced first (they have most likely finished), then the most overdue:
    // with callbacks, every task's fallback poll is overdue long before most looks arrive.
    let mut due: Vec<(bool, Instant, String, RemoteTask)> = video
        .with(|m| {
            m.iter()
                .filter(|(_, t)| t.next_poll <= now && !t.downloading && !t.looking)
                .map(|(id, t)| {
                    let r = remote(&t.task, &t.provider_id);
                    (!t.look_pending, t.next_poll, id.clone(), r)
                })
                .collect()
        })
        .unwrap_or_default();
    if due.is_empty() {
        return None;
    }
    due.sort_by_key(|a| (a.0, a.1));
    due.truncate(video.cfg.list_batch);
    let ids: Vec<RemoteTask> = due.iter().map(|(_, _, _, r)| r.clone()).collect();
    let last = video.last_list.lock().ok().and_then(|l| *l);
    if let Some(wait) =
        last.and_then(|l| (l + video.cfg.list_interval).checked_duration_since(Instant::now()))
    {
        tokio::time::sleep(wait).await;
    }
    if let Ok(mut l) = video.last_list.lock() {
        *l = Some(Instant::now());
    }
    metrics::counter!("video_list_requests_total").increment(1);
    let states = match video.provider.states(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, tasks = ids.len(), "video list request failed");
            return e
                .is_pace_signal()
                .then(|| e.retry_after.unwrap_or(Duration::from_secs(2)));
        }
    };
    for (_, _, id, r) in due {
        apply(worker, video, &id, states.get(&r.id).cloned()).await;
    }
    None
}

/// What the provider said of tracked task `id` (`None`: not listed yet).
async fn apply(worker: &Arc<Worker>, video: &VideoWorker, id: &str, state: Option<VideoState>) {
    match state {
        Some(VideoState::Succeeded { video_url }) => {
            if let Some(task) = start_download(video, id) {
                let w = worker.clone();
                tokio::spawn(async move { keep_video(&w, task, video_url).await });
            }
        }
        Some(VideoState::ImagesReady { images }) => {
            if let Some(task) = start_download(video, id) {
                let w = worker.clone();
                tokio::spawn(async move { keep_images(&w, task, images).await });
            }
        }
        Some(VideoState::Failed { code, message }) => {
            let e = ProviderError::ours(&code, message, false);
            finish_failed(worker, video, id, e).await;
        }
        Some(VideoState::Cancelled) => {
            let e = ProviderError::ours(
                "ProviderTaskEnded",
                "the provider cancelled or expired the task",
                false,
            );
            finish_failed(worker, video, id, e).await;
        }
        // Still working, or not listed yet: due again after its interval.
        Some(VideoState::Working) | None => {
            video.with(|m| {
                if let Some(t) = m.get_mut(id) {
                    t.next_poll =
                        Instant::now() + video.interval(expected_secs(&t.task), t.callback);
                    t.look_pending = false;
                }
            });
        }
    }
}

/// A callback said task `id` changed: fetch its state now if a GET is left this second, else
/// make it due for the next list request (and the next GET).
fn on_look(worker: &Arc<Worker>, video: &VideoWorker, id: &str) {
    let tracked = video
        .with(|m| match m.get_mut(id) {
            Some(t) if !t.downloading && !t.looking => {
                t.look_pending = true;
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !tracked {
        // Another process's task, one ending here, or a look already under way.
        return;
    }
    metrics::counter!("video_looks_total").increment(1);
    if !start_get(worker, video, id) {
        video.with(|m| {
            if let Some(t) = m.get_mut(id) {
                t.next_poll = t.next_poll.min(Instant::now());
            }
        });
    }
}

/// One waiting look, if the GET budget allows.
fn look_pending(worker: &Arc<Worker>, video: &VideoWorker) {
    let next = video
        .with(|m| {
            m.iter()
                .filter(|(_, t)| t.look_pending && !t.looking && !t.downloading)
                .min_by_key(|(_, t)| t.next_poll)
                .map(|(id, _)| id.clone())
        })
        .flatten();
    if let Some(id) = next {
        start_get(worker, video, &id);
    }
}

/// Sends a GET for task `id` if the budget allows; whether it did.
fn start_get(worker: &Arc<Worker>, video: &VideoWorker, id: &str) -> bool {
    let rate = video.cfg.get_per_second;
    if !video.gets.lock().is_ok_and(|mut b| b.take(rate)) {
        return false;
    }
    let r = video
        .with(|m| {
            m.get_mut(id).map(|t| {
                t.looking = true;
                t.look_pending = false;
                remote(&t.task, &t.provider_id)
            })
        })
        .flatten();
    let Some(r) = r else {
        return true;
    };
    let (w, id) = (worker.clone(), id.to_string());
    tokio::spawn(async move {
        let Some(video) = w.video.as_ref() else {
            return;
        };
        metrics::counter!("video_get_requests_total").increment(1);
        let state = video.provider.state(&r).await;
        video.with(|m| {
            if let Some(t) = m.get_mut(&id) {
                t.looking = false;
            }
        });
        match state {
            Ok(state) => apply(&w, video, &id, Some(state)).await,
            Err(e) => {
                tracing::warn!(task_id = %id, provider_task_id = %r.id, error = %e, "video GET failed; left to the list");
                video.with(|m| {
                    if let Some(t) = m.get_mut(&id) {
                        t.next_poll = t.next_poll.min(Instant::now());
                    }
                });
            }
        }
    });
    true
}

/// Marks a tracked task's result as being downloaded (not polled meanwhile); the task.
fn start_download(video: &VideoWorker, id: &str) -> Option<Task> {
    video
        .with(|m| match m.get_mut(id) {
            // A GET and a list may both report the result: one download.
            Some(t) if !t.downloading => {
                t.downloading = true;
                t.look_pending = false;
                Some(t.task.clone())
            }
            _ => None,
        })
        .flatten()
}

/// The provider ended the task without a video: ours fails (no retry: a new submit would be a
/// new paid generation the user did not ask for).
async fn finish_failed(worker: &Worker, video: &VideoWorker, id: &str, e: ProviderError) {
    let Some(gone) = video.with(|m| m.remove(id)).flatten() else {
        return;
    };
    let now = Utc::now();
    let error = TaskError {
        retryable: false,
        ..e.task_error()
    };
    let Ok(next) = gone.task.fail(error, None, now) else {
        return;
    };
    match worker.commit(&gone.task, next).await {
        Ok(Some(_)) => {
            tracing::warn!(task_id = %id, code = %e.code, "video task failed at the provider")
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(task_id = %id, error = %err, "could not store a video failure"),
    }
}

/// Streams the finished video into the store and completes the task.
async fn keep_video(worker: &Worker, task: Task, url: String) {
    let Some(video) = worker.video.as_ref() else {
        return;
    };
    let _place = video.downloads.acquire().await;
    let id = uuid::Uuid::new_v4().to_string();
    let kept = match video.provider.download(&url).await {
        Ok((body, _len)) => worker
            .backends
            .store
            .put_video(&id, &task.id, "video/mp4", body)
            .await
            .map_err(|e| ProviderError::ours("StorageError", e.to_string(), true)),
        Err(e) => Err(e),
    };
    let bytes = match kept {
        Ok(n) => n,
        Err(e) => return download_failed(worker, video, &task, e).await,
    };
    let stored = StoredVideo {
        id: id.clone(),
        provider_url: Some(url),
        bytes,
        content_type: "video/mp4".into(),
    };
    // The tracked copy may be newer (its lease renewed; the version is the same).
    let current = video
        .with(|m| m.remove(&task.id).map(|t| t.task))
        .flatten()
        .unwrap_or(task);
    let Ok(next) = current.complete_video(stored, Utc::now()) else {
        return;
    };
    match worker.commit(&current, next).await {
        Ok(Some(_)) => {
            tracing::info!(task_id = %current.id, bytes, "video task completed");
        }
        other => {
            if let Err(e) = other {
                tracing::warn!(task_id = %current.id, error = %e, "could not store a video's completion");
            }
            let _ = worker.backends.store.delete_videos(&[id]).await;
        }
    }
}

/// Keeps a Jimeng task's images (downloaded at once, or as sent) and completes the task.
async fn keep_images(worker: &Worker, task: Task, images: Vec<RemoteImage>) {
    let Some(video) = worker.video.as_ref() else {
        return;
    };
    let Some(spec) = worker.service.catalog().find(&task.model) else {
        let e = ProviderError::ours("UnknownModel", "the model is no longer configured", false);
        return finish_failed(worker, video, &task.id, e).await;
    };
    let asked = spec.output_dims(&task.params.size);
    let mut stored = Vec::new();
    for image in images {
        let kept = match image {
            RemoteImage::Url(url) => worker.keep_image(&task, spec, &url, None).await,
            RemoteImage::Inline(bytes) => worker.store_image(&task, asked, bytes, None, None).await,
        };
        match kept {
            Ok(img) => stored.push(img),
            Err(e) => {
                worker.forget(&stored).await;
                return download_failed(worker, video, &task, e).await;
            }
        }
    }
    let count = stored.len() as u32;
    // The tracked copy may be newer (its lease renewed; the version is the same).
    let current = video
        .with(|m| m.remove(&task.id).map(|t| t.task))
        .flatten()
        .unwrap_or(task);
    let Ok(mut next) = current.complete(stored.clone(), None, Utc::now()) else {
        return;
    };
    next.generated_images = next.generated_images.saturating_add(count);
    match worker.commit(&current, next).await {
        Ok(Some(_)) => {
            tracing::info!(task_id = %current.id, images = count, "image task completed")
        }
        other => {
            if let Err(e) = other {
                tracing::warn!(task_id = %current.id, error = %e, "could not store the images' completion");
            }
            worker.forget(&stored).await;
        }
    }
}

async fn download_failed(worker: &Worker, video: &VideoWorker, task: &Task, e: ProviderError) {
    let tries = video
        .with(|m| match m.get_mut(&task.id) {
            Some(t) => {
                t.downloading = false;
                t.download_tries += 1;
                t.next_poll = Instant::now() + video.cfg.poll_max;
                t.download_tries
            }
            None => 0,
        })
        .unwrap_or(0);
    tracing::warn!(task_id = %task.id, error = %e, tries, "video download failed");
    if !e.retryable || tries >= MAX_DOWNLOAD_TRIES {
        finish_failed(worker, video, &task.id, e).await;
    }
}
