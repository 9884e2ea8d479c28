//! A third party on a relay session (a supervisor): listen, whisper or barge.
//!
//! ```text
//!              listen                 whisper                  barge
//!   A ◄──────────────► B     A ◄── mix(B,C)   A ──► B     A ◄── mix(B,C)
//!   │ copy        copy │     │ copy      copy │               B ◄── mix(A,C)
//!   ▼                  ▼     ▼                ▼               C ◄── mix(A,B)
//!   C ◄──── mix(A,B) ───     C ◄── mix(A,B) ───
//! ```
//!
//! The forwarding thread keeps relaying A ↔ B byte for byte where nothing is mixed; it hands
//! a copy of each G.711 packet of A and B to the monitor's [`Mixer`] (decoded into its jitter
//! buffers) and stops relaying a direction whose listener now hears a mix (A's in whisper,
//! both in barge). A thread per monitor, every 20 ms, reads what the supervisor sent on its
//! own port pair, mixes, and sends each listener its mix: to the supervisor out of its port,
//! to A and B out of their own relay ports (a copy of the socket), so that their symmetric
//! RTP sees the same source. RFC 4733 events and other payload types are never mixed: they
//! stay relayed A ↔ B as before.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::g711::G711;
use crate::mixer::{Mixer, FRAME_SAMPLES};
use crate::ports::PortAllocator;
use crate::worker::{Control, Reply, WorkerHandle};
use crate::SessionId;

/// What the supervisor does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MonitorMode {
    /// The supervisor hears both sides; nobody hears the supervisor.
    Listen,
    /// The supervisor hears both sides; the agent (leg A) alone also hears the supervisor.
    Whisper,
    /// Everyone hears everyone.
    Barge,
    /// A warm transfer's consultation: the agent and the third party hear each other; the
    /// customer (on hold) hears neither and is not heard.
    Consult,
}

impl MonitorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorMode::Listen => "listen",
            MonitorMode::Whisper => "whisper",
            MonitorMode::Barge => "barge",
            MonitorMode::Consult => "consult",
        }
    }

    pub fn parse(s: &str) -> Option<MonitorMode> {
        match s {
            "listen" => Some(MonitorMode::Listen),
            "whisper" => Some(MonitorMode::Whisper),
            "barge" => Some(MonitorMode::Barge),
            _ => None,
        }
    }

    /// Whether the party `to` (0 = A, 1 = B) hears a mix rather than the other leg's packets.
    pub(crate) fn mixes_to(self, to: usize) -> bool {
        match self {
            MonitorMode::Listen => false,
            MonitorMode::Whisper | MonitorMode::Consult => to == 0,
            MonitorMode::Barge => true,
        }
    }

    /// Whether `out` hears `inp` in the mix (0 = A, 1 = B, 2 = supervisor); `muted[i]`: the
    /// call party `i` is muted toward the other party (the supervisor still hears it).
    pub(crate) fn hears(self, out: usize, inp: usize, muted: [bool; 2]) -> bool {
        if self == MonitorMode::Consult {
            return matches!((out, inp), (0, 2) | (2, 0));
        }
        match (out, inp) {
            (2, 0 | 1) => true,
            (0, 1) | (1, 0) if self.mixes_to(out) => !muted[inp],
            (0 | 1, 2) => self.mixes_to(out),
            _ => false,
        }
    }
}

pub(crate) const SUPERVISOR: usize = 2;

/// What the forwarding thread and the monitor's thread share.
#[derive(Debug)]
pub(crate) struct MonitorTap {
    state: Mutex<TapState>,
}

#[derive(Debug)]
struct TapState {
    mixer: Mixer,
    mode: MonitorMode,
    /// Where A's and B's RTP goes (as the forwarding thread last knew it).
    dests: [Option<SocketAddr>; 2],
    muted: [bool; 2],
}

impl MonitorTap {
    fn new(laws: [G711; 3], mode: MonitorMode, seed: u32) -> MonitorTap {
        MonitorTap {
            state: Mutex::new(TapState {
                mixer: Mixer::new(&laws, 2, seed),
                mode,
                dests: [None, None],
                muted: [false, false],
            }),
        }
    }

    /// An RTP packet from call leg `in_leg` (forwarding thread). Returns true when it must not
    /// be relayed to the other leg, whose listener now hears a mix.
    pub(crate) fn on_rtp(
        &self,
        in_leg: usize,
        data: &[u8],
        payload_type: u8,
        dests: [Option<SocketAddr>; 2],
        muted: [bool; 2],
    ) -> bool {
        if G711::from_payload_type(payload_type).is_none() {
            return false;
        }
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.dests = dests;
        st.muted = muted;
        st.mixer.push_rtp(in_leg, data);
        st.mode.mixes_to(1 - in_leg)
    }
}

