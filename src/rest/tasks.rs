//! The legacy task routes: create an image task (the old `/ai/image/task` and the generic
//! `/ai/tasks`), poll it in either old shape, list a user's tasks, cancel, retry, delete, and the
//! queue statistics. Each handler translates the old JSON and calls the service.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::envelope::{ok, ApiJson, ApiResult, Envelope, ErrorBody};
use super::legacy::{self, Poll};
use super::{prefer, Caller};
use crate::auth::Principal;
use crate::domain::{image_url, is_valid_id, rfc3339, Task, TaskStatus, TASK_KIND_IMAGE};
use crate::error::AppError;
use crate::service::queue_clock::QueuePlace;
use crate::service::CreateImageTask;
use crate::state::AppState;

/// One image or several: the old server took `image` as a string, Seedream 4.x takes a list.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// An image task request (`POST /api/v1/ai/image/task`, and `input` of the generic create).
#[derive(Deserialize, Default, ToSchema)]
#[schema(example = json!({"prompt": "一只可爱的小猫咪在花园里玩耍", "user_id": "0192…", "model": "doubao-seedream-3.0-t2i", "size": "1024x1024"}))]
pub struct ImageBody {
    /// Required, not blank, at most the model's prompt limit.
    #[serde(default)]
    prompt: String,
    /// Owner; required, must exist.
    user_id: Option<String>,
    /// Friendly name (`doubao-seedream-3.0-t2i`) or provider model id; default Seedream 3.0.
    model: Option<String>,
    /// `WxH` within the model's limits (or a tier such as `2K`); default `1024x1024`.
    size: Option<String>,
    /// Accepted for compatibility and echoed back.
    quality: Option<String>,
    /// Accepted for compatibility and echoed back.
    style: Option<String>,
    /// Output images; above 1 only where the model can make several.
    n: Option<i64>,
    /// Accepted for compatibility and echoed back.
    #[schema(value_type = Option<Object>)]
    options: Option<Value>,
    /// Random seed (models that support one).
    seed: Option<i64>,
    /// Prompt adherence (models that support it).
    guidance_scale: Option<f64>,
    /// Add the provider's watermark (default false).
    watermark: Option<bool>,
    /// Reference image(s): URL or data URL, for image-to-image models.
    image: Option<OneOrMany>,
    /// More reference images.
    images: Option<Vec<String>>,
    /// Start after this many seconds (0 to 2592000, i.e. 30 days): the task is `scheduled`
    /// until then. The older server's field.
    delay: Option<i64>,
    /// Start at this time (RFC 3339, at most 30 days ahead; up to a minute in the past counts
    /// as now), instead of `delay`.
    run_at: Option<String>,
    /// An http(s) URL to post the task's events to, signed per Standard Webhooks. Refused when
    /// it resolves to a loopback, private, link-local or metadata address.
    webhook: Option<String>,
    /// Which events to post: `start`, `completed` (every terminal state); default both.
    webhook_events_filter: Option<Vec<String>>,
    /// Seconds the task may take from its start (its due time when scheduled) to a final state,
    /// 1 to 604800 (7 days); default `TASK_DEADLINE` (30 min). Past it the task fails with
    /// `DEADLINE_EXCEEDED`.
    deadline_seconds: Option<i64>,
}

/// The generic task request (`POST /api/v1/ai/tasks`).
#[derive(Deserialize, ToSchema)]
pub struct GenericBody {
    /// `image_generation` (the only type; `image` is accepted too).
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// Overrides `input.model`.
    model: Option<String>,
    /// Overrides `input.user_id`.
    user_id: Option<String>,
    /// Start after this many seconds (overrides `input.delay`); the task is `scheduled` until
    /// then.
    delay: Option<i64>,
    /// Start at this time (RFC 3339; overrides `input.run_at`).
    run_at: Option<String>,
    /// The task's own deadline in seconds (overrides `input.deadline_seconds`).
    deadline_seconds: Option<i64>,
    /// The image request.
    #[serde(default)]
    input: ImageBody,
    /// Overrides `input.webhook` (where Replicate's clients put it).
    webhook: Option<String>,
    /// Overrides `input.webhook_events_filter`.
    webhook_events_filter: Option<Vec<String>>,
}

