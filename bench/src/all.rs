//! `bench all`: every benchmark of issue #6 in one run (HTTP submit and poll, embedded and, with
//! MongoDB and Redis given, distributed; 10,000 subscribers; the paced and the unlimited
//! pipeline), each printed beside its baselines as its own command prints it, then the goals
//! beside what this run measured. `--scale N` divides every size by N for a quick look; the
//! goals are judged at full scale only (memory per subscriber and delay both depend on it).

use std::time::Duration;

use crate::distributed::BACKEND_FLOOR;
use crate::harness::{Backend, Measure, Ratios};
use crate::http::{
    self, HttpArgs, EMBEDDED_GRAPHQL_POLL, EMBEDDED_REST_POLL, GRAPHQL_POLL, GRAPHQL_SUBMIT,
    REST_POLL, REST_SUBMIT,
};
use crate::pipeline::{self, PipelineArgs, PipelineReport};
use crate::stored::{self, StoredArgs, StoredReport};
use crate::subscribe::{self, SubscribeArgs, SubscribeReport};

#[derive(Debug, Clone, clap::Args)]
pub struct AllArgs {
    /// Divides every count by this, for a quick look (goals are judged at 1 only).
    #[arg(long, default_value_t = 1)]
    pub scale: usize,
    /// MongoDB for the distributed HTTP run (with --redis-url; without both it is left out).
    #[arg(long, env = "MONGO_URL")]
    pub mongo_url: Option<String>,
    /// Redis for the distributed HTTP run.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
}

/// The `all` subcommand: every benchmark, then the goals.
pub async fn run(a: AllArgs) -> Result<(), String> {
    let report = all(a).await?;
    print_goals(&report)
}

/// What the run measured, for the goals.
pub struct AllReport {
    pub scale: usize,
    pub http: Vec<(Measure, Ratios)>,
    pub distributed: Option<Vec<(Measure, Ratios)>>,
    pub subscribe: SubscribeReport,
    /// 100,000 subscriptions (#22.2).
    pub crowd: SubscribeReport,
    pub paced: (PipelineArgs, PipelineReport),
    pub unlimited: (PipelineArgs, PipelineReport),
    pub stored: StoredReport,
}

fn scaled(n: usize, scale: usize) -> usize {
    (n / scale.max(1)).max(1)
}

/// Runs each benchmark in turn, printing each one's report as it ends.
pub async fn all(a: AllArgs) -> Result<AllReport, String> {
    let s = a.scale.max(1);
    let http_args = HttpArgs {
        requests: scaled(20_000, s).max(64),
        connections: 64,
        backend: Backend::Embedded,
        preload: 0,
    };
    let http = http::http(http_args.clone()).await?;
    http::print_http(&http_args, &http);
    println!();
    let distributed = match (&a.mongo_url, &a.redis_url) {
        (Some(mongo_url), Some(redis_url)) => {
            let args = HttpArgs {
                requests: scaled(1_000, s).max(64),
                backend: Backend::Distributed {
                    mongo_url: mongo_url.clone(),
                    redis_url: redis_url.clone(),
                },
                ..http_args.clone()
            };
            let rows = http::http(args.clone()).await?;
            http::print_http(&args, &rows);
            println!();
            Some(rows)
        }
        _ => None,
    };
    let subscribe = subscribe::subscribe(SubscribeArgs {
        subscribers: scaled(10_000, s),
        tasks: scaled(1_000, s),
        per_socket: 1,
        latency: Duration::ZERO,
        connect_concurrency: 64,
    })
    .await?;
    subscribe::print_subscribe(&subscribe);
    println!();
    // #22.2: as many sockets as the open-files limit allows, the subscriptions spread over them.
    let (subscriptions, tasks) = (scaled(100_000, s), scaled(10_000, s));
    let crowd = subscribe::subscribe(SubscribeArgs {
        subscribers: subscriptions,
        tasks,
        per_socket: subscribe::per_socket_to_fit(subscriptions, tasks)?,
        latency: Duration::ZERO,
        connect_concurrency: 64,
    })
    .await?;
    subscribe::print_subscribe(&crowd);
    println!();
    let paced = run_pipeline(scaled(2_000, s), 600, Duration::from_secs(2)).await?;
    let unlimited = run_pipeline(scaled(2_000, s), 0, Duration::ZERO).await?;
    let stored = stored::stored(StoredArgs {
        small: scaled(10_000, s),
        large: scaled(1_000_000, s),
        requests: scaled(5_000, s).max(20),
        connections: 16,
        rounds: 3,
        // Embedded only: FerretDB reads every task for most queries (docs/benchmarks.md).
        mongo_url: None,
        redis_url: None,
    })
    .await?;
    stored::print_stored(&stored);
    println!();
    Ok(AllReport {
        scale: s,
        http,
        distributed,
        subscribe,
        crowd,
        paced,
        unlimited,
        stored,
    })
}

