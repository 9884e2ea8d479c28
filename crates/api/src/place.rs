//! Placing a call: the one path shared by the native, JustCall- and Click-2-Call-style
//! endpoints. Dial plan and guards, caller ID, callback URL, limits, then the call record,
//! the `api.request` timeline entry, and the hand-over to the call engine.

use std::sync::Arc;
use std::time::Duration;

use b2bua::calls::{AgentTarget, CallSpec, CustomerTarget, StartError};
use b2bua::dialplan::{self, DialError, Dialled, Refusal};
use b2bua::numbering::Classified;
use serde_json::{json, Value};
use store::{Account, CallRecord, CallStatus, CallWrite, TimelineEntry, TypeId, User};

use crate::callbacks::check_callback_url;
use crate::error::ApiError;
use crate::limits::LimitError;
use crate::state::Shared;
use crate::time::now_ms;

/// TypeID prefix of calls.
pub const CALL_PREFIX: &str = "call";

/// Whom the agent leg rings.
pub(crate) enum AgentSel {
    /// A user's registered devices.
    User(User),
    /// A number or extension on a trunk (an upstream PBX).
    Trunk {
        number: String,
        dial_as: Option<String>,
        trunk: Option<String>,
    },
}

/// A call request, after the endpoint-specific parsing.
pub(crate) struct PlaceRequest {
    pub agent: AgentSel,
    pub dial_string: String,
    /// Asked for explicitly: must be one of the account's numbers.
    pub caller_id: Option<String>,
    /// Used when none was asked for, before the user's and the account's numbers.
    pub default_caller_id: Option<String>,
    pub callback_url: Option<String>,
    pub agent_ring_secs: Option<u32>,
    pub metadata: Value,
    pub request_id: Option<String>,
    /// The request as received, without credentials, for the timeline.
    pub request_detail: Value,
    /// Agent confirm asked for (`None`: the account's `confirm_calls`).
    pub confirm: Option<bool>,
    /// Recording asked for (`None`: the account's `record_calls`).
    pub record: Option<bool>,
}

/// The toll-fraud guard for a number about to be dialled (any leg, any API shape): valid by
/// libphonenumber's metadata, in one of the account's countries, not of a blocked type, under
/// one of its prefixes. 422 `invalid_destination` or `destination_not_allowed`, naming why.
/// Returns what the metadata says of the number.
pub(crate) fn check_number(account: &Account, e164: &str) -> Result<Classified, ApiError> {
    let (classified, verdict) = dialplan::check(e164, account.into());
    match verdict {
        Ok(()) => Ok(classified),
        Err(refusal) => Err(refused(account, &classified, refusal)),
    }
}

fn refused(account: &Account, classified: &Classified, refusal: Refusal) -> ApiError {
    tracing::info!(
        account = %account.id,
        region = classified.region.as_deref().unwrap_or("-"),
        number_type = %classified.number_type,
        code = refusal.code(),
        "destination refused"
    );
    ApiError::unprocessable(refusal.code(), refusal.to_string())
}

/// The destination after the dial plan and the account's guards, with the metadata's view of
/// it when it is a number.
pub(crate) async fn resolve_destination(
    shared: &Shared,
    account: &Account,
    dial_string: &str,
) -> Result<(Dialled, CustomerTarget, Option<Classified>), ApiError> {
    let dialled = dialplan::normalize(dial_string, &account.region).map_err(|e| match e {
        DialError::Empty => ApiError::unprocessable("invalid_destination", "dial_string is empty"),
        other => ApiError::unprocessable(
            "invalid_destination",
            format!("dial_string is not dialable: {other}"),
        ),
    })?;
    let mut classified = None;
    let target = match &dialled {
        Dialled::E164(n) => {
            classified = Some(check_number(account, n)?);
            if shared.trunks_for_account(&account.id).await?.is_empty() {
                return Err(ApiError::unprocessable(
                    "no_route",
                    "No trunk is available for calls to numbers",
                ));
            }
            CustomerTarget::E164(n.clone())
        }
        Dialled::Extension(x) => match shared.store.user_by_extension(&account.id, x).await? {
            Some(u) => CustomerTarget::User { user_id: u.id },
            None => {
                return Err(ApiError::unprocessable(
                    "unknown_extension",
                    format!("Extension {x} does not exist in this account"),
                ))
            }
        },
        Dialled::Emergency(n) => {
            let routable = shared
                .trunks_for_account(&account.id)
                .await?
                .iter()
                .any(|t| t.emergency);
            if !routable {
                return Err(ApiError::unprocessable(
                    "emergency_not_routable",
                    "Emergency calls need a trunk flagged for emergency use; this account has none",
                ));
            }
            CustomerTarget::Emergency(n.clone())
        }
    };
    Ok((dialled, target, classified))
}

