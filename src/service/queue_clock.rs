//! Queue positions and start estimates, cheap whatever the backlog: each task entering the
//! queue gets the next number (`Task::queue_seq`, from `Queue::next_seq`: an atomic counter
//! embedded, `INCR` in Redis), workers raise the "taken" mark to the number of each task they
//! start, and a pending task's position is its number minus the mark (at least 1). Nothing is
//! counted or scanned per read: each process reads the two counters once a second (one atomic
//! load, or one `MGET`) and answers every position from that snapshot.
//!
//! A position is an upper bound: tasks ahead that were cancelled, failed at their deadline or
//! deleted while pending still count until the mark passes their numbers. Tasks are started
//! roughly, not strictly, in number order (several workers, delayed retries), so a task may be
//! started while others behind it are shown at position 1.
//!
//! The estimate divides the position by the rate the mark moved at while there was a backlog
//! (numbers taken per second over the last ten minutes, across every worker of every process),
//! so it follows the real throughput, provider pace and worker count included. Without a rate
//! observed yet (nothing taken since a backlog formed) there is no estimate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{Task, TaskStatus};
use crate::queue::{Queue, QueueMarks};
use crate::store::Store;

/// How often a process reads the counters: positions pushed to subscribers move at most this
/// often.
pub const TICK: Duration = Duration::from_secs(1);
/// How far back the rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(600);

/// What a process knows of the queue: the counters as last read and the rate the taken mark
/// moves at.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueView {
    pub marks: QueueMarks,
    /// Tasks taken per second while a backlog waited; `None` until observed.
    pub taken_per_sec: Option<f64>,
}

/// A pending task's place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueuePlace {
    /// 1 = next to be taken.
    pub position: u64,
    pub estimated_start_at: Option<DateTime<Utc>>,
}

impl QueueView {
    /// Where `task` waits: `None` unless it is pending with a queue number.
    pub fn place(&self, task: &Task, now: DateTime<Utc>) -> Option<QueuePlace> {
        if task.status != TaskStatus::Pending {
            return None;
        }
        let position = task.queue_seq?.saturating_sub(self.marks.taken).max(1);
        let estimated_start_at = self.taken_per_sec.map(|rate| {
            let wait = chrono::Duration::milliseconds((position as f64 / rate * 1000.0) as i64);
            // A retry's backoff may hold it longer than its turn.
            (now + wait).max(task.not_before.unwrap_or(now))
        });
        Some(QueuePlace {
            position,
            estimated_start_at,
        })
    }
}

/// Paces the queue positions pushed to pending `taskUpdated` subscriptions. A move of the queue
/// changes the position of every waiting subscription at once: 90,000 of them made 90,000
/// messages a second, each a GraphQL execution, and the terminal states queued behind them
/// (#22.2: p99 14 s). Up to `per_sec` waiting subscriptions each is told at every move; beyond,
/// each reads its position every `waiting / per_sec` seconds on its own timer, at a random
/// phase, so the process sends about `per_sec` position messages a second whatever the crowd
/// and wakes no subscription in between.
pub struct PositionPace {
    per_sec: u32,
    waiting: AtomicUsize,
}

impl PositionPace {
    pub fn new(per_sec: u32) -> PositionPace {
        PositionPace {
            per_sec: per_sec.max(1),
            waiting: AtomicUsize::new(0),
        }
    }

    /// How often each waiting subscription reads its position: `None` while they all fit the
    /// rate (told at each move of the queue instead, at most once a `TICK`).
    pub fn interval(&self) -> Option<Duration> {
        let waiting = self.waiting.load(Ordering::Relaxed);
        (waiting > self.per_sec as usize)
            .then(|| Duration::from_secs_f64(waiting as f64 / f64::from(self.per_sec)))
    }

    /// Counts one subscription as waiting until the guard is dropped.
    pub fn wait(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self.clone())
    }
}

