//! Stateless answers (RFC 3261 §8.2.7): what the endpoint keeps so that a refusal to a
//! request that opens nothing is sent once, and so that one source cannot turn the server
//! into an amplifier.
//!
//! A stateless UAS sends its answer once and forgets the request. Two small, bounded pieces
//! of memory stand in for the transaction it does not keep:
//!
//! - [`AnsweredCache`]: the encoded answer by server-transaction key, for `64*T1` (the
//!   longest a client retransmits, Timers B and F). A retransmitted request gets the same
//!   bytes again; an ACK for an answered INVITE is absorbed. Entries are dropped oldest
//!   first past a fixed count; a request whose entry was dropped is answered afresh.
//! - [`RefusalGuard`]: a token bucket per source address. Past `per_sec` answers in a
//!   second, the source is muted for `mute`: nothing more is sent to it, which is what a
//!   forged source (a reflection victim) needs. Known peers (registered phones, trunks,
//!   configured prefixes) are exempt. The table of sources is bounded; quiet sources are
//!   forgotten first.
//!
//! Both are pure: they take `now` from their caller and are tested on a made-up clock.
//! The endpoint ([`crate::endpoint`]) owns them and does the sending.
//!
//! The same token bucket, as a second instance with its own budget, paces the requests a
//! source may send at all (the transport drops the rest: [`crate::transport`]).
//!
//! Not here: the decision to answer statelessly (the transaction user makes it, through
//! [`crate::endpoint::Endpoint::reply_stateless`]) and connection limits for stream
//! transports.

use std::collections::VecDeque;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::map::Map;
use hashbrown::HashTable;

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or
/// /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not an address or ADDRESS/LENGTH prefix")]
pub struct IpPrefixError(pub String);

impl std::str::FromStr for IpPrefix {
    type Err = IpPrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpPrefixError(s.to_string());
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(l.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(IpPrefix { addr, len })
    }
}

impl IpPrefix {
    /// Whether `ip` lies inside the prefix (an IPv4 address never matches an IPv6 prefix).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, len: u8, width: u8) -> u128 {
            if len == 0 {
                0
            } else {
                bits >> (width - len)
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                masked(u32::from(p).into(), self.len, 32)
                    == masked(u32::from(a).into(), self.len, 32)
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                masked(u128::from(p), self.len, 128) == masked(u128::from(a), self.len, 128)
            }
            _ => false,
        }
    }
}

/// Counters of the answers sent without a transaction (read by the metrics).
#[derive(Debug, Default)]
pub struct StatelessStats {
    /// Answers sent without a transaction, replays included.
    pub sent: AtomicU64,
    /// Of those, the same answer again for a retransmitted request.
    pub replayed: AtomicU64,
    /// Answers not sent because their destination was muted.
    pub dropped: AtomicU64,
    /// Times a source went past its budget and was muted.
    pub mutes: AtomicU64,
}

/// Settings of the per-source refusal budget.
#[derive(Debug, Clone)]
pub struct RefusalGuardConfig {
    /// Answers per second one source may get (and as many at once); 0 turns the guard off.
    pub per_sec: u32,
    /// How long a source that went past the budget gets nothing.
    pub mute: Duration,
    /// Sources tracked at most; past it, quiet ones are forgotten, and while every tracked
    /// source is busy a new one is answered without being tracked.
    pub max_sources: usize,
    /// Sources that are never muted (trunks and proxies in front of the server).
    pub exempt: Vec<IpPrefix>,
}

impl Default for RefusalGuardConfig {
    fn default() -> Self {
        RefusalGuardConfig {
            per_sec: 30,
            mute: Duration::from_secs(10),
            max_sources: 65_536,
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    muted_until: Option<Instant>,
}

/// What the guard says about one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Within the budget no longer: this source has just been muted.
    Muted,
    /// The source is muted; nothing is sent.
    Silent,
}

/// Per-source token buckets (see the [module documentation](self)).
#[derive(Debug)]
pub struct RefusalGuard {
    cfg: RefusalGuardConfig,
    sources: Map<IpAddr, Bucket>,
}

impl RefusalGuard {
    pub fn new(cfg: RefusalGuardConfig) -> RefusalGuard {
        RefusalGuard {
            cfg,
            sources: Map::default(),
        }
    }

