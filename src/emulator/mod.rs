//! A local emulator of Ark's image generation API (volcengine-api.md, A.1–A.12): the same
//! request validation, response and error bodies, request ids and headers, images-per-minute
//! limit answered with the real 429 body, configurable latency and injected failures, real PNG
//! bytes behind expiring URLs, and a stats endpoint counting calls per prompt.
//!
//! Run it alone with `volcengine-ai-server emulator`; sandbox mode runs it in-process.

pub mod image;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::domain::models::{Catalog, ModelFamily, ModelIds};

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Time to generate one image.
    pub latency: Duration,
    /// Extra random latency, uniform in `[0, latency_jitter]`.
    pub latency_jitter: Duration,
    /// The only key accepted; any non-empty Bearer token when `None`.
    pub api_key: Option<String>,
    /// Images per window per model (sliding window, 60 s as Ark's IPM); unlimited when `None`.
    pub images_per_minute: Option<u32>,
    /// Length of the images-per-minute window (shorter in tests).
    pub ipm_window: Duration,
    /// Requests generating at once, per model, beyond which 429 `InflightBatchsizeExceeded`.
    pub max_concurrency: Option<usize>,
    /// Sent as `Retry-After` (seconds) on 429 answers. Whether Ark sends it is not documented.
    pub retry_after: Option<Duration>,
    /// Share of requests that never answer (the client's timeout fires).
    pub hang_rate: f64,
    /// Share of requests answered 500 `InternalServiceError`.
    pub fail_rate: f64,
    /// Share of requests answered 429 `ServerOverloaded`.
    pub overload_rate: f64,
    /// The first this-many calls of each distinct prompt fail with 500 `InternalServiceError`
    /// (deterministic transient failures for retry tests).
    pub fail_first: u32,
    /// The first this-many downloads of each generated image answer 503, as an object store
    /// does under load (deterministic, for tests of a download retried without a new call).
    pub fail_downloads_first: u32,
    /// How long a download waits before its bytes are sent: an object store's time to first
    /// byte from far away.
    pub download_latency: Duration,
    /// Prompts containing one of these are rejected as sensitive input text.
    pub sensitive_words: Vec<String>,
    /// How long generated image URLs stay valid (Ark: 24 h).
    pub url_ttl: Duration,
    pub model_ids: ModelIds,
    /// Render one PNG per size and serve it for every image of that size. For benchmarks: a
    /// real provider's CDN renders nothing on the cores of the service under test, while a
    /// burst of a thousand downloads rendered here would.
    pub reuse_images: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            latency: Duration::from_millis(1500),
            latency_jitter: Duration::ZERO,
            api_key: None,
            images_per_minute: None,
            ipm_window: Duration::from_secs(60),
            max_concurrency: None,
            retry_after: None,
            hang_rate: 0.0,
            fail_rate: 0.0,
            overload_rate: 0.0,
            fail_first: 0,
            fail_downloads_first: 0,
            download_latency: Duration::ZERO,
            sensitive_words: vec!["sensitive-content".into()],
            url_ttl: Duration::from_secs(24 * 3600),
            model_ids: ModelIds::default(),
            reuse_images: false,
        }
    }
}

#[derive(Default, Serialize, Clone)]
pub struct Stats {
    pub requests: u64,
    pub succeeded: u64,
    pub images: u64,
    pub by_status: HashMap<u16, u64>,
    pub by_code: HashMap<String, u64>,
    /// Generation requests per prompt (duplicate calls show as counts above 1).
    pub by_prompt: HashMap<String, u64>,
    /// Image downloads answered, and those of them failed on purpose.
    pub downloads: u64,
    pub failed_downloads: u64,
    /// The most downloads in progress at once.
    pub peak_downloads: u64,
}

struct Issued {
    seed: String,
    index: u32,
    width: u32,
    height: u32,
    expires: Instant,
    /// Downloads asked for so far.
    downloads: u32,
}

struct Inner {
    cfg: EmulatorConfig,
    catalog: Catalog,
    base_url: String,
    stats: Mutex<Stats>,
    /// Image counts of the last window per model, for the IPM limit.
    window: Mutex<HashMap<String, VecDeque<(Instant, u32)>>>,
    /// Requests generating now, per model.
    in_flight: Mutex<HashMap<String, usize>>,
    issued: Mutex<HashMap<String, Issued>>,
    /// Rendered images by size, with `reuse_images`.
    rendered: Mutex<HashMap<(u32, u32), OneRender>>,
    /// Downloads in progress now.
    downloading: std::sync::atomic::AtomicU64,
}

/// A download in progress, counted (and the peak kept) while it lives.
struct Downloading(Emulator);

