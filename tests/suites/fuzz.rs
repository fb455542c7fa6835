//! Property-based fuzzing of the REST and GraphQL inputs (proptest): arbitrary JSON values,
//! hostile strings, random ids, query strings and raw bytes, sent as a user key and as the admin
//! to the real router. Every answer must be below 500, and every refused request (4xx) must leave
//! the stored users and tasks exactly as they were. Run with `--nocapture` for the tally.
//!
//! A second property generates GraphQL documents (nesting, fragments that fan out or cycle,
//! aliases, variables, several operations) against the real binary in a child process: every
//! answer within a time bound, the process's peak memory within a bound (`GQL_FUZZ_CASES`
//! raises the number of documents).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::TestServer;
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

const ADMIN: &str = "admin-key-for-the-fuzzer-0123456789";
/// Requests per run; `FUZZ_CASES` raises it for a deeper run.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Strings that have broken services before: injections, traversal, control and wide
/// characters, numbers in disguise, huge and empty.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".repeat(3)),
        Just("{\"$gt\": \"\"}".to_string()),
        Just("'; DROP TABLE tasks; --".to_string()),
        Just("../../../../etc/passwd".to_string()),
        Just("\u{0}\u{1}\u{7f}".to_string()),
        Just("🦀".repeat(2000)),
        Just("a".repeat(70_000)),
        Just("1024x1024x1024".to_string()),
        Just("99999999999x1".to_string()),
        Just("-1x-1".to_string()),
        Just("NaN".to_string()),
        Just("data:image/png;base64,!!!!".to_string()),
        Just("http://169.254.169.254/latest/meta-data".to_string()),
        Just("0190a1b2-0000-7000-8000-000000000000".to_string()),
        Just("<script>alert(1)</script>".to_string()),
        Just("\u{202e}reversed".to_string()),
        "\\PC{0,40}",
        ".{0,300}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            hash_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// An object with some of `fields` (each a plausible value or anything at all) and some junk.
fn body_with(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        3 => nasty_string().prop_map(Value::String),
        2 => json_value(),
        1 => prop_oneof![
            Just(json!("a cat in a garden")),
            Just(json!("1024x1024")),
            Just(json!("doubao-seedream-3.0-t2i")),
            Just(json!(42)),
            Just(json!(2.5)),
        ],
    ];
    (
        vec((0..fields.len(), field), 0..fields.len() + 2),
        hash_map("[a-z_]{1,10}", json_value(), 0..3),
    )
        .prop_map(move |(picked, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            for (i, v) in picked {
                m.insert(fields[i].to_string(), v);
            }
            Value::Object(m)
        })
}

const TASK_FIELDS: &[&str] = &[
    "prompt",
    "user_id",
    "model",
    "size",
    "seed",
    "guidance_scale",
    "watermark",
    "image",
    "images",
    "n",
    "quality",
    "style",
    "options",
];
const USER_FIELDS: &[&str] = &["email", "name"];
const GQL_TASK_FIELDS: &[&str] = &[
    "prompt",
    "userId",
    "model",
    "size",
    "seed",
    "guidanceScale",
    "watermark",
    "images",
    "n",
    "idempotencyKey",
];

#[derive(Debug, Clone)]
enum Input {
    Rest {
        method: &'static str,
        path: String,
        body: Option<Value>,
        admin: bool,
    },
    Raw {
        path: &'static str,
        bytes: Vec<u8>,
    },
    Gql {
        query: String,
        variables: Value,
        admin: bool,
    },
}

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{task}".to_string()),
        Just("{user}".to_string()),
        "[0-9a-f-]{0,40}",
        nasty_string().prop_map(|s| s.chars().take(200).collect::<String>()),
    ]
    .prop_map(|s| {
        // Keep the request line valid; what is in it is still arbitrary.
        s.replace(['/', '?', '#', ' '], "_")
            .chars()
            .filter(|c| !c.is_control())
            .collect()
    })
}

