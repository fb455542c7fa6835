//! Video tasks take a webhook as image tasks do, on both create paths: a Seedance task run by
//! the emulator over real HTTP posts its signed start and completion (with the video's URL, or
//! the cancellation) to a receiver on this machine; a target in a forbidden range is refused at
//! create, before any provider call.

use std::time::Duration;

use serde_json::json;

use super::{accepted, start_receiver, SECRET};
use crate::common::TestServer;
use crate::video::{emulator, server_with, small};
use volcengine_ai_server::config::Secret;

async fn server(endpoint: &str, allow_private: bool) -> TestServer {
    server_with(endpoint, move |c| {
        c.webhooks.secret = Some(Secret::from(SECRET));
        c.webhooks.retry_base = Duration::from_millis(50);
        c.webhooks.allow_private = allow_private;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_task_posts_its_signed_start_and_completion_with_the_video_url() {
    let (_emu, url, _stop) = emulator(Duration::from_millis(100), Duration::from_millis(300)).await;
    let (hook, receiver) = start_receiver(0).await;
    let mut s = server(&url, true).await;
    let user = s.create_user("video-hooks@example.com").await;
    let mut body = small("a fox with a webhook", &user);
    body["webhook"] = json!(hook);
    let (status, created) = s.post("/api/v1/ai/video/task", body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["task_id"].as_str().expect("id").to_string();
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");

    let seen = accepted(&receiver, 2).await;
    assert_eq!(seen.len(), 2, "one start, one completion: {seen:?}");
    assert!(seen.iter().all(|r| r.verified), "a bad signature: {seen:?}");
    let by_type = |t: &str| {
        seen.iter()
            .find(|r| r.body["type"] == t)
            .unwrap_or_else(|| panic!("no {t}: {seen:?}"))
    };
    assert_eq!(by_type("task.started").body["data"]["status"], "processing");
    let done = &by_type("task.completed").body;
    assert_eq!(done["type"], "task.completed", "{done}");
    assert_eq!(done["data"]["task_id"], id.as_str());
    assert_eq!(done["data"]["type"], "video_generation", "{done}");
    assert_eq!(done["data"]["status"], "completed");
    assert_eq!(done["data"]["video_url"], t["video_url"], "{done}");
    let video_url = done["data"]["video_url"].as_str().expect("video_url");
    assert!(video_url.starts_with(&s.base), "served by us: {video_url}");
    s.stop().await;
}

const GQL_CREATE: &str =
    "mutation($input: CreateVideoTaskInput!) { createVideoTask(input: $input) \
    { id status webhookDeliveries { id } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_video_creates_take_a_webhook_and_a_cancel_is_posted() {
    // Queued at the provider long enough to be cancelled there.
    let (_emu, url, _stop) = emulator(Duration::from_secs(60), Duration::from_millis(200)).await;
    let (hook, receiver) = start_receiver(0).await;
    let mut s = server(&url, true).await;
    let user = s.create_user("gql-video-hooks@example.com").await;
    let g = s
        .gql(
            GQL_CREATE,
            json!({"input": {"prompt": "to be cancelled", "userId": user, "duration": 2,
                             "resolution": "480p", "model": "seedance-1.0-lite-t2v",
                             "webhook": hook, "webhookEventsFilter": ["START", "COMPLETED"]}}),
        )
        .await;
    let id = g["data"]["createVideoTask"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{g}"))
        .to_string();
    // Submitted: the task is processing, and its start was posted.
    let seen = accepted(&receiver, 1).await;
    assert_eq!(seen[0].body["type"], "task.started", "{seen:?}");
    let (status, body) = s
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = accepted(&receiver, 2).await;
    assert!(seen.iter().all(|r| r.verified), "a bad signature: {seen:?}");
    let done = &seen
        .iter()
        .find(|r| r.body["type"] == "task.completed")
        .unwrap_or_else(|| panic!("no completion: {seen:?}"))
        .body;
    assert_eq!(done["data"]["task_id"], id.as_str());
    assert_eq!(done["data"]["status"], "cancelled", "{done}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_webhook_to_a_private_address_is_refused_at_create() {
    let (emu, url, _stop) = emulator(Duration::from_millis(100), Duration::from_millis(300)).await;
    let mut s = server(&url, false).await;
    let user = s.create_user("video-ssrf@example.com").await;
    for (webhook, field) in [
        ("http://127.0.0.1:9/hook", "webhook"),
        ("http://169.254.169.254/latest/meta-data/", "webhook"),
        ("ftp://example.com/hook", "webhook"),
    ] {
        let mut body = small("x", &user);
        body["webhook"] = json!(webhook);
        let (status, body) = s.post("/api/v1/ai/video/task", body).await;
        assert_eq!(status, 400, "{webhook}: {body}");
        assert_eq!(body["code"], "VALIDATION_FAILED", "{body}");
        assert!(body["details"].to_string().contains(field), "{body}");
    }
    let mut body = small("x", &user);
    body["webhook"] = json!("https://example.com/hook");
    body["webhook_events_filter"] = json!(["finished"]);
    let (status, body) = s.post("/api/v1/ai/video/task", body).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["details"]
            .to_string()
            .contains("webhook_events_filter"),
        "{body}"
    );

    let g = s
        .gql(
            GQL_CREATE,
            json!({"input": {"prompt": "x", "userId": user, "webhook": "http://10.0.0.7/hook"}}),
        )
        .await;
    assert_eq!(
        g["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{g}"
    );
    assert_eq!(g["errors"][0]["extensions"]["field"], "webhook", "{g}");
    assert_eq!(s.stats_total().await, 0, "nothing was created");
    assert_eq!(
        emu.stats().video.created,
        0,
        "the provider was never called"
    );
    s.stop().await;
}
