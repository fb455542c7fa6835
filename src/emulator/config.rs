//! What the emulator is told: latencies, limits, injected failures, for the three APIs it
//! serves. Every field has a default close to the real service's (volcengine-api.md), so a test
//! sets only what it exercises (`..EmulatorConfig::default()`).

use std::str::FromStr;
use std::time::Duration;

use crate::domain::models::ModelIds;

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Time to generate one image.
    pub latency: Duration,
    /// Extra random latency, uniform in `[0, latency_jitter]`.
    pub latency_jitter: Duration,
    /// A key accepted on Ark's APIs. With neither this nor `api_keys` nor a key in `key_ipm`,
    /// any non-empty Bearer token is accepted.
    pub api_key: Option<String>,
    /// More keys accepted besides `api_key` (a key pool).
    pub api_keys: Vec<String>,
    /// Keys always answered 401 `AuthenticationError` (revoked keys); changeable at run time.
    pub bad_keys: Vec<String>,
    /// Images per window per key and model (sliding window, 60 s as Ark's IPM), unless
    /// `key_ipm` says otherwise for the key or model; unlimited when `None`.
    pub images_per_minute: Option<u32>,
    /// Per key, per model or per key and model images-per-minute limits.
    pub key_ipm: Vec<KeyLimit>,
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
    /// The first this-many generation calls of all, whatever their prompt or key, fail with
    /// 500 `InternalServiceError` before anything is counted against a limit (a provider
    /// having a bad minute as the run starts).
    pub fail_calls_first: u32,
    /// The first this-many downloads of each generated image answer 503, as an object store
    /// does under load (deterministic, for tests of a download retried without a new call).
    pub fail_downloads_first: u32,
    /// How long a download waits before its bytes are sent: an object store's time to first
    /// byte from far away.
    pub download_latency: Duration,
    /// Prompts containing one of these are rejected as sensitive input text (all three APIs).
    pub sensitive_words: Vec<String>,
    /// Video and Jimeng tasks whose prompt contains one of these end failed by output moderation
    /// (`OutputVideoSensitiveContentDetected`, Jimeng 50511 / 50516).
    pub output_sensitive_words: Vec<String>,
    /// Video and Jimeng tasks whose prompt contains one of these end `expired`.
    pub expire_words: Vec<String>,
    /// Share of video and Jimeng tasks failing by output moderation, and ending `expired`.
    pub task_fail_rate: f64,
    pub task_expire_rate: f64,
    /// How long generated image URLs stay valid (Ark: 24 h).
    pub url_ttl: Duration,
    pub model_ids: ModelIds,
    /// Render one picture (and one video) per size and serve it for every download of that
    /// size. For benchmarks: a real provider's CDN renders nothing on the cores of the service
    /// under test, while a burst of a thousand downloads rendered here would.
    pub reuse_images: bool,
    /// Ark's content-generation tasks (Seedance video).
    pub video: VideoConfig,
    /// Jimeng on the visual API.
    pub visual: VisualConfig,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            latency: Duration::from_millis(1500),
            latency_jitter: Duration::ZERO,
            api_key: None,
            api_keys: Vec::new(),
            bad_keys: Vec::new(),
            images_per_minute: None,
            key_ipm: Vec::new(),
            ipm_window: Duration::from_secs(60),
            max_concurrency: None,
            retry_after: None,
            hang_rate: 0.0,
            fail_rate: 0.0,
            overload_rate: 0.0,
            fail_first: 0,
            fail_calls_first: 0,
            fail_downloads_first: 0,
            download_latency: Duration::ZERO,
            sensitive_words: vec!["sensitive-content".into()],
            output_sensitive_words: vec!["sensitive-output".into()],
            expire_words: vec!["expire-task".into()],
            task_fail_rate: 0.0,
            task_expire_rate: 0.0,
            url_ttl: Duration::from_secs(24 * 3600),
            model_ids: ModelIds::default(),
            reuse_images: false,
            video: VideoConfig::default(),
            visual: VisualConfig::default(),
        }
    }
}

