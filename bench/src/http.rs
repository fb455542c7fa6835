//! `http`: submit and poll over REST and GraphQL on the service's API role (no worker competes
//! for the cores), beside a bare axum JSON handler (the HTTP floor) and the same store insert done
//! directly (the store floor); on MongoDB and Redis also beside the same insert and enqueue, and
//! the same read, done by a minimal client (the backend floors, `distributed.rs`).

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::net::TcpListener;

use volcengine_ai_server::app::Role;
use volcengine_ai_server::config::Config;

use crate::distributed;
use crate::h1;
use crate::harness::{drive, floor_task, json_answer, Backend, Measure, Ratios, UnderTest};

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

/// The `http` subcommand's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpCmd {
    /// Requests per scenario.
    #[arg(long, default_value_t = 20000)]
    requests: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// `embedded` (SQLite) or `distributed` (MongoDB + Redis; adds the backend floor).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "distributed"])]
    backend: String,
    #[arg(long, env = "MONGO_URL")]
    mongo_url: Option<String>,
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Tasks stored before the polls, which then go round them.
    #[arg(long, default_value_t = 0)]
    preload: usize,
}

/// The `http` subcommand: one run, printed.
pub async fn run(cmd: HttpCmd) -> Result<(), String> {
    let backend = match (cmd.backend.as_str(), cmd.mongo_url, cmd.redis_url) {
        ("embedded", _, _) => Backend::Embedded,
        (_, Some(mongo_url), Some(redis_url)) => Backend::Distributed {
            mongo_url,
            redis_url,
        },
        _ => {
            return Err(
                "--backend distributed needs --mongo-url and --redis-url (or MONGO_URL \
                 and REDIS_URL)"
                    .into(),
            )
        }
    };
    let args = HttpArgs {
        requests: cmd.requests,
        connections: cmd.connections,
        backend,
        preload: cmd.preload,
    };
    let rows = http(args.clone()).await?;
    print_http(&args, &rows);
    Ok(())
}

