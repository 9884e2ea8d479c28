//! Live control of a connected call: hold and resume, mute, a supervisor's monitor leg, and
//! transfers (from the API, or REFER from a leg's phone).
//!
//! Besides its two legs a call may have *side legs*: INVITEs of ours to a third party while
//! the call is up. A side leg rings every target of a stage at once (the next stage when
//! they all fail, as the customer leg does with trunks), and once answered it is either
//!
//! - a **monitor**: the supervisor, whose media goes to a third port pair of the relay
//!   session that mixes (listen / whisper / barge); ending it leaves the call alone; or
//! - a **transfer**: the target takes the place of the leg it replaces — same relay port,
//!   so the other party sees nothing change — and the replaced party is released with BYE.
//!   A transfer that fails leaves the call as it was.
//!
//! ```text
//!   REFER (leg L) ──► 202, NOTIFY "100 Trying"
//!                     Lookup of the Refer-To target (dial plan, the account's guards)
//!                       refused ──► NOTIFY "403 Forbidden" (terminated); nothing dialled
//!                     INVITE target(s) (offer: the other party's codecs at L's relay port)
//!                       1xx ──► NOTIFY "180 Ringing"
//!                       2xx ──► ACK, NOTIFY "200 OK" (terminated), BYE L; target is leg L
//!                       failure / ring time over ──► NOTIFY "<code>" (terminated); call goes on
//! ```
//!
//! An **attended** transfer is a REFER whose Refer-To carries `?Replaces=` (RFC 3891) naming
//! the phone's dialog of *another* call through us: the phone talks with A in this call and
//! with C in the other. Nothing is dialled; C's leg moves from the other call into this one:
//!
//! ```text
//!   REFER (leg L, Refer-To <C?Replaces=call-id;to-tag;from-tag>)
//!        ──► 202, NOTIFY "100 Trying"; LookupReplaces (the engine's dialog table)
//!              no such dialog ──► NOTIFY "481" (terminated); both calls go on
//!              found in call X ──► X: HandOver — X gives up C's leg (dialog, session, trunk
//!                                  channel), BYEs the phone's leg and ends (completed)
//!   Joined(C) ──► re-INVITE C: the other party's codecs at L's relay port (a=sendrecv)
//!                   2xx ──► ACK, NOTIFY "200 OK" (terminated), BYE L; C is leg L now
//!                           (same relay port: A sees no change), `call.transferred`; A is
//!                           re-INVITEd a=sendrecv when the phone had left it on hold
//!                   failure ──► NOTIFY "<code>" (terminated), BYE C; this call goes on
//! ```

use super::*;
use media::MonitorMode;
use serde_json::json;
use sip_core::sdp::Direction;

use crate::calls::ControlError;

/// A live command as the machine takes it (the driver has looked up the targets).
#[derive(Debug)]
pub(crate) enum Command {
    Hold,
    Unhold,
    Mute {
        leg: Leg,
        muted: bool,
    },
    Monitor {
        monitor_id: String,
        user_id: String,
        mode: MonitorMode,
        plan: Plan,
    },
    SetMonitorMode {
        monitor_id: String,
        mode: MonitorMode,
    },
    EndMonitor {
        monitor_id: String,
    },
    Transfer {
        to: String,
        plan: Plan,
        warm: bool,
    },
    CompleteTransfer,
    CancelTransfer,
}

pub(crate) type SideId = u32;

/// The NOTIFYs owed to a REFER (RFC 3515 §2.4.4): in the dialog of `leg`.
#[derive(Debug)]
pub(super) struct ReferSub {
    leg: Leg,
    /// A NOTIFY of `180` was sent already.
    ringing: bool,
}

pub(super) enum SideKind {
    Monitor {
        monitor_id: String,
        user_id: String,
        mode: MonitorMode,
        /// The relay's third port pair is attached (the driver said so).
        attached: bool,
        /// The payload type the supervisor is offered (the agent's).
        payload_type: u8,
    },
    Transfer {
        replaces: Leg,
        to: String,
        by: &'static str,
        refer: Option<ReferSub>,
        /// A warm transfer: `Some` with the consultation's state.
        warm: Option<Warm>,
        /// An attended transfer (REFER with `Replaces`): the target's leg came up in another
        /// call and is moved here by a re-INVITE.
        attended: bool,
    },
}

/// The dialog a REFER's `Replaces` names (RFC 3891 §6.1), as the transferor's phone sees it:
/// its from-tag is the phone's own tag, its to-tag ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplacesTarget {
    pub(crate) call_id: String,
    pub(crate) to_tag: String,
    pub(crate) from_tag: String,
}

impl ReplacesTarget {
    /// The keys our dialog table may hold it under (our tag local): the phone's to-tag is
    /// ours; the other order too, for a phone that swaps them.
    pub(crate) fn dialog_ids(&self) -> [DialogId; 2] {
        [
            DialogId {
                call_id: self.call_id.clone(),
                local_tag: self.to_tag.clone(),
                remote_tag: self.from_tag.clone(),
            },
            DialogId {
                call_id: self.call_id.clone(),
                local_tag: self.from_tag.clone(),
                remote_tag: self.to_tag.clone(),
            },
        ]
    }
}

/// The `Replaces` header of a Refer-To URI (`…?Replaces=id%3Bto-tag%3Da%3Bfrom-tag%3Db`):
/// `None` when it has none, `Some(Err)` when it is malformed.
pub(super) fn replaces_of(uri: &str) -> Option<Result<ReplacesTarget, ()>> {
    let (_, headers) = uri.split_once('?')?;
    let value = headers.split('&').find_map(|h| {
        let (name, value) = h.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("replaces")
            .then_some(value)
    })?;
    let decoded = percent_decode(value);
    let mut parts = decoded.split(';');
    let call_id = parts.next().unwrap_or_default().trim().to_string();
    let (mut to_tag, mut from_tag) = (None, None);
    for p in parts {
        let (name, v) = p.split_once('=').unwrap_or((p, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "to-tag" => to_tag = Some(v.trim().to_string()),
            "from-tag" => from_tag = Some(v.trim().to_string()),
            _ => {}
        }
    }
    match (call_id.is_empty(), to_tag, from_tag) {
        (false, Some(to_tag), Some(from_tag)) if !to_tag.is_empty() && !from_tag.is_empty() => {
            Some(Ok(ReplacesTarget {
                call_id,
                to_tag,
                from_tag,
            }))
        }
        _ => Some(Err(())),
    }
}

/// An established leg handed from one call to another by an attended transfer: its dialog
/// and session, and the trunk channel it holds.
pub(crate) struct HandedLeg {
    state: Box<LegState>,
    channel: Option<crate::trunks::ChannelGuard>,
    /// Where it came from, for the timeline.
    label: String,
}

impl HandedLeg {
    pub(crate) fn dialog_id(&self) -> DialogId {
        self.state.dialog.id().clone()
    }
}

impl std::fmt::Debug for HandedLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedLeg")
            .field("dialog", self.state.dialog.id())
            .field("label", &self.label)
            .finish()
    }
}

