//! The worker: takes task ids from the queue, claims each task in the store under a lease, calls
//! the provider, stores the images and records the outcome. Every step is a compare-and-set on
//! the task's version, so a duplicate delivery, a cancellation or a second worker can never make
//! a task finish twice.

mod images;
pub mod reconciler;
pub mod submit;
pub mod timers;
pub mod video;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::{
    ModelSpec, ProviderFamily, ProviderImage, StoredImage, Task, TaskKind, TaskStatus, UnkeptImages,
};
use crate::events::Events;
use crate::events::{Channel, Event};
use crate::provider::keys::{KeyOutcome, KeyPool};
use crate::provider::limiter::ProviderLimiter;
use crate::provider::pace::PaceSignal;
use crate::provider::{DownloadBudget, GeneratedImage, ImageProvider, ProviderError};
use crate::queue::{Delivery, Queue};
use crate::service::Service;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    /// Images downloaded and stored at once (`DOWNLOAD_CONCURRENCY`).
    pub download_concurrency: usize,
    /// Bytes of those images held at once (`DOWNLOAD_MEMORY_BYTES`).
    pub download_memory_bytes: u64,
    pub max_attempts: u32,
    pub lease: Duration,
    pub reconcile_interval: Duration,
    /// How often due scheduled tasks are promoted (`SWEEP_INTERVAL`).
    pub sweep_interval: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Embedded mode owns its data folder alone, so every `processing` task found at start was
    /// orphaned by a crash and can be requeued at once instead of waiting for its lease.
    pub recover_orphans_at_start: bool,
}

/// The worker's own handles on the seams: it claims tasks, keeps leases and stores images
/// directly, and changes a task's state only through `Service::commit`.
#[derive(Clone)]
pub struct Handles {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub events: Arc<dyn Events>,
}

pub struct Worker {
    service: Arc<Service>,
    backends: Handles,
    provider: Arc<dyn ImageProvider>,
    /// The API keys the calls are made with, each paced on its own.
    keys: Arc<KeyPool>,
    limiter: Arc<ProviderLimiter>,
    cfg: WorkerConfig,
    /// Lease owner name of this process.
    id: String,
    /// Tasks this process holds right now, to hand back at a shutdown deadline.
    held: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Places for an image being downloaded and stored. Provider calls are many and long (the
    /// provider works for seconds); downloads are short. When a wave of calls returns together,
    /// unbounded downloads would all share the link and the cores and so all finish late and
    /// together (a thousand at once measured: every task completed in the last few hundred
    /// milliseconds, in clumps of hundreds of subscription messages); a few at a time finish in
    /// the order they began and hold a bounded amount of image memory.
    downloads: tokio::sync::Semaphore,
    /// Bytes those images hold: a few at a time of 4K images are still many megabytes each.
    download_budget: DownloadBudget,
    /// The API's runtime when the worker runs on lower-priority threads of its own beside it:
    /// state changes are stored and announced there, so that subscribers hear of them at the
    /// API's priority, not when a busy machine next gets round to the worker's threads.
    foreground: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Video tasks' provider and tracker, when this process runs one.
    video: Option<video::VideoWorker>,
}

/// How long after a generation its image URLs are downloaded again instead of generating anew:
/// Ark keeps them 24 h; an hour less leaves room for clocks and a slow download.
const PROVIDER_URLS_USABLE_FOR: chrono::Duration = chrono::Duration::hours(23);

/// Why an attempt ended without a result to store.
/// `billed` is what this attempt's own provider call cost (0 when it reused an earlier one's
/// images): added to the task's `generated_images` with the outcome.
enum Outcome {
    /// The images, the provider's request id, what this attempt's call billed and the
    /// fingerprint of the key that made them.
    Images(Vec<StoredImage>, Option<String>, u32, Option<String>),
    Error(ProviderError),
    /// The provider made the images but one could not be kept (downloaded or stored).
    NotKept(ProviderError, UnkeptImages, u32),
    /// The task was cancelled or taken over while the provider worked.
    Lost,
    /// Its deadline passed while the provider worked.
    Overdue,
}

impl Worker {
    pub fn new(
        service: Arc<Service>,
        backends: Handles,
        provider: Arc<dyn ImageProvider>,
        keys: Arc<KeyPool>,
        limiter: Arc<ProviderLimiter>,
        cfg: WorkerConfig,
    ) -> Worker {
        let downloads = cfg.download_concurrency.max(1);
        let download_budget = DownloadBudget::new(cfg.download_memory_bytes);
        Worker {
            service,
            backends,
            provider,
            keys,
            limiter,
            cfg,
            id: format!("worker-{}", uuid::Uuid::new_v4()),
            held: Default::default(),
            downloads: tokio::sync::Semaphore::new(downloads),
            download_budget,
            foreground: Default::default(),
            video: None,
        }
    }

