//! One click-to-call as a sans-IO state machine: both legs, their forks, the in-dialog
//! traffic between them, and every timer of the call.
//!
//! The machine does no I/O and reads no clock. It is fed [`Input`]s (the responses of the
//! client transactions it started, in-dialog requests, the targets its driver looked up, API
//! commands) and [`CallMachine::handle_timeout`] with the time; it is polled for
//! [`Output`]s (requests to send, CANCELs, ACKs, answers, relay changes, call events, the
//! outcome) and for its next deadline. The driver (`calls::driver`) is a thin task that
//! carries these to and from the endpoint, the relay and the call hooks.
//!
//! ```text
//!   (an INVITE we received: the caller's leg is a server transaction, see `incoming`;
//!    the call starts at Lookup of the other leg, and that leg's answer connects it)
//!
//!              Lookup(agent) ──targets──► Ringing(agent): INVITE every target at once
//!                                           │ first 2xx: ACK it, CANCEL the others
//!                                           │ all rejected / ring time over / hang-up ──► Done
//!                                           ▼ (with agent confirm: Confirm — the agent
//!                                           │  hears the prompt; DTMF 1 goes on, no digit in
//!                                           │  time ends the call no-answer, leg agent)
//!              Lookup(customer) ─targets─► Ringing(customer): the stages of the plan one
//!                                           │ after another (trunk failover); the targets
//!                                           │ of a stage at once; 401/407 answered once
//!                                           │ rejected / ring time over / agent BYE /
//!                                           │ hang-up ──► Ending (BYE the agent)
//!                                           ▼ 2xx: ACK, bridge
//!                                        Connected: BYE from either side, hang-up, media or
//!                                           │ session time-out ──► Ending (BYE the others)
//!                                           ▼
//!                                        Ending: every BYE answered or timed out
//!                                           ▼
//!                                        Done: the outcome is out; the machine lingers only
//!                                           while an INVITE of it may still be answered
//!                                           (a late 2xx is ACKed and BYEd), at most 64*T1
//! ```
//!
//! Timers, all derived from the configured T1/T2/T4: the agent and customer ring times (the
//! call's own), a target's INVITE time-out before failing over (the trunk's), the session
//! refresh and expiry (RFC 4028), `64*T1` for an in-dialog INVITE that got a provisional
//! response and nothing more, for the BYEs of an ending call, and for the lingering after
//! the end. SIP retransmissions live in sip-core's transactions.
//!
//! Glare (RFC 3261 §14): an offer from a leg while an INVITE of ours is pending on it gets
//! 491; a second offer from a leg whose first is still pending gets 500 with Retry-After.

use bytes::Bytes;
use sip_core::auth::DigestClient;
use sip_core::dialog::{Dialog, DialogId};
use sip_core::endpoint::{new_tag, ClientEvent, Destination, IncomingRequest, ServerKey};
use sip_core::map::Map;
use sip_core::message::{HeaderAccess, HeaderName, Method, Request, Response, Uri};
use sip_core::transaction::TimerConfig;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use store::CallStatus;

use super::sdp_glue::{self, Origin};
use super::{AgentTarget, CallEventKind, CallSpec, CustomerTarget, Leg, Outcome};
use crate::capabilities::ALLOW;

/// A client transaction of the call, as the machine names it.
pub(crate) type TxId = u64;

