//! Reading many tasks: the reconciler's queries, listings, counts, the change feed, limits.

use super::fixtures::*;

pub async fn due_tasks_are_pending_ones_due_and_processing_ones_with_lapsed_leases_oldest_first(
    s: S,
) {
    let u = id_at(1);
    let now = at(1_000);
    let mut due = Vec::new();
    let mut rows: Vec<(Task, Option<Task>)> = Vec::new();

    // Pending without a delay: due.
    let t = task_at(10, &u);
    due.push(t.id.clone());
    rows.push((t, None));
    // Pending, delayed until exactly now: due; until later: not.
    let mut t = task_at(20, &u);
    t.not_before = Some(now);
    due.push(t.id.clone());
    rows.push((t, None));
    let mut t = task_at(30, &u);
    t.not_before = Some(at(1_001));
    rows.push((t, None));
    // Requeued by a retry (a replace, not an insert) to run before now: due; after now: not.
    let t = task_at(40, &u);
    let running = t.start("w", at(500), at(41)).expect("start");
    let requeued = running.requeue(None, at(999), at(42)).expect("requeue");
    due.push(t.id.clone());
    rows.push((t, Some(running.clone())));
    rows.push((running, Some(requeued)));
    let t = task_at(50, &u);
    let running = t.start("w", at(500), at(51)).expect("start");
    let later = running.requeue(None, at(5_000), at(52)).expect("requeue");
    rows.push((t, Some(running.clone())));
    rows.push((running, Some(later)));
    // Processing with a lease that ran out: due; that runs out exactly now or later: not.
    let t = task_at(60, &u);
    let lapsed = t.start("w", at(999), at(61)).expect("start");
    due.push(t.id.clone());
    rows.push((t, Some(lapsed)));
    let t = task_at(70, &u);
    let now_lease = t.start("w", now, at(71)).expect("start");
    rows.push((t, Some(now_lease)));
    let t = task_at(80, &u);
    let held = t.start("w", at(2_000), at(81)).expect("start");
    rows.push((t, Some(held)));
    // Finished ones never, whatever their old lease or delay said.
    let t = task_at(90, &u);
    let running = t.start("w", at(100), at(91)).expect("start");
    let failed = running
        .fail(
            TaskError {
                code: "X".into(),
                message: "x".into(),
                retryable: false,
            },
            None,
            at(92),
        )
        .expect("fail");
    rows.push((t, Some(running.clone())));
    rows.push((running, Some(failed)));
    let t = task_at(95, &u);
    let cancelled = t.cancel(at(96)).expect("cancel");
    rows.push((t, Some(cancelled)));
    // Retried by its user (cancelled, then pending again without a delay): due.
    let t = task_at(97, &u);
    let cancelled = t.cancel(at(98)).expect("cancel");
    let retried = cancelled.retry(at(99)).expect("retry");
    due.push(t.id.clone());
    rows.push((t, Some(cancelled.clone())));
    rows.push((cancelled, Some(retried)));

    // Stored newest first, so an answer in insertion order is caught.
    let mut inserted = HashSet::new();
    for (t, _) in rows.iter().rev() {
        if t.version == 1 && inserted.insert(t.id.clone()) {
            insert(&s, t).await;
        }
    }
    for (old, new) in &rows {
        if let Some(new) = new {
            replace(&s, new, old).await;
        }
    }

    assert_eq!(ids(&s.due_tasks(now, 100).await.expect("due")), due);
    assert_eq!(ids(&s.due_tasks(now, 2).await.expect("due")), due[..2]);
    // Long before: only the ones without a delay.
    assert_eq!(
        ids(&s.due_tasks(at(0), 100).await.expect("due")),
        [due[0].clone(), due[4].clone()]
    );
}