    /// Whether one more answer may go to `source` at `now` (and takes it from the budget).
    pub fn check(&mut self, source: IpAddr, now: Instant) -> Verdict {
        self.check_known(source, now, |_| false)
    }

    /// As [`RefusalGuard::check`], but a source that `known` names (a registered phone, a
    /// trunk) is never muted. `known` is asked only when the source is past its budget, so a
    /// costly look-up runs once per burst, not once per message.
    pub fn check_known(
        &mut self,
        source: IpAddr,
        now: Instant,
        known: impl FnOnce(IpAddr) -> bool,
    ) -> Verdict {
        let per_sec = self.cfg.per_sec;
        if per_sec == 0 || self.cfg.exempt.iter().any(|p| p.contains(source)) {
            return Verdict::Send;
        }
        let full = f64::from(per_sec);
        if !self.sources.contains_key(&source) && self.sources.len() >= self.cfg.max_sources {
            self.forget_quiet(now);
            if self.sources.len() >= self.cfg.max_sources {
                return Verdict::Send;
            }
        }
        let b = self.sources.entry(source).or_insert(Bucket {
            tokens: full,
            last: now,
            muted_until: None,
        });
        if let Some(until) = b.muted_until {
            if now < until {
                return Verdict::Silent;
            }
            b.muted_until = None;
            b.tokens = full;
            b.last = now;
        }
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * full).min(full);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Verdict::Send
        } else if known(source) {
            Verdict::Send
        } else {
            b.muted_until = Some(now + self.cfg.mute);
            Verdict::Muted
        }
    }

    /// Whether `source` is muted at `now` (nothing is taken from its budget).
    pub fn is_muted(&self, source: IpAddr, now: Instant) -> bool {
        self.sources
            .get(&source)
            .and_then(|b| b.muted_until)
            .is_some_and(|until| now < until)
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Drops every source whose bucket has refilled and that is not muted: forgetting it
    /// changes nothing.
    fn forget_quiet(&mut self, now: Instant) {
        let full = f64::from(self.cfg.per_sec);
        self.sources.retain(|_, b| {
            let muted = b.muted_until.is_some_and(|u| now < u);
            let refilled =
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * full >= full;
            muted || !refilled
        });
    }
}

/// An answer sent without a transaction, kept for the request's retransmissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered<F> {
    /// The bytes sent; `None` when the source was muted and nothing was sent.
    pub data: Option<Bytes>,
    /// Where it went.
    pub flow: F,
    /// The answer was exempt from the refusal budget (a known peer).
    pub exempt: bool,
}

/// Answers by server-transaction key, each for a fixed time, at most `capacity` of them
/// (see the [module documentation](self)).
///
/// Each answer is kept once, with its key, in a table found by the key's hash; the queue
/// that drops them oldest first holds only that hash, the answer's number and its expiry,
/// not a second copy of the key (a key of the endpoint's is three `Bytes`: the queue held
/// 152 bytes an answer and took three reference counts per answer kept).
pub struct AnsweredCache<K, F> {
    capacity: usize,
    ttl: Duration,
    /// Keyed at random per table, as [`Map`].
    hasher: ahash::RandomState,
    entries: HashTable<Kept<K, F>>,
    /// Answers in the order kept, so oldest first: (hash of the key, number, expiry). An
    /// answer given again for its key gets a new number; the queue's entry of the one it
    /// replaced then names nothing and is skipped.
    order: VecDeque<(u64, u64, Instant)>,
    /// The number of the next answer kept.
    next: u64,
}

/// An answer kept: its key, the answer, when it runs out and its number in the queue.
struct Kept<K, F> {
    key: K,
    answer: Answered<F>,
    expires: Instant,
    number: u64,
}

impl<K, F> std::fmt::Debug for AnsweredCache<K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnsweredCache")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("len", &self.entries.len())
            .finish()
    }
}

