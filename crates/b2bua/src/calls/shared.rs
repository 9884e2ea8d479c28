//! The state every call of the engine shares: the endpoint, store, registrar and relay, the
//! routing tables from SIP dialogs and relay sessions to calls, and the counters kept for
//! calls that have ended. The engine ([`super::engine`]) creates it; each call's driver
//! ([`super::driver`]) reads it.

use media::{Relay, SessionId};
use sip_core::dialog::DialogId;
use sip_core::endpoint::Endpoint;
use sip_core::map::Map;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use store::Store;
use tokio::sync::mpsc;

use super::engine::EngineConfig;
use super::machine::Input;
use super::{CallEvent, CallEventKind, CallHooks, Leg};
use crate::registrar::Registrar;

pub(crate) struct CallEntry {
    /// The call's inbox.
    pub(crate) tx: mpsc::UnboundedSender<Box<Input>>,
    /// The call's relay counters, once it has a relay session.
    pub(crate) media: Option<media::StatsReader>,
    /// The keys this call holds in the routing tables, removed one by one when it ends
    /// (not by a scan of every table: that cost grew with the number of live calls).
    pub(crate) routes: Routes,
}

/// What a call registered in the engine's routing tables.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    dialogs: Vec<DialogId>,
    sip_call_ids: Vec<String>,
    legs: Vec<Leg>,
    media: Vec<SessionId>,
}

/// Shared state of the engine.
pub(crate) struct EngineInner {
    pub(crate) cfg: EngineConfig,
    pub(crate) endpoint: Endpoint,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registrar: Arc<Registrar>,
    pub(crate) relay: Arc<Relay>,
    /// Where customer legs go (trunk resolution, failover order, health, limits).
    pub(crate) trunks: Arc<crate::trunks::Trunks>,
    pub(crate) hooks: OnceLock<Arc<dyn CallHooks>>,
    pub(crate) calls: Mutex<Map<String, CallEntry>>,
    /// Dialog (our tag local) -> (call, leg), for in-dialog requests.
    pub(crate) dialogs: Mutex<Map<DialogId, (String, Leg)>>,
    /// Dialog of a side leg (a supervisor) -> (call, side), for its in-dialog requests.
    pub(crate) side_dialogs: Mutex<Map<DialogId, (String, u32)>>,
    /// SIP Call-ID of a leg -> call, for stray 2xx of forked INVITEs.
    pub(crate) sip_call_ids: Mutex<Map<String, String>>,
    /// (call, leg) -> the SIP Call-ID of that leg's latest INVITE, for RTCP captures.
    pub(crate) leg_sip_call_ids: Mutex<Map<(String, Leg), String>>,
    pub(crate) media_sessions: Mutex<Map<SessionId, String>>,
    pub(crate) active: AtomicUsize,
    pub(crate) shutting_down: AtomicBool,
    /// Packets the relay forwarded for calls that have ended (both legs, both ways).
    pub(crate) relayed_packets: AtomicU64,
    /// Packets from sources a leg does not accept (RTP Bleed), by calls that have ended.
    pub(crate) hijack_dropped: AtomicU64,
}

impl EngineInner {
    pub(crate) fn emit(&self, call_id: &str, account_id: &str, kind: CallEventKind) {
        let ev = CallEvent {
            call_id: call_id.to_string(),
            account_id: account_id.to_string(),
            at_ms: now_ms(),
            kind,
        };
        tracing::debug!(call = %call_id, event = ?ev.kind, "call event");
        if let Some(h) = self.hooks.get() {
            h.on_event(ev);
        }
    }

    /// Records in the call's entry a key it now holds in a routing table.
    fn note_route(&self, call_id: &str, f: impl FnOnce(&mut Routes)) {
        if let Ok(mut calls) = self.calls.lock() {
            if let Some(c) = calls.get_mut(call_id) {
                f(&mut c.routes);
            }
        }
    }

