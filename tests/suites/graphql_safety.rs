//! GraphQL held to what an outside attack run and third-party clients found (issue #16): the
//! fragment fan-out budget on every path that runs a document, graphql-js's introspection query
//! on the default limits, the WebSocket close handshake, GraphQL over HTTP's media types, and the
//! GraphiQL playground served whole from the binary. Black-box, on the embedded default and (by
//! `scripts/test`) on MongoDB + Redis.

use crate::common;

use std::time::Duration;

use crate::common::{Proto, TestServer, WsClient, WsEvent, PATIENCE};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// graphql-js's `getIntrospectionQuery({descriptions, specifiedByUrl, directiveIsRepeatable,
/// schemaDescription, inputValueDeprecation, oneOf})`, the text printed by graphql@17.1.0 (the
/// same, byte for byte, as graphql@16.15.0's).
const INTROSPECTION: &str = include_str!("../fixtures/introspection-query.graphql");

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// `n` fragments, each spreading the next one `k` times: 4^9 = 262,144 fields from 522 bytes.
/// Small enough that a server without the budget still answers (in seconds, tens of MB), so this
/// test fails rather than takes the machine down; `tests/fuzz.rs` runs the larger ones against a
/// child process with a memory cap.
fn fan_out(n: usize, k: usize) -> String {
    let mut q = String::from("query Attack { ...F0 }\n");
    for i in 0..n {
        let spreads = vec![format!("...F{}", i + 1); k].join(" ");
        q.push_str(&format!("fragment F{i} on Query {{ {spreads} }}\n"));
    }
    q.push_str(&format!("fragment F{n} on Query {{ __typename }}\n"));
    q
}

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
}

async fn post(s: &TestServer, accept: Option<&str>, body: Value) -> (u16, String, Value) {
    let mut req = s.http.post(s.url("/graphql")).json(&body);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, ct, v)
}

async fn get_query(s: &TestServer, query: &str, accept: Option<&str>) -> (u16, Value) {
    let mut url = reqwest::Url::parse(&s.url("/graphql")).expect("url");
    url.query_pairs_mut().append_pair("query", query);
    let mut req = s.http.get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    s.send(req).await
}

fn assert_too_large(r: &Value) {
    assert_eq!(code(r), "QUERY_TOO_LARGE", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("10000"), "the limit is named: {r}");
    assert_eq!(r["errors"][0]["extensions"]["limit"], 10_000, "{r}");
    assert!(r["data"].is_null(), "{r}");
}

/// The subscription (or operation) `query` sent over a socket: its first event.
async fn over_socket(s: &TestServer, proto: Proto, query: &str) -> WsEvent {
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", proto).await;
    ws.subscribe("1", query, json!({})).await;
    ws.next_event().await
}

