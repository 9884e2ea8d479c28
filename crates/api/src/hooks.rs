//! The API's [`CallHooks`]: what happens on every call event.
//!
//! One event → the call record (status, times, legs, outcome, media stats), a timeline
//! entry with its UTC time, a callback in the outbox for the callback stages, an event on
//! the live stream, and metrics. The hook itself only queues the event; the journal's writer
//! ([`crate::journal`]) applies the rules below and writes batches of events to the store.

use std::sync::Arc;

use b2bua::calls::{AdmitError, AdmitFuture, CallEvent, CallEventKind, CallHooks, Leg, NewCall};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};
use store::{CallRecord, CallStatus, CallWrite, Detail, TimelineEntry};

use crate::limits::LimitError;
use crate::state::Shared;
use crate::time::rfc3339_ms;

/// TypeID prefix of callback event ids.
pub const EVENT_PREFIX: &str = "evt";

pub(crate) struct ApiHooks {
    pub shared: Arc<Shared>,
}

fn leg_obj(legs: &mut Value, leg: Leg) -> Option<&mut serde_json::Map<String, Value>> {
    if !legs.is_object() {
        *legs = json!({});
    }
    let obj = legs.as_object_mut()?;
    obj.entry(leg.as_str())
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

/// The timeline kind and detail of an event: its serde form without `type`, `leg` and
/// `stats`, with an outcome's fields in the detail itself. The detail is written as JSON
/// text straight from the event ([`EventDetail`]).
pub(crate) fn timeline_parts(kind: &CallEventKind) -> (&'static str, Option<Leg>, Detail) {
    let leg = match kind {
        CallEventKind::Sip { leg, .. }
        | CallEventKind::Ringing { leg, .. }
        | CallEventKind::EarlyMedia { leg } => Some(*leg),
        CallEventKind::AgentAnswered { .. } => Some(Leg::Agent),
        CallEventKind::InProgress { .. } => Some(Leg::Customer),
        CallEventKind::Ended { outcome, .. } => outcome.leg,
        CallEventKind::Note { leg, .. } => *leg,
        CallEventKind::Held { leg }
        | CallEventKind::Resumed { leg }
        | CallEventKind::Muted { leg, .. }
        | CallEventKind::TransferStarted { leg, .. }
        | CallEventKind::Transferred { leg, .. }
        | CallEventKind::TransferFailed { leg, .. } => Some(*leg),
        CallEventKind::MonitorStarted { .. }
        | CallEventKind::MonitorModeChanged { .. }
        | CallEventKind::MonitorEnded { .. } => None,
        CallEventKind::Recording { .. } => None,
    };
    // Strings, numbers and options always serialize.
    let detail = Detail::of(&EventDetail(kind)).unwrap_or_else(|_| Detail::from(json!({})));
    (kind_name(kind), leg, detail)
}

/// An event's timeline kind: its serde tag.
fn kind_name(kind: &CallEventKind) -> &'static str {
    match kind {
        CallEventKind::Sip { .. } => "sip",
        CallEventKind::Ringing { .. } => "ringing",
        CallEventKind::EarlyMedia { .. } => "early_media",
        CallEventKind::AgentAnswered { .. } => "agent_answered",
        CallEventKind::InProgress { .. } => "in_progress",
        CallEventKind::Ended { .. } => "ended",
        CallEventKind::Note { .. } => "note",
        CallEventKind::Held { .. } => "held",
        CallEventKind::Resumed { .. } => "resumed",
        CallEventKind::Muted { .. } => "muted",
        CallEventKind::MonitorStarted { .. } => "monitor_started",
        CallEventKind::MonitorModeChanged { .. } => "monitor_mode_changed",
        CallEventKind::MonitorEnded { .. } => "monitor_ended",
        CallEventKind::TransferStarted { .. } => "transfer_started",
        CallEventKind::Transferred { .. } => "transferred",
        CallEventKind::TransferFailed { .. } => "transfer_failed",
        CallEventKind::Recording { .. } => "recording",
    }
}

/// An event's timeline detail as it serializes: the event's own fields but its leg and
/// media stats, an outcome's fields (`status`, `sip_code`, `q850_cause`, `duration`,
/// `reason`) flattened into it. The keys of each object are in sorted order, as the detail
/// has always been written (a JSON object's `serde_json` map is sorted).
struct EventDetail<'a>(&'a CallEventKind);