fn query_string() -> impl Strategy<Value = String> {
    vec(
        (
            prop_oneof![
                Just("limit"),
                Just("offset"),
                Just("cursor"),
                Just("status"),
                Just("email")
            ],
            prop_oneof![
                "-?[0-9]{0,20}".boxed(),
                "[a-z]{0,10}".boxed(),
                path_segment().boxed()
            ],
        ),
        0..4,
    )
    .prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("{k}={}", v.replace(['&', '='], "")))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn input() -> impl Strategy<Value = Input> {
    let rest_body = prop_oneof![
        (body_with(TASK_FIELDS), any::<bool>()).prop_map(|(b, admin)| Input::Rest {
            method: "POST",
            path: "/api/v1/ai/image/task".into(),
            body: Some(b),
            admin
        }),
        (body_with(TASK_FIELDS), json_value(), any::<bool>()).prop_map(|(inner, kind, admin)| {
            Input::Rest {
                method: "POST",
                path: "/api/v1/ai/tasks".into(),
                body: Some(json!({"type": kind, "input": inner, "model": inner["model"].clone()})),
                admin,
            }
        }),
        (body_with(USER_FIELDS), any::<bool>()).prop_map(|(b, admin)| Input::Rest {
            method: "POST",
            path: "/api/v1/users".into(),
            body: Some(b),
            admin
        }),
        (path_segment(), body_with(USER_FIELDS), any::<bool>()).prop_map(|(id, b, admin)| {
            Input::Rest {
                method: "PUT",
                path: format!("/api/v1/users/{id}"),
                body: Some(b),
                admin,
            }
        }),
        (path_segment(), body_with(&["name"]), any::<bool>()).prop_map(|(id, b, admin)| {
            Input::Rest {
                method: "POST",
                path: format!("/api/v1/users/{id}/api-keys"),
                body: Some(b),
                admin,
            }
        }),
    ];
    let rest_path = (
        prop_oneof![
            Just(("GET", "/api/v1/ai/image/result/")),
            Just(("GET", "/api/v1/tasks/")),
            Just(("GET", "/api/v1/ai/tasks/")),
            Just(("GET", "/api/v1/tasks/user/")),
            Just(("GET", "/api/v1/users/")),
            Just(("DELETE", "/api/v1/tasks/")),
            Just(("DELETE", "/api/v1/api-keys/")),
            Just(("GET", "/images/")),
        ],
        path_segment(),
        query_string(),
        any::<bool>(),
    )
        .prop_map(|((method, prefix), id, q, admin)| Input::Rest {
            method,
            path: format!("{prefix}{id}?{q}"),
            body: None,
            admin,
        });
    let raw = (
        prop_oneof![
            Just("/api/v1/ai/image/task"),
            Just("/api/v1/users"),
            Just("/graphql")
        ],
        prop_oneof![
            vec(any::<u8>(), 0..200),
            json_value().prop_map(|v| v.to_string().into_bytes()),
        ],
    )
        .prop_map(|(path, bytes)| Input::Raw { path, bytes });
    let gql = prop_oneof![
        (body_with(GQL_TASK_FIELDS), any::<bool>()).prop_map(|(input, admin)| Input::Gql {
            query: "mutation($input: CreateImageTaskInput!) { createImageTask(input: $input) { id status prompt } }".into(),
            variables: json!({"input": input}),
            admin,
        }),
        (body_with(USER_FIELDS), any::<bool>()).prop_map(|(input, admin)| Input::Gql {
            query: "mutation($input: CreateUserInput!) { createUser(input: $input) { id } }".into(),
            variables: json!({"input": input}),
            admin,
        }),
        (json_value(), any::<bool>()).prop_map(|(id, admin)| Input::Gql {
            query: "query($id: ID!) { task(id: $id) { id user { id } } }".into(),
            variables: json!({"id": id}),
            admin,
        }),
        (json_value(), json_value(), any::<bool>()).prop_map(|(u, f, admin)| Input::Gql {
            query: "query($u: ID, $f: Int) { tasks(userId: $u, first: $f) { totalCount } }".into(),
            variables: json!({"u": u, "f": f}),
            admin,
        }),
        (json_value(), any::<bool>()).prop_map(|(id, admin)| Input::Gql {
            query: "mutation($id: ID!) { cancelTask(id: $id) { id } }".into(),
            variables: json!({"id": id}),
            admin,
        }),
        (".{0,200}", any::<bool>()).prop_map(|(q, admin)| Input::Gql {
            query: q,
            variables: json!({}),
            admin,
        }),
    ];
    prop_oneof![3 => rest_body, 2 => rest_path, 1 => raw, 3 => gql]
}

