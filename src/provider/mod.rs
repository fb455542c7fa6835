//! Provider seam: the image generator. The one implementation, `ark`, speaks Volcengine Ark's
//! wire format over HTTP; sandbox mode points the same client at the in-process emulator, so the
//! code that runs in production is the code the tests run.

pub mod ark;
pub mod ark_video;
pub mod jimeng;
pub mod keys;
pub mod limiter;
pub mod pace;
pub mod routed;
pub mod volc_sign;

use std::collections::HashMap;
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
    /// `usage.generated_images`: the images billed for this call, when the provider says.
    pub billed: Option<u32>,
}

#[derive(Debug)]
pub struct Fetched {
    pub bytes: bytes::Bytes,
    pub content_type: Option<String>,
    /// The image's share of the download budget, held until the image is stored.
    pub held: Held,
}

/// The largest image a download keeps: far above what Ark serves (a 4K JPEG is a few MB), so
/// only a misbehaving endpoint meets it, and it cannot exhaust memory.
pub const MAX_IMAGE_BYTES: u64 = 128 * 1024 * 1024;

/// Bytes of downloaded images one worker process holds at once (`DOWNLOAD_MEMORY_BYTES`), from
/// the request to the store's acknowledgement. A download reserves an estimate (from the size it
/// asked for) before it sends its request, waiting while the budget is spent, and settles on the
/// real length once the headers tell it: a smaller image gives the rest back, a larger one (or
/// a body without a length, as it arrives) takes what is free without waiting, since a download
/// that waited holding a share could wait forever on others doing the same. So the budget can be
/// passed by what estimates missed, never by whole downloads. An estimate larger than the whole
/// budget waits for all of it and then runs alone: no image is refused for its size below
/// `MAX_IMAGE_BYTES`.
pub struct DownloadBudget {
    kib: std::sync::Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

/// A share of a `DownloadBudget`, given back when dropped.
#[derive(Debug)]
pub struct Held(tokio::sync::OwnedSemaphorePermit);

impl Held {
    fn kib(&self) -> u32 {
        self.0.num_permits() as u32
    }
}

fn kib_of(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(u64::from(u32::MAX)) as u32
}

impl DownloadBudget {
    pub fn new(bytes: u64) -> DownloadBudget {
        let total_kib = kib_of(bytes).max(1);
        DownloadBudget {
            kib: std::sync::Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits for `bytes` of the budget (all of it at most).
    pub async fn reserve(&self, bytes: u64) -> Result<Held, ProviderError> {
        let want = kib_of(bytes).clamp(1, self.total_kib);
        let permit = self
            .kib
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| ProviderError::ours("ShuttingDown", "the worker is stopping", true))?;
        Ok(Held(permit))
    }

    /// Makes `held` the share of an image of `bytes`: gives back what it holds beyond that, or
    /// takes what is free now towards it, without waiting.
    pub fn settle(&self, held: &mut Held, bytes: u64) {
        let want = kib_of(bytes).clamp(1, self.total_kib);
        match held.kib().checked_sub(want) {
            Some(extra) if extra > 0 => drop(held.0.split(extra as usize)),
            _ => self.grow(held, bytes),
        }
    }

    /// Extends `held` to `bytes` with what is free now, without waiting.
    pub fn grow(&self, held: &mut Held, bytes: u64) {
        let want = kib_of(bytes).min(self.total_kib).saturating_sub(held.kib());
        if want == 0 {
            return;
        }
        let free = (self.kib.available_permits() as u32).min(want);
        if free == 0 {
            return;
        }
        if let Ok(more) = self.kib.clone().try_acquire_many_owned(free) {
            held.0.merge(more);
        }
    }
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
    /// What the task stores of this error (the user sees code and message, never the
    /// provider's request id or status).
    pub fn task_error(&self) -> crate::domain::TaskError {
        crate::domain::TaskError {
            code: self.code.clone(),
            message: self.message.clone(),
            retryable: self.retryable,
        }
    }

    /// The provider refused for rate (429 `ServerOverloaded`, `…RateLimitExceeded`, …), not
    /// for a spent quota: a signal to call slower, which costs the task no attempt.
    pub fn is_pace_signal(&self) -> bool {
        self.status == Some(429) && self.retryable
    }

    /// The provider refused the API key itself (401, 403).
    pub fn is_key_refused(&self) -> bool {
        matches!(self.status, Some(401 | 403))
    }

    /// Whether the task's next attempt may start without spending one of its attempts: a rate
    /// limit, or a refused key of a pool that has other keys to try (`retryable` then).
    pub fn costs_no_attempt(&self) -> bool {
        self.is_pace_signal() || (self.is_key_refused() && self.retryable)
    }

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

/// A short, stable name of an API key for logs, metrics, `/ready` and the pacer: the first 8
/// hex digits of its SHA-256, which identify a key among a pool without revealing it.
pub fn key_fingerprint(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
pub trait ImageProvider: Send + Sync + 'static {
    /// `ark` or `sandbox`, for `/health` and logs.
    fn mode(&self) -> &'static str;
    /// One call made with `api_key` (a key of the pool).
    async fn generate(
        &self,
        req: &GenerateRequest,
        api_key: &str,
    ) -> Result<Generated, ProviderError>;
    /// Downloads a generated image before the provider's URL expires, within `budget`;
    /// `estimate` is the image's expected length, reserved before the request is sent.
    async fn fetch(
        &self,
        url: &str,
        budget: &DownloadBudget,
        estimate: u64,
    ) -> Result<Fetched, ProviderError>;
}

/// A video task to submit, already validated against the video catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSubmit {
    pub task_id: String,
    pub model: String,
    pub prompt: String,
    pub duration: u32,
    pub ratio: String,
    pub resolution: String,
    pub seed: Option<i64>,
    pub camera_fixed: bool,
    pub watermark: bool,
    /// None, the first frame, or the first and the last frame.
    pub frames: Vec<String>,
    /// Where the provider posts the task's status changes, if anywhere.
    pub callback_url: Option<String>,
}

/// A task to create at the provider: a video (Seedance, Jimeng), or images made as a
/// provider-side task (Jimeng).
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteSubmit {
    Video(VideoSubmit),
    Images(GenerateRequest),
}

impl RemoteSubmit {
    pub fn model(&self) -> &str {
        match self {
            RemoteSubmit::Video(v) => &v.model,
            RemoteSubmit::Images(i) => &i.model,
        }
    }
}

/// A task the provider has: its id there and the model (Jimeng asks for the `req_key` with the
/// id; routing goes by the model's family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTask {
    pub id: String,
    pub model: String,
    /// Jimeng marks the result when it is read (GetResult's `logo_info`).
    pub watermark: bool,
}

/// A finished image of a provider-side task: a URL to download at once, or the bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteImage {
    Url(String),
    Inline(bytes::Bytes),
}

