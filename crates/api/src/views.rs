//! JSON views of store rows as the API shows them (times in RFC 3339 UTC, secrets never).

use serde_json::{json, Value};
use store::{
    Account, Binding, CallRecord, Device, Number, OutboxEntry, OutboxState, TimelineEntry, Trunk,
    User,
};

use crate::time::{rfc3339_ms, rfc3339_secs};

fn opt_time(ms: Option<i64>) -> Value {
    ms.map(rfc3339_ms).map(Value::from).unwrap_or(Value::Null)
}

/// The caller's account: its dialing permissions (never its webhook secret).
pub fn account(a: &Account) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "region": a.region,
        "allowed_countries": a.allowed_countries,
        "blocked_number_types": a.blocked_number_types,
        "allowed_prefixes": a.allowed_prefixes,
        "platform": a.platform,
    })
}

/// The direction a call shows: a call from a phone goes out (`outbound`).
pub fn shown_direction(stored: &str) -> &str {
    if stored == "phone" {
        "outbound"
    } else {
        stored
    }
}

/// Where a call came from: `api` (placed through the REST API), `phone` (dialled on a
/// registered phone), `trunk` (an inbound call).
pub fn origin(stored: &str) -> &'static str {
    match stored {
        "phone" => "phone",
        "inbound" => "trunk",
        _ => "api",
    }
}

/// A call as listed in the call log.
pub fn call(rec: &CallRecord) -> Value {
    json!({
        "call_id": rec.id,
        "status": rec.status.as_str(),
        "user_id": rec.user_id,
        "request_id": rec.request_id,
        "dial_string": rec.dial_string,
        "destination": rec.destination,
        "caller_id": rec.caller_id,
        "callback_url": rec.callback_url,
        "direction": shown_direction(&rec.direction),
        "origin": origin(&rec.direction),
        "created_at": rfc3339_ms(rec.created_at_ms),
        "answered_at": opt_time(rec.answered_at_ms),
        "ended_at": opt_time(rec.ended_at_ms),
        "duration": rec.duration_secs().unwrap_or(0),
        "end_leg": rec.end_leg,
        "sip_code": rec.sip_code,
        "metadata": rec.metadata,
        "recording": rec.recording,
    })
}

/// One timeline entry.
pub fn timeline_entry(e: &TimelineEntry) -> Value {
    json!({"at": rfc3339_ms(e.at_ms), "kind": e.kind, "leg": e.leg, "detail": e.detail})
}

fn outbox_state(s: OutboxState) -> &'static str {
    match s {
        OutboxState::Pending => "pending",
        OutboxState::Delivered => "delivered",
        OutboxState::Abandoned => "abandoned",
    }
}

/// A callback's delivery state (without its body or signature).
pub fn callback(e: &OutboxEntry) -> Value {
    let status = serde_json::from_str::<Value>(&e.body)
        .ok()
        .and_then(|v| v.get("status").cloned())
        .unwrap_or(Value::Null);
    json!({
        "event_id": e.event_id,
        "sequence": e.seq,
        "status": status,
        "state": outbox_state(e.state),
        "attempts": e.attempts,
        "last_error": e.last_error,
        "next_attempt_at": if e.state == OutboxState::Pending { Value::from(rfc3339_ms(e.next_attempt_at_ms)) } else { Value::Null },
    })
}

/// A call with legs, outcome, media stats, timeline and callbacks.
pub fn call_detail(
    rec: &CallRecord,
    timeline: &[TimelineEntry],
    callbacks: &[OutboxEntry],
) -> Value {
    let mut v = call(rec);
    let outcome = if rec.status.is_final() {
        let ended = timeline.iter().rev().find(|e| e.kind == "ended");
        json!({
            "status": rec.status.as_str(),
            "leg": rec.end_leg,
            "sip_code": rec.sip_code,
            "q850_cause": ended.and_then(|e| e.detail.get("q850_cause")),
            "reason": ended.and_then(|e| e.detail.get("reason"))
                .or_else(|| timeline.iter().rev().find(|e| e.kind == "api.rejected")
                    .and_then(|e| e.detail.get("reason"))),
            "duration": rec.duration_secs().unwrap_or(0),
        })
    } else {
        Value::Null
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("legs".into(), rec.legs.clone());
        o.insert("outcome".into(), outcome);
        o.insert("stats".into(), rec.stats.clone());
        o.insert(
            "timeline".into(),
            Value::Array(timeline.iter().map(timeline_entry).collect()),
        );
        o.insert(
            "callbacks".into(),
            Value::Array(callbacks.iter().map(callback).collect()),
        );
    }
    v
}

/// A user.
pub fn user(u: &User, devices: &[Device]) -> Value {
    json!({
        "id": u.id,
        "account_id": u.account_id,
        "name": u.name,
        "extension": u.extension,
        "agent_id": u.agent_id,
        "devices": devices.iter().map(device).collect::<Vec<_>>(),
    })
}