/// Paging of `GET /api/v1/tasks/user/{user_id}`.
#[derive(Serialize, ToSchema)]
pub struct TaskPagination {
    pub limit: i64,
    pub offset: usize,
    /// Items on this page.
    pub count: usize,
    /// Items matching the filter, across all pages.
    pub total: u64,
    pub has_more: bool,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// `data` of a task deletion.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    task_id: String,
    /// Whether there was such a task.
    deleted: bool,
}

impl ImageBody {
    fn into_input(self, idempotency_key: Option<String>) -> CreateImageTask {
        let mut images = match self.image {
            None => vec![],
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        images.extend(self.images.unwrap_or_default());
        CreateImageTask {
            user_id: self.user_id,
            prompt: self.prompt,
            model: self.model,
            size: self.size,
            seed: self.seed,
            guidance_scale: self.guidance_scale,
            watermark: self.watermark,
            images,
            n: self.n,
            quality: self.quality,
            style: self.style,
            options: self.options,
            delay: self.delay,
            run_at: self.run_at,
            deadline_seconds: self.deadline_seconds,
            idempotency_key,
            webhook: self.webhook,
            webhook_events_filter: self.webhook_events_filter,
            opaque_owner: true,
        }
    }
}

/// One stored image in the REST task shape.
#[derive(Serialize, ToSchema)]
pub struct ImageJson {
    /// Id of the stored image.
    id: String,
    /// Served by this server; never expires.
    url: String,
    /// The provider's link (valid for 24 hours after generation).
    provider_url: Option<String>,
    width: u32,
    height: u32,
    /// Size of the stored file in bytes.
    bytes: u64,
    /// MIME type, e.g. `image/png`.
    content_type: String,
}

/// The images of a completed task.
#[derive(Serialize, ToSchema)]
pub struct ResultJson {
    /// URL of the first image (what old clients read as `.data.result.image_url`).
    image_url: Option<String>,
    images: Vec<ImageJson>,
    /// The task id (the v2 Go server's `AIResponse.id`).
    id: String,
    /// Always `image`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// Always "" (text generation's output in the Go server).
    content: &'static str,
    /// Always 0.
    tokens_used: u32,
    /// Provider model id.
    model: String,
    /// Always `volcengine`.
    provider: &'static str,
    /// Nanoseconds from the start of the run to completion.
    duration: i64,
    /// Not known here: 0.
    cost: f64,
    /// `{task_id, model, prompt, size, quality, created (Unix seconds), data: [{url, revised_prompt}]}`
    /// as the v2 Go server wrote it.
    #[schema(value_type = Object)]
    metadata: Value,
}

/// Why a task failed, or why its last attempt failed while a retry waits.
#[derive(Serialize, ToSchema)]
pub struct ErrorJson {
    /// Provider error code (e.g. `InputTextSensitiveContentDetected`) or ours.
    code: String,
    message: String,
    /// Whether the cause may pass on another attempt.
    retryable: bool,
}

/// The snake_case task shape of the old server (rest-compat.md). A struct rather than `json!`
/// so the OpenAPI schema is derived from the very type that is serialised.
#[derive(Serialize, ToSchema)]
pub struct TaskJson {
    /// The task id (the old server's name for it).
    task_id: String,
    /// The task id again, as generic clients expect.
    id: String,
    user_id: String,
    /// Always `image_generation`.
    #[serde(rename = "type")]
    kind: String,
    /// Provider model id.
    model: String,
    prompt: String,
    size: String,
    quality: Option<String>,
    style: Option<String>,
    n: u32,
    seed: Option<i64>,
    guidance_scale: Option<f64>,
    watermark: bool,
    /// `scheduled`, `pending`, `processing`, `completed`, `failed` or `cancelled`.
    #[schema(value_type = String, example = "pending")]
    status: TaskStatus,
    /// Grows by one with every change.
    version: i64,
    /// Provider calls started.
    attempts: u32,
    /// Set once completed.
    result: Option<ResultJson>,
    /// Set when failed (or while a retry after an error waits); `code` `DEADLINE_EXCEEDED`
    /// when the task passed its deadline.
    error: Option<ErrorJson>,
    provider_request_id: Option<String>,
    /// Fingerprint of the provider API key that made the images (never the key itself).
    provider_key: Option<String>,
    /// When a pending retry may start (RFC 3339).
    next_attempt_at: Option<String>,
    /// When a task created with `delay` or `run_at` was to start (RFC 3339); a `scheduled` task
    /// becomes `pending` then.
    run_at: Option<String>,
    /// Not in a final state by then (RFC 3339), the task fails with `error.code`
    /// `DEADLINE_EXCEEDED`.
    deadline_at: Option<String>,
    /// While pending: how many tasks start before it, itself included (1 = next); an upper
    /// bound (tasks ahead cancelled while waiting still count), refreshed once a second. Null
    /// otherwise.
    queue_position: Option<u64>,
    /// While pending: when it is expected to start (RFC 3339), from its position and the rate
    /// tasks were started at lately; null otherwise or before any rate was observed.
    estimated_start_at: Option<String>,
    /// RFC 3339, UTC.
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    /// The request as JSON text (the v2 Go server's `input`).
    input: String,
    /// The first image's URL, or "" (v2's `output`).
    output: String,
    /// Why the task failed, or "" (v2's `error_msg`).
    error_msg: String,
    /// Always `volcengine`.
    provider: &'static str,
    /// On the poll routes once completed: the first image's URL (the Go server's `data.image_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    image_url: Option<String>,
    /// On the poll routes and creates: what the answer means.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// Video tasks once completed: the stored MP4 on this server (`/videos/{id}.mp4`, seekable
    /// with Range requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    video_url: Option<String>,
    /// Video tasks once submitted: the provider's own task id.
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_task_id: Option<String>,
    /// Video tasks: `{duration, ratio, resolution, seed, camera_fixed, watermark, frames}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    video: Option<Value>,
}

/// `place`: where the task waits in the queue (`Service::queue_place`), if it does.
pub fn task_json(t: &Task, base: &str, place: Option<QueuePlace>) -> TaskJson {
    let result = t.result.as_ref().map(|r| {
        let images: Vec<ImageJson> = r
            .images
            .iter()
            .map(|i| ImageJson {
                id: i.id.clone(),
                url: image_url(base, i),
                provider_url: i.provider_url.clone(),
                width: i.width,
                height: i.height,
                bytes: i.bytes,
                content_type: i.content_type.clone(),
            })
            .collect();
        let data: Vec<Value> = images
            .iter()
            .map(|i| json!({"url": i.url, "revised_prompt": ""}))
            .collect();
        ResultJson {
            image_url: images.first().map(|i| i.url.clone()),
            id: t.id.clone(),
            kind: "image",
            content: "",
            tokens_used: 0,
            model: t.model.clone(),
            provider: legacy::PROVIDER,
            duration: match (t.started_at, t.completed_at) {
                (Some(s), Some(c)) => (c - s).num_nanoseconds().unwrap_or(0),
                _ => 0,
            },
            cost: 0.0,
            metadata: json!({
                "task_id": t.id, "model": t.model, "prompt": t.prompt, "size": t.params.size,
                "quality": t.params.quality.clone().unwrap_or_default(),
                "created": t.completed_at.unwrap_or(t.created_at).timestamp(),
                "data": data,
            }),
            images,
        }
    });
    TaskJson {
        task_id: t.id.clone(),
        id: t.id.clone(),
        user_id: t.user_id.clone(),
        kind: t.kind.as_str().to_string(),
        model: t.model.clone(),
        prompt: t.prompt.clone(),
        size: t.params.size.clone(),
        quality: t.params.quality.clone(),
        style: t.params.style.clone(),
        n: t.params.n,
        seed: t.params.seed,
        guidance_scale: t.params.guidance_scale,
        watermark: t.params.watermark,
        status: t.status,
        version: t.version,
        attempts: t.attempts,
        result,
        error: t.error.as_ref().map(|e| ErrorJson {
            code: e.code.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
        }),
        provider_request_id: t.provider_request_id.clone(),
        provider_key: t.provider_key.clone(),
        next_attempt_at: t
            .not_before
            .filter(|_| t.status == TaskStatus::Pending)
            .map(rfc3339),
        run_at: t.run_at.map(rfc3339),
        deadline_at: t.deadline_at.map(rfc3339),
        queue_position: place.map(|p| p.position),
        estimated_start_at: place.and_then(|p| p.estimated_start_at).map(rfc3339),
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
        started_at: t.started_at.map(rfc3339),
        completed_at: t.completed_at.map(rfc3339),
        input: json!({
            "prompt": t.prompt, "model": t.model, "size": t.params.size,
            "quality": t.params.quality, "style": t.params.style, "n": t.params.n,
        })
        .to_string(),
        output: t
            .result
            .as_ref()
            .and_then(|r| r.images.first())
            .map(|i| image_url(base, i))
            .unwrap_or_default(),
        error_msg: t
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default(),
        provider: legacy::PROVIDER,
        image_url: None,
        message: None,
        video_url: t
            .result
            .as_ref()
            .and_then(|r| r.video.as_ref())
            .map(|v| crate::domain::video_url(base, v)),
        provider_task_id: t.provider_task_id.clone(),
        video: t.video.as_ref().map(|v| {
            json!({
                "duration": v.duration, "ratio": v.ratio, "resolution": v.resolution,
                "seed": v.seed, "camera_fixed": v.camera_fixed, "watermark": v.watermark,
                "frames": v.frame_count,
            })
        }),
    }
}

pub(super) fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, AppError> {
    match h.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| AppError::invalid("Idempotency-Key", "must be printable ASCII")),
    }
}

