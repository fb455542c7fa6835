//! `stored`: what the operations of a request or a pass cost as the stored tasks grow (issue
//! #22.3). Two stores are filled directly through the store layer (`import_tasks`, not HTTP):
//! `--small` tasks (the baseline) and `--large`. Both hold the same user with the same tasks and
//! the same unfinished tasks (scheduled, pending, processing); the rest are finished tasks of
//! other users, so only the number of tasks stored differs. Then both services run at once (API
//! role) and each operation is measured on one, then the other, `--rounds` times (the median
//! kept), so that both sizes meet the same moments of a noisy machine; start-up is measured last,
//! alternating the same way. Each size's figure is printed beside the other's and their ratio
//! (goal ≥ 0.8: the large store does at least 0.8 of what the small one does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::net::TcpListener;

use volcengine_ai_server::app::{self, Backends, Role};
use volcengine_ai_server::config::Config;
use volcengine_ai_server::domain::{
    ImageParams, StoredImage, Task, TaskError, TaskResult, TaskStatus, User,
};
use volcengine_ai_server::store::mongo::{MongoOptions, MongoStore};
use volcengine_ai_server::store::sqlite::SqliteStore;
use volcengine_ai_server::store::{Store, TaskCacheBounds};

use crate::h1;
use crate::harness::{drive, Backend, Measure};

#[derive(Debug, Clone, clap::Args)]
pub struct StoredArgs {
    /// Tasks stored for the baseline.
    #[arg(long, default_value_t = 10_000)]
    pub small: usize,
    /// Tasks stored for the size judged against it.
    #[arg(long, default_value_t = 1_000_000)]
    pub large: usize,
    /// Requests per operation, size and round.
    #[arg(long, default_value_t = 5_000)]
    pub requests: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Times each operation is measured on each size (the median is kept).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// MongoDB (with --redis-url): the distributed backends instead of the embedded store.
    #[arg(long)]
    pub mongo_url: Option<String>,
    #[arg(long)]
    pub redis_url: Option<String>,
}

impl StoredArgs {
    fn backend(&self) -> Result<Backend, String> {
        match (&self.mongo_url, &self.redis_url) {
            (None, None) => Ok(Backend::Embedded),
            (Some(m), Some(r)) => Ok(Backend::Distributed {
                mongo_url: m.clone(),
                redis_url: r.clone(),
            }),
            _ => Err("--mongo-url and --redis-url go together".into()),
        }
    }
}

/// The user whose list page is read and whose tasks are submitted: as many tasks at every size.
const USER_TASKS: usize = 1_000;
/// Other users' finished tasks each (the rest of the store).
const TASKS_PER_OTHER_USER: usize = 100;
/// Unfinished tasks at every size: pending (what the reconciler's pass finds), scheduled,
/// processing under a live lease.
const PENDING: usize = 100;
const SCHEDULED: usize = 50;
const PROCESSING: usize = 50;
/// The newest stored tasks, which the recent polls go round (as clients poll their tasks in
/// flight).
const RECENT: usize = 1_000;

/// Operation names, the rows of the report.
pub const SUBMIT: &str = "REST submit";
/// `GET /api/v1/tasks/:id`, which answers 200 in every state (the legacy result route answers a
/// failed task with a 500, as the Go server did).
pub const POLL_RECENT: &str = "REST poll, the newest 1,000 tasks";
pub const POLL_ANY: &str = "REST poll, any stored task";
pub const LIST: &str = "user's task list, first page";
pub const STATS: &str = "queue stats GET /api/v1/queue/stats";
pub const RECONCILE: &str = "reconciler pass (its due-task read)";
pub const STARTUP: &str = "start-up to ready";

/// What the large store must do of what the small one does.
pub const GOAL: f64 = 0.8;

