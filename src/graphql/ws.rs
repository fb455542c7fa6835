//! Subscriptions over WebSocket (`/graphql/ws`, or an upgrade on `/graphql`) in both the
//! `graphql-transport-ws` and the legacy `graphql-ws` subprotocols: the handshake authenticates
//! `connection_init` before the GraphQL session starts, sockets and subscriptions are counted
//! against their limits, an open socket's key is checked again while it stays open, and a revocation
//! of its key (from any process, over the event bus) closes it with 4403 at once (`Revocations`).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, WsMessage, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::handlers::request_data;
use super::Endpoint;
use crate::auth::{key_label, Principal};
use crate::error::AppError;
use crate::events::{Control, ControlHandler};
use crate::service::Service;
use crate::state::{AppState, OpenSocket, Sockets};

/// tungstenite's default read buffer is 128 KiB and it zeroes all of it on each read, so every
/// open socket kept 128 KiB resident (1.3 GB for 10,000 subscribers). Clients send a few small
/// messages (an init, a subscribe of a few hundred bytes, pongs); the buffer still grows for a
/// larger frame, which then takes a few more reads.
const SOCKET_READ_BUFFER: usize = 1024;

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

/// A connection's place in its key's `WS_MAX_CONNECTIONS_PER_KEY`, where a revocation of the
/// key finds it.
struct SocketSlot {
    state: AppState,
    key: String,
    id: u64,
    revoked: mpsc::Receiver<oneshot::Sender<()>>,
}

static SOCKET_IDS: AtomicU64 = AtomicU64::new(0);

impl SocketSlot {
    /// The admin (an operator's tooling, or anyone while auth is off) is not capped.
    fn take(state: &AppState, who: &Principal) -> Option<Option<SocketSlot>> {
        if who.is_admin() {
            return Some(None);
        }
        let key = who.label();
        let mut map = state.sockets.lock().ok()?;
        let open = map.entry(key.clone()).or_default();
        if open.len() >= state.config.ws_max_connections_per_key {
            return None;
        }
        let id = SOCKET_IDS.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = mpsc::channel(1);
        open.push(OpenSocket { id, revoke });
        Some(Some(SocketSlot {
            state: state.clone(),
            key,
            id,
            revoked,
        }))
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.state.sockets.lock() {
            if let Some(open) = map.get_mut(&self.key) {
                open.retain(|s| s.id != self.id);
                if open.is_empty() {
                    map.remove(&self.key);
                }
            }
        }
    }
}

