//! Helpers shared by the integration tests: a relay on loopback, RTP/RTCP packet builders
//! and a phone-like UDP endpoint.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use media::{Backend, LatchMode, Relay, RelayConfig};

/// Runs each named test function (`fn name(backend: Backend)`) once per backend: as
/// `name::io_uring` (skipped, with a note, where the kernel has no usable io_uring) and
/// `name::epoll`.
#[allow(unused_macros)]
macro_rules! each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                if let Some(b) = crate::support::io_uring() {
                    super::$name(b)
                }
            }
            #[test]
            fn epoll() {
                super::$name(media::Backend::Epoll)
            }
        }
    )*};
}

/// `Backend::IoUring` if a relay can start with it here.
pub fn io_uring() -> Option<Backend> {
    match Relay::start(RelayConfig {
        workers: 1,
        backend: Backend::IoUring,
        ..RelayConfig::default()
    }) {
        Ok(r) => {
            assert_eq!(r.backend(), Backend::IoUring);
            Some(Backend::IoUring)
        }
        Err(e) => {
            eprintln!("io_uring unavailable, test skipped: {e}");
            None
        }
    }
}

/// The tests of the two backends run in parallel: the epoll runs use ports 10,000 higher.
pub fn port(backend: Backend, p: u16) -> u16 {
    match backend {
        Backend::Epoll => p + 10_000,
        _ => p,
    }
}

/// A relay on 127.0.0.1 with its own port range (tests run in parallel).
pub fn relay(backend: Backend, port_min: u16, port_max: u16, latch: LatchMode) -> Relay {
    relay_with_timeout(backend, port_min, port_max, latch, Duration::from_secs(30))
}

pub fn relay_with_timeout(
    backend: Backend,
    port_min: u16,
    port_max: u16,
    latch: LatchMode,
    timeout: Duration,
) -> Relay {
    let r = Relay::start(RelayConfig {
        port_min: port(backend, port_min),
        port_max: port(backend, port_max),
        latch,
        timeout,
        workers: 2,
        backend,
        ..RelayConfig::default()
    })
    .unwrap();
    assert_eq!(r.backend(), backend);
    r
}

/// As [`relay`] with one thread, with closed sessions' sockets parked until quiet for
/// `quarantine` before a new session takes them, closed after `idle`, or when heard `late`
/// after their parking (see `Relay::allocate_session`).
pub fn relay_parking(
    backend: Backend,
    port_min: u16,
    port_max: u16,
    quarantine: Duration,
    idle: Duration,
    late: Duration,
) -> Relay {
    let r = Relay::start(RelayConfig {
        port_min: port(backend, port_min),
        port_max: port(backend, port_max),
        workers: 1,
        backend,
        park_quarantine: quarantine,
        park_idle: idle,
        park_late: late,
        ..RelayConfig::default()
    })
    .unwrap();
    assert_eq!(r.backend(), backend);
    r
}

/// An RTP packet: version 2, the given payload type, sequence number, timestamp and SSRC,
/// followed by `payload`.
pub fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A minimal RTCP receiver report (PT 201, no report blocks) from `ssrc`.
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// A UDP endpoint on 127.0.0.1 standing in for a phone or a trunk.
pub struct Peer {
    pub sock: UdpSocket,
}

impl Peer {
    pub fn new() -> Peer {
        Peer::at([127, 0, 0, 1])
    }

    /// A peer on another loopback address (a stranger, or a second host).
    pub fn at(ip: [u8; 4]) -> Peer {
        let sock = UdpSocket::bind(SocketAddr::from((ip, 0))).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Peer { sock }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, to: SocketAddr, pkt: &[u8]) {
        self.sock.send_to(pkt, to).unwrap();
    }

    /// Next datagram (fails the test after 3 s).
    pub fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = self.sock.recv_from(&mut buf).expect("a relayed packet");
        (buf[..n].to_vec(), from)
    }

    /// A datagram if one is already waiting.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let r = self
            .sock
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec());
        self.sock.set_nonblocking(false).unwrap();
        r
    }
}

/// Polls `cond` until it holds, for at most 3 s (the forwarding thread publishes its
/// counters right after each batch; this only waits for that thread to get there).
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}