/// A warm transfer's consultation: the target's media goes to a third port pair of the
/// relay where it and the agent hear each other ([`MonitorMode::Consult`]); the customer is
/// on hold meanwhile.
pub(super) struct Warm {
    attached: bool,
    payload_type: u8,
    /// The customer was put on hold for it (and is taken off hold after).
    held_for_it: bool,
    /// The re-INVITE moving the target to the agent's relay port is in flight.
    completing: bool,
}

pub(super) struct SideBranch {
    tx: TxId,
    invite: Request,
    target: Target,
    stage: usize,
    final_code: Option<u16>,
    provisional: bool,
    challenged: bool,
}

/// A third party's leg (see the module documentation).
pub(super) struct Side {
    id: SideId,
    pub(super) kind: SideKind,
    sip_call_id: String,
    from_tag: String,
    cseq: u32,
    offer: Bytes,
    origin: Origin,
    plan: Plan,
    stage: usize,
    branches: Vec<SideBranch>,
    ring_until: Instant,
    /// Once answered (a monitor only: a transfer's leg becomes the call's).
    leg: Option<LegState>,
}

impl Side {
    fn label(&self) -> String {
        match &self.kind {
            SideKind::Monitor { user_id, .. } => format!("supervisor {user_id}"),
            SideKind::Transfer { to, .. } => format!("transfer target {to}"),
        }
    }
}

/// What a NOTIFY of a REFER carries: the status line of the target's progress.
fn sipfrag(status: u16) -> String {
    let reason = match status {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        481 => "Call/Transaction Does Not Exist",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Failed",
    };
    format!("SIP/2.0 {status} {reason}\r\n")
}

impl CallMachine {
    fn reply(&mut self, id: u64, r: Result<serde_json::Value, ControlError>) {
        self.out.push_back(Output::Reply(id, r));
    }

    fn not_in_progress(&mut self, id: u64, why: &str) {
        self.reply(id, Err(ControlError::NotInProgress(why.to_string())));
    }

    /// The relay's mute of a leg: muted by the API, or (the agent) while the customer is
    /// held.
    fn apply_mute(&mut self, leg: Leg) {
        let muted = self.muted[ix(leg)] || (leg == Leg::Agent && self.held);
        self.out.push_back(Output::Media(MediaOp::Mute(leg, muted)));
    }

    pub(super) fn on_command(&mut self, id: u64, cmd: Command, now: Instant) {
        if self.phase != Phase::Connected {
            self.not_in_progress(id, "the call is not in progress");
            return;
        }
        match cmd {
            Command::Hold | Command::Unhold => {
                let hold = matches!(cmd, Command::Hold);
                self.hold(id, hold);
            }
            Command::Mute { leg, muted } => {
                self.muted[ix(leg)] = muted;
                self.apply_mute(leg);
                self.emit(CallEventKind::Muted { leg, muted });
                self.reply(id, Ok(json!({"leg": leg.as_str(), "muted": muted})));
            }
            Command::Monitor {
                monitor_id,
                user_id,
                mode,
                plan,
            } => self.start_monitor(id, monitor_id, user_id, mode, plan, now),
            Command::SetMonitorMode { monitor_id, mode } => {
                let Some(side) = self.monitor_mut(&monitor_id) else {
                    self.reply(id, Err(ControlError::NoSuchMonitor));
                    return;
                };
                let sid = side.id;
                if let SideKind::Monitor { mode: m, .. } = &mut side.kind {
                    *m = mode;
                }
                self.out
                    .push_back(Output::Media(MediaOp::MonitorMode(sid, mode)));
                self.emit(CallEventKind::MonitorModeChanged {
                    monitor_id: monitor_id.clone(),
                    mode: mode.as_str(),
                });
                self.reply(
                    id,
                    Ok(json!({"monitor_id": monitor_id, "mode": mode.as_str()})),
                );
            }
            Command::EndMonitor { monitor_id } => {
                let Some(sid) = self.monitor_mut(&monitor_id).map(|s| s.id) else {
                    self.reply(id, Err(ControlError::NoSuchMonitor));
                    return;
                };
                self.end_side(sid, "ended via API", true);
                self.reply(id, Ok(json!({"monitor_id": monitor_id, "ended": true})));
            }
            Command::Transfer { to, plan, warm } => {
                if self.transfer_in_flight() {
                    self.not_in_progress(id, "a transfer of this call is already under way");
                    return;
                }
                if warm {
                    self.start_warm_transfer(id, to, plan);
                    return;
                }
                self.start_transfer(Leg::Agent, to.clone(), "api", None, plan, now);
                self.reply(id, Ok(json!({"to": to, "status": "calling"})));
            }
            Command::CompleteTransfer => self.complete_transfer(id),
            Command::CancelTransfer => {
                let Some(sid) = self
                    .sides
                    .iter()
                    .find(|s| matches!(s.kind, SideKind::Transfer { .. }))
                    .map(|s| s.id)
                else {
                    self.not_in_progress(id, "no transfer under way");
                    return;
                };
                self.end_side(sid, "cancelled via API", true);
                self.reply(id, Ok(json!({"status": "cancelled"})));
            }
        }
    }

    fn monitor_mut(&mut self, monitor_id: &str) -> Option<&mut Side> {
        self.sides
            .iter_mut()
            .find(|s| matches!(&s.kind, SideKind::Monitor { monitor_id: m, .. } if m == monitor_id))
    }

    fn transfer_in_flight(&self) -> bool {
        !self.pending_refers.is_empty()
            || !self.pending_joins.is_empty()
            || self
                .sides
                .iter()
                .any(|s| matches!(s.kind, SideKind::Transfer { .. }))
    }

    // -----------------------------------------------------------------------------------
    // Hold
    // -----------------------------------------------------------------------------------

    /// Hold (or resume) the customer: a re-INVITE of our last SDP with `a=sendonly` (or
    /// `a=sendrecv`), and the agent's audio stops reaching it meanwhile.
    fn hold(&mut self, id: u64, hold: bool) {
        match self.set_hold(hold) {
            Ok(()) => self.reply(id, Ok(json!({"held": hold}))),
            Err(why) => self.not_in_progress(id, why),
        }
    }

    fn set_hold(&mut self, hold: bool) -> Result<(), &'static str> {
        if self.held == hold {
            return Err(if hold {
                "the call is already on hold"
            } else {
                "the call is not on hold"
            });
        }
        let leg = Leg::Customer;
        let Some(l) = self.legs[ix(leg)].as_mut().filter(|l| l.up) else {
            return Err("the customer leg is not up");
        };
        if l.outgoing.is_some() || l.incoming {
            return Err("an offer is in flight on the customer leg; try again");
        }
        let dir = if hold {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        let sdp = sdp_glue::with_direction(&l.local_sdp, dir, &mut l.origin);
        let req = l.offer(Method::Invite, sdp);
        let dest = l.dest;
        let cid = req.call_id_str();
        let tone = hold.then(|| l.remote_sdp.clone());
        self.held = hold;
        self.apply_mute(Leg::Agent);
        self.out
            .push_back(Output::Media(MediaOp::HoldTone(leg, tone)));
        let what = if hold {
            "INVITE (hold: a=sendonly)"
        } else {
            "INVITE (resume: a=sendrecv)"
        };
        self.sip_event(leg, "sent", what.into(), &cid);
        self.send_offer(leg, Method::Invite, req, dest, Purpose::Hold { hold });
        Ok(())
    }