/// A revocation's `done`, for a socket of a user key; never for the admin's.
async fn revoked(slot: &mut Option<SocketSlot>) -> oneshot::Sender<()> {
    match slot {
        Some(s) => match s.revoked.recv().await {
            Some(done) => done,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// This process's part of a key revocation (from the event bus, whichever process revoked it):
/// the key leaves the authenticator's cache and its sockets are closed with 4403, each once its
/// close frame is written, so nothing is delivered on them after the revocation returns.
pub struct Revocations {
    /// Weak: the service holds the event bus, which holds this.
    service: Weak<Service>,
    sockets: Sockets,
}

impl Revocations {
    pub fn new(state: &AppState) -> Revocations {
        Revocations {
            service: Arc::downgrade(&state.service),
            sockets: state.sockets.clone(),
        }
    }
}

#[async_trait::async_trait]
impl ControlHandler for Revocations {
    async fn handle(&self, msg: &Control) {
        let Control::KeyRevoked { key_id, hash } = msg;
        if let Some(service) = self.service.upgrade() {
            service.forget_key(hash);
        }
        let senders: Vec<_> = match self.sockets.lock() {
            Ok(map) => map
                .get(&key_label(key_id))
                .map(|open| open.iter().map(|s| s.revoke.clone()).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let closes = senders.into_iter().map(|revoke| async move {
            let (done, closed) = oneshot::channel();
            if revoke.send(done).await.is_ok() {
                let _ = closed.await;
            }
        });
        let n = closes.len();
        if tokio::time::timeout(CLOSE_WITHIN, futures::future::join_all(closes))
            .await
            .is_err()
        {
            tracing::warn!(key_id, "a revoked key's socket did not close in time");
        }
        if n > 0 {
            tracing::info!(key_id, sockets = n, "closed a revoked key's sockets");
        }
    }
}

/// How long a new socket may take to send `connection_init` (graphql-ws closes with 4408).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn ws_handler(State(gql): State<Endpoint>, req: Request) -> Response {
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
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &gql).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .on_upgrade(move |socket| serve_socket(gql, socket, protocol))
}

/// A socket past its handshake.
struct Admitted {
    /// The `connection_init` frame, replayed into the GraphQL session.
    first: Vec<u8>,
    who: Principal,
    /// Kept to check the key again while the socket stays open.
    credential: Option<String>,
    slot: Option<SocketSlot>,
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
async fn admit_socket(state: &AppState, socket: &mut WebSocket) -> Result<Admitted, Refusal> {
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
        .authenticate(credential)
        .await
        .map_err(|e| match e {
            AppError::Unauthenticated(m) => Refusal::Close(4403, format!("Forbidden: {m}")),
            other => {
                other.log_internal();
                Refusal::Close(1011, other.public_message())
            }
        })?;
    let slot = SocketSlot::take(state, &who).ok_or_else(|| {
        Refusal::Close(
            4429,
            format!(
                "Too many connections: at most {} per API key",
                state.config.ws_max_connections_per_key
            ),
        )
    })?;
    Ok(Admitted {
        first,
        who,
        credential: credential.map(str::to_string),
        slot,
    })
}

async fn serve_socket(gql: Endpoint, mut socket: WebSocket, protocol: WebSocketProtocols) {
    let _open = crate::observability::GaugeGuard::new("websocket_connections");
    let state = &gql.state;
    let mut admitted = match admit_socket(state, &mut socket).await {
        Ok(ok) => ok,
        Err(Refusal::Gone) => {
            // A client that closed before its init gets its close answered (tungstenite queued
            // the reply when the frame arrived; closing the sink sends it).
            let _ = tokio::time::timeout(CLOSE_WITHIN, socket.close()).await;
            return;
        }
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
    data.insert(request_data(state));
    data.insert(admitted.who.clone());
    data.insert(SubscriptionSlots {
        used: Arc::new(AtomicUsize::new(0)),
        max: state.config.ws_max_subscriptions,
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
    let executor = super::executor::Guarded {
        schemas: gql.schemas.clone(),
        documents: gql.documents.clone(),
    };
    let mut session =
        async_graphql::http::WebSocket::new(executor, input, protocol).connection_data(data);
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    loop {
        let msg = tokio::select! {
            msg = session.next() => match msg {
                Some(m) => m,
                None => break,
            },
            done = revoked(&mut admitted.slot) => {
                tracing::info!(who = %admitted.who.label(), "closing a socket whose key was revoked");
                let close = sink.send(Message::Close(Some(CloseFrame {
                    code: 4403,
                    reason: "Forbidden: API key revoked".into(),
                })));
                let _ = tokio::time::timeout(CLOSE_WITHIN, close).await;
                let _ = done.send(());
                break;
            }
            _ = recheck.tick(), if !admitted.who.is_admin() => {
                let still = state.service.authenticate(admitted.credential.as_deref()).await;
                if let Err(AppError::Unauthenticated(m)) = still {
                    tracing::info!(who = %admitted.who.label(), "closing a socket whose key no longer works");
                    let close = sink.send(Message::Close(Some(CloseFrame {
                        code: 4403,
                        reason: format!("Forbidden: {m}").into(),
                    })));
                    let _ = tokio::time::timeout(CLOSE_WITHIN, close).await;
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
        match send_within(&mut sink, frames, state.config.ws_send_timeout).await {
            Sent::Yes if !ended => {}
            Sent::Yes | Sent::Failed => break,
            Sent::Stalled => {
                tracing::info!(who = %admitted.who.label(), "dropping a websocket whose client stopped reading");
                return;
            }
        }
    }
    // Bounded: a client that stopped reading must not hold the task (and its socket) for good.
    let _ = tokio::time::timeout(CLOSE_WITHIN, close_handshake(&mut sink)).await;
}

enum Sent {
    Yes,
    Failed,
    /// Not written within the time allowed: the client stopped reading.
    Stalled,
}

/// Writes `frames` in one flush, waiting at most `within` for the client to take them. A client
/// that stopped reading fills the socket's buffers; its subscriptions fall behind their bounded
/// event channels meanwhile (a gap, then a store re-read), so nothing piles up, and dropping it
/// frees the socket and its slots for good.
async fn send_within(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    frames: Vec<Message>,
    within: Duration,
) -> Sent {
    let sent = async {
        for f in frames {
            sink.feed(f).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(within, sent).await {
        Ok(Ok(())) => Sent::Yes,
        Ok(Err(_)) => Sent::Failed,
        Err(_) => {
            metrics::counter!("websocket_slow_closed_total").increment(1);
            Sent::Stalled
        }
    }
}

/// How long the close handshake may take to be written.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Ends the close handshake when the session is over. After a client's close frame tungstenite
/// has queued the reply (echoing the client's code) and refuses to send more, so the `send` fails
/// and `close` flushes the reply; when the session ended otherwise (a legacy
/// `connection_terminate`, our own close), the `send` closes normally (1000) or does nothing.
/// Without this the reply was never written and clients saw 1006.
async fn close_handshake(sink: &mut futures::stream::SplitSink<WebSocket, Message>) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    let _ = sink.close().await;
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
