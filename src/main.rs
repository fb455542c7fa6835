//! The `volcengine-ai-server` binary: parses the command line (`Command`), reads the
//! configuration, sets up logging and runs the subcommand asked for.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use volcengine_ai_server::app::{self, Role};
use volcengine_ai_server::config::{Config, LogFormat};
use volcengine_ai_server::emulator::{self, cli::EmulatorArgs};

/// The system allocator took ~17 % of a request's CPU in malloc/free (perf, issue #6);
/// mimalloc measured +14–18 % on REST submit and poll (docs/benchmarks.md). The
/// `system-allocator` feature leaves it out, for heap profilers that hook malloc (heaptrack).
#[cfg(not(feature = "system-allocator"))]
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

/// A live count of what the emulator answered, for a person watching a failure drill: one line
/// on the terminal, redrawn in place until `stop`, then cleared. (One line needs no progress-bar
/// crate in the server binary.)
async fn live_count(emu: emulator::Emulator, stop: CancellationToken) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let s = emu.stats();
        let mut by: Vec<_> = s.by_status.iter().collect();
        by.sort();
        let by: Vec<String> = by.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        let t = started.elapsed().as_secs();
        // Carriage return and erase-line: the line replaces itself.
        eprint!(
            "\r\x1b[2Kemulator {:02}:{:02}:{:02} {} requests, {} images [{}]",
            t / 3600,
            t / 60 % 60,
            t % 60,
            s.requests,
            s.images,
            by.join(" ")
        );
    }
    eprint!("\r\x1b[2K");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    volcengine_ai_server::sys::tune_allocator();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Schema = command {
        print!("{}", volcengine_ai_server::graphql::sdl());
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
        let watch = std::io::stderr()
            .is_terminal()
            .then(|| tokio::spawn(live_count(emu, token.clone())));
        signal(token).await;
        if let Some(watch) = watch {
            let _ = watch.await;
        }
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
