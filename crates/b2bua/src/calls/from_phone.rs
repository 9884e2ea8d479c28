//! Calls from a registered phone (SPEC §9.7): an out-of-dialog INVITE from a source that is
//! no trunk is a device placing a call.
//!
//! ```text
//!   no Proxy-Authorization, to one of our numbers (E.164) ───────────► 403 (a stranger's
//!                                                                       inbound call), no call
//!   no Proxy-Authorization ──────────────────────────────────────────► 407 (challenge)
//!   wrong credentials, unknown device, locked out ───────────────────► 403 (delayed as for
//!                                                                       REGISTER), no call
//!   Request-URI user not dialable ───────────────────────────────────► 404 / 484
//!   an extension of the caller's account ────► the call rings that user's devices
//!   a number ─► the account's guards (allowed countries, number types, prefixes): 403
//!               otherwise out through the account's trunk, the caller ID a number the
//!               calling user owns, else the account's first number
//!   the account at its call limit ─► 486; the call log unavailable ─► 503
//! ```
//!
//! The call's agent leg is the INVITE's server transaction (`CallSpec::incoming` with
//! `Leg::Agent`); it is logged as `"origin": "phone"` and called back at the account's
//! `callback_url`.

use std::sync::Arc;

use serde_json::json;
use sip_core::endpoint::{IncomingRequest, RefusalBudget};
use sip_core::message::{HeaderAccess, HeaderName, Response, Uri};
use store::{CallStatus, TypeId};

use super::{
    AdmitError, AgentTarget, CallControl, CallEventKind, CallSpec, CustomerTarget, Engine,
    IncomingLeg, Leg, NewCall, Outcome,
};
use crate::dialplan::{self, Dialled};

const CALL_PREFIX: &str = "call";

fn refuse(engine: &Engine, inc: &IncomingRequest, status: u16, budget: RefusalBudget) {
    let mut r = Response::for_request(&inc.request, status);
    r.set_to_tag(&sip_core::endpoint::new_tag());
    if status == 503 {
        r.headers.add(HeaderName::RetryAfter, "5");
    }
    engine.inner.endpoint.reply_stateless(inc, r, budget);
}

/// `+` and digits for a dialled user that is written as an E.164 number (`+14155551234`, or
/// `14155551234` as some carriers send it); `None` for anything else (an extension, a name).
fn as_e164(user: &str) -> Option<String> {
    let digits = user.strip_prefix('+').unwrap_or(user);
    (digits.len() >= 8 && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("+{digits}"))
}

/// The user part of the Request-URI (`sip:1002@…` → `1002`), `%`-escapes decoded.
fn dialled_user(uri: &Uri) -> Option<String> {
    let s = uri.to_string();
    let rest = s
        .strip_prefix("sips:")
        .or_else(|| s.strip_prefix("sip:"))
        .or_else(|| s.strip_prefix("tel:"))?;
    let user = match rest.split_once('@') {
        Some((u, _)) => u,
        None if s.starts_with("tel:") => rest,
        None => return None,
    };
    let user = user
        .split([';', '?'])
        .next()?
        .replace("%2B", "+")
        .replace("%2b", "+");
    (!user.is_empty()).then_some(user)
}

