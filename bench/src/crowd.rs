//! The subscribers of `subscribe`: WebSockets on `graphql-transport-ws` at `/graphql/ws`, each
//! carrying `per_socket` `taskUpdated` subscriptions (the protocol multiplexes them by id), and
//! what each subscription saw. A socket opens with its first subscription; the others follow when
//! told (`Crowd::widen`), so that the memory of a socket and of a further subscription on it can
//! be read apart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::harness::percentile;
use crate::subscribe::{cpu_by_thread, cpu_time};

/// How the subscriptions sit on sockets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub subscriptions: usize,
    /// Subscriptions on each socket (the last one may have fewer).
    pub per_socket: usize,
}

impl Shape {
    pub fn sockets(&self) -> usize {
        self.subscriptions.div_ceil(self.per_socket.max(1))
    }
}

/// How the terminal states reached the subscribers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    /// Subscriptions that saw their task's terminal `COMPLETED` state.
    pub received_completed: usize,
    /// `next` messages received from the last subscription in place to the end: the terminal
    /// states, and the others the burst caused (a queued task's new position or its start).
    pub messages: usize,
    /// Terminal states that arrived before the last subscription was in place (not a clean
    /// burst).
    pub early: usize,
    /// From the task's `updatedAt` (set by the worker as it stores the change) to the arrival of
    /// the `COMPLETED` message at the subscriber.
    pub delay_p50: Duration,
    pub delay_p99: Duration,
    pub delay_max: Duration,
    /// From the first to the last task completion (`updatedAt`), i.e. how much of a burst it was.
    pub burst_spread: Duration,
    /// CPU time from the last subscription in place to the last terminal state received: of the
    /// server process (the service: API and worker) and of this process (the subscribers).
    pub server_cpu: Duration,
    pub client_cpu: Duration,
    /// The server's CPU in the same span by thread name (live threads only).
    pub server_threads: Vec<(String, Duration)>,
    /// The burst cut in tenths by completion time (`updatedAt`): messages of each tenth and
    /// their delay p99, to tell a backlog that builds up over the burst from a slow start.
    pub by_tenth: Vec<(usize, Duration)>,
    /// From the burst's first completion to each message's arrival, mean and last: the whole
    /// wave as its users see it (a shorter delay bought by completing later would show here).
    pub wave_mean: Duration,
    pub wave_last: Duration,
}

const SUBSCRIPTION: &str =
    "subscription($id: ID!) { taskUpdated(id: $id) { id status version updatedAt } }";

/// What one subscription saw: arrival of the `COMPLETED` message, and the task's `updatedAt`
/// in it.
type Seen = Option<(SystemTime, SystemTime)>;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects from a loopback source address of its own (127.0.1.2 and up, spread over `i`) so
/// that many sockets, and runs repeated within the TIME_WAIT period, do not exhaust the
/// ephemeral ports of one source address.
async fn connect(addr: SocketAddr, url: &str, i: usize) -> Result<Ws, String> {
    let source = Ipv4Addr::new(127, 0, 1 + (i / 250 % 250) as u8, 2 + (i % 250) as u8);
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        axum::http::HeaderValue::from_static("graphql-transport-ws"),
    );
    // tungstenite zeroes its whole read buffer (128 KiB by default) on every read; small
    // messages need little, and ten thousand sockets would otherwise cost 1.3 GB here.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
    Ok(ws)
}

/// A server message, read without building a JSON tree: a hundred thousand subscriptions' messages
/// are read on the same two cores as the service writes them.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    payload: Option<Payload<'a>>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "taskUpdated", borrow)]
    task_updated: Option<Update<'a>>,
}

#[derive(Deserialize)]
struct Update<'a> {
    status: &'a str,
    #[serde(rename = "updatedAt")]
    updated_at: &'a str,
}

fn subscribe_message(id: usize, task: &str) -> Message {
    Message::Text(
        json!({"id": id.to_string(), "type": "subscribe",
               "payload": {"query": SUBSCRIPTION, "variables": {"id": task}}})
        .to_string()
        .into(),
    )
}

/// What the socket learnt from one frame.
enum Read {
    /// Subscription (index) got a message; `completed` when it was its task's terminal state.
    Next {
        sub: usize,
        completed: Option<SystemTime>,
    },
    /// Subscription (index) ended.
    Complete(usize),
    Other,
}

