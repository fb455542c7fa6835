//! Task deadlines, black-box on the backends of this run (embedded, or MongoDB + Redis with
//! `TEST_BACKEND=distributed`): a task not finished by its deadline fails with
//! `DEADLINE_EXCEEDED` whether it waits in the queue or its provider call is in flight, the
//! worker's late result does not bring it back, subscribers see the failure, a scheduled task's
//! deadline counts from its due time, and the bounds of `deadline_seconds`.

use std::time::Duration;

use crate::common::{Proto, TestServer, WsClient, WsEvent};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

async fn create(s: &TestServer, body: Value) -> Value {
    let (status, c) = s.post("/api/v1/ai/image/task", body).await;
    assert_eq!(status, 201, "{c}");
    c["data"].clone()
}

fn failed_by_deadline(t: &Value) {
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "DEADLINE_EXCEEDED", "{t}");
    assert_eq!(t["error"]["retryable"], false, "{t}");
    assert!(t["result"].is_null(), "{t}");
    assert!(
        time(&t["completed_at"]) >= time(&t["deadline_at"]),
        "failed before its deadline: {t}"
    );
}

/// A provider call that outlasts the deadline (4 s against 2 s): the task fails at its deadline
/// while the call is in flight, and the worker's result after it changes nothing. A second task
/// waiting behind it in the queue (one worker slot) with a 1 s deadline fails first, never
/// started.
#[tokio::test]
async fn an_overdue_task_fails_in_flight_or_queued_and_stays_failed() {
    let s = TestServer::start_with(|c| {
        c.sandbox_latency = Duration::from_secs(4);
        c.worker_concurrency = 1;
    })
    .await;
    let user = s.create_user("deadline@example.com").await;
    let running = create(
        &s,
        json!({"prompt": "slow", "user_id": user, "deadline_seconds": 2}),
    )
    .await;
    let created = time(&running["created_at"]);
    assert_eq!(
        time(&running["deadline_at"]),
        created + chrono::Duration::seconds(2),
        "{running}"
    );
    let id = running["task_id"].as_str().expect("id").to_string();
    s.wait_status(&id, "processing").await;
    let queued = create(
        &s,
        json!({"prompt": "behind", "user_id": user, "deadline_seconds": 1}),
    )
    .await;
    let queued_id = queued["task_id"].as_str().expect("id").to_string();

    let behind = s.wait_terminal(&queued_id).await;
    failed_by_deadline(&behind);
    assert_eq!(behind["attempts"], 0, "failed in the queue: {behind}");
    let failed = s.wait_terminal(&id).await;
    failed_by_deadline(&failed);
    assert_eq!(failed["attempts"], 1, "{failed}");

    // Past the provider's 4 s: its late answer lost the compare-and-set.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (_, again) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(again["data"]["version"], failed["version"], "{again}");
    failed_by_deadline(&again["data"]);
    let (_, behind_again) = s.get(&format!("/api/v1/tasks/{queued_id}")).await;
    failed_by_deadline(&behind_again["data"]);
    assert_eq!(behind_again["data"]["attempts"], 0, "{behind_again}");
}

/// `taskUpdated` delivers the failure and completes, like any terminal state.
#[tokio::test]
async fn subscribers_see_the_deadline_failure() {
    let s = TestServer::start_with(|c| c.sandbox_latency = Duration::from_secs(5)).await;
    let user = s.create_user("deadline-sub@example.com").await;
    let t = create(
        &s,
        json!({"prompt": "slow", "user_id": user, "deadline_seconds": 1}),
    )
    .await;
    let id = t["task_id"].as_str().expect("id").to_string();
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    ws.subscribe(
        "d",
        "subscription($id: ID!) { taskUpdated(id: $id) { status error { code } } }",
        json!({"id": id}),
    )
    .await;
    let mut last = Value::Null;
    loop {
        match ws.next_event().await {
            WsEvent::Next { data, .. } => last = data["taskUpdated"].clone(),
            WsEvent::Complete { .. } => break,
            WsEvent::Error { payload, .. } => panic!("subscription error: {payload}"),
        }
    }
    assert_eq!(
        last,
        json!({"status": "FAILED", "error": {"code": "DEADLINE_EXCEEDED"}})
    );
}

/// A scheduled task's deadline counts from its due time: 4 s of delay and a 3 s deadline run
/// (counted from creation it would have failed while still scheduled).
#[tokio::test]
async fn a_scheduled_tasks_deadline_counts_from_its_due_time() {
    let s = TestServer::start().await;
    let user = s.create_user("deadline-sched@example.com").await;
    let t = create(
        &s,
        json!({"prompt": "later", "user_id": user, "delay": 4, "deadline_seconds": 3}),
    )
    .await;
    assert_eq!(t["status"], "scheduled");
    assert_eq!(
        time(&t["deadline_at"]),
        time(&t["run_at"]) + chrono::Duration::seconds(3),
        "{t}"
    );
    let done = s.wait_terminal(t["task_id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test]
async fn deadline_bounds_are_field_errors_and_the_default_applies() {
    let s = TestServer::start_with(|c| c.task_deadline = Duration::from_secs(600)).await;
    let user = s.create_user("deadline-bounds@example.com").await;
    for bad in [json!(0), json!(-1), json!(604_801)] {
        let (status, e) = s
            .post(
                "/api/v1/ai/image/task",
                json!({"prompt": "p", "user_id": user, "deadline_seconds": bad}),
            )
            .await;
        assert_eq!(
            (status, e["details"][0]["field"].clone()),
            (400, json!("deadline_seconds")),
            "{e}"
        );
    }
    let t = create(&s, json!({"prompt": "p", "user_id": user})).await;
    assert_eq!(
        time(&t["deadline_at"]),
        time(&t["created_at"]) + chrono::Duration::seconds(600),
        "TASK_DEADLINE: {t}"
    );
    let create = "mutation($i: CreateImageTaskInput!) { createImageTask(input: $i) { id deadlineAt createdAt } }";
    let bad = s
        .gql(
            create,
            json!({"i": {"prompt": "p", "userId": user, "deadlineSeconds": 0}}),
        )
        .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["field"], "deadlineSeconds",
        "{bad}"
    );
    let ok = s
        .gql(
            create,
            json!({"i": {"prompt": "p", "userId": user, "deadlineSeconds": 90}}),
        )
        .await;
    let t = &ok["data"]["createImageTask"];
    assert_eq!(
        time(&t["deadlineAt"]),
        time(&t["createdAt"]) + chrono::Duration::seconds(90),
        "{ok}"
    );
}
