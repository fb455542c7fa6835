//! The worker against a separately started emulator over real HTTP, as a deployment pointing
//! `VOLCENGINE_ENDPOINT` at a stand-in provider: keys, error classes, retries, URL expiry.

use std::time::Duration;

use crate::common::TestServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::emulator::{Emulator, EmulatorConfig};

const KEY: &str = "test-key-123";

async fn emulator(cfg: EmulatorConfig) -> (Emulator, String, CancellationToken) {
    crate::common::start_emulator(cfg).await
}

/// A successful generation call to the emulator at `url`; its JSON answer.
async fn generate(http: &reqwest::Client, url: &str, body: serde_json::Value) -> serde_json::Value {
    let r = http
        .post(format!("{url}/api/v3/images/generations"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200, "{body}");
    r.json().await.expect("json")
}

fn emu_cfg() -> EmulatorConfig {
    EmulatorConfig {
        latency: Duration::from_millis(50),
        api_key: Some(KEY.into()),
        ..EmulatorConfig::default()
    }
}

async fn server(endpoint: &str, key: &str, max_attempts: u32) -> TestServer {
    let (endpoint, key) = (endpoint.to_string(), key.to_string());
    TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_key = Some(key.into());
        c.max_attempts = max_attempts;
    })
    .await
}

#[tokio::test]
async fn a_configured_endpoint_and_key_are_used_for_real_calls() {
    let (emu, url, _stop) = emulator(emu_cfg()).await;
    // The SDKs' base form (`…/api/v3`) works as well as the bare root.
    let s = server(&format!("{url}/api/v3"), KEY, 3).await;
    let (_, health) = s.get("/health").await;
    assert_eq!(health["provider"], "ark");
    let user = s.create_user("ark@example.com").await;
    let id = s.create_task(&user, "an ark call").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["provider_request_id"].as_str().map(str::len), Some(53));
    let stats = emu.stats();
    assert_eq!(stats.by_prompt.get("an ark call"), Some(&1));
    assert_eq!(stats.succeeded, 1);
}

#[tokio::test]
async fn a_wrong_key_fails_at_once_with_the_providers_code() {
    let (emu, url, _stop) = emulator(emu_cfg()).await;
    let s = server(&url, "wrong-key", 5).await;
    let user = s.create_user("key@example.com").await;
    let id = s.create_task(&user, "unauthorised").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["error"]["code"], "AuthenticationError");
    assert_eq!(t["error"]["retryable"], false);
    assert_eq!(emu.stats().requests, 1, "not retried");
}

#[tokio::test]
async fn transient_errors_are_retried_until_they_pass() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        fail_first: 2,
        ..emu_cfg()
    })
    .await;
    let s = server(&url, KEY, 5).await;
    let user = s.create_user("retry@example.com").await;
    let id = s.create_task(&user, "flaky twice").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempts"], 3);
    assert_eq!(emu.stats().by_prompt.get("flaky twice"), Some(&3));
}

/// A download that fails after a successful generation is retried without paying for a new
/// generation: the next attempt downloads the same images again.
#[tokio::test]
async fn a_failed_download_is_retried_without_a_new_generation() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        fail_downloads_first: 2,
        ..emu_cfg()
    })
    .await;
    let s = server(&url, KEY, 5).await;
    let user = s.create_user("download@example.com").await;
    let id = s.create_task(&user, "download twice refused").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempts"], 3, "two attempts' downloads failed");
    let stats = emu.stats();
    assert_eq!(
        stats.by_prompt.get("download twice refused"),
        Some(&1),
        "one paid generation"
    );
    assert_eq!((stats.downloads, stats.failed_downloads), (3, 2));
    let image = s
        .http
        .get(t["result"]["image_url"].as_str().expect("image url"))
        .send()
        .await
        .expect("image");
    assert_eq!(image.status(), 200);
    assert!(image.bytes().await.expect("bytes").starts_with(b"\x89PNG"));
}

/// When the downloads keep failing the task fails, and a user's retry still downloads the
/// images already paid for.
#[tokio::test]
async fn a_retry_after_failed_downloads_reuses_the_generation() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        fail_downloads_first: 2,
        ..emu_cfg()
    })
    .await;
    let s = server(&url, KEY, 2).await;
    let user = s.create_user("reuse@example.com").await;
    let id = s.create_task(&user, "downloads exhausted").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "ImageDownloadFailed", "{t}");
    let (status, body) = s
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert!(status < 300, "{status} {body}");
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(emu.stats().by_prompt.get("downloads exhausted"), Some(&1));
}