/// Where a provider-side task (video, or Jimeng images) stands.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoState {
    /// Queued or running at the provider.
    Working,
    Succeeded {
        video_url: String,
    },
    /// Images made (never empty).
    ImagesReady {
        images: Vec<RemoteImage>,
    },
    Failed {
        code: String,
        message: String,
    },
    /// Cancelled (by DELETE) or expired at the provider.
    Cancelled,
}

/// A chunk stream of a download (a video is never held whole in memory).
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// The provider-side tasks seam: submit once, learn states (batched where the API can), cancel,
/// download. `ark_video` (Seedance), `jimeng` (the visual API) and `routed` (by model family).
#[async_trait]
pub trait VideoProvider: Send + Sync + 'static {
    /// Creates the provider's task; its id.
    async fn submit(&self, req: &RemoteSubmit) -> Result<String, ProviderError>;
    /// The state of many provider tasks (one list request at Ark, `filter.task_ids`); tasks
    /// the provider does not list, or whose state could not be read this time, are left out.
    async fn states(
        &self,
        tasks: &[RemoteTask],
    ) -> Result<HashMap<String, VideoState>, ProviderError>;
    /// The state of one provider task, when a callback says it changed (Ark: `GET
    /// …/tasks/{id}`); by default a read of that one task among `states`.
    async fn state(&self, task: &RemoteTask) -> Result<VideoState, ProviderError> {
        let states = self.states(std::slice::from_ref(task)).await?;
        Ok(states.get(&task.id).cloned().unwrap_or(VideoState::Working))
    }
    /// Cancels (queued) or deletes (finished) the provider's task.
    async fn cancel(&self, task: &RemoteTask) -> Result<(), ProviderError>;
    /// The video's bytes as they arrive, with the length when the provider says.
    async fn download(&self, url: &str) -> Result<(ByteStream, Option<u64>), ProviderError>;
}

