//! `POST /v1/images/generations` and the poll of a task it made: OpenAI's body in, an ordinary
//! task underneath, OpenAI's `{created, data: [{url | b64_json}]}` out once the task is done.
//!
//! The wait follows the task's events (`Service::wait_terminal`). It lasts at most
//! `OPENAI_MAX_WAIT`, or less when the SDK's `X-Stainless-Timeout` (Node: the whole call) says
//! the client gives up sooner: the answer then comes just before, a 504 naming the task. After
//! `OPENAI_KEEPALIVE_AFTER` of silence, or just before Python's `X-Stainless-Read-Timeout`, the
//! answer is committed as 200 and a space is sent every 10 s (or sooner; JSON parsers skip
//! leading whitespace), so that neither proxies nor the client's read timeout cut the call; an
//! error after that point is the same `{"error": …}` body under the 200.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::error::{task_failure, ErrorEnvelope, OpenAiError};
use super::{read_body, Key};
use crate::auth::Principal;
use crate::domain::{image_url, CreateImageTask, Task, TaskStatus};
use crate::state::AppState;

/// How often a space is sent while a committed answer waits (or every `OPENAI_KEEPALIVE_AFTER`
/// when that is shorter).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);

/// `url` (this server's durable image route) or `b64_json` (the bytes inline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseFormat {
    #[default]
    Url,
    B64Json,
}

impl ResponseFormat {
    pub fn parse(raw: Option<&str>) -> Result<ResponseFormat, OpenAiError> {
        match raw.map(str::trim) {
            None | Some("") | Some("url") => Ok(ResponseFormat::Url),
            Some("b64_json") => Ok(ResponseFormat::B64Json),
            Some(other) => Err(OpenAiError::invalid(
                "response_format",
                format!("'{other}' is not one of ['url', 'b64_json']"),
            )),
        }
    }
}

/// One image or several (Ark's `image` takes either).
#[derive(Deserialize, ToSchema, Debug)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Ark's `sequential_image_generation_options`.
#[derive(Deserialize, ToSchema, Debug)]
pub struct SequentialOptions {
    pub max_images: Option<i64>,
}

/// The body of `POST /v1/images/generations`: OpenAI's parameters and Ark's extras (sent with
/// the SDKs' `extra_body`).
#[derive(Deserialize, ToSchema, Debug, Default)]
#[schema(example = json!({"model": "doubao-seedream-4.0", "prompt": "a red fox in the snow", "size": "2048x2048", "response_format": "url"}))]
pub struct GenerationBody {
    /// Required.
    #[serde(default)]
    pub prompt: String,
    /// A model id of `GET /v1/models` (or a provider model id); default Seedream 3.0.
    pub model: Option<String>,
    /// Images to make; above 1 only for Seedream 4.x (a group, which may hold fewer).
    pub n: Option<i64>,
    /// `WxH` within the model's limits, a tier (`1K`, `2K`, `4K`) where the model has them,
    /// `adaptive` for SeedEdit, or `auto` for the model's default.
    pub size: Option<String>,
    /// `url` (default) or `b64_json`.
    pub response_format: Option<String>,
    /// The task's owner (a user id) when calling with the admin key or with auth off; ignored
    /// with a user's key, whose user owns the task.
    pub user: Option<String>,
    /// Accepted and stored with the task (`auto` is left out).
    pub quality: Option<String>,
    /// Accepted and stored with the task.
    pub style: Option<String>,
    /// Ark: random seed (Seedream 3.0, SeedEdit 3.0).
    pub seed: Option<i64>,
    /// Ark: prompt adherence 1–10 (Seedream 3.0, SeedEdit 3.0).
    pub guidance_scale: Option<f64>,
    /// Ark: add the provider's watermark (default false).
    pub watermark: Option<bool>,
    /// Ark: reference image(s), URLs or `data:image/…;base64,` URLs.
    pub image: Option<OneOrMany>,
    /// Ark: `auto` makes a group of up to `max_images` (Seedream 4.x); `disabled` one image.
    pub sequential_image_generation: Option<String>,
    /// Ark: `{max_images}` of a group.
    pub sequential_image_generation_options: Option<SequentialOptions>,
    /// Shorthand for `sequential_image_generation_options.max_images`.
    pub max_images: Option<i64>,
}

