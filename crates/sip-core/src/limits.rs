//! Connection limits for stream listeners (SIP over TCP, the REST API): a cap on the
//! connections open at once and a cap per source address, so that one source cannot take
//! the descriptors every other client needs.
//!
//! A listener asks [`ConnectionLimits::admit`] for each accepted connection. Within the caps
//! it gets a [`ConnSlot`], which gives the place back when dropped; over a cap it gets a
//! [`Refused`] and closes the connection at once (it never stops accepting: a full backlog
//! would lock out every client, not only the one over its cap). A refusal says whether it
//! is the first for its source within the log interval, so that a flood is logged once per
//! source and interval, not once per connection. Everything is counted in
//! [`ConnectionStats`] for the metrics.
//!
//! Pure apart from a mutex: time comes from the caller. Not here: time-outs (each listener
//! has its own) and the decision that a source is a known peer (the caller passes it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of one listener's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimitsConfig {
    /// Connections open at once; 0 means no cap.
    pub max_total: usize,
    /// Connections open at once from one source address; 0 means no cap.
    pub max_per_source: usize,
    /// A source's refusals are logged at most once per interval.
    pub log_interval: Duration,
    /// Sources whose last log time is remembered at most (bounded memory).
    pub log_sources: usize,
}

impl Default for ConnectionLimitsConfig {
    fn default() -> Self {
        ConnectionLimitsConfig {
            max_total: 0,
            max_per_source: 0,
            log_interval: Duration::from_secs(60),
            log_sources: 4096,
        }
    }
}

/// Counters of one listener (read by the metrics).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now (admitted and not yet closed).
    pub open: AtomicU64,
    /// Connections admitted so far.
    pub accepted: AtomicU64,
    /// Connections closed at once because the listener was full.
    pub refused_total: AtomicU64,
    /// Connections closed at once because their source had its share already.
    pub refused_per_source: AtomicU64,
}

/// Which cap a connection went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Total,
    PerSource,
}

/// A connection over a cap: close it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub cap: Cap,
    /// Connections open from this source now.
    pub from_source: usize,
    /// Whether this is the source's first refusal within the log interval (log it).
    pub log: bool,
}

#[derive(Debug, Default)]
struct Table {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    logged: HashMap<IpAddr, Instant>,
}

/// The caps of one listener and what is open under them (see the
/// [module documentation](self)).
#[derive(Debug)]
pub struct ConnectionLimits {
    cfg: ConnectionLimitsConfig,
    table: Mutex<Table>,
    pub stats: ConnectionStats,
}

/// A place under the caps; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limits.release(self.source);
    }
}

