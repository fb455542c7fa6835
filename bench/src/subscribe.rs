//! `subscribe`: many `taskUpdated` WebSocket subscribers on one service process, run as a child
//! process (this binary's hidden `service`, the service as `serve` runs it) so that its resident
//! memory is read from `/proc/<pid>/status` without the load generator's own. The provider is the emulator, in this
//! process, holding every call for `latency`: the tasks are submitted and claimed first, the
//! subscribers connect while the calls are held, and then the tasks complete in one burst.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::emulator::EmulatorConfig;

use crate::harness::{create_user, drive, expect_status, json_answer, percentile, start_emulator};

#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeArgs {
    /// WebSocket `taskUpdated` subscribers.
    #[arg(long, default_value_t = 10000)]
    pub subscribers: usize,
    /// Tasks completing in the burst; subscriber `i` follows task `i % tasks`.
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// How long the emulator holds each call (every subscriber must connect meanwhile).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// The `subscribe` subcommand: one run, printed.
pub async fn run(a: SubscribeArgs) -> Result<(), String> {
    let report = subscribe(a).await?;
    print_subscribe(&report);
    Ok(())
}

/// How the terminal states reached the subscribers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    /// Subscribers that saw their task's terminal `COMPLETED` state.
    pub received_completed: usize,
    /// Terminal states that arrived before the last subscriber had connected (the emulator's
    /// latency was too short for a clean burst).
    pub early: usize,
    /// From the task's `updatedAt` (set by the worker as it stores the change) to the arrival of
    /// the `COMPLETED` message at the subscriber.
    pub delay_p50: Duration,
    pub delay_p99: Duration,
    pub delay_max: Duration,
    /// From the first to the last task completion (`updatedAt`), i.e. how much of a burst it was.
    pub burst_spread: Duration,
    /// CPU time from the last subscriber connected to the last terminal state received: of the
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

#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeReport {
    pub subscribers: usize,
    pub tasks: usize,
    pub connect_time: Duration,
    /// VmRSS of the service process before and after the subscribers connected, in KiB.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub service: Delivery,
    /// Inside the service (its `/metrics`): a change's `updatedAt` to its publication, and to
    /// its hand-over to each subscriber's socket.
    pub publish_lag: Option<Lag>,
    pub handover_lag: Option<Lag>,
    /// The same subscribers on the bare WebSocket server of `ws_floor`, its tasks completing
    /// evenly over the service's burst spread: the baseline of the delivery delay.
    pub floor: Delivery,
}

impl SubscribeReport {
    pub fn rss_per_subscriber_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.subscribers.max(1) as f64
    }
}

/// A latency histogram of the service's `/metrics`, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    pub count: u64,
    pub mean: Duration,
    /// Upper bounds of the buckets the 50th and 99th percentiles fall in.
    pub p50_at_most: f64,
    pub p99_at_most: f64,
}

/// Reads histogram `name` from a Prometheus text exposition; `labels` as rendered (e.g.
/// `status="completed"`), empty for none.
pub fn histogram(text: &str, name: &str, labels: &str) -> Option<Lag> {
    let (series, bucket_prefix) = match labels {
        "" => (String::new(), format!("{name}_bucket{{le=\"")),
        l => (format!("{{{l}}}"), format!("{name}_bucket{{{l},le=\"")),
    };
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix}{series} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (sum, count) = (value("_sum")?, value("_count")?);
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&bucket_prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n >= q * count)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    Some(Lag {
        count: count as u64,
        mean: Duration::from_secs_f64(if count > 0.0 { sum / count } else { 0.0 }),
        p50_at_most: at(0.50),
        p99_at_most: at(0.99),
    })
}

/// Raises the soft open-files limit to the hard one: ten thousand sockets on each side exceed
/// the usual soft limit of 1024. The child process inherits the raised limit.
pub fn raise_nofile_limit() -> Result<libc::rlim_t, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The name and CPU time (user + system) in a `/proc/.../stat` line: the name is in parentheses
/// and may hold spaces; utime and stime are the 14th and 15th fields, in clock ticks.
fn parse_stat(stat: &str) -> Option<(&str, Duration)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (ticks(11)? + ticks(12)?) as f64 / hz;
    Some((stat.get(open + 1..close)?, Duration::from_secs_f64(cpu)))
}