/// Where one INVITE of a leg goes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) request_uri: Uri,
    /// The To header value.
    pub(crate) to: String,
    pub(crate) dest: Destination,
    /// Our Contact URI toward this destination.
    pub(crate) contact: Option<Uri>,
    /// Credentials for a target that challenges (a trunk).
    pub(crate) credentials: Option<(String, String)>,
    /// A label for the timeline (device name, trunk name and address).
    pub(crate) label: String,
    /// Given up when no provisional response came within this time (the next stage is tried).
    pub(crate) invite_timeout: Option<Duration>,
    /// Final answers after which the next stage is tried; any other ends the leg.
    pub(crate) failover_codes: Vec<u16>,
    /// A trunk's target: its channel is taken before the INVITE, and it hears what the
    /// INVITE came to (health, `503` + `Retry-After`, metrics; see `crate::trunks`).
    pub(crate) trunk: Option<crate::trunks::call_glue::TrunkAttempt>,
    /// SDES toward this target (a trunk with `srtp = "sdes"`): our key, offered in
    /// `a=crypto`; the relay encrypts what it sends to the target with it.
    pub(crate) sdes: Option<media::srtp::SrtpKey>,
    /// A browser (a device registered over WebSocket): the offer is WebRTC's
    /// (`UDP/TLS/RTP/SAVPF`, ICE-lite, DTLS-SRTP) and the relay ends ICE and DTLS on the leg.
    pub(crate) webrtc: Option<WebRtcOffer>,
    /// Route headers of the INVITE, in order (RFC 3327: the Path a phone registered
    /// through); `dest` is then the first of them. Empty for a direct target.
    pub(crate) route: Vec<String>,
}

/// What a WebRTC offer to a browser carries: the relay leg's ICE credentials (one set per
/// leg: every browser of a fork gets the same) and the relay's DTLS fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WebRtcOffer {
    pub(crate) ice: media::webrtc::IceCredentials,
    pub(crate) fingerprint: media::webrtc::Fingerprint,
}

/// The targets of one leg: stages tried one after another (failover); the targets of one
/// stage are rung at once (a fork).
pub(crate) type Plan = Vec<Vec<Target>>;

/// What the machine needs to know of the server.
#[derive(Debug, Clone)]
pub(crate) struct MachineConfig {
    /// The SIP domain (From host of our requests).
    pub(crate) domain: String,
    /// Session-Expires we ask for (RFC 4028), seconds.
    pub(crate) session_expires: u32,
    pub(crate) timers: TimerConfig,
    /// The relay's DTLS fingerprint, for WebRTC answers to a browser that calls (`None`:
    /// no DTLS identity, browsers' offers get plain answers they will refuse).
    pub(crate) dtls_fingerprint: Option<media::webrtc::Fingerprint>,
}

/// What the machine is told.
#[derive(Debug)]
pub(crate) enum Input {
    /// The driver's answer to [`Output::Lookup`].
    Targets(Leg, Result<Plan, Outcome>),
    /// A response to, or the failure of, one of the call's client transactions.
    Tx(TxId, ClientEvent),
    /// The transaction has ended: nothing more comes from it.
    TxEnded(TxId),
    /// A request within one of the call's dialogs.
    Request(Box<IncomingRequest>, Leg),
    /// A 2xx to one of our INVITEs that no transaction took any more.
    Stray(Box<Response>),
    /// The caller of the incoming leg CANCELled its INVITE (the CANCEL is answered 200).
    Cancelled,
    /// The ACK for our 2xx to the incoming leg's INVITE.
    Ack(Leg, Bytes),
    /// A DTMF digit from a leg (an RFC 4733 event seen by the relay).
    Dtmf(Leg, char),
    /// The call's recording stopped early (a full disk...): the call goes on.
    RecordingStopped(String),
    Hangup,
    Shutdown,
    MediaTimeout,
    /// A live command (see `control`), numbered: its answer is [`Output::Reply`].
    Command(u64, control::Command),
    /// A live command from the API, before the driver looked its target up (never reaches
    /// the machine).
    Control(
        crate::calls::LiveCommand,
        tokio::sync::oneshot::Sender<Result<serde_json::Value, crate::calls::ControlError>>,
    ),
    /// The driver's answer to [`MediaOp::AttachMonitor`]: the supervisor's relay address.
    MonitorAttached(control::SideId, Result<SocketAddr, String>),
    /// The driver's answer to [`Output::LookupTransfer`].
    TransferTargets(control::SideId, Result<Plan, (u16, String)>),
    /// A request within a side leg's dialog (a supervisor's BYE).
    SideRequest(Box<IncomingRequest>, control::SideId),
    /// Another call's REFER with `Replaces` named this call's dialog `dialog` (leg `leg`, the
    /// transferor's phone): hand the other leg over to call `to_call` and end
    /// (answer with [`Output::HandedOver`]).
    HandOver {
        id: control::SideId,
        leg: Leg,
        dialog: DialogId,
        to_call: String,
    },
    /// The answer to [`Output::LookupReplaces`]: the leg handed over by the other call, or
    /// the code of the refusal (481: no such dialog).
    Joined(control::SideId, Result<control::HandedLeg, (u16, String)>),
    /// A leg this call handed over that the other call could not take any more (it had
    /// ended): released with BYE.
    Returned(control::HandedLeg),
}

