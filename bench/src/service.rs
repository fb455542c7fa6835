//! The hidden `service` subcommand: the service as `volcengine-ai-server serve` runs it (the
//! server library's `app::start` in the serve role, configured from the environment, on the same
//! allocator), for `subscribe`, which needs it in a process of its own to read that process's
//! memory and CPU. It runs from this binary rather than the server's so that the code measured is
//! always the code just built: `cargo run -p volcengine-ai-bench` builds the server's library,
//! not its binary, and a server binary found beside this one could be stale.

use std::net::SocketAddr;

use volcengine_ai_server::app::{self, Role};
use volcengine_ai_server::config::Config;

/// Serves until Ctrl-C or until killed (the bench kills it when done).
pub async fn run() -> Result<(), String> {
    let config = Config::from_process_env().map_err(|e| e.to_string())?;
    // On stdout, as the server logs (the bench discards it).
    crate::init_tracing(&config.log_level, std::io::stdout, false);
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (HOST, PORT): {e}"))?;
    let running = app::start(config.clone(), Some(listener), Role::Serve)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown(config.shutdown_timeout).await;
    Ok(())
}