struct Tally {
    tried: AtomicUsize,
    refused: AtomicUsize,
    accepted: AtomicUsize,
}

/// A client without a connection pool: after an answer sent before the body was read (413) the
/// server closes the connection, and a pooled client can race that close on its next request.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// Stored users and tasks, as the admin sees them.
async fn state(s: &TestServer, http: &reqwest::Client) -> (Value, Value) {
    let users = s
        .send(http.get(s.url("/api/v1/users?limit=1")).bearer_auth(ADMIN))
        .await
        .1["pagination"]["total"]
        .clone();
    let tasks = s
        .send(http.get(s.url("/api/v1/queue/stats")).bearer_auth(ADMIN))
        .await
        .1["data"]["total"]
        .clone();
    (users, tasks)
}

#[test]
fn hostile_inputs_never_cause_a_5xx_or_a_change_when_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (s, user, key, task) = rt.block_on(async {
        let s = TestServer::start_with(|c| {
            c.admin_api_key = Some(ADMIN.into());
            c.sandbox_latency = Duration::from_secs(600);
            c.user_submit_per_minute = 1_000_000;
            c.user_submit_burst = 1_000_000;
            c.user_max_in_flight = 1_000_000;
            c.max_body_bytes = 64 * 1024;
        })
        .await;
        let (_, u) = s
            .send(
                s.http
                    .post(s.url("/api/v1/users"))
                    .bearer_auth(ADMIN)
                    .json(&json!({"email": "fuzz@example.com", "name": "Fuzz"})),
            )
            .await;
        let user = u["data"]["id"].as_str().expect("user").to_string();
        let (_, k) = s
            .send(
                s.http
                    .post(s.url(&format!("/api/v1/users/{user}/api-keys")))
                    .bearer_auth(ADMIN),
            )
            .await;
        let key = k["data"]["key"].as_str().expect("key").to_string();
        let (_, t) = s
            .send(
                s.http
                    .post(s.url("/api/v1/ai/image/task"))
                    .bearer_auth(&key)
                    .json(&json!({"prompt": "seed task"})),
            )
            .await;
        let task = t["data"]["task_id"].as_str().expect("task").to_string();
        (s, user, key, task)
    });
    let tally = Arc::new(Tally {
        tried: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        accepted: AtomicUsize::new(0),
    });
    let mut runner = TestRunner::new(PropConfig {
        cases: cases(),
        failure_persistence: None,
        ..PropConfig::default()
    });
    let http = client();
    let result = runner.run(&input(), |input| {
        rt.block_on(async {
            let before = state(&s, &http).await;
            let fill = |p: &str| p.replace("{task}", &task).replace("{user}", &user);
            let auth = |admin: bool| if admin { ADMIN } else { key.as_str() };
            let req = match &input {
                Input::Rest {
                    method,
                    path,
                    body,
                    admin,
                } => {
                    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
                    let mut r = http.request(m, s.url(&fill(path))).bearer_auth(auth(*admin));
                    if let Some(b) = body {
                        r = r.body(fill(&b.to_string())).header("content-type", "application/json");
                    }
                    r
                }
                Input::Raw { path, bytes } => http
                    .post(s.url(path))
                    .bearer_auth(key.as_str())
                    .header("content-type", "application/json")
                    .body(bytes.clone()),
                Input::Gql {
                    query,
                    variables,
                    admin,
                } => http
                    .post(s.url("/graphql"))
                    .bearer_auth(auth(*admin))
                    .json(&json!({"query": query, "variables": serde_json::from_str::<Value>(&fill(&variables.to_string())).unwrap_or(Value::Null)})),
            };
            let (status, body) = s.send(req).await;
            tally.tried.fetch_add(1, Ordering::Relaxed);
            if status >= 500 {
                return Err(TestCaseError::fail(format!("{status} for {input:?}: {body}")));
            }
            let text = body.to_string();
            if text.contains("panicked") || text.contains("rusqlite") || text.contains("stack") {
                return Err(TestCaseError::fail(format!("internals leak: {text}")));
            }
            let gql_refused = matches!(input, Input::Gql { .. })
                && body["errors"].as_array().is_some_and(|e| !e.is_empty());
            if (400..500).contains(&status) || gql_refused {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                let after = state(&s, &http).await;
                if after != before {
                    return Err(TestCaseError::fail(format!(
                        "refused ({status}) but state changed {before:?} -> {after:?}: {input:?}: {body}"
                    )));
                }
            } else {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    });
    let (tried, refused, accepted) = (
        tally.tried.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.accepted.load(Ordering::Relaxed),
    );
    eprintln!(
        "fuzz: {tried} requests, {refused} refused (4xx or GraphQL errors), {accepted} accepted"
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(refused > tried / 2, "most hostile inputs are refused");
}

// ---------------------------------------------------------------------------------------------
// Random GraphQL documents against the real binary: every answer in time, memory bounded.
// ---------------------------------------------------------------------------------------------

/// Longest any answer may take. Generous (a debug build on a loaded two-core machine answers in
/// milliseconds), yet a document whose cost grows as 4^n takes minutes at n = 11 (37 s measured
/// at n = 11 on a debug build without the expansion budget) and hours beyond.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// How much the server's peak resident memory (VmHWM) may grow over the run. It sits near
/// 60 MB; without the budget a 4^11 document took it past 800 MB.
const MEMORY_GROWTH: u64 = 256 * 1024 * 1024;
/// Resident memory at which the watchdog kills the server, so a regression fails this test
/// instead of taking the machine down (an address-space limit would not do: the idle debug
/// binary already reserves 1.4 GB of address space for thread stacks and allocator arenas).
const HARD_CAP: u64 = 1024 * 1024 * 1024;

fn gql_cases() -> u32 {
    std::env::var("GQL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// One selection of a generated document.
#[derive(Debug, Clone)]
enum Sel {
    Field {
        alias: Option<String>,
        name: String,
        args: Vec<(String, Arg)>,
        skip: bool,
        children: Vec<Sel>,
    },
    /// A spread of a fragment: forward (a later fragment) or any (cycles possible).
    Spread { forward: bool, pick: usize },
    Inline {
        on: Option<&'static str>,
        children: Vec<Sel>,
    },
}

#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Str(String),
    Var(usize),
    List(Vec<Arg>),
    Object(Vec<(String, Arg)>),
}

/// A run of fragments C0..Cn, each spreading the next `k` times (with aliases or inline fragments
/// around the spreads in styles 1 and 2; style 3 ends in an unknown fragment): the shape of the
/// attack.
#[derive(Debug, Clone)]
struct Chain {
    n: usize,
    k: usize,
    style: u8,
}

#[derive(Debug, Clone)]
struct Op {
    kind: &'static str,
    vars: Vec<(usize, &'static str)>,
    selections: Vec<Sel>,
    uses_chain: bool,
}

#[derive(Debug, Clone)]
struct Doc {
    ops: Vec<Op>,
    fragments: Vec<(&'static str, Vec<Sel>)>,
    chain: Option<Chain>,
    operation_name: Option<usize>,
    variables: Value,
    get: bool,
}

const FIELD_NAMES: &[&str] = &[
    "__typename",
    "me",
    "imageModels",
    "tasks",
    "task",
    "users",
    "user",
    "id",
    "name",
    "email",
    "edges",
    "node",
    "status",
    "prompt",
    "result",
    "imageUrl",
    "images",
    "__schema",
    "__type",
    "types",
    "fields",
    "type",
    "ofType",
    "kind",
    "createImageTask",
    "taskUpdated",
];
const TYPE_CONDITIONS: &[&str] = &["Query", "Task", "User", "Mutation", "__Type", "Nope"];
const VAR_TYPES: &[&str] = &[
    "String",
    "Int",
    "ID!",
    "[String!]",
    "TaskStatus",
    "CreateImageTaskInput",
    "[[Int]]",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(FIELD_NAMES).prop_map(str::to_string),
        1 => "[a-z][a-zA-Z0-9_]{0,7}",
    ]
}

fn arg() -> impl Strategy<Value = Arg> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Arg::Int),
        "[ -~]{0,12}".prop_map(|s| Arg::Str(s.replace(['"', '\\'], ""))),
        (0usize..4).prop_map(Arg::Var),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Arg::List),
            vec(("[a-z]{1,6}", inner), 0..3).prop_map(Arg::Object),
        ]
    })
}

