//! Seedance video tasks end to end, against a separately started emulator over real HTTP: the
//! submit, the batched tracking, the MP4 kept and served here with Range requests, cancel
//! reaching the provider, a restart after the submit not submitting again, validation before
//! any provider call, 429s to the submit costing no attempt and spacing the submits, and the
//! same callback delivered many times ending the task once. Runs on both backends
//! (`TEST_BACKEND=distributed`).

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::{start_emulator, Proto, TestServer, WsClient, WsEvent, PATIENCE};
use volcengine_ai_server::emulator::stats::Submit;
use volcengine_ai_server::emulator::{Emulator, EmulatorConfig};
use volcengine_ai_server::worker::submit::THROTTLED_WAIT;

const KEY: &str = "video-key-1";

pub(crate) async fn emulator(
    queue: Duration,
    run: Duration,
) -> (Emulator, String, CancellationToken) {
    emulator_with(queue, run, |_| {}).await
}

async fn emulator_with(
    queue: Duration,
    run: Duration,
    tweak: impl FnOnce(&mut EmulatorConfig),
) -> (Emulator, String, CancellationToken) {
    let mut cfg = EmulatorConfig {
        latency: Duration::from_millis(10),
        api_key: Some(KEY.into()),
        ..EmulatorConfig::default()
    };
    cfg.video.queue_time = queue;
    cfg.video.run_time = run;
    tweak(&mut cfg);
    start_emulator(cfg).await
}

async fn server(endpoint: &str) -> TestServer {
    server_with(endpoint, |c| c.task_lease = Duration::from_secs(3)).await
}

/// A server calling the emulator at `endpoint` with its key, tracking videos quickly; `tweak`
/// sets the rest.
pub(crate) async fn server_with(
    endpoint: &str,
    tweak: impl FnOnce(&mut volcengine_ai_server::config::Config) + Send + 'static,
) -> TestServer {
    let endpoint = endpoint.to_string();
    TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_key = Some(KEY.to_string().into());
        c.video.poll_min = Duration::from_millis(50);
        c.video.poll_max = Duration::from_millis(200);
        // The emulator allows one list request a second, as Ark does.
        c.video.list_interval = Duration::from_millis(1000);
        tweak(c);
    })
    .await
}

/// A server the provider can call back (`PUBLIC_BASE_URL` its own address), whose fallback poll
/// of tasks with a callback does not come within a test's time: only callbacks end them.
async fn public_server(endpoint: &str) -> TestServer {
    let endpoint = endpoint.to_string();
    TestServer::start_public(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_key = Some(KEY.to_string().into());
        c.video.poll_min = Duration::from_millis(50);
        c.video.poll_max = Duration::from_millis(200);
        c.video.callback_poll = Duration::from_secs(3600);
        c.task_lease = Duration::from_secs(3);
    })
    .await
}

pub(crate) fn small(prompt: &str, user: &str) -> Value {
    json!({"prompt": prompt, "user_id": user, "duration": 2, "resolution": "480p",
           "model": "seedance-1.0-lite-t2v"})
}

async fn create(s: &TestServer, body: Value) -> String {
    let (status, body) = s.post("/api/v1/ai/video/task", body).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["type"], "video_generation", "{body}");
    body["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string()
}

