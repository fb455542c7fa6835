//! Business rules, written once above the store, queue and event traits: REST, GraphQL and the
//! worker all go through here. By concern: `users`, `tasks`, `keys`, `admission` (submit rate,
//! in-flight quota, known users), `access` (who may do what), `validate` (input checks).

mod access;
mod admission;
mod callbacks;
pub mod follow;
mod keys;
mod polls;
pub mod queue_clock;
mod tasks;
mod usage;
mod users;
pub mod validate;
mod wait;
pub mod webhooks;

use std::sync::Arc;

use futures::stream::BoxStream;

use crate::auth::{Authenticator, Principal};
use crate::config::Config;
use crate::domain::{Catalog, Task, User};
use crate::error::AppError;
use crate::events::{Channel, Event, Events, EventsError};
use crate::provider::limiter::Pacer;
use crate::queue::{Queue, QueueError};
use crate::store::{ChangeCursor, ImageBlob, Store, StoreError};

pub use crate::domain::CreateImageTask;
pub use access::{check_id, may_see_task};
pub use admission::Limits;
use admission::{KnownUsers, Submitting};
pub use callbacks::CallbackOutcome;
use polls::PollCache;
pub use tasks::QueueStats;
pub use usage::{TaskCounts, Usage, UsageFilter, UsageTotals};
pub use users::{CreateUser, UpdateUser};

pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
    pub total: u64,
}

/// The service: every surface reaches the backends through its methods, never around them.
pub struct Service {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    events: Arc<dyn Events>,
    catalog: Catalog,
    video_catalog: crate::domain::video::VideoCatalog,
    auth: Authenticator,
    limits: Limits,
    /// Admission buckets for user submits; shared across processes in distributed mode.
    pacer: Arc<dyn Pacer>,
    known_users: KnownUsers,
    /// Submits of each user between their quota check and their insert (this process).
    submitting: Submitting,
    /// `WEBHOOK_ALLOW_PRIVATE`: webhooks may point at local and private addresses.
    webhook_allow_private: bool,
    /// Notified when a change wrote webhook events.
    webhook_wake: Arc<tokio::sync::Notify>,
    /// Polls answered from memory (distributed api processes; see `polls`).
    polls: Option<Arc<PollCache>>,
    /// Queue positions (`queue_clock`).
    queue_clock: Arc<queue_clock::QueueClock>,
    position_pace: Arc<queue_clock::PositionPace>,
}

/// The backends' names, for `/health`.
#[derive(Debug, Clone, Copy)]
pub struct BackendKinds {
    pub store: &'static str,
    pub queue: &'static str,
    pub events: &'static str,
}

/// Whether each backend answers, for `/ready`.
#[derive(Debug)]
pub struct Readiness {
    pub store: Result<(), StoreError>,
    pub queue: Result<(), QueueError>,
    pub events: Result<(), EventsError>,
}

pub fn page_limit(limit: Option<i64>) -> Result<usize, AppError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE as i64).contains(&n) => Ok(n as usize),
        Some(_) => Err(AppError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        )),
    }
}

