//! `GET /metrics` in Prometheus text format, after real traffic. Its own test binary: the
//! recorder is global to a process.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Proto, TestServer, WsClient, TASK_UPDATED};
use serde_json::json;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A webhook receiver that answers 500 to the first `fail_first` requests, then 204.
async fn receiver(fail_first: usize) -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let n = count.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < fail_first {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

/// The task's webhook deliveries once none is pending.
async fn settled(s: &TestServer, id: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let (status, body) = s.get(&format!("/api/v1/tasks/{id}/webhooks")).await;
        assert_eq!(status, 200, "{body}");
        let all = body["data"]["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if all.len() == 2 && all.iter().all(|d| d["state"] != "pending") {
            return body["data"]["deliveries"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_describe_requests_tasks_provider_calls_and_sockets() {
    // Two events, two attempts each, the first three requests refused: whatever the order, one
    // event is dead after two failures, the other delivered after one (2 retried, 1 dead, 1
    // delivered).
    let (hook, requests) = receiver(3).await;
    let s = TestServer::start_with(|c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_base = Duration::from_millis(5);
        c.webhooks.max_attempts = 2;
    })
    .await;
    let user = s.create_user("metrics@example.com").await;
    let (status, body) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "counted", "user_id": user, "webhook": hook}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["task_id"].as_str().expect("id").to_string();
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    ws.subscribe("m", TASK_UPDATED, json!({"id": id})).await;
    s.wait_terminal(&id).await;
    // The subscription runs until the terminal state reaches the socket (then `complete`).
    loop {
        if let common::WsEvent::Complete { .. } = ws.next_event().await {
            break;
        }
    }
    for _ in 0..3 {
        let (status, _) = s.get("/api/v1/nope").await;
        assert_eq!(status, 404);
    }
    // Invented methods share one label value, so they cannot grow the label set.
    for m in ["BREW", "PURGE"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).expect("method");
        let resp = s
            .http
            .request(method, s.url("/api/v1/nope"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 404);
    }

    let log = settled(&s, &id).await;
    assert_eq!(requests.load(Ordering::SeqCst), 4, "{log}");
    let dead = log
        .as_array()
        .and_then(|l| l.iter().find(|d| d["state"] == "dead"))
        .and_then(|d| d["id"].as_str())
        .unwrap_or_else(|| panic!("none dead: {log}"))
        .to_string();
    let (status, body) = s
        .post(
            &format!("/api/v1/tasks/{id}/webhooks/{dead}/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    settled(&s, &id).await;

    let resp = s.http.get(s.url("/metrics")).send().await.expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/plain"));
    let text = resp.text().await.expect("text");

    let created =
        r#"http_requests_total{method="POST",route="/api/v1/ai/image/task",status="201"}"#;
    assert_eq!(value(&text, created), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            r#"http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"http_requests_total{method="OTHER",route="unmatched",status="404"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert!(!text.contains("BREW"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"tasks{status="completed"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"tasks{status="pending"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(value(&text, "queue_depth"), Some(0.0), "{text}");
    assert_eq!(
        value(&text, "queue_oldest_pending_age_seconds"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"task_transitions_total{status="completed"}"#),
        Some(1.0),
        "{text}"
    );
    // Calls are labelled with the key's fingerprint: the sandbox's own key here.
    let key = volcengine_ai_server::provider::key_fingerprint("sandbox");
    let model = "doubao-seedream-3-0-t2i-250415";
    let call =
        format!(r#"provider_calls_total{{model="{model}",key="{key}",outcome="ok",code=""}}"#);
    assert_eq!(value(&text, &call), Some(1.0), "{text}");
    assert!(text.contains("rate_limiter_wait_seconds_bucket{"), "{text}");
    assert_eq!(value(&text, "websocket_connections"), Some(1.0), "{text}");
    // The snapshot and each newer version handed to the socket are timed.
    assert!(
        value(&text, "subscription_update_lag_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let outcome = |o: &str| {
        value(
            &text,
            &format!(r#"webhook_deliveries_total{{outcome="{o}"}}"#),
        )
    };
    assert_eq!(outcome("retried"), Some(2.0), "{text}");
    assert_eq!(outcome("dead"), Some(1.0), "{text}");
    assert_eq!(outcome("delivered"), Some(2.0), "{text}");
    assert_eq!(
        value(&text, "webhook_redeliveries_total"),
        Some(1.0),
        "{text}"
    );
    // The redelivered event's wait is not the server's delay: one observation, in buckets that
    // reach days.
    assert_eq!(
        value(&text, "webhook_delivery_delay_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains(r#"webhook_delivery_delay_seconds_bucket{le="172800"}"#),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"webhook_attempt_duration_seconds_count{outcome="pending"}"#
        ),
        Some(2.0),
        "{text}"
    );
}