pub async fn oldest_pending_and_processing_tasks_in_creation_order(s: S) {
    let u = id_at(1);
    assert!(s.oldest_pending().await.expect("oldest").is_none());
    assert!(s.processing_tasks(10).await.expect("processing").is_empty());
    let [t50, t10, t40, t20, t30] = [50, 10, 40, 20, 30].map(|ms| task_at(ms, &u));
    for t in [&t50, &t10, &t40, &t20, &t30] {
        insert(&s, t).await;
    }
    assert_eq!(s.oldest_pending().await.expect("oldest"), Some(t10.clone()));

    // The oldest starts: the next pending one is the oldest wait.
    for t in [&t10, &t40, &t30] {
        let p = t.start("w", at(900), at(100)).expect("start");
        replace(&s, &p, t).await;
    }
    assert_eq!(s.oldest_pending().await.expect("oldest"), Some(t20.clone()));
    assert_eq!(
        ids(&s.processing_tasks(10).await.expect("processing")),
        [t10.id.clone(), t30.id.clone(), t40.id.clone()]
    );
    assert_eq!(
        ids(&s.processing_tasks(2).await.expect("processing")),
        [t10.id.clone(), t30.id.clone()]
    );
    for t in [&t20, &t50] {
        let c = t.cancel(at(100)).expect("cancel");
        replace(&s, &c, t).await;
    }
    assert!(s.oldest_pending().await.expect("oldest").is_none());
}

/// Where the queue's numbering resumes at start: the lowest and highest numbers of pending
/// tasks only (running, finished and unnumbered ones do not count).
pub async fn pending_queue_numbers_span_the_pending_tasks_only(s: S) {
    let u = id_at(1);
    assert_eq!(s.pending_seq_range().await.expect("range"), None);
    let unnumbered = task_at(5, &u);
    insert(&s, &unnumbered).await;
    assert_eq!(s.pending_seq_range().await.expect("range"), None);
    let mut tasks = Vec::new();
    for (ms, seq) in [(10, 7_u64), (20, 3), (30, 12), (40, 9)] {
        let mut t = task_at(ms, &u);
        t.queue_seq = Some(seq);
        insert(&s, &t).await;
        tasks.push(t);
    }
    assert_eq!(s.pending_seq_range().await.expect("range"), Some((3, 12)));
    // The lowest starts and the highest is cancelled: the span narrows to what still waits.
    let started = tasks[1].start("w", at(900), at(100)).expect("start");
    replace(&s, &started, &tasks[1]).await;
    let cancelled = tasks[2].cancel(at(100)).expect("cancel");
    replace(&s, &cancelled, &tasks[2]).await;
    assert_eq!(s.pending_seq_range().await.expect("range"), Some((7, 9)));
}

pub async fn tasks_are_listed_newest_first_by_user_status_cursor_offset_and_limit(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    // a: 10 20 30 40 50 60 (20 and 50 completed), b: 15 35.
    let mut all = Vec::new();
    for (ms, owner) in [
        (40, &a),
        (15, &b),
        (10, &a),
        (60, &a),
        (35, &b),
        (20, &a),
        (50, &a),
        (30, &a),
    ] {
        let t = task_at(ms, owner);
        insert(&s, &t).await;
        all.push((ms, t));
    }
    for ms in [20, 50] {
        let t = &all.iter().find(|(m, _)| *m == ms).expect("task").1;
        let p = t.start("w", at(900), at(100)).expect("start");
        replace(&s, &p, t).await;
        let c = p.complete(vec![], None, at(101)).expect("complete");
        replace(&s, &c, &p).await;
    }
    let id = |ms: i64| {
        all.iter()
            .find(|(m, _)| *m == ms)
            .expect("task")
            .1
            .id
            .clone()
    };
    let newest = |mss: &[i64]| mss.iter().map(|&m| id(m)).collect::<Vec<_>>();
    let list =
        |user: Option<&str>, status: Option<TaskStatus>, before: Option<i64>, offset, limit| {
            let q = TaskQuery {
                user_id: user.map(str::to_string),
                status,
                before_id: before.map(id),
                offset,
                limit,
            };
            let s = s.clone();
            async move { ids(&s.list_tasks(&q).await.expect("list")) }
        };

    assert_eq!(
        list(None, None, None, 0, 100).await,
        newest(&[60, 50, 40, 35, 30, 20, 15, 10])
    );
    assert_eq!(
        list(Some(&a), None, None, 0, 100).await,
        newest(&[60, 50, 40, 30, 20, 10])
    );
    assert_eq!(list(Some(&b), None, None, 0, 100).await, newest(&[35, 15]));
    assert!(list(Some(&id_at(3)), None, None, 0, 100).await.is_empty());
    assert_eq!(
        list(Some(&a), Some(TaskStatus::Completed), None, 0, 100).await,
        newest(&[50, 20])
    );
    assert_eq!(
        list(None, Some(TaskStatus::Pending), None, 0, 100).await,
        newest(&[60, 40, 35, 30, 15, 10])
    );
    assert!(list(None, Some(TaskStatus::Failed), None, 0, 100)
        .await
        .is_empty());
    // Pages: by limit, by a cursor (strictly older than it), by an offset, and all together.
    assert_eq!(list(Some(&a), None, None, 0, 2).await, newest(&[60, 50]));
    assert_eq!(
        list(Some(&a), None, Some(50), 0, 2).await,
        newest(&[40, 30])
    );
    assert_eq!(
        list(Some(&a), None, Some(30), 0, 2).await,
        newest(&[20, 10])
    );
    assert!(list(Some(&a), None, Some(10), 0, 2).await.is_empty());
    assert_eq!(
        list(Some(&a), None, None, 2, 3).await,
        newest(&[40, 30, 20])
    );
    assert!(list(Some(&a), None, None, 6, 3).await.is_empty());
    assert_eq!(
        list(None, Some(TaskStatus::Pending), Some(40), 1, 2).await,
        newest(&[30, 15])
    );
    assert_eq!(
        list(Some(&b), Some(TaskStatus::Pending), Some(35), 0, 5).await,
        newest(&[15])
    );
    // A cursor need not name a stored task (one deleted since): older ones than its time.
    let gone = id_at(45);
    let q = TaskQuery {
        user_id: Some(a.clone()),
        before_id: Some(gone),
        limit: 10,
        ..TaskQuery::default()
    };
    assert_eq!(
        ids(&s.list_tasks(&q).await.expect("list")),
        newest(&[40, 30, 20, 10])
    );
}