#[tokio::test]
async fn fragment_fan_out_is_refused_before_validation_on_every_path() {
    let s = TestServer::start().await;
    let attack = fan_out(9, 4);

    // POST, twice: the second time the verdict comes from the parse cache.
    for _ in 0..2 {
        let (status, _, r) = post(&s, None, json!({"query": attack})).await;
        assert_eq!(status, 200, "{r}");
        assert_too_large(&r);
    }
    // GET.
    let (status, r) = get_query(&s, &attack, None).await;
    assert_eq!(status, 200, "{r}");
    assert_too_large(&r);
    // Both WebSocket subprotocols.
    for proto in [Proto::TransportWs, Proto::LegacyWs] {
        match over_socket(&s, proto, &attack).await {
            WsEvent::Error { payload, .. } => {
                // graphql-transport-ws sends `next` with errors, the legacy one `data`.
                let errors = payload.get("errors").cloned().unwrap_or(payload.clone());
                let e = if errors.is_array() {
                    errors[0].clone()
                } else {
                    errors
                };
                assert_eq!(e["extensions"]["code"], "QUERY_TOO_LARGE", "{proto:?}: {e}");
            }
            other => panic!("{proto:?}: expected the refusal, got {other:?}"),
        }
    }

    // Aliases, inline fragments and several operations count the same way: each of these
    // expands past 10,000 fields only through fragments that spread each other.
    let aliased = "query A { ...F0 } fragment F0 on Query { a: __typename ...F1 ... on Query { ...F1 } ...F1 ...F1 } \
                   fragment F1 on Query { ...F2 ...F2 ...F2 ...F2 } fragment F2 on Query { ...F3 ...F3 ...F3 ...F3 } \
                   fragment F3 on Query { ...F4 ...F4 ...F4 ...F4 } fragment F4 on Query { ...F5 ...F5 ...F5 ...F5 } \
                   fragment F5 on Query { ...F6 ...F6 ...F6 ...F6 } fragment F6 on Query { x: __typename y: __typename }";
    let (_, _, r) = post(&s, None, json!({"query": aliased})).await;
    assert_too_large(&r);
    // 12 operations of 1,024 fields each, and the fragments: each operation alone is fine.
    let mut ops = String::new();
    for i in 0..12 {
        ops.push_str(&format!("query Op{i} {{ ...F0 }}\n"));
    }
    let many = format!(
        "{ops}{}",
        fan_out(5, 4).replace("query Attack { ...F0 }\n", "")
    );
    let (_, _, r) = post(&s, None, json!({"query": many, "operationName": "Op3"})).await;
    assert_too_large(&r);
    // No field at all: the chain ends in an unknown fragment, yet has 4^9 spreads to walk.
    let spreads_only = fan_out(9, 4).replace("{ __typename }", "{ ...Missing }");
    let (_, _, r) = post(&s, None, json!({"query": spreads_only})).await;
    assert_too_large(&r);

    // A document under the budget runs as before, from the cache too.
    for _ in 0..2 {
        let (status, _, r) = post(&s, None, json!({"query": fan_out(3, 4)})).await;
        assert_eq!(status, 200);
        assert_eq!(r, json!({"data": {"__typename": "Query"}}));
    }
    // The server is unharmed.
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_budget_is_configurable() {
    let s = TestServer::start_with(|c| c.graphql_max_expanded_fields = 4).await;
    let (_, _, r) = post(
        &s,
        None,
        json!({"query": "{ a: __typename b: __typename c: __typename d: __typename }"}),
    )
    .await;
    assert_eq!(
        r,
        json!({"data": {"a": "Query", "b": "Query", "c": "Query", "d": "Query"}})
    );
    let (_, _, r) = post(&s, None, json!({"query": "{ a: __typename b: __typename c: __typename d: __typename e: __typename }"})).await;
    assert_eq!(code(&r), "QUERY_TOO_LARGE", "{r}");
    assert_eq!(r["errors"][0]["extensions"]["limit"], 4, "{r}");
}

#[tokio::test]
async fn fragment_cycles_are_refused_with_a_validation_error() {
    let s = TestServer::start().await;
    let (_, _, r) = post(
        &s,
        None,
        json!({"query": "{ ...A } fragment A on Query { __typename ...B } fragment B on Query { ...A }"}),
    )
    .await;
    assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("Cannot spread fragment"), "{r}");
}

