//! A task's webhook delivery log (`GET /api/v1/tasks/{task_id}/webhooks`) and redelivery
//! (`POST …/webhooks/{delivery_id}/redeliver`, or `…/webhooks/redeliver` for the newest event).
//! Same auth and isolation as the task routes: another user's task is 404.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ok, parse_json, ApiResult, Envelope, ErrorBody};
use super::{legacy, Caller};
use crate::domain::{rfc3339, DeliveryAttempt, WebhookDelivery};
use crate::state::AppState;

/// One attempt to deliver an event.
#[derive(Serialize, ToSchema)]
pub struct AttemptJson {
    /// 1 for the first attempt; counts on across redeliveries.
    pub attempt: u32,
    /// When the attempt ended (RFC 3339).
    pub at: String,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed (`answered 500`, `timeout`, `connection failed: …`, a refused
    /// target); null when it was delivered.
    pub error: Option<String>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
    /// When the next attempt was due after this one; null once delivered or dead.
    pub next_attempt_at: Option<String>,
}

/// One event on its way to the task's webhook.
#[derive(Serialize, ToSchema)]
pub struct DeliveryJson {
    /// The `webhook-id` header: the same on every attempt and redelivery of this event.
    pub id: String,
    /// `start` or `completed` (the `webhook_events_filter` name).
    pub event: &'static str,
    /// The body's `type`: `task.started` or `task.completed`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where it is posted.
    pub url: String,
    /// `pending` (waiting for its next attempt, or being attempted), `delivered` (a 2xx
    /// answer) or `dead` (every attempt failed; only a redelivery sends it again).
    pub state: &'static str,
    /// When the change happened (the body's `timestamp`).
    pub created_at: String,
    /// When the next attempt is due; null once delivered or dead.
    pub next_attempt_at: Option<String>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptJson>,
}

/// A task's delivery log.
#[derive(Serialize, ToSchema)]
pub struct DeliveriesJson {
    /// The task.
    pub task_id: String,
    /// Its events, oldest first (empty for a task without a webhook).
    pub deliveries: Vec<DeliveryJson>,
}

fn time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(rfc3339)
}

fn attempt_json(a: &DeliveryAttempt) -> AttemptJson {
    AttemptJson {
        attempt: a.attempt,
        at: rfc3339(a.at),
        status_code: a.status_code,
        error: a.error.clone(),
        duration_ms: a.duration_ms,
        next_attempt_at: time(a.next_attempt_at),
    }
}

pub fn delivery_json(d: &WebhookDelivery) -> DeliveryJson {
    DeliveryJson {
        id: d.id.clone(),
        event: d.event.filter_name(),
        kind: d.event.type_name(),
        url: d.url.clone(),
        state: d.state.as_str(),
        created_at: rfc3339(d.created_at),
        next_attempt_at: time(d.next_attempt_at),
        attempts: d.log.iter().map(attempt_json).collect(),
    }
}

/// A task's webhook deliveries
///
/// Each event of the task's webhook (`task.started`, `task.completed`) with every attempt: its
/// time, the receiver's status or the error, and when the next attempt is due.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/webhooks", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The delivery log", body = Envelope<DeliveriesJson>),
        (status = 404, description = "No such task (or another user's)", body = ErrorBody),
    ))]
pub async fn list(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(task_id): Path<String>,
) -> ApiResult {
    legacy::path_id(&task_id, "task")?;
    let all = s.service.webhook_deliveries(&who, &task_id).await?;
    let body = DeliveriesJson {
        task_id,
        deliveries: all.iter().map(delivery_json).collect(),
    };
    ok(StatusCode::OK, body, None)
}

/// Which event to send again (`POST …/webhooks/redeliver`).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverBody {
    /// The delivery's `id` (its `webhook-id`); the task's newest event when left out.
    delivery_id: Option<String>,
}

/// Redeliver a webhook event
///
/// Sends the event again under the same `webhook-id`, from a fresh retry schedule: a delivered
/// or dead event at once, a pending one without waiting for its backoff. One being attempted
/// right now is left to that attempt. Answers the delivery as it is now (`pending`).
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/webhooks/{delivery_id}/redeliver",
    tag = "tasks",
    params(
        ("task_id" = String, Path, description = "Task id"),
        ("delivery_id" = String, Path, description = "The delivery's id (its webhook-id)"),
    ),
    responses(
        (status = 202, description = "The delivery, due again", body = Envelope<DeliveryJson>),
        (status = 404, description = "No such task or delivery", body = ErrorBody),
    ))]
pub async fn redeliver_one(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path((task_id, delivery_id)): Path<(String, String)>,
) -> ApiResult {
    legacy::path_id(&task_id, "task")?;
    let d = s
        .service
        .redeliver_webhook(&who, &task_id, Some(&delivery_id))
        .await?;
    ok(
        StatusCode::ACCEPTED,
        delivery_json(&d),
        Some("webhook redelivery queued"),
    )
}

/// Redeliver a task's webhook event
///
/// As `…/webhooks/{delivery_id}/redeliver`, the delivery named by `delivery_id` in the body, or
/// the task's newest event when the body is empty or names none.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/webhooks/redeliver", tag = "tasks",
    params(("task_id" = String, Path, description = "Task id")),
    request_body(content = Option<RedeliverBody>, description = "Optional; empty for the newest event"),
    responses(
        (status = 202, description = "The delivery, due again", body = Envelope<DeliveryJson>),
        (status = 400, description = "A malformed body", body = ErrorBody),
        (status = 404, description = "No such task, delivery, or no deliveries", body = ErrorBody),
    ))]
pub async fn redeliver(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(task_id): Path<String>,
    body: Bytes,
) -> ApiResult {
    legacy::path_id(&task_id, "task")?;
    let body: RedeliverBody = if body.iter().all(u8::is_ascii_whitespace) {
        RedeliverBody::default()
    } else {
        parse_json(&body)?
    };
    let d = s
        .service
        .redeliver_webhook(&who, &task_id, body.delivery_id.as_deref())
        .await?;
    ok(
        StatusCode::ACCEPTED,
        delivery_json(&d),
        Some("webhook redelivery queued"),
    )
}
