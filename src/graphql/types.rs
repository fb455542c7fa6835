//! GraphQL object types over the domain types. Field names and nullability follow
//! `graphql-contract.md`.

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::error::GqlResultExt;
use super::loader::UserLoader;
use crate::domain::{self, ModelSpec, SizeRule, StoredImage};
use crate::state::AppState;

/// Where a task is in its life: (`SCHEDULED` →) `PENDING` → `PROCESSING` → `COMPLETED`,
/// `FAILED` or `CANCELLED`.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TaskStatus {
    /// Created with `delaySeconds` or `runAt` and not yet due (see `Task.runAt`); becomes
    /// `PENDING` then. `cancelTask` cancels it.
    Scheduled,
    /// Waiting for a worker (new, or a retry after a retryable error).
    Pending,
    /// A worker is calling the provider.
    Processing,
    /// The images are stored; `result` holds them.
    Completed,
    /// A final error or the attempt budget exhausted; `error` says why. `retryTask` runs it again.
    Failed,
    /// Cancelled by a user. `retryTask` runs it again.
    Cancelled,
}

impl From<domain::TaskStatus> for TaskStatus {
    fn from(s: domain::TaskStatus) -> Self {
        match s {
            domain::TaskStatus::Scheduled => TaskStatus::Scheduled,
            domain::TaskStatus::Pending => TaskStatus::Pending,
            domain::TaskStatus::Processing => TaskStatus::Processing,
            domain::TaskStatus::Completed => TaskStatus::Completed,
            domain::TaskStatus::Failed => TaskStatus::Failed,
            domain::TaskStatus::Cancelled => TaskStatus::Cancelled,
        }
    }
}

impl From<TaskStatus> for domain::TaskStatus {
    fn from(s: TaskStatus) -> Self {
        match s {
            TaskStatus::Scheduled => domain::TaskStatus::Scheduled,
            TaskStatus::Pending => domain::TaskStatus::Pending,
            TaskStatus::Processing => domain::TaskStatus::Processing,
            TaskStatus::Completed => domain::TaskStatus::Completed,
            TaskStatus::Failed => domain::TaskStatus::Failed,
            TaskStatus::Cancelled => domain::TaskStatus::Cancelled,
        }
    }
}

pub struct User(pub domain::User);

/// A person or application that owns tasks.
#[Object]
impl User {
    /// Stable id (a UUID).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Email address, unique regardless of case.
    async fn email(&self) -> &str {
        &self.0.email
    }
    /// Display name (2 to 50 characters).
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// When the user was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When the user was last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// What the user's tasks cost, settled on the server: between the UTC days `from` and `to`
    /// (both included; `YYYY-MM-DD` or an RFC 3339 time), optionally of one API key only.
    async fn usage(
        &self,
        c: &Context<'_>,
        from: Option<String>,
        to: Option<String>,
        api_key_id: Option<ID>,
    ) -> async_graphql::Result<super::usage::Usage> {
        let s = c.data::<AppState>()?;
        let who = c.data::<crate::auth::Principal>()?;
        let filter = crate::service::UsageFilter {
            api_key_id: api_key_id.map(|k| k.0),
            from,
            to,
        };
        let u = s.service.user_usage(who, &self.0.id, filter).await.gql()?;
        Ok((&u).into())
    }
}

#[derive(Clone)]
pub struct Task(pub Arc<domain::Task>);

