//! Polls answered from memory in the distributed mode. Every task change crosses the event bus,
//! and every api process already hears all of them (one pattern subscription of the Redis relay),
//! so a process keeps the tasks it was asked for, or heard of, current from those events and
//! answers a poll without a MongoDB read while it can be sure nothing was missed.
//!
//! The rule (docs/architecture.md, "Polls from memory"): an entry is trusted only
//! - while the relay has stayed subscribed since the entry was kept: every drop and every
//!   (re)subscription forgets all entries, and nothing is kept or trusted while it is down;
//! - for at most `POLL_CACHE_TTL` after it was kept, the bound on a change that was stored but
//!   never announced (a publish that failed, a delete on another process).
//!
//! A store read is kept only if nothing was forgotten while it ran, never over a newer
//! version. This process's own changes (creates, cancels, retries, the worker's changes in a
//! `serve` process) are kept before they are answered, and its deletes forgotten.
//!
//! Entries hold tasks without their reference images (what polls show and events carry), so the
//! cache serves polls only: a change is always made on a store read.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;

use crate::domain::Task;
use crate::events::TaskObserver;
use crate::store::task_cache::{Generation, TaskCache};
use crate::store::TaskCacheBounds;

/// How many deletes of this process are remembered; an event older than the last of them is
/// long delivered (events take milliseconds; see docs/benchmarks.md).
const DELETED_KEPT: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

pub struct PollCache {
    tasks: TaskCache,
    /// Whether changes reach this process now (the relay is subscribed).
    up: AtomicBool,
    ttl: Duration,
    /// Tasks deleted here lately: an event of theirs still on its way must not bring them back.
    deleted: Mutex<LruCache<String, ()>>,
    /// Tasks being re-read in the background (`refreshing`).
    refreshes: Mutex<HashSet<String>>,
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl PollCache {
    /// Holds up to `bounds`, trusting an entry for `ttl`. Trusts nothing until the event bus says
    /// changes arrive (`TaskObserver::connected`).
    pub fn new(bounds: TaskCacheBounds, ttl: Duration) -> PollCache {
        PollCache {
            tasks: TaskCache::new(bounds),
            up: AtomicBool::new(false),
            ttl,
            deleted: Mutex::new(LruCache::new(DELETED_KEPT)),
            refreshes: Mutex::default(),
            hits: metrics::counter!("poll_cache_total", "result" => "hit"),
            misses: metrics::counter!("poll_cache_total", "result" => "miss"),
        }
    }

    /// The task as this process can vouch for it, or `None`: read the store. With it, whether
    /// the entry is past half its time: then the caller re-reads it in the background
    /// ([`PollCache::refreshing`]), so that a task polled all the time never expires and its
    /// polls never all miss together (each miss a database read, all at once).
    pub fn get(&self, id: &str) -> Option<(Arc<Task>, bool)> {
        let held = if self.up.load(Ordering::SeqCst) {
            self.tasks.get_fresh(id, self.ttl)
        } else {
            None
        };
        match held {
            Some((task, age)) => {
                self.hits.increment(1);
                Some((task, age > self.ttl / 2))
            }
            None => {
                self.misses.increment(1);
                None
            }
        }
    }

    /// Claims the background re-read of `id`: `None` when one is already under way. The claim
    /// ends when the returned guard is dropped.
    pub fn refreshing(self: &Arc<Self>, id: &str) -> Option<Refresh> {
        let mut under_way = self.refreshes.lock().ok()?;
        under_way.insert(id.to_string()).then(|| Refresh {
            cache: self.clone(),
            id: id.to_string(),
        })
    }

    /// Taken before a store read whose result may be kept; `None` when it may not (the relay
    /// is down). `lost` sets `up` before it forgets (which moves the generation), so a read
    /// either sees it down here or fails to be kept.
    pub fn reading(&self) -> Option<Generation> {
        let since = self.tasks.generation();
        self.up.load(Ordering::SeqCst).then_some(since)
    }

    /// Keeps a task read from the store (or written by this process) since `since`.
    pub fn keep(&self, task: &Task, since: Generation) {
        let mut shown = task.without_reference_images();
        shown.outbox.clear();
        self.tasks.keep_arc(&Arc::new(shown), since);
    }

    /// A change this process made: kept if changes are arriving, so the client that made it
    /// never polls an older version here.
    pub fn wrote(&self, task: &Task) {
        if let Some(since) = self.reading() {
            self.keep(task, since);
        }
    }

    /// A task deleted here (or that must be read afresh).
    pub fn forget(&self, id: &str) {
        if let Ok(mut deleted) = self.deleted.lock() {
            deleted.put(id.to_string(), ());
        }
        self.tasks.remove(id);
    }

    fn was_deleted(&self, id: &str) -> bool {
        self.deleted.lock().map_or(true, |d| d.contains(id))
    }

    /// Every task (a user deleted with their tasks).
    pub fn forget_all(&self) {
        self.tasks.clear();
    }
}

/// A background re-read of one task under way (`PollCache::refreshing`).
pub struct Refresh {
    cache: Arc<PollCache>,
    id: String,
}

impl Refresh {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cache(&self) -> &PollCache {
        &self.cache
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        if let Ok(mut under_way) = self.cache.refreshes.lock() {
            under_way.remove(&self.id);
        }
    }
}

impl TaskObserver for PollCache {
    fn updated(&self, task: &Arc<Task>) {
        if self.was_deleted(&task.id) {
            return;
        }
        if let Some(since) = self.reading() {
            self.tasks.keep_arc(task, since);
        }
    }

