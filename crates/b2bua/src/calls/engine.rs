//! The call engine: admission, the registry of live calls, and the routing of in-dialog SIP
//! traffic and media events to the task (actor) that owns each call.

use media::{MediaEvent, Relay, SessionId};
use sip_core::dialog::DialogId;
use sip_core::endpoint::{Endpoint, IncomingRequest};
use sip_core::message::{HeaderAccess, Request, Response};
use sip_core::transport::Flow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use store::Store;
use tokio::sync::mpsc;

use super::call::{Call, CallCmd};
use super::{
    CallControl, CallEvent, CallEventKind, CallHooks, CallSpec, HangupError, Leg, StartError,
};
use crate::registrar::Registrar;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The SIP domain (From host of our requests, the realm).
    pub domain: String,
    pub max_concurrent: usize,
    /// Session-Expires we ask for (RFC 4028), seconds.
    pub session_expires: u32,
    /// `[dns] servers` for trunk addresses; empty = the system resolver.
    pub dns_servers: Vec<std::net::SocketAddr>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            domain: "dialbridge.test".into(),
            max_concurrent: 10_000,
            session_expires: 1800,
            dns_servers: Vec::new(),
        }
    }
}

pub(crate) struct CallEntry {
    pub(crate) tx: mpsc::UnboundedSender<CallCmd>,
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
    hooks: OnceLock<Arc<dyn CallHooks>>,
    pub(crate) calls: Mutex<HashMap<String, CallEntry>>,
    /// Dialog (our tag local) -> (call, leg), for in-dialog requests.
    pub(crate) dialogs: Mutex<HashMap<DialogId, (String, Leg)>>,
    /// SIP Call-ID of a leg -> call, for stray 2xx of forked INVITEs.
    pub(crate) sip_call_ids: Mutex<HashMap<String, String>>,
    /// (call, leg) -> the SIP Call-ID of that leg's latest INVITE, for RTCP captures.
    pub(crate) leg_sip_call_ids: Mutex<HashMap<(String, Leg), String>>,
    pub(crate) media_sessions: Mutex<HashMap<SessionId, String>>,
    pub(crate) active: AtomicUsize,
    pub(crate) shutting_down: AtomicBool,
    /// Packets the relay forwarded for calls that have ended (both legs, both ways).
    pub(crate) relayed_packets: std::sync::atomic::AtomicU64,
    /// Packets from sources a leg does not accept (RTP Bleed), by calls that have ended.
    pub(crate) hijack_dropped: std::sync::atomic::AtomicU64,
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

    pub(crate) fn register_sip_call_id(&self, sip_call_id: &str, call_id: &str, leg: Leg) {
        if let Ok(mut m) = self.sip_call_ids.lock() {
            m.insert(sip_call_id.to_string(), call_id.to_string());
        }
        if let Ok(mut m) = self.leg_sip_call_ids.lock() {
            m.insert((call_id.to_string(), leg), sip_call_id.to_string());
        }
    }

