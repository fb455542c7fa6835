//! Task events over Redis pub/sub, for several `api` and `worker` processes. Each change is
//! published on `{prefix}:task:{id}` and `{prefix}:user:{user_id}`; every process keeps one
//! pattern subscription to the task channels and hands what arrives to its local subscribers
//! (one Redis connection per process, not per WebSocket subscriber).
//!
//! Pub/sub is at most once. When the relay connection drops, every local subscriber is told of a
//! gap (and re-reads the store); the relay reconnects with backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use super::memory::MemoryEvents;
use super::{Channel, Event, Events, EventsError};
use crate::domain::Task;

pub struct RedisEvents {
    cmd: ConnectionManager,
    prefix: String,
    local: Arc<MemoryEvents>,
    relay_up: Arc<AtomicBool>,
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
        let local = Arc::new(MemoryEvents::new());
        let relay_up = Arc::new(AtomicBool::new(false));
        tokio::spawn(relay(
            client,
            format!("{prefix}:task:*"),
            local.clone(),
            relay_up.clone(),
            shutdown,
        ));
        Ok(RedisEvents {
            cmd,
            prefix: prefix.to_string(),
            local,
            relay_up,
        })
    }
}

async fn relay(
    client: redis::Client,
    pattern: String,
    local: Arc<MemoryEvents>,
    up: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(&pattern).await?;
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
                let _ = local.gap_all();
                let mut messages = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    match msg
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<Task>(&p).ok())
                    {
                        Some(task) => {
                            let _ = local.deliver(Arc::new(task));
                        }
                        None => tracing::warn!(
                            channel = msg.get_channel_name(),
                            "unreadable event ignored"
                        ),
                    }
                }
                up.store(false, Ordering::SeqCst);
                tracing::warn!("event relay connection lost; reconnecting");
                let _ = local.gap_all();
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
        let payload = serde_json::to_string(task)
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
}
