//! Scheduled tasks, black-box on the backends of this run (embedded, or MongoDB + Redis with
//! `TEST_BACKEND=distributed`): `delay` and `run_at` on the REST routes, `delaySeconds` and
//! `runAt` on GraphQL, the bounds, cancelling a scheduled task, and a restart while scheduled.

use crate::common;

use crate::common::TestServer;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// The task ran, and not before the time it was scheduled for.
fn ran_after_its_start(t: &Value) {
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    assert!(
        time(&t["started_at"]) >= time(&t["run_at"]),
        "started before its time: {t}"
    );
}

#[tokio::test]
async fn delay_and_run_at_schedule_a_task_that_runs_once_due() {
    let s = TestServer::start().await;
    let user = s.create_user("sched@example.com").await;

    // Times are written to the millisecond, cut (not rounded).
    let before = Utc::now() - chrono::Duration::milliseconds(1);
    let (status, c) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "later", "user_id": user, "delay": 2}),
        )
        .await;
    assert_eq!(
        (status, c["data"]["status"].clone()),
        (201, json!("scheduled")),
        "{c}"
    );
    let delayed = c["data"]["task_id"].as_str().expect("id").to_string();
    assert!(time(&c["data"]["run_at"]) >= before + chrono::Duration::seconds(2));
    let (_, polled) = s.get(&format!("/api/v1/tasks/{delayed}")).await;
    assert_eq!(polled["data"]["status"], "scheduled", "{polled}");

    // The older server's generic route took `delay` at the top level.
    let (status, g) = s
        .post(
            "/api/v1/ai/tasks",
            json!({"type": "image_generation", "user_id": user, "delay": 1,
                   "input": {"prompt": "generic later"}}),
        )
        .await;
    assert_eq!(
        (status, g["data"]["status"].clone()),
        (201, json!("scheduled")),
        "{g}"
    );
    let generic = g["data"]["id"].as_str().expect("id").to_string();

    let at = (Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let (status, r) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "at a time", "user_id": user, "run_at": at}),
        )
        .await;
    assert_eq!(
        (status, r["data"]["status"].clone()),
        (201, json!("scheduled")),
        "{r}"
    );
    let timed = r["data"]["task_id"].as_str().expect("id").to_string();

    // Zero delay, or a time a few seconds ago (clock skew), starts now as before.
    for body in [
        json!({"prompt": "now", "user_id": user, "delay": 0}),
        json!({"prompt": "now", "user_id": user,
               "run_at": (Utc::now() - chrono::Duration::seconds(5)).to_rfc3339()}),
    ] {
        let (status, n) = s.post("/api/v1/ai/image/task", body).await;
        assert_eq!(
            (status, n["data"]["status"].clone()),
            (201, json!("pending")),
            "{n}"
        );
        assert!(n["data"]["run_at"].is_null(), "{n}");
    }

    for id in [&delayed, &generic, &timed] {
        ran_after_its_start(&s.wait_terminal(id).await);
    }
    let (_, listed) = s
        .get(&format!("/api/v1/tasks/user/{user}?status=scheduled"))
        .await;
    assert_eq!(listed["data"]["tasks"], json!([]), "{listed}");
}

#[tokio::test]
async fn out_of_bounds_schedules_are_field_errors_and_store_nothing() {
    let s = TestServer::start().await;
    let user = s.create_user("bounds@example.com").await;
    let past = (Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let far = (Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let cases = [
        (json!({"delay": -1}), "delay"),
        (json!({"delay": 2_592_001}), "delay"),
        (json!({"run_at": past}), "run_at"),
        (json!({"run_at": far}), "run_at"),
        (json!({"run_at": "tomorrow"}), "run_at"),
        (json!({"delay": 5, "run_at": far}), "run_at"),
    ];
    for (extra, field) in cases {
        let mut body = json!({"prompt": "p", "user_id": user});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, e) = s.post("/api/v1/ai/image/task", body.clone()).await;
        assert_eq!(
            (status, e["code"].clone(), e["details"][0]["field"].clone()),
            (400, json!("VALIDATION_FAILED"), json!(field)),
            "{body} -> {e}"
        );
    }
    let (status, e) = s
        .post(
            "/api/v1/ai/tasks",
            json!({"user_id": user, "delay": -5, "input": {"prompt": "p"}}),
        )
        .await;
    assert_eq!(
        (status, e["details"][0]["field"].clone()),
        (400, json!("delay")),
        "{e}"
    );
    assert_eq!(s.stats_total().await, 0);
}

#[tokio::test]
async fn a_cancelled_scheduled_task_never_runs() {
    let s = TestServer::start().await;
    let user = s.create_user("cancel-sched@example.com").await;
    let (_, c) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "never", "user_id": user, "delay": 1}),
        )
        .await;
    let id = c["data"]["task_id"].as_str().expect("id").to_string();
    let (status, x) = s
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, x["data"]["status"].clone()),
        (200, json!("cancelled")),
        "{x}"
    );

    // Past its time, with a task created after it already done: it stayed cancelled.
    let later = s.create_task(&user, "after").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(s.wait_terminal(&later).await["status"], "completed");
    let (_, t) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(
        (t["data"]["status"].clone(), t["data"]["attempts"].clone()),
        (json!("cancelled"), json!(0)),
        "{t}"
    );
}

