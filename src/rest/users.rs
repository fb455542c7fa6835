use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::envelope::{ok, ok_with, ApiJson, ApiResult};
use super::Caller;
use crate::domain::User;
use crate::error::AppError;
use crate::http::AppState;
use crate::service::{CreateUser, UpdateUser};

#[derive(Deserialize)]
pub struct CreateBody {
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
pub struct UpdateBody {
    email: Option<String>,
    name: Option<String>,
}

#[derive(Serialize)]
pub struct UserJson<'a> {
    id: &'a str,
    email: &'a str,
    name: &'a str,
    created_at: String,
    updated_at: String,
}

pub fn user_json(u: &User) -> UserJson<'_> {
    UserJson {
        id: &u.id,
        email: &u.email,
        name: &u.name,
        created_at: crate::http::rfc3339(u.created_at),
        updated_at: crate::http::rfc3339(u.updated_at),
    }
}

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

pub async fn get(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let u = s.service.get_user(&who, &id).await?;
    ok(StatusCode::OK, user_json(&u), None)
}

/// `?email=` finds one user; without it, lists users (`?limit=&cursor=`).
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
    ok_with(
        data,
        json!({"pagination": {"has_more": page.has_more, "next_cursor": next, "total": page.total}}),
    )
}

pub async fn update(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateBody>,
) -> ApiResult {
    if b.email.is_none() && b.name.is_none() {
        return Err(AppError::invalid("body", "give email and/or name").into());
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

pub async fn delete(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    s.service.delete_user(&who, &id).await?;
    ok(StatusCode::OK, json!({"id": id}), Some("user deleted"))
}