/// Provider calls come back together; their images are fetched `DOWNLOAD_CONCURRENCY` at a
/// time, not all at once (which made every task of a wave complete late and together).
#[tokio::test]
async fn downloads_are_bounded_apart_from_provider_calls() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        download_latency: Duration::from_millis(300),
        ..emu_cfg()
    })
    .await;
    let s = TestServer::start_with(move |c| {
        c.volcengine_endpoint = url;
        c.volcengine_api_key = Some(KEY.into());
        c.worker_concurrency = 8;
        c.download_concurrency = 2;
    })
    .await;
    let user = s.create_user("downloads@example.com").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(s.create_task(&user, &format!("wave {i}")).await);
    }
    for id in &ids {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
    let stats = emu.stats();
    assert_eq!(stats.downloads, 6);
    assert!(
        (1..=2).contains(&stats.peak_downloads),
        "at most 2 downloads at once, saw {}",
        stats.peak_downloads
    );
}

/// Downloads hold at most `DOWNLOAD_MEMORY_BYTES` of images at once, however many places
/// `DOWNLOAD_CONCURRENCY` leaves: with room for two images, six completing together are
/// fetched two at a time, and every one is still kept.
#[tokio::test]
async fn downloads_stay_within_their_memory_budget() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        download_latency: Duration::from_millis(300),
        // One rendering per size: every image has the same length.
        reuse_images: true,
        ..emu_cfg()
    })
    .await;
    // The images' length, from one task through a server with the default budget.
    let size = {
        let s = server(&url, KEY, 3).await;
        let user = s.create_user("budget-probe@example.com").await;
        let t = s.wait_terminal(&s.create_task(&user, "probe").await).await;
        assert_eq!(t["status"], "completed", "{t}");
        t["result"]["images"][0]["bytes"].as_u64().expect("bytes")
    };
    let budget = (size * 5 / 2).max(64 * 1024);
    let two = (budget / size).min(6);
    assert!(
        two >= 1,
        "an image of {size} bytes against a budget of {budget}"
    );
    let before = emu.stats().downloads;
    let s = TestServer::start_with(move |c| {
        c.volcengine_endpoint = url;
        c.volcengine_api_key = Some(KEY.into());
        c.worker_concurrency = 8;
        c.download_concurrency = 8;
        c.download_memory_bytes = budget;
        // Unpaced, so the six calls are made (and return) together.
        c.provider_ipm = volcengine_ai_server::config::ProviderIpm::parse(
            "1000000",
            &volcengine_ai_server::domain::Catalog::new(&Default::default()),
        )
        .expect("ipm");
    })
    .await;
    let user = s.create_user("budget@example.com").await;
    // Submitted together, so their calls return together and, unbounded, all six would download
    // at once.
    let prompts: Vec<String> = (0..6).map(|i| format!("budgeted {i}")).collect();
    let ids = futures::future::join_all(prompts.iter().map(|p| s.create_task(&user, p))).await;
    for id in &ids {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
    let stats = emu.stats();
    assert_eq!(stats.downloads - before, 6);
    assert!(
        (1..=two).contains(&stats.peak_downloads),
        "at most {two} images of {size} bytes within {budget} at once, saw {}",
        stats.peak_downloads
    );
}

#[tokio::test]
async fn retries_stop_at_the_attempt_budget_keeping_the_last_error() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        fail_rate: 1.0,
        ..emu_cfg()
    })
    .await;
    let s = server(&url, KEY, 3).await;
    let user = s.create_user("budget@example.com").await;
    let id = s.create_task(&user, "always failing").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["error"]["code"], "InternalServiceError");
    assert_eq!(t["error"]["retryable"], true);
    assert_eq!(t["attempts"], 3);
    assert_eq!(emu.stats().by_prompt.get("always failing"), Some(&3));
}

