//! The call engine: admission, the registry of live calls, and the routing of in-dialog SIP
//! traffic and media events to the task (actor) that owns each call.

use media::{MediaEvent, Relay, SessionId};
use sip_core::dialog::DialogId;
use sip_core::endpoint::{Endpoint, IncomingRequest};
use sip_core::map::Map;
use sip_core::message::{HeaderAccess, Request, Response};
use sip_core::transport::Flow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use store::Store;
use tokio::sync::mpsc;

use super::machine::Input;
use super::shared::{CallEntry, EngineInner};
use super::{driver, CallControl, CallHooks, CallSpec, HangupError, Leg, StartError};
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
    /// How long an inbound call rings the owner's devices (`calls.agent_ring_secs`).
    pub inbound_ring: Duration,
    /// Where recordings go (`[recording] dir`): `<call id>.wav`.
    pub recording_dir: std::path::PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            domain: "dialbridge.test".into(),
            max_concurrent: 10_000,
            session_expires: 1800,
            dns_servers: Vec::new(),
            inbound_ring: Duration::from_secs(30),
            recording_dir: std::path::PathBuf::from("recordings"),
        }
    }
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
        {
            let transports = Arc::clone(endpoint.transports());
            trunks.set_tls_name_sink(Arc::new(move |addr, name| {
                transports.set_tls_server_name(addr, name)
            }));
        }
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
            calls: Mutex::new(Map::default()),
            dialogs: Mutex::new(Map::default()),
            side_dialogs: Mutex::new(Map::default()),
            sip_call_ids: Mutex::new(Map::default()),
            leg_sip_call_ids: Mutex::new(Map::default()),
            media_sessions: Mutex::new(Map::default()),
            active: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            relayed_packets: AtomicU64::new(0),
            hijack_dropped: AtomicU64::new(0),
        });
        if let Some(mut rx) = media_events {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    let (session_id, input) = match ev {
                        MediaEvent::Timeout { session_id } => (session_id, Input::MediaTimeout),
                        MediaEvent::Dtmf {
                            session_id,
                            leg,
                            digit,
                        } => {
                            let leg = match leg {
                                media::LegId::A => Leg::Agent,
                                media::LegId::B => Leg::Customer,
                            };
                            (session_id, Input::Dtmf(leg, digit))
                        }
                        MediaEvent::RecordingStopped { session_id, reason } => {
                            tracing::warn!(%reason, "a recording stopped early");
                            (session_id, Input::RecordingStopped(reason))
                        }
                        // (MediaEvent is non-exhaustive: other events are ignored.)
                        _ => continue,
                    };
                    let call = inner
                        .media_sessions
                        .lock()
                        .ok()
                        .and_then(|m| m.get(&session_id).cloned());
                    if let Some(call) = call {
                        inner.send_to(&call, input);
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
            let side = self
                .inner
                .side_dialogs
                .lock()
                .ok()
                .and_then(|d| d.get(&id).cloned());
            let Some((call, side)) = side else {
                return false;
            };
            let tx = self
                .inner
                .calls
                .lock()
                .ok()
                .and_then(|c| c.get(&call).map(|e| e.tx.clone()));
            return tx.is_some_and(|tx| {
                tx.send(Box::new(Input::SideRequest(Box::new(inc.clone()), side)))
                    .is_ok()
            });
        };
        let tx = self
            .inner
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(&call).map(|e| e.tx.clone()));
        tx.is_some_and(|tx| {
            tx.send(Box::new(Input::Request(Box::new(inc.clone()), leg)))
                .is_ok()
        })
    }

    /// An ACK for a 2xx we sent: to the call whose dialog it is (the ACK of an incoming
    /// leg's INVITE; a re-INVITE's ACK is only noted there).
    pub fn route_ack(&self, request: &Request, _flow: &Flow) {
        tracing::trace!(call_id = %request.call_id_str(), "in-dialog ACK");
        let Some(id) = DialogId::for_uas_request(request) else {
            return;
        };
        let owner = self
            .inner
            .dialogs
            .lock()
            .ok()
            .and_then(|d| d.get(&id).cloned());
        if let Some((call, leg)) = owner {
            self.inner
                .send_to(&call, Input::Ack(leg, request.body.clone()));
        }
    }

    /// An INVITE that opens a call (no To tag) from a trunk's address: an inbound call to
    /// one of an account's numbers (see `calls::inbound`). Answered at once; the work runs
    /// in a task of its own.
    pub fn on_invite(&self, inc: IncomingRequest, budget: sip_core::endpoint::RefusalBudget) {
        tokio::spawn(super::inbound::dispatch(self.clone(), inc, budget));
    }

    /// An out-of-dialog INVITE from an address that is no trunk: a phone placing a call
    /// (`calls::from_phone`).
    pub fn on_phone_invite(&self, inc: IncomingRequest, budget: sip_core::endpoint::RefusalBudget) {
        tokio::spawn(super::from_phone::dispatch(self.clone(), inc, budget));
    }

    /// A CANCEL that matched the server transaction of an INVITE (answered 200 by the
    /// endpoint): the call that INVITE started hears it, and answers the INVITE 487.
    pub fn route_cancel(&self, cancel: &Request) {
        let call = self
            .inner
            .sip_call_ids
            .lock()
            .ok()
            .and_then(|m| m.get(&cancel.call_id_str()).cloned());
        if let Some(call) = call {
            self.inner.send_to(&call, Input::Cancelled);
        }
    }

    /// A 2xx to one of our INVITEs that no transaction took any more: ACK it again when it
    /// belongs to a live call's dialog, else ACK and BYE it.
    pub fn route_stray(&self, response: Response, _flow: Flow) {
        let call = self
            .inner
            .sip_call_ids
            .lock()
            .ok()
            .and_then(|m| m.get(&response.call_id_str()).cloned());
        match call {
            Some(call) => self.inner.send_to(&call, Input::Stray(Box::new(response))),
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
            let _ = tx.send(Box::new(Input::Shutdown));
        }
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.inner.active.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
            c.insert(
                spec.call_id.clone(),
                CallEntry {
                    tx: tx.clone(),
                    media: None,
                    routes: Default::default(),
                },
            );
        }
        let span = tracing::info_span!("call", call = %spec.call_id);
        tokio::spawn(tracing::Instrument::instrument(
            driver::run(Arc::clone(inner), spec, tx, rx),
            span,
        ));
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
        tx.send(Box::new(Input::Hangup))
            .map_err(|_| HangupError::NotActive)
    }

    fn active_calls(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    fn control<'a>(
        &'a self,
        call_id: &'a str,
        cmd: super::LiveCommand,
    ) -> super::ControlFuture<'a> {
        let tx = self
            .inner
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(call_id).map(|e| e.tx.clone()));
        Box::pin(async move {
            let tx = tx.ok_or(super::ControlError::NotActive)?;
            let (reply, rx) = tokio::sync::oneshot::channel();
            tx.send(Box::new(Input::Control(cmd, reply)))
                .map_err(|_| super::ControlError::NotActive)?;
            rx.await.map_err(|_| super::ControlError::NotActive)?
        })
    }

    fn live_stats(&self, call_id: &str) -> Option<serde_json::Value> {
        let reader = self.inner.calls.lock().ok()?.get(call_id)?.media.clone()?;
        Some(super::sdp_glue::stats_json(&reader.stats()))
    }

    fn trunk_status<'a>(&'a self, name: &'a str) -> super::TrunkStatusFuture<'a> {
        Box::pin(self.inner.trunks.status(name))
    }
}
