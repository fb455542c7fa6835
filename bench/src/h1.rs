//! The HTTP load generator of `bench http`: one HTTP/1.1 keep-alive connection per concurrent
//! client, each sending its next request as soon as the answer is read, as `wrk` does. It shares
//! the two cores with the server under test, so its own cost is kept small: no connection pool
//! to lock, no URL to parse and no header map to build per request (with reqwest the generator
//! took about half of the CPU of a poll run).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;

use crate::harness::Measure;

/// One request of a scenario: method, path and query, JSON body, the status it must answer.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
    pub want: u16,
    /// A second status that counts as answered (the legacy poll's 202 while a task runs).
    pub also: Option<u16>,
}

impl Call {
    pub fn get(path: String) -> Call {
        Call {
            method: Method::GET,
            path,
            body: None,
            want: 200,
            also: None,
        }
    }

    /// The legacy result route as the Go server answers it: 200 once the task is done, 202
    /// while it waits or runs (both are a served poll).
    pub fn legacy_poll(path: String) -> Call {
        Call {
            also: Some(202),
            ..Call::get(path)
        }
    }

    pub fn post(path: &str, body: &serde_json::Value, want: u16) -> Call {
        Call {
            method: Method::POST,
            path: path.to_string(),
            body: Some(Bytes::from(body.to_string())),
            want,
            also: None,
        }
    }
}

struct Connection {
    send: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Connection, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
        Ok(Connection { send, host })
    }

    /// Sends `call` and reads the whole answer (a benchmark that skips the body measures less
    /// than a client does).
    async fn call(&mut self, call: Call) -> Result<(), String> {
        let mut req = Request::builder()
            .method(call.method)
            .uri(call.path)
            .header(header::HOST, self.host.clone());
        if call.body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(call.body.unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        self.send.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status == call.want || Some(status) == call.also {
            Ok(())
        } else {
            Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body)
            ))
        }
    }
}

/// Sends `make(i)` for `i` in `0..total` to `addr` over `connections` connections, opened
/// before the clock starts as a pool would have them.
pub async fn drive<F>(
    name: &str,
    addr: SocketAddr,
    total: usize,
    connections: usize,
    make: F,
) -> Result<Measure, String>
where
    F: Fn(usize) -> Call + Send + Sync + 'static,
{
    drive_spread(name, &[addr], total, connections, make).await
}

/// As [`drive`], the connections spread in turn over several servers (api processes behind a
/// balancer that spreads connections).
pub async fn drive_spread<F>(
    name: &str,
    addrs: &[SocketAddr],
    total: usize,
    connections: usize,
    make: F,
) -> Result<Measure, String>
where
    F: Fn(usize) -> Call + Send + Sync + 'static,
{
    let mut opened = Vec::with_capacity(connections.max(1));
    for i in 0..connections.max(1) {
        let addr = addrs
            .get(i % addrs.len().max(1))
            .ok_or("no server to drive")?;
        opened.push(Connection::open(*addr).await?);
    }
    crate::harness::drive_with(name, total, opened, move |mut conn, i| {
        let call = make(i);
        async move {
            conn.call(call).await?;
            Ok(conn)
        }
    })
    .await
}