/// Parameters of OpenAI's API this server does not implement, and the one value of each that
/// asks for nothing (and is therefore accepted).
const REFUSED: &[(&str, Option<Value>)] = &[
    ("stream", Some(Value::Bool(false))),
    ("partial_images", None),
    ("output_format", None),
    ("output_compression", None),
    ("background", None),
    ("moderation", None),
];

/// The parameters `GenerationBody` reads.
const KNOWN: &[&str] = &[
    // OpenAI's end-user id for abuse monitoring: accepted, not used.
    "safety_identifier",
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "user",
    "quality",
    "style",
    "seed",
    "guidance_scale",
    "watermark",
    "image",
    "sequential_image_generation",
    "sequential_image_generation_options",
    "max_images",
];

/// Refuses what this server does not implement, naming the parameter, as OpenAI refuses an
/// unrecognised argument; `null` counts as left out.
pub fn check_params(body: &Map<String, Value>, known: &[&str]) -> Result<(), OpenAiError> {
    for (k, v) in body {
        if v.is_null() || known.contains(&k.as_str()) {
            continue;
        }
        match REFUSED.iter().find(|(name, _)| name == k) {
            Some((_, neutral)) => {
                let is_neutral = neutral.as_ref() == Some(v) || v.as_str() == Some("auto");
                if !is_neutral {
                    return Err(OpenAiError::unsupported(
                        k,
                        format!("{k} is not supported by this server"),
                    ));
                }
            }
            None => {
                return Err(OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("Unrecognized request argument supplied: {k}"),
                    Some(k),
                    Some("unknown_parameter"),
                ))
            }
        }
    }
    Ok(())
}

/// A JSON body into `T`, a type error naming its parameter.
fn parse_body<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, Map<String, Value>), OpenAiError> {
    let map: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body must be a JSON object: {e}"),
            None,
            Some("invalid_json"),
        )
    })?;
    let typed = serde_path_to_error::deserialize(Value::Object(map.clone())).map_err(|e| {
        let param = e.path().to_string();
        let param = param
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_string();
        OpenAiError::invalid(&param, format!("{param}: {}", e.into_inner()))
    })?;
    Ok((typed, map))
}

