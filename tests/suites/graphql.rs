//! GraphQL over HTTP and WebSocket (both subprotocols), black-box, on the embedded default.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Proto, TestServer, WsClient, WsEvent, TASK_UPDATED};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde_json::{json, Value};

use volcengine_ai_server::app::Backends;
use volcengine_ai_server::domain::{ApiKey, Task, TaskStatus, User, WebhookDelivery};
use volcengine_ai_server::events::memory::MemoryEvents;
use volcengine_ai_server::events::{Channel, Control, ControlHandler, Event, Events, EventsError};
use volcengine_ai_server::store::{
    ChangeCursor, ImageBlob, InsertOutcome, Store, StoreError, TaskQuery,
};

const CREATE_USER: &str =
    "mutation($email: String!) { createUser(input: {email: $email, name: \"GraphQL User\"}) { id email name } }";
const CREATE_TASK: &str = "mutation($input: CreateImageTaskInput!) { createImageTask(input: $input) { id status version userId model size } }";

async fn gql_user(s: &TestServer, email: &str) -> String {
    let r = s.gql(CREATE_USER, json!({"email": email})).await;
    r["data"]["createUser"]["id"]
        .as_str()
        .expect("user id")
        .to_string()
}

async fn gql_task(s: &TestServer, user: &str, prompt: &str) -> Value {
    let r = s
        .gql(
            CREATE_TASK,
            json!({"input": {"userId": user, "prompt": prompt}}),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    r["data"]["createImageTask"].clone()
}

/// Collects a subscription's payloads until it completes.
async fn collect(ws: &mut WsClient, id: &str, field: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match ws.next_event().await {
            WsEvent::Next { id: got, data } if got == id => out.push(data[field].clone()),
            WsEvent::Complete { id: got } if got == id => return out,
            WsEvent::Error { payload, .. } => panic!("subscription error: {payload}"),
            _ => {}
        }
    }
}

