//! A local emulator of the Volcengine APIs the service calls, faithful to
//! `shared/docs/volcengine-api.md`, so the real HTTP clients are tested offline:
//!
//! - `images` — Ark's image generation (A): validation, response and error bodies, request ids
//!   and headers, a per-key images-per-minute limit answered with the real 429 body, latency and
//!   injected failures, real PNG bytes behind expiring URLs;
//! - `video` — Ark's content-generation tasks (B, Seedance): tasks on timers with per-model
//!   concurrency, RPM and queue limits, list filters, DELETE, callbacks with retries, real MP4
//!   bytes behind expiring URLs;
//! - `visual` — Jimeng on the visual API (C): V4 signature verification, `req_key` validation,
//!   submit/poll tasks, JPEG or base64 results, QPS and concurrency limits;
//! - `limits` — per-key limits and revoked keys, changeable at run time; `stats` — what was
//!   asked, by endpoint, key, prompt and task status.
//!
//! Run it alone with `volcengine-ai-server emulator`; sandbox mode runs it in-process.

pub mod ark;
pub mod cli;
pub mod config;
pub mod image;
pub mod images;
pub mod limits;
pub mod mp4;
pub mod stats;
pub mod video;
pub mod visual;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use config::{EmulatorConfig, KeyLimit, VideoConfig, VisualConfig};
pub use stats::{KeyStats, Stats};

use crate::domain::models::Catalog;

struct Inner {
    cfg: EmulatorConfig,
    catalog: Catalog,
    base_url: String,
    started: Instant,
    stats: Mutex<Stats>,
    limits: Mutex<limits::Limits>,
    /// Image counts of the last window per key and model, for the IPM limit.
    ipm_windows: Mutex<HashMap<(String, String), ark::Window>>,
    /// Requests generating now, per model.
    in_flight: Mutex<HashMap<String, usize>>,
    issued: Mutex<HashMap<String, images::Issued>>,
    /// Rendered pictures by size and format, with `reuse_images`.
    rendered: Mutex<HashMap<(u32, u32, images::Format), OneRender>>,
    /// Downloads in progress now.
    downloading: AtomicU64,
    video: video::State,
    visual: visual::State,
    /// `true` while image generations are held (`Emulator::hold`).
    held: tokio::sync::watch::Sender<bool>,
}

/// One size's picture or video, rendered by whichever download comes first while the others
/// wait.
type OneRender = Arc<tokio::sync::OnceCell<Bytes>>;

#[derive(Clone)]
pub struct Emulator(Arc<Inner>);

/// A download in progress, counted (and the peak kept) while it lives.
struct Downloading(Emulator);

impl Downloading {
    fn start(emu: &Emulator) -> Downloading {
        let now = emu.0.downloading.fetch_add(1, Ordering::SeqCst) + 1;
        emu.with_stats(|s| s.peak_downloads = s.peak_downloads.max(now));
        Downloading(emu.clone())
    }
}

impl Drop for Downloading {
    fn drop(&mut self) {
        self.0 .0.downloading.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An image request generating, counted per model while it lives.
struct InFlight {
    emu: Emulator,
    model: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut m) = self.emu.0.in_flight.lock() {
            if let Some(n) = m.get_mut(&self.model) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Emulator {
    /// An emulator whose URLs start with `base_url`. Video tasks advance on a timer task
    /// spawned with the first one (so inside a Tokio runtime).
    pub fn new(cfg: EmulatorConfig, base_url: String) -> Emulator {
        let catalog = Catalog::new(&cfg.model_ids);
        let limits = limits::Limits::new(&cfg);
        Emulator(Arc::new(Inner {
            catalog,
            base_url,
            started: Instant::now(),
            stats: Mutex::default(),
            limits: Mutex::new(limits),
            ipm_windows: Mutex::default(),
            in_flight: Mutex::default(),
            issued: Mutex::default(),
            rendered: Mutex::default(),
            downloading: AtomicU64::new(0),
            video: video::State::default(),
            visual: visual::State::default(),
            held: tokio::sync::watch::channel(false).0,
            cfg,
        }))
    }

    /// Holds every image generation, once its latency has passed, until [`Emulator::release`]:
    /// a benchmark's calls all in flight, answered together when it says so, however long its
    /// set-up took (a latency long enough for it was a guess).
    pub fn hold(&self) {
        self.0.held.send_replace(true);
    }

    /// Answers the held generations, and holds none from now on.
    pub fn release(&self) {
        self.0.held.send_replace(false);
    }

    async fn until_released(&self) {
        let mut held = self.0.held.subscribe();
        // Err only once the sender is gone, i.e. never while `self` lives.
        let _ = held.wait_for(|held| !*held).await;
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.0.cfg
    }

    pub fn base_url(&self) -> &str {
        &self.0.base_url
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v3/images/generations", post(images::generations))
            .route("/emulator/images/{name}", get(images::image))
            .merge(video::routes())
            .merge(visual::routes())
            .route(
                "/emulator/limits",
                get(limits::get_limits).post(limits::post_limits),
            )
            .route("/emulator/stats", get(stats::stats))
            .route(
                "/health",
                get(|| async { Json(json!({"status": "ok", "service": "volcengine-emulator"})) }),
            )
            .with_state(self.clone())
    }
}

/// Serves the emulator on `listener` until `shutdown`.
pub async fn serve(
    cfg: EmulatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<Emulator> {
    let addr: SocketAddr = listener.local_addr()?;
    let emu = Emulator::new(cfg, format!("http://{addr}"));
    let router = emu.router();
    tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "emulator server stopped");
        }
    });
    Ok(emu)
}