impl GenerationBody {
    /// The task request and the answer's format. `n` and Ark's group options say the same
    /// thing, so they must agree.
    pub fn into_input(
        self,
        who: &Principal,
        idempotency_key: Option<String>,
    ) -> Result<(CreateImageTask, ResponseFormat), OpenAiError> {
        let format = ResponseFormat::parse(self.response_format.as_deref())?;
        let group = self.max_images.or(self
            .sequential_image_generation_options
            .and_then(|o| o.max_images));
        let n = match self.sequential_image_generation.as_deref().map(str::trim) {
            None | Some("disabled") => self.n,
            Some("auto") => match (self.n, group) {
                (Some(n), Some(g)) if n != g => {
                    return Err(OpenAiError::invalid(
                        "n",
                        format!("n ({n}) and max_images ({g}) disagree; send one of them"),
                    ))
                }
                (n, g) => g.or(n),
            },
            Some(other) => {
                return Err(OpenAiError::invalid(
                    "sequential_image_generation",
                    format!("'{other}' is not one of ['auto', 'disabled']"),
                ))
            }
        };
        let images = match self.image {
            None => vec![],
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        let not_auto = |v: Option<String>| v.filter(|s| !s.trim().eq_ignore_ascii_case("auto"));
        let input = CreateImageTask {
            user_id: if who.is_admin() { self.user } else { None },
            prompt: self.prompt,
            model: self.model,
            size: not_auto(self.size),
            seed: self.seed,
            guidance_scale: self.guidance_scale,
            watermark: self.watermark,
            images,
            n,
            quality: not_auto(self.quality),
            style: self.style,
            options: None,
            idempotency_key,
            // Scheduling is not part of OpenAI's API; these calls run now.
            ..CreateImageTask::default()
        };
        Ok((input, format))
    }
}

/// One image of the answer.
#[derive(Serialize, ToSchema)]
pub struct ImageData {
    /// This server's durable image URL (`response_format: url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The image's bytes, base64 (`response_format: b64_json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
}

/// OpenAI's images answer.
#[derive(Serialize, ToSchema)]
pub struct ImagesResponse {
    /// When the task was created (Unix seconds).
    pub created: i64,
    pub data: Vec<ImageData>,
}

/// The answer for a finished task: its images, or the error it ended with.
pub async fn outcome(
    s: &AppState,
    task: &Task,
    format: ResponseFormat,
) -> Result<ImagesResponse, OpenAiError> {
    let result = match (task.status, &task.result) {
        (TaskStatus::Completed, Some(r)) => r,
        (TaskStatus::Completed, None) | (TaskStatus::Failed | TaskStatus::Cancelled, _) => {
            return Err(task_failure(task.status, task.error.as_ref()))
        }
        (TaskStatus::Pending | TaskStatus::Processing | TaskStatus::Scheduled, _) => {
            return Err(still_running(task))
        }
    };
    let mut data = Vec::with_capacity(result.images.len());
    for img in &result.images {
        data.push(match format {
            ResponseFormat::Url => ImageData {
                url: Some(image_url(&s.public_base, img)),
                b64_json: None,
            },
            ResponseFormat::B64Json => {
                let blob = s.service.get_image(&img.id).await?.ok_or_else(|| {
                    OpenAiError::from(crate::error::AppError::NotFound(
                        "an image of the task is no longer stored".into(),
                    ))
                })?;
                ImageData {
                    url: None,
                    b64_json: Some(base64::engine::general_purpose::STANDARD.encode(&blob.data)),
                }
            }
        });
    }
    Ok(ImagesResponse {
        created: task.created_at.timestamp(),
        data,
    })
}

/// The wait ended before the task did: a 504 naming the task and where to poll it. Not retried
/// by the SDK, whose retry would make another task.
fn still_running(task: &Task) -> OpenAiError {
    OpenAiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "server_error",
        format!(
            "task {} is still {} and goes on; poll GET {}",
            task.id,
            task.status,
            location(&task.id)
        ),
        None,
        Some("task_pending"),
    )
    .not_retryable()
}

fn location(id: &str) -> String {
    format!("/v1/images/generations/{id}")
}

/// `Prefer: respond-async` (RFC 7240).
pub fn prefers_async(h: &HeaderMap) -> bool {
    h.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    })
}

pub fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, OpenAiError> {
    match h.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| OpenAiError::invalid("Idempotency-Key", "must be printable ASCII")),
    }
}

/// The state of a task that is not done, for `respond-async` and the poll.
#[derive(Serialize, ToSchema)]
pub struct TaskAccepted {
    /// The task id (also in `GET /api/v1/tasks/{id}` and GraphQL).
    pub id: String,
    /// Always `image.generation.task`.
    pub object: &'static str,
    /// `pending`, `processing` (or `scheduled` for a task made elsewhere).
    pub status: String,
    /// Unix seconds.
    pub created: i64,
    /// Where to poll: `GET /v1/images/generations/{id}`.
    pub location: String,
}

