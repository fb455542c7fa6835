//! `pipeline`: tasks submitted at once through the embedded service to a rate-limited emulator;
//! the images per minute achieved against the limit, 429s, calls made twice. With `--ipm 0` the
//! provider has no limit and the figure is tasks per second through the worker, beside the store
//! work of a task's life done directly (the store floor).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::app::Role;
use volcengine_ai_server::config::Config;
use volcengine_ai_server::emulator::{self, EmulatorConfig};

use crate::harness::{
    drive, expect_status, floor_task, json_answer, start_emulator, Backend, Measure, UnderTest,
};

#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Tasks submitted at once.
    #[arg(long, default_value_t = 2000)]
    pub tasks: usize,
    /// The emulator's images-per-minute limit, and the pace the service is configured with;
    /// 0 for no limit (then the figure is tasks per second through the worker).
    #[arg(long, default_value_t = 600)]
    pub ipm: u32,
    /// How long the emulator takes per image.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Concurrent HTTP clients submitting.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
}

/// The `pipeline` subcommand: one run, printed.
pub async fn run(a: PipelineArgs) -> Result<(), String> {
    let report = pipeline(a.clone()).await?;
    print_pipeline(&a, &report);
    Ok(())
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
    /// Without a limit: the store work of one task's life (insert, claim, image, completion)
    /// done directly at the worker's concurrency, in tasks per second.
    pub store_floor: Option<Measure>,
}

