//! The legacy REST routes of the older Go server, with their exact JSON shapes
//! (`rest-compat.md`). Handlers translate and call the service; no business rule lives here.

pub mod envelope;
pub mod legacy;
pub mod prefer;
pub mod stream;
pub mod task_lists;
pub mod tasks;
pub mod usage;
pub mod users;
pub mod video;
pub mod webhooks;

pub mod keys;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::auth::Principal;
use crate::error::AppError;
use crate::state::AppState;
use envelope::ApiError;

/// The authenticated caller of a request (`Authorization: Bearer <key>`); a missing or bad key
/// is answered 401 in the REST envelope before the handler runs.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let value = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                AppError::Unauthenticated("the Authorization header is not readable text".into())
            })?),
        };
        Ok(Caller(s.service.authenticate(value).await?))
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", post(users::create).get(users::find))
        .route(
            "/api/v1/users/{id}",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/api/v1/users/{id}/usage", get(usage::get))
        .route("/api/v1/ai/image/task", post(tasks::create_image))
        .route("/api/v1/ai/video/task", post(video::create_video))
        .route(
            "/api/v1/callbacks/video/{task_id}/{token}",
            post(video::video_callback),
        )
        .route("/api/v1/ai/image/result/{task_id}", get(tasks::get))
        .route(
            "/api/v1/ai/tasks",
            post(tasks::create_generic).get(task_lists::list_latest),
        )
        .route("/api/v1/ai/task/result/{task_id}", get(tasks::poll_latest))
        .route("/api/v1/ai/task/{task_id}", delete(tasks::delete_latest))
        .route("/api/v1/ai/tasks/{task_id}", get(tasks::get_ai_task))
        .route(
            "/api/v1/tasks/{task_id}",
            get(tasks::get_task).delete(tasks::delete),
        )
        .route(
            "/api/v1/tasks/user/{user_id}",
            get(task_lists::list_for_user),
        )
        .route("/api/v1/tasks/{task_id}/cancel", post(tasks::cancel))
        .route("/api/v1/tasks/{task_id}/stream", get(stream::stream))
        .route("/api/v1/tasks/{task_id}/retry", post(tasks::retry))
        .route("/api/v1/tasks/{task_id}/webhooks", get(webhooks::list))
        .route(
            "/api/v1/tasks/{task_id}/webhooks/redeliver",
            post(webhooks::redeliver),
        )
        .route(
            "/api/v1/tasks/{task_id}/webhooks/{delivery_id}/redeliver",
            post(webhooks::redeliver_one),
        )
        .route("/api/v1/queue/stats", get(tasks::queue_stats))
        .route(
            "/api/v1/users/{id}/api-keys",
            post(keys::create).get(keys::list),
        )
        .route("/api/v1/api-keys", get(keys::list_own))
        .route("/api/v1/api-keys/{key_id}", delete(keys::revoke))
}
