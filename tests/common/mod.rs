//! Black-box harness: the real router on a random port, spoken to over HTTP and WebSocket.
#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use volcengine_ai_server::app::{self, Backends, Role, Running};
use volcengine_ai_server::config::Config;
use volcengine_ai_server::emulator::{self, Emulator, EmulatorConfig};

pub mod process;

/// Upper bound for anything a test waits for; only guards against hangs, never a timing claim.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// MongoDB and Redis addresses when the suites run on the distributed backends
/// (`TEST_BACKEND=distributed`, set by `scripts/test` after starting both servers).
pub fn distributed_env() -> Option<(String, String)> {
    if std::env::var("TEST_BACKEND").ok().as_deref() != Some("distributed") {
        return None;
    }
    let mongo =
        std::env::var("TEST_MONGO_URL").expect("TEST_BACKEND=distributed needs TEST_MONGO_URL");
    let redis =
        std::env::var("TEST_REDIS_URL").expect("TEST_BACKEND=distributed needs TEST_REDIS_URL");
    Some((mongo, redis))
}

/// The Ark emulator on a free loopback port: its handle (stats, settings), its URL, and the token
/// that stops it.
pub async fn start_emulator(
    cfg: EmulatorConfig,
) -> (Emulator, String, tokio_util::sync::CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = tokio_util::sync::CancellationToken::new();
    let emu = emulator::serve(cfg, listener, stop.clone())
        .await
        .expect("emulator");
    (emu, url, stop)
}

/// A name no other test uses: the database and Redis key prefix of one test server.
pub fn unique_name() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// The backends this run tests: embedded by default, MongoDB + Redis with `TEST_BACKEND=distributed`
/// (a database and key prefix of its own per server, so tests run in parallel).
pub async fn backends(cfg: &mut Config) -> Backends {
    match distributed_env() {
        None => Backends::embedded(cfg).expect("embedded backends"),
        Some((mongo, redis)) => {
            let name = unique_name();
            cfg.mongo_url = Some(mongo.clone());
            cfg.mongo_database = name.clone();
            cfg.redis_url = Some(redis.clone());
            cfg.redis_prefix = name;
            Backends::distributed(cfg, &mongo, &redis)
                .await
                .expect("distributed backends")
        }
    }
}

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    /// What it was started with (the backends' database and key prefix included), so that
    /// `start_again` opens the same data.
    pub cfg: Config,
}

