//! Assembles a running service from configuration: picks the backends, the provider (Ark or the
//! sandbox emulator), starts the HTTP server and the worker, and stops them gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::emulator::{self, EmulatorConfig};
use crate::events::{memory::MemoryEvents, redis::RedisEvents, Events};
use crate::graphql;
use crate::http;
use crate::provider::ark_video::ArkVideoClient;
use crate::provider::jimeng::JimengClient;
use crate::provider::keys::KeyPool;
use crate::provider::limiter::{MemoryPacer, Pacer, ProviderLimiter, RedisPacer};
use crate::provider::routed::Routed;
use crate::provider::volc_sign::Credentials;
use crate::provider::{ark::ArkClient, ImageProvider, ProviderError, VideoProvider};
use crate::queue::{memory::MemoryQueue, redis::RedisQueue, Queue};
use crate::service::Service;
use crate::state::AppState;
use crate::store::mongo::{MongoOptions, MongoStore};
use crate::store::{sqlite::SqliteStore, Store, StoreError, TaskCacheBounds};
use crate::worker::video::VideoWorker;
use crate::worker::{Handles, Worker, WorkerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API and worker in one process.
    Serve,
    Api,
    Worker,
}

impl Role {
    fn runs_api(self) -> bool {
        matches!(self, Role::Serve | Role::Api)
    }
    fn runs_worker(self) -> bool {
        matches!(self, Role::Serve | Role::Worker)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the provider client: {0}")]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// MongoDB or Redis could not be reached or set up at start.
    #[error("{0}")]
    Backend(String),
    /// The caller asked for something that cannot run (a role without what it needs).
    #[error("{0}")]
    Setup(String),
}

/// The three backends behind the traits.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub events: Arc<dyn Events>,
    /// Stops the backends' own background work (the Redis event relay).
    pub background: CancellationToken,
    /// Schedule of the provider rate limiter (shared through Redis in distributed mode).
    pub pacer: Arc<dyn Pacer>,
}

impl Backends {
    /// The embedded default: SQLite in the data folder, in-process queue and events.
    pub fn embedded(config: &Config) -> Result<Backends, StartError> {
        // The recorder first: the store's task cache keeps its gauges' handles, and a handle
        // taken before the recorder is installed records nowhere.
        let _ = crate::observability::handle();
        let store = SqliteStore::open(
            &config.data_dir,
            config.embedded_sync,
            TaskCacheBounds {
                tasks: config.task_cache_size,
                bytes: config.task_cache_bytes,
            },
        )?;
        tracing::info!(path = %store.path().display(), "embedded store opened");
        Ok(Backends {
            store: Arc::new(store),
            queue: Arc::new(MemoryQueue::new()),
            events: Arc::new(MemoryEvents::new()),
            background: CancellationToken::new(),
            pacer: Arc::new(MemoryPacer::default()),
        })
    }

    /// The distributed backends: MongoDB, a Redis Streams queue, Redis pub/sub events.
    pub async fn distributed(
        config: &Config,
        mongo_url: &str,
        redis_url: &str,
    ) -> Result<Backends, StartError> {
        // The recorder first: the event relay keeps its histogram's handle.
        let _ = crate::observability::handle();
        let store = MongoStore::connect(MongoOptions {
            url: mongo_url,
            database: &config.mongo_database,
            majority_writes: config.mongo_majority_writes,
            timeout: config.mongo_timeout,
            write_locks: config.mongo_write_locks,
        })
        .await
        .map_err(|e| StartError::Backend(format!("MongoDB at MONGO_URL: {e}")))?;
        tracing::info!(database = store.database_name(), "MongoDB store connected");
        let client = redis::Client::open(redis_url)
            .map_err(|e| StartError::Backend(format!("REDIS_URL: {e}")))?;
        let consumer = format!("consumer-{}", uuid::Uuid::new_v4());
        let queue = RedisQueue::connect(
            &client,
            &config.redis_prefix,
            &consumer,
            config.task_lease * 2,
        )
        .await
        .map_err(|e| StartError::Backend(format!("Redis at REDIS_URL: {e}")))?;
        let pacer = RedisPacer::new(
            client
                .get_connection_manager()
                .await
                .map_err(|e| StartError::Backend(format!("Redis at REDIS_URL: {e}")))?,
            &config.redis_prefix,
        );
        let background = CancellationToken::new();
        let events = RedisEvents::connect(client, &config.redis_prefix, background.clone())
            .await
            .map_err(|e| StartError::Backend(format!("Redis at REDIS_URL: {e}")))?;
        tracing::info!(prefix = %config.redis_prefix, "Redis queue and events connected");
        Ok(Backends {
            store: Arc::new(store),
            queue: Arc::new(queue),
            events: Arc::new(events),
            background,
            pacer: Arc::new(pacer),
        })
    }

