//! Webhooks end to end, on the backends this run tests: a real HTTP receiver on this machine
//! that fails the first deliveries and checks every signature with the Standard Webhooks
//! library; the retries carry the same `webhook-id`; targets in forbidden ranges are refused;
//! video tasks (`video.rs`) take a webhook as image tasks do.

mod crash;
mod delivery_log;
mod video;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::common::{TestServer, PATIENCE};
use volcengine_ai_server::config::Secret;

/// 32 bytes, base64.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2SLnSIgULnU=";

#[derive(Clone, Debug)]
struct Received {
    id: String,
    body: Value,
    /// Checked against `SECRET`.
    verified: bool,
    answered: u16,
    headers: HeaderMap,
    raw: Bytes,
}

impl Received {
    /// Whether the Standard Webhooks library accepts the request under `secret`.
    fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .expect("secret")
            .verify(&self.raw, &self.headers)
            .is_ok()
    }
}

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    /// Requests answered 500 before the receiver starts accepting (changeable while it runs).
    fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    fn seen(&self) -> Vec<Received> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let verifier = standardwebhooks::Webhook::new(SECRET).expect("secret");
    // The library wants http 1 headers; axum's are the same type.
    let verified = verifier.verify(&body, &headers).is_ok();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut seen = r.seen.lock().expect("lock");
    let answered = if seen.len() < r.fail_first.load(Ordering::SeqCst) {
        500
    } else {
        204
    };
    seen.push(Received {
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
        answered,
        headers,
        raw: body,
    });
    StatusCode::from_u16(answered).expect("status")
}

async fn start_receiver(fail_first: usize) -> (String, Receiver) {
    let r = Receiver {
        fail_first: Arc::new(AtomicUsize::new(fail_first)),
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), r)
}

async fn server(allow_private: bool) -> TestServer {
    TestServer::start_with(|c| {
        c.webhooks.secret = Some(Secret::from(SECRET));
        c.webhooks.retry_base = Duration::from_millis(50);
        c.webhooks.allow_private = allow_private;
    })
    .await
}

