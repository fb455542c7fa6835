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

/// The queue's two counters, the ground of queue positions (`service::queue_clock`): a task's
/// position is its number minus `taken`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueMarks {
    /// The last number given to a task entering the queue.
    pub issued: u64,
    /// The highest number of a task a worker took.
    pub taken: u64,
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
    /// Numbers a task entering the queue (new, promoted, requeued or retried): one more than
    /// the last number given by any process sharing the queue.
    async fn next_seq(&self) -> Result<u64, QueueError>;
    /// A worker took the task numbered `seq`; `taken` only grows.
    async fn taken(&self, seq: u64) -> Result<(), QueueError>;
    /// Both counters, in one round trip.
    async fn marks(&self) -> Result<QueueMarks, QueueError>;
    /// At start, from the store's pending tasks: `issued` is raised to at least `issued`, and
    /// `taken` is set to `taken` unless a mark is kept already (another process set it).
    async fn seed_marks(&self, marks: QueueMarks) -> Result<(), QueueError>;
}
