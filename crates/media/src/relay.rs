//! The control side: [`Relay`] starts the forwarding threads and hands out [`MediaSession`]s.

use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::config::{Backend, RelayConfig};
use crate::error::MediaError;
use crate::monitor::{Monitor, MonitorMode, MonitorParts};
use crate::ports::PortAllocator;
use crate::stats::{LegCounters, SessionStats};
use crate::worker::{
    self, Control, LegSockets, NewLegs, NewSession, Parked, Reply, SessionShared, WorkerHandle,
};

/// How long closing a session waits for its forwarding thread at most.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Identifies a relay session (one bridged call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "media-{}", self.0)
    }
}

/// The two legs of a session. By convention A faces the agent, B the customer (trunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegId {
    /// The agent side.
    A,
    /// The customer side.
    B,
}

impl LegId {
    /// The leg whose packets this leg's packets are sent to.
    pub fn other(self) -> LegId {
        match self {
            LegId::A => LegId::B,
            LegId::B => LegId::A,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            LegId::A => 0,
            LegId::B => 1,
        }
    }

    pub(crate) fn from_index(i: usize) -> LegId {
        if i == 0 {
            LegId::A
        } else {
            LegId::B
        }
    }
}

/// Something the relay tells the call layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaEvent {
    /// No packet from either leg of a started session for `timeout`.
    Timeout {
        /// The silent session.
        session_id: SessionId,
    },
    /// A DTMF digit arrived on a leg as an RFC 4733 telephone-event (reported once per
    /// event, at its first packet; see [`MediaSession::watch_telephone_events`]).
    Dtmf {
        session_id: SessionId,
        leg: LegId,
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
    },
    /// A one-shot prompt played into a leg has ended (the leg is forwarded to again).
    PromptEnded { session_id: SessionId, leg: LegId },
    /// A session's recording stopped before the session ended (a full disk, an I/O
    /// error); the session goes on being relayed.
    RecordingStopped {
        session_id: SessionId,
        reason: String,
    },
}

/// The local side of one leg: the relay ports its peer sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    id: LegId,
    rtp_port: u16,
    bind: IpAddr,
    advertise: IpAddr,
}

impl Leg {
    /// Which leg this is.
    pub fn id(&self) -> LegId {
        self.id
    }

    /// The even RTP port (the `m=` port of the SDP sent to this leg's peer).
    pub fn local_rtp_port(&self) -> u16 {
        self.rtp_port
    }

    /// The odd RTCP port, RTP + 1 (RFC 3550 §11; `a=rtcp` of RFC 3605 when stated).
    pub fn local_rtcp_port(&self) -> u16 {
        self.rtp_port + 1
    }

    /// The RTP address to write into SDP (`media.advertise`).
    pub fn advertised_rtp(&self) -> SocketAddr {
        SocketAddr::new(self.advertise, self.rtp_port)
    }

    /// The address the RTP socket is bound to (`media.bind`).
    pub fn bound_rtp(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.rtp_port)
    }

    /// The address the RTCP socket is bound to.
    pub fn bound_rtcp(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.rtp_port + 1)
    }
}

/// The media relay: forwarding threads plus the port range.
///
/// Dropping it stops the threads, closes every session's sockets and frees every port.
#[derive(Debug)]
pub struct Relay {
    cfg: RelayConfig,
    workers: Vec<WorkerHandle>,
    threads: Vec<JoinHandle<()>>,
    ports: Arc<Mutex<PortAllocator>>,
    next_id: AtomicU64,
    next_worker: AtomicUsize,
    epoch: Instant,
    events: Mutex<Option<UnboundedReceiver<MediaEvent>>>,
    /// For the recording threads' reports.
    events_tx: tokio::sync::mpsc::UnboundedSender<MediaEvent>,
    backend: Backend,
    /// The DTLS identity of every WebRTC leg (see [`crate::webrtc`]).
    dtls: Option<Arc<crate::webrtc::DtlsIdentity>>,
}

/// An RTP port and the RTCP port above it, bound on `bind`, non-blocking.
pub(crate) fn bind_pair(bind: IpAddr, port: u16) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let rtp = crate::sys::bind_udp_nonblocking(SocketAddr::new(bind, port))?;
    let rtcp = crate::sys::bind_udp_nonblocking(SocketAddr::new(bind, port + 1))?;
    Ok((rtp, rtcp))
}

