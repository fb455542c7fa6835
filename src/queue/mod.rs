//! Work queue seam: a wake-up signal for workers, never the truth. A task id may be delivered
//! twice or not at all; the worker's compare-and-set claim makes duplicates harmless and the
//! reconciler re-enqueues whatever the queue lost.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("queue closed")]
    Closed,
}

/// One delivery of a task id; `token` identifies it for `ack` (a stream entry id in Redis).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub task_id: String,
    pub token: String,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    async fn ping(&self) -> Result<(), QueueError>;
    /// Makes `task_id` available to workers at `not_before` (now when `None`). Enqueueing an id
    /// that is already waiting is a no-op.
    async fn enqueue(
        &self,
        task_id: &str,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<(), QueueError>;
    /// Waits for the next due task id.
    async fn dequeue(&self) -> Result<Delivery, QueueError>;
    /// The delivery's task reached a state where it needs no further work from this delivery.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;
    /// Ids waiting (due or not).
    async fn depth(&self) -> Result<u64, QueueError>;
}
