//! Ark's content-generation tasks API (volcengine-api.md B, Seedance video): create, get, list
//! with filters, DELETE, per-key RPM / concurrency / queue / QPS limits, callbacks, and the
//! videos themselves (real MP4 bytes) behind expiring URLs.

pub mod callback;
pub mod models;
pub mod request;
pub mod tasks;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, Once};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::ark::{request_id, ArkError, Window};
use super::images::{access_denied, sensitive_input};
use super::stats::{Submit, SUBMIT_LOG};
use super::{Emulator, OneRender};
use tasks::{IssuedVideo, Status, Task, Tasks};

const TASKS: &str = "/api/v3/contents/generations/tasks";

pub struct State {
    tasks: Mutex<Tasks>,
    /// Woken on a create or a cancel, so the clock re-plans.
    wake: Notify,
    clock: Once,
    /// Creates of the last minute per key and model.
    rpm: Mutex<HashMap<(String, String), Window>>,
    /// GET / list / DELETE calls of the last second per key.
    qps: Mutex<HashMap<(String, &'static str), Window>>,
    videos: Mutex<HashMap<String, IssuedVideo>>,
    /// Rendered videos by size and length, with `reuse_images`.
    rendered: Mutex<HashMap<(u32, u32, u32), OneRender>>,
    http: reqwest::Client,
    /// Creates answered 429 by `throttle_first` so far.
    throttled: std::sync::atomic::AtomicU32,
}

impl Default for State {
    fn default() -> Self {
        State {
            tasks: Mutex::default(),
            wake: Notify::new(),
            clock: Once::new(),
            rpm: Mutex::default(),
            qps: Mutex::default(),
            videos: Mutex::default(),
            rendered: Mutex::default(),
            throttled: Default::default(),
            // Callbacks go to the service under test, never through a proxy.
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }
}

pub(super) fn routes() -> Router<Emulator> {
    Router::new()
        .route(TASKS, get(list).post(create))
        .route(&format!("{TASKS}/{{id}}"), get(get_task).delete(delete))
        .route("/emulator/videos/{name}", get(download))
}

fn rpm_exceeded() -> ArkError {
    ArkError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "ModelAccountRpmRateLimitExceeded",
        "RPM (Requests Per Minute) limit of the model is exceeded.",
    )
}

fn not_found(id: &str) -> ArkError {
    ArkError::new(
        StatusCode::NOT_FOUND,
        "NotFound.Task",
        format!("The specified task {id} is not found."),
    )
    .param("id")
}

impl Emulator {
    /// One call of `op` by `key` against its per-second limit.
    fn video_qps(&self, key: &str, op: &'static str, limit: u32) -> Result<(), ArkError> {
        if limit == 0 {
            return Ok(());
        }
        let Ok(mut w) = self.0.video.qps.lock() else {
            return Ok(());
        };
        let span = self.0.cfg.video.qps_window;
        w.entry((key.to_string(), op))
            .or_default()
            .take(Instant::now(), span, limit, 1)
            .map_err(|_| {
                ArkError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "AccountRateLimitExceeded",
                    "The request rate of your account for this API has exceeded its limit (QPS). Please retry later.",
                )
            })
    }

