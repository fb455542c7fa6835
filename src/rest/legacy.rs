//! The older Go server's JSON shapes (docs/rest-compat.md; recorded answers in
//! tests/fixtures/go-compat/). Each view starts from this service's task JSON (`TaskJson`) and
//! adds the keys a Go client reads, with the types it had, so richer fields stay as additions.
//! v2 = the Go server at 7f4c83f, latest = at df370a4.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::envelope::ApiResult;
use super::tasks::task_json;
use crate::domain::{is_valid_id, rfc3339, Task, TaskKind, TaskStatus};
use crate::error::AppError;
use crate::service::queue_clock::QueuePlace;

/// The provider name both Go versions report for Ark tasks.
pub const PROVIDER: &str = "volcengine";

/// A path id that cannot name anything here answers 404, as the Go server did for any id it
/// could not find (it never told a malformed id from an unknown one).
pub fn path_id(id: &str, what: &str) -> Result<(), AppError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(AppError::NotFound(format!("{what} not found")))
    }
}

fn to_value(t: &Task, base: &str, place: Option<QueuePlace>) -> Result<Value, AppError> {
    serde_json::to_value(task_json(t, base, place)).map_err(|e| AppError::internal("task JSON", e))
}

fn first_image(t: &Task, base: &str) -> Option<String> {
    t.result
        .as_ref()
        .and_then(|r| r.images.first())
        .map(|i| crate::domain::image_url(base, i))
}

/// The task as the v2 routes answer it: `TaskJson` already holds v2's keys (`input`, `output`,
/// `error_msg`, `result{content, cost, duration, metadata, …}`).
pub fn v2_task(t: &Task, base: &str, place: Option<QueuePlace>) -> Result<Value, AppError> {
    to_value(t, base, place)
}

/// The task as the latest routes answer it: ours with `error` as a string (its structured form
/// moves to `error_detail`), `type` `image`, `provider`, `created`/`updated` and `image_url`.
pub fn latest_task(t: &Task, base: &str, place: Option<QueuePlace>) -> Result<Value, AppError> {
    let mut v = to_value(t, base, place)?;
    v["error_detail"] = v["error"].take();
    v["error"] = json!(t
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default());
    v["type"] = json!(match t.kind {
        TaskKind::Image => "image",
        TaskKind::Video => "video",
    });
    v["provider"] = json!(PROVIDER);
    v["created"] = json!(rfc3339(t.created_at));
    v["updated"] = json!(rfc3339(t.updated_at));
    v["aspect_ratio"] = json!("");
    // Always present ("" until completed), where the Go server left it out while empty.
    v["image_url"] = json!(first_image(t, base).unwrap_or_default());
    Ok(v)
}

/// `data` of a create: the task, the v2 keys (`provider`, `system_task_id` = the task in v2's
/// shape, `message`) and the latest ones (`provider`, `model`).
pub fn created(t: &Task, base: &str, place: Option<QueuePlace>) -> Result<Value, AppError> {
    let mut v = v2_task(t, base, place)?;
    v["system_task_id"] = v2_task(t, base, place)?;
    v["provider"] = json!(PROVIDER);
    v["message"] = json!(match t.kind {
        TaskKind::Image => "image generation task created",
        TaskKind::Video => "video generation task created",
    });
    Ok(v)
}

/// Which poll route answers: v2's `/ai/image/result/:id` or the latest `/ai/task/result/:id`.
#[derive(Clone, Copy, PartialEq)]
pub enum Poll {
    V2,
    Latest,
}

/// A poll as the Go server answered it: 202 while the task waits or runs (v2 says
/// `processing` for both, the latest the task's own status), 200 once completed with
/// `data.image_url` (and v2's `data.result`), 500 `TASK_FAILED` when failed with the task in
/// `data`. A cancelled task (neither Go version had one) answers 200 with status `cancelled`,
/// so a client looping on 202 stops.
pub fn poll(t: &Task, base: &str, place: Option<QueuePlace>, route: Poll) -> ApiResult {
    let mut v = match route {
        Poll::V2 => v2_task(t, base, place)?,
        Poll::Latest => latest_task(t, base, place)?,
    };
    let (code, message) = match t.status {
        TaskStatus::Completed => (StatusCode::OK, "task completed"),
        TaskStatus::Cancelled => (StatusCode::OK, "task cancelled"),
        TaskStatus::Failed => {
            let why = t
                .error
                .as_ref()
                .map_or("task failed", |e| e.message.as_str());
            let body = json!({
                "success": false, "error": "task failed", "code": "TASK_FAILED",
                "message": why, "data": v,
            });
            return Ok((StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response());
        }
        _ => (StatusCode::ACCEPTED, "task is processing, poll again later"),
    };
    if code == StatusCode::ACCEPTED && route == Poll::V2 {
        v["status"] = json!("processing");
    }
    if let Some(url) = first_image(t, base) {
        v["image_url"] = json!(url);
    }
    v["message"] = json!(message);
    super::envelope::ok(code, v, Some(message))
}