    pub async fn for_config(config: &Config) -> Result<Backends, StartError> {
        match (&config.mongo_url, &config.redis_url) {
            (Some(m), Some(r)) => Backends::distributed(config, m, r).await,
            _ => Backends::embedded(config),
        }
    }
}

pub struct Running {
    /// Where the HTTP server listens (`None` for a worker-only process).
    pub addr: Option<SocketAddr>,
    pub public_base: String,
    pub provider_mode: &'static str,
    pub service: Arc<Service>,
    /// The in-process emulator of sandbox mode.
    pub emulator: Option<emulator::Emulator>,
    shutdown: CancellationToken,
    background: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    workers: Option<(Arc<Worker>, tokio::task::JoinSet<()>)>,
    /// The worker's own threads when it shares the process with the API (see `worker_runtime`).
    worker_runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which async code must not do.
        if let Some(rt) = self.worker_runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// In one process with the API, the worker runs on threads of its own, at a lower scheduling
/// priority. On one shared runtime a burst of completions (downloads, image writes) queued ahead
/// of the API's requests and subscription messages; as separate, nicer threads the worker gets
/// the cores the API leaves idle, and a request or a task update waiting to go out gets a core
/// at once. Throughput is the provider's anyway (a few images a second).
fn worker_runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("worker")
        .on_thread_start(crate::sys::lower_thread_priority)
        .enable_all()
        .build()
}

impl Running {
    /// Stops taking requests and work, lets in-flight work finish up to `grace`, then returns.
    /// Tasks still running then stay `processing` and are recovered by the next start.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        if let Some((worker, mut set)) = self.workers.take() {
            let drained = tokio::time::timeout_at(deadline, async {
                while set.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                set.abort_all();
                while set.join_next().await.is_some() {}
                let released = worker.release_held().await;
                tracing::warn!(
                    released,
                    "shutdown deadline reached; abandoned provider calls and released their tasks"
                );
            }
        }
        if let Some(server) = self.server.take() {
            if tokio::time::timeout_at(deadline, server).await.is_err() {
                tracing::warn!("open connections did not close before the deadline");
            }
        }
        self.background.cancel();
    }

    /// Waits until the shutdown token is cancelled elsewhere (signal handling in `main`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The image and the video provider clients, and the emulator they speak to in sandbox mode.
type Providers = (
    Arc<dyn ImageProvider>,
    Arc<dyn VideoProvider>,
    Option<emulator::Emulator>,
);

async fn provider(config: &Config, shutdown: &CancellationToken) -> Result<Providers, StartError> {
    // Video calls use one key, the pool's first: a video task is tracked and cancelled at the
    // provider with the key that submitted it, and Ark's task ids belong to one account.
    let video_key = key_pool_entries(config)
        .into_iter()
        .next()
        .map_or_else(|| "sandbox".to_string(), |(k, _)| k);
    if !config.is_sandbox() {
        let endpoint = &config.volcengine_endpoint;
        let image = ArkClient::new(endpoint, config.ai_timeout, "ark")?;
        let video = ArkVideoClient::new(endpoint, &video_key, config.ai_timeout)?;
        let jimeng = jimeng(config, None)?;
        return Ok((Arc::new(image), routed(video, jimeng), None));
    }
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let emu = emulator::serve(
        EmulatorConfig {
            latency: config.sandbox_latency,
            model_ids: config.model_ids.clone(),
            ..EmulatorConfig::default()
        },
        listener,
        shutdown.clone(),
    )
    .await?;
    let endpoint = format!("http://{addr}");
    let image = ArkClient::new(&endpoint, config.ai_timeout, "sandbox")?;
    let video = ArkVideoClient::new(&endpoint, &video_key, config.ai_timeout)?;
    let jimeng = jimeng(config, Some(&endpoint))?;
    Ok((Arc::new(image), routed(video, jimeng), Some(emu)))
}