    fn create_task(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, ArkError> {
        let key = self.authenticate(headers)?;
        let req: Value = serde_json::from_slice(body).map_err(|e| {
            ArkError::invalid("body", format!("the request body is not valid JSON: {e}"))
        })?;
        let spec = request::parse(&req)?;
        if self.is_sensitive(&spec.prompt) {
            return Err(sensitive_input());
        }
        let cfg = &self.0.cfg.video;
        let throttled = &self.0.video.throttled;
        if throttled
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cfg.throttle_first).then_some(n + 1)
            })
            .is_ok()
        {
            return Err(rpm_exceeded());
        }
        let model = models::find(spec.model);
        let rpm = cfg.rpm.unwrap_or(model.map_or(600, |m| m.rpm));
        if rpm > 0 {
            let mut windows = self.0.video.rpm.lock().map_err(|_| ArkError::internal())?;
            let w = windows
                .entry((key.clone(), spec.model.to_string()))
                .or_default();
            if w.take(Instant::now(), cfg.rpm_window, rpm, 1).is_err() {
                return Err(rpm_exceeded());
            }
        }
        let now = Instant::now();
        let outcome = self.task_outcome(&spec.prompt);
        let id = {
            let mut tasks = self
                .0
                .video
                .tasks
                .lock()
                .map_err(|_| ArkError::internal())?;
            let queued = tasks
                .by_id
                .values()
                .filter(|t| {
                    t.status == Status::Queued && t.key == key && t.spec.model == spec.model
                })
                .count();
            if cfg.max_queued.is_some_and(|max| queued >= max) {
                return Err(ArkError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "QuotaExceeded",
                    "The request failed because you have too many queued tasks. Please retry after some tasks finish.",
                ));
            }
            let id = tasks::task_id();
            let seq = tasks.next_seq;
            tasks.next_seq += 1;
            let unix = Utc::now().timestamp();
            let expires_at = now + std::time::Duration::from_secs(spec.execution_expires_after);
            let mut task = Task {
                id: id.clone(),
                key,
                spec,
                status: Status::Queued,
                seq,
                created: now,
                created_at: unix,
                updated_at: unix,
                startable: now + cfg.queue_time,
                finish_at: None,
                ended_at: None,
                expires_at,
                outcome,
                error: None,
                video_url: None,
                last_frame_url: None,
                callbacks: None,
            };
            if let Some(url) = task.spec.callback_url.clone() {
                let tx = callback::start(self, url);
                // The first callback says `queued`.
                let _ = tx.send((task.json(), false));
                task.callbacks = Some(tx);
            }
            tasks.by_id.insert(id.clone(), task);
            id
        };
        self.with_stats(|s| s.video.created += 1);
        self.start_video_clock();
        self.0.video.wake.notify_one();
        Ok(json!({ "id": id }))
    }

    /// The `callback_url` provider task `id` was created with and its task object now: what
    /// its next callback would POST (tests deliver it again, as a provider may).
    pub fn video_callback(&self, id: &str) -> Option<(String, Value)> {
        let tasks = self.0.video.tasks.lock().ok()?;
        let t = tasks.by_id.get(id)?;
        Some((t.spec.callback_url.clone()?, t.json()))
    }

    fn find_task(&self, headers: &HeaderMap, id: &str) -> Result<Value, ArkError> {
        let key = self.authenticate(headers)?;
        self.video_qps(&key, "get", self.0.cfg.video.get_qps)?;
        let tasks = self
            .0
            .video
            .tasks
            .lock()
            .map_err(|_| ArkError::internal())?;
        tasks
            .by_id
            .get(id)
            .filter(|t| t.key == key)
            .map(Task::json)
            .ok_or_else(|| not_found(id))
    }

    fn list_tasks(&self, headers: &HeaderMap, query: &str) -> Result<Value, ArkError> {
        let key = self.authenticate(headers)?;
        self.video_qps(&key, "list", self.0.cfg.video.list_qps)?;
        let q = ListQuery::parse(query)?;
        let tasks = self
            .0
            .video
            .tasks
            .lock()
            .map_err(|_| ArkError::internal())?;
        let mut matching: Vec<&Task> = tasks
            .by_id
            .values()
            .filter(|t| t.key == key && q.matches(t))
            .collect();
        matching.sort_by_key(|t| std::cmp::Reverse(t.seq));
        let items: Vec<Value> = matching
            .iter()
            .skip((q.page_num - 1) * q.page_size)
            .take(q.page_size)
            .map(|t| t.json())
            .collect();
        Ok(json!({"total": matching.len(), "items": items}))
    }

    /// DELETE (B.5): a queued task is cancelled, a finished one forgotten; a running or
    /// cancelled one cannot be.
    fn delete_task(&self, headers: &HeaderMap, id: &str) -> Result<Value, ArkError> {
        let key = self.authenticate(headers)?;
        self.video_qps(&key, "delete", self.0.cfg.video.delete_qps)?;
        let mut tasks = self
            .0
            .video
            .tasks
            .lock()
            .map_err(|_| ArkError::internal())?;
        let status = tasks
            .by_id
            .get(id)
            .filter(|t| t.key == key)
            .map(|t| t.status)
            .ok_or_else(|| not_found(id))?;
        match status {
            Status::Queued => {
                if let Some(t) = tasks.by_id.get_mut(id) {
                    t.status = Status::Cancelled;
                    t.updated_at = Utc::now().timestamp();
                    t.callbacks = None;
                }
                self.0.video.wake.notify_one();
            }
            Status::Succeeded | Status::Failed | Status::Expired => {
                tasks.by_id.remove(id);
            }
            Status::Running | Status::Cancelled => {
                return Err(ArkError::invalid(
                    "id",
                    format!(
                        "the task {id} is {} and cannot be cancelled or deleted",
                        status.as_str()
                    ),
                ))
            }
        }
        Ok(json!({}))
    }
}

