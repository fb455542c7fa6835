//! Waiting for a task to finish, for a caller that answers only with the outcome (the
//! OpenAI-compatible images API). It follows the task's events as subscriptions do and re-reads
//! the store after a possible gap or a quiet spell, so a lost event delays the answer but never
//! loses it; there is no poll loop beyond that fallback.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::Service;
use crate::auth::Principal;
use crate::domain::Task;
use crate::error::AppError;
use crate::events::{Channel, Event};

impl Service {
    /// The task once it is terminal, or as it stands when `deadline` passes first. `resync` is
    /// how long a quiet event stream is trusted before the store is read again.
    pub async fn wait_terminal(
        &self,
        who: &Principal,
        id: &str,
        deadline: Instant,
        resync: Duration,
    ) -> Result<Task, AppError> {
        // Listen first, then read: a change between the two is seen, never lost.
        let mut events = match self.events.subscribe(Channel::Task(id.to_string())).await {
            Ok(ev) => Some(ev),
            Err(e) => {
                // The store is the truth; without the bus the re-reads carry the wait.
                tracing::warn!(task_id = %id, error = %e, "event bus unavailable; waiting on re-reads");
                None
            }
        };
        let mut current = self.get_task(who, id).await?;
        while !current.status.is_terminal() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = resync.min(deadline - now);
            let next = match events.as_mut() {
                Some(ev) => match tokio::time::timeout(wait, ev.next()).await {
                    Ok(Some(Event::Updated(t))) => Some((*t).clone()),
                    Ok(Some(Event::Gap)) | Err(_) => None,
                    Ok(None) => {
                        events = None;
                        None
                    }
                },
                None => {
                    tokio::time::sleep(wait).await;
                    None
                }
            };
            let next = match next {
                Some(t) => t,
                None => self.get_task(who, id).await?,
            };
            if next.version > current.version {
                current = next;
            }
        }
        Ok(current)
    }
}