pub async fn counts_follow_every_change(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    assert_eq!(s.count_tasks(None, None).await.expect("count"), 0);
    assert!(s.status_counts().await.expect("counts").is_empty());
    assert_eq!(s.count_active_tasks(&a).await.expect("active"), 0);

    let ta: Vec<Task> = (0..4).map(|i| task_at(10 + i, &a)).collect();
    let tb = task_at(20, &b);
    for t in ta.iter().chain([&tb]) {
        insert(&s, t).await;
    }
    let p0 = ta[0].start("w", at(900), at(100)).expect("start");
    replace(&s, &p0, &ta[0]).await;
    let p1 = ta[1].start("w", at(900), at(100)).expect("start");
    replace(&s, &p1, &ta[1]).await;
    let done = p1.complete(vec![], None, at(101)).expect("complete");
    replace(&s, &done, &p1).await;
    let cancelled = ta[2].cancel(at(102)).expect("cancel");
    replace(&s, &cancelled, &ta[2]).await;
    // a: processing, completed, cancelled, pending; b: pending.

    let count = |u: Option<&str>, st: Option<TaskStatus>| {
        let (s, u) = (s.clone(), u.map(str::to_string));
        async move { s.count_tasks(u.as_deref(), st).await.expect("count") }
    };
    assert_eq!(count(None, None).await, 5);
    assert_eq!(count(Some(&a), None).await, 4);
    assert_eq!(count(Some(&b), None).await, 1);
    assert_eq!(count(Some(&id_at(3)), None).await, 0);
    assert_eq!(count(None, Some(TaskStatus::Pending)).await, 2);
    assert_eq!(count(Some(&a), Some(TaskStatus::Pending)).await, 1);
    assert_eq!(count(Some(&a), Some(TaskStatus::Completed)).await, 1);
    assert_eq!(count(Some(&b), Some(TaskStatus::Completed)).await, 0);
    assert_eq!(count(None, Some(TaskStatus::Failed)).await, 0);
    assert_eq!(s.count_active_tasks(&a).await.expect("active"), 2);
    assert_eq!(s.count_active_tasks(&b).await.expect("active"), 1);
    assert_eq!(
        s.status_counts().await.expect("counts"),
        HashMap::from([
            (TaskStatus::Pending, 2),
            (TaskStatus::Processing, 1),
            (TaskStatus::Completed, 1),
            (TaskStatus::Cancelled, 1),
        ]),
        "statuses with no task are left out"
    );

    assert!(s.delete_task(&ta[0].id).await.expect("delete"));
    assert_eq!(s.count_active_tasks(&a).await.expect("active"), 1);
    assert_eq!(count(Some(&a), None).await, 3);
    assert_eq!(
        s.status_counts().await.expect("counts"),
        HashMap::from([
            (TaskStatus::Pending, 2),
            (TaskStatus::Completed, 1),
            (TaskStatus::Cancelled, 1),
        ])
    );

    // A retry moves a task back from a finished status; a write that loses its compare-and-set
    // counts nothing.
    let retried = cancelled.retry(at(103)).expect("retry");
    replace(&s, &retried, &cancelled).await;
    assert!(!s
        .replace_task(&retried, cancelled.version, TaskStatus::Cancelled)
        .await
        .expect("stale write"));
    assert_eq!(count(None, Some(TaskStatus::Pending)).await, 3);
    assert_eq!(count(None, Some(TaskStatus::Cancelled)).await, 0);
    assert_eq!(count(None, None).await, 4);
    // Deleting a user deletes its tasks from every count; nothing stored, nothing counted.
    add_user(&s, &a, "a@example.com").await;
    assert!(s.delete_user(&a).await.expect("delete user"));
    assert_eq!(count(Some(&a), None).await, 0);
    assert_eq!(count(None, None).await, 1);
    assert!(s.delete_task(&tb.id).await.expect("delete"));
    assert_eq!(count(None, None).await, 0);
    assert_eq!(count(None, Some(TaskStatus::Pending)).await, 0);
    assert!(
        s.status_counts().await.expect("counts").is_empty(),
        "statuses whose tasks are all gone are left out"
    );
}

