//! A supervisor on a relay session, through real loopback sockets: each party sends its own
//! tone and what each hears is told apart by frequency (Goertzel), in every mode; mute by
//! packet counts; codecs that cannot be mixed are refused.

#[macro_use]
mod support;

use std::future::Future;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use media::g711::{tone_power, Tone, G711};
use media::mixer::{rtp_payload, FRAME_SAMPLES};
use media::{Backend, LatchMode, LegId, MediaError, MediaSession, MonitorMode, Relay};
use support::{eventually, port, relay, rtp, Peer};

const AGENT_HZ: f64 = 440.0;
const CUSTOMER_HZ: f64 = 1000.0;
const SUPERVISOR_HZ: f64 = 1800.0;

/// One party: its socket, where it sends, its tone and law.
struct Speaker {
    sock: UdpSocket,
    to: SocketAddr,
    tone: Tone,
    law: G711,
    ssrc: u32,
    seq: u16,
    ts: u32,
    /// What it received: decoded samples.
    heard: Vec<i16>,
    packets: u64,
}

impl Speaker {
    fn new(peer: &Peer, to: SocketAddr, hz: f64, law: G711, ssrc: u32) -> Speaker {
        let sock = peer.sock.try_clone().unwrap();
        sock.set_nonblocking(true).unwrap();
        Speaker {
            sock,
            to,
            tone: Tone::new(hz),
            law,
            ssrc,
            seq: 1,
            ts: 0,
            heard: Vec::new(),
            packets: 0,
        }
    }

    fn send_frame(&mut self) {
        let mut f = [0i16; FRAME_SAMPLES];
        self.tone.fill(&mut f);
        let payload: Vec<u8> = f.iter().map(|&s| self.law.encode(s)).collect();
        let p = rtp(
            self.law.payload_type(),
            false,
            self.seq,
            self.ts,
            self.ssrc,
            &payload,
        );
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        let _ = self.sock.send_to(&p, self.to);
    }

    fn drain(&mut self, keep: bool) {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            let p = &buf[..n];
            let Some(law) = G711::from_payload_type(p[1] & 0x7F) else {
                continue;
            };
            self.packets += 1;
            if keep {
                if let Some(pl) = rtp_payload(p) {
                    self.heard.extend(pl.iter().map(|&c| law.decode(c)));
                }
            }
        }
    }
}

