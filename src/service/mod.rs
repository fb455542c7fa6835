//! Business rules, written once above the store, queue and event traits: REST, GraphQL and the
//! worker all go through here.

pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};

use futures::stream::BoxStream;

use crate::auth::{Authenticator, Principal};
use crate::cache::TtlCache;
use crate::config::Config;
use crate::domain::{self, ApiKey, Catalog, ImageParams, Task, TaskStatus, User};
use crate::error::AppError;
use crate::events::{Channel, Event, Events, EventsError};
use crate::provider::limiter::Pacer;
use crate::queue::{Queue, QueueError};
use crate::store::{ChangeCursor, ImageBlob, InsertOutcome, Store, StoreError, TaskQuery};
use validate::Problems;

pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

#[derive(Debug, Clone, Default)]
pub struct CreateUser {
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, Default)]
pub struct UpdateUser {
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateImageTask {
    pub user_id: Option<String>,
    pub prompt: String,
    pub model: Option<String>,
    pub size: Option<String>,
    pub seed: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub watermark: Option<bool>,
    pub images: Vec<String>,
    pub n: Option<i64>,
    pub quality: Option<String>,
    pub style: Option<String>,
    pub options: Option<serde_json::Value>,
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub queue_depth: u64,
    /// How long the oldest pending task has waited since it was created (0 without any).
    pub oldest_pending_age_seconds: f64,
    pub in_flight: u64,
    pub by_status: HashMap<String, u64>,
    pub total: u64,
}

/// The service: every surface reaches the backends through its methods, never around them.
pub struct Service {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    events: Arc<dyn Events>,
    catalog: Catalog,
    auth: Authenticator,
    limits: Limits,
    /// Admission buckets for user submits; shared across processes in distributed mode.
    pacer: Arc<dyn Pacer>,
    known_users: KnownUsers,
    /// Submits of each user between their quota check and their insert (this process).
    submitting: Submitting,
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

/// Users' submits that passed the in-flight quota check and are not stored yet. The store's
/// count cannot see them, so without this, concurrent submits of one user each saw the same count
/// and together overshot `USER_MAX_IN_FLIGHT`. A submit takes its place before it reads the
/// count and counts the places taken before its own: of any two concurrent submits the later
/// one sees the earlier, either still here or already stored, so the last one admitted has seen
/// all the others. These are this process's places; where the pacer is shared (Redis), every
/// process's are held there too (`Pacer::hold`) and counted instead, by the same rule.
#[derive(Default)]
pub struct Submitting(std::sync::Mutex<HashMap<String, usize>>);

/// One submit's place in [`Submitting`] (and in the pacer's shared holds), given back once the
/// task is stored or refused: by `release`, or when dropped (a request cancelled midway, an
/// error), where the shared place is given back by a task of its own.
pub struct SubmitSlot<'a> {
    of: &'a Submitting,
    user_id: String,
    shared: Option<SharedHold>,
}

/// A place held in the shared pacer.
struct SharedHold {
    pacer: Arc<dyn Pacer>,
    key: String,
    id: String,
}

impl SharedHold {
    async fn release(self) {
        if let Err(e) = self.pacer.release(&self.key, &self.id).await {
            // It expires after `SUBMIT_HOLD_TTL`; until then the user's quota is one short.
            tracing::warn!(error = %e, "could not give back an in-flight place");
        }
    }
}

/// How long a shared place outlives a process that died holding it. Longer than any store
/// insert takes (those give up after `MONGO_TIMEOUT`), so a live submit never loses its place.
const SUBMIT_HOLD_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl SubmitSlot<'_> {
    /// Gives the place back now (the task is in the store, or refused).
    async fn release(mut self) {
        if let Some(h) = self.shared.take() {
            h.release().await;
        }
    }
}

impl Submitting {
    /// Takes a place for `user_id`; with the number of places other submits of the user held.
    fn take(&self, user_id: &str) -> (SubmitSlot<'_>, u64) {
        let before = match self.0.lock() {
            Ok(mut m) => {
                let n = m.entry(user_id.to_string()).or_insert(0);
                *n += 1;
                *n - 1
            }
            Err(_) => 0,
        };
        (
            SubmitSlot {
                of: self,
                user_id: user_id.to_string(),
                shared: None,
            },
            before as u64,
        )
    }
}

