//! `POST /api/v1/ai/video/task`: a Seedance video task, in our fields and in the latest Go
//! server's (`image_urls`, `aspect_ratio`, `provider`). Polled like an image task (the same
//! routes, `video_url` once completed).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa::ToSchema;

use super::envelope::{ok, ApiJson, ApiResult, Envelope, ErrorBody};
use super::tasks::{answer_created, idempotency_key, TaskJson};
use super::{prefer, Caller};
use crate::domain::video::CreateVideoTask;
use crate::service::CallbackOutcome;
use crate::state::AppState;

/// A video task request.
#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct VideoBody {
    /// Owner (a user key may leave it out).
    user_id: Option<String>,
    /// What happens in the video (required).
    prompt: String,
    /// `seedance-1.0-pro` (default for text), `seedance-1.0-pro-fast`,
    /// `seedance-1.0-lite-t2v`, `seedance-1.0-lite-i2v`, or the provider model id.
    model: Option<String>,
    /// No image (text to video), one (the first frame) or two (first and last frame): http(s)
    /// or `data:image/…;base64` URLs.
    images: Option<Vec<String>>,
    /// The latest Go server's name for `images`.
    image_urls: Option<Vec<String>>,
    /// Seconds, 2 to 12 (default 5).
    duration: Option<i64>,
    /// `16:9` (default for text), `4:3`, `1:1`, `3:4`, `9:16`, `21:9`, or `adaptive` (with
    /// images; their default).
    ratio: Option<String>,
    /// The latest Go server's name for `ratio`.
    aspect_ratio: Option<String>,
    /// `480p`, `720p` or `1080p` (default: the model's).
    resolution: Option<String>,
    /// -1 (random) or 0 to 4294967295.
    seed: Option<i64>,
    /// Keep the camera still.
    camera_fixed: Option<bool>,
    /// Stamp the provider's "AI generated" mark (default false).
    watermark: Option<bool>,
    /// Seconds the task may take to a final state (default `TASK_DEADLINE`).
    deadline_seconds: Option<i64>,
    /// The latest Go server's provider name: `volcengine` if given (the only provider here).
    provider: Option<String>,
    /// An http(s) URL to post the task's events to, signed per Standard Webhooks, as for an
    /// image task. Refused when it resolves to a loopback, private, link-local or metadata
    /// address.
    webhook: Option<String>,
    /// Which events to post: `start`, `completed` (every terminal state); default both.
    webhook_events_filter: Option<Vec<String>>,
}

/// Create a video task
///
/// Validated against the video model table (mode by the number of images, duration, ratio,
/// resolution, seed) before anything reaches the provider; then submitted once to Ark's content
/// generation tasks API and tracked there. Poll `GET /api/v1/tasks/{task_id}` (or the legacy
/// result routes, or stream it); once completed, `video_url` is the MP4 stored on this server.
/// `Idempotency-Key`, `Prefer: wait=N` and `webhook` as for image tasks.
#[utoipa::path(post, path = "/api/v1/ai/video/task", tag = "tasks",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the task created with this key"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (seconds, at most 60)"),
    ),
    request_body = VideoBody,
    responses(
        (status = 201, description = "Task created", body = Envelope<TaskJson>),
        (status = 400, description = "`VALIDATION_FAILED` or `INVALID_JSON`", body = ErrorBody),
        (status = 409, description = "Idempotency key reused with another body", body = ErrorBody),
    ))]
pub async fn create_video(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    ApiJson(b): ApiJson<VideoBody>,
) -> ApiResult {
    let input = CreateVideoTask {
        provider: b.provider,
        user_id: b.user_id,
        prompt: b.prompt,
        model: b.model,
        images: b.images.or(b.image_urls).unwrap_or_default(),
        duration: b.duration,
        ratio: b.ratio.or(b.aspect_ratio),
        resolution: b.resolution,
        seed: b.seed,
        camera_fixed: b.camera_fixed,
        watermark: b.watermark,
        deadline_seconds: b.deadline_seconds,
        webhook: b.webhook,
        webhook_events_filter: b.webhook_events_filter,
        idempotency_key: idempotency_key(&headers)?,
        // As on the other legacy routes: the Go server's clients hold opaque user ids.
        opaque_owner: true,
    };
    let wait = prefer::wait_preference(&headers).map(|n| prefer::applied_wait(&s, n));
    let created = s.service.create_video_task(&who, input).await?;
    answer_created(&s, &who, created, wait).await
}

/// What a callback led to.
#[derive(serde::Serialize, ToSchema)]
pub struct CallbackAnswer {
    /// `looked` (the task's state is being fetched from the provider now), `ended` (the task
    /// has ended here) or `working` (the callback says the provider is still at it).
    outcome: &'static str,
}

/// The provider's callback about a video task
///
/// The `callback_url` this server submits video tasks with when `PUBLIC_BASE_URL` is set; not
/// for clients. Ark does not sign callbacks: the path's token, secret and per task, is the
/// proof, and a callback only makes the worker fetch the task's state from Ark now (its body's
/// state is never taken). Repeats are harmless.
#[utoipa::path(post, path = "/api/v1/callbacks/video/{task_id}/{token}", tag = "tasks",
    params(
        ("task_id" = String, Path, description = "Our task id"),
        ("token" = String, Path, description = "The task's callback token"),
    ),
    responses(
        (status = 200, description = "Accepted", body = Envelope<CallbackAnswer>),
        (status = 403, description = "`FORBIDDEN`: unknown task or wrong token; nothing changed", body = ErrorBody),
    ))]
pub async fn video_callback(
    State(s): State<AppState>,
    Path((task_id, token)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    // Read only to skip a fetch while the provider is still working: a lie costs a delay.
    let reported = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_string));
    let outcome = s
        .service
        .video_callback(&task_id, &token, reported.as_deref())
        .await?;
    let outcome = match outcome {
        CallbackOutcome::Looked => "looked",
        CallbackOutcome::Ended => "ended",
        CallbackOutcome::Working => "working",
    };
    ok(StatusCode::OK, CallbackAnswer { outcome }, None)
}