/// One `bench pipeline` run, printed.
async fn run_pipeline(
    tasks: usize,
    ipm: u32,
    latency: Duration,
) -> Result<(PipelineArgs, PipelineReport), String> {
    let args = PipelineArgs {
        tasks,
        ipm,
        latency,
        clients: 64,
    };
    let report = pipeline::pipeline(args.clone()).await?;
    pipeline::print_pipeline(&args, &report);
    println!();
    Ok((args, report))
}

/// One goal of issue #6 and what this run measured for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub goal: &'static str,
    pub measured: String,
    pub met: bool,
}

fn row<'a>(rows: &'a [(Measure, Ratios)], name: &str) -> Result<&'a (Measure, Ratios), String> {
    rows.iter()
        .find(|(m, _)| m.name == name)
        .ok_or_else(|| format!("no \"{name}\" row"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rate and p99 of a row against a rate and p99 goal.
fn rate_goal(
    goal: &'static str,
    rows: &[(Measure, Ratios)],
    name: &str,
    min_rate: f64,
    max_p99_ms: f64,
) -> Result<Goal, String> {
    let (m, _) = row(rows, name)?;
    Ok(Goal {
        goal,
        measured: format!("{:.0}/s, p99 {:.1} ms", m.per_second, ms(m.p99)),
        met: m.per_second >= min_rate && ms(m.p99) <= max_p99_ms,
    })
}

/// The goals of issue #6 against `r`.
pub fn goals(r: &AllReport) -> Result<Vec<Goal>, String> {
    let mut out = vec![
        rate_goal(
            "submit >= 5,000/s embedded, p99 <= 25 ms (REST)",
            &r.http,
            REST_SUBMIT,
            5_000.0,
            25.0,
        )?,
        rate_goal(
            "submit >= 5,000/s embedded, p99 <= 25 ms (GraphQL)",
            &r.http,
            GRAPHQL_SUBMIT,
            5_000.0,
            25.0,
        )?,
        rate_goal(
            "poll >= 20,000/s, p99 <= 10 ms (REST)",
            &r.http,
            REST_POLL,
            20_000.0,
            10.0,
        )?,
        rate_goal(
            "poll >= 20,000/s, p99 <= 10 ms (GraphQL)",
            &r.http,
            GRAPHQL_POLL,
            20_000.0,
            10.0,
        )?,
    ];
    if let Some(rows) = &r.distributed {
        for (label, name) in [("REST", REST_SUBMIT), ("GraphQL", GRAPHQL_SUBMIT)] {
            let (m, ratios) = row(rows, name)?;
            let backend = ratios
                .iter()
                .find(|(base, _)| base == BACKEND_FLOOR)
                .map(|(_, x)| *x)
                .ok_or_else(|| format!("{name} has no ratio to the backend floor"))?;
            out.push(Goal {
                goal: "distributed submit >= 0.7 of the backend floor",
                measured: format!("{label}: {backend:.2} ({:.0}/s)", m.per_second),
                met: backend >= 0.7,
            });
        }
        for (label, name, embedded) in [
            ("REST", REST_POLL, EMBEDDED_REST_POLL),
            ("GraphQL", GRAPHQL_POLL, EMBEDDED_GRAPHQL_POLL),
        ] {
            let (m, ratios) = row(rows, name)?;
            let ratio = ratios
                .iter()
                .find(|(base, _)| base == embedded)
                .map(|(_, x)| *x)
                .ok_or_else(|| format!("{name} has no ratio to the embedded poll"))?;
            let p99 = ms(m.p99);
            out.push(Goal {
                goal:
                    "distributed poll >= 0.5 of the embedded poll, p99 <= 10 ms (2 api processes)",
                measured: format!(
                    "{label}: {ratio:.2} ({:.0}/s), p99 {p99:.1} ms",
                    m.per_second
                ),
                met: ratio >= 0.5 && p99 <= 10.0,
            });
        }
    }
    let sub = &r.subscribe;
    let extra_kib = sub.rss_after_kib.saturating_sub(sub.rss_before_kib);
    out.push(Goal {
        goal: "10,000 subscribers in <= 200 MB extra RSS",
        measured: format!(
            "+{:.1} MiB for {} ({:.1} KiB each)",
            extra_kib as f64 / 1024.0,
            sub.subscribers,
            sub.rss_per_subscriber_kib()
        ),
        met: extra_kib * 1024 <= 200_000_000,
    });
    out.push(Goal {
        goal: "delivery p99 <= 100 ms, 1,000 tasks completing in a burst",
        measured: format!(
            "p99 {:.1} ms ({} of {} received)",
            ms(sub.service.delay_p99),
            sub.service.received_completed,
            sub.subscribers
        ),
        met: ms(sub.service.delay_p99) <= 100.0
            && sub.service.received_completed == sub.subscribers,
    });
    out.extend(crowd_goals(&r.crowd));
    let (args, paced) = &r.paced;
    let of_limit = paced.achieved_ipm / f64::from(args.ipm.max(1));
    out.push(Goal {
        goal: "provider >= 0.98 of its limit, 0 failed",
        measured: format!("{of_limit:.3} of {}/min, {} failed", args.ipm, paced.failed),
        met: of_limit >= 0.98 && paced.failed == 0,
    });
    for row in &r.stored.rows {
        let ratio = row.ratio();
        out.push(Goal {
            goal: stored::goal_name(row.name),
            measured: if row.name == stored::STARTUP {
                format!(
                    "{ratio:.2} ({:.2} s against {:.2} s)",
                    row.large.p50.as_secs_f64(),
                    row.small.p50.as_secs_f64()
                )
            } else {
                format!(
                    "{ratio:.2} ({:.0}/s against {:.0}/s)",
                    row.large.per_second, row.small.per_second
                )
            },
            met: ratio >= stored::GOAL,
        });
    }
    Ok(out)
}

/// #22.2: 100,000 subscribers in 1.5 GB, judged on the cost of a socket with one subscription
/// (all the sockets the open-files limit allows, measured) times 100,000: a projection; and the
/// delivery delay of 100,000 subscriptions (several a socket) when 10,000 tasks complete.
fn crowd_goals(c: &SubscribeReport) -> [Goal; 2] {
    let projected = c.projected_one_per_socket_bytes(100_000);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    [
        Goal {
            goal: "100,000 subscribers in <= 1.5 GB extra RSS (projected)",
            measured: format!(
                "{:.0} MiB: {:.1} KiB a socket x 100,000 ({} measured)",
                projected / 1048576.0,
                c.rss_per_socket_kib(),
                c.shape.sockets()
            ),
            met: projected <= 1.5e9,
        },
        Goal {
            goal: "delivery p99 <= 250 ms, 100,000 subscriptions, 10,000 tasks",
            measured: format!(
                "p99 {:.1} ms, floor {:.1} ms ({} of {}, {} a socket)",
                ms(c.service.delay_p99),
                ms(c.floor.delay_p99),
                c.service.received_completed,
                c.subscribers,
                c.shape.per_socket
            ),
            met: ms(c.service.delay_p99) <= 250.0 && c.service.received_completed == c.subscribers,
        },
    ]
}

pub fn print_goals(r: &AllReport) -> Result<(), String> {
    let (args, unlimited) = &r.unlimited;
    println!(
        "unlimited pipeline: {:.0} tasks/s through the worker ({} tasks, no goal)",
        unlimited.completed as f64 / unlimited.elapsed.as_secs_f64().max(1e-9),
        args.tasks
    );
    println!("goals of issue #6 (2 cores, everything on one machine):");
    for g in goals(r)? {
        let verdict = match (r.scale, g.met) {
            (1, true) => "met",
            (1, false) => "NOT MET",
            _ => "not judged below full scale",
        };
        println!("  {:<64} {:<44} {verdict}", g.goal, g.measured);
    }
    Ok(())
}
