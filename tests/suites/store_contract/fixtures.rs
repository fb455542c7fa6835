//! What every contract test builds on: times and ids chosen in advance, records, and short
//! forms of the store calls whose failure is not what a test is about.

pub use std::collections::{HashMap, HashSet};
pub use std::sync::Arc;

pub use chrono::{DateTime, TimeZone, Utc};
pub use serde_json::json;

pub use volcengine_ai_server::domain::{
    ApiKey, ImageParams, ProviderImage, StoredImage, Task, TaskError, TaskResult, TaskStatus,
    UnkeptImages, User,
};
pub use volcengine_ai_server::store::{
    ChangeCursor, ImageBlob, InsertOutcome, Store, StoreError, TaskQuery,
};

pub type S = Arc<dyn Store>;

/// 2026-01-01T00:00:00Z; every time in these tests is an offset from it.
pub const BASE_MS: i64 = 1_767_225_600_000;

pub fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(BASE_MS + ms)
        .single()
        .expect("valid time")
}

/// A new UUIDv7 made at `at(ms)` (random in its other bits, so two calls never give the same id):
/// ids with a larger `ms` sort after, as real ids created later do.
pub fn id_at(ms: i64) -> String {
    let t = BASE_MS + ms;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (t / 1000) as u64,
        ((t % 1000) * 1_000_000) as u32,
    );
    uuid::Uuid::new_v7(ts).to_string()
}

pub fn user(id: &str, email: &str) -> User {
    User {
        id: id.to_string(),
        email: email.to_string(),
        name: format!("User {email}"),
        created_at: at(0),
        updated_at: at(0),
    }
}

/// A pending task created (and last changed) at `at(ms)`, with an id of that time.
pub fn task_at(ms: i64, user_id: &str) -> Task {
    let mut t = Task::new_pending(
        user_id.to_string(),
        "doubao-seedream-4-0-250828".into(),
        format!("a cat, variant {ms}"),
        ImageParams {
            size: "1024x1024".into(),
            n: 1,
            ..ImageParams::default()
        },
        None,
        at(ms),
    );
    t.id = id_at(ms);
    t
}

pub fn keyed(mut t: Task, key: &str) -> Task {
    t.idempotency_key = Some(key.to_string());
    t.request_hash = Some(format!("hash-of-{}", t.id));
    t
}

pub fn api_key(ms: i64, user_id: &str, hash: &str) -> ApiKey {
    ApiKey {
        id: id_at(ms),
        user_id: user_id.to_string(),
        name: format!("key {ms}"),
        prefix: "vas_01234567".into(),
        hash: hash.to_string(),
        created_at: at(ms),
        last_used_at: None,
        revoked_at: None,
    }
}

pub fn image(id: &str, task_id: &str, data: Vec<u8>) -> ImageBlob {
    ImageBlob {
        id: id.to_string(),
        task_id: task_id.to_string(),
        content_type: "image/png".into(),
        data: data.into(),
    }
}

/// Bytes that are not all alike, so a store that truncates, pads or reorders chunks shows it.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

pub fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

pub async fn insert(s: &S, t: &Task) {
    match s.insert_task(t).await.expect("insert task") {
        InsertOutcome::Inserted => {}
        InsertOutcome::Existing(e) => panic!("{} was not inserted: {} holds its key", t.id, e.id),
    }
}

pub async fn replace(s: &S, new: &Task, old: &Task) {
    assert!(
        s.replace_task(new, old.version, old.status)
            .await
            .expect("replace"),
        "replacing {} v{} {} lost its compare-and-set",
        old.id,
        old.version,
        old.status
    );
}

pub async fn stored(s: &S, id: &str) -> Task {
    s.get_task(id)
        .await
        .expect("get task")
        .unwrap_or_else(|| panic!("task {id} is not stored"))
}

pub async fn add_user(s: &S, id: &str, email: &str) -> User {
    let u = user(id, email);
    s.insert_user(&u).await.expect("insert user");
    u
}

pub fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    match r {
        Err(StoreError::Conflict(_)) => true,
        other => panic!("expected Conflict, got {other:?}"),
    }
}