    /// The answer to a hold or resume re-INVITE.
    pub(super) fn hold_answered(&mut self, hold: bool) {
        let leg = Leg::Customer;
        self.emit(if hold {
            CallEventKind::Held { leg }
        } else {
            CallEventKind::Resumed { leg }
        });
    }

    /// A hold or resume re-INVITE was refused: the call stays as it was.
    pub(super) fn hold_failed(&mut self, hold: bool, status: u16) {
        self.held = !hold;
        self.apply_mute(Leg::Agent);
        let tone = self.held.then(|| {
            self.legs[ix(Leg::Customer)]
                .as_ref()
                .map(|l| l.remote_sdp.clone())
                .unwrap_or_default()
        });
        self.out
            .push_back(Output::Media(MediaOp::HoldTone(Leg::Customer, tone)));
        let what = if hold { "hold" } else { "resume" };
        self.note(
            Some(Leg::Customer),
            format!("{what} refused by the customer's side ({status})"),
        );
    }

    // -----------------------------------------------------------------------------------
    // Side legs
    // -----------------------------------------------------------------------------------

    fn new_side(&mut self, kind: SideKind, plan: Plan, offer: Bytes, origin: Origin) -> SideId {
        let id = self.next_side;
        self.next_side += 1;
        let sip_call_id = format!("{}@{}", new_tag(), self.cfg.domain);
        self.sides.push(Side {
            id,
            kind,
            sip_call_id,
            from_tag: new_tag(),
            cseq: 0,
            offer,
            origin,
            plan,
            stage: 0,
            branches: Vec::new(),
            ring_until: self.now + self.spec.agent_ring,
            leg: None,
        });
        id
    }

    fn side_ix(&self, id: SideId) -> Option<usize> {
        self.sides.iter().position(|s| s.id == id)
    }

    fn start_monitor(
        &mut self,
        id: u64,
        monitor_id: String,
        user_id: String,
        mode: MonitorMode,
        plan: Plan,
        _now: Instant,
    ) {
        if self.monitor_mut(&monitor_id).is_some() {
            self.not_in_progress(id, "a monitor with this id exists");
            return;
        }
        // What each leg's peer sends must be decodable by the mixer.
        let mut pts = [0u8; 3];
        for leg in [Leg::Agent, Leg::Customer] {
            let pt = self.legs[ix(leg)]
                .as_ref()
                .and_then(|l| sdp_glue::first_payload_type(&l.remote_sdp));
            match pt {
                Some(pt @ (0 | 8)) => pts[ix(leg)] = pt,
                other => {
                    let what =
                        other.map_or("no audio".to_string(), |p| format!("payload type {p}"));
                    self.reply(
                        id,
                        Err(ControlError::CodecNotMixable(format!(
                            "the {} leg's codec ({what}) cannot be mixed; only G.711 can",
                            leg.as_str()
                        ))),
                    );
                    return;
                }
            }
        }
        pts[2] = pts[0];
        let kind = SideKind::Monitor {
            monitor_id: monitor_id.clone(),
            user_id,
            mode,
            attached: false,
            payload_type: pts[0],
        };
        let sid = self.new_side(kind, plan, Bytes::new(), Origin::new());
        self.out.push_back(Output::Media(MediaOp::AttachMonitor {
            side: sid,
            payload_types: pts,
            mode,
        }));
        self.reply(id, Ok(json!({"monitor_id": monitor_id})));
    }

    /// The driver attached the supervisor's ports (their advertised RTP address), or could
    /// not.
    pub(super) fn on_monitor_attached(
        &mut self,
        sid: SideId,
        r: Result<SocketAddr, String>,
        now: Instant,
    ) {
        let Some(i) = self.side_ix(sid) else { return };
        match r {
            Ok(addr) => {
                let s = &mut self.sides[i];
                let pt = match &mut s.kind {
                    SideKind::Monitor {
                        attached,
                        payload_type,
                        ..
                    }
                    | SideKind::Transfer {
                        warm:
                            Some(Warm {
                                attached,
                                payload_type,
                                ..
                            }),
                        ..
                    } => {
                        *attached = true;
                        *payload_type
                    }
                    SideKind::Transfer { warm: None, .. } => return,
                };
                s.offer = sdp_glue::g711_offer(addr, pt, &mut s.origin);
                self.side_stage(sid, 0, now);
            }
            Err(e) => {
                self.note(None, format!("monitor not started: {e}"));
                self.end_side(sid, &format!("relay: {e}"), false);
            }
        }
    }

    pub(super) fn start_transfer(
        &mut self,
        replaces: Leg,
        to: String,
        by: &'static str,
        refer: Option<ReferSub>,
        plan: Plan,
        now: Instant,
    ) {
        // The target is offered the other party's codecs, at the replaced leg's relay port:
        // the other party sees no change at all.
        let relay = self.relay[ix(replaces)];
        let mut origin = Origin::new();
        let offer = match self.legs[ix(other(replaces))].as_ref() {
            Some(o) => sdp_glue::rewrite(&o.remote_sdp, relay, &mut origin, None),
            None => sdp_glue::agent_offer(relay, &mut origin),
        };
        let offer = sdp_glue::with_direction(&offer, Direction::SendRecv, &mut origin);
        self.emit(CallEventKind::TransferStarted {
            leg: replaces,
            to: to.clone(),
            by,
        });
        let kind = SideKind::Transfer {
            replaces,
            to,
            by,
            refer,
            warm: None,
            attended: false,
        };
        let sid = self.new_side(kind, plan, offer, origin);
        self.side_stage(sid, 0, now);
    }

    /// A warm transfer: the customer is held, the target rung on a consultation port pair
    /// (see [`Warm`]).
    fn start_warm_transfer(&mut self, id: u64, to: String, plan: Plan) {
        let mut pts = [0u8; 3];
        for leg in [Leg::Agent, Leg::Customer] {
            match self.legs[ix(leg)]
                .as_ref()
                .and_then(|l| sdp_glue::first_payload_type(&l.remote_sdp))
            {
                Some(pt @ (0 | 8)) => pts[ix(leg)] = pt,
                other => {
                    let what =
                        other.map_or("no audio".to_string(), |p| format!("payload type {p}"));
                    self.reply(
                        id,
                        Err(ControlError::CodecNotMixable(format!(
                            "a warm transfer consults through the mixer; the {} leg's codec ({what}) cannot be mixed",
                            leg.as_str()
                        ))),
                    );
                    return;
                }
            }
        }
        pts[2] = pts[0];
        let held_for_it = !self.held;
        if held_for_it {
            if let Err(why) = self.set_hold(true) {
                self.not_in_progress(id, why);
                return;
            }
        }
        self.emit(CallEventKind::TransferStarted {
            leg: Leg::Agent,
            to: to.clone(),
            by: "api",
        });
        let kind = SideKind::Transfer {
            replaces: Leg::Agent,
            to: to.clone(),
            by: "api",
            refer: None,
            warm: Some(Warm {
                attached: false,
                payload_type: pts[0],
                held_for_it,
                completing: false,
            }),
            attended: false,
        };
        let sid = self.new_side(kind, plan, Bytes::new(), Origin::new());
        self.out.push_back(Output::Media(MediaOp::AttachMonitor {
            side: sid,
            payload_types: pts,
            mode: MonitorMode::Consult,
        }));
        self.reply(
            id,
            Ok(json!({"to": to, "status": "calling", "mode": "warm"})),
        );
    }

