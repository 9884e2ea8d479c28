//! Click-to-call: the interface between the call engine and its users (the REST API), and
//! the engine itself.
//!
//! The API hands a [`CallSpec`] to a [`CallControl`] (the engine's handle, a channel
//! client); the engine runs one task per call owning both legs and its relay session (a
//! sans-IO [`machine`] driven by a thin [`driver`]), and
//! reports every stage as a [`CallEvent`] to one set of [`CallHooks`] — call log and
//! timeline, callbacks, the event stream and metrics all hang off those hooks.

mod driver;
pub mod engine;
mod from_phone;
mod inbound;
mod machine;
mod prompts;
pub mod recordings;
mod sdp_glue;
mod shared;
mod targets;

pub use engine::{Engine, EngineConfig};

use serde::Serialize;
use std::time::Duration;

pub use store::CallStatus;

/// One side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    Agent,
    Customer,
}

impl Leg {
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Agent => "agent",
            Leg::Customer => "customer",
        }
    }
}

/// Whom the agent leg rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTarget {
    /// Every registered contact of every device of this user, at once.
    Devices { user_id: String },
    /// A number or extension reached through a trunk (an upstream PBX, Click-2-Call style):
    /// `number` is dialled as is on the trunk; `dial_as` is the identity the PBX sees
    /// (From / P-Asserted-Identity) when given.
    Trunk {
        number: String,
        dial_as: Option<String>,
        /// A trunk by name; `None` picks the account's trunk (own first, then shared).
        trunk: Option<String>,
    },
}

/// Where the customer leg goes, after the dial plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerTarget {
    /// An E.164 number, dialled through a trunk.
    E164(String),
    /// An internal user's devices (an extension was dialled).
    User { user_id: String },
    /// An emergency number, only through a trunk flagged for emergency calls.
    Emergency(String),
}

/// Everything the engine needs to place one click-to-call.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// TypeID `call_…`, already in the store (status `queued`).
    pub call_id: String,
    pub account_id: String,
    pub agent: AgentTarget,
    pub customer: CustomerTarget,
    /// The caller ID shown to the customer (one of the account's numbers).
    pub caller_id: Option<String>,
    pub agent_ring: Duration,
    pub customer_ring: Duration,
    /// The leg that called us, when the call starts from an INVITE we received (an inbound
    /// call from a trunk, a call from a phone): that leg is the server transaction of the
    /// INVITE, and the call rings only the other leg. `None` for a call placed through the
    /// API (both legs are ours to INVITE, the agent first).
    pub incoming: Option<IncomingLeg>,
    /// Agent confirm (SPEC §9.4): the agent who answered hears a prompt, and the customer
    /// is dialled only after DTMF `1` within this time; `None`: the customer is dialled at
    /// once.
    pub confirm: Option<Duration>,
    /// Both legs are recorded into a dual-channel WAV (SPEC §9.4).
    pub record: bool,
}

/// A leg that is the server transaction of an INVITE we received (see
/// [`CallSpec::incoming`]): it hears `100`, then `180`/`183` relayed from the ringing side,
/// our `200` with SDP of the relay when that side answers (or the failure's code), and
/// `487` when its caller CANCELs.
#[derive(Debug, Clone)]
pub struct IncomingLeg {
    /// Which side of the call the caller is (the customer for an inbound call from a trunk,
    /// the agent for a call from a registered phone).
    pub leg: Leg,
    /// The INVITE and its server transaction.
    pub request: Box<sip_core::endpoint::IncomingRequest>,
    /// Our Contact toward the caller (in our answers).
    pub contact: sip_core::message::Uri,
}

/// How a call ended: exactly one per call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `completed`, `busy`, `no-answer`, `failed` or `canceled`.
    pub status: CallStatus,
    /// The leg that decided it; `None` when the API or dialbridge itself ended it.
    pub leg: Option<Leg>,
    /// The SIP status code that decided it, where one did.
    pub sip_code: Option<u16>,
    /// The Q.850 cause from a `Reason` header, where one came.
    pub q850_cause: Option<u16>,
    /// Seconds from `in-progress` to the end (0 when never answered).
    pub duration_secs: u64,
    /// A human-readable reason ("agent busy", "customer ring time-out", "hung up via API").
    pub reason: String,
}

