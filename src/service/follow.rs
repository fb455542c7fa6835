//! Following one task over the event bus's at-most-once hints: its state, then each newer
//! version in order, the end after a terminal state. A gap, a quiet spell or the bus gone make it
//! re-read the store, so a lost event delays a change but never drops it. GraphQL's `taskUpdated`,
//! the REST event stream and `Prefer: wait` all follow a task this way.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};

use super::Service;
use crate::auth::Principal;
use crate::domain::Task;
use crate::error::AppError;
use crate::events::{Channel, Event};

/// Waits for the next event; `None` after `wait` without one. A stream that ended is dropped
/// (`events` becomes `None`) and then only the wait passes.
pub async fn next_event(
    events: &mut Option<BoxStream<'static, Event>>,
    wait: Duration,
) -> Option<Event> {
    match events.as_mut() {
        Some(ev) => match tokio::time::timeout(wait, ev.next()).await {
            Ok(Some(e)) => Some(e),
            Ok(None) => {
                *events = None;
                None
            }
            Err(_) => None,
        },
        None => {
            tokio::time::sleep(wait).await;
            None
        }
    }
}

struct Follow {
    service: Arc<Service>,
    id: String,
    events: Option<BoxStream<'static, Event>>,
    last_version: i64,
    first: Option<Task>,
    done: bool,
    resync: Duration,
}

/// Follows task `id` for `who`: its current state if newer than `after_version` (every state
/// when `None`), then every newer version, ending after the terminal one (at once when the task
/// is already terminal and not newer), with the state read when it started. Someone else's task
/// is `NotFound`, as for a read.
pub async fn follow_task(
    service: Arc<Service>,
    who: &Principal,
    id: &str,
    after_version: Option<i64>,
    resync: Duration,
) -> Result<(Task, impl Stream<Item = Arc<Task>> + Send + 'static), AppError> {
    super::check_id("id", id)?;
    // Listen first, then read: an update between the two is then seen, never lost.
    let events = service.subscribe(Channel::Task(id.to_string())).await?;
    let snapshot = service.get_task(who, id).await?;
    let stream = follow_from(service, snapshot.clone(), events, after_version, resync);
    Ok((snapshot, stream))
}

/// As `follow_task`, from a snapshot read after `events` was subscribed.
pub fn follow_from(
    service: Arc<Service>,
    snapshot: Task,
    events: BoxStream<'static, Event>,
    after_version: Option<i64>,
    resync: Duration,
) -> impl Stream<Item = Arc<Task>> + Send + 'static {
    let after = after_version.unwrap_or(i64::MIN);
    let done = snapshot.status.is_terminal() && snapshot.version <= after;
    let state = Follow {
        service,
        id: snapshot.id.clone(),
        events: Some(events),
        last_version: after.max(snapshot.version),
        first: (snapshot.version > after).then_some(snapshot),
        done,
        resync,
    };
    futures::stream::unfold(state, |mut st| async move {
        if let Some(t) = st.first.take() {
            st.done = t.status.is_terminal();
            return Some((Arc::new(t), st));
        }
        if st.done {
            return None;
        }
        loop {
            // An event's task is shared by all its subscribers, not copied for each.
            let candidate = match next_event(&mut st.events, st.resync).await {
                Some(Event::Updated(t)) => Some(t),
                Some(Event::Gap) | None => reread(&st.service, &st.id).await?.map(Arc::new),
            };
            if let Some(t) = candidate.filter(|t| t.version > st.last_version) {
                st.last_version = t.version;
                st.done = t.status.is_terminal();
                return Some((t, st));
            }
        }
    })
}

/// `None` ends the stream (the task was deleted); `Some(None)` means nothing new could be read.
async fn reread(service: &Service, id: &str) -> Option<Option<Task>> {
    match service.reread_task(id).await {
        Ok(Some(t)) => Some(Some(t)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(task_id = %id, error = %e.chain(), "task follow re-read failed");
            Some(None)
        }
    }
}
