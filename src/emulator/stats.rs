//! What the emulator counted (`GET /emulator/stats`), so tests and benchmarks can assert what
//! the service asked of its provider: calls per prompt (duplicates), per key, per endpoint,
//! and the video and Jimeng tasks by status.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::Emulator;

#[derive(Default, Serialize, Clone, Debug)]
pub struct Stats {
    /// Image generation requests (`POST /api/v3/images/generations`).
    pub requests: u64,
    pub succeeded: u64,
    pub images: u64,
    /// Answers of Ark's APIs (images and video tasks) by HTTP status and by error code.
    pub by_status: HashMap<u16, u64>,
    pub by_code: HashMap<String, u64>,
    /// Generation requests per prompt (duplicate calls show as counts above 1).
    pub by_prompt: HashMap<String, u64>,
    /// Image downloads answered, and those of them failed on purpose.
    pub downloads: u64,
    pub failed_downloads: u64,
    /// The most downloads in progress at once.
    pub peak_downloads: u64,
    /// Requests by endpoint, e.g. `"GET /api/v3/contents/generations/tasks"` (the list).
    pub endpoints: BTreeMap<String, u64>,
    /// Ark calls by API key.
    pub by_key: BTreeMap<String, KeyStats>,
    pub video: VideoStats,
    pub visual: VisualStats,
    /// Milliseconds since the emulator started: the denominator of request rates.
    pub uptime_ms: u64,
}

#[derive(Default, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyStats {
    /// Calls made with the key (both Ark APIs).
    pub calls: u64,
    /// Of them answered 429 and 401.
    pub rate_limited: u64,
    pub unauthorized: u64,
    /// Images generated for the key.
    pub images: u64,
}

#[derive(Default, Serialize, Clone, Debug)]
pub struct VideoStats {
    /// Tasks created (200 answers to the create call).
    pub created: u64,
    pub get_calls: u64,
    pub list_calls: u64,
    pub delete_calls: u64,
    /// Tasks kept now, by status.
    pub by_status: BTreeMap<String, u64>,
    /// Callback POSTs sent, answered 2xx, and failed (error, timeout or non-2xx).
    pub callbacks_sent: u64,
    pub callbacks_delivered: u64,
    pub callbacks_failed: u64,
    /// Video downloads answered (expired links included).
    pub downloads: u64,
    /// Every create request in arrival order (the first `SUBMIT_LOG` of them).
    pub create_log: Vec<Submit>,
}

/// One task submit as the emulator received it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    /// Milliseconds since the emulator started, on arrival.
    pub at_ms: u64,
    /// The HTTP status it was answered.
    pub status: u16,
}

/// Submits kept in `create_log` / `submit_log` (the benchmark's thousand tasks fit).
pub const SUBMIT_LOG: usize = 10_000;

#[derive(Default, Serialize, Clone, Debug)]
pub struct VisualStats {
    pub submits: u64,
    pub get_results: u64,
    /// Tasks kept now, by status (`in_queue`, `generating`, `done`, `failed`, `expired`).
    pub by_status: BTreeMap<String, u64>,
    /// Requests refused by the signature check, by error code.
    pub auth_failures: BTreeMap<String, u64>,
    /// Answers by business code (10000 success, 50429, …).
    pub by_code: BTreeMap<i64, u64>,
    /// Every SubmitTask request in arrival order (the first `SUBMIT_LOG` of them).
    pub submit_log: Vec<Submit>,
}

impl Emulator {
    /// A snapshot of the counters, with the tasks counted by status now.
    pub fn stats(&self) -> Stats {
        let mut s = self.0.stats.lock().map(|s| s.clone()).unwrap_or_default();
        s.video.by_status = self.video_by_status();
        s.visual.by_status = self.visual_by_status();
        s.uptime_ms = self.0.started.elapsed().as_millis() as u64;
        s
    }

    pub(crate) fn with_stats(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.0.stats.lock() {
            f(&mut s);
        }
    }

    /// Counts a request to `endpoint` (method and path pattern).
    pub(crate) fn hit(&self, endpoint: &str) {
        self.with_stats(|s| *s.endpoints.entry(endpoint.to_string()).or_default() += 1);
    }

    /// Milliseconds since the emulator started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.0.started.elapsed().as_millis() as u64
    }

    pub(crate) fn count(&self, status: u16, code: Option<&str>) {
        self.with_stats(|s| {
            *s.by_status.entry(status).or_default() += 1;
            if let Some(c) = code {
                *s.by_code.entry(c.to_string()).or_default() += 1;
            }
        });
    }
}

pub(super) async fn stats(State(emu): State<Emulator>) -> Json<Stats> {
    Json(emu.stats())
}
