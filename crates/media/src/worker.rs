//! A forwarding thread: one epoll loop over the sockets of the sessions it owns.
//!
//! ```text
//!  loop {
//!      epoll_wait(ready sockets, eventfd, tick)
//!      apply control messages (add / set peer / start / stop / remove session)
//!      for each readable socket of leg X:
//!          recvmmsg  -> latch check, counters, RFC 3550 stats   (bytes stay in place)
//!          sendmmsg  -> same buffers, out of leg Y's socket to Y's peer
//!      every tick: media time-outs
//!  }
//! ```
//!
//! A session's four sockets belong to exactly one thread, so the hot path takes no lock:
//! counters are published into the session's atomics after each batch.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::config::{Backend, LatchMode};
use crate::error::MediaError;
use crate::latch::{AllowedSources, Latch, LatchVerdict, Probe};
use crate::ports::PortAllocator;
use crate::rtp::{self, Packet};
use crate::stats::{timestamp_units, LegCounters, LegTally, RtpReception};
use crate::sys::uring::{Uring, UringSizes};
use crate::sys::{Batch, Epoll, EventFd, RawSockAddr};
use crate::timeout::MediaTimeout;
use crate::{LegId, MediaEvent, SessionId};

const WAKE_TOKEN: u64 = u64::MAX;
/// [`LegState::event_pt`] when no telephone-events are watched.
const NO_EVENTS: u8 = 0xff;
const MAX_EVENTS: usize = 1024;
/// Default clock rate for jitter until told otherwise (G.711, G.722's RTP clock, RFC 4733).
pub(crate) const DEFAULT_CLOCK_RATE: u32 = 8000;

/// What the rest of the process shares with a session's forwarding thread.
#[derive(Debug)]
pub(crate) struct SessionShared {
    pub legs: [LegCounters; 2],
    pub epoch: Instant,
}

/// The two sockets (RTP, RTCP) of one leg, bound on an even/odd pair.
#[derive(Debug)]
pub(crate) struct LegSockets {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub rtp_port: u16,
}

/// A session handed to a forwarding thread.
#[derive(Debug)]
pub(crate) struct NewSession {
    pub id: SessionId,
    pub shared: Arc<SessionShared>,
    pub legs: NewLegs,
}

/// The sockets of a new session.
#[derive(Debug)]
pub(crate) enum NewLegs {
    /// Bound for it.
    Bound([LegSockets; 2]),
    /// Those a closed session of the thread left parked in this slot, claimed from the
    /// thread's [`ParkedQueue`].
    Parked(usize),
}

/// A closed session's sockets, kept open by its forwarding thread (their receives still
/// armed, what arrives dropped) so that a new session can take them instead of binding two
/// pairs and the thread watching them anew; see [`Core::close_session`].
#[derive(Debug, Clone)]
pub(crate) struct Parked {
    pub slot: usize,
    /// The RTP ports of legs A and B.
    pub ports: [u16; 2],
    /// When it was parked (or, once a claim found it rested but heard since, its last
    /// datagram's time): the idle time counts from here.
    pub since: Instant,
    /// When a datagram last came to one of its sockets, in milliseconds after the relay's
    /// epoch, plus one (0: none), set by the thread as it drops it.
    pub heard: Arc<AtomicU64>,
}

impl Parked {
    /// Since when its sockets have been quiet: parked, and nothing heard since.
    pub(crate) fn quiet_since(&self, epoch: Instant) -> Instant {
        match self.heard.load(Ordering::Relaxed) {
            0 => self.since,
            ms => self.since.max(epoch + Duration::from_millis(ms - 1)),
        }
    }
}

/// A forwarding thread's parked sessions, oldest first. The thread pushes a session it
/// parks and pops one it closes after `park_idle`; the relay pops one it hands to a new
/// session after `park_quarantine` ([`crate::RelayConfig`],
/// [`crate::Relay::allocate_session`]). Whoever pops an entry owns the sockets.
pub(crate) type ParkedQueue = Arc<Mutex<VecDeque<Parked>>>;

/// How often a forwarding thread looks for parked sessions to close, at most.
const PARK_CHECK: Duration = Duration::from_secs(1);

/// Messages from the control side to a forwarding thread.
#[derive(Debug)]
pub(crate) enum Control {
    Add(Box<NewSession>),
    SetPeer {
        id: SessionId,
        leg: LegId,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
        rtcp_mux: bool,
    },
    AllowSources {
        id: SessionId,
        leg: LegId,
        ips: Box<[IpAddr]>,
    },
    SetClockRate {
        id: SessionId,
        leg: LegId,
        hz: u32,
    },
    /// Play a prompt into a leg (`None`: stop playing and forward again).
    Play {
        id: SessionId,
        leg: LegId,
        prompt: Option<crate::source::Prompt>,
    },
    /// Record the session's RTP (`None`: stop).
    Record {
        id: SessionId,
        tap: Option<crate::recorder::RecTap>,
    },
    /// Report the telephone-events (RFC 4733) of this payload type seen on a leg.
    WatchEvents {
        id: SessionId,
        leg: LegId,
        payload_type: Option<u8>,
    },
    SetSrtp {
        id: SessionId,
        leg: LegId,
        keys: Option<Box<crate::srtp::SrtpKeys>>,
    },
    /// WebRTC media on a leg (ICE-lite, DTLS-SRTP), or plain again with `None`.
    SetWebRtc {
        id: SessionId,
        leg: LegId,
        state: Option<Box<crate::webrtc::WebRtcLeg>>,
    },
    /// The `a=fingerprint` of a WebRTC leg's peer (its SDP).
    WebRtcFingerprint {
        id: SessionId,
        leg: LegId,
        /// Boxed: the control enum stays as small as it was (it is moved per message).
        fingerprint: Option<Box<crate::webrtc::Fingerprint>>,
    },
    Start(SessionId),
    Stop(SessionId),
    /// Stop (or resume) relaying RTP that arrives on `leg` (RTCP still flows).
    Mute {
        id: SessionId,
        leg: LegId,
        muted: bool,
    },
    /// Attach a monitor's tap (replying with copies of both legs' RTP sockets), or detach.
    Monitor {
        id: SessionId,
        tap: Option<Arc<crate::monitor::MonitorTap>>,
        reply: Option<Reply<Option<[UdpSocket; 2]>>>,
    },
    Remove {
        id: SessionId,
        done: Option<Reply<()>>,
    },
    Shutdown,
}

/// Who waits for a forwarding thread's answer to a control message (a session's removal, a
/// monitor's sockets).
#[derive(Debug)]
pub(crate) enum Reply<T> {
    /// A thread blocked on the answer ([`crate::MediaSession::close`]).
    Thread(mpsc::SyncSender<T>),
    /// A task awaiting it ([`crate::MediaSession::close_async`]): its runtime thread goes on.
    Task(tokio::sync::oneshot::Sender<T>),
}

impl<T> Reply<T> {
    pub(crate) fn send(self, value: T) {
        match self {
            Reply::Thread(t) => {
                let _ = t.try_send(value);
            }
            Reply::Task(t) => {
                let _ = t.send(value);
            }
        }
    }
}

/// The control side's handle on one forwarding thread.
#[derive(Debug, Clone)]
pub(crate) struct WorkerHandle {
    tx: mpsc::Sender<Control>,
    wake: Arc<EventFd>,
    /// The thread's parked sessions.
    pub parked: ParkedQueue,
}

impl WorkerHandle {
    /// A handle whose messages nobody but the test reads (no forwarding thread).
    #[cfg(test)]
    pub(crate) fn unserved() -> (WorkerHandle, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(EventFd::new().expect("eventfd"));
        let parked = ParkedQueue::default();
        (WorkerHandle { tx, wake, parked }, rx)
    }

    pub(crate) fn send(&self, c: Control) -> Result<(), Box<Control>> {
        let wake = c.wakes();
        self.tx.send(c).map_err(|e| Box::new(e.0))?;
        if wake {
            self.wake.notify();
        }
        Ok(())
    }
}

