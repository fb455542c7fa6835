//! One task: what is stored of it, and the rules of every change (compare-and-set, leases).

use super::fixtures::*;

pub async fn a_task_round_trips_with_every_field(s: S) {
    let u = id_at(1);
    let mut t = keyed(task_at(10, &u), "idem-é-🙂");
    t.params = ImageParams {
        size: "2048x1152".into(),
        seed: Some(-42),
        guidance_scale: Some(2.75),
        watermark: true,
        images: vec![
            "https://example.com/a.png".into(),
            "data:image/png;base64,iVBORw0KGgo=".into(),
        ],
        n: 4,
        quality: Some("hd".into()),
        style: Some("vivid".into()),
        options: Some(json!({"nested": {"list": [1, -2, 3.5, "x", null, true]}, "empty": {}})),
    };
    t.prompt = "a \"quoted\" prompt\nwith lines, tabs\t and 中文".into();
    t.attempts = 3;
    t.status = TaskStatus::Completed;
    t.version = 7;
    t.result = Some(TaskResult {
        images: vec![StoredImage {
            id: "img-1".into(),
            provider_url: Some("https://ark.example.com/i.png?sig=abc&x=1".into()),
            width: 2048,
            height: 1152,
            bytes: 5_000_000_000,
            content_type: "image/png".into(),
        }],
        video: None,
    });
    t.error = Some(TaskError {
        code: "RateLimited".into(),
        message: "slow down".into(),
        retryable: true,
    });
    t.not_before = Some(at(11) + chrono::Duration::nanoseconds(7));
    t.lease_owner = Some("worker-1".into());
    t.lease_until = Some(at(12));
    t.provider_request_id = Some("req-1".into());
    t.unkept = Some(UnkeptImages {
        images: vec![ProviderImage {
            url: "https://ark.example.com/j.png".into(),
            size: Some("2048x1152".into()),
        }],
        request_id: Some("req-0".into()),
        generated_at: at(9),
        billed: 1,
        provider_key: Some("0a1b2c3d".into()),
    });
    t.api_key_id = Some("key-1".into());
    t.generated_images = 2;
    t.provider_key = Some("4e5f6a7b".into());
    t.created_at = at(10) + chrono::Duration::nanoseconds(123_456_789);
    t.updated_at = at(13) + chrono::Duration::nanoseconds(987_654_321);
    t.started_at = Some(at(11));
    t.completed_at = Some(at(13));
    insert(&s, &t).await;
    assert_eq!(stored(&s, &t.id).await, t);
    assert_eq!(s.get_task(&id_at(99)).await.expect("get"), None);
    assert_eq!(
        ids(&s
            .list_tasks(&TaskQuery {
                limit: 10,
                ..TaskQuery::default()
            })
            .await
            .expect("list")),
        [t.id.clone()]
    );
    assert_eq!(
        s.list_tasks(&TaskQuery {
            limit: 1,
            ..TaskQuery::default()
        })
        .await
        .expect("list")[0],
        t,
        "a listed task is the whole task"
    );
}

/// `options` is whatever JSON object a REST client sent (the old server echoed it back): keys
/// and numbers the client chose, stored and returned unchanged.
pub async fn client_options_round_trip_whatever_their_keys_and_numbers(s: S) {
    let u = id_at(1);
    let cases = [
        json!({"$where": "1", "$set": {"$inc": 1}}),
        json!({"a.b": {"c.d": [1]}, ".": 1}),
        json!({"": "empty key"}),
        json!({"big": u64::MAX, "min": i64::MIN, "float": 1.5e300, "neg": -0.5}),
        json!({"nul\u{0}key": "x", "value": "nul \u{0} in a value"}),
        json!(["not", "an", "object"]),
        json!("a string"),
    ];
    for (i, options) in cases.into_iter().enumerate() {
        let mut t = task_at(10 + i as i64, &u);
        t.params.options = Some(options.clone());
        insert(&s, &t).await;
        assert_eq!(
            stored(&s, &t.id).await.params.options,
            Some(options),
            "case {i}"
        );
        // And through a replace, the way every state change writes it.
        let started = t.start("w", at(100), at(20)).expect("start");
        replace(&s, &started, &t).await;
        assert_eq!(stored(&s, &t.id).await, started, "case {i} after a replace");
    }
}

pub async fn a_task_id_is_stored_once(s: S) {
    let u = id_at(1);
    let t = task_at(10, &u);
    insert(&s, &t).await;
    let mut again = task_at(10, &u);
    again.id = t.id.clone();
    again.prompt = "another prompt".into();
    assert!(is_conflict(s.insert_task(&again).await));
    assert_eq!(stored(&s, &t.id).await, t);
    assert_eq!(s.count_tasks(None, None).await.expect("count"), 1);
}

