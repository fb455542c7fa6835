//! The OpenAPI 3.1 document of the REST surface, generated from the handlers' `#[utoipa::path]`
//! attributes and the response types they serialise, and served at `/openapi.json`. GraphQL is
//! documented by `schema.graphql`; only its HTTP endpoint appears here.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "volcengine-ai-server REST API",
        description = "The legacy REST routes of the older server (unchanged shapes), operations \
endpoints and stored images. Successful answers are `{success: true, data, message?}`; errors \
are `{success: false, error, message, code, details?}`. Live updates: server-sent events at \
`/api/v1/tasks/{task_id}/stream`, or GraphQL subscription `taskUpdated` at `/graphql/ws` (see \
`schema.graphql`)."
    ),
    paths(
        crate::rest::users::create,
        crate::rest::users::find,
        crate::rest::users::get,
        crate::rest::users::update,
        crate::rest::users::delete,
        crate::rest::usage::get,
        crate::rest::tasks::create_image,
        crate::rest::video::create_video,
        crate::rest::video::video_callback,
        crate::rest::tasks::get,
        crate::rest::tasks::create_generic,
        crate::rest::tasks::get_ai_task,
        crate::rest::tasks::get_task,
        crate::rest::tasks::delete,
        crate::rest::task_lists::list_for_user,
        crate::rest::tasks::poll_latest,
        crate::rest::task_lists::list_latest,
        crate::rest::tasks::delete_latest,
        crate::rest::tasks::cancel,
        crate::rest::tasks::retry,
        crate::rest::stream::stream,
        crate::rest::webhooks::list,
        crate::rest::webhooks::redeliver,
        crate::rest::webhooks::redeliver_one,
        crate::rest::tasks::queue_stats,
        super::health,
        super::ready,
        super::image,
        super::video::video,
        crate::observability::render,
        crate::graphql::handlers::post_handler,
        crate::rest::keys::create,
        crate::rest::keys::list,
        crate::rest::keys::list_own,
        crate::rest::keys::revoke,
        crate::openai::images::generations,
        crate::openai::images::poll,
        crate::openai::edits::edits,
        crate::openai::models::list,
        crate::openai::models::get,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "users", description = "Users own tasks"),
        (name = "tasks", description = "Image generation tasks: create, poll, list, cancel, retry, delete"),
        (name = "images", description = "Generated images, stored by this server"),
        (name = "operations", description = "Health, readiness, metrics"),
        (name = "graphql", description = "The GraphQL endpoint (schema in schema.graphql)"),
        (name = "keys", description = "API keys: the admin makes them; owners list and revoke"),
        (name = "openai", description = "OpenAI-compatible images API over the same tasks (errors are `{error: {message, type, param, code}}`)"),
    )
)]
pub struct ApiDoc;

/// Every route takes `Authorization: Bearer <key>` (the admin key or a user's key); without
/// `ADMIN_API_KEY` configured the server runs on loopback with auth off.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: the admin key or a user's key"))
                    .build(),
            ),
        );
    }
}

/// The document as JSON. Built per request: it is small and the route is rarely hit, so a cache
/// would only add state.
pub fn document() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}

/// `GET /openapi.json`.
pub async fn spec() -> Response {
    match document() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => crate::rest::envelope::ApiError::from(crate::error::AppError::internal(
            "OpenAPI document",
            e,
        ))
        .into_response(),
    }
}
