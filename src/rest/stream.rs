//! `GET /api/v1/tasks/{task_id}/stream`: a task's states as server-sent events, for browsers and
//! scripts without a GraphQL client. Each event is one version (`id:` the version, `data:` the
//! task in the REST shape); the stream ends after the terminal one.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::StreamExt;

use super::envelope::{ApiError, ErrorBody};
use super::tasks::task_json;
use super::Caller;
use crate::domain::Task;
use crate::service::follow::follow_task;
use crate::service::queue_clock::QueuePlace;
use crate::state::AppState;

/// `Last-Event-ID`: the version the client saw last. Anything else is no resumption (a client
/// cannot have been sent it).
fn last_event_id(h: &HeaderMap) -> Option<i64> {
    h.get("last-event-id")?.to_str().ok()?.trim().parse().ok()
}

/// Counts an open stream in the `sse_streams` gauge while it lives.
struct Open;

impl Open {
    fn new() -> Open {
        metrics::gauge!("sse_streams").increment(1.0);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("sse_streams").decrement(1.0);
    }
}

fn event(t: &Task, base: &str, place: Option<QueuePlace>) -> Event {
    let e = Event::default().id(t.version.to_string());
    // TaskJson always serialises; a failure would be a bug, answered as an empty event.
    e.json_data(task_json(t, base, place))
        .unwrap_or_else(|_| Event::default().id(t.version.to_string()))
}

/// Stream a task's states (server-sent events)
///
/// `text/event-stream`: the task's current state first, then one event per new version, in
/// order; the stream closes after the terminal state (`completed`, `failed` or `cancelled`).
/// Each event's `id` is the task's `version` and its `data` the task as `GET /api/v1/tasks/{task_id}`
/// answers it (`data` of the envelope). A comment (`: keep-alive`) is sent on an idle stream every
/// `SSE_KEEP_ALIVE` (15 s). Reconnecting with `Last-Event-ID: <version>` resumes after that
/// version; when the task is terminal and the client has its last version the answer is 204,
/// which tells an `EventSource` to stop reconnecting. Authentication and visibility as for reads:
/// someone else's task is 404.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/stream", tag = "tasks",
    params(
        ("task_id" = String, Path, description = "Task id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "The last version received: resume after it"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 204, description = "Resumed after the terminal version: nothing more will come"),
        (status = 401, description = "Missing or bad API key", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    ))]
pub async fn stream(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = last_event_id(&headers);
    let (now, follow) = follow_task(
        s.service.clone(),
        &who,
        &id,
        after,
        s.config.subscription_resync,
    )
    .await?;
    if now.status.is_terminal() && after.is_some_and(|v| v >= now.version) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let open = Open::new();
    let base = s.public_base.clone();
    let service = s.service.clone();
    let events = follow.map(move |t| {
        let _ = &open;
        Ok::<_, Infallible>(event(&t, &base, service.queue_place(&t)))
    });
    let keep_alive = KeepAlive::new()
        .interval(s.config.sse_keep_alive)
        .text("keep-alive");
    let mut resp = Sse::new(events).keep_alive(keep_alive).into_response();
    // Proxies that buffer (nginx) would hold events back.
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(resp)
}
