//! GraphQL over HTTP (`POST /graphql`, `GET /graphql?query=`), GraphiQL (`GET /graphql` in a
//! browser) and subscriptions over WebSocket (`/graphql/ws`, or an upgrade on `/graphql`) in both
//! `graphql-transport-ws` and the legacy `graphql-ws` subprotocols.

pub mod error;
mod follow;
pub mod inputs;
pub mod loader;
pub mod parse_cache;
pub mod schema;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_graphql::http::{GraphiQLSource, WebSocketProtocols, WsMessage, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::{Data, Schema};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt};

use crate::auth::Principal;
use crate::config::Config;
use crate::error::AppError;
use crate::http::AppState;
use crate::service::Service;
use loader::UserLoader;
use schema::{Mutation, Query, Subscription};

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// tungstenite's default read buffer is 128 KiB and it zeroes all of it on each read, so every
/// open socket kept 128 KiB resident (1.3 GB for 10,000 subscribers). Clients send a few small
/// messages (an init, a subscribe of a few hundred bytes, pongs); the buffer still grows for a
/// larger frame, which then takes a few more reads.
const SOCKET_READ_BUFFER: usize = 1024;

/// What resolvers need, shared by every request.
pub struct Ctx {
    pub service: Arc<Service>,
    /// Base of image URLs handed out.
    pub public_base: String,
    /// How long a subscription waits for an event before re-reading the store.
    pub resync: Duration,
    /// Open WebSocket connections per API key (this process).
    pub sockets: Mutex<HashMap<String, usize>>,
    pub max_sockets_per_key: usize,
    pub max_subscriptions: usize,
    /// Parsed documents of HTTP requests.
    pub documents: parse_cache::ParseCache,
}

pub fn build_schema(ctx: Option<Arc<Ctx>>, cfg: &Config) -> AppSchema {
    build_schema_validating(ctx, cfg, async_graphql::ValidationMode::Strict)
}

/// The schemas of one process: `strict` validates everything; `checked` runs documents that
/// passed strict validation before, with variables `InputCheck` accepted, and validates only
/// what can still differ (the limits, which `Fast` mode keeps).
pub struct Schemas {
    pub strict: AppSchema,
    pub checked: AppSchema,
}

impl Schemas {
    pub fn new(ctx: &Arc<Ctx>, cfg: &Config) -> Schemas {
        Schemas {
            strict: build_schema(Some(ctx.clone()), cfg),
            checked: build_schema_validating(
                Some(ctx.clone()),
                cfg,
                async_graphql::ValidationMode::Fast,
            ),
        }
    }
}

/// The input types `InputCheck` needs, read by introspection from a schema that allows it
/// (whatever `GRAPHQL_INTROSPECTION` says for clients).
pub async fn input_check() -> inputs::InputCheck {
    inputs::InputCheck::of(&build_schema(None, &Config::default())).await
}

fn build_schema_validating(
    ctx: Option<Arc<Ctx>>,
    cfg: &Config,
    mode: async_graphql::ValidationMode,
) -> AppSchema {
    let mut b = Schema::build(Query, Mutation, Subscription)
        .validation_mode(mode)
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

/// The caller of an HTTP GraphQL request, or the error answer to send instead.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    let value = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(v) => Some(v),
            Err(_) => {
                return Err(gql_error_response(
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
        .auth
        .authenticate(value)
        .await
        .map_err(|e| gql_error_response(StatusCode::UNAUTHORIZED, e))
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
        (status = 400, description = "The body is not a GraphQL request", body = Object),
        (status = 413, description = "Body too large", body = Object),
    ))]
pub async fn post_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let who = match caller(&state, &headers).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
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
    Json(with_codes(run(&state, req, who).await)).into_response()
}

/// Runs an HTTP request's operation, on the schema that validates only what this request
/// still needs (see `Schemas`); a document seen for the first time is marked once it passed.
async fn run(
    state: &AppState,
    mut req: async_graphql::Request,
    who: Principal,
) -> async_graphql::Response {
    let validation = state.gql.documents.prepare(&mut req);
    run_prepared(state, req, who, validation).await
}

/// `run` for a request `ParseCache::prepare` has seen.
async fn run_prepared(
    state: &AppState,
    req: async_graphql::Request,
    who: Principal,
    validation: parse_cache::Validation,
) -> async_graphql::Response {
    let (schema, first) = match validation {
        parse_cache::Validation::Done => (&state.schemas.checked, None),
        parse_cache::Validation::Needed => (&state.schemas.strict, Some(req.query.clone())),
    };
    let resp = schema
        .execute(req.data(request_data(state)).data(who))
        .await;
    // Errors of parsing, validation and limits carry no path; a resolver's do.
    if let Some(query) = first {
        if resp.errors.iter().all(|e| !e.path.is_empty()) {
            state.gql.documents.validated(&query);
        }
    }
    resp
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
        let who = match caller(&state, req.headers()).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let mut req = match async_graphql::http::parse_query_string(q) {
            Ok(r) => r,
            Err(e) => {
                return gql_error_response(
                    StatusCode::BAD_REQUEST,
                    AppError::InvalidJson(e.to_string()),
                )
            }
        };
        // The document from the parse cache (or parsed once here, then kept on the request).
        let validation = state.gql.documents.prepare(&mut req);
        // A GET must not change anything (it can be triggered by a link or an <img>). A
        // document that does not parse is left to the execution, which reports the error.
        if req.parsed_query().is_ok_and(has_mutation) {
            return gql_error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                AppError::invalid("query", "mutations must be sent with POST"),
            );
        }
        return Json(with_codes(run_prepared(&state, req, who, validation).await)).into_response();
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

