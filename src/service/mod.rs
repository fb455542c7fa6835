//! Business rules, written once above the store, queue and event traits: REST, GraphQL and the
//! worker all go through here.

pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::{self, Catalog, ImageParams, Task, TaskStatus, User};
use crate::error::AppError;
use crate::events::Events;
use crate::queue::Queue;
use crate::store::{InsertOutcome, Store, TaskQuery};
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
    pub in_flight: u64,
    pub by_status: HashMap<String, u64>,
    pub total: u64,
}

pub struct Service {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub events: Arc<dyn Events>,
    pub catalog: Arc<Catalog>,
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
    // ---- users ----

    pub async fn create_user(&self, input: CreateUser) -> Result<User, AppError> {
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

    pub async fn get_user(&self, id: &str) -> Result<User, AppError> {
        check_id("id", id)?;
        self.store
            .get_user(id)
            .await?
            .ok_or_else(|| AppError::NotFound("user not found".into()))
    }

    pub async fn find_user(&self, id: &str) -> Result<Option<User>, AppError> {
        check_id("id", id)?;
        Ok(self.store.get_user(id).await?)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, AppError> {
        let mut p = Problems::default();
        let email = validate::email(&mut p, "email", email);
        p.into_result()?;
        Ok(self.store.get_user_by_email(&email).await?)
    }

    pub async fn list_users(
        &self,
        after: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Page<User>, AppError> {
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

    pub async fn update_user(&self, id: &str, input: UpdateUser) -> Result<User, AppError> {
        check_id("id", id)?;
        let mut p = Problems::default();
        let email = input.email.map(|e| validate::email(&mut p, "email", &e));
        let name = input.name.map(|n| validate::name(&mut p, "name", &n));
        p.into_result()?;
        let mut user = self.get_user(id).await?;
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

    pub async fn delete_user(&self, id: &str) -> Result<(), AppError> {
        check_id("id", id)?;
        if self.store.delete_user(id).await? {
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
        input: CreateImageTask,
    ) -> Result<(Task, bool), AppError> {
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
        if self.store.get_user(&user_id).await?.is_none() {
            return Err(AppError::Validation(vec![crate::error::FieldError::new(
                "user_id",
                "user not found",
            )
            .with_value(&user_id)]));
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
        match self.store.insert_task(&task).await? {
            InsertOutcome::Inserted => {}
            InsertOutcome::Existing(existing) => {
                return if existing.request_hash == task.request_hash {
                    Ok((*existing, false))
                } else {
                    Err(AppError::Conflict(
                        "idempotency key was already used with a different request".into(),
                    ))
                };
            }
        }
        tracing::info!(task_id = %task.id, user_id = %task.user_id, model = %task.model, "task accepted");
        if let Err(e) = self.queue.enqueue(&task.id, None).await {
            tracing::warn!(task_id = %task.id, error = %e, "enqueue failed; the reconciler will pick the task up");
        }
        self.publish(&task).await;
        Ok((task, true))
    }

    pub async fn get_task(&self, id: &str) -> Result<Task, AppError> {
        self.find_task(id)
            .await?
            .ok_or_else(|| AppError::NotFound("task not found".into()))
    }

    pub async fn find_task(&self, id: &str) -> Result<Option<Task>, AppError> {
        check_id("id", id)?;
        Ok(self.store.get_task(id).await?)
    }

    pub async fn list_tasks(
        &self,
        user_id: Option<&str>,
        status: Option<TaskStatus>,
        before_id: Option<&str>,
        offset: usize,
        limit: Option<i64>,
    ) -> Result<Page<Task>, AppError> {
        let limit = page_limit(limit)?;
        if let Some(u) = user_id {
            check_id("user_id", u)?;
        }
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
        id: &str,
        change: impl Fn(&Task) -> Result<Task, domain::TransitionError>,
    ) -> Result<Task, AppError> {
        for _ in 0..8 {
            let current = self.get_task(id).await?;
            let next = change(&current).map_err(|e| AppError::Conflict(format!("{e}")))?;
            if let Some(t) = self.commit(&current, next).await? {
                return Ok(t);
            }
        }
        Err(AppError::Conflict(
            "task is changing too quickly; try again".into(),
        ))
    }

    pub async fn cancel_task(&self, id: &str) -> Result<Task, AppError> {
        let t = self.user_transition(id, |t| t.cancel(Utc::now())).await?;
        tracing::info!(task_id = %t.id, "task cancelled");
        Ok(t)
    }

    pub async fn retry_task(&self, id: &str) -> Result<Task, AppError> {
        let t = self.user_transition(id, |t| t.retry(Utc::now())).await?;
        tracing::info!(task_id = %t.id, "task retried");
        if let Err(e) = self.queue.enqueue(&t.id, None).await {
            tracing::warn!(task_id = %t.id, error = %e, "enqueue failed; the reconciler will pick the task up");
        }
        Ok(t)
    }

    /// Deletes a finished task and its images. Running tasks must be cancelled first.
    pub async fn delete_task(&self, id: &str) -> Result<Task, AppError> {
        let t = self.get_task(id).await?;
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
        if let Err(e) = self.events.publish(task).await {
            // Subscribers re-read the store on their resync interval; nothing is lost.
            tracing::warn!(task_id = %task.id, error = %e, "publishing the task event failed");
        }
    }

    pub async fn queue_stats(&self) -> Result<QueueStats, AppError> {
        let counts = self.store.status_counts().await?;
        let depth = self.queue.depth().await?;
        let by_status: HashMap<String, u64> = TaskStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), counts.get(s).copied().unwrap_or(0)))
            .collect();
        Ok(QueueStats {
            queue_depth: depth,
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