fn selections() -> impl Strategy<Value = Vec<Sel>> {
    let leaf = prop_oneof![
        4 => (
            proptest::option::of("[a-z]{1,5}"),
            field_name(),
            vec(("[a-z]{1,6}", arg()), 0..2),
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(alias, name, args, skip)| Sel::Field {
                alias,
                name,
                args,
                skip,
                children: Vec::new(),
            }),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(forward, pick)| Sel::Spread { forward, pick }),
    ];
    let sel = leaf.prop_recursive(7, 96, 5, |inner| {
        prop_oneof![
            3 => (
                proptest::option::of("[a-z]{1,5}"),
                field_name(),
                vec(("[a-z]{1,6}", arg()), 0..2),
                vec(inner.clone(), 1..5),
            )
                .prop_map(|(alias, name, args, children)| Sel::Field {
                    alias,
                    name,
                    args,
                    skip: false,
                    children,
                }),
            1 => (
                proptest::option::of(proptest::sample::select(TYPE_CONDITIONS)),
                vec(inner, 1..4),
            )
                .prop_map(|(on, children)| Sel::Inline { on, children }),
        ]
    });
    vec(sel, 1..5)
}

fn document() -> impl Strategy<Value = Doc> {
    let op = (
        prop_oneof![
            6 => Just("query"),
            1 => Just("mutation"),
            1 => Just("subscription"),
        ],
        vec((0usize..4, proptest::sample::select(VAR_TYPES)), 0..3),
        selections(),
        proptest::bool::weighted(0.5),
    )
        .prop_map(|(kind, vars, selections, uses_chain)| Op {
            kind,
            vars,
            selections,
            uses_chain,
        });
    (
        vec(op, 1..4),
        vec(
            (proptest::sample::select(TYPE_CONDITIONS), selections()),
            0..5,
        ),
        proptest::option::weighted(
            0.5,
            (1usize..=16, 1usize..=5, 0u8..4).prop_map(|(n, k, style)| Chain { n, k, style }),
        ),
        proptest::option::of(0usize..4),
        hash_map("v[0-3]", json_value(), 0..4),
        proptest::bool::weighted(0.25),
    )
        .prop_map(|(ops, fragments, chain, operation_name, vars, get)| Doc {
            ops,
            fragments,
            chain,
            operation_name,
            variables: Value::Object(vars.into_iter().collect()),
            get,
        })
}