/// A change to the call's relay session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MediaOp {
    /// The addresses a leg's peer signals from (RTP Bleed: media only from these and its SDP).
    AllowSources(Leg, Vec<IpAddr>),
    /// The SDP a leg's peer sent: where its media goes.
    SetPeer(Leg, Bytes),
    /// SRTP on a leg keyed by SDES: our key, and the peer's SDP with its `a=crypto`.
    Sdes(Leg, media::srtp::SrtpKey, Bytes),
    /// WebRTC on a leg (ICE-lite and DTLS-SRTP with these credentials), or plain again.
    WebRtc(Leg, Option<media::webrtc::IceCredentials>),
    /// The answer of a WebRTC leg's browser: its `a=fingerprint` is what its DTLS
    /// certificate must match.
    WebRtcAnswer(Leg, Bytes),
    /// Start relaying.
    Start,
    /// Stop (or resume) relaying what this leg's party says.
    Mute(Leg, bool),
    /// Play the hold tone into the leg (its peer's SDP: the codec), or stop it (`None`).
    HoldTone(Leg, Option<Bytes>),
    /// Give the relay session a supervisor's port pair and mixer; answer with
    /// [`Input::MonitorAttached`]. Payload types: agent, customer, supervisor.
    AttachMonitor {
        side: control::SideId,
        payload_types: [u8; 3],
        mode: media::MonitorMode,
    },
    /// The SDP of the supervisor's phone.
    MonitorPeer(control::SideId, Bytes),
    MonitorMode(control::SideId, media::MonitorMode),
    DetachMonitor(control::SideId),
    /// Play the confirm prompt into the leg, and report the DTMF it sends; the SDP is what
    /// its peer answered (the prompt's codec, the telephone-event payload type).
    Confirm(Leg, Bytes),
    /// Stop the confirm prompt of the leg (and its DTMF reports).
    EndConfirm(Leg),
    /// Record both legs from now (the call is connected and asks for it).
    Record,
}

/// What the machine asks for.
#[derive(Debug)]
pub(crate) enum Output {
    /// Look up the targets of a leg; answer with [`Input::Targets`].
    Lookup(Leg),
    /// Send a request in a new client transaction `tx`.
    Send {
        tx: TxId,
        request: Request,
        dest: Destination,
    },
    /// CANCEL the INVITE of transaction `tx`, with a `Reason` when given.
    Cancel {
        tx: TxId,
        reason: Option<Bytes>,
    },
    /// Send an ACK for a 2xx (outside any transaction).
    Ack {
        request: Request,
        dest: Destination,
    },
    /// Answer a request through its server transaction.
    Respond {
        key: ServerKey,
        response: Response,
    },
    Media(MediaOp),
    Event(CallEventKind),
    /// Route this SIP Call-ID's stray responses to the call.
    RouteCallId(Leg, String),
    /// Route this dialog's requests to the call.
    RouteDialog(Leg, DialogId),
    /// The call's one outcome (the driver closes the relay and emits `Ended` with its stats).
    End(Outcome),
    /// The answer to [`Input::Command`] number `.0`.
    Reply(u64, Result<serde_json::Value, crate::calls::ControlError>),
    /// Route a side leg's dialog to the call.
    RouteSideDialog(control::SideId, DialogId),
    /// Look up a REFER's target (dial plan and the account's guards); answer with
    /// [`Input::TransferTargets`].
    LookupTransfer {
        id: control::SideId,
        to: String,
    },
    /// Find the call that owns the dialog a REFER's `Replaces` names (RFC 3891: Call-ID,
    /// to-tag and from-tag as the transferor's phone sees them) and ask it for the other
    /// leg ([`Input::HandOver`]); answer with [`Input::Joined`].
    LookupReplaces {
        id: control::SideId,
        replaces: control::ReplacesTarget,
    },
    /// This call's answer to [`Input::HandOver`], for call `to_call`.
    HandedOver {
        to_call: String,
        id: control::SideId,
        result: Result<control::HandedLeg, (u16, String)>,
    },
}