impl Serialize for EventDetail<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.0 {
            CallEventKind::Sip {
                direction,
                summary,
                sip_call_id,
                ..
            } => {
                m.serialize_entry("direction", direction)?;
                m.serialize_entry("sip_call_id", sip_call_id)?;
                m.serialize_entry("summary", summary)?;
            }
            CallEventKind::Ringing { sip_code, .. }
            | CallEventKind::AgentAnswered { sip_code }
            | CallEventKind::InProgress { sip_code } => m.serialize_entry("sip_code", sip_code)?,
            CallEventKind::EarlyMedia { .. }
            | CallEventKind::Held { .. }
            | CallEventKind::Resumed { .. } => {}
            CallEventKind::Ended { outcome, .. } => {
                m.serialize_entry("duration", &outcome.duration_secs)?;
                m.serialize_entry("q850_cause", &outcome.q850_cause)?;
                m.serialize_entry("reason", &outcome.reason)?;
                m.serialize_entry("sip_code", &outcome.sip_code)?;
                m.serialize_entry("status", outcome.status.as_str())?;
            }
            CallEventKind::Note { text, .. } => m.serialize_entry("text", text)?,
            CallEventKind::Muted { muted, .. } => m.serialize_entry("muted", muted)?,
            CallEventKind::MonitorStarted {
                monitor_id,
                user_id,
                mode,
            } => {
                m.serialize_entry("mode", mode)?;
                m.serialize_entry("monitor_id", monitor_id)?;
                m.serialize_entry("user_id", user_id)?;
            }
            CallEventKind::MonitorModeChanged { monitor_id, mode } => {
                m.serialize_entry("mode", mode)?;
                m.serialize_entry("monitor_id", monitor_id)?;
            }
            CallEventKind::MonitorEnded { monitor_id, reason } => {
                m.serialize_entry("monitor_id", monitor_id)?;
                m.serialize_entry("reason", reason)?;
            }
            CallEventKind::TransferStarted { to, by, .. }
            | CallEventKind::Transferred { to, by, .. } => {
                m.serialize_entry("by", by)?;
                m.serialize_entry("to", to)?;
            }
            CallEventKind::TransferFailed {
                to,
                by,
                sip_code,
                reason,
                ..
            } => {
                m.serialize_entry("by", by)?;
                m.serialize_entry("reason", reason)?;
                m.serialize_entry("sip_code", sip_code)?;
                m.serialize_entry("to", to)?;
            }
            CallEventKind::Recording {
                file,
                duration_secs,
                size_bytes,
                error,
            } => {
                m.serialize_entry("duration_secs", duration_secs)?;
                m.serialize_entry("error", error)?;
                m.serialize_entry("file", file)?;
                m.serialize_entry("size_bytes", size_bytes)?;
            }
        }
        m.end()
    }
}

/// Applies an event to the record; true when the record may have changed (at worst one
/// redundant update of the row; cheaper than comparing a copy of the record).
pub(crate) fn apply(rec: &mut CallRecord, ev: &CallEvent) -> bool {
    // Formatted only by the events that record a time (not by each SIP message's).
    let at = || rfc3339_ms(ev.at_ms);
    let final_already = rec.status.is_final();
    match &ev.kind {
        CallEventKind::Sip {
            leg, sip_call_id, ..
        } => {
            if let Some(o) = leg_obj(&mut rec.legs, *leg) {
                if !o.contains_key("sip_call_id") {
                    o.insert("sip_call_id".into(), json!(sip_call_id));
                    return true;
                }
            }
            false
        }
        CallEventKind::Ringing { leg, sip_code } => {
            if rec.status == CallStatus::Queued {
                rec.status = CallStatus::Ringing;
            }
            if let Some(o) = leg_obj(&mut rec.legs, *leg) {
                o.entry("ringing_at").or_insert_with(|| json!(at()));
                o.insert("last_provisional".into(), json!(sip_code));
            }
            true
        }
        CallEventKind::EarlyMedia { leg } => {
            if let Some(o) = leg_obj(&mut rec.legs, *leg) {
                o.insert("early_media".into(), json!(true));
            }
            true
        }
        CallEventKind::AgentAnswered { sip_code } => {
            if let Some(o) = leg_obj(&mut rec.legs, Leg::Agent) {
                o.insert("answered_at".into(), json!(at()));
                o.insert("sip_code".into(), json!(sip_code));
            }
            true
        }
        CallEventKind::InProgress { sip_code } => {
            if !final_already {
                rec.status = CallStatus::InProgress;
                rec.answered_at_ms = Some(ev.at_ms);
            }
            if let Some(o) = leg_obj(&mut rec.legs, Leg::Customer) {
                o.insert("answered_at".into(), json!(at()));
                o.insert("sip_code".into(), json!(sip_code));
            }
            true
        }
        CallEventKind::Ended { outcome, stats } => {
            if !final_already {
                rec.status = outcome.status;
                rec.ended_at_ms = Some(ev.at_ms);
                rec.end_leg = Some(match outcome.leg {
                    Some(l) => l.as_str().to_owned(),
                    None if outcome.status == CallStatus::Canceled => "api".to_owned(),
                    None => "dialbridge".to_owned(),
                });
                rec.sip_code = outcome.sip_code;
                rec.stats = stats.clone();
            }
            !final_already
        }
        CallEventKind::Held { leg } | CallEventKind::Resumed { leg } => {
            let held = matches!(ev.kind, CallEventKind::Held { .. });
            match leg_obj(&mut rec.legs, *leg) {
                Some(o) => o.insert("held".into(), json!(held)) != Some(json!(held)),
                None => false,
            }
        }
        CallEventKind::Muted { leg, muted } => match leg_obj(&mut rec.legs, *leg) {
            Some(o) => o.insert("muted".into(), json!(muted)) != Some(json!(muted)),
            None => false,
        },
        CallEventKind::Transferred { leg, to, by } => match leg_obj(&mut rec.legs, *leg) {
            Some(o) => {
                o.insert("transferred_to".into(), json!(to));
                o.insert("transferred_by".into(), json!(by));
                o.insert("transferred_at".into(), json!(at()));
                true
            }
            None => false,
        },
        CallEventKind::Note { .. }
        | CallEventKind::MonitorStarted { .. }
        | CallEventKind::MonitorModeChanged { .. }
        | CallEventKind::MonitorEnded { .. }
        | CallEventKind::TransferStarted { .. }
        | CallEventKind::TransferFailed { .. } => false,
        CallEventKind::Recording {
            file,
            duration_secs,
            size_bytes,
            error,
        } => {
            let view = recording_view(file, *duration_secs, *size_bytes, error.as_deref());
            let changed = rec.recording != view;
            rec.recording = view;
            changed
        }
    }
}

