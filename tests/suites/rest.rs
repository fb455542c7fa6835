//! The legacy REST routes, black-box, on the embedded default.

use crate::common::TestServer;
use serde_json::{json, Value};

#[tokio::test]
async fn seed_flow_create_user_submit_poll_and_fetch_real_image_bytes() {
    let s = TestServer::start().await;
    let (status, health) = s.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["provider"], "sandbox");

    let (status, user) = s
        .post(
            "/api/v1/users",
            json!({"email": "seed@example.com", "name": "Seed User"}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["success"], true);
    let user_id = user["data"]["id"].as_str().expect("id");

    let (status, task) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "一只可爱的小猫咪在花园里玩耍", "user_id": user_id,
                   "model": "doubao-seedream-3.0-t2i", "size": "1024x1024", "quality": "standard"}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["success"], true);
    assert_eq!(task["data"]["status"], "pending");
    assert!(task["data"]["message"].is_string());
    let task_id = task["data"]["task_id"].as_str().expect("task_id");

    let done = s.wait_terminal(task_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["quality"], "standard");
    let url = done["result"]["image_url"].as_str().expect("image_url");
    assert!(url.starts_with(&s.base), "served by this server: {url}");
    let img = &done["result"]["images"][0];
    assert_eq!(
        (img["width"].as_u64(), img["height"].as_u64()),
        (Some(1024), Some(1024))
    );
    assert!(img["provider_url"]
        .as_str()
        .is_some_and(|u| u.contains("X-Tos-Expires")));
    for field in ["created_at", "updated_at", "started_at", "completed_at"] {
        let t = done[field].as_str().expect(field);
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{field}: {t}"
        );
        assert!(t.ends_with('Z'));
    }

    let resp = s.http.get(url).send().await.expect("image");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let etag = resp.headers()["etag"].to_str().expect("etag").to_string();
    let bytes = resp.bytes().await.expect("bytes");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(bytes.len() as u64, img["bytes"].as_u64().expect("bytes"));
    let cached = s
        .http
        .get(url)
        .header("if-none-match", etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(cached.status(), 304);

    // The other task routes show the same task.
    for path in [
        format!("/api/v1/ai/tasks/{task_id}"),
        format!("/api/v1/tasks/{task_id}"),
    ] {
        let (status, body) = s.get(&path).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["task_id"], task_id);
        assert_eq!(body["data"]["status"], "completed");
    }
}

