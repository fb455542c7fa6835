//! In-process event bus: one broadcast channel per subscribed channel name, created on first
//! subscription and dropped when its last subscriber leaves, so a publish costs work only for the
//! channels somebody listens to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use super::{Channel, Control, ControlHandler, Event, Events, EventsError, TaskObserver};
use crate::domain::Task;

/// Events a slow subscriber may fall behind before it is told of a gap and re-reads the store.
/// The buffer is allocated whole when the channel is created (~48 bytes a slot), so a task's
/// channel, which sees a handful of versions in the task's life, gets a small one: with one
/// subscriber per task, 256 slots were 12 KiB of each subscriber's memory.
const CHANNEL_CAPACITY: usize = 256;
const TASK_CHANNEL_CAPACITY: usize = 16;

type Channels = HashMap<Channel, broadcast::Sender<Event>>;

/// Looks a slow tracker may fall behind before it misses some (and polls those tasks later).
const LOOKS_CAPACITY: usize = 1024;

pub struct MemoryEvents {
    channels: Mutex<Channels>,
    control: Mutex<Option<Arc<dyn ControlHandler>>>,
    feed: Mutex<Feed>,
    looks: broadcast::Sender<String>,
}

impl Default for MemoryEvents {
    fn default() -> Self {
        MemoryEvents {
            channels: Mutex::default(),
            control: Mutex::default(),
            feed: Mutex::default(),
            looks: broadcast::channel(LOOKS_CAPACITY).0,
        }
    }
}

/// The observer of every change, and whether changes reach this bus (always for the in-process
/// bus; while the relay is subscribed when this bus is the local end of Redis pub/sub). Under one
/// lock, so the observer hears of changes and of their interruptions in order.
#[derive(Default)]
struct Feed {
    observer: Option<Arc<dyn TaskObserver>>,
    /// `false` until the relay subscribes, for the local end of a relay.
    down: bool,
}

impl MemoryEvents {
    pub fn new() -> MemoryEvents {
        MemoryEvents::default()
    }

    /// The local end of a relay from another bus: changes do not arrive until
    /// [`MemoryEvents::relay_connected`].
    pub fn relayed() -> MemoryEvents {
        let bus = MemoryEvents::default();
        if let Ok(mut feed) = bus.feed.lock() {
            feed.down = true;
        }
        bus
    }

    /// The relay subscribed: changes arrive from now on. Subscribers re-read what they may have
    /// missed before.
    pub fn relay_connected(&self) {
        if let Ok(mut feed) = self.feed.lock() {
            feed.down = false;
            if let Some(o) = &feed.observer {
                o.connected();
            }
        }
        let _ = self.gap_all();
    }

    /// The relay's connection broke: changes may be missed from now on.
    pub fn relay_lost(&self) {
        if let Ok(mut feed) = self.feed.lock() {
            feed.down = true;
            if let Some(o) = &feed.observer {
                o.lost();
            }
        }
        let _ = self.gap_all();
    }

    fn channels(&self) -> Result<std::sync::MutexGuard<'_, Channels>, EventsError> {
        self.channels
            .lock()
            .map_err(|_| EventsError::Unavailable("event bus mutex poisoned".into()))
    }
}

#[async_trait]
impl Events for MemoryEvents {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), EventsError> {
        self.channels().map(|_| ())
    }

    async fn publish(&self, task: &Task) -> Result<(), EventsError> {
        self.deliver(Arc::new(task.without_reference_images()))
    }

    async fn subscribe(&self, channel: Channel) -> Result<BoxStream<'static, Event>, EventsError> {
        let rx = {
            let mut channels = self.channels()?;
            if channels.len() > 1024 {
                // Channels whose subscribers all left without a publish since.
                channels.retain(|_, tx| tx.receiver_count() > 0);
            }
            let capacity = match channel {
                Channel::Task(_) => TASK_CHANNEL_CAPACITY,
                Channel::User(_) | Channel::All => CHANNEL_CAPACITY,
            };
            channels
                .entry(channel)
                .or_insert_with(|| broadcast::channel(capacity).0)
                .subscribe()
        };
        Ok(BroadcastStream::new(rx)
            .map(|item| match item {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(_)) => Event::Gap,
            })
            .boxed())
    }

    fn on_control(&self, handler: Arc<dyn ControlHandler>) {
        if let Ok(mut h) = self.control.lock() {
            *h = Some(handler);
        }
    }

    fn observe(&self, observer: Arc<dyn TaskObserver>) {
        if let Ok(mut feed) = self.feed.lock() {
            if !feed.down {
                observer.connected();
            }
            feed.observer = Some(observer);
        }
    }

    async fn look(&self, task_id: &str) -> Result<(), EventsError> {
        self.deliver_look(task_id);
        Ok(())
    }

    async fn looks(&self) -> Result<BoxStream<'static, String>, EventsError> {
        Ok(BroadcastStream::new(self.looks.subscribe())
            // A look missed (a tracker far behind) leaves its task to the fallback poll.
            .filter_map(|item| std::future::ready(item.ok()))
            .boxed())
    }

    async fn control(&self, msg: &Control, within: Duration) -> Result<(), EventsError> {
        if tokio::time::timeout(within, self.handle_control(msg))
            .await
            .is_err()
        {
            tracing::warn!(?msg, "control message not handled in time");
        }
        Ok(())
    }
}

impl MemoryEvents {
    /// Runs this process's handler of control messages on `msg` (nothing without one).
    pub async fn handle_control(&self, msg: &Control) {
        let handler = self.control.lock().ok().and_then(|h| h.clone());
        if let Some(h) = handler {
            h.handle(msg).await;
        }
    }

    /// Hands a look at `task_id` to this process's trackers (none listening: nothing to do).
    pub fn deliver_look(&self, task_id: &str) {
        let _ = self.looks.send(task_id.to_string());
    }

    /// Hands a task update to this process's subscribers of its channels.
    pub fn deliver(&self, task: Arc<Task>) -> Result<(), EventsError> {
        if let Ok(feed) = self.feed.lock() {
            if let Some(o) = &feed.observer {
                o.updated(&task);
            }
        }
        let mut channels = self.channels()?;
        for ch in [
            Channel::Task(task.id.clone()),
            Channel::User(task.user_id.clone()),
            Channel::All,
        ] {
            let gone = match channels.get(&ch) {
                Some(tx) => tx.send(Event::Updated(task.clone())).is_err(),
                None => false,
            };
            if gone {
                channels.remove(&ch);
            }
        }
        Ok(())
    }

    /// Tells every subscriber that events may have been lost (the relay from another process
    /// broke), so each re-reads the store.
    pub fn gap_all(&self) -> Result<(), EventsError> {
        let channels = self.channels()?;
        for tx in channels.values() {
            let _ = tx.send(Event::Gap);
        }
        Ok(())
    }
}
