//! Task event seam: every stored state change is published on the task's channel, its user's
//! channel and the firehose. Delivery is at most once (like Redis pub/sub); subscribers are told
//! of a possible gap (`Gap`) and then re-read the store, which keeps them correct.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::domain::Task;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Task(String),
    User(String),
    /// Every task of every user (admin).
    All,
}

impl Channel {
    /// Every task change of one user, or of all users (`None`).
    pub fn tasks_of(user_id: Option<&str>) -> Channel {
        match user_id {
            Some(u) => Channel::User(u.to_string()),
            None => Channel::All,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Channel::Task(id) => format!("task:{id}"),
            Channel::User(id) => format!("user:{id}"),
            Channel::All => "tasks".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Updated(Arc<Task>),
    /// Events may have been lost (slow subscriber, reconnect): re-read the store.
    Gap,
}

/// A message every process acts on before its sender goes on: unlike task events, these are
/// acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// An API key was revoked: forget it and close the sockets it opened (4403).
    KeyRevoked { key_id: String, hash: String },
}

/// What a process does with a control message (its API: the key cache and open sockets).
#[async_trait]
pub trait ControlHandler: Send + Sync + 'static {
    async fn handle(&self, msg: &Control);
}

/// What keeps state from every task change this process hears of (the api's poll cache). Told,
/// in the order they happen and on the thread that receives them, of each change and of every
/// moment from which changes may be missed or from which they flow again.
pub trait TaskObserver: Send + Sync + 'static {
    fn updated(&self, task: &Arc<Task>);
    /// Changes arrive from now on. Changes made before may have been missed.
    fn connected(&self);
    /// Changes may be missed from now on, until `connected`.
    fn lost(&self);
}

#[async_trait]
pub trait Events: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    async fn ping(&self) -> Result<(), EventsError>;
    async fn publish(&self, task: &Task) -> Result<(), EventsError>;
    /// Events published after this call returns.
    async fn subscribe(&self, channel: Channel) -> Result<BoxStream<'static, Event>, EventsError>;
    /// Sets what this process does with control messages; a process without a handler
    /// acknowledges them at once.
    fn on_control(&self, handler: Arc<dyn ControlHandler>);
    /// Sets who is told of every task change this process hears of; told at once that changes
    /// arrive when they do. A bus that does not tell never has its observer trust anything.
    fn observe(&self, _observer: Arc<dyn TaskObserver>) {}
    /// Has every process reached by the bus (this one included) handle `msg`, and returns once
    /// each has acknowledged it, or after `within`.
    async fn control(&self, msg: &Control, within: Duration) -> Result<(), EventsError>;
    /// Asks every process's video tracker to look at task `task_id` at the provider now (its
    /// provider called back). At most once, like task events: a look lost leaves the task to
    /// the tracker's fallback poll.
    async fn look(&self, task_id: &str) -> Result<(), EventsError> {
        let _ = task_id;
        Err(EventsError::Unavailable(format!(
            "the {} bus carries no looks",
            self.kind()
        )))
    }
    /// The task ids `look` asks for from now on (nothing on a bus that carries none).
    async fn looks(&self) -> Result<BoxStream<'static, String>, EventsError> {
        Ok(futures::stream::pending().boxed())
    }
}
