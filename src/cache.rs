//! A small map whose entries are trusted for a fixed time, for answers the store gives that
//! may be reused briefly (API keys, users known to exist). Bounded: when full, expired entries
//! go, and if that is not enough the map starts over (each miss is only a store read).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<V> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration, max: usize) -> TtlCache<V> {
        TtlCache {
            ttl,
            max,
            entries: Mutex::default(),
        }
    }

    /// The value stored under `key` less than the TTL ago.
    pub fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn insert(&self, key: &str, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.max {
                entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
                if entries.len() >= self.max {
                    entries.clear();
                }
            }
            entries.insert(key.to_string(), (Instant::now(), value));
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TtlCache;
    use std::time::Duration;

    #[test]
    fn entries_expire_are_removed_and_stay_bounded() {
        let c = TtlCache::new(Duration::from_millis(50), 2);
        c.insert("a", 1);
        assert_eq!(c.get("a"), Some(1));
        c.remove("a");
        assert_eq!(c.get("a"), None);
        c.insert("a", 1);
        c.insert("b", 2);
        c.insert("c", 3);
        assert!(c.get("a").is_none() || c.get("b").is_none(), "bounded to 2");
        assert_eq!(c.get("c"), Some(3));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("c"), None);
    }
}