impl Drop for SubmitSlot<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.shared.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(h.release());
            }
        }
        if let Ok(mut m) = self.of.0.lock() {
            if let Some(n) = m.get_mut(&self.user_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.user_id);
                }
            }
        }
    }
}

/// Users recently seen to exist. Every submit checks its user, and on MongoDB that read was a
/// round trip as dear as the insert itself. A deletion in this process is seen at once; one in
/// another `api` process after at most `KNOWN_USER_TTL`, during which a submit for that user
/// can still be accepted (its task is then stored under a user that no longer exists, as one
/// accepted just before the deletion would be).
pub struct KnownUsers(TtlCache<()>);

const KNOWN_USER_TTL: std::time::Duration = std::time::Duration::from_secs(5);
const KNOWN_USERS_MAX: usize = 100_000;

impl Default for KnownUsers {
    fn default() -> Self {
        KnownUsers(TtlCache::new(KNOWN_USER_TTL, KNOWN_USERS_MAX))
    }
}

/// What one user may ask of the service; the admin is not limited.
#[derive(Debug, Clone)]
pub struct Limits {
    pub submit_per_minute: u32,
    pub submit_burst: u32,
    pub max_in_flight: u64,
    pub idempotency_ttl: std::time::Duration,
}

impl Limits {
    pub fn from_config(c: &crate::config::Config) -> Limits {
        Limits {
            submit_per_minute: c.user_submit_per_minute,
            submit_burst: c.user_submit_burst,
            max_in_flight: c.user_max_in_flight,
            idempotency_ttl: c.idempotency_ttl,
        }
    }
}

/// A user key acting on another user's record, or on something only the admin may do.
fn forbidden(what: &str) -> AppError {
    AppError::Forbidden(format!("this API key may not {what}"))
}

fn require_admin(p: &Principal, what: &str) -> Result<(), AppError> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(forbidden(what))
    }
}

/// The admin reaches every user; a user key only its own.
fn require_user(p: &Principal, user_id: &str) -> Result<(), AppError> {
    match p.user_id() {
        None => Ok(()),
        Some(own) if own == user_id => Ok(()),
        Some(_) => Err(forbidden("act on another user")),
    }
}

/// Whether `p` may see the task. Other users' tasks are answered as missing, not forbidden, so
/// task ids cannot be probed for existence.
pub fn may_see_task(p: &Principal, t: &Task) -> bool {
    p.user_id().is_none_or(|own| own == t.user_id)
}

