//! The store itself, users, and what deleting a user takes with it.

use super::fixtures::*;

pub async fn kind_and_ping_answer(s: S) {
    assert!(["sqlite", "mongodb"].contains(&s.kind()), "{}", s.kind());
    s.ping().await.expect("ping");
}

pub async fn users_round_trip_and_are_found_by_id_and_by_email_in_any_case(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    let mut ua = user(&a, "Ada.Lovelace@Example.com");
    ua.name = "Ada — ℵ₀ 🙂".into();
    ua.created_at = at(5) + chrono::Duration::nanoseconds(123_456_789);
    ua.updated_at = at(6) + chrono::Duration::nanoseconds(1);
    s.insert_user(&ua).await.expect("insert");
    let ub = add_user(&s, &b, "grace@example.com").await;

    assert_eq!(s.get_user(&a).await.expect("get"), Some(ua.clone()));
    assert_eq!(s.get_user(&id_at(3)).await.expect("get"), None);
    for asked in [
        "ada.lovelace@example.com",
        "ADA.LOVELACE@EXAMPLE.COM",
        "  Ada.Lovelace@Example.com ",
    ] {
        assert_eq!(
            s.get_user_by_email(asked).await.expect("by email"),
            Some(ua.clone()),
            "{asked:?}"
        );
    }
    assert_eq!(
        s.get_user_by_email("nobody@example.com")
            .await
            .expect("by email"),
        None
    );

    // Missing ids are left out, repeated ones answered once.
    let mut got = s
        .get_users(&[b.clone(), id_at(9), a.clone(), b.clone()])
        .await
        .expect("get users");
    got.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(got, vec![ua, ub]);
    assert!(s.get_users(&[]).await.expect("none").is_empty());
}

pub async fn a_taken_email_is_refused_on_insert_whatever_its_case(s: S) {
    add_user(&s, &id_at(1), "ada@example.com").await;
    let other = id_at(2);
    for email in ["ada@example.com", "ADA@Example.COM", "  ada@example.com  "] {
        assert!(is_conflict(s.insert_user(&user(&other, email)).await));
    }
    assert_eq!(s.get_user(&other).await.expect("get"), None);
    assert_eq!(s.count_users().await.expect("count"), 1);
    // Neither the id nor the email of a refused user was kept.
    add_user(&s, &other, "grace@example.com").await;
    assert_eq!(s.count_users().await.expect("count"), 2);
}

pub async fn a_user_id_is_stored_once(s: S) {
    let ua = add_user(&s, &id_at(1), "ada@example.com").await;
    assert!(is_conflict(
        s.insert_user(&user(&ua.id, "grace@example.com")).await
    ));
    assert_eq!(s.get_user(&ua.id).await.expect("get"), Some(ua));
    assert_eq!(
        s.get_user_by_email("grace@example.com").await.expect("get"),
        None
    );
    assert_eq!(s.count_users().await.expect("count"), 1);
}

pub async fn a_taken_email_is_refused_on_update_and_a_changed_email_frees_the_old_one(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    add_user(&s, &a, "ada@example.com").await;
    let ub = add_user(&s, &b, "grace@example.com").await;

    let mut taken = ub.clone();
    taken.email = "ADA@example.com".into();
    assert!(is_conflict(s.update_user(&taken).await));
    assert_eq!(s.get_user(&b).await.expect("get"), Some(ub.clone()));

    // A user may change the case of its own email.
    let mut ua = user(&a, "Ada@Example.com");
    ua.name = "Ada L.".into();
    ua.updated_at = at(10);
    assert!(s.update_user(&ua).await.expect("update own"));
    assert_eq!(s.get_user(&a).await.expect("get"), Some(ua.clone()));

    // A new email frees the old one, for lookups and for others.
    let mut moved = ub.clone();
    moved.email = "grace.hopper@example.com".into();
    assert!(s.update_user(&moved).await.expect("update"));
    assert_eq!(
        s.get_user_by_email("GRACE.HOPPER@example.com")
            .await
            .expect("by email"),
        Some(moved)
    );
    assert_eq!(
        s.get_user_by_email("grace@example.com")
            .await
            .expect("by email"),
        None
    );
    add_user(&s, &id_at(3), "Grace@example.com").await;

    // A user that does not exist is not updated, whatever its email.
    let (missing, missing_too) = (id_at(4), id_at(5));
    assert!(!s
        .update_user(&user(&missing, "nobody@example.com"))
        .await
        .expect("update missing"));
    assert!(!s
        .update_user(&user(&missing_too, "ada@example.com"))
        .await
        .expect("update missing with a taken email"));
    assert_eq!(s.get_user(&missing).await.expect("get"), None);
    assert_eq!(s.get_user(&missing_too).await.expect("get"), None);
    assert_eq!(s.count_users().await.expect("count"), 3);
}