/// The goal of issue #22.3 for one operation, as `bench all` lists it.
pub fn goal_name(op: &'static str) -> &'static str {
    match op {
        SUBMIT => "submit at 1,000,000 stored tasks >= 0.8 of at 10,000",
        POLL_RECENT => "poll (newest) at 1,000,000 stored tasks >= 0.8 of at 10,000",
        POLL_ANY => "poll (any task) at 1,000,000 stored tasks >= 0.8 of at 10,000",
        LIST => "list page at 1,000,000 stored tasks >= 0.8 of at 10,000",
        STATS => "queue stats at 1,000,000 stored tasks >= 0.8 of at 10,000",
        RECONCILE => "reconciler at 1,000,000 stored tasks >= 0.8 of at 10,000",
        _ => "start-up at 1,000,000 stored tasks >= 0.8 of at 10,000",
    }
}

/// One operation measured at both sizes.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub small: Measure,
    pub large: Measure,
}

impl Row {
    /// What the large store does of what the small one does: rates compared, or for start-up
    /// (one request, its time) the times inverted.
    pub fn ratio(&self) -> f64 {
        if self.name == STARTUP {
            self.small.p50.as_secs_f64() / self.large.p50.as_secs_f64().max(1e-9)
        } else {
            self.large.per_second / self.small.per_second.max(1e-9)
        }
    }
}

pub struct StoredReport {
    pub args: StoredArgs,
    pub seeded: [(usize, Duration); 2],
    pub rows: Vec<Row>,
}

pub async fn run(a: StoredArgs) -> Result<(), String> {
    let report = stored(a).await?;
    print_stored(&report);
    Ok(())
}

/// Where one size is stored: a data folder, or a MongoDB database and Redis key prefix of the
/// run's own (the same name).
struct Place {
    dir: std::path::PathBuf,
    namespace: String,
}

