//! A small time-to-live cache for review answers (TokenReview,
//! SubjectAccessReview), bounded in entries so hostile clients that send a
//! new token or path each time cannot grow it without limit.

use std::hash::Hash;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Entries kept at most; past this, expired entries are swept and, if that
/// is not enough, the cache starts over.
pub const MAX_ENTRIES: usize = 16_384;

/// Values expire `ttl` after insertion; a zero TTL disables caching.
pub struct TtlCache<K, V> {
    map: DashMap<K, (Instant, V)>,
    ttl: Duration,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: DashMap::new(),
            ttl,
        }
    }

    /// The cached value, if it has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let hit = self.map.get(key).and_then(|e| {
            let (at, v) = e.value();
            (now.duration_since(*at) < self.ttl).then(|| v.clone())
        });
        if hit.is_none() {
            self.map
                .remove_if(key, |_, (at, _)| now.duration_since(*at) >= self.ttl);
        }
        hit
    }

    /// Stores `value` for `key` for one TTL.
    pub fn insert(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        if self.map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            self.map
                .retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if self.map.len() >= MAX_ENTRIES {
                self.map.clear();
            }
        }
        self.map.insert(key, (Instant::now(), value));
    }

    /// Number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire_after_the_ttl() {
        let c = TtlCache::new(Duration::from_millis(30));
        c.insert("a", 1);
        assert_eq!(c.get(&"a"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get(&"a"), None);
        assert!(c.is_empty(), "an expired entry is removed when read");
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = TtlCache::new(Duration::ZERO);
        c.insert("a", 1);
        assert_eq!(c.get(&"a"), None);
    }

    #[test]
    fn bounded_in_entries() {
        let c = TtlCache::new(Duration::from_secs(60));
        for i in 0..(MAX_ENTRIES + 10) {
            c.insert(i, i);
        }
        assert!(c.len() <= MAX_ENTRIES);
        assert_eq!(c.get(&(MAX_ENTRIES + 9)), Some(MAX_ENTRIES + 9));
    }
}
