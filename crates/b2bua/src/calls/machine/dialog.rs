//! Requests within the legs' dialogs: BYE, offers passed from one leg to the other (with
//! glare handled), INFO, and the session timers of RFC 4028.

use super::*;

impl CallMachine {
    // -----------------------------------------------------------------------------------
    // In-dialog requests
    // -----------------------------------------------------------------------------------

    pub(super) fn respond(&mut self, inc: &IncomingRequest, status: u16) {
        let r = Response::for_request(&inc.request, status);
        self.respond_with(inc.key.clone(), r);
    }

    pub(super) fn respond_with(&mut self, key: ServerKey, mut r: Response) {
        r.set_to_tag(&new_tag());
        self.out.push_back(Output::Respond { key, response: r });
    }

    pub(super) fn on_request(&mut self, inc: IncomingRequest, from: Leg, now: Instant) {
        let method = inc.request.method.clone();
        let sip_call_id = inc.request.call_id_str();
        self.sip_event(
            from,
            "received",
            format!("{method} (in dialog)"),
            &sip_call_id,
        );
        // A request in the dialog of a party that was transferred away (its leg is the
        // transfer target's now): its BYE is answered, anything else 481.
        if self.legs[ix(from)]
            .as_ref()
            .is_some_and(|l| l.dialog.id().call_id != sip_call_id)
        {
            let status = if method == Method::Bye { 200 } else { 481 };
            self.respond(&inc, status);
            return;
        }
        let ok = match self.legs[ix(from)].as_mut() {
            Some(l) if l.up || method == Method::Bye => l.dialog.receive_request(&inc.request),
            _ => {
                self.respond(&inc, 481);
                return;
            }
        };
        if ok.is_err() {
            self.respond(&inc, 500);
            return;
        }
        match method {
            Method::Bye => self.on_bye(inc, from, now),
            Method::Invite | Method::Update => self.on_offer(inc, from),
            Method::Info if self.phase == Phase::Confirm => self.confirm_info(inc, from, now),
            Method::Info => {
                if self.phase == Phase::Connected {
                    self.pass_info(inc, from);
                } else {
                    self.respond(&inc, 200);
                }
            }
            Method::Options => self.respond(&inc, 200),
            Method::Refer => self.on_refer(inc, from),
            Method::Notify => self.respond(&inc, 200),
            Method::Ack => {}
            _ => {
                let mut r = Response::for_request(&inc.request, 405);
                r.headers.add(HeaderName::Allow, ALLOW);
                self.respond_with(inc.key.clone(), r);
            }
        }
    }

    pub(super) fn on_bye(&mut self, inc: IncomingRequest, from: Leg, now: Instant) {
        if self.phase == Phase::Connected {
            // The pending requests of the dialog are answered before the BYE (§15.1.2).
            self.abandon_passed();
        }
        self.respond(&inc, 200);
        let Some(l) = self.legs[ix(from)].as_mut() else {
            return;
        };
        let was_up = l.up;
        l.up = false;
        l.dialog.terminate();
        if !was_up {
            return;
        }
        match self.phase {
            Phase::Connected => self.hang_up_all(
                outcome(
                    CallStatus::Completed,
                    Some(from),
                    Some(200),
                    &format!("{} hung up", from.as_str()),
                ),
                now,
            ),
            Phase::Lookup(Leg::Customer) | Phase::Ringing(Leg::Customer) | Phase::Confirm => {
                // The agent hangs up while the customer rings.
                self.cancel_live(Leg::Customer, None);
                self.fork = None;
                self.hang_up_all(
                    outcome(
                        CallStatus::Canceled,
                        Some(Leg::Agent),
                        None,
                        "agent hung up before the customer answered",
                    ),
                    now,
                );
            }
            _ => {}
        }
    }

    /// A re-INVITE or UPDATE from a leg.
    pub(super) fn on_offer(&mut self, inc: IncomingRequest, from: Leg) {
        let Some(l) = self.legs[ix(from)].as_ref() else {
            self.respond(&inc, 481);
            return;
        };
        // RFC 3261 §14.2: glare with our own INVITE on this leg, or a second offer.
        if l.outgoing.is_some() {
            self.respond(&inc, 491);
            return;
        }
        if l.incoming {
            let mut r = Response::for_request(&inc.request, 500);
            r.headers.add(
                HeaderName::RetryAfter,
                (rand::random::<u8>() % 10).to_string(),
            );
            self.respond_with(inc.key.clone(), r);
            return;
        }
        let body = inc.request.body.clone();
        let refresh_only = body.is_empty() || sdp_glue::same_media(&body, &l.remote_sdp);
        if refresh_only || self.phase != Phase::Connected {
            // A refresh, or a change while the other leg is not up yet: answered here with
            // what we have.
            if !body.is_empty() {
                if let Some(op) = sdes_change(from, &l.local_sdp, &l.remote_sdp, &body) {
                    self.out.push_back(Output::Media(op));
                }
                self.out
                    .push_back(Output::Media(MediaOp::SetPeer(from, body)));
            }
            self.answer_refresh(&inc, from);
            return;
        }
        let to = other(from);
        let busy = self.legs[ix(to)]
            .as_ref()
            .is_none_or(|o| !o.up || o.outgoing.is_some() || o.incoming);
        if busy {
            // The other side has an offer of its own in flight: try again later.
            self.respond(&inc, 491);
            return;
        }
        self.pass_offer(inc, from);
    }

