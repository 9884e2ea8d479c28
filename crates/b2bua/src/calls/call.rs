//! One click-to-call: the task that owns both legs and the relay session.
//!
//! ```text
//!   start ──► agent leg: INVITE every contact at once (fork)
//!               │ first 2xx: ACK, CANCEL the others (Reason: SIP;cause=200)
//!               │ all rejected / ring time over / API hang-up ──► end (leg = agent)
//!               ▼
//!             customer leg: INVITE through the trunk (401/407 answered once)
//!               │ 183+SDP: relay the carrier's early media to the agent
//!               │ 2xx: ACK, bridge ──► in-progress
//!               │ rejected / ring time over / agent BYE / API ──► BYE agent, end (leg = customer)
//!               ▼
//!             connected: BYE from either side ends the other (completed);
//!               re-INVITE / UPDATE / INFO pass through with SDP rewritten to the relay;
//!               session refresh (RFC 4028); media time-out and API hang-up BYE both.
//! ```
//!
//! Timers owned here: the agent and customer ring timers, the session refresh timer, and the
//! bounded waits for in-dialog transactions; SIP retransmission timers live in sip-core.

use bytes::Bytes;
use media::{LegId, MediaSession};
use sip_core::auth::DigestClient;
use sip_core::dialog::Dialog;
use sip_core::endpoint::{
    new_tag, Canceller, ClientEvent, ClientTransaction, Destination, IncomingRequest,
};
use sip_core::message::{HeaderAccess, HeaderName, Method, Request, Response, Uri};
use sip_core::transport::Flow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use store::CallStatus;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::engine::{now_ms, EngineInner};
use super::sdp_glue::{self, Origin};
use super::{AgentTarget, CallEventKind, CallSpec, CustomerTarget, Leg, Outcome};

/// Commands to a call's task.
#[derive(Debug)]
pub(crate) enum CallCmd {
    Hangup,
    Request(Box<IncomingRequest>, Leg),
    Stray(Box<Response>, Flow),
    MediaTimeout,
    Shutdown,
}

/// Where one INVITE of a fork goes.
#[derive(Debug, Clone)]
struct Target {
    request_uri: Uri,
    to: String,
    dest: Destination,
    /// Credentials for a trunk that challenges.
    credentials: Option<(String, String)>,
    /// A label for the timeline (device name, trunk name).
    label: String,
}

impl From<crate::trunks::Attempt> for Target {
    fn from(a: crate::trunks::Attempt) -> Target {
        Target {
            to: format!("<{}>", a.request_uri),
            request_uri: a.request_uri,
            dest: a.dest,
            credentials: a.credentials,
            label: a.label,
        }
    }
}

/// What a walked attempt's INVITE is built from: the offer, the SIP Call-ID, the From tag
/// and where the branch's events go.
type WalkSend<'a> = (
    &'a Bytes,
    &'a str,
    &'a str,
    &'a mpsc::UnboundedSender<(usize, ClientEvent)>,
);

/// An established leg.
struct LegState {
    dialog: Dialog,
    dest: Destination,
    /// The SDP we last sent on this leg (for refreshes).
    local_sdp: Bytes,
    /// The SDP the peer last sent.
    remote_sdp: Bytes,
    origin: Origin,
    /// RFC 4028: when we must refresh (we are the refresher), or when the peer must have.
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
    session_expires: Option<u32>,
}

struct Branch {
    invite: Request,
    dest: Destination,
    canceller: Option<Canceller>,
    final_code: Option<u16>,
    /// A provisional response arrived: a CANCEL goes out at once (before one, the endpoint
    /// holds it back, RFC 3261 §9.1).
    provisional: bool,
    q850: Option<u16>,
    challenged: bool,
    target: Target,
}

/// Why a fork ended without an answer.
struct ForkFailure(Outcome);

/// The call task.
pub(crate) struct Call {
    inner: Arc<EngineInner>,
    spec: CallSpec,
    rx: mpsc::UnboundedReceiver<CallCmd>,
    media: Option<MediaSession>,
    agent: Option<LegState>,
    customer: Option<LegState>,
    answered_at: Option<Instant>,
    answered_at_ms: Option<i64>,
    /// Commands that arrived while a passed-through transaction was pending, handled next.
    deferred: std::collections::VecDeque<CallCmd>,
    /// The customer leg's attempts through trunks; once answered, it holds the trunk's
    /// channel until the call ends.
    walk: Option<crate::trunks::Walk>,
}

/// What ended the wait for a passed-through transaction.
enum Watch {
    Answered(Option<Response>),
    /// A BYE from either leg (answered at once; the call ends).
    Bye(Box<IncomingRequest>, Leg),
    /// API hang-up, shutdown or media time-out: the call ends.
    End(CallCmd),
}

fn outcome(status: CallStatus, leg: Option<Leg>, sip_code: Option<u16>, reason: &str) -> Outcome {
    Outcome {
        status,
        leg,
        sip_code,
        q850_cause: None,
        duration_secs: 0,
        reason: reason.to_string(),
    }
}

/// SIP status -> call status of a rejected leg (SPEC §4).
fn rejected_status(code: u16) -> CallStatus {
    match code {
        486 | 600 => CallStatus::Busy,
        408 | 480 | 487 => CallStatus::NoAnswer,
        _ => CallStatus::Failed,
    }
}

impl Call {
    pub(crate) fn new(
        inner: Arc<EngineInner>,
        spec: CallSpec,
        rx: mpsc::UnboundedReceiver<CallCmd>,
    ) -> Call {
        Call {
            inner,
            spec,
            rx,
            media: None,
            agent: None,
            customer: None,
            answered_at: None,
            answered_at_ms: None,
            deferred: std::collections::VecDeque::new(),
            walk: None,
        }
    }

    fn emit(&self, kind: CallEventKind) {
        self.inner
            .emit(&self.spec.call_id, &self.spec.account_id, kind);
    }

    fn note(&self, leg: Option<Leg>, text: impl Into<String>) {
        self.emit(CallEventKind::Note {
            leg,
            text: text.into(),
        });
    }

    fn sip_event(&self, leg: Leg, direction: &'static str, summary: String, sip_call_id: &str) {
        self.emit(CallEventKind::Sip {
            leg,
            direction,
            summary,
            sip_call_id: sip_call_id.to_string(),
        });
    }

    pub(crate) async fn run(mut self) {
        let mut out = self.drive().await;
        if let Some(at) = self.answered_at {
            out.duration_secs = at.elapsed().as_secs();
        }
        let stats = match self.media.take() {
            Some(m) => {
                if let Ok(mut map) = self.inner.media_sessions.lock() {
                    map.remove(&m.id());
                }
                let st = m.close();
                self.inner.relayed_packets.fetch_add(
                    st.a.tx_packets + st.b.tx_packets,
                    std::sync::atomic::Ordering::Relaxed,
                );
                let hijack = st.a.hijack_dropped + st.b.hijack_dropped;
                if hijack > 0 {
                    tracing::warn!(
                        agent = st.a.hijack_dropped,
                        customer = st.b.hijack_dropped,
                        "media from sources the call's legs do not accept was dropped"
                    );
                    self.inner
                        .hijack_dropped
                        .fetch_add(hijack, std::sync::atomic::Ordering::Relaxed);
                }
                sdp_glue::stats_json(&st)
            }
            None => serde_json::Value::Null,
        };
        tracing::info!(status = ?out.status, leg = ?out.leg, sip_code = ?out.sip_code, reason = %out.reason, "call ended");
        self.emit(CallEventKind::Ended {
            outcome: out,
            stats,
        });
    }