impl Control {
    /// Whether the thread is woken for this message. Those that only change how the
    /// datagrams that come next are judged or counted (a peer, the allowed sources, the
    /// clock rate, the events watched, forwarding started, stopped or muted, a session on
    /// parked sockets, whose receives are armed) are queued without a wake-up: both loops
    /// read their queue before they judge any datagram, and at each tick (at most every
    /// 500 ms, and every millisecond while messages keep coming on the io_uring loop). The
    /// others have effects of their own: sockets to watch, a removal or a monitor someone
    /// waits for, packets the relay sends itself (prompts, a DTLS handshake), a recording.
    fn wakes(&self) -> bool {
        match self {
            Control::SetPeer { .. }
            | Control::AllowSources { .. }
            | Control::SetClockRate { .. }
            | Control::WatchEvents { .. }
            | Control::Start(_)
            | Control::Stop(_)
            | Control::Mute { .. } => false,
            Control::Add(new) => !matches!(new.legs, NewLegs::Parked(_)),
            Control::Play { .. }
            | Control::Record { .. }
            | Control::SetSrtp { .. }
            | Control::SetWebRtc { .. }
            | Control::WebRtcFingerprint { .. }
            | Control::Monitor { .. }
            | Control::Remove { .. }
            | Control::Shutdown => true,
        }
    }
}

/// Settings shared by every forwarding thread.
#[derive(Debug, Clone)]
pub(crate) struct WorkerParams {
    pub latch: LatchMode,
    pub timeout: Duration,
    pub epoch: Instant,
    pub ports: Arc<Mutex<PortAllocator>>,
    /// Sessions a thread keeps parked at most (0: none; closed sessions' sockets are closed).
    pub park_limit: usize,
    /// How long a session stays parked before the thread closes its sockets.
    pub park_idle: Duration,
    /// A datagram to a parked session's socket this long after it was parked is no late
    /// packet of its call but a peer that goes on sending (or a stranger's spray): the
    /// thread closes the sockets then, so that the kernel drops what follows and the peer
    /// hears its port is gone.
    pub park_late: Duration,
    pub events: UnboundedSender<MediaEvent>,
    /// Shown each RTCP packet (see [`crate::RtcpTap`]).
    pub rtcp_tap: Option<Arc<dyn crate::RtcpTap>>,
}

/// Shows an RTCP packet to the tap: as received on `inn`, and as sent out of `out` when it
/// is forwarded.
#[allow(clippy::too_many_arguments)]
fn tap_rtcp(
    tap: &dyn crate::RtcpTap,
    session: SessionId,
    in_leg: usize,
    inn: &LegState,
    out: &LegState,
    from_rtcp_port: bool,
    src: SocketAddr,
    data: &[u8],
    forwarded: bool,
) {
    let in_sock = if from_rtcp_port { &inn.rtcp } else { &inn.rtp };
    if let Ok(local) = in_sock.local_addr() {
        tap.on_rtcp(
            session,
            LegId::from_index(in_leg),
            crate::RtcpDirection::Received,
            src,
            local,
            data,
        );
    }
    if !forwarded {
        return;
    }
    let out_sock = if out.rtcp_mux { &out.rtp } else { &out.rtcp };
    if let (Ok(local), Some(dst)) = (out_sock.local_addr(), out.rtcp_dest_addr) {
        tap.on_rtcp(
            session,
            LegId::from_index(1 - in_leg),
            crate::RtcpDirection::Sent,
            local,
            dst,
            data,
        );
    }
}

/// The forwarding method a thread runs (see [`crate::Backend`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Started {
    IoUring(String),
    Epoll,
}

/// Starts forwarding thread number `index`, with io_uring when `backend` allows and the
/// kernel offers it. Returns which backend runs.
pub(crate) fn spawn(
    index: usize,
    params: WorkerParams,
    backend: Backend,
) -> Result<(WorkerHandle, JoinHandle<()>, Started), MediaError> {
    let wake = Arc::new(EventFd::new().map_err(MediaError::io("eventfd"))?);
    let (tx, rx) = mpsc::channel();
    let thread_wake = Arc::clone(&wake);
    let parked = ParkedQueue::default();
    let thread_parked = Arc::clone(&parked);
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let join = thread::Builder::new()
        .name(format!("media-fwd-{index}"))
        .spawn(move || {
            // The ring is set up on the thread that uses it (IORING_SETUP_SINGLE_ISSUER).
            let ring = match backend {
                Backend::Epoll => None,
                Backend::Auto | Backend::IoUring => {
                    match Uring::new(UringSizes::default(), tunables().min_wait_usec) {
                        Ok(r) => Some(r),
                        Err(e) if backend == Backend::IoUring => {
                            let _ = ready_tx.send(Err(MediaError::Io {
                                op: "io_uring set-up",
                                source: e,
                            }));
                            return;
                        }
                        Err(e) => {
                            debug!(error = %e, "io_uring unavailable; epoll it is");
                            None
                        }
                    }
                }
            };
            let core = Core::new(thread_wake, rx, params, thread_parked);
            match ring {
                Some(ring) => {
                    let _ = ready_tx.send(Ok(Started::IoUring(ring.describe())));
                    crate::uring_worker::run(core, ring);
                }
                None => match Epoll::new() {
                    Ok(epoll) => {
                        if let Err(e) = epoll.add(core.wake.raw(), WAKE_TOKEN) {
                            let _ = ready_tx.send(Err(MediaError::Io {
                                op: "epoll_ctl",
                                source: e,
                            }));
                            return;
                        }
                        let _ = ready_tx.send(Ok(Started::Epoll));
                        EpollWorker::new(epoll, core).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(MediaError::Io {
                            op: "epoll_create1",
                            source: e,
                        }));
                    }
                },
            }
        })
        .map_err(MediaError::io("spawning a forwarding thread"))?;
    let started = match ready_rx.recv() {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = join.join();
            return Err(e);
        }
        Err(_) => {
            let _ = join.join();
            return Err(MediaError::RelayStopped);
        }
    };
    Ok((WorkerHandle { tx, wake, parked }, join, started))
}

/// Knobs of the io_uring loop, read once from the environment (for measurements; the
/// defaults are what `docs/benchmarks.md` found best):
/// `DIALBRIDGE_MEDIA_URING_BATCH` (completions to wait for, default 1) and
/// `DIALBRIDGE_MEDIA_URING_MIN_WAIT_US` (how long to wait for that batch, 6.12+, default 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tunables {
    pub batch: usize,
    pub min_wait_usec: u32,
}

pub(crate) fn tunables() -> Tunables {
    let num = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    Tunables {
        batch: num("DIALBRIDGE_MEDIA_URING_BATCH", 1).clamp(1, 1024) as usize,
        min_wait_usec: num("DIALBRIDGE_MEDIA_URING_MIN_WAIT_US", 0).min(10_000) as u32,
    }
}

/// One leg as its forwarding thread sees it.
pub(crate) struct LegState {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    rtp_port: u16,
    rtp_hint: Option<SocketAddr>,
    rtcp_hint: Option<SocketAddr>,
    rtcp_mux: bool,
    rtp_latch: Latch,
    rtcp_latch: Latch,
    /// Addresses of the peer's signalling (registration source, trunk), from the B2BUA.
    signalling: AllowedSources,
    /// `signalling` and the SDP hints' addresses: what [`LatchMode::Strict`] accepts.
    allowed: AllowedSources,
    /// A packet from an address not allowed was already logged for this leg.
    hijack_logged: bool,
    /// Where RTP for this leg's peer goes (out of `rtp`).
    rtp_dest: Option<RawSockAddr>,
    /// Where RTCP for this leg's peer goes (out of `rtcp`, or of `rtp` with rtcp-mux).
    rtcp_dest: Option<RawSockAddr>,
    /// `rtp_dest` as an address, for the packets the relay makes itself (prompts) and the
    /// SRTP path's `send_to`.
    rtp_dest_addr: Option<SocketAddr>,
    /// A prompt played to this leg's peer: the other leg's RTP toward it is held back.
    player: Option<crate::source::Player>,
    /// The payload type of telephone-events reported from this leg (none: 0xff, which no
    /// 7-bit payload type equals).
    event_pt: u8,
    /// The RTP timestamp of the last telephone-event reported (one report per event).
    last_event: Option<u32>,
    /// The same, for an RTCP tap.
    rtcp_dest_addr: Option<SocketAddr>,
    /// SRTP on this leg (SDES keys); `None`: plain RTP.
    srtp: Option<Box<crate::srtp::SrtpLeg>>,
    /// SRTP keys were given but unusable: nothing of this leg is relayed.
    srtp_refused: bool,
    /// `srtp`, `srtp_refused` or `webrtc`: packets to or from this leg take the SRTP path
    /// (one flag, so that the plain path pays one test per leg).
    srtp_path: bool,
    /// A browser leg: ICE-lite and DTLS-SRTP (see [`crate::webrtc`]); `srtp` is set from it
    /// once the handshake is done and the peer's fingerprint checked.
    webrtc: Option<Box<crate::webrtc::WebRtcLeg>>,
    clock_rate: u32,
    reception: RtpReception,
    pub tally: LegTally,
    published_remote: (Option<SocketAddr>, Option<u32>),
}

