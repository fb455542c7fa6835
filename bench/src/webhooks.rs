//! `webhooks`: tasks created with a webhook to one local receiver; the delay from each change
//! (the body's `timestamp`) to its signed event reaching the receiver, beside the floor of the
//! same number of signed POSTs sent straight to that receiver at the same concurrency. A second
//! batch goes to a receiver that refuses each event's first attempt, so every event waits one
//! retry (`WEBHOOK_RETRY_BASE`, ±25 % jitter) on top.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::app::Role;
use volcengine_ai_server::config::{Config, Secret};
use volcengine_ai_server::emulator::EmulatorConfig;

use crate::harness::{
    drive, expect_status, percentile, start_emulator, Backend, Measure, UnderTest,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2SLnSIgULnU=";

#[derive(Debug, Clone, clap::Args)]
pub struct WebhooksArgs {
    /// Tasks per batch (each makes two events: started, completed).
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Concurrent HTTP clients submitting.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long the emulator takes per image.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Attempts in flight to the one receiver (`WEBHOOK_TARGET_CONCURRENCY`); the floor posts
    /// at this concurrency too.
    #[arg(long, default_value_t = 4)]
    pub target_concurrency: usize,
    /// `WEBHOOK_RETRY_BASE` for the batch whose first attempts are refused.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
}

/// What the receiver saw: each accepted event's delay, and every request.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    refused: HashSet<String>,
    delays: Vec<Duration>,
    requests: usize,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Seen>>,
    refuse_first: bool,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Utc::now();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let changed = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["timestamp"].as_str().map(str::to_string))
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok());
    let mut seen = r.seen.lock().unwrap_or_else(|p| p.into_inner());
    seen.requests += 1;
    if r.refuse_first && seen.refused.insert(id.clone()) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if seen.ids.insert(id) {
        if let Some(t) = changed {
            seen.delays
                .push((at - t.with_timezone(&Utc)).to_std().unwrap_or_default());
        }
    }
    StatusCode::NO_CONTENT
}

