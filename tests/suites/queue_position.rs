//! Queue positions and start estimates (#19 item 2): GraphQL `Task.queuePosition` /
//! `estimatedStartAt`, REST `data.queue_position` / `estimated_start_at`, and `taskUpdated`
//! sending a pending task again as its position changes. One worker and a slow sandbox make a
//! backlog that drains one task at a time. Black-box over HTTP and WebSocket, on either backend
//! (`TEST_BACKEND=distributed`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Proto, TestServer, WsClient, WsEvent, PATIENCE};

const POSITIONS: &str = "query($a: ID!, $b: ID!, $c: ID!, $d: ID!, $e: ID!) {
  a: task(id: $a) { status queuePosition estimatedStartAt }
  b: task(id: $b) { status queuePosition estimatedStartAt }
  c: task(id: $c) { status queuePosition estimatedStartAt }
  d: task(id: $d) { status queuePosition estimatedStartAt }
  e: task(id: $e) { status queuePosition estimatedStartAt }
}";

const FOLLOW: &str = "subscription($id: ID!) { taskUpdated(id: $id) { id status version queuePosition estimatedStartAt } }";

async fn backlog_server() -> TestServer {
    TestServer::start_with(|c| {
        c.worker_concurrency = 1;
        c.sandbox_latency = Duration::from_millis(2500);
    })
    .await
}