    /// Completes a warm transfer whose target is up: a re-INVITE moves the target's media to
    /// the agent's relay port with the customer's codecs; its 2xx finishes the transfer.
    fn complete_transfer(&mut self, id: u64) {
        let relay = self.relay[ix(Leg::Agent)];
        let customer_sdp = self.legs[ix(Leg::Customer)]
            .as_ref()
            .map(|c| c.remote_sdp.clone());
        let Some(i) = self.sides.iter().position(|s| {
            matches!(&s.kind, SideKind::Transfer { warm: Some(w), .. } if !w.completing)
                && s.leg.as_ref().is_some_and(|l| l.up && l.outgoing.is_none())
        }) else {
            self.not_in_progress(id, "no warm transfer whose target has answered");
            return;
        };
        let sid = self.sides[i].id;
        let s = &mut self.sides[i];
        if let SideKind::Transfer { warm: Some(w), .. } = &mut s.kind {
            w.completing = true;
        }
        let Some(l) = s.leg.as_mut() else { return };
        let offer = match &customer_sdp {
            Some(c) => sdp_glue::rewrite(c, relay, &mut l.origin, None),
            None => sdp_glue::agent_offer(relay, &mut l.origin),
        };
        let offer = sdp_glue::with_direction(&offer, Direction::SendRecv, &mut l.origin);
        let req = l.offer(Method::Invite, offer);
        let dest = l.dest;
        let tx = self.new_tx(Role::SideOffer { side: sid });
        self.note(
            Some(Leg::Agent),
            "completing the transfer: the target is moved to the agent's relay port",
        );
        self.out.push_back(Output::Send {
            tx,
            request: req,
            dest,
        });
        self.reply(id, Ok(json!({"status": "completing"})));
    }

    /// The answer to the re-INVITE moving a transfer's target to the replaced leg's relay
    /// port: of [`Self::complete_transfer`] (warm), or of an attended transfer's join.
    pub(super) fn on_side_offer(&mut self, tx: TxId, sid: SideId, ev: ClientEvent) {
        let resp = match ev {
            ClientEvent::Response(r) if r.status < 200 => return,
            ClientEvent::Response(r) => r,
            _ => {
                self.roles.remove(&tx);
                self.side_offer_failed(sid, 408);
                return;
            }
        };
        self.roles.remove(&tx);
        let Some(i) = self.side_ix(sid) else { return };
        if !resp.is_success() {
            self.side_offer_failed(sid, resp.status);
            return;
        }
        let mut s = self.sides.remove(i);
        let Some(mut leg) = s.leg.take() else { return };
        let ack = leg.dialog.ack_for_2xx(cseq_of(&resp), None);
        self.out.push_back(Output::Ack {
            request: ack,
            dest: leg.dest,
        });
        let _ = leg.dialog.receive_response(&resp);
        leg.remote_sdp = own_sdp(&resp.body);
        leg.outgoing = None;
        let SideKind::Transfer {
            replaces,
            to,
            by,
            refer,
            warm,
            attended,
        } = s.kind
        else {
            return;
        };
        if warm.is_some() {
            self.out
                .push_back(Output::Media(MediaOp::DetachMonitor(sid)));
        }
        if let Some(sub) = &refer {
            self.notify_refer(sub.leg, 200, true);
        }
        // The transferor is released; the target is that leg now, on the same relay port.
        self.send_bye(replaces, false);
        if attended {
            if let Some(key) = sdp_glue::sdes_key(&leg.local_sdp) {
                self.out.push_back(Output::Media(MediaOp::Sdes(
                    replaces,
                    key,
                    resp.body.clone(),
                )));
            }
        }
        let did = leg.dialog.id().clone();
        let dest = leg.dest;
        self.legs[ix(replaces)] = Some(leg);
        self.out.push_back(Output::RouteDialog(replaces, did));
        self.out.push_back(Output::Media(MediaOp::AllowSources(
            replaces,
            vec![dest.addr.ip()],
        )));
        self.out
            .push_back(Output::Media(MediaOp::SetPeer(replaces, resp.body.clone())));
        self.emit(CallEventKind::Transferred {
            leg: replaces,
            to,
            by,
        });
        if warm.is_some_and(|w| w.held_for_it) && self.held {
            if let Err(why) = self.set_hold(false) {
                self.note(Some(Leg::Customer), format!("not taken off hold: {why}"));
            }
        }
        if attended {
            self.resume_after_join(other(replaces));
        }
    }

    /// The re-INVITE of a transfer's target failed: a warm transfer keeps consulting; an
    /// attended one is given up (its target released, the REFER told the code).
    fn side_offer_failed(&mut self, sid: SideId, status: u16) {
        let attended = self.side_ix(sid).is_some_and(|i| {
            matches!(
                self.sides[i].kind,
                SideKind::Transfer { attended: true, .. }
            )
        });
        if !attended {
            self.complete_failed(sid, status);
            return;
        }
        if let Some(i) = self.side_ix(sid) {
            if let SideKind::Transfer { refer, .. } = &mut self.sides[i].kind {
                if let Some(sub) = refer.take() {
                    self.notify_refer(sub.leg, status, true);
                }
            }
        }
        self.end_side(
            sid,
            &format!("the target refused to be moved ({status}); the call goes on"),
            true,
        );
    }

    /// After an attended transfer: the party that stayed is taken off the hold its phone put
    /// it on (the phone that held it is gone), by a re-INVITE with `a=sendrecv`.
    fn resume_after_join(&mut self, leg: Leg) {
        if self.held {
            return; // held through the API: that hold stands
        }
        let Some(l) = self.legs[ix(leg)]
            .as_mut()
            .filter(|l| l.up && l.outgoing.is_none() && !l.incoming)
        else {
            return;
        };
        if sdp_glue::audio_direction(&l.local_sdp).is_none_or(|d| d == Direction::SendRecv) {
            return;
        }
        let sdp = sdp_glue::with_direction(&l.local_sdp, Direction::SendRecv, &mut l.origin);
        let req = l.offer(Method::Invite, sdp);
        let dest = l.dest;
        let cid = req.call_id_str();
        self.sip_event(
            leg,
            "sent",
            "INVITE (resume after the transfer: a=sendrecv)".into(),
            &cid,
        );
        self.send_offer(leg, Method::Invite, req, dest, Purpose::Realign);
    }

