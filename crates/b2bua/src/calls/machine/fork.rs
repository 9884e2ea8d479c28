//! The forks of a call: one leg's INVITEs, the stages of its plan, its ring and INVITE
//! time-outs, challenges, the winner, and the answers that come too late.

use super::*;

impl CallMachine {
    // -----------------------------------------------------------------------------------
    // Forks
    // -----------------------------------------------------------------------------------

    pub(super) fn start_fork(&mut self, leg: Leg, plan: Plan, now: Instant) {
        let relay = self.relay[ix(leg)];
        let mut origin = Origin::new();
        let mut agent_accepted = None;
        let offer = match (leg, self.legs[ix(Leg::Agent)].as_ref()) {
            _ if self.caller_leg() == Some(other(leg)) => self
                .incoming_offer(leg, relay, &mut origin)
                .unwrap_or_else(|| sdp_glue::agent_offer(relay, &mut origin)),
            (Leg::Customer, Some(a)) => {
                let (offer, accepted) =
                    sdp_glue::customer_offer(relay, &mut origin, &a.local_sdp, &a.remote_sdp);
                agent_accepted = accepted;
                offer
            }
            _ => sdp_glue::agent_offer(relay, &mut origin),
        };
        let sip_call_id = format!("{}@{}", new_tag(), self.cfg.domain);
        self.out
            .push_back(Output::RouteCallId(leg, sip_call_id.clone()));
        let ring = match leg {
            Leg::Agent => self.spec.agent_ring,
            Leg::Customer => self.spec.customer_ring,
        };
        self.fork = Some(Fork {
            leg,
            plan,
            stage: 0,
            sip_call_id,
            from_tag: new_tag(),
            cseq: 0,
            offer,
            origin,
            agent_accepted,
            ring_until: now + ring,
            rang: false,
            early: false,
            channel: None,
            at_limit: Vec::new(),
        });
        self.phase = Phase::Ringing(leg);
        self.start_stage(0, now);
    }

    /// Sends the INVITEs of one stage of the plan (moving past empty stages).
    pub(super) fn start_stage(&mut self, stage: usize, now: Instant) {
        let Some(f) = self.fork.as_mut() else { return };
        let Some(targets) = f.plan.get(stage).cloned() else {
            return;
        };
        let leg = f.leg;
        // A trunk's stage takes a channel of the trunk first; a trunk at its limit is skipped.
        if let Some(tr) = targets.iter().find_map(|t| t.trunk.as_ref()) {
            f.channel = None;
            match tr.acquire() {
                Some(g) => f.channel = Some(g),
                None => {
                    let (label, trunk) = (tr.attempt.label.clone(), tr.attempt.trunk.clone());
                    if !f.at_limit.contains(&trunk) {
                        f.at_limit.push(trunk.clone());
                    }
                    let tried = self.branches.iter().any(|b| b.leg == leg);
                    let next = f.plan.len() > stage + 1;
                    let limits = format!(
                        "no trunk available: {} at its call limit",
                        f.at_limit.join(", ")
                    );
                    self.note(
                        Some(leg),
                        format!("{label}: skipped, trunk {trunk} at its call limit"),
                    );
                    if next {
                        self.start_stage(stage + 1, now);
                    } else if tried {
                        let o = self.fork_outcome(leg);
                        self.leg_failed(o, now);
                    } else {
                        self.leg_failed(
                            outcome(CallStatus::Failed, Some(leg), Some(503), &limits),
                            now,
                        );
                    }
                    return;
                }
            }
        }
        let Some(f) = self.fork.as_mut() else { return };
        f.stage = stage;
        // Any target of the stage may answer (or send early media) from where we signal it.
        let ips: Vec<IpAddr> = targets.iter().map(|t| t.dest.addr.ip()).collect();
        self.out
            .push_back(Output::Media(MediaOp::AllowSources(leg, ips)));
        // A browser among the targets: the relay answers its ICE checks and DTLS from now
        // on (it may connect before its 200 OK arrives).
        if let Some(w) = targets.iter().find_map(|t| t.webrtc.as_ref()) {
            self.out
                .push_back(Output::Media(MediaOp::WebRtc(leg, Some(w.ice.clone()))));
        }
        for t in targets {
            let Some(f) = self.fork.as_mut() else { return };
            f.cseq += 1;
            let invite = self.build_invite(leg, &t);
            let tx = self.new_tx(Role::Branch(self.branches.len()));
            self.sip_event(
                leg,
                "sent",
                format!("INVITE {} ({})", invite.uri(), t.label),
                &invite.call_id_str(),
            );
            self.out.push_back(Output::Send {
                tx,
                request: invite.clone(),
                dest: t.dest,
            });
            self.branches.push(Branch {
                leg,
                stage,
                tx,
                invite,
                target: t,
                sent_at: now,
                provisional: false,
                final_code: None,
                q850: None,
                challenged: false,
                cancelled: false,
            });
        }
    }

