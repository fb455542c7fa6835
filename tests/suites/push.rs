//! Push without a GraphQL client (#19): the REST event stream of a task (server-sent events),
//! `Prefer: wait` on create, and queue positions. Black-box over HTTP against the real router, on
//! either backend (`TEST_BACKEND=distributed`).

use std::time::Duration;

use crate::common::{TestServer, PATIENCE};
use serde_json::{json, Value};

const ADMIN: &str = "push-admin-key-0123456789";

/// One server-sent event, or a comment line (`: …`).
#[derive(Debug)]
enum Sse {
    Event { id: Option<i64>, data: Value },
    Comment(String),
}

/// Reads a `text/event-stream` body to its end (or `PATIENCE`), parsed.
async fn read_sse(mut resp: reqwest::Response) -> Vec<Sse> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the stream ends within PATIENCE")
            .expect("stream chunk");
        let Some(chunk) = chunk else { break };
        buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(c) = line.strip_prefix(':') {
                    out.push(Sse::Comment(c.trim().to_string()));
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse().expect("numeric id"));
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                let data = serde_json::from_str(&data).expect("event data is JSON");
                out.push(Sse::Event { id, data });
            }
        }
    }
    assert!(buf.trim().is_empty(), "unterminated event: {buf:?}");
    out
}

fn events(all: &[Sse]) -> Vec<(i64, Value)> {
    all.iter()
        .filter_map(|e| match e {
            Sse::Event { id, data } => Some((id.expect("every event has an id"), data.clone())),
            Sse::Comment(_) => None,
        })
        .collect()
}

async fn open_stream(s: &TestServer, id: &str, last: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(s.url(&format!("/api/v1/tasks/{id}/stream")));
    if let Some(v) = last {
        req = req.header("last-event-id", v);
    }
    req.send().await.expect("stream request")
}

fn assert_in_order_and_terminal(evs: &[(i64, Value)], id: &str) {
    assert!(!evs.is_empty(), "no events");
    for w in evs.windows(2) {
        assert!(w[0].0 < w[1].0, "versions not increasing: {evs:?}");
    }
    for (v, t) in evs {
        assert_eq!(t["task_id"], id);
        assert_eq!(t["version"], *v, "the id is the version");
    }
    let (last, rest) = evs.split_last().expect("events");
    assert_eq!(last.1["status"], "completed", "{evs:?}");
    assert!(
        rest.iter().all(|(_, t)| t["status"] != "completed"),
        "nothing after the terminal state: {evs:?}"
    );
}

#[tokio::test]
async fn the_stream_sends_the_state_then_each_version_and_ends_after_the_terminal_one() {
    let mut s = TestServer::start_with(|c| {
        c.sandbox_latency = Duration::from_millis(1500);
        c.sse_keep_alive = Duration::from_millis(200);
    })
    .await;
    let user = s.create_user("sse@example.com").await;
    let id = s.create_task(&user, "a lighthouse").await;
    let resp = open_stream(&s, &id, None).await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().expect("ascii");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let all = read_sse(resp).await;
    let evs = events(&all);
    assert_in_order_and_terminal(&evs, &id);
    assert!(
        matches!(evs[0].1["status"].as_str(), Some("pending" | "processing")),
        "the first event is the state at connect: {evs:?}"
    );
    assert!(evs.len() >= 2, "the changes were streamed: {evs:?}");
    assert!(
        all.iter()
            .any(|e| matches!(e, Sse::Comment(c) if c == "keep-alive")),
        "an idle stream sends keep-alive comments: {all:?}"
    );
    // Same as the finished task read back (the detail route: the poll route adds the Go
    // server's data.image_url and message).
    s.wait_terminal(&id).await;
    let (_, done) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(evs.last().expect("last").1, done["data"]);
    s.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_after_that_version_and_a_finished_stream_answers_204() {
    let mut s = TestServer::start_with(|c| c.sandbox_latency = Duration::from_millis(600)).await;
    let user = s.create_user("resume@example.com").await;
    let id = s.create_task(&user, "a harbour").await;
    let first = events(&read_sse(open_stream(&s, &id, None).await).await);
    assert_in_order_and_terminal(&first, &id);
    let terminal = first.last().expect("last").0;

    // Resuming from an earlier version sends only the newer ones.
    let from = terminal - 1;
    let resumed = events(&read_sse(open_stream(&s, &id, Some(&from.to_string())).await).await);
    assert_eq!(
        resumed.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![terminal],
        "{resumed:?}"
    );
    // From the terminal version on there is nothing more: 204 stops EventSource reconnecting.
    for last in [terminal.to_string(), (terminal + 5).to_string()] {
        let resp = open_stream(&s, &id, Some(&last)).await;
        assert_eq!(resp.status(), 204, "Last-Event-ID {last}");
    }
    // A value the server never sent is no resumption: the whole state again.
    let again = events(&read_sse(open_stream(&s, &id, Some("not-a-version")).await).await);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].0, terminal);
    s.stop().await;
}