impl LegState {
    /// The sockets, without the rest.
    fn into_sockets(self) -> LegSockets {
        LegSockets {
            rtp: self.rtp,
            rtcp: self.rtcp,
            rtp_port: self.rtp_port,
        }
    }

    fn new(s: LegSockets) -> Self {
        LegState {
            rtp: s.rtp,
            rtcp: s.rtcp,
            rtp_port: s.rtp_port,
            rtp_hint: None,
            rtcp_hint: None,
            rtcp_mux: false,
            rtp_latch: Latch::default(),
            rtcp_latch: Latch::default(),
            signalling: AllowedSources::default(),
            allowed: AllowedSources::default(),
            hijack_logged: false,
            rtp_dest: None,
            rtcp_dest: None,
            rtp_dest_addr: None,
            player: None,
            event_pt: NO_EVENTS,
            last_event: None,
            rtcp_dest_addr: None,
            srtp: None,
            srtp_refused: false,
            srtp_path: false,
            webrtc: None,
            clock_rate: DEFAULT_CLOCK_RATE,
            reception: RtpReception::default(),
            tally: LegTally::default(),
            published_remote: (None, None),
        }
    }

    /// Recomputes the allowed addresses from the signalling ones and the SDP hints; under
    /// [`LatchMode::Strict`] a latched source that is no longer allowed is forgotten.
    fn refresh_allowed(&mut self, mode: LatchMode) {
        let mut allowed = self.signalling;
        for hint in [self.rtp_hint, self.rtcp_hint].into_iter().flatten() {
            allowed.insert(hint.ip());
        }
        self.allowed = allowed;
        let moved = self.rtp_latch.revalidate(mode, &self.allowed)
            | self.rtcp_latch.revalidate(mode, &self.allowed);
        if moved {
            self.refresh_dest(mode);
        }
    }

    fn refresh_dest(&mut self, mode: LatchMode) {
        if let Some(w) = &self.webrtc {
            // ICE chose the peer's address (nothing is sent before it did); rtcp-mux.
            self.rtp_dest = w.selected.map(RawSockAddr::from);
            self.rtp_dest_addr = w.selected;
            self.rtcp_dest = self.rtp_dest;
            self.rtcp_dest_addr = w.selected;
            return;
        }
        let rtp = self.rtp_latch.destination(mode, self.rtp_hint);
        self.rtp_dest = rtp.map(RawSockAddr::from);
        self.rtp_dest_addr = rtp;
        let rtcp = if self.rtcp_mux {
            rtp
        } else {
            self.rtcp_latch
                .destination(mode, self.rtcp_hint)
                .or_else(|| {
                    // RFC 3550 §11: RTCP on the next higher (odd) port.
                    rtp.map(|mut a| {
                        a.set_port(a.port().wrapping_add(1));
                        a
                    })
                })
        };
        self.rtcp_dest = rtcp.map(RawSockAddr::from);
        self.rtcp_dest_addr = rtcp;
    }

    /// Applies what the DTLS handshake of a WebRTC leg came to.
    fn on_dtls_outcome(
        &mut self,
        session: SessionId,
        leg: usize,
        outcome: crate::webrtc::DtlsOutcome,
    ) {
        match outcome {
            crate::webrtc::DtlsOutcome::Pending => {}
            crate::webrtc::DtlsOutcome::Keys(keys) => match crate::srtp::SrtpLeg::new(&keys) {
                Ok(srtp) => {
                    info!(%session, leg = ?LegId::from_index(leg), "webrtc: dtls-srtp established");
                    self.srtp = Some(Box::new(srtp));
                }
                Err(e) => {
                    warn!(%session, leg = ?LegId::from_index(leg), error = %e, "webrtc: the exported srtp keys are not usable: the leg's media is dropped");
                    self.srtp_refused = true;
                }
            },
            // Logged by the DTLS side.
            crate::webrtc::DtlsOutcome::Refused => self.srtp_refused = true,
        }
        self.srtp_path = self.srtp.is_some() || self.srtp_refused || self.webrtc.is_some();
    }

    /// Socket and destination for traffic to this leg's peer.
    pub(crate) fn route(&self, rtcp: bool) -> (RawFd, Option<&RawSockAddr>) {
        match (rtcp, self.rtcp_mux) {
            (false, _) => (self.rtp.as_raw_fd(), self.rtp_dest.as_ref()),
            (true, true) => (self.rtp.as_raw_fd(), self.rtcp_dest.as_ref()),
            (true, false) => (self.rtcp.as_raw_fd(), self.rtcp_dest.as_ref()),
        }
    }

    /// Counts what the relay sent to this leg's peer.
    pub(crate) fn count_tx(&mut self, packets: u64, bytes: u64, route: Route) {
        if route.stun {
            return;
        }
        self.tally.tx_packets += packets;
        self.tally.tx_bytes += bytes;
        if route.rtcp {
            self.tally.tx_rtcp_packets += packets;
        }
    }

    /// A telephone-event packet from this leg's peer: reported once per event.
    fn on_telephone_event(
        &mut self,
        data: &[u8],
        session: SessionId,
        leg: usize,
        params: &WorkerParams,
    ) {
        let Some(ev) = crate::source::telephone_event(data) else {
            return;
        };
        if self.last_event == Some(ev.timestamp) {
            return;
        }
        self.last_event = Some(ev.timestamp);
        if let Some(digit) = ev.digit() {
            let _ = params.events.send(MediaEvent::Dtmf {
                session_id: session,
                leg: LegId::from_index(leg),
                digit,
            });
        }
    }

    fn publish(&mut self, c: &LegCounters, epoch: Instant) {
        c.publish(&self.tally, &self.reception, self.clock_rate, epoch);
        let remote = (self.rtp_latch.source(), self.reception.ssrc());
        if remote != self.published_remote {
            c.set_remote(remote.0, remote.1);
            self.published_remote = remote;
        }
    }
}

/// How a datagram leaves: toward the other leg's RTP or RTCP destination; STUN is relayed but
/// not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub rtcp: bool,
    pub stun: bool,
}

pub(crate) struct SessionState {
    id: SessionId,
    shared: Arc<SessionShared>,
    pub legs: [LegState; 2],
    forwarding: bool,
    /// RTP arriving on leg i is not relayed (mute).
    muted: [bool; 2],
    /// A supervisor's tap (see `crate::monitor`); `None` for nearly every call.
    monitor: Option<Arc<crate::monitor::MonitorTap>>,
    timeout: MediaTimeout,
    /// Counters changed since they were last published (io_uring loop).
    pub dirty: bool,
    /// Sends queued and not yet completed (io_uring loop).
    pub sends_in_flight: u32,
    /// Where the session's RTP is copied when it is recorded.
    recorder: Option<crate::recorder::RecTap>,
}

impl SessionState {
    fn last_rx(&self) -> Option<Instant> {
        self.legs[0].tally.last_rx.max(self.legs[1].tally.last_rx)
    }

