//! What only the MongoDB store has to keep: documents written by earlier versions.

use mongodb::bson::{self, doc, Document};

use super::fixtures::*;
use super::mongo_backend;

/// Earlier versions kept `params.options` as a sub-document; such tasks still read whole, and
/// their next version is written the new way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_kept_as_a_sub_document_by_earlier_versions_are_read() {
    let db = mongo_backend::Database::fresh().await;
    let mut t = task_at(10, &id_at(1));
    t.params.options = Some(json!({"style": {"tone": "warm", "steps": [1, 2]}}));
    let mut old = bson::to_document(&t).expect("encode");
    old.insert("_id", t.id.clone());
    old.insert("due_ms", 0_i64);
    old.insert("lease_until_ms", bson::Bson::Null);
    old.insert("updated_ms", t.updated_at.timestamp_millis());
    assert!(old
        .get_document("params")
        .expect("params")
        .contains_key("options"));
    db.raw()
        .await
        .collection::<Document>("tasks")
        .insert_one(old)
        .await
        .expect("insert an old document");

    let s = db.store.clone();
    assert_eq!(stored(&s, &t.id).await, t);
    let started = t.start("w", at(100), at(20)).expect("start");
    replace(&s, &started, &t).await;
    assert_eq!(stored(&s, &t.id).await, started);
    let now = db
        .raw()
        .await
        .collection::<Document>("tasks")
        .find_one(doc! {"_id": &t.id})
        .await
        .expect("read")
        .expect("stored");
    assert!(!now
        .get_document("params")
        .expect("params")
        .contains_key("options"));
    db.drop().await;
}

/// An idempotency claim is written before its task. One whose task never came (a crash in
/// between) is taken over once stale, or at once when an earlier version wrote it (no time);
/// a fresh one is a task being stored right now, waited for, and a try of the same insert
/// again goes ahead under its own claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_claims_without_their_task_are_waited_for_until_stale() {
    let db = mongo_backend::Database::fresh().await;
    let s = db.store.clone();
    let claims = db.raw().await.collection::<Document>("idempotency_keys");
    let u = id_at(1);
    let claim = |key: &str| format!("{u}\u{1f}{key}");
    let now = chrono::Utc::now().timestamp_millis();

    claims
        .insert_one(doc! {"_id": claim("old"), "user_id": &u, "task_id": id_at(2)})
        .await
        .expect("claim");
    claims
        .insert_one(
            doc! {"_id": claim("stale"), "user_id": &u, "task_id": id_at(3), "at": now - 60_000},
        )
        .await
        .expect("claim");
    insert(&s, &keyed(task_at(10, &u), "old")).await;
    insert(&s, &keyed(task_at(11, &u), "stale")).await;

    // A fresh claim: a replay waits for its task, and gets it once stored.
    let first = keyed(task_at(20, &u), "fresh");
    claims
        .insert_one(doc! {"_id": claim("fresh"), "user_id": &u, "task_id": &first.id, "at": now})
        .await
        .expect("claim");
    let replay = {
        let s = s.clone();
        let t = keyed(task_at(21, &u), "fresh");
        tokio::spawn(async move { s.insert_task(&t).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!replay.is_finished(), "the replay did not wait");
    insert(&s, &first).await;
    match replay.await.expect("replay").expect("insert") {
        InsertOutcome::Existing(t) => assert_eq!(*t, first),
        InsertOutcome::Inserted => panic!("two tasks under one key"),
    }

    // A fresh claim whose task never comes: the store is busy, not free to take the key.
    claims
        .insert_one(doc! {"_id": claim("lost"), "user_id": &u, "task_id": id_at(4), "at": chrono::Utc::now().timestamp_millis()})
        .await
        .expect("claim");
    match s.insert_task(&keyed(task_at(30, &u), "lost")).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(s.count_tasks(Some(&u), None).await.expect("count"), 3);
    db.drop().await;
}