/// Takes an out-of-dialog INVITE from an address that is no trunk.
pub(crate) async fn dispatch(engine: Engine, inc: IncomingRequest, budget: RefusalBudget) {
    let inner = Arc::clone(&engine.inner);
    if super::has_replaces(&inc) {
        // An INVITE with Replaces (RFC 3891 §3) is not taken; REFER with Replaces is.
        tracing::info!(source = %inc.flow.remote, "INVITE with Replaces: 501");
        return refuse(&engine, &inc, 501, budget);
    }
    let now = super::shared::now_ms().max(0) as u64 / 1000;
    // One of our numbers called, without credentials, from an address that is no trunk: an
    // inbound call from a stranger, refused 403 at once (no challenge: it is no phone of
    // ours placing a call; no toll fraud through inbound). A phone that answers a challenge
    // is taken as below.
    if inc
        .request
        .headers
        .get(&HeaderName::ProxyAuthorization)
        .is_none()
    {
        if let Some(number) = dialled_user(inc.request.uri()).and_then(|u| as_e164(&u)) {
            if let Ok(Some(_)) = inner.store.number(&number).await {
                tracing::info!(
                    source = %inc.flow.remote,
                    number,
                    "INVITE to one of our numbers from an address that is no trunk: refused"
                );
                return refuse(&engine, &inc, 403, budget);
            }
        }
    }
    let device = match inner
        .registrar
        .authenticate_invite(&inc.request, &inc.flow, now)
        .await
    {
        Ok(d) => d,
        Err(decision) => {
            if !decision.delay.is_zero() {
                tokio::time::sleep(decision.delay).await;
            }
            inner
                .endpoint
                .reply_stateless(&inc, decision.response, budget);
            return;
        }
    };
    let user = match inner.store.user(&device.user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return refuse(&engine, &inc, 403, budget),
        Err(_) => return refuse(&engine, &inc, 503, budget),
    };
    let account = match inner.store.account(&user.account_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return refuse(&engine, &inc, 403, budget),
        Err(_) => return refuse(&engine, &inc, 503, budget),
    };
    let Some(dialled) = dialled_user(inc.request.uri()) else {
        return refuse(&engine, &inc, 404, budget);
    };
    let target = match dialplan::normalize(&dialled, &account.region) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(dialled, error = %e, "call from a phone to something not dialable");
            return refuse(&engine, &inc, 484, budget);
        }
    };
    let (customer, to, classified) = match &target {
        Dialled::Extension(x) => match inner.store.user_by_extension(&account.id, x).await {
            Ok(Some(u)) => (
                CustomerTarget::User { user_id: u.id },
                x.clone(),
                json!({"target": "user", "extension": x}),
            ),
            Ok(None) => return refuse(&engine, &inc, 404, budget),
            Err(_) => return refuse(&engine, &inc, 503, budget),
        },
        Dialled::E164(n) => {
            // The account's guards, as for a call placed through the API: toll fraud.
            let (c, verdict) = dialplan::check(n, (&account).into());
            if let Err(refusal) = verdict {
                tracing::info!(account = %account.id, code = refusal.code(), "call from a phone refused");
                return refuse(&engine, &inc, 403, budget);
            }
            (
                CustomerTarget::E164(n.clone()),
                n.clone(),
                json!({"target": "e164", "number": n, "region": c.region, "number_type": c.number_type.to_string()}),
            )
        }
        Dialled::Emergency(n) => (
            CustomerTarget::Emergency(n.clone()),
            n.clone(),
            json!({"target": "emergency", "number": n}),
        ),
    };
    // The caller ID: a number the calling user owns, else the account's first.
    let numbers = match inner.store.numbers_for_account(&account.id).await {
        Ok(n) => n,
        Err(_) => return refuse(&engine, &inc, 503, budget),
    };
    let caller_id = numbers
        .iter()
        .find(|n| n.owner_user_id.as_deref() == Some(user.id.as_str()))
        .or_else(|| numbers.first())
        .map(|n| n.number.clone());
    let call_id = TypeId::new(CALL_PREFIX).to_string();
    let new = NewCall {
        call_id: call_id.clone(),
        account_id: account.id.clone(),
        user_id: Some(user.id.clone()),
        direction: "phone",
        from: caller_id.clone().unwrap_or_else(|| device.username.clone()),
        to: to.clone(),
        callback_url: account.callback_url.clone(),
        record: account.record_calls,
        legs: json!({
            "agent": {"target": "phone", "user_id": user.id, "device": device.username},
            "customer": classified,
        }),
        detail: json!({
            "method": "INVITE",
            "request_uri": inc.request.uri().to_string(),
            "device": device.username,
            "source": inc.flow.remote.to_string(),
            "transport": inc.flow.transport.to_string(),
            "sip_call_id": inc.request.call_id_str(),
        }),
    };
    // Before admission: a call admitted holds a slot of the account until its record is final,
    // so nothing may refuse it after that without ending it.
    let contact = inner
        .endpoint
        .contact_uri(None, inc.flow.transport, inc.flow.remote)
        .or_else(|| Uri::parse(&format!("sip:{}", inner.cfg.domain)).ok());
    let Some(contact) = contact else {
        return refuse(&engine, &inc, 500, budget);
    };
    if let Some(h) = inner.hooks.get() {
        match h.admit(&new).await {
            Ok(()) => {}
            Err(AdmitError::Limit(why)) => {
                tracing::info!(account = %account.id, why, "call from a phone refused: 486");
                return refuse(&engine, &inc, 486, budget);
            }
            Err(AdmitError::Unavailable(why)) => {
                tracing::warn!(why, "call from a phone refused: 503");
                return refuse(&engine, &inc, 503, budget);
            }
        }
    }
    let spec = CallSpec {
        call_id: call_id.clone(),
        account_id: account.id.clone(),
        agent: AgentTarget::Devices {
            user_id: user.id.clone(),
        },
        customer,
        caller_id,
        agent_ring: inner.cfg.inbound_ring,
        customer_ring: inner.cfg.inbound_ring,
        incoming: Some(IncomingLeg {
            leg: Leg::Agent,
            request: Box::new(inc.clone()),
            contact,
        }),
        confirm: None,
        record: account.record_calls,
    };
    tracing::info!(call_id = %call_id, account = %account.id, device = %device.username, "call from a phone");
    if let Err(e) = engine.start_call(spec) {
        inner.emit(
            &call_id,
            &account.id,
            CallEventKind::Ended {
                outcome: Outcome {
                    status: CallStatus::Failed,
                    leg: None,
                    sip_code: Some(503),
                    q850_cause: None,
                    duration_secs: 0,
                    reason: e.to_string(),
                },
                stats: serde_json::Value::Null,
            },
        );
        refuse(&engine, &inc, 503, budget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialled_user_is_read_from_the_request_uri() {
        let u = |s: &str| Uri::parse(s).ok().and_then(|u| dialled_user(&u));
        assert_eq!(u("sip:1002@dialbridge.test").as_deref(), Some("1002"));
        assert_eq!(
            u("sip:%2B14155550100@127.0.0.1;user=phone").as_deref(),
            Some("+14155550100")
        );
        assert_eq!(u("sip:dialbridge.test"), None);
    }
}