/// The shorter rest a parked session's sockets must have had when no pair of the range is
/// free ([`Relay::allocate_session`]).
pub(crate) const PARK_MIN_REST: Duration = Duration::from_millis(200);

impl Relay {
    /// The relay's DTLS certificate fingerprint (for `a=fingerprint`); `None` when no DTLS
    /// identity could be made at start (WebRTC legs are then refused).
    pub fn dtls_fingerprint(&self) -> Option<&crate::webrtc::Fingerprint> {
        self.dtls.as_ref().map(|d| d.fingerprint())
    }

    /// Validates `cfg` and starts `cfg.workers` forwarding threads.
    pub fn start(cfg: RelayConfig) -> Result<Relay, MediaError> {
        cfg.validate()?;
        let epoch = Instant::now();
        let ports = Arc::new(Mutex::new(PortAllocator::new(cfg.port_min, cfg.port_max)));
        let (events_tx, events_rx) = unbounded_channel();
        let params = worker::WorkerParams {
            latch: cfg.latch,
            timeout: cfg.timeout,
            epoch,
            ports: Arc::clone(&ports),
            // Half the range's pairs, two a session, shared by the threads.
            park_limit: crate::ports::pair_count(cfg.port_min, cfg.port_max)
                / 4
                / cfg.worker_count().max(1),
            park_idle: cfg.park_idle,
            park_late: cfg.park_late,
            events: events_tx.clone(),
            rtcp_tap: cfg.rtcp_tap.0.clone(),
        };
        let mut relay = Relay {
            workers: Vec::new(),
            threads: Vec::new(),
            ports,
            next_id: AtomicU64::new(1),
            next_worker: AtomicUsize::new(0),
            epoch,
            events: Mutex::new(Some(events_rx)),
            events_tx,
            backend: Backend::Auto,
            dtls: match crate::webrtc::DtlsIdentity::generate() {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "no DTLS identity could be made: WebRTC legs will be refused");
                    None
                }
            },
            cfg,
        };
        let mut backend = relay.cfg.backend.resolve_env();
        let mut detail = String::new();
        for i in 0..relay.cfg.worker_count() {
            // On failure `relay` is dropped, which stops the threads already started.
            let (handle, join, started) = worker::spawn(i, params.clone(), backend)?;
            relay.workers.push(handle);
            relay.threads.push(join);
            // The first thread decides for the others: they all run the same way.
            backend = match started {
                worker::Started::IoUring(d) => {
                    detail = d;
                    Backend::IoUring
                }
                worker::Started::Epoll => Backend::Epoll,
            };
        }
        relay.backend = backend;
        tracing::info!(
            bind = %relay.cfg.bind,
            ports = %format_args!("{}-{}", relay.cfg.port_min, relay.cfg.port_max),
            workers = relay.workers.len(),
            backend = ?relay.backend,
            io_uring = %detail,
            "media relay started"
        );
        Ok(relay)
    }

    /// How the forwarding threads move packets: [`Backend::IoUring`] or [`Backend::Epoll`]
    /// (never `Auto` once started).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The configuration the relay runs with.
    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// The receiver of [`MediaEvent`]s. There is one: the first call takes it.
    pub fn events(&self) -> Option<UnboundedReceiver<MediaEvent>> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Even/odd port pairs in use (two per open session), not counting those of closed
    /// sessions parked for reuse ([`Relay::port_pairs_parked`]).
    pub fn port_pairs_in_use(&self) -> usize {
        let used = self
            .ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pairs_in_use();
        used.saturating_sub(self.port_pairs_parked())
    }

    /// Even/odd port pairs of closed sessions whose sockets the forwarding threads keep
    /// open for new sessions (two per session; see [`Relay::allocate_session`]).
    pub fn port_pairs_parked(&self) -> usize {
        self.workers
            .iter()
            .map(|w| {
                w.parked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
                    * 2
            })
            .sum()
    }

    /// A parked session of `worker` whose sockets have been quiet for `rest`: parked that
    /// long, and no datagram heard for that long ([`Parked::quiet_since`]). The queue is in
    /// parking order; an entry rested by its age but heard lately goes to the back, its
    /// time moved to its last datagram's, and the next is looked at (a few at most).
    fn claim_parked(&self, worker: &WorkerHandle, now: Instant, rest: Duration) -> Option<Parked> {
        let mut queue = worker.parked.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..4 {
            let front = queue.front()?;
            if now.saturating_duration_since(front.since) < rest {
                // Younger than the rest: so is everything behind it.
                return None;
            }
            let quiet = front.quiet_since(self.epoch);
            if now.saturating_duration_since(quiet) >= rest {
                return queue.pop_front();
            }
            let mut heard = queue.pop_front()?;
            heard.since = quiet;
            queue.push_back(heard);
        }
        None
    }

    /// Allocates a session: two legs, each an even RTP + odd RTCP port bound on `bind`.
    ///
    /// Packets are relayed as soon as a destination is known (early media); the media
    /// time-out is armed by [`MediaSession::start`].
    ///
    /// A session's sockets are not closed at once when it closes: its forwarding thread
    /// keeps them open (parked; what arrives is dropped) and this hands them to a new
    /// session once they have rested for `park_quarantine` ([`RelayConfig`]), which saves
    /// binding two pairs and the thread watching four sockets anew and, at the old
    /// session's close, cancelling its receives and closing them. A thread closes what
    /// stays parked for `park_idle`, and parks no more than its share of half the range's
    /// pairs, and none into the last quarter of the range's free pairs. The rest is quiet
    /// time: a datagram to a parked socket starts it again. When no pair is free, a parked
    /// session quiet for 200 ms (`PARK_MIN_REST`) is taken rather than refusing the call.
    pub fn allocate_session(&self) -> Result<MediaSession, MediaError> {
        let exhausted = MediaError::PortsExhausted {
            min: self.cfg.port_min,
            max: self.cfg.port_max,
        };
        let now = Instant::now();
        let n = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len().max(1);
        let Some(mut worker) = self.workers.get(n).cloned() else {
            return Err(MediaError::RelayStopped);
        };
        let (ports, legs) = match self.claim_parked(&worker, now, self.cfg.park_quarantine) {
            Some(p) => (p.ports, NewLegs::Parked(p.slot)),
            None => match self.bind_session_ports() {
                Some((a, b)) => ([a.rtp_port, b.rtp_port], NewLegs::Bound([a, b])),
                None => {
                    // No pair free: a parked session of any thread quiet for a shorter
                    // rest (at most PARK_MIN_REST), rather than no call.
                    let rest = self.cfg.park_quarantine.min(PARK_MIN_REST);
                    let Some((w, p)) = self
                        .workers
                        .iter()
                        .find_map(|w| Some((w.clone(), self.claim_parked(w, now, rest)?)))
                    else {
                        return Err(exhausted);
                    };
                    worker = w;
                    (p.ports, NewLegs::Parked(p.slot))
                }
            },
        };
        let [a, b] = ports;
        let id = SessionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(SessionShared {
            legs: [LegCounters::default(), LegCounters::default()],
            epoch: self.epoch,
        });
        let bound = matches!(legs, NewLegs::Bound(_));
        let new = NewSession {
            id,
            shared: Arc::clone(&shared),
            legs,
        };
        if worker.send(Control::Add(Box::new(new))).is_err() {
            // Bound sockets went down with the refused message (parked ones stay with the
            // stopped thread).
            if bound {
                self.release(&[a, b]);
            }
            return Err(MediaError::RelayStopped);
        }
        let leg = |id: LegId, rtp_port: u16| Leg {
            id,
            rtp_port,
            bind: self.cfg.bind,
            advertise: self.cfg.advertise,
        };
        Ok(MediaSession {
            id,
            legs: [leg(LegId::A, a), leg(LegId::B, b)],
            shared,
            worker,
            closed: false,
            events: self.events_tx.clone(),
            recording: None,
            dtls: self.dtls.clone(),
        })
    }

    /// Attaches a supervisor to `session` (see [`MonitorMode`]): a port pair of its own and a
    /// mixing thread. `payload_types`: the G.711 payload type of leg A, leg B and the
    /// supervisor, as negotiated; any other codec is refused with
    /// [`MediaError::CodecNotMixable`] before anything is allocated.
    pub fn attach_monitor(
        &self,
        session: &MediaSession,
        payload_types: [u8; 3],
        mode: MonitorMode,
    ) -> Result<Monitor, MediaError> {
        Monitor::start(self.monitor_parts(session, payload_types, mode)?)
    }

    /// As [`Relay::attach_monitor`], but the caller's task waits for the forwarding thread,
    /// not its thread.
    pub async fn attach_monitor_async(
        &self,
        session: &MediaSession,
        payload_types: [u8; 3],
        mode: MonitorMode,
    ) -> Result<Monitor, MediaError> {
        Monitor::start_async(self.monitor_parts(session, payload_types, mode)?).await
    }

    /// The codecs checked and a port pair bound for a monitor of `session`.
    fn monitor_parts(
        &self,
        session: &MediaSession,
        payload_types: [u8; 3],
        mode: MonitorMode,
    ) -> Result<MonitorParts, MediaError> {
        let mut laws = [crate::g711::G711::Pcmu; 3];
        for (law, pt) in laws.iter_mut().zip(payload_types) {
            *law = crate::mixer::mixable(pt)?;
        }
        let bind = self.cfg.bind;
        let (rtp_port, sockets) = {
            let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
            ports
                .allocate_with(|port: u16| bind_pair(bind, port))
                .ok_or(MediaError::PortsExhausted {
                    min: self.cfg.port_min,
                    max: self.cfg.port_max,
                })?
        };
        Ok(MonitorParts {
            session: session.id,
            laws,
            mode,
            rtp_port,
            sockets,
            bind,
            advertise: self.cfg.advertise,
            worker: session.worker.clone(),
            ports: Arc::clone(&self.ports),
        })
    }

    /// Binds two pairs of the range for a new session's legs.
    fn bind_session_ports(&self) -> Option<(LegSockets, LegSockets)> {
        let bind = self.cfg.bind;
        let bind_pair = |port: u16| bind_pair(bind, port);
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        let a = ports.allocate_with(bind_pair)?;
        let Some(b) = ports.allocate_with(bind_pair) else {
            ports.release(a.0);
            return None;
        };
        let leg = |(rtp_port, (rtp, rtcp)): (u16, (UdpSocket, UdpSocket))| LegSockets {
            rtp,
            rtcp,
            rtp_port,
        };
        Some((leg(a), leg(b)))
    }

    fn release(&self, rtp_ports: &[u16]) {
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        for &p in rtp_ports {
            ports.release(p);
        }
    }

    /// Stops the forwarding threads and waits for them.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.send(Control::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads a session's statistics so far (see [`MediaSession::stats_reader`]); after the
