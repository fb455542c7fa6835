//! The webhook outbox and delivery log (`webhook_events`) and the settings table: events are
//! inserted by `replace_task` in the transaction of the change that made them; deliverers claim
//! due ones by moving their `next_ms` to the claim's end.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{backend, collect_docs, from_json, ms, to_json, SqliteStore};
use crate::domain::{DeliveryState, Task, WebhookDelivery};
use crate::store::StoreError;

pub(super) const WEBHOOK_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_events (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    next_ms INTEGER,
    claim TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (state, next_ms);
CREATE INDEX IF NOT EXISTS webhook_events_by_task ON webhook_events (task_id);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The task as its row keeps it: its outbox goes to `webhook_events` instead.
pub(super) fn without_outbox(t: &Task) -> std::borrow::Cow<'_, Task> {
    if t.outbox.is_empty() {
        std::borrow::Cow::Borrowed(t)
    } else {
        let mut plain = t.clone();
        plain.outbox.clear();
        std::borrow::Cow::Owned(plain)
    }
}

/// Inserts the task's outbox events; one already there (written by an earlier change that the
/// caller's copy of the task still carries) is left as it is.
pub(super) fn write_outbox(c: &Connection, t: &Task) -> Result<(), StoreError> {
    for d in &t.outbox {
        c.prepare_cached(
            "INSERT OR IGNORE INTO webhook_events (id, task_id, state, next_ms, claim, doc) \
             VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                d.id,
                d.task_id,
                d.state.as_str(),
                ms(d.next_attempt_at),
                to_json(d).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
            ])
        })
        .map_err(backend)?;
    }
    Ok(())
}

impl SqliteStore {
    pub(super) async fn sqlite_setting_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<(String, bool), StoreError> {
        let (name, candidate) = (name.to_string(), candidate.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)",
                    params![name, candidate],
                )
                .map_err(backend)?;
            let value: String = c
                .query_row("SELECT value FROM settings WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .map_err(backend)?;
            Ok((value, n == 1))
        })
        .await
    }

    pub(super) async fn sqlite_claim_webhooks(
        &self,
        claim: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let now_ms = now.timestamp_millis();
        // A read first: an idle deliverer polls often, and a write transaction each time would
        // queue behind the task writes for nothing.
        let any = self.lookup(|c| {
            c.prepare_cached(
                "SELECT 1 FROM webhook_events WHERE state = 'pending' AND next_ms <= ?1 LIMIT 1",
            )
            .and_then(|mut s| s.query_row([now_ms], |_| Ok(())).optional())
            .map_err(backend)
        })?;
        if limit == 0 || any.is_none() {
            return Ok(Vec::new());
        }
        let (claim, until) = (claim.to_string(), lease_until.timestamp_millis());
        self.write(move |c| {
            let mut s = c
                .prepare_cached(
                    "UPDATE webhook_events SET next_ms = ?2, claim = ?3 WHERE id IN \
                     (SELECT id FROM webhook_events WHERE state = 'pending' AND next_ms <= ?1 \
                      ORDER BY next_ms LIMIT ?4) RETURNING doc",
                )
                .map_err(backend)?;
            collect_docs(&mut s, params![now_ms, until, claim, limit as i64])
        })
        .await
    }

    pub(super) async fn sqlite_renew_webhook(
        &self,
        id: &str,
        claim: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (id, claim, until) = (
            id.to_string(),
            claim.to_string(),
            lease_until.timestamp_millis(),
        );
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE webhook_events SET next_ms = ?3 \
                     WHERE id = ?1 AND claim = ?2 AND state = 'pending'",
                )
                .and_then(|mut s| s.execute(params![id, claim, until]))
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn sqlite_finish_webhook(
        &self,
        d: &WebhookDelivery,
        claim: &str,
    ) -> Result<bool, StoreError> {
        let doc = to_json(d)?;
        let (id, state, next) = (d.id.clone(), d.state.as_str(), ms(d.next_attempt_at));
        let claim = claim.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE webhook_events SET state = ?2, next_ms = ?3, claim = NULL, doc = ?4 \
                     WHERE id = ?1 AND claim = ?5",
                )
                .and_then(|mut s| s.execute(params![id, state, next, doc, claim]))
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn sqlite_webhook_deliveries(
        &self,
        task_id: &str,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let task_id = task_id.to_string();
        let mut all: Vec<WebhookDelivery> = self
            .read(move |c| {
                let mut s = c
                    .prepare_cached("SELECT doc FROM webhook_events WHERE task_id = ?1")
                    .map_err(backend)?;
                collect_docs(&mut s, [task_id])
            })
            .await?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    pub(super) async fn sqlite_redeliver_webhook(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            let row: Option<(String, bool)> = c
                .prepare_cached(
                    "SELECT doc, claim IS NOT NULL AND next_ms > ?2 FROM webhook_events \
                     WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row(params![&id, now.timestamp_millis()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                })
                .map_err(backend)?;
            let Some((doc, in_flight)) = row else {
                return Ok(None);
            };
            let mut d: WebhookDelivery = from_json(&doc)?;
            if in_flight {
                // Being attempted under a live claim: that attempt records its outcome.
                return Ok(Some(d));
            }
            d.redeliver(now);
            c.prepare_cached(
                "UPDATE webhook_events SET state = ?2, next_ms = ?3, claim = NULL, doc = ?4 \
                 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    DeliveryState::Pending.as_str(),
                    ms(d.next_attempt_at),
                    to_json(&d)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
                ])
            })
            .map_err(backend)?;
            Ok(Some(d))
        })
        .await
    }
}