/// The states of several reads in one answer: all that was read, or, when nothing was, the first
/// error (so that a refusal reaches the tracker, and a 429 pauses it) — one read failing does not
/// hide the others' answers; its tasks are read again at their next poll.
pub fn gather_states(
    reads: impl IntoIterator<Item = Result<HashMap<String, VideoState>, ProviderError>>,
) -> Result<HashMap<String, VideoState>, ProviderError> {
    let mut states = HashMap::new();
    let mut first_error = None;
    for read in reads {
        match read {
            Ok(s) => states.extend(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if states.is_empty() => Err(e),
        _ => Ok(states),
    }
}

/// A streamed GET of a generated video (both families serve it from a plain URL).
pub async fn download_stream(
    http: &reqwest::Client,
    url: &str,
) -> Result<(ByteStream, Option<u64>), ProviderError> {
    use futures::StreamExt;
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| ark::transport_error(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(ProviderError {
            code: "VideoDownloadFailed".into(),
            message: format!("downloading the generated video answered HTTP {status}"),
            status: Some(status.as_u16()),
            retryable: status.is_server_error(),
            retry_after: None,
            request_id: None,
        });
    }
    let len = resp.content_length();
    // `chunk()` hands the body over as it arrives; the stream never holds more than one.
    let stream = futures::stream::unfold(Some(resp), |resp| async move {
        let mut resp = resp?;
        match resp.chunk().await {
            Ok(Some(c)) => Some((Ok(c), Some(resp))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    Ok((stream.boxed(), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_download_budget_holds_downloads_back_until_shares_are_given_back() {
        let b = DownloadBudget::new(100 * 1024);
        let first = b.reserve(60 * 1024).await.expect("first");
        // 60 + 60 KiB do not fit in 100: the second waits until the first is given back.
        let second = tokio::time::timeout(Duration::from_millis(50), b.reserve(60 * 1024)).await;
        assert!(second.is_err(), "reserved beyond the budget");
        drop(first);
        let second = b.reserve(60 * 1024).await.expect("second");
        // Larger than the whole budget: waits for all of it, then runs alone.
        drop(second);
        let huge = b.reserve(10 * 1024 * 1024).await.expect("huge");
        assert_eq!(huge.kib(), 100);
    }

    #[tokio::test]
    async fn a_share_settles_on_the_real_length_without_waiting() {
        let b = DownloadBudget::new(100 * 1024);
        let mut held = b.reserve(40 * 1024).await.expect("estimate");
        b.settle(&mut held, 25 * 1024);
        assert_eq!(held.kib(), 25, "the rest of the estimate is given back");
        let other = b.reserve(70 * 1024).await.expect("other");
        b.settle(&mut held, 60 * 1024);
        assert_eq!(held.kib(), 30, "only what was free is taken");
        drop(other);
    }

    #[tokio::test]
    async fn a_body_without_a_length_grows_its_share_without_waiting() {
        let b = DownloadBudget::new(100 * 1024);
        let other = b.reserve(70 * 1024).await.expect("other");
        let mut held = b.reserve(10 * 1024).await.expect("held");
        b.grow(&mut held, 50 * 1024);
        // Only what was free (20 KiB) was added: growing never waits for another download.
        assert_eq!(held.kib(), 30);
        drop(other);
        b.grow(&mut held, 50 * 1024);
        assert_eq!(held.kib(), 50);
        drop(held);
        assert_eq!(b.reserve(100 * 1024).await.expect("all").kib(), 100);
    }
}
