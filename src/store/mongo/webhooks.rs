//! The webhook outbox on MongoDB, without multi-document transactions (FerretDB has none): a
//! change's events travel inside the task document (`outbox`, flagged by `outbox_pending`),
//! written by the same replace as the change. A relay, run by every deliverer before it claims,
//! copies them into `webhook_events` (keyed by event id, so a copy made twice is one) and only
//! then empties the task's outbox, with a compare-and-set on the task's version: a crash at any
//! point leaves the event in one place or both, never in neither.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::{backend, decode, decode_task, encode, find_limit, is_duplicate, MongoStore};
use crate::domain::{Task, WebhookDelivery};
use crate::store::StoreError;

/// Tasks whose outboxes one relay pass copies.
const RELAY_BATCH: i64 = 100;

fn delivery_doc(d: &WebhookDelivery, claim: Option<&str>) -> Result<Document, StoreError> {
    let mut doc = encode(d)?;
    doc.insert("_id", d.id.clone());
    doc.insert(
        "next_ms",
        d.next_attempt_at
            .map_or(Bson::Null, |t| Bson::Int64(t.timestamp_millis())),
    );
    doc.insert(
        "claim",
        claim.map_or(Bson::Null, |c| Bson::String(c.into())),
    );
    Ok(doc)
}

impl MongoStore {
    pub(super) async fn create_webhook_indexes(&self) -> Result<(), StoreError> {
        let events = self.db.collection::<Document>("webhook_events");
        for keys in [doc! {"state": 1, "next_ms": 1}, doc! {"task_id": 1}] {
            events
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(backend)?;
        }
        self.tasks
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"outbox_pending": 1})
                    .options(IndexOptions::builder().build())
                    .build(),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn webhook_events(&self) -> mongodb::Collection<Document> {
        self.db.collection("webhook_events")
    }

    /// Copies the events of one task's outbox into `webhook_events`, then empties the outbox
    /// unless the task changed meanwhile (its next version carries them again, harmlessly).
    pub(super) async fn relay_outbox(&self, task: &Task) -> Result<(), StoreError> {
        for d in &task.outbox {
            match self
                .webhook_events()
                .insert_one(delivery_doc(d, None)?)
                .await
            {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        let held = self.lock(&task.id).await?;
        let r = self
            .tasks
            .update_one(
                doc! {"_id": &task.id, "version": task.version},
                doc! {"$set": {"outbox": [], "outbox_pending": false}},
            )
            .await
            .map_err(backend);
        self.unlock(held).await;
        r.map(|_| ())
    }

    async fn relay_outboxes(&self) -> Result<(), StoreError> {
        let docs: Vec<Document> = self
            .tasks
            .find(doc! {"outbox_pending": true})
            .limit(RELAY_BATCH)
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        for d in docs {
            self.relay_outbox(&decode_task(d)?).await?;
        }
        Ok(())
    }

    pub(super) async fn mongo_setting_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<(String, bool), StoreError> {
        let settings = self.db.collection::<Document>("settings");
        let inserted = match settings
            .insert_one(doc! {"_id": name, "value": candidate})
            .await
        {
            Ok(_) => true,
            Err(e) if is_duplicate(&e) => false,
            Err(e) => return Err(backend(e)),
        };
        let stored = settings
            .find_one(doc! {"_id": name})
            .await
            .map_err(backend)?
            .ok_or_else(|| StoreError::Backend(format!("setting {name} vanished")))?;
        let value = stored
            .get_str("value")
            .map_err(|e| StoreError::Backend(format!("setting {name}: {e}")))?;
        Ok((value.to_string(), inserted))
    }

    pub(super) async fn mongo_claim_webhooks(
        &self,
        claim: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.relay_outboxes().await?;
        let now_ms = now.timestamp_millis();
        let due: Vec<Document> = self
            .webhook_events()
            .find(doc! {"state": "pending", "next_ms": {"$lte": now_ms}})
            .sort(doc! {"next_ms": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        let mut claimed = Vec::with_capacity(due.len());
        for d in due {
            let id = d
                .get_str("_id")
                .map_err(|e| StoreError::Backend(format!("webhook event id: {e}")))?
                .to_string();
            // On FerretDB a filtered update is not atomic: the lock makes the claim so.
            let held = self.lock(&id).await?;
            let r = self
                .webhook_events()
                .update_one(
                    doc! {"_id": &id, "state": "pending", "next_ms": {"$lte": now_ms}},
                    doc! {"$set": {"next_ms": lease_until.timestamp_millis(), "claim": claim}},
                )
                .await
                .map_err(backend);
            self.unlock(held).await;
            if r?.modified_count == 1 {
                claimed.push(decode(d)?);
            }
        }
        Ok(claimed)
    }

    pub(super) async fn mongo_renew_webhook(
        &self,
        id: &str,
        claim: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let held = self.lock(id).await?;
        let r = self
            .webhook_events()
            .update_one(
                doc! {"_id": id, "claim": claim, "state": "pending"},
                doc! {"$set": {"next_ms": lease_until.timestamp_millis()}},
            )
            .await
            .map_err(backend);
        self.unlock(held).await;
        Ok(r?.matched_count == 1)
    }

    pub(super) async fn mongo_finish_webhook(
        &self,
        d: &WebhookDelivery,
        claim: &str,
    ) -> Result<bool, StoreError> {
        let new = delivery_doc(d, None)?;
        let held = self.lock(&d.id).await?;
        let r = self
            .webhook_events()
            .replace_one(doc! {"_id": &d.id, "claim": claim}, new)
            .await
            .map_err(backend);
        self.unlock(held).await;
        Ok(r?.matched_count == 1)
    }

    pub(super) async fn mongo_webhook_deliveries(
        &self,
        task_id: &str,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        // Events still in the task's outbox are not lost, only not yet copied: copy them first.
        if let Some(t) = self
            .tasks
            .find_one(doc! {"_id": task_id})
            .await
            .map_err(backend)?
        {
            let t = decode_task(t)?;
            if !t.outbox.is_empty() {
                self.relay_outbox(&t).await?;
            }
        }
        let docs: Vec<Document> = self
            .webhook_events()
            .find(doc! {"task_id": task_id})
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        let mut all: Vec<WebhookDelivery> =
            docs.into_iter().map(decode).collect::<Result<_, _>>()?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    pub(super) async fn mongo_redeliver_webhook(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let held = self.lock(id).await?;
        let result = async {
            let Some(found) = self
                .webhook_events()
                .find_one(doc! {"_id": id})
                .await
                .map_err(backend)?
            else {
                return Ok(None);
            };
            let in_flight = !matches!(found.get("claim"), None | Some(Bson::Null))
                && found
                    .get_i64("next_ms")
                    .is_ok_and(|n| n > now.timestamp_millis());
            let mut d: WebhookDelivery = decode(found)?;
            if in_flight {
                // Being attempted under a live claim: that attempt records its outcome.
                return Ok(Some(d));
            }
            d.redeliver(now);
            self.webhook_events()
                .replace_one(doc! {"_id": id}, delivery_doc(&d, None)?)
                .await
                .map_err(backend)?;
            Ok(Some(d))
        }
        .await;
        self.unlock(held).await;
        result
    }
}