/// Counters of a monitor (tests, diagnostics).
#[derive(Debug, Default)]
struct MonitorCounters {
    rx_supervisor: AtomicU64,
    tx: [AtomicU64; 3],
}

/// A supervisor attached to a session (see [`crate::Relay::attach_monitor`]). Dropping it
/// (or [`close`](Monitor::close)) detaches it: the call goes on as before, A ↔ B relayed.
#[derive(Debug)]
pub struct Monitor {
    session: SessionId,
    rtp_port: u16,
    bind: IpAddr,
    advertise: IpAddr,
    tap: Arc<MonitorTap>,
    peer: Arc<Mutex<Option<SocketAddr>>>,
    counters: Arc<MonitorCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    worker: WorkerHandle,
    ports: Arc<Mutex<PortAllocator>>,
}

/// The pieces [`crate::Relay::attach_monitor`] hands over.
pub(crate) struct MonitorParts {
    pub session: SessionId,
    pub laws: [G711; 3],
    pub mode: MonitorMode,
    pub rtp_port: u16,
    pub sockets: (UdpSocket, UdpSocket),
    pub bind: IpAddr,
    pub advertise: IpAddr,
    pub worker: WorkerHandle,
    pub ports: Arc<Mutex<PortAllocator>>,
}

/// How long attaching a monitor waits for the session's forwarding thread at most.
const ATTACH_WAIT: Duration = Duration::from_secs(1);

/// Gives a monitor's port pair back.
fn release_port(ports: &Arc<Mutex<PortAllocator>>, port: u16) {
    ports
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .release(port);
}

/// Undoes [`Monitor::ask`]: the tap detached from the session, the port pair given back.
/// Takes the parts by field: on one path the sockets have gone to the mixing loop already.
fn unask(worker: &WorkerHandle, session: SessionId, ports: &Arc<Mutex<PortAllocator>>, port: u16) {
    let _ = worker.send(Control::Monitor {
        id: session,
        tap: None,
        reply: None,
    });
    release_port(ports, port);
}

/// A monitor asked of a forwarding thread and not yet answered: dropped armed, it undoes the
/// asking (the tap detached, the port pair given back).
struct Pending(Option<MonitorParts>);

impl Pending {
    fn disarm(mut self) -> Option<MonitorParts> {
        self.0.take()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            unask(&p.worker, p.session, &p.ports, p.rtp_port);
        }
    }
}

