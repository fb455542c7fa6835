//! The legacy user routes: create, find by email, read, update and delete a user (deleting its
//! tasks), in the older server's JSON shapes.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ok, ok_page, ApiJson, ApiResult, Envelope, ErrorBody};
use super::{legacy, Caller};
use crate::domain::{is_valid_id, User};
use crate::error::AppError;
use crate::service::{CreateUser, UpdateUser};
use crate::state::AppState;

/// A new user.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "alice@example.com", "name": "Alice"}))]
pub struct CreateBody {
    /// Valid, at most 100 characters, unique regardless of case.
    #[serde(default)]
    email: String,
    /// 2 to 50 characters.
    #[serde(default)]
    name: String,
}

/// Changes to a user: `email` and/or `name` (same rules as on creation).
#[derive(Deserialize, ToSchema)]
pub struct UpdateBody {
    email: Option<String>,
    name: Option<String>,
}

/// A user.
#[derive(Serialize, ToSchema)]
pub struct UserJson<'a> {
    id: &'a str,
    email: &'a str,
    name: &'a str,
    /// RFC 3339, UTC.
    created_at: String,
    updated_at: String,
}

/// Paging of `GET /api/v1/users`.
#[derive(Serialize, ToSchema)]
pub struct UserPagination {
    has_more: bool,
    /// Pass as `cursor` for the next page.
    next_cursor: Option<String>,
    /// All users.
    total: u64,
}

/// `data` of a user deletion.
#[derive(Serialize, ToSchema)]
pub struct DeletedUser {
    id: String,
    /// Whether there was such a user.
    deleted: bool,
}

pub fn user_json(u: &User) -> UserJson<'_> {
    UserJson {
        id: &u.id,
        email: &u.email,
        name: &u.name,
        created_at: crate::domain::rfc3339(u.created_at),
        updated_at: crate::domain::rfc3339(u.updated_at),
    }
}

/// Create a user
#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created", body = Envelope<UserJson>),
        (status = 400, description = "`VALIDATION_FAILED` or `INVALID_JSON`", body = ErrorBody),
        (status = 409, description = "The email is taken", body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    Caller(who): Caller,
    ApiJson(b): ApiJson<CreateBody>,
) -> ApiResult {
    let u = s
        .service
        .create_user(
            &who,
            CreateUser {
                email: b.email,
                name: b.name,
            },
        )
        .await?;
    ok(StatusCode::CREATED, user_json(&u), Some("user created"))
}

/// Get a user
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = Envelope<UserJson>),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    legacy::path_id(&id, "user")?;
    let u = s.service.get_user(&who, &id).await?;
    ok(StatusCode::OK, user_json(&u), None)
}

/// Find a user by email, or list users
///
/// With `?email=` the answer's `data` is that user (404 if none); without it, a page of users
/// in creation order with `pagination` beside `data`.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    params(
        ("email" = Option<String>, Query, description = "Find the user with this email"),
        ("limit" = Option<i64>, Query, description = "Page size when listing"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The user (with `email`), or a page of users", body = Envelope<UserJson>),
        (status = 404, description = "No user has this email", body = ErrorBody),
    ))]
pub async fn find(
    State(s): State<AppState>,
    Caller(who): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    if let Some(email) = q.get("email") {
        let u = s
            .service
            .user_by_email(&who, email)
            .await?
            .ok_or_else(|| AppError::NotFound("user not found".into()))?;
        return ok(StatusCode::OK, user_json(&u), None);
    }
    let limit = super::tasks::parse_limit(&q)?;
    let page = s
        .service
        .list_users(&who, q.get("cursor").map(String::as_str), limit)
        .await?;
    let next = page
        .has_more
        .then(|| page.items.last().map(|u| u.id.clone()))
        .flatten();
    let data: Vec<_> = page.items.iter().map(user_json).collect();
    ok_page(
        data,
        UserPagination {
            has_more: page.has_more,
            next_cursor: next,
            total: page.total,
        },
    )
}

/// Update a user
#[utoipa::path(put, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The updated user", body = Envelope<UserJson>),
        (status = 400, description = "Invalid fields (neither given answers the user unchanged)", body = ErrorBody),
        (status = 403, description = "A user key changing its email (the admin changes emails)", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The email is taken (admin)", body = ErrorBody),
    ))]
pub async fn update(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateBody>,
) -> ApiResult {
    legacy::path_id(&id, "user")?;
    // Nothing to change answers the user as it is, as the Go server did.
    if b.email.is_none() && b.name.is_none() {
        let u = s.service.get_user(&who, &id).await?;
        return ok(StatusCode::OK, user_json(&u), Some("user updated"));
    }
    let u = s
        .service
        .update_user(
            &who,
            &id,
            UpdateUser {
                email: b.email,
                name: b.name,
            },
        )
        .await?;
    ok(StatusCode::OK, user_json(&u), Some("user updated"))
}

/// Delete a user
///
/// With the user's tasks and stored images.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Deleted (`data.deleted` false when there was no such user)", body = Envelope<DeletedUser>),
    ))]
pub async fn delete(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    // As on the Go server, deleting a user that is not there succeeds (`deleted` false).
    let deleted = if is_valid_id(&id) {
        match s.service.delete_user(&who, &id).await {
            Ok(()) => true,
            Err(AppError::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        }
    } else {
        false
    };
    ok(
        StatusCode::OK,
        DeletedUser { id, deleted },
        Some("user deleted"),
    )
}