/// An INVITE of a fork.
struct Branch {
    leg: Leg,
    /// The stage of the leg's plan it belongs to.
    stage: usize,
    tx: TxId,
    invite: Request,
    target: Target,
    sent_at: Instant,
    provisional: bool,
    final_code: Option<u16>,
    q850: Option<u16>,
    challenged: bool,
    /// A CANCEL was asked for.
    cancelled: bool,
}

/// The ringing of one leg.
struct Fork {
    leg: Leg,
    plan: Plan,
    stage: usize,
    sip_call_id: String,
    from_tag: String,
    cseq: u32,
    offer: Bytes,
    origin: Origin,
    /// What the customer's offer read of the agent's answer, for the realignment when the
    /// customer answers.
    agent_accepted: Option<sdp_glue::AgentAccepted>,
    ring_until: Instant,
    rang: bool,
    early: bool,
    /// The channel of the trunk of the stage in flight.
    channel: Option<crate::trunks::ChannelGuard>,
    /// Trunks skipped because they were at their call limit.
    at_limit: Vec<String>,
}

/// An established leg.
struct LegState {
    dialog: Dialog,
    dest: Destination,
    /// The SDP we last sent on this leg.
    local_sdp: Bytes,
    /// The SDP the peer last sent.
    remote_sdp: Bytes,
    origin: Origin,
    /// RFC 4028: when we must refresh (we are the refresher), or when the peer must have.
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
    session_expires: Option<u32>,
    /// Still up (no BYE either way yet).
    up: bool,
    /// Our INVITE/UPDATE pending on this leg.
    outgoing: Option<TxId>,
    /// The leg's own offer we have not answered yet.
    incoming: bool,
}

/// Why an in-dialog request of ours was sent.
enum Purpose {
    /// A session refresh (RFC 4028).
    Refresh,
    /// The agent re-offered the customer's codecs.
    Realign,
    /// Hold (`true`) or resume the customer.
    Hold { hold: bool },
    /// An offer passed through from the other leg, to be answered there.
    Pass {
        from: Leg,
        inc: Box<IncomingRequest>,
    },
}