async fn until(mut check: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn text_to_video_completes_with_a_seekable_mp4_served_here() {
    let (emu, url, _stop) = emulator(Duration::from_millis(100), Duration::from_millis(300)).await;
    let s = server(&url).await;
    let user = s.create_user("video@example.com").await;
    // With the latest Go server's `provider`, as its clients send it.
    let mut body = small("a fox runs through snow", &user);
    body["provider"] = json!("volcengine");
    let id = create(&s, body).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let video_url = t["video_url"].as_str().expect("video_url").to_string();
    assert!(video_url.starts_with(&s.base), "served by us: {video_url}");
    let v = emu.stats().video;
    assert_eq!(v.created, 1);
    // Without a public URL the task is submitted without a callback and tracked by the list.
    assert!(v.list_calls >= 1, "{v:?}");
    assert_eq!((v.callbacks_sent, v.get_calls), (0, 0), "{v:?}");

    let whole = s.http.get(&video_url).send().await.expect("get");
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "video/mp4");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    let bytes = whole.bytes().await.expect("body");
    assert!(bytes.len() > 200, "{} bytes", bytes.len());
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4");

    let part = s
        .http
        .get(&video_url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{}", bytes.len()).as_str()
    );
    assert_eq!(part.headers()["content-type"], "video/mp4");
    assert_eq!(&part.bytes().await.expect("body")[..], &bytes[100..200]);

    let tail = s
        .http
        .get(&video_url)
        .header("range", "bytes=-16")
        .send()
        .await
        .expect("suffix");
    assert_eq!(tail.status(), 206);
    assert_eq!(
        &tail.bytes().await.expect("body")[..],
        &bytes[bytes.len() - 16..]
    );
    let past = s
        .http
        .get(&video_url)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .expect("past");
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{}", bytes.len()).as_str()
    );

    // The same task through GraphQL.
    let q = "query($id: ID!) { task(id: $id) { kind status video { duration resolution providerTaskId } result { videoUrl images { id } } } }";
    let g = s.gql(q, json!({"id": id})).await;
    let task = &g["data"]["task"];
    assert_eq!(task["kind"], "VIDEO", "{g}");
    assert_eq!(task["result"]["videoUrl"], video_url.as_str(), "{g}");
    assert_eq!(task["video"]["duration"], 2);
    assert!(task["video"]["providerTaskId"].is_string(), "{g}");
}

#[tokio::test]
async fn graphql_creates_a_video_task_and_image_tasks_say_image() {
    let (_emu, url, _stop) = emulator(Duration::from_millis(50), Duration::from_millis(200)).await;
    let s = server(&url).await;
    let user = s.create_user("gqlvideo@example.com").await;
    let m = "mutation($i: CreateVideoTaskInput!) { createVideoTask(input: $i) { id kind status } }";
    let g = s
        .gql(
            m,
            json!({"i": {"userId": user, "prompt": "waves", "duration": 3, "resolution": "480p",
                         "model": "seedance-1.0-lite-t2v", "cameraFixed": true}}),
        )
        .await;
    assert_eq!(g["data"]["createVideoTask"]["kind"], "VIDEO", "{g}");
    let id = g["data"]["createVideoTask"]["id"].as_str().expect("id");
    let t = s.wait_terminal(id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["video"]["camera_fixed"], true);

    let image = s.create_task(&user, "a still").await;
    let g = s
        .gql(
            "query($id: ID!) { task(id: $id) { kind } }",
            json!({"id": image}),
        )
        .await;
    assert_eq!(g["data"]["task"]["kind"], "IMAGE", "{g}");
}

#[tokio::test]
async fn cancel_reaches_the_provider() {
    // Queued at the provider long enough to be cancelled there (Ark cancels only queued tasks).
    let (emu, url, _stop) = emulator(Duration::from_secs(60), Duration::from_millis(200)).await;
    let s = server(&url).await;
    let user = s.create_user("cancel@example.com").await;
    let id = create(&s, small("to be cancelled", &user)).await;
    s.wait_submitted(&id).await;
    let (status, body) = s
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    until(
        || emu.stats().video.by_status.get("cancelled") == Some(&1),
        "the provider's task cancelled",
    )
    .await;
    assert!(emu.stats().video.delete_calls >= 1);
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "cancelled");
}

#[tokio::test]
async fn a_restart_after_the_submit_tracks_the_task_instead_of_submitting_again() {
    let (emu, url, _stop) = emulator(Duration::from_millis(100), Duration::from_secs(2)).await;
    let mut s = server(&url).await;
    let user = s.create_user("restart@example.com").await;
    let id = create(&s, small("survives a restart", &user)).await;
    let submitted = s.wait_submitted(&id).await;
    assert_eq!(submitted["status"], "processing");
    // Stopped while the provider works; the new process finds the task with its provider id.
    s.start_again().await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["provider_task_id"], submitted["provider_task_id"]);
    assert_eq!(emu.stats().video.created, 1, "submitted exactly once");
}

