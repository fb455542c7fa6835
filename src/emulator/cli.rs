//! The `emulator` subcommand's flags (each with an `EMULATOR_*` variable), turned into an
//! [`EmulatorConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use super::config::{parse_credential, EmulatorConfig, KeyLimit, VideoConfig, VisualConfig};
use crate::domain::models::ModelIds;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(clap::Args, Debug)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, env = "EMULATOR_ADDR", default_value = "127.0.0.1:9090")]
    pub addr: SocketAddr,
    /// Time to generate an image, e.g. 2s or 300ms.
    #[arg(long, env = "EMULATOR_LATENCY", default_value = "1500ms", value_parser = duration)]
    latency: Duration,
    /// Extra random latency, uniform from zero to this.
    #[arg(long, env = "EMULATOR_LATENCY_JITTER", default_value = "0s", value_parser = duration)]
    latency_jitter: Duration,
    /// Only accept this API key (default: any non-empty key).
    #[arg(long, env = "EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// More API keys accepted besides --api-key (a key pool), comma-separated or repeated.
    #[arg(long = "api-keys", env = "EMULATOR_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// A key always answered 401 AuthenticationError (repeatable; POST /emulator/limits
    /// {"key": K, "bad": false} restores it).
    #[arg(long = "bad-key", env = "EMULATOR_BAD_KEYS", value_delimiter = ',')]
    bad_keys: Vec<String>,
    /// Images per minute per key and model, answered with 429 ModelAccountIpmRateLimitExceeded
    /// beyond; the default for every key.
    #[arg(long, env = "EMULATOR_IPM")]
    ipm: Option<u32>,
    /// Images per minute of one key (KEY=N), key and model (KEY:MODEL=N) or model (*:MODEL=N);
    /// N may be `unlimited`. Repeatable.
    #[arg(long = "key-ipm", env = "EMULATOR_KEY_IPM", value_delimiter = ',')]
    key_ipm: Vec<KeyLimit>,
    /// Requests generating at once per model, answered with 429 InflightBatchsizeExceeded beyond.
    #[arg(long, env = "EMULATOR_MAX_CONCURRENCY")]
    max_concurrency: Option<usize>,
    /// Send Retry-After with this many seconds on 429 answers.
    #[arg(long, env = "EMULATOR_RETRY_AFTER", value_parser = duration)]
    retry_after: Option<Duration>,
    /// Share of requests that never answer (0 to 1), to exercise client timeouts.
    #[arg(long, env = "EMULATOR_HANG_RATE", default_value_t = 0.0)]
    hang_rate: f64,
    /// Share of requests failing with 500 InternalServiceError (0 to 1).
    #[arg(long, env = "EMULATOR_FAIL_RATE", default_value_t = 0.0)]
    fail_rate: f64,
    /// The first N calls of each distinct prompt fail with 500 InternalServiceError.
    #[arg(long, env = "EMULATOR_FAIL_FIRST", default_value_t = 0)]
    fail_first: u32,
    /// The first N generation calls of all answer 500 InternalServiceError.
    #[arg(long, env = "EMULATOR_FAIL_CALLS_FIRST", default_value_t = 0)]
    fail_calls_first: u32,
    /// Length of the images-per-minute window (Ark's: 60 s).
    #[arg(long, env = "EMULATOR_IPM_WINDOW", default_value = "60s", value_parser = duration)]
    ipm_window: Duration,
    /// The first N downloads of each generated image answer 503 ServiceUnavailable.
    #[arg(long, env = "EMULATOR_FAIL_DOWNLOADS_FIRST", default_value_t = 0)]
    fail_downloads_first: u32,
    /// How long each image download waits before its bytes are sent (a CDN's time to first byte).
    #[arg(long, env = "EMULATOR_DOWNLOAD_LATENCY", default_value = "0s", value_parser = duration)]
    download_latency: Duration,
    /// Share of requests answered 429 ServerOverloaded (0 to 1).
    #[arg(long, env = "EMULATOR_OVERLOAD_RATE", default_value_t = 0.0)]
    overload_rate: f64,
    /// Prompts containing this word are rejected as sensitive input (repeatable).
    #[arg(
        long = "sensitive-word",
        env = "EMULATOR_SENSITIVE_WORDS",
        value_delimiter = ',',
        default_value = "sensitive-content"
    )]
    sensitive_words: Vec<String>,
    /// Video and Jimeng tasks whose prompt contains this word fail output moderation.
    #[arg(
        long = "output-sensitive-word",
        env = "EMULATOR_OUTPUT_SENSITIVE_WORDS",
        value_delimiter = ',',
        default_value = "sensitive-output"
    )]
    output_sensitive_words: Vec<String>,
    /// Video and Jimeng tasks whose prompt contains this word end `expired`.
    #[arg(
        long = "expire-word",
        env = "EMULATOR_EXPIRE_WORDS",
        value_delimiter = ',',
        default_value = "expire-task"
    )]
    expire_words: Vec<String>,
    /// Share of video and Jimeng tasks failing output moderation (0 to 1).
    #[arg(long, env = "EMULATOR_TASK_FAIL_RATE", default_value_t = 0.0)]
    task_fail_rate: f64,
    /// Share of video and Jimeng tasks ending expired (0 to 1).
    #[arg(long, env = "EMULATOR_TASK_EXPIRE_RATE", default_value_t = 0.0)]
    task_expire_rate: f64,
    /// Lifetime of generated image URLs.
    #[arg(long, env = "EMULATOR_URL_TTL", default_value = "24h", value_parser = duration)]
    url_ttl: Duration,
    /// Render one picture and one video per size and serve it for every download (load tests:
    /// keeps the rendering off the cores of the service under test).
    #[arg(long, env = "EMULATOR_REUSE_IMAGES")]
    reuse_images: bool,
    #[command(flatten)]
    video: VideoArgs,
    #[command(flatten)]
    visual: VisualArgs,
}

