//! The `volcengine-ai-server` binary: parses the command line (`Command`), reads the
//! configuration, sets up logging and runs the subcommand asked for.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use volcengine_ai_server::app::{self, Role};
use volcengine_ai_server::config::{Config, LogFormat};
use volcengine_ai_server::emulator::{self, cli::EmulatorArgs};

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
    /// Runs the local emulator of Volcengine's APIs: Ark images and video tasks, Jimeng visual.
    Emulator(Box<EmulatorArgs>),
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
        let addr = a.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (EMULATOR_ADDR)"))?;
        let token = CancellationToken::new();
        let emu =
            emulator::serve(a.config(config.model_ids.clone()), listener, token.clone()).await?;
        tracing::info!(addr = %addr, "emulator listening: Ark images (/api/v3/images/generations) and video tasks (/api/v3/contents/generations/tasks), Jimeng visual API (POST /?Action=…), GET /emulator/stats");
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
