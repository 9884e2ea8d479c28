//! Inbound calls (SPEC §9.4): an INVITE from a trunk to one of an account's numbers rings
//! the number's owner's devices.
//!
//! ```text
//!   INVITE (out of dialog) from a source that is no trunk ─────────────► 403 (server.rs)
//!   Request-URI user is no number of any account, or nobody owns it ──► 404
//!   the account has no trunk at the INVITE's source address ──────────► 403
//!   the account is at its call limit (hooks' admit) ─────────────────► 486
//!   the call log refuses the call, the server is at capacity ─────────► 503
//!   otherwise: a call whose customer leg is the INVITE's server transaction
//!              (`CallSpec::incoming`), ringing the owner's devices
//! ```
//!
//! Every refusal is stateless (no call, no transaction kept) and counts against the
//! source's refusal budget as any other answer to a stranger would.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;
use sip_core::endpoint::{IncomingRequest, RefusalBudget};
use sip_core::message::{HeaderAccess, HeaderName, Response, Uri};
use store::{CallStatus, TypeId};

use super::shared::EngineInner;
use super::{
    AdmitError, AgentTarget, CallControl, CallEventKind, CallSpec, CustomerTarget, Engine,
    IncomingLeg, Leg, NewCall, Outcome,
};

/// TypeID prefix of calls (as the API's).
const CALL_PREFIX: &str = "call";

/// Refuses `inc` statelessly with `status` (and a `Retry-After` for 503).
fn refuse(inner: &EngineInner, inc: &IncomingRequest, status: u16, budget: RefusalBudget) {
    let mut r = Response::for_request(&inc.request, status);
    r.set_to_tag(&sip_core::endpoint::new_tag());
    if status == 503 {
        r.headers.add(HeaderName::RetryAfter, "5");
    }
    inner.endpoint.reply_stateless(inc, r, budget);
}

/// The user part of a SIP/TEL URI.
fn user_of(uri: &Uri) -> Option<String> {
    let s = uri.to_string();
    let user = match s.strip_prefix("tel:") {
        Some(t) => t.split([';', '?']).next()?,
        None => {
            let rest = s.strip_prefix("sips:").or_else(|| s.strip_prefix("sip:"))?;
            rest.split_once('@')?.0.split(';').next()?
        }
    };
    (!user.is_empty()).then(|| user.to_owned())
}

/// The E.164 form of a dialled user part (`+14155551234`, `14155551234`,
/// `+1 (415) 555-1234`), `None` when it is not a number.
pub(crate) fn e164_of(user: &str) -> Option<String> {
    let digits: String = user
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let d = digits.strip_prefix('+').unwrap_or(&digits);
    let ok = (6..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit());
    ok.then(|| format!("+{d}"))
}

/// The IP of a trunk `address` written as one.
fn trunk_ip(address: &str) -> Option<IpAddr> {
    address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()
}