/// A configuration for tests: temp data folder, fast sandbox, short intervals. It reads nothing
/// from the process environment.
pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        port: 0,
        sandbox_latency: Duration::from_millis(100),
        reconcile_interval: Duration::from_millis(200),
        sweep_interval: Duration::from_millis(100),
        retry_base_delay: Duration::from_millis(20),
        retry_max_delay: Duration::from_millis(100),
        subscription_resync: Duration::from_secs(2),
        worker_concurrency: 8,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let backends = backends(&mut cfg).await;
        TestServer::start_on(cfg, backends, dir).await
    }

    /// As `start_with`, with `PUBLIC_BASE_URL` the server's own address (bound before it
    /// starts): a deployment its provider can reach, which gets callbacks.
    pub async fn start_public(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        cfg.public_base_url = Some(format!("http://{addr}"));
        let backends = backends(&mut cfg).await;
        TestServer::start_listening(cfg, backends, dir, listener).await
    }

    pub async fn start_on(cfg: Config, backends: Backends, dir: tempfile::TempDir) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        TestServer::start_listening(cfg, backends, dir, listener).await
    }

    async fn start_listening(
        cfg: Config,
        backends: Backends,
        dir: tempfile::TempDir,
        listener: TcpListener,
    ) -> TestServer {
        let running = app::start_with(cfg.clone(), Some(listener), Role::Serve, backends)
            .await
            .expect("start");
        let base = format!("http://{}", running.addr.expect("api address"));
        TestServer {
            base,
            http: reqwest::Client::new(),
            running: Some(running),
            dir,
            cfg,
        }
    }

    /// Stops the server and starts a new one on the same data (data folder, or MongoDB database
    /// and Redis prefix), on a new port: a restart.
    pub async fn start_again(&mut self) {
        self.stop().await;
        let cfg = self.cfg.clone();
        let backends = match (&cfg.mongo_url, &cfg.redis_url) {
            (Some(mongo), Some(redis)) => Backends::distributed(&cfg, mongo, redis)
                .await
                .expect("distributed backends"),
            _ => Backends::embedded(&cfg).expect("embedded backends"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let running = app::start_with(cfg, Some(listener), Role::Serve, backends)
            .await
            .expect("start again");
        self.base = format!("http://{}", running.addr.expect("api address"));
        self.running = Some(running);
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// A GraphQL request over HTTP; returns the whole response body.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self
            .post("/graphql", json!({"query": query, "variables": variables}))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn create_user(&self, email: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/users",
                json!({"email": email, "name": "Test User"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["data"]["id"].as_str().expect("user id").to_string()
    }

    pub async fn create_task(&self, user_id: &str, prompt: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/ai/image/task",
                json!({"prompt": prompt, "user_id": user_id}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["data"]["task_id"]
            .as_str()
            .expect("task id")
            .to_string()
    }

    /// Polls the legacy result route, as old clients do, until the task is terminal: 202 while
    /// it is not, then 200 (completed, cancelled) or 500 (failed), the task in `data`.
    pub async fn wait_terminal(&self, task_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self
                .get(&format!("/api/v1/ai/image/result/{task_id}"))
                .await;
            assert!(matches!(status, 200 | 202 | 500), "{status} {body}");
            let st = body["data"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if matches!(st.as_str(), "completed" | "failed" | "cancelled") {
                return body["data"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task_id} still {st}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The task (as the detail route has it) once the provider has it: its provider task id
    /// stored (video and Jimeng tasks).
    pub async fn wait_submitted(&self, task_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (_, body) = self.get(&format!("/api/v1/tasks/{task_id}")).await;
            if body["data"]["provider_task_id"].is_string() {
                return body["data"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never submitted: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads the task's own status (the detail route; the result route says `processing` for
    /// any unfinished task) until it is `want`.
    pub async fn wait_status(&self, task_id: &str, want: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (_, body) = self.get(&format!("/api/v1/tasks/{task_id}")).await;
            if body["data"]["status"] == want {
                return body["data"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task_id} never became {want}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stats_total(&self) -> u64 {
        let (_, body) = self.get("/api/v1/queue/stats").await;
        body["data"]["total"].as_u64().expect("total")
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Proto {
    /// `graphql-transport-ws` (the `graphql-ws` library, Apollo 3.x).
    TransportWs,
    /// The legacy `graphql-ws` (subscriptions-transport-ws).
    LegacyWs,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::TransportWs => "graphql-transport-ws",
            Proto::LegacyWs => "graphql-ws",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    Next { id: String, data: Value },
    Error { id: String, payload: Value },
    Complete { id: String },
}

pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    proto: Proto,
}

impl WsClient {
    pub async fn connect(base: &str, path: &str, proto: Proto) -> WsClient {
        WsClient::connect_with(base, path, proto, json!({}))
            .await
            .unwrap_or_else(|code| panic!("socket refused with {code:?}"))
    }

    /// Opens a socket and sends `connection_init` with `payload`; `Err` carries the close code
    /// when the server refuses the connection.
    pub async fn connect_with(
        base: &str,
        path: &str,
        proto: Proto,
        payload: Value,
    ) -> Result<WsClient, Option<u16>> {
        let mut c = WsClient::open(base, path, proto).await;
        c.send(json!({"type": "connection_init", "payload": payload}))
            .await;
        loop {
            let msg = tokio::time::timeout(PATIENCE, c.ws.next())
                .await
                .expect("ws message in time");
            match msg {
                None | Some(Err(_)) => return Err(None),
                Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(&t).expect("json frame");
                    match m["type"].as_str() {
                        Some("connection_ack") => return Ok(c),
                        // The legacy protocol says why before it closes.
                        Some("ka") | Some("connection_error") => continue,
                        other => panic!("expected connection_ack, got {other:?}: {m}"),
                    }
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// A raw socket with the subprotocol negotiated and nothing sent yet.
    pub async fn open(base: &str, path: &str, proto: Proto) -> WsClient {
        let url = format!("{}{}", base.replacen("http", "ws", 1), path);
        let mut req = url.into_client_request().expect("ws request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            proto.name().parse().expect("header"),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(proto.name())
        );
        WsClient { ws, proto }
    }

    /// The close code the server ends the socket with (skipping any other frames).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("ws message in time");
            match msg {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Every message until the server closes the socket, and the close code.
    pub async fn until_closed(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut got = Vec::new();
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("ws message in time");
            match msg {
                None | Some(Err(_)) => return (got, None),
                Some(Ok(Message::Close(f))) => return (got, f.map(|f| u16::from(f.code))),
                Some(Ok(Message::Text(t))) => {
                    got.push(serde_json::from_str(&t).expect("json frame"));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits up to `within` for a frame; `None` when nothing came.
    pub async fn quiet_for(&mut self, within: Duration) -> Option<Value> {
        tokio::time::timeout(within, self.recv_json()).await.ok()
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("ws message in time")
                .expect("ws open")
                .expect("ws frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("json frame"),
                Message::Ping(p) => {
                    let _ = self.ws.send(Message::Pong(p)).await;
                }
                Message::Close(f) => panic!("socket closed: {f:?}"),
                _ => {}
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = match self.proto {
            Proto::TransportWs => "subscribe",
            Proto::LegacyWs => "start",
        };
        self.send(
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}),
        )
        .await;
    }

    pub async fn next_event(&mut self) -> WsEvent {
        loop {
            let m = self.recv_json().await;
            let id = m["id"].as_str().unwrap_or_default().to_string();
            match m["type"].as_str().unwrap_or_default() {
                "next" | "data" => {
                    let payload = &m["payload"];
                    if payload.get("errors").is_some_and(|e| !e.is_null()) {
                        return WsEvent::Error {
                            id,
                            payload: payload.clone(),
                        };
                    }
                    return WsEvent::Next {
                        id,
                        data: payload["data"].clone(),
                    };
                }
                "error" => {
                    return WsEvent::Error {
                        id,
                        payload: m["payload"].clone(),
                    }
                }
                "complete" => return WsEvent::Complete { id },
                "ping" => self.send(json!({"type": "pong"})).await,
                _ => {}
            }
        }
    }
}

pub const TASK_UPDATED: &str = "subscription($id: ID!) { taskUpdated(id: $id) { id status version attempts result { imageUrl } error { code message retryable } } }";
