//! Security: every route and GraphQL operation × {no key, wrong key, other user's key, own key,
//! admin key}, WebSocket authentication, cross-user isolation of subscriptions, GraphQL limits,
//! per-user rate limit and quota, idempotency, and the refusal to serve beyond loopback without
//! keys. Black-box over HTTP and WebSocket against the real router.

use crate::common;

use std::time::Duration;

use crate::common::{Proto, TestServer, WsClient, WsEvent};
use serde_json::{json, Value};
use volcengine_ai_server::app::{self, Role};

const ADMIN: &str = "admin-key-for-the-tests-0123456789";
const WRONG: &str = "vas_00000000000000000000000000000000000000000000000000000000deadbeef";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    NoKey,
    Wrong,
    Other,
    Own,
    Admin,
}

const EVERYONE: [Who; 5] = [Who::NoKey, Who::Wrong, Who::Other, Who::Own, Who::Admin];

/// Alice owns what the matrix acts on; Bob is the other user.
struct World {
    s: TestServer,
    alice: String,
    alice_key: String,
    bob: String,
    bob_key: String,
}

impl World {
    async fn start(tweak: impl FnOnce(&mut volcengine_ai_server::config::Config)) -> World {
        let s = TestServer::start_with(|c| {
            c.admin_api_key = Some(ADMIN.into());
            // Tasks stay in flight, so cancel, retry and delete can be arranged at will.
            c.sandbox_latency = Duration::from_secs(600);
            c.worker_concurrency = 2;
            tweak(c);
        })
        .await;
        let alice = admin_user(&s, "alice@example.com").await;
        let bob = admin_user(&s, "bob@example.com").await;
        let alice_key = make_key(&s, &alice).await;
        let bob_key = make_key(&s, &bob).await;
        World {
            s,
            alice,
            alice_key,
            bob,
            bob_key,
        }
    }

    fn key(&self, who: Who) -> Option<&str> {
        match who {
            Who::NoKey => None,
            Who::Wrong => Some(WRONG),
            Who::Other => Some(&self.bob_key),
            Who::Own => Some(&self.alice_key),
            Who::Admin => Some(ADMIN),
        }
    }

    async fn call(&self, who: Who, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.s, self.key(who), method, path, body).await
    }

    /// A task of Alice's, made by the admin (so no user limit is spent), then cancelled when
    /// `cancelled`.
    async fn alice_task(&self, cancelled: bool) -> String {
        let (st, b) = call(
            &self.s,
            Some(ADMIN),
            "POST",
            "/api/v1/ai/image/task",
            Some(json!({"prompt": "a lighthouse", "user_id": self.alice})),
        )
        .await;
        assert_eq!(st, 201, "{b}");
        let id = b["data"]["task_id"].as_str().expect("id").to_string();
        if cancelled {
            let (st, b) = call(
                &self.s,
                Some(ADMIN),
                "POST",
                &format!("/api/v1/tasks/{id}/cancel"),
                None,
            )
            .await;
            assert_eq!(st, 200, "{b}");
        }
        id
    }

    async fn gql(&self, who: Who, query: &str, variables: Value) -> (u16, Value) {
        self.call(
            who,
            "POST",
            "/graphql",
            Some(json!({"query": query, "variables": variables})),
        )
        .await
    }
}