    fn connected(&self) {
        // Forgotten first: what was kept before may have been followed by missed changes.
        self.tasks.clear();
        self.up.store(true, Ordering::SeqCst);
    }

    fn lost(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.tasks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ImageParams;

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

    fn cache(ttl: Duration) -> PollCache {
        PollCache::new(
            TaskCacheBounds {
                tasks: 100,
                bytes: 1 << 20,
            },
            ttl,
        )
    }

    #[test]
    fn nothing_is_trusted_across_a_break_in_the_events() {
        let c = cache(Duration::from_secs(60));
        c.updated(&Arc::new(task("a", 1)));
        assert!(c.get("a").is_none(), "nothing kept before the bus connects");
        assert!(c.reading().is_none());

        c.connected();
        c.updated(&Arc::new(task("a", 1)));
        c.updated(&Arc::new(task("a", 3)));
        c.updated(&Arc::new(task("a", 2)));
        assert_eq!(
            c.get("a").map(|(t, _)| t.version),
            Some(3),
            "newest version wins"
        );

        // A read that began before a break is not kept after it.
        let since = c.reading().expect("up");
        c.lost();
        assert!(c.get("a").is_none(), "forgotten when the relay drops");
        assert!(c.reading().is_none(), "no read is kept while it is down");
        c.connected();
        c.keep(&task("a", 3), since);
        assert!(
            c.get("a").is_none(),
            "a read from before the break is not kept"
        );
        c.wrote(&task("a", 4));
        assert_eq!(c.get("a").map(|(t, _)| t.version), Some(4));

        c.forget("a");
        assert!(c.get("a").is_none(), "a delete is seen at once");
        c.updated(&Arc::new(task("a", 4)));
        assert!(c.get("a").is_none(), "a late event does not bring it back");
    }

    #[test]
    fn entries_expire_and_hold_no_reference_images() {
        let c = cache(Duration::from_millis(0));
        c.connected();
        c.wrote(&task("a", 1));
        assert!(
            c.get("a").is_none(),
            "an entry older than the TTL is a miss"
        );

        let c = cache(Duration::from_secs(60));
        c.connected();
        let mut t = task("b", 1);
        t.params.images = vec!["data:image/png;base64,AAAA".into()];
        c.wrote(&t);
        let (held, stale) = c.get("b").expect("kept");
        assert!(held.params.images.is_empty());
        assert!(!stale, "a new entry needs no re-read");
        let c = Arc::new(c);
        let claim = c.refreshing("b").expect("the first claims the re-read");
        assert!(c.refreshing("b").is_none(), "one re-read at a time");
        drop(claim);
        assert!(c.refreshing("b").is_some(), "claimable again once done");
    }
}