/// Every party sends a frame each 20 ms for `frames` frames; what arrives during the last
/// `keep` frames is kept (the first ones cover the mixer's jitter buffer and a mode change).
fn talk(parties: &mut [&mut Speaker], frames: u32, keep: u32) {
    for s in parties.iter_mut() {
        s.heard.clear();
        s.packets = 0;
    }
    let start = Instant::now();
    for k in 0..frames {
        for s in parties.iter_mut() {
            s.send_frame();
        }
        let due = start + Duration::from_millis(20 * u64::from(k + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for s in parties.iter_mut() {
            s.drain(k >= frames - keep);
        }
    }
}

/// Which of the three tones `s` heard (power above 0.05 of the signal).
fn tones(s: &Speaker) -> [bool; 3] {
    [AGENT_HZ, CUSTOMER_HZ, SUPERVISOR_HZ].map(|hz| tone_power(&s.heard, hz) > 0.05)
}

/// A relay session between the agent's and the customer's peers, started.
fn started_session(relay: &Relay, agent: &Peer, customer: &Peer) -> MediaSession {
    let s = relay.allocate_session().unwrap();
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    s.start().unwrap();
    s
}

fn each_mode_is_heard_by_frequency_and_the_mode_changes_mid_call(b: Backend) {
    let relay = relay(b, 43000, 43099, LatchMode::default());
    let (pa, pb, pc) = (Peer::new(), Peer::new(), Peer::new());
    let s = started_session(&relay, &pa, &pb);
    let mut agent = Speaker::new(&pa, s.leg(LegId::A).bound_rtp(), AGENT_HZ, G711::Pcmu, 0xA);
    // The customer's trunk speaks A-law: mixed all the same.
    let mut customer = Speaker::new(
        &pb,
        s.leg(LegId::B).bound_rtp(),
        CUSTOMER_HZ,
        G711::Pcma,
        0xB,
    );

    // Before any monitor: plain relay.
    talk(&mut [&mut agent, &mut customer], 15, 10);
    assert_eq!(tones(&agent), [false, true, false]);
    assert_eq!(tones(&customer), [true, false, false]);

    let m = relay
        .attach_monitor(&s, [0, 8, 0], MonitorMode::Listen)
        .unwrap();
    m.set_peer(pc.addr());
    let mut sup = Speaker::new(&pc, m.bound_rtp(), SUPERVISOR_HZ, G711::Pcmu, 0xC);

    talk(&mut [&mut agent, &mut customer, &mut sup], 40, 25);
    assert_eq!(
        tones(&sup),
        [true, true, false],
        "listen: the supervisor hears both"
    );
    assert_eq!(
        tones(&agent),
        [false, true, false],
        "listen: the agent hears the customer only"
    );
    assert_eq!(tones(&customer), [true, false, false]);
    assert!(m.received() > 20);

    m.set_mode(MonitorMode::Whisper);
    talk(&mut [&mut agent, &mut customer, &mut sup], 40, 25);
    assert_eq!(tones(&sup), [true, true, false]);
    assert_eq!(
        tones(&agent),
        [false, true, true],
        "whisper: the agent hears the supervisor"
    );
    assert_eq!(
        tones(&customer),
        [true, false, false],
        "whisper: the customer does not"
    );

    m.set_mode(MonitorMode::Barge);
    talk(&mut [&mut agent, &mut customer, &mut sup], 40, 25);
    assert_eq!(tones(&sup), [true, true, false]);
    assert_eq!(tones(&agent), [false, true, true]);
    assert_eq!(
        tones(&customer),
        [true, false, true],
        "barge: the customer hears it too"
    );
    assert!(m.sent(0) > 20 && m.sent(1) > 20 && m.sent(2) > 60);

    // Ending the monitor leaves the call as it was.
    let pairs = relay.port_pairs_in_use();
    m.close();
    assert_eq!(relay.port_pairs_in_use(), pairs - 1);
    sup.drain(false); // what was sent before the close
    talk(&mut [&mut agent, &mut customer, &mut sup], 15, 10);
    assert_eq!(tones(&agent), [false, true, false]);
    assert_eq!(tones(&customer), [true, false, false]);
    assert_eq!(sup.packets, 0, "nothing reaches a detached supervisor");
    drop(s);
}

fn mute_stops_one_direction_only(b: Backend) {
    let relay = relay(b, 43100, 43199, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (pa, pb) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, pa.addr(), None, false).unwrap();
    s.set_peer(LegId::B, pb.addr(), None, false).unwrap();
    let (a, bl) = (s.leg(LegId::A).bound_rtp(), s.leg(LegId::B).bound_rtp());
    let send = |from: &Peer, to, n: u16| {
        for i in 0..n {
            from.send(to, &rtp(0, false, i, u32::from(i) * 160, 1, &[0xff; 160]));
        }
    };
    s.set_muted(LegId::A, true).unwrap();
    let before = s.stats();
    send(&pa, a, 20);
    send(&pb, bl, 20);
    assert!(eventually(
        || s.stats().a.rx_packets == before.a.rx_packets + 20
    ));
    assert!(eventually(|| s.stats().a.tx_packets == 20));
    let mut to_agent = 0;
    while pa.try_recv().is_some() {
        to_agent += 1;
    }
    assert_eq!(to_agent, 20, "the agent still hears the customer");
    assert!(
        pb.try_recv().is_none(),
        "nothing of the muted agent reaches the customer"
    );
    assert_eq!(s.stats().b.tx_packets, 0);
    // RTCP still flows while muted.
    pa.send(s.leg(LegId::A).bound_rtcp(), &support::rtcp_rr(1));
    assert!(eventually(|| s.stats().b.tx_packets == 1));

    s.set_muted(LegId::A, false).unwrap();
    send(&pa, a, 10);
    assert!(eventually(|| s.stats().b.tx_packets == 11));
}

fn codecs_that_cannot_be_mixed_are_refused(b: Backend) {
    let relay = relay(b, 43200, 43299, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let pairs = relay.port_pairs_in_use();
    for pts in [[0, 18, 0], [9, 0, 0], [0, 0, 111]] {
        match relay.attach_monitor(&s, pts, MonitorMode::Listen) {
            Err(MediaError::CodecNotMixable(e)) => assert_eq!(e.code(), "codec_not_mixable"),
            other => panic!("{pts:?}: {other:?}"),
        }
    }
    assert_eq!(relay.port_pairs_in_use(), pairs, "nothing allocated");
    let _ = port(b, 0);
}

/// A monitor attached from a task (as the call's driver attaches one): the supervisor hears
/// both, and closing it gives its port pair back.
fn a_monitor_attached_from_a_task_hears_both(b: Backend) {
    let relay = relay(b, 43300, 43399, LatchMode::default());
    let (pa, pb, pc) = (Peer::new(), Peer::new(), Peer::new());
    let s = started_session(&relay, &pa, &pb);
    let mut agent = Speaker::new(&pa, s.leg(LegId::A).bound_rtp(), AGENT_HZ, G711::Pcmu, 0xA);
    let mut customer = Speaker::new(
        &pb,
        s.leg(LegId::B).bound_rtp(),
        CUSTOMER_HZ,
        G711::Pcmu,
        0xB,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let pairs = relay.port_pairs_in_use();
    let m = rt
        .block_on(relay.attach_monitor_async(&s, [0, 0, 0], MonitorMode::Listen))
        .unwrap();
    assert_eq!(relay.port_pairs_in_use(), pairs + 1);
    m.set_peer(pc.addr());
    let mut sup = Speaker::new(&pc, m.bound_rtp(), SUPERVISOR_HZ, G711::Pcmu, 0xC);
    talk(&mut [&mut agent, &mut customer, &mut sup], 40, 25);
    assert_eq!(
        tones(&sup),
        [true, true, false],
        "the supervisor hears both"
    );
    assert_eq!(tones(&agent), [false, true, false]);
    assert_eq!(tones(&customer), [true, false, false]);
    m.close();
    assert_eq!(relay.port_pairs_in_use(), pairs);

    // A task that goes away while the forwarding thread is asked (its attach polled once,
    // then dropped) leaves no port pair taken and no tap holding a leg's RTP back.
    let _in_runtime = rt.enter();
    // The forwarding thread may answer before the first poll (on a loaded machine it can
    // answer all of them first): that attach is closed as any other; the ones still waiting
    // are dropped. Either way nothing is left taken. The drop while waiting is exercised
    // deterministically, without a forwarding thread, by the unit test
    // `monitor::tests::an_attach_dropped_while_waiting_undoes_itself`.
    for _ in 0..20 {
        let mut attach = Box::pin(relay.attach_monitor_async(&s, [0, 0, 0], MonitorMode::Barge));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(m) = attach.as_mut().poll(&mut cx) {
            m.unwrap().close();
        }
    }
    assert_eq!(relay.port_pairs_in_use(), pairs);
    agent.drain(false);
    customer.drain(false);
    talk(&mut [&mut agent, &mut customer], 15, 10);
    assert_eq!(
        tones(&agent),
        [false, true, false],
        "the agent hears the customer"
    );
    assert_eq!(
        tones(&customer),
        [true, false, false],
        "the customer hears the agent"
    );
}

each_backend!(
    a_monitor_attached_from_a_task_hears_both,
    each_mode_is_heard_by_frequency_and_the_mode_changes_mid_call,
    mute_stops_one_direction_only,
    codecs_that_cannot_be_mixed_are_refused,
);