impl Downloading {
    fn start(emu: &Emulator) -> Downloading {
        let now = emu
            .0
            .downloading
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if let Ok(mut s) = emu.0.stats.lock() {
            s.peak_downloads = s.peak_downloads.max(now);
        }
        Downloading(emu.clone())
    }
}

impl Drop for Downloading {
    fn drop(&mut self) {
        self.0
             .0
            .downloading
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One size's image, rendered by whichever download comes first while the others wait.
type OneRender = Arc<tokio::sync::OnceCell<Bytes>>;

#[derive(Clone)]
pub struct Emulator(Arc<Inner>);

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

fn request_id() -> String {
    let mut rng = rand::thread_rng();
    let hex: String = (0..38)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect();
    format!("02{:013}{hex}", Utc::now().timestamp_millis())
}

struct ArkError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: &'static str,
}

impl ArkError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ArkError {
        ArkError {
            status,
            code,
            message: message.into(),
            param: "",
        }
    }

    fn param(mut self, p: &'static str) -> ArkError {
        self.param = p;
        self
    }

    fn into_response(self, rid: &str) -> Response {
        let kind = match self.status.as_u16() {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            429 => "TooManyRequests",
            _ => "InternalServerError",
        };
        let body = json!({"error": {
            "code": self.code,
            "message": format!("{} Request id: {rid}", self.message),
            "param": self.param,
            "type": kind,
        }});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "x-error-code",
                HeaderValue::from_static("AuthN_MissOrInvalidAuthorizationHeader"),
            );
        }
        resp
    }
}

impl Emulator {
    pub fn new(cfg: EmulatorConfig, base_url: String) -> Emulator {
        let catalog = Catalog::new(&cfg.model_ids);
        Emulator(Arc::new(Inner {
            cfg,
            catalog,
            base_url,
            stats: Mutex::default(),
            window: Mutex::default(),
            in_flight: Mutex::default(),
            issued: Mutex::default(),
            rendered: Mutex::default(),
            downloading: Default::default(),
        }))
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v3/images/generations", post(generations))
            .route("/emulator/images/{name}", get(image))
            .route("/emulator/stats", get(stats))
            .route(
                "/health",
                get(|| async { Json(json!({"status": "ok", "service": "ark-emulator"})) }),
            )
            .with_state(self.clone())
    }

    pub fn stats(&self) -> Stats {
        self.0.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn count(&self, status: u16, code: Option<&str>) {
        if let Ok(mut s) = self.0.stats.lock() {
            *s.by_status.entry(status).or_default() += 1;
            if let Some(c) = code {
                *s.by_code.entry(c.to_string()).or_default() += 1;
            }
        }
    }

    /// Takes `n` images from the model's per-minute budget, or says how long until it allows them.
    fn take_ipm(&self, model: &str, n: u32) -> Result<(), Duration> {
        let Some(limit) = self.0.cfg.images_per_minute else {
            return Ok(());
        };
        let Ok(mut w) = self.0.window.lock() else {
            return Ok(());
        };
        let q = w.entry(model.to_string()).or_default();
        let now = Instant::now();
        let window = self.0.cfg.ipm_window;
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            q.pop_front();
        }
        let used: u32 = q.iter().map(|(_, k)| *k).sum();
        if used + n > limit {
            let wait = q
                .front()
                .map(|(t, _)| window.saturating_sub(now.duration_since(*t)))
                .unwrap_or_default();
            return Err(wait);
        }
        q.push_back((now, n));
        Ok(())
    }

    /// Counts a request as generating until the returned guard drops; `None` over the limit.
    fn enter(&self, model: &str) -> Option<InFlight> {
        let mut m = self.0.in_flight.lock().ok()?;
        let n = m.entry(model.to_string()).or_default();
        if self.0.cfg.max_concurrency.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(InFlight {
            emu: self.clone(),
            model: model.to_string(),
        })
    }

