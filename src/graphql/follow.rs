//! The delivery rules of the two subscriptions, over the event bus's at-most-once hints:
//! `taskUpdated` sends newer versions of one task in order; `tasksUpdated` sends every change of a
//! user's (or all) tasks. Both re-read the store when events may have been lost (a gap, a quiet
//! spell, the bus gone), so a lost event delays a change but never drops it.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};

use super::types::Task;
use crate::domain;
use crate::events::Event;
use crate::service::follow::next_event;
use crate::service::queue_clock::{QueueView, Waiting};
use crate::service::Service;
use crate::store::ChangeCursor;

/// `taskUpdated`: the snapshot, then newer versions only (`service::follow`), and the same
/// version again when its queue position changed.
pub fn follow(
    service: Arc<Service>,
    snapshot: domain::Task,
    events: BoxStream<'static, Event>,
    resync: Duration,
) -> impl Stream<Item = Task> {
    let moves = service.queue_moves();
    let versions =
        crate::service::follow::follow_from(service.clone(), snapshot, events, None, resync)
            .enumerate()
            .map(|(i, t)| {
                // The snapshot is not an update: its lag would be the task's age.
                if i > 0 {
                    delivered(&t);
                }
                t
            });
    with_positions(service, versions.boxed(), moves).map(Task)
}

struct Placed {
    service: Arc<Service>,
    versions: BoxStream<'static, Arc<domain::Task>>,
    moves: tokio::sync::watch::Receiver<QueueView>,
    /// The last task sent and the position it was sent with.
    last: Option<(Arc<domain::Task>, Option<u64>)>,
    /// The clock stopped (shutting down): versions only.
    stopped: bool,
    /// Held while the last task sent waits in the queue: counts this subscription in the pace.
    waiting: Option<Waiting>,
    /// When the position is read next, while positions are paced (`PositionPace`).
    next_read: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Sends `versions`, and the last one again each time its queue position changes while it is
/// pending: at each move of the process's queue clock (at most one a second) while few
/// subscriptions wait, every `PositionPace::interval` when many do. A re-send costs no I/O: the
/// task sent again is the one held.
fn with_positions(
    service: Arc<Service>,
    versions: BoxStream<'static, Arc<domain::Task>>,
    moves: tokio::sync::watch::Receiver<QueueView>,
) -> impl Stream<Item = Arc<domain::Task>> {
    let state = Placed {
        service,
        versions,
        moves,
        last: None,
        stopped: false,
        waiting: None,
        next_read: None,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            let pending = !st.stopped
                && st
                    .last
                    .as_ref()
                    .is_some_and(|(t, _)| t.status == domain::TaskStatus::Pending);
            let interval = st.pace(pending);
            tokio::select! {
                next = st.versions.next() => {
                    let t = next?;
                    let position = st.service.queue_place(&t).map(|p| p.position);
                    st.last = Some((t.clone(), position));
                    return Some((t, st));
                }
                moved = st.moves.changed(), if pending && interval.is_none() => {
                    if moved.is_err() {
                        st.stopped = true;
                        continue;
                    }
                    if let Some(t) = st.moved() {
                        return Some((t, st));
                    }
                }
                _ = next_read(&mut st.next_read), if interval.is_some() => {
                    if st.moves.has_changed().is_err() {
                        st.stopped = true;
                        continue;
                    }
                    if let (Some(sleep), Some(every)) = (st.next_read.as_mut(), interval) {
                        sleep.as_mut().reset(tokio::time::Instant::now() + every);
                    }
                    if let Some(t) = st.moved() {
                        return Some((t, st));
                    }
                }
            }
        }
    })
}

impl Placed {
    /// Counts this subscription while it waits and answers how often it reads its position
    /// (`None`: at each move of the queue).
    fn pace(&mut self, pending: bool) -> Option<Duration> {
        if !pending {
            self.waiting = None;
            self.next_read = None;
            return None;
        }
        let pace = self.service.position_pace();
        if self.waiting.is_none() {
            self.waiting = Some(pace.wait());
        }
        let Some(every) = pace.interval() else {
            self.next_read = None;
            return None;
        };
        if self.next_read.is_none() {
            // A random phase: subscriptions made together must not all read (and send) at once.
            let first = every.mul_f64(rand::random::<f64>());
            self.next_read = Some(Box::pin(tokio::time::sleep(first)));
        }
        Some(every)
    }

    /// The task held, if its position changed since it was sent.
    fn moved(&mut self) -> Option<Arc<domain::Task>> {
        let (t, sent) = self.last.as_mut()?;
        let position = self.service.queue_place(t).map(|p| p.position);
        if position == *sent {
            return None;
        }
        *sent = position;
        positioned();
        Some(t.clone())
    }
}