impl Monitor {
    /// Attaches to the session's forwarding thread and starts mixing. On failure the port
    /// pair is given back. Blocks the calling thread (up to 1 s) for the forwarding thread's
    /// answer: an async caller uses [`Monitor::start_async`].
    pub(crate) fn start(p: MonitorParts) -> Result<Monitor, crate::MediaError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let tap = Monitor::ask(&p, Reply::Thread(tx))?;
        let legs = rx.recv_timeout(ATTACH_WAIT).ok().flatten();
        Monitor::finish(p, tap, legs)
    }

    /// As [`Monitor::start`], but the caller's task waits, not its thread.
    pub(crate) async fn start_async(p: MonitorParts) -> Result<Monitor, crate::MediaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tap = Monitor::ask(&p, Reply::Task(tx))?;
        // Held across the wait: should the caller's task drop this future before the answer,
        // the tap is detached and the port pair given back, as on a time-out.
        let pending = Pending(Some(p));
        let legs = tokio::time::timeout(ATTACH_WAIT, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let Some(p) = pending.disarm() else {
            return Err(crate::MediaError::RelayStopped);
        };
        Monitor::finish(p, tap, legs)
    }

    /// Gives the monitor's tap to the session's forwarding thread, which answers `reply`
    /// with copies of the legs' sockets.
    fn ask(
        p: &MonitorParts,
        reply: Reply<Option<[UdpSocket; 2]>>,
    ) -> Result<Arc<MonitorTap>, crate::MediaError> {
        let tap = Arc::new(MonitorTap::new(p.laws, p.mode, p.session.0 as u32));
        if p.worker
            .send(Control::Monitor {
                id: p.session,
                tap: Some(Arc::clone(&tap)),
                reply: Some(reply),
            })
            .is_err()
        {
            release_port(&p.ports, p.rtp_port);
            return Err(crate::MediaError::RelayStopped);
        }
        Ok(tap)
    }

    /// Starts mixing once the forwarding thread answered with the legs' sockets (`None`: it
    /// did not, in time).
    fn finish(
        p: MonitorParts,
        tap: Arc<MonitorTap>,
        legs: Option<[UdpSocket; 2]>,
    ) -> Result<Monitor, crate::MediaError> {
        let Some(legs) = legs else {
            unask(&p.worker, p.session, &p.ports, p.rtp_port);
            return Err(crate::MediaError::RelayStopped);
        };
        let peer = Arc::new(Mutex::new(None));
        let counters = Arc::new(MonitorCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let run = MixLoop {
            tap: Arc::clone(&tap),
            peer: Arc::clone(&peer),
            counters: Arc::clone(&counters),
            stop: Arc::clone(&stop),
            supervisor: p.sockets,
            legs,
            latched: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("media-mix-{}", p.session.0))
            .spawn(move || run.run());
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                unask(&p.worker, p.session, &p.ports, p.rtp_port);
                return Err(crate::MediaError::Io {
                    op: "spawning a mixing thread",
                    source: e,
                });
            }
        };
        tracing::debug!(session = %p.session, port = p.rtp_port, mode = p.mode.as_str(), "monitor attached");
        Ok(Monitor {
            session: p.session,
            rtp_port: p.rtp_port,
            bind: p.bind,
            advertise: p.advertise,
            tap,
            peer,
            counters,
            stop,
            thread: Some(thread),
            worker: p.worker,
            ports: p.ports,
        })
    }

    /// The supervisor's RTP port on the relay (the `m=` port of the SDP sent to it).
    pub fn local_rtp_port(&self) -> u16 {
        self.rtp_port
    }

    /// The RTP address to write into the supervisor's SDP.
    pub fn advertised_rtp(&self) -> SocketAddr {
        SocketAddr::new(self.advertise, self.rtp_port)
    }

    /// The address the supervisor's RTP socket is bound to.
    pub fn bound_rtp(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.rtp_port)
    }

    /// Where the supervisor's phone receives (its SDP). Until it is known the monitor sends
    /// to the source the supervisor's packets come from.
    pub fn set_peer(&self, rtp: SocketAddr) {
        *self.peer.lock().unwrap_or_else(PoisonError::into_inner) = Some(rtp);
    }

    /// Changes the mode mid-call.
    pub fn set_mode(&self, mode: MonitorMode) {
        self.tap
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mode = mode;
    }

    pub fn mode(&self) -> MonitorMode {
        self.tap
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mode
    }

    /// Mixed packets sent so far to party 0 (A), 1 (B) or 2 (the supervisor).
    pub fn sent(&self, party: usize) -> u64 {
        self.counters
            .tx
            .get(party)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// RTP packets received from the supervisor.
    pub fn received(&self) -> u64 {
        self.counters.rx_supervisor.load(Ordering::Relaxed)
    }

    /// Detaches: the session relays A ↔ B as before, the supervisor's ports are freed.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.worker.send(Control::Monitor {
            id: self.session,
            tap: None,
            reply: None,
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(self.rtp_port);
        tracing::debug!(session = %self.session, "monitor detached");
    }
}

struct MixLoop {
    tap: Arc<MonitorTap>,
    peer: Arc<Mutex<Option<SocketAddr>>>,
    counters: Arc<MonitorCounters>,
    stop: Arc<AtomicBool>,
    supervisor: (UdpSocket, UdpSocket),
    /// Copies of A's and B's RTP sockets.
    legs: [UdpSocket; 2],
    latched: Option<SocketAddr>,
}