/// Ark's video tasks and Jimeng's behind one seam, by model family.
fn routed(ark: ArkVideoClient, jimeng: Option<JimengClient>) -> Arc<dyn VideoProvider> {
    let jimeng = jimeng.map(|j| Arc::new(j) as Arc<dyn VideoProvider>);
    Arc::new(Routed::new(Arc::new(ark), jimeng))
}

/// The visual API's client: with the configured key pair, else (sandbox mode) the emulator's
/// visual API with its sandbox credentials, else none.
fn jimeng(config: &Config, sandbox: Option<&str>) -> Result<Option<JimengClient>, StartError> {
    let (endpoint, creds) = match (&config.jimeng.keys, sandbox) {
        (Some((ak, sk)), _) => (
            config.jimeng.endpoint.as_str(),
            Credentials::visual(ak.as_str(), sk.expose()),
        ),
        (None, Some(emulator)) => (
            emulator,
            Credentials::visual(
                emulator::config::SANDBOX_ACCESS_KEY,
                emulator::config::SANDBOX_SECRET_KEY,
            ),
        ),
        (None, None) => return Ok(None),
    };
    Ok(Some(JimengClient::new(endpoint, creds, config.ai_timeout)?))
}

/// The provider pace of every key and model, shared by this process's worker and `/ready`.
fn limiter(
    config: &Config,
    catalog: &crate::domain::models::Catalog,
    pacer: Arc<dyn Pacer>,
) -> Arc<ProviderLimiter> {
    let submits = crate::domain::video::VideoCatalog::new()
        .all()
        .iter()
        .map(|m| {
            let per_minute = match config.video.submits_per_minute {
                0 => m.submits_per_minute,
                n => n,
            };
            (m.id.clone(), per_minute)
        })
        .collect::<Vec<_>>();
    Arc::new(
        ProviderLimiter::new(
            catalog,
            &config.provider_ipm,
            config.provider_concurrency,
            pacer,
            config.provider_rate_window,
        )
        .with_submits(submits),
    )
}

/// The provider API keys with their weights: `VOLCENGINE_API_KEYS`, else the one
/// `VOLCENGINE_API_KEY`, else the sandbox emulator's.
fn key_pool_entries(config: &Config) -> Vec<(String, u32)> {
    if config.volcengine_api_keys.is_empty() {
        let key = config
            .volcengine_api_key
            .as_ref()
            .map_or("sandbox", |k| k.expose());
        vec![(key.to_string(), 1)]
    } else {
        config
            .volcengine_api_keys
            .iter()
            .map(|(k, w)| (k.expose().to_string(), *w))
            .collect()
    }
}

fn key_pool(config: &Config) -> KeyPool {
    KeyPool::new(&key_pool_entries(config), config.provider_key_reprobe)
}

/// What answers image requests: Volcengine Ark, or the built-in emulator without an API key.
fn provider_mode(config: &Config) -> &'static str {
    if config.is_sandbox() {
        "sandbox"
    } else {
        "ark"
    }
}

/// Over MongoDB every poll was a database read: an api process answers them from memory kept
/// current by the task events (`service::polls`). The embedded store caches its own tasks.
fn cache_polls(mut service: Service, config: &Config, role: Role) -> Service {
    if role.runs_api() && config.mongo_url.is_some() && !config.poll_cache_ttl.is_zero() {
        let bounds = TaskCacheBounds {
            tasks: config.task_cache_size,
            bytes: config.task_cache_bytes,
        };
        service.cache_polls(bounds, config.poll_cache_ttl);
    }
    service
}

/// Starts the service on `listener` (ignored for `Role::Worker`) with the backends the
/// configuration selects.
pub async fn start(
    config: Config,
    listener: Option<TcpListener>,
    role: Role,
) -> Result<Running, StartError> {
    let backends = Backends::for_config(&config).await?;
    start_with(config, listener, role, backends).await
}

/// The listening socket `role` serves on, if any.
fn role_listener(
    role: Role,
    listener: Option<TcpListener>,
) -> Result<Option<TcpListener>, StartError> {
    match (role.runs_api(), listener) {
        (true, Some(l)) => Ok(Some(l)),
        (true, None) => Err(StartError::Setup(
            "the API role needs a listening socket".into(),
        )),
        // A worker may get a listener too: operations endpoints only (health, readiness, its
        // own metrics, which hold the provider calls).
        (false, l) => Ok(l),
    }
}

