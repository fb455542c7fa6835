//! The lists of a user's tasks: v2's `GET /api/v1/tasks/user/{user_id}` and the latest's
//! `GET /api/v1/ai/tasks?user_id=`, both with the Go server's `data: {tasks, count, limit,
//! offset}` and this service's paging beside.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::envelope::{ApiResult, ErrorBody};
use super::legacy;
use super::tasks::{parse_limit, TaskPagination};
use super::Caller;
use crate::auth::Principal;
use crate::domain::{is_opaque_id, Task, TaskStatus};
use crate::error::AppError;
use crate::state::AppState;

/// The page of a user's tasks both list routes answer.
struct TaskPage {
    items: Vec<Task>,
    limit: i64,
    offset: usize,
    total: u64,
    has_more: bool,
    next_cursor: Option<String>,
}

async fn user_page(
    s: &AppState,
    who: &Principal,
    user_id: &str,
    q: &HashMap<String, String>,
) -> Result<TaskPage, AppError> {
    let limit = parse_limit(q)?;
    let offset = q
        .get("offset")
        .map(|o| {
            o.parse::<usize>()
                .map_err(|_| AppError::invalid("offset", "must be a whole number"))
        })
        .transpose()?
        .unwrap_or(0);
    let status = q
        .get("status")
        .filter(|st| !st.is_empty())
        .map(|st| {
            TaskStatus::parse(st).ok_or_else(|| {
                AppError::invalid(
                    "status",
                    "must be one of scheduled, pending, processing, completed, failed, cancelled",
                )
            })
        })
        .transpose()?;
    // As on the Go server, any owner id lists (an unknown one has no tasks); one that cannot be
    // an id has none either.
    if !is_opaque_id(user_id) {
        return Ok(TaskPage {
            items: vec![],
            limit: limit.unwrap_or(crate::service::DEFAULT_PAGE as i64),
            offset,
            total: 0,
            has_more: false,
            next_cursor: None,
        });
    }
    let cursor = q.get("cursor").filter(|c| !c.is_empty());
    let page = s
        .service
        .list_tasks(
            who,
            Some(user_id),
            status,
            cursor.map(String::as_str),
            offset,
            limit,
        )
        .await?;
    let next_cursor = page
        .has_more
        .then(|| page.items.last().map(|t| t.id.clone()))
        .flatten();
    Ok(TaskPage {
        limit: limit.unwrap_or(crate::service::DEFAULT_PAGE as i64),
        offset,
        total: page.total,
        has_more: page.has_more,
        next_cursor,
        items: page.items,
    })
}

/// `{success, data: {tasks, count, limit, offset, total, has_more, next_cursor, …extra},
/// pagination}`: the Go server's `data` with the paging of this service beside it.
fn page_answer(p: TaskPage, tasks: Vec<Value>, extra: Value) -> ApiResult {
    let pagination = TaskPagination {
        limit: p.limit,
        offset: p.offset,
        count: tasks.len(),
        total: p.total,
        has_more: p.has_more,
        next_cursor: p.next_cursor,
    };
    let mut data = serde_json::to_value(&pagination).map_err(|e| AppError::internal("page", e))?;
    data["tasks"] = Value::Array(tasks);
    if let (Some(d), Value::Object(x)) = (data.as_object_mut(), extra) {
        d.extend(x);
    }
    let body = json!({"success": true, "data": data, "pagination": pagination});
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// List a user's tasks
///
/// Newest first. `data` is `{tasks, count, limit, offset}` as on the Go server, plus `total`,
/// `has_more` and `next_cursor`; page with `cursor` (the `next_cursor` of the previous page) or
/// `offset`. Any owner id lists (one without tasks lists none).
#[utoipa::path(get, path = "/api/v1/tasks/user/{user_id}", tag = "tasks",
    params(
        ("user_id" = String, Path, description = "User id"),
        ("limit" = Option<i64>, Query, description = "Page size, default 20, at most 100"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("offset" = Option<usize>, Query, description = "Items to skip (instead of a cursor)"),
        ("status" = Option<String>, Query, description = "scheduled, pending, processing, completed, failed or cancelled"),
    ),
    responses(
        (status = 200, description = "A page of tasks: `data.tasks`, `data.count`, `data.limit`, `data.offset`; `pagination` beside", body = Envelope<Object>),
        (status = 400, description = "Invalid paging or status", body = ErrorBody),
    ))]
pub async fn list_for_user(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let page = user_page(&s, &who, &user_id, &q).await?;
    let tasks = page
        .items
        .iter()
        .map(|t| legacy::v2_task(t, &s.public_base, s.service.queue_place(t)))
        .collect::<Result<Vec<_>, _>>()?;
    page_answer(page, tasks, json!({}))
}

/// List a user's tasks (the latest Go server's route)
///
/// `?user_id=` (required; a user key may leave it out), `type` (`image`, the only kind),
/// `limit`, `offset`, `cursor`, `status`; as `GET /api/v1/tasks/user/{user_id}` with the tasks
/// in the latest shape.
#[utoipa::path(get, path = "/api/v1/ai/tasks", tag = "tasks",
    params(
        ("user_id" = String, Query, description = "User id"),
        ("type" = Option<String>, Query, description = "`image` (the only kind); another lists nothing"),
        ("limit" = Option<i64>, Query, description = "Page size, default 20, at most 100"),
        ("offset" = Option<usize>, Query, description = "Items to skip"),
    ),
    responses(
        (status = 200, description = "`data.tasks`, `data.count`, `data.limit`, `data.offset`, `data.type`", body = Envelope<Object>),
        (status = 400, description = "No user_id, or invalid paging", body = ErrorBody),
    ))]
pub async fn list_latest(
    State(s): State<AppState>,
    Caller(who): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let user_id = q
        .get("user_id")
        .filter(|u| !u.is_empty())
        .cloned()
        .or_else(|| who.user_id().map(str::to_string))
        .ok_or_else(|| AppError::invalid("user_id", "user_id is required"))?;
    let kind = q.get("type").filter(|k| !k.is_empty()).cloned();
    let mut page = user_page(&s, &who, &user_id, &q).await?;
    if kind.as_deref().is_some_and(|k| k != "image") {
        page.items.clear();
        page.total = 0;
        page.has_more = false;
        page.next_cursor = None;
    }
    let tasks = page
        .items
        .iter()
        .map(|t| legacy::latest_task(t, &s.public_base, s.service.queue_place(t)))
        .collect::<Result<Vec<_>, _>>()?;
    page_answer(
        page,
        tasks,
        json!({"type": kind.unwrap_or_else(|| "all".into())}),
    )
}
