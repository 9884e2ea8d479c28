//! A leg that called us: the server transaction of an INVITE we received (RFC 3261 §13.3).
//!
//! ```text
//!   INVITE ──► (100 Trying from the transaction layer)
//!              the other leg rings ── its 180/183 ──► 180 / 183 (+ SDP of the relay when
//!                                                     it brings early media)
//!              the other leg answers ──────────────► 200 + SDP of the relay; wait for the
//!                                                     ACK (64*T1, then BYE)
//!              the other leg fails ────────────────► 486 / 480 / its code
//!   CANCEL ──► (200 from the transaction layer) ───► 487, the forks CANCELled
//!   BYE either way once connected, as any leg.
//! ```
//!
//! Nothing here is particular to inbound calls from a trunk: the caller may be either
//! side of the call ([`IncomingLeg::leg`]), and the other side is rung by the ordinary
//! fork. The call's To tag toward the caller is chosen once, at the start, and carried by
//! every answer (provisional or final), so that the early and the confirmed dialog match.

use super::*;
use crate::calls::IncomingLeg;

/// The caller's leg while its INVITE waits for (or has just had) its final answer.
pub(crate) struct Incoming {
    pub(super) leg: Leg,
    inc: IncomingRequest,
    /// The UAS dialog (Early until our 2xx); moved into the leg's state when answered.
    dialog: Option<Dialog>,
    local_tag: String,
    origin: Origin,
    /// Our SDP sent in a 183 (early media): the 200 repeats it.
    early_sdp: Option<Bytes>,
    /// A final response went out.
    pub(super) finished: bool,
    ringing_sent: bool,
    /// Our 2xx is out and its ACK has not come: we give up at this time.
    pub(super) ack_until: Option<Instant>,
    /// The caller is a browser (its offer is WebRTC's): our answers are WebRTC too, and the
    /// relay ends ICE and DTLS on its leg.
    webrtc: Option<WebRtcOffer>,
}

/// The SIP code the caller hears when the call fails before the answer.
fn rejection_code(o: &Outcome) -> u16 {
    match o.status {
        CallStatus::Canceled => 487,
        CallStatus::Busy => 486,
        CallStatus::NoAnswer => 480,
        _ => match o.sip_code {
            Some(c) if (400..700).contains(&c) && !matches!(c, 401 | 407 | 487) => c,
            _ => 480,
        },
    }
}

fn destination(flow: &sip_core::transport::Flow) -> Destination {
    Destination {
        transport: flow.transport,
        addr: flow.remote,
        conn: flow.conn,
    }
}

impl CallMachine {
    /// The call starts from `inc`: note it, route its Call-ID (CANCEL), take its offer for
    /// the relay, and look up the other leg.
    pub(super) fn start_incoming(&mut self, inc: IncomingLeg, now: Instant) {
        let leg = inc.leg;
        let req = *inc.request;
        let sip_call_id = req.request.call_id_str();
        self.sip_event(
            leg,
            "received",
            format!("INVITE {}", req.request.uri()),
            &sip_call_id,
        );
        self.out
            .push_back(Output::RouteCallId(leg, sip_call_id.clone()));
        let local_tag = new_tag();
        let dialog = Dialog::uas(&req.request, &local_tag, inc.contact).ok();
        let missing_contact = dialog.is_none();
        self.incoming = Some(Box::new(Incoming {
            leg,
            dialog,
            local_tag,
            origin: Origin::new(),
            early_sdp: None,
            finished: false,
            ringing_sent: false,
            ack_until: None,
            webrtc: None,
            inc: req,
        }));
        if missing_contact {
            let Some(i) = self.incoming.as_mut() else {
                return;
            };
            i.finished = true;
            let r = Response::for_request(&i.inc.request, 400);
            let key = i.inc.key.clone();
            self.respond_with(key, r);
            self.note(Some(leg), "INVITE without a usable Contact: refused 400");
            self.hang_up_all(
                outcome(
                    CallStatus::Failed,
                    Some(leg),
                    Some(400),
                    "INVITE without Contact",
                ),
                now,
            );
            return;
        }
        let Some(i) = self.incoming.as_ref() else {
            return;
        };
        let src = i.inc.flow.remote.ip();
        let body = i.inc.request.body.clone();
        self.out
            .push_back(Output::Media(MediaOp::AllowSources(leg, vec![src])));
        if let (true, Some(fp)) = (
            sdp_glue::is_webrtc(&body),
            self.cfg.dtls_fingerprint.clone(),
        ) {
            // A browser calls: the relay answers its ICE checks and is its DTLS server; the
            // certificate it presents must match the fingerprint of this offer.
            let w = WebRtcOffer {
                ice: media::webrtc::IceCredentials::random(),
                fingerprint: fp,
            };
            self.out
                .push_back(Output::Media(MediaOp::WebRtc(leg, Some(w.ice.clone()))));
            self.out
                .push_back(Output::Media(MediaOp::WebRtcAnswer(leg, body.clone())));
            if let Some(i) = self.incoming.as_mut() {
                i.webrtc = Some(w);
            }
        }
        if !body.is_empty() {
            self.out
                .push_back(Output::Media(MediaOp::SetPeer(leg, body)));
        }
        let next = other(leg);
        self.phase = Phase::Lookup(next);
        self.out.push_back(Output::Lookup(next));
    }

