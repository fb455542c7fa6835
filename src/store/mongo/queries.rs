//! The `Store` methods over MongoDB: users, tasks, idempotency keys, API keys and GridFS images.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{AsyncReadExt, AsyncWriteExt, TryStreamExt};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::ErrorKind;
use tokio::sync::oneshot;

use super::inserts::PendingInsert;
use super::{
    backend, collect, collect_tasks, decode, decode_task, encode, find_limit, idem_id,
    is_duplicate, task_doc, user_doc, MongoStore,
};
use crate::domain::{ApiKey, Task, TaskStatus, User, WebhookDelivery};
use crate::store::{
    ByteStream, ChangeCursor, ImageBlob, InsertOutcome, Store, StoreError, TaskQuery, UsageQuery,
    UsageRow, VideoFile,
};

/// The statuses of unfinished tasks.
const ACTIVE: [&str; 3] = ["scheduled", "pending", "processing"];

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        match self.users.insert_one(user_doc(user)?).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict(
                "a user with this email already exists".into(),
            )),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.users
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.users
            .find_one(doc! {"email_key": User::email_key(email)})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn get_users(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let cursor = self
            .users
            .find(doc! {"_id": {"$in": ids}})
            .await
            .map_err(backend)?;
        collect(cursor).await
    }

    async fn list_users(
        &self,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after_id {
            Some(a) => doc! {"_id": {"$gt": a}},
            None => doc! {},
        };
        let cursor = self
            .users
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect(cursor).await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.users.count_documents(doc! {}).await.map_err(backend)
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let taken = self
            .users
            .find_one(doc! {"email_key": User::email_key(&user.email), "_id": {"$ne": &user.id}})
            .await
            .map_err(backend)?;
        if taken.is_some() {
            // A user that is gone is not updated, whoever has the email now (as in SQLite).
            let exists = self
                .users
                .find_one(doc! {"_id": &user.id})
                .projection(doc! {"_id": 1})
                .await
                .map_err(backend)?
                .is_some();
            if !exists {
                return Ok(false);
            }
            return Err(StoreError::Conflict(
                "a user with this email already exists".into(),
            ));
        }
        match self
            .users
            .replace_one(doc! {"_id": &user.id}, user_doc(user)?)
            .await
        {
            Ok(r) => Ok(r.matched_count == 1),
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict(
                "a user with this email already exists".into(),
            )),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let task_ids: Vec<String> = self
            .tasks
            .find(doc! {"user_id": id})
            .projection(doc! {"_id": 1})
            .await
            .map_err(backend)?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(backend)?
            .into_iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        self.delete_images_of(&task_ids).await?;
        self.tasks
            .delete_many(doc! {"user_id": id})
            .await
            .map_err(backend)?;
        self.idempotency
            .delete_many(doc! {"user_id": id})
            .await
            .map_err(backend)?;
        self.api_keys
            .delete_many(doc! {"user_id": id})
            .await
            .map_err(backend)?;
        let r = self
            .users
            .delete_one(doc! {"_id": id})
            .await
            .map_err(backend)?;
        Ok(r.deleted_count == 1)
    }

    async fn insert_task(&self, task: &Task) -> Result<InsertOutcome, StoreError> {
        let claim_id = task
            .idempotency_key
            .as_ref()
            .map(|key| idem_id(&task.user_id, key));
        if let Some(claim_id) = &claim_id {
            if let Some(existing) = self.claim_key(claim_id, task).await? {
                return Ok(InsertOutcome::Existing(Box::new(existing)));
            }
        }
        let (done, outcome) = oneshot::channel();
        let queued = PendingInsert {
            doc: task_doc(task)?,
            done,
        };
        let gone = || StoreError::Unavailable("the store is shutting down".into());
        self.inserts.send(queued).await.map_err(|_| gone())?;
        let stored = outcome.await.map_err(|_| gone())?;
        if let (Err(StoreError::Conflict(_)), Some(claim_id)) = (&stored, &claim_id) {
            // Refused (its id is taken), so the key must not stay claimed for it: the next task
            // under the key would be answered with whichever task has that id.
            self.idempotency
                .delete_one(doc! {"_id": claim_id, "task_id": &task.id})
                .await
                .map_err(backend)?;
        }
        stored?;
        Ok(InsertOutcome::Inserted)
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.tasks
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .map(decode_task)
            .transpose()
    }

    async fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {};
        if let Some(u) = &q.user_id {
            filter.insert("user_id", u);
        }
        if let Some(s) = q.status {
            filter.insert("status", s.as_str());
        }
        if let Some(b) = &q.before_id {
            filter.insert("_id", doc! {"$lt": b});
        }
        let cursor = self
            .tasks
            .find(filter)
            .sort(doc! {"_id": -1})
            .skip(q.offset as u64)
            .limit(find_limit(q.limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn tasks_changed(
        &self,
        user_id: Option<&str>,
        after: &ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {"$or": [
            {"updated_ms": {"$gt": after.updated_ms}},
            {"updated_ms": after.updated_ms, "_id": {"$gt": &after.id}},
        ]};
        if let Some(u) = user_id {
            filter.insert("user_id", u);
        }
        let cursor = self
            .tasks
            .find(filter)
            .sort(doc! {"updated_ms": 1, "_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn count_tasks(
        &self,
        user_id: Option<&str>,
        status: Option<TaskStatus>,
    ) -> Result<u64, StoreError> {
        let mut filter = doc! {};
        if let Some(u) = user_id {
            filter.insert("user_id", u);
        }
        if let Some(s) = status {
            filter.insert("status", s.as_str());
        }
        self.tasks.count_documents(filter).await.map_err(backend)
    }

    async fn count_active_tasks(&self, user_id: &str) -> Result<u64, StoreError> {
        self.tasks
            .count_documents(doc! {"user_id": user_id, "status": {"$in": ACTIVE.to_vec()}})
            .await
            .map_err(backend)
    }

    async fn active_task_images(&self, user_id: &str) -> Result<u64, StoreError> {
        // Summed here, not with `$group`: FerretDB's `$sum` of a field answers 0. A user's
        // unfinished tasks are bounded by the in-flight quota.
        let mut cursor = self
            .tasks
            .find(doc! {"user_id": user_id, "status": {"$in": ACTIVE.to_vec()}})
            .projection(doc! {"params.n": 1})
            .await
            .map_err(backend)?;
        let mut images = 0u64;
        while let Some(d) = cursor.try_next().await.map_err(backend)? {
            let n = d
                .get_document("params")
                .ok()
                .and_then(|p| p.get("n"))
                .and_then(|n| n.as_i64().or_else(|| n.as_i32().map(i64::from)))
                .unwrap_or(1);
            images += u64::try_from(n).unwrap_or(0);
        }
        Ok(images)
    }

    async fn release_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
        task_id: &str,
    ) -> Result<(), StoreError> {
        self.idempotency
            .delete_one(doc! {"_id": idem_id(user_id, key), "task_id": task_id})
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.read_usage(query).await
    }

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut d = encode(key)?;
        d.insert("_id", key.id.clone());
        match self.api_keys.insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => {
                Err(StoreError::Conflict("API key already exists".into()))
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys
            .find_one(doc! {"hash": hash})
            .await
            .map_err(backend)?
            .map(decode)
            .transpose()
    }

    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let cursor = self
            .api_keys
            .find(doc! {"user_id": user_id})
            .sort(doc! {"_id": 1})
            .await
            .map_err(backend)?;
        collect(cursor).await
    }

    async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let r = self
            .api_keys
            .update_one(
                doc! {"_id": id, "revoked_at": Bson::Null},
                doc! {"$set": {"revoked_at": crate::domain::rfc3339(at)}},
            )
            .await
            .map_err(backend)?;
        if r.matched_count == 1 {
            return Ok(true);
        }
        Ok(self.get_api_key(id).await?.is_some())
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.api_keys
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"last_used_at": crate::domain::rfc3339(at)}},
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn replace_task(
        &self,
        task: &Task,
        expected_version: i64,
        expected_status: TaskStatus,
    ) -> Result<bool, StoreError> {
        let filter =
            doc! {"_id": &task.id, "version": expected_version, "status": expected_status.as_str()};
        self.replace_where(task, filter, expected_status).await
    }

    async fn take_expired(
        &self,
        task: &Task,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let filter = doc! {
            "_id": &task.id,
            "version": expected_version,
            "status": TaskStatus::Processing.as_str(),
            "lease_until_ms": {"$lt": now.timestamp_millis()},
        };
        self.replace_where(task, filter, TaskStatus::Processing)
            .await
    }

    async fn extend_lease(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let until_bson =
            bson::to_bson(&until).map_err(|e| StoreError::Backend(format!("encode: {e}")))?;
        let held = self.lock(id).await?;
        let r = self
            .tasks
            .update_one(
                doc! {"_id": id, "status": "processing", "lease_owner": owner},
                doc! {"$set": {"lease_until": until_bson, "lease_until_ms": until.timestamp_millis()}},
            )
            .await
            .map_err(backend);
        self.unlock(held).await;
        Ok(r?.matched_count == 1)
    }

    async fn due_tasks(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now.timestamp_millis();
        let cursor = self
            .tasks
            .find(doc! {"$or": [
                {"status": "pending", "due_ms": {"$lte": now}},
                {"status": "processing", "lease_until_ms": {"$lt": now}},
            ]})
            .sort(doc! {"_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn due_scheduled(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        // A range of the (status, due_ms) index.
        let cursor = self
            .tasks
            .find(doc! {"status": "scheduled", "due_ms": {"$lte": now.timestamp_millis()}})
            .sort(doc! {"due_ms": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn past_deadline(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        // Ranges of the (status, deadline_ms) index, one per unfinished status.
        let cursor = self
            .tasks
            .find(doc! {
                "status": {"$in": ["scheduled", "pending", "processing"]},
                "deadline_ms": {"$lte": now.timestamp_millis()},
            })
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn oldest_pending(&self) -> Result<Option<Task>, StoreError> {
        self.tasks
            .find_one(doc! {"status": "pending"})
            .sort(doc! {"_id": 1})
            .await
            .map_err(backend)?
            .map(decode_task)
            .transpose()
    }

    async fn pending_seq_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        // Both ends of the (status, queue_seq) index's pending range.
        let mut ends = Vec::with_capacity(2);
        for dir in [1, -1] {
            let found = self
                .tasks
                .find_one(doc! {"status": "pending", "queue_seq": {"$gte": 0_i64}})
                .sort(doc! {"queue_seq": dir})
                .projection(doc! {"queue_seq": 1})
                .await
                .map_err(backend)?;
            match found.and_then(|d| d.get("queue_seq").cloned()) {
                Some(Bson::Int64(n)) => ends.push(n.max(0) as u64),
                Some(Bson::Int32(n)) => ends.push(n.max(0) as u64),
                _ => return Ok(None),
            }
        }
        Ok(Some((ends[0], ends[1])))
    }

    async fn processing_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cursor = self
            .tasks
            .find(doc! {"status": "processing"})
            .sort(doc! {"_id": 1})
            .limit(find_limit(limit))
            .await
            .map_err(backend)?;
        collect_tasks(cursor).await
    }

    async fn delete_task(&self, id: &str) -> Result<bool, StoreError> {
        // A completion event still in the task's outbox outlives the task.
        if let Some(d) = self
            .tasks
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
        {
            let t = decode_task(d)?;
            if !t.outbox.is_empty() {
                self.relay_outbox(&t).await?;
            }
        }
        self.delete_images_of(&[id.to_string()]).await?;
        self.idempotency
            .delete_many(doc! {"task_id": id})
            .await
            .map_err(backend)?;
        let r = self
            .tasks
            .delete_one(doc! {"_id": id})
            .await
            .map_err(backend)?;
        Ok(r.deleted_count == 1)
    }

    async fn status_counts(&self) -> Result<HashMap<TaskStatus, u64>, StoreError> {
        let mut out = HashMap::new();
        // One count per status keeps to the commands every compatible server has.
        for st in TaskStatus::ALL {
            let n = self
                .tasks
                .count_documents(doc! {"status": st.as_str()})
                .await
                .map_err(backend)?;
            if n > 0 {
                out.insert(st, n);
            }
        }
        Ok(out)
    }

    async fn setting_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<(String, bool), StoreError> {
        self.mongo_setting_or_insert(name, candidate).await
    }

    async fn claim_webhooks(
        &self,
        claim: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.mongo_claim_webhooks(claim, now, lease_until, limit)
            .await
    }

    async fn renew_webhook(
        &self,
        id: &str,
        claim: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.mongo_renew_webhook(id, claim, lease_until).await
    }

    async fn finish_webhook(&self, d: &WebhookDelivery, claim: &str) -> Result<bool, StoreError> {
        self.mongo_finish_webhook(d, claim).await
    }

    async fn webhook_deliveries(&self, task_id: &str) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.mongo_webhook_deliveries(task_id).await
    }

    async fn redeliver_webhook(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        self.mongo_redeliver_webhook(id, now).await
    }

    async fn put_image(&self, image: &ImageBlob) -> Result<(), StoreError> {
        // An id put again holds the new bytes, as in the embedded store (so a retried put
        // succeeds). GridFS itself refuses a second file under an id only when the upload closes,
        // and its clean-up then deletes every chunk under the id: the first image's too.
        let present = self
            .images
            .find_one(doc! {"_id": &image.id})
            .await
            .map_err(backend)?
            .is_some();
        if present {
            self.delete_images(std::slice::from_ref(&image.id)).await?;
        }
        let mut up = self
            .images
            .open_upload_stream(format!("{}.img", image.id))
            .id(Bson::String(image.id.clone()))
            .metadata(doc! {"task_id": &image.task_id, "content_type": &image.content_type})
            .await
            .map_err(backend)?;
        up.write_all(&image.data)
            .await
            .map_err(|e| StoreError::Unavailable(format!("GridFS write: {e}")))?;
        up.close()
            .await
            .map_err(|e| StoreError::Unavailable(format!("GridFS close: {e}")))?;
        Ok(())
    }

    async fn get_image(&self, id: &str) -> Result<Option<ImageBlob>, StoreError> {
        let Some(file) = self
            .images
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let meta = file.metadata.clone().unwrap_or_default();
        let mut stream = self
            .images
            .open_download_stream(Bson::String(id.to_string()))
            .await
            .map_err(backend)?;
        let mut data = Vec::with_capacity(file.length as usize);
        stream
            .read_to_end(&mut data)
            .await
            .map_err(|e| StoreError::Unavailable(format!("GridFS read: {e}")))?;
        Ok(Some(ImageBlob {
            id: id.to_string(),
            task_id: meta.get_str("task_id").unwrap_or_default().to_string(),
            content_type: meta
                .get_str("content_type")
                .unwrap_or("application/octet-stream")
                .to_string(),
            data: data.into(),
        }))
    }

    async fn delete_images(&self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            match self.images.delete(Bson::String(id.clone())).await {
                Ok(()) => {}
                // Already gone is what we wanted.
                Err(e) if matches!(e.kind.as_ref(), ErrorKind::GridFs(_)) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }

    async fn put_video(
        &self,
        id: &str,
        task_id: &str,
        content_type: &str,
        body: ByteStream,
    ) -> Result<u64, StoreError> {
        self.put_video_file(id, task_id, content_type, body).await
    }

    async fn video_file(&self, id: &str) -> Result<Option<VideoFile>, StoreError> {
        self.video_file_info(id).await
    }

    async fn read_video(&self, id: &str, start: u64, len: u64) -> Result<ByteStream, StoreError> {
        self.read_video_range(id, start, len).await
    }

    async fn delete_videos(&self, ids: &[String]) -> Result<(), StoreError> {
        self.delete_video_files(ids).await
    }
}

impl MongoStore {
    /// Replaces the task where `filter` (which names its status) still matches, under the task's
    /// write lock, and records the usage the change settles.
    async fn replace_where(
        &self,
        task: &Task,
        filter: Document,
        expected_status: TaskStatus,
    ) -> Result<bool, StoreError> {
        let new = task_doc(task)?;
        let held = self.lock(&task.id).await?;
        let r = self.tasks.replace_one(filter, new).await.map_err(backend);
        // Under the lock still: a later write of the task waits for its usage.
        let replaced = match r {
            Ok(r) if r.matched_count == 1 => {
                self.record_usage(task, expected_status).await;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        self.unlock(held).await;
        replaced
    }
}