/// Submits `tasks` at once to an embedded service whose provider (the emulator) allows `ipm`
/// images per minute after `latency` each, and measures the images per minute achieved.
pub async fn pipeline(a: PipelineArgs) -> Result<PipelineReport, String> {
    let stop = CancellationToken::new();
    let (emu, emu_url) = start_emulator(
        EmulatorConfig {
            latency: a.latency,
            images_per_minute: (a.ipm > 0).then_some(a.ipm),
            reuse_images: true,
            ..EmulatorConfig::default()
        },
        &stop,
    )
    .await?;

    let unlimited = a.ipm == 0;
    // Enough calls in flight to keep the pace through the latency, with headroom; without a
    // limit, as many as the clients submitting.
    let in_flight = if unlimited {
        a.clients.clamp(4, 1024)
    } else {
        ((f64::from(a.ipm) / 60.0 * a.latency.as_secs_f64()) * 1.5).ceil() as usize + 4
    };
    let config = Config {
        volcengine_endpoint: emu_url,
        volcengine_api_key: Some("bench".into()),
        provider_ipm: volcengine_ai_server::config::ProviderIpm {
            // "No limit" still paces, at a rate no run reaches.
            all: Some(if unlimited { 100_000_000 } else { a.ipm }),
            ..Default::default()
        },
        worker_concurrency: in_flight,
        provider_concurrency: in_flight,
        retry_base_delay: Duration::from_millis(200),
        retry_max_delay: Duration::from_secs(5),
        ..Config::default()
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .build()
        .map_err(|e| e.to_string())?;
    let store_floor = if unlimited {
        Some(lifecycle_floor(a.tasks, in_flight, &http).await?)
    } else {
        None
    };
    let service = UnderTest::start(config, Role::Serve, &Backend::Embedded, &http).await?;
    let base = service.base.clone();

    let started = Instant::now();
    {
        let (http, base, user) = (http.clone(), base.clone(), service.user.clone());
        drive("submit", a.tasks, a.clients, move |i| {
            let (http, base, user) = (http.clone(), base.clone(), user.clone());
            async move {
                let r = http
                    .post(format!("{base}/api/v1/ai/image/task"))
                    .json(&json!({"prompt": format!("bench {i}"), "user_id": user}))
                    .send()
                    .await;
                expect_status(r, 201).await
            }
        })
        .await?;
    }
    let submitted_in = started.elapsed();
    eprintln!(
        "bench: {} tasks submitted in {:.2}s",
        a.tasks,
        submitted_in.as_secs_f64()
    );

    let mut last_report = Instant::now();
    let bar = crate::progress::bar(a.tasks as u64, "completed");
    let (completed, failed) = loop {
        let stats = json_answer(http.get(format!("{base}/api/v1/queue/stats"))).await?;
        let by = &stats["data"]["by_status"];
        let (done, failed) = (
            by["completed"].as_u64().unwrap_or(0),
            by["failed"].as_u64().unwrap_or(0),
        );
        bar.set_position(done + failed);
        bar.set_message(format!("{failed} failed"));
        if (done + failed) as usize >= a.tasks {
            bar.finish_and_clear();
            break (done, failed);
        }
        // Without a terminal (a log file, CI) a line every 10 s replaces the bar.
        if !crate::progress::interactive() && last_report.elapsed() >= Duration::from_secs(10) {
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
    service.stop().await;
    stop.cancel();

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
        store_floor,
    })
}

/// The store work of one task's life done directly, on a store of its own: insert, the claim,
/// the image bytes (a PNG as the emulator makes), the completion.
async fn lifecycle_floor(
    tasks: usize,
    concurrency: usize,
    http: &reqwest::Client,
) -> Result<Measure, String> {
    let floor = UnderTest::start(Config::default(), Role::Api, &Backend::Embedded, http).await?;
    let png = bytes::Bytes::from(emulator::image::render_png("floor", 0, 1024, 1024)?);
    let (store, user) = (floor.store.clone(), floor.user.clone());
    let m = drive(
        "store work of a task's life, direct (store floor)",
        tasks,
        concurrency,
        move |i| {
            let (store, user, png) = (store.clone(), user.clone(), png.clone());
            async move {
                let e = |e: volcengine_ai_server::store::StoreError| e.to_string();
                let t = floor_task(&user, &format!("lifecycle {i}"));
                store.insert_task(&t).await.map_err(e)?;
                let now = chrono::Utc::now();
                let started = t
                    .start("floor", now + chrono::Duration::seconds(60), now)
                    .map_err(|e| e.to_string())?;
                store
                    .replace_task(&started, t.version, t.status)
                    .await
                    .map_err(e)?;
                let blob = volcengine_ai_server::store::ImageBlob {
                    id: uuid::Uuid::new_v4().to_string(),
                    task_id: t.id.clone(),
                    content_type: "image/png".into(),
                    data: png.clone(),
                };
                store.put_image(&blob).await.map_err(e)?;
                let image = volcengine_ai_server::domain::StoredImage {
                    id: blob.id,
                    provider_url: None,
                    width: 1024,
                    height: 1024,
                    bytes: png.len() as u64,
                    content_type: blob.content_type,
                };
                let done = started
                    .complete(vec![image], None, chrono::Utc::now())
                    .map_err(|e| e.to_string())?;
                store
                    .replace_task(&done, started.version, started.status)
                    .await
                    .map_err(e)?;
                Ok(())
            }
        },
    )
    .await?;
    floor.stop().await;
    Ok(m)
}

/// The shortest possible run at exactly the limit: one image every `60/ipm` s, the last one
/// finishing `latency` after it starts.
fn ideal_minutes(tasks: usize, ipm: u32, latency: Duration) -> f64 {
    let per_image = 1.0 / f64::from(ipm.max(1));
    (tasks.saturating_sub(1)) as f64 * per_image + latency.as_secs_f64() / 60.0
}

pub fn print_pipeline(a: &PipelineArgs, r: &PipelineReport) {
    if let Some(floor) = &r.store_floor {
        let per_second = r.completed as f64 / r.elapsed.as_secs_f64();
        println!(
            "pipeline benchmark: {} tasks submitted at once by {} clients, provider without limit or latency ({:?})",
            a.tasks, a.clients, a.latency
        );
        println!("  completed            {}", r.completed);
        println!("  failed               {}", r.failed);
        println!("  provider requests    {}", r.provider_requests);
        println!("  elapsed              {:.2} s", r.elapsed.as_secs_f64());
        println!(
            "  through the worker   {per_second:.0} tasks/s = {:.2} of the store floor",
            per_second / floor.per_second
        );
        println!(
            "  store floor          {:.0} tasks/s  ({})",
            floor.per_second, floor.name
        );
        return;
    }
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