    /// Answers a re-INVITE/UPDATE by repeating our last SDP (a session refresh).
    pub(super) fn answer_refresh(&mut self, inc: &IncomingRequest, from: Leg) {
        let Some(l) = self.legs[ix(from)].as_mut() else {
            return;
        };
        if !inc.request.body.is_empty() {
            l.remote_sdp = own_sdp(&inc.request.body);
            l.local_sdp =
                sdp_glue::mirror_direction(&inc.request.body, &l.local_sdp, &mut l.origin);
        }
        note_refresh(l, self.now);
        let mut r = Response::for_request(&inc.request, 200);
        r.headers.add(
            HeaderName::Contact,
            format!("<{}>", l.dialog.local_contact()),
        );
        if let Some(se) = l.session_expires {
            r.headers
                .add(HeaderName::SessionExpires, format!("{se};refresher=uac"));
            r.headers.add(HeaderName::Require, "timer");
        }
        if inc.request.method == Method::Invite || !inc.request.body.is_empty() {
            r.headers.add(HeaderName::ContentType, "application/sdp");
            r.body = l.local_sdp.clone();
        }
        self.respond_with(inc.key.clone(), r);
    }

    /// An offer with new media: to the other side rewritten to the relay; its answer comes
    /// back rewritten the same way (hold, codec change).
    pub(super) fn pass_offer(&mut self, inc: IncomingRequest, from: Leg) {
        let to = other(from);
        let relay_to = self.relay[ix(to)];
        let method = inc.request.method.clone();
        let Some(o) = self.legs[ix(to)].as_mut() else {
            self.respond(&inc, 481);
            return;
        };
        let sdes = sdp_glue::sdes_key(&o.local_sdp);
        let offer = sdp_glue::keep_webrtc(
            sdp_glue::rewrite(&inc.request.body, relay_to, &mut o.origin, sdes.as_ref()),
            &o.local_sdp,
            true,
        );
        let req = o.offer(method.clone(), offer);
        let dest = o.dest;
        let cid = req.call_id_str();
        if let Some(f) = self.legs[ix(from)].as_mut() {
            f.incoming = true;
        }
        self.sip_event(to, "sent", format!("{method} (passed through)"), &cid);
        self.send_offer(
            to,
            method,
            req,
            dest,
            Purpose::Pass {
                from,
                inc: Box::new(inc),
            },
        );
    }

    pub(super) fn send_offer(
        &mut self,
        leg: Leg,
        method: Method,
        req: Request,
        dest: Destination,
        p: Purpose,
    ) {
        let until = self.now + self.cfg.timers.timeout();
        let tx = self.new_tx(Role::Offer {
            leg,
            method,
            purpose: p,
            until,
            answered: false,
        });
        if let Some(l) = self.legs[ix(leg)].as_mut() {
            l.outgoing = Some(tx);
        }
        self.out.push_back(Output::Send {
            tx,
            request: req,
            dest,
        });
    }