impl Service {
    /// The service over its backends; authentication, the model catalogue and the limits come
    /// from `config`.
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        events: Arc<dyn Events>,
        pacer: Arc<dyn Pacer>,
        config: &Config,
    ) -> Service {
        Service {
            auth: Authenticator::new(
                config.admin_api_key.as_ref().map(|k| k.expose()),
                store.clone(),
            ),
            store,
            queue_clock: Arc::new(queue_clock::QueueClock::new(queue.clone())),
            position_pace: Arc::new(queue_clock::PositionPace::new(
                config.subscription_position_rate,
            )),
            queue,
            events,
            catalog: Catalog::new(&config.model_ids),
            video_catalog: crate::domain::video::VideoCatalog::new(),
            limits: Limits::from_config(config),
            pacer,
            known_users: KnownUsers::default(),
            submitting: Submitting::default(),
            webhook_allow_private: config.webhooks.allow_private,
            webhook_wake: Arc::new(tokio::sync::Notify::new()),
            polls: None,
        }
    }

    /// Answers polls from memory kept current by the task events (`service::polls`), each task
    /// trusted for `ttl` at most. For processes that serve polls over a store other processes
    /// write (the embedded store keeps its own cache).
    pub fn cache_polls(&mut self, bounds: crate::store::TaskCacheBounds, ttl: std::time::Duration) {
        let cache = Arc::new(PollCache::new(bounds, ttl));
        self.events.observe(cache.clone());
        self.polls = Some(cache);
    }

    // ---- the process ----

    /// The caller behind an `Authorization` value (or an API key on its own).
    pub async fn authenticate(&self, credential: Option<&str>) -> Result<Principal, AppError> {
        self.auth.authenticate(credential).await
    }

    /// Whether requests need an API key (`ADMIN_API_KEY` set).
    pub fn auth_enabled(&self) -> bool {
        self.auth.enabled()
    }

    pub fn video_catalog(&self) -> &crate::domain::video::VideoCatalog {
        &self.video_catalog
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn backend_kinds(&self) -> BackendKinds {
        BackendKinds {
            store: self.store.kind(),
            queue: self.queue.kind(),
            events: self.events.kind(),
        }
    }

    /// Asks every backend whether it answers.
    pub async fn readiness(&self) -> Readiness {
        Readiness {
            store: self.store.ping().await,
            queue: self.queue.ping().await,
            events: self.events.ping().await,
        }
    }

    /// A stored image by id. Images are not secret: their ids are random and handed out only
    /// in results.
    pub async fn get_image(&self, id: &str) -> Result<Option<ImageBlob>, AppError> {
        Ok(self.store.get_image(id).await?)
    }

    /// A stored video's length (videos are public by their unguessable id, as images are).
    pub async fn video_file(&self, id: &str) -> Result<Option<crate::store::VideoFile>, AppError> {
        Ok(self.store.video_file(id).await?)
    }

    /// `len` bytes of a stored video from `start`, as they are read.
    pub async fn read_video(
        &self,
        id: &str,
        start: u64,
        len: u64,
    ) -> Result<crate::store::ByteStream, AppError> {
        Ok(self.store.read_video(id, start, len).await?)
    }

    /// Task events published on `channel` after this returns. Whether the caller may follow the
    /// channel is decided first (`get_task`, `task_scope`).
    pub async fn subscribe(&self, channel: Channel) -> Result<BoxStream<'static, Event>, AppError> {
        Ok(self.events.subscribe(channel).await?)
    }

    /// A task as stored, for a subscription that checked its caller's access when it started.
    pub async fn reread_task(&self, id: &str) -> Result<Option<Task>, AppError> {
        Ok(self.store.get_task(id).await?)
    }

    /// Tasks changed after `after` (see `Store::tasks_changed`), for a subscription whose scope
    /// `task_scope` decided.
    pub async fn tasks_changed(
        &self,
        user_id: Option<&str>,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Task>, AppError> {
        Ok(self.store.tasks_changed(user_id, after, limit).await?)
    }

    /// Resumes the queue numbering from the store and keeps this process's view of the queue
    /// current until `shutdown`. Before the workers start, so that they number from there.
    pub async fn start_queue_clock(&self, shutdown: tokio_util::sync::CancellationToken) {
        self.queue_clock.seed(self.store.as_ref()).await;
        tokio::spawn(self.queue_clock.clone().run(shutdown));
    }

    /// Where a pending task waits (see `queue_clock`), from this process's last read of the
    /// queue: no I/O.
    pub fn queue_place(&self, task: &Task) -> Option<queue_clock::QueuePlace> {
        self.queue_clock.view().place(task, chrono::Utc::now())
    }

    /// Told each time the queue's taken mark moves (at most once a second).
    pub fn queue_moves(&self) -> tokio::sync::watch::Receiver<queue_clock::QueueView> {
        self.queue_clock.subscribe()
    }

    /// How often pending subscriptions are told their position (`queue_clock::PositionPace`).
    pub fn position_pace(&self) -> &Arc<queue_clock::PositionPace> {
        &self.position_pace
    }

    /// Users by id, for resolving `Task.user` of tasks the caller was allowed to read.
    pub async fn users_by_id(&self, ids: &[String]) -> Result<Vec<User>, AppError> {
        Ok(self.store.get_users(ids).await?)
    }
}
