//! In-process queue of the embedded default. Lost with the process by design: the store holds
//! every pending task, and the reconciler refills this queue at start and on its interval.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{Delivery, Queue, QueueError};

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    delayed: BinaryHeap<Reverse<(DateTime<Utc>, String)>>,
    /// Ids in `ready` or `delayed`, so that re-enqueueing a waiting id adds nothing.
    waiting: HashSet<String>,
}

#[derive(Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    notify: Notify,
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
            if !st.waiting.insert(task_id.to_string()) {
                return Ok(());
            }
            match not_before {
                Some(at) if at > Utc::now() => st.delayed.push(Reverse((at, task_id.to_string()))),
                _ => st.ready.push_back(task_id.to_string()),
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
                let now = Utc::now();
                while st.delayed.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                    if let Some(Reverse((_, id))) = st.delayed.pop() {
                        st.ready.push_back(id);
                    }
                }
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
        Ok((st.ready.len() + st.delayed.len()) as u64)
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
}