/// A finished recording as the call record keeps it: `ready` (the whole call), `incomplete`
/// (stopped early, e.g. a full disk: the file holds what came before) or `failed` (no file).
pub(crate) fn recording_view(file: &str, duration: f64, size: u64, error: Option<&str>) -> Value {
    let state = match (error, size > 44) {
        (None, _) => "ready",
        (Some(_), true) => "incomplete",
        (Some(_), false) => "failed",
    };
    json!({
        "state": state,
        "file": file,
        "duration": (duration * 1000.0).round() / 1000.0,
        "size": size,
        "error": error,
    })
}

/// The callback stage of an event, if it is one: (status, leg, sip_code, duration).
pub(crate) fn callback_stage(
    ev: &CallEvent,
) -> Option<(CallStatus, Option<Leg>, Option<u16>, u64)> {
    match &ev.kind {
        CallEventKind::Ringing { leg, sip_code } => {
            Some((CallStatus::Ringing, Some(*leg), Some(*sip_code), 0))
        }
        CallEventKind::InProgress { sip_code } => Some((
            CallStatus::InProgress,
            Some(Leg::Customer),
            Some(*sip_code),
            0,
        )),
        CallEventKind::Ended { outcome, .. } => Some((
            outcome.status,
            outcome.leg,
            outcome.sip_code,
            outcome.duration_secs,
        )),
        _ => None,
    }
}

impl CallHooks for ApiHooks {
    /// Hands the event to the journal (see [`crate::journal`]): the call task never waits on
    /// the store.
    fn on_event(&self, event: CallEvent) {
        self.shared.journal.push(event);
    }

    /// A call from SIP (inbound): under the account's limits, its record and first timeline
    /// entry written before it starts, as `place_call` does for the API's calls.
    fn admit<'a>(&'a self, call: &'a NewCall) -> AdmitFuture<'a> {
        Box::pin(admit(&self.shared, call))
    }
}