/// Counts one connection's subscriptions against `WS_MAX_SUBSCRIPTIONS`.
pub struct SubscriptionSlots {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// One subscription's place on its connection, given back when its stream is dropped.
pub struct SubscriptionSlot(Arc<AtomicUsize>);

impl SubscriptionSlot {
    /// `None` outside a WebSocket connection (nothing to count).
    pub fn take(c: &async_graphql::Context<'_>) -> Result<Option<SubscriptionSlot>, AppError> {
        let Some(slots) = c.data_opt::<SubscriptionSlots>() else {
            return Ok(None);
        };
        if slots.used.fetch_add(1, Ordering::SeqCst) >= slots.max {
            slots.used.fetch_sub(1, Ordering::SeqCst);
            return Err(AppError::RateLimited {
                retry_after_secs: 1,
                reason: format!(
                    "this connection already has {} subscriptions, the most allowed",
                    slots.max
                ),
            });
        }
        Ok(Some(SubscriptionSlot(slots.used.clone())))
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's place in its key's `WS_MAX_CONNECTIONS_PER_KEY`.
struct SocketSlot {
    ctx: Arc<Ctx>,
    key: String,
}

impl SocketSlot {
    /// The admin (an operator's tooling, or anyone while auth is off) is not capped.
    fn take(ctx: &Arc<Ctx>, who: &Principal) -> Option<Option<SocketSlot>> {
        if who.is_admin() {
            return Some(None);
        }
        let key = who.label();
        let mut map = ctx.sockets.lock().ok()?;
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= ctx.max_sockets_per_key {
            return None;
        }
        *n += 1;
        Some(Some(SocketSlot {
            ctx: ctx.clone(),
            key,
        }))
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.ctx.sockets.lock() {
            if let Some(n) = map.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.key);
                }
            }
        }
    }
}

/// How long a new socket may take to send `connection_init` (graphql-ws closes with 4408).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn ws_handler(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let protocol = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        });
    let Some(protocol) = protocol else {
        return (
            StatusCode::BAD_REQUEST,
            "expected Sec-WebSocket-Protocol graphql-transport-ws or graphql-ws",
        )
            .into_response();
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .on_upgrade(move |socket| serve_socket(state, socket, protocol))
}

/// A socket past its handshake.
struct Admitted {
    /// The `connection_init` frame, replayed into the GraphQL session.
    first: Vec<u8>,
    who: Principal,
    /// Kept to check the key again while the socket stays open.
    credential: Option<String>,
    _slot: Option<SocketSlot>,
}

/// How often an open socket's user key is checked again, so a revoked key does not keep
/// receiving events on sockets it opened before.
const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// What a socket's first message was, when it is not a usable `connection_init`.
enum Refusal {
    /// Close code and reason (graphql-transport-ws); the legacy protocol gets a
    /// `connection_error` message first.
    Close(u16, String),
    /// The client went away.
    Gone,
}

/// Authenticates the `connection_init` payload before the GraphQL session starts, so a socket
/// without a valid key never reaches a resolver: 4401 for a subscribe before init, 4403 for a
/// bad key, 4408 for no init in time, 4429 for too many sockets on one key.
async fn admit_socket(
    state: &AppState,
    ctx: &Arc<Ctx>,
    socket: &mut WebSocket,
) -> Result<Admitted, Refusal> {
    let first = loop {
        match tokio::time::timeout(INIT_TIMEOUT, socket.recv()).await {
            Err(_) => {
                return Err(Refusal::Close(
                    4408,
                    "Connection initialisation timeout".into(),
                ))
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return Err(Refusal::Gone)
            }
            Ok(Some(Ok(Message::Text(t)))) => break t.as_bytes().to_vec(),
            Ok(Some(Ok(Message::Binary(b)))) => break b.to_vec(),
            Ok(Some(Ok(_))) => continue,
        }
    };
    let msg: serde_json::Value = serde_json::from_slice(&first)
        .map_err(|_| Refusal::Close(4400, "Invalid message received".into()))?;
    match msg.get("type").and_then(|t| t.as_str()) {
        Some("connection_init") => {}
        Some("subscribe") | Some("start") => {
            return Err(Refusal::Close(4401, "Unauthorized".into()))
        }
        _ => return Err(Refusal::Close(4400, "expected connection_init".into())),
    }
    let payload = msg.get("payload");
    let credential = ["authorization", "Authorization", "apiKey"]
        .iter()
        .find_map(|k| payload.and_then(|p| p.get(*k)).and_then(|v| v.as_str()));
    let who = state
        .service
        .auth
        .authenticate(credential)
        .await
        .map_err(|e| match e {
            AppError::Unauthenticated(m) => Refusal::Close(4403, format!("Forbidden: {m}")),
            other => {
                other.log_internal();
                Refusal::Close(1011, other.public_message())
            }
        })?;
    let slot = SocketSlot::take(ctx, &who).ok_or_else(|| {
        Refusal::Close(
            4429,
            format!(
                "Too many connections: at most {} per API key",
                ctx.max_sockets_per_key
            ),
        )
    })?;
    Ok(Admitted {
        first,
        who,
        credential: credential.map(str::to_string),
        _slot: slot,
    })
}

