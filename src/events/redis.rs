//! Task events over Redis pub/sub, for several `api` and `worker` processes. Each change is
//! published on `{prefix}:task:{id}` and `{prefix}:user:{user_id}`; every process keeps one
//! pattern subscription to the task channels and hands what arrives to its local subscribers
//! (one Redis connection per process, not per WebSocket subscriber).
//!
//! Control messages (key revocations) travel on `{prefix}:control`, which every relay also
//! subscribes to: each process handles one and publishes an acknowledgement there, and the sender
//! waits for as many as `PUBLISH` said received it.
//!
//! Looks (a provider called back about a task) travel on `{prefix}:look`, the task id as the
//! message, to every relay and from it to the process's video tracker.
//!
//! Pub/sub is at most once. When the relay connection drops, every local subscriber is told of a
//! gap (and re-reads the store); the relay reconnects with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::memory::MemoryEvents;
use super::{Channel, Control, ControlHandler, Event, Events, EventsError, TaskObserver};
use crate::domain::Task;

pub struct RedisEvents {
    cmd: ConnectionManager,
    prefix: String,
    local: Arc<MemoryEvents>,
    relay_up: Arc<AtomicBool>,
    waiting: Waiting,
}

/// Control messages sent from this process, by id: a signal per acknowledgement received.
type Waiting = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<()>>>>;

/// What travels on `{prefix}:control`: a control message, or a process's acknowledgement of one.
/// Every process's relay subscribes to it, so `PUBLISH` answers how many will acknowledge.
#[derive(Serialize, Deserialize)]
enum Wire {
    Ask { id: String, msg: Control },
    Ack { id: String },
}

fn unavailable(e: redis::RedisError) -> EventsError {
    EventsError::Unavailable(e.to_string())
}

impl RedisEvents {
    /// Connects, and starts the relay that runs until `shutdown`.
    pub async fn connect(
        client: redis::Client,
        prefix: &str,
        shutdown: CancellationToken,
    ) -> Result<RedisEvents, EventsError> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)));
        let cmd = client
            .get_connection_manager_with_config(cfg)
            .await
            .map_err(unavailable)?;
        let local = Arc::new(MemoryEvents::relayed());
        let relay_up = Arc::new(AtomicBool::new(false));
        let waiting = Waiting::default();
        let relay = Relay {
            client,
            pattern: format!("{prefix}:task:*"),
            control: format!("{prefix}:control"),
            look: format!("{prefix}:look"),
            local: local.clone(),
            up: relay_up.clone(),
            cmd: cmd.clone(),
            waiting: waiting.clone(),
        };
        tokio::spawn(run_relay(relay, shutdown));
        Ok(RedisEvents {
            cmd,
            prefix: prefix.to_string(),
            local,
            relay_up,
            waiting,
        })
    }
}

struct Relay {
    client: redis::Client,
    pattern: String,
    control: String,
    look: String,
    local: Arc<MemoryEvents>,
    up: Arc<AtomicBool>,
    cmd: ConnectionManager,
    waiting: Waiting,
}

