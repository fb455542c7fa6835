use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use volcengine_ai_server::app::{self, Role};
use volcengine_ai_server::config::{Config, LogFormat};
use volcengine_ai_server::emulator::{self, EmulatorConfig};

/// The system allocator took ~17 % of a request's CPU in malloc/free (perf, issue #6);
/// mimalloc measured +14–18 % on REST submit and poll (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "volcengine-ai-server",
    version,
    about = "Asynchronous task API over Volcengine Seedream image generation"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// API and worker in one process (the default).
    Serve,
    /// HTTP only: GraphQL, subscriptions, REST routes.
    Api,
    /// Worker only: runs queued tasks.
    Worker,
    /// Prints the GraphQL schema (SDL); `schema.graphql` must equal it.
    Schema,
    /// Runs the local emulator of Volcengine Ark's image API.
    Emulator(EmulatorArgs),
    /// Benchmarks (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Tasks submitted at once through an embedded service to a rate-limited emulator:
    /// achieved images per minute against the limit, 429s, failures.
    Pipeline {
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
        #[arg(long, default_value_t = 600)]
        ipm: u32,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        latency: Duration,
        #[arg(long, default_value_t = 64)]
        clients: usize,
    },
    /// Submit and poll over REST and GraphQL against the HTTP floor (a bare axum handler) and
    /// the store floor (the same insert done directly), in one run.
    Http {
        #[arg(long, default_value_t = 20000)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// `embedded` (SQLite) or `distributed` (MongoDB + Redis; adds the backend floor).
        #[arg(long, default_value = "embedded", value_parser = ["embedded", "distributed"])]
        backend: String,
        #[arg(long, env = "MONGO_URL")]
        mongo_url: Option<String>,
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// Tasks stored before the polls, which then go round them.
        #[arg(long, default_value_t = 0)]
        preload: usize,
    },
    /// WebSocket `taskUpdated` subscribers on a service run as a child process: its resident
    /// memory per subscriber, and the delivery delay when the tasks complete in one burst.
    Subscribe {
        #[arg(long, default_value_t = 10000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        /// How long the emulator holds each call (every subscriber must connect meanwhile).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// WebSocket handshakes in flight at once.
        #[arg(long, default_value_t = 64)]
        connect_concurrency: usize,
    },
    /// Every benchmark above in one run (HTTP embedded, and distributed with --mongo-url and
    /// --redis-url; 10,000 subscribers; the paced and the unlimited pipeline), then each goal
    /// of issue #6 beside what the run measured. About six minutes at full scale.
    All {
        /// Divides every count by this, for a quick look (goals are judged at 1 only).
        #[arg(long, default_value_t = 1)]
        scale: usize,
        #[arg(long, env = "MONGO_URL")]
        mongo_url: Option<String>,
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
    },
    /// The bare WebSocket server `bench subscribe` measures its delivery floor on (run by it).
    #[command(hide = true)]
    DeliveryFloor {
        #[arg(long, env = "HOST", default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        #[arg(long, env = "PORT")]
        port: u16,
    },
}