pub async fn replace_task_is_a_compare_and_set_on_version_and_status(s: S) {
    let u = id_at(1);
    let t = task_at(10, &u);
    insert(&s, &t).await;
    stored(&s, &t.id).await; // warm whatever a store caches
    let started = t.start("w1", at(100), at(20)).expect("start");

    // The wrong status, the wrong version, or both: nothing written.
    for (version, status) in [
        (1, TaskStatus::Processing),
        (2, TaskStatus::Pending),
        (0, TaskStatus::Pending),
        (2, TaskStatus::Processing),
    ] {
        assert!(
            !s.replace_task(&started, version, status)
                .await
                .expect("replace"),
            "v{version} {status}"
        );
        assert_eq!(stored(&s, &t.id).await, t);
    }

    assert!(s
        .replace_task(&started, 1, TaskStatus::Pending)
        .await
        .expect("replace"));
    assert_eq!(stored(&s, &t.id).await, started);

    // Whoever still holds version 1 has lost.
    let cancelled = t.cancel(at(21)).expect("cancel");
    assert!(!s
        .replace_task(&cancelled, 1, TaskStatus::Pending)
        .await
        .expect("replace"));
    assert_eq!(stored(&s, &t.id).await, started);

    // A chain of changes, each on the one before.
    let failed = started
        .fail(
            TaskError {
                code: "ProviderError".into(),
                message: "no".into(),
                retryable: false,
            },
            Some("req".into()),
            at(30),
        )
        .expect("fail");
    replace(&s, &failed, &started).await;
    let retried = failed.retry(at(40)).expect("retry");
    replace(&s, &retried, &failed).await;
    assert_eq!(stored(&s, &t.id).await, retried);
    // The right version with the wrong status loses too.
    let mut forged = retried.clone();
    forged.prompt = "forged".into();
    assert!(!s
        .replace_task(&forged, retried.version, TaskStatus::Failed)
        .await
        .expect("replace"));
    assert_eq!(stored(&s, &t.id).await, retried);

    // A task that does not exist is never written.
    let ghost = task_at(50, &u);
    assert!(!s
        .replace_task(&ghost, 1, TaskStatus::Pending)
        .await
        .expect("replace missing"));
    assert_eq!(s.get_task(&ghost.id).await.expect("get"), None);
}

pub async fn concurrent_writers_of_one_version_have_exactly_one_winner(s: S) {
    let u = id_at(1);
    const WRITERS: usize = 8;
    for round in 0..4 {
        let t = task_at(10 + round, &u);
        insert(&s, &t).await;
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let (s, t) = (s.clone(), t.clone());
            handles.push(tokio::spawn(async move {
                let owner = format!("worker-{w}");
                let next = t.start(&owner, at(1000), at(20)).expect("start");
                let won = s
                    .replace_task(&next, t.version, t.status)
                    .await
                    .expect("replace");
                (owner, won)
            }));
        }
        let mut winners = Vec::new();
        for h in handles {
            let (owner, won) = h.await.expect("writer");
            if won {
                winners.push(owner);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let now = stored(&s, &t.id).await;
        assert_eq!(now.version, 2);
        assert_eq!(now.lease_owner.as_deref(), Some(winners[0].as_str()));
    }
}

pub async fn a_lease_is_extended_only_by_its_owner_while_processing(s: S) {
    let u = id_at(1);
    let t = task_at(10, &u);
    insert(&s, &t).await;
    assert!(!s
        .extend_lease(&t.id, "w1", at(500))
        .await
        .expect("extend a pending task"));
    assert_eq!(stored(&s, &t.id).await, t);

    let started = t.start("w1", at(100), at(20)).expect("start");
    replace(&s, &started, &t).await;
    stored(&s, &t.id).await;
    assert!(!s
        .extend_lease(&t.id, "w2", at(500))
        .await
        .expect("extend by another"));
    assert_eq!(stored(&s, &t.id).await, started);
    assert_eq!(
        ids(&s.due_tasks(at(150), 10).await.expect("due")),
        vec![t.id.clone()],
        "the lease ran out at 100"
    );

    assert!(s
        .extend_lease(&t.id, "w1", at(500))
        .await
        .expect("extend by the owner"));
    // A heartbeat is no change clients see: same version, same change time.
    let mut extended = started.clone();
    extended.lease_until = Some(at(500));
    assert_eq!(stored(&s, &t.id).await, extended);
    assert!(s.due_tasks(at(150), 10).await.expect("due").is_empty());
    assert_eq!(
        ids(&s.due_tasks(at(501), 10).await.expect("due")),
        vec![t.id.clone()]
    );
    assert!(s
        .tasks_changed(None, &ChangeCursor::of(&started), 10)
        .await
        .expect("changed")
        .is_empty());

    // The compare-and-set still sees version 2: the heartbeat did not move it.
    let mut done = extended.complete(vec![], None, at(30)).expect("complete");
    done.lease_owner = Some("w1".into()); // as if a writer forgot to clear it
    replace(&s, &done, &extended).await;
    assert!(!s
        .extend_lease(&t.id, "w1", at(900))
        .await
        .expect("extend a completed task"));
    assert_eq!(stored(&s, &t.id).await, done);
    assert!(!s
        .extend_lease(&id_at(99), "w1", at(900))
        .await
        .expect("extend a missing task"));
}

/// A worker's heartbeat runs beside its own (or a canceller's) state change: the change wins, and
/// no heartbeat landing around it brings the old version back.
pub async fn heartbeats_racing_a_state_change_never_undo_it(s: S) {
    let u = id_at(1);
    for round in 0..6 {
        let t = task_at(10 + round, &u);
        insert(&s, &t).await;
        let started = t.start("w", at(100), at(20)).expect("start");
        replace(&s, &started, &t).await;
        let beats = {
            let (s, id) = (s.clone(), t.id.clone());
            tokio::spawn(async move {
                let mut held = 0;
                for i in 0..25 {
                    if s.extend_lease(&id, "w", at(200 + i)).await.expect("extend") {
                        held += 1;
                    }
                    tokio::task::yield_now().await;
                }
                held
            })
        };
        tokio::task::yield_now().await;
        let next = if round % 2 == 0 {
            started.complete(vec![], None, at(30)).expect("complete")
        } else {
            started.cancel(at(30)).expect("cancel")
        };
        // The heartbeat may have moved the lease, never the version or status.
        assert!(s
            .replace_task(&next, started.version, started.status)
            .await
            .expect("replace"));
        let held = beats.await.expect("heartbeats");
        assert!(held <= 25);
        assert_eq!(stored(&s, &t.id).await, next, "round {round}");
        assert!(!s.extend_lease(&t.id, "w", at(999)).await.expect("extend"));
    }
}