    async fn drive(&mut self) -> Outcome {
        match self.inner.relay.allocate_session() {
            Ok(m) => {
                if let Ok(mut map) = self.inner.media_sessions.lock() {
                    map.insert(m.id(), self.spec.call_id.clone());
                }
                if let Ok(mut calls) = self.inner.calls.lock() {
                    if let Some(c) = calls.get_mut(&self.spec.call_id) {
                        c.media = Some(m.stats_reader());
                    }
                }
                self.note(
                    None,
                    format!(
                        "relay ports agent {} customer {}",
                        m.leg(LegId::A).advertised_rtp(),
                        m.leg(LegId::B).advertised_rtp()
                    ),
                );
                self.media = Some(m);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no relay ports");
                return outcome(
                    CallStatus::Failed,
                    None,
                    Some(503),
                    &format!("media relay: {e}"),
                );
            }
        }
        // The agent leg.
        let agent_targets = match self.agent_targets().await {
            Ok(t) => t,
            Err(o) => return o,
        };
        let agent = match self
            .fork(Leg::Agent, agent_targets, self.spec.agent_ring, None)
            .await
        {
            Ok(a) => a,
            Err(ForkFailure(o)) => return o,
        };
        self.agent = Some(agent);
        // The customer leg.
        let customer_targets = match self.customer_targets().await {
            Ok(t) => t,
            Err(o) => {
                self.bye(Leg::Agent).await;
                return o;
            }
        };
        let agent_sdp = self
            .agent
            .as_ref()
            .map(|a| (a.local_sdp.clone(), a.remote_sdp.clone()));
        match self
            .fork(
                Leg::Customer,
                customer_targets,
                self.spec.customer_ring,
                agent_sdp,
            )
            .await
        {
            Ok(c) => {
                self.customer = Some(c);
                if let Some(o) = self.realign_agent().await {
                    return o;
                }
            }
            Err(ForkFailure(o)) => {
                self.bye(Leg::Agent).await;
                return o;
            }
        }
        self.connected().await
    }

    fn media_leg(leg: Leg) -> LegId {
        match leg {
            Leg::Agent => LegId::A,
            Leg::Customer => LegId::B,
        }
    }

    fn relay_addr(&self, leg: Leg) -> Option<SocketAddr> {
        self.media
            .as_ref()
            .map(|m| m.leg(Self::media_leg(leg)).advertised_rtp())
    }

    /// Names the addresses a leg's peer signals from (a registered phone's source address,
    /// the trunk's resolved address): with `media.strict_source`, the relay takes that leg's
    /// media only from these and the addresses of its SDP (RTP Bleed).
    fn allow_media_sources(&self, leg: Leg, ips: &[IpAddr]) {
        if let Some(m) = self.media.as_ref() {
            let _ = m.allow_sources(Self::media_leg(leg), ips);
        }
    }

    fn set_peer(&self, leg: Leg, sdp: &[u8]) {
        let (Some(m), Some(p)) = (self.media.as_ref(), sdp_glue::peer_of(sdp)) else {
            return;
        };
        let id = Self::media_leg(leg);
        let _ = m.set_peer(id, p.rtp, p.rtcp, p.mux);
        let _ = m.set_clock_rate(id, p.clock_rate);
    }

    async fn agent_targets(&self) -> Result<Vec<Target>, Outcome> {
        match &self.spec.agent {
            AgentTarget::Devices { user_id } => self.device_targets(user_id, Leg::Agent),
            AgentTarget::Trunk { number, trunk, .. } => self
                .trunk_target(number, trunk.as_deref(), Leg::Agent)
                .await
                .map(|t| vec![t]),
        }
    }

    async fn customer_targets(&mut self) -> Result<Vec<Target>, Outcome> {
        let (number, emergency) = match &self.spec.customer {
            CustomerTarget::E164(n) => (n.clone(), false),
            CustomerTarget::Emergency(n) => (n.clone(), true),
            CustomerTarget::User { user_id } => return self.device_targets(user_id, Leg::Customer),
        };
        // Through trunks: the attempts one after another (`crate::trunks::walk`).
        let walk = crate::trunks::call_glue::customer_walk(
            &self.inner.trunks,
            &self.spec.account_id,
            &number,
            emergency,
        )
        .await
        .map_err(|reason| outcome(CallStatus::Failed, Some(Leg::Customer), None, &reason))?;
        self.walk = Some(walk);
        Ok(Vec::new())
    }

    fn device_targets(&self, user_id: &str, leg: Leg) -> Result<Vec<Target>, Outcome> {
        let now = now_ms() / 1000;
        let bindings = self
            .inner
            .store
            .bindings_for_user(user_id, now)
            .map_err(|e| outcome(CallStatus::Failed, Some(leg), None, &format!("store: {e}")))?;
        let mut out = Vec::new();
        for b in &bindings {
            let conn = self
                .inner
                .registrar
                .connection_of(&b.device_username, &b.contact);
            if let Some((uri, dest)) = crate::registrar::binding_target(b, conn) {
                out.push(Target {
                    request_uri: uri,
                    to: format!("<sip:{}@{}>", b.device_username, self.inner.cfg.domain),
                    dest,
                    credentials: None,
                    label: format!("device {} at {}", b.device_username, b.contact),
                });
            }
        }
        if out.is_empty() {
            return Err(outcome(
                CallStatus::Failed,
                Some(leg),
                Some(480),
                "no registered device",
            ));
        }
        Ok(out)
    }

    async fn trunk_target(
        &self,
        number: &str,
        trunk_name: Option<&str>,
        leg: Leg,
    ) -> Result<Target, Outcome> {
        crate::trunks::call_glue::first_attempt(
            &self.inner.trunks,
            &self.spec.account_id,
            number,
            trunk_name,
        )
        .await
        .map(Target::from)
        .map_err(|reason| outcome(CallStatus::Failed, Some(leg), None, &reason))
    }