    fn sockets(&self) -> [(&UdpSocket, &UdpSocket); 2] {
        let [a, b] = &self.legs;
        [(&a.rtp, &a.rtcp), (&b.rtp, &b.rtcp)]
    }

    /// The four sockets with their tokens (leg << 1 | rtcp port).
    pub(crate) fn fds(&self) -> [(RawFd, u64); 4] {
        tokened(self.sockets())
    }

    /// The socket behind a token.
    pub(crate) fn fd(&self, token: u64) -> RawFd {
        by_token(self.sockets(), token)
    }

    /// Judges and counts one datagram that arrived on leg `in_leg` (on its RTCP port when
    /// `from_rtcp_port`): latching, counters, RFC 3550 statistics. Returns how to relay it
    /// toward the other leg, or `None` when it stays here (counted as dropped or unsent).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_datagram(
        &mut self,
        in_leg: usize,
        from_rtcp_port: bool,
        data: &[u8],
        src: Option<SocketAddr>,
        truncated: bool,
        now: Instant,
        params: &WorkerParams,
    ) -> Option<Route> {
        let mode = params.latch;
        let [l0, l1] = &mut self.legs;
        let (inn, out) = if in_leg == 0 { (l0, l1) } else { (l1, l0) };
        let pkt = rtp::classify(data);
        let Some(src) = src else {
            inn.tally.not_forwarded += 1;
            return None;
        };
        if inn.srtp_path && inn.webrtc.is_some() {
            // A WebRTC leg: ICE, not latching, says where its peer is.
            let forwarding = self.forwarding && !truncated;
            webrtc_datagram(
                self.id,
                in_leg,
                inn,
                out,
                from_rtcp_port,
                data,
                src,
                forwarding,
                now,
                params,
            );
            return None;
        }
        let latch = if from_rtcp_port {
            &mut inn.rtcp_latch
        } else {
            &mut inn.rtp_latch
        };
        let probe = Probe {
            ssrc: pkt.ssrc(),
            seq: match pkt {
                Packet::Rtp(h) => Some(h.sequence),
                _ => None,
            },
        };
        match latch.on_packet(mode, src, probe, &inn.allowed, now) {
            LatchVerdict::Accept => {}
            LatchVerdict::Latched => {
                debug!(session = %self.id, leg = ?LegId::from_index(in_leg), rtcp = from_rtcp_port, source = %src, "latched");
                inn.refresh_dest(mode);
            }
            LatchVerdict::Probation => {
                inn.tally.not_forwarded += 1;
                return None;
            }
            LatchVerdict::Drop => {
                inn.tally.hijack_dropped += 1;
                if !inn.hijack_logged {
                    inn.hijack_logged = true;
                    warn!(
                        session = %self.id,
                        leg = ?LegId::from_index(in_leg),
                        source = %src,
                        allowed = ?inn.allowed.iter().collect::<Vec<_>>(),
                        "media from a source this leg does not accept: dropped (counted as hijack_dropped; logged once per leg)"
                    );
                }
                return None;
            }
        }
        if inn.srtp_path | out.srtp_path {
            let forwarding = self.forwarding && !truncated;
            srtp_datagram(
                self.id,
                in_leg,
                inn,
                out,
                from_rtcp_port,
                data,
                src,
                forwarding,
                now,
                params,
            );
            return None;
        }
        // STUN (ICE connectivity checks, consent and NAT keep-alives) is relayed untouched,
        // as the relay does no ICE of its own and the endpoints' checks must reach each other
        // end to end; but it is not media: it counts neither as a packet received or sent
        // nor as a sign of life for the media time-out ("no RTP for timeout_secs").
        let stun = matches!(pkt, Packet::Other) && rtp::is_stun(data);
        let is_rtcp = from_rtcp_port || pkt.is_rtcp();
        if !stun {
            inn.tally.rx_packets += 1;
            inn.tally.rx_bytes += data.len() as u64;
            inn.tally.rx_rtcp_packets += u64::from(is_rtcp);
            inn.tally.last_rx = Some(now);
            if let Packet::Rtp(h) = pkt {
                let since = now.saturating_duration_since(params.epoch);
                inn.reception
                    .on_rtp(&h, timestamp_units(since, inn.clock_rate));
                if h.payload_type == inn.event_pt {
                    inn.on_telephone_event(data, self.id, in_leg, params);
                }
                if let Some(tap) = &self.recorder {
                    if !tap.offer(in_leg, h.payload_type, data, now) {
                        self.recorder = None;
                    }
                }
            }
        }
        let mut held_back = false;
        if let (Packet::Rtp(h), false) = (pkt, from_rtcp_port) {
            // Muted, or heard through a monitor's mix instead: not relayed as is.
            held_back = self.muted[in_leg];
            if let Some(tap) = &self.monitor {
                let dests = if in_leg == 0 {
                    [inn.rtp_dest_addr, out.rtp_dest_addr]
                } else {
                    [out.rtp_dest_addr, inn.rtp_dest_addr]
                };
                held_back |= tap.on_rtp(in_leg, data, h.payload_type, dests, self.muted);
            }
        }
        if held_back {
            return None;
        }
        // A leg that hears a prompt hears nothing else (RTCP still passes).
        let forwarded = !truncated
            && self.forwarding
            && out.route(is_rtcp).1.is_some()
            && (is_rtcp || out.player.is_none());
        if is_rtcp && !stun {
            if let Some(tap) = &params.rtcp_tap {
                // RTCP only, a few packets a second per call: off the RTP path.
                tap_rtcp(
                    tap.as_ref(),
                    self.id,
                    in_leg,
                    inn,
                    out,
                    from_rtcp_port,
                    src,
                    data,
                    forwarded,
                );
            }
        }
        if !forwarded {
            inn.tally.not_forwarded += u64::from(!stun);
            return None;
        }
        Some(Route {
            rtcp: is_rtcp,
            stun,
        })
    }

    /// Publishes both legs' counters.
    pub(crate) fn publish(&mut self, epoch: Instant) {
        for (i, l) in self.legs.iter_mut().enumerate() {
            l.publish(&self.shared.legs[i], epoch);
        }
        self.dirty = false;
    }
}