    /// A 2xx to one of our in-dialog offers (or a retransmission of it).
    pub(super) fn offer_answered(&mut self, tx: TxId, resp: Response, now: Instant) {
        let Some(Role::Offer {
            leg,
            method,
            answered,
            ..
        }) = self.roles.get_mut(&tx)
        else {
            return;
        };
        let (leg, method, first) = (*leg, method.clone(), !*answered);
        *answered = true;
        let Some(l) = self.legs[ix(leg)].as_mut() else {
            return;
        };
        if method == Method::Invite {
            let ack = l.dialog.ack_for_2xx(cseq_of(&resp), None);
            let dest = l.dest;
            self.out.push_back(Output::Ack { request: ack, dest });
        }
        if !first {
            return;
        }
        let _ = l.dialog.receive_response(&resp);
        l.outgoing = None;
        let cid = resp.call_id_str();
        self.sip_event(leg, "received", status_line(&resp), &cid);
        if self.phase != Phase::Connected {
            return;
        }
        let Some(l) = self.legs[ix(leg)].as_mut() else {
            return;
        };
        if !resp.body.is_empty() {
            if let Some(op) = sdes_change(leg, &l.local_sdp, &l.remote_sdp, &resp.body) {
                self.out.push_back(Output::Media(op));
            }
            l.remote_sdp = own_sdp(&resp.body);
            self.out
                .push_back(Output::Media(MediaOp::SetPeer(leg, resp.body.clone())));
        }
        note_refresh(l, now);
        let purpose = match self.roles.get_mut(&tx) {
            Some(Role::Offer { purpose, .. }) => std::mem::replace(purpose, Purpose::Refresh),
            _ => return,
        };
        if let Purpose::Hold { hold } = purpose {
            self.hold_answered(hold);
            return;
        }
        if let Purpose::Pass { from, inc } = purpose {
            // Answer the side that asked, with the other side's answer rewritten to our relay.
            let relay_from = self.relay[ix(from)];
            let Some(f) = self.legs[ix(from)].as_mut() else {
                return;
            };
            f.incoming = false;
            let sdes = sdp_glue::sdes_key(&f.local_sdp);
            let answer = sdp_glue::keep_webrtc(
                sdp_glue::rewrite(&resp.body, relay_from, &mut f.origin, sdes.as_ref()),
                &f.local_sdp,
                false,
            );
            let rekey = sdes_change(from, &f.local_sdp, &f.remote_sdp, &inc.request.body);
            f.local_sdp = answer.clone();
            f.remote_sdp = own_sdp(&inc.request.body);
            if let Some(op) = rekey {
                self.out.push_back(Output::Media(op));
            }
            note_refresh(f, now);
            let mut r = Response::for_request(&inc.request, 200);
            r.headers.add(
                HeaderName::Contact,
                format!("<{}>", f.dialog.local_contact()),
            );
            r.headers.add(HeaderName::ContentType, "application/sdp");
            r.body = answer;
            self.out.push_back(Output::Media(MediaOp::SetPeer(
                from,
                inc.request.body.clone(),
            )));
            self.respond_with(inc.key.clone(), r);
        }
    }

    /// One of our in-dialog offers failed with `status` (or timed out: 408).
    pub(super) fn offer_failed(&mut self, tx: TxId, status: u16, now: Instant) {
        let Some(Role::Offer {
            leg,
            purpose,
            answered: false,
            ..
        }) = self.roles.remove(&tx)
        else {
            return;
        };
        if let Some(l) = self.legs[ix(leg)].as_mut() {
            if l.outgoing == Some(tx) {
                l.outgoing = None;
            }
        }
        self.note(Some(leg), format!("our offer was answered {status}"));
        match purpose {
            Purpose::Pass { from, inc } => {
                // Pass the refusal back (491 glare, 488 not acceptable, 408 no answer...).
                if let Some(f) = self.legs[ix(from)].as_mut() {
                    f.incoming = false;
                }
                self.respond(&inc, status);
            }
            Purpose::Refresh if matches!(status, 408 | 481) && self.phase == Phase::Connected => {
                self.note(Some(leg), format!("session refresh failed: {status}"));
                if let Some(l) = self.legs[ix(leg)].as_mut() {
                    l.up = false;
                }
                self.hang_up_all(
                    outcome(
                        CallStatus::Completed,
                        Some(leg),
                        Some(status),
                        "session refresh failed",
                    ),
                    now,
                );
            }
            Purpose::Hold { hold } => self.hold_failed(hold, status),
            Purpose::Refresh | Purpose::Realign => {
                if let Some(l) = self.legs[ix(leg)].as_mut() {
                    note_refresh(l, now);
                }
            }
        }
    }

    pub(super) fn pass_info(&mut self, inc: IncomingRequest, from: Leg) {
        let to = other(from);
        let Some(o) = self.legs[ix(to)].as_mut().filter(|o| o.up) else {
            self.respond(&inc, 481);
            return;
        };
        let ct = inc
            .request
            .header_str(&HeaderName::ContentType)
            .unwrap_or_else(|| "application/octet-stream".into());
        let body = (!inc.request.body.is_empty()).then(|| (ct.as_str(), inc.request.body.clone()));
        let req = o.dialog.new_request(Method::Info, body);
        let dest = o.dest;
        let tx = self.new_tx(Role::Info { inc: Box::new(inc) });
        self.out.push_back(Output::Send {
            tx,
            request: req,
            dest,
        });
    }