pub async fn tasks_changed_reads_changes_in_order_after_a_cursor(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    // Change times (ms) 100, 100, 100, 200, 300, 300; ties are ordered by id.
    let mut tasks = Vec::new();
    for (created, owner, changed) in [
        (30, &a, 100),
        (10, &b, 100),
        (20, &a, 100),
        (5, &a, 200),
        (50, &b, 300),
        (40, &a, 300),
    ] {
        let mut t = task_at(created, owner);
        t.updated_at = at(changed) + chrono::Duration::microseconds(250);
        insert(&s, &t).await;
        tasks.push(t);
    }
    let mut order = tasks.clone();
    order.sort_by_key(|t| (t.updated_at.timestamp_millis(), t.id.clone()));
    let order_ids = ids(&order);

    let changed = |u: Option<&str>, after: ChangeCursor, limit: usize| {
        let (s, u) = (s.clone(), u.map(str::to_string));
        async move {
            ids(&s
                .tasks_changed(u.as_deref(), &after, limit)
                .await
                .expect("changed"))
        }
    };
    assert_eq!(changed(None, ChangeCursor::default(), 100).await, order_ids);
    // After a task's own place: the rest, whether they share its millisecond or not.
    assert_eq!(
        changed(None, ChangeCursor::of(&order[1]), 100).await,
        order_ids[2..]
    );
    // From a millisecond: everything changed at or after it.
    assert_eq!(
        changed(None, ChangeCursor::from_ms(BASE_MS + 200), 100).await,
        order_ids[3..]
    );
    assert_eq!(
        changed(None, ChangeCursor::from_ms(BASE_MS + 201), 100).await,
        order_ids[4..]
    );
    assert!(changed(None, ChangeCursor::of(&order[5]), 100)
        .await
        .is_empty());
    // One user's, in the same order.
    let of_a: Vec<String> = order
        .iter()
        .filter(|t| t.user_id == a)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(changed(Some(&a), ChangeCursor::default(), 100).await, of_a);
    assert_eq!(
        changed(Some(&a), ChangeCursor::of(&order[1]), 100).await,
        of_a[1..]
    );

    // Paging by the last one read sees every change exactly once.
    let mut seen = Vec::new();
    let mut cursor = ChangeCursor::default();
    loop {
        let page = s.tasks_changed(None, &cursor, 2).await.expect("changed");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        cursor = ChangeCursor::of(last);
        seen.extend(ids(&page));
    }
    assert_eq!(seen, order_ids);

    // A new version moves a task to its new place; the old place is not reported again.
    let first = order[0].clone();
    let mut next = first.start("w", at(900), at(400)).expect("start");
    next.updated_at = at(400);
    replace(&s, &next, &first).await;
    assert_eq!(
        changed(None, cursor.clone(), 100).await,
        vec![first.id.clone()]
    );
    let all_now = changed(None, ChangeCursor::default(), 100).await;
    assert_eq!(all_now.len(), 6);
    assert_eq!(all_now.last(), Some(&first.id));
    // A heartbeat is not a change.
    let after_all = ChangeCursor::of(&next);
    assert!(s
        .extend_lease(&first.id, "w", at(5_000))
        .await
        .expect("extend"));
    assert!(changed(None, after_all, 100).await.is_empty());
}