#[tokio::test]
async fn a_stream_resumed_mid_task_sends_only_newer_versions() {
    let mut s = TestServer::start_with(|c| c.sandbox_latency = Duration::from_millis(1500)).await;
    let user = s.create_user("mid@example.com").await;
    let id = s.create_task(&user, "a mill").await;
    let (_, now) = s.get(&format!("/api/v1/tasks/{id}")).await;
    let v = now["data"]["version"].as_i64().expect("version");
    let evs = events(&read_sse(open_stream(&s, &id, Some(&v.to_string())).await).await);
    assert_in_order_and_terminal(&evs, &id);
    assert!(evs.iter().all(|(ev, _)| *ev > v), "{evs:?} after {v}");
    s.stop().await;
}

async fn call(
    s: &TestServer,
    key: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = s.http.request(method, s.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("request")
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

#[tokio::test]
async fn the_stream_takes_the_same_keys_and_hides_other_users_tasks() {
    let mut s = TestServer::start_with(|c| {
        c.admin_api_key = Some(ADMIN.into());
        c.sandbox_latency = Duration::from_millis(300);
    })
    .await;
    let post = reqwest::Method::POST;
    let mut keys = Vec::new();
    for email in ["a@example.com", "b@example.com"] {
        let u = json_of(
            call(
                &s,
                Some(ADMIN),
                post.clone(),
                "/api/v1/users",
                Some(json!({"email": email, "name": "User"})),
            )
            .await,
        )
        .await;
        let uid = u["data"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{u}"))
            .to_string();
        let k = json_of(
            call(
                &s,
                Some(ADMIN),
                post.clone(),
                &format!("/api/v1/users/{uid}/api-keys"),
                Some(json!({"name": "key"})),
            )
            .await,
        )
        .await;
        keys.push((uid, k["data"]["key"].as_str().expect("key").to_string()));
    }
    let (alice, alice_key) = &keys[0];
    let (_, bob_key) = &keys[1];
    let created = json_of(
        call(
            &s,
            Some(alice_key),
            post.clone(),
            "/api/v1/ai/image/task",
            Some(json!({"prompt": "a fox", "user_id": alice})),
        )
        .await,
    )
    .await;
    let id = created["data"]["task_id"].as_str().expect("id").to_string();
    let path = format!("/api/v1/tasks/{id}/stream");
    let get = reqwest::Method::GET;

    let anon = call(&s, None, get.clone(), &path, None).await;
    assert_eq!(anon.status(), 401);
    assert_eq!(json_of(anon).await["code"], "UNAUTHENTICATED");
    let bad = call(&s, Some("vk_not-a-key"), get.clone(), &path, None).await;
    assert_eq!(bad.status(), 401);
    // Bob's key sees no such task, exactly as for a read.
    let bob = call(&s, Some(bob_key), get.clone(), &path, None).await;
    assert_eq!(bob.status(), 404);
    assert_eq!(json_of(bob).await["code"], "NOT_FOUND");
    let missing = call(
        &s,
        Some(ADMIN),
        get.clone(),
        "/api/v1/tasks/0192f0c0-0000-7000-8000-000000000000/stream",
        None,
    )
    .await;
    assert_eq!(missing.status(), 404);

    for key in [alice_key.as_str(), ADMIN] {
        let resp = call(&s, Some(key), get.clone(), &path, None).await;
        assert_eq!(resp.status(), 200);
        let evs = events(&read_sse(resp).await);
        assert_in_order_and_terminal(&evs, &id);
    }
    s.stop().await;
}

async fn create_with_prefer(
    s: &TestServer,
    path: &str,
    body: Value,
    prefer: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = s.http.post(s.url(path)).json(&body);
    if let Some(p) = prefer {
        req = req.header("prefer", p);
    }
    let resp = req.send().await.expect("create");
    let status = resp.status().as_u16();
    let applied = resp
        .headers()
        .get("preference-applied")
        .map(|v| v.to_str().expect("ascii").to_string());
    (status, applied, resp.json().await.expect("JSON"))
}

#[tokio::test]
async fn prefer_wait_answers_with_the_finished_task_on_both_create_routes() {
    let mut s = TestServer::start_with(|c| c.sandbox_latency = Duration::from_millis(500)).await;
    let user = s.create_user("wait@example.com").await;
    let image = json!({"prompt": "a kite", "user_id": user});
    let generic =
        json!({"type": "image_generation", "user_id": user, "input": {"prompt": "a kite"}});
    for (path, body) in [
        ("/api/v1/ai/image/task", image),
        ("/api/v1/ai/tasks", generic),
    ] {
        let (status, applied, b) = create_with_prefer(&s, path, body, Some("wait=30")).await;
        assert_eq!(status, 201, "{b}");
        assert_eq!(applied.as_deref(), Some("wait=30"), "{path}");
        assert_eq!(b["data"]["status"], "completed", "{path}: {b}");
        assert!(b["data"]["result"]["image_url"].is_string(), "{b}");
        // The answer is the stored state, not a guess.
        let id = b["data"]["task_id"].as_str().expect("id");
        let (_, now) = s.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(now["data"]["version"], b["data"]["version"]);
    }
    // Without the preference the answer is immediate, and says nothing of one.
    let (status, applied, b) = create_with_prefer(
        &s,
        "/api/v1/ai/image/task",
        json!({"prompt": "a kite", "user_id": user}),
        None,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(applied, None);
    assert_eq!(b["data"]["status"], "pending");
    s.stop().await;
}

#[tokio::test]
async fn prefer_wait_gives_up_after_n_seconds_with_the_newest_state() {
    let mut s = TestServer::start_with(|c| c.sandbox_latency = Duration::from_secs(600)).await;
    let user = s.create_user("slow@example.com").await;
    let started = tokio::time::Instant::now();
    let (status, applied, b) = create_with_prefer(
        &s,
        "/api/v1/ai/image/task",
        json!({"prompt": "a glacier", "user_id": user}),
        Some("respond-async, wait=1; foo=bar"),
    )
    .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(applied.as_deref(), Some("wait=1"));
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    // The worker took it during the wait: the answer shows that, not the state at create.
    assert_eq!(b["data"]["status"], "processing", "{b}");
    assert!(b["data"]["version"].as_i64().expect("version") > 1, "{b}");
    s.stop().await;
}

#[tokio::test]
async fn prefer_wait_is_capped_at_60_and_a_malformed_one_is_ignored() {
    // A request timeout of 5 s leaves room for a wait of 4.
    let mut s = TestServer::start_with(|c| c.request_timeout = Duration::from_secs(5)).await;
    let user = s.create_user("cap@example.com").await;
    let body = json!({"prompt": "a bell", "user_id": user});
    for (prefer, want) in [
        ("wait=3600", Some("wait=4")),
        ("wait=abc", None),
        ("wait=-1", None),
        ("return=minimal", None),
        ("wait=0", Some("wait=0")),
    ] {
        let (status, applied, b) =
            create_with_prefer(&s, "/api/v1/ai/image/task", body.clone(), Some(prefer)).await;
        assert_eq!(status, 201, "{prefer}: {b}");
        assert_eq!(applied.as_deref(), want, "{prefer}");
    }
    s.stop().await;
}