#[derive(clap::Args, Debug)]
struct VideoArgs {
    /// Least time a video task stays queued.
    #[arg(long, env = "EMULATOR_VIDEO_QUEUE_TIME", default_value = "1s", value_parser = duration)]
    video_queue_time: Duration,
    /// Time a video task runs.
    #[arg(long, env = "EMULATOR_VIDEO_RUN_TIME", default_value = "10s", value_parser = duration)]
    video_run_time: Duration,
    /// Extra random run time, uniform from zero to this.
    #[arg(long, env = "EMULATOR_VIDEO_RUN_JITTER", default_value = "0s", value_parser = duration)]
    video_run_jitter: Duration,
    /// Video tasks running at once per key and model (default: the model's, 10 or 5; 0: no limit).
    #[arg(long, env = "EMULATOR_VIDEO_CONCURRENCY")]
    video_concurrency: Option<u32>,
    /// Video task creates per minute per key and model (default: the model's, 600 or 300; 0: no
    /// limit), answered with 429 ModelAccountRpmRateLimitExceeded beyond.
    #[arg(long, env = "EMULATOR_VIDEO_RPM")]
    video_rpm: Option<u32>,
    /// Queued video tasks per key and model beyond which creates get 429 QuotaExceeded.
    #[arg(long, env = "EMULATOR_VIDEO_MAX_QUEUED")]
    video_max_queued: Option<usize>,
    /// GET-a-task calls per second per key, 429 AccountRateLimitExceeded beyond (0: no limit).
    #[arg(long, env = "EMULATOR_VIDEO_GET_QPS", default_value_t = 20)]
    video_get_qps: u32,
    /// List calls per second per key (0: no limit).
    #[arg(long, env = "EMULATOR_VIDEO_LIST_QPS", default_value_t = 1)]
    video_list_qps: u32,
    /// DELETE calls per second per key (0: no limit).
    #[arg(long, env = "EMULATOR_VIDEO_DELETE_QPS", default_value_t = 20)]
    video_delete_qps: u32,
    /// Lifetime of video URLs.
    #[arg(long, env = "EMULATOR_VIDEO_URL_TTL", default_value = "24h", value_parser = duration)]
    video_url_ttl: Duration,
    /// A final callback not answered 2xx within this is re-sent …
    #[arg(long, env = "EMULATOR_VIDEO_CALLBACK_TIMEOUT", default_value = "5s", value_parser = duration)]
    video_callback_timeout: Duration,
    /// … up to this many more times.
    #[arg(long, env = "EMULATOR_VIDEO_CALLBACK_RETRIES", default_value_t = 3)]
    video_callback_retries: u32,
}