fn render_arg(a: &Arg, out: &mut String) {
    match a {
        Arg::Int(i) => out.push_str(&i.to_string()),
        Arg::Str(s) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Arg::Var(v) => out.push_str(&format!("$v{v}")),
        Arg::List(items) => {
            out.push('[');
            for i in items {
                render_arg(i, out);
                out.push(' ');
            }
            out.push(']');
        }
        Arg::Object(fields) => {
            out.push('{');
            for (k, v) in fields {
                out.push_str(k);
                out.push_str(": ");
                render_arg(v, out);
                out.push(' ');
            }
            out.push('}');
        }
    }
}

/// Renders selections; `here` is the fragment being written (spreads go to later ones when
/// `forward`), `count` how many fragments the document has.
fn render(sels: &[Sel], here: Option<usize>, count: usize, out: &mut String) {
    out.push_str("{ ");
    for s in sels {
        match s {
            Sel::Field {
                alias,
                name,
                args,
                skip,
                children,
            } => {
                if let Some(a) = alias {
                    out.push_str(a);
                    out.push_str(": ");
                }
                out.push_str(name);
                if !args.is_empty() {
                    out.push('(');
                    for (k, v) in args {
                        out.push_str(k);
                        out.push_str(": ");
                        render_arg(v, out);
                        out.push(' ');
                    }
                    out.push(')');
                }
                if *skip {
                    out.push_str(" @skip(if: true)");
                }
                out.push(' ');
                if !children.is_empty() {
                    render(children, here, count, out);
                }
            }
            Sel::Spread { forward, pick } => {
                if count == 0 {
                    out.push_str("...Missing ");
                    continue;
                }
                let from = match (forward, here) {
                    (true, Some(h)) if h + 1 < count => h + 1,
                    (true, Some(_)) => {
                        // The last fragment has nothing after it.
                        out.push_str("__typename ");
                        continue;
                    }
                    _ => 0,
                };
                out.push_str(&format!("...F{} ", from + pick % (count - from)));
            }
            Sel::Inline { on, children } => {
                out.push_str("... ");
                if let Some(t) = on {
                    out.push_str("on ");
                    out.push_str(t);
                    out.push(' ');
                }
                render(children, here, count, out);
            }
        }
    }
    out.push_str("} ");
}