/// Checks a caller ID asked for, or picks one: the request's default, a number the user owns,
/// the account's first number, or none.
pub(crate) async fn choose_caller_id(
    shared: &Shared,
    account: &Account,
    asked: Option<&str>,
    default: Option<&str>,
    user: Option<&User>,
) -> Result<Option<String>, ApiError> {
    let numbers = shared.numbers_for_account(&account.id).await?;
    if let Some(asked) = asked {
        return if numbers.iter().any(|n| n.number == asked) {
            Ok(Some(asked.to_owned()))
        } else {
            Err(ApiError::unprocessable(
                "caller_id_not_allowed",
                "caller_id must be one of the account's numbers",
            ))
        };
    }
    if let Some(d) = default {
        return Ok(Some(d.to_owned()));
    }
    let owned = user.and_then(|u| {
        numbers
            .iter()
            .find(|n| n.owner_user_id.as_deref() == Some(u.id.as_str()))
    });
    Ok(owned.or(numbers.first()).map(|n| n.number.clone()))
}

/// Validates a ring time asked for.
pub(crate) fn check_ring(shared: &Shared, secs: Option<u32>, name: &str) -> Result<(), ApiError> {
    let max = shared.cfg.max_ring_secs;
    match secs {
        Some(s) if s == 0 || s > max => Err(ApiError::bad_request(
            "invalid_ring_timeout",
            format!("{name} must be between 1 and {max} seconds"),
        )),
        _ => Ok(()),
    }
}

/// Checks a callback URL (scheme, forbidden addresses).
pub(crate) async fn check_callback(url: Option<&str>) -> Result<(), ApiError> {
    if let Some(u) = url {
        check_callback_url(u)
            .await
            .map_err(|e| ApiError::unprocessable("invalid_callback_url", e.to_string()))?;
    }
    Ok(())
}

fn limit_error(e: LimitError) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: e.retry_after_secs(),
        message: e.to_string(),
    }
}

