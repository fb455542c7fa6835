//! The server binary as a child process, started as an operator starts it: for the suites that
//! kill it, restart it, read its memory or its output, or run several of it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::PATIENCE;

/// Variables a developer's shell may set that would point a test's server elsewhere (a real
/// provider, a shared database) or change the limits a test relies on.
const INHERITED: &[&str] = &[
    "VOLCENGINE_API_KEY",
    "VOLCENGINE_API_KEYS",
    "ARK_API_KEY",
    "VOLCENGINE_ACCESS_KEY",
    "VOLCENGINE_SECRET_KEY",
    "VOLC_ACCESSKEY",
    "VOLC_SECRETKEY",
    "MONGO_URL",
    "MONGODB_URI",
    "REDIS_URL",
    "ADMIN_API_KEY",
    "TASK_CACHE_SIZE",
    "TASK_CACHE_BYTES",
    "GRAPHQL_MAX_EXPANDED_FIELDS",
    "GRAPHQL_MAX_DEPTH",
    "GRAPHQL_MAX_COMPLEXITY",
];

/// A loopback address of this server's own and a port free on it. 127.0.0.0/8 is all loopback:
/// with one address per server, a port found free here and taken by another test's server
/// before this one binds it cannot have a test speak to that other server.
pub fn own_address() -> (String, u16) {
    let n = uuid::Uuid::new_v4().as_u128() as u32;
    // Never 127.0.0.1 (other tests and services use it) nor a .0 or .255 host.
    let ip = format!(
        "127.{}.{}.{}",
        (n >> 16 & 0xff).max(2),
        n >> 8 & 0xff,
        (n & 0xfd) + 1
    );
    let port = std::net::TcpListener::bind((ip.as_str(), 0))
        .and_then(|l| l.local_addr())
        .expect("a free port on an own loopback address")
        .port();
    (ip, port)
}

/// `volcengine-ai-server <role>` in `dir`, on an address of its own, logging errors only to the
/// test's stderr, with none of `INHERITED`; the caller's `.env()` calls come after, so they win.
pub fn command(role: &str, dir: &Path) -> (Command, String) {
    command_of(env!("CARGO_BIN_EXE_volcengine-ai-server"), role, dir)
}

/// As `command`, for another build of the binary (`MEMORY_TEST_BINARY`: a release one).
pub fn command_of(binary: &str, role: &str, dir: &Path) -> (Command, String) {
    let (ip, port) = own_address();
    let mut c = Command::new(binary);
    c.arg(role)
        .current_dir(dir)
        .env("HOST", &ip)
        .env("PORT", port.to_string())
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for var in INHERITED {
        c.env_remove(var);
    }
    (c, format!("http://{ip}:{port}"))
}

/// A started server process, killed (SIGKILL) when dropped, so a failing test leaves none behind.
pub struct ServerProcess {
    pub child: Child,
    /// `http://ip:port`.
    pub base: String,
}

impl ServerProcess {
    /// Spawns what `command` built (its `base` with it).
    pub fn spawn((mut cmd, base): (Command, String)) -> ServerProcess {
        let child = cmd.spawn().expect("spawn the server binary");
        ServerProcess { child, base }
    }

    /// Spawns it and waits until `path` (`/health` or `/ready`) answers 200.
    pub async fn start(cmd: (Command, String), path: &str) -> ServerProcess {
        let mut p = ServerProcess::spawn(cmd);
        p.wait_for(path).await;
        p
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `path` answers 200; fails at once if the process exits meanwhile.
    pub async fn wait_for(&mut self, path: &str) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = http.get(self.url(path)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            let exited = self.child.try_wait().expect("child status");
            assert!(exited.is_none(), "{} exited: {exited:?}", self.base);
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}{path} never answered 200",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