/// `limit` is "at most": 0 reads nothing (MongoDB's own `limit(0)` means no limit) and the
/// largest reads everything (a negative MongoDB limit means one batch).
pub async fn a_limit_bounds_every_listing_and_zero_reads_nothing(s: S) {
    let u = id_at(1);
    add_user(&s, &u, "ada@example.com").await;
    add_user(&s, &id_at(2), "grace@example.com").await;
    for ms in [10, 20, 30] {
        let t = task_at(ms, &u);
        insert(&s, &t).await;
        if ms != 10 {
            let p = t.start("w", at(0), at(ms + 1)).expect("start");
            replace(&s, &p, &t).await;
        }
    }
    let now = at(1_000);
    let tasks = |limit| TaskQuery {
        limit,
        ..TaskQuery::default()
    };
    for (limit, want_users, want_tasks, want_processing) in
        [(0, 0, 0, 0), (1, 1, 1, 1), (usize::MAX, 2, 3, 2)]
    {
        assert_eq!(
            s.list_users(None, limit).await.expect("users").len(),
            want_users,
            "list_users, limit {limit}"
        );
        assert_eq!(
            s.list_tasks(&tasks(limit)).await.expect("tasks").len(),
            want_tasks,
            "list_tasks, limit {limit}"
        );
        assert_eq!(
            s.tasks_changed(None, &ChangeCursor::default(), limit)
                .await
                .expect("changed")
                .len(),
            want_tasks,
            "tasks_changed, limit {limit}"
        );
        assert_eq!(
            s.due_tasks(now, limit).await.expect("due").len(),
            want_tasks,
            "due_tasks, limit {limit}"
        );
        assert_eq!(
            s.processing_tasks(limit).await.expect("processing").len(),
            want_processing,
            "processing_tasks, limit {limit}"
        );
    }
}

/// Scheduled tasks are due from their start time on, earliest start first; pending, promoted and
/// cancelled ones never (and a scheduled task is never a due pending one for the reconciler).
pub async fn scheduled_tasks_are_due_from_their_start_earliest_first(s: S) {
    let u = id_at(1);
    let now = at(1_000);
    // Created in this order, due in another: 30 (at 900), 10 (at 950), 40 (exactly now).
    let early = task_at(10, &u).scheduled_for(at(950));
    let later = task_at(20, &u).scheduled_for(at(1_001));
    let earliest = task_at(30, &u).scheduled_for(at(900));
    let exactly = task_at(40, &u).scheduled_for(now);
    let promoted = task_at(50, &u).scheduled_for(at(800));
    let cancelled = task_at(60, &u).scheduled_for(at(800));
    let plain = task_at(70, &u);
    for t in [
        &later, &exactly, &plain, &early, &promoted, &cancelled, &earliest,
    ] {
        insert(&s, t).await;
    }
    replace(&s, &promoted.promote(at(801)).expect("promote"), &promoted).await;
    replace(&s, &cancelled.cancel(at(802)).expect("cancel"), &cancelled).await;

    assert_eq!(
        ids(&s.due_scheduled(now, 10).await.expect("due")),
        [earliest.id.clone(), early.id.clone(), exactly.id.clone()]
    );
    assert_eq!(
        ids(&s.due_scheduled(now, 2).await.expect("due")),
        [earliest.id.clone(), early.id.clone()]
    );
    assert!(s.due_scheduled(now, 0).await.expect("due").is_empty());
    assert!(s.due_scheduled(at(899), 10).await.expect("due").is_empty());
    // The reconciler's due pending tasks: the promoted one and the plain one, no scheduled one.
    let mut pending = ids(&s.due_tasks(at(5_000), 10).await.expect("due"));
    pending.sort();
    let mut want = vec![promoted.id.clone(), plain.id.clone()];
    want.sort();
    assert_eq!(pending, want);
    assert_eq!(
        stored(&s, &later.id).await,
        later,
        "a scheduled task round-trips"
    );
    let counts = s.status_counts().await.expect("counts");
    assert_eq!(counts.get(&TaskStatus::Scheduled), Some(&4));
}

