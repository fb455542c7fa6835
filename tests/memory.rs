//! Memory bounded by bytes (issue #16): tasks with large reference images driven through the
//! real router, and what the process keeps of them. Its own test binary: the cache's gauges are
//! global to a process.

mod common;

use base64::Engine;
use common::TestServer;
use serde_json::json;

/// A series' value in the Prometheus text format.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A real PNG padded to `bytes` (decoders stop at its end), as a data URL.
fn reference_image(bytes: usize) -> String {
    let mut png = volcengine_ai_server::emulator::image::render_png("ref", 0, 64, 48).expect("png");
    png.resize(bytes, 0);
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// The embedded task cache's byte weight stays under `TASK_CACHE_BYTES` however many heavy
/// tasks pass, while its count bound alone would keep them all (by count alone, all 24 tasks of
/// ~200 KB each were held: 4.8 MB against a 1 MiB bound).
#[tokio::test]
async fn the_task_cache_is_bounded_by_bytes_through_the_router() {
    const BOUND: usize = 1 << 20;
    let s = TestServer::start_with(|c| {
        c.task_cache_size = 10_000;
        c.task_cache_bytes = BOUND;
        c.worker_concurrency = 4;
    })
    .await;
    let user = s.create_user("heavy@example.com").await;
    let image = reference_image(150 << 10);
    let mut ids = Vec::new();
    for i in 0..24 {
        let (status, body) = s
            .post(
                "/api/v1/ai/image/task",
                json!({"prompt": format!("heavy {i}"), "user_id": user,
                       "model": "doubao-seededit-3.0-i2i", "image": image}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["data"]["task_id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
    // Polls answered (from the cache or the store) carry the reference image whole.
    let (status, body) = s.get(&format!("/api/v1/ai/image/result/{}", ids[0])).await;
    assert_eq!(status, 200, "{body}");

    let metrics = s.get("/metrics").await.1;
    let text = metrics.as_str().expect("text");
    let bytes = value(text, "task_cache_bytes").expect("task_cache_bytes");
    let tasks = value(text, "task_cache_tasks").expect("task_cache_tasks");
    assert!(bytes <= BOUND as f64, "{bytes} bytes held, bound {BOUND}");
    assert!(bytes > 0.0 && tasks >= 1.0, "the cache is used: {text}");
    assert!(tasks < 24.0, "{tasks} heavy tasks held in {BOUND} bytes");
}

// ---------------------------------------------------------------------------------------------
// The real binary's resident memory through thousands of tasks and subscriptions.
// ---------------------------------------------------------------------------------------------

/// A field of /proc/PID/status, in bytes (`VmRSS`, `VmHWM`).
fn vm(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let kb = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(
            kb.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?
                * 1024,
        )
    })
}

/// Resident memory of the server at one moment, bytes.
#[derive(Clone, Copy)]
struct Reading {
    /// `VmRSS`: everything resident, the binary's own mapped code included.
    rss: u64,
    /// `RssAnon`: the heap, stacks and the allocator's arenas; not the code, whose resident size
    /// depends on the build (a debug binary maps ~42 MB of it, a release one ~10 MB).
    anon: u64,
}

/// The server in a child process, killed when dropped.
struct Server {
    child: std::process::Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A count from the environment (to run the measurement at full scale), or `default`.
fn scale(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Server {
    /// `serve` on the embedded store and the sandbox emulator with no latency and no pace, as
    /// the issue measured it. `MEMORY_TEST_BINARY` measures another build (a release one).
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let binary = std::env::var("MEMORY_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_volcengine-ai-server").to_string());
        let (mut cmd, base) = common::process::command_of(&binary, "serve", dir.path());
        cmd.env("DATA_DIR", dir.path().join("data"))
            .env("WORKER_CONCURRENCY", "16")
            .env("SANDBOX_LATENCY", "0ms")
            .env("PROVIDER_IPM", "10000000");
        let child = cmd.spawn().expect("server starts");
        let s = Server {
            child,
            base,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while !s
            .http
            .get(format!("{}/health", s.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        s
    }

    /// Resident memory now: all of it, and its anonymous part (heap and stacks).
    fn reading(&self) -> Reading {
        let pid = self.child.id();
        Reading {
            rss: vm(pid, "VmRSS").expect("VmRSS"),
            anon: vm(pid, "RssAnon").expect("RssAnon"),
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let body: serde_json::Value = r.json().await.expect("json");
        assert!(status.is_success(), "{status}: {body}");
        body
    }

    async fn completed(&self) -> u64 {
        let r = self
            .http
            .get(format!("{}/api/v1/queue/stats", self.base))
            .send()
            .await
            .expect("stats");
        let body: serde_json::Value = r.json().await.expect("json");
        body["data"]["by_status"]["completed"].as_u64().unwrap_or(0)
    }

    /// Submits `bodies` 32 at a time, then waits until `total` tasks have completed, polling
    /// each task's result once on the way (as clients do).
    async fn run_tasks(&self, bodies: Vec<serde_json::Value>, total: u64) {
        use futures::StreamExt;
        let ids: Vec<String> = futures::stream::iter(bodies)
            .map(|b| async move {
                let body = self.post("/api/v1/ai/image/task", b).await;
                body["data"]["task_id"].as_str().expect("id").to_string()
            })
            .buffer_unordered(32)
            .collect()
            .await;
        // Patience for progress, not for the whole run: a loaded debug build completes a few
        // tasks a second, and 200 of them took longer than PATIENCE.
        let mut seen = self.completed().await;
        let mut deadline = std::time::Instant::now() + common::PATIENCE;
        while seen < total {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = self.completed().await;
            if now > seen {
                seen = now;
                deadline = std::time::Instant::now() + common::PATIENCE;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no task completed for {:?}: {seen} of {total}",
                common::PATIENCE
            );
        }
        futures::stream::iter(ids)
            .map(|id| async move {
                let url = format!("{}/api/v1/ai/image/result/{id}", self.base);
                let r = self.http.get(url).send().await.expect("poll");
                assert!(r.status().is_success());
                let _ = r.bytes().await;
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }
}

/// Heavy tasks (1 MB reference images) the resident-memory test runs while a firehose
/// subscription is open.
const HEAVY: usize = 10;
/// Anonymous resident memory (heap, stacks, the allocator's arenas: `RssAnon`, not the mapped
/// code) the server may hold at any checkpoint. Measured on the debug build at the default scale
/// (two cores shared with three compilers, load 8-18): 44-51 MB at the baseline, ~133 MB at the
/// peak of the heavy tasks; the release build at full scale (10,000 tasks, 2,000 subscriptions):
/// 40 MB at the baseline, 126 MB at most (under the subscriptions). The build before mimalloc's
/// settings (Cargo.toml) reached 352 MB and stayed. Bounded on the anonymous part because the debug binary's resident code (42 MB, and
/// growing with every feature) had eaten the headroom of a bound on `VmRSS`. On 2026-12-03 the
/// debug build read 149 MB under the subscriptions on a quiet machine and 163 MB while another
/// compiler ran (more tasks in flight at once): the bound leaves room for that, and still
/// catches the 352 MB kind of growth.
const ANON_BOUND: u64 = 192 << 20;
/// Growth of the anonymous part over the test's own baseline (50 tasks done): what the
/// heavy tasks, the tasks and the subscriptions may add, whatever the process started with. The
/// task cache alone may take 32 MiB (`TASK_CACHE_BYTES`) and the ten 1 MB reference images
/// are 14 MB as data URLs; 1,000 subscriptions cost ~17 MB (docs/benchmarks.md, subscribe). The
/// release build at full scale grew 86 MB (40 -> 126); the debug build 105 MB quiet and 116 MB
/// under load (2026-12-03).
const GROWTH_BOUND: u64 = 136 << 20;
/// The bound on all resident memory after 10,000 tasks and after the sockets closed, for
/// the release build it was measured on (`MEMORY_TEST_BINARY`): 130 MB and 139 MB measured.
const RELEASE_BOUND: u64 = 150 << 20;

/// Resident memory of the real binary (embedded store, sandbox, WORKER_CONCURRENCY=16, no
/// pace) through completed tasks, heavy tasks seen by an open firehose subscription, and 1,000
/// subscriptions that then close: the anonymous part must stay under `ANON_BOUND`, grow at most
/// `GROWTH_BOUND` over the baseline, and not grow once the sockets close. The issue measured
/// 594 MB after 1,000 tasks, 795 MB after 3,000, and 931 MB under 2,000 subscriptions that stayed
/// after they closed. `MEMORY_TEST_BINARY`, `MEMORY_TEST_TASKS` and `MEMORY_TEST_SUBSCRIPTIONS`
/// run it on a release build at full scale, which must also keep `VmRSS` under `RELEASE_BOUND`
/// (docs/benchmarks.md, "memory"). No timing: the run waits for progress, however slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_comes_back_after_tasks_and_subscriptions() {
    use common::{Proto, WsClient};
    let tasks = scale("MEMORY_TEST_TASKS", 200);
    let subscriptions = scale("MEMORY_TEST_SUBSCRIPTIONS", 1000);
    let s = Server::start().await;
    let user = s
        .post(
            "/api/v1/users",
            json!({"email": "rss@example.com", "name": "RSS"}),
        )
        .await["data"]["id"]
        .as_str()
        .expect("user")
        .to_string();
    let plain = |i: usize| json!({"prompt": format!("cat {i}"), "user_id": user});
    s.run_tasks((0..50).map(plain).collect(), 50).await;
    let baseline = s.reading();
    let mut done = 50u64;

    // Heavy tasks (1 MB reference images) while an admin follows every task.
    let mut firehose = WsClient::connect(&s.base, "/graphql", Proto::TransportWs).await;
    firehose
        .subscribe(
            "all",
            "subscription { tasksUpdated { id status } }",
            json!({}),
        )
        .await;
    let drain = tokio::spawn(async move {
        while let Ok(ev) =
            tokio::time::timeout(std::time::Duration::from_secs(5), firehose.next_event()).await
        {
            drop(ev);
        }
        firehose
    });
    let image = reference_image(1 << 20);
    let heavy = (0..HEAVY)
        .map(|i| {
            json!({"prompt": format!("heavy {i}"), "user_id": user,
                   "model": "doubao-seededit-3.0-i2i", "image": image})
        })
        .collect();
    done += HEAVY as u64;
    s.run_tasks(heavy, done).await;
    let after_heavy = s.reading();

    // Thousands of plain tasks.
    done += tasks as u64;
    s.run_tasks((0..tasks).map(plain).collect(), done).await;
    let after_tasks = s.reading();
    drop(drain.await);

    // 2,000 subscriptions on 20 sockets, events for each, then every socket closed.
    let per_socket = 100;
    let mut sockets = Vec::new();
    for _ in 0..subscriptions.div_ceil(per_socket) {
        let mut ws = WsClient::connect(&s.base, "/graphql", Proto::TransportWs).await;
        for i in 0..per_socket {
            ws.subscribe(
                &format!("s{i}"),
                "subscription($u: ID) { tasksUpdated(userId: $u) { id status version } }",
                json!({"u": user}),
            )
            .await;
        }
        sockets.push(ws);
    }
    done += 5;
    s.run_tasks((0..5).map(plain).collect(), done).await;
    let under_subscriptions = s.reading();
    drop(sockets);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after_close = s.reading();

    let peak = vm(s.child.id(), "VmHWM").unwrap_or(0);
    let mb = |b: u64| b >> 20;
    let checkpoints = [
        ("baseline (50 tasks)", baseline),
        ("after the heavy tasks", after_heavy),
        ("after the tasks", after_tasks),
        ("under the subscriptions", under_subscriptions),
        ("after the subscriptions closed", after_close),
    ];
    eprintln!(
        "resident memory (MB, all / anonymous), {tasks} tasks, {subscriptions} subscriptions: {}; peak {}",
        checkpoints
            .iter()
            .map(|(when, r)| format!("{when} {} / {}", mb(r.rss), mb(r.anon)))
            .collect::<Vec<_>>()
            .join(", "),
        mb(peak),
    );
    for (when, r) in checkpoints {
        assert!(
            r.anon <= ANON_BOUND,
            "{} MB anonymous resident {when}, bound {} MB",
            mb(r.anon),
            mb(ANON_BOUND)
        );
        assert!(
            r.anon <= baseline.anon + GROWTH_BOUND,
            "anonymous resident grew {} MB over the baseline {when} ({} -> {} MB), bound {} MB",
            mb(r.anon.saturating_sub(baseline.anon)),
            mb(baseline.anon),
            mb(r.anon),
            mb(GROWTH_BOUND)
        );
    }
    assert!(
        after_close.anon <= under_subscriptions.anon + (8 << 20),
        "memory grew after the sockets closed: {} MB -> {} MB",
        mb(under_subscriptions.anon),
        mb(after_close.anon)
    );
    // The bound, on the release build it was measured on (a debug build maps ~30 MB
    // more code): `MEMORY_TEST_BINARY` names one.
    if std::env::var_os("MEMORY_TEST_BINARY").is_some() {
        for (when, r) in [
            ("after the tasks", after_tasks),
            ("after the subscriptions closed", after_close),
        ] {
            assert!(
                r.rss <= RELEASE_BOUND,
                "{} MB resident {when} (release), bound {} MB",
                mb(r.rss),
                mb(RELEASE_BOUND)
            );
        }
    }
}