/// GraphiQL's docs explorer, Python gql's `fetch_schema_from_transport` and codegen tools all
/// send this query; the default depth limit (12) refused it.
#[tokio::test]
async fn graphql_js_introspection_query_runs_on_the_default_limits() {
    let s = TestServer::start().await;
    let check = |r: &Value| {
        assert!(r["errors"].is_null(), "{r}");
        let types = r["data"]["__schema"]["types"].as_array().expect("types");
        let mutation = types
            .iter()
            .find(|t| t["name"] == "Mutation")
            .expect("Mutation type");
        let create = mutation["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|f| f["name"] == "createImageTask")
            .expect("createImageTask");
        // Task! : NON_NULL of OBJECT Task, through the TypeRef fragment's ofType chain.
        assert_eq!(create["type"]["kind"], "NON_NULL", "{create}");
        assert_eq!(create["type"]["ofType"]["name"], "Task", "{create}");
        let input = types
            .iter()
            .find(|t| t["name"] == "CreateImageTaskInput")
            .expect("input type");
        assert_eq!(input["isOneOf"], false);
        assert_eq!(r["data"]["__schema"]["queryType"]["name"], "Query");
    };
    let body = json!({"query": INTROSPECTION, "operationName": "IntrospectionQuery"});
    // Twice: the second run is a known document.
    for _ in 0..2 {
        let (status, _, r) = post(&s, None, body.clone()).await;
        assert_eq!(status, 200, "{r}");
        check(&r);
    }
    let (status, r) = get_query(&s, INTROSPECTION, None).await;
    assert_eq!(status, 200, "{r}");
    check(&r);
    for proto in [Proto::TransportWs, Proto::LegacyWs] {
        match over_socket(&s, proto, INTROSPECTION).await {
            WsEvent::Next { data, .. } => check(&json!({ "data": data })),
            other => panic!("{proto:?}: {other:?}"),
        }
    }

    // The limits still hold ordinary documents (13 levels), and introspection that fans out.
    let thirteen = format!("{{ {}id{} }}", "me { ".repeat(12), " }".repeat(12));
    let (_, _, r) = post(&s, None, json!({"query": thirteen})).await;
    assert_eq!(
        r["errors"][0]["message"], "Query is nested too deep.",
        "an ordinary document is held to GRAPHQL_MAX_DEPTH: {r}"
    );
    // __Type.fields → __Field.type → … fans out at each level: held to the depth limit too.
    let fan = format!(
        "{{ __schema {{ types {{ {} }} }} }}",
        "fields { type { ".repeat(6) + "name" + &" } }".repeat(6)
    );
    let (_, _, r) = post(&s, None, json!({"query": fan})).await;
    assert_eq!(
        r["errors"][0]["message"], "Query is nested too deep.",
        "{r}"
    );
    // An introspection field beside an ordinary one: the ordinary rules.
    let mixed = format!("{{ me {{ id }} {} }}", INTROSPECTION_BODY);
    let (_, _, r) = post(&s, None, json!({"query": mixed})).await;
    assert_eq!(
        r["errors"][0]["message"], "Query is nested too deep.",
        "{r}"
    );
}

/// A `__schema` selection nested 13 deep (through `ofType`), for a document mixing it with an
/// ordinary field.
const INTROSPECTION_BODY: &str = "__schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } } } }";

#[tokio::test]
async fn introspection_can_still_be_turned_off() {
    let s = TestServer::start_with(|c| c.graphql_introspection = false).await;
    let (_, _, r) = post(&s, None, json!({"query": INTROSPECTION})).await;
    // async-graphql answers the schema's fields with null: nothing of it is revealed.
    assert_eq!(r, json!({"data": {"__schema": null}}));
}

/// Opens a socket, completes `connection_init` and returns it.
async fn open_socket(
    s: &TestServer,
    proto: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/graphql/ws", s.base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", proto.parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    ws
}

/// Reads until the server's close frame; `None` when the connection ended without one (what a
/// browser reports as 1006).
async fn close_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<u16> {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer in time");
        match msg {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return None,
        }
    }
}

async fn send_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    v: Value,
) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