/// What one of the call's client transactions is for.
enum Role {
    Branch(usize),
    /// A BYE of an established leg; `ending`: the call's outcome waits for it.
    Bye {
        leg: Leg,
        ending: bool,
    },
    /// The BYE of a late 2xx of a fork (a branch that lost).
    LateBye,
    /// Our INVITE or UPDATE on an established leg.
    Offer {
        leg: Leg,
        method: Method,
        purpose: Purpose,
        until: Instant,
        answered: bool,
    },
    /// An INFO passed through; its answer goes back to `inc`.
    Info {
        inc: Box<IncomingRequest>,
    },
    /// An INVITE of a side leg (monitor, transfer target).
    Side {
        side: control::SideId,
        branch: usize,
    },
    /// The re-INVITE completing a warm transfer.
    SideOffer {
        side: control::SideId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Lookup(Leg),
    Ringing(Leg),
    /// The agent answered and hears the confirm prompt; the customer waits for its `1`.
    Confirm,
    Connected,
    Ending,
    Done,
}

/// One click-to-call. See the module documentation.
pub(crate) struct CallMachine {
    /// Shared with the driver.
    spec: std::sync::Arc<CallSpec>,
    cfg: MachineConfig,
    relay: [SocketAddr; 2],
    phase: Phase,
    fork: Option<Fork>,
    branches: Vec<Branch>,
    legs: [Option<LegState>; 2],
    roles: Map<TxId, Role>,
    next_tx: TxId,
    out: VecDeque<Output>,
    answered_at: Option<Instant>,
    /// The outcome decided, waiting for the BYEs of `Ending`.
    outcome: Option<Outcome>,
    /// `Ending` gives up waiting for BYE answers at this time.
    ending_until: Option<Instant>,
    /// `Done` stops lingering at this time.
    linger_until: Option<Instant>,
    /// The time of the input being handled.
    now: Instant,
    /// The channel of the trunk the customer answered through, held until the call ends.
    trunk_channel: Option<crate::trunks::ChannelGuard>,
    /// The leg that called us (a server transaction), when the call started from an INVITE.
    /// Boxed: most calls have none, and the machine lives as long as its call.
    incoming: Option<Box<Incoming>>,
    /// The customer is on hold (by the API).
    held: bool,
    /// Legs muted by the API (agent, customer).
    muted: [bool; 2],
    /// Third parties: a supervisor, a transfer target (see `control`).
    sides: Vec<control::Side>,
    next_side: control::SideId,
    /// REFERs whose target is being looked up: (id, transferor's leg, target).
    pending_refers: Vec<(control::SideId, Leg, String)>,
    /// REFERs with `Replaces` waiting for the other call's leg: (id, transferor's leg,
    /// target, given up at).
    pending_joins: Vec<(control::SideId, Leg, String, Instant)>,
    /// Trunk channels of legs joined into this call from another (attended transfer), held
    /// until the call ends.
    joined_channels: Vec<crate::trunks::ChannelGuard>,
    /// Agent confirm: no `1` by this time ends the call.
    confirm_until: Option<Instant>,
}

fn ix(leg: Leg) -> usize {
    match leg {
        Leg::Agent => 0,
        Leg::Customer => 1,
    }
}

fn other(leg: Leg) -> Leg {
    match leg {
        Leg::Agent => Leg::Customer,
        Leg::Customer => Leg::Agent,
    }
}

pub(crate) fn outcome(
    status: CallStatus,
    leg: Option<Leg>,
    sip_code: Option<u16>,
    reason: &str,
) -> Outcome {
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

fn status_line(r: &Response) -> String {
    format!("{} {}", r.status, String::from_utf8_lossy(&r.reason))
}

/// The SDP a peer sent, in a buffer of its own: the message it came in (the whole datagram)
/// is not kept for as long as the leg lasts.
fn own_sdp(body: &Bytes) -> Bytes {
    Bytes::copy_from_slice(body)
}

fn cseq_of(m: &impl HeaderAccess) -> u32 {
    m.cseq().map(|c| c.seq).unwrap_or(1)
}

const COMPLETED_ELSEWHERE: &[u8] = b"SIP;cause=200;text=\"Call completed elsewhere\"";

impl CallMachine {
    /// A call whose relay session has these advertised addresses (agent leg, customer leg).
    /// Its first output asks for the agent's targets.
    pub(crate) fn new(
        spec: impl Into<std::sync::Arc<CallSpec>>,
        cfg: MachineConfig,
        relay: [SocketAddr; 2],
        now: Instant,
    ) -> CallMachine {
        let mut m = CallMachine {
            spec: spec.into(),
            cfg,
            relay,
            phase: Phase::Lookup(Leg::Agent),
            fork: None,
            branches: Vec::new(),
            legs: [None, None],
            roles: Map::default(),
            next_tx: 1,
            out: VecDeque::new(),
            answered_at: None,
            outcome: None,
            ending_until: None,
            linger_until: None,
            now,
            trunk_channel: None,
            incoming: None,
            held: false,
            muted: [false, false],
            sides: Vec::new(),
            next_side: 1,
            pending_refers: Vec::new(),
            pending_joins: Vec::new(),
            joined_channels: Vec::new(),
            confirm_until: None,
        };
        match m.spec.incoming.clone() {
            Some(inc) => m.start_incoming(inc, now),
            None => m.out.push_back(Output::Lookup(Leg::Agent)),
        }
        m
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        let next = self.out.pop_front();
        if next.is_none() && self.out.capacity() > 0 && self.roles.is_empty() {
            // Nothing in flight: the queue's room (a burst of outputs, ~340 bytes each) is
            // given back rather than kept for as long as the call is held.
            self.out = VecDeque::new();
        }
        next
    }

    /// When [`CallMachine::handle_timeout`] must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match self.phase {
            Phase::Ringing(_) => {
                take(self.fork.as_ref().map(|f| f.ring_until));
                if let Some(f) = &self.fork {
                    for b in self.live_branches(f.leg, f.stage) {
                        if !b.provisional {
                            take(b.target.invite_timeout.map(|d| b.sent_at + d));
                        }
                    }
                }
            }
            Phase::Connected => {
                for l in self.legs.iter().flatten().filter(|l| l.up) {
                    take(l.refresh_at);
                    take(l.expires_at);
                }
                take(self.incoming.as_ref().and_then(|i| i.ack_until));
                take(self.side_deadline());
                take(self.pending_joins.iter().map(|j| j.3).min());
            }
            Phase::Confirm => take(self.confirm_until),
            Phase::Ending => take(self.ending_until),
            Phase::Done if self.has_pending_invites() => take(self.linger_until),
            Phase::Done => {}
            Phase::Lookup(_) => {}
        }
        for r in self.roles.values() {
            if let Role::Offer {
                until,
                answered: false,
                ..
            } = r
            {
                take(Some(*until));
            }
        }
        next
    }