    async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, ArkError> {
        let cfg = &self.0.cfg;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let key_ok = match &cfg.api_key {
            Some(k) => token == k,
            None => !token.is_empty(),
        };
        if !key_ok {
            return Err(ArkError::new(
                StatusCode::UNAUTHORIZED,
                "AuthenticationError",
                "The API key or AK/SK in the request is missing or invalid.",
            ));
        }
        let req: Value = serde_json::from_slice(body).map_err(|e| {
            ArkError::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                format!("The request body is not valid JSON: {e}."),
            )
        })?;
        let missing = |p: &'static str| {
            ArkError::new(
                StatusCode::BAD_REQUEST,
                "MissingParameter",
                format!("The request failed because it is missing `{p}` parameter."),
            )
            .param(p)
        };
        let invalid = |p: &'static str, why: String| {
            ArkError::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                format!("The parameter `{p}` specified in the request is not valid: {why}."),
            )
            .param(p)
        };
        let model_id = req["model"]
            .as_str()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| missing("model"))?;
        let spec = self
            .0
            .catalog
            .all()
            .iter()
            .find(|m| m.id == model_id)
            .ok_or_else(|| {
                ArkError::new(
                    StatusCode::NOT_FOUND,
                    "InvalidEndpointOrModel.NotFound",
                    format!("The model or endpoint {model_id} does not exist or you do not have access to it."),
                )
            })?;
        let prompt = req["prompt"]
            .as_str()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| missing("prompt"))?;
        let calls_for_prompt = match self.0.stats.lock() {
            Ok(mut s) => {
                let n = s.by_prompt.entry(prompt.to_string()).or_default();
                *n += 1;
                *n
            }
            Err(_) => 1,
        };
        let size = req["size"]
            .as_str()
            .unwrap_or(&spec.default_size)
            .to_string();
        let size = spec.check_size(&size).map_err(|_| {
            invalid(
                "size",
                format!("the specified size is not supported for model {}", spec.id),
            )
        })?;
        let is_4x = spec.family == ModelFamily::Seedream4;
        if is_4x && (!req["seed"].is_null() || !req["guidance_scale"].is_null()) {
            return Err(invalid(
                "seed",
                format!("seed and guidance_scale are not supported by {}", spec.id),
            ));
        }
        if let Some(g) = req["guidance_scale"].as_f64() {
            if !(1.0..=10.0).contains(&g) {
                return Err(invalid("guidance_scale", "must be in [1, 10]".into()));
            }
        }
        let images = match &req["image"] {
            Value::Null => 0,
            Value::String(_) => 1,
            Value::Array(a) => a.len() as u32,
            _ => {
                return Err(invalid(
                    "image",
                    "must be a string or an array of strings".into(),
                ))
            }
        };
        if images < spec.min_reference_images || images > spec.max_reference_images {
            return Err(invalid(
                "image",
                format!(
                    "model {} takes {} to {} images",
                    spec.id, spec.min_reference_images, spec.max_reference_images
                ),
            ));
        }
        let group = is_4x && req["sequential_image_generation"].as_str() == Some("auto");
        let count = if group {
            req["sequential_image_generation_options"]["max_images"]
                .as_u64()
                .unwrap_or(15)
                .clamp(1, u64::from(15 - images)) as u32
        } else {
            1
        };
        if cfg
            .sensitive_words
            .iter()
            .any(|w| !w.is_empty() && prompt.contains(w.as_str()))
        {
            return Err(ArkError::new(
                StatusCode::BAD_REQUEST,
                "InputTextSensitiveContentDetected",
                "The request failed because the input text may contain sensitive information.",
            ));
        }
        if let Err(_wait) = self.take_ipm(&spec.id, count) {
            return Err(ArkError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ModelAccountIpmRateLimitExceeded",
                "IPM (Images Per Minute) limit of the model is exceeded.",
            ));
        }
        let roll: f64 = rand::thread_rng().gen();
        if roll < cfg.overload_rate {
            return Err(ArkError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ServerOverloaded",
                "The service is currently unable to handle additional requests due to server overload. Please retry later.",
            ));
        }
        let _slot = match self.enter(&spec.id) {
            Some(slot) => slot,
            None => {
                return Err(ArkError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "InflightBatchsizeExceeded",
                    "The Inflight Batchsize limit has been exceeded.",
                ))
            }
        };
        if rand::thread_rng().gen::<f64>() < cfg.hang_rate {
            // Never answers: the caller's timeout fires (the connection stays open meanwhile).
            std::future::pending::<()>().await;
        }
        let jitter = if cfg.latency_jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(
                rand::thread_rng().gen_range(0..=cfg.latency_jitter.as_millis() as u64),
            )
        };
        tokio::time::sleep(cfg.latency + jitter).await;
        if roll < cfg.overload_rate + cfg.fail_rate || calls_for_prompt <= u64::from(cfg.fail_first)
        {
            return Err(ArkError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServiceError",
                "The service encountered an unexpected internal error. Please retry later.",
            ));
        }

        let (width, height) = spec.output_dims(&size);
        let rid = request_id();
        let expires = Instant::now() + cfg.url_ttl;
        let mut data = Vec::new();
        let mut pixels: u64 = 0;
        {
            let mut issued = self.0.issued.lock().map_err(|_| {
                ArkError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServiceError",
                    "state poisoned",
                )
            })?;
            let now = Instant::now();
            issued.retain(|_, v| v.expires > now);
            for index in 0..count {
                let name = format!("{rid}_{index}.png");
                issued.insert(
                    name.clone(),
                    Issued {
                        seed: prompt.to_string(),
                        index,
                        width,
                        height,
                        expires,
                        downloads: 0,
                    },
                );
                let url = format!(
                    "{}/emulator/images/{name}?X-Tos-Algorithm=TOS4-HMAC-SHA256&X-Tos-Date={}&X-Tos-Expires={}",
                    self.0.base_url,
                    Utc::now().format("%Y%m%dT%H%M%SZ"),
                    cfg.url_ttl.as_secs()
                );
                let mut item = json!({ "url": url });
                if is_4x {
                    item["size"] = json!(format!("{width}x{height}"));
                }
                data.push(item);
                pixels += u64::from(width) * u64::from(height);
            }
        }
        if let Ok(mut s) = self.0.stats.lock() {
            s.succeeded += 1;
            s.images += u64::from(count);
        }
        let tokens = pixels / 256;
        Ok(json!({
            "model": spec.id,
            "created": Utc::now().timestamp(),
            "data": data,
            "usage": {"generated_images": count, "output_tokens": tokens, "total_tokens": tokens},
            "x_request_id": rid,
        }))
    }
}

