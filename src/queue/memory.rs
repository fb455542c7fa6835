//! In-process queue of the embedded default. Lost with the process by design: the store holds
//! every pending task, and the reconciler refills this queue at start and on its interval.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{Delivery, Queue, QueueError, QueueMarks};

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    /// May hold stale entries: an id enqueued again for an earlier time keeps its old entry,
    /// which `waiting` no longer matches and which is dropped when it comes up.
    delayed: BinaryHeap<Reverse<(DateTime<Utc>, String)>>,
    /// Ids in `ready` (`None`) or `delayed` (when due), so that re-enqueueing a waiting id adds
    /// nothing unless it makes the id due sooner.
    waiting: HashMap<String, Option<DateTime<Utc>>>,
}

impl State {
    /// Moves every delayed id due at `now` to `ready`, dropping stale entries.
    fn release_due(&mut self, now: DateTime<Utc>) {
        while self
            .delayed
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((at, id))) = self.delayed.pop() else {
                break;
            };
            if let Some(due) = self.waiting.get_mut(&id) {
                if *due == Some(at) {
                    *due = None;
                    self.ready.push_back(id);
                }
            }
        }
    }
}

#[derive(Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    notify: Notify,
    issued: AtomicU64,
    taken: AtomicU64,
}

impl MemoryQueue {
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, QueueError> {
        self.state
            .lock()
            .map_err(|_| QueueError::Unavailable("queue mutex poisoned".into()))
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.lock().map(|_| ())
    }

    async fn enqueue(
        &self,
        task_id: &str,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<(), QueueError> {
        {
            let mut st = self.lock()?;
            let due = not_before.filter(|at| *at > Utc::now());
            match st.waiting.get(task_id) {
                // Waiting already, due as soon or sooner.
                Some(None) => return Ok(()),
                Some(Some(waiting)) if due.is_some_and(|d| d >= *waiting) => return Ok(()),
                // New, or due sooner now (a user's retry of a task whose backoff still runs, a
                // scheduled time brought forward): it overtakes its old place.
                _ => {}
            }
            st.waiting.insert(task_id.to_string(), due);
            match due {
                Some(at) => st.delayed.push(Reverse((at, task_id.to_string()))),
                None => st.ready.push_back(task_id.to_string()),
            }
        }
        // notify_one stores a permit when nobody waits, so a worker about to wait still wakes.
        self.notify.notify_one();
        Ok(())
    }

    async fn dequeue(&self) -> Result<Delivery, QueueError> {
        loop {
            let next_due = {
                let mut st = self.lock()?;
                st.release_due(Utc::now());
                if let Some(id) = st.ready.pop_front() {
                    st.waiting.remove(&id);
                    let more = !st.ready.is_empty();
                    drop(st);
                    if more {
                        // Pass the wake-up on: one notify may stand for several enqueues.
                        self.notify.notify_one();
                    }
                    return Ok(Delivery {
                        token: id.clone(),
                        task_id: id,
                    });
                }
                st.delayed.peek().map(|Reverse((at, _))| *at)
            };
            match next_due {
                Some(at) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    async fn ack(&self, _delivery: &Delivery) -> Result<(), QueueError> {
        Ok(())
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let st = self.lock()?;
        Ok(st.waiting.len() as u64)
    }

    async fn next_seq(&self) -> Result<u64, QueueError> {
        Ok(self.issued.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn taken(&self, seq: u64) -> Result<(), QueueError> {
        self.taken.fetch_max(seq, Ordering::Relaxed);
        Ok(())
    }

    async fn marks(&self) -> Result<QueueMarks, QueueError> {
        Ok(QueueMarks {
            issued: self.issued.load(Ordering::Relaxed),
            taken: self.taken.load(Ordering::Relaxed),
        })
    }

    async fn seed_marks(&self, marks: QueueMarks) -> Result<(), QueueError> {
        // One process owns these counters, fresh at its start: raising both is the seed.
        self.issued.fetch_max(marks.issued, Ordering::Relaxed);
        self.taken.fetch_max(marks.taken, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn delivers_once_in_order_and_respects_delays() {
        let q = MemoryQueue::new();
        q.enqueue("a", None).await.expect("enqueue");
        q.enqueue("a", None).await.expect("enqueue twice");
        q.enqueue("c", Some(Utc::now() + chrono::Duration::milliseconds(80)))
            .await
            .expect("delayed");
        q.enqueue("b", None).await.expect("enqueue");
        assert_eq!(q.depth().await.expect("depth"), 3);
        assert_eq!(q.dequeue().await.expect("a").task_id, "a");
        assert_eq!(q.dequeue().await.expect("b").task_id, "b");
        let c = tokio::time::timeout(Duration::from_secs(5), q.dequeue())
            .await
            .expect("delayed item arrives")
            .expect("c");
        assert_eq!(c.task_id, "c");
        assert_eq!(q.depth().await.expect("depth"), 0);
    }

    /// An id waiting for a later time and enqueued again for an earlier one (now, or a sooner
    /// time) is delivered at the earlier time, once; an id enqueued for later behind a waiting
    /// sooner one keeps its sooner place.
    #[tokio::test]
    async fn an_earlier_due_time_overtakes_a_waiting_later_one() {
        let q = MemoryQueue::new();
        let later = Utc::now() + chrono::Duration::seconds(3600);
        q.enqueue("retried", Some(later)).await.expect("enqueue");
        q.enqueue("retried", None).await.expect("due now");
        assert_eq!(q.depth().await.expect("depth"), 1);
        let d = tokio::time::timeout(Duration::from_secs(5), q.dequeue())
            .await
            .expect("delivered now, not in an hour")
            .expect("dequeue");
        assert_eq!(d.task_id, "retried");

        q.enqueue("a", Some(later)).await.expect("enqueue");
        q.enqueue("a", Some(Utc::now() + chrono::Duration::milliseconds(50)))
            .await
            .expect("sooner");
        q.enqueue("a", Some(later))
            .await
            .expect("later again: no-op");
        q.enqueue("b", Some(Utc::now() + chrono::Duration::milliseconds(150)))
            .await
            .expect("enqueue");
        let first = tokio::time::timeout(Duration::from_secs(5), q.dequeue())
            .await
            .expect("a arrives")
            .expect("a");
        let second = tokio::time::timeout(Duration::from_secs(5), q.dequeue())
            .await
            .expect("b arrives")
            .expect("b");
        assert_eq!(
            (first.task_id.as_str(), second.task_id.as_str()),
            ("a", "b")
        );
        assert_eq!(
            q.depth().await.expect("depth"),
            0,
            "the stale entry is not counted"
        );
        let nothing = tokio::time::timeout(Duration::from_millis(200), q.dequeue()).await;
        assert!(nothing.is_err(), "a is delivered once: {nothing:?}");
    }
}
