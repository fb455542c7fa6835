//! GraphQL over HTTP (`POST /graphql`, `GET /graphql?query=`), GraphiQL (`GET /graphql` in a
//! browser) and subscriptions over WebSocket (`/graphql/ws`, or an upgrade on `/graphql`) in both
//! `graphql-transport-ws` and the legacy `graphql-ws` subprotocols. `handlers` serves HTTP, `ws`
//! the WebSocket protocol, `build` makes the schemas; the resolvers are in `schema`. Every
//! document is measured by `budget` (through `parse_cache`) before it is validated, and runs on
//! the schema `executor` picks; `media` is GraphQL over HTTP's media types, `playground` GraphiQL.

pub mod budget;
mod build;
pub mod error;
mod executor;
mod follow;
pub mod handlers;
pub mod inputs;
pub mod loader;
pub mod media;
pub mod parse_cache;
pub mod playground;
pub mod schema;
pub mod types;
pub mod usage;
pub mod video;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

pub use build::{build_schema, input_check, sdl, AppSchema, Schemas};

use crate::state::AppState;

/// What GraphQL's handlers hold: the state every surface shares (the resolvers' context too),
/// the schemas built over it and the parsed documents of HTTP requests.
#[derive(Clone)]
pub struct Endpoint {
    pub state: AppState,
    schemas: Arc<Schemas>,
    documents: Arc<parse_cache::ParseCache>,
}

impl Endpoint {
    pub async fn new(state: AppState) -> Endpoint {
        Endpoint {
            schemas: Arc::new(Schemas::new(&state)),
            documents: Arc::new(parse_cache::ParseCache::new(
                input_check().await,
                budget::Limits::of(&state.config),
            )),
            state,
        }
    }
}

/// `/graphql` (HTTP, GraphiQL, or an upgrade), `/graphql/ws` and GraphiQL's files.
pub fn routes<S: Clone + Send + Sync + 'static>(endpoint: Endpoint) -> Router<S> {
    Router::new()
        .route(
            "/graphql",
            get(handlers::get_handler).post(handlers::post_handler),
        )
        .route("/graphql/ws", get(ws::ws_handler))
        .route(playground::ASSETS_PATH, get(playground::asset))
        .with_state(endpoint)
}