/// The path of a datagram when either leg speaks SRTP (see [`crate::srtp`]): decrypt what
/// comes from an SRTP leg (dropping what fails authentication or the replay check, logged
/// once per leg), count it as the plain path does, encrypt what goes to an SRTP leg, and send
/// it at once from the other leg's socket. It copies (the packet changes length), so it is
/// kept apart from the plain path, which only pays the branch that leads here.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn srtp_datagram(
    session: SessionId,
    in_leg: usize,
    inn: &mut LegState,
    out: &mut LegState,
    from_rtcp_port: bool,
    data: &[u8],
    src: SocketAddr,
    forwarding: bool,
    now: Instant,
    params: &WorkerParams,
) {
    if inn.srtp_refused || out.srtp_refused {
        inn.tally.not_forwarded += 1;
        return;
    }
    let pkt = rtp::classify(data);
    let stun = matches!(pkt, Packet::Other) && rtp::is_stun(data);
    if (inn.webrtc.is_some() && inn.srtp.is_none())
        || (out.webrtc.is_some() && (stun || out.srtp.is_none()))
    {
        // A WebRTC leg before its keys (nothing plain goes to or comes from a browser), or
        // the other leg's STUN (the browser's ICE is with the relay, not end to end).
        inn.tally.not_forwarded += u64::from(!stun);
        return;
    }
    let is_rtcp = from_rtcp_port || pkt.is_rtcp();
    if matches!(pkt, Packet::Other) && !stun {
        // Neither RTP, RTCP nor STUN: nothing to decrypt or encrypt.
        inn.tally.not_forwarded += 1;
        return;
    }
    let decrypted;
    let plain: &[u8] = match (&mut inn.srtp, stun) {
        (Some(srtp), false) => match srtp.unprotect(data, is_rtcp) {
            Ok(p) => {
                decrypted = p;
                &decrypted
            }
            Err(e) => {
                inn.tally.srtp_dropped += 1;
                if !srtp.logged {
                    srtp.logged = true;
                    warn!(
                        %session,
                        leg = ?LegId::from_index(in_leg),
                        source = %src,
                        rtcp = is_rtcp,
                        replay = e.is_replay(),
                        error = %e,
                        "srtp packet refused: it failed authentication (a wrong key?) or the replay check; dropped (counted as srtp_dropped; logged once per leg)"
                    );
                }
                return;
            }
        },
        _ => data,
    };
    if !stun {
        inn.tally.rx_packets += 1;
        inn.tally.rx_bytes += plain.len() as u64;
        inn.tally.rx_rtcp_packets += u64::from(is_rtcp);
        inn.tally.last_rx = Some(now);
        if let Packet::Rtp(h) = rtp::classify(plain) {
            let since = now.saturating_duration_since(params.epoch);
            inn.reception
                .on_rtp(&h, timestamp_units(since, inn.clock_rate));
        }
    }
    let dest = if is_rtcp {
        out.rtcp_dest_addr
    } else {
        out.rtp_dest_addr
    };
    let (Some(dest), true) = (dest, forwarding) else {
        inn.tally.not_forwarded += u64::from(!stun);
        return;
    };
    if is_rtcp && !stun {
        if let Some(tap) = &params.rtcp_tap {
            tap_rtcp(
                tap.as_ref(),
                session,
                in_leg,
                inn,
                out,
                from_rtcp_port,
                src,
                plain,
                true,
            );
        }
    }
    let encrypted;
    let wire: &[u8] = match (&mut out.srtp, stun) {
        (Some(srtp), false) => match srtp.protect(plain, is_rtcp) {
            Ok(p) => {
                encrypted = p;
                &encrypted
            }
            Err(e) => {
                inn.tally.not_forwarded += 1;
                if !srtp.logged {
                    srtp.logged = true;
                    warn!(%session, error = %e, "srtp: a packet could not be protected; dropped (logged once per leg)");
                }
                return;
            }
        },
        _ => plain,
    };
    let sock = if is_rtcp && !out.rtcp_mux {
        &out.rtcp
    } else {
        &out.rtp
    };
    match sock.send_to(wire, dest) {
        Ok(_) => out.count_tx(
            1,
            wire.len() as u64,
            Route {
                rtcp: is_rtcp,
                stun,
            },
        ),
        Err(_) => inn.tally.not_forwarded += 1,
    }
}

/// A datagram on a WebRTC leg, demultiplexed by its first byte (RFC 7983): STUN checks are
/// answered (ICE-lite) and choose the peer's address; DTLS from that address drives the
/// handshake (whose end keys the leg's SRTP); SRTP from it takes the SRTP path; the rest is
/// dropped.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn webrtc_datagram(
    session: SessionId,
    in_leg: usize,
    inn: &mut LegState,
    out: &mut LegState,
    from_rtcp_port: bool,
    data: &[u8],
    src: SocketAddr,
    forwarding: bool,
    now: Instant,
    params: &WorkerParams,
) {
    use crate::webrtc::{demux, Demux};
    let Some(w) = inn.webrtc.as_deref_mut() else {
        return;
    };
    if from_rtcp_port {
        // rtcp-mux: nothing of a WebRTC leg arrives on the RTCP port.
        inn.tally.not_forwarded += 1;
        return;
    }
    match demux(data) {
        Demux::Stun => {
            let before = w.selected;
            if let Some(resp) = w.on_stun(data, src) {
                let _ = inn.rtp.send_to(&resp, src);
            }
            if w.selected != before {
                inn.refresh_dest(params.latch);
            }
        }
        Demux::Dtls if w.is_validated(src) => {
            let mut replies = Vec::new();
            let outcome = w.on_dtls(data, &mut replies);
            for d in &replies {
                let _ = inn.rtp.send_to(d, src);
            }
            inn.on_dtls_outcome(session, in_leg, outcome);
        }
        Demux::Rtp if w.is_validated(src) => {
            let from_selected = w.selected == Some(src);
            let dropped = inn.tally.srtp_dropped;
            srtp_datagram(
                session, in_leg, inn, out, false, data, src, forwarding, now, params,
            );
            // Authenticated SRTP from another validated pair: the browser moved its media.
            if !from_selected && inn.tally.srtp_dropped == dropped && inn.srtp.is_some() {
                if let Some(w) = inn.webrtc.as_deref_mut() {
                    if w.media_from(src) {
                        inn.refresh_dest(params.latch);
                    }
                }
            }
        }
        Demux::Dtls | Demux::Rtp => {
            // From an address no ICE check came from: not the browser this leg talks to.
            inn.tally.hijack_dropped += 1;
            if !inn.hijack_logged {
                inn.hijack_logged = true;
                warn!(%session, leg = ?LegId::from_index(in_leg), source = %src, "webrtc: dtls or srtp from an address no ice check came from: dropped (counted as hijack_dropped; logged once per leg)");
            }
        }
        Demux::Other => inn.tally.not_forwarded += 1,
    }
}

/// How a backend watches a session's sockets.
pub(crate) trait Watch {
    /// Starts receiving on the four sockets of the session in `slot` (generation `gen`).
    fn watch(&mut self, slot: usize, gen: u32, s: &SessionState) -> std::io::Result<()>;
    /// Stops receiving on the four sockets `fds` of `slot` (with `sends` of theirs in flight);
    /// after this no request refers to the sockets, so closing them frees their ports at
    /// once.
    fn unwatch(&mut self, slot: usize, gen: u32, fds: [(RawFd, u64); 4], sends: u32);
}

/// The four sockets of a session's legs, (RTP, RTCP) of A then B, with their tokens (leg <<
/// 1 | rtcp port).
fn tokened(legs: [(&UdpSocket, &UdpSocket); 2]) -> [(RawFd, u64); 4] {
    let t = |leg: usize, rtcp: bool| ((leg as u64) << 1) | u64::from(rtcp);
    let [(a_rtp, a_rtcp), (b_rtp, b_rtcp)] = legs;
    [
        (a_rtp.as_raw_fd(), t(0, false)),
        (a_rtcp.as_raw_fd(), t(0, true)),
        (b_rtp.as_raw_fd(), t(1, false)),
        (b_rtcp.as_raw_fd(), t(1, true)),
    ]
}

/// The socket of `legs` behind a token.
fn by_token(legs: [(&UdpSocket, &UdpSocket); 2], token: u64) -> RawFd {
    let (rtp, rtcp) = legs[((token >> 1) & 1) as usize];
    if token & 1 == 1 {
        rtcp.as_raw_fd()
    } else {
        rtp.as_raw_fd()
    }
}

/// A parked session's sockets as [`tokened`] and [`by_token`] take them.
fn parked_sockets(legs: &[LegSockets; 2]) -> [(&UdpSocket, &UdpSocket); 2] {
    let [a, b] = legs;
    [(&a.rtp, &a.rtcp), (&b.rtp, &b.rtcp)]
}

/// What both backends share: the sessions, control messages, time-outs.
pub(crate) struct Core {
    pub wake: Arc<EventFd>,
    rx: mpsc::Receiver<Control>,
    pub params: WorkerParams,
    pub sessions: Vec<Option<SessionState>>,
    /// Bumped when a slot is freed, so that late completions of a closed session's
    /// requests are not taken for the next session in the slot.
    pub gens: Vec<u32>,
    free_slots: Vec<usize>,
    by_id: HashMap<SessionId, usize>,
    /// The sockets of parked sessions, by slot (see [`Parked`]); their slots are neither
    /// live nor free.
    parked: Vec<Option<[LegSockets; 2]>>,
    /// Each slot's [`Parked::heard`], kept from one parking to the next, and when it was
    /// last parked.
    heard: Vec<(Arc<AtomicU64>, Instant)>,
    parked_queue: ParkedQueue,
    next_park_check: Instant,
    tick: Duration,
    pub next_tick: Instant,
    /// Legs playing a prompt, and when the next packet of one of them is due.
    pub players: usize,
    pub next_play: Option<Instant>,
}

