//! The emulator itself, spoken to over real HTTP with reqwest as the service's clients do:
//! Seedance tasks (lifecycle, callbacks with retries, list filters, limits, DELETE, expiring MP4
//! URLs), the Jimeng visual API (signatures accepted and refused, results, limits), and Ark's
//! per-key image limits and revoked keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use chrono::Utc;
use serde_json::{json, Value};

use volcengine_ai_server::emulator::mp4::top_level_boxes;
use volcengine_ai_server::emulator::{Emulator, EmulatorConfig, VideoConfig, VisualConfig};
use volcengine_ai_server::provider::volc_sign::{self, Credentials};

const KEY: &str = "emu-key";
const PRO: &str = "doubao-seedance-1-0-pro-250528";
const TASKS: &str = "/api/v3/contents/generations/tasks";

struct Running {
    emu: Emulator,
    url: String,
    _stop: tokio_util::sync::DropGuard,
}

async fn start(cfg: EmulatorConfig) -> Running {
    let (emu, url, stop) = crate::common::start_emulator(cfg).await;
    Running {
        emu,
        url,
        _stop: stop.drop_guard(),
    }
}

/// Fast timers and no read limits (tests poll quickly); each test sets what it exercises.
fn video_cfg(video: VideoConfig) -> EmulatorConfig {
    EmulatorConfig {
        latency: Duration::from_millis(10),
        api_key: Some(KEY.into()),
        video,
        ..EmulatorConfig::default()
    }
}

fn fast_video() -> VideoConfig {
    VideoConfig {
        queue_time: Duration::from_millis(50),
        run_time: Duration::from_millis(200),
        get_qps: 0,
        list_qps: 0,
        delete_qps: 0,
        ..VideoConfig::default()
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = http.request(method, url).bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("send");
    let (status, headers) = (r.status(), r.headers().clone());
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v, headers)
}

fn create_body(prompt: &str) -> Value {
    json!({"model": PRO, "content": [{"type": "text", "text": format!("{prompt} --rs 480p --dur 2")}]})
}