async fn start_receiver(refuse_first: bool) -> Result<(String, Receiver), String> {
    let r = Receiver {
        seen: Arc::default(),
        refuse_first,
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/hook"), r))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delays {
    pub events: usize,
    pub requests: usize,
    /// From the first submit to the last event received.
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhooksReport {
    pub accepted: Delays,
    pub retried: Delays,
    /// Signed POSTs straight to a receiver at the target concurrency.
    pub floor: Measure,
}

/// The `webhooks` subcommand: one run, printed.
pub async fn run(a: WebhooksArgs) -> Result<(), String> {
    let r = webhooks(a.clone()).await?;
    print_report(&a, &r);
    Ok(())
}

pub async fn webhooks(a: WebhooksArgs) -> Result<WebhooksReport, String> {
    let stop = CancellationToken::new();
    let (emu, emu_url) = start_emulator(
        EmulatorConfig {
            latency: a.latency,
            reuse_images: true,
            ..EmulatorConfig::default()
        },
        &stop,
    )
    .await?;
    let mut config = Config {
        volcengine_endpoint: emu_url,
        volcengine_api_key: Some("bench".into()),
        worker_concurrency: 64,
        provider_concurrency: 64,
        user_max_in_flight: 1_000_000,
        user_submit_burst: 1_000_000,
        user_submit_per_minute: 1_000_000,
        ..Config::default()
    };
    config.provider_ipm.all = Some(100_000_000);
    config.webhooks.secret = Some(Secret::from(SECRET));
    config.webhooks.allow_private = true;
    config.webhooks.retry_base = a.retry_base;
    config.webhooks.per_target_concurrency = a.target_concurrency;
    let http = reqwest::Client::new();
    let floor = floor(&a).await?;
    let service = UnderTest::start(config, Role::Serve, &Backend::Embedded, &http).await?;
    let accepted = batch(&a, &service, &http, false).await;
    let retried = match accepted {
        Ok(_) => batch(&a, &service, &http, true).await,
        Err(ref e) => Err(e.clone()),
    };
    service.stop().await;
    stop.cancel();
    drop(emu);
    Ok(WebhooksReport {
        accepted: accepted?,
        retried: retried?,
        floor,
    })
}

/// Submits a batch with a webhook to a fresh receiver and waits for every event.
async fn batch(
    a: &WebhooksArgs,
    service: &UnderTest,
    http: &reqwest::Client,
    refuse_first: bool,
) -> Result<Delays, String> {
    let (hook, receiver) = start_receiver(refuse_first).await?;
    let started = Instant::now();
    {
        let (http, base, user) = (http.clone(), service.base.clone(), service.user.clone());
        drive("submit", a.tasks, a.clients, move |i| {
            let (http, base, user, hook) = (http.clone(), base.clone(), user.clone(), hook.clone());
            async move {
                let r = http
                    .post(format!("{base}/api/v1/ai/image/task"))
                    .json(&json!({"prompt": format!("hook {i}"), "user_id": user, "webhook": hook}))
                    .send()
                    .await;
                expect_status(r, 201).await
            }
        })
        .await?;
    }
    let want = a.tasks * 2;
    let bar = crate::progress::bar(want as u64, "events");
    let deadline = Instant::now() + Duration::from_secs(600) + a.retry_base * 2;
    loop {
        let n = receiver.seen.lock().map_or(0, |s| s.ids.len());
        bar.set_position(n as u64);
        if n >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {n} of {want} events arrived"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let seen = receiver.seen.lock().map_err(|e| e.to_string())?;
    let mut d = seen.delays.clone();
    d.sort();
    Ok(Delays {
        events: seen.ids.len(),
        requests: seen.requests,
        elapsed,
        p50: percentile(&d, 0.50),
        p99: percentile(&d, 0.99),
        max: d.last().copied().unwrap_or_default(),
    })
}

/// The same number of signed POSTs of a task-sized body, straight to a receiver at the target
/// concurrency: what delivering costs without the service (outbox, claim, record).
async fn floor(a: &WebhooksArgs) -> Result<Measure, String> {
    let (hook, _receiver) = start_receiver(false).await?;
    let signer = Arc::new(standardwebhooks_signer()?);
    let http = reqwest::Client::new();
    let body = Arc::new(
        json!({"type": "task.completed", "timestamp": "2026-12-03T00:00:00.000Z",
               "data": {"task_id": "0192", "status": "completed", "prompt": "hook",
                        "result": {"image_url": "http://127.0.0.1/images/x.png"}}})
        .to_string(),
    );
    drive("floor", a.tasks * 2, a.target_concurrency, move |i| {
        let (http, hook, signer, body) = (http.clone(), hook.clone(), signer.clone(), body.clone());
        async move {
            let id = format!("msg_floor_{i}");
            let ts = Utc::now().timestamp();
            let sig = signer
                .sign(&id, ts, body.as_bytes())
                .map_err(|e| e.to_string())?;
            let r = http
                .post(&hook)
                .header("content-type", "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body.to_string())
                .send()
                .await;
            expect_status(r, 204).await
        }
    })
    .await
}

fn standardwebhooks_signer() -> Result<standardwebhooks::Webhook, String> {
    standardwebhooks::Webhook::new(SECRET).map_err(|e| e.to_string())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn print_delays(name: &str, d: &Delays) {
    println!(
        "  {name:<26} {:>6} events ({} requests) in {:.2}s: {:.0}/s; delay p50 {}, p99 {}, max {}",
        d.events,
        d.requests,
        d.elapsed.as_secs_f64(),
        d.events as f64 / d.elapsed.as_secs_f64(),
        ms(d.p50),
        ms(d.p99),
        ms(d.max)
    );
}

pub fn print_report(a: &WebhooksArgs, r: &WebhooksReport) {
    println!(
        "webhooks: {} tasks per batch (started + completed each) to one receiver, {} attempts \
         in flight to it, provider latency {}",
        a.tasks,
        a.target_concurrency,
        humantime::format_duration(a.latency)
    );
    print_delays("accepted at once", &r.accepted);
    print_delays(
        &format!(
            "first attempt refused ({})",
            humantime::format_duration(a.retry_base)
        ),
        &r.retried,
    );
    println!(
        "  {:<26} {:>6} signed POSTs straight to a receiver: {:.0}/s, p50 {}, p99 {}",
        "floor",
        r.floor.requests,
        r.floor.per_second,
        ms(r.floor.p50),
        ms(r.floor.p99)
    );
}