    /// Which side called us, while the call has an incoming leg.
    pub(super) fn caller_leg(&self) -> Option<Leg> {
        self.incoming.as_ref().map(|i| i.leg)
    }

    /// The offer for a fork of `leg` when the caller's INVITE carries one: the caller's
    /// codecs, pointed at the relay's port of `leg`.
    pub(super) fn incoming_offer(
        &self,
        leg: Leg,
        relay: SocketAddr,
        origin: &mut Origin,
    ) -> Option<Bytes> {
        let i = self.incoming.as_ref().filter(|i| i.leg == other(leg))?;
        let body = &i.inc.request.body;
        (!body.is_empty()).then(|| sdp_glue::rewrite(body, relay, origin, None))
    }

    /// A response to the caller's INVITE, with our To tag.
    fn incoming_response(&mut self, status: u16) -> Option<(ServerKey, Response)> {
        let i = self.incoming.as_mut()?;
        let mut r = Response::for_request(&i.inc.request, status);
        r.set_to_tag(&i.local_tag);
        Some((i.inc.key.clone(), r))
    }

    /// A 180/183 of the ringing leg, relayed to the caller (with the relay's SDP when the
    /// ringing side sends early media).
    pub(super) fn relay_provisional(&mut self, from: Leg, resp: &Response) {
        let relay = self.relay;
        let Some(i) = self
            .incoming
            .as_mut()
            .filter(|i| !i.finished && i.leg == other(from))
        else {
            return;
        };
        let leg = i.leg;
        let early = !resp.body.is_empty() && i.early_sdp.is_none() && resp.status == 183;
        if !early && (i.ringing_sent || !matches!(resp.status, 180 | 183)) {
            return;
        }
        i.ringing_sent = true;
        let sdp = early.then(|| {
            let s = sdp_glue::rewrite(&resp.body, relay[ix(leg)], &mut i.origin, None);
            match &i.webrtc {
                Some(w) => sdp_glue::webrtc_answer(&s, w, &i.inc.request.body),
                None => s,
            }
        });
        if let Some(s) = &sdp {
            i.early_sdp = Some(s.clone());
        }
        let contact = i.dialog.as_ref().map(|d| d.local_contact().clone());
        let status = if sdp.is_some() { 183 } else { 180 };
        let Some((key, mut r)) = self.incoming_response(status) else {
            return;
        };
        if let Some(c) = contact {
            r.headers.add(HeaderName::Contact, format!("<{c}>"));
        }
        if let Some(s) = sdp {
            r.headers.add(HeaderName::ContentType, "application/sdp");
            r.body = s;
        }
        let cid = r.call_id_str();
        self.sip_event(leg, "sent", status_line(&r), &cid);
        self.out.push_back(Output::Respond { key, response: r });
    }