impl Relay {
    /// A control message: handled here, then acknowledged (on its own task, so events keep
    /// flowing meanwhile); or an acknowledgement of one sent from here.
    fn on_control(&self, payload: &str) {
        match serde_json::from_str::<Wire>(payload) {
            Ok(Wire::Ask { id, msg }) => {
                let (local, mut cmd, channel) =
                    (self.local.clone(), self.cmd.clone(), self.control.clone());
                tokio::spawn(async move {
                    local.handle_control(&msg).await;
                    let Ok(ack) = serde_json::to_string(&Wire::Ack { id }) else {
                        return;
                    };
                    let sent = redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(ack)
                        .query_async::<i64>(&mut cmd)
                        .await;
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, "control message not acknowledged");
                    }
                });
            }
            Ok(Wire::Ack { id }) => {
                if let Some(tx) = self.waiting.lock().ok().and_then(|w| w.get(&id).cloned()) {
                    let _ = tx.send(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable control message ignored"),
        }
    }
}

async fn run_relay(r: Relay, shutdown: CancellationToken) {
    let (client, pattern, local, up) = (&r.client, &r.pattern, &r.local, &r.up);
    let mut backoff = Duration::from_millis(100);
    let delivery = metrics::histogram!("task_event_delivery_seconds");
    loop {
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(pattern).await?;
            ps.subscribe(&r.control).await?;
            ps.subscribe(&r.look).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connected => r,
        };
        match result {
            Ok(mut ps) => {
                backoff = Duration::from_millis(100);
                up.store(true, Ordering::SeqCst);
                tracing::info!(%pattern, "event relay subscribed");
                // Whatever was published while we were away is lost: subscribers re-read.
                local.relay_connected();
                let mut messages = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    if msg.get_channel_name() == r.control {
                        if let Ok(payload) = msg.get_payload::<String>() {
                            r.on_control(&payload);
                        }
                        continue;
                    }
                    if msg.get_channel_name() == r.look {
                        if let Ok(task_id) = msg.get_payload::<String>() {
                            local.deliver_look(&task_id);
                        }
                        continue;
                    }
                    match msg
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<Task>(&p).ok())
                    {
                        Some(task) => {
                            // From the change being made to its event here: the bound on how
                            // long this process's poll cache may answer the version before it.
                            let lag = (chrono::Utc::now() - task.updated_at).to_std();
                            delivery.record(lag.unwrap_or_default().as_secs_f64());
                            let _ = local.deliver(Arc::new(task));
                        }
                        None => tracing::warn!(
                            channel = msg.get_channel_name(),
                            "unreadable event ignored"
                        ),
                    }
                }
                // Observers first: once `/ready` says the relay is down, nothing is trusted.
                local.relay_lost();
                up.store(false, Ordering::SeqCst);
                tracing::warn!("event relay connection lost; reconnecting");
            }
            Err(e) => {
                up.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, retry_in = ?backoff, "event relay cannot connect");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Events for RedisEvents {
    fn kind(&self) -> &'static str {
        "redis-pubsub"
    }

    async fn ping(&self) -> Result<(), EventsError> {
        let mut c = self.cmd.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(unavailable)?;
        if self.relay_up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(EventsError::Unavailable(
                "event relay not subscribed".into(),
            ))
        }
    }

    async fn publish(&self, task: &Task) -> Result<(), EventsError> {
        let payload = serde_json::to_string(&task.without_reference_images())
            .map_err(|e| EventsError::Unavailable(format!("encode: {e}")))?;
        let mut c = self.cmd.clone();
        redis::pipe()
            .cmd("PUBLISH")
            .arg(format!("{}:task:{}", self.prefix, task.id))
            .arg(&payload)
            .ignore()
            .cmd("PUBLISH")
            .arg(format!("{}:user:{}", self.prefix, task.user_id))
            .arg(&payload)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn subscribe(&self, channel: Channel) -> Result<BoxStream<'static, Event>, EventsError> {
        self.local.subscribe(channel).await.map(|s| s.boxed())
    }

    fn on_control(&self, handler: Arc<dyn ControlHandler>) {
        self.local.on_control(handler);
    }

    async fn look(&self, task_id: &str) -> Result<(), EventsError> {
        let mut c = self.cmd.clone();
        redis::cmd("PUBLISH")
            .arg(format!("{}:look", self.prefix))
            .arg(task_id)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn looks(&self) -> Result<BoxStream<'static, String>, EventsError> {
        self.local.looks().await
    }

    fn observe(&self, observer: Arc<dyn TaskObserver>) {
        self.local.observe(observer);
    }

    async fn control(&self, msg: &Control, within: Duration) -> Result<(), EventsError> {
        let id = uuid::Uuid::new_v4().to_string();
        let payload = serde_json::to_string(&Wire::Ask {
            id: id.clone(),
            msg: msg.clone(),
        })
        .map_err(|e| EventsError::Unavailable(format!("encode: {e}")))?;
        let (tx, mut acks) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.clone(), tx);
        }
        let mut c = self.cmd.clone();
        let sent = redis::cmd("PUBLISH")
            .arg(format!("{}:control", self.prefix))
            .arg(payload)
            .query_async::<usize>(&mut c)
            .await;
        // Every relay subscribed (this process's too) has it and will acknowledge it.
        let result = match sent {
            Ok(processes) => {
                let all = async {
                    for _ in 0..processes {
                        acks.recv().await;
                    }
                };
                if tokio::time::timeout(within, all).await.is_err() {
                    tracing::warn!(?msg, processes, "not every process acknowledged in time");
                }
                Ok(())
            }
            Err(e) => Err(unavailable(e)),
        };
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&id);
        }
        result
    }
}
