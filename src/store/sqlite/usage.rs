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

/// The usage statement for the filters set, naming only those (see `lists.rs` for why: with
/// `?1 IS NULL OR user_id = ?1` SQLite read the whole table, and the daily image quota runs this
/// on every submit). A user's query is a range of `usage_by_user`.
pub(super) fn query_sql(q: &UsageQuery) -> (String, Vec<String>) {
    let mut conds = Vec::new();
    let mut values = Vec::new();
    for (cond, value) in [
        ("user_id = ?", &q.user_id),
        ("api_key_id = ?", &q.api_key_id),
        ("day >= ?", &q.from_day),
        ("day <= ?", &q.to_day),
    ] {
        if let Some(v) = value {
            values.push(v.clone());
            conds.push(format!("{cond}{}", values.len()));
        }
    }
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (
        format!(
            "SELECT api_key_id, model, day, status, COUNT(*), SUM(images) FROM usage_events\
             {filter} GROUP BY api_key_id, model, day, status"
        ),
        values,
    )
}

pub(super) fn query(c: &Connection, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let (sql, values) = query_sql(q);
    let mut stmt = c.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
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
