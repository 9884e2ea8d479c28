//! What the call machine (`calls::machine`) and its lookups call to send a leg through
//! trunks: kept here so that the call code only asks.
//!
//! A trunk target of the machine carries a [`TrunkAttempt`]: the machine takes the trunk's
//! channel with it before the INVITE ([`TrunkAttempt::acquire`]) and tells it what the
//! INVITE came to ([`TrunkAttempt::report`]); the failover itself is the machine's walk
//! through the stages of its plan, one stage per attempt, by each target's
//! `invite_timeout` and `failover_codes` (the rule of [`super::after_final`]).

use std::sync::Arc;
use std::time::Duration;

use sip_core::message::{HeaderName, Response};

use super::{Attempt, AttemptResult, ChannelGuard, PlanError, Trunks};

/// One attempt of a leg through a trunk, with the trunk layer it reports to.
#[derive(Clone)]
pub(crate) struct TrunkAttempt {
    pub(crate) attempt: Attempt,
    trunks: Arc<Trunks>,
}

impl std::fmt::Debug for TrunkAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TrunkAttempt")
            .field(&self.attempt.label)
            .finish()
    }
}

impl TrunkAttempt {
    #[cfg(test)]
    pub(crate) fn new(attempt: Attempt, trunks: Arc<Trunks>) -> TrunkAttempt {
        TrunkAttempt { attempt, trunks }
    }

    /// The trunk's channel for this attempt; `None` when the trunk is at `max_calls` or
    /// `calls_per_second` (the attempt is skipped).
    pub(crate) fn acquire(&self) -> Option<ChannelGuard> {
        self.trunks.acquire(&self.attempt)
    }

    /// What the attempt came to: a final response (with its `Retry-After` and the time since
    /// the INVITE went out), a time-out or a transport error.
    pub(crate) fn report(&self, result: AttemptResult) {
        self.trunks.report(&self.attempt, result);
    }

    /// A final response to the attempt's INVITE.
    pub(crate) fn report_response(&self, resp: &Response, waited: Duration) {
        self.report(AttemptResult::Final {
            code: resp.status,
            retry_after: retry_after(resp),
            rtt: Some(waited),
        });
    }
}

/// The attempts of a leg towards `number` (see [`Trunks::plan`]), each with its trunk layer,
/// or why there are none.
pub(crate) async fn attempts(
    trunks: &Arc<Trunks>,
    account_id: &str,
    number: &str,
    trunk: Option<&str>,
    emergency: bool,
) -> Result<Vec<TrunkAttempt>, String> {
    trunks
        .plan(account_id, number, trunk, emergency)
        .await
        .map(|list| {
            list.into_iter()
                .map(|attempt| TrunkAttempt {
                    attempt,
                    trunks: Arc::clone(trunks),
                })
                .collect()
        })
        .map_err(|e| plan_reason(&e))
}

fn plan_reason(e: &PlanError) -> String {
    e.to_string()
}

/// `Retry-After` of a response (RFC 3261 §20.33: delta-seconds, maybe a comment after).
pub(crate) fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers.get(&HeaderName::RetryAfter)?;
    let text = std::str::from_utf8(v.as_bytes()).ok()?;
    let digits: String = text
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(86_400)))
}
