//! The dialbridge media relay: the RTP/RTCP path of every bridged call.
//!
//! Each call gets a [`MediaSession`] with two legs, A (agent) and B (customer), each an even
//! RTP port and the odd RTCP port above it, taken from `media.ports` and bound on
//! `media.bind`. What arrives on leg A's sockets leaves from leg B's sockets toward B's peer,
//! and back. The relay does symmetric RTP (latching onto the address packets really come from,
//! accepting media only from the addresses the peer's SDP and signalling name and moving to a
//! new source port only after a run of packets in sequence — RTP Bleed protection, see
//! [`LatchMode::Strict`]), relays RTCP (and rtcp-mux, RFC 5761), passes
//! RFC 4733 events and everything else byte for byte, counts per-leg packets, bytes, loss and
//! jitter (RFC 3550), and reports a [`MediaEvent::Timeout`] when a started call goes silent.
//!
//! ```no_run
//! # fn main() -> Result<(), media::MediaError> {
//! use media::{LegId, Relay, RelayConfig};
//! let relay = Relay::start(RelayConfig::default())?;
//! let mut events = relay.events(); // tokio receiver of MediaEvent
//! let session = relay.allocate_session()?;
//! let agent_port = session.leg(LegId::A).local_rtp_port(); // into the agent's SDP
//! session.set_peer(LegId::A, "192.0.2.10:4000".parse().unwrap(), None, false)?;
//! session.set_peer(LegId::B, "198.51.100.7:30000".parse().unwrap(), None, true)?;
//! session.start()?; // both legs answered: arm the media time-out
//! let stats = session.close(); // final counters; its sockets parked for a next session
//! # let _ = (agent_port, stats, events.take()); Ok(()) }
//! ```
//!
//! # Performance
//!
//! The hot path runs on dedicated OS threads ([`RelayConfig::workers`], one per core by
//! default), apart from SIP signalling and from tokio. Each owns an io_uring ([`Backend`]):
//! a multishot `recvmsg` armed on every leg socket receives into the thread's provided-buffer
//! ring, each datagram is judged in place and sent out of the other leg's socket from the same
//! buffer, and one `io_uring_enter` per loop iteration submits all the sends of the iteration
//! (across sockets and sessions) and reaps what arrived. Where io_uring is not usable (kernel
//! before 6.0, `io_uring_disabled`, seccomp) the thread runs an epoll loop with
//! `recvmmsg(2)` into a fixed set of buffers and `sendmmsg(2)` out of the same buffers; the
//! choice is made at start and logged once. Either way: no allocation, no copy and no lock
//! per packet.
//! `relay-bench` (`src/bin/relay-bench`) measures it against rtpengine; method and figures
//! are in `docs/benchmarks.md`.
//!
//! # Layout
//!
//! - `relay` — [`Relay`], [`MediaSession`], [`Leg`], [`LegId`], [`MediaEvent`]: the API.
//! - `config` — [`RelayConfig`], [`LatchMode`], validation.
//! - `worker` — a forwarding thread: sessions, control messages, the per-datagram step
//!   (latch, counters), and the epoll loop.
//! - `uring_worker` — the io_uring loop over the same sessions (safe code).
//! - `sys` — epoll, eventfd and the `recvmmsg`/`sendmmsg` batch; `sys::uring`, the ring,
//!   its provided buffers and sends (all of the crate's `unsafe`).
//! - `rtp` — reading RTP/RTCP headers in place; RTP/RTCP demultiplexing (RFC 5761).
//! - `source` — [`Prompt`]s the relay plays into a leg itself (20 ms G.711 packets of its
//!   own numbering, sent by the leg's forwarding thread; the other leg is held back from it
//!   meanwhile), and RFC 4733 telephone-event parsing ([`MediaEvent::Dtmf`]).
//! - `recorder` — a session's RTP into a dual-channel WAV (leg A left, leg B right, placed
//!   by arrival time, gaps as silence), written by a thread per recording: the forwarding
//!   thread only copies a recorded session's payloads into a bounded queue
//!   ([`MediaSession::record`]).
//! - `g711` — µ-law / A-law companding, a sine tone source, a Goertzel tone detector, WAV
//!   files (8 kHz 16-bit PCM): the sample-level pieces for prompts, mixing and recording.
//! - `stats` — RFC 3550 A.1 sequence tracking, A.3 loss, A.8 jitter; per-leg snapshots.
//! - `mixer` — G.711 mixing with no sockets: jitter buffers, saturated sums, the RTP streams of
//!   the mix; `monitor` — [`Monitor`], a supervisor's third port pair on a session and its
//!   mixing thread (listen / whisper / barge, see [`MonitorMode`]).
//! - `srtp` — SRTP/SRTCP on a leg keyed by SDES (RFC 3711, RFC 4568); a leg with SRTP takes
//!   a separate, copying path (decrypt or encrypt into a new buffer, one `sendto`), so plain
//!   legs keep the zero-copy one at the cost of one branch.
//! - `webrtc` — a browser's leg: ICE-lite (STUN binding answers), DTLS-SRTP with the relay as
//!   DTLS server (OpenSSL over in-memory datagrams), the certificate checked against the SDP's
//!   fingerprint, RFC 7983 demultiplexing; its SRTP is the `srtp` path with exported keys.
//!   Prompts to an SRTP leg (SDES or WebRTC) are encrypted like relayed packets.
//! - `latch` — symmetric RTP decisions (allowed sources, probation). `timeout` — the media time-out. `ports` — the range.
//!
//! `stats`, `latch` and `timeout` are pure: they take the time as an argument and are tested
//! without sockets or clocks.
//!
//! # What it does not do
//!
//! No SIP and no SDP parsing (the B2BUA tells it addresses, payload types, SDES keys, ICE
//! credentials and fingerprints), no transcoding, no full ICE agent (a WebRTC leg answers
//! checks as ICE-lite, see `webrtc`; on other legs STUN packets are relayed untouched, and not
//! counted as media), no RTCP generation; recordings decode G.711 only. (RTCP can be watched:
//! [`RelayConfig::rtcp_tap`] is shown a copy of each RTCP packet, received and sent — RTP
//! never.) It never rewrites a packet it relays between plain legs (an SRTP leg's packets are
//! decrypted or encrypted). The other exception to "bytes in, same bytes out"
//! is a monitored call ([`Relay::attach_monitor`]): there G.711 is decoded, mixed (with a
//! jitter buffer per input) and re-encoded for the parties who hear a mix; other codecs
//! cannot be monitored ([`MediaError::CodecNotMixable`]). [`MediaSession::set_muted`] stops
//! relaying one leg's RTP.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod error;
pub mod g711;
pub mod latch;
pub mod mixer;
mod monitor;
mod ports;
pub mod recorder;
mod relay;
pub mod rtp;
pub mod source;
pub mod srtp;
pub mod stats;
mod sys;
pub mod timeout;
mod uring_worker;
pub mod webrtc;
mod worker;

pub use config::{
    Backend, ConfigError, LatchMode, RelayConfig, RtcpDirection, RtcpTap, RtcpTapHandle,
};
pub use error::MediaError;
pub use monitor::{Monitor, MonitorMode};
pub use recorder::{Recording, RecordingSummary};
pub use relay::{Leg, LegId, MediaEvent, MediaSession, Relay, SessionId, StatsReader};
pub use source::Prompt;
pub use stats::{LegStats, SessionStats};
pub use sys::raise_nofile_limit;
