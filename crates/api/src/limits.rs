//! Per-account call limits: a token bucket for the call rate and a counter of calls in
//! progress. Time is passed in (milliseconds), so the arithmetic is tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;

/// The limits applied to every account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountLimits {
    /// Sustained calls per second.
    pub calls_per_second: f64,
    /// Calls that may start at once after a quiet period (bucket size).
    pub burst: u32,
    /// Calls of one account in progress at the same time.
    pub max_concurrent: u32,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            calls_per_second: 5.0,
            burst: 20,
            max_concurrent: 100,
        }
    }
}

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

/// The limits of every account, in memory.
#[derive(Debug)]
pub struct Limiter {
    limits: AccountLimits,
    accounts: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(limits: AccountLimits) -> Limiter {
        Limiter {
            limits,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token and a concurrency slot for a new call of `account` at `now_ms`. On
    /// success the caller must [`Limiter::release`] the slot when the call ends.
    pub fn acquire(&self, account: &str, now_ms: i64) -> Result<(), LimitError> {
        let l = self.limits;
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

    #[test]
    fn token_bucket_refills_at_the_rate() {
        let lim = Limiter::new(AccountLimits {
            calls_per_second: 2.0,
            burst: 3,
            max_concurrent: 100,
        });
        for _ in 0..3 {
            lim.acquire("a", 0).unwrap();
        }
        let err = lim.acquire("a", 0).unwrap_err();
        assert_eq!(err.retry_after_secs(), 1);
        // Another account has its own bucket.
        lim.acquire("b", 0).unwrap();
        // Half a second later one token is back (2 per second).
        lim.acquire("a", 500).unwrap();
        assert!(lim.acquire("a", 500).is_err());
        // A long pause refills only up to the burst.
        for _ in 0..3 {
            lim.acquire("a", 100_000).unwrap();
        }
        assert!(lim.acquire("a", 100_000).is_err());
    }

    #[test]
    fn slow_rate_asks_for_a_longer_wait() {
        let lim = Limiter::new(AccountLimits {
            calls_per_second: 0.1,
            burst: 1,
            max_concurrent: 10,
        });
        lim.acquire("a", 0).unwrap();
        assert_eq!(lim.acquire("a", 0).unwrap_err().retry_after_secs(), 10);
        assert_eq!(lim.acquire("a", 5_000).unwrap_err().retry_after_secs(), 5);
    }

    #[test]
    fn concurrency_slots_are_released() {
        let lim = Limiter::new(AccountLimits {
            calls_per_second: 1000.0,
            burst: 1000,
            max_concurrent: 2,
        });
        lim.acquire("a", 0).unwrap();
        lim.acquire("a", 0).unwrap();
        assert_eq!(lim.acquire("a", 0), Err(LimitError::Concurrency { max: 2 }));
        lim.release("a");
        assert_eq!(lim.active("a"), 1);
        lim.acquire("a", 0).unwrap();
    }
}
