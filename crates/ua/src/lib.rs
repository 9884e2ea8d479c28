//! ua: a SIP user agent on sip-core, for tests, demos and interop checks.
//!
//! It registers with digest authentication and refreshes the binding before it expires,
//! answers calls (after a ring, never, or with a rejection) and places them (answering
//! 401/407 once), and carries G.711 RTP: a sine tone or a WAV file sent in 20 ms packets,
//! received packets echoed back, recorded to WAV, and counted.
//!
//! # Layout
//! - [`agent`]: [`UserAgent`] — the endpoint, the registration client, one task per call.
//! - [`rtp`]: the RTP header, sequence/loss counting (RFC 3550 §A.3), the media task.
//! - [`g711`]: µ-law / A-law, the tone generator, WAV files (from the `media` crate).
//!
//! It does not do: TLS, SRTP, codecs other than G.711 (telephone-event is offered and
//! accepted but never sent), re-INVITEs of its own, or session timers as a refresher. A
//! re-INVITE from the peer is answered with the same session, and the media then goes where
//! its SDP says (a transfer moving the call to another relay port).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub use media::g711;
pub mod rtp;

pub use agent::{
    AnswerMode, CallHandle, EndReason, Registration, UaConfig, UaError, UaEvent, UserAgent,
};
pub use g711::{WavError, G711};
pub use rtp::{MediaMode, RtpStats};