pub async fn stored(a: StoredArgs) -> Result<StoredReport, String> {
    let backend = a.backend()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let user = volcengine_ai_server::domain::new_id();
    let sizes = [a.small, a.large];
    let mut places = Vec::new();
    let mut seeded = [(0, Duration::ZERO); 2];
    let mut seeding = Ok(());
    for (k, &n) in sizes.iter().enumerate() {
        let place = Place {
            dir: std::env::temp_dir().join(format!("vas-bench-stored-{}-{n}", &run[..12])),
            namespace: format!("vas_stored_{}_{k}", &run[..12]),
        };
        let started = Instant::now();
        seeding = seed(&backend, &place, n, &user).await;
        // Listed before it is known to have worked: whatever was stored is removed below.
        places.push(place);
        if seeding.is_err() {
            break;
        }
        seeded[k] = (n, started.elapsed());
        eprintln!(
            "bench: {n} tasks stored in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    let outcome = match seeding {
        Ok(()) => measure(&a, &backend, &places, &user).await,
        Err(e) => Err(e),
    };
    for p in &places {
        let _ = std::fs::remove_dir_all(&p.dir);
        if let Backend::Distributed { mongo_url, .. } = &backend {
            crate::distributed::drop_database(mongo_url, &p.namespace).await;
        }
    }
    Ok(StoredReport {
        args: a,
        seeded,
        rows: outcome?,
    })
}

/// Every operation on both sizes, alternating, then start-up the same way.
async fn measure(
    a: &StoredArgs,
    backend: &Backend,
    places: &[Place],
    user: &str,
) -> Result<Vec<Row>, String> {
    let mut services = Vec::new();
    for p in places {
        services.push(Service::start(backend, p, Role::Api).await?);
    }
    let recent: Vec<Arc<Vec<String>>> = services
        .iter()
        .map(|s| Arc::new(s.recent.clone()))
        .collect();
    let any: Vec<Arc<Vec<String>>> = services
        .iter()
        .map(|s| Arc::new(s.sample.clone()))
        .collect();
    let (n, c) = (a.requests, a.connections);
    let mut measured: Vec<(&'static str, [Vec<Measure>; 2])> = Vec::new();
    let mut add = |name: &'static str, k: usize, m: Measure| {
        if let Some((_, ms)) = measured.iter_mut().find(|(x, _)| *x == name) {
            ms[k].push(m);
        } else {
            let mut ms = [Vec::new(), Vec::new()];
            ms[k].push(m);
            measured.push((name, ms));
        }
    };
    for _ in 0..a.rounds.max(1) {
        for (k, s) in services.iter().enumerate() {
            let ids = recent[k].clone();
            add(
                POLL_RECENT,
                k,
                h1::drive(POLL_RECENT, s.addr, n, c, move |i| {
                    h1::Call::get(format!("/api/v1/tasks/{}", ids[i % ids.len()]))
                })
                .await?,
            );
            let ids = any[k].clone();
            add(
                POLL_ANY,
                k,
                h1::drive(POLL_ANY, s.addr, n, c, move |i| {
                    h1::Call::get(format!("/api/v1/tasks/{}", ids[i % ids.len()]))
                })
                .await?,
            );
            let path = format!("/api/v1/tasks/user/{user}?limit=20");
            add(
                LIST,
                k,
                h1::drive(LIST, s.addr, n, c, move |_| h1::Call::get(path.clone())).await?,
            );
            add(
                STATS,
                k,
                h1::drive(STATS, s.addr, n / 5, c, |_| {
                    h1::Call::get("/api/v1/queue/stats".into())
                })
                .await?,
            );
            let store = s.store.clone();
            add(
                RECONCILE,
                k,
                drive(RECONCILE, (n / 50).max(1), 1, move |_| {
                    let store = store.clone();
                    async move {
                        store
                            .due_tasks(Utc::now(), 500)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                })
                .await?,
            );
            let u = user.to_string();
            add(
                SUBMIT,
                k,
                h1::drive(SUBMIT, s.addr, n, c, move |i| {
                    h1::Call::post(
                        "/api/v1/ai/image/task",
                        &json!({"prompt": format!("stored {i}"), "user_id": u}),
                        201,
                    )
                })
                .await?,
            );
        }
    }
    for s in services {
        s.stop().await;
    }
    for _ in 0..a.rounds.max(1) {
        for (k, p) in places.iter().enumerate() {
            let started = Instant::now();
            let s = Service::start(backend, p, Role::Serve).await?;
            let took = started.elapsed();
            s.stop().await;
            add(
                STARTUP,
                k,
                Measure {
                    name: STARTUP.into(),
                    requests: 1,
                    per_second: 1.0 / took.as_secs_f64().max(1e-9),
                    p50: took,
                    p99: took,
                },
            );
        }
    }
    Ok(measured
        .into_iter()
        .map(|(name, [small, large])| Row {
            name,
            small: median(small),
            large: median(large),
        })
        .collect())
}

/// The measure of median rate.
fn median(mut ms: Vec<Measure>) -> Measure {
    ms.sort_by(|x, y| x.per_second.total_cmp(&y.per_second));
    let mid = ms.len() / 2;
    ms.swap_remove(mid)
}

/// The service on a seeded data folder, and the ids its polls go round.
struct Service {
    running: app::Running,
    addr: std::net::SocketAddr,
    store: Arc<dyn Store>,
    recent: Vec<String>,
    sample: Vec<String>,
}

impl Service {
    /// Starts it and waits until `/ready` answers 200: what start-up measures.
    async fn start(backend: &Backend, place: &Place, role: Role) -> Result<Service, String> {
        let mut config = Config {
            data_dir: place.dir.clone(),
            log_level: "warn".into(),
            ..Config::default()
        };
        let backends = match backend {
            Backend::Embedded => Backends::embedded(&config).map_err(|e| e.to_string())?,
            Backend::Distributed {
                mongo_url,
                redis_url,
            } => {
                config.mongo_url = Some(mongo_url.clone());
                config.redis_url = Some(redis_url.clone());
                config.mongo_database = place.namespace.clone();
                config.redis_prefix = place.namespace.clone();
                Backends::distributed(&config, mongo_url, redis_url)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let store = backends.store.clone();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let running = app::start_with(config, Some(listener), role, backends)
            .await
            .map_err(|e| e.to_string())?;
        let client = reqwest::Client::new();
        loop {
            let ready = client.get(format!("http://{addr}/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (recent, sample) = if role == Role::Api {
            poll_ids(&store).await?
        } else {
            (vec![], vec![])
        };
        Ok(Service {
            running,
            addr,
            store,
            recent,
            sample,
        })
    }

    async fn stop(self) {
        self.running.shutdown(Duration::from_secs(5)).await;
    }
}

/// The newest `RECENT` tasks, and up to 20,000 spread over every stored task (read through the
/// admin's list, newest first).
async fn poll_ids(store: &Arc<dyn Store>) -> Result<(Vec<String>, Vec<String>), String> {
    let total = store
        .count_tasks(None, None)
        .await
        .map_err(|e| e.to_string())? as usize;
    let page = |offset: usize, limit: usize| {
        let store = store.clone();
        async move {
            store
                .list_tasks(&volcengine_ai_server::store::TaskQuery {
                    offset,
                    limit,
                    ..Default::default()
                })
                .await
                .map(|ts| ts.into_iter().map(|t| t.id).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        }
    };
    let recent = page(0, RECENT).await?;
    let mut sample = Vec::new();
    let mut before: Option<String> = None;
    let step = (total / 20_000).max(1);
    // Every `step`-th id, read a page at a time by cursor (an offset would read the skipped ones
    // again on every page).
    loop {
        let ts = store
            .list_tasks(&volcengine_ai_server::store::TaskQuery {
                before_id: before.clone(),
                limit: 5_000,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = ts.last() else { break };
        before = Some(last.id.clone());
        sample.extend(ts.iter().step_by(step).map(|t| t.id.clone()));
    }
    Ok((recent, sample))
}

/// Fills `dir` with `n` tasks: `USER_TASKS` of `user` (finished, but for the unfinished ones),
/// the unfinished tasks, and other users' finished tasks, created over the last 30 days in id
/// order, the user's spread among the others'.
async fn seed(backend: &Backend, place: &Place, n: usize, user: &str) -> Result<(), String> {
    let store = match backend {
        Backend::Embedded => Seeded::Sqlite(Box::new(
            SqliteStore::open(
                &place.dir,
                volcengine_ai_server::config::SyncMode::Normal,
                TaskCacheBounds {
                    tasks: 16,
                    bytes: 1 << 20,
                },
            )
            .map_err(|e| e.to_string())?,
        )),
        Backend::Distributed { mongo_url, .. } => Seeded::Mongo(Box::new(
            MongoStore::connect(MongoOptions {
                url: mongo_url,
                database: &place.namespace,
                majority_writes: false,
                timeout: Duration::from_secs(30),
                write_locks: None,
            })
            .await
            .map_err(|e| e.to_string())?,
        )),
    };
    let now = Utc::now();
    store
        .store()
        .insert_user(&User {
            id: user.to_string(),
            email: "bench@example.com".into(),
            name: "Bench".into(),
            created_at: now,
            updated_at: now,
        })
        .await
        .map_err(|e| e.to_string())?;
    let start = now - chrono::Duration::days(30);
    let span_ms = chrono::Duration::days(30).num_milliseconds() as f64;
    let every = (n / USER_TASKS).max(1);
    let unfinished = PENDING + SCHEDULED + PROCESSING;
    let mut i = 0;
    while i < n {
        let chunk: Vec<Task> = (i..(i + 50_000).min(n))
            .map(|j| {
                let at =
                    start + chrono::Duration::milliseconds((span_ms * j as f64 / n as f64) as i64);
                let owner = if j % every == 0 {
                    user.to_string()
                } else {
                    format!("00000000-0000-4000-8000-{:012x}", j / TASKS_PER_OTHER_USER)
                };
                // The newest tasks are the unfinished ones, the user's among them.
                let status = match n - j {
                    k if k <= PENDING => TaskStatus::Pending,
                    k if k <= PENDING + SCHEDULED => TaskStatus::Scheduled,
                    k if k <= unfinished => TaskStatus::Processing,
                    _ if j % 20 == 1 => TaskStatus::Failed,
                    _ if j % 33 == 2 => TaskStatus::Cancelled,
                    _ => TaskStatus::Completed,
                };
                task(owner, at, status, now)
            })
            .collect();
        i += chunk.len();
        match &store {
            Seeded::Sqlite(s) => s.import_tasks(chunk).await,
            Seeded::Mongo(s) => s.import_tasks(chunk).await,
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The store a size is seeded through.
enum Seeded {
    Sqlite(Box<SqliteStore>),
    Mongo(Box<MongoStore>),
}

impl Seeded {
    fn store(&self) -> &dyn Store {
        match self {
            Seeded::Sqlite(s) => s.as_ref(),
            Seeded::Mongo(s) => s.as_ref(),
        }
    }
}

/// A task as the service would have stored it by now.
fn task(owner: String, at: DateTime<Utc>, status: TaskStatus, now: DateTime<Utc>) -> Task {
    let mut t = Task::new_pending(
        owner,
        "doubao-seedream-3-0-t2i-250415".into(),
        "a lighthouse on a cliff at dusk, oil painting, warm light".into(),
        ImageParams {
            size: "1024x1024".into(),
            n: 1,
            ..Default::default()
        },
        None,
        at,
    );
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    t.id = uuid::Uuid::new_v7(ts).to_string();
    t.status = status;
    t.deadline_secs = Some(3600);
    match status {
        TaskStatus::Pending => {}
        TaskStatus::Scheduled => {
            t.not_before = Some(now + chrono::Duration::days(1));
            t.deadline_at = Some(now + chrono::Duration::days(2));
        }
        TaskStatus::Processing => {
            t.version = 2;
            t.attempts = 1;
            t.started_at = Some(now);
            t.lease_owner = Some("bench-elsewhere".into());
            t.lease_until = Some(now + chrono::Duration::hours(1));
            t.deadline_at = Some(now + chrono::Duration::hours(1));
        }
        _ => {
            let done = at + chrono::Duration::seconds(8);
            t.version = 3;
            t.attempts = 1;
            t.started_at = Some(at + chrono::Duration::seconds(1));
            t.completed_at = Some(done);
            t.updated_at = done;
            t.generated_images = u32::from(status == TaskStatus::Completed);
            if status == TaskStatus::Completed {
                t.result = Some(TaskResult {
                    images: vec![StoredImage {
                        id: volcengine_ai_server::domain::new_id(),
                        provider_url: Some(format!(
                            "https://ark-content-generation-cn-beijing.tos-cn-beijing.volces.com/doubao-seedream-3-0-t2i/{}.jpeg?X-Tos-Algorithm=TOS4-HMAC-SHA256&X-Tos-Expires=86400",
                            t.id
                        )),
                        width: 1024,
                        height: 1024,
                        bytes: 1_482_113,
                        content_type: "image/png".into(),
                    }],
                    video: None,
                });
            } else if status == TaskStatus::Failed {
                t.error = Some(TaskError {
                    code: "OutputImageSensitiveContentDetected".into(),
                    message: "The request failed because the output image may contain sensitive information.".into(),
                    retryable: false,
                });
            }
        }
    }
    t
}

pub fn print_stored(r: &StoredReport) {
    let a = &r.args;
    println!(
        "stored tasks: {} against {} ({}, {} requests per operation over {} connections, median of {} rounds)",
        a.large,
        a.small,
        if a.mongo_url.is_some() {
            "MongoDB + Redis"
        } else {
            "embedded"
        },
        a.requests,
        a.connections,
        a.rounds
    );
    for (n, took) in r.seeded {
        println!("  {n} tasks stored directly in {:.1} s", took.as_secs_f64());
    }
    println!(
        "{:<40} {:>22} {:>22} {:>8}",
        "operation",
        format!("at {}", a.small),
        format!("at {}", a.large),
        "ratio"
    );
    for row in &r.rows {
        let show = |m: &Measure| {
            if row.name == STARTUP {
                format!("{:.3} s", m.p50.as_secs_f64())
            } else {
                format!(
                    "{:.0}/s p99 {:.1} ms",
                    m.per_second,
                    m.p99.as_secs_f64() * 1000.0
                )
            }
        };
        println!(
            "{:<40} {:>22} {:>22} {:>8.2}",
            row.name,
            show(&row.small),
            show(&row.large),
            row.ratio()
        );
    }
}
