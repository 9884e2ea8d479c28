//! Per-account call limits: a token bucket for the call rate and a cap on the calls in
//! progress. Each account's [`AccountLimits`] come from the store with the account on every
//! request, so a change through the admin API applies to the next call. Both are checked by
//! the store in the transaction that writes the new call ([`store::Store::admit_call`]), so
//! they hold for every node sharing the database; the token bucket's arithmetic is
//! [`store::RateBucket`]. A call's slot is free again once its status is final in the store.

pub use store::AccountLimits;
use store::Admission;

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

impl LimitError {
    /// Why the store refused a call, or `None` when it admitted it.
    pub fn from_admission(admission: Admission, limits: &AccountLimits) -> Option<LimitError> {
        match admission {
            Admission::Admitted => None,
            Admission::Concurrency => Some(LimitError::Concurrency {
                max: limits.max_concurrent,
            }),
            Admission::Rate { retry_after_secs } => Some(LimitError::Rate {
                per_second: format!("{}", limits.calls_per_second),
                retry_after_secs,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_the_limit_and_when_to_retry() {
        let l = AccountLimits {
            calls_per_second: 0.5,
            burst: 1,
            max_concurrent: 7,
        };
        assert_eq!(LimitError::from_admission(Admission::Admitted, &l), None);
        let rate = LimitError::from_admission(
            Admission::Rate {
                retry_after_secs: 2,
            },
            &l,
        )
        .unwrap();
        assert_eq!(rate.retry_after_secs(), 2);
        assert_eq!(
            rate.to_string(),
            "Too many calls: the account may start 0.5 calls per second"
        );
        let busy = LimitError::from_admission(Admission::Concurrency, &l).unwrap();
        assert_eq!(busy.retry_after_secs(), 1);
        assert_eq!(
            busy.to_string(),
            "Too many concurrent calls: the account may have 7 calls in progress"
        );
    }
}