impl Core {
    fn new(
        wake: Arc<EventFd>,
        rx: mpsc::Receiver<Control>,
        params: WorkerParams,
        parked_queue: ParkedQueue,
    ) -> Self {
        let tick =
            (params.timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(500));
        Core {
            wake,
            rx,
            sessions: Vec::new(),
            gens: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            parked: Vec::new(),
            heard: Vec::new(),
            parked_queue,
            next_park_check: Instant::now() + PARK_CHECK,
            tick,
            next_tick: Instant::now() + tick,
            players: 0,
            next_play: None,
            params,
        }
    }

    /// The live session in `slot` if it is still generation `gen`.
    pub(crate) fn session(&mut self, slot: usize, gen: u32) -> Option<&mut SessionState> {
        if self.gens.get(slot).copied()? & GEN_MASK != gen & GEN_MASK {
            return None;
        }
        self.sessions.get_mut(slot)?.as_mut()
    }

    /// Applies waiting control messages: how many, `None` when the thread must stop.
    pub(crate) fn apply_control(&mut self, now: Instant, io: &mut impl Watch) -> Option<usize> {
        let mut applied = 0;
        loop {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::TryRecvError::Empty) => return Some(applied),
                Err(mpsc::TryRecvError::Disconnected) => return None,
            };
            applied += 1;
            match msg {
                Control::Add(new) => self.add(*new, io),
                Control::SetPeer {
                    id,
                    leg,
                    rtp,
                    rtcp,
                    rtcp_mux,
                } => {
                    let mode = self.params.latch;
                    if let Some(s) = self.session_mut(id) {
                        let l = &mut s.legs[leg.index()];
                        if l.rtp_hint.is_some_and(|h| h != rtp) {
                            // New SDP moved the peer: let it latch afresh.
                            l.rtp_latch.reset();
                            l.rtcp_latch.reset();
                        }
                        l.rtp_hint = Some(rtp);
                        l.rtcp_hint = rtcp;
                        // A WebRTC leg is always rtcp-mux (RFC 8834 §5.1.1).
                        l.rtcp_mux = rtcp_mux || l.webrtc.is_some();
                        l.refresh_dest(mode);
                        l.refresh_allowed(mode);
                    }
                }
                Control::AllowSources { id, leg, ips } => {
                    let mode = self.params.latch;
                    if let Some(s) = self.session_mut(id) {
                        let l = &mut s.legs[leg.index()];
                        l.signalling = AllowedSources::new(ips.iter().copied());
                        l.refresh_allowed(mode);
                    }
                }
                Control::SetClockRate { id, leg, hz } => {
                    if let Some(s) = self.session_mut(id) {
                        s.legs[leg.index()].clock_rate = hz.max(1);
                    }
                }
                Control::Play { id, leg, prompt } => {
                    let seed = id.0 ^ ((leg.index() as u64) << 40);
                    let mut delta = 0isize;
                    if let Some(s) = self.session_mut(id) {
                        let l = &mut s.legs[leg.index()];
                        let was = l.player.is_some();
                        l.player = prompt.map(|p| crate::source::Player::new(p, now, seed));
                        delta = l.player.is_some() as isize - was as isize;
                    }
                    self.players = self.players.saturating_add_signed(delta);
                    if self.players > 0 {
                        self.next_play = Some(now);
                    }
                }
                Control::Record { id, tap } => {
                    if let Some(s) = self.session_mut(id) {
                        s.recorder = tap;
                    }
                }
                Control::WatchEvents {
                    id,
                    leg,
                    payload_type,
                } => {
                    if let Some(s) = self.session_mut(id) {
                        let l = &mut s.legs[leg.index()];
                        l.event_pt = payload_type.map_or(NO_EVENTS, |pt| pt & 0x7f);
                        l.last_event = None;
                    }
                }
                Control::SetSrtp { id, leg, keys } => {
                    if let Some(s) = self.session_mut(id) {
                        let l = &mut s.legs[leg.index()];
                        l.srtp = match keys.map(|k| crate::srtp::SrtpLeg::new(&k)) {
                            None => None,
                            Some(Ok(srtp)) => Some(Box::new(srtp)),
                            Some(Err(e)) => {
                                warn!(session = %id, ?leg, error = %e, "srtp keys not usable: the leg's media is dropped");
                                l.srtp_refused = true;
                                None
                            }
                        };
                        l.srtp_path = l.srtp.is_some() || l.srtp_refused || l.webrtc.is_some();
                    }
                }
                Control::SetWebRtc { id, leg, state } => {
                    let mode = self.params.latch;
                    if let Some(s) = self.session_mut(id) {
                        let l = &mut s.legs[leg.index()];
                        l.srtp = None;
                        l.srtp_refused = false;
                        if state.is_some() {
                            l.rtcp_mux = true;
                        }
                        l.webrtc = state;
                        l.srtp_path = l.webrtc.is_some();
                        l.refresh_dest(mode);
                    }
                }
                Control::WebRtcFingerprint {
                    id,
                    leg,
                    fingerprint,
                } => {
                    if let Some(s) = self.session_mut(id) {
                        let l = &mut s.legs[leg.index()];
                        if let Some(w) = l.webrtc.as_deref_mut() {
                            let outcome = w.set_remote_fingerprint(fingerprint.map(|f| *f));
                            let alerts = w.take_outbox();
                            if let Some(dest) = w.selected {
                                for d in &alerts {
                                    let _ = l.rtp.send_to(d, dest);
                                }
                            }
                            l.on_dtls_outcome(id, leg.index(), outcome);
                        }
                    }
                }
                Control::Start(id) => {
                    if let Some(s) = self.session_mut(id) {
                        s.forwarding = true;
                        s.timeout.arm(now);
                    }
                }
                Control::Stop(id) => {
                    if let Some(s) = self.session_mut(id) {
                        s.forwarding = false;
                        s.timeout.disarm();
                    }
                }
                Control::Mute { id, leg, muted } => {
                    if let Some(s) = self.session_mut(id) {
                        s.muted[leg.index()] = muted;
                    }
                }
                Control::Monitor { id, tap, reply } => {
                    let mut socks = None;
                    if let Some(s) = self.session_mut(id) {
                        if tap.is_some() {
                            socks = match (s.legs[0].rtp.try_clone(), s.legs[1].rtp.try_clone()) {
                                (Ok(a), Ok(b)) => Some([a, b]),
                                _ => None,
                            };
                            if socks.is_some() {
                                s.monitor = tap;
                            }
                        } else {
                            s.monitor = None;
                        }
                    }
                    if let Some(r) = reply {
                        r.send(socks);
                    }
                }
                Control::Remove { id, done } => {
                    if let Some(slot) = self.by_id.remove(&id) {
                        let parked = match self.sessions[slot].take() {
                            Some(s) => {
                                let playing = s.legs.iter().filter(|l| l.player.is_some()).count();
                                self.players = self.players.saturating_sub(playing);
                                self.close_session(slot, s, io, Some(now))
                            }
                            None => false,
                        };
                        if !parked {
                            self.free_slot(slot);
                        }
                    }
                    if let Some(done) = done {
                        done.send(());
                    }
                }
                Control::Shutdown => return None,
            }
        }
    }

    fn free_slot(&mut self, slot: usize) {
        if let Some(g) = self.gens.get_mut(slot) {
            *g = g.wrapping_add(1) & GEN_MASK;
        }
        self.free_slots.push(slot);
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut SessionState> {
        let slot = *self.by_id.get(&id)?;
        self.sessions.get_mut(slot)?.as_mut()
    }

    fn add(&mut self, new: NewSession, io: &mut impl Watch) {
        let NewSession { id, shared, legs } = new;
        let (legs, parked_slot) = match legs {
            NewLegs::Bound(legs) => (legs, None),
            NewLegs::Parked(slot) => match self.parked.get_mut(slot).and_then(Option::take) {
                Some(legs) => (legs, Some(slot)),
                None => {
                    // The relay claimed it from this thread's queue, which only this thread
                    // fills, and only with sockets it holds: never happens.
                    warn!(session = %id, slot, "relay session refers to no parked sockets; dropped");
                    return;
                }
            },
        };
        let [a, b] = legs;
        let mut s = SessionState {
            id,
            shared,
            legs: [LegState::new(a), LegState::new(b)],
            forwarding: true,
            muted: [false, false],
            monitor: None,
            timeout: MediaTimeout::new(self.params.timeout),
            dirty: false,
            sends_in_flight: 0,
            recorder: None,
        };
        s.publish(self.params.epoch);
        let slot = match parked_slot {
            // Its receives are still armed, under the slot's generation.
            Some(slot) => slot,
            None => {
                let slot = self.free_slots.pop().unwrap_or_else(|| {
                    self.sessions.push(None);
                    self.gens.push(0);
                    self.sessions.len() - 1
                });
                let gen = self.gens.get(slot).copied().unwrap_or(0);
                if let Err(e) = io.watch(slot, gen, &s) {
                    warn!(session = %id, error = %e, "cannot watch a relay socket; session dropped");
                    self.close_session(slot, s, io, None);
                    self.free_slot(slot);
                    return;
                }
                slot
            }
        };
        debug!(session = %id, a = s.legs[0].rtp_port, b = s.legs[1].rtp_port, reused = parked_slot.is_some(), "relay session added");
        self.sessions[slot] = Some(s);
        self.by_id.insert(id, slot);
    }

    /// Publishes a session's last counters, then either parks its sockets (`park`: the
    /// time, when the thread keeps fewer than its limit; their receives stay armed and the
    /// slot stays taken; see [`Parked`]) or stops watching them, closes them and gives the
    /// ports back. Returns whether it parked them.
    fn close_session(
        &mut self,
        slot: usize,
        mut s: SessionState,
        io: &mut impl Watch,
        park: Option<Instant>,
    ) -> bool {
        s.publish(self.params.epoch);
        let ports = [s.legs[0].rtp_port, s.legs[1].rtp_port];
        // Not with a send in flight (its completion would find no session to count it on),
        // and not into the last quarter of the range's free pairs (a monitor's pair, which
        // cannot take parked sockets, would find none).
        if let Some(since) = park.filter(|_| s.sends_in_flight == 0 && self.room_to_park()) {
            let mut queue = self
                .parked_queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if queue.len() < self.params.park_limit {
                if self.parked.len() <= slot {
                    self.parked.resize_with(slot + 1, || None);
                }
                while self.heard.len() <= slot {
                    self.heard.push((Arc::new(AtomicU64::new(0)), since));
                }
                let (heard, parked_at) = &mut self.heard[slot];
                *parked_at = since;
                let heard = Arc::clone(heard);
                heard.store(0, Ordering::Relaxed);
                let [a, b] = s.legs;
                self.parked[slot] = Some([a.into_sockets(), b.into_sockets()]);
                queue.push_back(Parked {
                    slot,
                    ports,
                    since,
                    heard,
                });
                debug!(session = %s.id, "relay session closed; its sockets parked");
                return true;
            }
        }
        let gen = self.gens.get(slot).copied().unwrap_or(0);
        io.unwatch(slot, gen, s.fds(), s.sends_in_flight);
        drop(s.legs);
        self.release_ports(ports);
        debug!(session = %s.id, "relay session closed");
        false
    }

    /// Whether parking two more pairs leaves a quarter of the range's pairs free.
    fn room_to_park(&self) -> bool {
        let alloc = self
            .params
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = alloc.pairs_total();
        total.saturating_sub(alloc.pairs_in_use()) >= total / 4
    }

    /// A datagram came to a socket of the parked session in `slot` (generation `gen`) and
    /// was dropped: its rest starts again ([`Parked::quiet_since`]). `None`: the slot is
    /// not parked; `Some(true)`: the datagram came `park_late` or more after the parking,
    /// and the caller closes the sockets ([`Core::discard_parked`]).
    pub(crate) fn heard_parked(&self, slot: usize, gen: u32, now: Instant) -> Option<bool> {
        let parked = self
            .gens
            .get(slot)
            .is_some_and(|g| g & GEN_MASK == gen & GEN_MASK)
            && self.parked.get(slot).is_some_and(Option::is_some);
        let (heard, parked_at) = self.heard.get(slot).filter(|_| parked)?;
        let ms = now.saturating_duration_since(self.params.epoch).as_millis();
        heard.store(
            u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
        Some(now.saturating_duration_since(*parked_at) >= self.params.park_late)
    }

    /// Closes the parked session in `slot` if it is still in the queue (a receive of it could
    /// not be armed again, or it was heard `park_late` after its parking). One claimed
    /// already is left to its new session.
    pub(crate) fn discard_parked(&mut self, slot: usize, io: &mut impl Watch, why: &str) {
        let queued = {
            let mut queue = self
                .parked_queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = queue.iter().position(|p| p.slot == slot);
            at.and_then(|i| queue.remove(i)).is_some()
        };
        if queued {
            debug!(slot, why, "a parked relay session's sockets closed");
            self.close_parked(slot, io);
        }
    }

    fn release_ports(&self, ports: [u16; 2]) {
        let mut alloc = self
            .params
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in ports {
            alloc.release(p);
        }
    }

    /// Closes the sockets parked in `slot` (popped from the queue by this thread) and frees
    /// the slot and the ports.
    fn close_parked(&mut self, slot: usize, io: &mut impl Watch) {
        let Some(legs) = self.parked.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let gen = self.gens.get(slot).copied().unwrap_or(0);
        io.unwatch(slot, gen, tokened(parked_sockets(&legs)), 0);
        let ports = [legs[0].rtp_port, legs[1].rtp_port];
        drop(legs);
        self.release_ports(ports);
        self.free_slot(slot);
    }

    /// Closes the sessions parked for `park_idle`; looks at most every [`PARK_CHECK`] (or
    /// `park_idle`, when shorter).
    pub(crate) fn expire_parked(&mut self, now: Instant, io: &mut impl Watch) {
        if now < self.next_park_check {
            return;
        }
        let idle = self.params.park_idle;
        self.next_park_check = now + PARK_CHECK.min(idle);
        let mut due = Vec::new();
        {
            let mut queue = self
                .parked_queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while queue
                .front()
                .is_some_and(|p| now.saturating_duration_since(p.since) >= idle)
            {
                if let Some(p) = queue.pop_front() {
                    due.push(p.slot);
                }
            }
        }
        for slot in due {
            self.close_parked(slot, io);
        }
    }

    /// The socket of a parked session behind a token (its receive ended and is armed again).
    pub(crate) fn parked_fd(&self, slot: usize, gen: u32, token: u64) -> Option<RawFd> {
        if self.gens.get(slot).copied()? & GEN_MASK != gen & GEN_MASK {
            return None;
        }
        let legs = self.parked.get(slot)?.as_ref()?;
        Some(by_token(parked_sockets(legs), token))
    }

    /// Closes every session and every parked one (the thread is stopping).
    pub(crate) fn close_all(&mut self, io: &mut impl Watch) {
        for slot in 0..self.sessions.len() {
            if let Some(s) = self.sessions[slot].take() {
                self.close_session(slot, s, io, None);
            }
        }
        let queued: Vec<usize> = self
            .parked_queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .map(|p| p.slot)
            .collect();
        for slot in queued {
            self.close_parked(slot, io);
        }
        // Claimed by the relay, whose session's `Add` did not come.
        for slot in 0..self.parked.len() {
            self.close_parked(slot, io);
        }
    }

    /// Sends the prompt packets that are due, and notes when the next one is.
    pub(crate) fn play_due(&mut self, now: Instant) {
        if self.players == 0 {
            self.next_play = None;
            return;
        }
        if self.next_play.is_some_and(|t| t > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        let mut buf = [0u8; crate::source::PACKET_LEN];
        let mut ended = 0;
        for s in self.sessions.iter_mut().flatten() {
            for (i, l) in s.legs.iter_mut().enumerate() {
                let Some(p) = l.player.as_mut() else { continue };
                loop {
                    match p.frame(now, &mut buf) {
                        crate::source::Frame::Packet(n) => {
                            let Some(dest) = l.rtp_dest_addr else {
                                continue;
                            };
                            // An SRTP leg (SDES or WebRTC) hears the prompt encrypted; one
                            // without usable keys (a browser before its handshake) none.
                            let sent = match (&mut l.srtp, l.srtp_path) {
                                (Some(srtp), _) => match srtp.protect(&buf[..n], false) {
                                    Ok(wire) => l.rtp.send_to(&wire, dest).map(|_| wire.len()),
                                    Err(_) => continue,
                                },
                                (None, true) => continue,
                                (None, false) => l.rtp.send_to(&buf[..n], dest).map(|_| n),
                            };
                            if let Ok(len) = sent {
                                l.tally.tx_packets += 1;
                                l.tally.tx_bytes += len as u64;
                                s.dirty = true;
                            }
                        }
                        crate::source::Frame::NotBefore(t) => {
                            next = Some(next.map_or(t, |n| n.min(t)));
                            break;
                        }
                        crate::source::Frame::Finished => {
                            l.player = None;
                            ended += 1;
                            let _ = self.params.events.send(MediaEvent::PromptEnded {
                                session_id: s.id,
                                leg: LegId::from_index(i),
                            });
                            break;
                        }
                    }
                }
            }
            if s.dirty {
                s.publish(self.params.epoch);
            }
        }
        self.players = self.players.saturating_sub(ended);
        self.next_play = next;
    }

    /// How long a loop may wait: until the next tick or the next prompt packet.
    pub(crate) fn wait_until(&self) -> Instant {
        self.next_play
            .map_or(self.next_tick, |p| p.min(self.next_tick))
    }

    /// Runs the media time-outs when a tick is due.
    pub(crate) fn tick(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.tick;
        for s in self.sessions.iter_mut().flatten() {
            let last = s.last_rx();
            if s.timeout.poll(now, last) {
                info!(session = %s.id, "media time-out: no RTP from either leg");
                let _ = self
                    .params
                    .events
                    .send(MediaEvent::Timeout { session_id: s.id });
            }
        }
    }
}

/// Generations wrap within 29 bits (they travel in io_uring `user_data` and send tags).
pub(crate) const GEN_MASK: u32 = (1 << 29) - 1;

/// The epoll backend: one `recvmmsg` per readable socket, `sendmmsg` of the same buffers.
struct EpollWorker {
    epoll: Epoll,
    core: Core,
    batch: Batch,
}

struct EpollWatch<'a>(&'a Epoll);

impl Watch for EpollWatch<'_> {
    fn watch(&mut self, slot: usize, _gen: u32, s: &SessionState) -> std::io::Result<()> {
        for (fd, t) in s.fds() {
            self.0.add(fd, ((slot as u64) << 2) | t)?;
        }
        Ok(())
    }

    fn unwatch(&mut self, _slot: usize, _gen: u32, fds: [(RawFd, u64); 4], _sends: u32) {
        for (fd, _) in fds {
            let _ = self.0.delete(fd);
        }
    }
}

