//! The OpenAPI document (`/openapi.json`) against the routes clients use, and the `/docs` page.

use crate::common::TestServer;
use serde_json::{json, Value};

/// Every route of the legacy contract (rest-compat.md) and the router's other REST routes,
/// written out by hand: the document is generated from the handlers, so this list is the
/// independent statement of what it must contain.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users"),
    ("get", "/api/v1/users/{id}"),
    ("put", "/api/v1/users/{id}"),
    ("delete", "/api/v1/users/{id}"),
    ("post", "/api/v1/ai/image/task"),
    ("get", "/api/v1/ai/image/result/{task_id}"),
    ("post", "/api/v1/ai/tasks"),
    ("get", "/api/v1/ai/tasks/{task_id}"),
    ("get", "/api/v1/tasks/{task_id}"),
    ("get", "/api/v1/tasks/user/{user_id}"),
    ("post", "/api/v1/tasks/{task_id}/cancel"),
    ("post", "/api/v1/tasks/{task_id}/retry"),
    ("get", "/api/v1/tasks/{task_id}/stream"),
    ("get", "/api/v1/tasks/{task_id}/webhooks"),
    ("post", "/api/v1/tasks/{task_id}/webhooks/redeliver"),
    (
        "post",
        "/api/v1/tasks/{task_id}/webhooks/{delivery_id}/redeliver",
    ),
    ("delete", "/api/v1/tasks/{task_id}"),
    ("get", "/api/v1/queue/stats"),
    ("get", "/images/{file}"),
    ("post", "/graphql"),
    ("post", "/v1/images/generations"),
    ("get", "/v1/images/generations/{task_id}"),
    ("post", "/v1/images/edits"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model}"),
];

async fn spec(s: &TestServer) -> Value {
    let (status, body) = s.get("/openapi.json").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_every_legacy_route_with_its_method() {
    let mut s = TestServer::start().await;
    let doc = spec(&s).await;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi = {version}");
    let mut missing = Vec::new();
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        if !op.is_object() {
            missing.push(format!("{} {path}", method.to_uppercase()));
            continue;
        }
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} documents no response"
        );
        assert!(
            op["summary"].as_str().is_some_and(|t| !t.is_empty()),
            "{method} {path} has no summary"
        );
    }
    assert!(missing.is_empty(), "not in /openapi.json: {missing:?}");
    s.stop().await;
}

/// The other direction: a documented operation the router does not serve would send clients to
/// a 404 or 405. Each is called with placeholder ids; any answer but "no such route" passes.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let mut s = TestServer::start().await;
    let doc = spec(&s).await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut count = 0;
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            if !item[method].is_object() {
                continue;
            }
            count += 1;
            let url = s.url(
                &path
                    .replace("{file}", "missing.png")
                    .replace(['{', '}'], ""),
            );
            let req = match method {
                "get" => s.http.get(url),
                "post" => s.http.post(url).json(&json!({})),
                "put" => s.http.put(url).json(&json!({})),
                "delete" => s.http.delete(url),
                _ => s.http.patch(url).json(&json!({})),
            };
            let (status, body) = s.send(req).await;
            let no_route = status == 405 || (status == 404 && body.get("path").is_some());
            assert!(!no_route, "{method} {path}: {status} {body}");
        }
    }
    assert!(count >= ROUTES.len(), "only {count} operations documented");
    s.stop().await;
}

/// The schemas the document names for the task shape are those the routes answer with:
/// every property a real task answer has is documented.
#[tokio::test]
async fn the_task_schema_documents_every_field_of_a_real_answer() {
    let mut s = TestServer::start().await;
    let doc = spec(&s).await;
    let user = s.create_user("openapi@example.com").await;
    let task = s.create_task(&user, "a documented fox").await;
    let done = s.wait_terminal(&task).await;
    let props = doc["components"]["schemas"]["TaskJson"]["properties"]
        .as_object()
        .expect("TaskJson schema");
    for key in done.as_object().expect("task object").keys() {
        assert!(props.contains_key(key), "TaskJson lacks {key}");
    }
    let result = doc["components"]["schemas"]["ResultJson"]["properties"]
        .as_object()
        .expect("ResultJson schema");
    for key in done["result"].as_object().expect("result").keys() {
        assert!(result.contains_key(key), "ResultJson lacks {key}");
    }
    s.stop().await;
}

#[tokio::test]
async fn docs_page_and_console_are_served_without_outside_resources() {
    let mut s = TestServer::start().await;
    for (path, script) in [("/docs", "/console/docs.js"), ("/", "/console/app.js")] {
        let resp = s.http.get(s.url(path)).send().await.expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        let html = resp.text().await.expect("body");
        assert!(html.contains(script), "{path} does not load {script}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{path} refers to an outside resource"
        );
    }
    let js = s
        .http
        .get(s.url("/console/docs.js"))
        .send()
        .await
        .expect("docs.js");
    assert!(js.text().await.expect("body").contains("/openapi.json"));
    s.stop().await;
}
