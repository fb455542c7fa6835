//! `POST /api/v1/ai/video/task`: a Seedance video task, in our fields and in the latest Go
//! server's (`image_urls`, `aspect_ratio`, `provider`). Polled like an image task (the same
//! routes, `video_url` once completed).

use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::ToSchema;

use super::envelope::{ApiJson, ApiResult, Envelope, ErrorBody};
use super::tasks::{answer_created, idempotency_key, TaskJson};
use super::{prefer, Caller};
use crate::domain::video::CreateVideoTask;
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
    /// The latest Go server's provider name (`volcengine`); accepted and ignored.
    provider: Option<String>,
}

/// Create a video task
///
/// Validated against the video model table (mode by the number of images, duration, ratio,
/// resolution, seed) before anything reaches the provider; then submitted once to Ark's content
/// generation tasks API and tracked there. Poll `GET /api/v1/tasks/{task_id}` (or the legacy
/// result routes, or stream it); once completed, `video_url` is the MP4 stored on this server.
/// `Idempotency-Key` and `Prefer: wait=N` as for image tasks.
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
    let _ = b.provider;
    let input = CreateVideoTask {
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
        idempotency_key: idempotency_key(&headers)?,
        // As on the other legacy routes: the Go server's clients hold opaque user ids.
        opaque_owner: true,
    };
    let wait = prefer::wait_preference(&headers).map(|n| prefer::applied_wait(&s, n));
    let created = s.service.create_video_task(&who, input).await?;
    answer_created(&s, &who, created, wait).await
}
