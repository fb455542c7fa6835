//! No secret reaches the logs: the real binary runs with an admin key, a provider key and debug
//! logging, serves requests carrying a user key and wrong keys, calls the (unreachable)
//! provider, and none of the secrets appears in anything it printed.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::process::{self, ServerProcess};

const ADMIN: &str = "admin-secret-never-logged-5c1e0";
const ARK: &str = "ark-secret-never-logged-77f3a9";
const WRONG: &str = "vas_1111111111111111111111111111111111111111111111111111111111111111";
const GARBAGE: &str = "not-a-key-but-still-secret-42";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_logs() {
    let dir = tempfile::tempdir().expect("dir");
    // A closed port: every provider call fails fast, through the error paths that log.
    let provider = format!("http://127.0.0.1:{}", free_port());
    let (mut c, base) = process::command("serve", dir.path());
    c.env("DATA_DIR", dir.path())
        .env("ADMIN_API_KEY", ADMIN)
        .env("VOLCENGINE_API_KEY", ARK)
        .env("VOLCENGINE_ENDPOINT", &provider)
        .env("TASK_MAX_ATTEMPTS", "1")
        .env("LOG_LEVEL", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = ServerProcess::spawn((c, base));
    let child = &mut server.child;
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let readers = [
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    ];

    server.wait_for("/health").await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let user: Value = http
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(ADMIN)
        .json(&json!({"email": "quiet@example.com", "name": "Quiet"}))
        .send()
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
    let uid = user["data"]["id"].as_str().expect("user id").to_string();
    let key: Value = http
        .post(format!("{base}/api/v1/users/{uid}/api-keys"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let user_key = key["data"]["key"].as_str().expect("secret").to_string();
    for bad in [WRONG, GARBAGE] {
        let r = http
            .get(format!("{base}/api/v1/users/{uid}"))
            .bearer_auth(bad)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 401);
        let text = r.text().await.expect("body");
        assert!(!text.contains(bad), "the answer echoes the key: {text}");
    }
    let task: Value = http
        .post(format!("{base}/api/v1/ai/image/task"))
        .bearer_auth(&user_key)
        .json(&json!({"prompt": "a quiet harbour"}))
        .send()
        .await
        .expect("task")
        .json()
        .await
        .expect("json");
    let tid = task["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let failed = loop {
        let t: Value = http
            .get(format!("{base}/api/v1/ai/image/result/{tid}"))
            .bearer_auth(&user_key)
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("json");
        if t["data"]["status"] == "failed" {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never failed: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!failed.to_string().contains(ARK), "{failed}");

    server.kill9();
    let logs: String = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect();
    assert!(logs.contains(&tid), "the logs cover the task: {logs}");
    assert!(logs.lines().count() > 10, "debug logs were written");
    for secret in [ADMIN, ARK, user_key.as_str(), WRONG, GARBAGE] {
        assert!(
            !logs.contains(secret),
            "a secret ({}…) is in the logs",
            &secret[..8]
        );
    }
}