impl MixLoop {
    fn run(mut self) {
        let frame = Duration::from_millis(FRAME_SAMPLES as u64 / 8);
        let mut next = Instant::now() + frame;
        let mut buf = [0u8; 2048];
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else if now - next > 10 * frame {
                // Far behind (a stalled machine): do not burst to catch up.
                next = now;
            }
            next += frame;
            let hint = *self.peer.lock().unwrap_or_else(PoisonError::into_inner);
            while let Ok((n, src)) = self.supervisor.0.recv_from(&mut buf) {
                if hint.is_some_and(|h| h.ip() != src.ip()) {
                    continue;
                }
                self.latched = Some(src);
                let mut st = self
                    .tap
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if st.mixer.push_rtp(SUPERVISOR, &buf[..n]) {
                    self.counters.rx_supervisor.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The supervisor's RTCP is read and dropped: there is no stream of its to report on.
            while self.supervisor.1.recv_from(&mut buf).is_ok() {}
            let dests = {
                let mut st = self
                    .tap
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let (mode, muted) = (st.mode, st.muted);
                let mut out: [Option<[u8; crate::mixer::PACKET_BYTES]>; 3] = [None; 3];
                st.mixer.tick(
                    |o, i| mode.hears(o, i, muted),
                    |_| false,
                    |o, pkt| {
                        if let Some(slot) = out.get_mut(o) {
                            let mut p = [0u8; crate::mixer::PACKET_BYTES];
                            p.copy_from_slice(pkt);
                            *slot = Some(p);
                        }
                    },
                );
                (st.dests, out)
            };
            let (dests, out) = dests;
            let sup_dest = self.latched.or(hint);
            for (party, pkt) in out.iter().enumerate() {
                let Some(pkt) = pkt else { continue };
                let sent = match party {
                    SUPERVISOR => sup_dest.map(|d| self.supervisor.0.send_to(pkt, d)),
                    i => dests[i].map(|d| self.legs[i].send_to(pkt, d)),
                };
                if let Some(Ok(_)) = sent {
                    self.counters.tx[party].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attach whose task goes away before the forwarding thread answers detaches the tap
    /// it gave and gives its port pair back; one that is answered keeps both.
    #[test]
    fn an_attach_dropped_while_waiting_undoes_itself() {
        use std::future::Future;
        let ports = Arc::new(Mutex::new(crate::ports::PortAllocator::new(43400, 43499)));
        let (worker, asked) = WorkerHandle::unserved();
        let parts = || {
            let bind = IpAddr::from([127, 0, 0, 1]);
            let (rtp_port, sockets) = ports
                .lock()
                .unwrap()
                .allocate_with(|port| crate::relay::bind_pair(bind, port))
                .expect("a free port pair");
            MonitorParts {
                session: SessionId(7),
                laws: [G711::Pcmu; 3],
                mode: MonitorMode::Listen,
                rtp_port,
                sockets,
                bind,
                advertise: bind,
                worker: worker.clone(),
                ports: Arc::clone(&ports),
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());

        let mut attach = Box::pin(Monitor::start_async(parts()));
        assert!(attach.as_mut().poll(&mut cx).is_pending());
        let Ok(Control::Monitor {
            id,
            tap: Some(_),
            reply: Some(_),
        }) = asked.try_recv()
        else {
            panic!("the forwarding thread was not asked for the legs");
        };
        assert_eq!(id, SessionId(7));
        assert_eq!(ports.lock().unwrap().pairs_in_use(), 1);
        drop(attach);
        assert!(
            matches!(
                asked.try_recv(),
                Ok(Control::Monitor {
                    tap: None,
                    reply: None,
                    ..
                })
            ),
            "the tap is detached"
        );
        assert_eq!(ports.lock().unwrap().pairs_in_use(), 0, "the pair is back");

        // Answered: the monitor is made and holds its pair until it is closed.
        let mut attach = Box::pin(Monitor::start_async(parts()));
        assert!(attach.as_mut().poll(&mut cx).is_pending());
        let Ok(Control::Monitor {
            reply: Some(reply), ..
        }) = asked.try_recv()
        else {
            panic!("the forwarding thread was not asked for the legs");
        };
        let legs = [
            crate::sys::bind_udp_nonblocking("127.0.0.1:0".parse().unwrap()).unwrap(),
            crate::sys::bind_udp_nonblocking("127.0.0.1:0".parse().unwrap()).unwrap(),
        ];
        reply.send(Some(legs));
        let std::task::Poll::Ready(Ok(m)) = attach.as_mut().poll(&mut cx) else {
            panic!("an answered attach makes its monitor");
        };
        assert!(asked.try_recv().is_err(), "nothing detached");
        assert_eq!(ports.lock().unwrap().pairs_in_use(), 1);
        m.close();
        assert_eq!(ports.lock().unwrap().pairs_in_use(), 0);
    }

    #[test]
    fn who_hears_whom_in_each_mode() {
        let m = [false, false];
        // Listen: only the supervisor hears a mix, of both sides.
        let l = MonitorMode::Listen;
        assert!(l.hears(2, 0, m) && l.hears(2, 1, m));
        assert!(!l.hears(0, 2, m) && !l.hears(1, 2, m) && !l.hears(0, 1, m));
        // Whisper: the agent hears the customer and the supervisor; the customer not.
        let w = MonitorMode::Whisper;
        assert!(w.hears(0, 1, m) && w.hears(0, 2, m));
        assert!(!w.hears(1, 2, m) && !w.mixes_to(1) && w.mixes_to(0));
        // Barge: everyone.
        let b = MonitorMode::Barge;
        assert!(b.hears(0, 1, m) && b.hears(0, 2, m) && b.hears(1, 0, m) && b.hears(1, 2, m));
        // A muted agent: the customer no longer hears it, the supervisor still does.
        assert!(!b.hears(1, 0, [true, false]) && b.hears(2, 0, [true, false]));
        for s in ["listen", "whisper", "barge"] {
            assert_eq!(MonitorMode::parse(s).map(|m| m.as_str()), Some(s));
        }
        assert_eq!(MonitorMode::parse("spy"), None);
        assert_eq!(
            MonitorMode::parse("consult"),
            None,
            "not a supervisor's mode"
        );
        // Consult: the agent and the third party only.
        let c = MonitorMode::Consult;
        assert!(c.hears(0, 2, m) && c.hears(2, 0, m));
        assert!(!c.hears(0, 1, m) && !c.hears(2, 1, m) && !c.hears(1, 2, m));
        assert!(c.mixes_to(0) && !c.mixes_to(1));
    }
}