#[derive(clap::Args)]
struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, env = "EMULATOR_ADDR", default_value = "127.0.0.1:9090")]
    addr: SocketAddr,
    /// Time to generate an image, e.g. 2s or 300ms.
    #[arg(long, env = "EMULATOR_LATENCY", default_value = "1500ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Extra random latency, uniform from zero to this.
    #[arg(long, env = "EMULATOR_LATENCY_JITTER", default_value = "0s", value_parser = humantime::parse_duration)]
    latency_jitter: Duration,
    /// Only accept this API key (default: any non-empty key).
    #[arg(long, env = "EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// Images per minute per model, answered with 429 ModelAccountIpmRateLimitExceeded beyond.
    #[arg(long, env = "EMULATOR_IPM")]
    ipm: Option<u32>,
    /// Requests generating at once per model, answered with 429 InflightBatchsizeExceeded beyond.
    #[arg(long, env = "EMULATOR_MAX_CONCURRENCY")]
    max_concurrency: Option<usize>,
    /// Send Retry-After with this many seconds on 429 answers.
    #[arg(long, env = "EMULATOR_RETRY_AFTER", value_parser = humantime::parse_duration)]
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
    /// The first N downloads of each generated image answer 503 ServiceUnavailable.
    #[arg(long, env = "EMULATOR_FAIL_DOWNLOADS_FIRST", default_value_t = 0)]
    fail_downloads_first: u32,
    /// How long each image download waits before its bytes are sent (a CDN's time to first byte).
    #[arg(long, env = "EMULATOR_DOWNLOAD_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    download_latency: Duration,
    /// Share of requests answered 429 ServerOverloaded (0 to 1).
    #[arg(long, env = "EMULATOR_OVERLOAD_RATE", default_value_t = 0.0)]
    overload_rate: f64,
    /// Prompts containing this word are rejected as sensitive (repeatable).
    #[arg(
        long = "sensitive-word",
        env = "EMULATOR_SENSITIVE_WORDS",
        value_delimiter = ',',
        default_value = "sensitive-content"
    )]
    sensitive_words: Vec<String>,
    /// Lifetime of generated image URLs.
    #[arg(long, env = "EMULATOR_URL_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    url_ttl: Duration,
    /// Render one PNG per size and serve it for every image (load tests: keeps the rendering
    /// off the cores of the service under test).
    #[arg(long, env = "EMULATOR_REUSE_IMAGES")]
    reuse_images: bool,
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// The start-up banner: an aligned block on stderr for a person, or, with `LOG_FORMAT=json`,
/// one structured log line (a block of text would break a JSON log stream).
fn print_banner(config: &Config, role: Role, running: &app::Running) {
    let role = match role {
        Role::Serve => "serve",
        Role::Api => "api",
        Role::Worker => "worker",
    };
    let b = volcengine_ai_server::banner::build(
        config,
        role,
        running.addr,
        &running.public_base,
        running.provider_mode,
    );
    match config.log_format {
        LogFormat::Pretty => eprint!("\n{}\n", b.render()),
        LogFormat::Json => tracing::info!(
            role,
            mode = if config.is_distributed() {
                "distributed"
            } else {
                "embedded"
            },
            provider_mode = running.provider_mode,
            listening = b.get("listening"),
            public_url = b.get("public URL"),
            console = b.get("console"),
            docs = b.get("REST docs"),
            graphiql = b.get("GraphiQL"),
            storage = b.get("storage"),
            queue = b.get("queue"),
            events = b.get("events"),
            provider = b.get("provider"),
            pacing = b.get("pacing"),
            auth = b.get("auth"),
            "{}",
            b.title
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Schema = command {
        print!("{}", volcengine_ai_server::graphql::sdl());
        return Ok(());
    }
    if let Command::Bench(BenchCommand::Pipeline {
        tasks,
        ipm,
        latency,
        clients,
    }) = command
    {
        init_tracing("warn", LogFormat::Pretty);
        let args = volcengine_ai_server::bench::PipelineArgs {
            tasks,
            ipm,
            latency,
            clients,
        };
        let report = volcengine_ai_server::bench::pipeline(args.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        volcengine_ai_server::bench::print_pipeline(&args, &report);
        return Ok(());
    }
    if let Command::Bench(BenchCommand::All {
        scale,
        mongo_url,
        redis_url,
    }) = command
    {
        init_tracing("warn", LogFormat::Pretty);
        let args = volcengine_ai_server::bench::all::AllArgs {
            scale,
            distributed: mongo_url.zip(redis_url),
        };
        let report = volcengine_ai_server::bench::all::all(args)
            .await
            .map_err(anyhow::Error::msg)?;
        volcengine_ai_server::bench::all::print_goals(&report).map_err(anyhow::Error::msg)?;
        return Ok(());
    }
    if let Command::Bench(BenchCommand::DeliveryFloor { host, port }) = command {
        init_tracing("warn", LogFormat::Pretty);
        volcengine_ai_server::bench::ws_floor::serve(SocketAddr::new(host, port))
            .await
            .map_err(anyhow::Error::msg)?;
        return Ok(());
    }
    if let Command::Bench(BenchCommand::Subscribe {
        subscribers,
        tasks,
        latency,
        connect_concurrency,
    }) = command
    {
        init_tracing("warn", LogFormat::Pretty);
        let report = volcengine_ai_server::bench::subscribe::subscribe(
            volcengine_ai_server::bench::subscribe::SubscribeArgs {
                subscribers,
                tasks,
                latency,
                connect_concurrency,
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
        volcengine_ai_server::bench::subscribe::print_subscribe(&report);
        return Ok(());
    }
    if let Command::Bench(BenchCommand::Http {
        requests,
        connections,
        backend,
        mongo_url,
        redis_url,
        preload,
    }) = command
    {
        init_tracing("warn", LogFormat::Pretty);
        let backend = match (backend.as_str(), mongo_url, redis_url) {
            ("embedded", _, _) => volcengine_ai_server::bench::Backend::Embedded,
            (_, Some(mongo_url), Some(redis_url)) => {
                volcengine_ai_server::bench::Backend::Distributed {
                    mongo_url,
                    redis_url,
                }
            }
            _ => anyhow::bail!(
                "--backend distributed needs --mongo-url and --redis-url (or MONGO_URL and REDIS_URL)"
            ),
        };
        let args = volcengine_ai_server::bench::HttpArgs {
            requests,
            connections,
            backend,
            preload,
        };
        let rows = volcengine_ai_server::bench::http(args.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        volcengine_ai_server::bench::print_http(&args, &rows);
        return Ok(());
    }
    let config = Config::from_process_env()?;
    init_tracing(&config.log_level, config.log_format);

    if let Command::Emulator(a) = command {
        let listener = tokio::net::TcpListener::bind(a.addr)
            .await
            .with_context(|| format!("cannot listen on {} (EMULATOR_ADDR)", a.addr))?;
        let token = CancellationToken::new();
        let emu = emulator::serve(
            EmulatorConfig {
                latency: a.latency,
                latency_jitter: a.latency_jitter,
                api_key: a.api_key,
                images_per_minute: a.ipm,
                ipm_window: Duration::from_secs(60),
                max_concurrency: a.max_concurrency,
                retry_after: a.retry_after,
                hang_rate: a.hang_rate,
                fail_rate: a.fail_rate,
                overload_rate: a.overload_rate,
                fail_first: a.fail_first,
                fail_downloads_first: a.fail_downloads_first,
                download_latency: a.download_latency,
                sensitive_words: a.sensitive_words,
                url_ttl: a.url_ttl,
                model_ids: config.model_ids.clone(),
                reuse_images: a.reuse_images,
            },
            listener,
            token.clone(),
        )
        .await?;
        tracing::info!(addr = %a.addr, "Ark emulator listening: POST /api/v3/images/generations, GET /emulator/stats");
        // A live count of what the emulator answered, for a person watching a failure drill.
        let bar = volcengine_ai_server::progress::spinner("emulator");
        let watch = {
            let (emu, bar, token) = (emu.clone(), bar.clone(), token.clone());
            tokio::spawn(async move {
                while !bar.is_hidden() && !token.is_cancelled() {
                    let s = emu.stats();
                    let mut by: Vec<_> = s.by_status.iter().collect();
                    by.sort();
                    let by: Vec<String> = by.iter().map(|(k, v)| format!("{k}×{v}")).collect();
                    bar.set_message(format!(
                        "{} requests, {} images [{}]",
                        s.requests,
                        s.images,
                        by.join(" ")
                    ));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        signal(token).await;
        bar.finish_and_clear();
        watch.abort();
        return Ok(());
    }

    let role = match command {
        Command::Api => Role::Api,
        Command::Worker => Role::Worker,
        _ => Role::Serve,
    };
    let listener =
        if role == Role::Worker {
            match config.worker_http_port {
                None => None,
                Some(port) => {
                    let addr = SocketAddr::new(config.host, port);
                    Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                        format!("cannot listen on {addr} (HOST, WORKER_HTTP_PORT)")
                    })?)
                }
            }
        } else {
            let addr = SocketAddr::new(config.host, config.port);
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (HOST, PORT)"))?,
            )
        };
    let running = app::start(config.clone(), listener, role).await?;
    print_banner(&config, role, &running);
    signal(running.shutdown_token()).await;
    running.shutdown(config.shutdown_timeout).await;
    tracing::info!("stopped");
    Ok(())
}