/// Issue #18.1: the provider allows 2 images per 2 s (60 a minute) and the service, told
/// nothing, starts at 600 a minute; the first two calls of all answer 500. Every task completes
/// although each may make one attempt only beyond those 500s: a 429 spends no attempt, the task
/// waits for the pace. The pace learns the limit from the 429s: without learning, a pace ten
/// times the limit would meet dozens of 429s, not a few per task.
#[tokio::test]
async fn rate_limits_never_spend_an_attempt_and_the_pace_learns_the_limit() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        latency: Duration::from_millis(20),
        // Low enough that four workers meet it even on a slow machine over FerretDB.
        images_per_minute: Some(2),
        ipm_window: Duration::from_secs(2),
        fail_calls_first: 2,
        ..emu_cfg()
    })
    .await;
    let endpoint = url.clone();
    let s = TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_key = Some(KEY.into());
        c.provider_ipm = volcengine_ai_server::config::ProviderIpm {
            all: Some(600),
            ..Default::default()
        };
        c.provider_rate_window = Duration::from_secs(2);
        c.worker_concurrency = 4;
        // Room for the two 500s (on one task or two), and not one attempt more.
        c.max_attempts = 3;
        c.retry_base_delay = Duration::from_millis(10);
        c.retry_max_delay = Duration::from_millis(50);
    })
    .await;
    let user = s.create_user("pace@example.com").await;
    let tasks: u64 = 12;
    let prompts: Vec<String> = (0..tasks).map(|i| format!("paced {i}")).collect();
    let ids = futures::future::join_all(prompts.iter().map(|p| s.create_task(&user, p))).await;
    let mut attempts = 0;
    for id in &ids {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
        attempts += t["attempts"].as_u64().expect("attempts");
    }
    let stats = emu.stats();
    let throttled = stats.by_status.get(&429).copied().unwrap_or(0);
    eprintln!("undisclosed limit: {tasks} tasks, {throttled} answers 429, 0 failed");
    assert!(throttled > 0, "the limit was never met");
    assert_eq!(stats.succeeded, tasks);
    assert_eq!(stats.by_status.get(&500), Some(&2));
    assert_eq!(
        attempts,
        tasks + 2,
        "one attempt per task and per 500, none per 429"
    );
    assert!(
        throttled <= 2 * tasks,
        "{throttled} answers 429 for {tasks} tasks: the pace did not learn the limit"
    );
}

#[tokio::test]
async fn images_stay_served_after_the_provider_url_expired() {
    let (_emu, url, _stop) = emulator(EmulatorConfig {
        url_ttl: Duration::from_secs(1),
        ..emu_cfg()
    })
    .await;
    let s = server(&url, KEY, 3).await;
    let user = s.create_user("expiry@example.com").await;
    let id = s.create_task(&user, "short lived link").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let provider_url = t["result"]["images"][0]["provider_url"]
        .as_str()
        .expect("provider url");
    let expired = s.http.get(provider_url).send().await.expect("get");
    assert_eq!(expired.status(), 403);
    let body: serde_json::Value = expired.json().await.expect("json");
    assert_eq!(
        body,
        json!({"Code": "AccessDenied", "Message": "Access Denied", "EC": "0003-00000015"})
    );
    let ours = s
        .http
        .get(t["result"]["image_url"].as_str().expect("url"))
        .send()
        .await
        .expect("get");
    assert_eq!(ours.status(), 200);
}

