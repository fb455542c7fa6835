//! Ark's image generation (volcengine-api.md A): validation, the per-key images-per-minute
//! limit, injected failures, and the generated pictures behind expiring URLs (also used for
//! Jimeng's JPEGs and Seedance's last frames).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use rand::Rng;
use serde_json::{json, Value};

use super::ark::{request_id, ArkError};
use super::{Downloading, Emulator, InFlight};
use crate::domain::models::{ModelFamily, ModelSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Png,
    Jpeg,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
        }
    }
}

/// A picture handed out by URL.
pub struct Issued {
    pub seed: String,
    pub index: u32,
    pub width: u32,
    pub height: u32,
    pub format: Format,
    pub expires: Instant,
    /// Downloads asked for so far.
    pub downloads: u32,
}

/// A TOS-style presigned query (the emulator checks expiry itself, not the query).
pub fn tos_query(ttl: Duration) -> String {
    format!(
        "X-Tos-Algorithm=TOS4-HMAC-SHA256&X-Tos-Date={}&X-Tos-Expires={}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        ttl.as_secs()
    )
}

impl Emulator {
    /// Issues a picture under `name` (without extension) valid for `ttl`; its URL.
    pub(crate) fn issue_image(
        &self,
        name: &str,
        seed: &str,
        index: u32,
        (width, height): (u32, u32),
        format: Format,
        ttl: Duration,
    ) -> String {
        let file = format!("{name}.{}", format.ext());
        if let Ok(mut issued) = self.0.issued.lock() {
            let now = Instant::now();
            issued.retain(|_, v| v.expires > now);
            issued.insert(
                file.clone(),
                Issued {
                    seed: seed.to_string(),
                    index,
                    width,
                    height,
                    format,
                    expires: now + ttl,
                    downloads: 0,
                },
            );
        }
        format!(
            "{}/emulator/images/{file}?{}",
            self.0.base_url,
            tos_query(ttl)
        )
    }

    /// Takes `n` images from the key's per-minute budget on `model`, or says how long until it
    /// allows them.
    fn take_ipm(&self, key: &str, model: &str, n: u32) -> Result<(), Duration> {
        let limit = match self.0.limits.lock() {
            Ok(l) => l.ipm(key, model),
            Err(_) => None,
        };
        let Some(limit) = limit else {
            return Ok(());
        };
        let Ok(mut w) = self.0.ipm_windows.lock() else {
            return Ok(());
        };
        w.entry((key.to_string(), model.to_string()))
            .or_default()
            .take(Instant::now(), self.0.cfg.ipm_window, limit, n)
    }

    async fn generate(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        rid: &str,
    ) -> Result<Value, ArkError> {
        let cfg = &self.0.cfg;
        let key = self.authenticate(headers)?;
        let req: Value = serde_json::from_slice(body).map_err(|e| {
            ArkError::invalid("body", format!("the request body is not valid JSON: {e}"))
        })?;
        let model_id = req["model"]
            .as_str()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ArkError::missing("model"))?;
        let spec = self
            .0
            .catalog
            .all()
            .iter()
            .find(|m| m.id == model_id)
            .ok_or_else(|| model_not_found(model_id))?;
        let prompt = req["prompt"]
            .as_str()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| ArkError::missing("prompt"))?;
        let mut calls_for_prompt = 1;
        self.with_stats(|s| {
            let n = s.by_prompt.entry(prompt.to_string()).or_default();
            *n += 1;
            calls_for_prompt = *n;
        });
        let (size, count, is_4x) = validate(spec, &req)?;
        if self.is_sensitive(prompt) {
            return Err(sensitive_input());
        }
        if self.take_ipm(&key, &spec.id, count).is_err() {
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
        let _slot = self.enter(&spec.id).ok_or_else(|| {
            ArkError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "InflightBatchsizeExceeded",
                "The Inflight Batchsize limit has been exceeded.",
            )
        })?;
        if rand::thread_rng().gen::<f64>() < cfg.hang_rate {
            // Never answers: the caller's timeout fires (the connection stays open meanwhile).
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(cfg.latency + jitter(cfg.latency_jitter)).await;
        self.until_released().await;
        if roll < cfg.overload_rate + cfg.fail_rate || calls_for_prompt <= u64::from(cfg.fail_first)
        {
            return Err(ArkError::internal());
        }

        let (width, height) = spec.output_dims(&size);
        let mut data = Vec::new();
        for index in 0..count {
            let url = self.issue_image(
                &format!("{rid}_{index}"),
                prompt,
                index,
                (width, height),
                Format::Png,
                cfg.url_ttl,
            );
            let mut item = json!({ "url": url });
            if is_4x {
                item["size"] = json!(format!("{width}x{height}"));
            }
            data.push(item);
        }
        self.with_stats(|s| {
            s.succeeded += 1;
            s.images += u64::from(count);
            s.by_key.entry(key.clone()).or_default().images += u64::from(count);
        });
        let tokens = u64::from(count) * u64::from(width) * u64::from(height) / 256;
        Ok(json!({
            "model": spec.id,
            "created": Utc::now().timestamp(),
            "data": data,
            "usage": {"generated_images": count, "output_tokens": tokens, "total_tokens": tokens},
        }))
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

    pub(crate) fn is_sensitive(&self, prompt: &str) -> bool {
        contains_any(prompt, &self.0.cfg.sensitive_words)
    }
}