/// Takes an out-of-dialog INVITE from a trunk's address (the caller checked that much).
pub(crate) async fn dispatch(engine: Engine, inc: IncomingRequest, budget: RefusalBudget) {
    let inner = Arc::clone(&engine.inner);
    if super::has_replaces(&inc) {
        // An INVITE with Replaces (RFC 3891 §3) is not taken; REFER with Replaces is.
        tracing::info!(source = %inc.flow.remote, "inbound INVITE with Replaces: 501");
        refuse(&inner, &inc, 501, budget);
        return;
    }
    let src = inc.flow.remote.ip();
    let Some(called) = user_of(inc.request.uri()).and_then(|u| e164_of(&u)) else {
        tracing::info!(uri = %inc.request.uri(), "inbound INVITE to no number: 404");
        refuse(&inner, &inc, 404, budget);
        return;
    };
    let number = match inner.store.number(&called).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            tracing::info!(number = %called, "inbound INVITE to a number nobody owns: 404");
            refuse(&inner, &inc, 404, budget);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "store unavailable for an inbound INVITE");
            refuse(&inner, &inc, 503, budget);
            return;
        }
    };
    let Some(owner) = number.owner_user_id.clone() else {
        tracing::info!(number = %called, "inbound INVITE to a number with no owner: 404");
        refuse(&inner, &inc, 404, budget);
        return;
    };
    let (account, trunks) = match (
        inner.store.account(&number.account_id).await,
        inner.store.trunks_for_account(&number.account_id).await,
    ) {
        (Ok(Some(a)), Ok(t)) => (a, t),
        (Ok(None), _) => {
            refuse(&inner, &inc, 404, budget);
            return;
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "store unavailable for an inbound INVITE");
            refuse(&inner, &inc, 503, budget);
            return;
        }
    };
    // No toll fraud through inbound: only a trunk of this account (or a shared one) may
    // call its numbers.
    let trunk = trunks
        .iter()
        .find(|t| trunk_ip(&t.address) == Some(src))
        .map(|t| t.name.clone())
        .or_else(|| {
            inner
                .trunks
                .is_target_ip(src)
                .then(|| "(resolved)".to_owned())
        });
    let Some(trunk) = trunk else {
        tracing::info!(%src, account = %account.id, "inbound INVITE from an address that is no trunk of the account: 403");
        refuse(&inner, &inc, 403, budget);
        return;
    };
    let from = inc
        .request
        .from()
        .ok()
        .and_then(|f| user_of(&f.uri))
        .unwrap_or_else(|| "anonymous".to_owned());
    let caller = e164_of(&from).unwrap_or_else(|| from.clone());
    let call_id = TypeId::new(CALL_PREFIX).to_string();
    let new = NewCall {
        call_id: call_id.clone(),
        account_id: account.id.clone(),
        user_id: Some(owner.clone()),
        direction: "inbound",
        from: caller.clone(),
        to: called.clone(),
        callback_url: account.callback_url.clone(),
        record: account.record_calls,
        legs: json!({
            "agent": {"target": "devices", "user_id": owner},
            "customer": {"target": "caller", "number": caller, "trunk": trunk},
        }),
        detail: json!({
            "method": "INVITE",
            "request_uri": inc.request.uri().to_string(),
            "from": from,
            "source": inc.flow.remote.to_string(),
            "transport": inc.flow.transport.to_string(),
            "sip_call_id": inc.request.call_id_str(),
            "trunk": trunk,
        }),
    };
    let contact = inner
        .endpoint
        .contact_uri(None, inc.flow.transport, inc.flow.remote)
        .or_else(|| Uri::parse(&format!("sip:{}", inner.cfg.domain)).ok());
    let Some(contact) = contact else {
        refuse(&inner, &inc, 500, budget);
        return;
    };
    if let Some(h) = inner.hooks.get() {
        match h.admit(&new).await {
            Ok(()) => {}
            Err(AdmitError::Limit(why)) => {
                tracing::info!(account = %account.id, why, "inbound call refused: 486");
                refuse(&inner, &inc, 486, budget);
                return;
            }
            Err(AdmitError::Unavailable(why)) => {
                tracing::warn!(why, "inbound call refused: 503");
                refuse(&inner, &inc, 503, budget);
                return;
            }
        }
    }
    let spec = CallSpec {
        call_id: call_id.clone(),
        account_id: account.id.clone(),
        agent: AgentTarget::Devices { user_id: owner },
        customer: CustomerTarget::E164(caller),
        caller_id: Some(called),
        agent_ring: inner.cfg.inbound_ring,
        customer_ring: inner.cfg.inbound_ring,
        incoming: Some(IncomingLeg {
            leg: Leg::Customer,
            request: Box::new(inc.clone()),
            contact,
        }),
        confirm: None,
        record: account.record_calls,
    };
    tracing::info!(call_id = %call_id, account = %account.id, "inbound call");
    if let Err(e) = engine.start_call(spec) {
        // The record exists: it ends failed, with the reason.
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
        refuse(&inner, &inc, 503, budget);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn called_numbers_are_read_from_the_request_uri() {
        let u = |s: &str| Uri::parse(s).ok().and_then(|u| user_of(&u));
        assert_eq!(
            u("sip:+14155551234@127.0.0.1:5060").as_deref(),
            Some("+14155551234")
        );
        assert_eq!(
            u("sip:14155551234@h;user=phone").as_deref(),
            Some("14155551234")
        );
        assert_eq!(u("sip:127.0.0.1"), None);
        assert_eq!(e164_of("14155551234").as_deref(), Some("+14155551234"));
        assert_eq!(
            e164_of("+1 (415) 555-1234").as_deref(),
            Some("+14155551234")
        );
        assert_eq!(e164_of("alice"), None);
        assert_eq!(e164_of("+12"), None);
        assert_eq!(
            trunk_ip("127.0.0.1:5080"),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(trunk_ip("carrier.example"), None);
    }
}
