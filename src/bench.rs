//! Benchmarks driven by the `bench` subcommand: the real service and the emulator run in this
//! process on loopback ports, and a load generator speaks HTTP to them like clients do. Results
//! are printed as a table with the baseline they are measured against.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Backends, Role};
use crate::config::Config;
use crate::emulator::{self, EmulatorConfig};

#[derive(Debug, Clone)]
pub struct PipelineArgs {
    pub tasks: usize,
    /// The emulator's images-per-minute limit, and the pace the service is configured with.
    pub ipm: u32,
    pub latency: Duration,
    /// Concurrent HTTP clients submitting.
    pub clients: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineReport {
    pub tasks: usize,
    pub completed: u64,
    pub failed: u64,
    pub provider_requests: u64,
    pub answers_429: u64,
    pub duplicate_calls: u64,
    pub elapsed: Duration,
    pub achieved_ipm: f64,
    pub ratio: f64,
}

/// Submits `tasks` at once to an embedded service whose provider (the emulator) allows `ipm`
/// images per minute after `latency` each, and measures the images per minute achieved.
pub async fn pipeline(a: PipelineArgs) -> Result<PipelineReport, String> {
    let stop = CancellationToken::new();
    let emu_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let emu_url = format!(
        "http://{}",
        emu_listener.local_addr().map_err(|e| e.to_string())?
    );
    let emu = emulator::serve(
        EmulatorConfig {
            latency: a.latency,
            api_key: Some("bench".into()),
            images_per_minute: Some(a.ipm),
            ..EmulatorConfig::default()
        },
        emu_listener,
        stop.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;

    let dir = std::env::temp_dir().join(format!("vas-bench-{}", uuid::Uuid::new_v4()));
    // Enough calls in flight to keep the pace through the latency, with headroom.
    let in_flight = ((f64::from(a.ipm) / 60.0 * a.latency.as_secs_f64()) * 1.5).ceil() as usize + 4;
    let config = Config {
        data_dir: dir.clone(),
        volcengine_endpoint: emu_url,
        volcengine_api_key: Some("bench".into()),
        provider_ipm: crate::config::ProviderIpm {
            all: Some(a.ipm),
            ..Default::default()
        },
        worker_concurrency: in_flight,
        provider_concurrency: in_flight,
        retry_base_delay: Duration::from_millis(200),
        retry_max_delay: Duration::from_secs(5),
        log_level: "warn".into(),
        ..Config::default()
    };
    let backends = Backends::embedded(&config).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let running = app::start_with(config, Some(listener), Role::Serve, backends)
        .await
        .map_err(|e| e.to_string())?;
    let base = running.public_base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .build()
        .map_err(|e| e.to_string())?;

    let user: Value = http
        .post(format!("{base}/api/v1/users"))
        .json(&json!({"email": "bench@example.com", "name": "Bench"}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let user = user["data"]["id"].as_str().ok_or("no user id")?.to_string();

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..a.clients.max(1) {
        let (http, base, user, next) = (http.clone(), base.clone(), user.clone(), next.clone());
        let total = a.tasks;
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                let r = http
                    .post(format!("{base}/api/v1/ai/image/task"))
                    .json(&json!({"prompt": format!("bench {i}"), "user_id": user}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() != 201 {
                    return Err(format!("submit answered {}", r.status()));
                }
            }
        });
    }
    while let Some(r) = submitters.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let submitted_in = started.elapsed();
    eprintln!(
        "bench: {} tasks submitted in {:.2}s",
        a.tasks,
        submitted_in.as_secs_f64()
    );

    let mut last_report = Instant::now();
    let (completed, failed) = loop {
        let stats: Value = http
            .get(format!("{base}/api/v1/queue/stats"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let by = &stats["data"]["by_status"];
        let (done, failed) = (
            by["completed"].as_u64().unwrap_or(0),
            by["failed"].as_u64().unwrap_or(0),
        );
        if (done + failed) as usize >= a.tasks {
            break (done, failed);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            let mins = started.elapsed().as_secs_f64() / 60.0;
            eprintln!(
                "bench: {done}/{} completed, {failed} failed, {:.0} images/min so far",
                a.tasks,
                done as f64 / mins
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    let s = emu.stats();
    running.shutdown(Duration::from_secs(5)).await;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);

    let achieved_ipm = completed as f64 / (elapsed.as_secs_f64() / 60.0);
    // A run shorter than a minute cannot show more than the burst the provider allows at once.
    let ideal = ideal_minutes(a.tasks, a.ipm, a.latency);
    Ok(PipelineReport {
        tasks: a.tasks,
        completed,
        failed,
        provider_requests: s.requests,
        answers_429: s.by_status.get(&429).copied().unwrap_or(0),
        duplicate_calls: s.by_prompt.values().map(|n| n.saturating_sub(1)).sum(),
        elapsed,
        achieved_ipm,
        ratio: ideal / (elapsed.as_secs_f64() / 60.0),
    })
}

/// The shortest possible run at exactly the limit: one image every `60/ipm` s, the last one
/// finishing `latency` after it starts.
fn ideal_minutes(tasks: usize, ipm: u32, latency: Duration) -> f64 {
    let per_image = 1.0 / f64::from(ipm.max(1));
    (tasks.saturating_sub(1)) as f64 * per_image + latency.as_secs_f64() / 60.0
}

pub fn print_pipeline(a: &PipelineArgs, r: &PipelineReport) {
    println!(
        "pipeline benchmark: {} tasks submitted at once by {} clients",
        a.tasks, a.clients
    );
    println!(
        "  provider (emulator): {} images/min limit, {:?} per image",
        a.ipm, a.latency
    );
    println!("  completed            {}", r.completed);
    println!("  failed               {}", r.failed);
    println!("  provider requests    {}", r.provider_requests);
    println!("  429 answers          {}", r.answers_429);
    println!(
        "  prompts called again {}  (retries after a 429 included: a 429 generates nothing)",
        r.duplicate_calls
    );
    println!("  elapsed              {:.1} s", r.elapsed.as_secs_f64());
    println!(
        "  achieved             {:.1} images/min = {:.3} of the limit {}",
        r.achieved_ipm,
        r.achieved_ipm / f64::from(a.ipm.max(1)),
        a.ipm
    );
    println!(
        "  ratio to the ideal   {:.3}  (ideal = run at exactly the limit: {:.1} s)",
        r.ratio,
        ideal_minutes(a.tasks, a.ipm, a.latency) * 60.0
    );
}