    /// The same worker running video tasks through `provider` too.
    pub fn with_video(mut self, video: video::VideoWorker) -> Worker {
        self.video = Some(video);
        self
    }

    /// `Service::commit`, run on the foreground runtime when there is one.
    pub(crate) async fn commit(
        &self,
        current: &Task,
        next: Task,
    ) -> Result<Option<Task>, crate::error::AppError> {
        let Some(rt) = self.foreground.get() else {
            return self.service.commit(current, next).await;
        };
        let (svc, current) = (self.service.clone(), current.clone());
        rt.spawn(async move { svc.commit(&current, next).await })
            .await
            .map_err(|e| crate::error::AppError::internal("storing a task change", e))?
    }

    /// `Service::commit_expired`, run on the foreground runtime when there is one.
    pub(crate) async fn commit_expired(
        &self,
        current: &Task,
        next: Task,
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, crate::error::AppError> {
        let Some(rt) = self.foreground.get() else {
            return self.service.commit_expired(current, next, now).await;
        };
        let (svc, current) = (self.service.clone(), current.clone());
        rt.spawn(async move { svc.commit_expired(&current, next, now).await })
            .await
            .map_err(|e| crate::error::AppError::internal("storing a task change", e))?
    }

    /// Whether this process's own worker holds the task right now: then it is alive, however
    /// late its heartbeat.
    fn holds(&self, id: &str) -> bool {
        self.held.lock().map(|h| h.contains(id)).unwrap_or(false)
    }

    fn hold(&self, id: &str, on: bool) {
        if let Ok(mut h) = self.held.lock() {
            if on {
                h.insert(id.to_string());
            } else {
                h.remove(id);
            }
        }
    }

    /// Hands the tasks still held back to the queue (after their attempts were abandoned at a
    /// shutdown deadline), so other workers take them now instead of after the lease.
    pub async fn release_held(&self) -> usize {
        let ids: Vec<String> = match self.held.lock() {
            Ok(mut h) => h.drain().collect(),
            Err(_) => return 0,
        };
        let mut released = 0;
        for id in ids {
            let task = match self.backends.store.get_task(&id).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    // Not handed back: it returns when its lease expires.
                    tracing::warn!(task_id = %id, error = %e, "could not hand a task back at shutdown");
                    continue;
                }
            };
            if task.status != TaskStatus::Processing
                || task.lease_owner.as_deref() != Some(&self.id)
            {
                continue;
            }
            let now = Utc::now();
            let handed = match task.requeue(None, now, now) {
                Ok(next) => self.commit(&task, next).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match handed {
                Ok(Some(_)) => {
                    let _ = self.backends.queue.enqueue(&id, None).await;
                    released += 1;
                }
                // Changed meanwhile (cancelled, or finished after all): nothing to hand back.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(task_id = %id, error = %e, "could not hand a task back at shutdown");
                }
            }
        }
        released
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the processing loops and the reconciler, on `runtime` if given (else the current
    /// one, which then also stores the task changes: see `foreground`); they stop taking work
    /// when `shutdown` is cancelled and finish the attempt in hand.
    pub fn spawn(
        self: Arc<Self>,
        shutdown: CancellationToken,
        runtime: Option<&tokio::runtime::Handle>,
    ) -> tokio::task::JoinSet<()> {
        let current = tokio::runtime::Handle::current();
        if runtime.is_some() {
            let _ = self.foreground.set(current.clone());
        }
        let rt = runtime.unwrap_or(&current);
        let mut set = tokio::task::JoinSet::new();
        // The loops take work only once the start-up orphan recovery is done: a task they
        // claimed before it ran would look orphaned to it, be requeued, and be called twice.
        let (recovered, ready) = tokio::sync::watch::channel(!self.cfg.recover_orphans_at_start);
        for _ in 0..self.cfg.concurrency {
            let w = self.clone();
            let (stop, ready) = (shutdown.clone(), ready.clone());
            set.spawn_on(async move { w.run_loop(stop, ready).await }, rt);
        }
        let (w, stop) = (self.clone(), shutdown.clone());
        set.spawn_on(async move { timers::run(w, stop).await }, rt);
        if self.video.is_some() {
            let (w, stop) = (self.clone(), shutdown.clone());
            set.spawn_on(async move { video::run(w, stop).await }, rt);
        }
        let w = self.clone();
        set.spawn_on(
            async move { reconciler::run(w, shutdown, recovered).await },
            rt,
        );
        set
    }

    async fn run_loop(
        &self,
        shutdown: CancellationToken,
        mut ready: tokio::sync::watch::Receiver<bool>,
    ) {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // An error means the reconciler is gone (shutting down); the loop then goes on.
            _ = ready.wait_for(|recovered| *recovered) => {}
        }
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = self.backends.queue.dequeue() => d,
            };
            match delivery {
                Ok(d) => {
                    let span = tracing::info_span!("task", task_id = %d.task_id, worker = %self.id, provider_key = tracing::field::Empty);
                    self.process(&d).instrument(span).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dequeue failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn process(&self, delivery: &Delivery) {
        if let Err(e) = self.try_process(&delivery.task_id).await {
            // The task stays as stored; the reconciler runs it again when due.
            e.log_internal();
            tracing::warn!(error = %e, "processing failed before an outcome was stored");
        }
        if let Err(e) = self.backends.queue.ack(delivery).await {
            tracing::warn!(error = %e, "ack failed; the delivery may come again (harmless)");
        }
    }

    async fn try_process(&self, task_id: &str) -> Result<(), crate::error::AppError> {
        let svc = &self.backends;
        let Some(task) = svc.store.get_task(task_id).await? else {
            return Ok(());
        };
        if task.status != TaskStatus::Pending {
            return Ok(());
        }
        let now = Utc::now();
        if task.is_overdue(now) {
            timers::expire(self, &task, now).await?;
            return Ok(());
        }
        if let Some(at) = task.not_before.filter(|at| *at > now) {
            svc.queue.enqueue(&task.id, Some(at)).await?;
            return Ok(());
        }
        let lease_until = now + chrono::Duration::from_std(self.cfg.lease).unwrap_or_default();
        let Ok(next) = task.start(&self.id, lease_until, now) else {
            return Ok(());
        };
        let Some(running) = self.commit(&task, next).await? else {
            tracing::debug!("another worker claimed the task first");
            return Ok(());
        };
        tracing::info!(attempt = running.attempts, "task started");
        if running.kind == TaskKind::Video
            || ProviderFamily::of_model(&running.model) == ProviderFamily::Jimeng
        {
            // A provider-side task (a video, or Jimeng's images): submitted (or found
            // submitted) and handed to the tracker; the loop goes on.
            return self.start_video(running).await;
        }
        self.hold(&running.id, true);

        let outcome = match self.service.catalog().find(&running.model) {
            Some(spec) => self.attempt(&running, spec).await,
            None => Outcome::Error(ProviderError::ours(
                "UnknownModel",
                format!("model {} is no longer configured", running.model),
                false,
            )),
        };
        let recorded = self.record(&running, outcome).await;
        self.hold(&running.id, false);
        recorded
    }

    /// One provider call with its image downloads, watched for cancellation and kept alive by
    /// lease heartbeats.
    async fn attempt(&self, task: &Task, spec: &ModelSpec) -> Outcome {
        let lost = CancellationToken::new();
        let done = CancellationToken::new();
        let watcher = tokio::spawn(watch(
            self.backends.clone(),
            task.clone(),
            self.id.clone(),
            self.cfg.lease,
            (lost.clone(), done.clone()),
        ));
        // The deadline ends the attempt here too, not only at the next sweep.
        let overdue = async {
            match task.deadline_at {
                Some(at) => {
                    let left = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            _ = lost.cancelled() => Outcome::Lost,
            _ = overdue => Outcome::Overdue,
            o = self.call(task, spec) => o,
        };
        // Stopped between heartbeats, never aborted in one: an abort inside the store's lock
        // insert left the task's write lock behind (inserted, its guard never made), so the
        // result's write waited it out and failed, and the paid call was made again after the
        // lease (measured: 2 of 18 duplicates after a kill -9 on FerretDB).
        done.cancel();
        let _ = watcher.await;
        outcome
    }

    async fn call(&self, task: &Task, spec: &ModelSpec) -> Outcome {
        // Images an earlier attempt paid for are downloaded again rather than made again, while
        // the provider still serves them.
        let reusable = task
            .unkept
            .clone()
            .filter(|u| Utc::now() < u.generated_at + PROVIDER_URLS_USABLE_FOR);
        let (made, billed) = match reusable {
            Some(u) => {
                tracing::info!(
                    images = u.images.len(),
                    "downloading the images of an earlier attempt again instead of generating"
                );
                (u, 0)
            }
            None => match self.generate(task, spec).await {
                Ok(u) => {
                    let billed = u.billed;
                    (u, billed)
                }
                Err(e) => return Outcome::Error(e),
            },
        };
        let mut stored = Vec::new();
        for item in &made.images {
            match self
                .keep_image(task, spec, &item.url, item.size.clone())
                .await
            {
                Ok(img) => stored.push(img),
                Err(e) => {
                    self.forget(&stored).await;
                    return Outcome::NotKept(e, made, billed);
                }
            }
        }
        Outcome::Images(stored, made.request_id, billed, made.provider_key)
    }

    /// One paid provider call; the images it made, or why there are none.
    async fn generate(&self, task: &Task, spec: &ModelSpec) -> Result<UnkeptImages, ProviderError> {
        let req = images::generate_request(task, spec);
        let Some(picked) = self.keys.pick() else {
            return Err(ProviderError::ours(
                "ProviderKeysRefused",
                "every provider API key was refused (401/403); each is probed again with backoff",
                false,
            ));
        };
        let key = picked.key.fingerprint.clone();
        tracing::Span::current().record("provider_key", key.as_str());
        let permit = self.limiter.acquire(&key, &req.model, req.max_images).await;
        if let Some(p) = &permit {
            metrics::histogram!("rate_limiter_wait_seconds", "model" => req.model.clone())
                .record(p.waited.as_secs_f64());
            if !p.waited.is_zero() {
                tracing::debug!(
                    waited_ms = p.waited.as_millis() as u64,
                    "paced by the provider rate limiter"
                );
            }
        }
        let called = std::time::Instant::now();
        let result = self.provider.generate(&req, picked.key.secret()).await;
        drop(permit);
        let result = self.key_outcome(picked, result);
        let (outcome, code) = match &result {
            Ok(_) => ("ok", String::new()),
            Err(e) if e.retryable => ("retryable_error", e.code.clone()),
            Err(e) => ("error", e.code.clone()),
        };
        let labels = [
            ("model", req.model.clone()),
            ("key", key.clone()),
            ("outcome", outcome.to_string()),
            ("code", code),
        ];
        metrics::counter!("provider_calls_total", &labels).increment(1);
        metrics::histogram!("provider_call_duration_seconds", &labels)
            .record(called.elapsed().as_secs_f64());
        let generated = match result {
            Ok(g) => {
                let made = g
                    .images
                    .iter()
                    .filter(|i| matches!(i, GeneratedImage::Url { .. }));
                let signal = PaceSignal::Accepted(made.count().max(1) as u32);
                self.limiter.signal(&key, &req.model, signal).await;
                g
            }
            Err(e) => {
                if e.is_pace_signal() {
                    let signal = PaceSignal::Throttled(e.retry_after);
                    self.limiter.signal(&key, &req.model, signal).await;
                }
                return Err(e);
            }
        };
        let mut images = Vec::new();
        let mut first_failure = None;
        for item in generated.images {
            match item {
                GeneratedImage::Url { url, size } => images.push(ProviderImage { url, size }),
                GeneratedImage::Failed { code, message } => {
                    tracing::warn!(%code, "one image of the group failed");
                    first_failure.get_or_insert((code, message));
                }
            }
        }
        if images.is_empty() {
            let (code, message) = first_failure
                .unwrap_or_else(|| ("NoImage".into(), "the provider returned no image".into()));
            return Err(ProviderError {
                retryable: code == "NoImage",
                code,
                message,
                status: Some(200),
                retry_after: None,
                request_id: generated.request_id,
            });
        }
        // A provider that does not report usage billed the images it returned.
        let billed = generated.billed.unwrap_or(images.len() as u32);
        Ok(UnkeptImages {
            images,
            request_id: generated.request_id,
            generated_at: Utc::now(),
            billed,
            provider_key: Some(key),
        })
    }

    /// Tells the key pool what the call showed of its key. A refused key (401/403) is taken out
    /// at once; the task's error is then retryable without costing an attempt while the pool
    /// has another key to try, and fails the task as before when it has none.
    fn key_outcome(
        &self,
        picked: crate::provider::keys::Picked<'_>,
        result: Result<crate::provider::Generated, ProviderError>,
    ) -> Result<crate::provider::Generated, ProviderError> {
        match result {
            Err(mut e) if e.is_key_refused() => {
                self.keys.report(picked, KeyOutcome::Refused);
                e.retryable = self.keys.any_usable();
                Err(e)
            }
            other => {
                self.keys.report(picked, KeyOutcome::Accepted);
                other
            }
        }
    }

    async fn record(&self, running: &Task, outcome: Outcome) -> Result<(), crate::error::AppError> {
        let now = Utc::now();
        match outcome {
            Outcome::Lost => {
                tracing::info!("task was cancelled or taken over during the provider call");
            }
            Outcome::Overdue => {
                timers::expire(self, running, now).await?;
            }
            Outcome::Images(images, request_id, billed, provider_key) => {
                let count = images.len();
                let Ok(mut next) = running.complete(images.clone(), request_id, now) else {
                    return Ok(());
                };
                next.generated_images = next.generated_images.saturating_add(billed);
                next.provider_key = provider_key.or(next.provider_key);
                if self.commit(running, next).await?.is_some() {
                    tracing::info!(images = count, "task completed");
                } else {
                    tracing::info!("task changed during the call; dropping its images");
                    self.forget(&images).await;
                }
            }
            // Nothing was made (an earlier generation, if any, was too old to reuse).
            Outcome::Error(e) => self.record_error(running, e, None, 0, now).await?,
            // A link that no longer works (expired, refused) will not start working: then the
            // next attempt generates afresh.
            Outcome::NotKept(e, made, billed) => {
                let unkept = e.retryable.then_some(made);
                self.record_error(running, e, unkept, billed, now).await?
            }
        }
        Ok(())
    }

    /// Stores a failed attempt: requeued while retries remain and the error is transient,
    /// failed otherwise. `unkept` is what the next attempt (or a user's retry) downloads instead
    /// of generating.
    async fn record_error(
        &self,
        running: &Task,
        e: ProviderError,
        unkept: Option<UnkeptImages>,
        billed: u32,
        now: DateTime<Utc>,
    ) -> Result<(), crate::error::AppError> {
        let error = e.task_error();
        if e.costs_no_attempt() {
            // The pace already waits for the provider; only a Retry-After also holds the task. A
            // refused key of a pool is already out of it: the next call takes another key.
            let wait = e.retry_after.unwrap_or_default();
            self.requeue_paced(running, &e, unkept, wait, now).await?;
        } else if e.retryable && running.attempts < self.cfg.max_attempts {
            let at = self.retry_at(running.attempts, e.retry_after, now);
            let Ok(mut next) = running.requeue(Some(error), at, now) else {
                return Ok(());
            };
            next.unkept = unkept;
            next.generated_images = next.generated_images.saturating_add(billed);
            if self.commit(running, next).await?.is_some() {
                tracing::warn!(code = %e.code, attempt = running.attempts, retry_at = %at, "attempt failed; retry scheduled");
                self.backends.queue.enqueue(&running.id, Some(at)).await?;
            }
        } else {
            let Ok(mut next) = running.fail(error, e.request_id.clone(), now) else {
                return Ok(());
            };
            next.unkept = unkept;
            next.generated_images = next.generated_images.saturating_add(billed);
            if self.commit(running, next).await?.is_some() {
                tracing::warn!(code = %e.code, attempts = running.attempts, "task failed");
            }
        }
        Ok(())
    }

    /// Exponential backoff with full jitter, never sooner than the provider's `Retry-After`.
    fn retry_at(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let exp = self
            .cfg
            .retry_base_delay
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
        let cap = exp.min(self.cfg.retry_max_delay);
        let jitter = rand::thread_rng().gen_range(0..=cap.as_millis() as u64);
        let delay = Duration::from_millis(jitter).max(retry_after.unwrap_or_default());
        now + chrono::Duration::from_std(delay).unwrap_or_default()
    }
}

/// Keeps the lease alive while the provider works, and cancels `lost` as soon as the task is
/// cancelled (seen on its event channel) or the lease can no longer be extended.
async fn watch(
    backends: Handles,
    task: Task,
    owner: String,
    lease: Duration,
    (lost, done): (CancellationToken, CancellationToken),
) {
    let mut events = match backends
        .events
        .subscribe(Channel::Task(task.id.clone()))
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "no event subscription; relying on heartbeats");
            None
        }
    };
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        let event = async {
            match events.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {
                let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
                match backends.store.extend_lease(&task.id, &owner, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "lease heartbeat failed"),
                }
            }
            ev = event => match ev {
                Some(Event::Updated(t)) if t.version > task.version && t.status != TaskStatus::Processing => {
                    lost.cancel();
                    return;
                }
                Some(_) => {}
                None => events = None,
            },
        }
    }
}