/// Seedance tasks (volcengine-api.md B): timers, limits and callbacks.
#[derive(Debug, Clone)]
pub struct VideoConfig {
    /// Least time a task stays `queued`, even with a free slot.
    pub queue_time: Duration,
    /// Time a task stays `running` (generation time), plus uniform `[0, run_jitter]`.
    pub run_time: Duration,
    pub run_jitter: Duration,
    /// Tasks running at once per key and model (extra tasks stay `queued`); `None`: the model
    /// table's (B.2: 10 for pro, 5 for lite); `Some(0)`: unlimited.
    pub concurrency: Option<u32>,
    /// Creates per minute per key and model (429 `ModelAccountRpmRateLimitExceeded` beyond);
    /// `None`: the model table's (600 / 300); `Some(0)`: unlimited.
    pub rpm: Option<u32>,
    /// Length of the RPM window (shorter in tests).
    pub rpm_window: Duration,
    /// Queued tasks per key and model beyond which a create gets 429 `QuotaExceeded`; the real
    /// number is not published, so unlimited unless set.
    pub max_queued: Option<usize>,
    /// Requests per second per key to GET a task, list and DELETE (BytePlus: 20, 1, 20); 0 is
    /// unlimited. Over it: 429 `APIAccountRpmRateLimitExceeded`.
    pub get_qps: u32,
    pub list_qps: u32,
    pub delete_qps: u32,
    /// The window those per-second limits count over (1 s; longer in tests, so a slow machine
    /// cannot spread a burst over two windows).
    pub qps_window: Duration,
    /// How long `content.video_url` stays valid (24 h).
    pub url_ttl: Duration,
    /// A callback attempt without a 2xx within this is re-sent (B.6: 5 s) …
    pub callback_timeout: Duration,
    /// … up to this many more times, for `succeeded` / `failed` / `expired`.
    pub callback_retries: u32,
    /// Each callback is POSTed this many times at once (1): Ark does not promise exactly-once
    /// delivery, and a receiver must take repeats.
    pub callback_copies: u32,
    /// The first this many creates are answered 429 `ModelAccountRpmRateLimitExceeded` (without
    /// `Retry-After` unless `retry_after` is set), whatever the limits say.
    pub throttle_first: u32,
    /// GET and list only see tasks created this recently (7 days).
    pub retention: Duration,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            queue_time: Duration::from_secs(1),
            run_time: Duration::from_secs(10),
            run_jitter: Duration::ZERO,
            concurrency: None,
            rpm: None,
            rpm_window: Duration::from_secs(60),
            max_queued: None,
            get_qps: 20,
            list_qps: 1,
            delete_qps: 20,
            qps_window: Duration::from_secs(1),
            url_ttl: Duration::from_secs(24 * 3600),
            callback_timeout: Duration::from_secs(5),
            callback_retries: 3,
            callback_copies: 1,
            throttle_first: 0,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Jimeng's visual API (volcengine-api.md C).
#[derive(Debug, Clone)]
pub struct VisualConfig {
    /// Access key → secret key pairs whose signatures are accepted.
    pub credentials: Vec<(String, String)>,
    /// Largest difference between `X-Date` and the clock (400 `InvalidTimestamp` beyond);
    /// Volcengine does not publish it, AWS's is 15 minutes.
    pub max_skew: Duration,
    /// Time in `in_queue`, then in `generating` for image and video `req_key`s.
    pub queue_time: Duration,
    pub image_time: Duration,
    pub video_time: Duration,
    /// Calls per second per access key and `req_key` (429 50429 beyond); 0 is unlimited.
    pub qps: u32,
    /// The window `qps` counts over (1 s; longer in tests).
    pub qps_window: Duration,
    /// Unfinished tasks per access key and `req_key` (429 50430 at submit beyond); 0 is
    /// unlimited.
    pub concurrency: u32,
    /// Lifetime of `image_urls` (24 h) and `video_url` (1 h for 3.0 Pro).
    pub image_url_ttl: Duration,
    pub video_url_ttl: Duration,
    /// Tasks answer `not_found` after this (12 h).
    pub retention: Duration,
    /// The first this many submits are answered 429 50429, whatever the limits say.
    pub throttle_first: u32,
}

/// The credentials the emulator accepts when none are configured (sandbox mode signs with them).
pub const SANDBOX_ACCESS_KEY: &str = "AKLTemulator";
pub const SANDBOX_SECRET_KEY: &str = "emulator-secret";

impl Default for VisualConfig {
    fn default() -> Self {
        VisualConfig {
            credentials: vec![(SANDBOX_ACCESS_KEY.into(), SANDBOX_SECRET_KEY.into())],
            max_skew: Duration::from_secs(15 * 60),
            queue_time: Duration::from_secs(1),
            image_time: Duration::from_secs(5),
            video_time: Duration::from_secs(15),
            qps: 0,
            qps_window: Duration::from_secs(1),
            concurrency: 0,
            image_url_ttl: Duration::from_secs(24 * 3600),
            video_url_ttl: Duration::from_secs(3600),
            retention: Duration::from_secs(12 * 3600),
            throttle_first: 0,
        }
    }
}

/// An images-per-minute limit for a key, a model, or a key and model: `KEY=N`, `KEY:MODEL=N`,
/// `*:MODEL=N`; `N` may be `unlimited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimit {
    pub key: Option<String>,
    pub model: Option<String>,
    pub ipm: Option<u32>,
}

impl FromStr for KeyLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (who, n) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("`{s}`: expected KEY=N, KEY:MODEL=N or *:MODEL=N"))?;
        let ipm = match n.trim() {
            "unlimited" | "none" => None,
            n => Some(
                n.parse::<u32>()
                    .map_err(|_| format!("`{s}`: `{n}` is not a number of images per minute"))?,
            ),
        };
        let (key, model) = match who.split_once(':') {
            Some(("*", m)) => (None, Some(m.to_string())),
            Some((k, m)) => (Some(k.to_string()), Some(m.to_string())),
            None => (Some(who.to_string()), None),
        };
        if key.as_deref() == Some("") || model.as_deref() == Some("") {
            return Err(format!("`{s}`: empty key or model"));
        }
        Ok(KeyLimit { key, model, ipm })
    }
}

/// `AK:SK` for `--visual-credentials`.
pub fn parse_credential(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((ak, sk)) if !ak.is_empty() && !sk.is_empty() => Ok((ak.into(), sk.into())),
        _ => Err(format!("`{s}`: expected ACCESS_KEY:SECRET_KEY")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits_parse() {
        let l: KeyLimit = "k1=30".parse().expect("parse");
        assert_eq!(
            (l.key.as_deref(), l.model, l.ipm),
            (Some("k1"), None, Some(30))
        );
        let l: KeyLimit = "k1:doubao-seedream-4-0-250828=unlimited"
            .parse()
            .expect("p");
        assert_eq!(l.model.as_deref(), Some("doubao-seedream-4-0-250828"));
        assert_eq!(l.ipm, None);
        let l: KeyLimit = "*:m=5".parse().expect("parse");
        assert_eq!((l.key, l.model.as_deref()), (None, Some("m")));
        assert!("k1".parse::<KeyLimit>().is_err());
        assert!("k1=x".parse::<KeyLimit>().is_err());
        assert!(parse_credential("AK:SK").is_ok() && parse_credential("AK").is_err());
    }
}
