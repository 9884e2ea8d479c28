//! Per-account call limits: a token bucket for the call rate and a counter of calls in
//! progress. Each account's [`AccountLimits`] come from the store with the account on every
//! request, so a change through the admin API applies to the next call. Time is passed in
//! (milliseconds), so the arithmetic is tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;

pub use store::AccountLimits;

/// Why a call was refused by the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("Too many calls: the account may start {per_second} calls per second")]
    Rate {
        per_second: String,
        retry_after_secs: u64,
    },
    #[error("Too many concurrent calls: the account may have {max} calls in progress")]
    Concurrency { max: u32 },
}

impl LimitError {
    /// Seconds until a retry may succeed.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            LimitError::Rate {
                retry_after_secs, ..
            } => *retry_after_secs,
            LimitError::Concurrency { .. } => 1,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
    active: u32,
}

/// The buckets and slots of every account, in memory.
#[derive(Debug, Default)]
pub struct Limiter {
    accounts: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter::default()
    }

    /// Takes a token and a concurrency slot for a new call of `account` at `now_ms`, under
    /// that account's `limits`. On success the caller must [`Limiter::release`] the slot when
    /// the call ends. A bucket is born full; when the limits change, the tokens it holds are
    /// capped at the new burst at the next call.
    pub fn acquire(
        &self,
        account: &str,
        limits: &AccountLimits,
        now_ms: i64,
    ) -> Result<(), LimitError> {
        let l = *limits;
        let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry(account.to_owned()).or_insert(Bucket {
            tokens: f64::from(l.burst),
            at_ms: now_ms,
            active: 0,
        });
        let elapsed = (now_ms - b.at_ms).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * l.calls_per_second).min(f64::from(l.burst.max(1)));
        b.at_ms = now_ms;
        if b.active >= l.max_concurrent {
            return Err(LimitError::Concurrency {
                max: l.max_concurrent,
            });
        }
        if b.tokens < 1.0 {
            let missing = 1.0 - b.tokens;
            let secs = if l.calls_per_second > 0.0 {
                (missing / l.calls_per_second).ceil() as u64
            } else {
                60
            };
            return Err(LimitError::Rate {
                per_second: format!("{}", l.calls_per_second),
                retry_after_secs: secs.max(1),
            });
        }
        b.tokens -= 1.0;
        b.active += 1;
        Ok(())
    }

    /// Frees the concurrency slot of an ended (or never started) call.
    pub fn release(&self, account: &str) {
        let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(account) {
            b.active = b.active.saturating_sub(1);
        }
    }

    /// Calls of `account` holding a slot.
    pub fn active(&self, account: &str) -> u32 {
        let map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        map.get(account).map(|b| b.active).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(calls_per_second: f64, burst: u32, max_concurrent: u32) -> AccountLimits {
        AccountLimits {
            calls_per_second,
            burst,
            max_concurrent,
        }
    }

    #[test]
    fn token_bucket_refills_at_the_rate() {
        let lim = Limiter::new();
        let l = limits(2.0, 3, 100);
        for _ in 0..3 {
            lim.acquire("a", &l, 0).unwrap();
        }
        let err = lim.acquire("a", &l, 0).unwrap_err();
        assert_eq!(err.retry_after_secs(), 1);
        // Another account has its own bucket.
        lim.acquire("b", &l, 0).unwrap();
        // Half a second later one token is back (2 per second).
        lim.acquire("a", &l, 500).unwrap();
        assert!(lim.acquire("a", &l, 500).is_err());
        // A long pause refills only up to the burst.
        for _ in 0..3 {
            lim.acquire("a", &l, 100_000).unwrap();
        }
        assert!(lim.acquire("a", &l, 100_000).is_err());
    }

    #[test]
    fn slow_rate_asks_for_a_longer_wait() {
        let lim = Limiter::new();
        let l = limits(0.1, 1, 10);
        lim.acquire("a", &l, 0).unwrap();
        assert_eq!(lim.acquire("a", &l, 0).unwrap_err().retry_after_secs(), 10);
        assert_eq!(
            lim.acquire("a", &l, 5_000).unwrap_err().retry_after_secs(),
            5
        );
    }

    #[test]
    fn concurrency_slots_are_released() {
        let lim = Limiter::new();
        let l = limits(1000.0, 1000, 2);
        lim.acquire("a", &l, 0).unwrap();
        lim.acquire("a", &l, 0).unwrap();
        assert_eq!(
            lim.acquire("a", &l, 0),
            Err(LimitError::Concurrency { max: 2 })
        );
        lim.release("a");
        assert_eq!(lim.active("a"), 1);
        lim.acquire("a", &l, 0).unwrap();
    }

    #[test]
    fn each_account_runs_under_its_own_limits() {
        let lim = Limiter::new();
        let slow = limits(1.0, 1, 100);
        let fast = limits(50.0, 10, 100);
        lim.acquire("slow", &slow, 0).unwrap();
        let err = lim.acquire("slow", &slow, 0).unwrap_err();
        assert_eq!(
            err,
            LimitError::Rate {
                per_second: "1".to_owned(),
                retry_after_secs: 1
            }
        );
        for _ in 0..10 {
            lim.acquire("fast", &fast, 0).unwrap();
        }
        assert!(lim.acquire("fast", &fast, 0).is_err());
        // 100 ms later the fast account has 5 tokens back, the slow one none.
        for _ in 0..5 {
            lim.acquire("fast", &fast, 100).unwrap();
        }
        assert!(lim.acquire("slow", &slow, 100).is_err());
        // Concurrency caps differ too.
        let one = limits(1000.0, 1000, 1);
        lim.acquire("c", &one, 0).unwrap();
        assert_eq!(
            lim.acquire("c", &one, 0),
            Err(LimitError::Concurrency { max: 1 })
        );
        let more = limits(1000.0, 1000, 3);
        lim.acquire("d", &more, 0).unwrap();
        lim.acquire("d", &more, 0).unwrap();
    }

    #[test]
    fn changed_limits_apply_to_the_next_call() {
        let lim = Limiter::new();
        let before = limits(1.0, 1, 100);
        lim.acquire("a", &before, 0).unwrap();
        assert!(lim.acquire("a", &before, 0).is_err());
        // Raised: the bucket refills at the new rate (10/s: one token per 100 ms).
        let raised = limits(10.0, 5, 100);
        assert!(lim.acquire("a", &raised, 50).is_err());
        lim.acquire("a", &raised, 150).unwrap();
        // After a quiet second the bucket holds the new burst, no more.
        for _ in 0..5 {
            lim.acquire("a", &raised, 2_000).unwrap();
        }
        assert!(lim.acquire("a", &raised, 2_000).is_err());
        // Lowered: a full bucket is capped at the new burst.
        let lowered = limits(1.0, 2, 100);
        for _ in 0..2 {
            lim.acquire("a", &lowered, 60_000).unwrap();
        }
        assert!(lim.acquire("a", &lowered, 60_000).is_err());
        // A lower concurrency cap refuses while more calls than it are in progress.
        let one = limits(1000.0, 1000, 1);
        assert!(matches!(
            lim.acquire("a", &one, 120_000),
            Err(LimitError::Concurrency { max: 1 })
        ));
    }
}