/// An image generation task and its current state.
#[Object]
impl Task {
    /// Stable id (a UUID), returned at once by `createImageTask`.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Id of the owner.
    async fn user_id(&self) -> ID {
        ID(self.0.user_id.clone())
    }
    /// The owner, loaded in one batch for all tasks of a response.
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        // A task reaches a caller only through the service's visibility rule, so its owner is
        // the caller (or the admin asks); checked again so the loader can never leak a user.
        let who = ctx.data::<crate::auth::Principal>()?;
        if who.user_id().is_some_and(|own| own != self.0.user_id) {
            return Ok(None);
        }
        let loader = ctx.data::<DataLoader<UserLoader>>()?;
        Ok(loader.load_one(self.0.user_id.clone()).await?.map(User))
    }
    /// `IMAGE` or `VIDEO`.
    async fn kind(&self) -> super::video::TaskKind {
        self.0.kind.into()
    }
    /// What a `VIDEO` task asked for (null for images).
    async fn video(&self) -> Option<super::video::VideoSpec> {
        super::video::VideoSpec::of(&self.0)
    }
    /// Provider model id.
    async fn model(&self) -> &str {
        &self.0.model
    }
    /// The text the image is generated from.
    async fn prompt(&self) -> &str {
        &self.0.prompt
    }
    /// Requested size: `WxH`, or a tier such as `2K`.
    async fn size(&self) -> &str {
        &self.0.params.size
    }
    /// Random seed sent to the provider (models that support one).
    async fn seed(&self) -> Option<i64> {
        self.0.params.seed
    }
    /// How closely the image follows the prompt (models that support it).
    async fn guidance_scale(&self) -> Option<f64> {
        self.0.params.guidance_scale
    }
    /// Whether the provider adds its "AI generated" watermark.
    async fn watermark(&self) -> bool {
        self.0.params.watermark
    }
    /// Current state; `taskUpdated` reports every change.
    async fn status(&self) -> TaskStatus {
        self.0.status.into()
    }
    /// Grows by one with every change; subscribers use it to order updates.
    async fn version(&self) -> i64 {
        self.0.version
    }
    /// Provider calls started for this task.
    async fn attempts(&self) -> u32 {
        self.0.attempts
    }
    /// The stored images (or video), once `COMPLETED`.
    async fn result(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageResult>> {
        let base = &ctx.data::<AppState>()?.public_base;
        Ok(self.0.result.as_ref().map(|r| ImageResult {
            images: r.images.iter().map(|i| Image::new(i, base)).collect(),
            video_url: r.video.as_ref().map(|v| crate::domain::video_url(base, v)),
        }))
    }
    /// Why the task failed, or why the last attempt failed while a retry is pending.
    async fn error(&self) -> Option<TaskError> {
        self.0.error.as_ref().map(|e| TaskError {
            code: e.code.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
        })
    }
    /// When a pending task's next attempt may start (a scheduled retry).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.0
            .not_before
            .filter(|_| self.0.status == domain::TaskStatus::Pending)
    }
    /// Provider request id of the last call, for support requests.
    async fn provider_request_id(&self) -> Option<&str> {
        self.0.provider_request_id.as_deref()
    }
    /// Fingerprint of the provider API key that made the images (never the key itself).
    async fn provider_key(&self) -> Option<&str> {
        self.0.provider_key.as_deref()
    }
    /// When the task was submitted.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When the task last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// When a worker last started calling the provider for it.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    /// When it reached a terminal state.
    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }
    /// When a task created with `delaySeconds` or `runAt` was to start; `SCHEDULED` until then.
    async fn run_at(&self) -> Option<DateTime<Utc>> {
        self.0.run_at
    }
    /// Not finished by then, the task is `FAILED` with `error.code` `DEADLINE_EXCEEDED`.
    async fn deadline_at(&self) -> Option<DateTime<Utc>> {
        self.0.deadline_at
    }
    /// The events sent to the task's `webhook`, with every attempt (empty without a webhook).
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<super::webhooks::WebhookDelivery>> {
        let s = ctx.data::<AppState>()?;
        let who = ctx.data::<crate::auth::Principal>()?;
        let all = s.service.webhook_deliveries_of(who, &self.0).await.gql()?;
        Ok(all.iter().map(Into::into).collect())
    }
    /// While `PENDING`: how many tasks are to be started before it, itself included (1 = next).
    /// An upper bound (tasks ahead cancelled while waiting still count), refreshed once a
    /// second; `taskUpdated` sends the task again when it changes. Null otherwise.
    async fn queue_position(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<u64>> {
        let s = ctx.data::<AppState>()?;
        Ok(s.service.queue_place(&self.0).map(|p| p.position))
    }
    /// While `PENDING`: when it is expected to start, from its position and the rate tasks
    /// were started at lately. Null otherwise, or before any rate was observed.
    async fn estimated_start_at(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<DateTime<Utc>>> {
        let s = ctx.data::<AppState>()?;
        Ok(s.service
            .queue_place(&self.0)
            .and_then(|p| p.estimated_start_at))
    }
}

/// The generated images of a completed task.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ImageResult {
    /// Every image generated, in the provider's order (none for a video).
    pub images: Vec<Image>,
    /// A `VIDEO` task's MP4, stored and served by this server (seekable: Range requests).
    pub video_url: Option<String>,
}