impl ConnectionLimits {
    pub fn new(cfg: ConnectionLimitsConfig) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            cfg,
            table: Mutex::new(Table::default()),
            stats: ConnectionStats::default(),
        })
    }

    pub fn config(&self) -> &ConnectionLimitsConfig {
        &self.cfg
    }

    /// Admits a connection from `source` at `now`, or says which cap it is over.
    /// `exempt_from_source_cap` is asked only when the source is at its cap (a registered
    /// phone or a trunk may open more; the total cap holds for everybody).
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        now: Instant,
        exempt_from_source_cap: impl FnOnce(IpAddr) -> bool,
    ) -> Result<ConnSlot, Refused> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = t.per_source.get(&source).copied().unwrap_or(0);
        let cap = if self.cfg.max_total > 0 && t.total >= self.cfg.max_total {
            Some(Cap::Total)
        } else if self.cfg.max_per_source > 0
            && from_source >= self.cfg.max_per_source
            && !exempt_from_source_cap(source)
        {
            Some(Cap::PerSource)
        } else {
            None
        };
        if let Some(cap) = cap {
            let log = Self::first_in_interval(&mut t, &self.cfg, source, now);
            drop(t);
            let counter = match cap {
                Cap::Total => &self.stats.refused_total,
                Cap::PerSource => &self.stats.refused_per_source,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(Refused {
                cap,
                from_source,
                log,
            });
        }
        t.total += 1;
        *t.per_source.entry(source).or_insert(0) += 1;
        drop(t);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(ConnSlot {
            limits: Arc::clone(self),
            source,
        })
    }

    /// Connections open now, and from `source`.
    pub fn open(&self, source: IpAddr) -> (usize, usize) {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        (t.total, t.per_source.get(&source).copied().unwrap_or(0))
    }

    fn release(&self, source: IpAddr) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                t.per_source.remove(&source);
            }
        }
        drop(t);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether `source` has not been logged within the interval (and notes it now). While
    /// the memory of logged sources is full of recent ones, nothing more is logged.
    fn first_in_interval(
        t: &mut Table,
        cfg: &ConnectionLimitsConfig,
        source: IpAddr,
        now: Instant,
    ) -> bool {
        if let Some(at) = t.logged.get(&source) {
            if now.saturating_duration_since(*at) < cfg.log_interval {
                return false;
            }
        } else if t.logged.len() >= cfg.log_sources {
            let interval = cfg.log_interval;
            t.logged
                .retain(|_, at| now.saturating_duration_since(*at) < interval);
            if t.logged.len() >= cfg.log_sources {
                return false;
            }
        }
        t.logged.insert(source, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    fn limits(total: usize, per_source: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(ConnectionLimitsConfig {
            max_total: total,
            max_per_source: per_source,
            log_interval: Duration::from_secs(60),
            log_sources: 2,
        })
    }

    #[test]
    fn one_source_gets_its_share_and_no_more() {
        let l = limits(10, 3);
        let t0 = Instant::now();
        let held: Vec<ConnSlot> = (0..3)
            .map(|_| l.admit(ip(1), t0, |_| false).unwrap())
            .collect();
        let r = l.admit(ip(1), t0, |_| false).unwrap_err();
        assert_eq!(r.cap, Cap::PerSource);
        assert_eq!(r.from_source, 3);
        assert!(r.log, "the first refusal is logged");
        assert!(!l.admit(ip(1), t0, |_| false).unwrap_err().log);
        // Another source is admitted.
        let _other = l.admit(ip(2), t0, |_| false).unwrap();
        assert_eq!(l.open(ip(1)), (4, 3));
        assert_eq!(l.stats.refused_per_source.load(Ordering::Relaxed), 2);
        // A place given back is a place taken again.
        drop(held);
        assert_eq!(l.open(ip(1)), (1, 0));
        assert!(l.admit(ip(1), t0, |_| false).is_ok());
        assert_eq!(l.stats.open.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_total_cap_holds_for_everybody_and_known_peers_pass_the_source_cap() {
        let l = limits(4, 2);
        let t0 = Instant::now();
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(l.admit(ip(1), t0, |_| false).unwrap());
        }
        // A known peer is not held to its source's share...
        held.push(l.admit(ip(1), t0, |_| true).unwrap());
        held.push(l.admit(ip(2), t0, |_| false).unwrap());
        // ...but the total is the total.
        let r = l.admit(ip(3), t0, |_| true).unwrap_err();
        assert_eq!(r.cap, Cap::Total);
        assert_eq!(l.stats.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(l.stats.accepted.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn refusals_are_logged_once_per_source_and_interval_in_bounded_memory() {
        let l = limits(1, 0);
        let t0 = Instant::now();
        let _held = l.admit(ip(9), t0, |_| false).unwrap();
        assert!(l.admit(ip(1), t0, |_| false).unwrap_err().log);
        assert!(
            !l.admit(ip(1), t0 + Duration::from_secs(59), |_| false)
                .unwrap_err()
                .log
        );
        assert!(
            l.admit(ip(1), t0 + Duration::from_secs(60), |_| false)
                .unwrap_err()
                .log
        );
        // Two sources remembered at most: a third is not logged while both are recent.
        assert!(l.admit(ip(2), t0, |_| false).unwrap_err().log);
        assert!(
            !l.admit(ip(3), t0 + Duration::from_secs(1), |_| false)
                .unwrap_err()
                .log
        );
        // Once they are old, room is made.
        assert!(
            l.admit(ip(3), t0 + Duration::from_secs(200), |_| false)
                .unwrap_err()
                .log
        );
    }

    #[test]
    fn zero_means_no_cap() {
        let l = limits(0, 0);
        let t0 = Instant::now();
        let held: Vec<ConnSlot> = (0..1000)
            .map(|_| l.admit(ip(1), t0, |_| false).unwrap())
            .collect();
        assert_eq!(l.open(ip(1)), (1000, 1000));
        drop(held);
        assert_eq!(l.open(ip(1)), (0, 0));
    }
}