/// A device (never its password or HA1).
pub fn device(d: &Device) -> Value {
    json!({"id": d.id, "user_id": d.user_id, "username": d.username, "realm": d.realm})
}

/// A number.
pub fn number(n: &Number) -> Value {
    json!({"number": n.number, "account_id": n.account_id, "owner": n.owner_user_id})
}

/// A trunk (its password only as `password_set`).
pub fn trunk(t: &Trunk) -> Value {
    json!({
        "name": t.name,
        "account_id": t.account_id,
        "shared": t.account_id.is_none(),
        "address": t.address,
        "transport": t.transport.as_str(),
        "srtp": t.srtp.as_str(),
        "username": t.username,
        "password_set": t.password.as_ref().is_some_and(|p| !p.is_empty()),
        "emergency": t.emergency,
        "dial_prefix": t.dial_prefix,
        "from_domain": t.from_domain,
        "priority": t.routing.priority,
        "invite_timeout_ms": t.routing.invite_timeout_ms,
        "failover_codes": t.routing.failover_codes,
        "options_interval_secs": t.routing.options_interval_secs,
        "down_after": t.routing.down_after,
        "up_after": t.routing.up_after,
        "max_calls": t.routing.max_calls,
        "calls_per_second": t.routing.calls_per_second,
    })
}

/// A registration binding.
pub fn binding(b: &Binding, now_secs: i64) -> Value {
    json!({
        "device": b.device_username,
        "contact": b.contact,
        "source": b.source,
        "transport": b.transport,
        "expires_at": rfc3339_secs(b.expires_at),
        "expires_in": (b.expires_at - now_secs).max(0),
        "user_agent": b.user_agent,
    })
}

/// The schemas of the views above, for the OpenAPI document (the views are built as JSON;
/// the Schemathesis run checks every answer against these).
pub mod doc {
    #![allow(dead_code)]
    use serde_json::Value;
    use utoipa::ToSchema;

    use crate::schemas::{CallId, CallStatusName, NumberTypeName};

    /// A call as the call log lists it.
    #[derive(ToSchema)]
    #[schema(as = Call)]
    pub struct CallView {
        #[schema(value_type = CallId)]
        call_id: String,
        #[schema(value_type = CallStatusName)]
        status: String,
        /// The agent, when the agent leg rang a user.
        user_id: Option<String>,
        /// The Click-2-Call request that placed it.
        request_id: Option<String>,
        dial_string: String,
        /// The dial string after the dial plan (E.164, extension, emergency number).
        destination: Option<String>,
        caller_id: Option<String>,
        callback_url: Option<String>,
        #[schema(pattern = "^(outbound|inbound)$")]
        direction: String,
        /// `api` (placed through the REST API), `phone` (dialled on a registered phone),
        /// `trunk` (an inbound call).
        #[schema(pattern = "^(api|phone|trunk)$")]
        origin: String,
        /// RFC 3339 UTC.
        created_at: String,
        answered_at: Option<String>,
        ended_at: Option<String>,
        /// Seconds from answer to end; 0 when not answered.
        #[schema(minimum = 0)]
        duration: i64,
        /// Which side ended it: `agent`, `customer`, `api`, `dialbridge`.
        end_leg: Option<String>,
        sip_code: Option<u16>,
        /// As given with the request (`{}` when none).
        #[schema(value_type = Option<Object>)]
        metadata: Value,
        /// The call's recording, `null` when it is not recorded: `state` (`pending` until
        /// the call ends, then `ready`, `incomplete` — stopped early, e.g. a full disk — or
        /// `failed`), `duration` (seconds), `size` (bytes), `error`. The file is at
        /// `GET /v1/calls/{call_id}/recording`.
        #[schema(value_type = Option<Object>)]
        recording: Value,
    }

    /// A page of the call log.
    #[derive(ToSchema)]
    #[schema(as = CallList)]
    pub struct CallList {
        data: Vec<CallView>,
        /// `cursor` of the next page; `null` on the last one.
        next_cursor: Option<String>,
    }

    /// One step of a call's timeline.
    #[derive(ToSchema)]
    #[schema(as = TimelineEntry)]
    pub struct TimelineEntryView {
        /// RFC 3339 UTC, milliseconds.
        at: String,
        /// `api.request`, `sip.request`, `sip.response`, `callback`, `ended`, ...
        kind: String,
        leg: Option<String>,
        #[schema(value_type = Object)]
        detail: Value,
    }

    /// A callback's delivery state.
    #[derive(ToSchema)]
    #[schema(as = CallbackDelivery)]
    pub struct CallbackView {
        event_id: String,
        sequence: i64,
        /// The call status it reports.
        status: Option<String>,
        #[schema(pattern = "^(pending|delivered|abandoned)$")]
        state: String,
        attempts: u32,
        last_error: Option<String>,
        next_attempt_at: Option<String>,
    }