impl EpollWorker {
    fn new(epoll: Epoll, core: Core) -> Self {
        EpollWorker {
            epoll,
            core,
            batch: Batch::new(),
        }
    }

    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        loop {
            let wait_ms = self
                .core
                .wait_until()
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(1000) as i32;
            let n = match self.epoll.wait(&mut events, wait_ms) {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "epoll_wait failed; forwarding thread stops");
                    break;
                }
            };
            let now = Instant::now();
            if events[..n].iter().any(|e| e.u64 == WAKE_TOKEN) {
                self.core.wake.drain();
            }
            if self
                .core
                .apply_control(now, &mut EpollWatch(&self.epoll))
                .is_none()
            {
                break;
            }
            for ev in &events[..n] {
                let token = ev.u64;
                if token != WAKE_TOKEN {
                    self.on_readable(token, now);
                }
            }
            if self.core.players > 0 {
                self.core.play_due(Instant::now());
            }
            self.core.tick(now);
            self.core.expire_parked(now, &mut EpollWatch(&self.epoll));
        }
        self.core.close_all(&mut EpollWatch(&self.epoll));
    }

    /// Relays what is waiting on one socket.
    fn on_readable(&mut self, token: u64, now: Instant) {
        let slot = (token >> 2) as usize;
        let in_leg = ((token >> 1) & 1) as usize;
        let from_rtcp_port = token & 1 == 1;
        let EpollWorker { core, batch, .. } = self;
        let params = &core.params;
        let Some(Some(s)) = core.sessions.get_mut(slot) else {
            // A parked session's socket: what came is dropped, one batch per readiness like a
            // live socket's (the loop is level-triggered and comes back for more).
            let gen = core.gens.get(slot).copied().unwrap_or(0);
            if let Some(fd) = core.parked_fd(slot, gen, token & 3) {
                if matches!(batch.recv(fd), Ok(n) if n > 0)
                    && core.heard_parked(slot, gen, now) == Some(true)
                {
                    core.discard_parked(slot, &mut EpollWatch(&self.epoll), "heard too late");
                }
            }
            return;
        };
        let n = match batch.recv(s.fd(token & 3)) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                debug!(session = %s.id, error = %e, "recvmmsg failed");
                return;
            }
        };
        // Packets are sent in order, grouped by route (RTP or RTCP toward the other leg).
        let mut group: Option<Route> = None;
        for i in 0..n {
            let (data, src, truncated) = batch.packet(i);
            let Some(route) =
                s.on_datagram(in_leg, from_rtcp_port, data, src, truncated, now, params)
            else {
                continue;
            };
            if group != Some(route) {
                if let Some(g) = group {
                    flush(batch, s, in_leg, g);
                }
                group = Some(route);
            }
            batch.queue(i);
        }
        if let Some(g) = group {
            flush(batch, s, in_leg, g);
        }
        s.publish(params.epoch);
    }
}

