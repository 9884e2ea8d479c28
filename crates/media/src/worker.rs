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

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::config::LatchMode;
use crate::error::MediaError;
use crate::latch::{Latch, LatchVerdict};
use crate::ports::PortAllocator;
use crate::rtp::{self, Packet};
use crate::stats::{timestamp_units, LegCounters, LegTally, RtpReception};
use crate::sys::{Batch, Epoll, EventFd, RawSockAddr};
use crate::timeout::MediaTimeout;
use crate::{LegId, MediaEvent, SessionId};

const WAKE_TOKEN: u64 = u64::MAX;
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
    pub legs: [LegSockets; 2],
}

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
    SetClockRate {
        id: SessionId,
        leg: LegId,
        hz: u32,
    },
    Start(SessionId),
    Stop(SessionId),
    Remove {
        id: SessionId,
        done: Option<mpsc::SyncSender<()>>,
    },
    Shutdown,
}

/// The control side's handle on one forwarding thread.
#[derive(Debug, Clone)]
pub(crate) struct WorkerHandle {
    tx: mpsc::Sender<Control>,
    wake: Arc<EventFd>,
}

impl WorkerHandle {
    pub(crate) fn send(&self, c: Control) -> Result<(), Box<Control>> {
        self.tx.send(c).map_err(|e| Box::new(e.0))?;
        self.wake.notify();
        Ok(())
    }
}

/// Settings shared by every forwarding thread.
#[derive(Debug, Clone)]
pub(crate) struct WorkerParams {
    pub latch: LatchMode,
    pub timeout: Duration,
    pub epoch: Instant,
    pub ports: Arc<Mutex<PortAllocator>>,
    pub events: UnboundedSender<MediaEvent>,
}

/// Starts forwarding thread number `index`.
pub(crate) fn spawn(
    index: usize,
    params: WorkerParams,
) -> Result<(WorkerHandle, JoinHandle<()>), MediaError> {
    let epoll = Epoll::new().map_err(MediaError::io("epoll_create1"))?;
    let wake = Arc::new(EventFd::new().map_err(MediaError::io("eventfd"))?);
    epoll
        .add(wake.raw(), WAKE_TOKEN)
        .map_err(MediaError::io("epoll_ctl"))?;
    let (tx, rx) = mpsc::channel();
    let thread_wake = Arc::clone(&wake);
    let join = thread::Builder::new()
        .name(format!("media-fwd-{index}"))
        .spawn(move || Worker::new(epoll, thread_wake, rx, params).run())
        .map_err(MediaError::io("spawning a forwarding thread"))?;
    Ok((WorkerHandle { tx, wake }, join))
}

/// One leg as its forwarding thread sees it.
struct LegState {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    rtp_port: u16,
    rtp_hint: Option<SocketAddr>,
    rtcp_hint: Option<SocketAddr>,
    rtcp_mux: bool,
    rtp_latch: Latch,
    rtcp_latch: Latch,
    /// Where RTP for this leg's peer goes (out of `rtp`).
    rtp_dest: Option<RawSockAddr>,
    /// Where RTCP for this leg's peer goes (out of `rtcp`, or of `rtp` with rtcp-mux).
    rtcp_dest: Option<RawSockAddr>,
    clock_rate: u32,
    reception: RtpReception,
    tally: LegTally,
    published_remote: (Option<SocketAddr>, Option<u32>),
}