/// session is closed it keeps the final counters.
#[derive(Debug, Clone)]
pub struct StatsReader {
    shared: Arc<SessionShared>,
}

impl StatsReader {
    /// The statistics so far; never blocks the forwarding threads.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            a: self.shared.legs[0].snapshot(self.shared.epoch),
            b: self.shared.legs[1].snapshot(self.shared.epoch),
        }
    }
}

/// One bridged call's media: leg A and leg B, relayed to each other.
///
/// Dropping it (or [`close`](MediaSession::close)) ends it: its forwarding thread parks its
/// sockets for a next session or closes them and frees its ports
/// ([`Relay::allocate_session`]).
#[derive(Debug)]
pub struct MediaSession {
    id: SessionId,
    legs: [Leg; 2],
    shared: Arc<SessionShared>,
    worker: WorkerHandle,
    closed: bool,
    events: tokio::sync::mpsc::UnboundedSender<MediaEvent>,
    recording: Option<crate::recorder::Recording>,
    /// The relay's DTLS identity, for WebRTC legs.
    dtls: Option<Arc<crate::webrtc::DtlsIdentity>>,
}

impl MediaSession {
    /// The session's id (carried by [`MediaEvent`]s).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The local ports of one leg.
    pub fn leg(&self, leg: LegId) -> Leg {
        self.legs[leg.index()]
    }