#[tokio::test]
async fn users_crud_with_case_insensitive_unique_email() {
    let s = TestServer::start().await;
    let id = s.create_user("Mixed.Case@Example.com").await;
    let (status, dup) = s
        .post(
            "/api/v1/users",
            json!({"email": "mixed.case@example.COM", "name": "Other"}),
        )
        .await;
    assert_eq!(status, 409, "{dup}");
    assert_eq!(dup["code"], "CONFLICT");
    assert_eq!(dup["success"], false);

    let (status, got) = s.get(&format!("/api/v1/users/{id}")).await;
    assert_eq!(
        (status, got["data"]["email"].clone()),
        (200, json!("Mixed.Case@Example.com"))
    );
    let (status, by_email) = s.get("/api/v1/users?email=MIXED.case@example.com").await;
    assert_eq!((status, by_email["data"]["id"].clone()), (200, json!(id)));
    let (status, none) = s.get("/api/v1/users?email=nobody@example.com").await;
    assert_eq!((status, none["code"].clone()), (404, json!("NOT_FOUND")));

    let other = s.create_user("other@example.com").await;
    // A submit remembers that its user exists; deleting the user must forget that at once.
    let (status, task) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "before the deletion", "user_id": other}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let done = s
        .wait_terminal(task["data"]["task_id"].as_str().expect("task id"))
        .await;
    let image = done["result"]["image_url"]
        .as_str()
        .expect("image url")
        .to_string();
    let (status, upd) = s
        .send(
            s.http
                .put(s.url(&format!("/api/v1/users/{id}")))
                .json(&json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(
        (status, upd["data"]["name"].clone()),
        (200, json!("Renamed"))
    );
    let (status, taken) = s
        .send(
            s.http
                .put(s.url(&format!("/api/v1/users/{id}")))
                .json(&json!({"email": "OTHER@example.com"})),
        )
        .await;
    assert_eq!((status, taken["code"].clone()), (409, json!("CONFLICT")));

    let (status, _) = s
        .send(s.http.delete(s.url(&format!("/api/v1/users/{other}"))))
        .await;
    assert_eq!(status, 200);
    let (status, gone) = s.get(&format!("/api/v1/users/{other}")).await;
    assert_eq!((status, gone["code"].clone()), (404, json!("NOT_FOUND")));
    assert_eq!(
        s.http.get(&image).send().await.expect("image").status(),
        404,
        "a deleted user's images go with it"
    );
    // Polled just before (and so held in memory by the embedded store), the task goes too.
    let (status, _) = s
        .get(&format!(
            "/api/v1/ai/image/result/{}",
            task["data"]["task_id"].as_str().expect("task id")
        ))
        .await;
    assert_eq!(status, 404, "a deleted user's tasks go with it");
    let (status, refused) = s
        .post(
            "/api/v1/ai/image/task",
            json!({"prompt": "after the deletion", "user_id": other}),
        )
        .await;
    assert_eq!(
        (status, refused["code"].clone()),
        (400, json!("VALIDATION_FAILED")),
        "{refused}"
    );
    let (status, list) = s.get("/api/v1/users").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
}

/// Every bad input answers a 4xx with the documented code and changes nothing.
#[tokio::test]
async fn bad_inputs_are_rejected_with_codes_and_change_nothing() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    let user = s.create_user("v@example.com").await;
    let unknown_user = "01890a5d-ac96-774b-bcce-b302099a8057";
    let long_prompt = "x".repeat(2001);
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (
            json!({"prompt": "", "user_id": user}),
            "VALIDATION_FAILED",
            Some("prompt"),
        ),
        (
            json!({"prompt": "   \n ", "user_id": user}),
            "VALIDATION_FAILED",
            Some("prompt"),
        ),
        (
            json!({"prompt": long_prompt, "user_id": user}),
            "VALIDATION_FAILED",
            Some("prompt"),
        ),
        (
            json!({"user_id": user}),
            "VALIDATION_FAILED",
            Some("prompt"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "model": "dall-e-3"}),
            "VALIDATION_FAILED",
            Some("model"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "size": "abc"}),
            "VALIDATION_FAILED",
            Some("size"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "size": "100x100"}),
            "VALIDATION_FAILED",
            Some("size"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "size": "4096x4096"}),
            "VALIDATION_FAILED",
            Some("size"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "model": "doubao-seedream-4.5", "size": "1024x1024"}),
            "VALIDATION_FAILED",
            Some("size"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "model": "doubao-seedream-4.0", "seed": 5}),
            "VALIDATION_FAILED",
            Some("seed"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "guidance_scale": 11.0}),
            "VALIDATION_FAILED",
            Some("guidance_scale"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "image": "https://example.com/a.png"}),
            "VALIDATION_FAILED",
            Some("image"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "model": "doubao-seededit-3.0-i2i"}),
            "VALIDATION_FAILED",
            Some("image"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "n": 3}),
            "VALIDATION_FAILED",
            Some("n"),
        ),
        (
            json!({"prompt": "p", "user_id": unknown_user}),
            "VALIDATION_FAILED",
            Some("user_id"),
        ),
        (
            json!({"prompt": "p", "user_id": "not an id!"}),
            "VALIDATION_FAILED",
            Some("user_id"),
        ),
        (json!({"prompt": "p"}), "VALIDATION_FAILED", Some("user_id")),
        (
            json!({"prompt": 5, "user_id": user}),
            "VALIDATION_FAILED",
            Some("prompt"),
        ),
        (
            json!({"prompt": "p", "user_id": user, "seed": "five"}),
            "VALIDATION_FAILED",
            Some("seed"),
        ),
        (json!(["not", "an", "object"]), "VALIDATION_FAILED", None),
    ];
    for (body, code, field) in cases {
        let (status, resp) = s.post("/api/v1/ai/image/task", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_eq!(resp["success"], false);
        assert_eq!(resp["code"], code, "{body} -> {resp}");
        assert!(resp["error"].is_string() && resp["message"].is_string());
        if let Some(f) = field {
            let fields: Vec<&str> = resp["details"]
                .as_array()
                .expect("details")
                .iter()
                .filter_map(|d| d["field"].as_str())
                .collect();
            assert!(
                fields.iter().any(|x| x.starts_with(f)),
                "{f} not in {fields:?}: {resp}"
            );
        }
    }
    for raw in ["{\"prompt\": ", "not json", ""] {
        let (status, resp) = s.post_raw("/api/v1/ai/image/task", raw).await;
        assert_eq!(
            (status, resp["code"].clone()),
            (400, json!("INVALID_JSON")),
            "{raw:?}: {resp}"
        );
    }
    let big = json!({"prompt": "p".repeat(100 * 1024), "user_id": user});
    let (status, resp) = s.post("/api/v1/ai/image/task", big).await;
    assert_eq!(
        (status, resp["code"].clone()),
        (413, json!("PAYLOAD_TOO_LARGE")),
        "{resp}"
    );

    for (body, field) in [
        (json!({"email": "not-an-email", "name": "Valid"}), "email"),
        (json!({"email": "a@b.co", "name": "x"}), "name"),
        (
            json!({"email": format!("{}@example.com", "a".repeat(100)), "name": "Valid"}),
            "email",
        ),
        (json!({"name": "Valid"}), "email"),
    ] {
        let (status, resp) = s.post("/api/v1/users", body.clone()).await;
        assert_eq!(
            (status, resp["code"].clone()),
            (400, json!("VALIDATION_FAILED")),
            "{body}"
        );
        assert_eq!(resp["details"][0]["field"], field);
    }

    // The Go server answered 404 for any id it could not find, malformed or not.
    let (status, resp) = s.get("/api/v1/ai/image/result/not-a-uuid").await;
    assert_eq!((status, resp["code"].clone()), (404, json!("NOT_FOUND")));
    let (status, resp) = s
        .get(&format!("/api/v1/ai/image/result/{unknown_user}"))
        .await;
    assert_eq!((status, resp["code"].clone()), (404, json!("NOT_FOUND")));
    let (status, resp) = s.get("/api/v1/users/12345").await;
    assert_eq!((status, resp["code"].clone()), (404, json!("NOT_FOUND")));
    let (status, resp) = s.get("/api/v1/nope").await;
    assert_eq!(
        (status, resp["code"].clone(), resp["path"].clone()),
        (404, json!("NOT_FOUND"), json!("/api/v1/nope"))
    );
    let (status, resp) = s
        .get(&format!("/api/v1/tasks/user/{user}?limit=1000"))
        .await;
    assert_eq!(
        (status, resp["code"].clone()),
        (400, json!("VALIDATION_FAILED"))
    );
    let (status, resp) = s
        .get(&format!("/api/v1/tasks/user/{user}?status=done"))
        .await;
    assert_eq!(
        (status, resp["code"].clone()),
        (400, json!("VALIDATION_FAILED"))
    );
    let (status, resp) = s
        .post(
            "/api/v1/ai/tasks",
            json!({"type": "video_generation", "user_id": user, "input": {"prompt": "p"}}),
        )
        .await;
    assert_eq!(
        (status, resp["details"][0]["field"].clone()),
        (400, json!("type"))
    );

    assert_eq!(
        s.stats_total().await,
        0,
        "no rejected request created a task"
    );
    let (_, u) = s.get(&format!("/api/v1/users/{user}")).await;
    assert_eq!(u["data"]["email"], "v@example.com");
}

