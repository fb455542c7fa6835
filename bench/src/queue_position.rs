//! `queue-position`: what reading a pending task's queue position costs behind a small backlog
//! and behind a large one (issue #19 item 2: no scan or count per read). One worker holds the
//! first task (the sandbox takes an hour per image), so every other task stays pending; the
//! same reads of the last task submitted (REST detail, which carries `queue_position`, and
//! GraphQL `queuePosition`) are timed behind `--small` tasks and again after the backlog grew to
//! `--large`, and printed with their ratio. The reads' answers are checked, not just counted.

use std::time::Duration;

use serde_json::{json, Value};

use volcengine_ai_server::app::Role;
use volcengine_ai_server::config::Config;

use crate::harness::{drive, json_answer, Backend, Measure, UnderTest};

#[derive(Debug, Clone, clap::Args)]
pub struct QueuePositionArgs {
    /// Pending tasks of the small backlog.
    #[arg(long, default_value_t = 10)]
    pub small: usize,
    /// Pending tasks of the large backlog.
    #[arg(long, default_value_t = 100_000)]
    pub large: usize,
    /// Reads timed per route and backlog.
    #[arg(long, default_value_t = 5_000)]
    pub reads: usize,
    /// Concurrent clients (submitting and reading).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Run on MongoDB + Redis instead of the embedded default (both or neither).
    #[arg(long, requires = "redis_url")]
    pub mongo_url: Option<String>,
    #[arg(long, requires = "mongo_url")]
    pub redis_url: Option<String>,
}

const QUERY: &str = "query($id: ID!) { task(id: $id) { status queuePosition } }";

/// Submits tasks until `total` were submitted (`from` were before); returns the last one's id.
async fn grow_to(
    s: &UnderTest,
    http: &reqwest::Client,
    from: usize,
    total: usize,
    clients: usize,
) -> Result<String, String> {
    let url = format!("{}/api/v1/ai/image/task", s.base);
    let (user, client, submit) = (s.user.clone(), http.clone(), url.clone());
    drive(
        &format!("backlog to {total}"),
        total - from - 1,
        clients,
        move |i| {
            let (client, url, user) = (client.clone(), submit.clone(), user.clone());
            async move {
                let body = json!({"prompt": format!("queued {i}"), "user_id": user});
                let v = json_answer(client.post(&url).json(&body)).await?;
                match v["data"]["status"].as_str() {
                    Some("pending" | "processing") => Ok(()),
                    _ => Err(format!("submit answered {v}")),
                }
            }
        },
    )
    .await?;
    // The last one, submitted alone so that it is last in the queue's order too.
    let body = json!({"prompt": "last", "user_id": s.user});
    let v = json_answer(http.post(&url).json(&body)).await?;
    v["data"]["task_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("submit answered {v}"))
}

/// Reads the task's position until the queue clock has seen the whole backlog (a second at
/// most), then times `reads` REST and GraphQL reads of it.
async fn time_reads(
    s: &UnderTest,
    http: &reqwest::Client,
    id: &str,
    expected: u64,
    a: &QueuePositionArgs,
) -> Result<(Measure, Measure), String> {
    let detail = format!("{}/api/v1/tasks/{id}", s.base);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = json_answer(http.get(&detail)).await?;
        let p = v["data"]["queue_position"].as_u64();
        if p.is_some_and(|p| p.abs_diff(expected) <= 1) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("position {p:?}, expected about {expected}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = http.clone();
    let rest = drive(
        &format!("REST position at {expected}"),
        a.reads,
        a.clients,
        move |_| {
            let (client, detail) = (client.clone(), detail.clone());
            async move {
                let v = json_answer(client.get(&detail)).await?;
                v["data"]["queue_position"]
                    .as_u64()
                    .map(|_| ())
                    .ok_or_else(|| format!("no position in {v}"))
            }
        },
    )
    .await?;
    let (client, url, id) = (http.clone(), format!("{}/graphql", s.base), id.to_string());
    let gql = drive(
        &format!("GraphQL position at {expected}"),
        a.reads,
        a.clients,
        move |_| {
            let (client, url) = (client.clone(), url.clone());
            let body = json!({"query": QUERY, "variables": {"id": id}});
            async move {
                let v: Value = json_answer(client.post(&url).json(&body)).await?;
                v["data"]["task"]["queuePosition"]
                    .as_u64()
                    .map(|_| ())
                    .ok_or_else(|| format!("no position in {v}"))
            }
        },
    )
    .await?;
    Ok((rest, gql))
}

pub async fn run(a: QueuePositionArgs) -> Result<(), String> {
    if a.small < 2 || a.large <= a.small {
        return Err("need 2 <= --small < --large".into());
    }
    let backend = match (&a.mongo_url, &a.redis_url) {
        (Some(m), Some(r)) => Backend::Distributed {
            mongo_url: m.clone(),
            redis_url: r.clone(),
        },
        _ => Backend::Embedded,
    };
    let config = Config {
        worker_concurrency: 1,
        sandbox_latency: Duration::from_secs(3600),
        user_max_in_flight: 10_000_000,
        user_submit_burst: 10_000_000,
        user_submit_per_minute: 10_000_000,
        ..Config::default()
    };
    let http = reqwest::Client::new();
    let s = UnderTest::start(config, Role::Serve, &backend, &http).await?;
    let measured = async {
        // The first task runs; the n-th submitted waits at n - 1.
        let small_id = grow_to(&s, &http, 0, a.small, a.clients).await?;
        let small = time_reads(&s, &http, &small_id, a.small as u64 - 1, &a).await?;
        let large_id = grow_to(&s, &http, a.small, a.large, a.clients).await?;
        let large = time_reads(&s, &http, &large_id, a.large as u64 - 1, &a).await?;
        Ok::<_, String>((small, large))
    }
    .await;
    s.stop().await;
    let ((rest_s, gql_s), (rest_l, gql_l)) = measured?;
    println!(
        "queue position reads ({}, {} clients, {} reads each)",
        backend_name(&backend),
        a.clients,
        a.reads
    );
    println!("{:<34} {:>10} {:>10} {:>10}", "", "req/s", "p50", "p99");
    for m in [&rest_s, &rest_l, &gql_s, &gql_l] {
        println!(
            "{:<34} {:>10.0} {:>10.2?} {:>10.2?}",
            m.name, m.per_second, m.p50, m.p99
        );
    }
    println!(
        "throughput at {} pending / at {}: REST {:.2}, GraphQL {:.2} (goal: about 1, flat)",
        a.large,
        a.small,
        rest_l.per_second / rest_s.per_second,
        gql_l.per_second / gql_s.per_second
    );
    Ok(())
}

fn backend_name(b: &Backend) -> &'static str {
    match b {
        Backend::Embedded => "embedded",
        Backend::Distributed { .. } => "MongoDB + Redis",
    }
}
