//! Usage settled on the server, black-box on the backends of this run (embedded, or MongoDB +
//! Redis with `TEST_BACKEND=distributed`): images billed and tasks ended per user, key, model and
//! day, on REST and GraphQL; counted once per task whatever the polls, retries, races with a
//! cancel and restarts; a user key sees only its own user's usage.

use crate::common;

use std::time::Duration;

use crate::common::TestServer;
use chrono::Utc;
use serde_json::{json, Value};

const ADMIN: &str = "admin-key-for-the-usage-tests-0123456789";

async fn call(
    s: &TestServer,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s.http.request(method, s.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    s.send(req).await
}

async fn get(s: &TestServer, key: &str, path: &str) -> (u16, Value) {
    call(s, key, reqwest::Method::GET, path, None).await
}

async fn post(s: &TestServer, key: &str, path: &str, body: Value) -> (u16, Value) {
    call(s, key, reqwest::Method::POST, path, Some(body)).await
}

async fn user(s: &TestServer, email: &str) -> String {
    let (st, b) = post(
        s,
        ADMIN,
        "/api/v1/users",
        json!({"email": email, "name": "Someone"}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    b["data"]["id"].as_str().expect("id").to_string()
}

/// A new key of `user`: (its id, its secret).
async fn key(s: &TestServer, user: &str) -> (String, String) {
    let (st, b) = post(
        s,
        ADMIN,
        &format!("/api/v1/users/{user}/api-keys"),
        json!({"name": "usage"}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let id = b["data"]["id"].as_str().expect("key id").to_string();
    (id, b["data"]["key"].as_str().expect("secret").to_string())
}

async fn submit(s: &TestServer, key: &str, body: Value) -> String {
    let (st, b) = post(s, key, "/api/v1/ai/image/task", body).await;
    assert_eq!(st, 201, "{b}");
    b["data"]["task_id"].as_str().expect("task id").to_string()
}

/// Polls (as a user key) until the task is terminal; every poll is one more chance to count
/// twice.
async fn wait_terminal(s: &TestServer, key: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let (st, b) = get(s, key, &format!("/api/v1/tasks/{id}")).await;
        assert_eq!(st, 200, "{b}");
        let status = b["data"]["status"].as_str().unwrap_or_default().to_string();
        if ["completed", "failed", "cancelled"].contains(&status.as_str()) {
            return b["data"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "not terminal: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counts(v: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let t = &v["tasks"];
    let m = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("no tasks.{k} in {v}"))
    };
    (n("images"), m("completed"), m("failed"), m("cancelled"))
}

async fn usage(s: &TestServer, key: &str, user: &str, query: &str) -> Value {
    let (st, b) = get(s, key, &format!("/api/v1/users/{user}/usage{query}")).await;
    assert_eq!(st, 200, "{b}");
    b["data"].clone()
}

const GQL_USAGE: &str = "query($id: ID!) { user(id: $id) { usage { images \
    tasks { completed failed cancelled } \
    byModel { key images tasks { completed failed cancelled } } \
    byDay { key images } byApiKey { key images tasks { completed failed cancelled } } } } }";

#[tokio::test]
async fn usage_counts_each_terminal_task_once_per_user_key_model_and_day() {
    let mut s = TestServer::start_with(|c| {
        c.admin_api_key = Some(ADMIN.into());
        c.sandbox_latency = Duration::from_millis(50);
    })
    .await;
    let alice = user(&s, "alice-usage@example.com").await;
    let bob = user(&s, "bob-usage@example.com").await;
    let (k1_id, k1) = key(&s, &alice).await;
    let (k2_id, k2) = key(&s, &alice).await;
    let (_, kb) = key(&s, &bob).await;

    // Nothing yet: zeros, not an error.
    let empty = usage(&s, &k1, &alice, "").await;
    assert_eq!(counts(&empty), (0, 0, 0, 0), "{empty}");

    // Key 1: three images from a 4.0 model, one from the default model, and a scheduled task
    // cancelled before it ran. Key 2: a task the provider refuses (failed, nothing billed).
    let three = submit(
        &s,
        &k1,
        json!({"prompt": "three boats", "model": "doubao-seedream-4.0", "n": 3}),
    )
    .await;
    let one = submit(&s, &k1, json!({"prompt": "one boat"})).await;
    let later = submit(&s, &k1, json!({"prompt": "later", "delay": 600})).await;
    let (st, b) = post(&s, &k1, &format!("/api/v1/tasks/{later}/cancel"), json!({})).await;
    assert_eq!(st, 200, "{b}");
    let refused = submit(&s, &k2, json!({"prompt": "sensitive-content here"})).await;
    let t3 = wait_terminal(&s, &k1, &three).await;
    assert_eq!(t3["status"], "completed", "{t3}");
    let model_3 = t3["model"].as_str().expect("model").to_string();
    let t1 = wait_terminal(&s, &k1, &one).await;
    assert_eq!(t1["status"], "completed", "{t1}");
    let model_1 = t1["model"].as_str().expect("model").to_string();
    assert_eq!(wait_terminal(&s, &k2, &refused).await["status"], "failed");
    // Bob's task, by Bob's key: not Alice's usage.
    let bobs = submit(&s, &kb, json!({"prompt": "bob's boat"})).await;
    assert_eq!(wait_terminal(&s, &kb, &bobs).await["status"], "completed");

    // Retrying the refused task ends it failed again: still one failed task.
    let (st, b) = post(
        &s,
        &k2,
        &format!("/api/v1/tasks/{refused}/retry"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(wait_terminal(&s, &k2, &refused).await["status"], "failed");

    let today = Utc::now().format("%Y-%m-%d").to_string();
    let check = |u: &Value| {
        assert_eq!(counts(u), (4, 2, 1, 1), "{u}");
        if model_1 == model_3 {
            assert_eq!(counts(&u["by_model"][&model_1]), (4, 2, 1, 1), "{u}");
        } else {
            assert_eq!(counts(&u["by_model"][&model_3]), (3, 1, 0, 0), "{u}");
        }
        assert_eq!(counts(&u["by_api_key"][&k1_id]), (4, 2, 0, 1), "{u}");
        assert_eq!(counts(&u["by_api_key"][&k2_id]), (0, 0, 1, 0), "{u}");
        assert_eq!(u["by_day"][&today]["images"], 4, "{u}");
    };
    let mine = usage(&s, &k2, &alice, "").await;
    check(&mine);
    check(&usage(&s, ADMIN, &alice, "").await);
    let bobs_usage = usage(&s, &kb, &bob, "").await;
    assert_eq!(counts(&bobs_usage), (1, 1, 0, 0), "{bobs_usage}");

    // One key only; a day range.
    let of_k2 = usage(&s, &k1, &alice, &format!("?api_key_id={k2_id}")).await;
    assert_eq!(counts(&of_k2), (0, 0, 1, 0), "{of_k2}");
    let tomorrow = (Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d");
    let none = usage(&s, &k1, &alice, &format!("?from={tomorrow}")).await;
    assert_eq!(counts(&none), (0, 0, 0, 0), "{none}");
    let day = usage(&s, &k1, &alice, &format!("?from={today}&to={today}")).await;
    assert_eq!(counts(&day), (4, 2, 1, 1), "{day}");

    // Isolation and input errors.
    let (st, b) = get(&s, &kb, &format!("/api/v1/users/{alice}/usage")).await;
    assert_eq!(st, 403, "{b}");
    let (st, b) = get(
        &s,
        &k1,
        &format!("/api/v1/users/{alice}/usage?from=yesterday"),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = get(
        &s,
        &k1,
        &format!("/api/v1/users/{alice}/usage?from={tomorrow}&to={today}"),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let ghost = "0192e4a0-0000-7000-8000-000000000001";
    let (st, b) = get(&s, ADMIN, &format!("/api/v1/users/{ghost}/usage")).await;
    assert_eq!(st, 404, "{b}");

    // GraphQL: the same numbers; another user's usage is refused.
    let gql = |key: String, id: String| {
        let s = &s;
        async move {
            post(
                s,
                &key,
                "/graphql",
                json!({"query": GQL_USAGE, "variables": {"id": id}}),
            )
            .await
        }
    };
    let (st, g) = gql(k1.clone(), alice.clone()).await;
    assert_eq!(st, 200, "{g}");
    let u = &g["data"]["user"]["usage"];
    assert_eq!(counts(u), (4, 2, 1, 1), "{g}");
    let by_key = u["byApiKey"].as_array().expect("byApiKey");
    let k1_entry = by_key
        .iter()
        .find(|e| e["key"] == k1_id.as_str())
        .expect("key 1");
    assert_eq!(counts(k1_entry), (4, 2, 0, 1), "{g}");
    assert_eq!(u["byDay"][0]["key"], today.as_str(), "{g}");
    let (_, g) = gql(kb.clone(), alice.clone()).await;
    assert_eq!(g["errors"][0]["extensions"]["code"], "FORBIDDEN", "{g}");

    // A restart reads the same, and counts nothing again.
    s.start_again().await;
    check(&usage(&s, &k1, &alice, "").await);
    s.stop().await;
}

/// Cancels race the worker's completions: whichever wins, each task is counted once, under the
/// outcome it kept, and only completed tasks' images count.
#[tokio::test]
async fn a_task_racing_a_cancel_counts_once_with_the_outcome_it_kept() {
    let mut s = TestServer::start_with(|c| {
        c.admin_api_key = Some(ADMIN.into());
        c.sandbox_latency = Duration::from_millis(30);
        c.worker_concurrency = 4;
        c.user_max_in_flight = 1000;
        c.user_submit_burst = 1000;
        c.user_submit_per_minute = 60_000;
    })
    .await;
    let alice = user(&s, "racer@example.com").await;
    let (_, k) = key(&s, &alice).await;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(submit(&s, &k, json!({"prompt": format!("race {i}")})).await);
    }
    let cancels = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, id)| {
            let (s, k) = (&s, &k);
            async move { post(s, k, &format!("/api/v1/tasks/{id}/cancel"), json!({})).await }
        });
    futures::future::join_all(cancels).await;
    let (mut completed, mut cancelled) = (0u64, 0u64);
    for id in &ids {
        match wait_terminal(&s, &k, id).await["status"].as_str() {
            Some("completed") => completed += 1,
            Some("cancelled") => cancelled += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // On MongoDB the usage record follows the task's write (no transactions): a poll may see
    // the task terminal a moment before its usage.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let mut u = usage(&s, &k, &alice, "").await;
    while counts(&u).1 + counts(&u).3 < 24 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        u = usage(&s, &k, &alice, "").await;
    }
    assert_eq!(counts(&u), (completed, completed, 0, cancelled), "{u}");
    assert!(cancelled > 0, "no cancel won a race: {u}");
    s.stop().await;
}

/// `USER_IMAGES_PER_DAY`: the images a user's tasks were billed for today plus those its
/// unfinished tasks ask for (a scheduled task's too); a submit that would pass the quota is
/// refused with 429 and a Retry-After to the next UTC midnight, before anything is stored.
/// Cancelling an unfinished task gives its images back; another user is not held by it.
#[tokio::test]
async fn the_daily_image_quota_counts_billed_and_asked_for_images_and_refuses_before_storing() {
    let s = TestServer::start_with(|c| {
        c.admin_api_key = Some(ADMIN.into());
        c.sandbox_latency = Duration::from_millis(50);
        c.user_images_per_day = 5;
    })
    .await;
    let alice = user(&s, "alice-quota@example.com").await;
    let bob = user(&s, "bob-quota@example.com").await;
    let (_, ka) = key(&s, &alice).await;
    let (_, kb) = key(&s, &bob).await;
    let group =
        |prompt: &str, n: u32| json!({"prompt": prompt, "model": "doubao-seedream-4.0", "n": n});

    let three = submit(&s, &ka, group("three boats", 3)).await;
    assert_eq!(wait_terminal(&s, &ka, &three).await["status"], "completed");
    let mut later = group("later", 2);
    later["delay"] = json!(600);
    let later = submit(&s, &ka, later).await;

    // 3 billed + 2 held by the scheduled task: one more image passes the quota of 5.
    let refused = |body: Value| {
        let s = &s;
        let ka = ka.clone();
        async move {
            let resp = s
                .http
                .post(s.url("/api/v1/ai/image/task"))
                .bearer_auth(&ka)
                .json(&body)
                .send()
                .await
                .expect("post");
            assert_eq!(resp.status().as_u16(), 429);
            let retry: u64 = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After");
            assert!((1..=86_400).contains(&retry), "retry after {retry}");
            let body: Value = resp.json().await.expect("json");
            assert_eq!(body["code"], "RATE_LIMITED", "{body}");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("daily quota of 5"),
                "{body}"
            );
        }
    };
    refused(json!({"prompt": "one too many"})).await;
    let (st, b) = get(&s, &ka, &format!("/api/v1/tasks/user/{alice}")).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["data"]["tasks"].as_array().map(Vec::len),
        Some(2),
        "the refused submit stored nothing: {b}"
    );
    // Bob has his own quota.
    let bobs = submit(&s, &kb, group("bob's boats", 4)).await;
    assert_eq!(wait_terminal(&s, &kb, &bobs).await["status"], "completed");

    // Cancelling the scheduled task frees its two images: one fits, then two more do not.
    let (st, b) = post(&s, &ka, &format!("/api/v1/tasks/{later}/cancel"), json!({})).await;
    assert_eq!(st, 200, "{b}");
    let one = submit(&s, &ka, json!({"prompt": "one boat"})).await;
    refused(group("two more", 2)).await;
    assert_eq!(wait_terminal(&s, &ka, &one).await["status"], "completed");
    refused(group("two more, after", 2)).await;
    let last = submit(&s, &ka, json!({"prompt": "the fifth"})).await;
    assert_eq!(wait_terminal(&s, &ka, &last).await["status"], "completed");
    refused(json!({"prompt": "a sixth"})).await;
    assert_eq!(
        counts(&usage(&s, &ka, &alice, "").await).0,
        5,
        "exactly the quota was generated"
    );
}