async fn create(
    s: &AppState,
    who: &Principal,
    headers: &HeaderMap,
    input: CreateImageTask,
) -> ApiResult {
    let wait = prefer::wait_preference(headers).map(|n| prefer::applied_wait(s, n));
    let created = s.service.create_image_task(who, input).await?;
    answer_created(s, who, created, wait).await
}

/// The answer to a create: the task (after `Prefer: wait`), 201, with the replay and
/// preference headers.
pub(super) async fn answer_created(
    s: &AppState,
    who: &Principal,
    (t, created): (Task, bool),
    wait: Option<u64>,
) -> ApiResult {
    let t = match wait {
        Some(secs) => prefer::wait_for_outcome(s, who, t, secs).await,
        None => t,
    };
    let data = legacy::created(&t, &s.public_base, s.service.queue_place(&t))?;
    let mut resp = ok(StatusCode::CREATED, data, Some("task created"))?;
    if !created {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Some(secs) = wait {
        resp.headers_mut()
            .insert("preference-applied", prefer::preference_applied(secs));
    }
    Ok(resp)
}

/// Create an image task
///
/// Answers at once with the `pending` task (`scheduled` with `delay` or `run_at`: it becomes
/// `pending` when due, within `SWEEP_INTERVAL`); poll `GET /api/v1/ai/image/result/{task_id}`,
/// stream `GET /api/v1/tasks/{task_id}/stream` or
/// subscribe to `taskUpdated` over GraphQL. The same `Idempotency-Key` from the same user returns
/// the same task (header `Idempotent-Replayed: true`); with a different body it is 409.
///
/// `Prefer: wait=N` (RFC 7240, N at most 60) holds the answer until the task is completed,
/// failed or cancelled, or N seconds have passed, and answers with its newest state;
/// `Preference-Applied: wait=N` tells the wait honoured (less than asked only when
/// `REQUEST_TIMEOUT` leaves less room). Still `pending` or `processing` after the wait: poll or
/// stream as usual.
#[utoipa::path(post, path = "/api/v1/ai/image/task", tag = "tasks",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the task created with this key"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (seconds, at most 60): answer once the task is finished, or after N seconds"),
    ),
    request_body = ImageBody,
    responses(
        (status = 201, description = "Task created (`data.message` says so too)", body = Envelope<TaskJson>),
        (status = 400, description = "`VALIDATION_FAILED` or `INVALID_JSON`", body = ErrorBody),
        (status = 409, description = "Idempotency key reused with another body", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "A backend is unreachable", body = ErrorBody),
    ))]
