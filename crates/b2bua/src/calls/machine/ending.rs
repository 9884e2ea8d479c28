//! How a call ends: BYE every leg still up, wait (bounded) for the answers, give the one
//! outcome; and the transactions' answers as the machine takes them.

use super::*;

impl CallMachine {
    // -----------------------------------------------------------------------------------
    // Ending
    // -----------------------------------------------------------------------------------

    /// API hang-up or shutdown: `before` while a leg rings, `connected_reason` once bridged.
    pub(super) fn on_end_command(&mut self, before: Outcome, connected_reason: &str, now: Instant) {
        match self.phase {
            Phase::Lookup(_) | Phase::Ringing(_) | Phase::Confirm => {
                if let Phase::Ringing(leg) = self.phase {
                    self.cancel_live(leg, None);
                }
                self.fork = None;
                self.hang_up_all(before, now);
            }
            Phase::Connected => self.hang_up_all(
                outcome(CallStatus::Completed, None, None, connected_reason),
                now,
            ),
            Phase::Ending | Phase::Done => {}
        }
    }

    /// BYE every leg still up, then end with `o`.
    pub(super) fn hang_up_all(&mut self, o: Outcome, now: Instant) {
        if matches!(self.phase, Phase::Ending | Phase::Done) {
            return;
        }
        self.reject_incoming(&o);
        if self.phase == Phase::Confirm {
            self.out
                .push_back(Output::Media(MediaOp::EndConfirm(Leg::Agent)));
        }
        self.outcome = Some(o);
        self.phase = Phase::Ending;
        self.abandon_passed();
        self.ending_until = Some(now + self.cfg.timers.timeout() + self.cfg.timers.t4);
        self.end_all_sides();
        self.pending_refers.clear();
        self.pending_joins.clear();
        for leg in [Leg::Agent, Leg::Customer] {
            self.send_bye(leg, true);
        }
        self.maybe_finish(now);
    }

    /// The call is ending: requests passed through and still unanswered get 487 (RFC 3261
    /// §15.1.2); a 2xx that still comes to our side of them is only ACKed.
    pub(super) fn abandon_passed(&mut self) {
        // Offers passed through and still pending: their originator hears 487.
        let pending: Vec<TxId> = self
            .roles
            .iter()
            .filter_map(|(tx, r)| match r {
                Role::Offer {
                    purpose: Purpose::Pass { .. },
                    answered: false,
                    ..
                } => Some(*tx),
                _ => None,
            })
            .collect();
        for tx in pending {
            if let Some(Role::Offer {
                purpose: Purpose::Pass { inc, .. },
                ..
            }) = self.roles.get(&tx)
            {
                let r = Response::for_request(&inc.request, 487);
                let key = inc.key.clone();
                self.respond_with(key, r);
            }
        }
        // INFOs passed through and still unanswered: their sender hears 487 as well.
        let infos: Vec<TxId> = self
            .roles
            .iter()
            .filter_map(|(tx, r)| matches!(r, Role::Info { .. }).then_some(*tx))
            .collect();
        for tx in infos {
            if let Some(Role::Info { inc, .. }) = self.roles.remove(&tx) {
                self.respond(&inc, 487);
            }
        }
        for r in self.roles.values_mut() {
            if let Role::Offer { purpose, .. } = r {
                if matches!(purpose, Purpose::Pass { .. }) {
                    *purpose = Purpose::Refresh;
                }
            }
        }
        for l in self.legs.iter_mut().flatten() {
            l.incoming = false;
        }
    }

    pub(super) fn send_bye(&mut self, leg: Leg, ending: bool) {
        let Some(l) = self.legs[ix(leg)].as_mut() else {
            return;
        };
        if !l.up {
            return;
        }
        l.up = false;
        let bye = l.dialog.new_request(Method::Bye, None);
        let dest = l.dest;
        let cid = l.dialog.id().call_id.clone();
        self.sip_event(leg, "sent", "BYE".into(), &cid);
        let tx = self.new_tx(Role::Bye { leg, ending });
        self.out.push_back(Output::Send {
            tx,
            request: bye,
            dest,
        });
    }

    pub(super) fn maybe_finish(&mut self, now: Instant) {
        if self.phase != Phase::Ending {
            return;
        }
        let waiting = self
            .roles
            .values()
            .any(|r| matches!(r, Role::Bye { ending: true, .. }));
        if !waiting {
            self.finish(now);
        }
    }