/// The list's query (B.5).
struct ListQuery {
    page_num: usize,
    page_size: usize,
    status: Option<Status>,
    task_ids: Vec<String>,
    model: Option<String>,
    service_tier: Option<String>,
}

impl ListQuery {
    fn parse(query: &str) -> Result<ListQuery, ArkError> {
        let mut q = ListQuery {
            page_num: 1,
            page_size: 20,
            status: None,
            task_ids: Vec::new(),
            model: None,
            service_tier: None,
        };
        let page = |name: &str, v: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| ArkError::invalid(name, "must be an integer in [1, 500]"))
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "page_num" => q.page_num = page("page_num", &v)?,
                "page_size" => q.page_size = page("page_size", &v)?,
                "filter.status" => {
                    q.status =
                        Some(Status::parse(&v).ok_or_else(|| {
                            ArkError::invalid("filter.status", "not a task status")
                        })?)
                }
                "filter.task_ids" => q.task_ids.push(v.into_owned()),
                "filter.model" => q.model = Some(v.into_owned()),
                "filter.service_tier" => q.service_tier = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(q)
    }

    fn matches(&self, t: &Task) -> bool {
        self.status.is_none_or(|s| t.status == s)
            && (self.task_ids.is_empty() || self.task_ids.contains(&t.id))
            && self.model.as_deref().is_none_or(|m| t.spec.model == m)
            && self
                .service_tier
                .as_deref()
                .is_none_or(|s| t.spec.service_tier == s)
    }
}

async fn create(AxState(emu): AxState<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    emu.hit(&format!("POST {TASKS}"));
    let at_ms = emu.now_ms();
    let result = emu.create_task(&headers, &body);
    let status = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
    emu.with_stats(|s| {
        if s.video.create_log.len() < SUBMIT_LOG {
            s.video.create_log.push(Submit { at_ms, status });
        }
    });
    emu.ark_response(&headers, &request_id(), result)
}

async fn get_task(
    AxState(emu): AxState<Emulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    emu.hit(&format!("GET {TASKS}/{{id}}"));
    emu.with_stats(|s| s.video.get_calls += 1);
    let result = emu.find_task(&headers, &id);
    emu.ark_response(&headers, &request_id(), result)
}

async fn list(
    AxState(emu): AxState<Emulator>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    emu.hit(&format!("GET {TASKS}"));
    emu.with_stats(|s| s.video.list_calls += 1);
    let result = emu.list_tasks(&headers, q.as_deref().unwrap_or(""));
    emu.ark_response(&headers, &request_id(), result)
}

async fn delete(
    AxState(emu): AxState<Emulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    emu.hit(&format!("DELETE {TASKS}/{{id}}"));
    emu.with_stats(|s| s.video.delete_calls += 1);
    let result = emu.delete_task(&headers, &id);
    emu.ark_response(&headers, &request_id(), result)
}

/// The MP4 of a finished task, until its link expires (then TOS's 403).
async fn download(AxState(emu): AxState<Emulator>, Path(name): Path<String>) -> Response {
    emu.hit("GET /emulator/videos");
    emu.with_stats(|s| s.video.downloads += 1);
    let found = emu.0.video.videos.lock().ok().and_then(|m| {
        m.get(&name)
            .filter(|v| v.expires > Instant::now())
            .map(|v| (v.seed.clone(), v.width, v.height, v.frames))
    });
    let Some((seed, w, h, frames)) = found else {
        return access_denied();
    };
    let render = move || async move {
        tokio::task::spawn_blocking(move || {
            Bytes::from(super::mp4::render_mp4(&seed, w, h, frames))
        })
        .await
        .map_err(|_| ())
    };
    let shared = emu
        .0
        .cfg
        .reuse_images
        .then(|| emu.0.video.rendered.lock().ok())
        .flatten()
        .map(|mut m| m.entry((w, h, frames)).or_default().clone());
    let bytes = match shared {
        Some(cell) => cell.get_or_try_init(render).await.cloned(),
        None => render().await,
    };
    match bytes {
        Ok(bytes) => ([("content-type", "video/mp4")], bytes).into_response(),
        Err(()) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
