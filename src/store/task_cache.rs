//! Tasks recently read or written by the embedded store, so a poll of a task is answered
//! from memory instead of a statement and a JSON decode (most of a poll's store cost). The
//! embedded store is the only writer of its database, so every change passes here and the
//! cache cannot go stale; it is not used in front of MongoDB, which other processes write.
//!
//! The one hazard is a value read or written before a change landing in the cache after it
//! (a read racing a delete, a write's answer arriving after the next write's). Versions order
//! the writes; for the rest, every removal bumps a generation, and a value whose read or write
//! began before the last removal is not kept.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::domain::Task;

pub struct TaskCache {
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` when the cache is off (`TASK_CACHE_SIZE=0`).
    tasks: Option<LruCache<String, Arc<Task>>>,
    generation: u64,
}

/// When a read or write began, for [`TaskCache::keep`].
#[derive(Clone, Copy)]
pub struct Generation(u64);

impl TaskCache {
    /// Holds up to `capacity` tasks; none (every call a no-op) with 0.
    pub fn new(capacity: usize) -> TaskCache {
        TaskCache {
            inner: Mutex::new(Inner {
                tasks: NonZeroUsize::new(capacity).map(LruCache::new),
                generation: 0,
            }),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.inner.lock().ok()?.tasks.as_mut()?.get(id).cloned()
    }

    /// Taken before a read or write whose result may be kept.
    pub fn generation(&self) -> Generation {
        Generation(self.inner.lock().map(|i| i.generation).unwrap_or(u64::MAX))
    }

    /// Keeps `task` as read, or as committed by a write, that began at `since`; never over a
    /// newer version. If something was removed meanwhile, the task is forgotten instead: a read
    /// racing a delete could bring it back, and a read may have kept a version older than this
    /// write's (forgetting costs a miss, never a wrong answer).
    pub fn keep(&self, task: &Task, since: Generation) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let stale = inner.generation != since.0;
        let Some(tasks) = inner.tasks.as_mut() else {
            return;
        };
        if stale {
            tasks.pop(&task.id);
        } else if tasks
            .peek(&task.id)
            .is_none_or(|held| held.version <= task.version)
        {
            tasks.put(task.id.clone(), Arc::new(task.clone()));
        }
    }

    /// Forgets a task (deleted, or changed without a new version).
    pub fn remove(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(tasks) = inner.tasks.as_mut() {
                tasks.pop(id);
            }
            inner.generation += 1;
        }
    }

    /// Forgets every task (a user and all their tasks deleted).
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(tasks) = inner.tasks.as_mut() {
                tasks.clear();
            }
            inner.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ImageParams, Task};

    fn task(id: &str, version: i64) -> Task {
        let mut t = Task::new_pending(
            "u".into(),
            "m".into(),
            "p".into(),
            ImageParams::default(),
            None,
            chrono::Utc::now(),
        );
        t.id = id.into();
        t.version = version;
        t
    }

    #[test]
    fn newer_versions_win_and_removals_beat_reads_that_began_before_them() {
        let c = TaskCache::new(2);
        let g = c.generation();
        c.keep(&task("a", 2), g);
        c.keep(&task("a", 1), g);
        assert_eq!(
            c.get("a").map(|t| t.version),
            Some(2),
            "an older version never replaces"
        );

        let before_delete = c.generation();
        c.remove("a");
        c.keep(&task("a", 2), before_delete);
        assert!(
            c.get("a").is_none(),
            "a read from before the delete is not kept"
        );
        c.keep(&task("a", 3), c.generation());
        assert_eq!(c.get("a").map(|t| t.version), Some(3));

        let before_clear = c.generation();
        c.clear();
        c.keep(&task("b", 1), before_clear);
        assert!(c.get("a").is_none() && c.get("b").is_none());

        // A read kept version 1; version 2 is written while another task is removed: the
        // write cannot be recorded, so version 1 must not stay either.
        let g = c.generation();
        c.keep(&task("c", 1), g);
        c.remove("other");
        c.keep(&task("c", 2), g);
        assert!(c.get("c").is_none(), "a stale version is forgotten");
        c.keep(&task("c", 2), c.generation());
        assert_eq!(c.get("c").map(|t| t.version), Some(2));

        let g = c.generation();
        for id in ["x", "y", "z"] {
            c.keep(&task(id, 1), g);
        }
        assert!(
            c.get("x").is_none(),
            "bounded: the least recently used went"
        );
        assert!(c.get("z").is_some());

        let off = TaskCache::new(0);
        off.keep(&task("a", 1), off.generation());
        off.keep(&task("b", 1), off.generation());
        assert!(off.get("a").is_none() && off.get("b").is_none());
    }
}