#[tokio::test]
async fn a_scheduled_task_survives_a_restart_and_runs_after_it() {
    let mut s = TestServer::start().await;
    let user = s.create_user("restart-sched@example.com").await;
    let (_, c) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "across a restart", "user_id": user, "delay": 2}),
        )
        .await;
    let id = c["data"]["task_id"].as_str().expect("id").to_string();
    let (_, before) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(before["data"]["status"], "scheduled");

    s.start_again().await;
    let (_, after) = s.get(&format!("/api/v1/tasks/{id}")).await;
    assert!(
        matches!(
            after["data"]["status"].as_str(),
            Some("scheduled" | "pending" | "processing" | "completed")
        ),
        "{after}"
    );
    ran_after_its_start(&s.wait_terminal(&id).await);
}

#[tokio::test]
async fn graphql_schedules_with_delay_seconds_or_run_at() {
    let s = TestServer::start().await;
    let user = s.create_user("gql-sched@example.com").await;
    let create =
        "mutation($i: CreateImageTaskInput!) { createImageTask(input: $i) { id status runAt } }";
    let a = s
        .gql(
            create,
            json!({"i": {"prompt": "p", "userId": user, "delaySeconds": 1}}),
        )
        .await;
    assert_eq!(a["data"]["createImageTask"]["status"], "SCHEDULED", "{a}");
    let at = (Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let b = s
        .gql(
            create,
            json!({"i": {"prompt": "p", "userId": user, "runAt": at}}),
        )
        .await;
    assert_eq!(b["data"]["createImageTask"]["status"], "SCHEDULED", "{b}");
    assert!(
        time(&b["data"]["createImageTask"]["runAt"])
            >= time(&json!(at)) - chrono::Duration::milliseconds(1)
    );

    let bad = s
        .gql(
            create,
            json!({"i": {"prompt": "p", "userId": user, "delaySeconds": -1}}),
        )
        .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{bad}"
    );
    assert_eq!(
        bad["errors"][0]["extensions"]["field"], "delaySeconds",
        "{bad}"
    );

    let id = a["data"]["createImageTask"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let cancelled = s
        .gql(
            "mutation($id: ID!) { cancelTask(id: $id) { status } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        cancelled["data"]["cancelTask"]["status"], "CANCELLED",
        "{cancelled}"
    );
    let other = b["data"]["createImageTask"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    ran_after_its_start(&s.wait_terminal(&other).await);
    let scheduled = s
        .gql(
            "query($u: ID!) { tasks(userId: $u, status: SCHEDULED) { totalCount } }",
            json!({"u": user}),
        )
        .await;
    assert!(scheduled["errors"].is_null(), "{scheduled}");
}

/// Two processes promoting the same scheduled tasks (distributed run: two servers on one
/// MongoDB database and Redis prefix; embedded: the one process): each task is promoted once and
/// runs once, so it ends at version 4 (scheduled, pending, processing, completed) after one
/// attempt.
#[tokio::test]
async fn several_promoters_promote_and_run_each_task_once() {
    let s = TestServer::start().await;
    let _second = match common::distributed_env() {
        Some((mongo, redis)) => {
            let backends = volcengine_ai_server::app::Backends::distributed(&s.cfg, &mongo, &redis)
                .await
                .expect("second process's backends");
            let dir = tempfile::tempdir().expect("dir");
            Some(TestServer::start_on(s.cfg.clone(), backends, dir).await)
        }
        None => None,
    };
    let user = s.create_user("promoters@example.com").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, c) = s
            .post(
                "/api/v1/ai/image/task",
                json!({"prompt": format!("p{i}"), "user_id": user, "delay": 1}),
            )
            .await;
        assert_eq!(status, 201, "{c}");
        ids.push(c["data"]["task_id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let t = s.wait_terminal(id).await;
        ran_after_its_start(&t);
        assert_eq!(t["version"], 4, "{t}");
    }
}