/// Waits until the receiver has accepted (2xx) `n` requests.
async fn accepted(r: &Receiver, n: usize) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = r.seen();
        let ok = seen.iter().filter(|s| s.answered == 204).count();
        if ok >= n {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {ok} of {n} events accepted: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_signed_retried_with_the_same_id_and_delivered() {
    let (url, receiver) = start_receiver(2).await;
    let mut s = server(true).await;
    let user = s.create_user("hooks@example.com").await;
    let (status, body) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "a cat", "user_id": user, "webhook": url}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let task_id = body["data"]["task_id"].as_str().expect("id").to_string();
    s.wait_terminal(&task_id).await;

    let seen = accepted(&receiver, 2).await;
    assert!(seen.iter().all(|r| r.verified), "a bad signature: {seen:?}");
    // The two failed requests were retried under their own ids until accepted.
    let failed: Vec<_> = seen.iter().filter(|r| r.answered == 500).collect();
    assert_eq!(failed.len(), 2);
    for f in &failed {
        assert!(
            seen.iter().any(|r| r.id == f.id && r.answered == 204),
            "{} never retried to success: {seen:?}",
            f.id
        );
    }
    let ok: Vec<_> = seen.iter().filter(|r| r.answered == 204).collect();
    assert_eq!(ok.len(), 2, "each event accepted once: {seen:?}");
    assert_ne!(ok[0].id, ok[1].id);
    let by_type = |t: &str| {
        ok.iter()
            .find(|r| r.body["type"] == t)
            .unwrap_or_else(|| panic!("no {t}: {seen:?}"))
    };
    let started = by_type("task.started");
    let completed = by_type("task.completed");
    assert_eq!(started.body["data"]["task_id"], task_id.as_str());
    assert_eq!(started.body["data"]["status"], "processing");
    assert_eq!(completed.body["data"]["status"], "completed");
    assert!(completed.body["data"]["result"]["image_url"].is_string());
    assert!(completed.body["timestamp"].is_string());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_sends_only_the_events_asked_for() {
    let (url, receiver) = start_receiver(0).await;
    let mut s = server(true).await;
    let user = s.create_user("filter@example.com").await;
    let (status, body) = s
        .post(
            "/api/v1/ai/tasks",
            json!({"type": "image_generation", "input": {"prompt": "a dog", "user_id": user},
                   "webhook": url, "webhook_events_filter": ["completed"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let task_id = body["data"]["task_id"].as_str().expect("id").to_string();
    s.wait_terminal(&task_id).await;
    let seen = accepted(&receiver, 1).await;
    // A start event would be written before the completion and delivered alongside it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen_after = receiver.seen();
    assert_eq!(seen_after.len(), seen.len(), "{seen_after:?}");
    assert_eq!(seen_after.len(), 1);
    assert_eq!(seen_after[0].body["type"], "task.completed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_in_forbidden_ranges_and_bad_fields_are_refused_at_create() {
    let mut s = server(false).await;
    let user = s.create_user("ssrf@example.com").await;
    for (webhook, filter, field) in [
        (json!("http://127.0.0.1:9/hook"), Value::Null, "webhook"),
        (json!("http://localhost:8080/hook"), Value::Null, "webhook"),
        (
            json!("http://169.254.169.254/latest/meta-data/"),
            Value::Null,
            "webhook",
        ),
        (json!("http://10.0.0.7/hook"), Value::Null, "webhook"),
        (json!("http://[::1]/hook"), Value::Null, "webhook"),
        (
            json!("http://[::ffff:127.0.0.1]/hook"),
            Value::Null,
            "webhook",
        ),
        (json!("http://0.0.0.0/hook"), Value::Null, "webhook"),
        (json!("ftp://example.com/hook"), Value::Null, "webhook"),
        (json!("not a url"), Value::Null, "webhook"),
        (
            json!("https://example.com/hook"),
            json!(["finished"]),
            "webhook_events_filter",
        ),
    ] {
        let mut req = json!({"prompt": "x", "user_id": user, "webhook": webhook});
        if !filter.is_null() {
            req["webhook_events_filter"] = filter;
        }
        let (status, body) = s.post("/api/v1/ai/image/task", req).await;
        assert_eq!(status, 400, "{webhook}: {body}");
        assert_eq!(body["code"], "VALIDATION_FAILED", "{body}");
        let fields = body["details"].to_string();
        assert!(fields.contains(field), "{webhook}: {body}");
    }
    assert_eq!(s.stats_total().await, 0, "nothing was created");
    s.stop().await;
}

const GQL_CREATE: &str =
    "mutation($input: CreateImageTaskInput!) { createImageTask(input: $input) \
    { id status webhookDeliveries { id } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_creates_take_a_webhook_and_its_filter() {
    let (url, receiver) = start_receiver(0).await;
    let mut s = server(true).await;
    let user = s.create_user("gql-hooks@example.com").await;
    let g = s
        .gql(
            GQL_CREATE,
            json!({"input": {"prompt": "a gql hook", "userId": user, "webhook": url,
                             "webhookEventsFilter": ["COMPLETED"]}}),
        )
        .await;
    let id = g["data"]["createImageTask"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{g}"))
        .to_string();
    s.wait_terminal(&id).await;
    let seen = accepted(&receiver, 1).await;
    // A start event would be written before the completion and delivered alongside it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen_after = receiver.seen();
    assert_eq!(seen_after.len(), seen.len(), "{seen_after:?}");
    assert_eq!(seen_after[0].body["type"], "task.completed");
    assert_eq!(seen_after[0].body["data"]["task_id"], id.as_str());
    assert!(seen_after[0].verified);
    s.stop().await;

    // Without WEBHOOK_ALLOW_PRIVATE a loopback target is refused, naming the field.
    let mut s = server(false).await;
    let user = s.create_user("gql-ssrf@example.com").await;
    let g = s
        .gql(
            GQL_CREATE,
            json!({"input": {"prompt": "x", "userId": user, "webhook": url}}),
        )
        .await;
    assert_eq!(
        g["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{g}"
    );
    assert_eq!(g["errors"][0]["extensions"]["field"], "webhook", "{g}");
    assert_eq!(s.stats_total().await, 0, "nothing was created");
    s.stop().await;
}