async fn serve_socket(state: AppState, mut socket: WebSocket, protocol: WebSocketProtocols) {
    let _open = crate::observability::GaugeGuard::new("websocket_connections");
    let ctx = state.gql.clone();
    let admitted = match admit_socket(&state, &ctx, &mut socket).await {
        Ok(ok) => ok,
        Err(Refusal::Gone) => return,
        Err(Refusal::Close(code, reason)) => {
            tracing::info!(code, reason = %reason, "websocket refused");
            if protocol == WebSocketProtocols::SubscriptionsTransportWS {
                let err =
                    serde_json::json!({"type": "connection_error", "payload": {"message": reason}});
                let _ = socket.send(Message::Text(err.to_string().into())).await;
            }
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
            return;
        }
    };
    let mut data = Data::default();
    data.insert(request_data(&state));
    data.insert(admitted.who.clone());
    data.insert(SubscriptionSlots {
        used: Arc::new(AtomicUsize::new(0)),
        max: ctx.max_subscriptions,
    });
    let (mut sink, stream) = socket.split();
    let input = futures::stream::iter([admitted.first.clone()]).chain(
        stream
            .take_while(|m| {
                futures::future::ready(matches!(m, Ok(m) if !matches!(m, Message::Close(_))))
            })
            .filter_map(|m| {
                futures::future::ready(match m {
                    Ok(Message::Text(t)) => Some(t.as_bytes().to_vec()),
                    Ok(Message::Binary(b)) => Some(b.to_vec()),
                    _ => None,
                })
            }),
    );
    let mut session =
        async_graphql::http::WebSocket::new(state.schemas.strict.clone(), input, protocol)
            .connection_data(data);
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    loop {
        let msg = tokio::select! {
            msg = session.next() => match msg {
                Some(m) => m,
                None => break,
            },
            _ = recheck.tick(), if !admitted.who.is_admin() => {
                let still = state.service.auth.authenticate(admitted.credential.as_deref()).await;
                if let Err(AppError::Unauthenticated(m)) = still {
                    tracing::info!(who = %admitted.who.label(), "closing a socket whose key no longer works");
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: 4403,
                            reason: format!("Forbidden: {m}").into(),
                        })))
                        .await;
                    break;
                }
                continue;
            }
        };
        // Whatever else is ready goes out in the same write (a terminal state's `next` and the
        // `complete` after it): one system call instead of one per message.
        let mut ended = false;
        let mut frames = vec![frame(msg)];
        while frames.len() < 16 {
            match futures::FutureExt::now_or_never(session.next()) {
                Some(Some(m)) => frames.push(frame(m)),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let sent = async {
            for f in frames {
                sink.feed(f).await?;
            }
            sink.flush().await
        };
        if sent.await.is_err() || ended {
            break;
        }
    }
}

fn frame(msg: WsMessage) -> Message {
    match msg {
        WsMessage::Text(t) => Message::Text(t.into()),
        // The session's own closes: a second init (4429) or a bad frame.
        WsMessage::Close(code, reason) => Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schema.graphql` is the GraphQL documentation, so every type, field, input field and enum
    /// value we define must say what it is. Built-in types (`__*`, scalars) and the connection
    /// and edge types async-graphql generates (whose description it does not let us set) are
    /// exempt as types; their fields are not.
    #[tokio::test]
    async fn every_type_and_field_has_a_description() {
        let schema = build_schema(None, &Config::default());
        let q = "{ __schema { types { name kind description
            fields { name description } inputFields { name description }
            enumValues { name description } } } }";
        let resp = schema.execute(q).await;
        assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        let data = resp.data.into_json().expect("introspection JSON");
        let mut missing = Vec::new();
        for t in data["__schema"]["types"].as_array().expect("types") {
            let name = t["name"].as_str().unwrap_or_default();
            let builtin = name.starts_with("__")
                || matches!(name, "String" | "Int" | "Float" | "Boolean" | "ID");
            if builtin {
                continue;
            }
            let generated = name.ends_with("Connection") || name.ends_with("Edge");
            if !generated && t["description"].as_str().unwrap_or_default().is_empty() {
                missing.push(name.to_string());
            }
            for list in ["fields", "inputFields", "enumValues"] {
                for f in t[list].as_array().into_iter().flatten() {
                    if f["description"].as_str().unwrap_or_default().is_empty() {
                        missing.push(format!("{name}.{}", f["name"].as_str().unwrap_or("?")));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
