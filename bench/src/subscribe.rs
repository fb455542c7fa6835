//! `subscribe`: many `taskUpdated` WebSocket subscriptions on one service process, run as a
//! child process (this binary's hidden `service`, the service as `serve` runs it) so that its
//! resident memory is read from `/proc/<pid>/status` without the load generator's own. The
//! provider is the emulator, in this process, holding every call (`Emulator::hold`): the tasks
//! are submitted and claimed first, the subscribers connect while the calls are held, and then
//! the calls are answered and the tasks complete in one burst (beyond the worker's 1,024 calls
//! in flight, as fast as the worker takes the rest).
//!
//! Each socket carries `--per-socket` subscriptions (the protocol multiplexes them), so that more
//! subscriptions than the open-files limit allows sockets can be held: every socket opens with
//! its first subscription, the memory is read, then the others follow and it is read again, which
//! gives the cost of a socket with one subscription and of each further one apart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::emulator::EmulatorConfig;

use crate::crowd::Crowd;
pub use crate::crowd::{Delivery, Shape};
use crate::harness::{create_user, drive, expect_status, json_answer, start_emulator};

#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeArgs {
    /// `taskUpdated` subscriptions in all; subscription `i` follows task `i % tasks`.
    #[arg(long, default_value_t = 10000)]
    pub subscribers: usize,
    /// Tasks completing in the burst.
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Subscriptions multiplexed on each WebSocket (ids 1..K of graphql-transport-ws), for more
    /// subscriptions than the open-files limit allows sockets (one a subscriber is 1).
    #[arg(long, default_value_t = 1)]
    pub per_socket: usize,
    /// Each generation's time once the held calls are answered (the worker's calls beyond the
    /// first 1,024 take it too).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
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

/// Provider calls the worker has in flight at most (`WORKER_CONCURRENCY`'s ceiling): the held
/// calls, each a socket on both sides.
const MAX_IN_FLIGHT: usize = 1024;
/// Descriptors each process needs besides its sockets and the provider's (the databases, the
/// listener, the HTTP client's pool, the runtime).
const OTHER_FILES: usize = 512;

