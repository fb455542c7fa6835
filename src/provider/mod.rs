//! Provider seam: the image generator. The one implementation, `ark`, speaks Volcengine Ark's
//! wire format over HTTP; sandbox mode points the same client at the in-process emulator, so the
//! code that runs in production is the code the tests run.

pub mod ark;
pub mod limiter;

use std::time::Duration;

use async_trait::async_trait;

/// One generation call, already validated against the model catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Our task id, sent as the client request id so provider logs can be matched to tasks.
    pub task_id: String,
    pub model: String,
    pub prompt: String,
    pub size: String,
    pub seed: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub watermark: bool,
    pub images: Vec<String>,
    /// More than 1 asks Seedream 4.x for a group of up to this many images.
    pub max_images: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GeneratedImage {
    Url { url: String, size: Option<String> },
    Failed { code: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub images: Vec<GeneratedImage>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub bytes: bytes::Bytes,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    /// The provider's code (`ModelAccountIpmRateLimitExceeded`, …) or ours for transport
    /// failures (`Timeout`, `ConnectionError`, `BadResponse`).
    pub code: String,
    pub message: String,
    pub status: Option<u16>,
    /// Worth another attempt: nothing was generated and the cause may pass.
    pub retryable: bool,
    pub retry_after: Option<Duration>,
    pub request_id: Option<String>,
}

impl ProviderError {
    /// A failure on our side of a call (no status, no request id from the provider).
    pub fn ours(code: &str, message: impl Into<String>, retryable: bool) -> ProviderError {
        ProviderError {
            code: code.into(),
            message: message.into(),
            status: None,
            retryable,
            retry_after: None,
            request_id: None,
        }
    }
}

#[async_trait]
pub trait ImageProvider: Send + Sync + 'static {
    /// `ark` or `sandbox`, for `/health` and logs.
    fn mode(&self) -> &'static str;
    async fn generate(&self, req: &GenerateRequest) -> Result<Generated, ProviderError>;
    /// Downloads a generated image before the provider's URL expires.
    async fn fetch(&self, url: &str) -> Result<Fetched, ProviderError>;
}
