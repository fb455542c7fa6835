//! Property-based fuzzing of the REST and GraphQL inputs (proptest): arbitrary JSON values,
//! hostile strings, random ids, query strings and raw bytes, sent as a user key and as the admin
//! to the real router. Every answer must be below 500, and every refused request (4xx) must leave
//! the stored users and tasks exactly as they were. Run with `--nocapture` for the tally.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
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