fn accepted(task: &Task) -> Response {
    let body = TaskAccepted {
        id: task.id.clone(),
        object: "image.generation.task",
        status: task.status.to_string(),
        created: task.created_at.timestamp(),
        location: location(&task.id),
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location(&task.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    resp
}

/// How a wait goes: when it ends, and how long it may stay silent before the 200 is committed
/// and spaces keep the call alive (`None`: never).
struct WaitPlan {
    deadline: Instant,
    silent: Option<Duration>,
}

/// A client timeout in seconds from an SDK header, shortened so the answer comes first.
fn client_timeout(h: &HeaderMap, name: &str) -> Option<Duration> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0 && *t < 1e9)
        .map(|t| Duration::from_secs_f64((t - 1.0).max(t / 2.0)))
}

/// The SDKs say their timeouts: Node's `X-Stainless-Timeout` covers the whole call, its body
/// included, so the answer must be whole before it (a 504 naming the task otherwise); Python's
/// `X-Stainless-Read-Timeout` is the longest silence between bytes, so the keep-alive starts
/// before it (or, with keep-alive off, the answer comes before it).
fn plan(s: &AppState, h: &HeaderMap) -> WaitPlan {
    let total = client_timeout(h, "x-stainless-timeout");
    let read = client_timeout(h, "x-stainless-read-timeout");
    let mut wait = s.config.openai_max_wait;
    if let Some(t) = total {
        wait = wait.min(t);
    }
    let silent = match (s.config.openai_keepalive_after, read) {
        (Some(k), Some(r)) => Some(k.min(r)),
        (Some(k), None) => Some(k),
        (None, Some(r)) => {
            wait = wait.min(r);
            None
        }
        (None, None) => None,
    };
    WaitPlan {
        deadline: Instant::now() + wait,
        silent,
    }
}