async fn admit(shared: &Shared, call: &NewCall) -> Result<(), AdmitError> {
    if shared.store_health.failure().is_some() || shared.journal.over_limit() {
        return Err(AdmitError::Unavailable("the store refuses writes".into()));
    }
    let account = match shared.store.account(&call.account_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(AdmitError::Unavailable("no such account".into())),
        Err(e) => return Err(AdmitError::Unavailable(e.to_string())),
    };
    let now = crate::time::now_ms();
    let mut rec = CallRecord::new(
        call.call_id.clone(),
        call.account_id.clone(),
        call.to.clone(),
        now,
    );
    rec.user_id = call.user_id.clone();
    rec.destination = Some(call.to.clone());
    rec.caller_id = Some(call.from.clone());
    rec.callback_url = call.callback_url.clone();
    rec.direction = call.direction.to_owned();
    rec.legs = call.legs.clone();
    rec.node_id = Some(shared.cfg.server_id.clone());
    if call.record {
        rec.recording = json!({"state": "pending"});
    }
    let entry = TimelineEntry {
        at_ms: now,
        kind: format!("sip.{}", call.direction),
        leg: Some(Leg::Customer.as_str().to_owned()),
        detail: call.detail.clone().into(),
    };
    // The record and its first timeline entry in one transaction under the account's limits,
    // as `place_call` does: the call counts toward the account's `max_concurrent` and takes a
    // token of its rate, cluster-wide, until its status is final. The journal is handed the
    // record when it is admitted (the call's first event follows at once: its start, or its
    // end when the engine refuses it).
    let call_id = rec.id.clone();
    let admission = crate::journal::admit_call(
        shared,
        vec![
            CallWrite::NewCall(rec),
            CallWrite::Timeline { call_id, entry },
        ],
        &account.limits,
        now,
    )
    .await
    .map_err(|e| AdmitError::Unavailable(e.to_string()))?;
    if let Some(refused) = LimitError::from_admission(admission, &account.limits) {
        return Err(AdmitError::Limit(refused.to_string()));
    }
    shared.metrics.inbound_call_started();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use b2bua::calls::Outcome;

    /// The detail as it was made before it was written straight from the event: the
    /// event's serde form as a `Value`, less `type`, `leg` and `stats`, the outcome
    /// flattened.
    fn through_a_value(kind: &CallEventKind) -> (String, String) {
        let mut v = serde_json::to_value(kind).unwrap();
        let name = v["type"].as_str().unwrap().to_owned();
        let o = v.as_object_mut().unwrap();
        o.remove("type");
        o.remove("leg");
        o.remove("stats");
        if let CallEventKind::Ended { outcome, .. } = kind {
            o.remove("outcome");
            o.insert("status".into(), outcome.status.as_str().into());
            o.insert("sip_code".into(), json!(outcome.sip_code));
            o.insert("q850_cause".into(), json!(outcome.q850_cause));
            o.insert("duration".into(), json!(outcome.duration_secs));
            o.insert("reason".into(), json!(outcome.reason));
        }
        (name, v.to_string())
    }

    #[test]
    fn every_event_is_written_as_its_value_was_key_for_key_in_the_same_order() {
        let outcome = |sip_code, q850_cause| Outcome {
            status: CallStatus::Busy,
            leg: Some(Leg::Customer),
            sip_code,
            q850_cause,
            duration_secs: 7,
            reason: "customer \"busy\"\n".into(),
        };
        let kinds = [
            CallEventKind::Sip {
                leg: Leg::Agent,
                direction: "sent",
                summary: "INVITE sip:alice@10.0.0.5:5060".into(),
                sip_call_id: "a84b4c76e66710@pc33".into(),
            },
            CallEventKind::Ringing {
                leg: Leg::Customer,
                sip_code: 183,
            },
            CallEventKind::EarlyMedia { leg: Leg::Customer },
            CallEventKind::AgentAnswered { sip_code: 200 },
            CallEventKind::InProgress { sip_code: 200 },
            CallEventKind::Ended {
                outcome: outcome(Some(486), Some(17)),
                stats: json!({"agent": {"packets": 10}}),
            },
            CallEventKind::Ended {
                outcome: outcome(None, None),
                stats: Value::Null,
            },
            CallEventKind::Note {
                leg: None,
                text: "relay allocated ✓".into(),
            },
            CallEventKind::Held { leg: Leg::Agent },
            CallEventKind::Resumed { leg: Leg::Agent },
            CallEventKind::Muted {
                leg: Leg::Customer,
                muted: true,
            },
            CallEventKind::MonitorStarted {
                monitor_id: "mon_1".into(),
                user_id: "usr_2".into(),
                mode: "listen",
            },
            CallEventKind::MonitorModeChanged {
                monitor_id: "mon_1".into(),
                mode: "whisper",
            },
            CallEventKind::MonitorEnded {
                monitor_id: "mon_1".into(),
                reason: "hung up".into(),
            },
            CallEventKind::TransferStarted {
                leg: Leg::Agent,
                to: "+14155550100".into(),
                by: "api",
            },
            CallEventKind::Transferred {
                leg: Leg::Agent,
                to: "bob".into(),
                by: "refer",
            },
            CallEventKind::TransferFailed {
                leg: Leg::Customer,
                to: "bob".into(),
                by: "api",
                sip_code: Some(480),
                reason: "no answer".into(),
            },
            CallEventKind::TransferFailed {
                leg: Leg::Customer,
                to: "bob".into(),
                by: "api",
                sip_code: None,
                reason: String::new(),
            },
            CallEventKind::Recording {
                file: "/var/rec/c.wav".into(),
                duration_secs: 12.25,
                size_bytes: 392_044,
                error: None,
            },
            CallEventKind::Recording {
                file: String::new(),
                duration_secs: 0.0,
                size_bytes: 0,
                error: Some("disk full".into()),
            },
        ];
        for kind in &kinds {
            let (name, _, detail) = timeline_parts(kind);
            let (old_name, old_detail) = through_a_value(kind);
            assert_eq!(name, old_name, "{kind:?}");
            assert_eq!(detail.as_str(), old_detail, "{kind:?}");
        }
    }
}