#[ComplexObject]
impl ImageResult {
    /// URL of the first image, served by this server (does not expire).
    async fn image_url(&self) -> String {
        self.images
            .first()
            .map(|i| i.url.clone())
            .unwrap_or_default()
    }
}

/// One stored image.
#[derive(SimpleObject)]
pub struct Image {
    /// Id of the stored image (the file name in its URL).
    pub id: ID,
    /// Served by this server; stays valid after the provider's link expired.
    pub url: String,
    /// The provider's link (valid for 24 hours after generation).
    pub provider_url: Option<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size of the stored file in bytes.
    pub bytes: u64,
    /// MIME type, e.g. `image/png`.
    pub content_type: String,
}

impl Image {
    pub fn new(i: &StoredImage, base: &str) -> Image {
        Image {
            id: ID(i.id.clone()),
            url: crate::domain::image_url(base, i),
            provider_url: i.provider_url.clone(),
            width: i.width,
            height: i.height,
            bytes: i.bytes,
            content_type: i.content_type.clone(),
        }
    }
}

/// Why a task failed (or why its last attempt failed while a retry waits).
#[derive(SimpleObject)]
pub struct TaskError {
    /// Provider error code (e.g. `InputTextSensitiveContentDetected`) or ours.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Whether the cause may pass on another attempt.
    pub retryable: bool,
}

pub struct ImageModel(pub ModelSpec);

/// A model that can be asked for, with its limits.
#[Object]
impl ImageModel {
    /// Provider model id.
    async fn id(&self) -> &str {
        &self.0.id
    }
    /// Friendly name (accepted wherever a model is asked for, like the id and the aliases).
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Human-readable name, e.g. `Seedream 3.0`.
    async fn display_name(&self) -> &str {
        &self.0.display_name
    }
    /// Other accepted names (older friendly names).
    async fn aliases(&self) -> &[String] {
        &self.0.aliases
    }
    /// `text_to_image`, `image_edit` or `multi_image`.
    async fn kind(&self) -> &str {
        match self.0.family {
            domain::ModelFamily::Seedream3 => "text_to_image",
            domain::ModelFamily::SeedEdit3 => "image_edit",
            domain::ModelFamily::Seedream4 => "multi_image",
        }
    }
    /// Size used when a task gives none.
    async fn default_size(&self) -> &str {
        &self.0.default_size
    }
    /// Size tiers accepted besides `WxH`.
    async fn size_tiers(&self) -> Vec<String> {
        self.0.tiers.iter().map(|(t, _)| t.clone()).collect()
    }
    /// Least `width × height` accepted for `WxH` sizes (null: only `adaptive`).
    async fn min_pixels(&self) -> Option<u64> {
        match self.0.size_rule {
            SizeRule::Pixels { min_pixels, .. } => Some(min_pixels),
            SizeRule::Adaptive => None,
        }
    }
    /// Greatest `width × height` accepted for `WxH` sizes (null: only `adaptive`).
    async fn max_pixels(&self) -> Option<u64> {
        match self.0.size_rule {
            SizeRule::Pixels { max_pixels, .. } => Some(max_pixels),
            SizeRule::Adaptive => None,
        }
    }
    /// Whether `seed` is accepted.
    async fn supports_seed(&self) -> bool {
        self.0.supports_seed
    }
    /// Whether `guidanceScale` is accepted.
    async fn supports_guidance_scale(&self) -> bool {
        self.0.supports_guidance
    }
    /// Fewest reference images a task must give (1 for image editing).
    async fn min_reference_images(&self) -> u32 {
        self.0.min_reference_images
    }
    /// Most reference images a task may give.
    async fn max_reference_images(&self) -> u32 {
        self.0.max_reference_images
    }
    /// Most images one task can produce (`n`).
    async fn max_output_images(&self) -> u32 {
        self.0.max_output_images
    }
    /// Longest prompt accepted, in characters.
    async fn max_prompt_length(&self) -> usize {
        self.0.max_prompt_chars
    }
}

