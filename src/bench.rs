//! Benchmarks driven by the `bench` subcommand: the real service and the emulator run in this
//! process on loopback ports, and a load generator speaks HTTP to them like clients do. Results
//! are printed as a table with the baseline they are measured against.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Backends, Role};
use crate::config::Config;
use crate::emulator::{self, EmulatorConfig};

pub mod all;
pub mod distributed;
pub mod h1;
pub mod subscribe;
pub mod ws_floor;

/// Where the service under test keeps its state.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Embedded,
    /// MongoDB + Redis; each run uses a database and key prefix of its own.
    Distributed {
        mongo_url: String,
        redis_url: String,
    },
}

#[derive(Debug, Clone)]
pub struct PipelineArgs {
    pub tasks: usize,
    /// The emulator's images-per-minute limit, and the pace the service is configured with;
    /// 0 for no limit (then the figure is tasks per second through the worker).
    pub ipm: u32,
    pub latency: Duration,
    /// Concurrent HTTP clients submitting.
    pub clients: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineReport {
    pub tasks: usize,
    pub completed: u64,
    pub failed: u64,
    pub provider_requests: u64,
    pub answers_429: u64,
    pub duplicate_calls: u64,
    pub elapsed: Duration,
    pub achieved_ipm: f64,
    pub ratio: f64,
    /// Without a limit: the store work of one task's life (insert, claim, image, completion)
    /// done directly at the worker's concurrency, in tasks per second.
    pub store_floor: Option<Measure>,
}

/// The service under test: the embedded default in a fresh data folder, with one user.
struct UnderTest {
    running: app::Running,
    base: String,
    user: String,
    store: Arc<dyn crate::store::Store>,
    dir: std::path::PathBuf,
    /// The run's MongoDB database and Redis key prefix (distributed only).
    namespace: String,
}

impl UnderTest {
    async fn start(
        mut config: Config,
        role: Role,
        backend: &Backend,
        client: &reqwest::Client,
    ) -> Result<UnderTest, String> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("vas-bench-{run}"));
        let namespace = format!("vas_bench_{}", &run[..12]);
        config.data_dir = dir.clone();
        config.log_level = "warn".into();
        let backends = match backend {
            Backend::Embedded => Backends::embedded(&config).map_err(|e| e.to_string())?,
            Backend::Distributed {
                mongo_url,
                redis_url,
            } => {
                config.mongo_url = Some(mongo_url.clone());
                config.redis_url = Some(redis_url.clone());
                config.mongo_database = namespace.clone();
                config.redis_prefix = namespace.clone();
                Backends::distributed(&config, mongo_url, redis_url)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let store = backends.store.clone();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let running = app::start_with(config, Some(listener), role, backends)
            .await
            .map_err(|e| e.to_string())?;
        let base = running.public_base.clone();
        let user = create_user(client, &base).await?;
        Ok(UnderTest {
            running,
            base,
            user,
            store,
            dir,
            namespace,
        })
    }

    async fn stop(self) {
        self.running.shutdown(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Ark emulator on a free loopback port, with the key the bench's service is configured
/// with; its URL beside it.
pub(crate) async fn start_emulator(
    config: EmulatorConfig,
    stop: &CancellationToken,
) -> Result<(emulator::Emulator, String), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let emu = emulator::serve(
        EmulatorConfig {
            api_key: Some("bench".into()),
            ..config
        },
        listener,
        stop.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((emu, url))
}

/// Submits `tasks` at once to an embedded service whose provider (the emulator) allows `ipm`
/// images per minute after `latency` each, and measures the images per minute achieved.
pub async fn pipeline(a: PipelineArgs) -> Result<PipelineReport, String> {
    let stop = CancellationToken::new();
    let (emu, emu_url) = start_emulator(
        EmulatorConfig {
            latency: a.latency,
            images_per_minute: (a.ipm > 0).then_some(a.ipm),
            reuse_images: true,
            ..EmulatorConfig::default()
        },
        &stop,
    )
    .await?;

    let unlimited = a.ipm == 0;
    // Enough calls in flight to keep the pace through the latency, with headroom; without a
    // limit, as many as the clients submitting.
    let in_flight = if unlimited {
        a.clients.clamp(4, 1024)
    } else {
        ((f64::from(a.ipm) / 60.0 * a.latency.as_secs_f64()) * 1.5).ceil() as usize + 4
    };
    let config = Config {
        volcengine_endpoint: emu_url,
        volcengine_api_key: Some("bench".into()),
        provider_ipm: crate::config::ProviderIpm {
            // "No limit" still paces, at a rate no run reaches.
            all: Some(if unlimited { 100_000_000 } else { a.ipm }),
            ..Default::default()
        },
        worker_concurrency: in_flight,
        provider_concurrency: in_flight,
        retry_base_delay: Duration::from_millis(200),
        retry_max_delay: Duration::from_secs(5),
        ..Config::default()
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .build()
        .map_err(|e| e.to_string())?;
    let store_floor = if unlimited {
        Some(lifecycle_floor(a.tasks, in_flight, &http).await?)
    } else {
        None
    };
    let service = UnderTest::start(config, Role::Serve, &Backend::Embedded, &http).await?;
    let base = service.base.clone();

    let started = Instant::now();
    {
        let (http, base, user) = (http.clone(), base.clone(), service.user.clone());
        drive("submit", a.tasks, a.clients, move |i| {
            let (http, base, user) = (http.clone(), base.clone(), user.clone());
            async move {
                let r = http
                    .post(format!("{base}/api/v1/ai/image/task"))
                    .json(&json!({"prompt": format!("bench {i}"), "user_id": user}))
                    .send()
                    .await;
                expect_status(r, 201).await
            }
        })
        .await?;
    }
    let submitted_in = started.elapsed();
    eprintln!(
        "bench: {} tasks submitted in {:.2}s",
        a.tasks,
        submitted_in.as_secs_f64()
    );

    let mut last_report = Instant::now();
    let bar = crate::progress::bar(a.tasks as u64, "completed");
    let (completed, failed) = loop {
        let stats = json_answer(http.get(format!("{base}/api/v1/queue/stats"))).await?;
        let by = &stats["data"]["by_status"];
        let (done, failed) = (
            by["completed"].as_u64().unwrap_or(0),
            by["failed"].as_u64().unwrap_or(0),
        );
        bar.set_position(done + failed);
        bar.set_message(format!("{failed} failed"));
        if (done + failed) as usize >= a.tasks {
            bar.finish_and_clear();
            break (done, failed);
        }
        // Without a terminal (a log file, CI) a line every 10 s replaces the bar.
        if !crate::progress::interactive() && last_report.elapsed() >= Duration::from_secs(10) {
            let mins = started.elapsed().as_secs_f64() / 60.0;
            eprintln!(
                "bench: {done}/{} completed, {failed} failed, {:.0} images/min so far",
                a.tasks,
                done as f64 / mins
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    let s = emu.stats();
    service.stop().await;
    stop.cancel();

    let achieved_ipm = completed as f64 / (elapsed.as_secs_f64() / 60.0);
    // A run shorter than a minute cannot show more than the burst the provider allows at once.
    let ideal = ideal_minutes(a.tasks, a.ipm, a.latency);
    Ok(PipelineReport {
        tasks: a.tasks,
        completed,
        failed,
        provider_requests: s.requests,
        answers_429: s.by_status.get(&429).copied().unwrap_or(0),
        duplicate_calls: s.by_prompt.values().map(|n| n.saturating_sub(1)).sum(),
        elapsed,
        achieved_ipm,
        ratio: ideal / (elapsed.as_secs_f64() / 60.0),
        store_floor,
    })
}

/// The store work of one task's life done directly, on a store of its own: insert, the claim,
/// the image bytes (a PNG as the emulator makes), the completion.
async fn lifecycle_floor(
    tasks: usize,
    concurrency: usize,
    http: &reqwest::Client,
) -> Result<Measure, String> {
    let floor = UnderTest::start(Config::default(), Role::Api, &Backend::Embedded, http).await?;
    let png = bytes::Bytes::from(emulator::image::render_png("floor", 0, 1024, 1024)?);
    let (store, user) = (floor.store.clone(), floor.user.clone());
    let m = drive(
        "store work of a task's life, direct (store floor)",
        tasks,
        concurrency,
        move |i| {
            let (store, user, png) = (store.clone(), user.clone(), png.clone());
            async move {
                let e = |e: crate::store::StoreError| e.to_string();
                let t = floor_task(&user, &format!("lifecycle {i}"));
                store.insert_task(&t).await.map_err(e)?;
                let now = chrono::Utc::now();
                let started = t
                    .start("floor", now + chrono::Duration::seconds(60), now)
                    .map_err(|e| e.to_string())?;
                store
                    .replace_task(&started, t.version, t.status)
                    .await
                    .map_err(e)?;
                let blob = crate::store::ImageBlob {
                    id: uuid::Uuid::new_v4().to_string(),
                    task_id: t.id.clone(),
                    content_type: "image/png".into(),
                    data: png.clone(),
                };
                store.put_image(&blob).await.map_err(e)?;
                let image = crate::domain::StoredImage {
                    id: blob.id,
                    provider_url: None,
                    width: 1024,
                    height: 1024,
                    bytes: png.len() as u64,
                    content_type: blob.content_type,
                };
                let done = started
                    .complete(vec![image], None, chrono::Utc::now())
                    .map_err(|e| e.to_string())?;
                store
                    .replace_task(&done, started.version, started.status)
                    .await
                    .map_err(e)?;
                Ok(())
            }
        },
    )
    .await?;
    floor.stop().await;
    Ok(m)
}

/// The shortest possible run at exactly the limit: one image every `60/ipm` s, the last one
/// finishing `latency` after it starts.
fn ideal_minutes(tasks: usize, ipm: u32, latency: Duration) -> f64 {
    let per_image = 1.0 / f64::from(ipm.max(1));
    (tasks.saturating_sub(1)) as f64 * per_image + latency.as_secs_f64() / 60.0
}

pub fn print_pipeline(a: &PipelineArgs, r: &PipelineReport) {
    if let Some(floor) = &r.store_floor {
        let per_second = r.completed as f64 / r.elapsed.as_secs_f64();
        println!(
            "pipeline benchmark: {} tasks submitted at once by {} clients, provider without limit or latency ({:?})",
            a.tasks, a.clients, a.latency
        );
        println!("  completed            {}", r.completed);
        println!("  failed               {}", r.failed);
        println!("  provider requests    {}", r.provider_requests);
        println!("  elapsed              {:.2} s", r.elapsed.as_secs_f64());
        println!(
            "  through the worker   {per_second:.0} tasks/s = {:.2} of the store floor",
            per_second / floor.per_second
        );
        println!(
            "  store floor          {:.0} tasks/s  ({})",
            floor.per_second, floor.name
        );
        return;
    }
    println!(
        "pipeline benchmark: {} tasks submitted at once by {} clients",
        a.tasks, a.clients
    );
    println!(
        "  provider (emulator): {} images/min limit, {:?} per image",
        a.ipm, a.latency
    );
    println!("  completed            {}", r.completed);
    println!("  failed               {}", r.failed);
    println!("  provider requests    {}", r.provider_requests);
    println!("  429 answers          {}", r.answers_429);
    println!(
        "  prompts called again {}  (retries after a 429 included: a 429 generates nothing)",
        r.duplicate_calls
    );
    println!("  elapsed              {:.1} s", r.elapsed.as_secs_f64());
    println!(
        "  achieved             {:.1} images/min = {:.3} of the limit {}",
        r.achieved_ipm,
        r.achieved_ipm / f64::from(a.ipm.max(1)),
        a.ipm
    );
    println!(
        "  ratio to the ideal   {:.3}  (ideal = run at exactly the limit: {:.1} s)",
        r.ratio,
        ideal_minutes(a.tasks, a.ipm, a.latency) * 60.0
    );
}

// ---- HTTP submit and poll, against the HTTP floor and the store floor ----

#[derive(Debug, Clone)]
pub struct HttpArgs {
    /// Requests per scenario.
    pub requests: usize,
    /// Concurrent connections.
    pub connections: usize,
    pub backend: Backend,
    /// Tasks stored (directly, before the polls) besides those the submits create.
    pub preload: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub name: String,
    pub requests: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// The `q` quantile of sorted durations (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

fn summarize(name: &str, mut lat: Vec<Duration>, elapsed: Duration) -> Measure {
    lat.sort();
    Measure {
        name: name.to_string(),
        requests: lat.len(),
        per_second: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
    }
}

/// Runs `make(i)` futures `total` times over `connections` concurrent loops.
async fn drive<F, Fut>(
    name: &str,
    total: usize,
    connections: usize,
    make: F,
) -> Result<Measure, String>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    drive_with(name, total, vec![(); connections.max(1)], move |(), i| {
        make(i)
    })
    .await
}

/// Runs `step(state, i)` for `i` in `0..total` over one concurrent loop per state (a
/// connection, say), each step handing its loop's state on to the next; latency per step, rate
/// over the whole run.
async fn drive_with<S, F, Fut>(
    name: &str,
    total: usize,
    states: Vec<S>,
    step: F,
) -> Result<Measure, String>
where
    S: Send + 'static,
    F: Fn(S, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<S, String>> + Send,
{
    let step = Arc::new(step);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bar = crate::progress::bar(total as u64, name);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for mut state in states {
        let (step, next, bar) = (step.clone(), next.clone(), bar.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(lat);
                }
                let t = Instant::now();
                state = step(state, i).await?;
                lat.push(t.elapsed());
                bar.inc(1);
            }
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(r) = set.join_next().await {
        all.extend(r.map_err(|e| e.to_string())??);
    }
    bar.finish_and_clear();
    Ok(summarize(name, all, started.elapsed()))
}

/// Sends a request and reads its JSON answer.
async fn json_answer(req: reqwest::RequestBuilder) -> Result<Value, String> {
    req.send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// Creates the user a benchmark's tasks belong to; returns its id.
async fn create_user(http: &reqwest::Client, base: &str) -> Result<String, String> {
    let user = json_answer(
        http.post(format!("{base}/api/v1/users"))
            .json(&json!({"email": "bench@example.com", "name": "Bench"})),
    )
    .await?;
    Ok(user["data"]["id"].as_str().ok_or("no user id")?.to_string())
}

async fn expect_status(
    r: Result<reqwest::Response, reqwest::Error>,
    want: u16,
) -> Result<(), String> {
    let r = r.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    // Read the body: a benchmark that skips it measures less than a client does.
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if status == want {
        Ok(())
    } else {
        Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body)
        ))
    }
}

/// Submit and poll over REST and GraphQL on the embedded default (API role: no worker competes
/// for the cores), beside a bare axum JSON handler (the HTTP floor) and the same store insert
/// done directly (the store floor).
/// A scenario's ratios to its baselines (by name); none for a baseline itself.
pub type Ratios = Vec<(String, f64)>;

pub async fn http(a: HttpArgs) -> Result<Vec<(Measure, Ratios)>, String> {
    let (n, c) = (a.requests, a.connections);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c)
        .build()
        .map_err(|e| e.to_string())?;

    // HTTP floor: the smallest axum JSON handler.
    let floor_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let floor_addr = floor_listener.local_addr().map_err(|e| e.to_string())?;
    let floor_app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::Json(json!({"success": true, "data": {"status": "pending"}}))
        }),
    );
    // TCP_NODELAY as the service sets it.
    let floor_listener = axum::serve::ListenerExt::tap_io(floor_listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(floor_listener, floor_app).await;
    });
    let http_floor = h1::drive(
        "bare axum JSON handler (HTTP floor)",
        floor_addr,
        n,
        c,
        |_| h1::Call::get("/".into()),
    )
    .await?;

    let service = UnderTest::start(Config::default(), Role::Api, &a.backend, &client).await?;
    let (base, user, store) = (
        service.base.clone(),
        service.user.clone(),
        service.store.clone(),
    );
    let addr: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("service address {base}: {e}"))?;

    // Store floor: the insert a submit makes, done directly.
    let store_floor = {
        let (store, user) = (store.clone(), user.clone());
        drive("store insert, direct (store floor)", n, c, move |i| {
            let (store, user) = (store.clone(), user.clone());
            async move {
                store
                    .insert_task(&floor_task(&user, &format!("floor {i}")))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await?
    };
    // Backend floor (distributed): the same MongoDB insert and Redis enqueue, by a minimal client.
    let backend_floor = match &a.backend {
        Backend::Embedded => None,
        Backend::Distributed {
            mongo_url,
            redis_url,
        } => Some(
            distributed::backend_floor(mongo_url, redis_url, &service.namespace, &user, n, c)
                .await?,
        ),
    };
    let submit_floor = backend_floor.as_ref().unwrap_or(&store_floor).clone();

    let rest_submit = {
        let user = user.clone();
        h1::drive(REST_SUBMIT, addr, n, c, move |i| {
            h1::Call::post(
                "/api/v1/ai/image/task",
                &json!({"prompt": format!("rest {i}"), "user_id": user}),
                201,
            )
        })
        .await?
    };
    let gql_submit = {
        let user = user.clone();
        h1::drive(GRAPHQL_SUBMIT, addr, n, c, move |i| {
            h1::Call::post(
                "/graphql",
                &json!({"query": "mutation($i: CreateImageTaskInput!) { createImageTask(input: $i) { id status } }",
                        "variables": {"i": {"userId": user, "prompt": format!("gql {i}")}}}),
                200,
            )
        })
        .await?
    };

    // Polls go round the preloaded tasks (each poll a different row, as many clients polling
    // their own tasks do), or to one task without a preload.
    let mut ids = Vec::with_capacity(a.preload.max(1));
    if a.preload > 0 {
        let started = Instant::now();
        let tasks: Vec<crate::domain::Task> = (0..a.preload)
            .map(|i| floor_task(&user, &format!("stored {i}")))
            .collect();
        ids.extend(tasks.iter().map(|t| t.id.clone()));
        let tasks = Arc::new(tasks);
        let (store, tasks2) = (store.clone(), tasks.clone());
        drive("preload", a.preload, c, move |i| {
            let (store, tasks) = (store.clone(), tasks2.clone());
            async move {
                store
                    .insert_task(&tasks[i])
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await?;
        eprintln!(
            "bench: {} tasks preloaded in {:.1}s",
            a.preload,
            started.elapsed().as_secs_f64()
        );
    } else {
        let task = json_answer(
            client
                .post(format!("{base}/api/v1/ai/image/task"))
                .json(&json!({"prompt": "polled", "user_id": user})),
        )
        .await?;
        ids.push(
            task["data"]["task_id"]
                .as_str()
                .ok_or("no task id")?
                .to_string(),
        );
    }
    let ids = Arc::new(ids);
    // Distributed polls are judged against the same read done directly in MongoDB.
    let poll_floor = match &a.backend {
        Backend::Embedded => None,
        Backend::Distributed { mongo_url, .. } => {
            Some(distributed::poll_floor(mongo_url, &service.namespace, ids.clone(), n, c).await?)
        }
    };
    let poll_base = poll_floor.as_ref().unwrap_or(&http_floor).clone();
    let rest_poll = {
        let ids = ids.clone();
        h1::drive(REST_POLL, addr, n, c, move |i| {
            h1::Call::get(format!("/api/v1/ai/image/result/{}", ids[i % ids.len()]))
        })
        .await?
    };
    let gql_poll = {
        let ids = ids.clone();
        h1::drive(GRAPHQL_POLL, addr, n, c, move |i| {
            h1::Call::post(
                "/graphql",
                &json!({"query": POLL_QUERY, "variables": {"id": ids[i % ids.len()]}}),
                200,
            )
        })
        .await?
    };
    // The same poll as a GET (`/graphql?query=…&variables=…`): no request body to wait for.
    let gql_get_poll = {
        let base = reqwest::Url::parse("http://bench/graphql").map_err(|e| e.to_string())?;
        let paths: Vec<String> = ids
            .iter()
            .map(|id| {
                let mut u = base.clone();
                u.query_pairs_mut()
                    .append_pair("query", POLL_QUERY)
                    .append_pair("variables", &json!({ "id": id }).to_string());
                format!("{}?{}", u.path(), u.query().unwrap_or_default())
            })
            .collect();
        h1::drive("GraphQL poll task(id) over GET", addr, n, c, move |i| {
            h1::Call::get(paths[i % paths.len()].clone())
        })
        .await?
    };
    if let Backend::Distributed { mongo_url, .. } = &a.backend {
        distributed::drop_database(mongo_url, &service.namespace).await;
    }
    service.stop().await;

    let ratios = |m: &Measure, bases: &[&Measure]| -> Ratios {
        bases
            .iter()
            .map(|b| (b.name.clone(), m.per_second / b.per_second))
            .collect()
    };
    // A submit beside the backend it is judged against (the minimal client's insert + enqueue in
    // distributed mode), our store's own insert (the cost of our layers above it) and the HTTP
    // floor; a poll beside its read floor.
    let mut submit_bases = vec![&submit_floor];
    if backend_floor.is_some() {
        submit_bases.push(&store_floor);
    }
    submit_bases.push(&http_floor);
    let mut rows = vec![(http_floor.clone(), vec![]), (store_floor.clone(), vec![])];
    if let Some(b) = &backend_floor {
        rows.push((b.clone(), vec![]));
    }
    rows.extend([
        (rest_submit.clone(), ratios(&rest_submit, &submit_bases)),
        (gql_submit.clone(), ratios(&gql_submit, &submit_bases)),
    ]);
    if let Some(p) = &poll_floor {
        rows.push((p.clone(), vec![]));
    }
    rows.extend([
        (rest_poll.clone(), ratios(&rest_poll, &[&poll_base])),
        (gql_poll.clone(), ratios(&gql_poll, &[&poll_base])),
        (gql_get_poll.clone(), ratios(&gql_get_poll, &[&poll_base])),
    ]);
    Ok(rows)
}

/// Scenario names of `http`, which `bench all` looks its goals up by.
pub const REST_SUBMIT: &str = "REST submit POST /api/v1/ai/image/task";
pub const GRAPHQL_SUBMIT: &str = "GraphQL submit createImageTask";
pub const REST_POLL: &str = "REST poll GET /api/v1/ai/image/result/:id";
pub const GRAPHQL_POLL: &str = "GraphQL poll task(id)";

/// The document of the GraphQL poll scenarios.
const POLL_QUERY: &str =
    "query($id: ID!) { task(id: $id) { id status version result { imageUrl } } }";

/// A pending task as a submit stores it.
fn floor_task(user: &str, prompt: &str) -> crate::domain::Task {
    crate::domain::Task::new_pending(
        user.to_string(),
        "doubao-seedream-3-0-t2i-250415".into(),
        prompt.to_string(),
        crate::domain::ImageParams {
            size: "1024x1024".into(),
            n: 1,
            ..Default::default()
        },
        None,
        chrono::Utc::now(),
    )
}

pub fn print_http(a: &HttpArgs, rows: &[(Measure, Ratios)]) {
    println!(
        "HTTP benchmark: {} requests per scenario over {} connections ({}, API role, {} tasks preloaded)",
        a.requests,
        a.connections,
        match a.backend {
            Backend::Embedded => "embedded default",
            Backend::Distributed { .. } => "MongoDB + Redis",
        },
        a.preload
    );
    println!(
        "{:<60} {:>10} {:>9} {:>9}  ratio to baseline",
        "scenario", "req/s", "p50 ms", "p99 ms"
    );
    for (m, r) in rows {
        let ratio = if r.is_empty() {
            "(baseline)".into()
        } else {
            r.iter()
                .map(|(base, x)| format!("{x:.2} of \"{base}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<60} {:>10.0} {:>9.2} {:>9.2}  {ratio}",
            m.name,
            m.per_second,
            m.p50.as_secs_f64() * 1000.0,
            m.p99.as_secs_f64() * 1000.0
        );
    }
}