/// CPU time (user + system) a process has used so far, its ended threads included:
/// `/proc/<pid>/stat`, or `self`.
pub fn cpu_time(pid: Option<u32>) -> Result<Duration, String> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_stat(&stat)
        .map(|(_, cpu)| cpu)
        .ok_or_else(|| format!("no utime/stime in {path}"))
}

/// CPU time of a process's live threads, summed by thread name (`tokio-rt-worker`, `worker`,
/// `sqlite-writer`, …).
pub fn cpu_by_thread(pid: u32) -> Result<std::collections::BTreeMap<String, Duration>, String> {
    let dir = format!("/proc/{pid}/task");
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let Ok(entry) = entry else { continue };
        // A thread may have ended since the listing.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((name, cpu)) = parse_stat(&stat) {
            *out.entry(name.to_string()).or_default() += cpu;
        }
    }
    Ok(out)
}

/// The service as a child process on a free port, killed when dropped.
struct Child {
    process: tokio::process::Child,
    addr: SocketAddr,
    /// `http://{addr}`.
    base: String,
    dir: std::path::PathBuf,
}

impl Child {
    /// The service (`service`, as `volcengine-ai-server serve`), configured by `env`.
    async fn service(env: &[(&str, String)]) -> Result<Child, String> {
        Child::start(&["service"], env).await
    }

    /// The delivery floor (`delivery-floor`).
    async fn floor() -> Result<Child, String> {
        Child::start(&["delivery-floor"], &[]).await
    }

    async fn start(args: &[&str], env: &[(&str, String)]) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        // The port is free now; the child binds it a moment later (a race only with another
        // process binding the same random port in between).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        let dir = std::env::temp_dir().join(format!("vas-bench-{}", uuid::Uuid::new_v4()));
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(args)
            .current_dir(std::env::temp_dir())
            .env("HOST", "127.0.0.1")
            .env("PORT", addr.port().to_string())
            .env("DATA_DIR", &dir)
            .env("LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = cmd.spawn().map_err(|e| format!("start the service: {e}"))?;
        Ok(Child {
            process,
            addr,
            base: format!("http://{addr}"),
            dir,
        })
    }

    fn pid(&self) -> Result<u32, String> {
        self.process.id().ok_or_else(|| "the service exited".into())
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.process.try_wait() {
                return Err(format!("the service exited at start: {status}"));
            }
            if let Ok(r) = http.get(format!("{}/ready", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("the service did not become ready within 30 s".into())
    }

    async fn stop(mut self) {
        let _ = self.process.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SUBSCRIPTION: &str =
    "subscription($id: ID!) { taskUpdated(id: $id) { id status version updatedAt } }";

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// Arrival of the `COMPLETED` message, and the task's `updatedAt` in it.
    completed: Option<(SystemTime, SystemTime)>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects from a loopback source address of its own (127.0.0.2 and up, spread over `i`) so
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

async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| format!("frame: {e}"))
            }
            Some(Ok(Message::Ping(p))) => {
                ws.send(Message::Pong(p)).await.map_err(|e| e.to_string())?
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".into()),
        }
    }
}

/// Connects, subscribes, waits for the first state (the subscription is then in place) and
/// signals `ready`; then waits for the terminal state.
async fn subscriber(
    (addr, url): (SocketAddr, String),
    i: usize,
    task_id: String,
    connecting: Arc<Semaphore>,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    stop: CancellationToken,
    held: Held,
) -> Result<Seen, String> {
    let setup = async {
        let _permit = connecting.acquire().await.map_err(|e| e.to_string())?;
        let mut ws = connect(addr, &url, i).await?;
        ws.send(Message::Text(
            json!({"type": "connection_init", "payload": {}})
                .to_string()
                .into(),
        ))
        .await
        .map_err(|e| e.to_string())?;
        loop {
            let m = next_json(&mut ws).await?;
            match m["type"].as_str() {
                Some("connection_ack") => break,
                Some("ping") | Some("pong") | Some("ka") => continue,
                other => return Err(format!("expected connection_ack, got {other:?}")),
            }
        }
        ws.send(Message::Text(
            json!({"id": "1", "type": "subscribe",
                   "payload": {"query": SUBSCRIPTION, "variables": {"id": task_id}}})
            .to_string()
            .into(),
        ))
        .await
        .map_err(|e| e.to_string())?;
        Ok::<_, String>(ws)
    };
    let mut ws = match setup.await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = ready.send(Err(e.clone())).await;
            stop.cancel();
            return Err(e);
        }
    };
    let outcome = receive(&mut ws, &ready, &stop).await;
    // Sockets stay open until every subscriber has its answer: ten thousand closing handshakes
    // in the burst would be measured as delivery delay of the others.
    if held.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
        held.1.cancel();
    }
    tokio::select! {
        _ = held.1.cancelled() => {}
        _ = stop.cancelled() => {}
    }
    let _ = ws.close(None).await;
    outcome
}

