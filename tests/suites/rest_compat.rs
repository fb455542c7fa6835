//! The legacy REST contract: every request recorded from the older Go server
//! (tests/fixtures/go-compat/{v2,latest}.json, written by scripts/record-go-compat.py) is
//! replayed against this service, in order, and the answers compared: the same status code,
//! the same `data.status` string, and every key the Go server had present here with the same
//! JSON type (extra keys are fine; ids are opaque, so the ids this run created stand in for
//! the recorded ones). The cases that differ must be exactly those listed, each with its
//! reason, in tests/fixtures/go-compat/differences.json (docs/rest-compat.md says why).

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;

use crate::common::{TestServer, PATIENCE};

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/go-compat/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fill(v: &Value, ids: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for (k, id) in ids {
                s = s.replace(&format!("${{{k}}}"), id);
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, ids)).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (k.clone(), fill(x, ids))).collect())
        }
        other => other.clone(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key of `go` present in `ours` with the same JSON type; a Go `null` matches anything
/// (Go wrote nil slices and empty values as null). Arrays compare their first elements.
fn shape(go: &Value, ours: &Value, at: &str, out: &mut Vec<String>) {
    match (go, ours) {
        (Value::Null, _) => {}
        (Value::Object(g), Value::Object(o)) => {
            for (k, gv) in g {
                match o.get(k) {
                    None => out.push(format!("{at}.{k} missing")),
                    Some(ov) => shape(gv, ov, &format!("{at}.{k}"), out),
                }
            }
        }
        (Value::Array(g), Value::Array(o)) => match (g.first(), o.first()) {
            (Some(gv), Some(ov)) => shape(gv, ov, &format!("{at}[0]"), out),
            (Some(_), None) => out.push(format!("{at} is empty here, not in Go")),
            _ => {}
        },
        _ if kind(go) != kind(ours) => {
            out.push(format!("{at}: Go {} here {}", kind(go), kind(ours)))
        }
        _ => {}
    }
}

fn pointer(v: &Value, p: &str) -> Option<String> {
    v.pointer(p).and_then(|x| match x {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

async fn send(s: &TestServer, case: &Value, ids: &HashMap<String, String>) -> (u16, Value) {
    let method = case["method"].as_str().expect("method");
    let path = fill(&case["path"], ids);
    let url = s.url(path.as_str().expect("path"));
    let mut req = s.http.request(method.parse().expect("method"), url);
    if let Some(b) = case.get("body") {
        req = req.json(&fill(b, ids));
    } else if let Some(raw) = case.get("raw_body").and_then(Value::as_str) {
        req = req
            .header("content-type", "application/json")
            .body(raw.to_string());
    }
    s.send(req).await
}

/// Replays one recording; returns the differing cases with what differs.
async fn replay(version: &str) -> BTreeMap<String, Vec<String>> {
    // Slow enough that a task read right after its creation is still waiting ("fresh" cases),
    // whatever the machine; the completed cases poll until done.
    let s = TestServer::start_with(|c| c.sandbox_latency = Duration::from_secs(4)).await;
    let rec = fixture(&format!("{version}.json"));
    let mut ids: HashMap<String, String> = HashMap::new();
    ids.insert("run".into(), common::unique_name());
    let mut diffs = BTreeMap::new();
    for case in rec["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name").to_string();
        let want = case["status"].as_u64().expect("status") as u16;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let (status, body) = loop {
            let (status, body) = send(&s, case, &ids).await;
            let polling = case.get("poll").and_then(Value::as_u64);
            if polling.is_none_or(|p| p as u16 == status) || tokio::time::Instant::now() > deadline
            {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(bind) = case.get("bind").and_then(Value::as_object) {
            for (k, p) in bind {
                if let Some(id) = pointer(&body, p.as_str().expect("pointer")) {
                    ids.insert(k.clone(), id);
                }
            }
        }
        let go = &case["response"];
        let mut out = vec![];
        if status != want {
            out.push(format!("status: Go {want} here {status}"));
        }
        if let Some(st) = go.pointer("/data/status").and_then(Value::as_str) {
            let here = body.pointer("/data/status").and_then(Value::as_str);
            if here != Some(st) {
                out.push(format!("data.status: Go {st:?} here {here:?}"));
            }
        }
        shape(go, &body, "", &mut out);
        if !out.is_empty() {
            out.push(format!("answer here: {body}"));
            diffs.insert(name, out);
        }
    }
    diffs
}

/// The listed differences of `version`: case name → whether it may match after all.
fn listed(version: &str) -> BTreeMap<String, bool> {
    let list = fixture("differences.json");
    list["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .filter(|d| d["version"] == version)
        .inspect(|d| {
            assert!(
                d["reason"].as_str().is_some_and(|r| r.len() > 10),
                "every listed difference gives its reason: {d}"
            )
        })
        .map(|d| {
            let name = d["case"].as_str().expect("case").to_string();
            (name, d["may_match"] == true)
        })
        .collect()
}

async fn check(version: &str) {
    let diffs = replay(version).await;
    let expected = listed(version);
    let recorded: BTreeSet<String> = fixture(&format!("{version}.json"))["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect();
    let unknown: Vec<_> = expected.keys().filter(|k| !recorded.contains(*k)).collect();
    assert!(unknown.is_empty(), "listed cases not recorded: {unknown:?}");
    let unlisted: Vec<_> = diffs
        .iter()
        .filter(|(k, _)| !expected.contains_key(*k))
        .collect();
    let stale: Vec<_> = expected
        .iter()
        .filter(|(k, may_match)| !**may_match && !diffs.contains_key(*k))
        .map(|(k, _)| k)
        .collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "Go {version}: differences not in differences.json: {unlisted:#?}\n\
         listed but no longer differing (remove them): {stale:?}"
    );
}

#[tokio::test]
async fn a_go_v2_client_gets_the_answers_it_was_written_for() {
    check("v2").await;
}

#[tokio::test]
async fn a_go_latest_client_gets_the_answers_it_was_written_for() {
    check("latest").await;
}
