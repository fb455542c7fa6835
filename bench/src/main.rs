//! `volcengine-ai-bench`: the benchmarks of volcengine-ai-server (see `docs/benchmarks.md`). The
//! real service and the Ark emulator run on loopback ports, load generators speak HTTP and
//! WebSocket to them as clients do, and every figure is printed beside a baseline measured in
//! the same run.
//!
//! A scenario is one file: its flags (`clap::Args`), a `run` that measures and prints, and the
//! functions `all` may call; then one variant of `Command` below and one line of `main`.

mod all;
mod crowd;
mod distributed;
mod h1;
mod harness;
mod http;
mod pipeline;
mod progress;
mod queue_position;
mod service;
mod stored;
// Reads resource limits and CPU clock ticks through libc (each block says why it is sound).
#[allow(unsafe_code)]
mod subscribe;
mod undisclosed;
mod video;
mod webhooks;
mod ws_floor;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The server binary's allocator (mimalloc, `src/main.rs`): the service under test runs in this
/// process, so it must allocate as it does in production.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "volcengine-ai-bench",
    version,
    about = "Benchmarks of volcengine-ai-server, each figure beside a baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tasks submitted at once through an embedded service to a rate-limited emulator:
    /// achieved images per minute against the limit, 429s, failures.
    Pipeline(pipeline::PipelineArgs),
    /// Submit and poll over REST and GraphQL against the HTTP floor (a bare axum handler) and
    /// the store floor (the same insert done directly), in one run.
    Http(http::HttpCmd),
    /// WebSocket `taskUpdated` subscribers on a service run as a child process: its resident
    /// memory per socket and per subscription, and the delivery delay when the tasks complete
    /// in one burst.
    Subscribe(subscribe::SubscribeArgs),
    /// Tasks against a provider allowing fewer images a minute than the service's default pace,
    /// which it is not told (issue #18.1): tasks failed, time against the ideal, the provider's
    /// use once the pace has learned the limit.
    Undisclosed(undisclosed::UndisclosedArgs),
    /// Every benchmark above in one run (HTTP embedded, and distributed with --mongo-url and
    /// --redis-url; 10,000 subscribers, and 100,000 subscriptions as the open-files limit allows;
    /// the paced and the unlimited pipeline), then each goal of issues #6 and #22 beside what
    /// the run measured.
    All(all::AllArgs),
    /// Tasks with a webhook (not part of `all`) to a local receiver: the delay from each change to its signed event
    /// arriving, accepted at once and after one refused attempt, beside signed POSTs sent
    /// straight to the receiver (the floor).
    Webhooks(webhooks::WebhooksArgs),
    /// Reading a pending task's queue position (REST and GraphQL) behind 10 pending tasks and
    /// behind 100,000 (not part of `all`): the ratio shows the read does not grow with the
    /// backlog.
    QueuePosition(queue_position::QueuePositionArgs),
    /// Operations at two sizes of stored tasks, seeded directly (issue #22.3): submit, polls,
    /// a user's list page, queue stats, the reconciler's read and start-up to ready, each as
    /// done at --large beside --small (the ratio; goal >= 0.8).
    Stored(stored::StoredArgs),
    /// Video tasks at once (not part of `all`: a run takes its tasks' generation time) against
    /// the emulator's content generation tasks API: provider requests per second while they
    /// run, the delay from the provider's completion to the terminal state here, every task
    /// terminal.
    Video(video::VideoArgs),
    /// The bare WebSocket server `subscribe` measures its delivery floor on (run by it).
    #[command(hide = true)]
    DeliveryFloor(ws_floor::FloorArgs),
    /// The service under test of `subscribe`, as `volcengine-ai-server serve` (run by it).
    #[command(hide = true)]
    Service,
}

/// Log lines at `level` and above, written by `writer`, coloured when `ansi`.
fn init_tracing<W>(level: &str, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    volcengine_ai_server::sys::tune_allocator();
    let command = Cli::parse().command;
    // Warnings on stderr, beside the reports on stdout; the service logs as it configures.
    if !matches!(command, Command::Service) {
        init_tracing("warn", std::io::stderr, std::io::stderr().is_terminal());
    }
    match command {
        Command::Pipeline(a) => pipeline::run(a).await,
        Command::Http(a) => http::run(a).await,
        Command::Subscribe(a) => subscribe::run(a).await,
        Command::Undisclosed(a) => undisclosed::run(a).await,
        Command::Webhooks(a) => webhooks::run(a).await,
        Command::QueuePosition(a) => queue_position::run(a).await,
        Command::Stored(a) => stored::run(a).await,
        Command::Video(a) => video::run(a).await,
        Command::All(a) => all::run(a).await,
        Command::DeliveryFloor(a) => ws_floor::run(a).await,
        Command::Service => service::run().await,
    }
    .map_err(anyhow::Error::msg)
}
