//! `video`: many Seedance video tasks at once against the emulator's content generation tasks
//! API with a realistic generation time, tracked by the service until each ends. Printed: the
//! provider requests per second the tracking made while they ran (from the emulator's counts),
//! the delay from the provider's completion of each task to its terminal state here (p50, p99),
//! and that every task ended; beside what a tracker polling each task on its own at the same
//! interval would have needed (the baseline). Two runs: tracked by polling only (the service
//! without a public URL), then with the provider's callbacks (`PUBLIC_BASE_URL` set).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::app::Role;
use volcengine_ai_server::config::Config;
use volcengine_ai_server::domain::TaskStatus;
use volcengine_ai_server::emulator::{Emulator, EmulatorConfig, VideoConfig};

use crate::harness::{drive, json_answer, percentile, start_emulator, Backend, UnderTest};

const MODEL: &str = "seedance-1.0-lite-t2v";

#[derive(Debug, Clone, clap::Args)]
pub struct VideoArgs {
    /// Video tasks submitted at once.
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Seconds of video per task (the service expects 6 s of generation per second at 720p,
    /// and polls a task at a tenth of that).
    #[arg(long, default_value_t = 5)]
    pub duration: u32,
    /// `480p`, `720p` or `1080p` (720p weighs 1.3 MB a video).
    #[arg(long, default_value = "720p")]
    pub resolution: String,
    /// How long the emulator generates a video, plus uniform `[0, --run-jitter]`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub run_time: Duration,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub run_jitter: Duration,
    /// Concurrent HTTP clients submitting.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// `polling` (no public URL), `callbacks` (`PUBLIC_BASE_URL` set), or `both`, one after the
    /// other.
    #[arg(long, default_value = "both", value_parser = ["polling", "callbacks", "both"])]
    pub mode: String,
    /// MongoDB, with --redis-url: run on the distributed backends.
    #[arg(long)]
    pub mongo_url: Option<String>,
    #[arg(long)]
    pub redis_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VideoReport {
    /// Submitted with callbacks.
    pub callbacks: bool,
    pub callbacks_delivered: u64,
    pub tasks: usize,
    pub completed: u64,
    pub failed: u64,
    /// Tasks not terminal here although the provider had ended them (must be 0).
    pub stuck: usize,
    pub creates: u64,
    pub list_requests: u64,
    pub get_requests: u64,
    pub answers_429: u64,
    /// From the first submit to the last task terminal here.
    pub elapsed: Duration,
    /// Tracking requests (list and GET) per second over `elapsed`, and the most in one second.
    pub tracking_per_second: f64,
    pub tracking_peak: u64,
    /// The provider's completion of a task to its terminal state here.
    pub delay_p50: Duration,
    pub delay_p99: Duration,
    pub delay_max: Duration,
    /// Polls a second a per-task poller would make at the service's interval for these tasks.
    pub per_task_baseline: f64,
}

pub async fn run(a: VideoArgs) -> Result<(), String> {
    let modes: &[bool] = match a.mode.as_str() {
        "polling" => &[false],
        "callbacks" => &[true],
        _ => &[false, true],
    };
    for &callbacks in modes {
        let r = video(&a, callbacks).await?;
        print_report(&a, &r);
    }
    Ok(())
}

fn backend(a: &VideoArgs) -> Backend {
    match (a.mongo_url.clone(), a.redis_url.clone()) {
        (Some(mongo_url), Some(redis_url)) => Backend::Distributed {
            mongo_url,
            redis_url,
        },
        _ => Backend::Embedded,
    }
}

/// Tracking requests (list and GET) the emulator has answered so far.
fn tracking(emu: &Emulator) -> u64 {
    let v = emu.stats().video;
    v.list_calls + v.get_calls
}

pub async fn video(a: &VideoArgs, callbacks: bool) -> Result<VideoReport, String> {
    let stop = CancellationToken::new();
    let (emu, emu_url) = start_emulator(
        EmulatorConfig {
            reuse_images: true,
            video: VideoConfig {
                queue_time: Duration::from_secs(1),
                run_time: a.run_time,
                run_jitter: a.run_jitter,
                // Every task runs at once, and every create is taken: the tracker is measured,
                // not the provider's queue.
                concurrency: Some(0),
                rpm: Some(0),
                ..VideoConfig::default()
            },
            ..EmulatorConfig::default()
        },
        &stop,
    )
    .await?;
    let mut config = Config {
        volcengine_endpoint: emu_url,
        volcengine_api_key: Some("bench".into()),
        ..Config::default()
    };
    // The emulator takes every create (rpm 0): submits are not held to Lite's 300 a minute, so
    // all the tasks run at once.
    config.video.submits_per_minute = 60_000;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .build()
        .map_err(|e| e.to_string())?;
    let service = if callbacks {
        UnderTest::start_public(config.clone(), &backend(a), &http).await?
    } else {
        UnderTest::start(config.clone(), Role::Serve, &backend(a), &http).await?
    };
    let base = service.base.clone();

    let ids = Arc::new(Mutex::new(Vec::with_capacity(a.tasks)));
    let started = Instant::now();
    {
        let (http, base, user, ids) = (
            http.clone(),
            base.clone(),
            service.user.clone(),
            ids.clone(),
        );
        let (duration, resolution) = (a.duration, a.resolution.clone());
        drive("submit", a.tasks, a.clients, move |i| {
            let (http, base, user, ids) = (http.clone(), base.clone(), user.clone(), ids.clone());
            let resolution = resolution.clone();
            async move {
                let body = json_answer(http.post(format!("{base}/api/v1/ai/video/task")).json(
                    &json!({"prompt": format!("video bench {i}"), "user_id": user,
                            "model": MODEL, "duration": duration, "resolution": resolution}),
                ))
                .await?;
                let id = body["data"]["task_id"]
                    .as_str()
                    .ok_or_else(|| format!("no task id: {body}"))?;
                ids.lock().map_err(|e| e.to_string())?.push(id.to_string());
                Ok(())
            }
        })
        .await?;
    }
    let ids = ids.lock().map_err(|e| e.to_string())?.clone();

    // Until every task is terminal here, or long after the provider should have ended them all.
    let give_up = started + a.run_time + a.run_jitter + Duration::from_secs(600);
    let bar = crate::progress::bar(a.tasks as u64, "terminal");
    let (mut last, mut last_count, mut peak) = (Instant::now(), tracking(&emu), 0);
    loop {
        let stats = json_answer(http.get(format!("{base}/api/v1/queue/stats"))).await?;
        let by = &stats["data"]["by_status"];
        let ended: u64 = ["completed", "failed", "cancelled"]
            .iter()
            .map(|s| by[*s].as_u64().unwrap_or(0))
            .sum();
        bar.set_position(ended);
        if last.elapsed() >= Duration::from_secs(1) {
            let n = tracking(&emu);
            let per_second = (n - last_count) as f64 / last.elapsed().as_secs_f64();
            peak = peak.max(per_second.round() as u64);
            (last, last_count) = (Instant::now(), n);
        }
        if ended as usize >= a.tasks || Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let s = emu.stats();
    let ended_at = emu.video_ended_at();

    let (mut completed, mut failed, mut stuck) = (0, 0, 0);
    let mut delays = Vec::with_capacity(ids.len());
    for id in &ids {
        let t = service
            .store
            .get_task(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("task {id} is gone"))?;
        match t.status {
            TaskStatus::Completed => completed += 1,
            TaskStatus::Failed | TaskStatus::Cancelled => failed += 1,
            _ => {
                stuck += 1;
                continue;
            }
        }
        if let Some(end) = t.provider_task_id.as_ref().and_then(|p| ended_at.get(p)) {
            delays.push((t.updated_at - *end).to_std().unwrap_or_default());
        }
    }
    delays.sort();
    service.stop().await;
    stop.cancel();

    let interval = poll_interval(&config, a);
    Ok(VideoReport {
        callbacks,
        callbacks_delivered: s.video.callbacks_delivered,
        tasks: a.tasks,
        completed,
        failed,
        stuck,
        creates: s.video.created,
        list_requests: s.video.list_calls,
        get_requests: s.video.get_calls,
        answers_429: s.by_status.get(&429).copied().unwrap_or(0),
        elapsed,
        tracking_per_second: (s.video.list_calls + s.video.get_calls) as f64
            / elapsed.as_secs_f64(),
        tracking_peak: peak,
        delay_p50: percentile(&delays, 0.50),
        delay_p99: percentile(&delays, 0.99),
        delay_max: delays.last().copied().unwrap_or_default(),
        per_task_baseline: a.tasks as f64 / interval.as_secs_f64(),
    })
}

/// The service's poll interval for these tasks: a tenth of the time it expects them to take.
fn poll_interval(config: &Config, a: &VideoArgs) -> Duration {
    let catalog = volcengine_ai_server::domain::video::VideoCatalog::new();
    let expected = catalog
        .all()
        .iter()
        .find(|m| m.name == MODEL)
        .map_or(60, |m| m.expected_secs(a.duration, &a.resolution));
    Duration::from_secs(expected)
        .div_f64(10.0)
        .clamp(config.video.poll_min, config.video.poll_max)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub fn print_report(a: &VideoArgs, r: &VideoReport) {
    println!(
        "video benchmark, {}: {} Seedance tasks at once ({} s at {}), the provider (emulator) generating each in {:?} + [0, {:?}], allowing 1 list and 20 GETs a second",
        if r.callbacks {
            "with callbacks (PUBLIC_BASE_URL set)"
        } else {
            "polling only (no public URL)"
        },
        a.tasks,
        a.duration,
        a.resolution,
        a.run_time,
        a.run_jitter
    );
    println!("  completed            {}", r.completed);
    println!("  failed               {}", r.failed);
    println!(
        "  not terminal         {}  (tasks the provider ended that are not terminal here)",
        r.stuck
    );
    println!(
        "  provider requests    {} creates, {} list, {} GET  ({} answered 429); {} callbacks acknowledged",
        r.creates, r.list_requests, r.get_requests, r.answers_429, r.callbacks_delivered
    );
    println!(
        "  tracking rate        {:.2} requests/s over {:.1} s (peak {} in one second); a per-task poller at the same interval: {:.0}/s",
        r.tracking_per_second,
        r.elapsed.as_secs_f64(),
        r.tracking_peak,
        r.per_task_baseline
    );
    println!(
        "  completion delay     p50 {}, p99 {}, max {}  (the provider's completion to terminal here, the download included)",
        ms(r.delay_p50),
        ms(r.delay_p99),
        ms(r.delay_max)
    );
}