/// Unfinished tasks (scheduled, pending, processing) are past their deadline from it on;
/// finished ones never, whatever their deadline said, nor tasks without one.
pub async fn unfinished_tasks_are_past_their_deadline_from_it_on(s: S) {
    let u = id_at(1);
    let now = at(10_000);
    let with = |ms, secs| task_at(ms, &u).with_deadline(secs);
    // Deadlines: created at 10..60 ms plus whole seconds.
    let pending = with(10, 5); // 5_010
    let scheduled = task_at(20, &u).scheduled_for(at(3_000)).with_deadline(7); // 10_000
    let processing = with(30, 1); // 1_030
    let later = with(40, 11); // 11_040
    let completed = with(50, 1);
    let none = task_at(60, &u);
    for t in [&later, &pending, &none, &scheduled, &processing, &completed] {
        insert(&s, t).await;
    }
    let running = processing.start("w", at(90_000), at(31)).expect("start");
    replace(&s, &running, &processing).await;
    let started = completed.start("w", at(90_000), at(51)).expect("start");
    replace(&s, &started, &completed).await;
    let done = started.complete(vec![], None, at(52)).expect("complete");
    replace(&s, &done, &started).await;

    let mut found = ids(&s.past_deadline(now, 10).await.expect("overdue"));
    found.sort();
    let mut want = vec![
        pending.id.clone(),
        scheduled.id.clone(),
        processing.id.clone(),
    ];
    want.sort();
    assert_eq!(found, want);
    assert_eq!(s.past_deadline(now, 2).await.expect("overdue").len(), 2);
    assert!(s.past_deadline(now, 0).await.expect("overdue").is_empty());
    assert!(s
        .past_deadline(at(1_029), 10)
        .await
        .expect("overdue")
        .is_empty());
    // Expired: finished, out of the sweep.
    let expired = running.expire(at(1_031)).expect("expire");
    replace(&s, &expired, &running).await;
    assert_eq!(stored(&s, &expired.id).await, expired);
    assert_eq!(
        ids(&s.past_deadline(at(1_040), 10).await.expect("overdue")),
        Vec::<String>::new()
    );
    let overdue = s.past_deadline(at(5_010), 10).await.expect("overdue");
    assert_eq!(overdue, vec![pending.clone()]);
}

/// The quotas' counts: a user's unfinished tasks (scheduled ones too) and the images they ask for
/// (`n`, 1 when a task says nothing); finished tasks and other users' are not counted.
pub async fn active_tasks_and_their_images_count_scheduled_pending_and_processing(s: S) {
    let (a, b) = (id_at(1), id_at(2));
    assert_eq!(s.active_task_images(&a).await.expect("images"), 0);
    let with_n = |t: Task, n: u32| {
        let mut t = t;
        t.params.n = n;
        t
    };
    let pending = with_n(task_at(10, &a), 3);
    let running = with_n(task_at(20, &a), 2);
    let scheduled = with_n(task_at(30, &a), 4).scheduled_for(at(9_000));
    let done = with_n(task_at(40, &a), 4);
    let failed = with_n(task_at(50, &a), 4);
    let others = with_n(task_at(60, &b), 4);
    for t in [&pending, &running, &scheduled, &done, &failed, &others] {
        insert(&s, t).await;
    }
    let started = running.start("w", at(900), at(100)).expect("start");
    replace(&s, &started, &running).await;
    let d1 = done.start("w", at(900), at(100)).expect("start");
    replace(&s, &d1, &done).await;
    replace(
        &s,
        &d1.complete(vec![], None, at(101)).expect("complete"),
        &d1,
    )
    .await;
    replace(&s, &failed.cancel(at(102)).expect("cancel"), &failed).await;

    assert_eq!(s.count_active_tasks(&a).await.expect("active"), 3);
    assert_eq!(s.active_task_images(&a).await.expect("images"), 3 + 2 + 4);
    assert_eq!(s.count_active_tasks(&b).await.expect("active"), 1);
    assert_eq!(s.active_task_images(&b).await.expect("images"), 4);
    assert_eq!(s.active_task_images(&id_at(3)).await.expect("images"), 0);
}