/// A new user.
#[derive(InputObject)]
pub struct CreateUserInput {
    /// Valid address of at most 100 characters, unique regardless of case.
    pub email: String,
    /// 2 to 50 characters.
    pub name: String,
}

/// Changes to a user; omitted fields stay as they are.
#[derive(InputObject)]
pub struct UpdateUserInput {
    /// New email (same rules as on creation).
    pub email: Option<String>,
    /// New name (same rules as on creation).
    pub name: Option<String>,
}

/// A new image generation task.
#[derive(InputObject)]
pub struct CreateImageTaskInput {
    /// What to draw; not blank, at most the model's `maxPromptLength`.
    pub prompt: String,
    /// Owner of the task.
    pub user_id: Option<ID>,
    /// Friendly name or provider model id; default Seedream 3.0.
    pub model: Option<String>,
    /// `WxH`, or a tier (`2K`) where the model has tiers.
    pub size: Option<String>,
    /// Random seed, for models with `supportsSeed`.
    pub seed: Option<i64>,
    /// Prompt adherence, for models with `supportsGuidanceScale`.
    pub guidance_scale: Option<f64>,
    /// Add the provider's watermark (default false).
    pub watermark: Option<bool>,
    /// Reference images (http(s) or data URLs) for image-to-image models.
    pub images: Option<Vec<String>>,
    /// Up to this many output images (Seedream 4.x groups).
    pub n: Option<i64>,
    /// The same key with the same input returns the same task.
    pub idempotency_key: Option<String>,
    /// Start after this many seconds (0 to 2592000, 30 days); the task is `SCHEDULED` until then.
    pub delay_seconds: Option<i64>,
    /// Start at this time (at most 30 days ahead; up to a minute in the past counts as now),
    /// instead of `delaySeconds`.
    pub run_at: Option<DateTime<Utc>>,
    /// Seconds the task may take from its start (its due time when scheduled) to a final
    /// state, 1 to 604800 (7 days); default the server's `TASK_DEADLINE` (30 minutes). Past it
    /// the task is `FAILED` with `error.code` `DEADLINE_EXCEEDED`.
    pub deadline_seconds: Option<i64>,
    /// An http(s) URL the task's events are posted to, signed per Standard Webhooks (see
    /// `Task.webhookDeliveries`). Refused when it leads to a loopback, private, link-local or
    /// metadata address.
    pub webhook: Option<String>,
    /// Which events the webhook hears of; default both.
    pub webhook_events_filter: Option<Vec<super::webhooks::WebhookEvent>>,
}

/// Extra fields on connections.
#[derive(SimpleObject)]
pub struct TotalCount {
    /// Items matching the filter, across all pages.
    pub total_count: u64,
}

pub struct ApiKey(pub domain::ApiKey);

/// An API key of a user. The secret itself is never shown again after `createApiKey`.
#[Object]
impl ApiKey {
    /// The key's id (not the secret): what `revokeApiKey` takes.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The user the key acts as.
    async fn user_id(&self) -> ID {
        ID(self.0.user_id.clone())
    }
    /// A label chosen at creation.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The first characters of the secret, to tell keys apart.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }
    /// When the key was made.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Last time the key authenticated a request (recorded at most once a minute).
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }
    /// When the key was revoked; null while it works.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
    /// Not revoked.
    async fn active(&self) -> bool {
        self.0.is_active()
    }
}

/// A new key with its secret, shown only in this answer.
pub struct CreatedApiKey {
    pub key: String,
    pub api_key: ApiKey,
}

/// The answer to `createApiKey`.
#[Object]
impl CreatedApiKey {
    /// The secret: send it as `Authorization: Bearer <key>`. Store it now; it cannot be shown
    /// again.
    async fn key(&self) -> &str {
        &self.key
    }
    /// The stored record of the new key.
    async fn api_key(&self) -> &ApiKey {
        &self.api_key
    }
}