/// The subscriptions a socket must carry for `subscriptions` to fit the open-files limit
/// (raised to its hard value) beside the calls of `tasks`.
pub fn per_socket_to_fit(subscriptions: usize, tasks: usize) -> Result<usize, String> {
    let nofile = raise_nofile_limit()? as usize;
    let sockets = nofile
        .checked_sub(tasks.clamp(1, MAX_IN_FLIGHT) + OTHER_FILES)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("open-files limit {nofile} leaves no room for sockets"))?;
    Ok(subscriptions.div_ceil(sockets).max(1))
}
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeReport {
    pub subscribers: usize,
    pub tasks: usize,
    pub shape: Shape,
    pub connect_time: Duration,
    /// VmRSS of the service process, in KiB: before the subscribers connected, with every
    /// socket and its first subscription, and with every subscription.
    pub rss_before_kib: u64,
    pub rss_sockets_kib: u64,
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
    /// Extra VmRSS over all subscriptions, in KiB each.
    pub fn rss_per_subscriber_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.subscribers.max(1) as f64
    }

    /// Extra VmRSS of one socket with one subscription (a subscriber as most clients are), KiB.
    pub fn rss_per_socket_kib(&self) -> f64 {
        self.rss_sockets_kib.saturating_sub(self.rss_before_kib) as f64
            / self.shape.sockets().max(1) as f64
    }

    /// Extra VmRSS of each further subscription on a socket, KiB (`None` with one a socket).
    pub fn rss_per_further_subscription_kib(&self) -> Option<f64> {
        let further = self.subscribers.saturating_sub(self.shape.sockets());
        (further > 0).then(|| {
            self.rss_after_kib.saturating_sub(self.rss_sockets_kib) as f64 / further as f64
        })
    }

    /// `n` subscribers each on a socket of its own, projected from the cost of this run's
    /// sockets with their first subscription, in bytes.
    pub fn projected_one_per_socket_bytes(&self, n: usize) -> f64 {
        self.rss_per_socket_kib() * 1024.0 * n as f64
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
pub async fn subscribe(a: SubscribeArgs) -> Result<SubscribeReport, String> {
    let tasks = a.tasks.max(1);
    let shape = Shape {
        subscriptions: a.subscribers.max(1),
        per_socket: a.per_socket.max(1),
    };
    let in_flight = tasks.min(MAX_IN_FLIGHT);
    let nofile = raise_nofile_limit()?;
    // Each socket is a descriptor here and one in the service; each held call one in each too
    // (the emulator is in this process).
    let needed = (shape.sockets() + in_flight + OTHER_FILES) as libc::rlim_t;
    if nofile < needed {
        return Err(format!(
            "{} sockets need an open-files limit of {needed}, above this process's {nofile}: \
             raise the hard limit (ulimit -Hn) or carry more subscriptions a socket (--per-socket {})",
            shape.sockets(),
            per_socket_to_fit(shape.subscriptions, tasks)?
        ));
    }
    let stop = CancellationToken::new();
    let (emu, emu_url) = start_emulator(
        EmulatorConfig {
            latency: a.latency,
            reuse_images: true,
            ..EmulatorConfig::default()
        },
        &stop,
    )
    .await?;
    emu.hold();
    let mut child = Child::service(&[
        ("VOLCENGINE_ENDPOINT", emu_url),
        ("VOLCENGINE_API_KEY", "bench".into()),
        // No pacing: the burst is the point, and the emulator has no limit here.
        ("PROVIDER_IPM", "100000000".into()),
        ("WORKER_CONCURRENCY", in_flight.to_string()),
        ("PROVIDER_CONCURRENCY", in_flight.to_string()),
        // The calls are held until every subscription is in place, however long that takes.
        ("AI_TIMEOUT", "1h".into()),
        (
            "MAX_CONNECTIONS",
            (shape.sockets() + OTHER_FILES).to_string(),
        ),
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
        let ids = submit(&http, &base, tasks).await?;
        // Every call in flight before the baseline, so that the memory measured after is the
        // subscribers' only.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stats = json_answer(http.get(format!("{base}/api/v1/queue/stats"))).await?;
            let processing = stats["data"]["by_status"]["processing"]
                .as_u64()
                .unwrap_or(0);
            if processing as usize >= in_flight {
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
        let mut crowd = Crowd::connect(pid, child.addr, &ids, shape, a.connect_concurrency).await?;
        // Let the service settle (buffers allocated on the first message, then reused).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_sockets_kib = rss_kib(pid)?;
        crowd.widen().await?;
        let rss_after_kib = if shape.per_socket > 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss_kib(pid)?
        } else {
            rss_sockets_kib
        };
        eprintln!(
            "bench: {} subscriptions on {} sockets in place in {:.2}s; the burst",
            shape.subscriptions,
            shape.sockets(),
            crowd.connect_time.as_secs_f64()
        );
        let connect_time = crowd.connect_time;
        emu.release();
        let service = crowd.collect(Duration::from_secs(300)).await?;
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
        let rss = (rss_before_kib, rss_sockets_kib, rss_after_kib);
        Ok((connect_time, rss, service, lags))
    }
    .await;
    child.stop().await;
    stop.cancel();
    let (connect_time, rss, service, (publish_lag, handover_lag)) = result?;
    let floor = floor(&a, shape, service.burst_spread).await?;
    Ok(SubscribeReport {
        subscribers: shape.subscriptions,
        tasks,
        shape,
        connect_time,
        rss_before_kib: rss.0,
        rss_sockets_kib: rss.1,
        rss_after_kib: rss.2,
        service,
        publish_lag,
        handover_lag,
        floor,
    })
}

/// Submits `tasks` tasks for a new user; their ids.
async fn submit(http: &reqwest::Client, base: &str, tasks: usize) -> Result<Vec<String>, String> {
    let user = create_user(http, base).await?;
    let ids = Arc::new(std::sync::Mutex::new(vec![String::new(); tasks]));
    let (http, base, ids2) = (http.clone(), base.to_string(), ids.clone());
    drive("submit", tasks, 32, move |i| {
        let (http, base, user, ids) = (http.clone(), base.clone(), user.clone(), ids2.clone());
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
    let ids = ids.lock().map_err(|e| e.to_string())?.clone();
    Ok(ids)
}

/// The same subscribers on the bare WebSocket server (`ws_floor`), its tasks completing evenly
/// over `spread`.
async fn floor(a: &SubscribeArgs, shape: Shape, spread: Duration) -> Result<Delivery, String> {
    let mut child = Child::floor().await?;
    let result = async {
        let http = reqwest::Client::new();
        child.wait_ready(&http).await?;
        let ids: Vec<String> = (0..a.tasks.max(1)).map(|k| format!("floor-{k}")).collect();
        let mut crowd =
            Crowd::connect(child.pid()?, child.addr, &ids, shape, a.connect_concurrency).await?;
        crowd.widen().await?;
        eprintln!("bench: the same subscribers on the delivery floor; its burst");
        expect_status(
            http.post(format!("{}/burst", child.base))
                .json(&json!({"spread_ms": spread.as_millis() as u64}))
                .send()
                .await,
            202,
        )
        .await?;
        crowd.collect(spread + Duration::from_secs(300)).await
    }
    .await;
    child.stop().await;
    result
}

pub fn print_subscribe(r: &SubscribeReport) {
    let sockets = r.shape.sockets();
    println!(
        "subscription benchmark: {} taskUpdated subscriptions (graphql-transport-ws, {} a socket: {} sockets) on {} tasks, service in a child process",
        r.subscribers, r.shape.per_socket, sockets, r.tasks
    );
    println!(
        "  in place in            {:.2} s",
        r.connect_time.as_secs_f64()
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "  service VmRSS          {:.1} MiB before, {:.1} MiB with the subscribers: +{:.1} MiB = {:.1} KiB per subscriber",
        mib(r.rss_before_kib),
        mib(r.rss_after_kib),
        mib(r.rss_after_kib.saturating_sub(r.rss_before_kib)),
        r.rss_per_subscriber_kib()
    );
    if let Some(further) = r.rss_per_further_subscription_kib() {
        println!(
            "  per socket             {:.1} KiB with its first subscription (+{:.1} MiB for {sockets}), {further:.1} KiB per further subscription (+{:.1} MiB for {})",
            r.rss_per_socket_kib(),
            mib(r.rss_sockets_kib.saturating_sub(r.rss_before_kib)),
            mib(r.rss_after_kib.saturating_sub(r.rss_sockets_kib)),
            r.subscribers - sockets
        );
    }
    println!(
        "  projection             {:.0} MiB for {} subscribers one a socket ({:.1} KiB a socket with one subscription, measured on {sockets} sockets)",
        r.projected_one_per_socket_bytes(r.subscribers) / 1048576.0,
        r.subscribers,
        r.rss_per_socket_kib()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (sv, fl) = (&r.service, &r.floor);
    println!(
        "  received COMPLETED     {} of {}",
        sv.received_completed, r.subscribers
    );
    println!(
        "  completed early        {}  (before every subscription was in place; must be 0)",
        sv.early
    );
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
        "  messages in the burst  {} next messages, {} of them terminal states (the others: a queued task's new position, its start)",
        sv.messages, sv.received_completed
    );
    println!(
        "  CPU in the burst       service {:.2} s ({:.0} us per message), its subscribers here {:.2} s; floor {:.2} s ({:.0} us), its subscribers {:.2} s",
        sv.server_cpu.as_secs_f64(),
        per_message(sv.server_cpu, sv.messages),
        sv.client_cpu.as_secs_f64(),
        fl.server_cpu.as_secs_f64(),
        per_message(fl.server_cpu, fl.messages),
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