impl Doc {
    fn text(&self) -> String {
        let mut out = String::new();
        let count = self.fragments.len();
        for (i, op) in self.ops.iter().enumerate() {
            out.push_str(op.kind);
            if self.ops.len() > 1 || !op.vars.is_empty() {
                out.push_str(&format!(" Op{i}"));
            }
            if !op.vars.is_empty() {
                out.push('(');
                for (v, ty) in &op.vars {
                    out.push_str(&format!("$v{v}: {ty} "));
                }
                out.push(')');
            }
            out.push(' ');
            let mut sels = op.selections.clone();
            if op.uses_chain && self.chain.is_some() {
                sels.push(Sel::Field {
                    alias: None,
                    name: "__typename".into(),
                    args: Vec::new(),
                    skip: false,
                    children: Vec::new(),
                });
            }
            let mut body = String::new();
            render(&sels, None, count, &mut body);
            if op.uses_chain && self.chain.is_some() {
                body = body.replacen("{ ", "{ ...C0 ", 1);
            }
            out.push_str(&body);
            out.push('\n');
        }
        for (i, (on, sels)) in self.fragments.iter().enumerate() {
            out.push_str(&format!("fragment F{i} on {on} "));
            render(sels, Some(i), count, &mut out);
            out.push('\n');
        }
        if let Some(c) = &self.chain {
            for i in 0..c.n {
                let next = format!("...C{}", i + 1);
                let spreads: Vec<String> = (0..c.k)
                    .map(|j| match c.style {
                        0 => next.clone(),
                        1 => format!("a{j}: __typename {next}"),
                        _ => format!("... on Query {{ {next} }}"),
                    })
                    .collect();
                out.push_str(&format!(
                    "fragment C{i} on Query {{ {} }}\n",
                    spreads.join(" ")
                ));
            }
            // Style 3 ends in an unknown fragment: spreads only, not one field.
            let last = if c.style == 3 {
                "...Missing"
            } else {
                "__typename"
            };
            out.push_str(&format!("fragment C{} on Query {{ {last} }}\n", c.n));
        }
        out
    }

    fn operation_name(&self) -> Option<String> {
        self.operation_name.map(|i| format!("Op{i}"))
    }
}

fn vm(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?
                * 1024,
        )
    })
}

/// The server binary in a child process, killed when dropped.
struct Child(Arc<std::sync::Mutex<std::process::Child>>);

fn kill(child: &std::sync::Mutex<std::process::Child>) {
    if let Ok(mut c) = child.lock() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        kill(&self.0);
    }
}