    /// The ringing leg answered: the caller gets our 200 (the relay's SDP with the codecs
    /// the answering side took), and the call is connected once both legs are up.
    pub(super) fn answer_incoming(&mut self, now: Instant) {
        let relay = self.relay;
        let Some(i) = self.incoming.as_mut().filter(|i| !i.finished) else {
            return;
        };
        let leg = i.leg;
        let answering = other(leg);
        let Some(their) = self.legs[ix(answering)].as_ref() else {
            return;
        };
        let their_answer = their.remote_sdp.clone();
        let Some(i) = self.incoming.as_mut() else {
            return;
        };
        i.finished = true;
        let sdp = match i.early_sdp.take() {
            Some(s) => s,
            None => {
                let s = sdp_glue::rewrite(&their_answer, relay[ix(leg)], &mut i.origin, None);
                match &i.webrtc {
                    Some(w) => sdp_glue::webrtc_answer(&s, w, &i.inc.request.body),
                    None => s,
                }
            }
        };
        let Some(mut dialog) = i.dialog.take() else {
            return;
        };
        let se = i.inc.request.session_expires().ok().flatten();
        let timer_ok = i
            .inc
            .request
            .header_str(&HeaderName::Supported)
            .is_some_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("timer")))
            || i.inc
                .request
                .header_str(&HeaderName::Require)
                .is_some_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("timer")));
        let offer = i.inc.request.body.clone();
        let dest = destination(&i.inc.flow);
        let origin = i.origin.clone();
        let Some((key, mut r)) = self.incoming_response(200) else {
            return;
        };
        r.headers
            .add(HeaderName::Contact, format!("<{}>", dialog.local_contact()));
        r.headers.add(HeaderName::Allow, ALLOW);
        r.headers.add(HeaderName::Supported, "timer");
        let mut expires_at = None;
        let mut session_expires = None;
        if let (Some(se), true) = (se.filter(|s| s.delta > 0), timer_ok) {
            r.headers.add(
                HeaderName::SessionExpires,
                format!("{};refresher=uac", se.delta),
            );
            r.headers.add(HeaderName::Require, "timer");
            expires_at = Some(now + Duration::from_secs(u64::from(se.delta)));
            session_expires = Some(se.delta);
        }
        r.headers.add(HeaderName::ContentType, "application/sdp");
        r.body = sdp.clone();
        let _ = dialog.confirm(&r);
        let cid = r.call_id_str();
        self.sip_event(leg, "sent", status_line(&r), &cid);
        self.out
            .push_back(Output::RouteDialog(leg, dialog.id().clone()));
        self.out.push_back(Output::Respond { key, response: r });
        self.legs[ix(leg)] = Some(LegState {
            dialog,
            dest,
            local_sdp: sdp,
            remote_sdp: own_sdp(&offer),
            origin,
            refresh_at: None,
            expires_at,
            session_expires,
            up: true,
            outgoing: None,
            incoming: false,
        });
        if let Some(i) = self.incoming.as_mut() {
            i.ack_until = Some(now + self.cfg.timers.timeout());
        }
        self.out.push_back(Output::Media(MediaOp::Start));
        self.start_recording();
        self.answered_at = Some(now);
        self.emit(CallEventKind::InProgress { sip_code: 200 });
        self.phase = Phase::Connected;
    }

    /// The call ends before the caller had its final answer: it hears why.
    pub(super) fn reject_incoming(&mut self, o: &Outcome) {
        let Some(i) = self.incoming.as_mut().filter(|i| !i.finished) else {
            return;
        };
        i.finished = true;
        let leg = i.leg;
        let code = rejection_code(o);
        let Some((key, r)) = self.incoming_response(code) else {
            return;
        };
        let cid = r.call_id_str();
        self.sip_event(leg, "sent", status_line(&r), &cid);
        self.out.push_back(Output::Respond { key, response: r });
    }

    /// The caller CANCELled: 487, and the other leg's forks are CANCELled.
    pub(super) fn on_cancelled(&mut self, now: Instant) {
        let Some(i) = self.incoming.as_ref().filter(|i| !i.finished) else {
            return;
        };
        let leg = i.leg;
        let cid = i.inc.request.call_id_str();
        self.sip_event(leg, "received", "CANCEL".into(), &cid);
        if let Phase::Ringing(l) = self.phase {
            self.cancel_live(l, None);
        }
        self.fork = None;
        let who = leg.as_str();
        self.hang_up_all(
            outcome(
                CallStatus::Canceled,
                Some(leg),
                Some(487),
                &format!("the {who} hung up before the answer (CANCEL)"),
            ),
            now,
        );
    }

    /// The ACK of our 2xx to the caller (its SDP, for an INVITE that had none, is the
    /// caller's answer).
    pub(super) fn on_ack(&mut self, leg: Leg, body: Bytes) {
        let Some(i) = self.incoming.as_mut().filter(|i| i.leg == leg) else {
            return;
        };
        if i.ack_until.take().is_none() {
            return;
        }
        let late_offer = i.inc.request.body.is_empty();
        let cid = i.inc.request.call_id_str();
        self.sip_event(leg, "received", "ACK".into(), &cid);
        if late_offer && !body.is_empty() {
            if let Some(l) = self.legs[ix(leg)].as_mut() {
                l.remote_sdp = own_sdp(&body);
            }
            self.out
                .push_back(Output::Media(MediaOp::SetPeer(leg, body)));
        }
    }

    /// No ACK for our 2xx within 64*T1 (RFC 3261 §13.3.1.4): the dialog is given up.
    pub(super) fn incoming_timers(&mut self, now: Instant) {
        let Some(i) = self.incoming.as_mut() else {
            return;
        };
        if i.ack_until.is_none_or(|t| t > now) {
            return;
        }
        i.ack_until = None;
        let leg = i.leg;
        self.note(Some(leg), "no ACK for our 200 within 64*T1");
        self.hang_up_all(
            outcome(
                CallStatus::Failed,
                Some(leg),
                Some(408),
                "no ACK for the 200",
            ),
            now,
        );
    }
}