async fn await_ack(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("ack in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let m: Value = serde_json::from_str(&t).expect("json");
            if m["type"] == "connection_ack" {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_clients_close_frame_is_answered_on_both_subprotocols() {
    let s = TestServer::start().await;
    let user = s.create_user("close@example.com").await;
    let task = s.create_task(&user, "a quiet harbour").await;
    for proto in ["graphql-transport-ws", "graphql-ws"] {
        // After init, with a live subscription.
        let mut ws = open_socket(&s, proto).await;
        send_json(&mut ws, json!({"type": "connection_init", "payload": {}})).await;
        await_ack(&mut ws).await;
        let start = if proto == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        send_json(
            &mut ws,
            json!({"id": "1", "type": start, "payload": {"query": common::TASK_UPDATED, "variables": {"id": task}}}),
        )
        .await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .expect("close sent");
        assert_eq!(
            close_frame(&mut ws).await,
            Some(1000),
            "{proto}, subscribed"
        );

        // Before init: the handshake is answered too.
        let mut ws = open_socket(&s, proto).await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        })))
        .await
        .expect("close sent");
        assert_eq!(
            close_frame(&mut ws).await,
            Some(1001),
            "{proto}, before init"
        );
    }
    // The legacy protocol's connection_terminate ends the session with a normal close.
    let mut ws = open_socket(&s, "graphql-ws").await;
    send_json(&mut ws, json!({"type": "connection_init", "payload": {}})).await;
    await_ack(&mut ws).await;
    send_json(&mut ws, json!({"type": "connection_terminate"})).await;
    assert_eq!(
        close_frame(&mut ws).await,
        Some(1000),
        "connection_terminate"
    );
}