    fn forget(&self, call_id: &str) {
        if let Ok(mut d) = self.dialogs.lock() {
            d.retain(|_, (c, _)| c != call_id);
        }
        if let Ok(mut m) = self.sip_call_ids.lock() {
            m.retain(|_, c| c != call_id);
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
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The engine's handle (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("active", &self.inner.active.load(Ordering::Relaxed))
            .finish()
    }
}

impl Engine {
    /// Creates the engine and starts the task that turns media time-outs into hang-ups.
    pub fn new(
        cfg: EngineConfig,
        endpoint: Endpoint,
        store: Arc<dyn Store>,
        registrar: Arc<Registrar>,
        relay: Arc<Relay>,
    ) -> Engine {
        let media_events = relay.events();
        let trunks = Arc::new(crate::trunks::Trunks::new(
            &crate::trunks::TrunksConfig {
                dns_servers: cfg.dns_servers.clone(),
            },
            Arc::clone(&store),
        ));
        crate::trunks::check::spawn(
            Arc::downgrade(&trunks),
            endpoint.clone(),
            cfg.domain.clone(),
        );
        let inner = Arc::new(EngineInner {
            trunks,
            cfg,
            endpoint,
            store,
            registrar,
            relay,
            hooks: OnceLock::new(),
            calls: Mutex::new(HashMap::new()),
            dialogs: Mutex::new(HashMap::new()),
            sip_call_ids: Mutex::new(HashMap::new()),
            leg_sip_call_ids: Mutex::new(HashMap::new()),
            media_sessions: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            relayed_packets: std::sync::atomic::AtomicU64::new(0),
            hijack_dropped: std::sync::atomic::AtomicU64::new(0),
        });
        if let Some(mut rx) = media_events {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    // (MediaEvent is non-exhaustive: other events are ignored.)
                    #[allow(irrefutable_let_patterns)]
                    if let MediaEvent::Timeout { session_id } = ev {
                        let call = inner
                            .media_sessions
                            .lock()
                            .ok()
                            .and_then(|m| m.get(&session_id).cloned());
                        if let Some(call) = call {
                            send_to(&inner, &call, CallCmd::MediaTimeout);
                        }
                    }
                }
            });
        }
        Engine { inner }
    }

    /// The trunk layer: its state for the API and the metrics.
    pub fn trunks(&self) -> Arc<crate::trunks::Trunks> {
        Arc::clone(&self.inner.trunks)
    }

    /// The call a SIP Call-ID belongs to (either leg), while the call runs: what a capture
    /// (HEP) puts in its correlation chunk so that both legs of one call link up.
    pub fn call_for_sip_call_id(&self, sip_call_id: &str) -> Option<String> {
        self.inner
            .sip_call_ids
            .lock()
            .ok()?
            .get(sip_call_id)
            .cloned()
    }

    /// The SIP Call-ID of one leg of the call a relay session belongs to, while the call
    /// runs: what an RTCP capture is correlated to (relay leg A is the agent's, B the
    /// customer's).
    pub fn sip_call_id_of_media(&self, session: SessionId, leg: media::LegId) -> Option<String> {
        let call = self
            .inner
            .media_sessions
            .lock()
            .ok()?
            .get(&session)
            .cloned()?;
        let leg = match leg {
            media::LegId::A => Leg::Agent,
            media::LegId::B => Leg::Customer,
        };
        self.inner
            .leg_sip_call_ids
            .lock()
            .ok()?
            .get(&(call, leg))
            .cloned()
    }

    /// Packets relayed by calls that have ended (a counter for metrics).
    pub fn relayed_packets(&self) -> u64 {
        self.inner.relayed_packets.load(Ordering::Relaxed)
    }

    /// Media packets dropped because they came from a source their leg does not accept
    /// (`media.strict_source`), by calls that have ended (a counter for metrics).
    pub fn hijack_dropped(&self) -> u64 {
        self.inner.hijack_dropped.load(Ordering::Relaxed)
    }

    /// Sets the receivers of call events (once; later calls are ignored).
    pub fn set_hooks(&self, hooks: Arc<dyn CallHooks>) {
        let _ = self.inner.hooks.set(hooks);
    }

    /// An in-dialog request (To tag present). `false` when no call owns the dialog (the
    /// caller answers 481).
    pub fn route_request(&self, inc: &IncomingRequest) -> bool {
        let Some(id) = DialogId::for_uas_request(&inc.request) else {
            return false;
        };
        let owner = self
            .inner
            .dialogs
            .lock()
            .ok()
            .and_then(|d| d.get(&id).cloned());
        let Some((call, leg)) = owner else {
            return false;
        };
        let tx = self
            .inner
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(&call).map(|e| e.tx.clone()));
        tx.is_some_and(|tx| {
            tx.send(CallCmd::Request(Box::new(inc.clone()), leg))
                .is_ok()
        })
    }

    /// An ACK for a 2xx we sent (re-INVITE pass-through): nothing to do beyond logging.
    pub fn route_ack(&self, request: &Request, _flow: &Flow) {
        tracing::trace!(call_id = %request.call_id_str(), "in-dialog ACK");
    }

    /// A 2xx to one of our INVITEs that no transaction took any more: ACK it again when it
    /// belongs to a live call's dialog, else ACK and BYE it.
    pub fn route_stray(&self, response: Response, flow: Flow) {
        let call = self
            .inner
            .sip_call_ids
            .lock()
            .ok()
            .and_then(|m| m.get(&response.call_id_str()).cloned());
        match call {
            Some(call) => send_to(&self.inner, &call, CallCmd::Stray(Box::new(response), flow)),
            None => {
                tracing::debug!(call_id = %response.call_id_str(), "stray 2xx for no call");
            }
        }
    }

    /// Stops taking calls; lets live calls go on for `grace`, then hangs them up. Returns
    /// when every call has ended (or after a bounded wait).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.active.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let txs: Vec<_> = self
            .inner
            .calls
            .lock()
            .map(|c| c.values().map(|e| e.tx.clone()).collect())
            .unwrap_or_default();
        for tx in txs {
            let _ = tx.send(CallCmd::Shutdown);
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.inner.active.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) fn send_to(inner: &EngineInner, call: &str, cmd: CallCmd) {
    let tx = inner
        .calls
        .lock()
        .ok()
        .and_then(|c| c.get(call).map(|e| e.tx.clone()));
    if let Some(tx) = tx {
        let _ = tx.send(cmd);
    }
}

impl CallControl for Engine {
    fn start_call(&self, spec: CallSpec) -> Result<(), StartError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown);
        }
        let max = inner.cfg.max_concurrent;
        // Admission: reserve a slot or refuse.
        let mut cur = inner.active.load(Ordering::SeqCst);
        loop {
            if cur >= max {
                return Err(StartError::AtCapacity(max));
            }
            match inner
                .active
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut c) = inner.calls.lock() {
            c.insert(spec.call_id.clone(), CallEntry { tx, media: None });
        }
        let inner2 = Arc::clone(inner);
        let call_id = spec.call_id.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("call", call = %call_id);
            let _enter = span.enter();
            drop(_enter);
            let call = Call::new(Arc::clone(&inner2), spec, rx);
            tracing::Instrument::instrument(call.run(), span).await;
            inner2.forget(&call_id);
            inner2.active.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(())
    }

    fn hangup(&self, call_id: &str) -> Result<(), HangupError> {
        let tx = self
            .inner
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(call_id).map(|e| e.tx.clone()))
            .ok_or(HangupError::NotActive)?;
        tx.send(CallCmd::Hangup).map_err(|_| HangupError::NotActive)
    }

    fn active_calls(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    fn live_stats(&self, call_id: &str) -> Option<serde_json::Value> {
        let reader = self.inner.calls.lock().ok()?.get(call_id)?.media.clone()?;
        Some(super::sdp_glue::stats_json(&reader.stats()))
    }

    fn trunk_status<'a>(&'a self, name: &'a str) -> super::TrunkStatusFuture<'a> {
        Box::pin(self.inner.trunks.status(name))
    }
}