/// The five tasks' statuses and positions in one read (one snapshot of the queue).
async fn read_all(s: &TestServer, ids: &[String]) -> Vec<(String, Option<u64>, Option<String>)> {
    let vars = json!({"a": ids[0], "b": ids[1], "c": ids[2], "d": ids[3], "e": ids[4]});
    let body = s.gql(POSITIONS, vars).await;
    assert!(body.get("errors").is_none(), "{body}");
    ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| {
            let t = &body["data"][k];
            (
                t["status"].as_str().unwrap_or_default().to_string(),
                t["queuePosition"].as_u64(),
                t["estimatedStartAt"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Reads until `ok` holds for the five tasks, within PATIENCE.
async fn until(
    s: &TestServer,
    ids: &[String],
    what: &str,
    ok: impl Fn(&[(String, Option<u64>, Option<String>)]) -> bool,
) -> Vec<(String, Option<u64>, Option<String>)> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = read_all(s, ids).await;
        if ok(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn positions(all: &[(String, Option<u64>, Option<String>)]) -> Vec<Option<u64>> {
    all.iter().map(|(_, p, _)| *p).collect()
}

#[tokio::test]
async fn positions_count_down_as_the_backlog_drains_and_are_null_unless_pending() {
    let mut s = backlog_server().await;
    let user = s.create_user("queue@example.com").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.create_task(&user, &format!("backlog {i}")).await);
    }

    // The first runs; the other four wait at 1..4.
    until(&s, &ids, "1..4 behind the running task", |all| {
        all[0].0 == "PROCESSING"
            && all[0].1.is_none()
            && positions(&all[1..]) == [Some(1), Some(2), Some(3), Some(4)]
            && all[1..].iter().all(|(st, _, _)| st == "PENDING")
    })
    .await;

    // REST says the same, on the detail route and the latest Go poll route.
    let (code, body) = s.get(&format!("/api/v1/tasks/{}", ids[3])).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["status"], "pending");
    assert!(
        matches!(body["data"]["queue_position"].as_u64(), Some(2..=3)),
        "{body}"
    );
    let (code, body) = s.get(&format!("/api/v1/ai/task/result/{}", ids[4])).await;
    assert_eq!(code, 202, "{body}");
    assert!(
        matches!(body["data"]["queue_position"].as_u64(), Some(3..=4)),
        "{body}"
    );
    let (_, body) = s.get(&format!("/api/v1/tasks/{}", ids[0])).await;
    assert!(body["data"].get("queue_position").is_some(), "{body}");
    assert_eq!(body["data"]["queue_position"], Value::Null, "{body}");

    // One finished, the second runs: the rest move up, and starts were seen, so there is an
    // estimate, later for each place further back.
    let moved = until(&s, &ids, "1..3 behind the second task", |all| {
        all[1].0 == "PROCESSING"
            && positions(&all[2..]) == [Some(1), Some(2), Some(3)]
            && all[2..].iter().all(|(_, _, eta)| eta.is_some())
    })
    .await;
    let etas: Vec<chrono::DateTime<chrono::Utc>> = moved[2..]
        .iter()
        .map(|(_, _, e)| e.as_deref().expect("estimate").parse().expect("RFC 3339"))
        .collect();
    assert!(etas.windows(2).all(|w| w[0] < w[1]), "{etas:?}");
    assert_eq!(moved[0].1, None, "a finished task has no position");
    assert_eq!(moved[0].2, None, "nor an estimate");

    let last = s.wait_terminal(&ids[4]).await;
    assert_eq!(last["status"], "completed");
    assert_eq!(last["queue_position"], Value::Null);
    assert_eq!(last["estimated_start_at"], Value::Null);
    s.stop().await;
}

#[tokio::test]
async fn task_updated_sends_a_pending_task_again_as_its_position_changes() {
    let mut s = backlog_server().await;
    let user = s.create_user("follow-queue@example.com").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(s.create_task(&user, &format!("ahead {i}")).await);
    }
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    ws.subscribe("q", FOLLOW, json!({"id": ids[3]})).await;
    let mut updates = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, ws.next_event()).await {
            Ok(WsEvent::Next { id, data }) if id == "q" => {
                updates.push(data["taskUpdated"].clone())
            }
            Ok(WsEvent::Complete { id }) if id == "q" => break,
            Ok(WsEvent::Error { payload, .. }) => panic!("subscription error: {payload}"),
            Ok(_) => {}
            Err(_) => panic!("the subscription did not end: {updates:?}"),
        }
    }
    let pending: Vec<(i64, u64)> = updates
        .iter()
        .filter(|u| u["status"] == "PENDING")
        .map(|u| {
            (
                u["version"].as_i64().expect("version"),
                u["queuePosition"]
                    .as_u64()
                    .expect("a pending task has a position"),
            )
        })
        .collect();
    // Positions 3 (or 4, read before the first start was seen), 2, 1: each sent once, all of
    // the same version, which did not change while the task waited.
    let places: Vec<u64> = pending.iter().map(|(_, p)| *p).collect();
    assert!(places.len() >= 3, "{updates:?}");
    assert!(places.windows(2).all(|w| w[0] > w[1]), "{places:?}");
    assert_eq!(places.last(), Some(&1), "{places:?}");
    assert!(
        pending.iter().all(|(v, _)| *v == pending[0].0),
        "{pending:?}"
    );
    for u in updates.iter().filter(|u| u["status"] != "PENDING") {
        assert_eq!(u["queuePosition"], Value::Null, "{u}");
    }
    assert_eq!(
        updates.last().map(|u| u["status"].clone()),
        Some(json!("COMPLETED"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_scheduled_task_has_no_position_until_it_is_due() {
    let mut s = TestServer::start().await;
    let user = s.create_user("later-queue@example.com").await;
    let (code, body) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "later", "user_id": user, "delay": 3600}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["data"]["status"], "scheduled");
    assert_eq!(body["data"]["queue_position"], Value::Null, "{body}");
    let id = body["data"]["task_id"].as_str().expect("id").to_string();
    let q = s
        .gql(
            "query($id: ID!) { task(id: $id) { queuePosition estimatedStartAt } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(q["data"]["task"]["queuePosition"], Value::Null, "{q}");
    assert_eq!(q["data"]["task"]["estimatedStartAt"], Value::Null, "{q}");
    s.stop().await;
}

#[tokio::test]
async fn positions_survive_a_restart() {
    let mut s = TestServer::start_with(|c| {
        c.worker_concurrency = 1;
        c.sandbox_latency = Duration::from_secs(600);
    })
    .await;
    let user = s.create_user("restart-queue@example.com").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(s.create_task(&user, &format!("kept {i}")).await);
    }
    s.wait_status(&ids[0], "processing").await;
    s.start_again().await;
    // The running task went back to the queue (at its end); the waiting ones keep their order.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut now = Vec::new();
        for id in &ids[1..] {
            let (_, body) = s.get(&format!("/api/v1/tasks/{id}")).await;
            now.push((
                body["data"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                body["data"]["queue_position"].as_u64(),
            ));
        }
        let waiting: Vec<Option<u64>> = now
            .iter()
            .filter(|(st, _)| st == "pending")
            .map(|(_, p)| *p)
            .collect();
        let running = now.iter().filter(|(st, _)| st == "processing").count();
        if running == 1 && waiting == [Some(1), Some(2)] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "positions after the restart: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn many_waiting_subscriptions_are_sent_positions_at_the_paced_rate() {
    // SUBSCRIPTION_POSITION_RATE=1 with eight subscriptions waiting: each is told its position
    // every ~8 s, not at every move of the queue (about one a second here). Unpaced, the eight
    // were sent ~35 positions while the backlog drained in ~7 s.
    let mut s = TestServer::start_with(|c| {
        c.worker_concurrency = 1;
        c.sandbox_latency = Duration::from_millis(400);
        c.subscription_position_rate = 1;
    })
    .await;
    let user = s.create_user("paced-queue@example.com").await;
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(s.create_task(&user, &format!("backlog {i}")).await);
    }
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    let started = tokio::time::Instant::now();
    let watched = &ids[8..];
    for (i, id) in watched.iter().enumerate() {
        ws.subscribe(&format!("s{i}"), FOLLOW, json!({"id": id}))
            .await;
    }
    let mut pending = std::collections::HashMap::<String, usize>::new();
    let mut done = 0;
    while done < watched.len() {
        match tokio::time::timeout(PATIENCE, ws.next_event()).await {
            Ok(WsEvent::Next { id, data }) => {
                if data["taskUpdated"]["status"] == "PENDING" {
                    *pending.entry(id).or_default() += 1;
                }
            }
            Ok(WsEvent::Complete { .. }) => done += 1,
            Ok(WsEvent::Error { payload, .. }) => panic!("subscription error: {payload}"),
            Err(_) => panic!("the subscriptions did not end: {pending:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The first PENDING message of each is its snapshot; the rest are positions, about one a
    // second in all (the rate), each subscription's first read at a random phase.
    let resent: usize = pending.values().map(|n| n.saturating_sub(1)).sum();
    assert!(
        (resent as f64) <= elapsed + watched.len() as f64,
        "{resent} positions sent in {elapsed:.1} s: {pending:?}"
    );
    s.stop().await;
}