fn statuses(updates: &[Value]) -> Vec<String> {
    updates
        .iter()
        .map(|u| u["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn flow_over(proto: Proto, path: &str) {
    let s =
        TestServer::start_with(|c| c.sandbox_latency = std::time::Duration::from_millis(300)).await;
    let user = gql_user(&s, &format!("{proto:?}@example.com")).await;

    // tasksUpdated is open before the task exists, so it sees every state from PENDING on.
    let mut all = WsClient::connect(&s.base, path, proto).await;
    all.subscribe(
        "u",
        "subscription($u: ID) { tasksUpdated(userId: $u) { id status version } }",
        json!({"u": user}),
    )
    .await;
    // A probe task's first event proves the subscription is live before the real task exists.
    let probe = gql_task(&s, &user, "probe").await["id"]
        .as_str()
        .expect("id")
        .to_string();
    loop {
        match all.next_event().await {
            WsEvent::Next { data, .. } if data["tasksUpdated"]["id"] == probe.as_str() => break,
            WsEvent::Next { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    let task = gql_task(&s, &user, "a lighthouse at dawn").await;
    let id = task["id"].as_str().expect("id").to_string();
    assert_eq!(task["status"], "PENDING");
    assert_eq!(task["version"], 1);

    let mut one = WsClient::connect(&s.base, path, proto).await;
    one.subscribe("t", TASK_UPDATED, json!({"id": id})).await;
    let updates = collect(&mut one, "t", "taskUpdated").await;
    // A pending task is sent again under the same version when its queue position moves
    // (at most once a second); every other update is a new version.
    assert!(
        updates.windows(2).all(|w| {
            let (a, b) = (w[0]["version"].as_i64(), w[1]["version"].as_i64());
            a < b || (a == b && w[1]["status"] == "PENDING")
        }),
        "versions increase, repeated only while pending: {:?}",
        updates
            .iter()
            .map(|u| (u["version"].clone(), u["status"].clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        statuses(&updates).last().map(String::as_str),
        Some("COMPLETED")
    );
    let last = updates.last().expect("terminal");
    assert!(last["result"]["imageUrl"]
        .as_str()
        .is_some_and(|u| u.starts_with(&s.base)));

    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("COMPLETED") {
        match all.next_event().await {
            WsEvent::Next { data, .. } if data["tasksUpdated"]["id"] == id.as_str() => {
                seen.push(
                    data["tasksUpdated"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            WsEvent::Next { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec!["PENDING", "PROCESSING", "COMPLETED"]);
}

#[tokio::test]
async fn subscription_flow_over_graphql_transport_ws() {
    flow_over(Proto::TransportWs, "/graphql/ws").await;
}

#[tokio::test]
async fn subscription_flow_over_legacy_graphql_ws() {
    flow_over(Proto::LegacyWs, "/graphql/ws").await;
}

#[tokio::test]
async fn subscription_upgrade_on_graphql_path_itself() {
    flow_over(Proto::TransportWs, "/graphql").await;
}

#[tokio::test]
async fn subscribing_after_completion_gets_the_terminal_snapshot_then_completes() {
    let s = TestServer::start().await;
    let user = gql_user(&s, "late@example.com").await;
    let id = gql_task(&s, &user, "late subscriber").await["id"]
        .as_str()
        .expect("id")
        .to_string();
    s.wait_terminal(&id).await;
    for proto in [Proto::TransportWs, Proto::LegacyWs] {
        let mut ws = WsClient::connect(&s.base, "/graphql/ws", proto).await;
        ws.subscribe("late", TASK_UPDATED, json!({"id": id})).await;
        let updates = collect(&mut ws, "late", "taskUpdated").await;
        assert_eq!(statuses(&updates), vec!["COMPLETED"], "{proto:?}");
    }
    // An unknown task is an error, not a silent hang.
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    ws.subscribe(
        "x",
        TASK_UPDATED,
        json!({"id": "01890a5d-ac96-774b-bcce-b302099a8057"}),
    )
    .await;
    match ws.next_event().await {
        WsEvent::Error { payload, .. } => {
            // graphql-transport-ws sends execution errors inside a `next` payload.
            let errors = if payload.is_array() {
                &payload
            } else {
                &payload["errors"]
            };
            assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{payload}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn hundred_concurrent_tasks_all_complete_and_every_subscriber_sees_its_end() {
    let s = TestServer::start_with(|c| c.worker_concurrency = 16).await;
    let user = gql_user(&s, "many@example.com").await;
    let mut handles = Vec::new();
    for i in 0..100 {
        let base = s.base.clone();
        let http = s.http.clone();
        let user = user.clone();
        handles.push(tokio::spawn(async move {
            let r: Value = http
                .post(format!("{base}/graphql"))
                .json(&json!({"query": CREATE_TASK, "variables": {"input": {"userId": user, "prompt": format!("scene {i}")}}}))
                .send()
                .await
                .expect("post")
                .json()
                .await
                .expect("json");
            let id = r["data"]["createImageTask"]["id"].as_str().expect("id").to_string();
            let proto = if i % 2 == 0 { Proto::TransportWs } else { Proto::LegacyWs };
            let mut ws = WsClient::connect(&base, "/graphql/ws", proto).await;
            ws.subscribe("s", TASK_UPDATED, json!({"id": id})).await;
            let updates = collect(&mut ws, "s", "taskUpdated").await;
            (id, statuses(&updates))
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let (id, st) = h.await.expect("join");
        assert_eq!(
            st.last().map(String::as_str),
            Some("COMPLETED"),
            "{id}: {st:?}"
        );
        ids.insert(id);
    }
    assert_eq!(ids.len(), 100);
    let r = s
        .gql(
            "query($u: ID) { tasks(userId: $u, status: COMPLETED, first: 100) { totalCount edges { node { id attempts } } } }",
            json!({"u": user}),
        )
        .await;
    assert_eq!(r["data"]["tasks"]["totalCount"], 100, "{r}");
    assert!(r["data"]["tasks"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .all(|e| e["node"]["attempts"] == 1));
}

#[tokio::test]
async fn queries_mutations_and_error_codes() {
    let s = TestServer::start().await;
    let user = gql_user(&s, "q@example.com").await;

    let r = s.gql(CREATE_USER, json!({"email": "Q@example.com"})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "CONFLICT", "{r}");
    let r = s.gql(CREATE_USER, json!({"email": "bad"})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "email");

    let r = s
        .gql(
            "query($id: ID!) { user(id: $id) { email } }",
            json!({"id": user}),
        )
        .await;
    assert_eq!(r["data"]["user"]["email"], "q@example.com");
    let r = s
        .gql(
            "{ userByEmail(email: \"Q@EXAMPLE.com\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["userByEmail"]["id"], user.as_str());
    let r = s
        .gql(
            "mutation($id: ID!) { updateUser(id: $id, input: {name: \"New Name\"}) { name } }",
            json!({"id": user}),
        )
        .await;
    assert_eq!(r["data"]["updateUser"]["name"], "New Name");
    let r = s
        .gql(
            "{ users(first: 10) { totalCount edges { node { id } } pageInfo { hasNextPage } } }",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["users"]["totalCount"], 1);

    for (input, field) in [
        (json!({"userId": user, "prompt": " "}), "prompt"),
        (
            json!({"userId": user, "prompt": "p", "model": "nope"}),
            "model",
        ),
        (
            json!({"userId": user, "prompt": "p", "size": "10x10"}),
            "size",
        ),
        (
            json!({"userId": user, "prompt": "p", "guidanceScale": 0.1}),
            "guidanceScale",
        ),
        (
            json!({"userId": "01890a5d-ac96-774b-bcce-b302099a8057", "prompt": "p"}),
            "userId",
        ),
        (json!({"prompt": "p"}), "userId"),
    ] {
        let r = s.gql(CREATE_TASK, json!({"input": input})).await;
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{input}: {r}"
        );
        assert_eq!(r["errors"][0]["extensions"]["field"], field, "{input}: {r}");
        assert!(r["data"].is_null());
    }
    // Wrong types and syntax errors are GraphQL's own; they carry a code too.
    let r = s
        .gql(CREATE_TASK, json!({"input": {"userId": user, "prompt": 5}}))
        .await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{r}"
    );
    let r = s.gql("{ task(id: ", json!({})).await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{r}"
    );
    let (status, r) = s.post_raw("/graphql", "{not json").await;
    assert_eq!(
        (status, r["errors"][0]["extensions"]["code"].clone()),
        (400, json!("BAD_USER_INPUT"))
    );

    let r = s
        .gql(
            "query($id: ID!) { task(id: $id) { id } }",
            json!({"id": "01890a5d-ac96-774b-bcce-b302099a8057"}),
        )
        .await;
    assert!(r["data"]["task"].is_null() && r["errors"].is_null(), "{r}");
    let r = s
        .gql(
            "query($id: ID!) { task(id: $id) { id } }",
            json!({"id": "junk"}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let r = s
        .gql(
            "mutation { cancelTask(id: \"01890a5d-ac96-774b-bcce-b302099a8057\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "NOT_FOUND");

    let id = gql_task(&s, &user, "to finish").await["id"]
        .as_str()
        .expect("id")
        .to_string();
    s.wait_terminal(&id).await;
    let r = s
        .gql(
            "mutation($id: ID!) { cancelTask(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "CONFLICT");
    let r = s
        .gql(
            "mutation($id: ID!) { retryTask(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "CONFLICT");
    let r = s
        .gql(
            "query($id: ID!) { task(id: $id) { status attempts result { imageUrl images { width height contentType bytes providerUrl } } user { email } } }",
            json!({"id": id}),
        )
        .await;
    let t = &r["data"]["task"];
    assert_eq!(t["status"], "COMPLETED");
    assert_eq!(t["user"]["email"], "q@example.com");
    assert_eq!(t["result"]["images"][0]["contentType"], "image/png");
    let img = s
        .http
        .get(t["result"]["imageUrl"].as_str().expect("url"))
        .send()
        .await
        .expect("get");
    assert_eq!(img.status(), 200);

    let failed = gql_task(&s, &user, "sensitive-content please").await["id"]
        .as_str()
        .expect("id")
        .to_string();
    s.wait_terminal(&failed).await;
    let r = s
        .gql(
            "query($id: ID!) { task(id: $id) { status error { code retryable } } }",
            json!({"id": failed}),
        )
        .await;
    assert_eq!(r["data"]["task"]["status"], "FAILED");
    assert_eq!(
        r["data"]["task"]["error"]["code"],
        "InputTextSensitiveContentDetected"
    );
    let r = s
        .gql(
            "mutation($id: ID!) { retryTask(id: $id) { status attempts } }",
            json!({"id": failed}),
        )
        .await;
    assert_eq!(r["data"]["retryTask"]["status"], "PENDING", "{r}");

    let r = s.gql("{ imageModels { id name kind defaultSize sizeTiers supportsSeed maxReferenceImages } }", json!({})).await;
    let models = r["data"]["imageModels"].as_array().expect("models");
    assert_eq!(models.len(), 9, "Ark's 4 and Jimeng's 5");
    assert!(models
        .iter()
        .any(|m| m["name"] == "doubao-seedream-3.0-t2i"
            && m["id"] == "doubao-seedream-3-0-t2i-250415"));

    let r = s
        .gql(
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({"id": user}),
        )
        .await;
    assert_eq!(r["data"]["deleteUser"], true);
    let (status, _) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, 404, "a deleted user's tasks go too");
}

#[tokio::test]
async fn tasks_connection_pages_with_cursors() {
    let s = TestServer::start().await;
    let user = gql_user(&s, "pages@example.com").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            gql_task(&s, &user, &format!("p{i}")).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    ids.reverse();
    let q = "query($u: ID, $after: String) { tasks(userId: $u, first: 2, after: $after) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id } } } }";
    let mut after = Value::Null;
    let mut seen = Vec::new();
    loop {
        let r = s.gql(q, json!({"u": user, "after": after})).await;
        let c = &r["data"]["tasks"];
        assert_eq!(c["totalCount"], 5);
        for e in c["edges"].as_array().expect("edges") {
            seen.push(e["node"]["id"].as_str().expect("id").to_string());
        }
        if c["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = c["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn graphiql_page_and_schema_file_match_the_code() {
    let s = TestServer::start().await;
    let html = s
        .http
        .get(s.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(html.to_lowercase().contains("graphiql"));

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let checked_in = std::fs::read_to_string(path).expect("schema.graphql exists");
    assert_eq!(
        checked_in,
        volcengine_ai_server::graphql::sdl(),
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql`"
    );
}

/// Counts the store calls that resolve `Task.user`.
struct Counting {
    inner: Arc<dyn Store>,
    get_users: AtomicUsize,
    get_user: AtomicUsize,
}

#[async_trait]
impl Store for Counting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn insert_user(&self, u: &User) -> Result<(), StoreError> {
        self.inner.insert_user(u).await
    }
    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.get_user.fetch_add(1, Ordering::SeqCst);
        self.inner.get_user(id).await
    }
    async fn get_user_by_email(&self, e: &str) -> Result<Option<User>, StoreError> {
        self.inner.get_user_by_email(e).await
    }
    async fn get_users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        self.get_users.fetch_add(1, Ordering::SeqCst);
        self.inner.get_users(ids).await
    }
    async fn list_users(&self, a: Option<&str>, l: usize) -> Result<Vec<User>, StoreError> {
        self.inner.list_users(a, l).await
    }
    async fn count_users(&self) -> Result<u64, StoreError> {
        self.inner.count_users().await
    }
    async fn update_user(&self, u: &User) -> Result<bool, StoreError> {
        self.inner.update_user(u).await
    }
    async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_user(id).await
    }
    async fn insert_task(&self, t: &Task) -> Result<InsertOutcome, StoreError> {
        self.inner.insert_task(t).await
    }
    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        self.inner.list_tasks(q).await
    }
    async fn tasks_changed(
        &self,
        u: Option<&str>,
        a: &ChangeCursor,
        l: usize,
    ) -> Result<Vec<Task>, StoreError> {
        self.inner.tasks_changed(u, a, l).await
    }
    async fn count_tasks(&self, u: Option<&str>, s: Option<TaskStatus>) -> Result<u64, StoreError> {
        self.inner.count_tasks(u, s).await
    }
    async fn replace_task(&self, t: &Task, v: i64, s: TaskStatus) -> Result<bool, StoreError> {
        self.inner.replace_task(t, v, s).await
    }
    async fn take_expired(&self, t: &Task, v: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.take_expired(t, v, now).await
    }
    async fn extend_lease(&self, id: &str, o: &str, u: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.extend_lease(id, o, u).await
    }
    async fn due_tasks(&self, n: DateTime<Utc>, l: usize) -> Result<Vec<Task>, StoreError> {
        self.inner.due_tasks(n, l).await
    }
    async fn due_scheduled(&self, n: DateTime<Utc>, l: usize) -> Result<Vec<Task>, StoreError> {
        self.inner.due_scheduled(n, l).await
    }
    async fn past_deadline(&self, n: DateTime<Utc>, l: usize) -> Result<Vec<Task>, StoreError> {
        self.inner.past_deadline(n, l).await
    }
    async fn oldest_pending(&self) -> Result<Option<Task>, StoreError> {
        self.inner.oldest_pending().await
    }
    async fn pending_seq_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        self.inner.pending_seq_range().await
    }
    async fn processing_tasks(&self, l: usize) -> Result<Vec<Task>, StoreError> {
        self.inner.processing_tasks(l).await
    }
    async fn delete_task(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_task(id).await
    }
    async fn status_counts(&self) -> Result<HashMap<TaskStatus, u64>, StoreError> {
        self.inner.status_counts().await
    }
    async fn count_active_tasks(&self, u: &str) -> Result<u64, StoreError> {
        self.inner.count_active_tasks(u).await
    }
    async fn active_task_images(&self, u: &str) -> Result<u64, StoreError> {
        self.inner.active_task_images(u).await
    }
    async fn release_idempotency_key(&self, u: &str, k: &str, t: &str) -> Result<(), StoreError> {
        self.inner.release_idempotency_key(u, k, t).await
    }
    async fn usage(
        &self,
        q: &volcengine_ai_server::store::UsageQuery,
    ) -> Result<Vec<volcengine_ai_server::store::UsageRow>, StoreError> {
        self.inner.usage(q).await
    }
    async fn insert_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.inner.insert_api_key(k).await
    }
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.inner.get_api_key(id).await
    }
    async fn find_api_key(&self, h: &str) -> Result<Option<ApiKey>, StoreError> {
        self.inner.find_api_key(h).await
    }
    async fn list_api_keys(&self, u: &str) -> Result<Vec<ApiKey>, StoreError> {
        self.inner.list_api_keys(u).await
    }
    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.revoke_api_key(id, at).await
    }
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.touch_api_key(id, at).await
    }
    async fn setting_or_insert(&self, n: &str, c: &str) -> Result<(String, bool), StoreError> {
        self.inner.setting_or_insert(n, c).await
    }
    async fn claim_webhooks(
        &self,
        c: &str,
        n: DateTime<Utc>,
        u: DateTime<Utc>,
        l: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.inner.claim_webhooks(c, n, u, l).await
    }
    async fn renew_webhook(&self, i: &str, c: &str, u: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.renew_webhook(i, c, u).await
    }
    async fn finish_webhook(&self, d: &WebhookDelivery, c: &str) -> Result<bool, StoreError> {
        self.inner.finish_webhook(d, c).await
    }
    async fn webhook_deliveries(&self, t: &str) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.inner.webhook_deliveries(t).await
    }
    async fn redeliver_webhook(
        &self,
        id: &str,
        n: DateTime<Utc>,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        self.inner.redeliver_webhook(id, n).await
    }
    async fn put_image(&self, i: &ImageBlob) -> Result<(), StoreError> {
        self.inner.put_image(i).await
    }
    async fn get_image(&self, id: &str) -> Result<Option<ImageBlob>, StoreError> {
        self.inner.get_image(id).await
    }
    async fn delete_images(&self, ids: &[String]) -> Result<(), StoreError> {
        self.inner.delete_images(ids).await
    }
}

#[tokio::test]
async fn task_user_is_loaded_in_one_batch_per_page() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::test_config(dir.path());
    let inner = common::backends(&mut cfg).await;
    let counting = Arc::new(Counting {
        inner: inner.store,
        get_users: AtomicUsize::new(0),
        get_user: AtomicUsize::new(0),
    });
    let backends = Backends {
        store: counting.clone(),
        queue: inner.queue,
        events: inner.events,
        background: inner.background,
        pacer: inner.pacer,
    };
    let s = TestServer::start_on(cfg, backends, dir).await;
    let users = [
        gql_user(&s, "a@example.com").await,
        gql_user(&s, "b@example.com").await,
    ];
    for i in 0..6 {
        gql_task(&s, &users[i % 2], &format!("batch {i}")).await;
    }
    let (before_many, before_one) = (
        counting.get_users.load(Ordering::SeqCst),
        counting.get_user.load(Ordering::SeqCst),
    );
    let r = s
        .gql(
            "{ tasks(first: 6) { edges { node { id user { id email } } } } }",
            json!({}),
        )
        .await;
    let edges = r["data"]["tasks"]["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 6);
    assert!(
        edges.iter().all(|e| e["node"]["user"]["email"].is_string()),
        "{r}"
    );
    assert_eq!(
        counting.get_users.load(Ordering::SeqCst) - before_many,
        1,
        "one batched lookup"
    );
    assert_eq!(
        counting.get_user.load(Ordering::SeqCst) - before_one,
        0,
        "no per-task lookups"
    );
}

#[tokio::test]
async fn an_oversized_graphql_body_is_413_and_changes_nothing() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    let user = gql_user(&s, "big@example.com").await;
    let big = json!({"query": CREATE_TASK, "variables": {"input": {"userId": user, "prompt": "p".repeat(100 * 1024)}}});
    let (status, r) = s.post("/graphql", big).await;
    assert_eq!(status, 413, "{r}");
    assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(s.stats_total().await, 0);
}

/// An event bus that loses everything published while `losing` is set: what a Redis restart or a
/// subscriber far behind does to events.
struct Lossy {
    inner: Arc<MemoryEvents>,
    losing: AtomicBool,
}

#[async_trait]
impl Events for Lossy {
    fn kind(&self) -> &'static str {
        "lossy"
    }
    async fn ping(&self) -> Result<(), EventsError> {
        self.inner.ping().await
    }
    async fn publish(&self, task: &Task) -> Result<(), EventsError> {
        if self.losing.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.publish(task).await
    }
    async fn subscribe(&self, channel: Channel) -> Result<BoxStream<'static, Event>, EventsError> {
        self.inner.subscribe(channel).await
    }
    fn on_control(&self, handler: Arc<dyn ControlHandler>) {
        self.inner.on_control(handler)
    }
    async fn control(&self, msg: &Control, within: Duration) -> Result<(), EventsError> {
        self.inner.control(msg, within).await
    }
}

async fn lossy_server(resync: Duration) -> (TestServer, Arc<Lossy>) {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::test_config(dir.path());
    cfg.subscription_resync = resync;
    let inner = common::backends(&mut cfg).await;
    let lossy = Arc::new(Lossy {
        inner: Arc::new(MemoryEvents::new()),
        losing: AtomicBool::new(false),
    });
    let backends = Backends {
        events: lossy.clone(),
        ..inner
    };
    (TestServer::start_on(cfg, backends, dir).await, lossy)
}

/// Opens `tasksUpdated` for `user` and follows a probe task on it to its end; the socket, the
/// probe's id and the versions seen so far (for `until_status`).
async fn live_tasks_updated(
    s: &TestServer,
    user: &str,
) -> (WsClient, String, HashMap<String, i64>) {
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    ws.subscribe(
        "u",
        "subscription($u: ID) { tasksUpdated(userId: $u) { id status version } }",
        json!({"u": user}),
    )
    .await;
    let probe = gql_task_id(s, user, "probe").await;
    let mut versions = HashMap::new();
    until_status(&mut ws, &mut versions, &probe, "COMPLETED").await;
    (ws, probe, versions)
}

async fn gql_task_id(s: &TestServer, user: &str, prompt: &str) -> String {
    gql_task(s, user, prompt).await["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Reads `tasksUpdated` until `id` arrives with `status`, checking on the way that no task's
/// version is ever sent twice or out of order.
async fn until_status(
    ws: &mut WsClient,
    versions: &mut HashMap<String, i64>,
    id: &str,
    status: &str,
) {
    loop {
        match ws.next_event().await {
            WsEvent::Next { data, .. } => {
                let t = &data["tasksUpdated"];
                let tid = t["id"].as_str().expect("id").to_string();
                let v = t["version"].as_i64().expect("version");
                let last = versions.insert(tid.clone(), v).unwrap_or(0);
                assert!(v > last, "task {tid}: version {v} after {last}");
                if tid == id && t["status"] == status {
                    return;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn tasks_updated_re_reads_the_store_after_a_gap() {
    // No quiet-spell re-reads in this test: only the gap can bring the lost changes back.
    let (s, bus) = lossy_server(Duration::from_secs(3600)).await;
    let user = gql_user(&s, "gap@example.com").await;
    let (mut ws, _, mut versions) = live_tasks_updated(&s, &user).await;

    bus.losing.store(true, Ordering::SeqCst);
    let lost = gql_task_id(&s, &user, "made while the bus lost everything").await;
    s.wait_terminal(&lost).await;
    assert!(
        ws.quiet_for(Duration::from_millis(300)).await.is_none(),
        "the changes were lost, so nothing arrived yet"
    );

    bus.losing.store(false, Ordering::SeqCst);
    bus.inner.gap_all().expect("gap");
    until_status(&mut ws, &mut versions, &lost, "COMPLETED").await;

    // Live events flow on afterwards, and nothing re-read is sent a second time.
    let after = gql_task_id(&s, &user, "after the gap").await;
    until_status(&mut ws, &mut versions, &after, "COMPLETED").await;
}

#[tokio::test]
async fn tasks_updated_finds_lost_changes_when_quiet() {
    let (s, bus) = lossy_server(Duration::from_millis(500)).await;
    let user = gql_user(&s, "quiet@example.com").await;
    let (mut ws, probe, mut versions) = live_tasks_updated(&s, &user).await;

    // Lost without any sign of a gap: a publish that never reached the bus.
    bus.losing.store(true, Ordering::SeqCst);
    let lost = gql_task_id(&s, &user, "never published").await;
    until_status(&mut ws, &mut versions, &lost, "COMPLETED").await;
    assert_eq!(
        versions.get(&probe).copied(),
        Some(3),
        "the probe's versions were each sent once, in order"
    );
}

/// A document validated once skips re-validation on later requests only when their variables
/// are valid: a wrong variable on the tenth request gets the same strict error as on the first.
#[tokio::test]
async fn variables_are_checked_on_every_request_of_a_known_document() {
    let s = TestServer::start().await;
    let user = gql_user(&s, "known-doc@example.com").await;
    let refused = |r: &Value, needle: &str| {
        let msg = r["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(r["data"].is_null(), "{r}");
        assert!(msg.contains(needle), "expected {needle:?}: {r}");
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{r}"
        );
    };
    for round in 0..3 {
        // A valid request first, so the document is known from the second round on.
        let ok = s
            .gql(
                CREATE_TASK,
                json!({"input": {"userId": user, "prompt": format!("round {round}")}}),
            )
            .await;
        assert!(ok["errors"].is_null(), "{ok}");
        let r = s
            .gql(
                CREATE_TASK,
                json!({"input": {"userId": user, "prompt": "x", "bogus": 1}}),
            )
            .await;
        refused(&r, "unknown field \"bogus\"");
        let r = s
            .gql(
                CREATE_TASK,
                json!({"input": {"userId": user, "prompt": "x", "n": "two"}}),
            )
            .await;
        refused(&r, "Invalid value for argument \"input.n\"");
        let r = s.gql(CREATE_TASK, json!({"input": {"userId": user}})).await;
        refused(&r, "field \"prompt\" of type \"String!\" is required");
        let r = s
            .gql(
                CREATE_TASK,
                json!({"input": {"userId": user, "prompt": "x", "images": [1]}}),
            )
            .await;
        refused(&r, "input.images.0");
        let r = s
            .gql(
                "query($s: TaskStatus) { tasks(status: $s) { totalCount } }",
                json!({"s": "DONE"}),
            )
            .await;
        refused(&r, "does not contain the value \"DONE\"");
    }
}
