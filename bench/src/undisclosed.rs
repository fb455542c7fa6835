//! `undisclosed`: the provider allows fewer images a minute than the service is configured for
//! and does not say how many (issue #18.1). The service paces at its default (the model table's
//! 500 a minute) against an emulator allowing `--limit`, after `--fail-calls-first` HTTP 500s;
//! it has to learn the limit from the 429s without failing a task. Printed: tasks failed, the
//! time against the ideal (the tasks at exactly the limit), and the provider's use after the
//! first window (the learning one) against the limit.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::app::Role;
use volcengine_ai_server::config::Config;
use volcengine_ai_server::emulator::EmulatorConfig;

use crate::harness::{drive, expect_status, json_answer, start_emulator, Backend, UnderTest};

#[derive(Debug, Clone, clap::Args)]
pub struct UndisclosedArgs {
    /// Tasks submitted at once.
    #[arg(long, default_value_t = 45)]
    pub tasks: usize,
    /// Images per window the emulator allows, which the service is not told.
    #[arg(long, default_value_t = 30)]
    pub limit: u32,
    /// The first N provider calls answer HTTP 500.
    #[arg(long, default_value_t = 3)]
    pub fail_calls_first: u32,
    /// How long the emulator takes per image.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// The emulator's limit window and the service's PROVIDER_RATE_WINDOW (Ark's: 60 s; shorter
    /// only for a quick look, the limit then being per this window).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// MongoDB, with --redis-url: run on the distributed backends (the pace then lives in Redis).
    #[arg(long)]
    pub mongo_url: Option<String>,
    #[arg(long)]
    pub redis_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UndisclosedReport {
    pub completed: u64,
    pub failed: u64,
    pub provider_calls: u64,
    pub answers_429: u64,
    pub answers_500: u64,
    pub elapsed: Duration,
    /// The tasks' images at exactly the limit.
    pub ideal: Duration,
    /// Images a window accepted after the first window, as a share of the limit.
    pub utilisation: Option<f64>,
}

pub async fn run(a: UndisclosedArgs) -> Result<(), String> {
    let r = undisclosed(a.clone()).await?;
    print_report(&a, &r);
    Ok(())
}

pub async fn undisclosed(a: UndisclosedArgs) -> Result<UndisclosedReport, String> {
    let stop = CancellationToken::new();
    let (emu, emu_url) = start_emulator(
        EmulatorConfig {
            latency: a.latency,
            images_per_minute: Some(a.limit),
            ipm_window: a.window,
            fail_calls_first: a.fail_calls_first,
            reuse_images: true,
            ..EmulatorConfig::default()
        },
        &stop,
    )
    .await?;
    // The operator's defaults but for the endpoint and key: no PROVIDER_IPM, so the pace starts
    // at the model table's 500 a minute.
    let config = Config {
        volcengine_endpoint: emu_url,
        volcengine_api_key: Some("bench".into()),
        provider_rate_window: a.window,
        ..Config::default()
    };
    let backend = match (a.mongo_url.clone(), a.redis_url.clone()) {
        (Some(mongo_url), Some(redis_url)) => Backend::Distributed {
            mongo_url,
            redis_url,
        },
        _ => Backend::Embedded,
    };
    let http = reqwest::Client::new();
    let service = UnderTest::start(config, Role::Serve, &backend, &http).await?;
    let base = service.base.clone();
    let started = Instant::now();
    {
        let (http, base, user) = (http.clone(), base.clone(), service.user.clone());
        drive("submit", a.tasks, 8, move |i| {
            let (http, base, user) = (http.clone(), base.clone(), user.clone());
            async move {
                let r = http
                    .post(format!("{base}/api/v1/ai/image/task"))
                    .json(&json!({"prompt": format!("undisclosed {i}"), "user_id": user}))
                    .send()
                    .await;
                expect_status(r, 201).await
            }
        })
        .await?;
    }
    // When each image was accepted, read every 50 ms.
    let mut accepted: Vec<(Duration, u64)> = Vec::new();
    let (completed, failed) = loop {
        let images = emu.stats().images;
        if accepted.last().is_none_or(|(_, n)| *n < images) {
            accepted.push((started.elapsed(), images));
        }
        let stats = json_answer(http.get(format!("{base}/api/v1/queue/stats"))).await?;
        let by = &stats["data"]["by_status"];
        let (done, failed) = (
            by["completed"].as_u64().unwrap_or(0),
            by["failed"].as_u64().unwrap_or(0),
        );
        if (done + failed) as usize >= a.tasks {
            break (done, failed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();
    let s = emu.stats();
    service.stop().await;
    stop.cancel();
    let per_window = f64::from(a.limit.max(1));
    Ok(UndisclosedReport {
        completed,
        failed,
        provider_calls: s.requests,
        answers_429: s.by_status.get(&429).copied().unwrap_or(0),
        answers_500: s.by_status.get(&500).copied().unwrap_or(0),
        elapsed,
        ideal: a.window.mul_f64(a.tasks as f64 / per_window),
        utilisation: utilisation(&accepted, a.window, per_window),
    })
}

/// Images accepted after the first window (which the provider's initial allowance and the
/// learning fill), per window, as a share of the limit: from the end of the first window to the
/// last image.
fn utilisation(accepted: &[(Duration, u64)], window: Duration, limit: f64) -> Option<f64> {
    let (first, _) = accepted.iter().find(|(_, n)| *n > 0)?;
    let converged = *first + window;
    let before = accepted
        .iter()
        .take_while(|(t, _)| *t <= converged)
        .last()
        .map_or(0, |(_, n)| *n);
    let (last, total) = accepted.last()?;
    let span = last.checked_sub(converged)?;
    if span.is_zero() {
        return None;
    }
    let windows = span.as_secs_f64() / window.as_secs_f64();
    Some((total - before) as f64 / windows / limit)
}

pub fn print_report(a: &UndisclosedArgs, r: &UndisclosedReport) {
    println!(
        "undisclosed-limit benchmark: {} tasks, provider allows {} images per {:?} (the service is not told; it paces at its default), first {} calls answer 500, {:?} per image",
        a.tasks, a.limit, a.window, a.fail_calls_first, a.latency
    );
    println!("  completed            {}", r.completed);
    println!("  failed               {}", r.failed);
    println!(
        "  provider calls       {}  ({} answered 429, {} answered 500)",
        r.provider_calls, r.answers_429, r.answers_500
    );
    println!(
        "  elapsed              {:.1} s = {:.2} x the ideal {:.1} s (target <= 1.3)",
        r.elapsed.as_secs_f64(),
        r.elapsed.as_secs_f64() / r.ideal.as_secs_f64(),
        r.ideal.as_secs_f64()
    );
    match r.utilisation {
        Some(u) => println!(
            "  utilisation          {u:.3} of the limit after the first window (target >= 0.9)"
        ),
        None => println!("  utilisation          n/a (the run ended within the first window)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_counts_images_after_the_first_window() {
        let s = |t: u64, n: u64| (Duration::from_secs(t), n);
        // 30 in the first window, then 15 over 30 s: half a window at the full limit.
        let acc = [s(2, 10), s(4, 30), s(92, 45)];
        let u = utilisation(&acc, Duration::from_secs(60), 30.0).expect("u");
        assert!((u - 1.0).abs() < 1e-9, "{u}");
        assert_eq!(utilisation(&acc[..2], Duration::from_secs(60), 30.0), None);
    }
}
