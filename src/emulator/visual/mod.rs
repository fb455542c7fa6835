//! Jimeng on the visual API (volcengine-api.md C): `POST /?Action=CVSync2AsyncSubmitTask` and
//! `CVSync2AsyncGetResult` (`Version=2022-08-31`), signed with V4; tasks `in_queue` →
//! `generating` → `done` on timers; JPEG `image_urls` or `binary_data_base64`, or an MP4
//! `video_url`; QPS (50429) and concurrency (50430) limits; 34-character request ids.

pub mod auth;
pub mod reqkeys;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use chrono::Utc;
use rand::Rng;
use serde_json::{json, Value};

use super::ark::Window;
use super::images::Format;
use super::stats::{Submit, SUBMIT_LOG};
use super::video::tasks::Outcome;
use super::Emulator;
use auth::GatewayError;
use reqkeys::{Job, Kind};

pub const VERSION: &str = "2022-08-31";
pub const SUBMIT: &str = "CVSync2AsyncSubmitTask";
pub const GET_RESULT: &str = "CVSync2AsyncGetResult";

#[derive(Default)]
pub struct State {
    tasks: Mutex<HashMap<String, VisualTask>>,
    /// Calls of the last second per access key and `req_key`.
    qps: Mutex<HashMap<(String, String), Window>>,
    /// Submits answered 429 by `throttle_first` so far.
    throttled: std::sync::atomic::AtomicU32,
}

struct VisualTask {
    access_key: String,
    req_key: &'static str,
    kind: Kind,
    job: Job,
    created: Instant,
    generating_at: Instant,
    done_at: Instant,
    outcome: Outcome,
    /// Issued at the first GetResult that finds the task done, then the same every time.
    urls: Option<Vec<String>>,
}

impl VisualTask {
    fn status(&self, now: Instant) -> &'static str {
        if now < self.generating_at {
            "in_queue"
        } else if now < self.done_at {
            "generating"
        } else {
            match self.outcome {
                Outcome::Succeed => "done",
                Outcome::Fail => "failed",
                Outcome::Expire => "expired",
            }
        }
    }
}

/// A business error: HTTP status, `code` and `message` of the C.6 table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisualError {
    pub status: StatusCode,
    pub code: i64,
    pub message: &'static str,
}

impl VisualError {
    pub fn bad_request(code: i64, message: &'static str) -> VisualError {
        VisualError {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }
}

/// `request_id`: Beijing time `YYYYMMDDhhmmss` + 20 uppercase hex (34 characters).
pub fn request_id() -> String {
    let mut rng = rand::thread_rng();
    let hex: String = (0..20)
        .map(|_| {
            char::from_digit(rng.gen_range(0..16), 16)
                .unwrap_or('0')
                .to_ascii_uppercase()
        })
        .collect();
    let beijing = Utc::now() + chrono::Duration::hours(8);
    format!("{}{hex}", beijing.format("%Y%m%d%H%M%S"))
}

/// A Go-style duration, as `time_elapsed` is written.
fn elapsed(since: Instant) -> String {
    format!("{:.6}ms", since.elapsed().as_secs_f64() * 1000.0)
}

pub(super) fn routes() -> Router<Emulator> {
    Router::new().route("/", post(visual))
}

fn gateway_response(e: &GatewayError, action: &str, version: &str) -> Response {
    let body = json!({"ResponseMetadata": {
        "RequestId": request_id(),
        "Action": action,
        "Version": version,
        "Service": "cv",
        "Region": "cn-north-1",
        "Error": {"CodeN": e.code_n, "Code": e.code, "Message": e.message},
    }});
    (e.status, Json(body)).into_response()
}

async fn visual(
    AxState(emu): AxState<Emulator>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let query = query.unwrap_or_default();
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let (action, version) = (param("Action"), param("Version"));
    emu.hit(&format!(
        "POST /?Action={}",
        action.as_deref().unwrap_or("")
    ));
    let refuse = |e: GatewayError| {
        emu.with_stats(|s| {
            *s.visual
                .auth_failures
                .entry(e.code.to_string())
                .or_default() += 1
        });
        gateway_response(
            &e,
            action.as_deref().unwrap_or(""),
            version.as_deref().unwrap_or(""),
        )
    };
    let (Some(action), Some(version)) = (action.as_deref(), version.as_deref()) else {
        return refuse(auth::MISSING_PARAMETER);
    };
    let access_key = match auth::verify(&emu.0.cfg.visual, "POST", "/", &query, &headers, &body) {
        Ok(ak) => ak,
        Err(e) => return refuse(e),
    };
    let result = match (action, version) {
        (SUBMIT, VERSION) => {
            let at_ms = emu.now_ms();
            let result = emu.submit(&access_key, &body);
            let status = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
            emu.with_stats(|s| {
                s.visual.submits += 1;
                if s.visual.submit_log.len() < SUBMIT_LOG {
                    s.visual.submit_log.push(Submit { at_ms, status });
                }
            });
            result
        }
        (GET_RESULT, VERSION) => {
            emu.with_stats(|s| s.visual.get_results += 1);
            emu.get_result(&access_key, &body).await
        }
        _ => return refuse(auth::INVALID_ACTION),
    };
    let (status, code, message, data) = match result {
        Ok(data) => (StatusCode::OK, 10000, "Success", data),
        Err(e) => (e.status, e.code, e.message, Value::Null),
    };
    emu.with_stats(|s| *s.visual.by_code.entry(code).or_default() += 1);
    let body = json!({
        "code": code,
        "data": data,
        "message": message,
        "request_id": request_id(),
        "status": code,
        "time_elapsed": elapsed(started),
    });
    (status, Json(body)).into_response()
}

fn parse_body(body: &[u8]) -> Result<Value, VisualError> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| VisualError::bad_request(50215, "Input invalid for this service."))
}

