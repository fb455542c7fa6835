//! `GET /metrics` in Prometheus text format, after real traffic. Its own test binary: the
//! recorder is global to a process.

mod common;

use common::{Proto, TestServer, WsClient, TASK_UPDATED};
use serde_json::json;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_describe_requests_tasks_provider_calls_and_sockets() {
    let s = TestServer::start().await;
    let user = s.create_user("metrics@example.com").await;
    let id = s.create_task(&user, "counted").await;
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
    let call =
        r#"provider_calls_total{model="doubao-seedream-3-0-t2i-250415",outcome="ok",code=""}"#;
    assert_eq!(value(&text, call), Some(1.0), "{text}");
    assert!(text.contains("rate_limiter_wait_seconds_bucket{"), "{text}");
    assert_eq!(value(&text, "websocket_connections"), Some(1.0), "{text}");
    // The snapshot and each newer version handed to the socket are timed.
    assert!(
        value(&text, "subscription_update_lag_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}