pub async fn create_image(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    ApiJson(b): ApiJson<ImageBody>,
) -> ApiResult {
    let key = idempotency_key(&headers)?;
    create(&s, &who, &headers, b.into_input(key)).await
}

/// Create a task (generic form)
///
/// `{type: "image_generation", model, user_id, delay, input: {prompt, size, …}}`; otherwise as
/// `POST /api/v1/ai/image/task` (`Idempotency-Key` and `Prefer: wait=N` included). With `delay`
/// (seconds) or `run_at` the task is `scheduled` until due, as the older server answered.
#[utoipa::path(post, path = "/api/v1/ai/tasks", tag = "tasks",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the task created with this key"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (seconds, at most 60): answer once the task is finished, or after N seconds"),
    ),
    request_body = GenericBody,
    responses(
        (status = 201, description = "Task created", body = Envelope<TaskJson>),
        (status = 400, description = "`VALIDATION_FAILED` (also for an unsupported `type`) or `INVALID_JSON`", body = ErrorBody),
        (status = 409, description = "Idempotency key reused with another body", body = ErrorBody),
    ))]
pub async fn create_generic(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    ApiJson(b): ApiJson<GenericBody>,
) -> ApiResult {
    match b.kind.as_deref() {
        None | Some(TASK_KIND_IMAGE) | Some("image") => {}
        Some(other) => {
            return Err(AppError::Validation(vec![crate::error::FieldError::new(
                "type",
                format!("unsupported task type; supported: {TASK_KIND_IMAGE}"),
            )
            .with_value(other)])
            .into())
        }
    }
    let key = idempotency_key(&headers)?;
    let mut input = b.input;
    input.model = b.model.or(input.model);
    input.user_id = b.user_id.or(input.user_id);
    input.delay = b.delay.or(input.delay);
    input.run_at = b.run_at.or(input.run_at);
    input.webhook = b.webhook.or(input.webhook);
    input.webhook_events_filter = b.webhook_events_filter.or(input.webhook_events_filter);
    input.deadline_seconds = b.deadline_seconds.or(input.deadline_seconds);
    create(&s, &who, &headers, input.into_input(key)).await
}

