//! Crash durability of the embedded default: the real binary is killed with SIGKILL while it
//! accepts and runs tasks, restarted on the same data folder, and every task it acknowledged
//! must still be there and complete.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::process::{self, ServerProcess};
use volcengine_ai_server::emulator::{Emulator, EmulatorConfig};

const PATIENCE: Duration = Duration::from_secs(120);

/// The binary on the embedded default in `dir`, with `extra` environment over the defaults.
fn spawn_with(dir: &std::path::Path, extra: &[(&str, &str)]) -> ServerProcess {
    let (mut c, base) = process::command("serve", dir);
    c.env("DATA_DIR", dir.join("data"))
        .env("SANDBOX_LATENCY", "300ms")
        .env("WORKER_CONCURRENCY", "8")
        .env("RECONCILE_INTERVAL", "200ms")
        .env("LOG_LEVEL", "warn");
    for (k, v) in extra {
        c.env(k, v);
    }
    ServerProcess::spawn((c, base))
}

async fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> (ServerProcess, String) {
    let mut p = spawn_with(dir, extra);
    p.wait_for("/health").await;
    let base = p.base.clone();
    (p, base)
}

#[tokio::test]
async fn sigkill_mid_work_loses_no_acknowledged_task() {
    let dir = tempfile::tempdir().expect("dir");
    let http = reqwest::Client::new();
    let (mut first, base) = start(dir.path(), &[]).await;

    let r: Value = http
        .post(format!("{base}/api/v1/users"))
        .json(&json!({"email": "crash@example.com", "name": "Crash Test"}))
        .send()
        .await
        .expect("create user")
        .json()
        .await
        .expect("json");
    let user = r["data"]["id"].as_str().expect("user id").to_string();

    // Four clients submit as fast as they can until the server dies under them.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut submitters = Vec::new();
    for c in 0..4 {
        let (http, base, user, acked) = (http.clone(), base.clone(), user.clone(), acked.clone());
        submitters.push(tokio::spawn(async move {
            for i in 0.. {
                let resp = http
                    .post(format!("{base}/api/v1/ai/image/task"))
                    .json(&json!({"prompt": format!("crash {c}-{i}"), "user_id": user}))
                    .send()
                    .await;
                let Ok(resp) = resp else { return };
                if resp.status() != 201 {
                    return;
                }
                let Ok(body) = resp.json::<Value>().await else {
                    return;
                };
                if let Some(id) = body["data"]["task_id"].as_str() {
                    acked.lock().expect("lock").push(id.to_string());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Long enough for some tasks to finish and some to be mid-call.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill9();
    for s in submitters {
        s.await.expect("submitter");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 10,
        "only {} tasks were acknowledged",
        acked.len()
    );

    let (mut second, base) = start(dir.path(), &[]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for id in &acked {
        loop {
            let r: Value = http
                .get(format!("{base}/api/v1/ai/image/result/{id}"))
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .expect("json");
            assert_eq!(r["success"], true, "acknowledged task {id} is missing: {r}");
            match r["data"]["status"].as_str() {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => panic!("task {id} ended badly: {r}"),
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} never completed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stats: Value = http
        .get(format!("{base}/api/v1/queue/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    // A task stored whose answer the SIGKILL cut off is not acknowledged, yet completes too.
    let completed = stats["data"]["by_status"]["completed"]
        .as_u64()
        .expect("completed count");
    assert!(completed >= acked.len() as u64, "{stats}");
    eprintln!(
        "durability: {} acknowledged tasks survived SIGKILL and completed",
        acked.len()
    );
    second.kill9();
}

#[tokio::test]
async fn a_data_folder_is_used_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut first, _) = start(dir.path(), &[]).await;
    let mut second = spawn_with(dir.path(), &[]);
    let status = second.child.wait().expect("second exits");
    assert!(
        !status.success(),
        "a second process on the same folder must refuse to start"
    );
    first.kill9();
}

/// The provider as an emulator counting every call per prompt.
async fn emulator(latency: Duration) -> (Emulator, String, CancellationToken) {
    crate::common::start_emulator(EmulatorConfig {
        latency,
        api_key: Some("crash-key".into()),
        ..EmulatorConfig::default()
    })
    .await
}

async fn create_user(http: &reqwest::Client, base: &str) -> String {
    let r: Value = http
        .post(format!("{base}/api/v1/users"))
        .json(&json!({"email": "dupes@example.com", "name": "Dupes"}))
        .send()
        .await
        .expect("create user")
        .json()
        .await
        .expect("json");
    r["data"]["id"].as_str().expect("user id").to_string()
}

async fn wait_completed(http: &reqwest::Client, base: &str, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for id in ids {
        loop {
            let r: Value = http
                .get(format!("{base}/api/v1/tasks/{id}"))
                .send()
                .await
                .expect("poll")
                .json()
                .await
                .expect("json");
            match r["data"]["status"].as_str() {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => panic!("task {id} ended badly: {r}"),
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} never completed: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn sigkill_repeats_no_more_provider_calls_than_were_in_flight() {
    let dir = tempfile::tempdir().expect("dir");
    let (emu, emu_url, _stop) = emulator(Duration::from_secs(2)).await;
    let env = [
        ("VOLCENGINE_ENDPOINT", emu_url.as_str()),
        ("VOLCENGINE_API_KEY", "crash-key"),
        ("WORKER_CONCURRENCY", "16"),
    ];
    let http = reqwest::Client::new();
    let (mut first, base) = start(dir.path(), &env).await;
    let user = create_user(&http, &base).await;
    let mut ids = Vec::new();
    for i in 0..120 {
        let r: Value = http
            .post(format!("{base}/api/v1/ai/image/task"))
            .json(&json!({"prompt": format!("dupe {i}"), "user_id": user}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        ids.push(r["data"]["task_id"].as_str().expect("task id").to_string());
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while emu.stats().succeeded < 40 {
        assert!(tokio::time::Instant::now() < deadline, "calls never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    // Calls started and not answered; the slots' other tasks were downloading or storing
    // images already paid for. With 120 tasks queued every one of the 16 slots was busy.
    let s = emu.stats();
    let calling = s.requests - s.by_status.values().sum::<u64>();
    let in_flight = 16;

    let (mut second, base) = start(dir.path(), &env).await;
    wait_completed(&http, &base, &ids).await;
    let dups: u64 = emu
        .stats()
        .by_prompt
        .values()
        .map(|n| n.saturating_sub(1))
        .sum();
    eprintln!(
        "embedded kill -9 of a 16-slot server mid-run, restarted: {in_flight} tasks in flight ({calling} of them in a provider call), {dups} duplicate provider calls"
    );
    assert!(
        dups <= in_flight,
        "{dups} duplicate provider calls after a crash with {in_flight} in flight"
    );
    second.kill9();
}
