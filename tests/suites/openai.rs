//! The OpenAI-compatible images API over raw HTTP: the shapes the official SDKs parse (their own
//! runs are in scripts/test-clients), the statuses they map to exception classes, and that the
//! answer is an ordinary durable task.

use crate::common;

use std::time::Duration;

use crate::common::TestServer;
use base64::Engine;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-for-openai-tests";

struct World {
    s: TestServer,
    alice: String,
    key: String,
}

impl World {
    async fn start(tweak: impl FnOnce(&mut volcengine_ai_server::config::Config)) -> World {
        let s = TestServer::start_with(|c| {
            c.admin_api_key = Some(ADMIN.into());
            tweak(c);
        })
        .await;
        let alice = make_user(&s, "alice@example.com").await;
        let (st, b) = s
            .send(
                s.http
                    .post(s.url(&format!("/api/v1/users/{alice}/api-keys")))
                    .bearer_auth(ADMIN)
                    .json(&json!({"name": "sdk"})),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        let key = b["data"]["key"].as_str().expect("secret").to_string();
        World { s, alice, key }
    }

    /// A call as the SDKs make it; the status, headers and body (JSON when it parses).
    async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .s
            .http
            .request(method, self.s.url(path))
            .bearer_auth(key);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, h, v)
    }

    async fn generate(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        self.generate_at("/v1/images/generations", body).await
    }

    async fn generate_at(
        &self,
        path: &str,
        body: Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let key = self.key.clone();
        self.call(&key, reqwest::Method::POST, path, Some(body), &[])
            .await
    }
}