    /// What a call's detail adds to [`CallView`] (the document's `CallDetail` is both).
    #[derive(ToSchema)]
    #[schema(as = CallDetailParts)]
    pub struct CallDetailParts {
        /// The agent and customer legs as placed and as they went.
        #[schema(value_type = Option<Object>)]
        legs: Value,
        /// `null` while the call runs.
        #[schema(value_type = Option<Object>)]
        outcome: Value,
        /// Media counters per leg; `null` before any media.
        #[schema(value_type = Option<Object>)]
        stats: Value,
        timeline: Vec<TimelineEntryView>,
        callbacks: Vec<CallbackView>,
    }

    /// The answer to a hang-up.
    #[derive(ToSchema)]
    #[schema(as = HangupRequested)]
    pub struct Hangup {
        #[schema(value_type = CallId)]
        call_id: String,
        #[schema(value_type = CallStatusName)]
        status: String,
        #[schema(pattern = "^requested$")]
        hangup: String,
    }

    /// The caller's account and its dialing permissions.
    #[derive(ToSchema)]
    #[schema(as = Account)]
    pub struct AccountView {
        id: String,
        name: String,
        region: String,
        allowed_countries: Vec<String>,
        #[schema(value_type = Vec<NumberTypeName>)]
        blocked_number_types: Vec<String>,
        allowed_prefixes: Vec<String>,
    }

    /// A device (never its password).
    #[derive(ToSchema)]
    #[schema(as = Device)]
    pub struct DeviceView {
        id: String,
        user_id: String,
        username: String,
        realm: String,
    }

    /// A user with its devices.
    #[derive(ToSchema)]
    #[schema(as = User)]
    pub struct UserView {
        id: String,
        account_id: String,
        name: String,
        extension: Option<String>,
        agent_id: Option<i64>,
        devices: Vec<DeviceView>,
    }

    /// A number of the account.
    #[derive(ToSchema)]
    #[schema(as = Number)]
    pub struct NumberView {
        number: String,
        account_id: String,
        /// The default agent.
        owner: Option<String>,
    }

    /// A trunk (its password only as `password_set`).
    #[derive(ToSchema)]
    #[schema(as = Trunk)]
    pub struct TrunkView {
        name: String,
        /// `null` for a shared trunk.
        account_id: Option<String>,
        shared: bool,
        address: String,
        transport: String,
        /// `none` or `sdes`.
        srtp: String,
        username: Option<String>,
        password_set: bool,
        emergency: bool,
        dial_prefix: Option<String>,
        from_domain: Option<String>,
        /// Failover order: lower first.
        priority: u32,
        /// A target silent this long (no provisional response) is given up for the next.
        invite_timeout_ms: u32,
        /// Final answers after which the next target is tried.
        failover_codes: Vec<u16>,
        /// OPTIONS health checks every this many seconds; 0 = off.
        options_interval_secs: u32,
        down_after: u32,
        up_after: u32,
        /// Calls through the trunk at once; `null` = no cap.
        max_calls: Option<u32>,
        /// New calls per second; `null` = no cap.
        calls_per_second: Option<u32>,
        /// `GET /v1/trunks/{name}` only: `up` while any target is up.
        #[schema(nullable = false)]
        state: Option<String>,
        /// `GET /v1/trunks/{name}` only: how the address was resolved (`ip`, `a`, `srv`, `naptr`).
        resolved_by: Option<String>,
        /// `GET /v1/trunks/{name}` only: why the address could not be resolved.
        resolve_error: Option<String>,
        /// `GET /v1/trunks/{name}` only: calls holding one of its channels.
        #[schema(nullable = false)]
        calls_in_progress: Option<u32>,
        /// `GET /v1/trunks/{name}` only: each target with its health.
        #[schema(nullable = false)]
        targets: Option<Vec<TrunkTargetView>>,
    }

    /// One target of a trunk (an address it resolved to) and its health.
    #[derive(ToSchema)]
    #[schema(as = TrunkTarget)]
    pub struct TrunkTargetView {
        address: String,
        transport: String,
        /// `up` or `down`.
        state: String,
        last_rtt_ms: Option<u64>,
        /// `200`, `503`, `timeout`, `transport error`, ...
        last_answer: Option<String>,
        /// Why it is down.
        reason: Option<String>,
    }

    /// A registration binding in force.
    #[derive(ToSchema)]
    #[schema(as = Registration)]
    pub struct BindingView {
        device: String,
        contact: String,
        source: String,
        transport: String,
        expires_at: String,
        #[schema(minimum = 0)]
        expires_in: i64,
        user_agent: Option<String>,
    }

    macro_rules! list {
        ($name:ident, $as:ident, $item:ty) => {
            #[doc = concat!("`{\"data\": [...]}`")]
            #[derive(ToSchema)]
            #[schema(as = $as)]
            pub struct $name {
                data: Vec<$item>,
            }
        };
    }
    list!(UserList, UserList, UserView);
    list!(DeviceList, DeviceList, DeviceView);
    list!(NumberList, NumberList, NumberView);
    list!(TrunkList, TrunkList, TrunkView);
    list!(BindingList, RegistrationList, BindingView);
}