async fn generations(State(emu): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    if let Ok(mut s) = emu.0.stats.lock() {
        s.requests += 1;
    }
    let client_rid = headers.get("x-client-request-id").cloned();
    let mut resp = match emu.handle(&headers, &body).await {
        Ok(mut v) => {
            let rid = v["x_request_id"].as_str().unwrap_or_default().to_string();
            if let Some(o) = v.as_object_mut() {
                o.remove("x_request_id");
            }
            emu.count(200, None);
            let mut r = Json(v).into_response();
            if let Ok(h) = HeaderValue::from_str(&rid) {
                r.headers_mut().insert("x-request-id", h);
            }
            r
        }
        Err(e) => {
            let rid = request_id();
            emu.count(e.status.as_u16(), Some(e.code));
            let throttled = e.status == StatusCode::TOO_MANY_REQUESTS;
            let mut r = e.into_response(&rid);
            if let (true, Some(after)) = (throttled, emu.0.cfg.retry_after) {
                if let Ok(h) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                    r.headers_mut().insert("retry-after", h);
                }
            }
            if let Ok(h) = HeaderValue::from_str(&rid) {
                r.headers_mut().insert("x-request-id", h);
            }
            r
        }
    };
    if let Some(c) = client_rid {
        resp.headers_mut().insert("x-client-request-id", c);
    }
    resp
}

async fn image(State(emu): State<Emulator>, Path(name): Path<String>) -> Response {
    let _counted = Downloading::start(&emu);
    if !emu.0.cfg.download_latency.is_zero() {
        tokio::time::sleep(emu.0.cfg.download_latency).await;
    }
    let found = emu.0.issued.lock().ok().and_then(|mut m| {
        m.get_mut(&name)
            .filter(|i| i.expires > Instant::now())
            .map(|i| {
                i.downloads += 1;
                (i.seed.clone(), i.index, i.width, i.height, i.downloads)
            })
    });
    let refused = found
        .as_ref()
        .is_some_and(|(.., downloads)| *downloads <= emu.0.cfg.fail_downloads_first);
    if let Ok(mut s) = emu.0.stats.lock() {
        s.downloads += 1;
        s.failed_downloads += u64::from(refused);
    }
    if refused {
        // TOS's answer when it sheds load.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"Code": "ServiceUnavailable", "Message": "Service is unavailable now, please try again later.", "EC": "0015-00000001"})),
        )
            .into_response();
    }
    let Some((seed, index, w, h, _)) = found else {
        // What TOS answers for a link that is no longer valid.
        return (
            StatusCode::FORBIDDEN,
            Json(
                json!({"Code": "AccessDenied", "Message": "Access Denied", "EC": "0003-00000015"}),
            ),
        )
            .into_response();
    };
    let render = move || async move {
        match tokio::task::spawn_blocking(move || image::render_png(&seed, index, w, h)).await {
            Ok(Ok(png)) => Ok(Bytes::from(png)),
            _ => Err(()),
        }
    };
    // With `reuse_images`, concurrent first downloads of a size wait for one rendering.
    let shared = emu
        .0
        .cfg
        .reuse_images
        .then(|| emu.0.rendered.lock().ok())
        .flatten()
        .map(|mut m| m.entry((w, h)).or_default().clone());
    let png = match shared {
        Some(cell) => cell.get_or_try_init(render).await.cloned(),
        None => render().await,
    };
    match png {
        Ok(png) => ([("content-type", "image/png")], png).into_response(),
        Err(()) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn stats(State(emu): State<Emulator>) -> Json<Stats> {
    Json(emu.stats())
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