/// Poll a task (the v2 Go server's route)
///
/// 202 while the task is scheduled, pending or processing (`data.status` is then `processing`,
/// as the Go server said; the task's own status is on `GET /api/v1/tasks/{task_id}`); 200 once
/// completed, with `data.image_url` and `data.result.image_url` the stored image; 500
/// `TASK_FAILED` once failed, the task in `data` (`data.error` says why); 200 with status
/// `cancelled` for a cancelled task.
#[utoipa::path(get, path = "/api/v1/ai/image/result/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Completed (or cancelled)", body = Envelope<TaskJson>),
        (status = 202, description = "Not finished: poll again", body = Envelope<TaskJson>),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 500, description = "`TASK_FAILED`: the task failed; `data` is the task", body = ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    legacy::path_id(&id, "task")?;
    let t = s.service.poll_task_or_404(&who, &id).await?;
    legacy::poll(&t, &s.public_base, s.service.queue_place(&t), Poll::V2)
}

/// Poll a task (the latest Go server's route)
///
/// 202 while the task waits or runs (`data.status` its status), 200 once completed
/// (`data.image_url`), 500 `TASK_FAILED` once failed.
#[utoipa::path(get, path = "/api/v1/ai/task/result/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Completed (or cancelled)", body = Envelope<TaskJson>),
        (status = 202, description = "Pending or processing: poll again", body = Envelope<TaskJson>),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 500, description = "`TASK_FAILED`: the task failed; `data` is the task", body = ErrorBody),
    ))]
pub async fn poll_latest(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    legacy::path_id(&id, "task")?;
    let t = s.service.poll_task_or_404(&who, &id).await?;
    legacy::poll(&t, &s.public_base, s.service.queue_place(&t), Poll::Latest)
}

/// A task in v2's shape (the detail routes, cancel, retry).
async fn detail(s: &AppState, who: &Principal, id: &str) -> ApiResult {
    legacy::path_id(id, "task")?;
    let t = s.service.poll_task_or_404(who, id).await?;
    let place = s.service.queue_place(&t);
    ok(
        StatusCode::OK,
        legacy::v2_task(&t, &s.public_base, place)?,
        None,
    )
}

/// Get a task (generic route)
///
/// The same task as `GET /api/v1/ai/image/result/{task_id}`.
#[utoipa::path(get, path = "/api/v1/ai/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = Envelope<TaskJson>),
        (status = 404, description = "No such task", body = ErrorBody),
    ))]