fn read_frame(text: &str) -> Result<Read, String> {
    let f: Frame = match serde_json::from_str(text) {
        Ok(f) => f,
        // An `error` carries a list as its payload.
        Err(e) => {
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(v) if v["type"] == "error" => format!("subscription error: {v}"),
                _ => format!("frame {text}: {e}"),
            })
        }
    };
    let sub = || {
        f.id.and_then(|id| id.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .ok_or_else(|| format!("no subscription id in {text}"))
    };
    match f.kind {
        "next" => {
            let update = f
                .payload
                .and_then(|p| p.data)
                .and_then(|d| d.task_updated)
                .ok_or_else(|| format!("no taskUpdated in {text}"))?;
            let completed = match update.status {
                "COMPLETED" => Some(
                    chrono::DateTime::parse_from_rfc3339(update.updated_at)
                        .map(SystemTime::from)
                        .map_err(|e| format!("updatedAt in {text}: {e}"))?,
                ),
                _ => None,
            };
            Ok(Read::Next {
                sub: sub()?,
                completed,
            })
        }
        "complete" => Ok(Read::Complete(sub()?)),
        // Its payload (a list) may even read as a `Payload`: serde takes a struct from a list.
        "error" => Err(format!("subscription error: {text}")),
        _ => Ok(Read::Other),
    }
}

/// What every socket shares.
struct Common {
    addr: SocketAddr,
    url: String,
    connecting: Semaphore,
    /// One `Ok` per subscription's first message (it is then in place), or the first error.
    ready: mpsc::UnboundedSender<Result<(), String>>,
    /// Subscribe the rest of each socket's subscriptions.
    widen: CancellationToken,
    /// Give up (an error somewhere, or the wait is over).
    stop: CancellationToken,
    /// Sockets whose subscriptions have not all completed; `all_done` when none is left.
    unfinished: AtomicUsize,
    all_done: CancellationToken,
    /// `next` messages received but each subscription's first.
    updates: AtomicUsize,
}

/// One socket: connects with its first subscription, adds the others when widened, and reads
/// until each has completed.
async fn socket(c: Arc<Common>, i: usize, tasks: Vec<String>) -> Result<Vec<Seen>, String> {
    let outcome = match open(&c, i, &tasks[0]).await {
        Ok(mut ws) => {
            let outcome = receive(&c, &mut ws, &tasks).await;
            // Sockets stay open until every subscriber has its answer: thousands of closing
            // handshakes in the burst would be measured as delivery delay of the others.
            if c.unfinished.fetch_sub(1, Ordering::AcqRel) == 1 {
                c.all_done.cancel();
            }
            tokio::select! {
                _ = c.all_done.cancelled() => {}
                _ = c.stop.cancelled() => {}
            }
            let _ = ws.close(None).await;
            outcome
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        let _ = c.ready.send(Err(e.clone()));
        c.stop.cancel();
    }
    outcome
}

/// Connects, initialises and sends the first subscription.
async fn open(c: &Common, i: usize, task: &str) -> Result<Ws, String> {
    let _permit = c.connecting.acquire().await.map_err(|e| e.to_string())?;
    let mut ws = connect(c.addr, &c.url, i).await?;
    let init = json!({"type": "connection_init", "payload": {}}).to_string();
    ws.send(Message::Text(init.into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let f: Frame = serde_json::from_str(&t).map_err(|e| format!("frame {t}: {e}"))?;
                match f.kind {
                    "connection_ack" => break,
                    "ping" | "pong" | "ka" => continue,
                    other => return Err(format!("expected connection_ack, got {other}")),
                }
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".into()),
        }
    }
    ws.send(subscribe_message(1, task))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Reads the subscriptions' messages until each has completed (signalling `ready` on each
/// one's first).
async fn receive(c: &Common, ws: &mut Ws, tasks: &[String]) -> Result<Vec<Seen>, String> {
    let mut seen: Vec<Seen> = vec![None; tasks.len()];
    let mut first = vec![true; tasks.len()];
    let (mut subscribed, mut completed) = (1, 0);
    while completed < tasks.len() {
        let m = tokio::select! {
            _ = c.stop.cancelled() => break,
            _ = c.widen.cancelled(), if subscribed < tasks.len() => {
                for (j, task) in tasks.iter().enumerate().skip(1) {
                    ws.feed(subscribe_message(j + 1, task)).await.map_err(|e| e.to_string())?;
                }
                ws.flush().await.map_err(|e| e.to_string())?;
                subscribed = tasks.len();
                continue;
            }
            m = ws.next() => m,
        };
        let arrived = SystemTime::now();
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(p))) => {
                ws.send(Message::Pong(p)).await.map_err(|e| e.to_string())?;
                continue;
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".into()),
        };
        match read_frame(&text)? {
            Read::Next { sub, completed } => {
                let slot = seen.get_mut(sub).ok_or("subscription id out of range")?;
                if let Some(updated) = completed {
                    *slot = Some((arrived, updated));
                }
                if std::mem::take(&mut first[sub]) {
                    let _ = c.ready.send(Ok(()));
                } else {
                    c.updates.fetch_add(1, Ordering::Relaxed);
                }
            }
            Read::Complete(sub) if sub < tasks.len() => completed += 1,
            Read::Complete(_) => return Err("subscription id out of range".into()),
            Read::Other => {}
        }
    }
    Ok(seen)
}