    fn send(&self, c: Control) -> Result<(), MediaError> {
        self.worker.send(c).map_err(|_| MediaError::RelayStopped)
    }

    /// Tells where `leg`'s peer receives, from its SDP: the `m=`/`c=` RTP address, the RTCP
    /// address (`a=rtcp`, RFC 3605; RTP port + 1 when `None`), and whether it accepted
    /// `a=rtcp-mux` (RFC 5761: RTCP then goes to the RTP address). A hint only: the leg
    /// latches onto the source its packets really come from. A different address than the
    /// previous one (re-INVITE) re-opens latching.
    pub fn set_peer(
        &self,
        leg: LegId,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
        rtcp_mux: bool,
    ) -> Result<(), MediaError> {
        self.send(Control::SetPeer {
            id: self.id,
            leg,
            rtp,
            rtcp,
            rtcp_mux,
        })
    }

    /// Names the addresses `leg`'s peer signals from (a registered phone's NAT-side address,
    /// a trunk's resolved addresses), replacing those named before. Under
    /// [`LatchMode::Strict`](crate::LatchMode::Strict) the leg accepts media only from these
    /// and from the addresses of its SDP ([`set_peer`](Self::set_peer)); a latched source
    /// that is no longer among them is forgotten. At most
    /// [`AllowedSources::CAPACITY`](crate::latch::AllowedSources::CAPACITY) addresses are
    /// kept, SDP addresses included.
    pub fn allow_sources(&self, leg: LegId, ips: &[IpAddr]) -> Result<(), MediaError> {
        self.send(Control::AllowSources {
            id: self.id,
            leg,
            ips: ips.into(),
        })
    }