pub async fn get_ai_task(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    detail(&s, &who, &id).await
}

/// Get a task (detail route)
///
/// The same task as `GET /api/v1/ai/image/result/{task_id}`.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = Envelope<TaskJson>),
        (status = 404, description = "No such task", body = ErrorBody),
    ))]
pub async fn get_task(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    detail(&s, &who, &id).await
}

pub fn parse_limit(q: &HashMap<String, String>) -> Result<Option<i64>, AppError> {
    q.get("limit")
        .map(|l| {
            l.parse::<i64>()
                .map_err(|_| AppError::invalid("limit", "must be a whole number"))
        })
        .transpose()
}

/// Cancel a task
///
/// A scheduled, pending or processing task becomes `cancelled`; a provider call in flight is
/// abandoned.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/cancel", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The cancelled task", body = Envelope<TaskJson>),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is already finished", body = ErrorBody),
    ))]
pub async fn cancel(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    legacy::path_id(&id, "task")?;
    let t = s.service.cancel_task(&who, &id).await?;
    ok(
        StatusCode::OK,
        legacy::v2_task(&t, &s.public_base, None)?,
        Some("task cancelled"),
    )
}

/// Retry a task
///
/// A failed or cancelled task goes back to `pending` with its attempts reset.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/retry", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task, pending again", body = Envelope<TaskJson>),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is not failed or cancelled", body = ErrorBody),
    ))]
pub async fn retry(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    legacy::path_id(&id, "task")?;
    let t = s.service.retry_task(&who, &id).await?;
    ok(
        StatusCode::OK,
        legacy::v2_task(&t, &s.public_base, s.service.queue_place(&t))?,
        Some("task queued again"),
    )
}

/// Delete a task
///
/// Any task, with its stored images; a pending or processing one is cancelled first. As on the
/// Go server, an unknown id is a success too (`data.deleted` false).
#[utoipa::path(delete, path = "/api/v1/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Deleted (`data.deleted` false when there was no such task)", body = Envelope<Deleted>),
    ))]
pub async fn delete(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let found = if is_valid_id(&id) {
        s.service.discard_task(&who, &id).await?
    } else {
        None
    };
    ok(
        StatusCode::OK,
        Deleted {
            deleted: found.is_some(),
            task_id: id,
        },
        Some("task deleted"),
    )
}

/// Delete a task (the latest Go server's route)
///
/// As `DELETE /api/v1/tasks/{task_id}`.
#[utoipa::path(delete, path = "/api/v1/ai/task/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Deleted (`data.deleted` false when there was no such task)", body = Envelope<Deleted>),
    ))]
pub async fn delete_latest(state: State<AppState>, who: Caller, id: Path<String>) -> ApiResult {
    delete(state, who, id).await
}

/// Queue statistics
///
/// Queue depth and tasks by status.
#[utoipa::path(get, path = "/api/v1/queue/stats", tag = "tasks",
    responses(
        (status = 200, description = "`data.by_status`, `data.total`, queue depth; the Go server's `pending`, `active`, `scheduled`, `retry`, `archived`, `completed`, `processed`, `failed`, `timestamp`", body = Envelope<Object>),
        (status = 503, description = "A backend is unreachable", body = ErrorBody),
    ))]
pub async fn queue_stats(State(s): State<AppState>, Caller(who): Caller) -> ApiResult {
    let stats = s.service.queue_stats(&who).await?;
    let n = |st: &str| stats.by_status.get(st).copied().unwrap_or(0);
    let mut data = serde_json::to_value(&stats).map_err(|e| AppError::internal("stats", e))?;
    // The Go server's keys (asynq's queue counters), from the same numbers: tasks waiting,
    // running, scheduled, finished. Retries wait as pending here and nothing is archived.
    let go = json!({
        "pending": n("pending"), "active": n("processing"), "scheduled": n("scheduled"),
        "retry": 0, "archived": 0, "completed": n("completed"),
        "processed": n("completed") + n("failed") + n("cancelled"), "failed": n("failed"),
        "timestamp": rfc3339(chrono::Utc::now()),
    });
    if let (Some(d), Value::Object(x)) = (data.as_object_mut(), go) {
        d.extend(x);
    }
    ok(StatusCode::OK, data, None)
}