#[tokio::test]
async fn listing_pages_by_cursor_and_offset_with_status_filter() {
    let s = TestServer::start().await;
    let user = s.create_user("list@example.com").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.create_task(&user, &format!("picture {i}")).await);
    }
    for id in &ids {
        s.wait_terminal(id).await;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut path = format!("/api/v1/tasks/user/{user}?limit=2");
    loop {
        let (status, page) = s.get(&path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["pagination"]["total"], 5);
        // The Go server's shape: data {tasks, count, limit, offset}.
        assert_eq!(
            page["data"]["count"],
            page["data"]["tasks"].as_array().map(Vec::len).unwrap_or(0)
        );
        assert_eq!(page["data"]["limit"], 2);
        for t in page["data"]["tasks"].as_array().expect("array") {
            seen.push(t["task_id"].as_str().expect("id").to_string());
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/tasks/user/{user}?limit=2&cursor={c}"),
            None => {
                assert_eq!(page["pagination"]["has_more"], false);
                break;
            }
        }
    }
    assert_eq!(seen, newest_first);

    let (_, page) = s
        .get(&format!("/api/v1/tasks/user/{user}?limit=2&offset=3"))
        .await;
    assert_eq!(page["data"]["offset"], 3);
    let got: Vec<&str> = page["data"]["tasks"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["task_id"].as_str())
        .collect();
    assert_eq!(
        got,
        vec![newest_first[3].as_str(), newest_first[4].as_str()]
    );

    let (_, page) = s
        .get(&format!("/api/v1/tasks/user/{user}?status=completed"))
        .await;
    assert_eq!(page["data"]["tasks"].as_array().map(Vec::len), Some(5));
    let (_, page) = s
        .get(&format!("/api/v1/tasks/user/{user}?status=failed"))
        .await;
    assert_eq!(page["data"]["tasks"].as_array().map(Vec::len), Some(0));

    let (status, stats) = s.get("/api/v1/queue/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["data"]["by_status"]["completed"], 5);
    assert_eq!(stats["data"]["in_flight"], 0);
}

#[tokio::test]
async fn cancel_retry_and_delete_follow_the_state_machine() {
    // One slow worker slot: the second task stays pending while the first runs.
    let s = TestServer::start_with(|c| {
        c.sandbox_latency = std::time::Duration::from_millis(1500);
        c.worker_concurrency = 1;
    })
    .await;
    let user = s.create_user("cancel@example.com").await;
    let running = s.create_task(&user, "first").await;
    let waiting = s.create_task(&user, "second").await;
    s.wait_status(&running, "processing").await;

    let (status, c) = s
        .post(&format!("/api/v1/tasks/{waiting}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, c["data"]["status"].clone()),
        (200, json!("cancelled")),
        "{c}"
    );
    let (status, c) = s
        .post(&format!("/api/v1/tasks/{running}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, c["data"]["status"].clone()),
        (200, json!("cancelled")),
        "{c}"
    );
    let (status, again) = s
        .post(&format!("/api/v1/tasks/{running}/cancel"), json!({}))
        .await;
    assert_eq!((status, again["code"].clone()), (409, json!("CONFLICT")));

    // The worker's late result for the cancelled task must not overwrite the cancellation.
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let (_, t) = s.get(&format!("/api/v1/tasks/{running}")).await;
    assert_eq!(t["data"]["status"], "cancelled");
    assert!(t["data"]["result"].is_null());

    let (status, r) = s
        .post(&format!("/api/v1/tasks/{running}/retry"), json!({}))
        .await;
    assert_eq!(
        (
            status,
            r["data"]["status"].clone(),
            r["data"]["attempts"].clone()
        ),
        (200, json!("pending"), json!(0))
    );
    let done = s.wait_terminal(&running).await;
    assert_eq!(done["status"], "completed");
    let (status, again) = s
        .post(&format!("/api/v1/tasks/{running}/retry"), json!({}))
        .await;
    assert_eq!((status, again["code"].clone()), (409, json!("CONFLICT")));

    // As on the Go server, deleting a waiting task works: it is cancelled, then deleted; an
    // unknown id answers 200 with deleted false.
    let pending = s.create_task(&user, "third").await;
    let (status, del) = s
        .send(s.http.delete(s.url(&format!("/api/v1/tasks/{pending}"))))
        .await;
    assert_eq!((status, del["data"]["deleted"].clone()), (200, json!(true)));
    let (status, _) = s.get(&format!("/api/v1/tasks/{pending}")).await;
    assert_eq!(status, 404);
    let (status, del) = s
        .send(s.http.delete(s.url(&format!("/api/v1/tasks/{pending}"))))
        .await;
    assert_eq!(
        (status, del["data"]["deleted"].clone()),
        (200, json!(false))
    );

    let url = done["result"]["image_url"]
        .as_str()
        .expect("url")
        .to_string();
    let (status, del) = s
        .send(s.http.delete(s.url(&format!("/api/v1/tasks/{running}"))))
        .await;
    assert_eq!((status, del["data"]["deleted"].clone()), (200, json!(true)));
    assert_eq!(
        s.http.get(&url).send().await.expect("image").status(),
        404,
        "images go with the task"
    );
    let (status, _) = s.get(&format!("/api/v1/tasks/{running}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn provider_rejection_fails_the_task_with_the_providers_code_and_retry_reruns_it() {
    let s = TestServer::start().await;
    let user = s.create_user("fail@example.com").await;
    let id = s
        .create_task(&user, "please draw sensitive-content here")
        .await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "InputTextSensitiveContentDetected");
    assert_eq!(t["error"]["retryable"], false);
    assert_eq!(t["attempts"], 1, "a final error is not retried");
    assert!(t["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("sensitive")));

    let (status, r) = s
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{r}");
    let again = s.wait_terminal(&id).await;
    assert_eq!(
        (again["status"].clone(), again["attempts"].clone()),
        (json!("failed"), json!(1))
    );
    assert!(again["version"].as_i64() > t["version"].as_i64());
}

#[tokio::test]
async fn generic_create_route_and_idempotency_keys() {
    let s = TestServer::start().await;
    let user = s.create_user("generic@example.com").await;
    let (status, g) = s
        .post(
            "/api/v1/ai/tasks",
            json!({"type": "image_generation", "model": "doubao-seedream-4.0", "user_id": user,
                   "input": {"prompt": "four seasons", "size": "2K", "n": 2}}),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let id = g["data"]["task_id"].as_str().expect("id");
    assert_eq!(g["data"]["model"], "doubao-seedream-4-0-250828");
    let done = s.wait_terminal(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["images"].as_array().map(Vec::len),
        Some(2),
        "group of two"
    );
    assert_eq!(done["result"]["images"][1]["width"], 2048);

    let body = json!({"prompt": "same", "user_id": user});
    let send = |b: Value| {
        s.http
            .post(s.url("/api/v1/ai/image/task"))
            .header("Idempotency-Key", "key-1")
            .json(&b)
    };
    let (s1, first) = s.send(send(body.clone())).await;
    let (s2, second) = s.send(send(body.clone())).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first["data"]["task_id"], second["data"]["task_id"]);
    let (s3, conflict) = s
        .send(send(json!({"prompt": "different", "user_id": user})))
        .await;
    assert_eq!((s3, conflict["code"].clone()), (409, json!("CONFLICT")));
}

/// Look-alike addresses (bidi overrides, zero-width and other invisible or control characters)
/// are refused on every way an email comes in; an email is stored in NFC, so the same address
/// typed composed or decomposed is one user; an offset past i64 (which used to wrap to 0 and
/// answer the first page) is refused too.
#[tokio::test]
async fn look_alike_emails_and_offsets_past_i64_are_refused() {
    let s = TestServer::start().await;
    let user = s.create_user("edge@example.com").await;
    let sneaky = [
        "ad\u{202E}moc.elpmaxe@nimda",
        "admin\u{200B}@example.com",
        "admin@exa\u{200D}mple.com",
        "\u{2066}admin@example.com\u{2069}",
        "admin\u{FEFF}@example.com",
        "admin\u{00AD}@example.com",
        "admin\u{0007}@example.com",
        "admin\u{E000}@example.com",
        "admin\u{00A0}x@example.com",
    ];
    for email in sneaky {
        let (status, resp) = s
            .post(
                "/api/v1/users",
                json!({"email": email, "name": "Look Alike"}),
            )
            .await;
        assert_eq!(
            (status, resp["details"][0]["field"].clone()),
            (400, json!("email")),
            "create {email:?}: {resp}"
        );
        let (status, resp) = s
            .send(
                s.http
                    .put(s.url(&format!("/api/v1/users/{user}")))
                    .json(&json!({"email": email})),
            )
            .await;
        assert_eq!(
            (status, resp["details"][0]["field"].clone()),
            (400, json!("email")),
            "update {email:?}: {resp}"
        );
        let (status, resp) = s
            .send(
                s.http
                    .get(s.url("/api/v1/users"))
                    .query(&[("email", email)]),
            )
            .await;
        assert_eq!(status, 400, "find {email:?}: {resp}");
        let body = s
            .post(
                "/graphql",
                json!({"query": "mutation($e: String!) { createUser(input: {email: $e, name: \"Look Alike\"}) { id } }",
                       "variables": {"e": email}}),
            )
            .await
            .1;
        assert_eq!(
            body["errors"][0]["extensions"]["field"], "email",
            "GraphQL {email:?}: {body}"
        );
    }
    let (_, list) = s.get("/api/v1/users").await;
    assert_eq!(list["pagination"]["total"], 1, "{list}");

    // Composed and decomposed forms of one address are one user, stored composed.
    let (status, made) = s
        .post(
            "/api/v1/users",
            json!({"email": "jose\u{301}@example.com", "name": "Jose"}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["data"]["email"], "jos\u{e9}@example.com");
    let (status, dup) = s
        .post(
            "/api/v1/users",
            json!({"email": "JOS\u{c9}@example.com", "name": "Jose"}),
        )
        .await;
    assert_eq!(status, 409, "{dup}");

    // With a task listed, a wrapped offset would show it (the first page).
    s.create_task(&user, "a lighthouse").await;
    for offset in ["9223372036854775808", "18446744073709551615"] {
        let (status, resp) = s
            .get(&format!("/api/v1/tasks/user/{user}?offset={offset}"))
            .await;
        assert_eq!(
            (status, resp["details"][0]["field"].clone()),
            (400, json!("offset")),
            "offset {offset}: {resp}"
        );
    }
    let (status, page) = s
        .get(&format!(
            "/api/v1/tasks/user/{user}?offset=9223372036854775807"
        ))
        .await;
    assert_eq!(
        (status, page["pagination"]["count"].clone()),
        (200, json!(0))
    );
    // GraphQL pages by cursor; its `first` is a 32-bit Int, so a huge one is refused as such.
    let body = s
        .post(
            "/graphql",
            json!({"query": "{ tasks(first: 9223372036854775808) { totalCount } }"}),
        )
        .await
        .1;
    assert!(body["errors"][0]["message"].is_string(), "{body}");
}