/// What happened in a call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEventKind {
    /// A SIP message of a leg (request sent/received, response sent/received): timeline only.
    Sip {
        leg: Leg,
        /// `sent` or `received`.
        direction: &'static str,
        /// e.g. `INVITE sip:alice@10.0.0.5:5060`, `180 Ringing`.
        summary: String,
        /// The leg's SIP Call-ID.
        sip_call_id: String,
    },
    /// The first 180/183 of a leg (callback `ringing`).
    Ringing { leg: Leg, sip_code: u16 },
    /// Early media from the carrier is relayed to the agent.
    EarlyMedia { leg: Leg },
    /// The agent answered (2xx on the agent leg).
    AgentAnswered { sip_code: u16 },
    /// The customer answered and the legs are bridged (callback `in-progress`).
    InProgress { sip_code: u16 },
    /// The call ended (callback with the outcome's status). Carries the media stats.
    Ended {
        outcome: Outcome,
        stats: serde_json::Value,
    },
    /// Something worth a line in the timeline (relay allocated, re-INVITE passed...).
    Note { leg: Option<Leg>, text: String },
    /// A party was put on hold (`a=sendonly` toward it; callback `call.held`).
    Held { leg: Leg },
    /// A held party was taken off hold (callback `call.resumed`).
    Resumed { leg: Leg },
    /// The relay stopped (or resumed) relaying what this leg's party says.
    Muted { leg: Leg, muted: bool },
    /// A supervisor answered and hears the call (callback `call.monitor_started`).
    MonitorStarted {
        monitor_id: String,
        user_id: String,
        mode: &'static str,
    },
    /// The supervisor's mode changed mid-call.
    MonitorModeChanged {
        monitor_id: String,
        mode: &'static str,
    },
    /// The monitor ended (callback `call.monitor_ended`); the call goes on.
    MonitorEnded { monitor_id: String, reason: String },
    /// A transfer target is being called (REFER from a phone, or the API).
    TransferStarted {
        leg: Leg,
        to: String,
        by: &'static str,
    },
    /// The target answered: it replaced `leg`, whose party was released (callback
    /// `call.transferred`).
    Transferred {
        leg: Leg,
        to: String,
        by: &'static str,
    },
    /// The target did not answer or was refused; the call goes on as it was.
    TransferFailed {
        leg: Leg,
        to: String,
        by: &'static str,
        sip_code: Option<u16>,
        reason: String,
    },
    /// The call's recording is finished (after `Ended`; callback `recording.ready`).
    Recording {
        /// The file, as the server sees it.
        file: String,
        /// Seconds of audio.
        duration_secs: f64,
        /// Bytes of the file.
        size_bytes: u64,
        /// Why it stopped before the call ended (a full disk...), if it did.
        error: Option<String>,
    },
}

impl CallEventKind {
    /// The callback event name of a live-control event (`call.held`, `call.transferred`...),
    /// `None` for the others.
    pub fn callback_event(&self) -> Option<&'static str> {
        match self {
            CallEventKind::Held { .. } => Some("call.held"),
            CallEventKind::Resumed { .. } => Some("call.resumed"),
            CallEventKind::MonitorStarted { .. } => Some("call.monitor_started"),
            CallEventKind::MonitorEnded { .. } => Some("call.monitor_ended"),
            CallEventKind::Transferred { .. } => Some("call.transferred"),
            _ => None,
        }
    }
}

/// What a supervisor does on a monitored call (see [`media::MonitorMode`]).
pub use media::MonitorMode;

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTo {
    /// A user's registered devices.
    User { user_id: String },
    /// A number (E.164, already through the account's guards) on the account's trunk.
    Number { e164: String },
}

impl TransferTo {
    pub fn label(&self) -> String {
        match self {
            TransferTo::User { user_id } => user_id.clone(),
            TransferTo::Number { e164 } => e164.clone(),
        }
    }
}

/// A live change to a call in progress (the API's `POST /v1/calls/{id}/…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveCommand {
    /// Hold the customer: `a=sendonly` toward it by re-INVITE, and the agent's audio stops.
    Hold,
    Unhold,
    /// Stop (or resume) relaying what `leg`'s party says; no signalling.
    Mute {
        leg: Leg,
        muted: bool,
    },
    /// Ring a supervisor's devices; once answered it hears the call in `mode`.
    Monitor {
        monitor_id: String,
        user_id: String,
        mode: MonitorMode,
    },
    SetMonitorMode {
        monitor_id: String,
        mode: MonitorMode,
    },
    EndMonitor {
        monitor_id: String,
    },
    /// Hand the customer to `to`. Blind: the agent is released once it answers. Warm: the
    /// target talks with the agent first, the customer held; then complete or cancel.
    Transfer {
        to: TransferTo,
        warm: bool,
    },
    /// A warm transfer's target takes the agent's place.
    CompleteTransfer,
    /// The transfer under way is abandoned: the target is released (CANCEL or BYE).
    CancelTransfer,
}

