//! Task event seam: every stored state change is published on the task's channel, its user's
//! channel and the firehose. Delivery is at most once (like Redis pub/sub); subscribers are told
//! of a possible gap (`Gap`) and then re-read the store, which keeps them correct.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

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

#[async_trait]
pub trait Events: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    async fn ping(&self) -> Result<(), EventsError>;
    async fn publish(&self, task: &Task) -> Result<(), EventsError>;
    /// Events published after this call returns.
    async fn subscribe(&self, channel: Channel) -> Result<BoxStream<'static, Event>, EventsError>;
}
