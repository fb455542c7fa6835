//! What every scenario is made of: the service under test (the real one, started from the
//! server's library in this process on a loopback port), the Ark emulator beside it, the loops
//! that drive requests and measure them, and the small HTTP helpers they share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use volcengine_ai_server::app::{self, Backends, Role};
use volcengine_ai_server::config::Config;
use volcengine_ai_server::emulator::{self, EmulatorConfig};

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

/// The service under test: the embedded default in a fresh data folder, with one user.
pub struct UnderTest {
    running: app::Running,
    pub base: String,
    pub user: String,
    pub store: Arc<dyn volcengine_ai_server::store::Store>,
    dir: std::path::PathBuf,
    /// The run's MongoDB database and Redis key prefix (distributed only).
    pub namespace: String,
}

impl UnderTest {
    pub async fn start(
        config: Config,
        role: Role,
        backend: &Backend,
        client: &reqwest::Client,
    ) -> Result<UnderTest, String> {
        UnderTest::start_in(config, role, backend, client, None, false).await
    }

    /// As `start`, with `PUBLIC_BASE_URL` its own address: a service its provider can call
    /// back.
    pub async fn start_public(
        config: Config,
        backend: &Backend,
        client: &reqwest::Client,
    ) -> Result<UnderTest, String> {
        UnderTest::start_in(config, Role::Serve, backend, client, None, true).await
    }

    /// A second api process of the same distributed deployment (its database and key prefix),
    /// serving the same user.
    pub async fn beside(&self, backend: &Backend) -> Result<UnderTest, String> {
        let client = reqwest::Client::new();
        UnderTest::start_in(
            Config::default(),
            Role::Api,
            backend,
            &client,
            Some(self),
            false,
        )
        .await
    }

    async fn start_in(
        mut config: Config,
        role: Role,
        backend: &Backend,
        client: &reqwest::Client,
        beside: Option<&UnderTest>,
        public: bool,
    ) -> Result<UnderTest, String> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("vas-bench-{run}"));
        let namespace = beside.map_or_else(
            || format!("vas_bench_{}", &run[..12]),
            |b| b.namespace.clone(),
        );
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
        if public {
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            config.public_base_url = Some(format!("http://{addr}"));
        }
        let running = app::start_with(config, Some(listener), role, backends)
            .await
            .map_err(|e| e.to_string())?;
        let base = running.public_base.clone();
        let user = match beside {
            Some(b) => b.user.clone(),
            None => create_user(client, &base).await?,
        };
        Ok(UnderTest {
            running,
            base,
            user,
            store,
            dir,
            namespace,
        })
    }

    pub async fn stop(self) {
        self.running.shutdown(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Ark emulator on a free loopback port, with the key the bench's service is configured
/// with; its URL beside it.
pub async fn start_emulator(
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

#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub name: String,
    pub requests: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// The `q` quantile of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

pub fn summarize(name: &str, mut lat: Vec<Duration>, elapsed: Duration) -> Measure {
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
pub async fn drive<F, Fut>(
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
pub async fn drive_with<S, F, Fut>(
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
pub async fn json_answer(req: reqwest::RequestBuilder) -> Result<Value, String> {
    req.send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// Creates the user a benchmark's tasks belong to; returns its id.
pub async fn create_user(http: &reqwest::Client, base: &str) -> Result<String, String> {
    let user = json_answer(
        http.post(format!("{base}/api/v1/users"))
            .json(&json!({"email": "bench@example.com", "name": "Bench"})),
    )
    .await?;
    Ok(user["data"]["id"].as_str().ok_or("no user id")?.to_string())
}

pub async fn expect_status(
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

/// A scenario's ratios to its baselines (by name); none for a baseline itself.
pub type Ratios = Vec<(String, f64)>;

/// A pending task as a submit stores it.
pub fn floor_task(user: &str, prompt: &str) -> volcengine_ai_server::domain::Task {
    volcengine_ai_server::domain::Task::new_pending(
        user.to_string(),
        "doubao-seedream-3-0-t2i-250415".into(),
        prompt.to_string(),
        volcengine_ai_server::domain::ImageParams {
            size: "1024x1024".into(),
            n: 1,
            ..Default::default()
        },
        None,
        chrono::Utc::now(),
    )
}