    pub(super) fn finish(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        for l in self.legs.iter_mut().flatten() {
            l.up = false;
            l.dialog.terminate();
        }
        self.roles.retain(|_, r| {
            !matches!(
                r,
                Role::Bye { .. }
                    | Role::LateBye
                    | Role::Info { .. }
                    | Role::Offer { answered: true, .. }
            )
        });
        self.linger_until = Some(now + self.cfg.timers.timeout());
        let mut o = self
            .outcome
            .take()
            .unwrap_or_else(|| outcome(CallStatus::Completed, None, None, "ended"));
        if let Some(at) = self.answered_at {
            o.duration_secs = now.saturating_duration_since(at).as_secs();
        }
        // The call is over: its trunk channel is free (the machine may still linger).
        self.trunk_channel = None;
        self.joined_channels.clear();
        if let Some(f) = self.fork.as_mut() {
            f.channel = None;
        }
        self.out.push_back(Output::End(o));
    }

    // -----------------------------------------------------------------------------------
    // Transactions
    // -----------------------------------------------------------------------------------

    pub(super) fn on_tx(&mut self, tx: TxId, ev: ClientEvent, now: Instant) {
        let Some(role) = self.roles.get(&tx) else {
            return;
        };
        match role {
            Role::Branch(i) => {
                let i = *i;
                self.on_branch_event(i, ev, now);
            }
            Role::Bye { leg, .. } => {
                let leg = *leg;
                if let ClientEvent::Response(r) = &ev {
                    if r.status < 200 {
                        return;
                    }
                    let cid = r.call_id_str();
                    self.sip_event(leg, "received", format!("{} (BYE)", status_line(r)), &cid);
                }
                self.roles.remove(&tx);
                self.maybe_finish(now);
            }
            Role::LateBye => {
                if !matches!(&ev, ClientEvent::Response(r) if r.status < 200) {
                    self.roles.remove(&tx);
                }
            }
            Role::Info { .. } => {
                let status = match &ev {
                    ClientEvent::Response(r) if r.status < 200 => return,
                    ClientEvent::Response(r) => r.status,
                    _ => 408,
                };
                if let Some(Role::Info { inc, .. }) = self.roles.remove(&tx) {
                    self.respond(&inc, status);
                }
            }
            Role::Side { side, branch } => {
                let (side, branch) = (*side, *branch);
                self.on_side_event(side, branch, ev, now);
            }
            Role::SideOffer { side } => {
                let side = *side;
                self.on_side_offer(tx, side, ev);
            }
            Role::Offer { .. } => match ev {
                ClientEvent::Response(r) if r.status < 200 => {}
                ClientEvent::Response(r) if r.is_success() => self.offer_answered(tx, r, now),
                ClientEvent::Response(r) => self.offer_failed(tx, r.status, now),
                _ => self.offer_failed(tx, 408, now),
            },
        }
    }

    pub(super) fn on_tx_ended(&mut self, tx: TxId, now: Instant) {
        match self.roles.get(&tx) {
            Some(Role::Branch(i)) if self.branches[*i].final_code.is_none() => {
                // Ended with nothing final: as a time-out.
                self.on_tx(tx, ClientEvent::Timeout, now);
            }
            Some(Role::Offer {
                answered: false, ..
            }) => self.offer_failed(tx, 408, now),
            Some(Role::Info { .. }) => self.on_tx(tx, ClientEvent::Timeout, now),
            Some(Role::Side { .. } | Role::SideOffer { .. }) => {
                self.on_tx(tx, ClientEvent::Timeout, now)
            }
            _ => {}
        }
        self.roles.remove(&tx);
        self.release_spent();
        self.maybe_finish(now);
    }

    /// Frees what the call no longer needs once its transactions have ended: the INVITEs of
    /// its forks (each kept whole, with its target, while a response may still come) when no
    /// fork rings and no INVITE of one is pending, and the table of transactions when it is
    /// empty. A live call keeps these for hours (`docs/benchmarks.md`, bytes per live call).
    pub(super) fn release_spent(&mut self) {
        if self.fork.is_none()
            && !self.branches.is_empty()
            && !self.roles.values().any(|r| matches!(r, Role::Branch(_)))
        {
            self.branches = Vec::new();
        }
        if self.roles.is_empty() {
            self.roles.shrink_to_fit();
        }
    }
}