    /// A 2xx that no transaction took: a retransmission for an established leg is ACKed.
    pub(super) fn on_stray(&mut self, resp: &Response) {
        for l in self.legs.iter().flatten() {
            if l.dialog.id().call_id == resp.call_id_str() {
                let ack = l.dialog.ack_for_2xx(cseq_of(resp), None);
                self.out.push_back(Output::Ack {
                    request: ack,
                    dest: l.dest,
                });
                return;
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Connected
    // -----------------------------------------------------------------------------------

    /// The customer took fewer codecs than the agent: re-INVITE the agent with an offer of
    /// the customer's codecs, so that it sends nothing the customer cannot take.
    pub(super) fn realign_agent(&mut self, kept: Option<sdp_glue::AgentAccepted>) {
        let (Some(a), Some(c)) = (self.legs[0].as_ref(), self.legs[1].as_ref()) else {
            return;
        };
        let mut origin = a.origin.clone();
        let Some(offer) = sdp_glue::realign_agent(
            &a.local_sdp,
            &a.remote_sdp,
            kept,
            &c.local_sdp,
            &c.remote_sdp,
            &mut origin,
        ) else {
            return;
        };
        let Some(a) = self.legs[0].as_mut() else {
            return;
        };
        a.origin = origin;
        let req = a.offer(Method::Invite, offer);
        let dest = a.dest;
        let cid = req.call_id_str();
        self.sip_event(
            Leg::Agent,
            "sent",
            "INVITE (codecs narrowed to the customer's)".into(),
            &cid,
        );
        self.send_offer(Leg::Agent, Method::Invite, req, dest, Purpose::Realign);
    }

    /// RFC 4028: refresh where we are the refresher; end the call where the peer failed to.
    pub(super) fn session_timers(&mut self, now: Instant) {
        for leg in [Leg::Agent, Leg::Customer] {
            let Some(l) = self.legs[ix(leg)].as_mut().filter(|l| l.up) else {
                continue;
            };
            if l.expires_at.is_some_and(|t| t <= now) {
                l.expires_at = None;
                self.note(Some(leg), "session expired without a refresh (RFC 4028)");
                self.hang_up_all(
                    outcome(
                        CallStatus::Completed,
                        Some(leg),
                        Some(408),
                        "session timer expired",
                    ),
                    now,
                );
                return;
            }
            if l.refresh_at.is_none_or(|t| t > now) {
                continue;
            }
            if l.outgoing.is_some() || l.incoming {
                // An offer is in flight on this leg: its answer refreshes the session; try
                // again later should it fail.
                l.refresh_at = Some(now + self.cfg.timers.t4);
                continue;
            }
            l.refresh_at = None;
            let sdp = sdp_glue::refresh(&l.local_sdp, &mut l.origin);
            let req = l.offer(Method::Invite, sdp);
            let dest = l.dest;
            let cid = req.call_id_str();
            self.sip_event(leg, "sent", "INVITE (session refresh)".into(), &cid);
            self.send_offer(leg, Method::Invite, req, dest, Purpose::Refresh);
        }
    }
}

impl LegState {
    /// Our offer `sdp` on this leg in `method` (INVITE or UPDATE), with the session timer it
    /// runs (we refresh: RFC 4028); it becomes the SDP we last sent.
    pub(super) fn offer(&mut self, method: Method, sdp: Bytes) -> Request {
        let mut req = self
            .dialog
            .new_request(method, Some(("application/sdp", sdp.clone())));
        if let Some(se) = self.session_expires {
            req.headers
                .add(HeaderName::SessionExpires, format!("{se};refresher=uac"));
            req.headers.add(HeaderName::Supported, "timer");
        }
        self.local_sdp = sdp;
        req
    }
}

/// After a successful refresh (either way) the session timer starts again.
fn note_refresh(l: &mut LegState, now: Instant) {
    if let Some(se) = l.session_expires {
        let d = Duration::from_secs(u64::from(se));
        if l.expires_at.is_some() {
            l.expires_at = Some(now + d);
        } else {
            l.refresh_at = Some(now + d / 2);
        }
    }
}

/// On a leg with SDES (our SDP has our key), a new SDP of the peer with another key: the
/// relay must take it (RFC 4568 §7.1.4: a re-offer may change the keys).
fn sdes_change(leg: Leg, local: &[u8], old_remote: &[u8], new_remote: &[u8]) -> Option<MediaOp> {
    let ours = sdp_glue::sdes_key(local)?;
    let new = sdp_glue::sdes_key(new_remote);
    (new != sdp_glue::sdes_key(old_remote) || new.is_none())
        .then(|| MediaOp::Sdes(leg, ours, Bytes::copy_from_slice(new_remote)))
}