    /// The From of a leg's INVITEs and the P-Asserted-Identity.
    fn identity(&self, leg: Leg) -> (String, Option<String>) {
        let domain = &self.inner.cfg.domain;
        match leg {
            Leg::Agent => {
                // The agent sees whom they are being connected to.
                let shown = match &self.spec.customer {
                    CustomerTarget::E164(n) | CustomerTarget::Emergency(n) => n.clone(),
                    CustomerTarget::User { .. } => "internal".into(),
                };
                let user = match &self.spec.agent {
                    AgentTarget::Trunk {
                        dial_as: Some(d), ..
                    } => d.clone(),
                    AgentTarget::Trunk { .. } => {
                        self.spec.caller_id.clone().unwrap_or(shown.clone())
                    }
                    AgentTarget::Devices { .. } => shown.clone(),
                };
                let pai = match &self.spec.agent {
                    AgentTarget::Trunk { .. } => Some(format!("<sip:{user}@{domain}>")),
                    AgentTarget::Devices { .. } => None,
                };
                (format!("\"{shown}\" <sip:{user}@{domain}>"), pai)
            }
            Leg::Customer => {
                let cid = self
                    .spec
                    .caller_id
                    .clone()
                    .unwrap_or_else(|| "anonymous".into());
                (
                    format!("<sip:{cid}@{domain}>"),
                    self.spec
                        .caller_id
                        .as_ref()
                        .map(|c| format!("<sip:{c}@{domain}>")),
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build_invite(
        &self,
        leg: Leg,
        target: &Target,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
        sdp: &Bytes,
    ) -> Request {
        let (from, pai) = self.identity(leg);
        let mut r = Request::new(Method::Invite, target.request_uri.clone());
        r.headers
            .add(HeaderName::From, format!("{from};tag={from_tag}"));
        r.headers.add(HeaderName::To, target.to.clone());
        r.headers.add(HeaderName::CallId, call_id.to_string());
        r.headers.add(HeaderName::CSeq, format!("{cseq} INVITE"));
        if let Some(c) =
            self.inner
                .endpoint
                .contact_uri(None, target.dest.transport, target.dest.addr)
        {
            r.headers.add(HeaderName::Contact, format!("<{c}>"));
        }
        if let Some(p) = pai {
            r.headers.add(HeaderName::PAssertedIdentity, p);
        }
        r.headers.add(HeaderName::Allow, crate::server::ALLOW);
        r.headers.add(HeaderName::Supported, "timer");
        r.headers.add(
            HeaderName::SessionExpires,
            self.inner.cfg.session_expires.to_string(),
        );
        r.headers.add(HeaderName::ContentType, "application/sdp");
        r.body = sdp.clone();
        r
    }

    /// Sends INVITEs to every target at once; the first 2xx wins. For the customer leg,
    /// `agent_sdp` is (our offer to the agent, the agent's answer): the customer is offered
    /// the codecs the agent accepted.
    async fn fork(
        &mut self,
        leg: Leg,
        targets: Vec<Target>,
        ring: Duration,
        agent_sdp: Option<(Bytes, Bytes)>,
    ) -> Result<LegState, ForkFailure> {
        let relay = self.relay_addr(leg).ok_or_else(|| {
            ForkFailure(outcome(
                CallStatus::Failed,
                Some(leg),
                None,
                "no relay session",
            ))
        })?;
        let mut origin = Origin::new();
        let offer = match &agent_sdp {
            Some((offer, answer)) => sdp_glue::customer_offer(relay, &mut origin, offer, answer),
            None => sdp_glue::agent_offer(relay, &mut origin),
        };
        let sip_call_id = format!("{}@{}", new_tag(), self.inner.cfg.domain);
        let from_tag = new_tag();
        self.inner
            .register_sip_call_id(&sip_call_id, &self.spec.call_id, leg);
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, ClientEvent)>();
        let mut branches: Vec<Branch> = Vec::new();
        // Any branch may answer (or send early media) from the address we signal it at.
        let signalling: Vec<IpAddr> = targets.iter().map(|t| t.dest.addr.ip()).collect();
        self.allow_media_sources(leg, &signalling);
        // Through trunks: one attempt at a time (the branch in flight is `walk_branch`).
        let mut walk = if leg == Leg::Customer {
            self.walk.take()
        } else {
            None
        };
        let mut walk_branch = None;
        if let Some(w) = walk.as_mut() {
            let send = (&offer, sip_call_id.as_str(), from_tag.as_str(), &tx);
            walk_branch = self.walk_advance(w, &mut branches, send).await;
        }
        for t in targets {
            let invite = self.build_invite(leg, &t, &sip_call_id, &from_tag, 1, &offer);
            let idx = branches.len();
            branches.push(Branch {
                invite: invite.clone(),
                dest: t.dest,
                canceller: None,
                final_code: None,
                provisional: false,
                q850: None,
                challenged: false,
                target: t,
            });
            self.send_branch(idx, &mut branches[idx], invite, &tx).await;
        }
        let deadline = tokio::time::sleep(ring);
        tokio::pin!(deadline);
        let mut rang = false;
        let mut early = false;
        let failure = loop {
            if branches.iter().all(|b| b.final_code.is_some()) {
                break ForkFailure(self.leg_failure(leg, &branches, walk.as_ref()));
            }
            tokio::select! {
                Some((i, ev)) = rx.recv() => {
                    let resp = match ev {
                        ClientEvent::Response(r) => r,
                        ClientEvent::Timeout => {
                            if let Some(b) = branches.get_mut(i) {
                                b.final_code.get_or_insert(408);
                            }
                            self.note(Some(leg), format!("branch {i}: no answer from {} (time-out)", branches.get(i).map(|b| b.target.label.as_str()).unwrap_or("?")));
                            if let (Some(w), true) = (walk.as_mut(), walk_branch == Some(i)) {
                                w.timed_out();
                                walk_branch = self.walk_advance(w, &mut branches, (&offer, &sip_call_id, &from_tag, &tx)).await;
                            }
                            continue;
                        }
                        ClientEvent::TransportError => {
                            if let Some(b) = branches.get_mut(i) {
                                b.final_code.get_or_insert(503);
                            }
                            if let (Some(w), true) = (walk.as_mut(), walk_branch == Some(i)) {
                                self.note(Some(leg), format!("{}: transport error", branches[i].target.label));
                                w.transport_error();
                                walk_branch = self.walk_advance(w, &mut branches, (&offer, &sip_call_id, &from_tag, &tx)).await;
                            }
                            continue;
                        }
                    };
                    self.sip_event(leg, "received", format!("{} {}", resp.status, String::from_utf8_lossy(&resp.reason)), &sip_call_id);
                    let Some(b) = branches.get_mut(i) else { continue };
                    if resp.status < 200 {
                        b.provisional = true;
                        if let (Some(w), true) = (walk.as_mut(), walk_branch == Some(i)) {
                            w.provisional(Instant::now());
                        }
                        if matches!(resp.status, 180 | 183) && !rang {
                            rang = true;
                            self.emit(CallEventKind::Ringing { leg, sip_code: resp.status });
                        }
                        if leg == Leg::Customer && !resp.body.is_empty() && !early {
                            // Early media: the carrier's ringback goes to the agent.
                            early = true;
                            self.set_peer(Leg::Customer, &resp.body);
                            if let Some(m) = &self.media { let _ = m.start(); }
                            self.emit(CallEventKind::EarlyMedia { leg });
                        }
                        continue;
                    }
                    if resp.is_success() {
                        let b = &branches[i];
                        let Ok(dialog) = Dialog::uac(&b.invite, &resp, b.invite.contact().ok().flatten().map(|n| n.uri).unwrap_or_else(|| b.invite.uri().clone())) else {
                            self.note(Some(leg), "2xx without a usable dialog (no Contact/To tag)");
                            continue;
                        };
                        let dest = b.dest;
                        let invite_cseq = b.invite.cseq().map(|c| c.seq).unwrap_or(1);
                        let ack = dialog.ack_for_2xx(invite_cseq, None);
                        self.sip_event(leg, "sent", "ACK".into(), &sip_call_id);
                        let _ = self.inner.endpoint.send_ack(ack, Some(dest)).await;
                        // Everyone else: CANCEL (RFC 3326 Reason: completed elsewhere).
                        for (j, other) in branches.iter().enumerate() {
                            if j != i && other.final_code.is_none() {
                                if let Some(c) = &other.canceller {
                                    c.cancel(vec![(HeaderName::Reason, Bytes::from_static(b"SIP;cause=200;text=\"Call completed elsewhere\""))]);
                                    self.cancel_event(leg, other, &sip_call_id);
                                }
                            }
                        }
                        // From now on the leg's media comes from the winner only.
                        self.allow_media_sources(leg, &[dest.addr.ip()]);
                        self.set_peer(leg, &resp.body);
                        self.inner.register_dialog(dialog.id().clone(), &self.spec.call_id, leg);
                        let se = resp.session_expires().ok().flatten();
                        let now = Instant::now();
                        let (refresh_at, expires_at, session_expires) = match se {
                            Some(se) if se.delta > 0 => {
                                let d = Duration::from_secs(u64::from(se.delta));
                                // We are the UAC: we refresh unless the UAS took it on.
                                if se.refresher.as_deref() == Some("uas") {
                                    (None, Some(now + d), Some(se.delta))
                                } else {
                                    (Some(now + d / 2), None, Some(se.delta))
                                }
                            }
                            _ => (None, None, None),
                        };
                        let state = LegState {
                            dialog,
                            dest,
                            local_sdp: offer.clone(),
                            remote_sdp: resp.body.clone(),
                            origin,
                            refresh_at,
                            expires_at,
                            session_expires,
                        };
                        match leg {
                            Leg::Agent => self.emit(CallEventKind::AgentAnswered { sip_code: resp.status }),
                            Leg::Customer => {
                                if let Some(m) = &self.media { let _ = m.start(); }
                                self.answered_at = Some(Instant::now());
                                self.answered_at_ms = Some(now_ms());
                                self.emit(CallEventKind::InProgress { sip_code: resp.status });
                            }
                        }
                        if let Some(mut w) = walk.take() {
                            w.answered(resp.status, Instant::now());
                            self.walk = Some(w);
                        }
                        // Late 2xx from the other branches: ACK and BYE them.
                        self.spawn_loser_janitor(leg, i, branches, rx, sip_call_id.clone());
                        return Ok(state);
                    }
                    // A final failure on branch i.
                    if matches!(resp.status, 401 | 407) {
                        let retry = {
                            let b = &mut branches[i];
                            if b.challenged || b.target.credentials.is_none() { None } else {
                                b.challenged = true;
                                self.authenticated_retry(b, &resp)
                            }
                        };
                        if let Some(req) = retry {
                            self.note(Some(leg), format!("answering the {} challenge of {}", resp.status, branches[i].target.label));
                            let b = &mut branches[i];
                            b.invite = req.clone();
                            self.send_branch(i, b, req, &tx).await;
                            if let (Some(w), true) = (walk.as_mut(), walk_branch == Some(i)) {
                                w.sent(Instant::now());
                            }
                            continue;
                        }
                    }
                    let q850 = resp.reasons().ok().and_then(|r| r.into_iter().find(|x| x.protocol.eq_ignore_ascii_case("Q.850")).and_then(|x| x.cause));
                    if let Some(b) = branches.get_mut(i) {
                        b.final_code = Some(resp.status);
                        b.q850 = q850;
                    }
                    if let (Some(w), true) = (walk.as_mut(), walk_branch == Some(i)) {
                        let retry_after = crate::trunks::call_glue::retry_after(&resp);
                        if w.failed(resp.status, retry_after, Instant::now()) == crate::trunks::Next::Try {
                            self.note(Some(leg), format!("{}: {} — trying the next", branches[i].target.label, resp.status));
                            walk_branch = self.walk_advance(w, &mut branches, (&offer, &sip_call_id, &from_tag, &tx)).await;
                        } else {
                            walk_branch = None;
                        }
                        continue;
                    }
                    // 6xx: no other branch may succeed (RFC 3261 §16.7 for forks).
                    if resp.status >= 600 {
                        self.cancel_all(leg, &branches, &sip_call_id);
                        break ForkFailure(self.leg_failure(leg, &branches, walk.as_ref()));
                    }
                }
                _ = crate::trunks::call_glue::deadline(walk.as_ref()) => {
                    // The attempt in flight sent nothing within its trunk's invite_timeout_ms.
                    let (Some(w), Some(i)) = (walk.as_mut(), walk_branch) else { continue };
                    let b = &mut branches[i];
                    b.final_code.get_or_insert(408);
                    if let Some(c) = &b.canceller {
                        c.cancel(Vec::new());
                    }
                    let waited = w.current().map(|a| a.invite_timeout.as_millis()).unwrap_or(0);
                    self.note(Some(leg), format!("{}: no answer within {waited} ms — trying the next", b.target.label));
                    w.timed_out();
                    walk_branch = self.walk_advance(w, &mut branches, (&offer, &sip_call_id, &from_tag, &tx)).await;
                }
                _ = &mut deadline => {
                    self.cancel_all(leg, &branches, &sip_call_id);
                    let reason = match leg { Leg::Agent => "agent ring time-out", Leg::Customer => "customer ring time-out" };
                    break ForkFailure(outcome(CallStatus::NoAnswer, Some(leg), Some(408), reason));
                }
                Some(cmd) = self.rx.recv() => match cmd {
                    CallCmd::Hangup => {
                        self.cancel_all(leg, &branches, &sip_call_id);
                        break ForkFailure(outcome(CallStatus::Canceled, None, Some(487), "hung up via API before answer"));
                    }
                    CallCmd::Shutdown => {
                        self.cancel_all(leg, &branches, &sip_call_id);
                        break ForkFailure(outcome(CallStatus::Failed, None, Some(503), "server shutting down"));
                    }
                    CallCmd::Request(inc, from) => {
                        let inc = *inc;
                        // The agent hangs up while the customer rings.
                        if from == Leg::Agent && inc.request.method == Method::Bye && leg == Leg::Customer {
                            self.respond(&inc, 200);
                            if let Some(a) = self.agent.as_mut() { a.dialog.terminate(); }
                            self.agent = None;
                            self.cancel_all(leg, &branches, &sip_call_id);
                            break ForkFailure(outcome(CallStatus::Canceled, Some(Leg::Agent), None, "agent hung up before the customer answered"));
                        }
                        self.in_dialog_early(inc, from).await;
                    }
                    CallCmd::Stray(resp, flow) => self.on_stray(*resp, flow).await,
                    CallCmd::MediaTimeout => {}
                },
            }
        };
        // Branches still ringing get their CANCEL; a 2xx that crosses it is ACKed and BYEd.
        self.spawn_loser_janitor(leg, usize::MAX, branches, rx, sip_call_id);
        Err(failure)
    }

    /// Sends the walk's next attempt as a new branch (skipping attempts whose trunk is at
    /// its limit and those the transport refuses at once); the branch index, `None` when
    /// no attempt is left. See `crate::trunks::walk`.
    async fn walk_advance(
        &self,
        w: &mut crate::trunks::Walk,
        branches: &mut Vec<Branch>,
        (offer, sip_call_id, from_tag, tx): WalkSend<'_>,
    ) -> Option<usize> {
        loop {
            let (attempt, notes) = w.next(Instant::now());
            for n in notes {
                self.note(Some(Leg::Customer), n);
            }
            let t = Target::from(attempt?);
            self.allow_media_sources(Leg::Customer, &[t.dest.addr.ip()]);
            let invite = self.build_invite(Leg::Customer, &t, sip_call_id, from_tag, 1, offer);
            let idx = branches.len();
            branches.push(Branch {
                invite: invite.clone(),
                dest: t.dest,
                canceller: None,
                final_code: None,
                provisional: false,
                q850: None,
                challenged: false,
                target: t,
            });
            self.send_branch(idx, &mut branches[idx], invite, tx).await;
            if branches[idx].final_code.is_none() {
                w.sent(Instant::now());
                return Some(idx);
            }
            w.transport_error();
        }
    }

    /// How a leg failed: for a walk, by its last attempt (or the trunks' limits).
    fn leg_failure(
        &self,
        leg: Leg,
        branches: &[Branch],
        walk: Option<&crate::trunks::Walk>,
    ) -> Outcome {
        let Some(w) = walk else {
            return self.fork_outcome(leg, branches);
        };
        if let Some(reason) = w.exhausted_reason() {
            return outcome(CallStatus::Failed, Some(leg), Some(503), &reason);
        }
        self.fork_outcome(
            leg,
            branches.last().map(std::slice::from_ref).unwrap_or(&[]),
        )
    }

    /// The timeline entry of a CANCEL asked for: sent when the branch has answered
    /// provisionally, otherwise held by the endpoint until it does (§9.1) — or never sent,
    /// if a final response comes first.
    fn cancel_event(&self, leg: Leg, b: &Branch, sip_call_id: &str) {
        if b.provisional {
            self.sip_event(
                leg,
                "sent",
                format!("CANCEL ({})", b.target.label),
                sip_call_id,
            );
        } else {
            self.note(
                Some(leg),
                format!(
                    "CANCEL ({}) held until a provisional response (RFC 3261 §9.1)",
                    b.target.label
                ),
            );
        }
    }

    fn cancel_all(&self, leg: Leg, branches: &[Branch], sip_call_id: &str) {
        for b in branches {
            if b.final_code.is_none() {
                if let Some(c) = &b.canceller {
                    c.cancel(Vec::new());
                    self.cancel_event(leg, b, sip_call_id);
                }
            }
        }
    }

    fn fork_outcome(&self, leg: Leg, branches: &[Branch]) -> Outcome {
        let codes: Vec<u16> = branches.iter().filter_map(|b| b.final_code).collect();
        let status = if !codes.is_empty() && codes.iter().all(|c| matches!(c, 486 | 600)) {
            CallStatus::Busy
        } else if let Some(c) = codes.iter().find(|c| **c >= 600) {
            rejected_status(*c)
        } else if !codes.is_empty() && codes.iter().all(|c| matches!(c, 408 | 480 | 487)) {
            CallStatus::NoAnswer
        } else if codes.len() == 1 {
            rejected_status(codes[0])
        } else {
            CallStatus::Failed
        };
        // The code that decided it: a 6xx, else the busy one, else the last.
        let code = codes
            .iter()
            .find(|c| **c >= 600)
            .or_else(|| codes.iter().find(|c| **c == 486))
            .or(codes.last())
            .copied();
        let q850 = branches.iter().find_map(|b| b.q850);
        let who = leg.as_str();
        let reason = match status {
            CallStatus::Busy => format!("{who} busy"),
            CallStatus::NoAnswer => format!("{who} did not answer"),
            _ => format!("{who} leg failed"),
        };
        Outcome {
            status,
            leg: Some(leg),
            sip_code: code,
            q850_cause: q850,
            duration_secs: 0,
            reason,
        }
    }

    async fn send_branch(
        &self,
        idx: usize,
        b: &mut Branch,
        invite: Request,
        tx: &mpsc::UnboundedSender<(usize, ClientEvent)>,
    ) {
        let leg_label = b.target.label.clone();
        let call_id = invite.call_id_str();
        match self.inner.endpoint.send_request(invite, Some(b.dest)).await {
            Ok(ct) => {
                let leg = if self.agent.is_none() {
                    Leg::Agent
                } else {
                    Leg::Customer
                };
                self.sip_event(
                    leg,
                    "sent",
                    format!("INVITE {} ({leg_label})", ct.request.uri()),
                    &call_id,
                );
                b.invite = ct.request.clone();
                b.canceller = Some(ct.canceller());
                tokio::spawn(forward(idx, ct, tx.clone()));
            }
            Err(e) => {
                tracing::info!(error = %e, target = %leg_label, "INVITE not sent");
                b.final_code = Some(503);
            }
        }
    }

    /// The INVITE again with credentials for a 401/407 (RFC 3261 §22.2), CSeq + 1.
    fn authenticated_retry(&self, b: &Branch, resp: &Response) -> Option<Request> {
        let (user, pass) = b.target.credentials.clone()?;
        let mut client = DigestClient::new(user, pass);
        let uri = b.invite.uri().to_string();
        let (ans, value) = client
            .answer_response(resp, "INVITE", &uri, &b.invite.body)
            .ok()?;
        let mut req = b.invite.clone();
        req.headers.remove(&HeaderName::Via);
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(1) + 1;
        req.headers.set(HeaderName::CSeq, format!("{cseq} INVITE"));
        req.headers.set(ans, value);
        Some(req)
    }

    fn spawn_loser_janitor(
        &self,
        leg: Leg,
        winner: usize,
        branches: Vec<Branch>,
        mut rx: mpsc::UnboundedReceiver<(usize, ClientEvent)>,
        sip_call_id: String,
    ) {
        let inner = Arc::clone(&self.inner);
        let call_id = self.spec.call_id.clone();
        let account_id = self.spec.account_id.clone();
        tokio::spawn(async move {
            let limit = tokio::time::sleep(Duration::from_secs(64));
            tokio::pin!(limit);
            loop {
                tokio::select! {
                    ev = rx.recv() => {
                        let Some((i, ClientEvent::Response(resp))) = ev else {
                            if ev.is_none() { return; }
                            continue;
                        };
                        if i == winner || !resp.is_success() {
                            if i == winner && resp.is_success() {
                                // A retransmitted 2xx of the winner: ACK again.
                                let b = &branches[i];
                                if let Ok(d) = Dialog::uac(&b.invite, &resp, b.invite.uri().clone()) {
                                    let cseq = b.invite.cseq().map(|c| c.seq).unwrap_or(1);
                                    let _ = inner.endpoint.send_ack(d.ack_for_2xx(cseq, None), Some(b.dest)).await;
                                }
                            }
                            continue;
                        }
                        let b = &branches[i];
                        inner.emit(&call_id, &account_id, CallEventKind::Sip {
                            leg,
                            direction: "received",
                            summary: format!("{} {} (late answer from {})", resp.status, String::from_utf8_lossy(&resp.reason), b.target.label),
                            sip_call_id: sip_call_id.clone(),
                        });
                        if let Ok(mut d) = Dialog::uac(&b.invite, &resp, b.invite.uri().clone()) {
                            let cseq = b.invite.cseq().map(|c| c.seq).unwrap_or(1);
                            let _ = inner.endpoint.send_ack(d.ack_for_2xx(cseq, None), Some(b.dest)).await;
                            let bye = d.new_request(Method::Bye, None);
                            inner.emit(&call_id, &account_id, CallEventKind::Sip {
                                leg,
                                direction: "sent",
                                summary: format!("ACK + BYE ({})", b.target.label),
                                sip_call_id: sip_call_id.clone(),
                            });
                            if let Ok(mut ct) = inner.endpoint.send_request(bye, Some(b.dest)).await {
                                let _ = tokio::time::timeout(Duration::from_secs(40), async {
                                    while let Some(ev) = ct.next().await {
                                        if let ClientEvent::Response(r) = ev { if r.status >= 200 { break; } } else { break; }
                                    }
                                }).await;
                            }
                        }
                    }
                    _ = &mut limit => return,
                }
            }
        });
    }

    fn respond(&self, inc: &IncomingRequest, status: u16) {
        let mut r = Response::for_request(&inc.request, status);
        r.set_to_tag(&new_tag());
        self.inner.endpoint.respond(&inc.key, r);
    }

    fn respond_with(&self, inc: &IncomingRequest, mut r: Response) {
        r.set_to_tag(&new_tag());
        self.inner.endpoint.respond(&inc.key, r);
    }

    /// An in-dialog request while the other leg is not up yet.
    async fn in_dialog_early(&mut self, inc: IncomingRequest, from: Leg) {
        let leg = match from {
            Leg::Agent => self.agent.as_mut(),
            Leg::Customer => self.customer.as_mut(),
        };
        let Some(leg) = leg else {
            self.respond(&inc, 481);
            return;
        };
        if leg.dialog.receive_request(&inc.request).is_err() {
            self.respond(&inc, 500);
            return;
        }
        match inc.request.method {
            Method::Options | Method::Info => self.respond(&inc, 200),
            Method::Invite | Method::Update => {
                // Refresh or change while the other leg rings: answer with what we have.
                if !inc.request.body.is_empty() {
                    let body = inc.request.body.clone();
                    self.set_peer(from, &body);
                }
                self.answer_refresh(&inc, from);
            }
            _ => self.respond(&inc, 405),
        }
    }

    /// Answers a re-INVITE/UPDATE by repeating our last SDP (a session refresh).
    fn answer_refresh(&mut self, inc: &IncomingRequest, from: Leg) {
        let Some(leg) = (match from {
            Leg::Agent => self.agent.as_mut(),
            Leg::Customer => self.customer.as_mut(),
        }) else {
            return;
        };
        if !inc.request.body.is_empty() {
            leg.remote_sdp = inc.request.body.clone();
            leg.local_sdp =
                sdp_glue::mirror_direction(&inc.request.body, &leg.local_sdp, &mut leg.origin);
        }
        note_refresh(leg);
        let mut r = Response::for_request(&inc.request, 200);
        r.headers.add(
            HeaderName::Contact,
            format!("<{}>", leg.dialog.local_contact()),
        );
        if let Some(se) = leg.session_expires {
            r.headers
                .add(HeaderName::SessionExpires, format!("{se};refresher=uac"));
            r.headers.add(HeaderName::Require, "timer");
        }
        if inc.request.method == Method::Invite || !inc.request.body.is_empty() {
            r.headers.add(HeaderName::ContentType, "application/sdp");
            r.body = leg.local_sdp.clone();
        }
        self.respond_with(inc, r);
    }

    async fn on_stray(&mut self, resp: Response, _flow: Flow) {
        // A retransmitted 2xx of an established leg: ACK it again.
        for leg in [self.agent.as_ref(), self.customer.as_ref()]
            .into_iter()
            .flatten()
        {
            if leg.dialog.id().call_id == resp.call_id_str() {
                let cseq = resp.cseq().map(|c| c.seq).unwrap_or(1);
                let _ = self
                    .inner
                    .endpoint
                    .send_ack(leg.dialog.ack_for_2xx(cseq, None), Some(leg.dest))
                    .await;
                return;
            }
        }
    }

    /// The customer took fewer codecs than the agent: re-INVITE the agent with an offer of
    /// the customer's codecs, so that it sends nothing the customer cannot take. A BYE or an
    /// end of the call meanwhile ends the call (returned).
    async fn realign_agent(&mut self) -> Option<Outcome> {
        let (Some(a), Some(c)) = (self.agent.as_mut(), self.customer.as_ref()) else {
            return None;
        };
        let offer = sdp_glue::realign_agent(
            &a.local_sdp,
            &a.remote_sdp,
            &c.local_sdp,
            &c.remote_sdp,
            &mut a.origin,
        )?;
        let mut req = a
            .dialog
            .new_request(Method::Invite, Some(("application/sdp", offer.clone())));
        if let Some(se) = a.session_expires {
            req.headers
                .add(HeaderName::SessionExpires, format!("{se};refresher=uac"));
            req.headers.add(HeaderName::Supported, "timer");
        }
        a.local_sdp = offer;
        let dest = a.dest;
        let dialog = a.dialog.clone();
        let cid = req.call_id_str();
        self.sip_event(
            Leg::Agent,
            "sent",
            "INVITE (codecs narrowed to the customer's)".into(),
            &cid,
        );
        match self
            .transact_watching(req, dest, Duration::from_secs(32), Some(dialog))
            .await
        {
            Watch::Answered(Some(r)) => {
                self.sip_event(
                    Leg::Agent,
                    "received",
                    format!("{} {}", r.status, String::from_utf8_lossy(&r.reason)),
                    &cid,
                );
                if r.is_success() {
                    if let Some(a) = self.agent.as_mut() {
                        let _ = a.dialog.receive_response(&r);
                        let cseq = r.cseq().map(|c| c.seq).unwrap_or(1);
                        let ack = a.dialog.ack_for_2xx(cseq, None);
                        if !r.body.is_empty() {
                            a.remote_sdp = r.body.clone();
                        }
                        let _ = self.inner.endpoint.send_ack(ack, Some(dest)).await;
                    }
                    self.set_peer(Leg::Agent, &r.body);
                }
                None
            }
            Watch::Answered(None) => None,
            Watch::Bye(bye, leg) => Some(self.on_bye(*bye, leg).await),
            Watch::End(cmd) => Some(self.end_connected(cmd).await),
        }
    }

    /// Sends BYE on a leg and waits (bounded) for its answer.
    async fn bye(&mut self, which: Leg) {
        let leg = match which {
            Leg::Agent => self.agent.take(),
            Leg::Customer => self.customer.take(),
        };
        let Some(mut leg) = leg else { return };
        let bye = leg.dialog.new_request(Method::Bye, None);
        let sip_call_id = leg.dialog.id().call_id.clone();
        self.sip_event(which, "sent", "BYE".into(), &sip_call_id);
        if let Some(final_resp) = self.transact(bye, leg.dest, Duration::from_secs(32)).await {
            self.sip_event(
                which,
                "received",
                format!(
                    "{} {} (BYE)",
                    final_resp.status,
                    String::from_utf8_lossy(&final_resp.reason)
                ),
                &sip_call_id,
            );
        }
        leg.dialog.terminate();
    }

    /// Sends a request in its own client transaction and returns its final response.
    async fn transact(&self, req: Request, dest: Destination, limit: Duration) -> Option<Response> {
        let mut ct: ClientTransaction = self
            .inner
            .endpoint
            .send_request(req, Some(dest))
            .await
            .ok()?;
        tokio::time::timeout(limit, async {
            while let Some(ev) = ct.next().await {
                match ev {
                    ClientEvent::Response(r) if r.status >= 200 => return Some(r),
                    ClientEvent::Response(_) => {}
                    _ => return None,
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Both legs up: relay in-dialog requests, refresh sessions, end on BYE / API / media.
    async fn connected(&mut self) -> Outcome {
        loop {
            let next_timer = [self.agent.as_ref(), self.customer.as_ref()]
                .into_iter()
                .flatten()
                .flat_map(|l| [l.refresh_at, l.expires_at])
                .flatten()
                .min();
            let timer = async {
                match next_timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let deferred = self.deferred.pop_front();
            tokio::select! {
                cmd = async {
                    match deferred {
                        Some(c) => Some(c),
                        None => self.rx.recv().await,
                    }
                } => {
                    let Some(cmd) = cmd else {
                        return outcome(CallStatus::Completed, None, None, "engine stopped");
                    };
                    match cmd {
                        c @ (CallCmd::Hangup | CallCmd::Shutdown | CallCmd::MediaTimeout) => {
                            return self.end_connected(c).await;
                        }
                        CallCmd::Stray(resp, flow) => self.on_stray(*resp, flow).await,
                        CallCmd::Request(inc, from) => {
                            if let Some(o) = self.in_dialog(*inc, from).await {
                                return o;
                            }
                        }
                    }
                }
                _ = timer => {
                    if let Some(o) = self.session_timers().await {
                        return o;
                    }
                }
            }
        }
    }

    /// A BYE on a connected call: 200, BYE to the other side, `completed` by that leg.
    async fn on_bye(&mut self, inc: IncomingRequest, from: Leg) -> Outcome {
        self.respond(&inc, 200);
        if let Some(l) = self.leg_mut(from) {
            l.dialog.terminate();
        }
        match from {
            Leg::Agent => self.agent = None,
            Leg::Customer => self.customer = None,
        }
        self.bye(Self::other(from)).await;
        outcome(
            CallStatus::Completed,
            Some(from),
            Some(200),
            &format!("{} hung up", from.as_str()),
        )
    }

    /// API hang-up, shutdown or media time-out of a connected call: BYE both legs.
    async fn end_connected(&mut self, cmd: CallCmd) -> Outcome {
        let reason = match cmd {
            CallCmd::Shutdown => "server shutting down",
            CallCmd::MediaTimeout => {
                self.note(None, "no RTP from either side: media time-out");
                "media time-out"
            }
            _ => "hung up via API",
        };
        self.bye(Leg::Agent).await;
        self.bye(Leg::Customer).await;
        outcome(CallStatus::Completed, None, None, reason)
    }

    /// Like [`Call::transact`], but keeps listening to the call's commands meanwhile: a BYE
    /// or an end of the call interrupts the wait; anything else waits its turn.
    ///
    /// `ack_with`: for a passed re-INVITE, the dialog whose late 2xx must still be ACKed when
    /// the wait is interrupted.
    async fn transact_watching(
        &mut self,
        req: Request,
        dest: Destination,
        limit: Duration,
        ack_with: Option<Dialog>,
    ) -> Watch {
        let Ok(mut ct) = self.inner.endpoint.send_request(req, Some(dest)).await else {
            return Watch::Answered(None);
        };
        let interrupted = |mut ct: ClientTransaction, endpoint: sip_core::endpoint::Endpoint| {
            // The call ends under a pending INVITE: its 2xx, when it comes, is still ACKed
            // (RFC 3261 §13.2.2.4) so that the peer stops retransmitting it.
            if let Some(d) = ack_with.clone() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(32), async {
                        while let Some(ev) = ct.next().await {
                            match ev {
                                ClientEvent::Response(r) if r.is_success() => {
                                    let cseq = r.cseq().map(|c| c.seq).unwrap_or(1);
                                    let ack = d.ack_for_2xx(cseq, None);
                                    let _ = endpoint.send_ack(ack, Some(dest)).await;
                                }
                                ClientEvent::Response(r) if r.status >= 200 => return,
                                ClientEvent::Response(_) => {}
                                _ => return,
                            }
                        }
                    })
                    .await;
                });
            }
        };
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = ct.next() => match ev {
                    Some(ClientEvent::Response(r)) if r.status >= 200 => return Watch::Answered(Some(r)),
                    Some(ClientEvent::Response(_)) => {}
                    _ => return Watch::Answered(None),
                },
                _ = &mut deadline => return Watch::Answered(None),
                cmd = self.rx.recv() => match cmd {
                    Some(CallCmd::Request(inc, leg)) if inc.request.method == Method::Bye => {
                        let ok = self
                            .leg_mut(leg)
                            .is_some_and(|l| l.dialog.receive_request(&inc.request).is_ok());
                        if ok {
                            let cid = inc.request.call_id_str();
                            self.sip_event(leg, "received", "BYE (in dialog)".into(), &cid);
                            interrupted(ct, self.inner.endpoint.clone());
                            return Watch::Bye(inc, leg);
                        }
                        self.respond(&inc, 481);
                    }
                    Some(c @ (CallCmd::Hangup | CallCmd::Shutdown | CallCmd::MediaTimeout)) => {
                        interrupted(ct, self.inner.endpoint.clone());
                        return Watch::End(c);
                    }
                    Some(other) => self.deferred.push_back(other),
                    None => return Watch::Answered(None),
                },
            }
        }
    }

    fn leg_mut(&mut self, which: Leg) -> Option<&mut LegState> {
        match which {
            Leg::Agent => self.agent.as_mut(),
            Leg::Customer => self.customer.as_mut(),
        }
    }

    fn other(which: Leg) -> Leg {
        match which {
            Leg::Agent => Leg::Customer,
            Leg::Customer => Leg::Agent,
        }
    }

    async fn in_dialog(&mut self, inc: IncomingRequest, from: Leg) -> Option<Outcome> {
        let summary = format!("{} (in dialog)", inc.request.method);
        let sip_call_id = inc.request.call_id_str();
        self.sip_event(from, "received", summary, &sip_call_id);
        let ok = match self.leg_mut(from) {
            Some(l) => l.dialog.receive_request(&inc.request).is_ok(),
            None => {
                self.respond(&inc, 481);
                return None;
            }
        };
        if !ok {
            self.respond(&inc, 500);
            return None;
        }
        match inc.request.method.clone() {
            Method::Bye => Some(self.on_bye(inc, from).await),
            Method::Invite | Method::Update => self.pass_offer(inc, from).await,
            Method::Info => {
                self.pass_info(inc, from).await;
                None
            }
            Method::Options => {
                self.respond(&inc, 200);
                None
            }
            Method::Ack => None,
            _ => {
                let mut r = Response::for_request(&inc.request, 405);
                r.headers.add(HeaderName::Allow, crate::server::ALLOW);
                self.respond_with(&inc, r);
                None
            }
        }
    }

    /// re-INVITE / UPDATE from one side: without SDP it is a refresh answered here; with SDP
    /// the offer goes to the other side rewritten to the relay, and its answer comes back
    /// rewritten the same way (hold, codec change).
    async fn pass_offer(&mut self, inc: IncomingRequest, from: Leg) -> Option<Outcome> {
        if inc.request.body.is_empty()
            || sdp_glue::same_media(
                &inc.request.body,
                self.leg_mut(from)
                    .map(|l| l.remote_sdp.clone())
                    .unwrap_or_default()
                    .as_ref(),
            )
        {
            if !inc.request.body.is_empty() {
                let b = inc.request.body.clone();
                self.set_peer(from, &b);
            }
            self.answer_refresh(&inc, from);
            return None;
        }
        let to = Self::other(from);
        let method = inc.request.method.clone();
        let Some(relay_to) = self.relay_addr(to) else {
            self.respond(&inc, 500);
            return None;
        };
        let Some(relay_from) = self.relay_addr(from) else {
            self.respond(&inc, 500);
            return None;
        };
        // Offer to the other side.
        let (req, dest, other_dialog) = {
            let Some(other) = self.leg_mut(to) else {
                self.respond(&inc, 481);
                return None;
            };
            let offer = sdp_glue::rewrite(&inc.request.body, relay_to, &mut other.origin);
            let mut req = other
                .dialog
                .new_request(method.clone(), Some(("application/sdp", offer.clone())));
            if let Some(se) = other.session_expires {
                req.headers
                    .add(HeaderName::SessionExpires, format!("{se};refresher=uac"));
                req.headers.add(HeaderName::Supported, "timer");
            }
            other.local_sdp = offer;
            let d = (method == Method::Invite).then(|| other.dialog.clone());
            (req, other.dest, d)
        };
        let other_call_id = req.call_id_str();
        self.sip_event(
            to,
            "sent",
            format!("{method} (passed through)"),
            &other_call_id,
        );
        let resp = match self
            .transact_watching(req, dest, Duration::from_secs(32), other_dialog)
            .await
        {
            Watch::Answered(Some(r)) => r,
            Watch::Answered(None) => {
                self.respond(&inc, 408);
                return None;
            }
            Watch::Bye(bye, leg) => {
                // The session ends under the pending offer (RFC 3261 §15.1.2): the offer is
                // answered 487, the BYE 200, the other side gets its BYE.
                self.respond(&inc, 487);
                return Some(self.on_bye(*bye, leg).await);
            }
            Watch::End(cmd) => {
                self.respond(&inc, 487);
                return Some(self.end_connected(cmd).await);
            }
        };
        self.sip_event(
            to,
            "received",
            format!("{} {}", resp.status, String::from_utf8_lossy(&resp.reason)),
            &other_call_id,
        );
        if !resp.is_success() {
            // Pass the refusal back (491 glare, 488 not acceptable...).
            let mut r = Response::for_request(&inc.request, resp.status);
            r.reason = resp.reason.clone();
            self.respond_with(&inc, r);
            return None;
        }
        if let Some(other) = self.leg_mut(to) {
            let _ = other.dialog.receive_response(&resp);
            if method == Method::Invite {
                let cseq = resp.cseq().map(|c| c.seq).unwrap_or(1);
                let ack = other.dialog.ack_for_2xx(cseq, None);
                let dest = other.dest;
                let _ = self.inner.endpoint.send_ack(ack, Some(dest)).await;
            }
            if let Some(o) = self.leg_mut(to) {
                o.remote_sdp = resp.body.clone();
                note_refresh(o);
            }
        }
        self.set_peer(to, &resp.body);
        self.set_peer(from, &inc.request.body);
        // Answer the side that asked, with the other side's answer rewritten to our relay.
        let l = self.leg_mut(from)?;
        let answer = sdp_glue::rewrite(&resp.body, relay_from, &mut l.origin);
        l.local_sdp = answer.clone();
        l.remote_sdp = inc.request.body.clone();
        note_refresh(l);
        let mut r = Response::for_request(&inc.request, 200);
        r.headers.add(
            HeaderName::Contact,
            format!("<{}>", l.dialog.local_contact()),
        );
        r.headers.add(HeaderName::ContentType, "application/sdp");
        r.body = answer;
        self.respond_with(&inc, r);
        None
    }

    async fn pass_info(&mut self, inc: IncomingRequest, from: Leg) {
        let to = Self::other(from);
        let Some(other) = self.leg_mut(to) else {
            self.respond(&inc, 481);
            return;
        };
        let ct = inc
            .request
            .header_str(&HeaderName::ContentType)
            .unwrap_or_else(|| "application/octet-stream".into());
        let body = (!inc.request.body.is_empty()).then(|| (ct.as_str(), inc.request.body.clone()));
        let req = other.dialog.new_request(Method::Info, body);
        let dest = other.dest;
        let status = self
            .transact(req, dest, Duration::from_secs(32))
            .await
            .map(|r| r.status)
            .unwrap_or(408);
        self.respond(&inc, status);
    }

    /// RFC 4028: refresh where we are the refresher; end the call where the peer failed to.
    async fn session_timers(&mut self) -> Option<Outcome> {
        let now = Instant::now();
        for which in [Leg::Agent, Leg::Customer] {
            let Some(l) = self.leg_mut(which) else {
                continue;
            };
            if l.expires_at.is_some_and(|t| t <= now) {
                self.note(Some(which), "session expired without a refresh (RFC 4028)");
                self.bye(Leg::Agent).await;
                self.bye(Leg::Customer).await;
                return Some(outcome(
                    CallStatus::Completed,
                    Some(which),
                    Some(408),
                    "session timer expired",
                ));
            }
            if l.refresh_at.is_some_and(|t| t <= now) {
                let sdp = sdp_glue::refresh(&l.local_sdp, &mut l.origin);
                l.local_sdp = sdp.clone();
                let mut req = l
                    .dialog
                    .new_request(Method::Invite, Some(("application/sdp", sdp)));
                if let Some(se) = l.session_expires {
                    req.headers
                        .add(HeaderName::SessionExpires, format!("{se};refresher=uac"));
                    req.headers.add(HeaderName::Supported, "timer");
                }
                let dest = l.dest;
                l.refresh_at = None;
                let cid = req.call_id_str();
                self.sip_event(which, "sent", "INVITE (session refresh)".into(), &cid);
                let resp = self.transact(req, dest, Duration::from_secs(32)).await;
                let Some(l) = self.leg_mut(which) else {
                    continue;
                };
                match resp {
                    Some(r) if r.is_success() => {
                        let _ = l.dialog.receive_response(&r);
                        let cseq = r.cseq().map(|c| c.seq).unwrap_or(1);
                        let ack = l.dialog.ack_for_2xx(cseq, None);
                        note_refresh(l);
                        let dest = l.dest;
                        let _ = self.inner.endpoint.send_ack(ack, Some(dest)).await;
                    }
                    Some(r) if r.status == 481 || r.status == 408 => {
                        self.note(Some(which), format!("session refresh failed: {}", r.status));
                        self.bye(Self::other(which)).await;
                        return Some(outcome(
                            CallStatus::Completed,
                            Some(which),
                            Some(r.status),
                            "session refresh failed",
                        ));
                    }
                    _ => note_refresh(l),
                }
            }
        }
        None
    }
}

/// After a successful refresh (either way) the session timer starts again.
fn note_refresh(l: &mut LegState) {
    if let Some(se) = l.session_expires {
        let d = Duration::from_secs(u64::from(se));
        let now = Instant::now();
        if l.expires_at.is_some() {
            l.expires_at = Some(now + d);
        } else {
            l.refresh_at = Some(now + d / 2);
        }
    }
}

async fn forward(
    idx: usize,
    mut ct: ClientTransaction,
    tx: mpsc::UnboundedSender<(usize, ClientEvent)>,
) {
    while let Some(ev) = ct.next().await {
        if tx.send((idx, ev)).is_err() {
            return;
        }
    }
}

#[allow(dead_code)]
fn _assert_send(c: Call) -> impl std::future::Future<Output = ()> + Send {
    c.run()
}
