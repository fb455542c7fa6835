//! The two databases' tables, and the changes that bring a data folder of an earlier version up
//! to date at start (each idempotent, so one cut short by a crash is finished next time).

use std::path::Path;

use rusqlite::{params, Connection};

use super::{backend, from_json};
use crate::domain::Task;
use crate::store::StoreError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email_key TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    due_ms INTEGER,
    lease_owner TEXT,
    lease_until_ms INTEGER,
    idem_key TEXT,
    doc TEXT NOT NULL,
    updated_ms INTEGER,
    deadline_ms INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_user ON tasks (user_id, id);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, id);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idem ON tasks (user_id, idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_by_user ON api_keys (user_id, id);
CREATE INDEX IF NOT EXISTS tasks_by_user_status ON tasks (user_id, status, id);
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (status, due_ms);
CREATE TABLE IF NOT EXISTS usage_events (
    task_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    api_key_id TEXT,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    status TEXT NOT NULL,
    images INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_user ON usage_events (user_id, day);
";

pub(super) const IMAGES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_task ON images (task_id);
";

/// Data folders of earlier versions have no `updated_ms` column (what `tasksUpdated` re-reads a
/// gap by): added and filled from the documents once, in one transaction, so a crash leaves
/// either the old table or the whole change.
pub(super) fn add_change_column(main: &mut Connection) -> Result<(), StoreError> {
    let present = main
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'updated_ms'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    let tx = main.transaction().map_err(backend)?;
    if !present {
        tx.execute_batch("ALTER TABLE tasks ADD COLUMN updated_ms INTEGER")
            .map_err(backend)?;
        // Read from the documents the way new writes compute it (SQLite's date functions round
        // to the millisecond where chrono truncates).
        let mut filled = 0u64;
        {
            let mut read = tx.prepare("SELECT doc FROM tasks").map_err(backend)?;
            let mut write = tx
                .prepare("UPDATE tasks SET updated_ms = ?2 WHERE id = ?1")
                .map_err(backend)?;
            // Row by row: the whole table may not fit in memory.
            let rows = read
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            for row in rows {
                let t: Task = from_json(&row.map_err(backend)?)?;
                write
                    .execute(params![t.id, t.updated_at.timestamp_millis()])
                    .map_err(backend)?;
                filled += 1;
            }
        }
        tracing::info!(tasks = filled, "added the tasks' change times");
    }
    tx.execute_batch("CREATE INDEX IF NOT EXISTS tasks_changed ON tasks (updated_ms, id)")
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Data folders of earlier versions have no `deadline_ms` column (the deadline sweep's): added
/// empty, as their tasks were created without a deadline, with the index the sweep reads.
pub(super) fn add_deadline_column(main: &Connection) -> Result<(), StoreError> {
    let present = main
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'deadline_ms'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    if !present {
        main.execute_batch("ALTER TABLE tasks ADD COLUMN deadline_ms INTEGER")
            .map_err(backend)?;
    }
    main.execute_batch("CREATE INDEX IF NOT EXISTS tasks_deadline ON tasks (status, deadline_ms)")
        .map_err(backend)
}

/// The counts by status (queue statistics, the admin's list totals), kept by triggers in the
/// transaction of every insert, status change and delete, so reading them costs six rows however
/// many tasks are stored. Data folders of earlier versions get the table filled from their tasks
/// once (one pass over the status index, in the same transaction as the triggers), and lose the
/// `(user_id, status)` index that `tasks_by_user_status` replaces.
pub(super) fn add_status_counts(main: &mut Connection) -> Result<(), StoreError> {
    let tx = main.transaction().map_err(backend)?;
    let present = tx
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'task_counts'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    if !present {
        tx.execute_batch(
            "CREATE TABLE task_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO task_counts (status, n) SELECT status, COUNT(*) FROM tasks GROUP BY status;
             CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
                 INSERT INTO task_counts (status, n) VALUES (new.status, 1)
                     ON CONFLICT (status) DO UPDATE SET n = n + 1;
             END;
             CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
                 UPDATE task_counts SET n = n - 1 WHERE status = old.status;
             END;
             CREATE TRIGGER task_counts_update AFTER UPDATE OF status ON tasks
             WHEN old.status IS NOT new.status BEGIN
                 UPDATE task_counts SET n = n - 1 WHERE status = old.status;
                 INSERT INTO task_counts (status, n) VALUES (new.status, 1)
                     ON CONFLICT (status) DO UPDATE SET n = n + 1;
             END;",
        )
        .map_err(backend)?;
        tracing::info!("counted the stored tasks by status");
    }
    tx.execute_batch("DROP INDEX IF EXISTS tasks_active")
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Data folders of earlier versions kept the images in the main database: moved into the image
/// database once, at start. Idempotent, so a move cut short by a crash is finished next time.
pub(super) fn move_legacy_images(main: &Connection, images_path: &Path) -> Result<(), StoreError> {
    let legacy: bool = main
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'images'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    if !legacy {
        return Ok(());
    }
    let path = images_path
        .to_str()
        .ok_or_else(|| StoreError::Backend("the data folder's path is not UTF-8".into()))?;
    main.execute("ATTACH DATABASE ?1 AS img", [path])
        .map_err(backend)?;
    let moved = main
        .execute(
            "INSERT OR IGNORE INTO img.images (id, task_id, content_type, data) \
             SELECT id, task_id, content_type, data FROM main.images",
            [],
        )
        .and_then(|n| main.execute_batch("DROP TABLE main.images").map(|_| n));
    let detached = main.execute_batch("DETACH DATABASE img");
    let moved = moved.map_err(backend)?;
    detached.map_err(backend)?;
    tracing::info!(images = moved, "moved the images into their own database");
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::super::{to_json, SqliteStore, MAIN_FILE};
    use super::*;
    use crate::config::SyncMode;
    use crate::store::{ChangeCursor, Store, TaskCacheBounds};

    const BOUNDS: TaskCacheBounds = TaskCacheBounds {
        tasks: 100,
        bytes: 1 << 20,
    };

    /// A data folder of an earlier version (no change times) opens with its tasks' change times
    /// filled in from their documents, so `tasks_changed` finds them in change order; new and
    /// replaced tasks keep the order.
    #[tokio::test]
    async fn change_times_of_an_earlier_layout_are_filled_and_kept() {
        use crate::domain::{ImageParams, Task};
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |s: &str| s.parse::<DateTime<chrono::Utc>>().expect("time");
        let mut old_task = Task::new_pending(
            "u1".into(),
            "m".into(),
            "p".into(),
            ImageParams::default(),
            None,
            at("2026-01-02T03:04:05.678901Z"),
        );
        old_task.id = "t-old".into();
        {
            let old = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            old.execute_batch(
                "CREATE TABLE tasks (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, \
                 status TEXT NOT NULL, version INTEGER NOT NULL, due_ms INTEGER, \
                 lease_owner TEXT, lease_until_ms INTEGER, idem_key TEXT, doc TEXT NOT NULL);",
            )
            .expect("old schema");
            old.execute(
                "INSERT INTO tasks (id, user_id, status, version, doc) \
                 VALUES (?1, 'u1', 'pending', 1, ?2)",
                params![old_task.id, to_json(&old_task).expect("json")],
            )
            .expect("insert");
        }
        let store = SqliteStore::open(dir.path(), SyncMode::Normal, BOUNDS).expect("open store");
        let mut other = old_task.clone();
        other.id = "t-other-user".into();
        other.user_id = "u2".into();
        other.updated_at = at("2026-01-02T03:04:06Z");
        store.insert_task(&other).await.expect("insert");
        let mut newer = old_task.clone();
        newer.id = "t-new".into();
        newer.updated_at = at("2026-01-02T03:04:07Z");
        store.insert_task(&newer).await.expect("insert");

        let ids = |ts: Vec<Task>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
        let all = store
            .tasks_changed(Some("u1"), &ChangeCursor::default(), 10)
            .await
            .expect("read");
        assert_eq!(ids(all), ["t-old", "t-new"]);
        let since = ChangeCursor::of(&old_task);
        assert_eq!(since.updated_ms, 1_767_323_045_678);
        let after_old = store.tasks_changed(None, &since, 10).await.expect("read");
        assert_eq!(ids(after_old), ["t-other-user", "t-new"]);

        // A new version moves the old task to the end of the order.
        let mut replaced = old_task.clone();
        replaced.version = 2;
        replaced.updated_at = at("2026-01-02T03:04:08Z");
        assert!(store
            .replace_task(&replaced, 1, crate::domain::TaskStatus::Pending)
            .await
            .expect("replace"));
        let paged = store
            .tasks_changed(None, &ChangeCursor::from_ms(0), 2)
            .await
            .expect("read");
        assert_eq!(ids(paged), ["t-other-user", "t-new"]);
        let rest = store
            .tasks_changed(None, &ChangeCursor::from_ms(1_767_323_047_000), 2)
            .await
            .expect("read");
        assert_eq!(ids(rest), ["t-new", "t-old"]);
    }

    /// A data folder of an earlier version (images inside the main database) opens with every
    /// image readable, moved into the image database; opening it again changes nothing.
    #[tokio::test]
    async fn images_of_an_earlier_layout_are_moved_and_still_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let old = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            old.execute_batch(SCHEMA).expect("schema");
            old.execute_batch(IMAGES_SCHEMA)
                .expect("legacy images table");
            old.execute(
                "INSERT INTO images (id, task_id, content_type, data) VALUES ('i1', 't1', 'image/png', x'89504e47')",
                [],
            )
            .expect("insert");
        }
        for _ in 0..2 {
            let store =
                SqliteStore::open(dir.path(), SyncMode::Normal, BOUNDS).expect("open store");
            let img = store
                .get_image("i1")
                .await
                .expect("read")
                .expect("still there");
            assert_eq!(img.task_id, "t1");
            assert_eq!(img.content_type, "image/png");
            assert_eq!(&img.data[..], b"\x89PNG");
            drop(store);
            let main = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            let tables: i64 = main
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = 'images'",
                    [],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(tables, 0, "the main database keeps no images table");
        }
    }

    fn plan(c: &Connection, query: &str) -> Vec<String> {
        c.prepare(&format!("EXPLAIN QUERY PLAN {query}"))
            .expect("prepare")
            .query_map(params![0, 10], |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// The promoter's and the deadline sweep's queries read ranges of an index, never the
    /// table: their cost does not grow with the tasks stored (finished ones are not even in the
    /// deadline's ranges).
    #[test]
    fn the_sweeps_are_index_ranges() {
        let c = Connection::open_in_memory().expect("open");
        c.execute_batch(SCHEMA).expect("schema");
        add_deadline_column(&c).expect("deadline index");
        let due = plan(&c, super::super::queries::DUE_SCHEDULED);
        assert_eq!(
            due,
            ["SEARCH tasks USING INDEX tasks_due (status=? AND due_ms<?)"],
            "{due:?}"
        );
        let overdue = plan(&c, super::super::queries::PAST_DEADLINE);
        assert_eq!(
            overdue,
            ["SEARCH tasks USING INDEX tasks_deadline (status=? AND deadline_ms<?)"],
            "{overdue:?}"
        );
    }

    /// Every statement's plan with its parameters unbound (NULL): plans do not depend on values.
    fn plan_of(c: &Connection, query: &str) -> Vec<String> {
        let mut s = c
            .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
            .expect("prepare");
        let nulls = vec![rusqlite::types::Null; s.parameter_count()];
        s.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// A page of tasks for any filters is a range of one index in id order (no sort, no scan
    /// of other users' or other statuses' tasks), a user's count a range of that user's index
    /// entries, a user's usage a range of `usage_by_user`: what a request reads is bounded by
    /// the page or by the user's own tasks, however many tasks are stored.
    #[test]
    fn lists_and_counts_are_index_ranges() {
        use super::super::{lists, usage};
        let mut c = Connection::open_in_memory().expect("open");
        c.execute_batch(SCHEMA).expect("schema");
        add_deadline_column(&c).expect("deadline index");
        add_change_column(&mut c).expect("change index");
        add_status_counts(&mut c).expect("counts");
        let list = |user, status, before| plan_of(&c, &lists::list_sql(user, status, before));
        assert_eq!(
            list(true, false, false),
            ["SEARCH tasks USING INDEX tasks_by_user (user_id=?)"]
        );
        assert_eq!(
            list(true, false, true),
            ["SEARCH tasks USING INDEX tasks_by_user (user_id=? AND id<?)"]
        );
        assert_eq!(
            list(true, true, false),
            ["SEARCH tasks USING INDEX tasks_by_user_status (user_id=? AND status=?)"]
        );
        assert_eq!(
            list(true, true, true),
            ["SEARCH tasks USING INDEX tasks_by_user_status (user_id=? AND status=? AND id<?)"]
        );
        assert_eq!(
            list(false, true, true),
            ["SEARCH tasks USING INDEX tasks_by_status (status=? AND id<?)"]
        );
        assert_eq!(
            list(false, false, true),
            ["SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id<?)"]
        );
        assert_eq!(
            list(false, false, false),
            ["SCAN tasks USING INDEX sqlite_autoindex_tasks_1"],
            "newest first, stopping at the page's end"
        );
        assert_eq!(
            plan_of(&c, lists::COUNT_USER),
            ["SEARCH tasks USING COVERING INDEX tasks_by_user (user_id=?)"]
        );
        assert_eq!(
            plan_of(&c, lists::COUNT_USER_STATUS),
            ["SEARCH tasks USING COVERING INDEX tasks_by_user_status (user_id=? AND status=?)"]
        );
        let (today, _) = usage::query_sql(&crate::store::UsageQuery {
            user_id: Some("u".into()),
            from_day: Some("2026-12-03".into()),
            to_day: Some("2026-12-03".into()),
            ..Default::default()
        });
        assert_eq!(
            plan_of(&c, &today),
            [
                "SEARCH usage_events USING INDEX usage_by_user (user_id=? AND day>? AND day<?)",
                "USE TEMP B-TREE FOR GROUP BY"
            ]
        );
    }

    /// A data folder from before the counts by status opens with them filled from its tasks, then
    /// kept by every insert, status change and delete; the index they replace is gone, and
    /// opening it again changes nothing.
    #[tokio::test]
    async fn a_layout_without_counts_gains_them_filled() {
        use crate::domain::{ImageParams, Task, TaskStatus};
        let dir = tempfile::tempdir().expect("tempdir");
        let task = |id: &str, status: TaskStatus| {
            let mut t = Task::new_pending(
                "u1".into(),
                "m".into(),
                "p".into(),
                ImageParams::default(),
                None,
                chrono::Utc::now(),
            );
            t.id = id.into();
            t.status = status;
            t
        };
        {
            let old = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            old.execute_batch(&SCHEMA.replace(
                "tasks_by_user_status ON tasks (user_id, status, id)",
                "tasks_active ON tasks (user_id, status)",
            ))
            .expect("old schema");
            for (id, st) in [
                ("t1", TaskStatus::Completed),
                ("t2", TaskStatus::Completed),
                ("t3", TaskStatus::Pending),
            ] {
                old.execute(
                    "INSERT INTO tasks (id, user_id, status, version, doc) VALUES (?1, 'u1', ?2, 1, ?3)",
                    params![id, st.as_str(), to_json(&task(id, st)).expect("json")],
                )
                .expect("insert");
            }
        }
        for round in 0..2 {
            let store =
                SqliteStore::open(dir.path(), SyncMode::Normal, BOUNDS).expect("open store");
            let counts = store.status_counts().await.expect("counts");
            let pending = if round == 0 { 1 } else { 2 };
            assert_eq!(counts.get(&TaskStatus::Completed), Some(&2));
            assert_eq!(counts.get(&TaskStatus::Pending), Some(&pending));
            assert_eq!(
                store.count_tasks(None, None).await.expect("count"),
                2 + pending
            );
            if round == 0 {
                store
                    .insert_task(&task("t4", TaskStatus::Pending))
                    .await
                    .expect("insert");
            }
            drop(store);
            let main = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            let old_index: i64 = main
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = 'tasks_active'",
                    [],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(old_index, 0, "the (user_id, status) index is dropped");
        }
    }

    /// A data folder from before deadlines opens with the column added (empty) and its tasks
    /// still read; opening it again changes nothing.
    #[tokio::test]
    async fn a_layout_without_deadlines_gains_the_column() {
        use crate::domain::{ImageParams, Task};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = Task::new_pending(
            "u1".into(),
            "m".into(),
            "p".into(),
            ImageParams::default(),
            None,
            chrono::Utc::now(),
        );
        t.id = "t-old".into();
        {
            let old = Connection::open(dir.path().join(MAIN_FILE)).expect("open");
            old.execute_batch(
                "CREATE TABLE tasks (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, \
                 status TEXT NOT NULL, version INTEGER NOT NULL, due_ms INTEGER, \
                 lease_owner TEXT, lease_until_ms INTEGER, idem_key TEXT, doc TEXT NOT NULL, \
                 updated_ms INTEGER);",
            )
            .expect("old schema");
            old.execute(
                "INSERT INTO tasks (id, user_id, status, version, doc, updated_ms) \
                 VALUES (?1, 'u1', 'pending', 1, ?2, 0)",
                params![t.id, to_json(&t).expect("json")],
            )
            .expect("insert");
        }
        for _ in 0..2 {
            let store =
                SqliteStore::open(dir.path(), SyncMode::Normal, BOUNDS).expect("open store");
            assert_eq!(
                store.get_task("t-old").await.expect("read"),
                Some(t.clone())
            );
            let far = chrono::Utc::now() + chrono::Duration::days(365);
            assert!(store
                .past_deadline(far, 10)
                .await
                .expect("sweep")
                .is_empty());
        }
    }
}
