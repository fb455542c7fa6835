//! Memory bounded by bytes (issue #16): tasks with large reference images driven through the
//! real router, and what the process keeps of them. Its own test binary: the cache's gauges are
//! global to a process.

mod common;

use base64::Engine;
use common::TestServer;
use serde_json::json;

/// A series' value in the Prometheus text format.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A real PNG padded to `bytes` (decoders stop at its end), as a data URL.
fn reference_image(bytes: usize) -> String {
    let mut png = volcengine_ai_server::emulator::image::render_png("ref", 0, 64, 48).expect("png");
    png.resize(bytes, 0);
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// The embedded task cache's byte weight stays under `TASK_CACHE_BYTES` however many heavy
/// tasks pass, while its count bound alone would keep them all (by count alone, all 24 tasks of
/// ~200 KB each were held: 4.8 MB against a 1 MiB bound).
#[tokio::test]
async fn the_task_cache_is_bounded_by_bytes_through_the_router() {
    const BOUND: usize = 1 << 20;
    let s = TestServer::start_with(|c| {
        c.task_cache_size = 10_000;
        c.task_cache_bytes = BOUND;
        c.worker_concurrency = 4;
    })
    .await;
    let user = s.create_user("heavy@example.com").await;
    let image = reference_image(150 << 10);
    let mut ids = Vec::new();
    for i in 0..24 {
        let (status, body) = s
            .post(
                "/api/v1/ai/image/task",
                json!({"prompt": format!("heavy {i}"), "user_id": user,
                       "model": "doubao-seededit-3.0-i2i", "image": image}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["data"]["task_id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
    // Polls answered (from the cache or the store) carry the reference image whole.
    let (status, body) = s.get(&format!("/api/v1/ai/image/result/{}", ids[0])).await;
    assert_eq!(status, 200, "{body}");

    let metrics = s.get("/metrics").await.1;
    let text = metrics.as_str().expect("text");
    let bytes = value(text, "task_cache_bytes").expect("task_cache_bytes");
    let tasks = value(text, "task_cache_tasks").expect("task_cache_tasks");
    assert!(bytes <= BOUND as f64, "{bytes} bytes held, bound {BOUND}");
    assert!(bytes > 0.0 && tasks >= 1.0, "the cache is used: {text}");
    assert!(tasks < 24.0, "{tasks} heavy tasks held in {BOUND} bytes");
}
