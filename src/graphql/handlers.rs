//! GraphQL over HTTP: `POST /graphql`, `GET /graphql?query=` (never a mutation) and GraphiQL
//! for a browser's `GET /graphql`; an upgrade on `/graphql` goes to the WebSocket protocol.
//! Answers are written in the media type the client accepts (`media.rs`).

use async_graphql::dataloader::DataLoader;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::loader::UserLoader;
use super::{error, executor, media, parse_cache, playground, Endpoint};
use crate::auth::Principal;
use crate::error::AppError;
use crate::state::AppState;

pub(super) fn request_data(state: &AppState) -> DataLoader<UserLoader> {
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

fn gql_error_response(media: media::Media, status: StatusCode, e: AppError) -> Response {
    media::refuse(
        media,
        status,
        error::to_gql(e).into_server_error(Default::default()),
    )
}

/// The caller of an HTTP GraphQL request, or the error answer to send instead.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    media: media::Media,
) -> Result<Principal, Response> {
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(v) => Some(v),
            Err(_) => {
                return Err(gql_error_response(
                    media,
                    StatusCode::UNAUTHORIZED,
                    AppError::Unauthenticated(
                        "the Authorization header is not readable text".into(),
                    ),
                ))
            }
        },
    };
    state
        .service
        .authenticate(value)
        .await
        .map_err(|e| gql_error_response(media, StatusCode::UNAUTHORIZED, e))
}

/// GraphQL
///
/// Queries and mutations; the schema is `schema.graphql` (or introspection). Subscriptions run
/// over WebSocket at `/graphql/ws` (`graphql-transport-ws` or `graphql-ws`). A browser's
/// `GET /graphql` opens GraphiQL.
#[utoipa::path(post, path = "/graphql", tag = "graphql",
    request_body(content = Object, description = "`{query, variables?, operationName?}`"),
    responses(
        (status = 200, description = "`{data, errors?}`; errors carry `extensions.code`", body = Object),
        (status = 400, description = "The body is not a GraphQL request; with `Accept: application/graphql-response+json`, also a document that does not parse or validate (`{errors}`, no `data`)", body = Object),
        (status = 413, description = "Body too large", body = Object),
        (status = 415, description = "The body is not declared `Content-Type: application/json`", body = Object),
    ))]
pub async fn post_handler(
    State(gql): State<Endpoint>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let media = media::Media::negotiate(&headers);
    let who = match caller(&gql.state, &headers, media).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if let Err(why) = media::json_body(&headers) {
        return gql_error_response(
            media,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::InvalidJson(why),
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return gql_error_response(
                media,
                StatusCode::PAYLOAD_TOO_LARGE,
                AppError::PayloadTooLarge {
                    limit: gql.state.config.max_body_bytes,
                },
            )
        }
        Err(_) => {
            return gql_error_response(
                media,
                StatusCode::BAD_REQUEST,
                AppError::InvalidJson("the request body could not be read".into()),
            )
        }
    };
    let req: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return gql_error_response(
                media,
                StatusCode::BAD_REQUEST,
                AppError::InvalidJson(e.to_string()),
            )
        }
    };
    media::respond(media, &with_codes(run(&gql, req, who).await))
}

/// Runs an HTTP request's operation, on the schema that validates only what this request
/// still needs (see `Schemas`); a document seen for the first time is marked once it passed.
/// A document over the expansion budget is refused before any of it.
async fn run(
    gql: &Endpoint,
    mut req: async_graphql::Request,
    who: Principal,
) -> async_graphql::Response {
    match gql.documents.prepare(&mut req) {
        Ok(p) => run_prepared(gql, req, who, p).await,
        Err(e) => async_graphql::Response::from_errors(vec![e]),
    }
}

/// `run` for a request `ParseCache::prepare` has admitted.
async fn run_prepared(
    gql: &Endpoint,
    req: async_graphql::Request,
    who: Principal,
    prepared: parse_cache::Prepared,
) -> async_graphql::Response {
    let (schema, first) = executor::schema_for(&gql.schemas, prepared);
    let first = first.then(|| req.query.clone());
    let resp = schema
        .execute(req.data(request_data(&gql.state)).data(who))
        .await;
    // Errors of parsing, validation and limits carry no path; a resolver's do.
    if let Some(query) = first {
        if resp.errors.iter().all(|e| !e.path.is_empty()) {
            gql.documents.validated(&query);
        }
    }
    resp
}

/// GraphiQL for browsers, a query for `?query=`, a subscription socket for an upgrade.
pub async fn get_handler(State(gql): State<Endpoint>, req: Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return super::ws::ws_handler(State(gql), req).await;
    }
    if let Some(q) = req.uri().query().filter(|q| q.contains("query=")) {
        let media = media::Media::negotiate(req.headers());
        let who = match caller(&gql.state, req.headers(), media).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let mut req = match async_graphql::http::parse_query_string(q) {
            Ok(r) => r,
            Err(e) => {
                return gql_error_response(
                    media,
                    StatusCode::BAD_REQUEST,
                    AppError::InvalidJson(e.to_string()),
                )
            }
        };
        // The document from the parse cache (or parsed once here, then kept on the request),
        // refused here when it is over the expansion budget.
        let prepared = match gql.documents.prepare(&mut req) {
            Ok(p) => p,
            Err(e) => {
                let refused = async_graphql::Response::from_errors(vec![e]);
                return media::respond(media, &with_codes(refused));
            }
        };
        // A GET must not change anything (it can be triggered by a link or an <img>). A
        // document that does not parse is left to the execution, which reports the error.
        if req.parsed_query().is_ok_and(has_mutation) {
            return gql_error_response(
                media,
                StatusCode::METHOD_NOT_ALLOWED,
                AppError::invalid("query", "mutations must be sent with POST"),
            );
        }
        let resp = with_codes(run_prepared(&gql, req, who, prepared).await);
        return media::respond(media, &resp);
    }
    playground::page()
}

/// Whether a document holds a mutation (GET must not run one, whichever operation is named).
fn has_mutation(doc: &async_graphql::parser::types::ExecutableDocument) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    match &doc.operations {
        DocumentOperations::Single(op) => op.node.ty == OperationType::Mutation,
        DocumentOperations::Multiple(ops) => {
            ops.values().any(|op| op.node.ty == OperationType::Mutation)
        }
    }
}