#[tokio::test]
async fn emulator_speaks_arks_error_bodies() {
    let (_emu, url, _stop) = emulator(emu_cfg()).await;
    let http = reqwest::Client::new();
    let gen = format!("{url}/api/v3/images/generations");
    let r = http
        .post(&gen)
        .json(&json!({"model": "doubao-seedream-3-0-t2i-250415", "prompt": "x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["x-error-code"],
        "AuthN_MissOrInvalidAuthorizationHeader"
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "AuthenticationError");
    assert_eq!(body["error"]["type"], "Unauthorized");

    let cases = [
        (json!({"prompt": "x"}), 400, "MissingParameter", "model"),
        (
            json!({"model": "doubao-seedream-3-0-t2i-250415"}),
            400,
            "MissingParameter",
            "prompt",
        ),
        (
            json!({"model": "nope", "prompt": "x"}),
            404,
            "InvalidEndpointOrModel.NotFound",
            "",
        ),
        (
            json!({"model": "doubao-seedream-4-5-251128", "prompt": "x", "size": "1K"}),
            400,
            "InvalidParameter",
            "size",
        ),
        (
            json!({"model": "doubao-seedream-4-0-250828", "prompt": "x", "seed": 3}),
            400,
            "InvalidParameter",
            "seed",
        ),
    ];
    for (req, status, code, param) in cases {
        let r = http
            .post(&gen)
            .bearer_auth(KEY)
            .header("X-Client-Request-Id", "abc")
            .json(&req)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), status, "{req}");
        assert_eq!(r.headers()["x-client-request-id"], "abc");
        let rid = r.headers()["x-request-id"]
            .to_str()
            .expect("rid")
            .to_string();
        assert_eq!(rid.len(), 53);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], code, "{req}");
        assert_eq!(body["error"]["param"], param, "{req}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(&format!("Request id: {rid}"))));
    }
    let r = generate(
        &http,
        &url,
        json!({"model": "doubao-seedream-4-0-250828", "prompt": "x", "size": "1K",
               "sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}}),
    )
    .await;
    assert_eq!(r["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(r["data"][0]["size"], "1024x1024");
    assert_eq!(r["usage"]["generated_images"], 3);
    assert_eq!(r["usage"]["output_tokens"], 3 * 4096);
}

#[tokio::test]
async fn images_per_minute_limit_answers_the_real_429() {
    let (_emu, url, _stop) = emulator(EmulatorConfig {
        images_per_minute: Some(2),
        latency: Duration::ZERO,
        ..emu_cfg()
    })
    .await;
    let http = reqwest::Client::new();
    let gen = format!("{url}/api/v3/images/generations");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = http
            .post(&gen)
            .bearer_auth(KEY)
            .json(&json!({"model": "doubao-seedream-3-0-t2i-250415", "prompt": "ipm"}))
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("json");
        codes.push((
            status,
            body["error"]["code"].as_str().unwrap_or("").to_string(),
        ));
    }
    assert_eq!(codes[0].0, 200);
    assert_eq!(codes[1].0, 200);
    assert_eq!(
        codes[2],
        (429, "ModelAccountIpmRateLimitExceeded".to_string())
    );
}

#[tokio::test]
async fn a_429_storm_with_the_limiter_fails_no_task() {
    // The provider allows 2 images per 2 s (60 per minute); we pace at 50 per minute. The margin
    // is for the trip from our limiter to the emulator: on a machine loaded by parallel suites a
    // call can be held up 200 ms or more on the way, so the provider sees two calls closer than
    // we spaced them (three calls span 2.4 s at 50 per minute, 2.18 s at 55: 400 ms of slack
    // rather than 180 ms).
    let (emu, url, _stop) = emulator(EmulatorConfig {
        latency: Duration::ZERO,
        images_per_minute: Some(2),
        ipm_window: Duration::from_secs(2),
        ..emu_cfg()
    })
    .await;
    let endpoint = url.clone();
    let s = TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_key = Some(KEY.into());
        c.provider_ipm = volcengine_ai_server::config::ProviderIpm::parse(
            "doubao-seedream-3.0-t2i=50",
            &volcengine_ai_server::domain::Catalog::new(&Default::default()),
        )
        .expect("ipm");
        // Without pacing, 8 of the 10 tasks would meet a 429 on both attempts and fail.
        c.max_attempts = 2;
    })
    .await;
    let user = s.create_user("storm@example.com").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(s.create_task(&user, &format!("storm {i}")).await);
    }
    for id in &ids {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
    let stats = emu.stats();
    let throttled = stats.by_status.get(&429).copied().unwrap_or(0);
    eprintln!("429 storm: 10 tasks, {throttled} answers 429, 0 failed");
    assert_eq!(stats.succeeded, 10);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (_emu, url, _stop) = emulator(EmulatorConfig {
        latency: Duration::ZERO,
        images_per_minute: Some(1),
        retry_after: Some(Duration::from_secs(3)),
        ..emu_cfg()
    })
    .await;
    let s = server(&url, KEY, 5).await;
    let user = s.create_user("after@example.com").await;
    let first = s.create_task(&user, "first").await;
    s.wait_terminal(&first).await;
    let second = s.create_task(&user, "second").await;
    let t = loop {
        let (_, body) = s.get(&format!("/api/v1/tasks/{second}")).await;
        if body["data"]["error"]["code"] == "ModelAccountIpmRateLimitExceeded" {
            break body["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(t["status"], "pending", "{t}");
    assert_eq!(t["error"]["retryable"], true);
    let at = |f: &str| chrono::DateTime::parse_from_rfc3339(t[f].as_str().expect(f)).expect("time");
    let delay = at("next_attempt_at") - at("updated_at");
    // The test's own backoff is at most 100 ms; only Retry-After explains 3 s.
    assert!(
        delay >= chrono::Duration::milliseconds(2900),
        "retry in {delay}"
    );
}

#[tokio::test]
async fn image_to_image_and_seedream_4_5_happy_paths() {
    let (emu, url, _stop) = emulator(emu_cfg()).await;
    let s = server(&url, KEY, 3).await;
    let user = s.create_user("i2i@example.com").await;
    let reference = {
        use base64::Engine;
        let png = volcengine_ai_server::emulator::image::render_png("ref", 0, 64, 48).expect("png");
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        )
    };
    let (status, body) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "make it blue", "user_id": user, "model": "doubao-seededit-3.0-i2i",
                   "image": reference, "seed": 7, "guidance_scale": 5.5}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let edit = s
        .wait_terminal(body["data"]["task_id"].as_str().expect("id"))
        .await;
    assert_eq!(edit["status"], "completed", "{edit}");
    assert_eq!(edit["size"], "adaptive");

    let (status, body) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "poster", "user_id": user, "model": "doubao-seedream-4-5-251128", "size": "2560x1440"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let t = s
        .wait_terminal(body["data"]["task_id"].as_str().expect("id"))
        .await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        (
            t["result"]["images"][0]["width"].as_u64(),
            t["result"]["images"][0]["height"].as_u64()
        ),
        (Some(2560), Some(1440))
    );
    assert_eq!(emu.stats().by_prompt.get("make it blue"), Some(&1));
}