    /// The call has ended and nothing of it can still happen: the driver may stop.
    pub(crate) fn is_finished(&self) -> bool {
        self.phase == Phase::Done && !self.has_pending_invites()
    }

    /// An INVITE of ours that may still be answered with a 2xx (which must be ACKed).
    pub(super) fn has_pending_invites(&self) -> bool {
        self.roles.values().any(|r| match r {
            Role::Branch(i) => self.branches[*i].final_code.is_none(),
            Role::Offer { answered, .. } => !answered,
            _ => false,
        })
    }

    // -----------------------------------------------------------------------------------
    // Inputs
    // -----------------------------------------------------------------------------------

    pub(crate) fn handle(&mut self, input: Input, now: Instant) {
        self.now = now;
        match input {
            Input::Targets(leg, plan) => self.on_targets(leg, plan, now),
            Input::Tx(tx, ev) => self.on_tx(tx, ev, now),
            Input::TxEnded(tx) => self.on_tx_ended(tx, now),
            Input::Request(inc, leg) => self.on_request(*inc, leg, now),
            Input::Stray(resp) => self.on_stray(&resp),
            Input::Cancelled => self.on_cancelled(now),
            Input::Dtmf(leg, digit) => self.on_digit(leg, digit, "RFC 4733", now),
            Input::RecordingStopped(reason) => {
                self.note(
                    None,
                    format!("recording stopped, the call goes on: {reason}"),
                );
            }
            Input::Ack(leg, body) => self.on_ack(leg, body),
            Input::Command(id, cmd) => self.on_command(id, cmd, now),
            Input::Control(_, tx) => {
                // The driver turns these into `Command`s; one that got here is refused.
                let _ = tx.send(Err(crate::calls::ControlError::NotActive));
            }
            Input::MonitorAttached(side, r) => self.on_monitor_attached(side, r, now),
            Input::TransferTargets(id, plan) => self.on_transfer_targets(id, plan, now),
            Input::SideRequest(inc, side) => self.on_side_request(*inc, side),
            Input::HandOver {
                id,
                leg,
                dialog,
                to_call,
            } => self.on_hand_over(id, leg, dialog, to_call, now),
            Input::Joined(id, r) => self.on_joined(id, r, now),
            Input::Returned(h) => self.release_handed(h),
            Input::Hangup => self.on_end_command(
                outcome(
                    CallStatus::Canceled,
                    None,
                    Some(487),
                    "hung up via API before answer",
                ),
                "hung up via API",
                now,
            ),
            Input::Shutdown => self.on_end_command(
                outcome(CallStatus::Failed, None, Some(503), "server shutting down"),
                "server shutting down",
                now,
            ),
            Input::MediaTimeout => {
                if self.phase == Phase::Connected {
                    self.note(None, "no RTP from either side: media time-out");
                    self.hang_up_all(
                        outcome(CallStatus::Completed, None, None, "media time-out"),
                        now,
                    );
                }
            }
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        // In-dialog offers that got no final answer.
        let overdue: Vec<TxId> = self
            .roles
            .iter()
            .filter_map(|(tx, r)| match r {
                Role::Offer {
                    until,
                    answered: false,
                    ..
                } if *until <= now => Some(*tx),
                _ => None,
            })
            .collect();
        for tx in overdue {
            self.out.push_back(Output::Cancel { tx, reason: None });
            self.offer_failed(tx, 408, now);
        }
        match self.phase {
            Phase::Ringing(leg) => self.fork_timers(leg, now),
            Phase::Connected => {
                self.incoming_timers(now);
                self.session_timers(now);
                self.side_timers(now);
                self.join_timers(now);
            }
            Phase::Confirm => self.confirm_timer(now),
            Phase::Ending => {
                if self.ending_until.is_some_and(|t| t <= now) {
                    self.note(None, "a BYE got no answer in time");
                    self.finish(now);
                }
            }
            Phase::Done => {
                if self.linger_until.is_some_and(|t| t <= now) {
                    // Nothing answered in 64*T1: stop waiting for it.
                    self.linger_until = None;
                    self.roles.clear();
                }
            }
            Phase::Lookup(_) => {}
        }
    }

    pub(super) fn on_targets(&mut self, leg: Leg, plan: Result<Plan, Outcome>, now: Instant) {
        if self.phase != Phase::Lookup(leg) {
            return;
        }
        match plan {
            Ok(mut p) => {
                p.retain(|stage| !stage.is_empty());
                if p.is_empty() {
                    let o = outcome(CallStatus::Failed, Some(leg), None, "no target");
                    self.leg_failed(o, now);
                } else {
                    self.start_fork(leg, p, now);
                }
            }
            Err(o) => self.leg_failed(o, now),
        }
    }

    // -----------------------------------------------------------------------------------
    // Events
    // -----------------------------------------------------------------------------------

    pub(super) fn emit(&mut self, kind: CallEventKind) {
        self.out.push_back(Output::Event(kind));
    }

    /// The call is connected: its recording starts, when it asks for one.
    pub(super) fn start_recording(&mut self) {
        if self.spec.record {
            self.out.push_back(Output::Media(MediaOp::Record));
        }
    }

    pub(super) fn note(&mut self, leg: Option<Leg>, text: impl Into<String>) {
        self.emit(CallEventKind::Note {
            leg,
            text: text.into(),
        });
    }

    pub(super) fn sip_event(
        &mut self,
        leg: Leg,
        direction: &'static str,
        summary: String,
        sip_call_id: &str,
    ) {
        self.emit(CallEventKind::Sip {
            leg,
            direction,
            summary,
            sip_call_id: sip_call_id.to_string(),
        });
    }
}

mod confirm;
pub(crate) mod control;
mod dialog;
mod ending;
mod fork;
mod incoming;

use incoming::Incoming;

#[cfg(test)]
mod tests;