/// Rejects ids that cannot exist before they reach a query.
pub fn check_id(field: &str, id: &str) -> Result<(), AppError> {
    if domain::is_valid_id(id) {
        Ok(())
    } else {
        Err(AppError::invalid(field, "is not a valid id"))
    }
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
            queue,
            events,
            catalog: Catalog::new(&config.model_ids),
            limits: Limits::from_config(config),
            pacer,
            known_users: KnownUsers::default(),
            submitting: Submitting::default(),
        }
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

    /// Users by id, for resolving `Task.user` of tasks the caller was allowed to read.
    pub async fn users_by_id(&self, ids: &[String]) -> Result<Vec<User>, AppError> {
        Ok(self.store.get_users(ids).await?)
    }

    // ---- users ----

    pub async fn create_user(&self, who: &Principal, input: CreateUser) -> Result<User, AppError> {
        require_admin(who, "create users")?;
        let mut p = Problems::default();
        let email = validate::email(&mut p, "email", &input.email);
        let name = validate::name(&mut p, "name", &input.name);
        p.into_result()?;
        let now = Utc::now();
        let user = User {
            id: domain::new_id(),
            email,
            name,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_user(&user).await?;
        tracing::info!(user_id = %user.id, "user created");
        Ok(user)
    }

    pub async fn get_user(&self, who: &Principal, id: &str) -> Result<User, AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        self.store
            .get_user(id)
            .await?
            .ok_or_else(|| AppError::NotFound("user not found".into()))
    }

    pub async fn find_user(&self, who: &Principal, id: &str) -> Result<Option<User>, AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        Ok(self.store.get_user(id).await?)
    }

    /// A user key may look up only its own email: anything else is forbidden whether or not
    /// the address exists, so keys cannot be used to probe for other users.
    pub async fn user_by_email(
        &self,
        who: &Principal,
        email: &str,
    ) -> Result<Option<User>, AppError> {
        let mut p = Problems::default();
        let email = validate::email(&mut p, "email", email);
        p.into_result()?;
        if let Some(own) = who.user_id() {
            let me = self.store.get_user(own).await?;
            return match me {
                Some(u) if User::email_key(&u.email) == User::email_key(&email) => Ok(Some(u)),
                _ => Err(forbidden("look up other users")),
            };
        }
        Ok(self.store.get_user_by_email(&email).await?)
    }

    pub async fn list_users(
        &self,
        who: &Principal,
        after: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<User>, AppError> {
        require_admin(who, "list users")?;
        let limit = page_limit(limit)?;
        if let Some(a) = after {
            check_id("after", a)?;
        }
        let mut items = self.store.list_users(after, limit + 1).await?;
        let has_more = items.len() > limit;
        items.truncate(limit);
        let total = self.store.count_users().await?;
        Ok(Page {
            items,
            has_more,
            total,
        })
    }

    pub async fn update_user(
        &self,
        who: &Principal,
        id: &str,
        input: UpdateUser,
    ) -> Result<User, AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        let mut p = Problems::default();
        let email = input.email.map(|e| validate::email(&mut p, "email", &e));
        let name = input.name.map(|n| validate::name(&mut p, "name", &n));
        p.into_result()?;
        let mut user = self.get_user(who, id).await?;
        if let Some(e) = email {
            user.email = e;
        }
        if let Some(n) = name {
            user.name = n;
        }
        user.updated_at = Utc::now();
        if !self.store.update_user(&user).await? {
            return Err(AppError::NotFound("user not found".into()));
        }
        Ok(user)
    }

    pub async fn delete_user(&self, who: &Principal, id: &str) -> Result<(), AppError> {
        check_id("id", id)?;
        require_user(who, id)?;
        let deleted = self.store.delete_user(id).await?;
        // After the deletion: a submit checking the user meanwhile may have remembered it.
        self.known_users.0.remove(id);
        if deleted {
            tracing::info!(user_id = %id, "user deleted with its tasks");
            Ok(())
        } else {
            Err(AppError::NotFound("user not found".into()))
        }
    }

    // ---- tasks ----

    /// Validates, stores (the commit point), then enqueues and publishes. A failed enqueue is
    /// logged, not returned: the task is stored and the reconciler will run it.
    pub async fn create_image_task(
        &self,
        who: &Principal,
        mut input: CreateImageTask,
    ) -> Result<(Task, bool), AppError> {
        // A user key submits for its own user; naming another is refused after validation.
        let own = who.user_id().map(str::to_string);
        if let Some(own) = &own {
            if input.user_id.as_deref().is_none_or(|u| u.trim().is_empty()) {
                input.user_id = Some(own.clone());
            }
        }
        let mut p = Problems::default();
        let model = match input
            .model
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            None => Some(self.catalog.default_model()),
            Some(name) => {
                let found = self.catalog.find(name);
                if found.is_none() {
                    let known: Vec<&str> =
                        self.catalog.all().iter().map(|m| m.name.as_str()).collect();
                    p.add(
                        crate::error::FieldError::new(
                            "model",
                            format!("unknown model; known models: {}", known.join(", ")),
                        )
                        .with_value(name),
                    );
                }
                found
            }
        };
        let max_prompt = model
            .map(|m| m.max_prompt_chars)
            .unwrap_or(domain::models::MAX_PROMPT_CHARS);
        let prompt = validate::prompt(&mut p, &input.prompt, max_prompt);
        let user_id = match input.user_id.as_deref().map(str::trim) {
            None | Some("") => {
                p.push("user_id", "user_id is required");
                None
            }
            Some(id) if !domain::is_valid_id(id) => {
                p.push("user_id", "is not a valid id");
                None
            }
            Some(id) => Some(id.to_string()),
        };
        let quality = validate::short_text(&mut p, "quality", input.quality.clone());
        let style = validate::short_text(&mut p, "style", input.style.clone());
        if let Some(o) = &input.options {
            if serde_json::to_vec(o).map(|v| v.len()).unwrap_or(usize::MAX)
                > validate::MAX_OPTIONS_BYTES
            {
                p.push(
                    "options",
                    format!("must be at most {} bytes", validate::MAX_OPTIONS_BYTES),
                );
            }
        }
        let idem = input
            .idempotency_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty());
        if let Some(k) = idem {
            if k.len() > validate::MAX_IDEMPOTENCY_KEY || k.chars().any(|c| c.is_control()) {
                p.push(
                    "idempotency_key",
                    format!(
                        "must be at most {} printable characters",
                        validate::MAX_IDEMPOTENCY_KEY
                    ),
                );
            }
        }
        let params = model.map(|m| {
            validate::model_params(
                &mut p,
                m,
                input.size.clone(),
                input.seed,
                input.guidance_scale,
                input.images.clone(),
                input.n,
            )
        });
        p.into_result()?;
        let (Some(model), Some(params), Some(user_id)) = (model, params, user_id) else {
            return Err(AppError::Internal(
                "validation passed without values".into(),
            ));
        };
        if own.as_ref().is_some_and(|o| *o != user_id) {
            return Err(forbidden("create tasks for another user"));
        }
        // Held until the task is stored (or refused), so that concurrent submits count it.
        let mut slot = match who {
            Principal::User { .. } => Some(self.admit_submit(&user_id).await?),
            _ => None,
        };
        if self.known_users.0.get(&user_id).is_none() {
            if self.store.get_user(&user_id).await?.is_none() {
                return Err(AppError::Validation(vec![crate::error::FieldError::new(
                    "user_id",
                    "user not found",
                )
                .with_value(&user_id)]));
            }
            self.known_users.0.insert(&user_id, ());
        }

        let now = Utc::now();
        let task = Task::new_pending(
            user_id,
            model.id.clone(),
            prompt,
            ImageParams {
                size: params.size,
                seed: params.seed,
                guidance_scale: params.guidance_scale,
                watermark: input.watermark.unwrap_or(false),
                images: params.images,
                n: params.n,
                quality,
                style,
                options: input.options.clone(),
            },
            idem.map(|k| (k.to_string(), request_hash(&input))),
            now,
        );
        let earlier = self.insert_new_task(&task, now).await?;
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
        tracing::info!(task_id = %task.id, user_id = %task.user_id, model = %task.model, "task accepted");
        if let Err(e) = self.queue.enqueue(&task.id, None).await {
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

    /// The per-user submit rate (a token bucket) and in-flight quota; the submit's place among
    /// the user's submits not stored yet.
    async fn admit_submit(&self, user_id: &str) -> Result<SubmitSlot<'_>, AppError> {
        let l = &self.limits;
        let interval =
            std::time::Duration::from_secs_f64(60.0 / f64::from(l.submit_per_minute.max(1)));
        match self
            .pacer
            .admit(&format!("submit:{user_id}"), interval, l.submit_burst)
            .await
        {
            Ok(None) => {}
            Ok(Some(wait)) => {
                metrics::counter!("rate_limited_total", "limit" => "submit_rate").increment(1);
                return Err(AppError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                    reason: format!(
                        "submit rate limit reached ({} per minute, bursts of {})",
                        l.submit_per_minute, l.submit_burst
                    ),
                });
            }
            // Admission is a guard against abuse, not a correctness rule: with the limiter's
            // backend down the request goes on (the in-flight quota below still holds).
            Err(e) => tracing::warn!(error = %e, "submit rate limiter unavailable; admitting"),
        }
        // The place first, then the count (see `Submitting`).
        let (mut slot, here) = self.submitting.take(user_id);
        let key = format!("submit:{user_id}");
        let others = match self.pacer.hold(&key, SUBMIT_HOLD_TTL).await {
            Ok(Some(h)) => {
                slot.shared = Some(SharedHold {
                    pacer: self.pacer.clone(),
                    key,
                    id: h.id,
                });
                h.others
            }
            Ok(None) => here,
            // As with the rate above: the quota then holds within each process.
            Err(e) => {
                tracing::warn!(error = %e, "shared in-flight places unavailable; counting this process's submits only");
                here
            }
        };
        let active = self.store.count_active_tasks(user_id).await? + others;
        if active >= l.max_in_flight {
            slot.release().await;
            metrics::counter!("rate_limited_total", "limit" => "in_flight").increment(1);
            return Err(AppError::RateLimited {
                retry_after_secs: 5,
                reason: format!(
                    "{active} tasks are pending, processing or being submitted, the most a user may have is {}",
                    l.max_in_flight
                ),
            });
        }
        Ok(slot)
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
        if let Some(u) = user_id {
            check_id("user_id", u)?;
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
        if !self.store.delete_task(id).await? {
            return Err(AppError::NotFound("task not found".into()));
        }
        tracing::info!(task_id = %id, "task deleted");
        Ok(t)
    }

    /// Stores `next` if `current` is still what the store holds, then publishes it. `None` when
    /// somebody else changed the task first.
    pub async fn commit(&self, current: &Task, next: Task) -> Result<Option<Task>, AppError> {
        if self
            .store
            .replace_task(&next, current.version, current.status)
            .await?
        {
            metrics::counter!("task_transitions_total", "status" => next.status.as_str())
                .increment(1);
            self.publish(&next).await;
            Ok(Some(next))
        } else {
            Ok(None)
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

    // ---- API keys ----

    /// Makes a key for a user (admin only). The secret is in the answer and nowhere else.
    pub async fn create_api_key(
        &self,
        who: &Principal,
        user_id: &str,
        name: Option<&str>,
    ) -> Result<(ApiKey, String), AppError> {
        require_admin(who, "create API keys")?;
        check_id("user_id", user_id)?;
        let mut p = Problems::default();
        let name = validate::key_name(&mut p, name.unwrap_or("default"));
        p.into_result()?;
        if self.store.get_user(user_id).await?.is_none() {
            return Err(AppError::NotFound("user not found".into()));
        }
        let (key, secret) = ApiKey::generate(user_id, &name, Utc::now());
        self.store.insert_api_key(&key).await?;
        tracing::info!(user_id = %user_id, key_id = %key.id, "API key created");
        Ok((key, secret))
    }

    pub async fn list_api_keys(
        &self,
        who: &Principal,
        user_id: Option<&str>,
    ) -> Result<Vec<ApiKey>, AppError> {
        let user_id = match (user_id, who.user_id()) {
            (Some(u), _) => u,
            (None, Some(own)) => own,
            (None, None) => return Err(AppError::invalid("user_id", "user_id is required")),
        };
        check_id("user_id", user_id)?;
        require_user(who, user_id)?;
        Ok(self.store.list_api_keys(user_id).await?)
    }

    /// Revokes a key: the admin any, a user its own. Takes effect at once in this process and
    /// within the authenticator's cache time in the others.
    pub async fn revoke_api_key(&self, who: &Principal, id: &str) -> Result<ApiKey, AppError> {
        check_id("id", id)?;
        let not_found = || AppError::NotFound("API key not found".into());
        let key = self.store.get_api_key(id).await?.ok_or_else(not_found)?;
        if who.user_id().is_some_and(|own| own != key.user_id) {
            return Err(not_found());
        }
        if !self.store.revoke_api_key(id, Utc::now()).await? {
            return Err(not_found());
        }
        self.auth.forget(&key);
        tracing::info!(user_id = %key.user_id, key_id = %key.id, "API key revoked");
        self.store.get_api_key(id).await?.ok_or_else(not_found)
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

/// Fingerprint of what a create request asks for, to tell an idempotent replay from a reuse of
/// the key for something else.
fn request_hash(input: &CreateImageTask) -> String {
    let json = serde_json::to_vec(input).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
