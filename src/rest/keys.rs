//! API key routes (not in the old server): the admin makes keys for users; a key's owner or the
//! admin lists and revokes them. The secret appears once, in the create answer.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ok, parse_json, ApiResult, Envelope, ErrorBody};
use super::Caller;
use crate::domain::{rfc3339, ApiKey};
use crate::state::AppState;

/// Optional label of a new key.
#[derive(Deserialize, Default, ToSchema)]
pub struct CreateBody {
    name: Option<String>,
}

/// An API key without its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyJson<'a> {
    id: &'a str,
    user_id: &'a str,
    name: &'a str,
    prefix: &'a str,
    created_at: String,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
    active: bool,
}

pub fn key_json(k: &ApiKey) -> KeyJson<'_> {
    KeyJson {
        id: &k.id,
        user_id: &k.user_id,
        name: &k.name,
        prefix: &k.prefix,
        created_at: rfc3339(k.created_at),
        last_used_at: k.last_used_at.map(rfc3339),
        revoked_at: k.revoked_at.map(rfc3339),
        active: k.is_active(),
    }
}

/// Create an API key (admin)
///
/// The answer's `data.key` is the secret, shown only this once; send it as
/// `Authorization: Bearer <key>`.
#[utoipa::path(post, path = "/api/v1/users/{id}/api-keys", tag = "keys",
    params(("id" = String, Path, description = "User id")),
    request_body(content = Option<CreateBody>, description = "Optional `{name}`"),
    responses(
        (status = 201, description = "The key with its secret in `data.key`", body = Envelope<KeyJson>),
        (status = 403, description = "Not the admin key", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(user_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    // The body is optional: `{"name": …}` or nothing at all.
    let name = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_json::<CreateBody>(&body)?.name
    };
    let (key, secret) = s
        .service
        .create_api_key(&who, &user_id, name.as_deref())
        .await?;
    let mut data = serde_json::to_value(key_json(&key)).unwrap_or_default();
    data["key"] = serde_json::Value::String(secret);
    ok(
        StatusCode::CREATED,
        data,
        Some("API key created; the key is shown only this once"),
    )
}

/// List a user's API keys
#[utoipa::path(get, path = "/api/v1/users/{id}/api-keys", tag = "keys",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Keys, oldest first, without secrets", body = Envelope<Vec<KeyJson>>),
        (status = 403, description = "Another user's keys", body = ErrorBody),
    ))]
pub async fn list(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(user_id): Path<String>,
) -> ApiResult {
    let keys = s.service.list_api_keys(&who, Some(&user_id)).await?;
    ok(
        StatusCode::OK,
        keys.iter().map(key_json).collect::<Vec<_>>(),
        None,
    )
}

/// List the caller's own API keys
///
/// For a user key; the admin names a user instead.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "keys",
    responses(
        (status = 200, description = "Keys, oldest first, without secrets", body = Envelope<Vec<KeyJson>>),
        (status = 400, description = "The admin key has no keys of its own", body = ErrorBody),
    ))]
pub async fn list_own(State(s): State<AppState>, Caller(who): Caller) -> ApiResult {
    let keys = s.service.list_api_keys(&who, None).await?;
    ok(
        StatusCode::OK,
        keys.iter().map(key_json).collect::<Vec<_>>(),
        None,
    )
}

/// Revoke an API key
///
/// The admin any key, a user its own. Requests with it are refused from then on.
#[utoipa::path(delete, path = "/api/v1/api-keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The revoked key", body = Envelope<KeyJson>),
        (status = 404, description = "No such key (or another user's)", body = ErrorBody),
    ))]
pub async fn revoke(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(key_id): Path<String>,
) -> ApiResult {
    let key = s.service.revoke_api_key(&who, &key_id).await?;
    ok(StatusCode::OK, key_json(&key), Some("API key revoked"))
}
