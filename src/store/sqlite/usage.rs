//! Usage of terminal tasks: one row per task in `usage_events`, written by `replace_task` in
//! the savepoint of the transition that made the task terminal, so the two commit together.

use rusqlite::{params, Connection};

use super::backend;
use crate::domain::{Task, TaskStatus};
use crate::store::{usage_day, StoreError, UsageQuery, UsageRow};

/// Records `t`'s usage when `expected` → `t.status` made it terminal. Keyed by task id: a task
/// that ends again after a user's retry replaces its record (its `generated_images` add up over
/// every run), so it still counts once.
pub(super) fn record(c: &Connection, t: &Task, expected: TaskStatus) -> Result<(), StoreError> {
    if !t.status.is_terminal() || expected.is_terminal() {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT OR REPLACE INTO usage_events \
         (task_id, user_id, api_key_id, model, day, status, images) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            t.id,
            t.user_id,
            t.api_key_id,
            t.model,
            usage_day(t),
            t.status.as_str(),
            t.generated_images
        ])
    })
    .map_err(backend)?;
    Ok(())
}

pub(super) fn query(c: &Connection, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT api_key_id, model, day, status, COUNT(*), SUM(images) FROM usage_events \
             WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR api_key_id = ?2) \
             AND (?3 IS NULL OR day >= ?3) AND (?4 IS NULL OR day <= ?4) \
             GROUP BY api_key_id, model, day, status",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(
            params![q.user_id, q.api_key_id, q.from_day, q.to_day],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (api_key_id, model, day, status, tasks, images) = row.map_err(backend)?;
        let status = TaskStatus::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("unknown usage status {status}")))?;
        out.push(UsageRow {
            api_key_id,
            model,
            day,
            status,
            tasks: tasks.max(0) as u64,
            images: images.max(0) as u64,
        });
    }
    Ok(out)
}
