//! What the call task calls to send its customer leg through trunks: kept here so that the
//! call code only asks, and the walk's rules stay in [`super::walk`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sip_core::message::{HeaderName, Response};
use tokio::time::Instant;

use super::{Attempt, PlanError, Trunks, Walk};

/// The walk of a customer leg towards `number` (see [`Trunks::plan`]), or why there is none.
pub(crate) async fn customer_walk(
    trunks: &Arc<Trunks>,
    account_id: &str,
    number: &str,
    emergency: bool,
) -> Result<Walk, String> {
    match trunks.plan(account_id, number, None, emergency).await {
        Ok(attempts) => Ok(Walk::new(Arc::clone(trunks), attempts)),
        Err(e) => Err(plan_reason(&e)),
    }
}

/// The first attempt of a leg through a named (or the account's) trunk, for a leg that is
/// not walked (the agent leg reached through a PBX trunk).
pub(crate) async fn first_attempt(
    trunks: &Trunks,
    account_id: &str,
    number: &str,
    trunk: Option<&str>,
) -> Result<Attempt, String> {
    trunks
        .plan(account_id, number, trunk, false)
        .await
        .map_err(|e| plan_reason(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| "no trunk for this call".to_owned())
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

/// Sleeps until the walk's deadline; never wakes without one.
pub(crate) fn deadline(walk: Option<&Walk>) -> impl Future<Output = ()> + use<> {
    let at: Option<Instant> = walk.and_then(Walk::deadline);
    async move {
        match at {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    }
}