impl LegState {
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
            rtp_dest: None,
            rtcp_dest: None,
            clock_rate: DEFAULT_CLOCK_RATE,
            reception: RtpReception::default(),
            tally: LegTally::default(),
            published_remote: (None, None),
        }
    }

    fn refresh_dest(&mut self, mode: LatchMode) {
        let rtp = self.rtp_latch.destination(mode, self.rtp_hint);
        self.rtp_dest = rtp.map(RawSockAddr::from);
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
    }

    /// Socket and destination for traffic to this leg's peer.
    fn route(&self, rtcp: bool) -> (RawFd, Option<&RawSockAddr>) {
        match (rtcp, self.rtcp_mux) {
            (false, _) => (self.rtp.as_raw_fd(), self.rtp_dest.as_ref()),
            (true, true) => (self.rtp.as_raw_fd(), self.rtcp_dest.as_ref()),
            (true, false) => (self.rtcp.as_raw_fd(), self.rtcp_dest.as_ref()),
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

struct SessionState {
    id: SessionId,
    shared: Arc<SessionShared>,
    legs: [LegState; 2],
    forwarding: bool,
    timeout: MediaTimeout,
}

impl SessionState {
    fn last_rx(&self) -> Option<Instant> {
        self.legs[0].tally.last_rx.max(self.legs[1].tally.last_rx)
    }

    fn fds(&self) -> [(RawFd, u64); 4] {
        let t = |leg: usize, rtcp: bool| ((leg as u64) << 1) | u64::from(rtcp);
        [
            (self.legs[0].rtp.as_raw_fd(), t(0, false)),
            (self.legs[0].rtcp.as_raw_fd(), t(0, true)),
            (self.legs[1].rtp.as_raw_fd(), t(1, false)),
            (self.legs[1].rtcp.as_raw_fd(), t(1, true)),
        ]
    }
}

struct Worker {
    epoll: Epoll,
    wake: Arc<EventFd>,
    rx: mpsc::Receiver<Control>,
    params: WorkerParams,
    sessions: Vec<Option<SessionState>>,
    free_slots: Vec<usize>,
    by_id: HashMap<SessionId, usize>,
    batch: Batch,
    tick: Duration,
    next_tick: Instant,
}

impl Worker {
    fn new(
        epoll: Epoll,
        wake: Arc<EventFd>,
        rx: mpsc::Receiver<Control>,
        params: WorkerParams,
    ) -> Self {
        let tick =
            (params.timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(500));
        Worker {
            epoll,
            wake,
            rx,
            sessions: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            batch: Batch::new(),
            tick,
            next_tick: Instant::now() + tick,
            params,
        }
    }

    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        loop {
            let wait_ms = self
                .next_tick
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
                self.wake.drain();
            }
            if !self.apply_control(now) {
                break;
            }
            for ev in &events[..n] {
                let token = ev.u64;
                if token != WAKE_TOKEN {
                    self.on_readable(token, now);
                }
            }
            if now >= self.next_tick {
                self.check_timeouts(now);
                self.next_tick = now + self.tick;
            }
        }
        for slot in 0..self.sessions.len() {
            if let Some(s) = self.sessions[slot].take() {
                self.close_session(s);
            }
        }
    }

    /// Applies waiting control messages; false when the thread must stop.
    fn apply_control(&mut self, now: Instant) -> bool {
        loop {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            };
            match msg {
                Control::Add(new) => self.add(*new),
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
                        l.rtcp_mux = rtcp_mux;
                        l.refresh_dest(mode);
                    }
                }
                Control::SetClockRate { id, leg, hz } => {
                    if let Some(s) = self.session_mut(id) {
                        s.legs[leg.index()].clock_rate = hz.max(1);
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
                Control::Remove { id, done } => {
                    if let Some(slot) = self.by_id.remove(&id) {
                        if let Some(s) = self.sessions[slot].take() {
                            self.close_session(s);
                        }
                        self.free_slots.push(slot);
                    }
                    if let Some(done) = done {
                        let _ = done.try_send(());
                    }
                }
                Control::Shutdown => return false,
            }
        }
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut SessionState> {
        let slot = *self.by_id.get(&id)?;
        self.sessions.get_mut(slot)?.as_mut()
    }

    fn add(&mut self, new: NewSession) {
        let NewSession { id, shared, legs } = new;
        let [a, b] = legs;
        let mut s = SessionState {
            id,
            shared,
            legs: [LegState::new(a), LegState::new(b)],
            forwarding: true,
            timeout: MediaTimeout::new(self.params.timeout),
        };
        for (i, l) in s.legs.iter_mut().enumerate() {
            l.publish(&s.shared.legs[i], self.params.epoch);
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });
        for (fd, t) in s.fds() {
            if let Err(e) = self.epoll.add(fd, ((slot as u64) << 2) | t) {
                warn!(session = %id, error = %e, "cannot watch a relay socket; session dropped");
                self.close_session(s);
                self.free_slots.push(slot);
                return;
            }
        }
        debug!(session = %id, a = s.legs[0].rtp_port, b = s.legs[1].rtp_port, "relay session added");
        self.sessions[slot] = Some(s);
        self.by_id.insert(id, slot);
    }

    /// Stops watching a session's sockets, publishes its last counters, closes the sockets
    /// and gives the ports back.
    fn close_session(&mut self, mut s: SessionState) {
        for (fd, _) in s.fds() {
            let _ = self.epoll.delete(fd);
        }
        for (i, l) in s.legs.iter_mut().enumerate() {
            l.publish(&s.shared.legs[i], self.params.epoch);
        }
        let ports = [s.legs[0].rtp_port, s.legs[1].rtp_port];
        drop(s.legs);
        let mut alloc = self
            .params
            .ports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in ports {
            alloc.release(p);
        }
        debug!(session = %s.id, "relay session closed");
    }

    fn check_timeouts(&mut self, now: Instant) {
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

    /// Relays what is waiting on one socket.
    fn on_readable(&mut self, token: u64, now: Instant) {
        let slot = (token >> 2) as usize;
        let in_leg = ((token >> 1) & 1) as usize;
        let from_rtcp_port = token & 1 == 1;
        let Worker {
            sessions,
            batch,
            params,
            ..
        } = self;
        let Some(Some(s)) = sessions.get_mut(slot) else {
            return;
        };
        let [l0, l1] = &mut s.legs;
        let (inn, out) = if in_leg == 0 { (l0, l1) } else { (l1, l0) };
        let fd = if from_rtcp_port {
            inn.rtcp.as_raw_fd()
        } else {
            inn.rtp.as_raw_fd()
        };
        let n = match batch.recv(fd) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                debug!(session = %s.id, error = %e, "recvmmsg failed");
                return;
            }
        };
        let mode = params.latch;
        let arrival = timestamp_units(now.saturating_duration_since(params.epoch), inn.clock_rate);
        // Packets are sent in order, grouped by route (RTP or RTCP toward the other leg).
        let mut group: Option<bool> = None;
        for i in 0..n {
            let (data, src, truncated) = batch.packet(i);
            let len = data.len() as u64;
            let pkt = rtp::classify(data);
            let Some(src) = src else {
                inn.tally.not_forwarded += 1;
                continue;
            };
            let latch = if from_rtcp_port {
                &mut inn.rtcp_latch
            } else {
                &mut inn.rtp_latch
            };
            match latch.on_packet(mode, src, pkt.ssrc(), now) {
                LatchVerdict::Accept => {}
                LatchVerdict::Latched => {
                    debug!(session = %s.id, leg = ?LegId::from_index(in_leg), rtcp = from_rtcp_port, source = %src, "latched");
                    inn.refresh_dest(mode);
                }
                LatchVerdict::Drop => {
                    inn.tally.hijack_dropped += 1;
                    continue;
                }
            }
            let is_rtcp = from_rtcp_port || pkt.is_rtcp();
            inn.tally.rx_packets += 1;
            inn.tally.rx_bytes += len;
            inn.tally.rx_rtcp_packets += u64::from(is_rtcp);
            inn.tally.last_rx = Some(now);
            if let Packet::Rtp(h) = pkt {
                inn.reception.on_rtp(&h, arrival);
            }
            if truncated || !s.forwarding || out.route(is_rtcp).1.is_none() {
                inn.tally.not_forwarded += 1;
                continue;
            }
            if group != Some(is_rtcp) {
                if let Some(g) = group {
                    flush(batch, inn, out, g);
                }
                group = Some(is_rtcp);
            }
            batch.queue(i);
        }
        if let Some(g) = group {
            flush(batch, inn, out, g);
        }
        let out_leg = 1 - in_leg;
        inn.publish(&s.shared.legs[in_leg], params.epoch);
        out.publish(&s.shared.legs[out_leg], params.epoch);
    }
}

fn flush(batch: &mut Batch, inn: &mut LegState, out: &mut LegState, rtcp: bool) {
    let (fd, dest) = out.route(rtcp);
    let Some(dest) = dest else {
        inn.tally.not_forwarded += batch.discard() as u64;
        return;
    };
    let sent = batch.flush(fd, dest);
    out.tally.tx_packets += sent.packets;
    out.tally.tx_bytes += sent.bytes;
    if rtcp {
        out.tally.tx_rtcp_packets += sent.packets;
    }
    inn.tally.not_forwarded += sent.failed;
}