/// A subscription counted by [`PositionPace::wait`].
pub struct Waiting(Arc<PositionPace>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The taken mark over time, while a backlog waits.
#[derive(Default)]
struct Samples(VecDeque<(Instant, u64)>);

impl Samples {
    fn record(&mut self, at: Instant, marks: QueueMarks) -> Option<f64> {
        if marks.issued <= marks.taken {
            // No backlog: an idle spell must not dilute the next backlog's rate.
            self.0.clear();
        }
        // Only moves are kept: the rate's span runs to `at` anyway.
        if self.0.back().is_none_or(|(_, t)| *t != marks.taken) {
            self.0.push_back((at, marks.taken));
        }
        while self.0.len() > 2
            && self
                .0
                .front()
                .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
        {
            self.0.pop_front();
        }
        let (first_at, first) = *self.0.front()?;
        let secs = at.duration_since(first_at).as_secs_f64();
        let moved = marks.taken.saturating_sub(first);
        (secs >= 1.0 && moved > 0).then(|| moved as f64 / secs)
    }
}

/// This process's view of the queue, kept current by `run`.
pub struct QueueClock {
    queue: Arc<dyn Queue>,
    view: watch::Sender<QueueView>,
    samples: Mutex<Samples>,
}

impl QueueClock {
    pub fn new(queue: Arc<dyn Queue>) -> QueueClock {
        QueueClock {
            queue,
            view: watch::Sender::new(QueueView::default()),
            samples: Mutex::new(Samples::default()),
        }
    }

    pub fn view(&self) -> QueueView {
        *self.view.borrow()
    }

    /// Told each time the taken mark moves (at most once a `TICK`).
    pub fn subscribe(&self) -> watch::Receiver<QueueView> {
        self.view.subscribe()
    }

    /// Resumes the numbering from the store's pending tasks (when the queue kept none: the
    /// embedded queue at every start, Redis after a `FLUSHALL`), then reads the counters once.
    pub async fn seed(&self, store: &dyn Store) {
        let range = match store.pending_seq_range().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the pending tasks' queue numbers");
                None
            }
        };
        if let Some((lowest, highest)) = range {
            let marks = QueueMarks {
                issued: highest,
                taken: lowest.saturating_sub(1),
            };
            if let Err(e) = self.queue.seed_marks(marks).await {
                tracing::warn!(error = %e, "could not seed the queue numbering");
            }
        }
        self.tick().await;
    }

    async fn tick(&self) {
        let marks = match self.queue.marks().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "queue counters unavailable; positions keep the last read");
                return;
            }
        };
        let rate = match self.samples.lock() {
            Ok(mut s) => s.record(Instant::now(), marks),
            Err(_) => None,
        };
        let next = QueueView {
            marks,
            taken_per_sec: rate,
        };
        self.view.send_if_modified(|v| {
            let moved = v.marks.taken != next.marks.taken;
            *v = next;
            moved
        });
    }

    /// Reads the counters every `TICK` until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.tick().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64) -> Task {
        let mut t = Task::new_pending(
            "u".into(),
            "m".into(),
            "p".into(),
            Default::default(),
            None,
            Utc::now(),
        );
        t.queue_seq = Some(seq);
        t
    }

    #[test]
    fn positions_are_paced_only_beyond_the_rate_in_proportion_to_the_crowd() {
        let pace = Arc::new(PositionPace::new(2));
        let a = pace.wait();
        let _b = pace.wait();
        assert_eq!(pace.interval(), None, "two fit a rate of two a second");
        let c: Vec<Waiting> = (0..8).map(|_| pace.wait()).collect();
        assert_eq!(
            pace.interval(),
            Some(Duration::from_secs(5)),
            "ten at two a second"
        );
        drop(c);
        drop(a);
        assert_eq!(pace.interval(), None, "one left");
    }

    #[test]
    fn position_is_the_number_past_the_mark_and_only_while_pending() {
        let now = Utc::now();
        let view = QueueView {
            marks: QueueMarks {
                issued: 20,
                taken: 10,
            },
            taken_per_sec: Some(2.0),
        };
        let p = view.place(&pending(13), now).expect("pending");
        assert_eq!(p.position, 3);
        assert_eq!(
            p.estimated_start_at,
            Some(now + chrono::Duration::milliseconds(1500))
        );
        assert_eq!(view.place(&pending(4), now).map(|p| p.position), Some(1));
        let mut running = pending(13);
        running.status = TaskStatus::Processing;
        assert_eq!(view.place(&running, now), None);
        let mut unnumbered = pending(1);
        unnumbered.queue_seq = None;
        assert_eq!(view.place(&unnumbered, now), None);
        let no_rate = QueueView {
            taken_per_sec: None,
            ..view
        };
        assert_eq!(
            no_rate
                .place(&pending(13), now)
                .expect("p")
                .estimated_start_at,
            None
        );
    }

    #[test]
    fn the_rate_counts_only_while_a_backlog_waits() {
        let mut s = Samples::default();
        let t0 = Instant::now();
        let m = |issued, taken| QueueMarks { issued, taken };
        assert_eq!(s.record(t0, m(10, 0)), None);
        assert_eq!(s.record(t0 + Duration::from_secs(2), m(10, 4)), Some(2.0));
        assert_eq!(s.record(t0 + Duration::from_secs(4), m(10, 6)), Some(1.5));
        // Drained: forgotten, so an hour idle (read every tick) does not count against the next
        // backlog.
        assert_eq!(s.record(t0 + Duration::from_secs(5), m(10, 10)), None);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(s.record(later - Duration::from_secs(1), m(10, 10)), None);
        assert_eq!(s.record(later, m(30, 10)), None);
        assert_eq!(
            s.record(later + Duration::from_secs(1), m(30, 13)),
            Some(1.5)
        );
    }
}