/// Places a call; returns the record as inserted (status `queued`).
pub(crate) async fn place_call(
    shared: &Arc<Shared>,
    account: &Account,
    req: PlaceRequest,
) -> Result<CallRecord, ApiError> {
    let (dialled, customer, classified) =
        resolve_destination(shared, account, &req.dial_string).await?;
    let user = match &req.agent {
        AgentSel::User(u) => Some(u),
        AgentSel::Trunk { .. } => None,
    };
    let caller_id = choose_caller_id(
        shared,
        account,
        req.caller_id.as_deref(),
        req.default_caller_id.as_deref(),
        user,
    )
    .await?;
    check_ring(shared, req.agent_ring_secs, "ring_timeout")?;
    let user_id = user.map(|u| u.id.clone());
    check_callback(req.callback_url.as_deref()).await?;

    if shared.store_health.failure().is_some() || shared.journal.over_limit() {
        // The running calls' events wait for the store: take no new call until it is back.
        return Err(ApiError::StoreUnavailable);
    }
    let now = now_ms();

    let call_id = TypeId::new(CALL_PREFIX).to_string();
    let (agent, agent_desc) = match req.agent {
        AgentSel::User(u) => (
            AgentTarget::Devices {
                user_id: u.id.clone(),
            },
            json!({"target": "devices", "user_id": u.id}),
        ),
        AgentSel::Trunk {
            number,
            dial_as,
            trunk,
        } => (
            AgentTarget::Trunk {
                number: number.clone(),
                dial_as: dial_as.clone(),
                trunk: trunk.clone(),
            },
            json!({"target": "trunk", "number": number, "dial_as": dial_as, "trunk": trunk}),
        ),
    };
    let customer_desc = match &customer {
        CustomerTarget::E164(n) => json!({
            "target": "e164",
            "number": n,
            "region": classified.as_ref().and_then(|c| c.region.clone()),
            "number_type": classified.as_ref().map(|c| c.number_type.as_str()),
        }),
        CustomerTarget::User { user_id } => json!({"target": "user", "user_id": user_id}),
        CustomerTarget::Emergency(n) => json!({"target": "emergency", "number": n}),
    };
    let mut rec = CallRecord::new(call_id.clone(), account.id.clone(), req.dial_string, now);
    rec.user_id = user_id;
    rec.request_id = req.request_id;
    rec.destination = Some(dialled.as_str().to_owned());
    rec.caller_id = caller_id.clone();
    rec.callback_url = req.callback_url;
    rec.metadata = req.metadata;
    rec.legs = json!({"agent": agent_desc, "customer": customer_desc});
    rec.node_id = Some(shared.cfg.server_id.clone());
    let confirm = req.confirm.unwrap_or(account.confirm_calls);
    let record = req.record.unwrap_or(account.record_calls);
    if record {
        rec.recording = json!({"state": "pending"});
    }

    let request_entry = TimelineEntry {
        at_ms: now,
        kind: "api.request".to_owned(),
        leg: None,
        detail: req.request_detail.into(),
    };
    // The record and its first timeline entry in one transaction, under the account's
    // limits, which hold across nodes: the store counts the account's live calls of every
    // node and takes a token from its rate bucket in the same step. On a store of this node
    // alone that transaction is the journal's next batch (`journal::admit_call`).
    let admission = crate::journal::admit_call(
        shared,
        vec![
            CallWrite::NewCall(rec.clone()),
            CallWrite::Timeline {
                call_id: call_id.clone(),
                entry: request_entry,
            },
        ],
        &account.limits,
        now,
    )
    .await?;
    if let Some(refused) = LimitError::from_admission(admission, &account.limits) {
        return Err(limit_error(refused));
    }

    let agent_ring = req.agent_ring_secs.unwrap_or(shared.cfg.agent_ring_secs);
    let spec = CallSpec {
        call_id: call_id.clone(),
        account_id: account.id.clone(),
        agent,
        customer,
        caller_id,
        agent_ring: Duration::from_secs(u64::from(agent_ring)),
        customer_ring: Duration::from_secs(u64::from(shared.cfg.customer_ring_secs)),
        incoming: None,
        confirm: confirm.then(|| Duration::from_secs(shared.cfg.confirm_secs)),
        record,
    };
    tracing::info!(call_id = %call_id, "starting call");
    if let Err(e) = shared.calls.start_call(spec) {
        shared.journal.stillborn(&call_id);
        let mut failed = rec.clone();
        failed.status = CallStatus::Failed;
        failed.ended_at_ms = Some(now_ms());
        failed.end_leg = Some("dialbridge".to_owned());
        let _ = shared.store.update_call(&failed).await;
        let _ = shared
            .store
            .append_timeline(
                &call_id,
                &TimelineEntry {
                    at_ms: now_ms(),
                    kind: "api.rejected".to_owned(),
                    leg: None,
                    detail: json!({"reason": e.to_string()}).into(),
                },
            )
            .await;
        shared.metrics.call_ended(CallStatus::Failed);
        return Err(ApiError::Unavailable {
            message: match e {
                StartError::AtCapacity(_) => "The server is at its call capacity".to_owned(),
                StartError::ShuttingDown => "The server is shutting down".to_owned(),
            },
            retry_after_secs: 1,
        });
    }
    shared.metrics.call_started();
    Ok(rec)
}
