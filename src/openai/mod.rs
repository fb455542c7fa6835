//! The OpenAI-compatible images API (`/v1/images/generations`, `/v1/images/edits`,
//! `/v1/models`): OpenAI's request and response shapes over the same durable tasks as REST and
//! GraphQL, so that the official `openai` SDKs and the tools built on them work unchanged. The
//! handlers translate and call the service; the business rules stay in `service` and `domain`.

pub mod edits;
pub mod error;
pub mod images;
pub mod models;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::routing::{any, get, post};
use axum::Router;

use crate::auth::Principal;
use crate::domain::api_key::KEY_PREFIX;
use crate::state::AppState;
use error::OpenAiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images/generations", post(images::generations))
        .route("/v1/images/generations/{task_id}", get(images::poll))
        .route("/v1/images/edits", post(edits::edits))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{model}", get(models::get))
        .route("/v1/{*rest}", any(not_found))
}

/// The caller, from `Authorization: Bearer <key>` as the SDKs send it: the same keys, isolation,
/// quotas and rate limits as REST. While auth is off any key is accepted, since the SDKs refuse
/// to run without one: a key that is not one of ours acts as the admin, as a request without a
/// key does elsewhere (one of ours still acts as its user, or is refused when revoked).
pub struct Key(pub Principal);

impl FromRequestParts<AppState> for Key {
    type Rejection = OpenAiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, OpenAiError> {
        let value = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                OpenAiError::from(crate::error::AppError::Unauthenticated(
                    "the Authorization header is not readable text".into(),
                ))
            })?),
        };
        if !s.service.auth_enabled() {
            let ours = value
                .and_then(|v| v.trim().strip_prefix("Bearer "))
                .is_some_and(|k| k.trim().starts_with(KEY_PREFIX));
            if !ours {
                return Ok(Key(Principal::Admin));
            }
        }
        Ok(Key(s.service.authenticate(value).await?))
    }
}

/// The request body, read within `REQUEST_TIMEOUT` and `MAX_BODY_BYTES` (these routes are
/// outside the router's request timeout, which would cut the wait for the task).
pub async fn read_body(s: &AppState, req: Request) -> Result<bytes::Bytes, OpenAiError> {
    let limit = s.config.max_body_bytes;
    let read = axum::body::to_bytes(req.into_body(), limit);
    match tokio::time::timeout(s.config.request_timeout, read).await {
        Err(_) => Err(OpenAiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "the request body was not received in time",
            None,
            Some("request_timeout"),
        )
        .not_retryable()),
        Ok(Err(_)) => Err(crate::error::AppError::PayloadTooLarge { limit }.into()),
        Ok(Ok(b)) => Ok(b),
    }
}

async fn not_found(req: Request) -> OpenAiError {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "no route for {} {}; this server implements /v1/images/generations, \
             /v1/images/edits and /v1/models",
            req.method(),
            req.uri().path()
        ),
        None,
        Some("unknown_url"),
    )
}
