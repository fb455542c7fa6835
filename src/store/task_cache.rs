//! Tasks recently read or written by the embedded store, so a poll of a task is answered
//! from memory instead of a statement and a JSON decode (most of a poll's store cost). The
//! embedded store is the only writer of its database, so every change passes here and the
//! cache cannot go stale; it is not used in front of MongoDB, which other processes write.
//!
//! Bounded twice: by tasks (`TASK_CACHE_SIZE`) and by bytes (`TASK_CACHE_BYTES`), each entry
//! weighed by what it holds (its strings, reference images as data URLs up to 14 MB each, the
//! echoed options): a count alone let a few thousand image-to-image tasks hold gigabytes. A task
//! heavier than a quarter of the byte bound is not kept (its polls read the store).
//!
//! The one hazard is a value read or written before a change landing in the cache after it
//! (a read racing a delete, a write's answer arriving after the next write's). Versions order
//! the writes; for the rest, every removal bumps a generation, and a value whose read or write
//! began before the last removal is not kept.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::domain::Task;

/// How much the cache may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCacheBounds {
    /// Tasks at most (0: the cache is off).
    pub tasks: usize,
    /// Bytes at most, the entries weighed by [`weight`] (0: the cache is off).
    pub bytes: usize,
}

pub struct TaskCache {
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` when the cache is off.
    tasks: Option<LruCache<String, Entry>>,
    bounds: TaskCacheBounds,
    /// Sum of the entries' weights.
    bytes: usize,
    generation: u64,
    /// `/metrics`' `task_cache_bytes` and `task_cache_tasks`: handles kept, as every poll and
    /// every write passes here and a `gauge!` looks its name up in the registry each time.
    bytes_gauge: metrics::Gauge,
    tasks_gauge: metrics::Gauge,
}

struct Entry {
    task: Arc<Task>,
    weight: usize,
    /// When this version was kept (the poll cache of the distributed mode trusts it for a while).
    kept_at: Instant,
}

/// When a read or write began, for [`TaskCache::keep`].
#[derive(Clone, Copy)]
pub struct Generation(u64);

/// What an entry costs in memory: the task, its heap data, its key and the LRU's node (an
/// estimate from above of the allocations, not of the allocator's rounding).
pub fn weight(t: &Task) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let p = &t.params;
    let images: usize = p.images.iter().map(|i| i.len() + 24).sum();
    let result = t.result.as_ref().map_or(0, |r| {
        r.images
            .iter()
            .map(|i| {
                std::mem::size_of_val(i) + i.id.len() + opt(&i.provider_url) + i.content_type.len()
            })
            .sum()
    });
    let error = t
        .error
        .as_ref()
        .map_or(0, |e| e.code.len() + e.message.len());
    let unkept = t.unkept.as_ref().map_or(0, |u| {
        opt(&u.request_id)
            + opt(&u.provider_key)
            + u.images
                .iter()
                .map(|i| std::mem::size_of_val(i) + i.url.len() + opt(&i.size))
                .sum::<usize>()
    });
    // Per entry: the Arc's counts, the key (a copy of the id) and the LRU's node and map slot.
    const OVERHEAD: usize = 16 + 128;
    std::mem::size_of::<Task>()
        + OVERHEAD
        + 2 * t.id.len()
        + t.user_id.len()
        + t.kind.as_str().len()
        + t.model.len()
        + t.prompt.len()
        + p.size.len()
        + images
        + opt(&p.quality)
        + opt(&p.style)
        + p.options.as_ref().map_or(0, json_weight)
        + result
        + error
        + opt(&t.idempotency_key)
        + opt(&t.request_hash)
        + opt(&t.lease_owner)
        + opt(&t.provider_request_id)
        + opt(&t.provider_key)
        + unkept
}

/// The heap a JSON value holds, from above.
fn json_weight(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    let node = std::mem::size_of::<Value>();
    node + match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(json_weight).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + 48 + json_weight(v)).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

impl TaskCache {
    /// Holds up to `bounds`; none (every call a no-op) when either is 0.
    pub fn new(bounds: TaskCacheBounds) -> TaskCache {
        let on = bounds.tasks > 0 && bounds.bytes > 0;
        TaskCache {
            inner: Mutex::new(Inner {
                // Unbounded by count in the LRU itself: `keep` evicts by both bounds.
                tasks: on.then(LruCache::unbounded),
                bounds,
                bytes: 0,
                generation: 0,
                bytes_gauge: metrics::gauge!("task_cache_bytes"),
                tasks_gauge: metrics::gauge!("task_cache_tasks"),
            }),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        let mut inner = self.inner.lock().ok()?;
        inner.tasks.as_mut()?.get(id).map(|e| e.task.clone())
    }

    /// The task if it was kept less than `max_age` ago, and how long ago.
    pub fn get_fresh(&self, id: &str, max_age: Duration) -> Option<(Arc<Task>, Duration)> {
        let mut inner = self.inner.lock().ok()?;
        let e = inner.tasks.as_mut()?.get(id)?;
        let age = e.kept_at.elapsed();
        (age < max_age).then(|| (e.task.clone(), age))
    }

    /// Tasks held and their weight in bytes.
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        self.inner.lock().map_or((0, 0), |i| {
            (i.tasks.as_ref().map_or(0, LruCache::len), i.bytes)
        })
    }

    /// Taken before a read or write whose result may be kept.
    pub fn generation(&self) -> Generation {
        Generation(self.inner.lock().map(|i| i.generation).unwrap_or(u64::MAX))
    }

    /// Keeps `task` as read, or as committed by a write, that began at `since`; never over a
    /// newer version. If something was removed meanwhile, the task is forgotten instead: a read
    /// racing a delete could bring it back, and a read may have kept a version older than this
    /// write's (forgetting costs a miss, never a wrong answer). The least recently used tasks
    /// make room; a task too heavy to keep is forgotten too.
    pub fn keep(&self, task: &Task, since: Generation) {
        self.keep_shared(|| Arc::new(task.clone()), task, since);
    }

    /// As [`TaskCache::keep`], for a task already shared (an event's), kept without a copy.
    pub fn keep_arc(&self, task: &Arc<Task>, since: Generation) {
        self.keep_shared(|| task.clone(), task, since);
    }

    fn keep_shared(&self, shared: impl FnOnce() -> Arc<Task>, task: &Task, since: Generation) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let stale = inner.generation != since.0;
        if inner.tasks.is_none() {
            return;
        }
        if stale {
            inner.pop(&task.id);
            inner.report();
            return;
        }
        let newer_held = inner
            .tasks
            .as_mut()
            .and_then(|tasks| tasks.peek(&task.id))
            .is_some_and(|held| held.task.version > task.version);
        if newer_held {
            return;
        }
        inner.pop(&task.id);
        let weight = weight(task);
        if weight > inner.bounds.bytes / 4 {
            inner.report();
            return;
        }
        inner.bytes += weight;
        let entry = Entry {
            task: shared(),
            weight,
            kept_at: Instant::now(),
        };
        if let Some(tasks) = inner.tasks.as_mut() {
            tasks.put(task.id.clone(), entry);
        }
        inner.shrink();
    }

    /// Forgets a task (deleted, or changed without a new version).
    pub fn remove(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.pop(id);
            inner.generation += 1;
            inner.report();
        }
    }

    /// Forgets every task (a user and all their tasks deleted).
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(tasks) = inner.tasks.as_mut() {
                tasks.clear();
            }
            inner.bytes = 0;
            inner.generation += 1;
            inner.report();
        }
    }
}

impl Inner {
    fn pop(&mut self, id: &str) {
        if let Some(gone) = self.tasks.as_mut().and_then(|t| t.pop(id)) {
            self.bytes -= gone.weight;
        }
    }

    /// Evicts the least recently used tasks until both bounds hold.
    fn shrink(&mut self) {
        if let Some(tasks) = self.tasks.as_mut() {
            while tasks.len() > self.bounds.tasks || self.bytes > self.bounds.bytes {
                match tasks.pop_lru() {
                    Some((_, gone)) => self.bytes -= gone.weight,
                    None => break,
                }
            }
        }
        self.report();
    }

    /// The `task_cache_bytes` and `task_cache_tasks` gauges of `/metrics`.
    fn report(&self) {
        let tasks = self.tasks.as_ref().map_or(0, LruCache::len);
        self.bytes_gauge.set(self.bytes as f64);
        self.tasks_gauge.set(tasks as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ImageParams, Task};

    const ROOMY: TaskCacheBounds = TaskCacheBounds {
        tasks: 2,
        bytes: 1 << 20,
    };

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
        let c = TaskCache::new(ROOMY);
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

        for bounds in [
            TaskCacheBounds { tasks: 0, bytes: 1 },
            TaskCacheBounds { tasks: 1, bytes: 0 },
        ] {
            let off = TaskCache::new(bounds);
            off.keep(&task("a", 1), off.generation());
            off.keep(&task("b", 1), off.generation());
            assert!(off.get("a").is_none() && off.get("b").is_none());
            assert_eq!(off.usage(), (0, 0));
        }
    }

    /// Tasks with reference images: the cache holds what its byte bound allows, however many
    /// tasks its count allows, and its tally matches what it holds through every change.
    #[test]
    fn heavy_tasks_are_bounded_by_bytes() {
        let bound = 4 << 20;
        let c = TaskCache::new(TaskCacheBounds {
            tasks: 10_000,
            bytes: bound,
        });
        let image = format!("data:image/png;base64,{}", "A".repeat(300 << 10));
        let heavy = |id: &str, version| {
            let mut t = task(id, version);
            t.params.images = vec![image.clone(), image.clone()];
            t
        };
        assert!(weight(&heavy("w", 1)) > 600 << 10, "images are weighed");
        let tally = |c: &TaskCache| {
            let inner = c.inner.lock().expect("lock");
            let tasks = inner.tasks.as_ref().expect("on");
            tasks.iter().map(|(_, e)| weight(&e.task)).sum::<usize>()
        };
        for i in 0..200 {
            let id = format!("t{i}");
            c.keep(&heavy(&id, 1), c.generation());
            c.keep(&heavy(&id, 2), c.generation());
            if i % 7 == 0 {
                c.remove(&format!("t{}", i / 2));
            }
            let (n, bytes) = c.usage();
            assert!(bytes <= bound, "{bytes} bytes held, bound {bound}");
            assert_eq!(bytes, tally(&c), "the tally matches the entries");
            assert!(n <= 7, "{n} heavy tasks held in {bound} bytes");
        }
        assert!(c.get("t199").is_some(), "the latest is kept");
        assert!(c.get("t0").is_none(), "the oldest went");

        // Light tasks still fill the count bound.
        for i in 0..1000 {
            c.keep(&task(&format!("l{i}"), 1), c.generation());
        }
        assert!(c.get("l999").is_some() && c.get("l0").is_some());

        // One task heavier than a quarter of the bound is not kept, and drops its old version.
        c.keep(&task("big", 1), c.generation());
        let mut big = task("big", 2);
        big.params.images = vec!["x".repeat(bound / 4)];
        c.keep(&big, c.generation());
        assert!(c.get("big").is_none(), "too heavy, and version 1 is gone");
        assert_eq!(c.usage().1, tally(&c));

        c.clear();
        assert_eq!(c.usage(), (0, 0));
    }
}
