//! GraphQL over HTTP (`POST /graphql`, `GET /graphql?query=`), GraphiQL (`GET /graphql` in a
//! browser) and subscriptions over WebSocket (`/graphql/ws`, or an upgrade on `/graphql`) in both
//! `graphql-transport-ws` and the legacy `graphql-ws` subprotocols.

pub mod error;
pub mod loader;
pub mod schema;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use async_graphql::http::{GraphiQLSource, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::{Data, Schema};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use crate::config::Config;
use crate::error::AppError;
use crate::http::AppState;
use crate::service::Service;
use loader::UserLoader;
use schema::{Mutation, Query, Subscription};

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// tungstenite's default read buffer is 128 KiB and it zeroes all of it on each read, so every
/// open socket kept 128 KiB resident (1.3 GB for 10,000 subscribers). Clients send a few small
/// messages; the buffer still grows for a larger frame.
const SOCKET_READ_BUFFER: usize = 4096;

/// What resolvers need, shared by every request.
pub struct Ctx {
    pub service: Arc<Service>,
    /// Base of image URLs handed out.
    pub public_base: String,
    /// How long a subscription waits for an event before re-reading the store.
    pub resync: Duration,
}

pub fn build_schema(ctx: Option<Arc<Ctx>>, cfg: &Config) -> AppSchema {
    let mut b = Schema::build(Query, Mutation, Subscription)
        .limit_depth(cfg.graphql_max_depth)
        .limit_complexity(cfg.graphql_max_complexity);
    if !cfg.graphql_introspection {
        b = b.disable_introspection();
    }
    if let Some(c) = ctx {
        b = b.data(c);
    }
    b.finish()
}

/// The SDL checked in as `schema.graphql`.
pub fn sdl() -> String {
    build_schema(None, &Config::default()).sdl()
}

fn request_data(state: &AppState) -> DataLoader<UserLoader> {
    DataLoader::new(UserLoader(state.service.clone()), tokio::spawn)
}

/// Errors async-graphql raises itself (parse, validation, limits) carry no code; give them the
/// contract's `BAD_USER_INPUT`.
fn with_codes(mut resp: async_graphql::Response) -> async_graphql::Response {
    for e in &mut resp.errors {
        let has_code = e
            .extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some());
        if !has_code {
            e.extensions
                .get_or_insert_with(Default::default)
                .set("code", "BAD_USER_INPUT");
        }
    }
    resp
}

fn gql_error_response(status: StatusCode, e: AppError) -> Response {
    let err = error::to_gql(e).into_server_error(Default::default());
    (
        status,
        Json(serde_json::json!({ "data": null, "errors": [err] })),
    )
        .into_response()
}

pub async fn post_handler(
    State(state): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return gql_error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                AppError::PayloadTooLarge {
                    limit: state.config.max_body_bytes,
                },
            )
        }
        Err(_) => {
            return gql_error_response(
                StatusCode::BAD_REQUEST,
                AppError::InvalidJson("the request body could not be read".into()),
            )
        }
    };
    let req: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return gql_error_response(
                StatusCode::BAD_REQUEST,
                AppError::InvalidJson(e.to_string()),
            )
        }
    };
    let resp = state.schema.execute(req.data(request_data(&state))).await;
    Json(with_codes(resp)).into_response()
}

/// GraphiQL for browsers, a query for `?query=`, a subscription socket for an upgrade.
pub async fn get_handler(State(state): State<AppState>, req: Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return ws_handler(State(state), req).await;
    }
    if let Some(q) = req.uri().query().filter(|q| q.contains("query=")) {
        let parsed = async_graphql::http::parse_query_string(q);
        return match parsed {
            Ok(r) => {
                let resp = state.schema.execute(r.data(request_data(&state))).await;
                Json(with_codes(resp)).into_response()
            }
            Err(e) => gql_error_response(
                StatusCode::BAD_REQUEST,
                AppError::InvalidJson(e.to_string()),
            ),
        };
    }
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .title("volcengine-ai-server")
            .finish(),
    )
    .into_response()
}

pub async fn ws_handler(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &state).await {
        Ok(p) => p,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "expected Sec-WebSocket-Protocol graphql-transport-ws or graphql-ws",
            )
                .into_response()
        }
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .on_upgrade(move |stream| async move {
            let _open = crate::observability::GaugeGuard::new("websocket_connections");
            let mut data = Data::default();
            data.insert(request_data(&state));
            GraphQLWebSocket::new(stream, schema, protocol)
                .with_data(data)
                .serve()
                .await
        })
}
