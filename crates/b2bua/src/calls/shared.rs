//! The state every call of the engine shares: the endpoint, store, registrar and relay, the
//! routing tables from SIP dialogs and relay sessions to calls, and the counters kept for
//! calls that have ended. The engine ([`super::engine`]) creates it; each call's driver
//! ([`super::driver`]) reads it.

use media::{Relay, SessionId};
use sip_core::dialog::DialogId;
use sip_core::endpoint::Endpoint;
use std::collections::HashMap;
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
    pub(crate) tx: mpsc::UnboundedSender<Input>,
    /// The call's relay counters, once it has a relay session.
    pub(crate) media: Option<media::StatsReader>,
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
    pub(crate) calls: Mutex<HashMap<String, CallEntry>>,
    /// Dialog (our tag local) -> (call, leg), for in-dialog requests.
    pub(crate) dialogs: Mutex<HashMap<DialogId, (String, Leg)>>,
    /// Dialog of a side leg (a supervisor) -> (call, side), for its in-dialog requests.
    pub(crate) side_dialogs: Mutex<HashMap<DialogId, (String, u32)>>,
    /// SIP Call-ID of a leg -> call, for stray 2xx of forked INVITEs.
    pub(crate) sip_call_ids: Mutex<HashMap<String, String>>,
    /// (call, leg) -> the SIP Call-ID of that leg's latest INVITE, for RTCP captures.
    pub(crate) leg_sip_call_ids: Mutex<HashMap<(String, Leg), String>>,
    pub(crate) media_sessions: Mutex<HashMap<SessionId, String>>,
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
            h.on_event(&ev);
        }
    }

    pub(crate) fn register_dialog(&self, id: DialogId, call_id: &str, leg: Leg) {
        if let Ok(mut d) = self.dialogs.lock() {
            d.insert(id, (call_id.to_string(), leg));
        }
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
    }

    /// Drops every route to a call that has ended.
    pub(crate) fn forget(&self, call_id: &str) {
        if let Ok(mut d) = self.dialogs.lock() {
            d.retain(|_, (c, _)| c != call_id);
        }
        if let Ok(mut m) = self.sip_call_ids.lock() {
            m.retain(|_, c| c != call_id);
        }
        if let Ok(mut d) = self.side_dialogs.lock() {
            d.retain(|_, (c, _)| c != call_id);
        }
        if let Ok(mut m) = self.leg_sip_call_ids.lock() {
            m.retain(|(c, _), _| c != call_id);
        }
        if let Ok(mut m) = self.media_sessions.lock() {
            m.retain(|_, c| c != call_id);
        }
        if let Ok(mut c) = self.calls.lock() {
            c.remove(call_id);
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
            let _ = tx.send(input);
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
