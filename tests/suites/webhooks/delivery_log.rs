//! The delivery log (REST `GET /api/v1/tasks/{id}/webhooks`, GraphQL `Task.webhookDeliveries`)
//! and redelivery (REST `…/webhooks/{delivery}/redeliver`, `…/webhooks/redeliver`, GraphQL
//! `redeliverWebhook`): what the receiver saw is what the log says; a redelivered event carries
//! its `webhook-id` again; a delivery runs out of attempts and is dead until redelivered; a
//! generated secret signs; another user sees and redelivers nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::{accepted, server, start_receiver, Received, SECRET};
use crate::common::{self, TestServer, PATIENCE};
use volcengine_ai_server::config::Secret;

const ADMIN: &str = "admin-key-for-the-webhook-log-tests-0123";

const GQL_LOG: &str = "query($id: ID!) { task(id: $id) { id webhookDeliveries { id event type \
    url state createdAt nextAttemptAt attempts { attempt at statusCode error durationMs \
    nextAttemptAt } } } }";

const GQL_REDELIVER: &str = "mutation($task: ID!, $delivery: ID) { \
    redeliverWebhook(taskId: $task, deliveryId: $delivery) { id state type attempts { attempt } } }";

async fn create(s: &TestServer, body: Value) -> String {
    let (status, b) = s.post("/api/v1/ai/image/task", body).await;
    assert_eq!(status, 201, "{b}");
    b["data"]["task_id"].as_str().expect("id").to_string()
}

/// The REST log once every delivery is settled (delivered or dead): the receiver's answer
/// reaches the store a moment after the receiver counted it.
async fn settled_log(s: &TestServer, task_id: &str, n: usize) -> Vec<Value> {
    settled_log_as(s, None, task_id, n).await
}