/// CPU used so far by the server (in all and by thread name) and by this process.
struct Cpu {
    server: Duration,
    client: Duration,
    threads: std::collections::BTreeMap<String, Duration>,
}

impl Cpu {
    fn now(server: u32) -> Result<Cpu, String> {
        Ok(Cpu {
            server: cpu_time(Some(server))?,
            client: cpu_time(None)?,
            threads: cpu_by_thread(server)?,
        })
    }
}

/// Subscriptions in place, each waiting for its task's terminal state.
pub struct Crowd {
    set: tokio::task::JoinSet<Result<Vec<Seen>, String>>,
    common: Arc<Common>,
    ready: mpsc::UnboundedReceiver<Result<(), String>>,
    shape: Shape,
    started: Instant,
    /// From the first connect to the last subscription in place.
    pub connect_time: Duration,
    all_connected_at: SystemTime,
    /// CPU used by the server and by this process when the last subscription was in place.
    cpu_at_connected: Option<Cpu>,
    /// Updates received by then.
    updates_at_connected: usize,
    server: u32,
}

impl Crowd {
    /// `shape.sockets()` sockets on `addr`, each with its first subscription (subscription `i`
    /// follows `ids[i % ids.len()]`, socket `s` carries `s * per_socket` and the next ones);
    /// returns once each has its first message.
    pub async fn connect(
        server: u32,
        addr: SocketAddr,
        ids: &[String],
        shape: Shape,
        concurrency: usize,
    ) -> Result<Crowd, String> {
        let (ready_tx, ready) = mpsc::unbounded_channel();
        let sockets = shape.sockets();
        let common = Arc::new(Common {
            addr,
            url: format!("ws://{addr}/graphql/ws"),
            connecting: Semaphore::new(concurrency.max(1)),
            ready: ready_tx,
            widen: CancellationToken::new(),
            stop: CancellationToken::new(),
            unfinished: AtomicUsize::new(sockets),
            all_done: CancellationToken::new(),
            updates: AtomicUsize::new(0),
        });
        let mut set = tokio::task::JoinSet::new();
        let k = shape.per_socket.max(1);
        for s in 0..sockets {
            let tasks = (s * k..((s + 1) * k).min(shape.subscriptions))
                .map(|i| ids[i % ids.len()].clone())
                .collect();
            set.spawn(socket(common.clone(), s, tasks));
        }
        let mut crowd = Crowd {
            set,
            common,
            ready,
            shape,
            started: Instant::now(),
            connect_time: Duration::ZERO,
            all_connected_at: SystemTime::now(),
            cpu_at_connected: None,
            updates_at_connected: 0,
            server,
        };
        crowd.await_ready(sockets).await?;
        Ok(crowd)
    }

    async fn await_ready(&mut self, n: usize) -> Result<(), String> {
        for done in 0..n {
            match self.ready.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    self.common.stop.cancel();
                    return Err(format!("{done} of {n} subscriptions in place, then: {e}"));
                }
                None => return Err("the subscribers ended".into()),
            }
        }
        Ok(())
    }

    /// Every socket subscribes the rest of its subscriptions; returns once each has its first
    /// message. The burst may start after this.
    pub async fn widen(&mut self) -> Result<(), String> {
        self.common.widen.cancel();
        let rest = self.shape.subscriptions - self.shape.sockets();
        self.await_ready(rest).await?;
        self.connect_time = self.started.elapsed();
        self.all_connected_at = SystemTime::now();
        self.cpu_at_connected = Some(Cpu::now(self.server)?);
        self.updates_at_connected = self.common.updates.load(Ordering::Relaxed);
        Ok(())
    }

    /// Waits (at most `wait`) for every subscription's terminal state.
    pub async fn collect(mut self, wait: Duration) -> Result<Delivery, String> {
        let before = match self.cpu_at_connected.take() {
            Some(cpu) => cpu,
            None => return Err("collect before widen".into()),
        };
        let (set, c, server) = (&mut self.set, self.common.clone(), self.server);
        let collected = tokio::time::timeout(wait, async {
            // The CPU of the delivery only: the sockets close after the last answer.
            tokio::select! {
                _ = c.all_done.cancelled() => {}
                _ = c.stop.cancelled() => {}
            }
            let cpu = Cpu::now(server)?;
            let mut seen = Vec::new();
            while let Some(r) = set.join_next().await {
                seen.extend(r.map_err(|e| e.to_string())??);
            }
            Ok::<_, String>((cpu, seen))
        })
        .await;
        self.common.stop.cancel();
        let (cpu, seen) = match collected {
            Ok(r) => r?,
            Err(_) => return Err(format!("not every subscriber finished within {wait:?}")),
        };
        let arrivals: Vec<(SystemTime, SystemTime)> = seen.into_iter().flatten().collect();
        let updates = self.common.updates.load(Ordering::Relaxed);
        Ok(Delivery {
            messages: updates.saturating_sub(self.updates_at_connected),
            server_cpu: cpu.server.saturating_sub(before.server),
            client_cpu: cpu.client.saturating_sub(before.client),
            server_threads: cpu
                .threads
                .into_iter()
                .map(|(name, t)| {
                    let earlier = before.threads.get(&name).copied().unwrap_or_default();
                    (name, t.saturating_sub(earlier))
                })
                .filter(|(_, t)| !t.is_zero())
                .collect(),
            ..delays(&arrivals, self.all_connected_at)
        })
    }
}

