//! The hash table of the per-message paths: [`Map`], a `HashMap` keyed by aHash with a random
//! key per table.
//!
//! The transaction layer looks a message up in several tables (transactions by id, by branch,
//! answered requests, 2xx retransmissions) and keeps most keys a few seconds, so hashing is on
//! every message's path; std's SipHash-1-3 showed at 3-4 % of the registrar's CPU. aHash is
//! several times faster on these short keys and, keyed at random per table like std's
//! `RandomState`, still leaves a peer no way to choose branches that collide (HashDoS).

use std::collections::HashMap;

/// A `HashMap` with [`ahash::RandomState`]: build it with `Map::default()`.
pub type Map<K, V> = HashMap<K, V, ahash::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_keyed_apart() {
        // Two tables hash the same key differently: their keys are drawn at random.
        let a: Map<&str, ()> = Map::default();
        let b: Map<&str, ()> = Map::default();
        let key = "z9hG4bK776asdhds";
        assert_ne!(a.hasher().hash_one(key), b.hasher().hash_one(key));
        assert_eq!(a.hasher().hash_one(key), a.hasher().hash_one(key));
    }
}