    fn complete_failed(&mut self, sid: SideId, status: u16) {
        if let Some(i) = self.side_ix(sid) {
            if let SideKind::Transfer { warm: Some(w), .. } = &mut self.sides[i].kind {
                w.completing = false;
            }
            if let Some(l) = self.sides[i].leg.as_mut() {
                l.outgoing = None;
            }
        }
        self.note(
            Some(Leg::Agent),
            format!("the transfer could not be completed ({status}); still consulting"),
        );
    }

    /// After a warm transfer ends without completing: the customer comes off hold.
    fn warm_undone(&mut self, warm: Option<Warm>, sid: SideId) {
        if let Some(w) = warm {
            if w.attached {
                self.out
                    .push_back(Output::Media(MediaOp::DetachMonitor(sid)));
            }
            if w.held_for_it && self.held {
                if let Err(why) = self.set_hold(false) {
                    self.note(Some(Leg::Customer), format!("not taken off hold: {why}"));
                }
            }
        }
    }

    /// INVITEs every target of stage `stage` of a side leg's plan.
    fn side_stage(&mut self, sid: SideId, stage: usize, now: Instant) {
        let Some(i) = self.side_ix(sid) else { return };
        let Some(targets) = self.sides[i].plan.get(stage).cloned() else {
            self.side_failed(sid, Some(404), "no target");
            return;
        };
        self.sides[i].stage = stage;
        let from = match &self.sides[i].kind {
            SideKind::Monitor { .. } => {
                format!("\"Monitor\" <sip:monitor@{}>", self.cfg.domain)
            }
            SideKind::Transfer { replaces, .. } => {
                // The target sees who is being handed over.
                let (f, _) = self.identity(*replaces);
                f
            }
        };
        for t in targets {
            let s = &mut self.sides[i];
            s.cseq += 1;
            let mut r = Request::new(Method::Invite, t.request_uri.clone());
            r.headers
                .add(HeaderName::From, format!("{from};tag={}", s.from_tag));
            r.headers.add(HeaderName::To, t.to.clone());
            r.headers.add(HeaderName::CallId, s.sip_call_id.clone());
            r.headers
                .add(HeaderName::CSeq, format!("{} INVITE", s.cseq));
            if let Some(c) = &t.contact {
                r.headers.add(HeaderName::Contact, format!("<{c}>"));
            }
            r.headers.add(HeaderName::Allow, ALLOW);
            r.headers.add(HeaderName::ContentType, "application/sdp");
            r.body = s.offer.clone();
            let branch = s.branches.len();
            let label = s.label();
            let tx = self.new_tx(Role::Side { side: sid, branch });
            self.note(None, format!("{label}: INVITE {} ({})", r.uri(), t.label));
            self.out.push_back(Output::Send {
                tx,
                request: r.clone(),
                dest: t.dest,
            });
            self.sides[i].branches.push(SideBranch {
                tx,
                invite: r,
                target: t,
                stage,
                final_code: None,
                provisional: false,
                challenged: false,
            });
        }
        let _ = now;
    }

    pub(super) fn on_side_event(&mut self, sid: SideId, b: usize, ev: ClientEvent, now: Instant) {
        let Some(i) = self.side_ix(sid) else { return };
        let answered = self.sides[i].leg.is_some();
        let resp = match ev {
            ClientEvent::Response(r) => r,
            ClientEvent::Timeout | ClientEvent::TransportError => {
                let Some(br) = self.sides[i].branches.get_mut(b) else {
                    return;
                };
                if br.final_code.is_some() {
                    return;
                }
                br.final_code = Some(if matches!(ev, ClientEvent::Timeout) {
                    408
                } else {
                    503
                });
                self.side_progress(sid, now);
                return;
            }
        };
        let Some(br) = self.sides[i].branches.get_mut(b) else {
            return;
        };
        if resp.status < 200 {
            br.provisional = true;
            let ringing = matches!(resp.status, 180 | 183);
            if let SideKind::Transfer {
                refer: Some(sub), ..
            } = &mut self.sides[i].kind
            {
                if ringing && !sub.ringing {
                    sub.ringing = true;
                    let leg = sub.leg;
                    self.notify_refer(leg, 180, false);
                }
            }
            return;
        }
        if resp.is_success() {
            if answered || br.final_code.is_some() {
                // Another target answered first (or a retransmission): ACK, and BYE a
                // dialog that is not the side's own.
                let own = self.sides[i].leg.as_ref().is_some_and(|l| {
                    resp.to()
                        .ok()
                        .and_then(|t| t.tag().map(|t| t == l.dialog.id().remote_tag.as_bytes()))
                        .unwrap_or(false)
                });
                let br = &self.sides[i].branches[b];
                if let Ok(mut d) = Dialog::uac(&br.invite, &resp, br.invite.uri().clone()) {
                    let dest = br.target.dest;
                    let ack = d.ack_for_2xx(cseq_of(&br.invite), None);
                    self.out.push_back(Output::Ack { request: ack, dest });
                    if !own {
                        let bye = d.new_request(Method::Bye, None);
                        let tx = self.new_tx(Role::LateBye);
                        self.out.push_back(Output::Send {
                            tx,
                            request: bye,
                            dest,
                        });
                    }
                }
                return;
            }
            br.final_code = Some(resp.status);
            self.side_answered(sid, b, resp, now);
            return;
        }
        if matches!(resp.status, 401 | 407) && !br.challenged {
            if let Some((user, pass)) = br.target.credentials.clone() {
                let mut client = DigestClient::new(user, pass);
                let uri = br.invite.uri().to_string();
                if let Ok((name, value)) =
                    client.answer_response(&resp, "INVITE", &uri, &br.invite.body)
                {
                    let s = &mut self.sides[i];
                    s.cseq += 1;
                    let br = &mut s.branches[b];
                    let mut req = br.invite.clone();
                    req.headers.remove(&HeaderName::Via);
                    req.headers
                        .set(HeaderName::CSeq, format!("{} INVITE", s.cseq));
                    req.headers.set(name, value);
                    br.challenged = true;
                    br.invite = req.clone();
                    let dest = br.target.dest;
                    let old = br.tx;
                    self.roles.remove(&old);
                    let tx = self.new_tx(Role::Side {
                        side: sid,
                        branch: b,
                    });
                    self.sides[i].branches[b].tx = tx;
                    self.out.push_back(Output::Send {
                        tx,
                        request: req,
                        dest,
                    });
                    return;
                }
            }
        }
        br.final_code = Some(resp.status);
        if resp.status >= 600 {
            self.side_failed(sid, Some(resp.status), "declined");
            return;
        }
        self.side_progress(sid, now);
    }

    /// After a target of a side leg failed: wait for the others, try the next stage, or
    /// give up.
    fn side_progress(&mut self, sid: SideId, now: Instant) {
        let Some(i) = self.side_ix(sid) else { return };
        let s = &self.sides[i];
        if s.leg.is_some() {
            return;
        }
        let stage = s.stage;
        let live = s
            .branches
            .iter()
            .any(|b| b.stage == stage && b.final_code.is_none());
        if live {
            return;
        }
        if s.plan.len() > stage + 1 {
            self.side_stage(sid, stage + 1, now);
            return;
        }
        let code = s
            .branches
            .iter()
            .filter_map(|b| b.final_code)
            .find(|c| *c == 486)
            .or_else(|| s.branches.iter().filter_map(|b| b.final_code).last());
        self.side_failed(sid, code, "no answer");
    }