async fn settled_log_as(s: &TestServer, key: Option<&str>, task_id: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut req = s
            .http
            .get(s.url(&format!("/api/v1/tasks/{task_id}/webhooks")));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let (status, body) = s.send(req).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["task_id"], task_id, "{body}");
        let all = body["data"]["deliveries"]
            .as_array()
            .cloned()
            .expect("list");
        if all.len() == n && all.iter().all(|d| d["state"] != "pending") {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attempts(d: &Value) -> &Vec<Value> {
    d["attempts"].as_array().expect("attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_shows_failed_then_successful_attempts_over_rest_and_graphql() {
    let (url, receiver) = start_receiver(2).await;
    let mut s = server(true).await;
    let user = s.create_user("log@example.com").await;
    let task_id = create(
        &s,
        json!({"prompt": "a log", "user_id": user, "webhook": url}),
    )
    .await;
    s.wait_terminal(&task_id).await;
    let seen = accepted(&receiver, 2).await;
    let log = settled_log(&s, &task_id, 2).await;

    assert_eq!(
        (log[0]["type"].as_str(), log[0]["event"].as_str()),
        (Some("task.started"), Some("start")),
        "{log:?}"
    );
    assert_eq!(log[1]["type"], "task.completed", "{log:?}");
    let mut total = 0;
    for d in &log {
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["url"], url.as_str());
        assert!(d["next_attempt_at"].is_null(), "{d}");
        let id = d["id"].as_str().expect("id");
        let sent: Vec<&Received> = seen.iter().filter(|r| r.id == id).collect();
        let tries = attempts(d);
        assert_eq!(tries.len(), sent.len(), "one log line per request: {d}");
        total += tries.len();
        for (n, (a, r)) in tries.iter().zip(&sent).enumerate() {
            assert_eq!(a["attempt"], n as u64 + 1, "{d}");
            assert_eq!(a["status_code"], r.answered, "{d}");
            assert!(a["at"].is_string() && a["duration_ms"].is_u64(), "{d}");
            if r.answered == 500 {
                assert_eq!(a["error"], "answered 500", "{d}");
                assert!(a["next_attempt_at"].is_string(), "a retry is due: {d}");
            } else {
                assert!(
                    a["error"].is_null() && a["next_attempt_at"].is_null(),
                    "{d}"
                );
            }
        }
    }
    assert_eq!(total, 4, "two failures and two deliveries: {log:?}");

    let g = s.gql(GQL_LOG, json!({"id": task_id})).await;
    let gl = g["data"]["task"]["webhookDeliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{g}"));
    assert_eq!(gl.len(), 2, "{g}");
    for (gd, rd) in gl.iter().zip(&log) {
        assert_eq!(gd["id"], rd["id"], "{g}");
        assert_eq!(gd["state"], "DELIVERED", "{g}");
        assert_eq!(gd["type"], rd["type"], "{g}");
        let ga = attempts(gd);
        assert_eq!(ga.len(), attempts(rd).len(), "{g}");
        for (a, b) in ga.iter().zip(attempts(rd)) {
            assert_eq!(a["statusCode"], b["status_code"], "{g}");
            assert_eq!(a["error"], b["error"], "{g}");
            assert_eq!(a["attempt"], b["attempt"], "{g}");
        }
    }
    assert_eq!(gl[0]["event"], "START", "{g}");
    assert_eq!(gl[1]["event"], "COMPLETED", "{g}");

    // A task without a webhook has an empty log, not an error.
    let plain = s.create_task(&user, "no hook").await;
    let (status, body) = s.get(&format!("/api/v1/tasks/{plain}/webhooks")).await;
    assert_eq!(
        (status, body["data"]["deliveries"].clone()),
        (200, json!([]))
    );
    let (status, body) = s
        .post(
            &format!("/api/v1/tasks/{plain}/webhooks/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_sent_again_under_the_same_id() {
    let (url, receiver) = start_receiver(0).await;
    let mut s = server(true).await;
    let user = s.create_user("again@example.com").await;
    let task_id = create(
        &s,
        json!({"prompt": "again", "user_id": user, "webhook": url,
               "webhook_events_filter": ["completed"]}),
    )
    .await;
    s.wait_terminal(&task_id).await;
    let first = accepted(&receiver, 1).await;
    let log = settled_log(&s, &task_id, 1).await;
    let id = log[0]["id"].as_str().expect("id").to_string();
    assert_eq!(first[0].id, id);

    // REST, by the delivery's id.
    let (status, body) = s
        .post(
            &format!("/api/v1/tasks/{task_id}/webhooks/{id}/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["id"], id.as_str(), "{body}");
    let seen = accepted(&receiver, 2).await;
    assert_eq!(seen[1].id, id, "{seen:?}");
    assert!(seen[1].verified, "{seen:?}");
    assert_eq!(seen[1].body["data"], seen[0].body["data"], "the same event");
    assert_eq!(seen[1].body["type"], "task.completed");

    // GraphQL, the newest event (none named).
    settled_log(&s, &task_id, 1).await;
    let g = s.gql(GQL_REDELIVER, json!({"task": task_id})).await;
    assert_eq!(g["data"]["redeliverWebhook"]["id"], id.as_str(), "{g}");
    let seen = accepted(&receiver, 3).await;
    assert_eq!(seen[2].id, id, "{seen:?}");
    assert!(seen[2].verified);

    let log = settled_log(&s, &task_id, 1).await;
    let numbers: Vec<u64> = attempts(&log[0])
        .iter()
        .map(|a| a["attempt"].as_u64().expect("n"))
        .collect();
    assert_eq!(numbers, [1, 2, 3], "{log:?}");
    assert_eq!(log[0]["state"], "delivered");

    // Unknown deliveries and malformed bodies.
    let (status, body) = s
        .post(
            &format!("/api/v1/tasks/{task_id}/webhooks/msg_nope/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s
        .post(
            &format!("/api/v1/tasks/{task_id}/webhooks/redeliver"),
            json!({"delivery": id}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_dead_after_its_attempts_until_redelivered() {
    let (url, receiver) = start_receiver(usize::MAX).await;
    let mut s = TestServer::start_with(|c| {
        c.webhooks.secret = Some(Secret::from(SECRET));
        c.webhooks.retry_base = Duration::from_millis(5);
        c.webhooks.retry_cap = Duration::from_millis(20);
        c.webhooks.max_attempts = 12;
        c.webhooks.allow_private = true;
    })
    .await;
    let user = s.create_user("dead@example.com").await;
    let task_id = create(
        &s,
        json!({"prompt": "dead", "user_id": user, "webhook": url,
               "webhook_events_filter": ["completed"]}),
    )
    .await;
    s.wait_terminal(&task_id).await;
    let log = settled_log(&s, &task_id, 1).await;
    let d = &log[0];
    assert_eq!(d["state"], "dead", "{d}");
    assert!(d["next_attempt_at"].is_null(), "{d}");
    let tries = attempts(d);
    assert_eq!(tries.len(), 12, "{d}");
    assert!(tries.iter().all(|a| a["error"] == "answered 500"), "{d}");
    assert!(tries[..11].iter().all(|a| a["next_attempt_at"].is_string()));
    assert!(tries[11]["next_attempt_at"].is_null(), "{d}");
    let id = d["id"].as_str().expect("id");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 12, "no attempt after the last: {seen:?}");
    assert!(seen.iter().all(|r| r.id == id && r.verified));

    receiver.fail_first.store(0, Ordering::SeqCst);
    let (status, body) = s
        .post(
            &format!("/api/v1/tasks/{task_id}/webhooks/redeliver"),
            json!({"delivery_id": id}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["state"], "pending", "{body}");
    let seen = accepted(&receiver, 1).await;
    assert_eq!(seen.last().map(|r| r.id.as_str()), Some(id));
    let log = settled_log(&s, &task_id, 1).await;
    assert_eq!(log[0]["state"], "delivered", "{log:?}");
    let last = attempts(&log[0]).last().cloned().expect("attempt");
    assert_eq!(
        (last["attempt"].clone(), last["status_code"].clone()),
        (json!(13), json!(204))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_secret_the_generated_one_signs() {
    let (url, receiver) = start_receiver(0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = common::test_config(dir.path());
    cfg.webhooks.allow_private = true;
    cfg.webhooks.secret = None;
    let backends = common::backends(&mut cfg).await;
    let store = backends.store.clone();
    let mut s = TestServer::start_on(cfg, backends, dir).await;
    // What the first process stored (and printed once); asking again generates nothing.
    let (stored, generated) =
        volcengine_ai_server::service::webhooks::signing_secret(store.as_ref(), None)
            .await
            .expect("secret");
    assert!(!generated, "the server generated none");
    assert!(stored.starts_with("whsec_"), "{stored}");
    assert_ne!(stored, SECRET);
    // The embedded store holds its data folder's lock while open; the restart below reopens it.
    drop(store);

    let user = s.create_user("generated@example.com").await;
    let first = create(&s, json!({"prompt": "g", "user_id": user, "webhook": url})).await;
    s.wait_terminal(&first).await;
    let seen = accepted(&receiver, 2).await;
    assert!(seen.iter().all(|r| r.verifies_with(&stored)), "{seen:?}");
    assert!(seen.iter().all(|r| !r.verified), "not the test secret");

    // A restart signs with the same stored secret.
    s.start_again().await;
    let second = create(&s, json!({"prompt": "g2", "user_id": user, "webhook": url})).await;
    s.wait_terminal(&second).await;
    let seen = accepted(&receiver, 4).await;
    assert!(seen.iter().all(|r| r.verifies_with(&stored)), "{seen:?}");
    s.stop().await;
}

async fn as_key(s: &TestServer, key: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let mut req = s.http.request(method.clone(), s.url(path)).bearer_auth(key);
    if method == reqwest::Method::POST {
        req = req.json(&json!({}));
    }
    s.send(req).await
}

async fn gql_as(s: &TestServer, key: &str, query: &str, variables: Value) -> Value {
    let req = s
        .http
        .post(s.url("/graphql"))
        .bearer_auth(key)
        .json(&json!({"query": query, "variables": variables}));
    let (status, body) = s.send(req).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn user_with_key(s: &TestServer, email: &str) -> (String, String) {
    let (st, b) = as_admin(
        s,
        "/api/v1/users",
        json!({"email": email, "name": "Hooked"}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let id = b["data"]["id"].as_str().expect("id").to_string();
    let (st, b) = as_admin(
        s,
        &format!("/api/v1/users/{id}/api-keys"),
        json!({"name": "hooks"}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    (id, b["data"]["key"].as_str().expect("key").to_string())
}

async fn as_admin(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    s.send(s.http.post(s.url(path)).bearer_auth(ADMIN).json(&body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_can_neither_read_nor_redeliver() {
    let (url, receiver) = start_receiver(0).await;
    let mut s = TestServer::start_with(|c| {
        c.admin_api_key = Some(ADMIN.into());
        c.webhooks.secret = Some(Secret::from(SECRET));
        c.webhooks.allow_private = true;
    })
    .await;
    let (alice, ka) = user_with_key(&s, "alice-hooks@example.com").await;
    let (_, kb) = user_with_key(&s, "bob-hooks@example.com").await;
    let req = s
        .http
        .post(s.url("/api/v1/ai/image/task"))
        .bearer_auth(&ka)
        .json(&json!({"prompt": "mine", "user_id": alice, "webhook": url,
                      "webhook_events_filter": ["completed"]}));
    let (st, b) = s.send(req).await;
    assert_eq!(st, 201, "{b}");
    let task_id = b["data"]["task_id"].as_str().expect("id").to_string();
    accepted(&receiver, 1).await;
    let own = settled_log_as(&s, Some(&ka), &task_id, 1).await;
    let id = own[0]["id"].as_str().expect("delivery").to_string();

    let log_path = format!("/api/v1/tasks/{task_id}/webhooks");
    let (st, b) = as_key(&s, ADMIN, reqwest::Method::GET, &log_path).await;
    assert_eq!(
        (st, b["data"]["deliveries"][0]["id"].clone()),
        (200, json!(id))
    );

    let (st, b) = as_key(&s, &kb, reqwest::Method::GET, &log_path).await;
    assert_eq!(st, 404, "{b}");
    for path in [
        format!("{log_path}/redeliver"),
        format!("{log_path}/{id}/redeliver"),
    ] {
        let (st, b) = as_key(&s, &kb, reqwest::Method::POST, &path).await;
        assert_eq!(st, 404, "{path}: {b}");
    }
    let g = gql_as(&s, &kb, GQL_LOG, json!({"id": task_id})).await;
    assert!(g["data"]["task"].is_null(), "{g}");
    let g = gql_as(
        &s,
        &kb,
        GQL_REDELIVER,
        json!({"task": task_id, "delivery": id}),
    )
    .await;
    assert_eq!(g["errors"][0]["extensions"]["code"], "NOT_FOUND", "{g}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 1, "nothing was sent again");

    // The owner may, over GraphQL too.
    let g = gql_as(
        &s,
        &ka,
        GQL_REDELIVER,
        json!({"task": task_id, "delivery": id}),
    )
    .await;
    assert_eq!(g["data"]["redeliverWebhook"]["id"], id.as_str(), "{g}");
    accepted(&receiver, 2).await;
    s.stop().await;
}