#[tokio::test]
async fn graphql_response_json_is_negotiated_and_request_errors_are_400_without_data() {
    let s = TestServer::start().await;
    let ok = json!({"query": "{ __typename }"});

    // Asked for: the new media type, 200 for a request that ran.
    for accept in [
        GRAPHQL_RESPONSE,
        "application/graphql-response+json, application/json;q=0.9",
    ] {
        let (status, ct, r) = post(&s, Some(accept), ok.clone()).await;
        assert_eq!(status, 200, "{r}");
        assert!(ct.starts_with(GRAPHQL_RESPONSE), "{accept}: {ct}");
        assert_eq!(r, json!({"data": {"__typename": "Query"}}));
    }
    // Request errors: 400, no `data` entry.
    for body in [
        json!({"query": "{"}),
        json!({"query": "{ noSuchField }"}),
        json!({"query": fan_out(9, 4)}),
        json!({"query": "query A { __typename }", "operationName": "B"}),
        json!({"qeury": "{ __typename }"}),
        json!({"query": "{ __typename }", "variables": "not a map"}),
    ] {
        let (status, ct, r) = post(&s, Some(GRAPHQL_RESPONSE), body.clone()).await;
        assert_eq!(status, 400, "{body}: {r}");
        assert!(ct.starts_with(GRAPHQL_RESPONSE), "{body}: {ct}");
        assert!(r.get("data").is_none(), "{body}: {r}");
        assert!(!r["errors"].as_array().expect("errors").is_empty(), "{r}");
    }
    let resp = s
        .http
        .post(s.url("/graphql"))
        .header("accept", GRAPHQL_RESPONSE)
        .header("content-type", "application/json")
        .body("{ \"not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let r: Value = resp.json().await.expect("json");
    assert!(r.get("data").is_none(), "{r}");
    // A resolver's error (it has a path): the request ran, 200 with `data`.
    let (status, _, r) = post(
        &s,
        Some(GRAPHQL_RESPONSE),
        json!({"query": "{ task(id: \"not an id\") { id } }"}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(r.get("data").is_some(), "{r}");
    assert!(!r["errors"][0]["path"].is_null(), "{r}");
    // GET negotiates the same way.
    let mut url = reqwest::Url::parse(&s.url("/graphql")).expect("url");
    url.query_pairs_mut()
        .append_pair("query", "{ noSuchField }");
    let resp = s
        .http
        .get(url)
        .header("accept", GRAPHQL_RESPONSE)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 400);
    let r: Value = resp.json().await.expect("json");
    assert!(r.get("data").is_none(), "{r}");

    // application/json, `*/*` or no Accept: today's answers, 200 with `data: null`.
    for accept in [None, Some("application/json"), Some("*/*")] {
        let (status, ct, r) = post(&s, accept, json!({"query": "{ noSuchField }"})).await;
        assert_eq!(status, 200, "{accept:?}: {r}");
        assert!(ct.starts_with("application/json"), "{accept:?}: {ct}");
        assert!(r.get("data").is_some_and(Value::is_null), "{r}");
        let (status, _, r) = post(&s, accept, json!({"query": "{"})).await;
        assert_eq!((status, code(&r)), (200, "BAD_USER_INPUT"), "{r}");
    }
}

#[tokio::test]
async fn a_post_without_a_json_content_type_is_415() {
    let s = TestServer::start().await;
    let body = r#"{"query": "{ __typename }"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
    ] {
        let mut req = s.http.post(s.url("/graphql")).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (status, r) = s.send(req).await;
        assert_eq!(status, 415, "{ct:?}: {r}");
        assert_eq!(code(&r), "BAD_USER_INPUT", "{r}");
    }
    let (status, r) = s
        .send(
            s.http
                .post(s.url("/graphql"))
                .header("content-type", "application/json; charset=utf-8")
                .body(body),
        )
        .await;
    assert_eq!((status, r), (200, json!({"data": {"__typename": "Query"}})));
}

#[tokio::test]
async fn graphiql_is_served_whole_from_the_binary() {
    let s = TestServer::start().await;
    let resp = s
        .http
        .get(s.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("page");
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = resp.text().await.expect("html");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//unpkg"),
        "the page names no other host: {html}"
    );
    let files: Vec<&str> = html
        .split("\"/graphql/assets/")
        .skip(1)
        .map(|p| &p[..p.find('"').expect("quoted")])
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    let plain = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    for f in files {
        let url = s.url(&format!("/graphql/assets/{f}"));
        // A browser (gzip accepted) and a client that takes no encoding get the same file.
        let gz = plain
            .get(&url)
            .header("accept-encoding", "gzip, deflate, br")
            .send()
            .await
            .expect("asset");
        assert_eq!(gz.status(), 200, "{f}");
        let encoded = gz.headers().get("content-encoding").cloned();
        let raw = plain.get(&url).send().await.expect("asset");
        assert_eq!(raw.status(), 200, "{f}");
        assert!(raw.headers().get("content-encoding").is_none(), "{f}");
        let ct = raw.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_string();
        assert!(
            ct.starts_with(if f.ends_with(".css") {
                "text/css"
            } else {
                "text/javascript"
            }),
            "{f}: {ct}"
        );
        let raw = raw.bytes().await.expect("bytes");
        let gz = gz.bytes().await.expect("bytes");
        if encoded.is_some() {
            use std::io::Read;
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut inflated)
                .expect("gzip");
            assert_eq!(inflated, raw.to_vec(), "{f}");
            assert!(gz.len() < raw.len(), "{f}: gzip pays");
        } else {
            assert_eq!(gz, raw, "{f}");
        }
    }
    let (status, _) = s.get("/graphql/assets/nothing.js").await;
    assert_eq!(status, 404);
}

/// A subscription on a socket keeps working while another socket's document is refused: the
/// refusal is per operation, not per connection.
#[tokio::test]
async fn a_refused_operation_leaves_its_socket_usable() {
    let s = TestServer::start_with(|c| c.sandbox_latency = Duration::from_millis(200)).await;
    let user = s.create_user("socket@example.com").await;
    let task = s.create_task(&user, "a lantern").await;
    let mut ws = WsClient::connect(&s.base, "/graphql/ws", Proto::TransportWs).await;
    ws.subscribe("big", &fan_out(9, 4), json!({})).await;
    assert!(matches!(ws.next_event().await, WsEvent::Error { id, .. } if id == "big"));
    ws.subscribe("t", common::TASK_UPDATED, json!({"id": task}))
        .await;
    loop {
        match ws.next_event().await {
            WsEvent::Next { id, data } if id == "t" => {
                if data["taskUpdated"]["status"] == "COMPLETED" {
                    break;
                }
            }
            WsEvent::Complete { .. } | WsEvent::Next { .. } => {}
            WsEvent::Error { payload, .. } => panic!("{payload}"),
        }
    }
}