    /// CANCELs every target of a side leg still ringing.
    fn cancel_side(&mut self, i: usize) {
        let txs: Vec<TxId> = self.sides[i]
            .branches
            .iter_mut()
            .filter(|b| b.final_code.is_none())
            .map(|b| {
                b.final_code = Some(487);
                b.tx
            })
            .collect();
        for tx in txs {
            self.out.push_back(Output::Cancel { tx, reason: None });
        }
    }

    /// A side leg that never got an answer.
    fn side_failed(&mut self, sid: SideId, code: Option<u16>, why: &str) {
        let Some(i) = self.side_ix(sid) else { return };
        self.cancel_side(i);
        let s = self.sides.remove(i);
        match s.kind {
            SideKind::Monitor {
                monitor_id,
                attached,
                ..
            } => {
                if attached {
                    self.out
                        .push_back(Output::Media(MediaOp::DetachMonitor(sid)));
                }
                let reason = match code {
                    Some(c) => format!("supervisor {why} ({c})"),
                    None => format!("supervisor {why}"),
                };
                self.emit(CallEventKind::MonitorEnded { monitor_id, reason });
            }
            SideKind::Transfer {
                replaces,
                to,
                by,
                refer,
                warm,
                ..
            } => {
                self.warm_undone(warm, sid);
                if let Some(sub) = refer {
                    self.notify_refer(sub.leg, code.unwrap_or(480), true);
                }
                let reason = match code {
                    Some(c) => format!("transfer target {why} ({c}); the call goes on"),
                    None => format!("transfer target {why}; the call goes on"),
                };
                self.emit(CallEventKind::TransferFailed {
                    leg: replaces,
                    to,
                    by,
                    sip_code: code,
                    reason,
                });
            }
        }
    }

    fn side_answered(&mut self, sid: SideId, b: usize, resp: Response, now: Instant) {
        let Some(i) = self.side_ix(sid) else { return };
        let br = &self.sides[i].branches[b];
        let local_contact = br
            .invite
            .contact()
            .ok()
            .flatten()
            .map(|n| n.uri)
            .unwrap_or_else(|| br.invite.uri().clone());
        let Ok(dialog) = Dialog::uac(&br.invite, &resp, local_contact) else {
            self.note(None, "2xx of a side leg without a usable dialog");
            return;
        };
        let dest = br.target.dest;
        let ack = dialog.ack_for_2xx(cseq_of(&br.invite), None);
        self.out.push_back(Output::Ack { request: ack, dest });
        self.cancel_side(i);
        let s = &mut self.sides[i];
        let leg = LegState {
            dialog,
            dest,
            local_sdp: s.offer.clone(),
            remote_sdp: own_sdp(&resp.body),
            origin: s.origin.clone(),
            refresh_at: None,
            expires_at: None,
            session_expires: None,
            up: true,
            outgoing: None,
            incoming: false,
        };
        if let SideKind::Transfer {
            warm: Some(_), to, ..
        } = &s.kind
        {
            // Consultation: the target and the agent hear each other; complete or cancel
            // comes from the API.
            let to = to.clone();
            let did = leg.dialog.id().clone();
            s.leg = Some(leg);
            self.out.push_back(Output::RouteSideDialog(sid, did));
            self.out
                .push_back(Output::Media(MediaOp::MonitorPeer(sid, resp.body.clone())));
            self.note(
                Some(Leg::Agent),
                format!("transfer target {to} answered: consulting with the agent, the customer on hold"),
            );
            return;
        }
        match &s.kind {
            SideKind::Monitor {
                monitor_id,
                user_id,
                mode,
                ..
            } => {
                let (monitor_id, user_id, mode) = (monitor_id.clone(), user_id.clone(), *mode);
                let did = leg.dialog.id().clone();
                s.leg = Some(leg);
                self.out.push_back(Output::RouteSideDialog(sid, did));
                self.out
                    .push_back(Output::Media(MediaOp::MonitorPeer(sid, resp.body.clone())));
                self.emit(CallEventKind::MonitorStarted {
                    monitor_id,
                    user_id,
                    mode: mode.as_str(),
                });
            }
            SideKind::Transfer { .. } => {
                let s = self.sides.remove(i);
                let SideKind::Transfer {
                    replaces,
                    to,
                    by,
                    refer,
                    ..
                } = s.kind
                else {
                    return;
                };
                if let Some(sub) = &refer {
                    self.notify_refer(sub.leg, 200, true);
                }
                // The replaced party is released; the target is that leg now.
                self.send_bye(replaces, false);
                let did = leg.dialog.id().clone();
                self.legs[ix(replaces)] = Some(leg);
                self.out.push_back(Output::RouteDialog(replaces, did));
                self.out.push_back(Output::Media(MediaOp::AllowSources(
                    replaces,
                    vec![dest.addr.ip()],
                )));
                self.out
                    .push_back(Output::Media(MediaOp::SetPeer(replaces, resp.body.clone())));
                self.emit(CallEventKind::Transferred {
                    leg: replaces,
                    to,
                    by,
                });
                let _ = now;
            }
        }
    }