/// Random documents (nesting, fragments with chains that fan out and cycles, aliases, inline
/// fragments, arguments and variables, several operations with or without a name, GET and
/// POST) against the real binary in a child process: every answer must arrive within
/// `ANSWER_WITHIN` and below 500, and the process's peak resident memory (VmHWM, which catches
/// a peak between two samples) must stay within `MEMORY_GROWTH` of where it started. The memory
/// is read from /proc for the server alone: measured in this process, the allocator would count
/// the test's own client and generator too. Shrinking is off: a failure is reported on the first
/// document found (a shrink would rerun documents that each take the time bound).
#[test]
fn random_graphql_documents_are_answered_in_time_within_a_memory_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut cmd, base) = crate::common::process::command("serve", dir.path());
    cmd.env("DATA_DIR", dir.path().join("data"))
        .stderr(std::process::Stdio::null());
    let spawned = cmd.spawn().expect("server starts");
    let pid = spawned.id();
    let child = Child(Arc::new(std::sync::Mutex::new(spawned)));

    // The watchdog: kills the server past HARD_CAP, before the machine feels it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (stop, killed, child) = (stop.clone(), killed.clone(), child.0.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if vm(pid, "VmRSS").is_some_and(|rss| rss > HARD_CAP) {
                    killed.store(true, Ordering::Relaxed);
                    kill(&child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .expect("client");
    rt.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if http
                .get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Warm up (schemas built, first allocations made) before the baseline.
        for q in ["{ __typename }", "{ imageModels { id name } }"] {
            let _ = http
                .post(format!("{base}/graphql"))
                .json(&json!({ "query": q }))
                .send()
                .await;
        }
    });
    let baseline = vm(pid, "VmHWM").expect("VmHWM");

    let mut runner = TestRunner::new(PropConfig {
        cases: gql_cases(),
        failure_persistence: None,
        max_shrink_iters: 0,
        ..PropConfig::default()
    });
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    let tried = AtomicUsize::new(0);
    let result = runner.run(&document(), |doc| {
        rt.block_on(async {
            tried.fetch_add(1, Ordering::Relaxed);
            let text = doc.text();
            // A GET carries the document in its URL: long variables go by POST instead.
            let req = if doc.get && doc.variables.to_string().len() < 2048 {
                let mut url = reqwest::Url::parse(&format!("{base}/graphql")).expect("url");
                url.query_pairs_mut()
                    .append_pair("query", &text)
                    .append_pair("variables", &doc.variables.to_string());
                if let Some(n) = doc.operation_name() {
                    url.query_pairs_mut().append_pair("operationName", &n);
                }
                http.get(url)
            } else {
                http.post(format!("{base}/graphql")).json(&json!({
                    "query": text,
                    "variables": doc.variables,
                    "operationName": doc.operation_name(),
                }))
            };
            let started = std::time::Instant::now();
            let answer = req.send().await;
            let took = started.elapsed();
            let status = match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    status
                }
                Err(e) if e.is_timeout() => {
                    return Err(TestCaseError::fail(format!(
                        "no answer within {ANSWER_WITHIN:?} for:\n{text}"
                    )))
                }
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "no answer ({}; killed by the watchdog: {}) for:\n{text}",
                        e.without_url(),
                        killed.load(Ordering::Relaxed)
                    )))
                }
            };
            {
                let mut s = slowest.lock().expect("lock");
                *s = (*s).max(took);
            }
            if status >= 500 {
                return Err(TestCaseError::fail(format!("{status} for:\n{text}")));
            }
            let peak = vm(pid, "VmHWM").unwrap_or(u64::MAX);
            if peak.saturating_sub(baseline) > MEMORY_GROWTH {
                return Err(TestCaseError::fail(format!(
                    "peak memory grew from {} MB to {} MB after:\n{text}",
                    baseline >> 20,
                    peak >> 20
                )));
            }
            Ok(())
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let peak = vm(pid, "VmHWM").unwrap_or(0);
    eprintln!(
        "graphql fuzz: {} documents, slowest answer {:?}, peak memory {} MB (from {} MB)",
        tried.load(Ordering::Relaxed),
        slowest.lock().map(|s| *s).unwrap_or_default(),
        peak >> 20,
        baseline >> 20
    );
    drop(child);
    if let Err(e) = result {
        panic!("{e}");
    }
}