async fn call(
    s: &TestServer,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = s.http.request(method, s.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    s.send(req).await
}

async fn admin_user(s: &TestServer, email: &str) -> String {
    let (st, b) = call(
        s,
        Some(ADMIN),
        "POST",
        "/api/v1/users",
        Some(json!({"email": email, "name": "Someone"})),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    b["data"]["id"].as_str().expect("id").to_string()
}

async fn make_key(s: &TestServer, user: &str) -> String {
    let (st, b) = call(
        s,
        Some(ADMIN),
        "POST",
        &format!("/api/v1/users/{user}/api-keys"),
        Some(json!({"name": "test"})),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    b["data"]["key"].as_str().expect("secret").to_string()
}

/// What a cell of the matrix needs made fresh before the call.
#[derive(Clone, Copy)]
enum Fresh {
    Nothing,
    /// A user of its own with a key (deleting a user); "own" then uses that user's key.
    User,
    PendingTask,
    CancelledTask,
    /// A second key of Alice's (revoking).
    AliceKey,
}

struct Case {
    method: &'static str,
    /// `{alice}`, `{task}`, `{user}`, `{key}` are filled in.
    path: &'static str,
    body: Option<Value>,
    fresh: Fresh,
    /// Expected status for [no key, wrong key, other user's key, own key, admin key].
    expect: [u16; 5],
}

fn rest_cases() -> Vec<Case> {
    let c = |method, path, body, fresh, expect| Case {
        method,
        path,
        body,
        fresh,
        expect,
    };
    let task_body = || Some(json!({"prompt": "a boat", "user_id": "{alice}"}));
    vec![
        c(
            "POST",
            "/api/v1/users",
            Some(json!({"email": "new-{n}@example.com", "name": "New One"})),
            Fresh::Nothing,
            [401, 401, 403, 403, 201],
        ),
        c(
            "GET",
            "/api/v1/users/{alice}",
            None,
            Fresh::Nothing,
            [401, 401, 403, 200, 200],
        ),
        c(
            "GET",
            "/api/v1/users?email=alice@example.com",
            None,
            Fresh::Nothing,
            [401, 401, 403, 200, 200],
        ),
        c(
            "GET",
            "/api/v1/users",
            None,
            Fresh::Nothing,
            [401, 401, 403, 403, 200],
        ),
        c(
            "PUT",
            "/api/v1/users/{alice}",
            Some(json!({"name": "Alice A"})),
            Fresh::Nothing,
            [401, 401, 403, 200, 200],
        ),
        c(
            "DELETE",
            "/api/v1/users/{user}",
            None,
            Fresh::User,
            [401, 401, 403, 200, 200],
        ),
        c(
            "POST",
            "/api/v1/ai/image/task",
            task_body(),
            Fresh::Nothing,
            [401, 401, 403, 201, 201],
        ),
        c(
            "POST",
            "/api/v1/ai/tasks",
            Some(
                json!({"type": "image_generation", "user_id": "{alice}", "input": {"prompt": "a kite"}}),
            ),
            Fresh::Nothing,
            [401, 401, 403, 201, 201],
        ),
        c(
            "GET",
            "/api/v1/ai/image/result/{task}",
            None,
            Fresh::PendingTask,
            // 202: not finished, poll again (the Go server's answer)
            [401, 401, 404, 202, 202],
        ),
        c(
            "GET",
            "/api/v1/ai/tasks/{task}",
            None,
            Fresh::PendingTask,
            [401, 401, 404, 200, 200],
        ),
        c(
            "GET",
            "/api/v1/tasks/{task}",
            None,
            Fresh::PendingTask,
            [401, 401, 404, 200, 200],
        ),
        c(
            "GET",
            "/api/v1/tasks/user/{alice}",
            None,
            Fresh::Nothing,
            [401, 401, 403, 200, 200],
        ),
        c(
            "POST",
            "/api/v1/tasks/{task}/cancel",
            None,
            Fresh::PendingTask,
            [401, 401, 404, 200, 200],
        ),
        c(
            "POST",
            "/api/v1/tasks/{task}/retry",
            None,
            Fresh::CancelledTask,
            [401, 401, 404, 200, 200],
        ),
        c(
            "DELETE",
            "/api/v1/tasks/{task}",
            None,
            Fresh::CancelledTask,
            // Another user's task is deleted as an unknown one is: 200 with deleted false.
            [401, 401, 200, 200, 200],
        ),
        c(
            "GET",
            "/api/v1/queue/stats",
            None,
            Fresh::Nothing,
            [401, 401, 403, 403, 200],
        ),
        c(
            "POST",
            "/api/v1/users/{alice}/api-keys",
            None,
            Fresh::Nothing,
            [401, 401, 403, 403, 201],
        ),
        c(
            "GET",
            "/api/v1/users/{alice}/api-keys",
            None,
            Fresh::Nothing,
            [401, 401, 403, 200, 200],
        ),
        // A user lists its own keys; the admin has none of its own and must name a user.
        c(
            "GET",
            "/api/v1/api-keys",
            None,
            Fresh::Nothing,
            [401, 401, 200, 200, 400],
        ),
        c(
            "DELETE",
            "/api/v1/api-keys/{key}",
            None,
            Fresh::AliceKey,
            [401, 401, 404, 200, 200],
        ),
        c(
            "GET",
            "/metrics",
            None,
            Fresh::Nothing,
            [401, 401, 403, 403, 200],
        ),
        c(
            "GET",
            "/health",
            None,
            Fresh::Nothing,
            [200, 200, 200, 200, 200],
        ),
        c(
            "GET",
            "/ready",
            None,
            Fresh::Nothing,
            [200, 200, 200, 200, 200],
        ),
    ]
}

/// Fills a case's placeholders, making what it needs; returns the key "own" stands for.
async fn arrange(w: &World, case: &Case, n: usize) -> (String, Option<Value>, Option<String>) {
    let mut user = String::new();
    let mut own_key = None;
    let mut task = String::new();
    let mut key = String::new();
    match case.fresh {
        Fresh::Nothing => {}
        Fresh::User => {
            user = admin_user(&w.s, &format!("fresh-{n}@example.com")).await;
            own_key = Some(make_key(&w.s, &user).await);
        }
        Fresh::PendingTask => task = w.alice_task(false).await,
        Fresh::CancelledTask => task = w.alice_task(true).await,
        Fresh::AliceKey => {
            let (st, b) = call(
                &w.s,
                Some(ADMIN),
                "POST",
                &format!("/api/v1/users/{}/api-keys", w.alice),
                None,
            )
            .await;
            assert_eq!(st, 201, "{b}");
            key = b["data"]["id"].as_str().expect("key id").to_string();
        }
    }
    let fill = |t: &str| {
        t.replace("{alice}", &w.alice)
            .replace("{user}", &user)
            .replace("{task}", &task)
            .replace("{key}", &key)
            .replace("{n}", &n.to_string())
    };
    let body = case
        .body
        .as_ref()
        .map(|b| serde_json::from_str(&fill(&b.to_string())).expect("body"));
    (fill(case.path), body, own_key)
}

#[tokio::test]
async fn every_rest_route_answers_each_kind_of_caller_as_specified() {
    let w = World::start(|_| {}).await;
    let mut failures = Vec::new();
    let mut cells = 0;
    for (i, case) in rest_cases().iter().enumerate() {
        for (j, who) in EVERYONE.iter().enumerate() {
            let (path, body, own_key) = arrange(&w, case, i * 10 + j).await;
            let key = match (who, &own_key) {
                (Who::Own, Some(k)) => Some(k.as_str()),
                _ => w.key(*who),
            };
            let (status, resp) = call(&w.s, key, case.method, &path, body).await;
            cells += 1;
            if status != case.expect[j] {
                failures.push(format!(
                    "{} {} as {who:?}: {status}, expected {}: {resp}",
                    case.method, case.path, case.expect[j]
                ));
            }
            if status == 401 {
                assert_eq!(resp["code"], "UNAUTHENTICATED", "{resp}");
            }
            if status == 403 {
                assert_eq!(resp["code"], "FORBIDDEN", "{resp}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Expected GraphQL outcome: the HTTP status is 401 without a valid key, else 200 with data or
/// an error code.
#[derive(Clone, Copy, Debug, PartialEq)]
enum G {
    Unauth,
    Ok,
    Null,
    Code(&'static str),
}

struct GCase {
    name: &'static str,
    query: &'static str,
    vars: Value,
    fresh: Fresh,
    expect: [G; 5],
}

fn gql_cases() -> Vec<GCase> {
    use G::*;
    let c = |name, query, vars, fresh, other, own, admin| GCase {
        name,
        query,
        vars,
        fresh,
        expect: [Unauth, Unauth, other, own, admin],
    };
    let f = Code("FORBIDDEN");
    let nf = Code("NOT_FOUND");
    vec![
        c(
            "user",
            "query($id: ID!) { user(id: $id) { id } }",
            json!({"id": "{alice}"}),
            Fresh::Nothing,
            f,
            Ok,
            Ok,
        ),
        c(
            "userByEmail",
            "{ userByEmail(email: \"alice@example.com\") { id } }",
            json!({}),
            Fresh::Nothing,
            f,
            Ok,
            Ok,
        ),
        c(
            "users",
            "{ users { totalCount } }",
            json!({}),
            Fresh::Nothing,
            f,
            f,
            Ok,
        ),
        c(
            "me",
            "{ me { id } }",
            json!({}),
            Fresh::Nothing,
            Ok,
            Ok,
            Null,
        ),
        c(
            "task",
            "query($id: ID!) { task(id: $id) { id user { id } } }",
            json!({"id": "{task}"}),
            Fresh::PendingTask,
            Null,
            Ok,
            Ok,
        ),
        c(
            "tasks",
            "query($u: ID) { tasks(userId: $u) { totalCount edges { node { userId } } } }",
            json!({"u": "{alice}"}),
            Fresh::Nothing,
            f,
            Ok,
            Ok,
        ),
        c(
            "imageModels",
            "{ imageModels { id } }",
            json!({}),
            Fresh::Nothing,
            Ok,
            Ok,
            Ok,
        ),
        c(
            "apiKeys",
            "query($u: ID) { apiKeys(userId: $u) { id prefix } }",
            json!({"u": "{alice}"}),
            Fresh::Nothing,
            f,
            Ok,
            Ok,
        ),
        c(
            "createUser",
            "mutation($n: String!) { createUser(input: {email: $n, name: \"Gql User\"}) { id } }",
            json!({"n": "gql-{n}@example.com"}),
            Fresh::Nothing,
            f,
            f,
            Ok,
        ),
        c(
            "updateUser",
            "mutation($id: ID!) { updateUser(id: $id, input: {name: \"Alice B\"}) { id } }",
            json!({"id": "{alice}"}),
            Fresh::Nothing,
            f,
            Ok,
            Ok,
        ),
        c(
            "deleteUser",
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({"id": "{user}"}),
            Fresh::User,
            f,
            Ok,
            Ok,
        ),
        c(
            "createImageTask",
            "mutation($u: ID) { createImageTask(input: {prompt: \"a fox\", userId: $u}) { id } }",
            json!({"u": "{alice}"}),
            Fresh::Nothing,
            f,
            Ok,
            Ok,
        ),
        c(
            "cancelTask",
            "mutation($id: ID!) { cancelTask(id: $id) { status } }",
            json!({"id": "{task}"}),
            Fresh::PendingTask,
            nf,
            Ok,
            Ok,
        ),
        c(
            "retryTask",
            "mutation($id: ID!) { retryTask(id: $id) { status } }",
            json!({"id": "{task}"}),
            Fresh::CancelledTask,
            nf,
            Ok,
            Ok,
        ),
        c(
            "deleteTask",
            "mutation($id: ID!) { deleteTask(id: $id) }",
            json!({"id": "{task}"}),
            Fresh::CancelledTask,
            nf,
            Ok,
            Ok,
        ),
        c(
            "createApiKey",
            "mutation($u: ID!) { createApiKey(userId: $u) { key apiKey { id } } }",
            json!({"u": "{alice}"}),
            Fresh::Nothing,
            f,
            f,
            Ok,
        ),
        c(
            "revokeApiKey",
            "mutation($id: ID!) { revokeApiKey(id: $id) { active } }",
            json!({"id": "{key}"}),
            Fresh::AliceKey,
            nf,
            Ok,
            Ok,
        ),
    ]
}

#[tokio::test]
async fn every_graphql_operation_answers_each_kind_of_caller_as_specified() {
    let w = World::start(|_| {}).await;
    let mut failures = Vec::new();
    for (i, case) in gql_cases().iter().enumerate() {
        for (j, who) in EVERYONE.iter().enumerate() {
            let probe = Case {
                method: "POST",
                path: "",
                body: Some(case.vars.clone()),
                fresh: case.fresh,
                expect: [0; 5],
            };
            let (_, vars, own_key) = arrange(&w, &probe, 1000 + i * 10 + j).await;
            let key = match (who, &own_key) {
                (Who::Own, Some(k)) => Some(k.as_str()),
                _ => w.key(*who),
            };
            let (status, resp) = call(
                &w.s,
                key,
                "POST",
                "/graphql",
                Some(json!({"query": case.query, "variables": vars})),
            )
            .await;
            let got = if status == 401 {
                assert_eq!(
                    resp["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                    "{resp}"
                );
                G::Unauth
            } else if let Some(code) = resp["errors"][0]["extensions"]["code"].as_str() {
                G::Code(match code {
                    "FORBIDDEN" => "FORBIDDEN",
                    "NOT_FOUND" => "NOT_FOUND",
                    _ => "OTHER",
                })
            } else {
                let data = resp["data"]
                    .as_object()
                    .and_then(|d| d.values().next())
                    .cloned();
                if data.as_ref().is_some_and(|d| !d.is_null()) {
                    G::Ok
                } else {
                    G::Null
                }
            };
            if got != case.expect[j] {
                failures.push(format!(
                    "{} as {who:?}: {got:?}, expected {:?}: {resp}",
                    case.name, case.expect[j]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_user_key_lists_and_sees_only_its_own_tasks() {
    let w = World::start(|_| {}).await;
    w.alice_task(false).await;
    let (st, b) = w
        .call(
            Who::Other,
            "POST",
            "/api/v1/ai/image/task",
            Some(json!({"prompt": "bob's own"})),
        )
        .await;
    assert_eq!(st, 201, "user_id defaults to the key's user: {b}");
    assert_eq!(b["data"]["user_id"], w.bob);
    let (_, r) = w
        .gql(
            Who::Other,
            "{ tasks { totalCount edges { node { userId user { id } } } } }",
            json!({}),
        )
        .await;
    let edges = r["data"]["tasks"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    assert_eq!(edges.len(), 1, "{r}");
    assert!(
        edges.iter().all(|e| e["node"]["userId"] == w.bob.as_str()),
        "{r}"
    );
    let (_, r) = w
        .gql(Who::Admin, "{ tasks { totalCount } }", json!({}))
        .await;
    assert_eq!(r["data"]["tasks"]["totalCount"], 2, "{r}");
}

#[tokio::test]
async fn sockets_without_a_valid_key_are_closed_with_the_protocol_codes() {
    let w = World::start(|_| {}).await;
    for proto in [Proto::TransportWs, Proto::LegacyWs] {
        let r = WsClient::connect_with(&w.s.base, "/graphql/ws", proto, json!({})).await;
        assert_eq!(r.err(), Some(Some(4403)), "{proto:?} without a key");
        let r = WsClient::connect_with(
            &w.s.base,
            "/graphql/ws",
            proto,
            json!({"authorization": format!("Bearer {WRONG}")}),
        )
        .await;
        assert_eq!(r.err(), Some(Some(4403)), "{proto:?} with a wrong key");
        assert!(WsClient::connect_with(
            &w.s.base,
            "/graphql",
            proto,
            json!({"Authorization": format!("Bearer {}", w.alice_key)}),
        )
        .await
        .is_ok());
    }
    // Subscribing before the handshake: 4401 Unauthorized.
    let mut raw = WsClient::open(&w.s.base, "/graphql/ws", Proto::TransportWs).await;
    raw.send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { tasksUpdated { id } }"}}))
        .await;
    assert_eq!(raw.close_code().await, Some(4401));
}

/// The first error's code, from an `error` frame (a list) or a `next` carrying `errors`.
fn err_code(payload: &Value) -> &str {
    let first = if payload.is_array() {
        &payload[0]
    } else {
        &payload["errors"][0]
    };
    first["extensions"]["code"].as_str().unwrap_or("")
}

const TASK_UPDATED: &str = "subscription($id: ID!) { taskUpdated(id: $id) { id status version } }";

#[tokio::test]
async fn subscriptions_deliver_nothing_of_another_users_tasks() {
    let w = World::start(|_| {}).await;
    let task = w.alice_task(false).await;
    // Claimed first (the provider call then runs for minutes), so that the cancel below is the
    // only change left for Alice's stream to deliver; on a slow store the claim could otherwise
    // land after she subscribed.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        // The task's own status: the result route says processing for a pending task too.
        let path = format!("/api/v1/tasks/{task}");
        let (_, b) = call(&w.s, Some(ADMIN), "GET", &path, None).await;
        if b["data"]["status"] == "processing" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never claimed: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let init = |k: &str| json!({"authorization": format!("Bearer {k}")});
    let mut bob = WsClient::connect_with(
        &w.s.base,
        "/graphql/ws",
        Proto::TransportWs,
        init(&w.bob_key),
    )
    .await
    .expect("bob connects");
    bob.subscribe("t", TASK_UPDATED, json!({"id": task})).await;
    match bob.next_event().await {
        WsEvent::Error { payload, .. } => {
            assert_eq!(err_code(&payload), "NOT_FOUND", "{payload}")
        }
        other => panic!("bob got {other:?}"),
    }
    assert_eq!(bob.next_event().await, WsEvent::Complete { id: "t".into() });
    // Bob may not follow Alice's stream by naming her, and his own stream stays quiet.
    bob.subscribe(
        "u",
        "subscription($u: ID) { tasksUpdated(userId: $u) { id } }",
        json!({"u": w.alice}),
    )
    .await;
    match bob.next_event().await {
        WsEvent::Error { payload, .. } => {
            assert_eq!(err_code(&payload), "FORBIDDEN", "{payload}")
        }
        other => panic!("bob got {other:?}"),
    }
    assert_eq!(bob.next_event().await, WsEvent::Complete { id: "u".into() });
    bob.subscribe(
        "mine",
        "subscription { tasksUpdated { id userId } }",
        json!({}),
    )
    .await;
    let mut alice = WsClient::connect_with(
        &w.s.base,
        "/graphql/ws",
        Proto::LegacyWs,
        init(&w.alice_key),
    )
    .await
    .expect("alice connects");
    alice
        .subscribe(
            "mine",
            "subscription { tasksUpdated { id userId status } }",
            json!({}),
        )
        .await;
    // Let both subscriptions be registered before the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, b) = w
        .call(
            Who::Own,
            "POST",
            &format!("/api/v1/tasks/{task}/cancel"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{b}");
    match alice.next_event().await {
        WsEvent::Next { data, .. } => {
            assert_eq!(data["tasksUpdated"]["id"], task.as_str(), "{data}");
            assert_eq!(data["tasksUpdated"]["status"], "CANCELLED", "{data}");
        }
        other => panic!("alice got {other:?}"),
    }
    assert_eq!(
        bob.quiet_for(Duration::from_millis(1500)).await,
        None,
        "bob saw Alice's task"
    );
}

#[tokio::test]
async fn abusive_queries_are_refused_by_depth_and_complexity_limits() {
    let w = World::start(|c| {
        c.graphql_max_depth = 6;
        c.graphql_max_complexity = 50;
    })
    .await;
    // Refused before execution, with the contract's code and a message naming the limit.
    let refused = |r: &serde_json::Value, limit: &str| {
        assert!(r["data"].is_null(), "{r}");
        let message = r["errors"][0]["message"].as_str().unwrap_or("");
        assert!(message.to_lowercase().contains(limit), "{r}");
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{r}"
        );
    };
    // Introspection that fans out (types > fields > type > fields > …); an `ofType` chain does
    // not count toward the depth of an introspection document (graphql_safety.rs).
    let deep = "{ __schema { types { fields { type { fields { type { name } } } } } } }";
    // Twice: the second is answered from the parsed-document cache and must be refused alike.
    for _ in 0..2 {
        let (st, r) = w.gql(Who::Admin, deep, json!({})).await;
        assert_eq!(st, 200);
        refused(&r, "nested");
    }
    let wide: String = (0..60)
        .map(|i| format!("m{i}: imageModels {{ id }} "))
        .collect();
    let (_, r) = w.gql(Who::Admin, &format!("{{ {wide} }}"), json!({})).await;
    refused(&r, "complex");
    let (_, r) = w.gql(Who::Admin, "{ imageModels { id } }", json!({})).await;
    assert!(r["errors"].is_null(), "a modest query passes: {r}");

    let closed = World::start(|c| c.graphql_introspection = false).await;
    let (_, r) = closed
        .gql(Who::Admin, "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert!(
        r["data"].is_null() || r["data"]["__schema"].is_null(),
        "introspection is off: {r}"
    );
}

#[tokio::test]
async fn the_submit_rate_limit_answers_429_with_retry_after_and_recovers() {
    let w = World::start(|c| {
        c.user_submit_per_minute = 60;
        c.user_submit_burst = 3;
    })
    .await;
    let submit = || {
        w.call(
            Who::Own,
            "POST",
            "/api/v1/ai/image/task",
            Some(json!({"prompt": "again"})),
        )
    };
    for _ in 0..3 {
        assert_eq!(submit().await.0, 201);
    }
    let resp =
        w.s.http
            .post(w.s.url("/api/v1/ai/image/task"))
            .bearer_auth(&w.alice_key)
            .json(&json!({"prompt": "one too many"}))
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
    assert!((1..=2).contains(&retry), "retry after {retry}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    // GraphQL shares the bucket and says the same.
    let (_, r) = w
        .gql(
            Who::Own,
            "mutation { createImageTask(input: {prompt: \"x\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{r}");
    assert!(
        r["errors"][0]["extensions"]["retryAfter"]
            .as_u64()
            .is_some(),
        "{r}"
    );
    // Bob has a bucket of his own; the admin is not limited.
    assert_eq!(
        w.call(
            Who::Other,
            "POST",
            "/api/v1/ai/image/task",
            Some(json!({"prompt": "b"}))
        )
        .await
        .0,
        201
    );
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(submit().await.0, 201, "the bucket refilled");
}

#[tokio::test]
async fn the_in_flight_quota_answers_429_until_a_task_finishes() {
    let w = World::start(|c| c.user_max_in_flight = 2).await;
    let submit = || {
        w.call(
            Who::Own,
            "POST",
            "/api/v1/ai/image/task",
            Some(json!({"prompt": "slow"})),
        )
    };
    let (_, first) = submit().await;
    assert_eq!(submit().await.0, 201);
    let (st, b) = submit().await;
    assert_eq!(st, 429, "{b}");
    assert_eq!(b["code"], "RATE_LIMITED");
    assert!(
        b["message"].as_str().unwrap_or("").contains("at most")
            || b["message"].as_str().unwrap_or("").contains("most"),
        "{b}"
    );
    let id = first["data"]["task_id"].as_str().expect("id");
    assert_eq!(
        w.call(
            Who::Own,
            "POST",
            &format!("/api/v1/tasks/{id}/cancel"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(submit().await.0, 201, "room again after a cancel");
}

/// Submits of one user racing each other stay within the quota together: each counts the
/// others not stored yet.
#[tokio::test]
async fn concurrent_submits_never_overshoot_the_in_flight_quota() {
    let w = World::start(|c| {
        c.user_max_in_flight = 5;
        c.user_submit_burst = 1_000;
        c.user_submit_per_minute = 100_000;
    })
    .await;
    let submits = (0..40).map(|i| {
        w.call(
            Who::Own,
            "POST",
            "/api/v1/ai/image/task",
            Some(json!({"prompt": format!("race {i}")})),
        )
    });
    let answers = futures::future::join_all(submits).await;
    let mut accepted = answers.iter().filter(|(st, _)| *st == 201).count();
    let refused = answers.iter().filter(|(st, _)| *st == 429).count();
    assert_eq!(accepted + refused, 40, "{answers:?}");
    // A submit refused in the storm may have counted another refused one: the quota can be
    // under-filled for a moment, never overshot.
    assert!((1..=5).contains(&accepted), "{accepted} accepted");
    // One at a time, the rest of the quota fills exactly.
    loop {
        let (st, b) = w
            .call(
                Who::Own,
                "POST",
                "/api/v1/ai/image/task",
                Some(json!({"prompt": "one more"})),
            )
            .await;
        match st {
            201 => accepted += 1,
            429 => break,
            other => panic!("{other} {b}"),
        }
    }
    assert_eq!(accepted, 5);
}

#[tokio::test]
async fn idempotency_keys_replay_conflict_are_per_user_and_expire() {
    let w = World::start(|c| c.idempotency_ttl = Duration::from_secs(2)).await;
    let post = |who: Who, key: &'static str, prompt: &'static str| {
        let req =
            w.s.http
                .post(w.s.url("/api/v1/ai/image/task"))
                .bearer_auth(w.key(who).expect("key"))
                .header("Idempotency-Key", key)
                .json(&json!({"prompt": prompt}));
        w.s.send(req)
    };
    let (st, a) = post(Who::Own, "k-1", "a red door").await;
    assert_eq!(st, 201, "{a}");
    let (st, again) = post(Who::Own, "k-1", "a red door").await;
    assert_eq!(st, 201);
    assert_eq!(
        again["data"]["task_id"], a["data"]["task_id"],
        "replay returns the same task"
    );
    let (st, b) = post(Who::Own, "k-1", "a blue door").await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(b["code"], "CONFLICT");
    let (st, bob) = post(Who::Other, "k-1", "a red door").await;
    assert_eq!(st, 201);
    assert_ne!(
        bob["data"]["task_id"], a["data"]["task_id"],
        "keys are per user"
    );
    // GraphQL's idempotencyKey is the same key space.
    let (_, r) = w
        .gql(
            Who::Own,
            "mutation { createImageTask(input: {prompt: \"a red door\", idempotencyKey: \"k-1\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        r["data"]["createImageTask"]["id"], a["data"]["task_id"],
        "{r}"
    );
    let (_, list) = w
        .call(
            Who::Own,
            "GET",
            &format!("/api/v1/tasks/user/{}", w.alice),
            None,
        )
        .await;
    assert_eq!(
        list["pagination"]["total"], 1,
        "one task, however many replays: {list}"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (st, later) = post(Who::Own, "k-1", "a blue door").await;
    assert_eq!(st, 201, "an expired key is free again: {later}");
    assert_ne!(later["data"]["task_id"], a["data"]["task_id"]);
}

#[tokio::test]
async fn revoked_keys_stop_working_and_secrets_are_never_listed() {
    let w = World::start(|_| {}).await;
    let (_, keys) = w
        .call(
            Who::Admin,
            "GET",
            &format!("/api/v1/users/{}/api-keys", w.alice),
            None,
        )
        .await;
    let text = keys.to_string();
    assert!(
        !text.contains(&w.alice_key),
        "a listing shows the secret: {text}"
    );
    assert!(!text.contains(&w.alice_key[12..]), "{text}");
    let id = keys["data"][0]["id"].as_str().expect("key id").to_string();
    assert!(
        keys["data"][0]["last_used_at"].is_null() || keys["data"][0]["last_used_at"].is_string()
    );
    assert_eq!(
        w.call(Who::Own, "GET", &format!("/api/v1/users/{}", w.alice), None)
            .await
            .0,
        200
    );
    let (_, used) = w
        .call(
            Who::Admin,
            "GET",
            &format!("/api/v1/users/{}/api-keys", w.alice),
            None,
        )
        .await;
    assert!(
        used["data"][0]["last_used_at"].is_string(),
        "last use recorded: {used}"
    );
    let (st, b) = w
        .call(Who::Own, "DELETE", &format!("/api/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["active"], false);
    let (st, b) = w
        .call(Who::Own, "GET", &format!("/api/v1/users/{}", w.alice), None)
        .await;
    assert_eq!(st, 401, "{b}");
}

/// A revoked key's sockets are closed with 4403 before the revoke call returns, and nothing is
/// delivered on them after (before: they kept receiving events until the next periodic key check,
/// up to 10 s). The revocation travels over the event bus, so on the distributed backends every
/// api process acts on it (tests/distributed.rs has two).
#[tokio::test]
async fn revoking_a_key_closes_its_sockets_before_the_revoke_returns() {
    let w = World::start(|_| {}).await;
    let task = w.alice_task(false).await;
    let auth = json!({"authorization": format!("Bearer {}", w.alice_key)});
    let mut socks = Vec::new();
    for proto in [Proto::TransportWs, Proto::LegacyWs] {
        let mut ws = WsClient::connect_with(&w.s.base, "/graphql/ws", proto, auth.clone())
            .await
            .expect("admitted");
        ws.subscribe("t", common::TASK_UPDATED, json!({"id": task}))
            .await;
        match ws.next_event().await {
            WsEvent::Next { data, .. } => assert_eq!(data["taskUpdated"]["id"], task),
            other => panic!("{other:?}"),
        }
        socks.push(ws);
    }
    let (_, keys) = w
        .call(
            Who::Admin,
            "GET",
            &format!("/api/v1/users/{}/api-keys", w.alice),
            None,
        )
        .await;
    let key_id = keys["data"][0]["id"].as_str().expect("key id").to_string();
    let (st, b) = w
        .call(
            Who::Admin,
            "DELETE",
            &format!("/api/v1/api-keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{b}");
    // A change the subscription would have delivered.
    let (st, b) = w
        .call(
            Who::Admin,
            "POST",
            &format!("/api/v1/tasks/{task}/cancel"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{b}");
    for mut ws in socks {
        // Frames sent before the revoke (the task starting) may still be unread; the
        // cancellation, made after it returned, must not arrive.
        let (after, code) = ws.until_closed().await;
        assert!(
            after
                .iter()
                .all(|m| m["payload"]["data"]["taskUpdated"]["status"] != "CANCELLED"),
            "delivered after the revoke: {after:?}"
        );
        assert_eq!(code, Some(4403), "{after:?}");
    }
}

#[tokio::test]
async fn without_keys_the_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::test_config(dir.path());
    let backends = common::backends(&mut cfg).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let err = app::start_with(cfg.clone(), Some(listener), Role::Serve, backends)
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("ADMIN_API_KEY"), "{msg}");

    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::test_config(dir.path());
    cfg.admin_api_key = Some(ADMIN.into());
    let backends = common::backends(&mut cfg).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let running = app::start_with(cfg, Some(listener), Role::Serve, backends)
        .await
        .expect("with a key it starts");
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn without_keys_cross_site_browser_requests_are_refused() {
    let s = TestServer::start().await;
    let host = s.base.trim_start_matches("http://").to_string();
    let body = json!({"email": "csrf@example.com", "name": "Cross Site"});
    let evil = s
        .send(
            s.http
                .post(s.url("/api/v1/users"))
                .header("origin", "http://evil.example")
                .header("content-type", "text/plain")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(evil.0, 403, "{:?}", evil.1);
    let (_, list) = s.get("/api/v1/users").await;
    assert_eq!(
        list["pagination"]["total"], 0,
        "nothing was created: {list}"
    );
    // The console (same origin) and non-browser clients (no Origin) are served.
    let same = s
        .send(
            s.http
                .post(s.url("/api/v1/users"))
                .header("origin", format!("http://{host}"))
                .json(&body),
        )
        .await;
    assert_eq!(same.0, 201, "{:?}", same.1);
    // A page's WebSocket to the local server is refused before the upgrade.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}/graphql/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("h"),
    );
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().expect("h"));
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

/// DNS rebinding: a page on an attacker's domain that resolves to 127.0.0.1 sends requests whose
/// `Host` and `Origin` both name that domain, so the same-origin check passes. While auth is off
/// only loopback `Host` values and the names in `ALLOWED_HOSTS` are served, HTTP requests and
/// WebSocket upgrades alike; with auth on the key decides.
#[tokio::test]
async fn without_keys_only_loopback_hosts_and_allowed_names_are_served() {
    let s = TestServer::start_with(|c| c.allowed_hosts = vec!["ai.lan".into()]).await;
    let port = s.base.rsplit(':').next().expect("port").to_string();
    let body = json!({"email": "rebind@example.com", "name": "Re Bind"});
    let list = json!({"query": "{ users { nodes { email } } }"});
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("ai.lan.evil.example:{port}"),
        format!("10.0.0.7:{port}"),
    ] {
        for origin in [Some(format!("http://{host}")), None] {
            let with = |mut r: reqwest::RequestBuilder| {
                r = r.header("host", &host);
                match &origin {
                    Some(o) => r.header("origin", o),
                    None => r,
                }
            };
            let made = s
                .send(with(s.http.post(s.url("/api/v1/users"))).json(&body))
                .await;
            assert_eq!(made.0, 403, "POST with Host {host}: {:?}", made.1);
            let read = s
                .send(with(s.http.post(s.url("/graphql"))).json(&list))
                .await;
            assert_eq!(read.0, 403, "GraphQL with Host {host}: {:?}", read.1);
        }
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://127.0.0.1:{port}/graphql/ws")
            .into_client_request()
            .expect("request");
        let h = req.headers_mut();
        h.insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("h"),
        );
        h.insert("host", host.parse().expect("h"));
        h.insert("origin", format!("http://{host}").parse().expect("h"));
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403, "upgrade with Host {host}")
            }
            other => panic!("upgrade with Host {host}: {:?}", other.map(|_| ())),
        }
    }
    let (_, users) = s.get("/api/v1/users").await;
    assert_eq!(
        users["pagination"]["total"], 0,
        "nothing was created: {users}"
    );
    for host in [
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("LocalHost.:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
        format!("ai.lan:{port}"),
        "AI.LAN".to_string(),
    ] {
        let got = s
            .send(
                s.http
                    .post(s.url("/graphql"))
                    .header("host", &host)
                    .header("origin", format!("http://{host}"))
                    .json(&list),
            )
            .await;
        assert_eq!(got.0, 200, "Host {host}: {:?}", got.1);
    }

    let w = World::start(|_| {}).await;
    let got =
        w.s.send(
            w.s.http
                .get(w.s.url("/api/v1/users"))
                .header("host", "api.example.com")
                .bearer_auth(ADMIN),
        )
        .await;
    assert_eq!(got.0, 200, "with auth on any Host is served: {:?}", got.1);
}

/// Changing an email to a taken address answers 409 and to a free one 200, so a user key that
/// could change its own email could learn who else is registered. Only the admin changes emails
/// (uniqueness still holds for it); a user key gets 403 whatever the address, over REST and
/// GraphQL, and may still rename itself or send its current email back unchanged.
#[tokio::test]
async fn a_user_key_cannot_change_its_email_so_cannot_probe_for_others() {
    let w = World::start(|_| {}).await;
    let path = format!("/api/v1/users/{}", w.alice);
    let put = |who: &'static str, body: Value| {
        let key = if who == "admin" { ADMIN } else { &w.alice_key };
        call(&w.s, Some(key), "PUT", &path, Some(body))
    };
    let taken = put("alice", json!({"email": "BOB@example.com"})).await;
    let free = put("alice", json!({"email": "free-one@example.com"})).await;
    assert_eq!(taken.0, 403, "{}", taken.1);
    assert_eq!(free.0, 403, "{}", free.1);
    assert_eq!(taken.1, free.1, "the answers must not differ");
    let gql = |email: &'static str| {
        w.gql(
            Who::Own,
            "mutation($id: ID!, $e: String!) { updateUser(id: $id, input: {email: $e}) { email } }",
            json!({"id": w.alice, "e": email}),
        )
    };
    let (_, taken) = gql("bob@example.com").await;
    let (_, free) = gql("free-two@example.com").await;
    assert_eq!(
        taken["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{taken}"
    );
    assert_eq!(
        taken["errors"], free["errors"],
        "the answers must not differ"
    );

    let renamed = put(
        "alice",
        json!({"email": "Alice@Example.com", "name": "Alice Renamed"}),
    )
    .await;
    assert_eq!(renamed.0, 200, "{}", renamed.1);
    assert_eq!(renamed.1["data"]["email"], "alice@example.com");
    assert_eq!(renamed.1["data"]["name"], "Alice Renamed");

    let dup = put("admin", json!({"email": "bob@example.com"})).await;
    assert_eq!(dup.0, 409, "{}", dup.1);
    let moved = put("admin", json!({"email": "alice.new@example.com"})).await;
    assert_eq!(moved.0, 200, "{}", moved.1);
    assert_eq!(moved.1["data"]["email"], "alice.new@example.com");
}

#[tokio::test]
async fn graphql_over_get_never_runs_a_mutation() {
    let s = TestServer::start().await;
    for doc in [
        "mutation { createUser(input: {email: \"g@example.com\", name: \"Get Get\"}) { id } }",
        "query A { me { id } } mutation B { createUser(input: {email: \"g@example.com\", name: \"Get Get\"}) { id } }",
    ] {
        // Twice: the second time the document comes from the parse cache.
        for _ in 0..2 {
            let resp = s
                .http
                .get(s.url("/graphql"))
                .query(&[("query", doc), ("operationName", "B")])
                .send()
                .await
                .expect("get");
            assert_eq!(resp.status().as_u16(), 405, "{doc}");
        }
    }
    let (_, list) = s.get("/api/v1/users").await;
    assert_eq!(list["pagination"]["total"], 0, "{list}");
    for _ in 0..2 {
        let resp = s
            .http
            .get(s.url("/graphql"))
            .query(&[("query", "{ imageModels { id } }")])
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status().as_u16(), 200);
        let body: serde_json::Value = resp.json().await.expect("json");
        assert!(body["data"]["imageModels"][0]["id"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn sockets_per_key_and_subscriptions_per_socket_are_capped() {
    let w = World::start(|c| {
        c.ws_max_connections_per_key = 2;
        c.ws_max_subscriptions = 2;
    })
    .await;
    let init = json!({"authorization": format!("Bearer {}", w.alice_key)});
    let mut first =
        WsClient::connect_with(&w.s.base, "/graphql/ws", Proto::TransportWs, init.clone())
            .await
            .expect("first socket");
    let second = WsClient::connect_with(&w.s.base, "/graphql/ws", Proto::TransportWs, init.clone())
        .await
        .expect("second socket");
    let third =
        WsClient::connect_with(&w.s.base, "/graphql/ws", Proto::TransportWs, init.clone()).await;
    assert_eq!(third.err(), Some(Some(4429)), "a third socket on one key");
    // Bob's key and the admin have room of their own.
    let bob = json!({"authorization": format!("Bearer {}", w.bob_key)});
    assert!(
        WsClient::connect_with(&w.s.base, "/graphql/ws", Proto::TransportWs, bob)
            .await
            .is_ok()
    );
    // A closed socket gives its place back.
    drop(second);
    let mut again = None;
    for _ in 0..50 {
        match WsClient::connect_with(&w.s.base, "/graphql/ws", Proto::TransportWs, init.clone())
            .await
        {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(again.is_some(), "the closed socket's place came back");

    let sub = "subscription { tasksUpdated { id } }";
    first.subscribe("a", sub, json!({})).await;
    first.subscribe("b", sub, json!({})).await;
    first.subscribe("c", sub, json!({})).await;
    match first.next_event().await {
        // The three start concurrently: whichever comes third is the one refused.
        WsEvent::Error { id, payload } => {
            assert!(["a", "b", "c"].contains(&id.as_str()), "{id}");
            assert_eq!(err_code(&payload), "RATE_LIMITED", "{payload}");
        }
        other => panic!("expected one subscription refused, got {other:?}"),
    }
}

#[tokio::test]
async fn queue_stats_tell_how_long_the_oldest_pending_task_has_waited() {
    // Two worker slots busy for minutes: the third task waits.
    let w = World::start(|_| {}).await;
    for _ in 0..3 {
        w.alice_task(false).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, stats) = w.call(Who::Admin, "GET", "/api/v1/queue/stats", None).await;
    let age = stats["data"]["oldest_pending_age_seconds"]
        .as_f64()
        .expect("age");
    assert!(age >= 0.2, "{stats}");
    let (_, metrics) = w.call(Who::Admin, "GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("queue_oldest_pending_age_seconds "), "{text}");
}