fn flush(batch: &mut Batch, s: &mut SessionState, in_leg: usize, route: Route) {
    let [l0, l1] = &mut s.legs;
    let (inn, out) = if in_leg == 0 { (l0, l1) } else { (l1, l0) };
    let (fd, dest) = out.route(route.rtcp);
    let Some(dest) = dest else {
        inn.tally.not_forwarded += batch.discard() as u64;
        return;
    };
    let sent = batch.flush(fd, dest);
    out.count_tx(sent.packets, sent.bytes, route);
    if !route.stun {
        inn.tally.not_forwarded += sent.failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a wake-up was written to the thread's eventfd since the last look.
    fn woken(h: &WorkerHandle) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the descriptor is non-blocking.
        let n = unsafe { libc::read(h.wake.raw(), (&mut v as *mut u64).cast(), 8) };
        h.wake.drain();
        n == 8
    }

    /// A message that only changes how the next datagrams are judged is queued without a
    /// wake-up (the thread reads it before it judges one); a removal, which someone may
    /// wait for, wakes the thread. Every message is queued.
    #[test]
    fn only_messages_with_effects_of_their_own_wake_the_thread() {
        let (h, rx) = WorkerHandle::unserved();
        let id = SessionId(1);
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for c in [
            Control::SetPeer {
                id,
                leg: LegId::A,
                rtp: peer,
                rtcp: None,
                rtcp_mux: false,
            },
            Control::AllowSources {
                id,
                leg: LegId::A,
                ips: Box::new([peer.ip()]),
            },
            Control::Start(id),
            Control::Mute {
                id,
                leg: LegId::B,
                muted: true,
            },
            // A session on parked sockets: their receives are armed already.
            Control::Add(Box::new(NewSession {
                id: SessionId(2),
                shared: Arc::new(SessionShared {
                    legs: [LegCounters::default(), LegCounters::default()],
                    epoch: Instant::now(),
                }),
                legs: NewLegs::Parked(0),
            })),
        ] {
            h.send(c).unwrap();
        }
        assert!(!woken(&h));
        for c in [
            Control::Play {
                id,
                leg: LegId::A,
                prompt: None,
            },
            Control::Remove { id, done: None },
        ] {
            h.send(c).unwrap();
            assert!(woken(&h));
        }
        assert_eq!(rx.try_iter().count(), 7);
    }
}
