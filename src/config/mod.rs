//! Configuration from the environment (and a `.env` file), validated once at start. Every
//! variable is documented in `config.env.example`; an invalid value stops the start with a
//! message naming the variable. The older Go server's names keep working.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::models::{Catalog, ModelIds};

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid configuration: {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// Admin keys shorter than this are refused: the admin key is the one secret that opens
/// everything.
pub const MIN_ADMIN_KEY_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// SQLite `synchronous=NORMAL` in WAL mode: survives a process crash (SIGKILL), may lose the
    /// last commits on power loss.
    Normal,
    /// `synchronous=FULL`: fsync on every commit, survives power loss, slower.
    Full,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Where a `worker` process serves `/health`, `/ready` and `/metrics` (on `HOST`); none when
    /// unset.
    pub worker_http_port: Option<u16>,
    /// Base of the URLs this server hands out for images; derived from the bound address when
    /// unset.
    pub public_base_url: Option<String>,
    pub data_dir: PathBuf,
    pub embedded_sync: SyncMode,
    /// Tasks the embedded store keeps in memory for polls (0: none).
    pub task_cache_size: usize,
    /// Bytes those tasks may weigh together (reference images included; 0: none).
    pub task_cache_bytes: usize,
    /// `POLL_CACHE_TTL`: how long a distributed api process answers polls of a task from memory
    /// before reading it again (0: never from memory).
    pub poll_cache_ttl: Duration,
    pub mongo_url: Option<String>,
    /// Database used when `MONGO_URL` names none.
    pub mongo_database: String,
    /// Acknowledge writes only once a majority of the replica set has them.
    pub mongo_majority_writes: bool,
    /// How long a MongoDB operation waits for a reachable server before the API answers 503.
    pub mongo_timeout: Duration,
    /// Lock documents around task writes: `None` = only on FerretDB.
    pub mongo_write_locks: Option<bool>,
    pub redis_url: Option<String>,
    /// Namespace of every Redis key and channel, so several deployments can share one Redis.
    pub redis_prefix: String,
    /// `None` without a pool: sandbox mode against the in-process emulator.
    pub volcengine_api_key: Option<Secret>,
    /// `VOLCENGINE_API_KEYS`: the key pool with each key's weight (empty: the one key above).
    pub volcengine_api_keys: Vec<(Secret, u32)>,
    /// First wait before a refused key (401/403) is tried again; doubles, up to 30 minutes.
    pub provider_key_reprobe: Duration,
    /// The operator's key; auth is off (and only a loopback bind allowed) without it.
    pub admin_api_key: Option<Secret>,
    /// Tasks a user key may submit per minute, on average (a token bucket shared by all api
    /// processes in distributed mode).
    pub user_submit_per_minute: u32,
    /// How many submits a user key may make at once above the average rate.
    pub user_submit_burst: u32,
    /// Scheduled, pending and processing tasks a user may have at a time.
    pub user_max_in_flight: u64,
    /// Images a user key may have per UTC day, generated or asked for by unfinished tasks
    /// (`USER_IMAGES_PER_DAY`); 0: no daily quota.
    pub user_images_per_day: u64,
    /// How long an idempotency key keeps answering with its first task.
    pub idempotency_ttl: Duration,
    /// Open WebSocket connections per API key (per api process).
    pub ws_max_connections_per_key: usize,
    /// Active subscriptions per WebSocket connection.
    pub ws_max_subscriptions: usize,
    /// How long one write to a WebSocket may wait for the client to read before the socket is
    /// dropped: a subscriber that stopped reading must not hold its events for good.
    pub ws_send_timeout: Duration,
    pub volcengine_endpoint: String,
    pub volcengine_region: String,
    pub ai_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub worker_concurrency: usize,
    /// Image downloads (and their writes to the store) in progress at once per process.
    pub download_concurrency: usize,
    pub download_memory_bytes: u64,
    pub max_attempts: u32,
    pub task_lease: Duration,
    pub reconcile_interval: Duration,
    /// How often due scheduled tasks are promoted and overdue tasks failed (one indexed query
    /// each a pass).
    pub sweep_interval: Duration,
    /// How long a task may take from its start to a terminal state unless it asks otherwise.
    pub task_deadline: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// After SIGTERM, how long in-flight provider calls may run before their tasks are released.
    pub shutdown_timeout: Duration,
    pub max_body_bytes: usize,
    /// Longest an HTTP request may take (WebSocket sessions are not limited); 408 beyond.
    pub request_timeout: Duration,
    /// Longest a synchronous `POST /v1/images/*` waits for its task (less when the client says
    /// its own timeout is shorter); the task goes on after it.
    pub openai_max_wait: Duration,
    /// How long such a wait stays silent before the answer is committed as 200 and a space is
    /// sent every few seconds so that proxies do not cut the idle call; `None`: never.
    pub openai_keepalive_after: Option<Duration>,
    /// Host names served besides the loopback ones while auth is off (lowercase, no port).
    pub allowed_hosts: Vec<String>,
    /// A connection that has not sent a request's headers this long after it opened or after
    /// its previous response (an idle keep-alive) is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; `None`: three quarters of the open-files limit.
    pub max_connections: Option<usize>,
    pub subscription_resync: Duration,
    /// Queue-position messages a process sends its pending `taskUpdated` subscriptions a second,
    /// all together: beyond this many waiting subscriptions each is told less often than every
    /// move (see `queue_clock::PositionPace`).
    pub subscription_position_rate: u32,
    /// How often an idle event stream (`/api/v1/tasks/{id}/stream`) sends a comment, so that
    /// proxies and clients do not take it for dead.
    pub sse_keep_alive: Duration,
    pub graphql_max_depth: usize,
    pub graphql_max_complexity: usize,
    /// Fields a GraphQL document may have with its fragments spread (every operation and
    /// fragment counted), checked before it is validated; see `graphql::budget`.
    pub graphql_max_expanded_fields: u64,
    pub graphql_introspection: bool,
    pub sandbox_latency: Duration,
    pub model_ids: ModelIds,
    /// Images per minute allowed per model (the provider's IPM); the model table's value when unset.
    pub provider_ipm: ProviderIpm,
    /// Provider calls in flight per model and worker process.
    pub provider_concurrency: usize,
    /// The window the learned pace counts accepted images over and waits quiet before it
    /// climbs (Ark's images-per-minute limits count over a sliding 60 s).
    pub provider_rate_window: Duration,
    pub webhooks: WebhookConfig,
    pub video: VideoConfig,
    /// Jimeng's visual API (`VOLCENGINE_ACCESS_KEY`, `VOLCENGINE_SECRET_KEY`).
    pub jimeng: JimengConfig,
}