async fn next_read(sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match sleep.as_mut() {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

fn positioned() {
    static SENT: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    SENT.get_or_init(|| metrics::counter!("subscription_position_updates_total"))
        .increment(1);
}

fn delivered(t: &domain::Task) {
    // Once per message to every subscriber: the handle is looked up in the registry once, not
    // each time (the recorder is installed at start, before any socket opens).
    static LAG: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    let lag = (chrono::Utc::now() - t.updated_at)
        .to_std()
        .unwrap_or_default();
    LAG.get_or_init(|| metrics::histogram!("subscription_update_lag_seconds"))
        .record(lag.as_secs_f64());
}

/// How far before the newest change seen a re-read of `tasksUpdated` starts: room for a change
/// published late, or stamped by a process whose clock is a little behind.
const REREAD_MARGIN_MS: i64 = 5_000;
/// Tasks per store call of a re-read.
const REREAD_PAGE: usize = 500;
/// How soon a failed re-read is tried again.
const REREAD_RETRY: Duration = Duration::from_secs(1);

struct FollowMany {
    service: Arc<Service>,
    user_id: Option<String>,
    events: Option<BoxStream<'static, Event>>,
    resync: Duration,
    /// When the subscription started (ms): older changes were never promised.
    started_ms: i64,
    /// The newest change seen, sent or read (ms).
    newest_ms: i64,
    /// Version and change time sent, by task, for changes within the margin of `newest_ms`:
    /// what a re-read must not send again.
    sent: HashMap<String, (i64, i64)>,
    /// Size of `sent` at which it is pruned next.
    prune_at: usize,
    /// What a re-read found, to send in change order.
    ready: VecDeque<Arc<domain::Task>>,
    /// A re-read failed and is owed.
    owed: bool,
}

impl FollowMany {
    /// Records `t` and answers whether it is news: a newer version than any sent of its task.
    fn admit(&mut self, t: &domain::Task) -> bool {
        if self.sent.get(&t.id).is_some_and(|(v, _)| *v >= t.version) {
            return false;
        }
        let ms = t.updated_at.timestamp_millis();
        self.newest_ms = self.newest_ms.max(ms);
        self.sent.insert(t.id.clone(), (t.version, ms));
        if self.sent.len() >= self.prune_at {
            let horizon = self.newest_ms - REREAD_MARGIN_MS;
            self.sent.retain(|_, (_, ms)| *ms >= horizon);
            self.prune_at = (self.sent.len() * 2).max(1024);
        }
        true
    }

    /// Reads every change since a margin before the newest seen and queues what was not sent.
    async fn reread(&mut self) {
        let from = (self.newest_ms - REREAD_MARGIN_MS).max(self.started_ms);
        let mut after = ChangeCursor::from_ms(from);
        loop {
            let page = match self
                .service
                .tasks_changed(self.user_id.as_deref(), &after, REREAD_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(user_id = ?self.user_id, error = %e.chain(), "subscription re-read failed");
                    self.owed = true;
                    return;
                }
            };
            let full = page.len() == REREAD_PAGE;
            for mut t in page {
                after = ChangeCursor::of(&t);
                if self.admit(&t) {
                    // Queued until sent, like an event, and as unread: see
                    // `Task::without_reference_images`.
                    t.params.images = Vec::new();
                    self.ready.push_back(Arc::new(t));
                }
            }
            if !full {
                break;
            }
        }
        self.owed = false;
    }
}

/// `tasksUpdated`: every change of the channel's tasks from now on. `user_id` is the channel's
/// user (`None`: all users').
pub fn follow_tasks(
    service: Arc<Service>,
    user_id: Option<String>,
    events: BoxStream<'static, Event>,
    resync: Duration,
) -> impl Stream<Item = Task> {
    // A second before the subscription was asked for, so a change made while it was being set
    // up (or stamped by a clock a little behind) is sent rather than missed.
    let started_ms = chrono::Utc::now().timestamp_millis() - 1_000;
    let state = FollowMany {
        service,
        user_id,
        events: Some(events),
        resync,
        started_ms,
        newest_ms: started_ms,
        sent: HashMap::new(),
        prune_at: 1024,
        ready: VecDeque::new(),
        owed: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(t) = st.ready.pop_front() {
                delivered(&t);
                return Some((Task(t), st));
            }
            let wait = if st.owed { REREAD_RETRY } else { st.resync };
            match next_event(&mut st.events, wait).await {
                Some(Event::Updated(t)) => {
                    if st.admit(&t) {
                        delivered(&t);
                        return Some((Task(t), st));
                    }
                }
                Some(Event::Gap) | None => st.reread().await,
            }
        }
    })
}