    /// Turns SRTP on for `leg` (SDES keys: ours encrypts what the relay sends to the peer,
    /// the peer's decrypts what it sends), or off with `None`. Packets of that leg that fail
    /// authentication or the replay check are dropped and counted as `srtp_dropped`.
    pub fn set_srtp(
        &self,
        leg: LegId,
        keys: Option<crate::srtp::SrtpKeys>,
    ) -> Result<(), MediaError> {
        self.send(Control::SetSrtp {
            id: self.id,
            leg,
            keys: keys.map(Box::new),
        })
    }

    /// Makes `leg` a WebRTC leg (a browser): the relay answers ICE checks for `ice`
    /// (ICE-lite), is the DTLS server of the leg with the relay's identity
    /// ([`Relay::dtls_fingerprint`]), and speaks SRTP keyed from DTLS with rtcp-mux; `None`
    /// turns it back into a plain leg. The peer's certificate is checked against
    /// [`set_webrtc_fingerprint`](Self::set_webrtc_fingerprint): no media is relayed to or
    /// from the leg before it matched, nor ever after a mismatch.
    pub fn set_webrtc(
        &self,
        leg: LegId,
        ice: Option<crate::webrtc::IceCredentials>,
    ) -> Result<(), MediaError> {
        let state = match ice {
            None => None,
            Some(ice) => {
                let identity = self.dtls.as_ref().ok_or(MediaError::NoDtlsIdentity)?;
                let loopback = self.legs[leg.index()].bind.is_loopback();
                let w = crate::webrtc::WebRtcLeg::new(
                    identity,
                    ice,
                    None,
                    loopback,
                    self.id.to_string(),
                )
                .map_err(|e| MediaError::WebRtc(e.to_string()))?;
                Some(Box::new(w))
            }
        };
        self.send(Control::SetWebRtc {
            id: self.id,
            leg,
            state,
        })
    }

    /// The `a=fingerprint` of a WebRTC leg's peer (from its SDP); `None`: it gave none, and
    /// the leg's media stays refused.
    pub fn set_webrtc_fingerprint(
        &self,
        leg: LegId,
        fingerprint: Option<crate::webrtc::Fingerprint>,
    ) -> Result<(), MediaError> {
        self.send(Control::WebRtcFingerprint {
            id: self.id,
            leg,
            fingerprint: fingerprint.map(Box::new),
        })
    }

    /// The relay's DTLS certificate fingerprint (for `a=fingerprint`); `None` when no DTLS
    /// identity could be made at start.
    pub fn dtls_fingerprint(&self) -> Option<&crate::webrtc::Fingerprint> {
        self.dtls.as_ref().map(|d| d.fingerprint())
    }

    /// Sets the RTP clock rate of `leg`'s payload, for jitter (default 8000 Hz; 48000 for opus).
    pub fn set_clock_rate(&self, leg: LegId, hz: u32) -> Result<(), MediaError> {
        self.send(Control::SetClockRate {
            id: self.id,
            leg,
            hz,
        })
    }

    /// Stops (`true`) or resumes relaying the RTP that `leg`'s peer sends (mute: the other
    /// side hears nothing from it; no signalling involved). RTCP keeps flowing.
    pub fn set_muted(&self, leg: LegId, muted: bool) -> Result<(), MediaError> {
        self.send(Control::Mute {
            id: self.id,
            leg,
            muted,
        })
    }