#[tokio::test]
async fn timeouts_are_retried_then_fail_with_a_retryable_timeout() {
    let (emu, url, _stop) = emulator(EmulatorConfig {
        hang_rate: 1.0,
        ..emu_cfg()
    })
    .await;
    let endpoint = url.clone();
    let s = TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_key = Some(KEY.into());
        c.ai_timeout = Duration::from_millis(300);
        c.max_attempts = 2;
    })
    .await;
    let user = s.create_user("hang@example.com").await;
    let id = s.create_task(&user, "never answered").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "Timeout");
    assert_eq!(t["error"]["retryable"], true);
    assert_eq!(t["attempts"], 2);
    assert_eq!(emu.stats().requests, 2);
}

#[tokio::test]
async fn a_model_the_provider_does_not_know_fails_at_once() {
    // Our table names a model version the provider (emulator) does not have.
    let (emu, url, _stop) = emulator(emu_cfg()).await;
    let endpoint = url.clone();
    let s = TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_key = Some(KEY.into());
        c.model_ids.seedream_3_0 = "doubao-seedream-3-0-t2i-999999".into();
    })
    .await;
    let user = s.create_user("model@example.com").await;
    let id = s.create_task(&user, "unknown version").await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["model"], "doubao-seedream-3-0-t2i-999999");
    assert_eq!(t["error"]["code"], "InvalidEndpointOrModel.NotFound");
    assert_eq!(t["error"]["retryable"], false);
    assert!(t["provider_request_id"]
        .as_str()
        .is_some_and(|r| r.len() == 53));
    assert_eq!(emu.stats().requests, 1);
}

/// `reuse_images` (load tests): every image of a size is the same real PNG, rendered once even
/// when the first downloads come together; without it each prompt has a picture of its own.
#[tokio::test]
async fn reused_images_are_one_png_per_size() {
    async fn downloads(reuse: bool) -> Vec<Vec<u8>> {
        let (_emu, url, _stop) = emulator(EmulatorConfig {
            latency: Duration::ZERO,
            reuse_images: reuse,
            ..emu_cfg()
        })
        .await;
        let http = reqwest::Client::new();
        let mut urls = Vec::new();
        for prompt in ["a cat", "a dog", "a boat"] {
            let r = generate(
                &http,
                &url,
                json!({"model": "doubao-seedream-3-0-t2i-250415", "prompt": prompt,
                       "size": "512x512"}),
            )
            .await;
            urls.push(r["data"][0]["url"].as_str().expect("url").to_string());
        }
        let fetches = urls.iter().map(|u| {
            let http = http.clone();
            async move {
                let r = http.get(u).send().await.expect("get");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("bytes").to_vec()
            }
        });
        futures::future::join_all(fetches).await
    }
    let reused = downloads(true).await;
    assert_eq!(
        imagesize::blob_size(&reused[0])
            .map(|s| (s.width, s.height))
            .ok(),
        Some((512, 512))
    );
    assert!(reused.iter().all(|png| *png == reused[0]));
    let own = downloads(false).await;
    assert_ne!(own[0], own[1]);
}

/// `provider::key_fingerprint`: the first 8 hex digits of the key's SHA-256.
fn fingerprint(key: &str) -> String {
    volcengine_ai_server::provider::key_fingerprint(key)
}

