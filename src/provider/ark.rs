//! Client of Ark's `POST /api/v3/images/generations` (volcengine-api.md, A.1–A.10). It makes no
//! retry decisions of its own (a blind retry of a paid generation can bill twice); it classifies
//! every failure so the worker can decide.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    DownloadBudget, Fetched, GenerateRequest, Generated, GeneratedImage, ImageProvider,
    ProviderError, MAX_IMAGE_BYTES,
};

pub struct ArkClient {
    http: reqwest::Client,
    generations_url: String,
    mode: &'static str,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    size: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guidance_scale: Option<f64>,
    // Ark's default is `true` (a visible "AI生成" mark): always say what we want.
    watermark: bool,
    response_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<WireImages<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequential_image_generation: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequential_image_generation_options: Option<MaxImages>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireImages<'a> {
    One(&'a str),
    Many(&'a [String]),
}

#[derive(Serialize)]
struct MaxImages {
    max_images: u32,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    data: Vec<WireItem>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireUsage {
    generated_images: Option<u32>,
}

#[derive(Deserialize)]
struct WireItem {
    url: Option<String>,
    size: Option<String>,
    error: Option<WireErrorBody>,
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Whether a provider error code may pass on another attempt (A.10 and our policy).
pub fn is_retryable(status: u16, code: &str) -> bool {
    match status {
        429 => !matches!(code, "SetLimitExceeded" | "QuotaExceeded"),
        500..=599 => true,
        400 => code == "InvalidEndpoint.ClosedEndpoint",
        _ => false,
    }
}

pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An image we will not hold in memory: the same link will not get smaller.
fn too_large(bytes: u64) -> ProviderError {
    ProviderError::ours(
        "ImageTooLarge",
        format!("the generated image is {bytes} bytes, more than the {MAX_IMAGE_BYTES} kept"),
        false,
    )
}

pub(super) fn transport_error(e: &reqwest::Error) -> ProviderError {
    let (code, retryable) = if e.is_timeout() {
        ("Timeout", true)
    } else if e.is_connect() || e.is_request() {
        ("ConnectionError", true)
    } else if e.is_decode() || e.is_body() {
        ("BadResponse", true)
    } else {
        ("ConnectionError", true)
    };
    ProviderError {
        code: code.into(),
        message: format!("provider request failed: {e}"),
        status: e.status().map(|s| s.as_u16()),
        retryable,
        retry_after: None,
        request_id: None,
    }
}

impl ArkClient {
    /// `endpoint` is the service root (`https://ark.cn-beijing.volces.com`); a trailing
    /// `/api/v3` is tolerated so both the old server's and the SDKs' forms work.
    pub fn new(
        endpoint: &str,
        timeout: Duration,
        mode: &'static str,
    ) -> Result<ArkClient, ProviderError> {
        let root = endpoint.trim_end_matches('/');
        let root = root.strip_suffix("/api/v3").unwrap_or(root);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ProviderError {
                code: "ClientSetup".into(),
                message: e.to_string(),
                status: None,
                retryable: false,
                retry_after: None,
                request_id: None,
            })?;
        Ok(ArkClient {
            http,
            generations_url: format!("{root}/api/v3/images/generations"),
            mode,
        })
    }
}

#[async_trait]
impl ImageProvider for ArkClient {
    fn mode(&self) -> &'static str {
        self.mode
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.task_id, model = %req.model))]
    async fn generate(
        &self,
        req: &GenerateRequest,
        api_key: &str,
    ) -> Result<Generated, ProviderError> {
        let group = req.max_images > 1;
        let body = WireRequest {
            model: &req.model,
            prompt: &req.prompt,
            size: &req.size,
            seed: req.seed,
            guidance_scale: req.guidance_scale,
            watermark: req.watermark,
            response_format: "url",
            image: match req.images.as_slice() {
                [] => None,
                [one] => Some(WireImages::One(one)),
                many => Some(WireImages::Many(many)),
            },
            sequential_image_generation: group.then_some("auto"),
            sequential_image_generation_options: group.then_some(MaxImages {
                max_images: req.max_images,
            }),
        };
        let resp = self
            .http
            .post(&self.generations_url)
            .bearer_auth(api_key)
            .header("X-Client-Request-Id", &req.task_id)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let after = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(|e| transport_error(&e))?;
        if status == 200 {
            let wire: WireResponse = serde_json::from_slice(&bytes).map_err(|e| ProviderError {
                code: "BadResponse".into(),
                message: format!("unreadable provider response: {e}"),
                status: Some(status),
                retryable: true,
                retry_after: None,
                request_id: request_id.clone(),
            })?;
            let billed = wire.usage.and_then(|u| u.generated_images);
            let images = wire
                .data
                .into_iter()
                .filter_map(|item| match (item.url, item.error) {
                    (Some(url), _) => Some(GeneratedImage::Url {
                        url,
                        size: item.size,
                    }),
                    (None, Some(err)) => Some(GeneratedImage::Failed {
                        code: err.code,
                        message: err.message,
                    }),
                    (None, None) => None,
                })
                .collect();
            return Ok(Generated {
                images,
                request_id,
                billed,
            });
        }
        // Gateways (502–504) may answer with HTML; keep the status as the code then.
        let (code, message) = match serde_json::from_slice::<WireError>(&bytes) {
            Ok(w) if !w.error.code.is_empty() => (w.error.code, w.error.message),
            _ => (
                format!("HTTP{status}"),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            ),
        };
        Err(ProviderError {
            retryable: is_retryable(status, &code),
            code,
            message,
            status: Some(status),
            retry_after: after,
            request_id,
        })
    }

    async fn fetch(
        &self,
        url: &str,
        budget: &DownloadBudget,
        estimate: u64,
    ) -> Result<Fetched, ProviderError> {
        let mut held = budget.reserve(estimate.min(MAX_IMAGE_BYTES)).await?;
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ProviderError {
                code: "ImageDownloadFailed".into(),
                message: format!("downloading the generated image answered HTTP {status}"),
                status: Some(status.as_u16()),
                // An expired or forbidden URL will not come back; a 5xx may.
                retryable: status.is_server_error(),
                retry_after: None,
                request_id: None,
            });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let expected = resp.content_length();
        if let Some(n) = expected.filter(|n| *n > MAX_IMAGE_BYTES) {
            return Err(too_large(n));
        }
        if let Some(n) = expected {
            budget.settle(&mut held, n);
        }
        let mut body = bytes::BytesMut::with_capacity(expected.unwrap_or(0) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            let len = (body.len() + chunk.len()) as u64;
            if len > MAX_IMAGE_BYTES {
                return Err(too_large(len));
            }
            if expected.is_none() {
                budget.grow(&mut held, len);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            bytes: body.freeze(),
            content_type,
            held,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_retryable;

    #[test]
    fn classification_follows_the_error_table() {
        assert!(is_retryable(429, "ModelAccountIpmRateLimitExceeded"));
        assert!(is_retryable(429, "ServerOverloaded"));
        assert!(!is_retryable(429, "SetLimitExceeded"));
        assert!(is_retryable(500, "InternalServiceError"));
        assert!(is_retryable(503, "HTTP503"));
        assert!(!is_retryable(400, "InvalidParameter"));
        assert!(!is_retryable(400, "InputTextSensitiveContentDetected"));
        assert!(!is_retryable(401, "AuthenticationError"));
        assert!(!is_retryable(404, "InvalidEndpointOrModel.NotFound"));
    }
}