    pub(super) fn new_tx(&mut self, role: Role) -> TxId {
        let tx = self.next_tx;
        self.next_tx += 1;
        self.roles.insert(tx, role);
        tx
    }

    pub(super) fn live_branches(&self, leg: Leg, stage: usize) -> impl Iterator<Item = &Branch> {
        self.branches
            .iter()
            .filter(move |b| b.leg == leg && b.stage == stage && b.final_code.is_none())
    }

    /// The From of a leg's INVITEs and the P-Asserted-Identity.
    pub(super) fn identity(&self, leg: Leg) -> (String, Option<String>) {
        let domain = &self.cfg.domain;
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
                let pai = self
                    .spec
                    .caller_id
                    .as_ref()
                    .map(|c| format!("<sip:{c}@{domain}>"));
                (format!("<sip:{cid}@{domain}>"), pai)
            }
        }
    }

    pub(super) fn build_invite(&self, leg: Leg, target: &Target) -> Request {
        let Some(f) = self.fork.as_ref() else {
            return Request::new(Method::Invite, target.request_uri.clone());
        };
        let (from, pai) = self.identity(leg);
        let mut r = Request::new(Method::Invite, target.request_uri.clone());
        r.headers
            .add(HeaderName::From, format!("{from};tag={}", f.from_tag));
        r.headers.add(HeaderName::To, target.to.clone());
        r.headers.add(HeaderName::CallId, f.sip_call_id.clone());
        r.headers
            .add(HeaderName::CSeq, format!("{} INVITE", f.cseq));
        for route in &target.route {
            r.headers.add(HeaderName::Route, route.clone());
        }
        if let Some(c) = &target.contact {
            r.headers.add(HeaderName::Contact, format!("<{c}>"));
        }
        if let Some(p) = pai {
            r.headers.add(HeaderName::PAssertedIdentity, p);
        }
        r.headers.add(HeaderName::Allow, ALLOW);
        r.headers.add(HeaderName::Supported, "timer");
        r.headers.add(
            HeaderName::SessionExpires,
            self.cfg.session_expires.to_string(),
        );
        r.headers.add(HeaderName::ContentType, "application/sdp");
        r.body = match (&target.sdes, &target.webrtc) {
            (Some(key), _) => sdp_glue::with_sdes(&f.offer, key),
            (None, Some(w)) => sdp_glue::webrtc_offer(&f.offer, w),
            (None, None) => f.offer.clone(),
        };
        r
    }

    /// Whether branch `i` is one the current fork is still waiting on.
    pub(super) fn in_current_fork(&self, i: usize) -> bool {
        let b = &self.branches[i];
        matches!(self.phase, Phase::Ringing(l) if l == b.leg)
            && self.fork.as_ref().is_some_and(|f| f.stage == b.stage)
    }

    pub(super) fn on_branch_event(&mut self, i: usize, ev: ClientEvent, now: Instant) {
        let current = self.in_current_fork(i);
        let resp = match ev {
            ClientEvent::Response(r) => r,
            ClientEvent::Timeout | ClientEvent::TransportError => {
                let timeout = matches!(ev, ClientEvent::Timeout);
                let b = &mut self.branches[i];
                if b.final_code.is_some() {
                    return;
                }
                b.final_code = Some(if timeout { 408 } else { 503 });
                let (leg, label) = (b.leg, b.target.label.clone());
                if let (true, Some(tr)) = (current, &b.target.trunk) {
                    tr.report(if timeout {
                        crate::trunks::AttemptResult::Timeout
                    } else {
                        crate::trunks::AttemptResult::TransportError
                    });
                }
                if current {
                    let what = if timeout {
                        "no answer (time-out)"
                    } else {
                        "the transport failed"
                    };
                    self.note(Some(leg), format!("{label}: {what}"));
                    self.stage_progress(now);
                }
                return;
            }
        };
        if !current {
            self.late_response(i, resp);
            return;
        }
        let leg = self.branches[i].leg;
        let sip_call_id = self.branches[i].invite.call_id_str();
        self.sip_event(leg, "received", status_line(&resp), &sip_call_id);
        if resp.status < 200 {
            self.branches[i].provisional = true;
            let Some(f) = self.fork.as_mut() else { return };
            let ringing = matches!(resp.status, 180 | 183) && !f.rang;
            f.rang |= ringing;
            let toward_caller = self.caller_leg() == Some(other(leg));
            let Some(f) = self.fork.as_mut() else { return };
            let early =
                (leg == Leg::Customer || toward_caller) && !resp.body.is_empty() && !f.early;
            f.early |= early;
            if ringing {
                self.emit(CallEventKind::Ringing {
                    leg,
                    sip_code: resp.status,
                });
            }
            if early {
                // Early media: the carrier's ringback goes to the agent.
                if let Some(key) = self.branches[i].target.sdes.clone() {
                    self.out
                        .push_back(Output::Media(MediaOp::Sdes(leg, key, resp.body.clone())));
                }
                self.out
                    .push_back(Output::Media(MediaOp::SetPeer(leg, resp.body.clone())));
                self.out.push_back(Output::Media(MediaOp::Start));
                self.emit(CallEventKind::EarlyMedia { leg });
            }
            if toward_caller {
                self.relay_provisional(leg, &resp);
            }
            return;
        }
        if resp.is_success() {
            self.answered(i, resp, now);
            return;
        }
        if matches!(resp.status, 401 | 407) && self.retry_with_credentials(i, &resp, now) {
            return;
        }
        let q850 = resp.reasons().ok().and_then(|r| {
            r.into_iter()
                .find(|x| x.protocol.eq_ignore_ascii_case("Q.850"))
                .and_then(|x| x.cause)
        });
        let b = &mut self.branches[i];
        b.final_code = Some(resp.status);
        b.q850 = q850;
        if let Some(tr) = &b.target.trunk {
            tr.report_response(&resp, now.saturating_duration_since(b.sent_at));
        }
        if resp.status >= 600 {
            // 6xx: no other branch may succeed (RFC 3261 §16.7 for forks).
            self.cancel_live(leg, None);
            let o = self.fork_outcome(leg);
            self.leg_failed(o, now);
            return;
        }
        self.stage_progress(now);
    }

    /// After a branch of the current stage ended without an answer: wait for the others,
    /// try the next stage, or fail the leg.
    pub(super) fn stage_progress(&mut self, now: Instant) {
        let Some(f) = self.fork.as_ref() else { return };
        let (leg, stage) = (f.leg, f.stage);
        if self.live_branches(leg, stage).next().is_some() {
            return;
        }
        let next_exists = f.plan.len() > stage + 1;
        // Failover when every branch of the stage ended with one of its target's codes.
        let failover = self
            .branches
            .iter()
            .filter(|b| b.leg == leg && b.stage == stage)
            .all(|b| {
                b.final_code
                    .is_some_and(|c| b.target.failover_codes.contains(&c))
            });
        if next_exists && failover {
            let label = f
                .plan
                .get(stage + 1)
                .and_then(|s| s.first())
                .map(|t| t.label.clone())
                .unwrap_or_default();
            self.note(Some(leg), format!("failing over to {label}"));
            self.start_stage(stage + 1, now);
            return;
        }
        let o = self.fork_outcome(leg);
        self.leg_failed(o, now);
    }

    pub(super) fn fork_timers(&mut self, leg: Leg, now: Instant) {
        let Some(f) = self.fork.as_ref() else { return };
        if f.ring_until <= now {
            self.cancel_live(leg, None);
            let reason = match leg {
                Leg::Agent => "agent ring time-out",
                Leg::Customer => "customer ring time-out",
            };
            self.leg_failed(
                outcome(CallStatus::NoAnswer, Some(leg), Some(408), reason),
                now,
            );
            return;
        }
        // Targets that have not answered at all within their INVITE time-out.
        let stage = f.stage;
        let silent: Vec<usize> = (0..self.branches.len())
            .filter(|&i| {
                let b = &self.branches[i];
                b.leg == leg
                    && b.stage == stage
                    && b.final_code.is_none()
                    && !b.provisional
                    && b.target
                        .invite_timeout
                        .is_some_and(|d| b.sent_at + d <= now)
            })
            .collect();
        if silent.is_empty() {
            return;
        }
        for i in silent {
            let b = &mut self.branches[i];
            b.final_code = Some(408);
            b.cancelled = true;
            if let Some(tr) = &b.target.trunk {
                tr.report(crate::trunks::AttemptResult::Timeout);
            }
            let (tx, label, ms) = (
                b.tx,
                b.target.label.clone(),
                b.target.invite_timeout.unwrap_or_default().as_millis(),
            );
            // Held by the endpoint until a provisional response (§9.1); a late 2xx is
            // still ACKed and BYEd.
            self.out.push_back(Output::Cancel { tx, reason: None });
            self.note(
                Some(leg),
                format!("{label}: no answer within {ms} ms, given up"),
            );
        }
        self.stage_progress(now);
    }

    /// The INVITE again with credentials for a 401/407 (RFC 3261 §22.2), CSeq + 1.
    pub(super) fn retry_with_credentials(
        &mut self,
        i: usize,
        resp: &Response,
        now: Instant,
    ) -> bool {
        let b = &self.branches[i];
        if b.challenged {
            return false;
        }
        let Some((user, pass)) = b.target.credentials.clone() else {
            return false;
        };
        let mut client = DigestClient::new(user, pass);
        let uri = b.invite.uri().to_string();
        let Ok((name, value)) = client.answer_response(resp, "INVITE", &uri, &b.invite.body) else {
            return false;
        };
        let Some(f) = self.fork.as_mut() else {
            return false;
        };
        f.cseq += 1;
        let mut req = b.invite.clone();
        req.headers.remove(&HeaderName::Via);
        req.headers
            .set(HeaderName::CSeq, format!("{} INVITE", f.cseq));
        req.headers.set(name, value);
        let (leg, label, dest, old_tx) = (b.leg, b.target.label.clone(), b.target.dest, b.tx);
        self.note(
            Some(leg),
            format!("answering the {} challenge of {label}", resp.status),
        );
        // The challenged transaction is over for the call.
        self.roles.remove(&old_tx);
        let tx = self.new_tx(Role::Branch(i));
        self.sip_event(
            leg,
            "sent",
            format!("INVITE {} ({label})", req.uri()),
            &req.call_id_str(),
        );
        self.out.push_back(Output::Send {
            tx,
            request: req.clone(),
            dest,
        });
        let b = &mut self.branches[i];
        b.tx = tx;
        b.invite = req;
        b.challenged = true;
        b.sent_at = now;
        true
    }

    /// A 2xx on the current fork: this branch wins the leg.
    pub(super) fn answered(&mut self, i: usize, resp: Response, now: Instant) {
        let b = &self.branches[i];
        let leg = b.leg;
        let local_contact = b
            .invite
            .contact()
            .ok()
            .flatten()
            .map(|n| n.uri)
            .unwrap_or_else(|| b.invite.uri().clone());
        let Ok(dialog) = Dialog::uac(&b.invite, &resp, local_contact) else {
            self.note(Some(leg), "2xx without a usable dialog (no Contact/To tag)");
            return;
        };
        let dest = b.target.dest;
        let sdes = b.target.sdes.clone();
        let webrtc = b.target.webrtc.clone();
        let forked_webrtc = self
            .fork
            .as_ref()
            .and_then(|f| f.plan.get(f.stage))
            .is_some_and(|ts| ts.iter().any(|t| t.webrtc.is_some()));
        let sip_call_id = b.invite.call_id_str();
        if let Some(tr) = &b.target.trunk {
            tr.report_response(&resp, now.saturating_duration_since(b.sent_at));
        }
        let ack = dialog.ack_for_2xx(cseq_of(&b.invite), None);
        self.sip_event(leg, "sent", "ACK".into(), &sip_call_id);
        self.out.push_back(Output::Ack { request: ack, dest });
        self.branches[i].final_code = Some(resp.status);
        // Everyone else: CANCEL (RFC 3326 Reason: completed elsewhere).
        self.cancel_live(leg, Some(Bytes::from_static(COMPLETED_ELSEWHERE)));
        // From now on the leg's media comes from the winner only.
        self.out.push_back(Output::Media(MediaOp::AllowSources(
            leg,
            vec![dest.addr.ip()],
        )));
        if let Some(key) = &sdes {
            self.out.push_back(Output::Media(MediaOp::Sdes(
                leg,
                key.clone(),
                resp.body.clone(),
            )));
        }
        match &webrtc {
            Some(_) => self
                .out
                .push_back(Output::Media(MediaOp::WebRtcAnswer(leg, resp.body.clone()))),
            // A phone answered where a browser was rung too: the leg is plain.
            None if forked_webrtc => self
                .out
                .push_back(Output::Media(MediaOp::WebRtc(leg, None))),
            None => {}
        }
        self.out
            .push_back(Output::Media(MediaOp::SetPeer(leg, resp.body.clone())));
        self.out
            .push_back(Output::RouteDialog(leg, dialog.id().clone()));
        let (refresh_at, expires_at, session_expires) = match resp.session_expires().ok().flatten()
        {
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
        let Some(mut f) = self.fork.take() else {
            return;
        };
        let agent_accepted = f.agent_accepted.take();
        // The answering trunk's channel lasts as long as the call.
        if let Some(ch) = f.channel.take() {
            self.trunk_channel = Some(ch);
        }
        self.legs[ix(leg)] = Some(LegState {
            dialog,
            dest,
            local_sdp: match (&sdes, &webrtc) {
                (Some(key), _) => sdp_glue::with_sdes(&f.offer, key),
                (None, Some(w)) => sdp_glue::webrtc_offer(&f.offer, w),
                (None, None) => f.offer,
            },
            remote_sdp: own_sdp(&resp.body),
            origin: f.origin,
            refresh_at,
            expires_at,
            session_expires,
            up: true,
            outgoing: None,
            incoming: false,
        });
        if self.caller_leg() == Some(other(leg)) {
            // The caller's leg is already there: it gets our 200, and the call is up.
            if leg == Leg::Agent {
                self.emit(CallEventKind::AgentAnswered {
                    sip_code: resp.status,
                });
            }
            self.answer_incoming(now);
            return;
        }
        match leg {
            Leg::Agent => {
                self.emit(CallEventKind::AgentAnswered {
                    sip_code: resp.status,
                });
                if let Some(d) = self.spec.confirm {
                    self.start_confirm(resp.body.clone(), d, now);
                    return;
                }
                self.phase = Phase::Lookup(Leg::Customer);
                self.out.push_back(Output::Lookup(Leg::Customer));
            }
            Leg::Customer => {
                self.out.push_back(Output::Media(MediaOp::Start));
                self.start_recording();
                self.answered_at = Some(now);
                self.emit(CallEventKind::InProgress {
                    sip_code: resp.status,
                });
                self.phase = Phase::Connected;
                self.realign_agent(agent_accepted);
            }
        }
    }

    /// A response of a branch the call no longer waits on: a 2xx is ACKed, and BYEd unless
    /// it is the leg's own dialog (a retransmission).
    pub(super) fn late_response(&mut self, i: usize, resp: Response) {
        if !resp.is_success() {
            let b = &mut self.branches[i];
            b.final_code.get_or_insert(resp.status);
            return;
        }
        let b = &self.branches[i];
        let leg = b.leg;
        let own = self.legs[ix(leg)].as_ref().is_some_and(|l| {
            l.dialog.id().call_id == resp.call_id_str()
                && resp
                    .to()
                    .ok()
                    .and_then(|t| t.tag().map(|t| t == l.dialog.id().remote_tag.as_bytes()))
                    .unwrap_or(false)
        });
        let Ok(mut dialog) = Dialog::uac(&b.invite, &resp, b.invite.uri().clone()) else {
            return;
        };
        let dest = b.target.dest;
        let ack = dialog.ack_for_2xx(cseq_of(&b.invite), None);
        self.out.push_back(Output::Ack { request: ack, dest });
        if own {
            return;
        }
        let label = b.target.label.clone();
        let sip_call_id = b.invite.call_id_str();
        self.branches[i].final_code.get_or_insert(resp.status);
        self.sip_event(
            leg,
            "received",
            format!("{} (late answer from {label})", status_line(&resp)),
            &sip_call_id,
        );
        let bye = dialog.new_request(Method::Bye, None);
        self.sip_event(leg, "sent", format!("ACK + BYE ({label})"), &sip_call_id);
        let tx = self.new_tx(Role::LateBye);
        self.out.push_back(Output::Send {
            tx,
            request: bye,
            dest,
        });
    }

    /// CANCELs every branch of `leg` still waiting for a final answer.
    pub(super) fn cancel_live(&mut self, leg: Leg, reason: Option<Bytes>) {
        let mut notes = Vec::new();
        for b in self
            .branches
            .iter_mut()
            .filter(|b| b.leg == leg && b.final_code.is_none() && !b.cancelled)
        {
            b.cancelled = true;
            self.out.push_back(Output::Cancel {
                tx: b.tx,
                reason: reason.clone(),
            });
            notes.push((
                b.provisional,
                b.target.label.clone(),
                b.invite.call_id_str(),
            ));
        }
        // Sent when the branch has answered provisionally, otherwise held by the endpoint
        // until it does (§9.1) — or never sent, if a final response comes first.
        for (provisional, label, cid) in notes {
            if provisional {
                self.sip_event(leg, "sent", format!("CANCEL ({label})"), &cid);
            } else {
                self.note(
                    Some(leg),
                    format!("CANCEL ({label}) held until a provisional response (RFC 3261 §9.1)"),
                );
            }
        }
    }

    /// The outcome of a leg whose current stage all failed.
    pub(super) fn fork_outcome(&self, leg: Leg) -> Outcome {
        let stage = self.fork.as_ref().map(|f| f.stage).unwrap_or(0);
        let branches: Vec<&Branch> = self
            .branches
            .iter()
            .filter(|b| b.leg == leg && b.stage == stage)
            .collect();
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
            q850_cause: branches.iter().find_map(|b| b.q850),
            duration_secs: 0,
            reason,
        }
    }

    /// A leg could not be reached: the call ends (after a BYE to the agent, when it was the
    /// customer's that failed).
    pub(super) fn leg_failed(&mut self, o: Outcome, now: Instant) {
        self.fork = None;
        self.hang_up_all(o, now);
    }
}