/// As `start`, with given backends (tests wrap a store to count its calls).
pub async fn start_with(
    config: Config,
    listener: Option<TcpListener>,
    role: Role,
    backends: Backends,
) -> Result<Running, StartError> {
    let listener = role_listener(role, listener)?;
    let shutdown = CancellationToken::new();
    if crate::observability::handle().is_none() {
        tracing::warn!("another metrics recorder is installed; /metrics will be unavailable");
    }
    let config = Arc::new(config);
    let backends_background = backends.background;
    let pacer = backends.pacer;
    if let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
        check_exposure(&config, addr)?;
    }
    let handles_store = backends.store.clone();
    let handles = Handles {
        store: backends.store.clone(),
        queue: backends.queue.clone(),
        events: backends.events.clone(),
    };
    let service = Service::new(
        backends.store,
        backends.queue,
        backends.events,
        pacer.clone(),
        &config,
    );
    let service = Arc::new(cache_polls(service, &config, role));
    service.start_queue_clock(shutdown.clone()).await;
    let (provider, video, emulator) = if role.runs_worker() {
        let (p, v, e) = provider(&config, &shutdown).await?;
        (Some(p), Some(v), e)
    } else {
        (None, None, None)
    };
    let provider_mode = provider_mode(&config);
    if provider_mode == "sandbox" {
        tracing::warn!("SANDBOX MODE: no VOLCENGINE_API_KEY set; images come from the built-in emulator, not Volcengine");
    }

    let addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let public_base = public_base(&config, addr);

    let worker_rt = match (&provider, role) {
        (Some(_), Role::Serve) => Some(worker_runtime()?),
        _ => None,
    };
    let keys = Arc::new(key_pool(&config));
    let limiter = limiter(&config, service.catalog(), pacer);
    let provider_keys = provider.is_some().then(|| (keys.clone(), limiter.clone()));
    let workers = provider.map(|provider| {
        let worker = Arc::new(build_worker(
            &service,
            handles,
            provider,
            video,
            (keys.clone(), limiter.clone()),
            &config,
        ));
        tracing::info!(
            worker = worker.id(),
            concurrency = config.worker_concurrency,
            "worker started"
        );
        let set = worker
            .clone()
            .spawn(shutdown.clone(), worker_rt.as_ref().map(|rt| rt.handle()));
        (worker, set)
    });

    if role.runs_worker() {
        start_webhooks(&config, &handles_store, &service, &public_base, &shutdown).await?;
    }

    let server = match listener {
        Some(listener) => {
            let state = AppState {
                service: service.clone(),
                config: config.clone(),
                public_base: public_base.clone(),
                provider_mode,
                started: Instant::now(),
                sockets: Default::default(),
                provider_keys,
            };
            Some(serve(listener, state, role, shutdown.clone()).await)
        }
        None => None,
    };

    Ok(Running {
        addr,
        public_base,
        provider_mode,
        service,
        emulator,
        shutdown,
        background: backends_background,
        server,
        workers,
        worker_runtime: worker_rt,
    })
}

/// The webhook deliverer of a worker process, signing with `WEBHOOK_SECRET` or the secret the
/// store holds (generated by the first process that needed it, and shown then only).
async fn start_webhooks(
    config: &Config,
    store: &Arc<dyn Store>,
    service: &Arc<Service>,
    public_base: &str,
    shutdown: &CancellationToken,
) -> Result<(), StartError> {
    let configured = config.webhooks.secret.as_ref().map(|s| s.expose());
    let (secret, generated) =
        crate::service::webhooks::signing_secret(store.as_ref(), configured).await?;
    if generated {
        // Straight to the terminal, not through the logs (which are shipped and kept): the one
        // time the admin sees it. Set WEBHOOK_SECRET to choose it instead.
        // With JSON logs stdout is read by machines line by line: the secret goes there as one
        // JSON object of its own (not a tracing event), and stderr stays empty.
        #[allow(clippy::print_stderr, clippy::print_stdout)]
        match config.log_format {
            crate::config::LogFormat::Json => println!(
                "{}",
                serde_json::json!({
                    "webhook_secret_generated": secret.to_string(),
                    "note": "shown this once; receivers verify webhook-signature with it",
                })
            ),
            crate::config::LogFormat::Pretty => eprintln!(
                "\nWEBHOOK SECRET generated and stored (shown this once; receivers verify \
                 webhook-signature with it):\n\n    {secret}\n"
            ),
        }
        tracing::warn!("generated the webhook signing secret (printed to the terminal once)");
    }
    let base = public_base.to_string();
    let render: crate::worker::webhooks::RenderTask = Arc::new(move |t| {
        serde_json::to_value(crate::rest::tasks::task_json(t, &base, None))
            .unwrap_or(serde_json::Value::Null)
    });
    let deliverer = crate::worker::webhooks::Deliverer::new(
        store.clone(),
        &secret,
        render,
        config.webhooks.clone(),
        service.webhook_wake(),
    )
    .map_err(|e| StartError::Setup(e.to_string()))?;
    Arc::new(deliverer).spawn(shutdown.clone());
    Ok(())
}

