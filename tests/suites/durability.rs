//! Crash durability of the embedded default: the real binary is killed with SIGKILL while it
//! accepts and runs tasks, restarted on the same data folder, and every task it acknowledged
//! must still be there and complete.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_volcengine-ai-server"))
        .arg("serve")
        .current_dir(dir)
        .env("DATA_DIR", dir.join("data"))
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("SANDBOX_LATENCY", "300ms")
        .env("WORKER_CONCURRENCY", "8")
        .env("RECONCILE_INTERVAL", "200ms")
        .env("LOG_LEVEL", "warn")
        .env_remove("MONGO_URL")
        .env_remove("MONGODB_URI")
        .env_remove("REDIS_URL")
        .env_remove("VOLCENGINE_API_KEY")
        .env_remove("ARK_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the server binary")
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigkill_mid_work_loses_no_acknowledged_task() {
    let dir = tempfile::tempdir().expect("dir");
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut first = spawn(dir.path(), port);
    wait_healthy(&http, &base).await;

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
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    for s in submitters {
        s.await.expect("submitter");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 10,
        "only {} tasks were acknowledged",
        acked.len()
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut second = spawn(dir.path(), port);
    wait_healthy(&http, &base).await;
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
    assert_eq!(
        stats["data"]["by_status"]["completed"].as_u64(),
        Some(acked.len() as u64)
    );
    eprintln!(
        "durability: {} acknowledged tasks survived SIGKILL and completed",
        acked.len()
    );
    second.kill().expect("stop");
    let _ = second.wait();
}

#[tokio::test]
async fn a_data_folder_is_used_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().expect("dir");
    let http = reqwest::Client::new();
    let port = free_port();
    let mut first = spawn(dir.path(), port);
    wait_healthy(&http, &format!("http://127.0.0.1:{port}")).await;
    let mut second = spawn(dir.path(), free_port());
    let status = second.wait().expect("second exits");
    assert!(
        !status.success(),
        "a second process on the same folder must refuse to start"
    );
    first.kill().expect("stop");
    let _ = first.wait();
}
