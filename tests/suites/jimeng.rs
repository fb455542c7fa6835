//! Jimeng on the visual API end to end, against a separately started emulator over real HTTP
//! that checks every request's V4 signature: an image task and a video task submitted once,
//! tracked with GetResult and their results kept here; a wrong secret key refused by the
//! emulator and failing the task with a clear error; a restart after the submit tracking the
//! task instead of submitting again; the visual API's concurrency limit (429, 50430) costing
//! no attempt; a video submit refused for rate (429, 50429) waiting and costing no attempt, the
//! same rule as Seedance's; and sandbox mode running Jimeng on the built-in emulator. Runs on both backends
//! (`TEST_BACKEND=distributed`).

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::TestServer;
use volcengine_ai_server::emulator::{self, Emulator, EmulatorConfig};

const AK: &str = "AKLTjimengtest";
const SK: &str = "jimeng-test-secret";

async fn emulator(work: Duration, concurrency: u32) -> (Emulator, String, CancellationToken) {
    emulator_with(work, concurrency, 0).await
}

/// `throttle_first`: the first submits answered 429 50429 (no Retry-After).
async fn emulator_with(
    work: Duration,
    concurrency: u32,
    throttle_first: u32,
) -> (Emulator, String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let mut cfg = EmulatorConfig {
        latency: Duration::from_millis(10),
        api_key: Some("ark-key".into()),
        ..EmulatorConfig::default()
    };
    cfg.visual.credentials = vec![(AK.into(), SK.into())];
    cfg.visual.queue_time = Duration::from_millis(100);
    cfg.visual.image_time = work;
    cfg.visual.video_time = work;
    cfg.visual.concurrency = concurrency;
    cfg.visual.throttle_first = throttle_first;
    let emu = emulator::serve(cfg, listener, stop.clone())
        .await
        .expect("emulator");
    (emu, format!("http://{addr}"), stop)
}

async fn server(endpoint: &str, secret: &str) -> TestServer {
    let (endpoint, secret) = (endpoint.to_string(), secret.to_string());
    TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint.clone();
        c.volcengine_api_key = Some("ark-key".into());
        c.jimeng.endpoint = endpoint;
        c.jimeng.keys = Some((AK.into(), secret.into()));
        c.video.poll_min = Duration::from_millis(50);
        c.video.poll_max = Duration::from_millis(200);
        c.video.list_interval = Duration::from_millis(50);
        c.task_lease = Duration::from_secs(3);
    })
    .await
}

async fn create_image(s: &TestServer, user: &str, prompt: &str) -> String {
    let body = json!({"prompt": prompt, "user_id": user, "model": "jimeng-t2i-3.1",
                      "size": "1024x1024"});
    let (status, body) = s.post("/api/v1/ai/image/task", body).await;
    assert_eq!(status, 201, "{body}");
    body["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string()
}

/// The stored image behind a completed task's URL: JPEG bytes of the size asked for.
async fn kept_image(s: &TestServer, done: &Value) -> Vec<u8> {
    let url = done["result"]["image_url"].as_str().expect("image_url");
    assert!(url.starts_with(&s.base), "served by us: {url}");
    let resp = s.http.get(url).send().await.expect("get image");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    resp.bytes().await.expect("bytes").to_vec()
}

#[tokio::test]
async fn a_jimeng_image_task_completes_with_its_image_kept_here() {
    let (emu, url, _stop) = emulator(Duration::from_millis(300), 0).await;
    let s = server(&url, SK).await;
    let user = s.create_user("jimeng-image@example.com").await;
    let id = create_image(&s, &user, "a lantern over a lake").await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let bytes = kept_image(&s, &done).await;
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "a JPEG");
    let dims = imagesize::blob_size(&bytes).expect("dimensions");
    assert_eq!((dims.width, dims.height), (1024, 1024));
    let stats = emu.stats();
    assert_eq!(stats.visual.submits, 1, "{:?}", stats.visual);
    assert!(stats.visual.auth_failures.is_empty(), "{:?}", stats.visual);
    assert!(stats.visual.get_results >= 1);
    assert_eq!(stats.requests, 0, "no Ark image call");

    let (_, detail) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(detail["data"]["model"], "jimeng_t2i_v31", "{detail}");
    assert!(detail["data"]["provider_task_id"].is_string(), "{detail}");
    let models = s.gql("{ imageModels { id name } }", json!({})).await;
    assert!(
        models["data"]["imageModels"]
            .as_array()
            .expect("models")
            .iter()
            .any(|m| m["id"] == "jimeng_i2i_v30" && m["name"] == "jimeng-i2i-3.0"),
        "{models}"
    );
}

