//! Connections, over raw TCP against the real binary: one that never finishes its request
//! headers (nothing sent, a header cut short, the start of the h2 preface) or idles between
//! keep-alive requests is closed after `HEADER_READ_TIMEOUT`, and no more than `MAX_CONNECTIONS`
//! are served at once. The timeout is set short through the environment, as an operator would.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::process::{self, ServerProcess};

/// How long a test waits for something that must happen; only a broken server waits this long.
const PATIENCE: Duration = Duration::from_secs(20);

struct Server {
    addr: String,
    _process: ServerProcess,
    _dir: tempfile::TempDir,
}

async fn start(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut c, base) = process::command("serve", &std::env::temp_dir());
    c.env("DATA_DIR", dir.path());
    for (k, v) in env {
        c.env(k, v);
    }
    let process = ServerProcess::start((c, base), "/health").await;
    Server {
        addr: process.addr().to_string(),
        _process: process,
        _dir: dir,
    }
}

/// Waits for the server to close `s` (end of stream or reset); `false` if it stays open.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// One request on `s`, its response read whole (a `Content-Length` body).
async fn request(s: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(PATIENCE, async {
        loop {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().ok())
                    })
                    .flatten()
                    .unwrap_or(0);
                if body.len() >= len {
                    return text.into_owned();
                }
            }
        }
    })
    .await
    .expect("response in time")
}

/// Before: 300 such connections were all still open after 45 s (`axum::serve` ran hyper
/// without a timer, so its header timeout never fired).
#[tokio::test]
async fn connections_that_never_finish_their_headers_or_idle_are_closed() {
    let server = start(&[("HEADER_READ_TIMEOUT", "1s")]).await;
    let mut stalled = Vec::new();
    for sent in [
        &b""[..],
        b"GET /health HTTP/1.1\r\nHost: localhost\r\n",
        b"PRI * HTTP/2.0\r\n",
        b"P",
    ] {
        for _ in 0..25 {
            let mut s = TcpStream::connect(&server.addr).await.expect("connect");
            s.write_all(sent).await.expect("write");
            stalled.push((String::from_utf8_lossy(sent).into_owned(), s));
        }
    }
    // A keep-alive connection, served once, then idle.
    let mut idle = TcpStream::connect(&server.addr).await.expect("connect");
    assert!(request(&mut idle, "/health")
        .await
        .starts_with("HTTP/1.1 200"));
    stalled.push(("(after one request)".into(), idle));
    let waits = stalled
        .into_iter()
        .map(|(sent, mut s)| async move { (!closed_by_server(&mut s).await).then_some(sent) });
    let open: Vec<String> = futures::future::join_all(waits)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(open.is_empty(), "still open after {PATIENCE:?}: {open:?}");
    // Requests that are on time are served as before.
    let mut s = TcpStream::connect(&server.addr).await.expect("connect");
    assert!(request(&mut s, "/health").await.starts_with("HTTP/1.1 200"));
    assert!(request(&mut s, "/health").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn no_more_than_max_connections_are_served_at_once() {
    let server = start(&[("HEADER_READ_TIMEOUT", "30s"), ("MAX_CONNECTIONS", "8")]).await;
    // Seven idle connections and one that asks for the metrics: the cap is reached.
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    let mut probe = TcpStream::connect(&server.addr).await.expect("connect");
    let metrics = request(&mut probe, "/metrics").await;
    assert!(metrics.contains("http_connections_max 8"), "{metrics}");
    assert!(metrics.contains("http_connections_open 8"), "{metrics}");
    // A ninth waits in the backlog, unanswered...
    let mut ninth = TcpStream::connect(&server.addr).await.expect("connect");
    ninth
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ninth.read(&mut buf))
            .await
            .is_err(),
        "a ninth connection was served"
    );
    // ...until one of the eight closes.
    drop(held.pop());
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = ninth.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("served once a slot was free");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let metrics = request(&mut probe, "/metrics").await;
    assert!(
        metrics.contains("http_connections_at_limit_total"),
        "{metrics}"
    );
}

/// The `/metrics` counter `name` (0 while absent).
async fn counter(addr: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A subscriber that stops reading is dropped once a write to it has waited `WS_SEND_TIMEOUT`
/// (counted in `websocket_slow_closed_total`), and a subscriber that reads keeps getting every
/// task's completion meanwhile.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_and_slows_no_one() {
    use futures::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let s = start(&[("WS_SEND_TIMEOUT", "1s")]).await;
    let http = reqwest::Client::new();
    let user: serde_json::Value = http
        .post(format!("http://{}/api/v1/users", s.addr))
        .json(&json!({"email": format!("{}@example.com", crate::common::unique_name()), "name": "slow"}))
        .send()
        .await
        .expect("create user")
        .json()
        .await
        .expect("json");
    let user = user["data"]["id"].as_str().expect("user id").to_string();
    let query = "subscription($u: ID) { tasksUpdated(userId: $u) { id status prompt version } }";
    let subscribe = |id: usize| {
        let m = json!({"id": id.to_string(), "type": "subscribe",
            "payload": {"query": query, "variables": {"u": user}}});
        Message::Text(m.to_string().into())
    };

    // The stalled one: subscribed, then never read again.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket
        .connect(s.addr.parse().expect("addr"))
        .await
        .expect("connect");
    let mut req = format!("ws://{}/graphql/ws", s.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut stalled, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("handshake");
    let init = json!({"type": "connection_init", "payload": {}}).to_string();
    stalled
        .send(Message::Text(init.into()))
        .await
        .expect("init");
    let ack = stalled.next().await.expect("ack").expect("ack frame");
    assert!(ack.to_string().contains("connection_ack"), "{ack}");
    // The same subscription 100 times: every change is sent 100 times, so the kernel's buffers
    // fill after a few tasks.
    for id in 0..100 {
        stalled.send(subscribe(id)).await.expect("subscribe");
    }

    // The reading one follows the same tasks and records each one it hears of (their creation
    // is enough: the worker's pace is not what this is about).
    let mut reader = crate::common::WsClient::connect(
        &format!("http://{}", s.addr),
        "/graphql/ws",
        crate::common::Proto::TransportWs,
    )
    .await;
    reader.subscribe("all", query, json!({"u": user})).await;
    let heard = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let seen = heard.clone();
    let reading = tokio::spawn(async move {
        loop {
            if let crate::common::WsEvent::Next { data, .. } = reader.next_event().await {
                let id = data["tasksUpdated"]["id"].as_str().unwrap_or_default();
                seen.lock().expect("lock").insert(id.to_string());
            }
        }
    });

    let prompt = "a lighthouse at dawn, ".repeat(90);
    let mut ids = Vec::new();
    while counter(&s.addr, "websocket_slow_closed_total").await < 1.0 {
        assert!(ids.len() < 3000, "the stalled subscriber was never dropped");
        for _ in 0..25 {
            let r: serde_json::Value = http
                .post(format!("http://{}/api/v1/ai/image/task", s.addr))
                .json(&json!({"user_id": user, "prompt": prompt}))
                .send()
                .await
                .expect("create")
                .json()
                .await
                .expect("json");
            ids.push(r["data"]["id"].as_str().expect("task id").to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The server closed the stalled socket: what it had buffered, then the end.
    assert!(closed_by_server(stalled.get_mut()).await, "still open");
    // The reader heard of every task, the stall notwithstanding.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let missing = {
            let done = heard.lock().expect("lock");
            ids.iter().filter(|id| !done.contains(*id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} tasks never reached the reading subscriber",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reading.abort();
}
