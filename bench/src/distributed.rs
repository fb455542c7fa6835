//! The backend floor of the distributed submit: what a submit must do in MongoDB and Redis (the
//! task insert with the store's write concern, the enqueue script), done by a minimal client at
//! the same concurrency, in the same run as the service is measured.

use std::time::Duration;

use mongodb::bson::{self, Bson, Document};
use mongodb::options::{ClientOptions, WriteConcern};

use crate::harness::{drive, floor_task, Measure};

async fn mongo_client(url: &str) -> Result<mongodb::Client, String> {
    let mut opts = ClientOptions::parse(url)
        .await
        .map_err(|e| format!("--mongo-url: {e}"))?;
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(opts).map_err(|e| e.to_string())
}

/// One task insert (majority write concern, as the store's default) and one enqueue (the queue's
/// own script), per operation, `n` times over `c` concurrent loops.
pub async fn backend_floor(
    mongo_url: &str,
    redis_url: &str,
    namespace: &str,
    user: &str,
    n: usize,
    c: usize,
) -> Result<Measure, String> {
    let mongo = mongo_client(mongo_url).await?;
    let wc_tasks = mongo
        .database_with_options(
            namespace,
            mongodb::options::DatabaseOptions::builder()
                .write_concern(WriteConcern::majority())
                .build(),
        )
        .collection::<Document>("floor_tasks");
    let redis = redis::Client::open(redis_url)
        .map_err(|e| format!("--redis-url: {e}"))?
        .get_connection_manager()
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    let script = redis::Script::new(volcengine_ai_server::queue::redis::ENQUEUE);
    let (stream, waiting) = (
        format!("{namespace}:floor:queue"),
        format!("{namespace}:floor:queue:waiting"),
    );
    let user = user.to_string();
    drive(BACKEND_FLOOR, n, c, move |i| {
        let (coll, mut redis, script) = (wc_tasks.clone(), redis.clone(), script.clone());
        let (stream, waiting) = (stream.clone(), waiting.clone());
        let task = floor_task(&user, &format!("backend floor {i}"));
        async move {
            let mut doc = bson::to_document(&task).map_err(|e| e.to_string())?;
            doc.insert("_id", task.id.clone());
            doc.insert("due_ms", Bson::Int64(0));
            doc.insert("lease_until_ms", Bson::Null);
            coll.insert_one(doc).await.map_err(|e| e.to_string())?;
            script
                .key(&stream)
                .key(&waiting)
                .arg(&task.id)
                .invoke_async::<i64>(&mut redis)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await
}

/// Removes the run's database (its keys in Redis are left to the server's next flush).
pub async fn drop_database(mongo_url: &str, namespace: &str) {
    if let Ok(m) = mongo_client(mongo_url).await {
        if let Err(e) = m.database(namespace).drop().await {
            eprintln!("bench: could not drop database {namespace}: {e}");
        }
    }
}

/// The backend floor of a distributed poll: `find_one` by `_id` in the service's own tasks
/// collection, by a minimal client at the same concurrency, over the same ids the polls ask for.
pub async fn poll_floor(
    mongo_url: &str,
    namespace: &str,
    ids: std::sync::Arc<Vec<String>>,
    n: usize,
    c: usize,
) -> Result<Measure, String> {
    let mongo = mongo_client(mongo_url).await?;
    let tasks = mongo.database(namespace).collection::<Document>("tasks");
    drive(
        "MongoDB find_one by _id, minimal client (poll floor)",
        n,
        c,
        move |i| {
            let (tasks, id) = (tasks.clone(), ids[i % ids.len()].clone());
            async move {
                tasks
                    .find_one(mongodb::bson::doc! {"_id": id})
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|_| ())
                    .ok_or_else(|| "poll floor: task not found".to_string())
            }
        },
    )
    .await
}

/// Name of the backend floor scenario (`bench all` judges distributed submits by it).
pub const BACKEND_FLOOR: &str = "MongoDB insert + Redis enqueue, minimal client (backend floor)";