#[tokio::test]
async fn invalid_video_requests_are_refused_before_any_provider_call() {
    let (emu, url, _stop) = emulator(Duration::from_millis(50), Duration::from_millis(100)).await;
    let s = server(&url).await;
    let user = s.create_user("invalid@example.com").await;
    let cases = [
        (json!({"user_id": user, "prompt": " "}), "prompt"),
        (
            json!({"user_id": user, "prompt": "x", "duration": 30}),
            "duration",
        ),
        (
            json!({"user_id": user, "prompt": "x", "ratio": "5:4"}),
            "ratio",
        ),
        (
            json!({"user_id": user, "prompt": "x", "resolution": "4k"}),
            "resolution",
        ),
        (
            json!({"user_id": user, "prompt": "x", "model": "sora"}),
            "model",
        ),
        (
            json!({"user_id": user, "prompt": "x", "model": "seedance-1.0-lite-t2v",
                   "images": ["https://example.com/a.png"]}),
            "images",
        ),
        (
            json!({"user_id": user, "prompt": "x", "images": ["ftp://x/a.png"]}),
            "images[0]",
        ),
        (json!({"user_id": user, "prompt": "x", "seed": -7}), "seed"),
        // The latest Go server dispatched by `provider`; only Volcengine's is here.
        (
            json!({"user_id": user, "prompt": "x", "provider": "openai"}),
            "provider",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = s.post("/api/v1/ai/video/task", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["code"], "VALIDATION_FAILED", "{answer}");
        let fields: Vec<&str> = answer["details"]
            .as_array()
            .expect("details")
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{body}: {fields:?}");
    }
    let g = s
        .gql(
            "mutation($i: CreateVideoTaskInput!) { createVideoTask(input: $i) { id } }",
            json!({"i": {"userId": user, "prompt": "x", "duration": 1}}),
        )
        .await;
    assert!(g["errors"].is_array(), "{g}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(emu.stats().video.created, 0, "nothing reached the provider");
}

#[tokio::test]
async fn a_callback_completes_the_task_with_no_list_request() {
    let (emu, url, _stop) = emulator(Duration::from_millis(100), Duration::from_millis(400)).await;
    let s = public_server(&url).await;
    let user = s.create_user("callback@example.com").await;
    let id = create(&s, small("called back", &user)).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let video = s
        .http
        .get(t["video_url"].as_str().expect("video_url"))
        .send()
        .await
        .expect("video");
    assert_eq!(video.status(), 200);
    let v = emu.stats().video;
    assert!(v.callbacks_delivered >= 1, "{v:?}");
    assert_eq!(v.list_calls, 0, "no list request was needed: {v:?}");
    // Only the final callback is worth a look (`queued` and `running` ones are not).
    assert_eq!(v.get_calls, 1, "{v:?}");
}

#[tokio::test]
async fn a_forged_callback_is_refused_and_changes_nothing() {
    let (emu, url, _stop) = emulator(Duration::from_millis(100), Duration::from_secs(1)).await;
    let s = public_server(&url).await;
    let user = s.create_user("forged@example.com").await;
    let id = create(&s, small("not forged", &user)).await;
    let before = s.wait_submitted(&id).await;
    let pid = before["provider_task_id"]
        .as_str()
        .expect("provider task id");
    let lie = json!({"id": pid, "status": "succeeded",
                     "content": {"video_url": "http://127.0.0.1:9/forged.mp4"}});
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/api/v1/callbacks/video/{id}/wrong-token"),
        format!("/api/v1/callbacks/video/{id}/{}", "A".repeat(32)),
        format!("/api/v1/callbacks/video/{unknown}/{}", "A".repeat(32)),
        format!("/api/v1/callbacks/video/not-an-id/{}", "A".repeat(32)),
    ] {
        let (status, body) = s.post(&path, lie.clone()).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["code"], "FORBIDDEN", "{body}");
    }
    let (_, now) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(now["data"], before, "the task did not change");

    // The provider's own callback then ends it with the provider's video, fetched by one GET:
    // the forged ones made no look.
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    let kept = s
        .http
        .get(t["video_url"].as_str().expect("video_url"))
        .send()
        .await
        .expect("video")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&kept[4..8], b"ftyp", "the provider's MP4");
    let v = emu.stats().video;
    assert_eq!((v.get_calls, v.list_calls), (1, 0), "{v:?}");
}