#[tokio::test]
async fn a_jimeng_video_task_completes_with_its_mp4_kept_here() {
    let (emu, url, _stop) = emulator(Duration::from_millis(300), 0).await;
    let s = server(&url, SK).await;
    let user = s.create_user("jimeng-video@example.com").await;
    for (body, field) in [
        (json!({"duration": 7}), "duration"),
        (json!({"resolution": "1080p"}), "resolution"),
        (json!({"camera_fixed": true}), "camera_fixed"),
    ] {
        let mut req = json!({"prompt": "x", "user_id": user, "model": "jimeng-t2v-3.0"});
        req.as_object_mut()
            .expect("object")
            .extend(body.as_object().expect("object").clone());
        let (status, answer) = s.post("/api/v1/ai/video/task", req).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["details"][0]["field"], field, "{answer}");
    }
    let (status, body) = s
        .post(
            "/api/v1/ai/video/task",
            json!({"prompt": "paper boats on a river", "user_id": user,
                   "model": "jimeng-t2v-3.0", "duration": 5, "ratio": "9:16"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["task_id"].as_str().expect("task id");
    let done = s.wait_terminal(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let video_url = done["video_url"].as_str().expect("video_url");
    assert!(video_url.starts_with(&s.base), "served by us: {video_url}");
    let resp = s.http.get(video_url).send().await.expect("get video");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    let bytes = resp.bytes().await.expect("body");
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4");
    let stats = emu.stats();
    assert_eq!(stats.visual.submits, 1, "{:?}", stats.visual);
    assert_eq!(stats.video.created, 0, "nothing went to Ark");
}

#[tokio::test]
async fn a_wrong_secret_key_fails_the_task_with_a_clear_error() {
    let (emu, url, _stop) = emulator(Duration::from_millis(300), 0).await;
    let s = server(&url, "not-the-secret").await;
    let user = s.create_user("jimeng-wrong@example.com").await;
    let id = create_image(&s, &user, "never signed right").await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "SignatureDoesNotMatch", "{done}");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(message.contains("VOLCENGINE_SECRET_KEY"), "{message}");
    let stats = emu.stats();
    assert_eq!(
        stats.visual.auth_failures.get("SignatureDoesNotMatch"),
        Some(&1),
        "refused by the emulator's signature check, once: {:?}",
        stats.visual
    );
    assert_eq!(stats.visual.submits, 0);
}

#[tokio::test]
async fn a_restart_after_the_submit_tracks_the_task_instead_of_submitting_again() {
    let (emu, url, _stop) = emulator(Duration::from_secs(2), 0).await;
    let mut s = server(&url, SK).await;
    let user = s.create_user("jimeng-restart@example.com").await;
    let id = create_image(&s, &user, "survives a restart").await;
    let submitted = s.wait_submitted(&id).await;
    assert_eq!(submitted["status"], "processing");
    // Stopped while the provider works; the new process finds the task with its provider id.
    s.start_again().await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["provider_task_id"], submitted["provider_task_id"]);
    assert_eq!(emu.stats().visual.submits, 1, "submitted exactly once");
    kept_image(&s, &done).await;
}

#[tokio::test]
async fn the_concurrency_limit_requeues_tasks_without_spending_attempts() {
    // One unfinished task at a time per req_key: the others are refused with 429 50430 until
    // it is done, and go on afterwards.
    let (emu, url, _stop) = emulator(Duration::from_millis(400), 1).await;
    let s = server(&url, SK).await;
    let user = s.create_user("jimeng-limit@example.com").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create_image(&s, &user, &format!("limited {i}")).await);
    }
    for id in &ids {
        let done = s.wait_terminal(id).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, detail) = s.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(
            detail["data"]["attempts"], 1,
            "refusals cost no attempt: {detail}"
        );
    }
    let stats = emu.stats();
    assert!(
        stats.visual.by_code.get(&50430).is_some_and(|n| *n >= 1),
        "the limit was met: {:?}",
        stats.visual
    );
}

#[tokio::test]
async fn a_throttled_video_submit_waits_and_costs_no_attempt() {
    let (emu, url, _stop) = emulator_with(Duration::from_millis(300), 0, 2).await;
    let s = server(&url, SK).await;
    let user = s.create_user("jimeng-throttled@example.com").await;
    let (status, body) = s
        .post(
            "/api/v1/ai/video/task",
            json!({"prompt": "refused twice", "user_id": user, "model": "jimeng-t2v-3.0",
                   "duration": 5}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["task_id"].as_str().expect("task id");
    let done = s.wait_terminal(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempts"], 1, "a 429 costs no attempt: {done}");
    let stats = emu.stats();
    assert_eq!(
        stats.visual.by_code.get(&50429),
        Some(&2),
        "{:?}",
        stats.visual
    );
    crate::video::assert_spaced_after_429s(&stats.visual.submit_log, 2);
}

#[tokio::test]
async fn sandbox_mode_runs_jimeng_on_the_built_in_emulator() {
    let s = TestServer::start().await;
    let user = s.create_user("jimeng-sandbox@example.com").await;
    let id = create_image(&s, &user, "a sandbox lantern").await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    kept_image(&s, &done).await;
    let emu = s
        .running
        .as_ref()
        .and_then(|r| r.emulator.clone())
        .expect("sandbox emulator");
    assert_eq!(emu.stats().visual.submits, 1);
}
