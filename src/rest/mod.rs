//! The legacy REST routes of the older Go server, with their exact JSON shapes
//! (`rest-compat.md`). Handlers translate and call the service; no business rule lives here.

pub mod envelope;
pub mod openapi;
pub mod tasks;
pub mod users;

use axum::routing::{get, post};
use axum::Router;

use crate::http::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", post(users::create).get(users::find))
        .route(
            "/api/v1/users/{id}",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/api/v1/ai/image/task", post(tasks::create_image))
        .route("/api/v1/ai/image/result/{task_id}", get(tasks::get))
        .route("/api/v1/ai/tasks", post(tasks::create_generic))
        .route("/api/v1/ai/tasks/{task_id}", get(tasks::get_ai_task))
        .route(
            "/api/v1/tasks/{task_id}",
            get(tasks::get_task).delete(tasks::delete),
        )
        .route("/api/v1/tasks/user/{user_id}", get(tasks::list_for_user))
        .route("/api/v1/tasks/{task_id}/cancel", post(tasks::cancel))
        .route("/api/v1/tasks/{task_id}/retry", post(tasks::retry))
        .route("/api/v1/queue/stats", get(tasks::queue_stats))
}