pub const DEFAULT_ENDPOINT: &str = "https://ark.cn-beijing.volces.com";

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            worker_http_port: None,
            public_base_url: None,
            data_dir: PathBuf::from("./data"),
            embedded_sync: SyncMode::Normal,
            task_cache_size: 10_000,
            task_cache_bytes: 32 << 20,
            poll_cache_ttl: Duration::from_secs(1),
            mongo_url: None,
            mongo_database: "volcengine_ai".into(),
            mongo_majority_writes: true,
            mongo_timeout: Duration::from_secs(3),
            mongo_write_locks: None,
            redis_url: None,
            redis_prefix: "vas".into(),
            volcengine_api_key: None,
            volcengine_api_keys: Vec::new(),
            provider_key_reprobe: Duration::from_secs(30),
            admin_api_key: None,
            user_submit_per_minute: 120,
            user_submit_burst: 20,
            user_max_in_flight: 100,
            user_images_per_day: 0,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            ws_max_connections_per_key: 32,
            ws_max_subscriptions: 200,
            ws_send_timeout: Duration::from_secs(10),
            volcengine_endpoint: DEFAULT_ENDPOINT.into(),
            volcengine_region: "cn-beijing".into(),
            ai_timeout: Duration::from_secs(120),
            log_level: "info".into(),
            log_format: LogFormat::Pretty,
            worker_concurrency: 4,
            download_concurrency: 32,
            download_memory_bytes: 256 * 1024 * 1024,
            max_attempts: 5,
            task_lease: Duration::from_secs(60),
            reconcile_interval: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            task_deadline: Duration::from_secs(30 * 60),
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(60),
            openai_max_wait: Duration::from_secs(600),
            openai_keepalive_after: Some(Duration::from_secs(25)),
            allowed_hosts: Vec::new(),
            header_read_timeout: Duration::from_secs(20),
            max_connections: None,
            subscription_resync: Duration::from_secs(15),
            subscription_position_rate: 2_000,
            sse_keep_alive: Duration::from_secs(15),
            graphql_max_depth: 12,
            graphql_max_complexity: 1000,
            graphql_max_expanded_fields: 10_000,
            graphql_introspection: true,
            sandbox_latency: Duration::from_millis(1500),
            model_ids: ModelIds::default(),
            provider_ipm: ProviderIpm::default(),
            provider_concurrency: 32,
            provider_rate_window: Duration::from_secs(60),
            webhooks: WebhookConfig::default(),
            video: VideoConfig::default(),
            jimeng: JimengConfig::default(),
        }
    }
}

struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    /// First non-empty value among a variable and its aliases, with the name that supplied it.
    fn raw(&self, names: &[&'static str]) -> Option<(&'static str, String)> {
        names.iter().find_map(|n| {
            (self.get)(n)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(|v| (*n, v))
        })
    }

    fn string(&self, names: &[&'static str], default: &str) -> String {
        self.raw(names)
            .map(|(_, v)| v)
            .unwrap_or_else(|| default.to_string())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        names: &[&'static str],
        default: T,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.raw(names) {
            None => Ok(default),
            Some((var, value)) => {
                let parsed = value.parse::<T>().map_err(|e| ConfigError {
                    var,
                    value: value.clone(),
                    reason: e.to_string(),
                })?;
                check(&parsed).map_err(|reason| ConfigError { var, value, reason })?;
                Ok(parsed)
            }
        }
    }

    /// One of a few words (compared without regard to case), or `default` when unset.
    fn choice<T: Clone>(
        &self,
        names: &[&'static str],
        default: T,
        choices: &[(&str, T)],
        reason: &str,
    ) -> Result<T, ConfigError> {
        let Some((var, value)) = self.raw(names) else {
            return Ok(default);
        };
        match choices.iter().find(|(w, _)| value.eq_ignore_ascii_case(w)) {
            Some((_, t)) => Ok(t.clone()),
            None => Err(ConfigError {
                var,
                value,
                reason: reason.into(),
            }),
        }
    }

    fn duration(
        &self,
        names: &[&'static str],
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.raw(names) {
            None => Ok(default),
            Some((var, value)) => {
                // Plain numbers are seconds, as the old server read AI_TIMEOUT=30.
                let parsed = match value.parse::<u64>() {
                    Ok(secs) => Ok(Duration::from_secs(secs)),
                    Err(_) => humantime::parse_duration(&value).map_err(|e| e.to_string()),
                };
                let d = parsed.map_err(|reason| ConfigError {
                    var,
                    value: value.clone(),
                    reason: format!("{reason} (use e.g. 30s, 500ms, 2m)"),
                })?;
                if d < min {
                    return Err(ConfigError {
                        var,
                        value,
                        reason: format!("must be at least {}", humantime::format_duration(min)),
                    });
                }
                Ok(d)
            }
        }
    }
}

fn positive<T: PartialOrd + Default>(v: &T) -> Result<(), String> {
    if *v > T::default() {
        Ok(())
    } else {
        Err("must be greater than zero".into())
    }
}

/// Things a process does at once: at least one, at most 1,024.
fn slots(v: &usize) -> Result<(), String> {
    positive(v)?;
    if *v > 1024 {
        return Err("must be at most 1024".into());
    }
    Ok(())
}

fn url(var: &'static str, value: String) -> Result<String, ConfigError> {
    let ok = reqwest::Url::parse(&value)
        .map(|u| u.scheme() == "http" || u.scheme() == "https")
        .unwrap_or(false);
    if ok {
        Ok(value.trim_end_matches('/').to_string())
    } else {
        Err(ConfigError {
            var,
            value,
            reason: "must be an http:// or https:// URL".into(),
        })
    }
}

/// `ALLOWED_HOSTS`: comma-separated DNS names, without scheme or port.
fn host_names(value: &str) -> Result<Vec<String>, String> {
    let names = value
        .split(',')
        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase());
    names
        .filter(|n| !n.is_empty())
        .map(|n| {
            let label =
                |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if n.split('.').all(label) {
                Ok(n)
            } else {
                Err(format!(
                    "{n:?} is not a host name (names only, no scheme or port)"
                ))
            }
        })
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `MONGO_URL` and `REDIS_URL`: both (distributed mode) or neither, each of its scheme.
fn backend_urls(env: &Env<'_>) -> Result<(Option<String>, Option<String>), ConfigError> {
    let mongo_url = env.raw(&["MONGO_URL", "MONGODB_URI"]).map(|(_, v)| v);
    let redis_url = env.raw(&["REDIS_URL"]).map(|(_, v)| v);
    match (&mongo_url, &redis_url) {
        (Some(_), None) => {
            return Err(ConfigError {
                var: "REDIS_URL",
                value: String::new(),
                reason: "distributed mode needs both MONGO_URL and REDIS_URL".into(),
            })
        }
        (None, Some(v)) => {
            return Err(ConfigError {
                var: "MONGO_URL",
                value: v.clone(),
                reason: "distributed mode needs both MONGO_URL and REDIS_URL (REDIS_URL is set)"
                    .into(),
            })
        }
        _ => {}
    }
    if let Some(v) = &mongo_url {
        if !(v.starts_with("mongodb://") || v.starts_with("mongodb+srv://")) {
            return Err(ConfigError {
                var: "MONGO_URL",
                value: v.clone(),
                reason: "must start with mongodb:// or mongodb+srv://".into(),
            });
        }
    }
    if let Some(v) = &redis_url {
        if redis::Client::open(v.as_str()).is_err() {
            return Err(ConfigError {
                var: "REDIS_URL",
                value: v.clone(),
                reason: "must be a redis:// or rediss:// URL".into(),
            });
        }
    }
    Ok((mongo_url, redis_url))
}

/// `ADMIN_API_KEY`: long enough and printable; its value never shows in an error.
fn admin_api_key(env: &Env<'_>) -> Result<Option<Secret>, ConfigError> {
    match env.raw(&["ADMIN_API_KEY"]) {
        None => Ok(None),
        Some((var, v)) if v.trim().chars().count() < MIN_ADMIN_KEY_LEN => Err(ConfigError {
            var,
            value: "[redacted]".into(),
            reason: format!("must be at least {MIN_ADMIN_KEY_LEN} characters"),
        }),
        Some((var, v)) if !v.trim().chars().all(|c| c.is_ascii_graphic()) => Err(ConfigError {
            var,
            value: "[redacted]".into(),
            reason: "must be printable ASCII without spaces".into(),
        }),
        Some((_, v)) => Ok(Some(Secret(v.trim().to_string()))),
    }
}

impl Config {
    /// Reads the process environment, after loading `.env` from the working directory if present
    /// (real environment variables win over the file).
    pub fn from_process_env() -> Result<Config, ConfigError> {
        // A missing .env is the normal case; a malformed one is reported below as unset values.
        let _ = dotenvy::dotenv();
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env { get };
        let mut c = Config::default();
        c.read_logs(&env)?;
        c.read_server(&env)?;
        c.read_storage(&env)?;
        c.read_provider(&env)?;
        c.read_worker(&env)?;
        c.read_limits(&env)?;
        c.webhooks = webhooks::read(&env, c.webhooks.clone())?;
        c.video = video::read(&env, c.video.clone())?;
        c.jimeng = jimeng::read(&env, c.jimeng.clone())?;
        Ok(c)
    }

    /// `LOG_*`.
    fn read_logs(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        let formats = [
            ("json", LogFormat::Json),
            ("pretty", LogFormat::Pretty),
            ("text", LogFormat::Pretty),
        ];
        self.log_format = env.choice(
            &["LOG_FORMAT"],
            self.log_format,
            &formats,
            "must be json or pretty",
        )?;
        let log_level = env.string(&["LOG_LEVEL", "RUST_LOG"], &self.log_level);
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(ConfigError {
                var: "LOG_LEVEL",
                value: log_level,
                reason: "must be a level (error, warn, info, debug, trace) or a filter".into(),
            });
        }
        self.log_level = log_level;
        Ok(())
    }

    /// Where and how the HTTP server listens and what it hands out.
    fn read_server(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        self.host = env.parse(&["HOST"], self.host, |_| Ok(()))?;
        self.port = env.parse(&["PORT"], self.port, |_| Ok(()))?;
        self.worker_http_port = match env.raw(&["WORKER_HTTP_PORT"]) {
            None => None,
            Some((var, value)) => Some(value.trim().parse().map_err(|_| ConfigError {
                var,
                value,
                reason: "must be a port number".into(),
            })?),
        };
        if let Some((var, v)) = env.raw(&["PUBLIC_BASE_URL"]) {
            self.public_base_url = Some(url(var, v)?);
        }
        self.max_body_bytes = env.parse(&["MAX_BODY_BYTES"], self.max_body_bytes, |v| {
            if *v < 1024 {
                Err("must be at least 1024".into())
            } else {
                Ok(())
            }
        })?;
        self.request_timeout = env.duration(&["REQUEST_TIMEOUT"], self.request_timeout, ms(100))?;
        self.openai_max_wait = env.duration(&["OPENAI_MAX_WAIT"], self.openai_max_wait, ms(100))?;
        if let Some((var, value)) = env.raw(&["OPENAI_KEEPALIVE_AFTER"]) {
            self.openai_keepalive_after = if value.trim().eq_ignore_ascii_case("off") {
                None
            } else {
                Some(env.duration(&[var], Duration::ZERO, ms(100))?)
            };
        }
        if let Some((var, value)) = env.raw(&["ALLOWED_HOSTS"]) {
            self.allowed_hosts =
                host_names(&value).map_err(|reason| ConfigError { var, value, reason })?;
        }
        self.shutdown_timeout =
            env.duration(&["SHUTDOWN_TIMEOUT"], self.shutdown_timeout, ms(0))?;
        let (var, timeout) = (["HEADER_READ_TIMEOUT"], self.header_read_timeout);
        self.header_read_timeout = env.duration(&var, timeout, ms(100))?;
        if self.header_read_timeout > Duration::from_secs(30) {
            return Err(ConfigError {
                var: var[0],
                value: humantime::format_duration(self.header_read_timeout).to_string(),
                reason: "must be at most 30s".into(),
            });
        }
        // 0 stands for unset here: a value given must be positive.
        let max = env.parse(&["MAX_CONNECTIONS"], 0usize, positive)?;
        self.max_connections = (max > 0).then_some(max);
        Ok(())
    }

    /// The embedded store, or MongoDB and Redis (both, or neither).
    fn read_storage(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        self.data_dir = PathBuf::from(env.string(&["DATA_DIR"], "./data"));
        let syncs = [("normal", SyncMode::Normal), ("full", SyncMode::Full)];
        self.embedded_sync = env.choice(
            &["EMBEDDED_SYNC"],
            self.embedded_sync,
            &syncs,
            "must be normal or full",
        )?;
        self.task_cache_size = env.parse(&["TASK_CACHE_SIZE"], self.task_cache_size, |v| {
            if *v > 10_000_000 {
                return Err("must be at most 10000000".into());
            }
            Ok(())
        })?;
        self.task_cache_bytes =
            env.parse(&["TASK_CACHE_BYTES"], self.task_cache_bytes, |_| Ok(()))?;
        self.poll_cache_ttl = env.duration(&["POLL_CACHE_TTL"], self.poll_cache_ttl, ms(0))?;
        (self.mongo_url, self.redis_url) = backend_urls(env)?;
        self.mongo_database = env.string(&["MONGO_DATABASE"], &self.mongo_database);
        let concerns = [("majority", true), ("1", false)];
        self.mongo_majority_writes = env.choice(
            &["MONGO_WRITE_CONCERN"],
            self.mongo_majority_writes,
            &concerns,
            "must be majority or 1",
        )?;
        self.mongo_timeout = env.duration(&["MONGO_TIMEOUT"], self.mongo_timeout, ms(100))?;
        let locks = [("auto", None), ("on", Some(true)), ("off", Some(false))];
        self.mongo_write_locks = env.choice(
            &["MONGO_WRITE_LOCKS"],
            self.mongo_write_locks,
            &locks,
            "must be auto, on or off",
        )?;
        let redis_prefix = env.string(&["REDIS_KEY_PREFIX"], &self.redis_prefix);
        if redis_prefix.contains(char::is_whitespace) || redis_prefix.contains('*') {
            return Err(ConfigError {
                var: "REDIS_KEY_PREFIX",
                value: redis_prefix,
                reason: "must not contain spaces or *".into(),
            });
        }
        self.redis_prefix = redis_prefix;
        Ok(())
    }

    /// Volcengine (or the sandbox emulator) and its models.
    fn read_provider(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        self.volcengine_api_key = env
            .raw(&["VOLCENGINE_API_KEY", "ARK_API_KEY"])
            .map(|(_, v)| Secret(v));
        key_pool::read(self, env)?;
        if let Some((var, v)) = env.raw(&["VOLCENGINE_ENDPOINT", "ARK_BASE_URL"]) {
            self.volcengine_endpoint = url(var, v)?;
        }
        self.volcengine_region = env.string(&["VOLCENGINE_REGION"], &self.volcengine_region);
        self.ai_timeout = env.duration(&["AI_TIMEOUT"], self.ai_timeout, ms(100))?;
        self.sandbox_latency = env.duration(&["SANDBOX_LATENCY"], self.sandbox_latency, ms(0))?;
        let defaults = ModelIds::default();
        self.model_ids = ModelIds {
            seedream_3_0: env.string(&["MODEL_ID_SEEDREAM_3_0"], &defaults.seedream_3_0),
            seededit_3_0: env.string(&["MODEL_ID_SEEDEDIT_3_0"], &defaults.seededit_3_0),
            seedream_4_0: env.string(&["MODEL_ID_SEEDREAM_4_0"], &defaults.seedream_4_0),
            seedream_4_5: env.string(&["MODEL_ID_SEEDREAM_4_5"], &defaults.seedream_4_5),
        };
        if let Some((var, value)) = env.raw(&["PROVIDER_IPM"]) {
            let catalog = Catalog::new(&self.model_ids);
            self.provider_ipm = ProviderIpm::parse(&value, &catalog)
                .map_err(|reason| ConfigError { var, value, reason })?;
        }
        self.provider_concurrency = env.parse(
            &["PROVIDER_CONCURRENCY"],
            self.provider_concurrency,
            positive,
        )?;
        self.provider_rate_window = env.duration(
            &["PROVIDER_RATE_WINDOW"],
            self.provider_rate_window,
            ms(100),
        )?;
        Ok(())
    }

    /// The worker: how much at once, leases, retries.
    fn read_worker(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        self.worker_concurrency =
            env.parse(&["WORKER_CONCURRENCY"], self.worker_concurrency, slots)?;
        self.download_concurrency =
            env.parse(&["DOWNLOAD_CONCURRENCY"], self.download_concurrency, slots)?;
        self.download_memory_bytes = env.parse(
            &["DOWNLOAD_MEMORY_BYTES"],
            self.download_memory_bytes,
            |v| {
                if *v < 64 * 1024 {
                    Err("must be at least 65536 (64 KiB)".into())
                } else {
                    Ok(())
                }
            },
        )?;
        self.max_attempts = env.parse(&["TASK_MAX_ATTEMPTS"], self.max_attempts, positive)?;
        self.task_lease = env.duration(&["TASK_LEASE"], self.task_lease, ms(500))?;
        self.reconcile_interval =
            env.duration(&["RECONCILE_INTERVAL"], self.reconcile_interval, ms(10))?;
        self.sweep_interval = env.duration(&["SWEEP_INTERVAL"], self.sweep_interval, ms(10))?;
        self.task_deadline = env.duration(
            &["TASK_DEADLINE"],
            self.task_deadline,
            Duration::from_secs(1),
        )?;
        let max = Duration::from_secs(crate::domain::new_task::MAX_DEADLINE_SECS);
        if self.task_deadline > max {
            return Err(ConfigError {
                var: "TASK_DEADLINE",
                value: humantime::format_duration(self.task_deadline).to_string(),
                reason: "must be at most 7 days".into(),
            });
        }
        self.retry_base_delay =
            env.duration(&["RETRY_BASE_DELAY"], self.retry_base_delay, ms(1))?;
        self.retry_max_delay = env.duration(&["RETRY_MAX_DELAY"], self.retry_max_delay, ms(1))?;
        if self.retry_max_delay < self.retry_base_delay {
            return Err(ConfigError {
                var: "RETRY_MAX_DELAY",
                value: humantime::format_duration(self.retry_max_delay).to_string(),
                reason: "must not be shorter than RETRY_BASE_DELAY".into(),
            });
        }
        Ok(())
    }

    /// Who may call, and how much: the admin key, per-user quotas, WebSocket and GraphQL limits.
    fn read_limits(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        self.admin_api_key = admin_api_key(env)?;
        self.user_submit_per_minute = env.parse(
            &["USER_SUBMIT_PER_MINUTE"],
            self.user_submit_per_minute,
            positive,
        )?;
        self.user_submit_burst =
            env.parse(&["USER_SUBMIT_BURST"], self.user_submit_burst, positive)?;
        self.user_max_in_flight =
            env.parse(&["USER_MAX_IN_FLIGHT"], self.user_max_in_flight, positive)?;
        self.user_images_per_day = env.parse(
            &["USER_IMAGES_PER_DAY"],
            self.user_images_per_day,
            |_: &u64| Ok(()),
        )?;
        self.idempotency_ttl =
            env.duration(&["IDEMPOTENCY_TTL"], self.idempotency_ttl, ms(1000))?;
        self.ws_max_connections_per_key = env.parse(
            &["WS_MAX_CONNECTIONS_PER_KEY"],
            self.ws_max_connections_per_key,
            positive,
        )?;
        self.ws_max_subscriptions = env.parse(
            &["WS_MAX_SUBSCRIPTIONS"],
            self.ws_max_subscriptions,
            positive,
        )?;
        self.subscription_resync =
            env.duration(&["SUBSCRIPTION_RESYNC"], self.subscription_resync, ms(10))?;
        self.subscription_position_rate = env.parse(
            &["SUBSCRIPTION_POSITION_RATE"],
            self.subscription_position_rate,
            positive,
        )?;
        self.sse_keep_alive = env.duration(&["SSE_KEEP_ALIVE"], self.sse_keep_alive, ms(100))?;
        self.ws_send_timeout = env.duration(&["WS_SEND_TIMEOUT"], self.ws_send_timeout, ms(100))?;
        self.graphql_max_depth =
            env.parse(&["GRAPHQL_MAX_DEPTH"], self.graphql_max_depth, positive)?;
        self.graphql_max_complexity = env.parse(
            &["GRAPHQL_MAX_COMPLEXITY"],
            self.graphql_max_complexity,
            positive,
        )?;
        self.graphql_max_expanded_fields = env.parse(
            &["GRAPHQL_MAX_EXPANDED_FIELDS"],
            self.graphql_max_expanded_fields,
            positive,
        )?;
        self.graphql_introspection = env.parse(
            &["GRAPHQL_INTROSPECTION"],
            self.graphql_introspection,
            |_| Ok(()),
        )?;
        Ok(())
    }

    pub fn is_distributed(&self) -> bool {
        self.mongo_url.is_some() || self.redis_url.is_some()
    }

    pub fn is_sandbox(&self) -> bool {
        self.volcengine_api_key.is_none() && self.volcengine_api_keys.is_empty()
    }
}

mod jimeng;
mod key_pool;
mod provider_ipm;
mod secret;
#[cfg(test)]
mod tests;
mod video;
mod webhooks;

pub use jimeng::JimengConfig;
pub use provider_ipm::ProviderIpm;
pub use secret::Secret;
pub use video::VideoConfig;
pub use webhooks::{check_secret, WebhookConfig};