pub async fn users_are_listed_in_id_order_after_a_cursor_and_counted(s: S) {
    assert_eq!(s.count_users().await.expect("count"), 0);
    assert!(s.list_users(None, 10).await.expect("list").is_empty());
    let all: Vec<String> = (1..=5).map(|i| id_at(i * 10)).collect();
    for i in [3, 0, 4, 1, 2] {
        add_user(&s, &all[i], &format!("u{i}@example.com")).await;
    }
    let page = |us: Vec<User>| us.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(page(s.list_users(None, 2).await.expect("list")), all[..2]);
    assert_eq!(
        page(s.list_users(Some(&all[1]), 2).await.expect("list")),
        all[2..4]
    );
    assert_eq!(
        page(s.list_users(Some(&all[3]), 2).await.expect("list")),
        all[4..]
    );
    assert!(s
        .list_users(Some(&all[4]), 2)
        .await
        .expect("list")
        .is_empty());
    // A cursor need not name a user: the ones after it in id order.
    assert_eq!(
        page(s.list_users(Some(&id_at(25)), 10).await.expect("list")),
        all[2..]
    );
    assert_eq!(page(s.list_users(None, 100).await.expect("list")), all);
    assert_eq!(s.count_users().await.expect("count"), 5);
}

pub async fn deleting_a_user_deletes_its_tasks_images_keys_and_idempotency_keys(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    add_user(&s, &a, "ada@example.com").await;
    add_user(&s, &b, "grace@example.com").await;
    let ta1 = keyed(task_at(10, &a), "k");
    let ta2 = task_at(11, &a);
    let tb = keyed(task_at(12, &b), "k");
    for t in [&ta1, &ta2, &tb] {
        insert(&s, t).await;
    }
    // A task changed since, so no store can find it by what it was inserted as.
    let ta2_running = ta2.start("w1", at(100), at(20)).expect("start");
    replace(&s, &ta2_running, &ta2).await;
    let (ia1, ia2, ib) = (id_at(30), id_at(31), id_at(32));
    s.put_image(&image(&ia1, &ta1.id, pattern(10, 1)))
        .await
        .expect("put");
    s.put_image(&image(&ia2, &ta2.id, pattern(10, 2)))
        .await
        .expect("put");
    s.put_image(&image(&ib, &tb.id, pattern(10, 3)))
        .await
        .expect("put");
    let (ka1, ka2, kb) = (
        api_key(40, &a, "hash-a1"),
        api_key(41, &a, "hash-a2"),
        api_key(42, &b, "hash-b"),
    );
    for k in [&ka1, &ka2, &kb] {
        s.insert_api_key(k).await.expect("insert key");
    }
    // Reads that an implementation may keep cached.
    stored(&s, &ta1.id).await;
    stored(&s, &ta2.id).await;

    assert!(s.delete_user(&a).await.expect("delete"));

    assert_eq!(s.get_user(&a).await.expect("get"), None);
    assert_eq!(
        s.get_user_by_email("ada@example.com").await.expect("get"),
        None
    );
    for t in [&ta1, &ta2] {
        assert_eq!(s.get_task(&t.id).await.expect("get"), None, "task {}", t.id);
    }
    for i in [&ia1, &ia2] {
        assert_eq!(s.get_image(i).await.expect("get"), None, "image {i}");
    }
    for k in [&ka1, &ka2] {
        assert_eq!(s.get_api_key(&k.id).await.expect("get"), None);
        assert_eq!(s.find_api_key(&k.hash).await.expect("find"), None);
    }
    assert!(s.list_api_keys(&a).await.expect("list").is_empty());
    assert_eq!(s.count_tasks(Some(&a), None).await.expect("count"), 0);
    assert_eq!(s.count_active_tasks(&a).await.expect("count"), 0);
    assert!(s
        .list_tasks(&TaskQuery {
            limit: 10,
            ..TaskQuery::default()
        })
        .await
        .expect("list")
        .iter()
        .all(|t| t.user_id == b));
    assert_eq!(
        s.status_counts().await.expect("counts"),
        HashMap::from([(TaskStatus::Pending, 1)])
    );
    assert!(s.processing_tasks(10).await.expect("processing").is_empty());

    // The other user keeps everything.
    assert_eq!(stored(&s, &tb.id).await, tb);
    assert!(s.get_image(&ib).await.expect("get").is_some());
    assert_eq!(s.find_api_key("hash-b").await.expect("find"), Some(kb));
    assert_eq!(s.count_users().await.expect("count"), 1);

    // Gone means gone: a second delete finds nothing, and the same id and email start afresh
    // (the old idempotency key included).
    assert!(!s.delete_user(&a).await.expect("delete again"));
    add_user(&s, &a, "ada@example.com").await;
    insert(&s, &keyed(task_at(50, &a), "k")).await;
    s.insert_api_key(&api_key(51, &a, "hash-a1"))
        .await
        .expect("the deleted key's hash is free");
}