pub fn contains_any(text: &str, words: &[String]) -> bool {
    words
        .iter()
        .any(|w| !w.is_empty() && text.contains(w.as_str()))
}

pub fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_millis(rand::thread_rng().gen_range(0..=max.as_millis() as u64))
    }
}

pub fn model_not_found(model: &str) -> ArkError {
    ArkError::new(
        StatusCode::NOT_FOUND,
        "InvalidEndpointOrModel.NotFound",
        format!("The model or endpoint {model} does not exist or you do not have access to it."),
    )
}

pub fn sensitive_input() -> ArkError {
    ArkError::new(
        StatusCode::BAD_REQUEST,
        "InputTextSensitiveContentDetected",
        "The request failed because the input text may contain sensitive information.",
    )
}

/// The request's size (as the model takes it), number of images, and whether the model is 4.x.
fn validate(spec: &ModelSpec, req: &Value) -> Result<(String, u32, bool), ArkError> {
    let size = req["size"].as_str().unwrap_or(&spec.default_size);
    let size = spec.check_size(size).map_err(|_| {
        ArkError::invalid(
            "size",
            format!("the specified size is not supported for model {}", spec.id),
        )
    })?;
    let is_4x = spec.family == ModelFamily::Seedream4;
    if is_4x && (!req["seed"].is_null() || !req["guidance_scale"].is_null()) {
        return Err(ArkError::invalid(
            "seed",
            format!("seed and guidance_scale are not supported by {}", spec.id),
        ));
    }
    if let Some(g) = req["guidance_scale"].as_f64() {
        if !(1.0..=10.0).contains(&g) {
            return Err(ArkError::invalid("guidance_scale", "must be in [1, 10]"));
        }
    }
    let images = match &req["image"] {
        Value::Null => 0,
        Value::String(_) => 1,
        Value::Array(a) => a.len() as u32,
        _ => {
            return Err(ArkError::invalid(
                "image",
                "must be a string or an array of strings",
            ))
        }
    };
    if images < spec.min_reference_images || images > spec.max_reference_images {
        return Err(ArkError::invalid(
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
    Ok((size, count, is_4x))
}

pub(super) async fn generations(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    emu.hit("POST /api/v3/images/generations");
    let mut call = 0;
    emu.with_stats(|s| {
        s.requests += 1;
        call = s.requests;
    });
    let rid = request_id();
    let result = if call <= u64::from(emu.0.cfg.fail_calls_first) {
        Err(ArkError::internal())
    } else {
        emu.generate(&headers, &body, &rid).await
    };
    emu.ark_response(&headers, &rid, result)
}

/// TOS's answer for a link that is no longer valid.
pub fn access_denied() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"Code": "AccessDenied", "Message": "Access Denied", "EC": "0003-00000015"})),
    )
        .into_response()
}

pub(super) async fn image(State(emu): State<Emulator>, Path(name): Path<String>) -> Response {
    emu.hit("GET /emulator/images");
    let _counted = Downloading::start(&emu);
    if !emu.0.cfg.download_latency.is_zero() {
        tokio::time::sleep(emu.0.cfg.download_latency).await;
    }
    let found = emu.0.issued.lock().ok().and_then(|mut m| {
        m.get_mut(&name)
            .filter(|i| i.expires > Instant::now())
            .map(|i| {
                i.downloads += 1;
                (
                    i.seed.clone(),
                    i.index,
                    (i.width, i.height),
                    i.format,
                    i.downloads,
                )
            })
    });
    let refused = found
        .as_ref()
        .is_some_and(|(.., downloads)| *downloads <= emu.0.cfg.fail_downloads_first);
    emu.with_stats(|s| {
        s.downloads += 1;
        s.failed_downloads += u64::from(refused);
    });
    if refused {
        // TOS's answer when it sheds load.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"Code": "ServiceUnavailable", "Message": "Service is unavailable now, please try again later.", "EC": "0015-00000001"})),
        )
            .into_response();
    }
    let Some((seed, index, (w, h), format, _)) = found else {
        return access_denied();
    };
    let render = move || async move {
        let rendered = tokio::task::spawn_blocking(move || match format {
            Format::Png => super::image::render_png(&seed, index, w, h),
            Format::Jpeg => super::image::render_jpeg(&seed, index, w, h),
        })
        .await;
        match rendered {
            Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
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
        .map(|mut m| m.entry((w, h, format)).or_default().clone());
    let bytes = match shared {
        Some(cell) => cell.get_or_try_init(render).await.cloned(),
        None => render().await,
    };
    let content_type = match format {
        Format::Png => "image/png",
        Format::Jpeg => "image/jpeg",
    };
    match bytes {
        Ok(bytes) => ([("content-type", content_type)], bytes).into_response(),
        Err(()) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
