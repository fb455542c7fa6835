//! `GET /api/v1/users/{id}/usage`: a user's usage as the server settled it.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::envelope::{ok, ApiResult, Envelope, ErrorBody};
use super::Caller;
use crate::service::{Usage, UsageFilter};
use crate::state::AppState;

/// A user's usage
///
/// Images the provider billed (`usage.generated_images`) and tasks that ended, counted once per
/// task when it became terminal: in total, `by_model`, `by_day` (UTC) and `by_api_key` (tasks
/// the admin created are filed under `admin`). A user key reads only its own user's usage.
#[utoipa::path(get, path = "/api/v1/users/{id}/usage", tag = "users",
    params(
        ("id" = String, Path, description = "User id"),
        ("from" = Option<String>, Query, description = "First UTC day counted (YYYY-MM-DD or RFC 3339)"),
        ("to" = Option<String>, Query, description = "Last UTC day counted (YYYY-MM-DD or RFC 3339)"),
        ("api_key_id" = Option<String>, Query, description = "Only tasks created with this API key"),
    ),
    responses(
        (status = 200, description = "The usage", body = Envelope<Usage>),
        (status = 400, description = "A bad date or id", body = ErrorBody),
        (status = 403, description = "A user key asking for another user", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(mut q): Query<HashMap<String, String>>,
) -> ApiResult {
    let filter = UsageFilter {
        api_key_id: q.remove("api_key_id"),
        from: q.remove("from"),
        to: q.remove("to"),
    };
    let usage = s.service.user_usage(&who, &id, filter).await?;
    ok(StatusCode::OK, usage, None)
}