impl Emulator {
    /// One call by `access_key` on `req_key` against the per-second limit.
    fn visual_qps(&self, access_key: &str, req_key: &str) -> Result<(), VisualError> {
        let limit = self.0.cfg.visual.qps;
        if limit == 0 {
            return Ok(());
        }
        let Ok(mut w) = self.0.visual.qps.lock() else {
            return Ok(());
        };
        w.entry((access_key.to_string(), req_key.to_string()))
            .or_default()
            .take(Instant::now(), self.0.cfg.visual.qps_window, limit, 1)
            .map_err(|_| VisualError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: 50429,
                message: "Request Has Reached API Limit, Please Try Later",
            })
    }

    fn submit(&self, access_key: &str, body: &[u8]) -> Result<Value, VisualError> {
        let req = parse_body(body)?;
        let first = self.0.cfg.visual.throttle_first;
        if self
            .0
            .visual
            .throttled
            .fetch_update(SeqCst, SeqCst, |n| (n < first).then_some(n + 1))
            .is_ok()
        {
            return Err(VisualError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: 50429,
                message: "Request Has Reached API Limit, Please Try Later",
            });
        }
        if let Some(k) = req["req_key"].as_str() {
            self.visual_qps(access_key, k)?;
        }
        let (key, job) = reqkeys::parse(&req)?;
        if self.is_sensitive(&job.prompt) {
            return Err(VisualError::bad_request(50412, "Text Risk Not Pass"));
        }
        let cfg = &self.0.cfg.visual;
        let now = Instant::now();
        let mut tasks = self.0.visual.tasks.lock().map_err(|_| internal())?;
        tasks.retain(|_, t| now.duration_since(t.created) < cfg.retention);
        let unfinished = tasks
            .values()
            .filter(|t| t.access_key == access_key && t.req_key == key.name && now < t.done_at)
            .count();
        if cfg.concurrency > 0 && unfinished >= cfg.concurrency as usize {
            return Err(VisualError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: 50430,
                message: "Request Has Reached API Concurrent Limit, Please Try Later",
            });
        }
        let id = format!("7{:018}", rand::thread_rng().gen_range(0..10u64.pow(18)));
        let generating_at = now + cfg.queue_time;
        let work = match key.kind {
            Kind::Image => cfg.image_time,
            Kind::Video => cfg.video_time,
        };
        let outcome = self.task_outcome(&job.prompt);
        tasks.insert(
            id.clone(),
            VisualTask {
                access_key: access_key.to_string(),
                req_key: key.name,
                kind: key.kind,
                job,
                created: now,
                generating_at,
                done_at: generating_at + work,
                outcome,
                urls: None,
            },
        );
        Ok(json!({ "task_id": id }))
    }

    async fn get_result(&self, access_key: &str, body: &[u8]) -> Result<Value, VisualError> {
        let req = parse_body(body)?;
        let invalid = || VisualError::bad_request(50215, "Input invalid for this service.");
        let (Some(req_key), Some(task_id)) = (req["req_key"].as_str(), req["task_id"].as_str())
        else {
            return Err(invalid());
        };
        self.visual_qps(access_key, req_key)?;
        let options = match &req["req_json"] {
            Value::Null => Value::Null,
            Value::String(s) => serde_json::from_str::<Value>(s).map_err(|_| invalid())?,
            _ => return Err(invalid()),
        };
        let return_url = options["return_url"].as_bool().unwrap_or(false);
        let now = Instant::now();
        let cfg = &self.0.cfg.visual;
        let (status, kind, job, id) = {
            let tasks = self.0.visual.tasks.lock().map_err(|_| internal())?;
            match tasks.get(task_id).filter(|t| {
                t.access_key == access_key
                    && t.req_key == req_key
                    && now.duration_since(t.created) < cfg.retention
            }) {
                Some(t) => (t.status(now), t.kind, t.job.clone(), task_id.to_string()),
                None => return Ok(json!({"status": "not_found"})),
            }
        };
        match (status, kind) {
            ("failed", Kind::Image) => {
                Err(VisualError::bad_request(50511, "Post Img Risk Not Pass"))
            }
            ("failed", Kind::Video) => {
                Err(VisualError::bad_request(50516, "Post Video Risk Not Pass"))
            }
            ("done", Kind::Image) if !return_url => {
                let (w, h) = job.dims;
                let prompt = job.prompt.clone();
                let jpeg = tokio::task::spawn_blocking(move || {
                    super::image::render_jpeg(&prompt, 0, w, h)
                })
                .await
                .map_err(|_| internal())?
                .map_err(|_| internal())?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(jpeg);
                Ok(json!({"binary_data_base64": [b64], "image_urls": null, "status": "done"}))
            }
            ("done", Kind::Image) => {
                let urls = self.result_urls(&id, &job, Kind::Image);
                Ok(json!({"binary_data_base64": null, "image_urls": urls, "status": "done"}))
            }
            ("done", Kind::Video) => {
                let url = self.result_urls(&id, &job, Kind::Video).into_iter().next();
                Ok(
                    json!({"aigc_meta_tagged": false, "resp_data": "", "video_url": url, "status": "done"}),
                )
            }
            (status, Kind::Image) => {
                Ok(json!({"binary_data_base64": null, "image_urls": null, "status": status}))
            }
            (status, Kind::Video) => Ok(json!({"video_url": null, "status": status})),
        }
    }

    /// The URLs of a done task's result, issued the first time they are asked for.
    fn result_urls(&self, id: &str, job: &Job, kind: Kind) -> Vec<String> {
        let cfg = &self.0.cfg.visual;
        let Ok(mut tasks) = self.0.visual.tasks.lock() else {
            return Vec::new();
        };
        let Some(t) = tasks.get_mut(id) else {
            return Vec::new();
        };
        t.urls
            .get_or_insert_with(|| match kind {
                Kind::Image => vec![self.issue_image(
                    &format!("{id}_0"),
                    &job.prompt,
                    0,
                    job.dims,
                    Format::Jpeg,
                    cfg.image_url_ttl,
                )],
                Kind::Video => {
                    vec![self.issue_video(id, &job.prompt, job.dims, job.frames, cfg.video_url_ttl)]
                }
            })
            .clone()
    }

    /// Kept tasks by status now.
    pub(crate) fn visual_by_status(&self) -> BTreeMap<String, u64> {
        let now = Instant::now();
        let mut m = BTreeMap::new();
        if let Ok(tasks) = self.0.visual.tasks.lock() {
            for t in tasks.values() {
                *m.entry(t.status(now).to_string()).or_default() += 1;
            }
        }
        m
    }
}

fn internal() -> VisualError {
    VisualError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: 50500,
        message: "Internal Error",
    }
}