    pub(crate) fn register_dialog(&self, id: DialogId, call_id: &str, leg: Leg) {
        if let Ok(mut d) = self.dialogs.lock() {
            d.insert(id.clone(), (call_id.to_string(), leg));
        }
        self.note_route(call_id, |r| r.dialogs.push(id));
    }

    pub(crate) fn register_side_dialog(&self, id: DialogId, call_id: &str, side: u32) {
        if let Ok(mut d) = self.side_dialogs.lock() {
            d.insert(id, (call_id.to_string(), side));
        }
    }

    pub(crate) fn register_sip_call_id(&self, sip_call_id: &str, call_id: &str, leg: Leg) {
        if let Ok(mut m) = self.sip_call_ids.lock() {
            m.insert(sip_call_id.to_string(), call_id.to_string());
        }
        if let Ok(mut m) = self.leg_sip_call_ids.lock() {
            m.insert((call_id.to_string(), leg), sip_call_id.to_string());
        }
        self.note_route(call_id, |r| {
            r.sip_call_ids.push(sip_call_id.to_string());
            if !r.legs.contains(&leg) {
                r.legs.push(leg);
            }
        });
    }

    pub(crate) fn register_media_session(&self, session: SessionId, call_id: &str) {
        if let Ok(mut map) = self.media_sessions.lock() {
            map.insert(session, call_id.to_string());
        }
        self.note_route(call_id, |r| r.media.push(session));
    }

    /// Drops every route to a call that has ended.
    pub(crate) fn forget(&self, call_id: &str) {
        let Some(routes) = self
            .calls
            .lock()
            .ok()
            .and_then(|mut c| c.remove(call_id))
            .map(|e| e.routes)
        else {
            return;
        };
        // A key is removed only while it still routes to this call.
        if let Ok(mut d) = self.dialogs.lock() {
            for id in &routes.dialogs {
                if d.get(id).is_some_and(|(c, _)| c == call_id) {
                    d.remove(id);
                }
            }
        }
        if let Ok(mut m) = self.sip_call_ids.lock() {
            for id in &routes.sip_call_ids {
                if m.get(id).is_some_and(|c| c == call_id) {
                    m.remove(id);
                }
            }
        }
        if let Ok(mut d) = self.side_dialogs.lock() {
            d.retain(|_, (c, _)| c != call_id);
        }
        if let Ok(mut m) = self.leg_sip_call_ids.lock() {
            for leg in &routes.legs {
                m.remove(&(call_id.to_string(), *leg));
            }
        }
        if let Ok(mut m) = self.media_sessions.lock() {
            for id in &routes.media {
                if m.get(id).is_some_and(|c| c == call_id) {
                    m.remove(id);
                }
            }
        }
    }

    /// The call and leg owning the first of `ids` in the dialog table.
    pub(crate) fn dialog_owner(&self, ids: &[DialogId]) -> Option<(String, Leg, DialogId)> {
        let d = self.dialogs.lock().ok()?;
        ids.iter()
            .find_map(|id| d.get(id).map(|(c, l)| (c.clone(), *l, id.clone())))
    }

    /// Drops a dialog's route while it still goes to `call_id` (a leg handed to another call).
    pub(crate) fn unroute_dialog(&self, id: &DialogId, call_id: &str) {
        if let Ok(mut d) = self.dialogs.lock() {
            if d.get(id).is_some_and(|(c, _)| c == call_id) {
                d.remove(id);
            }
        }
    }

    /// Sends an input to a running call; the input back when that call has ended.
    pub(crate) fn try_send_to(&self, call: &str, input: Input) -> Result<(), Box<Input>> {
        let tx = self
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(call).map(|e| e.tx.clone()));
        match tx {
            Some(tx) => tx.send(Box::new(input)).map_err(|e| e.0),
            None => Err(Box::new(input)),
        }
    }

    /// Sends an input to a running call (nothing when it has ended).
    pub(crate) fn send_to(&self, call: &str, input: Input) {
        let tx = self
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(call).map(|e| e.tx.clone()));
        if let Some(tx) = tx {
            let _ = tx.send(Box::new(input));
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
