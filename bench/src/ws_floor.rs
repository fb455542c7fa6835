//! The delivery floor of `subscribe`: a bare WebSocket server (axum, like the service)
//! that speaks just enough `graphql-transport-ws` for the bench's subscribers, holds each
//! subscription (as many on a socket as its client asks for) on a broadcast channel of its
//! task, and on `POST /burst` completes its tasks evenly over the given spread, sending every subscriber of a task the same pre-rendered
//! `next` and `complete`. It runs as a child process like the service, and the same subscribers
//! connect to it, so what it measures is what this machine, its loopback TCP and the bench's own
//! clients cost: no GraphQL, no store, no worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{BoxStream, SelectAll};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// A task's terminal state (the `data` of a `next` message), rendered once for its subscribers.
type Update = Arc<str>;

#[derive(Default)]
struct Floor {
    tasks: Mutex<HashMap<String, broadcast::Sender<Update>>>,
}

impl Floor {
    fn subscribe(&self, task: &str) -> Option<broadcast::Receiver<Update>> {
        let mut tasks = self.tasks.lock().ok()?;
        Some(
            tasks
                .entry(task.to_string())
                .or_insert_with(|| broadcast::channel(4).0)
                .subscribe(),
        )
    }
}

#[derive(Deserialize)]
struct Burst {
    /// The tasks complete one after another, evenly over this many milliseconds.
    spread_ms: u64,
}

/// Where the floor listens (the bench that starts it sets both).
#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, env = "PORT")]
    port: u16,
}

/// The hidden `delivery-floor` subcommand.
pub async fn run(a: FloorArgs) -> Result<(), String> {
    serve(SocketAddr::new(a.host, a.port)).await
}

/// Serves on `addr` until the process is killed.
async fn serve(addr: SocketAddr) -> Result<(), String> {
    let floor = Arc::new(Floor::default());
    let app = Router::new()
        .route("/ready", get(|| async { "ready" }))
        .route("/graphql/ws", get(upgrade))
        .route("/burst", post(burst))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    // As the service does.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("serve: {e}"))
}

async fn upgrade(
    State(floor): State<Arc<Floor>>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    ws.protocols(["graphql-transport-ws"])
        // As the service does (`SOCKET_READ_BUFFER`), so that both hold sockets alike.
        .read_buffer_size(1024)
        .on_upgrade(move |socket| serve_socket(floor, socket))
}

async fn next_text(socket: &mut WebSocket) -> Option<Value> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// A subscription's updates, tagged with its id.
fn tagged(
    id: String,
    updates: broadcast::Receiver<Update>,
) -> BoxStream<'static, (Arc<str>, Update)> {
    let id: Arc<str> = id.into();
    futures::stream::unfold((id, updates), |(id, mut updates)| async move {
        let update = updates.recv().await.ok()?;
        Some(((id.clone(), update), (id, updates)))
    })
    .boxed()
}

/// A subscribe message's id and task, if it is one.
fn subscription(m: &Value) -> Option<(String, String)> {
    if m["type"] != "subscribe" {
        return None;
    }
    Some((
        m["id"].as_str()?.to_string(),
        m["payload"]["variables"]["id"].as_str()?.to_string(),
    ))
}

async fn serve_socket(floor: Arc<Floor>, mut socket: WebSocket) {
    let Some(init) = next_text(&mut socket).await else {
        return;
    };
    if init["type"] != "connection_init" {
        return;
    }
    let ack = Message::Text(r#"{"type":"connection_ack"}"#.into());
    if socket.send(ack).await.is_err() {
        return;
    }
    // The subscriptions of this socket, as many as its client asks for.
    let mut subscriptions = SelectAll::new();
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            Some((id, update)) = subscriptions.next(), if !subscriptions.is_empty() => {
                let next = format!(r#"{{"id":"{id}","type":"next","payload":{{"data":{update}}}}}"#);
                let complete = format!(r#"{{"id":"{id}","type":"complete"}}"#);
                let sent = async {
                    sink.feed(Message::Text(next.into())).await?;
                    sink.feed(Message::Text(complete.into())).await?;
                    sink.flush().await
                };
                if sent.await.is_err() {
                    return;
                }
            }
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Some((id, task)) = serde_json::from_str(t.as_str())
                        .ok()
                        .and_then(|m: Value| subscription(&m))
                    else {
                        continue;
                    };
                    let Some(updates) = floor.subscribe(&task) else { return };
                    // The service answers a subscription with the task's current state first.
                    let first = format!(
                        r#"{{"id":"{id}","type":"next","payload":{{"data":{{"taskUpdated":{{"id":"{task}","status":"PROCESSING","version":2,"updatedAt":"{}"}}}}}}}}"#,
                        now()
                    );
                    if sink.send(Message::Text(first.into())).await.is_err() {
                        return;
                    }
                    subscriptions.push(tagged(id, updates));
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn burst(State(floor): State<Arc<Floor>>, Json(b): Json<Burst>) -> StatusCode {
    let tasks: Vec<(String, broadcast::Sender<Update>)> = match floor.tasks.lock() {
        Ok(t) => t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR,
    };
    let n = tasks.len().max(1) as u32;
    let spread = Duration::from_millis(b.spread_ms);
    let start = tokio::time::Instant::now();
    tokio::spawn(async move {
        for (k, (task, tx)) in tasks.into_iter().enumerate() {
            tokio::time::sleep_until(start + spread * k as u32 / n).await;
            let update = format!(
                r#"{{"taskUpdated":{{"id":"{task}","status":"COMPLETED","version":3,"updatedAt":"{}"}}}}"#,
                now()
            );
            let _ = tx.send(update.into());
        }
    });
    StatusCode::ACCEPTED
}
