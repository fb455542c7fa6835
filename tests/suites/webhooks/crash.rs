//! `kill -9` of the real binary while it delivers a failing webhook: the restarted server (same
//! data folder, or same MongoDB database and Redis prefix) delivers the event after the dead
//! process's claim runs out, under the same `webhook-id`, and its log shows the attempts that
//! were recorded.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::SECRET;
use crate::common::process::{self, ServerProcess};
use crate::common::{self, PATIENCE};

/// Answers 500 until `accept`, and holds the second request (the attempt the crash cuts short)
/// without answering.
#[derive(Clone, Default)]
struct Flaky {
    requests: Arc<AtomicUsize>,
    holding: Arc<AtomicBool>,
    accept: Arc<AtomicBool>,
    /// (webhook-id, verified, answered)
    seen: Arc<Mutex<Vec<(String, bool, u16)>>>,
}

async fn flaky(State(f): State<Flaky>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = f.requests.fetch_add(1, Ordering::SeqCst);
    let verified = standardwebhooks::Webhook::new(SECRET)
        .expect("secret")
        .verify(&body, &headers)
        .is_ok();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if n == 1 {
        f.holding.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    let answered = if f.accept.load(Ordering::SeqCst) {
        204
    } else {
        500
    };
    f.seen.lock().expect("lock").push((id, verified, answered));
    StatusCode::from_u16(answered).expect("status")
}

/// The server binary on `dir` (embedded) or a database and prefix of its own (distributed).
struct Binary {
    env: Vec<(String, String)>,
}

impl Binary {
    fn new(dir: &std::path::Path) -> Binary {
        let mut env: Vec<(String, String)> = [
            ("SANDBOX_LATENCY", "100ms"),
            ("LOG_LEVEL", "error"),
            ("WEBHOOK_SECRET", SECRET),
            ("WEBHOOK_ALLOW_PRIVATE", "true"),
            ("WEBHOOK_RETRY_BASE", "100ms"),
            // The dead process's claim runs out 10 s after this.
            ("WEBHOOK_TIMEOUT", "1s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.push(("DATA_DIR".into(), dir.join("data").display().to_string()));
        if let Some((mongo, redis)) = common::distributed_env() {
            let name = common::unique_name();
            env.extend([
                ("MONGO_URL".into(), mongo),
                ("MONGO_DATABASE".into(), name.clone()),
                ("REDIS_URL".into(), redis),
                ("REDIS_KEY_PREFIX".into(), name),
            ]);
        }
        Binary { env }
    }

    async fn start(&self, dir: &std::path::Path) -> (ServerProcess, String) {
        let (mut c, base) = process::command("serve", dir);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let p = ServerProcess::start((c, base), "/ready").await;
        let base = p.base.clone();
        (p, base)
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_failing_delivery_still_delivers_after_the_restart() {
    let f = Flaky::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(flaky))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("dir");
    let binary = Binary::new(dir.path());
    let (mut first, base) = binary.start(dir.path()).await;
    let http = reqwest::Client::new();
    let user: Value = http
        .post(format!("{base}/api/v1/users"))
        .json(&json!({"email": "crash-hook@example.com", "name": "Crash Hook"}))
        .send()
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
    let user = user["data"]["id"].as_str().expect("user id");
    let task: Value = http
        .post(format!("{base}/api/v1/ai/image/task"))
        .json(&json!({"prompt": "crash", "user_id": user, "webhook": hook,
                      "webhook_events_filter": ["completed"]}))
        .send()
        .await
        .expect("task")
        .json()
        .await
        .expect("json");
    let task_id = task["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();

    // The first attempt failed (500); the second is in flight, unanswered: kill now.
    until("the second attempt never came", || {
        f.holding.load(Ordering::SeqCst)
    })
    .await;
    first.kill9();
    f.accept.store(true, Ordering::SeqCst);

    let (_second, base) = binary.start(dir.path()).await;
    until("never delivered after the restart", || {
        f.seen.lock().expect("lock").iter().any(|s| s.2 == 204)
    })
    .await;
    let seen = f.seen.lock().expect("lock").clone();
    assert!(seen.iter().all(|s| s.1), "a bad signature: {seen:?}");
    let id = &seen[0].0;
    assert!(seen.iter().all(|s| &s.0 == id), "one webhook-id: {seen:?}");
    assert_eq!(
        seen.iter().filter(|s| s.2 == 204).count(),
        1,
        "delivered once: {seen:?}"
    );

    // The log: the recorded failure, then the delivery (the cut-short attempt left no record).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let log = loop {
        let body: Value = http
            .get(format!("{base}/api/v1/tasks/{task_id}/webhooks"))
            .send()
            .await
            .expect("log")
            .json()
            .await
            .expect("json");
        let d = body["data"]["deliveries"][0].clone();
        if d["state"] == "delivered" {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log["id"], id.as_str(), "{log}");
    let attempts = log["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{log}");
    assert_eq!(attempts[0]["status_code"], 500, "{log}");
    assert_eq!(attempts[1]["status_code"], 204, "{log}");
}