/// Subscribers not finished yet, and the token cancelled when none is left.
type Held = Arc<(std::sync::atomic::AtomicUsize, CancellationToken)>;

/// Reads the subscription's messages until its `complete` (signalling `ready` on the first).
async fn receive(
    ws: &mut Ws,
    ready: &tokio::sync::mpsc::Sender<Result<(), String>>,
    stop: &CancellationToken,
) -> Result<Seen, String> {
    let mut seen = Seen::default();
    let mut first = true;
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => break,
            m = next_json(ws) => m,
        };
        let arrived = SystemTime::now();
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                if first {
                    let _ = ready.send(Err(e.clone())).await;
                }
                return Err(e);
            }
        };
        match m["type"].as_str() {
            Some("next") => {
                let t = &m["payload"]["data"]["taskUpdated"];
                if t["status"] == "COMPLETED" {
                    let updated = t["updatedAt"]
                        .as_str()
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .map(SystemTime::from)
                        .ok_or_else(|| format!("no updatedAt in {m}"))?;
                    seen.completed = Some((arrived, updated));
                }
                if first {
                    first = false;
                    let _ = ready.send(Ok(())).await;
                }
            }
            Some("complete") => break,
            Some("error") => return Err(format!("subscription error: {m}")),
            _ => {}
        }
    }
    Ok(seen)
}

pub async fn subscribe(a: SubscribeArgs) -> Result<SubscribeReport, String> {
    let nofile = raise_nofile_limit()?;
    // Each subscriber holds one socket here and one in the service, plus the provider calls.
    let needed = (a.subscribers + a.tasks + 256) as libc::rlim_t;
    if nofile < needed {
        return Err(format!(
            "open-files limit {nofile} is below the {needed} this run needs; raise the hard limit (ulimit -Hn)"
        ));
    }
    let tasks = a.tasks.max(1);
    let stop = CancellationToken::new();
    let (_emu, emu_url) = start_emulator(
        EmulatorConfig {
            latency: a.latency,
            reuse_images: true,
            ..EmulatorConfig::default()
        },
        &stop,
    )
    .await?;

    let in_flight = tasks.min(1024);
    let mut child = Child::service(&[
        ("VOLCENGINE_ENDPOINT", emu_url),
        ("VOLCENGINE_API_KEY", "bench".into()),
        // No pacing: the burst is the point, and the emulator has no limit here.
        ("PROVIDER_IPM", "100000000".into()),
        ("WORKER_CONCURRENCY", in_flight.to_string()),
        ("PROVIDER_CONCURRENCY", in_flight.to_string()),
        ("AI_TIMEOUT", format!("{}s", a.latency.as_secs() + 120)),
        // A quiet subscriber re-reads the store every SUBSCRIPTION_RESYNC (15 s); ten thousand
        // of those falling into the burst would be measured as delivery delay.
        ("SUBSCRIPTION_RESYNC", "1h".into()),
    ])
    .await?;
    let result = async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| e.to_string())?;
        child.wait_ready(&http).await?;
        let base = child.base.clone();
        let user = create_user(&http, &base).await?;
        let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); tasks]));
        {
            let (http, base, user, ids) = (http.clone(), base.clone(), user.clone(), ids.clone());
            drive("submit", tasks, 32, move |i| {
                let (http, base, user, ids) =
                    (http.clone(), base.clone(), user.clone(), ids.clone());
                async move {
                    let r = http
                        .post(format!("{base}/api/v1/ai/image/task"))
                        // The smallest size: the emulator renders each image as the worker
                        // downloads it, in this process, and that would spread the burst.
                        .json(
                            &json!({"prompt": format!("subscribed {i}"), "user_id": user,
                                      "size": "512x512"}),
                        )
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.status().as_u16() != 201 {
                        return expect_status(Ok(r), 201).await;
                    }
                    let body: Value = r.json().await.map_err(|e| e.to_string())?;
                    let id = body["data"]["task_id"].as_str().ok_or("no task id")?;
                    if let Ok(mut ids) = ids.lock() {
                        ids[i] = id.to_string();
                    }
                    Ok(())
                }
            })
            .await?;
        }
        let ids: Vec<String> = ids.lock().map_err(|e| e.to_string())?.clone();
        // Every call in flight before the baseline, so that the memory measured after is the
        // subscribers' only.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stats = json_answer(http.get(format!("{base}/api/v1/queue/stats"))).await?;
            let processing = stats["data"]["by_status"]["processing"]
                .as_u64()
                .unwrap_or(0);
            if processing as usize >= tasks.min(in_flight) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("only {processing} of {tasks} tasks were claimed"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = child.pid()?;
        let rss_before_kib = rss_kib(pid)?;

        let crowd = Crowd::connect(pid, child.addr, &ids, &a).await?;
        // Let the service settle (buffers allocated on the first message, then reused).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_after_kib = rss_kib(pid)?;
        eprintln!(
            "bench: {} subscribers connected in {:.2}s; waiting for the burst",
            a.subscribers,
            crowd.connect_time.as_secs_f64()
        );
        let connect_time = crowd.connect_time;
        let service = crowd.collect(a.latency + Duration::from_secs(60)).await?;
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let lags = (
            histogram(&metrics, "task_event_lag_seconds", "status=\"completed\""),
            histogram(&metrics, "subscription_update_lag_seconds", ""),
        );
        Ok((connect_time, rss_before_kib, rss_after_kib, service, lags))
    }
    .await;
    child.stop().await;
    stop.cancel();
    let (connect_time, rss_before_kib, rss_after_kib, service, (publish_lag, handover_lag)) =
        result?;
    let floor = floor(&a, service.burst_spread).await?;
    Ok(SubscribeReport {
        subscribers: a.subscribers,
        tasks,
        connect_time,
        rss_before_kib,
        rss_after_kib,
        service,
        publish_lag,
        handover_lag,
        floor,
    })
}