/// Refuses to serve beyond this machine without API keys, and says which way auth is.
fn check_exposure(config: &Config, addr: SocketAddr) -> Result<(), StartError> {
    if config.admin_api_key.is_none() && !addr.ip().is_loopback() {
        return Err(StartError::Setup(format!(
            "refusing to listen on {addr} without API keys: set ADMIN_API_KEY (at least {} \
             characters) to serve beyond this machine, or HOST=127.0.0.1",
            crate::config::MIN_ADMIN_KEY_LEN
        )));
    }
    if config.admin_api_key.is_none() {
        tracing::warn!(%addr, "AUTH OFF: no ADMIN_API_KEY set; every local caller acts as the admin (loopback only)");
    } else {
        tracing::info!(%addr, "auth on: requests need an API key");
    }
    Ok(())
}

/// The base of the URLs handed out: `PUBLIC_BASE_URL`, else the bound address.
fn public_base(config: &Config, addr: Option<SocketAddr>) -> String {
    match (&config.public_base_url, addr) {
        (Some(u), _) => u.clone(),
        (None, Some(a)) if a.ip().is_unspecified() => format!("http://localhost:{}", a.port()),
        (None, Some(a)) => format!("http://{a}"),
        (None, None) => format!("http://{}:{}", config.host, config.port),
    }
}

/// The worker over `provider` (and the video provider, when there is one), calling with `keys` at
/// the pace `limiter` learns.
fn build_worker(
    service: &Arc<Service>,
    handles: Handles,
    provider: Arc<dyn ImageProvider>,
    video: Option<Arc<dyn VideoProvider>>,
    (keys, limiter): (Arc<KeyPool>, Arc<ProviderLimiter>),
    config: &Config,
) -> Worker {
    let worker = Worker::new(
        service.clone(),
        handles,
        provider,
        keys,
        limiter,
        worker_config(config),
    );
    match video {
        // Only a base URL the operator set is one the provider can be trusted to reach.
        Some(v) => worker.with_video(VideoWorker::new(
            v,
            config.video.clone(),
            config.download_concurrency,
            config.public_base_url.as_deref(),
        )),
        None => worker,
    }
}

fn worker_config(config: &Config) -> WorkerConfig {
    WorkerConfig {
        concurrency: config.worker_concurrency,
        download_concurrency: config.download_concurrency,
        download_memory_bytes: config.download_memory_bytes,
        max_attempts: config.max_attempts,
        lease: config.task_lease,
        reconcile_interval: config.reconcile_interval,
        sweep_interval: config.sweep_interval,
        retry_base_delay: config.retry_base_delay,
        retry_max_delay: config.retry_max_delay,
        recover_orphans_at_start: !config.is_distributed(),
    }
}

/// Serves `state` on `listener` until `shutdown`: the API's router, or for a worker only the
/// operations endpoints.
async fn serve(
    listener: TcpListener,
    state: AppState,
    role: Role,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let files = crate::sys::raise_open_files_limit();
    // The rest of the descriptors: the store, Redis, provider calls, downloads, the emulator.
    let derived = files.map_or(4096, |n| (n / 4 * 3).clamp(64, 1 << 20) as usize);
    let limits = http::server::Limits {
        header_read_timeout: state.config.header_read_timeout,
        max_connections: state.config.max_connections.unwrap_or(derived),
    };
    tracing::info!(
        open_files = files,
        max_connections = limits.max_connections,
        "serving HTTP"
    );
    let router = if role.runs_api() {
        // Revocations from any process close this one's sockets of the key.
        let revocations = graphql::ws::Revocations::new(&state);
        state.service.on_control(Arc::new(revocations));
        let graphql = graphql::Endpoint::new(state.clone()).await;
        http::router(state, graphql)
    } else {
        http::ops_router(state)
    };
    tokio::spawn(http::server::serve(listener, router, limits, shutdown))
}