#[derive(clap::Args, Debug)]
struct VisualArgs {
    /// ACCESS_KEY:SECRET_KEY pairs the visual API accepts (default: AKLTemulator:emulator-secret).
    #[arg(long = "visual-credentials", env = "EMULATOR_VISUAL_CREDENTIALS", value_delimiter = ',', value_parser = parse_credential)]
    visual_credentials: Vec<(String, String)>,
    /// Largest X-Date skew accepted (400 InvalidTimestamp beyond).
    #[arg(long, env = "EMULATOR_VISUAL_MAX_SKEW", default_value = "15m", value_parser = duration)]
    visual_max_skew: Duration,
    /// Time a Jimeng task is in_queue.
    #[arg(long, env = "EMULATOR_VISUAL_QUEUE_TIME", default_value = "1s", value_parser = duration)]
    visual_queue_time: Duration,
    /// Time a Jimeng image task is generating.
    #[arg(long, env = "EMULATOR_VISUAL_IMAGE_TIME", default_value = "5s", value_parser = duration)]
    visual_image_time: Duration,
    /// Time a Jimeng video task is generating.
    #[arg(long, env = "EMULATOR_VISUAL_VIDEO_TIME", default_value = "15s", value_parser = duration)]
    visual_video_time: Duration,
    /// Calls per second per access key and req_key (429 50429 beyond; 0: no limit).
    #[arg(long, env = "EMULATOR_VISUAL_QPS", default_value_t = 0)]
    visual_qps: u32,
    /// Unfinished tasks per access key and req_key (429 50430 beyond; 0: no limit).
    #[arg(long, env = "EMULATOR_VISUAL_CONCURRENCY", default_value_t = 0)]
    visual_concurrency: u32,
    /// Lifetime of Jimeng image URLs.
    #[arg(long, env = "EMULATOR_VISUAL_IMAGE_URL_TTL", default_value = "24h", value_parser = duration)]
    visual_image_url_ttl: Duration,
    /// Lifetime of Jimeng video URLs.
    #[arg(long, env = "EMULATOR_VISUAL_VIDEO_URL_TTL", default_value = "1h", value_parser = duration)]
    visual_video_url_ttl: Duration,
}

impl EmulatorArgs {
    pub fn config(self, model_ids: ModelIds) -> EmulatorConfig {
        let v = self.video;
        let c = self.visual;
        EmulatorConfig {
            latency: self.latency,
            latency_jitter: self.latency_jitter,
            api_key: self.api_key,
            api_keys: self.api_keys,
            bad_keys: self.bad_keys,
            images_per_minute: self.ipm,
            key_ipm: self.key_ipm,
            ipm_window: self.ipm_window,
            max_concurrency: self.max_concurrency,
            retry_after: self.retry_after,
            hang_rate: self.hang_rate,
            fail_rate: self.fail_rate,
            overload_rate: self.overload_rate,
            fail_first: self.fail_first,
            fail_calls_first: self.fail_calls_first,
            fail_downloads_first: self.fail_downloads_first,
            download_latency: self.download_latency,
            sensitive_words: self.sensitive_words,
            output_sensitive_words: self.output_sensitive_words,
            expire_words: self.expire_words,
            task_fail_rate: self.task_fail_rate,
            task_expire_rate: self.task_expire_rate,
            url_ttl: self.url_ttl,
            model_ids,
            reuse_images: self.reuse_images,
            video: VideoConfig {
                queue_time: v.video_queue_time,
                run_time: v.video_run_time,
                run_jitter: v.video_run_jitter,
                concurrency: v.video_concurrency,
                rpm: v.video_rpm,
                rpm_window: Duration::from_secs(60),
                max_queued: v.video_max_queued,
                get_qps: v.video_get_qps,
                list_qps: v.video_list_qps,
                delete_qps: v.video_delete_qps,
                url_ttl: v.video_url_ttl,
                callback_timeout: v.video_callback_timeout,
                callback_retries: v.video_callback_retries,
                ..VideoConfig::default()
            },
            visual: VisualConfig {
                credentials: if c.visual_credentials.is_empty() {
                    VisualConfig::default().credentials
                } else {
                    c.visual_credentials
                },
                max_skew: c.visual_max_skew,
                queue_time: c.visual_queue_time,
                image_time: c.visual_image_time,
                video_time: c.visual_video_time,
                qps: c.visual_qps,
                concurrency: c.visual_concurrency,
                image_url_ttl: c.visual_image_url_ttl,
                video_url_ttl: c.visual_video_url_ttl,
                ..VisualConfig::default()
            },
        }
    }
}