/// The delay figures of (arrival, `updatedAt`) pairs.
fn delays(seen: &[(SystemTime, SystemTime)], all_connected_at: SystemTime) -> Delivery {
    let since = |a: SystemTime, b: SystemTime| a.duration_since(b).unwrap_or_default();
    let early = seen.iter().filter(|(_, u)| *u < all_connected_at).count();
    let first = seen.iter().map(|(_, u)| *u).min();
    let last = seen.iter().map(|(_, u)| *u).max();
    let (Some(first), Some(last)) = (first, last) else {
        return Delivery::default();
    };
    let spread = since(last, first).max(Duration::from_micros(1));
    let mut tenths = vec![Vec::new(); 10];
    for (arrived, updated) in seen {
        let k = (since(*updated, first).as_secs_f64() / spread.as_secs_f64() * 10.0) as usize;
        tenths[k.min(9)].push(since(*arrived, *updated));
    }
    let by_tenth = tenths
        .into_iter()
        .map(|mut d| {
            d.sort();
            (d.len(), percentile(&d, 0.99))
        })
        .collect();
    let since_first: Vec<Duration> = seen.iter().map(|(a, _)| since(*a, first)).collect();
    let mut delays: Vec<Duration> = seen.iter().map(|(a, u)| since(*a, *u)).collect();
    delays.sort();
    Delivery {
        received_completed: seen.len(),
        early,
        delay_p50: percentile(&delays, 0.50),
        delay_p99: percentile(&delays, 0.99),
        delay_max: delays.last().copied().unwrap_or_default(),
        burst_spread: since(last, first),
        by_tenth,
        wave_mean: since_first
            .iter()
            .sum::<Duration>()
            .checked_div(since_first.len().max(1) as u32)
            .unwrap_or_default(),
        wave_last: since_first.iter().max().copied().unwrap_or_default(),
        ..Delivery::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_next_complete_and_error_frames() {
        let next = r#"{"id":"3","type":"next","payload":{"data":{"taskUpdated":{"id":"t","status":"COMPLETED","version":3,"updatedAt":"2026-12-03T17:00:00.000001Z"}}}}"#;
        match read_frame(next) {
            Ok(Read::Next {
                sub: 2,
                completed: Some(at),
            }) => assert_eq!(
                at,
                SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_317_200_000_001)
            ),
            _ => panic!("not read as subscription 3's completion"),
        }
        let pending = r#"{"id":"1","type":"next","payload":{"data":{"taskUpdated":{"id":"t","status":"PROCESSING","version":2,"updatedAt":"2026-12-03T17:00:00Z"}}}}"#;
        assert!(matches!(
            read_frame(pending),
            Ok(Read::Next {
                sub: 0,
                completed: None
            })
        ));
        assert!(matches!(
            read_frame(r#"{"id":"2","type":"complete"}"#),
            Ok(Read::Complete(1))
        ));
        assert!(matches!(read_frame(r#"{"type":"ping"}"#), Ok(Read::Other)));
        let error = read_frame(r#"{"id":"1","type":"error","payload":[{"message":"no"}]}"#);
        assert!(matches!(error, Err(e) if e.starts_with("subscription error")));
    }

    #[test]
    fn sockets_round_up() {
        let shape = |subscriptions, per_socket| Shape {
            subscriptions,
            per_socket,
        };
        assert_eq!(shape(100_000, 6).sockets(), 16_667);
        assert_eq!(shape(20, 1).sockets(), 20);
        assert_eq!(shape(20, 3).sockets(), 7);
    }
}
