//! [`ReadCache`]: provisioning data read from the store, kept in memory for the hot paths
//! (an API request's account, the agent user, the account's numbers and trunks, a device's
//! credentials), so that a call or a registration does not make a trip to the store for
//! data that changes a few times a day.
//!
//! An entry is trusted while both hold:
//! - the store's [`crate::Store::provisioning_generation`] is what it was when the entry was
//!   read (any provisioning write through this store bumps it, so a change made through
//!   this node is seen at once);
//! - it is younger than the cache's time to live (a change made by another node sharing
//!   the database is seen within it).
//!
//! Misses are cached too (an unknown API secret or device name is not read again and
//! again). The cache holds at most `capacity` entries and starts over past it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry<V> {
    value: V,
    generation: u64,
    read_at: Instant,
}

/// Values of type `V` by key `K`, checked against the store's provisioning generation and
/// a time to live.
pub struct ReadCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, Entry<V>>>,
}

impl<K, V> std::fmt::Debug for ReadCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<K: Eq + Hash, V: Clone> ReadCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> ReadCache<K, V> {
        ReadCache {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value kept for `key`, if it is still to be trusted at `generation` and `now`.
    pub fn get<Q>(&self, key: &Q, generation: u64, now: Instant) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().ok()?;
        let e = entries.get(key)?;
        (e.generation == generation && now.saturating_duration_since(e.read_at) < self.ttl)
            .then(|| e.value.clone())
    }

    /// Keeps `value`, read at `now` after the generation was `generation` (read the
    /// generation before the store: a change that lands meanwhile makes the entry stale).
    pub fn put(&self, key: K, value: V, generation: u64, now: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Everything kept is stale once the generation moved: start over.
        if entries.len() >= self.capacity
            || entries
                .values()
                .next()
                .is_some_and(|e| e.generation != generation)
        {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                value,
                generation,
                read_at: now,
            },
        );
    }

    /// Whether an entry is kept for `key` (trusted or not).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .lock()
            .map(|e| e.contains_key(key))
            .unwrap_or(false)
    }

    /// Entries kept now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads through `cache`: the kept value while it is trusted, else `read()` (kept when it
/// succeeds). `generation` is the store's provisioning generation read before calling.
pub async fn read_through<K, V, E, F>(
    cache: &ReadCache<K, V>,
    key: K,
    generation: u64,
    read: F,
) -> Result<V, E>
where
    K: Eq + Hash,
    V: Clone,
    F: std::future::Future<Output = Result<V, E>>,
{
    let now = Instant::now();
    if let Some(v) = cache.get(&key, generation, now) {
        return Ok(v);
    }
    let v = read.await?;
    cache.put(key, v.clone(), generation, now);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_trusted_until_the_generation_moves_or_it_ages() {
        let c: ReadCache<String, Option<u32>> = ReadCache::new(Duration::from_secs(5), 10);
        let t0 = Instant::now();
        c.put("a".into(), Some(1), 7, t0);
        c.put("missing".into(), None, 7, t0);
        assert_eq!(c.get("a", 7, t0 + Duration::from_secs(4)), Some(Some(1)));
        assert_eq!(c.get("missing", 7, t0), Some(None));
        assert_eq!(c.get("a", 8, t0), None, "the generation moved");
        assert_eq!(c.get("a", 7, t0 + Duration::from_secs(5)), None, "too old");
        // A value read at the new generation empties what was kept at the old one.
        c.put("b".into(), Some(2), 8, t0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_cache_starts_over_at_its_capacity() {
        let c: ReadCache<u32, u32> = ReadCache::new(Duration::from_secs(5), 3);
        let t0 = Instant::now();
        for k in 0..3 {
            c.put(k, k, 1, t0);
        }
        assert_eq!(c.len(), 3);
        c.put(3, 3, 1, t0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&3, 1, t0), Some(3));
    }

    #[tokio::test]
    async fn read_through_reads_once_and_keeps_no_error() {
        let c: ReadCache<&str, u32> = ReadCache::new(Duration::from_secs(5), 10);
        let mut reads = 0;
        for _ in 0..3 {
            let v: Result<u32, ()> = read_through(&c, "k", 1, async {
                reads += 1;
                Ok(5)
            })
            .await;
            assert_eq!(v, Ok(5));
        }
        assert_eq!(reads, 1);
        let e: Result<u32, &str> = read_through(&c, "e", 1, async { Err("down") }).await;
        assert_eq!(e, Err("down"));
        assert_eq!(c.get("e", 1, Instant::now()), None);
    }
}