/// Why a live command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no such active call")]
    NotActive,
    /// The call is not connected (still ringing, ending), or the command does not fit its
    /// state (unhold of a call not held, a second transfer).
    #[error("{0}")]
    NotInProgress(String),
    /// A leg's codec cannot be mixed.
    #[error("{0}")]
    CodecNotMixable(String),
    #[error("no such monitor on this call")]
    NoSuchMonitor,
    /// The target could not be looked up (no registered device...).
    #[error("{0}")]
    TargetUnavailable(String),
}

/// What [`CallControl::control`] returns: a JSON detail for the API's answer.
pub type ControlFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<serde_json::Value, ControlError>> + Send + 'a>,
>;

/// One event of one call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallEvent {
    pub call_id: String,
    pub account_id: String,
    /// UTC, milliseconds since the epoch.
    pub at_ms: i64,
    pub kind: CallEventKind,
}

/// Receivers of call events. Called from the call tasks: implementations must be quick
/// (a store write, a channel send), never wait on the network.
pub trait CallHooks: Send + Sync {
    /// Takes the event: the journal keeps it, and a copy per event was most of what an
    /// event cost to hand over.
    fn on_event(&self, event: CallEvent);

    /// A call that did not come through the API (an inbound call from a trunk, a call from
    /// a phone) is about to start: its record must exist before its first event, and the
    /// account's limits apply to it. The default admits every call and records nothing.
    fn admit<'a>(&'a self, _call: &'a NewCall) -> AdmitFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// What [`CallHooks::admit`] returns.
pub type AdmitFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AdmitError>> + Send + 'a>>;

/// A call that starts from SIP rather than from the API, as its record begins.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    pub call_id: String,
    pub account_id: String,
    /// The user whose devices ring.
    pub user_id: Option<String>,
    /// `inbound` (from a trunk) or another direction a later kind of call names.
    pub direction: &'static str,
    /// The caller's number or URI user (From).
    pub from: String,
    /// The number called (Request-URI).
    pub to: String,
    /// The account's default callback URL (`[[accounts]] callback_url`).
    pub callback_url: Option<String>,
    /// Whether the call is recorded.
    pub record: bool,
    /// Per-leg description for the call log (`legs`).
    pub legs: serde_json::Value,
    /// The first timeline entry's detail (what arrived, from where).
    pub detail: serde_json::Value,
}

/// Why [`CallHooks::admit`] refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The account is at its limit of calls (rate or concurrency).
    #[error("the account is at its call limit: {0}")]
    Limit(String),
    /// The call cannot be recorded now (the store refuses writes).
    #[error("the call log is unavailable: {0}")]
    Unavailable(String),
}

/// Why a call could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("the server is at its limit of {0} concurrent calls")]
    AtCapacity(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Why a hang-up was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HangupError {
    #[error("no such active call")]
    NotActive,
}

/// The engine as its users see it (the REST API holds an `Arc<dyn CallControl>`).
pub trait CallControl: Send + Sync {
    /// Starts a call; returns at once (the call runs in its own task).
    fn start_call(&self, spec: CallSpec) -> Result<(), StartError>;
    /// Ends a call in any state: CANCEL while ringing, BYE when answered.
    fn hangup(&self, call_id: &str) -> Result<(), HangupError>;
    /// Calls now running.
    fn active_calls(&self) -> usize;
    /// The media statistics so far of a running call (as stored when it ends), `None` when
    /// the call is not running here or has no relay session yet.
    fn live_stats(&self, _call_id: &str) -> Option<serde_json::Value> {
        None
    }
    /// Applies a live command to a running call (hold, mute, monitor, transfer).
    fn control<'a>(&'a self, _call_id: &'a str, _cmd: LiveCommand) -> ControlFuture<'a> {
        Box::pin(std::future::ready(Err(ControlError::NotActive)))
    }
    /// A trunk's run-time state (`state`, its targets with their health), `None` when this
    /// engine does not know the trunk.
    fn trunk_status<'a>(&'a self, _name: &'a str) -> TrunkStatusFuture<'a> {
        Box::pin(std::future::ready(None))
    }
}

/// What [`CallControl::trunk_status`] returns.
pub type TrunkStatusFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<serde_json::Value>> + Send + 'a>>;

/// An out-of-dialog INVITE carrying `Replaces` (RFC 3891 §3): not taken (answered 501);
/// attended transfers come as REFER with `Replaces` (see `machine::control`).
fn has_replaces(inc: &sip_core::endpoint::IncomingRequest) -> bool {
    use sip_core::message::HeaderName;
    inc.request
        .headers
        .get(&HeaderName::Other(bytes::Bytes::from_static(b"Replaces")))
        .is_some()
}