/// The submits of one task that the provider refused `throttled` times (429) and then took, as
/// the emulator recorded them: in that order, and each at least `THROTTLED_WAIT` after the 429
/// before it (a lower bound on the provider's own clock: a slow machine only widens the gaps).
pub(crate) fn assert_spaced_after_429s(log: &[Submit], throttled: usize) {
    let statuses: Vec<u16> = log.iter().map(|s| s.status).collect();
    let mut want = vec![429; throttled];
    want.push(200);
    assert_eq!(statuses, want, "{log:?}");
    let least = THROTTLED_WAIT.as_millis() as u64;
    for pair in log.windows(2) {
        assert!(
            pair[1].at_ms >= pair[0].at_ms + least,
            "a submit came {} ms after a 429: {log:?}",
            pair[1].at_ms - pair[0].at_ms
        );
    }
}

#[tokio::test]
async fn a_throttled_submit_waits_and_costs_no_attempt() {
    // Ark's RPM 429 (`ModelAccountRpmRateLimitExceeded`), without Retry-After, to the first
    // three creates.
    let (emu, url, _stop) =
        emulator_with(Duration::from_millis(50), Duration::from_millis(200), |c| {
            c.video.throttle_first = 3
        })
        .await;
    let s = server(&url).await;
    let user = s.create_user("throttled@example.com").await;
    let id = create(&s, small("refused three times", &user)).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempts"], 1, "a 429 costs no attempt: {t}");
    let v = emu.stats().video;
    assert_eq!(v.created, 1, "{v:?}");
    assert_spaced_after_429s(&v.create_log, 3);
}

#[tokio::test]
async fn the_same_callback_delivered_again_and_again_ends_the_task_once() {
    // Every callback POSTed three times at once (at-least-once delivery).
    let (emu, url, _stop) = emulator_with(
        Duration::from_millis(100),
        Duration::from_millis(400),
        |c| c.video.callback_copies = 3,
    )
    .await;
    let s = public_server(&url).await;
    let user = s.create_user("repeats@example.com").await;
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    ws.subscribe(
        "all",
        "subscription($u: ID) { tasksUpdated(userId: $u) { id status version } }",
        json!({"u": user}),
    )
    .await;
    let id = create(&s, small("called back thrice", &user)).await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");

    // The provider's final callback, delivered again after the task ended: each answered 2xx,
    // and nothing is looked at again.
    let pid = done["provider_task_id"].as_str().expect("provider task id");
    let (callback, body) = emu.video_callback(pid).expect("the task's callback");
    assert_eq!(body["status"], "succeeded", "{body}");
    for _ in 0..3 {
        let resp = s
            .http
            .post(&callback)
            .json(&body)
            .send()
            .await
            .expect("callback");
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.expect("json");
        assert_eq!(answer["data"]["outcome"], "ended", "{answer}");
    }
    // A later change of the same user marks the end of what the repeats could have published.
    let marker = s.create_task(&user, "after the repeats").await;
    let mut completions = 0;
    loop {
        let WsEvent::Next { data, .. } = ws.next_event().await else {
            panic!("subscription ended");
        };
        let t = &data["tasksUpdated"];
        if t["id"] == marker.as_str() {
            break;
        }
        if t["id"] == id.as_str() && t["status"] == "COMPLETED" {
            completions += 1;
            assert_eq!(t["version"], done["version"], "{t}");
        }
    }
    assert_eq!(completions, 1, "one terminal transition, one event");
    let (_, now) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(now["data"]["version"], done["version"], "no later write");
    let v = emu.stats().video;
    assert_eq!(v.downloads, 1, "one download: {v:?}");
    assert_eq!(v.callbacks_failed, 0, "every delivery answered 2xx: {v:?}");
    assert!(v.callbacks_delivered >= 3, "{v:?}");
}
