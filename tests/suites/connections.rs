//! Connections, over raw TCP against the real binary: one that never finishes its request
//! headers (nothing sent, a header cut short, the start of the h2 preface) or idles between
//! keep-alive requests is closed after `HEADER_READ_TIMEOUT`, and no more than `MAX_CONNECTIONS`
//! are served at once. The timeout is set short through the environment, as an operator would.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that must happen; only a broken server waits this long.
const PATIENCE: Duration = Duration::from_secs(20);

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_volcengine-ai-server"));
    c.arg("serve")
        .current_dir(std::env::temp_dir())
        .env("PORT", port.to_string())
        .env("DATA_DIR", dir.path())
        .env("LOG_LEVEL", "error")
        .env_remove("VOLCENGINE_API_KEY")
        .env_remove("ARK_API_KEY")
        .env_remove("MONGO_URL")
        .env_remove("REDIS_URL")
        .env_remove("ADMIN_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    let server = Server {
        child: c.spawn().expect("spawn"),
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while reqwest::get(format!("http://{}/health", server.addr))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// Waits for the server to close `s` (end of stream or reset); `false` if it stays open.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// One request on `s`, its response read whole (a `Content-Length` body).
async fn request(s: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(PATIENCE, async {
        loop {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().ok())
                    })
                    .flatten()
                    .unwrap_or(0);
                if body.len() >= len {
                    return text.into_owned();
                }
            }
        }
    })
    .await
    .expect("response in time")
}

/// Before: 300 such connections were all still open after 45 s (`axum::serve` ran hyper
/// without a timer, so its header timeout never fired).
#[tokio::test]
async fn connections_that_never_finish_their_headers_or_idle_are_closed() {
    let server = start(&[("HEADER_READ_TIMEOUT", "1s")]).await;
    let mut stalled = Vec::new();
    for sent in [
        &b""[..],
        b"GET /health HTTP/1.1\r\nHost: localhost\r\n",
        b"PRI * HTTP/2.0\r\n",
        b"P",
    ] {
        for _ in 0..25 {
            let mut s = TcpStream::connect(&server.addr).await.expect("connect");
            s.write_all(sent).await.expect("write");
            stalled.push((String::from_utf8_lossy(sent).into_owned(), s));
        }
    }
    // A keep-alive connection, served once, then idle.
    let mut idle = TcpStream::connect(&server.addr).await.expect("connect");
    assert!(request(&mut idle, "/health")
        .await
        .starts_with("HTTP/1.1 200"));
    stalled.push(("(after one request)".into(), idle));
    let waits = stalled
        .into_iter()
        .map(|(sent, mut s)| async move { (!closed_by_server(&mut s).await).then_some(sent) });
    let open: Vec<String> = futures::future::join_all(waits)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(open.is_empty(), "still open after {PATIENCE:?}: {open:?}");
    // Requests that are on time are served as before.
    let mut s = TcpStream::connect(&server.addr).await.expect("connect");
    assert!(request(&mut s, "/health").await.starts_with("HTTP/1.1 200"));
    assert!(request(&mut s, "/health").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn no_more_than_max_connections_are_served_at_once() {
    let server = start(&[("HEADER_READ_TIMEOUT", "30s"), ("MAX_CONNECTIONS", "8")]).await;
    // Seven idle connections and one that asks for the metrics: the cap is reached.
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(TcpStream::connect(&server.addr).await.expect("connect"));
    }
    let mut probe = TcpStream::connect(&server.addr).await.expect("connect");
    let metrics = request(&mut probe, "/metrics").await;
    assert!(metrics.contains("http_connections_max 8"), "{metrics}");
    assert!(metrics.contains("http_connections_open 8"), "{metrics}");
    // A ninth waits in the backlog, unanswered...
    let mut ninth = TcpStream::connect(&server.addr).await.expect("connect");
    ninth
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ninth.read(&mut buf))
            .await
            .is_err(),
        "a ninth connection was served"
    );
    // ...until one of the eight closes.
    drop(held.pop());
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = ninth.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("served once a slot was free");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let metrics = request(&mut probe, "/metrics").await;
    assert!(
        metrics.contains("http_connections_at_limit_total"),
        "{metrics}"
    );
}