/// Every scenario, each beside its baselines.
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
    let addr = socket_addr(&base)?;

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

    let ids = Arc::new(poll_ids(&a, &client, &service, c).await?);
    // Distributed: a second api process of the same deployment, and the polls spread their
    // connections over both, as behind a balancer: a task stored through one is polled on both.
    let second = match &a.backend {
        Backend::Embedded => None,
        Backend::Distributed { .. } => Some(service.beside(&a.backend).await?),
    };
    let mut poll_addrs = vec![addr];
    if let Some(b) = &second {
        poll_addrs.push(socket_addr(&b.base)?);
    }
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
        h1::drive_spread(REST_POLL, &poll_addrs, n, c, move |i| {
            h1::Call::legacy_poll(format!("/api/v1/ai/image/result/{}", ids[i % ids.len()]))
        })
        .await?
    };
    let gql_poll = {
        let ids = ids.clone();
        h1::drive_spread(GRAPHQL_POLL, &poll_addrs, n, c, move |i| {
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
        h1::drive_spread(
            "GraphQL poll task(id) over GET",
            &poll_addrs,
            n,
            c,
            move |i| h1::Call::get(paths[i % paths.len()].clone()),
        )
        .await?
    };
    // How long a change takes to reach the other api's relay: the window in which that api can
    // still answer the version before it (docs/architecture.md, "Polls from memory").
    let delivery = match &second {
        Some(b) => {
            let user = user.clone();
            let load = h1::drive(
                "REST submit through the first api",
                addr,
                n / 4,
                c,
                move |i| {
                    h1::Call::post(
                        "/api/v1/ai/image/task",
                        &json!({"prompt": format!("delivered {i}"), "user_id": user}),
                        201,
                    )
                },
            )
            .await?;
            let metrics = client
                .get(format!("{}/metrics", b.base))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            Some(event_delivery(&metrics, &load)?)
        }
        None => None,
    };
    if let Backend::Distributed { mongo_url, .. } = &a.backend {
        distributed::drop_database(mongo_url, &service.namespace).await;
    }
    if let Some(b) = second {
        b.stop().await;
    }
    service.stop().await;
    let embedded = match &a.backend {
        Backend::Embedded => None,
        Backend::Distributed { .. } => Some(embedded_polls(&a, &client).await?),
    };

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
    if let Some(d) = delivery {
        rows.push((d, vec![]));
    }
    let (mut rest_bases, mut gql_bases) = (vec![&poll_base], vec![&poll_base]);
    if let Some([rest, gql]) = &embedded {
        rows.extend([(rest.clone(), vec![]), (gql.clone(), vec![])]);
        rest_bases.push(rest);
        gql_bases.push(gql);
    }
    rows.extend([
        (rest_poll.clone(), ratios(&rest_poll, &rest_bases)),
        (gql_poll.clone(), ratios(&gql_poll, &gql_bases)),
        (gql_get_poll.clone(), ratios(&gql_get_poll, &gql_bases)),
    ]);
    Ok(rows)
}

/// The tasks the polls go round: `--preload` tasks stored directly (each poll a different row,
/// as many clients polling their own tasks do), or one task submitted without a preload.
async fn poll_ids(
    a: &HttpArgs,
    client: &reqwest::Client,
    service: &UnderTest,
    c: usize,
) -> Result<Vec<String>, String> {
    let (base, user, store) = (&service.base, &service.user, &service.store);
    let mut ids = Vec::with_capacity(a.preload.max(1));
    if a.preload > 0 {
        let started = Instant::now();
        let tasks: Vec<volcengine_ai_server::domain::Task> = (0..a.preload)
            .map(|i| floor_task(user, &format!("stored {i}")))
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
    Ok(ids)
}

/// The delay of the events the apis' relays received in the run (the submits', and `load`'s
/// through the first api to the second), from `task_event_delivery_seconds`: the rate is
/// `load`'s, p50 and p99 the upper bounds of the histogram's buckets that hold them.
fn event_delivery(metrics: &str, load: &Measure) -> Result<Measure, String> {
    let name = "task_event_delivery_seconds";
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((
                le.parse().unwrap_or(f64::INFINITY),
                count.trim().parse().ok()?,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return Err("the second api received no events".into());
    }
    let at = |q: f64| {
        let le = buckets
            .iter()
            .find(|(_, n)| *n >= total * q)
            .map_or(f64::INFINITY, |b| b.0);
        std::time::Duration::from_secs_f64(le.min(3600.0))
    };
    Ok(Measure {
        // The recorder is the process's: both apis' relays, every event of the run.
        name: format!(
            "event delivery, updated_at to an api's relay ({total:.0} events; bucket bounds)"
        ),
        requests: total as usize,
        per_second: load.per_second,
        p50: at(0.5),
        p99: at(0.99),
    })
}

fn socket_addr(base: &str) -> Result<std::net::SocketAddr, String> {
    base.trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("service address {base}: {e}"))
}

/// The embedded service's REST and GraphQL polls, in the same run as a distributed one (their
/// ratio is goal #22.1), over as many tasks.
async fn embedded_polls(a: &HttpArgs, client: &reqwest::Client) -> Result<[Measure; 2], String> {
    let (n, c) = (a.requests, a.connections);
    let embedded = HttpArgs {
        backend: Backend::Embedded,
        ..a.clone()
    };
    let service =
        UnderTest::start(Config::default(), Role::Api, &Backend::Embedded, client).await?;
    let ids = Arc::new(poll_ids(&embedded, client, &service, c).await?);
    let addr = socket_addr(&service.base)?;
    let rest = {
        let ids = ids.clone();
        h1::drive(EMBEDDED_REST_POLL, addr, n, c, move |i| {
            h1::Call::legacy_poll(format!("/api/v1/ai/image/result/{}", ids[i % ids.len()]))
        })
        .await?
    };
    let gql = h1::drive(EMBEDDED_GRAPHQL_POLL, addr, n, c, move |i| {
        h1::Call::post(
            "/graphql",
            &json!({"query": POLL_QUERY, "variables": {"id": ids[i % ids.len()]}}),
            200,
        )
    })
    .await?;
    service.stop().await;
    Ok([rest, gql])
}

/// Scenario names of `http`, which `bench all` looks its goals up by.
pub const REST_SUBMIT: &str = "REST submit POST /api/v1/ai/image/task";
pub const GRAPHQL_SUBMIT: &str = "GraphQL submit createImageTask";
pub const REST_POLL: &str = "REST poll GET /api/v1/ai/image/result/:id";
pub const GRAPHQL_POLL: &str = "GraphQL poll task(id)";
/// The embedded polls a distributed run measures too, its polls' baselines.
pub const EMBEDDED_REST_POLL: &str = "embedded REST poll, same run (baseline of #22.1)";
pub const EMBEDDED_GRAPHQL_POLL: &str = "embedded GraphQL poll, same run (baseline of #22.1)";

/// The document of the GraphQL poll scenarios.
const POLL_QUERY: &str =
    "query($id: ID!) { task(id: $id) { id status version result { imageUrl } } }";

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