/// The same subscribers on the bare WebSocket server (`ws_floor`), its tasks completing evenly
/// over `spread`.
async fn floor(a: &SubscribeArgs, spread: Duration) -> Result<Delivery, String> {
    let mut child = Child::floor().await?;
    let result = async {
        let http = reqwest::Client::new();
        child.wait_ready(&http).await?;
        let ids: Vec<String> = (0..a.tasks.max(1)).map(|k| format!("floor-{k}")).collect();
        let crowd = Crowd::connect(child.pid()?, child.addr, &ids, a).await?;
        eprintln!("bench: the same subscribers on the delivery floor; its burst");
        expect_status(
            http.post(format!("{}/burst", child.base))
                .json(&json!({"spread_ms": spread.as_millis() as u64}))
                .send()
                .await,
            202,
        )
        .await?;
        crowd.collect(spread + Duration::from_secs(60)).await
    }
    .await;
    child.stop().await;
    result
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

/// Subscribers connected, each waiting for its task's terminal state.
struct Crowd {
    set: tokio::task::JoinSet<Result<Seen, String>>,
    done: CancellationToken,
    connect_time: Duration,
    all_connected_at: SystemTime,
    /// CPU used by the server and by this process when the last subscriber had connected.
    cpu_at_connected: Cpu,
    server: u32,
    held: Held,
}

impl Crowd {
    /// `a.subscribers` sockets on `addr`, subscriber `i` following `ids[i % ids.len()]`;
    /// returns once every one has its subscription's first message.
    async fn connect(
        server: u32,
        addr: SocketAddr,
        ids: &[String],
        a: &SubscribeArgs,
    ) -> Result<Crowd, String> {
        let url = format!("ws://{addr}/graphql/ws");
        let connecting = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
        let done = CancellationToken::new();
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let held: Held = Arc::new((
            std::sync::atomic::AtomicUsize::new(a.subscribers),
            CancellationToken::new(),
        ));
        for i in 0..a.subscribers {
            set.spawn(subscriber(
                (addr, url.clone()),
                i,
                ids[i % ids.len()].clone(),
                connecting.clone(),
                ready_tx.clone(),
                done.clone(),
                held.clone(),
            ));
        }
        drop(ready_tx);
        let mut connected = 0;
        while connected < a.subscribers {
            match ready_rx.recv().await {
                Some(Ok(())) => connected += 1,
                Some(Err(e)) => {
                    done.cancel();
                    return Err(format!("subscriber {connected} failed: {e}"));
                }
                None => break,
            }
        }
        Ok(Crowd {
            set,
            done,
            connect_time: started.elapsed(),
            all_connected_at: SystemTime::now(),
            cpu_at_connected: Cpu::now(server)?,
            server,
            held,
        })
    }

    /// Waits (at most `wait`) for every subscriber's terminal state.
    async fn collect(mut self, wait: Duration) -> Result<Delivery, String> {
        let set = &mut self.set;
        let (held, server) = (self.held.clone(), self.server);
        let collected = tokio::time::timeout(wait, async {
            // The CPU of the delivery only: the sockets close after the last answer.
            tokio::select! {
                _ = held.1.cancelled() => {}
                _ = self.done.cancelled() => {}
            }
            let cpu = Cpu::now(server)?;
            let mut seen = Vec::new();
            while let Some(r) = set.join_next().await {
                seen.push(r.map_err(|e| e.to_string())??);
            }
            Ok::<_, String>((cpu, seen))
        })
        .await;
        self.done.cancel();
        let (cpu, seen) = match collected {
            Ok(r) => r?,
            Err(_) => return Err(format!("not every subscriber finished within {wait:?}")),
        };
        let before = &self.cpu_at_connected;
        let mut delays = Vec::with_capacity(seen.len());
        let (mut early, mut first_update, mut last_update) = (0, None, None);
        for (arrived, updated) in seen.iter().filter_map(|s| s.completed) {
            if updated < self.all_connected_at {
                early += 1;
            }
            first_update = Some(first_update.map_or(updated, |f: SystemTime| f.min(updated)));
            last_update = Some(last_update.map_or(updated, |l: SystemTime| l.max(updated)));
            delays.push(arrived.duration_since(updated).unwrap_or_default());
        }
        let by_tenth = match (first_update, last_update) {
            (Some(f), Some(l)) => {
                let spread = l
                    .duration_since(f)
                    .unwrap_or_default()
                    .max(Duration::from_micros(1));
                let mut tenths = vec![Vec::new(); 10];
                for (arrived, updated) in seen.iter().filter_map(|s| s.completed) {
                    let at = updated.duration_since(f).unwrap_or_default();
                    let k = ((at.as_secs_f64() / spread.as_secs_f64()) * 10.0) as usize;
                    tenths[k.min(9)].push(arrived.duration_since(updated).unwrap_or_default());
                }
                tenths
                    .into_iter()
                    .map(|mut d| {
                        d.sort();
                        (d.len(), percentile(&d, 0.99))
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let since_first: Vec<Duration> = match first_update {
            Some(f) => seen
                .iter()
                .filter_map(|s| s.completed)
                .map(|(arrived, _)| arrived.duration_since(f).unwrap_or_default())
                .collect(),
            None => Vec::new(),
        };
        let wave_mean = since_first
            .iter()
            .sum::<Duration>()
            .checked_div(since_first.len().max(1) as u32)
            .unwrap_or_default();
        let wave_last = since_first.iter().max().copied().unwrap_or_default();
        delays.sort();
        Ok(Delivery {
            by_tenth,
            wave_mean,
            wave_last,
            received_completed: delays.len(),
            early,
            delay_p50: percentile(&delays, 0.50),
            delay_p99: percentile(&delays, 0.99),
            delay_max: delays.last().copied().unwrap_or_default(),
            burst_spread: match (first_update, last_update) {
                (Some(f), Some(l)) => l.duration_since(f).unwrap_or_default(),
                _ => Duration::ZERO,
            },
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
        })
    }
}

pub fn print_subscribe(r: &SubscribeReport) {
    println!(
        "subscription benchmark: {} taskUpdated subscribers (graphql-transport-ws, one socket each) on {} tasks, service in a child process",
        r.subscribers, r.tasks
    );
    println!(
        "  connected in           {:.2} s",
        r.connect_time.as_secs_f64()
    );
    println!(
        "  service VmRSS          {:.1} MiB before, {:.1} MiB with the subscribers: +{:.1} MiB = {:.1} KiB per subscriber",
        r.rss_before_kib as f64 / 1024.0,
        r.rss_after_kib as f64 / 1024.0,
        r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64 / 1024.0,
        r.rss_per_subscriber_kib()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (sv, fl) = (&r.service, &r.floor);
    println!(
        "  received COMPLETED     {} of {}",
        sv.received_completed, r.subscribers
    );
    println!("  completed early        {}  (before every subscriber was connected; raise --latency if not 0)", sv.early);
    println!(
        "  burst                  {} tasks completed within {:.0} ms",
        r.tasks,
        ms(sv.burst_spread)
    );
    println!(
        "  delivery delay         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms  (task updatedAt -> message at the client)",
        ms(sv.delay_p50),
        ms(sv.delay_p99),
        ms(sv.delay_max)
    );
    println!(
        "  wave                   messages arrived {:.0} ms after the first completion on average, the last after {:.0} ms",
        ms(sv.wave_mean),
        ms(sv.wave_last)
    );
    if !sv.by_tenth.is_empty() {
        let tenths: Vec<String> = sv
            .by_tenth
            .iter()
            .map(|(n, p99)| format!("{:.0} ({n})", ms(*p99)))
            .collect();
        println!(
            "  p99 by tenth of burst  {} ms  (messages in brackets)",
            tenths.join(", ")
        );
    }
    for (what, lag) in [
        ("published after", &r.publish_lag),
        ("handed over after", &r.handover_lag),
    ] {
        if let Some(l) = lag {
            println!(
                "  {what:<22} mean {:.1} ms, p50 <= {} ms, p99 <= {} ms  (in the service: updatedAt -> {}; {} samples)",
                ms(l.mean),
                l.p50_at_most * 1000.0,
                l.p99_at_most * 1000.0,
                if what.starts_with("published") { "event published" } else { "message to a socket" },
                l.count
            );
        }
    }
    println!(
        "  floor (bare WebSocket) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms  ({} of {} received; the same subscribers, {} tasks completing evenly over {:.0} ms)",
        ms(fl.delay_p50),
        ms(fl.delay_p99),
        ms(fl.delay_max),
        fl.received_completed,
        r.subscribers,
        r.tasks,
        ms(fl.burst_spread)
    );
    let per_message = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "  CPU in the burst       service {:.2} s ({:.0} us per message), its subscribers here {:.2} s; floor {:.2} s ({:.0} us), its subscribers {:.2} s",
        sv.server_cpu.as_secs_f64(),
        per_message(sv.server_cpu, sv.received_completed),
        sv.client_cpu.as_secs_f64(),
        fl.server_cpu.as_secs_f64(),
        per_message(fl.server_cpu, fl.received_completed),
        fl.client_cpu.as_secs_f64()
    );
    let threads: Vec<String> = sv
        .server_threads
        .iter()
        .map(|(name, t)| format!("{name} {:.2} s", t.as_secs_f64()))
        .collect();
    println!("  service CPU by thread  {}", threads.join(", "));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);
    println!(
        "  delay / floor          p50 {:.2}, p99 {:.2}",
        ratio(sv.delay_p50, fl.delay_p50),
        ratio(sv.delay_p99, fl.delay_p99)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_histogram_with_and_without_labels() {
        let text = "\
# TYPE lag histogram
lag_bucket{status=\"completed\",le=\"0.01\"} 2
lag_bucket{status=\"completed\",le=\"0.1\"} 9
lag_bucket{status=\"completed\",le=\"+Inf\"} 10
lag_sum{status=\"completed\"} 0.5
lag_count{status=\"completed\"} 10
lag_bucket{status=\"pending\",le=\"0.01\"} 1
lag_bucket{status=\"pending\",le=\"+Inf\"} 1
lag_sum{status=\"pending\"} 0.001
lag_count{status=\"pending\"} 1
plain_bucket{le=\"0.5\"} 4
plain_bucket{le=\"+Inf\"} 4
plain_sum 1
plain_count 4
";
        let l = histogram(text, "lag", "status=\"completed\"").expect("completed series");
        assert_eq!(l.count, 10);
        assert_eq!(l.mean, Duration::from_millis(50));
        assert_eq!((l.p50_at_most, l.p99_at_most), (0.1, f64::INFINITY));
        let p = histogram(text, "plain", "").expect("unlabelled series");
        assert_eq!((p.count, p.p99_at_most), (4, 0.5));
        assert!(histogram(text, "lag", "status=\"failed\"").is_none());
    }

    #[test]
    fn reads_a_stat_line_whose_name_has_spaces_and_parentheses() {
        // Fields after the name: state, then 10 more, then utime (14th) and stime (15th).
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0";
        let (name, cpu) = parse_stat(line).expect("parsed");
        assert_eq!(name, "a (b) c");
        // SAFETY: sysconf only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu, Duration::from_secs_f64(500.0 / hz));
        assert!(parse_stat("42 (x) S 1").is_none());
    }
}
