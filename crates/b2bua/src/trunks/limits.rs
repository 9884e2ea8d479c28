//! Per-trunk limits: channels in use (`max_calls`) and new calls per second
//! (`calls_per_second`), as a token bucket on a clock it is handed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// `calls_per_second`: a bucket of `rate` tokens refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct RateGate {
    rate: u32,
    tokens: f64,
    last: Option<Instant>,
}

impl RateGate {
    pub fn new(rate: u32) -> RateGate {
        RateGate {
            rate,
            tokens: f64::from(rate),
            last: None,
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Takes one token at `now`; `false` when none is left.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let cap = f64::from(self.rate.max(1));
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * cap).min(cap);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for a call that did not go out.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(f64::from(self.rate.max(1)));
    }

    /// How long until a token is there (zero when one is).
    pub fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / f64::from(self.rate.max(1)))
        }
    }
}

/// The channels of one trunk in use.
#[derive(Debug, Default)]
pub struct Channels {
    in_use: AtomicU32,
}

impl Channels {
    /// Takes a channel unless `max` are in use.
    pub fn try_take(self: &Arc<Self>, max: Option<u32>) -> Option<ChannelGuard> {
        let mut cur = self.in_use.load(Ordering::Relaxed);
        loop {
            if max.is_some_and(|m| cur >= m) {
                return None;
            }
            match self.in_use.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ChannelGuard {
                        channels: Arc::clone(self),
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// One channel of a trunk, held while an attempt rings or its call lasts; dropping it frees
/// the channel.
#[derive(Debug)]
pub struct ChannelGuard {
    channels: Arc<Channels>,
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.channels.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_capped_and_freed_on_drop() {
        let ch = Arc::new(Channels::default());
        let a = ch.try_take(Some(2)).unwrap();
        let b = ch.try_take(Some(2)).unwrap();
        assert!(ch.try_take(Some(2)).is_none());
        assert_eq!(ch.in_use(), 2);
        drop(a);
        let c = ch.try_take(Some(2));
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(ch.in_use(), 0);
        // No cap.
        let many: Vec<_> = (0..100).filter_map(|_| ch.try_take(None)).collect();
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn rate_gate_refills_with_time() {
        let t0 = Instant::now();
        let mut g = RateGate::new(2);
        assert!(g.try_take(t0));
        assert!(g.try_take(t0));
        assert!(!g.try_take(t0), "burst of 2 used");
        assert_eq!(g.wait(), Duration::from_millis(500));
        assert!(!g.try_take(t0 + Duration::from_millis(499)));
        assert!(g.try_take(t0 + Duration::from_millis(1000)));
        g.give_back();
        assert!(g.try_take(t0 + Duration::from_millis(1000)));
        // Idle for long: no more than the burst.
        let t9 = t0 + Duration::from_secs(9);
        assert!(g.try_take(t9) && g.try_take(t9));
        assert!(!g.try_take(t9));
    }
}