    /// Plays `prompt` into `leg` (to its peer) instead of what the other leg sends, from now
    /// until it ends (a one-shot prompt: [`MediaEvent::PromptEnded`]) or
    /// [`stop_playing`](Self::stop_playing). Nothing is sent before the leg's peer is known.
    pub fn play(&self, leg: LegId, prompt: crate::source::Prompt) -> Result<(), MediaError> {
        self.send(Control::Play {
            id: self.id,
            leg,
            prompt: Some(prompt),
        })
    }

    /// Stops a prompt played into `leg`: the other leg's media reaches it again.
    pub fn stop_playing(&self, leg: LegId) -> Result<(), MediaError> {
        self.send(Control::Play {
            id: self.id,
            leg,
            prompt: None,
        })
    }

    /// Reports the RFC 4733 telephone-events that `leg`'s peer sends with `payload_type`
    /// (the `telephone-event` of its SDP) as [`MediaEvent::Dtmf`]; `None` stops.
    pub fn watch_telephone_events(
        &self,
        leg: LegId,
        payload_type: Option<u8>,
    ) -> Result<(), MediaError> {
        self.send(Control::WatchEvents {
            id: self.id,
            leg,
            payload_type,
        })
    }

    /// Records both legs from now into a dual-channel WAV at `path` (leg A left, leg B
    /// right; see [`crate::recorder`]), written by a thread of its own; the file is created
    /// there, not here. A session records once: a second call is refused.
    pub fn record(&mut self, path: std::path::PathBuf) -> Result<(), MediaError> {
        if self.recording.is_some() {
            return Err(MediaError::Io {
                op: "recording",
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let (tap, rec) = crate::recorder::start(path, self.id, self.events.clone())
            .map_err(MediaError::io("spawning a recording thread"))?;
        self.recording = Some(rec);
        self.send(Control::Record {
            id: self.id,
            tap: Some(tap),
        })
    }

    /// Stops the recording (when the session is closed it stops anyway) and hands over its
    /// handle: [`Recording::wait`](crate::recorder::Recording::wait) for the summary.
    pub fn take_recording(&mut self) -> Option<crate::recorder::Recording> {
        let rec = self.recording.take()?;
        let _ = self.send(Control::Record {
            id: self.id,
            tap: None,
        });
        Some(rec)
    }

    /// The call is up: relay both ways and arm the media time-out from now.
    pub fn start(&self) -> Result<(), MediaError> {
        self.send(Control::Start(self.id))
    }

    /// Stop relaying (packets are still received and counted) and disarm the time-out.
    pub fn stop(&self) -> Result<(), MediaError> {
        self.send(Control::Stop(self.id))
    }

    /// A cloneable reader of this session's statistics, for those who watch the call
    /// (the API's view of a live call) without owning it.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The statistics so far; never blocks the forwarding threads.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            a: self.shared.legs[0].snapshot(self.shared.epoch),
            b: self.shared.legs[1].snapshot(self.shared.epoch),
        }
    }

    /// Ends the session: waits (up to a second) until its forwarding thread has let go of
    /// its sockets (parked or closed, its ports then free), and returns the final
    /// statistics. Blocks the calling thread meanwhile: an
    /// async caller uses [`MediaSession::close_async`].
    pub fn close(mut self) -> SessionStats {
        self.closed = true;
        let (tx, rx) = mpsc::sync_channel(1);
        if self
            .worker
            .send(Control::Remove {
                id: self.id,
                done: Some(Reply::Thread(tx)),
            })
            .is_ok()
        {
            let _ = rx.recv_timeout(CLOSE_WAIT);
        }
        self.stats()
    }

    /// As [`MediaSession::close`], but the caller's task waits, not its thread: a runtime
    /// thread goes on with other tasks while the forwarding thread closes the sockets.
    pub async fn close_async(mut self) -> SessionStats {
        self.closed = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .worker
            .send(Control::Remove {
                id: self.id,
                done: Some(Reply::Task(tx)),
            })
            .is_ok()
        {
            let _ = tokio::time::timeout(CLOSE_WAIT, rx).await;
        }
        self.stats()
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.worker.send(Control::Remove {
                id: self.id,
                done: None,
            });
        }
    }
}