    /// Ends a side leg: CANCEL while it rings, BYE once up; a monitor's ports are freed.
    pub(super) fn end_side(&mut self, sid: SideId, reason: &str, bye: bool) {
        let Some(i) = self.side_ix(sid) else { return };
        self.cancel_side(i);
        let mut s = self.sides.remove(i);
        if let Some(l) = s.leg.as_mut().filter(|l| l.up && bye) {
            l.up = false;
            let req = l.dialog.new_request(Method::Bye, None);
            let dest = l.dest;
            let tx = self.new_tx(Role::LateBye);
            self.out.push_back(Output::Send {
                tx,
                request: req,
                dest,
            });
        }
        match s.kind {
            SideKind::Monitor {
                monitor_id,
                attached,
                ..
            } => {
                if attached {
                    self.out
                        .push_back(Output::Media(MediaOp::DetachMonitor(sid)));
                }
                self.emit(CallEventKind::MonitorEnded {
                    monitor_id,
                    reason: reason.to_string(),
                });
            }
            SideKind::Transfer {
                replaces,
                to,
                by,
                refer,
                warm,
                ..
            } => {
                self.warm_undone(warm, sid);
                if let Some(sub) = refer {
                    self.notify_refer(sub.leg, 487, true);
                }
                self.emit(CallEventKind::TransferFailed {
                    leg: replaces,
                    to,
                    by,
                    sip_code: None,
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// The call is ending: every side leg goes with it.
    pub(super) fn end_all_sides(&mut self) {
        let ids: Vec<SideId> = self.sides.iter().map(|s| s.id).collect();
        for sid in ids {
            self.end_side(sid, "the call ended", true);
        }
    }

    pub(super) fn side_timers(&mut self, now: Instant) {
        let due: Vec<SideId> = self
            .sides
            .iter()
            .filter(|s| s.leg.is_none() && s.ring_until <= now && !s.branches.is_empty())
            .map(|s| s.id)
            .collect();
        for sid in due {
            self.side_failed(sid, Some(408), "did not answer in time");
        }
    }

    pub(super) fn side_deadline(&self) -> Option<Instant> {
        self.sides
            .iter()
            .filter(|s| s.leg.is_none() && !s.branches.is_empty())
            .map(|s| s.ring_until)
            .min()
    }

    /// A request within a side leg's dialog (the supervisor hangs up, refreshes).
    pub(super) fn on_side_request(&mut self, inc: IncomingRequest, sid: SideId) {
        let Some(i) = self.side_ix(sid) else {
            self.respond(&inc, 481);
            return;
        };
        let Some(l) = self.sides[i].leg.as_mut() else {
            self.respond(&inc, 481);
            return;
        };
        if l.dialog.receive_request(&inc.request).is_err() {
            self.respond(&inc, 500);
            return;
        }
        match inc.request.method {
            Method::Bye => {
                l.up = false;
                l.dialog.terminate();
                self.respond(&inc, 200);
                let who = match self.sides[i].kind {
                    SideKind::Monitor { .. } => "the supervisor hung up",
                    SideKind::Transfer { .. } => "the transfer target hung up",
                };
                self.end_side(sid, who, false);
            }
            Method::Invite | Method::Update => {
                if !inc.request.body.is_empty() {
                    l.remote_sdp = own_sdp(&inc.request.body);
                    l.local_sdp =
                        sdp_glue::mirror_direction(&inc.request.body, &l.local_sdp, &mut l.origin);
                    self.out.push_back(Output::Media(MediaOp::MonitorPeer(
                        sid,
                        inc.request.body.clone(),
                    )));
                }
                let Some(l) = self.sides[i].leg.as_ref() else {
                    return;
                };
                let mut r = Response::for_request(&inc.request, 200);
                r.headers.add(
                    HeaderName::Contact,
                    format!("<{}>", l.dialog.local_contact()),
                );
                r.headers.add(HeaderName::ContentType, "application/sdp");
                r.body = l.local_sdp.clone();
                self.respond_with(inc.key.clone(), r);
            }
            Method::Ack => {}
            Method::Options | Method::Info => self.respond(&inc, 200),
            _ => {
                let mut r = Response::for_request(&inc.request, 405);
                r.headers.add(HeaderName::Allow, ALLOW);
                self.respond_with(inc.key.clone(), r);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // REFER (RFC 3515)
    // -----------------------------------------------------------------------------------

    /// A REFER from leg `from`: the transferor is that leg's party; the other party is to be
    /// bridged with the Refer-To target.
    pub(super) fn on_refer(&mut self, inc: IncomingRequest, from: Leg) {
        let refer_to = inc
            .request
            .header_str(&HeaderName::ReferTo)
            .unwrap_or_default();
        let uri = refer_to
            .trim()
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or_default()
            .to_string();
        if uri.is_empty() || inc.request.headers.count(&HeaderName::ReferTo) != 1 {
            self.respond(&inc, 400);
            return;
        }
        if self.phase != Phase::Connected {
            self.respond(&inc, 403);
            return;
        }
        if self.transfer_in_flight() {
            self.respond(&inc, 491);
            return;
        }
        // Attended transfer: Replaces (RFC 3891) names the phone's dialog of another call.
        let replaces = match replaces_of(&uri) {
            Some(Err(())) => {
                self.note(Some(from), "REFER with a malformed Replaces refused (400)");
                self.respond(&inc, 400);
                return;
            }
            Some(Ok(r)) => Some(r),
            None => None,
        };
        // The user part of the Refer-To URI: an extension or a dial string.
        let user = uri
            .split_once(':')
            .map(|(_, r)| r)
            .unwrap_or(&uri)
            .split(['@', ';', '?'])
            .next()
            .unwrap_or_default()
            .to_string();
        let user = percent_decode(&user);
        if user.is_empty() && replaces.is_none() {
            self.respond(&inc, 400);
            return;
        }
        let referred_by = inc
            .request
            .header_str(&HeaderName::ReferredBy)
            .unwrap_or_default();
        let mut r = Response::for_request(&inc.request, 202);
        if let Some(l) = self.legs[ix(from)].as_ref() {
            r.headers.add(
                HeaderName::Contact,
                format!("<{}>", l.dialog.local_contact()),
            );
        }
        self.respond_with(inc.key.clone(), r);
        let by = if referred_by.is_empty() {
            String::new()
        } else {
            format!(", Referred-By {referred_by}")
        };
        if let Some(target) = replaces {
            self.note(
                Some(from),
                format!(
                    "REFER to {user} with Replaces (attended transfer: joins call-id {}) accepted (202){by}",
                    target.call_id
                ),
            );
            self.notify_refer(from, 100, false);
            let id = self.next_side;
            self.next_side += 1;
            let until = self.now + self.cfg.timers.timeout();
            self.pending_joins.push((id, from, user, until));
            self.out.push_back(Output::LookupReplaces {
                id,
                replaces: target,
            });
            return;
        }
        self.note(Some(from), format!("REFER to {user} accepted (202){by}"));
        self.notify_refer(from, 100, false);
        let id = self.next_side;
        self.pending_refers.push((id, from, user.clone()));
        self.next_side += 1;
        self.out.push_back(Output::LookupTransfer { id, to: user });
    }

    /// The driver's answer to [`Output::LookupTransfer`]: the target's plan, or the code
    /// of its refusal (403 for a destination the account may not call).
    pub(super) fn on_transfer_targets(
        &mut self,
        id: SideId,
        plan: Result<Plan, (u16, String)>,
        now: Instant,
    ) {
        let Some(p) = self.pending_refers.iter().position(|(i, ..)| *i == id) else {
            return;
        };
        let (_, from, to) = self.pending_refers.remove(p);
        if self.phase != Phase::Connected {
            self.notify_refer(from, 487, true);
            return;
        }
        match plan {
            Ok(plan) => {
                let replaces = from;
                self.start_transfer(
                    replaces,
                    to,
                    "phone",
                    Some(ReferSub {
                        leg: from,
                        ringing: false,
                    }),
                    plan,
                    now,
                );
            }
            Err((code, why)) => {
                self.notify_refer(from, code, true);
                self.emit(CallEventKind::TransferFailed {
                    leg: from,
                    to,
                    by: "phone",
                    sip_code: Some(code),
                    reason: format!("transfer refused: {why}; nothing dialled"),
                });
            }
        }
    }

    /// Another call's attended transfer names our dialog `dialog` of leg `phone` (the
    /// transferor's phone): the other leg goes to call `to_call`, the phone's leg is
    /// released and this call ends.
    pub(super) fn on_hand_over(
        &mut self,
        id: SideId,
        phone: Leg,
        dialog: DialogId,
        to_call: String,
        now: Instant,
    ) {
        let keep = other(phone);
        let refusal = if self.phase != Phase::Connected {
            Some((481, "the call of that dialog is not connected".to_string()))
        } else if self.legs[ix(phone)]
            .as_ref()
            .is_none_or(|l| !l.up || *l.dialog.id() != dialog)
        {
            Some((
                481,
                "that dialog is no longer a leg of its call".to_string(),
            ))
        } else if self.transfer_in_flight() {
            Some((491, "a transfer of the other call is under way".to_string()))
        } else if self.legs[ix(keep)]
            .as_ref()
            .is_none_or(|l| !l.up || l.outgoing.is_some() || l.incoming)
        {
            Some((491, "an offer is in flight on the other call".to_string()))
        } else {
            None
        };
        if let Some((code, why)) = refusal {
            self.note(
                Some(phone),
                format!("attended transfer from call {to_call} refused ({code}): {why}"),
            );
            self.out.push_back(Output::HandedOver {
                to_call,
                id,
                result: Err((code, why)),
            });
            return;
        }
        let Some(state) = self.legs[ix(keep)].take() else {
            return;
        };
        let channel = if keep == Leg::Customer {
            self.trunk_channel.take()
        } else {
            None
        };
        let label = format!("the {} of call {}", keep.as_str(), self.spec.call_id);
        self.out.push_back(Output::HandedOver {
            to_call: to_call.clone(),
            id,
            result: Ok(HandedLeg {
                state: Box::new(state),
                channel,
                label,
            }),
        });
        self.note(
            Some(keep),
            format!(
                "attended transfer: the {} joins call {to_call}; the phone's leg is released",
                keep.as_str()
            ),
        );
        self.hang_up_all(
            outcome(
                CallStatus::Completed,
                Some(phone),
                None,
                &format!(
                    "attended transfer: the {} was joined to call {to_call}",
                    keep.as_str()
                ),
            ),
            now,
        );
    }

    /// The other call's answer to a REFER with `Replaces`: its leg, moved to the
    /// transferor's relay port by a re-INVITE; or the refusal, told to the transferor.
    pub(super) fn on_joined(
        &mut self,
        id: SideId,
        r: Result<HandedLeg, (u16, String)>,
        _now: Instant,
    ) {
        let Some(p) = self.pending_joins.iter().position(|(i, ..)| *i == id) else {
            // The call ended meanwhile: a leg handed over is released.
            if let Ok(h) = r {
                self.release_handed(h);
            }
            return;
        };
        let (_, from, to, _) = self.pending_joins.remove(p);
        let h = match r {
            Ok(h) if self.phase == Phase::Connected => h,
            Ok(h) => {
                self.release_handed(h);
                self.notify_refer(from, 487, true);
                return;
            }
            Err((code, why)) => {
                self.notify_refer(from, code, true);
                self.emit(CallEventKind::TransferFailed {
                    leg: from,
                    to,
                    by: "phone",
                    sip_code: Some(code),
                    reason: format!("attended transfer refused: {why}; the calls go on"),
                });
                return;
            }
        };
        let HandedLeg {
            state,
            channel,
            label,
        } = h;
        let mut leg = *state;
        self.joined_channels.extend(channel);
        // The target is offered the other party's codecs at the transferor's relay port, in
        // its own dialog's SDP session (the next version), with the SDES key it has (a
        // trunk with `srtp = "sdes"` stays encrypted).
        let relay = self.relay[ix(from)];
        let sdes = sdp_glue::sdes_key(&leg.local_sdp);
        let offer = match self.legs[ix(other(from))].as_ref() {
            Some(o) => sdp_glue::rewrite(&o.remote_sdp, relay, &mut leg.origin, sdes.as_ref()),
            None => sdp_glue::agent_offer(relay, &mut leg.origin),
        };
        let offer = sdp_glue::with_direction(&offer, Direction::SendRecv, &mut leg.origin);
        let req = leg.offer(Method::Invite, offer.clone());
        let dest = leg.dest;
        let did = leg.dialog.id().clone();
        self.emit(CallEventKind::TransferStarted {
            leg: from,
            to: to.clone(),
            by: "phone",
        });
        let kind = SideKind::Transfer {
            replaces: from,
            to,
            by: "phone",
            refer: Some(ReferSub {
                leg: from,
                ringing: true,
            }),
            warm: None,
            attended: true,
        };
        let origin = leg.origin.clone();
        let sid = self.new_side(kind, Vec::new(), offer, origin);
        let tx = self.new_tx(Role::SideOffer { side: sid });
        leg.outgoing = Some(tx);
        if let Some(i) = self.side_ix(sid) {
            self.sides[i].sip_call_id = did.call_id.clone();
            self.sides[i].leg = Some(leg);
        }
        self.out.push_back(Output::RouteSideDialog(sid, did));
        self.note(
            Some(from),
            format!(
                "attended transfer: {label} joins this call; re-INVITE to the {} relay port",
                from.as_str()
            ),
        );
        self.out.push_back(Output::Send {
            tx,
            request: req,
            dest,
        });
    }

    /// A REFER with `Replaces` whose other call never answered (it ended meanwhile): given
    /// up after `64*T1`, NOTIFY 408; a leg that comes later is released.
    pub(super) fn join_timers(&mut self, now: Instant) {
        while let Some(p) = self.pending_joins.iter().position(|j| j.3 <= now) {
            let (_, from, to, _) = self.pending_joins.remove(p);
            self.notify_refer(from, 408, true);
            self.emit(CallEventKind::TransferFailed {
                leg: from,
                to,
                by: "phone",
                sip_code: Some(408),
                reason: "attended transfer: the other call did not answer; the call goes on".into(),
            });
        }
    }

    /// A leg handed over that this call cannot take: released with BYE.
    pub(super) fn release_handed(&mut self, h: HandedLeg) {
        let mut l = *h.state;
        if !l.up {
            return;
        }
        l.up = false;
        let req = l.dialog.new_request(Method::Bye, None);
        let tx = self.new_tx(Role::LateBye);
        self.note(
            None,
            format!("{} released: this call could not take it", h.label),
        );
        self.out.push_back(Output::Send {
            tx,
            request: req,
            dest: l.dest,
        });
    }

    /// A NOTIFY of the implicit `refer` subscription (RFC 3515 §2.4.4) in `leg`'s dialog.
    fn notify_refer(&mut self, leg: Leg, status: u16, last: bool) {
        let Some(l) = self.legs[ix(leg)].as_mut().filter(|l| l.up) else {
            return;
        };
        let body = Bytes::from(sipfrag(status));
        let mut req = l
            .dialog
            .new_request(Method::Notify, Some(("message/sipfrag;version=2.0", body)));
        req.headers.add(HeaderName::Event, "refer");
        req.headers.add(
            HeaderName::Other(Bytes::from_static(b"Subscription-State")),
            if last {
                "terminated;reason=noresource".to_string()
            } else {
                "active;expires=60".to_string()
            },
        );
        let dest = l.dest;
        let cid = req.call_id_str();
        self.sip_event(
            leg,
            "sent",
            format!("NOTIFY (refer: {})", sipfrag(status).trim_end()),
            &cid,
        );
        let tx = self.new_tx(Role::LateBye);
        self.out.push_back(Output::Send {
            tx,
            request: req,
            dest,
        });
    }
}

/// `%xx` escapes of a URI's user part decoded (`%2B1555…` → `+1555…`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