impl<K: Eq + Hash, F> AnsweredCache<K, F> {
    /// A cache of at most `capacity` answers, each kept `ttl` (`64*T1`).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        AnsweredCache {
            capacity,
            ttl,
            hasher: ahash::RandomState::new(),
            entries: HashTable::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    /// Keeps `answer` for `key` from `now` on.
    pub fn insert(&mut self, key: K, answer: Answered<F>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.expire(now);
        let hash = self.hasher.hash_one(&key);
        let (number, expires) = (self.next, now + self.ttl);
        self.next += 1;
        match self.entries.find_entry(hash, |k| k.key == key) {
            Ok(mut kept) => {
                let kept = kept.get_mut();
                kept.answer = answer;
                kept.expires = expires;
                kept.number = number;
            }
            Err(_) => {
                while self.entries.len() >= self.capacity {
                    let Some((h, n, _)) = self.order.pop_front() else {
                        break;
                    };
                    if let Ok(oldest) = self.entries.find_entry(h, |k| k.number == n) {
                        oldest.remove();
                    }
                }
                let hasher = &self.hasher;
                self.entries.insert_unique(
                    hash,
                    Kept {
                        key,
                        answer,
                        expires,
                        number,
                    },
                    |k| hasher.hash_one(&k.key),
                );
            }
        }
        self.order.push_back((hash, number, expires));
        // Keys answered again leave queue entries that name nothing; keep it within bounds.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let entries = &self.entries;
            self.order
                .retain(|&(h, n, _)| entries.find(h, |k| k.number == n).is_some());
        }
    }

    /// The answer kept for `key`, unless it has expired.
    pub fn get(&self, key: &K, now: Instant) -> Option<&Answered<F>> {
        self.entries
            .find(self.hasher.hash_one(key), |k| k.key == *key)
            .filter(|k| now < k.expires)
            .map(|k| &k.answer)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the answers whose time is up. A table grown for a burst is given back once it
    /// is a quarter full (shrunk to twice what it holds).
    pub fn expire(&mut self, now: Instant) {
        let mut dropped = false;
        while self.order.front().is_some_and(|&(_, _, exp)| exp <= now) {
            let Some((h, n, _)) = self.order.pop_front() else {
                break;
            };
            // Not found: its key was answered again since (a later expiry).
            if let Ok(kept) = self.entries.find_entry(h, |k| k.number == n) {
                kept.remove();
            }
            dropped = true;
        }
        if dropped {
            let room = self.entries.capacity();
            if room > 64 && self.entries.len() < room / 4 {
                let hasher = &self.hasher;
                self.entries
                    .shrink_to(self.entries.len() * 2, |k| hasher.hash_one(&k.key));
            }
            let room = self.order.capacity();
            if room > 64 && self.order.len() < room / 4 {
                self.order.shrink_to(self.order.len() * 2);
            }
        }
    }

    /// When the oldest answer kept runs out (possibly one already replaced: then nothing
    /// goes, early).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|&(_, _, exp)| exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guard(per_sec: u32, mute_secs: u64) -> RefusalGuard {
        RefusalGuard::new(RefusalGuardConfig {
            per_sec,
            mute: Duration::from_secs(mute_secs),
            max_sources: 4,
            exempt: vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        })
    }

    #[test]
    fn prefixes_parse_and_match() {
        let p: IpPrefix = "192.168.1.0/24".parse().unwrap();
        assert!(p.contains(ip("192.168.1.77")));
        assert!(!p.contains(ip("192.168.2.1")));
        assert!(!p.contains(ip("::ffff:192.168.1.1")));
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let one: IpPrefix = "2001:db8::1".parse().unwrap();
        assert!(one.contains(ip("2001:db8::1")));
        assert!(!one.contains(ip("2001:db8::2")));
        let net: IpPrefix = "2001:db8::/32".parse().unwrap();
        assert!(net.contains(ip("2001:db8:ffff::9")));
        for bad in ["10.0.0.0/33", "::/129", "host", "10.0.0.0/x", ""] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_source_past_its_budget_is_muted_then_forgiven() {
        let t0 = Instant::now();
        let mut g = guard(5, 10);
        let src = ip("192.0.2.7");
        let sent = (0..20)
            .filter(|_| g.check(src, t0) == Verdict::Send)
            .count();
        assert_eq!(sent, 5, "a second's worth at once");
        // Muted: even after the bucket would have refilled.
        assert_eq!(g.check(src, t0 + Duration::from_secs(3)), Verdict::Silent);
        assert_eq!(
            g.check(src, t0 + Duration::from_millis(9_999)),
            Verdict::Silent
        );
        // The mute is over: a full budget again.
        let later = t0 + Duration::from_secs(10);
        let sent = (0..20)
            .filter(|_| g.check(src, later) == Verdict::Send)
            .count();
        assert_eq!(sent, 5);
    }

    #[test]
    fn the_first_refusal_past_the_budget_reports_the_mute() {
        let t0 = Instant::now();
        let mut g = guard(2, 10);
        let src = ip("192.0.2.8");
        assert_eq!(g.check(src, t0), Verdict::Send);
        assert_eq!(g.check(src, t0), Verdict::Send);
        assert!(!g.is_muted(src, t0));
        assert_eq!(g.check(src, t0), Verdict::Muted);
        assert!(g.is_muted(src, t0));
        assert_eq!(g.check(src, t0), Verdict::Silent);
        assert!(!g.is_muted(src, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_steady_source_within_its_rate_is_never_muted() {
        let t0 = Instant::now();
        let mut g = guard(10, 10);
        let src = ip("192.0.2.9");
        // 9 per second for a minute.
        for i in 0..540u64 {
            let at = t0 + Duration::from_millis(i * 1000 / 9);
            assert_eq!(g.check(src, at), Verdict::Send, "answer {i}");
        }
    }

    #[test]
    fn sources_are_counted_apart_and_exempt_prefixes_are_never_muted() {
        let t0 = Instant::now();
        let mut g = guard(1, 10);
        assert_eq!(g.check(ip("192.0.2.1"), t0), Verdict::Send);
        assert_eq!(g.check(ip("192.0.2.1"), t0), Verdict::Muted);
        assert_eq!(g.check(ip("192.0.2.2"), t0), Verdict::Send);
        for _ in 0..100 {
            assert_eq!(g.check(ip("10.1.2.3"), t0), Verdict::Send);
            assert_eq!(g.check(ip("::1"), t0), Verdict::Send);
        }
        assert_eq!(g.tracked(), 2);
    }

    #[test]
    fn a_known_source_past_its_budget_is_not_muted() {
        let t0 = Instant::now();
        let mut g = guard(2, 10);
        let src = ip("192.0.2.20");
        let mut asked = 0;
        for _ in 0..10 {
            let v = g.check_known(src, t0, |_| {
                asked += 1;
                true
            });
            assert_eq!(v, Verdict::Send);
        }
        assert_eq!(asked, 8, "asked only past the budget");
        assert!(!g.is_muted(src, t0));
        assert_eq!(g.check_known(src, t0, |_| false), Verdict::Muted);
    }

    #[test]
    fn per_sec_zero_turns_the_guard_off() {
        let t0 = Instant::now();
        let mut g = guard(0, 10);
        for _ in 0..1000 {
            assert_eq!(g.check(ip("192.0.2.1"), t0), Verdict::Send);
        }
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn the_source_table_is_bounded_and_forgets_quiet_sources_first() {
        let t0 = Instant::now();
        let mut g = guard(1, 10);
        // Four sources muted: the table (4) is full of busy sources.
        for i in 1..=4u8 {
            let s = IpAddr::from([192, 0, 2, i]);
            g.check(s, t0);
            assert_eq!(g.check(s, t0), Verdict::Muted);
        }
        // A fifth is answered but not tracked; the muted ones stay muted.
        for _ in 0..3 {
            assert_eq!(g.check(ip("192.0.2.50"), t0), Verdict::Send);
        }
        assert_eq!(g.tracked(), 4);
        assert_eq!(g.check(ip("192.0.2.1"), t0), Verdict::Silent);
        // Once their mute is over and their buckets are full, they make room.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(g.check(ip("192.0.2.60"), later), Verdict::Send);
        assert_eq!(g.tracked(), 1);
    }

    fn answered(n: u8) -> Answered<u8> {
        Answered {
            data: Some(Bytes::from(vec![n])),
            flow: n,
            exempt: false,
        }
    }

    #[test]
    fn answers_are_kept_for_their_time() {
        let t0 = Instant::now();
        let mut c = AnsweredCache::new(8, Duration::from_secs(32));
        c.insert("a", answered(1), t0);
        assert_eq!(
            c.get(&"a", t0 + Duration::from_secs(31)),
            Some(&answered(1))
        );
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(32)), None);
        assert_eq!(c.get(&"b", t0), None);
        // Expired entries are dropped on the next insert.
        c.insert("b", answered(2), t0 + Duration::from_secs(40));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest_first() {
        let t0 = Instant::now();
        let mut c = AnsweredCache::new(3, Duration::from_secs(32));
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            c.insert(k, answered(i as u8), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&"a", t0), None);
        assert!(c.get(&"d", t0).is_some());
        // The same key answered again many times keeps one entry and a bounded queue.
        for i in 0..1000u64 {
            c.insert("d", answered(9), t0 + Duration::from_millis(10 + i));
        }
        assert_eq!(c.len(), 3);
        assert!(c.order.len() <= 6, "{}", c.order.len());
        assert_eq!(c.get(&"d", t0 + Duration::from_secs(1)), Some(&answered(9)));
    }

    /// The endpoint sleeps until the oldest answer runs out and expires it then; a cache
    /// emptied after a burst gives its room back.
    #[test]
    fn expiry_is_announced_and_a_burst_gives_its_room_back() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(32);
        let mut c = AnsweredCache::new(usize::MAX, ttl);
        assert_eq!(c.next_expiry(), None);
        for i in 0..10_000u32 {
            c.insert(i, answered(1), t0 + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(c.next_expiry(), Some(t0 + ttl));
        let room = c.entries.capacity();
        assert!(room >= 10_000);
        // Nothing is due before its time.
        c.expire(t0 + ttl - Duration::from_micros(1));
        assert_eq!(c.len(), 10_000);
        // All but the last hundred run out.
        c.expire(t0 + ttl + Duration::from_micros(9_899));
        assert_eq!(c.len(), 100);
        assert_eq!(c.get(&9_899, t0), None);
        assert!(c.get(&9_900, t0).is_some());
        assert_eq!(
            c.next_expiry(),
            Some(t0 + ttl + Duration::from_micros(9_900))
        );
        assert!(
            c.entries.capacity() < room / 4 && c.order.capacity() < 10_000 / 4,
            "room kept after the burst: {} entries, {} in the queue",
            c.entries.capacity(),
            c.order.capacity()
        );
    }

    /// An answer given again for its key replaces the first: the first's time running out
    /// drops nothing, and the second is kept for its own full time.
    #[test]
    fn an_answer_given_again_is_kept_for_its_own_time() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(32);
        let mut c = AnsweredCache::new(usize::MAX, ttl);
        c.insert("a", answered(1), t0);
        c.insert("b", answered(2), t0 + Duration::from_secs(1));
        c.insert("a", answered(3), t0 + Duration::from_secs(10));
        assert_eq!(c.len(), 2);
        c.expire(t0 + ttl);
        assert_eq!(c.get(&"a", t0 + ttl), Some(&answered(3)));
        c.expire(t0 + ttl + Duration::from_secs(1));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&"b", t0), None);
        assert_eq!(c.next_expiry(), Some(t0 + ttl + Duration::from_secs(10)));
        c.expire(t0 + ttl + Duration::from_secs(10));
        assert!(c.is_empty());
        assert_eq!(c.next_expiry(), None);
    }

    #[test]
    fn a_zero_capacity_cache_keeps_nothing() {
        let t0 = Instant::now();
        let mut c = AnsweredCache::new(0, Duration::from_secs(32));
        c.insert("a", answered(1), t0);
        assert!(c.is_empty());
    }
}
