//! Idempotency keys: one task per user and key, released keys, concurrent submits.

use super::fixtures::*;

pub async fn an_idempotency_key_belongs_to_one_user(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    let first = keyed(task_at(10, &a), "order-1");
    insert(&s, &first).await;

    // The same user again: nothing written, the first task answered, whatever the new one says.
    let mut replay = keyed(task_at(20, &a), "order-1");
    replay.prompt = "something else".into();
    match s.insert_task(&replay).await.expect("insert") {
        InsertOutcome::Existing(t) => assert_eq!(*t, first),
        InsertOutcome::Inserted => panic!("a key was used twice by one user"),
    }
    assert_eq!(s.get_task(&replay.id).await.expect("get"), None);
    // The first task changed since: the replay answers it as it is now.
    let started = first.start("w", at(900), at(30)).expect("start");
    replace(&s, &started, &first).await;
    match s
        .insert_task(&keyed(task_at(40, &a), "order-1"))
        .await
        .expect("insert")
    {
        InsertOutcome::Existing(t) => assert_eq!(*t, started),
        InsertOutcome::Inserted => panic!("a key was used twice by one user"),
    }

    // Another user, another key, or no key: new tasks.
    insert(&s, &keyed(task_at(50, &b), "order-1")).await;
    insert(&s, &keyed(task_at(60, &a), "order-2")).await;
    insert(&s, &keyed(task_at(61, &a), "ORDER-1")).await;
    insert(&s, &task_at(70, &a)).await;
    insert(&s, &task_at(71, &a)).await;
    assert_eq!(s.count_tasks(Some(&a), None).await.expect("count"), 5);
    assert_eq!(s.count_tasks(Some(&b), None).await.expect("count"), 1);
}

pub async fn a_released_idempotency_key_is_taken_by_the_next_task(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    let old = keyed(task_at(10, &a), "k");
    insert(&s, &old).await;
    stored(&s, &old.id).await;
    let existing = |t: Task| {
        let s = s.clone();
        async move {
            match s.insert_task(&t).await.expect("insert") {
                InsertOutcome::Existing(e) => e.id,
                InsertOutcome::Inserted => panic!("{} took a key that is held", t.id),
            }
        }
    };

    // Only the holder's own release, for its own user and key, frees it.
    s.release_idempotency_key(&a, "k", &id_at(99))
        .await
        .expect("release by another task");
    s.release_idempotency_key(&b, "k", &old.id)
        .await
        .expect("release for another user");
    s.release_idempotency_key(&a, "other", &old.id)
        .await
        .expect("release of another key");
    assert_eq!(existing(keyed(task_at(20, &a), "k")).await, old.id);

    s.release_idempotency_key(&a, "k", &old.id)
        .await
        .expect("release");
    // Only the claim is gone: the task is as it was, with the key it was created under (a
    // writer holding the task may write it back any time, so no store could keep it cleared).
    assert_eq!(stored(&s, &old.id).await, old);
    let new = keyed(task_at(30, &a), "k");
    insert(&s, &new).await;
    assert_eq!(existing(keyed(task_at(40, &a), "k")).await, new.id);

    // A late release by the old holder does nothing to the new one.
    s.release_idempotency_key(&a, "k", &old.id)
        .await
        .expect("release again");
    assert_eq!(existing(keyed(task_at(50, &a), "k")).await, new.id);
    // Nor does deleting the old task.
    assert!(s.delete_task(&old.id).await.expect("delete"));
    assert_eq!(existing(keyed(task_at(60, &a), "k")).await, new.id);
    assert_eq!(s.count_tasks(Some(&a), None).await.expect("count"), 1);
}

pub async fn concurrent_inserts_under_one_key_store_one_task(s: S) {
    let u = id_at(1);
    const WRITERS: i64 = 8;
    for round in 0..3 {
        let key = format!("burst-{round}");
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let s = s.clone();
            let t = keyed(task_at(100 * round + w, &u), &key);
            handles.push(tokio::spawn(async move {
                let id = t.id.clone();
                (id, s.insert_task(&t).await.expect("insert"))
            }));
        }
        let mut inserted = Vec::new();
        let mut answered = HashSet::new();
        for h in handles {
            match h.await.expect("writer") {
                (id, InsertOutcome::Inserted) => {
                    answered.insert(id.clone());
                    inserted.push(id);
                }
                (_, InsertOutcome::Existing(t)) => {
                    answered.insert(t.id.clone());
                }
            }
        }
        assert_eq!(inserted.len(), 1, "round {round}: inserted {inserted:?}");
        assert_eq!(
            answered,
            HashSet::from([inserted[0].clone()]),
            "round {round}: every writer hears of the one task"
        );
    }
    assert_eq!(s.count_tasks(Some(&u), None).await.expect("count"), 3);
}

pub async fn a_refused_insert_leaves_its_idempotency_key_free(s: S) {
    let u = id_at(1);
    let plain = task_at(10, &u);
    insert(&s, &plain).await;
    // The id is taken, so this task is refused; its key must not stay claimed by it.
    let mut clash = keyed(task_at(20, &u), "k");
    clash.id = plain.id.clone();
    assert!(is_conflict(s.insert_task(&clash).await));
    assert_eq!(stored(&s, &plain.id).await, plain);
    let next = keyed(task_at(30, &u), "k");
    insert(&s, &next).await;
    assert_eq!(stored(&s, &next.id).await, next);
}

pub async fn deleting_a_task_deletes_its_images_and_frees_its_key(s: S) {
    let u = id_at(1);
    let t = keyed(task_at(10, &u), "k");
    let other = task_at(20, &u);
    insert(&s, &t).await;
    insert(&s, &other).await;
    stored(&s, &t.id).await;
    let (i1, i2, i3) = (id_at(30), id_at(31), id_at(32));
    s.put_image(&image(&i1, &t.id, pattern(100, 1)))
        .await
        .expect("put");
    s.put_image(&image(&i2, &t.id, pattern(100, 2)))
        .await
        .expect("put");
    s.put_image(&image(&i3, &other.id, pattern(100, 3)))
        .await
        .expect("put");

    assert!(s.delete_task(&t.id).await.expect("delete"));
    assert_eq!(s.get_task(&t.id).await.expect("get"), None);
    assert_eq!(s.get_image(&i1).await.expect("get"), None);
    assert_eq!(s.get_image(&i2).await.expect("get"), None);
    assert_eq!(
        s.get_image(&i3).await.expect("get"),
        Some(image(&i3, &other.id, pattern(100, 3)))
    );
    assert_eq!(stored(&s, &other.id).await, other);
    assert!(!s.delete_task(&t.id).await.expect("delete again"));
    let next = keyed(task_at(40, &u), "k");
    insert(&s, &next).await;
    assert_eq!(s.count_tasks(None, None).await.expect("count"), 2);
}