async fn create(http: &reqwest::Client, url: &str, body: Value) -> String {
    let (status, v, _) = call(
        http,
        reqwest::Method::POST,
        &format!("{url}{TASKS}"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["id"].as_str().expect("id").to_string()
}

async fn get(http: &reqwest::Client, url: &str, id: &str) -> Value {
    let (status, v, _) = call(
        http,
        reqwest::Method::GET,
        &format!("{url}{TASKS}/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls the task until it has `status` (generous deadline: the machine may be slow).
async fn wait_status(http: &reqwest::Client, url: &str, id: &str, status: &str) -> Value {
    for _ in 0..600 {
        let v = get(http, url, id).await;
        if v["status"] == status {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} never reached {status}");
}

/// A callback receiver: records every POST body; answers 500 to the first `fail_finals` posts
/// of a final status.
#[derive(Clone, Default)]
struct Hook {
    posts: Arc<Mutex<Vec<Value>>>,
    fail_finals: Arc<Mutex<u32>>,
}

async fn hook_handler(State(h): State<Hook>, Json(body): Json<Value>) -> StatusCode {
    let final_status = matches!(
        body["status"].as_str(),
        Some("succeeded" | "failed" | "expired")
    );
    h.posts.lock().expect("lock").push(body);
    let mut fail = h.fail_finals.lock().expect("lock");
    if final_status && *fail > 0 {
        *fail -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn hook(fail_finals: u32) -> (Hook, String) {
    let h = Hook {
        fail_finals: Arc::new(Mutex::new(fail_finals)),
        ..Hook::default()
    };
    let app = Router::new()
        .route("/hook", post(hook_handler))
        .with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (h, url)
}

fn statuses(h: &Hook) -> Vec<String> {
    h.posts
        .lock()
        .expect("lock")
        .iter()
        .map(|v| v["status"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn wait_posts(h: &Hook, n: usize) {
    for _ in 0..600 {
        if h.posts.lock().expect("lock").len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("only {:?} callbacks arrived", statuses(h));
}

#[tokio::test]
async fn a_video_task_runs_to_a_real_mp4_and_calls_back_each_status() {
    let r = start(video_cfg(fast_video())).await;
    let (h, hook_url) = hook(0).await;
    let http = reqwest::Client::new();
    let mut body = create_body("a fox in the snow");
    body["callback_url"] = json!(hook_url);
    body["return_last_frame"] = json!(true);
    let (status, v, headers) = call(
        &http,
        reqwest::Method::POST,
        &format!("{}{TASKS}", r.url),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    // cgt-YYYYMMDDhhmmss-xxxxx
    assert!(
        id.starts_with("cgt-") && id.len() == 24 && id.as_bytes()[18] == b'-',
        "{id}"
    );
    assert_eq!(headers["x-request-id"].len(), 53);

    let done = wait_status(&http, &r.url, &id, "succeeded").await;
    assert_eq!(done["model"], PRO);
    assert_eq!(
        (done["resolution"].as_str(), done["ratio"].as_str()),
        (Some("480p"), Some("16:9"))
    );
    assert_eq!(
        (done["duration"].as_i64(), done["framespersecond"].as_i64()),
        (Some(2), Some(24))
    );
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["usage"]["completion_tokens"], 864 * 480 * 49 / 1024);
    assert!(done["created_at"].as_i64().is_some() && done["updated_at"].as_i64().is_some());

    let video_url = done["content"]["video_url"].as_str().expect("video_url");
    assert!(video_url.contains("X-Tos-Expires=86400"), "{video_url}");
    let resp = http.get(video_url).send().await.expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    let mp4 = resp.bytes().await.expect("bytes");
    assert_eq!(&mp4[4..12], b"ftypisom");
    let kinds: Vec<[u8; 4]> = top_level_boxes(&mp4).iter().map(|b| b.0).collect();
    assert_eq!(kinds, [*b"ftyp", *b"moov", *b"mdat"]);
    // One raw 864×480 picture (1.5 bytes a pixel) and 48 skipped frames.
    assert!(mp4.len() > 864 * 480 * 3 / 2, "{}", mp4.len());
    let frame = done["content"]["last_frame_url"]
        .as_str()
        .expect("last frame");
    let png = http
        .get(frame)
        .send()
        .await
        .expect("frame")
        .bytes()
        .await
        .expect("bytes");
    let size = imagesize::blob_size(&png).expect("png");
    assert_eq!((size.width, size.height), (864, 480));

    wait_posts(&h, 3).await;
    assert_eq!(statuses(&h), ["queued", "running", "succeeded"]);
    let last = h.posts.lock().expect("lock")[2].clone();
    assert_eq!(last["content"]["video_url"], done["content"]["video_url"]);
    let stats = r.emu.stats();
    assert_eq!(stats.video.created, 1);
    assert_eq!(stats.video.by_status["succeeded"], 1);
    assert_eq!(stats.video.callbacks_delivered, 3);
    assert_eq!(stats.endpoints[&format!("POST {TASKS}")], 1);
}

#[tokio::test]
async fn a_final_callback_is_resent_up_to_three_times_without_a_2xx() {
    let r = start(video_cfg(VideoConfig {
        callback_timeout: Duration::from_millis(100),
        ..fast_video()
    }))
    .await;
    let http = reqwest::Client::new();
    // Acknowledged at the third try.
    let (h, hook_url) = hook(2).await;
    let mut body = create_body("retried");
    body["callback_url"] = json!(hook_url);
    create(&http, &r.url, body).await;
    wait_posts(&h, 5).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        statuses(&h),
        ["queued", "running", "succeeded", "succeeded", "succeeded"]
    );
    // Never acknowledged: one try and three more, then silence.
    let (h, hook_url) = hook(u32::MAX).await;
    let mut body = create_body("sensitive-output never acknowledged");
    body["callback_url"] = json!(hook_url);
    create(&http, &r.url, body).await;
    wait_posts(&h, 6).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        statuses(&h),
        ["queued", "running", "failed", "failed", "failed", "failed"]
    );
    let failed = h.posts.lock().expect("lock")[5].clone();
    assert_eq!(
        failed["error"]["code"],
        "OutputVideoSensitiveContentDetected"
    );
    assert_eq!(r.emu.stats().video.callbacks_failed, 2 + 4);
}

#[tokio::test]
async fn the_list_filters_by_status_ids_and_model_and_pages() {
    let r = start(video_cfg(fast_video())).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let prompt = if i == 4 {
            "sensitive-output".to_string()
        } else {
            format!("clip {i}")
        };
        ids.push(create(&http, &r.url, create_body(&prompt)).await);
    }
    let lite = json!({"model": "doubao-seedance-1-0-lite-t2v-250428", "content": [{"type": "text", "text": "lite --dur 2 --rs 480p"}]});
    let lite_id = create(&http, &r.url, lite).await;
    for id in &ids[..4] {
        wait_status(&http, &r.url, id, "succeeded").await;
    }
    wait_status(&http, &r.url, &ids[4], "failed").await;
    wait_status(&http, &r.url, &lite_id, "succeeded").await;

    let list = |q: String| {
        let (http, url) = (http.clone(), r.url.clone());
        async move {
            let (s, v, _) = call(
                &http,
                reqwest::Method::GET,
                &format!("{url}{TASKS}?{q}"),
                None,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };
    let all = list(String::new()).await;
    assert_eq!(all["total"], 6);
    // Newest first.
    assert_eq!(all["items"][0]["id"], lite_id.as_str());
    let ok = list("filter.status=succeeded".into()).await;
    assert_eq!(ok["total"], 5);
    let failed = list("filter.status=failed".into()).await;
    assert_eq!(
        (failed["total"].as_u64(), failed["items"][0]["id"].as_str()),
        (Some(1), Some(ids[4].as_str()))
    );
    let some = list(format!(
        "filter.task_ids={}&filter.task_ids={}&filter.task_ids=cgt-nope",
        ids[0], ids[4]
    ))
    .await;
    assert_eq!(some["total"], 2);
    let by_model = list(format!("filter.model={PRO}&filter.status=succeeded")).await;
    assert_eq!(by_model["total"], 4);
    let page = list("page_size=2&page_num=3".into()).await;
    assert_eq!(
        (
            page["total"].as_u64(),
            page["items"].as_array().map(Vec::len)
        ),
        (Some(6), Some(2))
    );
    assert_eq!(page["items"][1]["id"], ids[0].as_str());
    let (s, v, _) = call(
        &http,
        reqwest::Method::GET,
        &format!("{}{TASKS}?page_size=501", r.url),
        None,
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["param"].as_str()),
        (400, Some("page_size"))
    );
    let (s, v, _) = call(
        &http,
        reqwest::Method::GET,
        &format!("{}{TASKS}?filter.status=done", r.url),
        None,
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    assert_eq!(r.emu.stats().video.list_calls, 8);
}

#[tokio::test]
async fn limits_keep_extra_tasks_queued_and_refuse_over_rpm_quota_and_qps() {
    // One task runs at a time and runs long: the others stay queued.
    let r = start(video_cfg(VideoConfig {
        concurrency: Some(1),
        run_time: Duration::from_secs(600),
        rpm: Some(4),
        max_queued: Some(2),
        list_qps: 1,
        qps_window: Duration::from_secs(60),
        ..fast_video()
    }))
    .await;
    let http = reqwest::Client::new();
    let first = create(&http, &r.url, create_body("one")).await;
    wait_status(&http, &r.url, &first, "running").await;
    let second = create(&http, &r.url, create_body("two")).await;
    let third = create(&http, &r.url, create_body("three")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&http, &r.url, &second).await["status"], "queued");
    assert_eq!(get(&http, &r.url, &third).await["status"], "queued");
    // Two queued already: QuotaExceeded.
    let url = format!("{}{TASKS}", r.url);
    let (s, v, _) = call(
        &http,
        reqwest::Method::POST,
        &url,
        Some(create_body("four")),
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (429, Some("QuotaExceeded")),
        "{v}"
    );
    // That create counted against the RPM (4): the next is over it.
    let (s, v, _) = call(
        &http,
        reqwest::Method::POST,
        &url,
        Some(create_body("five")),
    )
    .await;
    assert_eq!(s, 429);
    assert_eq!(v["error"]["code"], "ModelAccountRpmRateLimitExceeded");
    assert_eq!(v["error"]["type"], "TooManyRequests");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m
        .starts_with("RPM (Requests Per Minute) limit of the model is exceeded. Request id: 02")));
    // The list allows one call a second.
    let (s1, _, _) = call(&http, reqwest::Method::GET, &url, None).await;
    let (s2, v2, _) = call(&http, reqwest::Method::GET, &url, None).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (200, 429));
    assert_eq!(v2["error"]["code"], "AccountRateLimitExceeded");
    let stats = r.emu.stats();
    assert_eq!(
        (
            stats.video.by_status["running"],
            stats.video.by_status["queued"]
        ),
        (1, 2)
    );
    assert_eq!(stats.by_key[KEY].rate_limited, 3);
}

#[tokio::test]
async fn delete_cancels_queued_forgets_finished_and_refuses_running() {
    let slow = start(video_cfg(VideoConfig {
        concurrency: Some(1),
        run_time: Duration::from_secs(600),
        ..fast_video()
    }))
    .await;
    let http = reqwest::Client::new();
    let running = create(&http, &slow.url, create_body("runs")).await;
    wait_status(&http, &slow.url, &running, "running").await;
    let queued = create(&http, &slow.url, create_body("waits")).await;
    let del = |url: String| {
        let http = http.clone();
        async move { call(&http, reqwest::Method::DELETE, &url, None).await }
    };
    let (s, v, _) = del(format!("{}{TASKS}/{queued}", slow.url)).await;
    assert_eq!((s.as_u16(), &v), (200, &json!({})));
    assert_eq!(get(&http, &slow.url, &queued).await["status"], "cancelled");
    let (s, v, _) = del(format!("{}{TASKS}/{queued}", slow.url)).await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    let (s, _, _) = del(format!("{}{TASKS}/{running}", slow.url)).await;
    assert_eq!(s, 400);

    let fast = start(video_cfg(fast_video())).await;
    let done = create(&http, &fast.url, create_body("done")).await;
    wait_status(&http, &fast.url, &done, "succeeded").await;
    let (s, _, _) = del(format!("{}{TASKS}/{done}", fast.url)).await;
    assert_eq!(s, 200);
    let (s, v, _) = call(
        &http,
        reqwest::Method::GET,
        &format!("{}{TASKS}/{done}", fast.url),
        None,
    )
    .await;
    assert_eq!(
        (s.as_u16(), v["error"]["type"].as_str()),
        (404, Some("NotFound"))
    );
}

#[tokio::test]
async fn creates_are_validated_and_failures_injected() {
    let r = start(video_cfg(VideoConfig {
        url_ttl: Duration::from_secs(1),
        ..fast_video()
    }))
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}{TASKS}", r.url);
    let post = |body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move { call(&http, reqwest::Method::POST, &url, Some(body)).await }
    };
    let mut strict = create_body("x");
    strict["duration"] = json!(30);
    let (s, v, _) = post(strict).await;
    assert_eq!(
        (
            s.as_u16(),
            v["error"]["code"].as_str(),
            v["error"]["param"].as_str()
        ),
        (400, Some("InvalidParameter"), Some("duration"))
    );
    // The same bad value inline falls back to the default.
    let lenient =
        json!({"model": PRO, "content": [{"type": "text", "text": "x --dur 30 --rs 480p"}]});
    let id = create(&http, &r.url, lenient).await;
    assert_eq!(get(&http, &r.url, &id).await["duration"], 5);
    let (s, v, _) =
        post(json!({"model": "doubao-seedance-9", "content": [{"type": "text", "text": "x"}]}))
            .await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (404, Some("InvalidEndpointOrModel.NotFound"))
    );
    let (s, v, _) = post(create_body("sensitive-content here")).await;
    assert_eq!(
        (s.as_u16(), v["error"]["code"].as_str()),
        (400, Some("InputTextSensitiveContentDetected"))
    );
    let r401 = http
        .post(&url)
        .bearer_auth("wrong")
        .json(&create_body("x"))
        .send()
        .await
        .expect("send");
    assert_eq!(r401.status(), 401);

    let expired = create(&http, &r.url, create_body("expire-task")).await;
    let v = wait_status(&http, &r.url, &expired, "expired").await;
    assert!(v["content"].is_null());
    // Video links expire like the images' (403 from the object store).
    let ok = create(&http, &r.url, create_body("short-lived")).await;
    let v = wait_status(&http, &r.url, &ok, "succeeded").await;
    let video_url = v["content"]["video_url"].as_str().expect("url").to_string();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resp = http.get(&video_url).send().await.expect("download");
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["Code"], "AccessDenied");
}

// ---- Jimeng on the visual API ----

const AK: &str = "AKLTtest";
const SK: &str = "c2VjcmV0";

fn visual_cfg(visual: VisualConfig) -> EmulatorConfig {
    EmulatorConfig {
        visual: VisualConfig {
            credentials: vec![(AK.into(), SK.into())],
            queue_time: Duration::from_millis(500),
            image_time: Duration::from_millis(100),
            video_time: Duration::from_millis(100),
            ..visual
        },
        ..EmulatorConfig::default()
    }
}

/// A signed visual API call; `tamper` changes the body after signing.
async fn visual(
    url: &str,
    action: &str,
    body: &Value,
    creds: &Credentials,
    at: chrono::DateTime<Utc>,
    tamper: bool,
) -> (u16, Value) {
    let full =
        reqwest::Url::parse(&format!("{url}/?Action={action}&Version=2022-08-31")).expect("url");
    let bytes = serde_json::to_vec(body).expect("json");
    let signed =
        volc_sign::sign_request(creds, "POST", &full, Some("application/json"), &bytes, at);
    let sent = if tamper { b"{}".to_vec() } else { bytes };
    let r = reqwest::Client::new()
        .post(full)
        .header("content-type", "application/json")
        .header("x-date", signed.x_date)
        .header("x-content-sha256", signed.x_content_sha256)
        .header("authorization", signed.authorization)
        .body(sent)
        .send()
        .await
        .expect("send");
    (r.status().as_u16(), r.json().await.expect("json"))
}

fn creds() -> Credentials {
    Credentials::visual(AK, SK)
}

#[tokio::test]
async fn jimeng_tasks_are_submitted_signed_and_polled_to_jpegs() {
    let r = start(visual_cfg(VisualConfig::default())).await;
    let submit =
        json!({"req_key": "jimeng_t2i_v31", "prompt": "a lighthouse", "width": 640, "height": 512});
    let (s, v) = visual(
        &r.url,
        "CVSync2AsyncSubmitTask",
        &submit,
        &creds(),
        Utc::now(),
        false,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_i64(), v["message"].as_str()),
        (200, Some(10000), Some("Success")),
        "{v}"
    );
    assert_eq!(v["request_id"].as_str().map(str::len), Some(34));
    assert_eq!(v["status"], 10000);
    assert!(v["time_elapsed"]
        .as_str()
        .is_some_and(|t| t.ends_with("ms")));
    let task_id = v["data"]["task_id"].as_str().expect("task_id").to_string();

    let poll = |return_url: bool| {
        let (url, task_id) = (r.url.clone(), task_id.clone());
        async move {
            let req_json = json!({"return_url": return_url}).to_string();
            let body =
                json!({"req_key": "jimeng_t2i_v31", "task_id": task_id, "req_json": req_json});
            visual(
                &url,
                "CVSync2AsyncGetResult",
                &body,
                &creds(),
                Utc::now(),
                false,
            )
            .await
        }
    };
    // Not done yet: only the status (in_queue, unless this machine took half a second).
    let (s, v) = poll(true).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        matches!(
            v["data"]["status"].as_str(),
            Some("in_queue" | "generating")
        ),
        "{v}"
    );
    assert_eq!(v["data"]["image_urls"], Value::Null);
    let mut done = Value::Null;
    for _ in 0..400 {
        let (_, v) = poll(true).await;
        if v["data"]["status"] == "done" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = done["data"]["image_urls"][0].as_str().expect("image url");
    let resp = reqwest::get(url).await.expect("download");
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    let jpeg = resp.bytes().await.expect("bytes");
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    let size = imagesize::blob_size(&jpeg).expect("jpeg");
    assert_eq!((size.width, size.height), (640, 512));
    // The same URLs on every poll; base64 without return_url.
    assert_eq!(poll(true).await.1["data"]["image_urls"][0], url);
    let (_, v) = poll(false).await;
    let b64 = v["data"]["binary_data_base64"][0].as_str().expect("base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("decode");
    assert_eq!(&bytes[..2], &[0xFF, 0xD8]);

    let unknown = json!({"req_key": "jimeng_t2i_v31", "task_id": "7000000000000000000"});
    let (s, v) = visual(
        &r.url,
        "CVSync2AsyncGetResult",
        &unknown,
        &creds(),
        Utc::now(),
        false,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_i64(), v["data"]["status"].as_str()),
        (200, Some(10000), Some("not_found"))
    );
    // A video req_key ends with an MP4.
    let video = json!({"req_key": "jimeng_t2v_v30", "prompt": "waves", "aspect_ratio": "1:1"});
    let (_, v) = visual(
        &r.url,
        "CVSync2AsyncSubmitTask",
        &video,
        &creds(),
        Utc::now(),
        false,
    )
    .await;
    let vid = v["data"]["task_id"].as_str().expect("id").to_string();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let body = json!({"req_key": "jimeng_t2v_v30", "task_id": vid});
    let mut video_url = None;
    for _ in 0..400 {
        let (_, v) = visual(
            &r.url,
            "CVSync2AsyncGetResult",
            &body,
            &creds(),
            Utc::now(),
            false,
        )
        .await;
        if let Some(u) = v["data"]["video_url"].as_str() {
            video_url = Some(u.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mp4 = reqwest::get(video_url.expect("video url"))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(&mp4[4..8], b"ftyp");
    let stats = r.emu.stats();
    assert_eq!(stats.visual.submits, 2);
    assert!(stats.endpoints["POST /?Action=CVSync2AsyncGetResult"] >= 5);
}

#[tokio::test]
async fn jimeng_signatures_are_checked() {
    let r = start(visual_cfg(VisualConfig::default())).await;
    let body = json!({"req_key": "jimeng_t2i_v31", "prompt": "x"});
    let submit = "CVSync2AsyncSubmitTask";
    let error = |v: &Value| {
        let e = &v["ResponseMetadata"]["Error"];
        (
            e["Code"].as_str().unwrap_or("").to_string(),
            e["CodeN"].as_u64().unwrap_or(0),
        )
    };
    let (s, v) = visual(&r.url, submit, &body, &creds(), Utc::now(), true).await;
    assert_eq!(
        (s, error(&v)),
        (401, ("SignatureDoesNotMatch".into(), 100010)),
        "{v}"
    );
    assert_eq!(v["ResponseMetadata"]["Action"], submit);
    let wrong_secret = Credentials::visual(AK, "not-the-secret");
    let (s, v) = visual(&r.url, submit, &body, &wrong_secret, Utc::now(), false).await;
    assert_eq!((s, error(&v).0.as_str()), (401, "SignatureDoesNotMatch"));
    let (s, v) = visual(
        &r.url,
        submit,
        &body,
        &Credentials::visual("AKLTother", SK),
        Utc::now(),
        false,
    )
    .await;
    assert_eq!((s, error(&v)), (401, ("InvalidAccessKey".into(), 100009)));
    let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
    let (s, v) = visual(&r.url, submit, &body, &creds(), an_hour_ago, false).await;
    assert_eq!((s, error(&v)), (400, ("InvalidTimestamp".into(), 100006)));
    let (s, v) = visual(
        &r.url,
        "CVSubmitTaskNope",
        &body,
        &creds(),
        Utc::now(),
        false,
    )
    .await;
    assert_eq!(
        (s, error(&v)),
        (404, ("InvalidActionOrVersion".into(), 100008))
    );
    let unsigned = reqwest::Client::new()
        .post(format!("{}/?Action={submit}&Version=2022-08-31", r.url))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(unsigned.status(), 400);
    let no_version = reqwest::Client::new()
        .post(format!("{}/?Action={submit}", r.url))
        .json(&body)
        .send()
        .await
        .expect("send");
    let v: Value = no_version.json().await.expect("json");
    assert_eq!(error(&v).0, "MissingParameter");
    // Signed correctly it passes, and the refusals were counted.
    let (s, _) = visual(&r.url, submit, &body, &creds(), Utc::now(), false).await;
    assert_eq!(s, 200);
    assert_eq!(
        r.emu.stats().visual.auth_failures["SignatureDoesNotMatch"],
        2
    );
}

#[tokio::test]
async fn jimeng_limits_and_business_errors() {
    let r = start(visual_cfg(VisualConfig {
        qps: 3,
        qps_window: Duration::from_secs(60),
        concurrency: 1,
        image_time: Duration::from_secs(600),
        ..VisualConfig::default()
    }))
    .await;
    let submit = |body: Value| {
        let url = r.url.clone();
        async move {
            visual(
                &url,
                "CVSync2AsyncSubmitTask",
                &body,
                &creds(),
                Utc::now(),
                false,
            )
            .await
        }
    };
    let (s, v) = submit(json!({"req_key": "jimeng_t2i_v30", "prompt": "one"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = submit(json!({"req_key": "jimeng_t2i_v30", "prompt": "two"})).await;
    assert_eq!(
        (s, v["code"].as_i64(), v["data"].clone()),
        (429, Some(50430), Value::Null)
    );
    let (s, v) = submit(json!({"req_key": "jimeng_t2i_v30", "prompt": "three"})).await;
    assert_eq!((s, v["code"].as_i64()), (429, Some(50430)));
    let (s, v) = submit(json!({"req_key": "jimeng_t2i_v30", "prompt": "four"})).await;
    assert_eq!(
        (s, v["code"].as_i64(), v["message"].as_str()),
        (
            429,
            Some(50429),
            Some("Request Has Reached API Limit, Please Try Later")
        )
    );

    let r = start(visual_cfg(VisualConfig::default())).await;
    let submit = |body: Value| {
        let url = r.url.clone();
        async move {
            visual(
                &url,
                "CVSync2AsyncSubmitTask",
                &body,
                &creds(),
                Utc::now(),
                false,
            )
            .await
        }
    };
    let (s, v) = submit(json!({"req_key": "jimeng_t2i_v31", "prompt": "sensitive-content"})).await;
    assert_eq!(
        (s, v["code"].as_i64(), v["message"].as_str()),
        (400, Some(50412), Some("Text Risk Not Pass"))
    );
    let (s, v) =
        submit(json!({"req_key": "jimeng_t2i_v31", "prompt": "x", "width": 100, "height": 100}))
            .await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(50215)));
    let (_, v) = submit(json!({"req_key": "jimeng_t2i_v31", "prompt": "sensitive-output", "width": 512, "height": 512})).await;
    let id = v["data"]["task_id"].as_str().expect("id").to_string();
    let body = json!({"req_key": "jimeng_t2i_v31", "task_id": id});
    let mut last = (0, Value::Null);
    for _ in 0..400 {
        last = visual(
            &r.url,
            "CVSync2AsyncGetResult",
            &body,
            &creds(),
            Utc::now(),
            false,
        )
        .await;
        if last.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        (last.0, last.1["code"].as_i64()),
        (400, Some(50511)),
        "{}",
        last.1
    );
}

// ---- Ark images: per-key limits and revoked keys ----

async fn generate(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    http.post(format!("{url}/api/v3/images/generations"))
        .bearer_auth(key)
        .json(&json!({"model": "doubao-seedream-3-0-t2i-250415", "prompt": format!("p {key}"), "size": "512x512"}))
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn each_key_has_its_own_ipm_and_a_lifted_limit_takes_effect_at_once() {
    let r = start(EmulatorConfig {
        latency: Duration::from_millis(10),
        api_keys: vec!["k1".into(), "k2".into()],
        key_ipm: vec!["k1=2".parse().expect("limit")],
        retry_after: Some(Duration::from_secs(7)),
        ..EmulatorConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        assert_eq!(generate(&http, &r.url, "k1").await.status(), 200);
    }
    let refused = generate(&http, &r.url, "k1").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "7");
    let v: Value = refused.json().await.expect("json");
    let e = &v["error"];
    assert_eq!(
        (e["code"].as_str(), e["type"].as_str(), e["param"].as_str()),
        (
            Some("ModelAccountIpmRateLimitExceeded"),
            Some("TooManyRequests"),
            Some("")
        )
    );
    assert!(e["message"].as_str().is_some_and(
        |m| m.starts_with("IPM (Images Per Minute) limit of the model is exceeded. Request id: 02")
    ));
    // Another key is another account.
    for _ in 0..3 {
        assert_eq!(generate(&http, &r.url, "k2").await.status(), 200);
    }
    // Lifted while running: the next call passes.
    let lifted = http
        .post(format!("{}/emulator/limits", r.url))
        .json(&json!({"key": "k1", "ipm": null}))
        .send()
        .await
        .expect("post");
    assert_eq!(lifted.status(), 200);
    assert_eq!(generate(&http, &r.url, "k1").await.status(), 200);
    // And lowered again, from the Rust side.
    r.emu.set_ipm(Some("k2"), None, Some(0));
    assert_eq!(generate(&http, &r.url, "k2").await.status(), 429);
    let by_key = r.emu.stats().by_key;
    assert_eq!(
        (
            by_key["k1"].calls,
            by_key["k1"].rate_limited,
            by_key["k1"].images
        ),
        (4, 1, 3)
    );
    assert_eq!(
        (
            by_key["k2"].calls,
            by_key["k2"].rate_limited,
            by_key["k2"].images
        ),
        (4, 1, 3)
    );
}

#[tokio::test]
async fn a_bad_key_answers_401_until_restored_and_no_retry_after_unless_configured() {
    let r = start(EmulatorConfig {
        latency: Duration::from_millis(10),
        bad_keys: vec!["revoked".into()],
        images_per_minute: Some(1),
        ..EmulatorConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let resp = generate(&http, &r.url, "revoked").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["x-error-code"],
        "AuthN_MissOrInvalidAuthorizationHeader"
    );
    let v: Value = resp.json().await.expect("json");
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["type"].as_str()),
        (Some("AuthenticationError"), Some("Unauthorized"))
    );
    // Without configured keys any other key is accepted; --ipm is per key.
    assert_eq!(generate(&http, &r.url, "fine").await.status(), 200);
    let over = generate(&http, &r.url, "fine").await;
    assert_eq!(over.status(), 429);
    assert!(over.headers().get("retry-after").is_none());
    let restored = http
        .post(format!("{}/emulator/limits", r.url))
        .json(&json!({"key": "revoked", "bad": false}))
        .send()
        .await
        .expect("post");
    let limits: Value = restored.json().await.expect("json");
    assert_eq!(limits["bad_keys"], json!([]));
    assert_eq!(generate(&http, &r.url, "revoked").await.status(), 200);
    let stats: Value = reqwest::get(format!("{}/emulator/stats", r.url))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(
        stats["by_key"]["revoked"],
        json!({"calls": 2, "rate_limited": 0, "unauthorized": 1, "images": 1})
    );
    assert_eq!(stats["by_key"]["fine"]["rate_limited"], 1);
}