fn with_task_headers(mut resp: Response, task_id: &str, replayed: bool) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(task_id) {
        h.insert("x-request-id", v.clone());
        h.insert("x-task-id", v);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// Creates the task of an images request and answers: at once with `respond-async`, otherwise
/// once the task is done (or the wait is over).
pub async fn create_and_answer(
    s: AppState,
    who: Principal,
    headers: &HeaderMap,
    input: CreateImageTask,
    format: ResponseFormat,
) -> Result<Response, OpenAiError> {
    let (task, created) = s.service.create_image_task(&who, input).await?;
    let id = task.id.clone();
    if prefers_async(headers) && !task.status.is_terminal() {
        let mut resp = accepted(&task);
        resp.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
        return Ok(with_task_headers(resp, &id, !created));
    }
    let plan = plan(&s, headers);
    let resync = s.config.subscription_resync;
    let done = async move {
        let task = s
            .service
            .wait_terminal(&who, &task.id, plan.deadline, resync)
            .await?;
        outcome(&s, &task, format).await
    };
    let resp = answer(done, plan.silent).await;
    Ok(with_task_headers(resp, &id, !created))
}

/// The answer of a wait: its own status when it comes within `keepalive`, otherwise a 200 whose
/// body is spaces every `KEEPALIVE_EVERY` (at most) and then the JSON.
async fn answer(
    done: impl std::future::Future<Output = Result<ImagesResponse, OpenAiError>> + Send + 'static,
    keepalive: Option<Duration>,
) -> Response {
    let mut done = Box::pin(done);
    let Some(after) = keepalive else {
        return into_response(done.await);
    };
    match tokio::time::timeout(after, &mut done).await {
        Ok(r) => into_response(r),
        Err(_) => {
            let every = KEEPALIVE_EVERY.min(after);
            let body = futures::stream::unfold(Some(done), move |state| async move {
                let mut done = state?;
                tokio::select! {
                    r = &mut done => Some((Ok::<_, Infallible>(json_bytes(r)), None)),
                    _ = tokio::time::sleep(every) => {
                        Some((Ok(bytes::Bytes::from_static(b" ")), Some(done)))
                    }
                }
            });
            let mut resp = Body::from_stream(body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
    }
}

fn into_response(r: Result<ImagesResponse, OpenAiError>) -> Response {
    match r {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

fn json_bytes(r: Result<ImagesResponse, OpenAiError>) -> bytes::Bytes {
    let v = match r {
        Ok(body) => serde_json::to_vec(&body),
        Err(e) => serde_json::to_vec(&e.body()),
    };
    // Serialising these plain structs cannot fail; an empty object is still valid JSON.
    bytes::Bytes::from(v.unwrap_or_else(|_| b"{}".to_vec()))
}

/// Create images
///
/// OpenAI's images API over a durable task: answers `{created, data}` once the task is done;
/// the task is stored first, so a dropped connection loses nothing (`GET
/// /v1/images/generations/{task_id}`, the `x-task-id` header). `Prefer: respond-async` answers
/// 202 at once with the task and a `Location`. The same `Idempotency-Key` from the same user
/// answers with the same task. A wait longer than `OPENAI_KEEPALIVE_AFTER` is committed as 200
/// and kept alive with spaces before the JSON; an error then comes as `{"error"}` under it.
#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the task created with this key"),
        ("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 at once"),
        ("X-Stainless-Timeout" = Option<f64>, Header, description = "The client's timeout for the whole call (seconds, Node SDK): the wait ends just before it"),
        ("X-Stainless-Read-Timeout" = Option<f64>, Header, description = "The client's read timeout (seconds, Python SDK): the keep-alive starts before it"),
    ),
    request_body = GenerationBody,
    responses(
        (status = 200, description = "The images", body = ImagesResponse),
        (status = 202, description = "`Prefer: respond-async`: the task, not done yet", body = TaskAccepted),
        (status = 400, description = "Invalid or unsupported parameter (`param` names it); or the provider refused the request (`code` is the provider's, e.g. `InputTextSensitiveContentDetected`)", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid key", body = ErrorEnvelope),
        (status = 409, description = "Idempotency key reused with another body, or the task was cancelled", body = ErrorEnvelope),
        (status = 429, description = "The user's submit rate or in-flight quota (`Retry-After`)", body = ErrorEnvelope),
        (status = 500, description = "The task failed", body = ErrorEnvelope),
        (status = 504, description = "The wait ended first; the task goes on (poll it)", body = ErrorEnvelope),
    ))]
pub async fn generations(
    State(s): State<AppState>,
    Key(who): Key,
    req: Request,
) -> Result<Response, OpenAiError> {
    let headers = req.headers().clone();
    let bytes = read_body(&s, req).await?;
    let (body, map): (GenerationBody, _) = parse_body(&bytes)?;
    check_params(&map, KNOWN)?;
    let key = idempotency_key(&headers)?;
    let (input, format) = body.into_input(&who, key)?;
    create_and_answer(s, who, &headers, input, format).await
}

#[derive(Deserialize, Default)]
pub struct PollQuery {
    response_format: Option<String>,
}

/// Poll an images task
///
/// The answer `POST /v1/images/generations` would have given once the task is done (200 with
/// the images, or its error); 202 with the task's state while it runs.
#[utoipa::path(get, path = "/v1/images/generations/{task_id}", tag = "openai",
    params(
        ("task_id" = String, Path, description = "Task id"),
        ("response_format" = Option<String>, Query, description = "`url` (default) or `b64_json`"),
    ),
    responses(
        (status = 200, description = "The images", body = ImagesResponse),
        (status = 202, description = "Not done yet", body = TaskAccepted),
        (status = 400, description = "The provider refused the task", body = ErrorEnvelope),
        (status = 404, description = "No such task", body = ErrorEnvelope),
        (status = 500, description = "The task failed", body = ErrorEnvelope),
    ))]
pub async fn poll(
    State(s): State<AppState>,
    Key(who): Key,
    Path(id): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Response, OpenAiError> {
    let format = ResponseFormat::parse(q.response_format.as_deref())?;
    let task = s.service.poll_task_or_404(&who, &id).await?;
    let resp = if task.status.is_terminal() {
        into_response(outcome(&s, &task, format).await)
    } else {
        accepted(&task)
    };
    Ok(with_task_headers(resp, &task.id, false))
}