async fn make_user(s: &TestServer, email: &str) -> String {
    let (st, b) = s
        .send(
            s.http
                .post(s.url("/api/v1/users"))
                .bearer_auth(ADMIN)
                .json(&json!({"email": email, "name": "Someone"})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    b["data"]["id"].as_str().expect("id").to_string()
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The error object's fields, checked for OpenAI's shape.
fn error_of(body: &Value) -> &Value {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    e
}

#[tokio::test]
async fn a_generation_answers_openai_shape_with_durable_urls_and_is_an_ordinary_task() {
    let mut w = World::start(|_| {}).await;
    let (st, h, b) = w
        .generate(
            json!({"model": "doubao-seedream-4.0", "prompt": "a red fox", "size": "1024x1024"}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert!(
        b["created"].as_i64().is_some_and(|c| c > 1_600_000_000),
        "{b}"
    );
    let data = b["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{b}");
    let url = data[0]["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/images/", w.s.base)), "{url}");
    assert!(data[0].get("b64_json").is_none(), "{b}");
    let img = w.s.http.get(url).send().await.expect("image");
    assert_eq!(img.status(), 200);
    assert!(!img.bytes().await.expect("bytes").is_empty());

    // The same task as REST and GraphQL see it, owned by the key's user.
    let id = header(&h, "x-task-id").to_string();
    assert_eq!(header(&h, "x-request-id"), id);
    let (st, _, t) = w
        .call(
            ADMIN,
            reqwest::Method::GET,
            &format!("/api/v1/tasks/{id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["data"]["status"], "completed");
    assert_eq!(t["data"]["user_id"], w.alice.as_str());
    assert_eq!(t["data"]["result"]["image_url"], url);
    w.s.stop().await;
}

#[tokio::test]
async fn b64_json_with_n_2_returns_both_images_inline() {
    let mut w = World::start(|_| {}).await;
    let (st, _, b) = w
        .generate(json!({
            "model": "doubao-seedream-4.0", "prompt": "two cats", "n": 2,
            "response_format": "b64_json", "user": "ignored-with-a-user-key"
        }))
        .await;
    assert_eq!(st, 200, "{b}");
    let data = b["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "{b}");
    for d in data {
        assert!(d.get("url").is_none(), "{d}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["b64_json"].as_str().expect("b64_json"))
            .expect("base64");
        let png = bytes.starts_with(b"\x89PNG");
        let jpeg = bytes.starts_with(&[0xFF, 0xD8]);
        assert!(
            png || jpeg,
            "not an image: {:?}",
            &bytes[..8.min(bytes.len())]
        );
    }
    w.s.stop().await;
}

#[tokio::test]
async fn arks_group_options_map_to_n_and_must_agree_with_it() {
    let mut w = World::start(|_| {}).await;
    let (st, _, b) = w
        .generate(json!({
            "model": "doubao-seedream-4.0", "prompt": "a comic strip",
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 3}
        }))
        .await;
    assert_eq!(st, 200, "{b}");
    let made = b["data"].as_array().map_or(0, Vec::len);
    assert!((1..=3).contains(&made), "{b}");
    let (st, _, b) = w
        .generate(json!({
            "model": "doubao-seedream-4.0", "prompt": "x", "n": 2,
            "sequential_image_generation": "auto", "max_images": 4
        }))
        .await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(error_of(&b)["param"], "n");
    w.s.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_param() {
    let mut w = World::start(|_| {}).await;
    let cases = [
        (
            json!({"model": "doubao-seedream-3.0-t2i", "prompt": "x", "size": "12x12"}),
            "size",
        ),
        (
            json!({"prompt": "x", "response_format": "png"}),
            "response_format",
        ),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x", "model": "dall-e-3"}), "model"),
        (json!({"prompt": "x", "n": "two"}), "n"),
        (json!({"prompt": "x", "n": 2}), "n"),
        (json!({"prompt": "x", "stream": true}), "stream"),
        (
            json!({"prompt": "x", "output_format": "webp"}),
            "output_format",
        ),
        (json!({"prompt": "x", "colour": "blue"}), "colour"),
    ];
    for (body, param) in cases {
        let (st, h, b) = w.generate(body.clone()).await;
        assert_eq!(st, 400, "{body} -> {b}");
        let e = error_of(&b);
        assert_eq!(e["type"], "invalid_request_error", "{b}");
        assert_eq!(e["param"], param, "{body} -> {b}");
        assert!(
            h.get("x-task-id").is_none(),
            "a refused request made a task"
        );
    }
    // What asks for nothing is accepted.
    let (st, _, b) = w
        .generate(json!({"prompt": "x", "stream": false, "background": "auto", "size": "auto", "quality": "auto", "style": null, "safety_identifier": "end-user-1"}))
        .await;
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = w
        .call(
            &w.key.clone(),
            reqwest::Method::POST,
            "/v1/images/generations",
            None,
            &[],
        )
        .await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(error_of(&b)["code"], "invalid_json");
    w.s.stop().await;
}

#[tokio::test]
async fn keys_are_checked_and_the_admin_names_the_owner_in_user() {
    let mut w = World::start(|_| {}).await;
    let body = json!({"prompt": "x"});
    let (st, _, b) = w
        .call(
            "sk-wrong",
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(body.clone()),
            &[],
        )
        .await;
    assert_eq!(st, 401, "{b}");
    assert_eq!(error_of(&b)["code"], "invalid_api_key");
    let (st, _, b) = w
        .call("sk-wrong", reqwest::Method::GET, "/v1/models", None, &[])
        .await;
    assert_eq!(st, 401, "{b}");
    let (st, _, b) = w
        .call(
            ADMIN,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(body),
            &[],
        )
        .await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(error_of(&b)["param"], "user");
    let (st, _, b) = w
        .call(
            ADMIN,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(json!({"prompt": "x", "user": w.alice})),
            &[],
        )
        .await;
    assert_eq!(st, 200, "{b}");
    // Another user's task is not found with alice's key.
    let other = make_user(&w.s, "bob@example.com").await;
    let (st, h, _) = w
        .call(
            ADMIN,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(json!({"prompt": "x", "user": other})),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(st, 202);
    let id = header(&h, "x-task-id").to_string();
    let (st, _, b) = w
        .call(
            &w.key.clone(),
            reqwest::Method::GET,
            &format!("/v1/images/generations/{id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(st, 404, "{b}");
    assert_eq!(error_of(&b)["type"], "invalid_request_error");
    w.s.stop().await;
}

#[tokio::test]
async fn with_auth_off_any_key_is_accepted() {
    let mut s = TestServer::start().await;
    let user = s.create_user("solo@example.com").await;
    let resp = s
        .http
        .post(s.url("/v1/images/generations"))
        .bearer_auth("sk-anything")
        .json(&json!({"prompt": "x", "user": user}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let (st, b) = s
        .send(s.http.get(s.url("/v1/models")).bearer_auth("whatever"))
        .await;
    assert_eq!(st, 200, "{b}");
    s.stop().await;
}

#[tokio::test]
async fn a_content_filter_refusal_is_400_with_the_providers_code() {
    let mut w = World::start(|_| {}).await;
    let (st, h, b) = w
        .generate(json!({"prompt": "a sensitive-content scene"}))
        .await;
    assert_eq!(st, 400, "{b}");
    let e = error_of(&b);
    assert_eq!(e["code"], "InputTextSensitiveContentDetected", "{b}");
    assert_eq!(e["param"], "prompt");
    assert_eq!(header(&h, "x-should-retry"), "false");
    w.s.stop().await;
}

#[tokio::test]
async fn the_in_flight_quota_is_a_429_with_retry_after_and_respond_async_gives_a_location() {
    let mut w = World::start(|c| {
        c.user_max_in_flight = 1;
        c.sandbox_latency = Duration::from_secs(2);
    })
    .await;
    let key = w.key.clone();
    let (st, h, b) = w
        .call(
            &key,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(json!({"prompt": "slow"})),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let location = header(&h, "location").to_string();
    assert_eq!(
        location,
        format!("/v1/images/generations/{}", b["id"].as_str().expect("id"))
    );
    assert_eq!(header(&h, "preference-applied"), "respond-async");
    assert!(
        matches!(b["status"].as_str(), Some("pending" | "processing")),
        "{b}"
    );

    let (st, h, b) = w.generate(json!({"prompt": "one too many"})).await;
    assert_eq!(st, 429, "{b}");
    assert_eq!(error_of(&b)["code"], "rate_limit_exceeded");
    assert!(
        header(&h, "retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s >= 1),
        "{h:?}"
    );

    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let (st, _, b) = w
            .call(&key, reqwest::Method::GET, &location, None, &[])
            .await;
        if st == 200 {
            assert_eq!(b["data"].as_array().map_or(0, Vec::len), 1, "{b}");
            break;
        }
        assert_eq!(st, 202, "{b}");
        assert!(tokio::time::Instant::now() < deadline, "never done: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.s.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_task() {
    let mut w = World::start(|_| {}).await;
    let key = w.key.clone();
    let body = json!({"prompt": "once"});
    let idem = [("idempotency-key", "openai-idem-1")];
    let (st, h1, b1) = w
        .call(
            &key,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(body.clone()),
            &idem,
        )
        .await;
    assert_eq!(st, 200, "{b1}");
    let (st, h2, b2) = w
        .call(
            &key,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(body),
            &idem,
        )
        .await;
    assert_eq!(st, 200, "{b2}");
    assert_eq!(header(&h1, "x-task-id"), header(&h2, "x-task-id"));
    assert_eq!(header(&h2, "idempotent-replayed"), "true");
    assert_eq!(b1["data"], b2["data"]);
    let (st, _, b) = w
        .call(
            &key,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(json!({"prompt": "other"})),
            &idem,
        )
        .await;
    assert_eq!(st, 409, "{b}");
    w.s.stop().await;
}

#[tokio::test]
async fn a_long_wait_is_kept_alive_with_spaces_before_the_json() {
    let mut w = World::start(|c| {
        c.sandbox_latency = Duration::from_millis(1500);
        c.openai_keepalive_after = Some(Duration::from_millis(200));
    })
    .await;
    let resp =
        w.s.http
            .post(w.s.url("/v1/images/generations"))
            .bearer_auth(&w.key)
            .json(&json!({"prompt": "slow"}))
            .send()
            .await
            .expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    assert!(text.starts_with(' '), "no keep-alive before {text:?}");
    let b: Value = serde_json::from_str(&text).expect("JSON after the spaces");
    assert_eq!(b["data"].as_array().map_or(0, Vec::len), 1, "{b}");

    // A failure after the 200 is committed: the error object under it.
    let text =
        w.s.http
            .post(w.s.url("/v1/images/generations"))
            .bearer_auth(&w.key)
            .json(&json!({"prompt": "sensitive-content, slowly"}))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
    let b: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        b["error"]["code"], "InputTextSensitiveContentDetected",
        "{b}"
    );
    w.s.stop().await;
}

/// Python's SDK gives up after its read timeout of silence: the keep-alive starts before it,
/// however long `OPENAI_KEEPALIVE_AFTER` is.
#[tokio::test]
async fn the_keep_alive_starts_before_the_clients_read_timeout() {
    let mut w = World::start(|c| {
        c.sandbox_latency = Duration::from_millis(2500);
        c.openai_keepalive_after = Some(Duration::from_secs(600));
    })
    .await;
    let text =
        w.s.http
            .post(w.s.url("/v1/images/generations"))
            .bearer_auth(&w.key)
            .header("x-stainless-read-timeout", "1")
            .json(&json!({"prompt": "slow"}))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
    assert!(text.starts_with(' '), "no keep-alive before {text:?}");
    let b: Value = serde_json::from_str(&text).expect("JSON after the spaces");
    assert_eq!(b["data"].as_array().map_or(0, Vec::len), 1, "{b}");
    w.s.stop().await;
}

#[tokio::test]
async fn the_wait_ends_before_the_clients_timeout_and_names_the_task() {
    let mut w = World::start(|c| {
        c.sandbox_latency = Duration::from_secs(30);
        c.openai_keepalive_after = None;
    })
    .await;
    let key = w.key.clone();
    let (st, h, b) = w
        .call(
            &key,
            reqwest::Method::POST,
            "/v1/images/generations",
            Some(json!({"prompt": "slow"})),
            &[("x-stainless-timeout", "2")],
        )
        .await;
    assert_eq!(st, 504, "{b}");
    assert_eq!(error_of(&b)["code"], "task_pending");
    assert_eq!(header(&h, "x-should-retry"), "false");
    let id = header(&h, "x-task-id");
    assert!(
        b["error"]["message"].as_str().unwrap_or("").contains(id),
        "{b}"
    );
    w.s.stop().await;
}

#[tokio::test]
async fn models_lists_the_image_models_and_unknown_routes_are_openai_404s() {
    let mut w = World::start(|_| {}).await;
    let key = w.key.clone();
    let (st, _, b) = w
        .call(&key, reqwest::Method::GET, "/v1/models", None, &[])
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["object"], "list");
    let ids: Vec<&str> = b["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model", "{m}");
            assert!(m["created"].is_i64() && m["owned_by"].is_string(), "{m}");
            m["id"].as_str().expect("id")
        })
        .collect();
    for want in [
        "doubao-seedream-3.0-t2i",
        "doubao-seededit-3.0-i2i",
        "doubao-seedream-4.0",
    ] {
        assert!(ids.contains(&want), "{ids:?}");
    }
    let (st, _, b) = w
        .call(
            &key,
            reqwest::Method::GET,
            "/v1/models/doubao-seedream-4.0",
            None,
            &[],
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["id"], "doubao-seedream-4.0");
    let (st, _, b) = w
        .call(&key, reqwest::Method::GET, "/v1/models/gpt-4o", None, &[])
        .await;
    assert_eq!(st, 404, "{b}");
    assert_eq!(error_of(&b)["code"], "model_not_found");
    let (st, _, b) = w
        .call(
            &key,
            reqwest::Method::GET,
            "/v1/chat/completions",
            None,
            &[],
        )
        .await;
    assert_eq!(st, 404, "{b}");
    error_of(&b);
    w.s.stop().await;
}

/// A 1×1 PNG.
const PNG_1PX: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

/// A multipart body as the SDKs send it: text fields, then files `(field, filename, bytes)`.
fn multipart(fields: &[(&str, &str)], files: &[(&str, &str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "----openai-test-boundary-7d2f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    for (name, filename, bytes) in files {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn edit(w: &World, form: (String, Vec<u8>)) -> (u16, Value) {
    let resp =
        w.s.http
            .post(w.s.url("/v1/images/edits"))
            .bearer_auth(&w.key)
            .header("content-type", form.0)
            .body(form.1)
            .send()
            .await
            .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn an_edit_takes_the_uploaded_images_as_references() {
    let mut w = World::start(|_| {}).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_1PX)
        .expect("png");
    // SeedEdit by default, one file as `image`.
    let (st, b) = edit(
        &w,
        multipart(
            &[("prompt", "make it blue"), ("size", "adaptive")],
            &[("image", "ref.png", png.clone())],
        ),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let url = b["data"][0]["url"].as_str().expect("url");
    let id = url.rsplit('/').next().unwrap_or_default();
    assert!(!id.is_empty());
    let (_, _, tasks) = w
        .call(
            ADMIN,
            reqwest::Method::GET,
            &format!("/api/v1/tasks/user/{}", w.alice),
            None,
            &[],
        )
        .await;
    let task = &tasks["data"]["tasks"][0];
    assert_eq!(task["model"], "doubao-seededit-3-0-i2i-250628", "{task}");

    // Several references as `image[]`, for Seedream 4.x, with b64_json.
    let (st, b) = edit(
        &w,
        multipart(
            &[
                ("prompt", "merge them"),
                ("model", "doubao-seedream-4.0"),
                ("response_format", "b64_json"),
                ("n", "1"),
            ],
            &[
                ("image[]", "a.png", png.clone()),
                ("image[]", "b.png", png.clone()),
            ],
        ),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert!(b["data"][0]["b64_json"].is_string(), "{b}");
    w.s.stop().await;
}

#[tokio::test]
async fn bad_edits_are_400_naming_the_param() {
    let mut w = World::start(|_| {}).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_1PX)
        .expect("png");
    let cases = [
        (multipart(&[("prompt", "x")], &[]), "image"),
        (
            multipart(
                &[("prompt", "x")],
                &[("image", "a.txt", b"not an image".to_vec())],
            ),
            "image",
        ),
        (
            multipart(
                &[("prompt", "x")],
                &[
                    ("image", "a.png", png.clone()),
                    ("mask", "m.png", png.clone()),
                ],
            ),
            "mask",
        ),
        (
            multipart(
                &[("prompt", "x"), ("n", "many")],
                &[("image", "a.png", png.clone())],
            ),
            "n",
        ),
        (
            multipart(
                &[("prompt", "x"), ("input_fidelity", "high")],
                &[("image", "a.png", png.clone())],
            ),
            "input_fidelity",
        ),
        (
            multipart(
                &[("prompt", "x"), ("model", "doubao-seedream-3.0-t2i")],
                &[("image", "a.png", png.clone())],
            ),
            "image",
        ),
    ];
    for (form, param) in cases {
        let (st, b) = edit(&w, form).await;
        assert_eq!(st, 400, "{param}: {b}");
        assert_eq!(error_of(&b)["param"], param, "{b}");
    }
    let (st, _, b) = w
        .generate_at("/v1/images/edits", json!({"prompt": "x"}))
        .await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(error_of(&b)["code"], "invalid_multipart");
    w.s.stop().await;
}