/// The state `/ready` shows for the key with `fp`.
async fn key_state(s: &TestServer, fp: &str) -> serde_json::Value {
    let (status, ready) = s.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    let keys = ready["provider_keys"].as_array().expect("provider_keys");
    keys.iter()
        .find(|k| k["key"] == fp)
        .cloned()
        .unwrap_or_else(|| panic!("{fp} not in {ready}"))
}

/// Issue #18.4: a pool of three keys, weighted 1 and 3 and one the provider refuses. Every task
/// completes with one attempt (a refused key costs none); the refused key is taken out after
/// its first calls and the others share the calls 1 : 3; each task names the key that made its
/// images by fingerprint, and `/ready` and `/metrics` show each key's state by fingerprint,
/// never the key. Once the provider takes the key again, a probe puts it back.
#[tokio::test]
async fn a_key_pool_spreads_by_weight_and_takes_out_a_refused_key_until_it_works() {
    let (a, b, bad) = ("pool-key-a", "pool-key-b", "pool-key-bad");
    let (emu, url, _stop) = emulator(EmulatorConfig {
        latency: Duration::from_millis(20),
        api_key: Some(a.into()),
        api_keys: vec![b.into(), bad.into()],
        bad_keys: vec![bad.into()],
        ..EmulatorConfig::default()
    })
    .await;
    let endpoint = url.clone();
    let s = TestServer::start_with(move |c| {
        c.volcengine_endpoint = endpoint;
        c.volcengine_api_keys = vec![(a.into(), 1), (b.into(), 3), (bad.into(), 1)];
        c.provider_key_reprobe = Duration::from_millis(300);
        c.worker_concurrency = 2;
        c.max_attempts = 1;
    })
    .await;
    let user = s.create_user("keys@example.com").await;
    let tasks = 16;
    let prompts: Vec<String> = (0..tasks).map(|i| format!("pooled {i}")).collect();
    let ids = futures::future::join_all(prompts.iter().map(|p| s.create_task(&user, p))).await;
    let mut made_by = std::collections::HashMap::<String, u64>::new();
    for id in &ids {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        let key = t["provider_key"]
            .as_str()
            .expect("provider_key")
            .to_string();
        *made_by.entry(key).or_default() += 1;
    }
    let stats = emu.stats();
    let calls = |k: &str| stats.by_key.get(k).map_or(0, |s| s.calls);
    let refused = stats.by_key.get(bad).map_or(0, |s| s.unauthorized);
    eprintln!(
        "key pool: {} calls with a, {} with b, {refused} refused; images by key {made_by:?}",
        calls(a),
        calls(b)
    );
    let state = key_state(&s, &fingerprint(bad)).await;
    let probes = state["probes"].as_u64().expect("probes");
    assert!(
        (1..=3).contains(&(refused - probes)),
        "{refused} calls with the refused key, {probes} of them probes"
    );
    assert_eq!(made_by.get(&fingerprint(bad)), None);
    let (by_a, by_b) = (made_by[&fingerprint(a)], made_by[&fingerprint(b)]);
    assert_eq!(by_a + by_b, tasks);
    assert!(
        (3..=5).contains(&by_a),
        "weights 1 : 3 over {tasks} tasks: {by_a} by a, {by_b} by b"
    );
    assert_ne!(state["state"], "enabled", "{state}");
    assert!(state["refusals"].as_u64() >= Some(1), "{state}");
    let (_, ready) = s.get("/ready").await;
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for secret in [a, b, bad] {
        assert!(!ready.to_string().contains(secret), "{ready}");
        assert!(!metrics.contains(secret), "a key in /metrics");
    }
    assert!(
        metrics.contains(&format!(
            "provider_key_enabled{{key=\"{}\"}} 0",
            fingerprint(bad)
        )),
        "{metrics}"
    );

    // The key works again: a probe, at most a few backoffs later, puts it back in the pool.
    let (status, _) = s
        .send(
            s.http
                .post(format!("{url}/emulator/limits"))
                .json(&json!({"key": bad, "bad": false})),
        )
        .await;
    assert_eq!(status, 200);
    let mut n = 0;
    while key_state(&s, &fingerprint(bad)).await["state"] != "enabled" {
        n += 1;
        assert!(n <= 60, "the key never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = s.create_task(&user, &format!("after {n}")).await;
        assert_eq!(s.wait_terminal(&id).await["status"], "completed");
    }
    assert!(emu.stats().by_key.get(bad).map_or(0, |s| s.calls) > refused);
}
