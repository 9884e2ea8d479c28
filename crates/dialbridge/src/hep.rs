//! HEP export (`[hep]`): every SIP message in and out — both legs of a call, registrations,
//! OPTIONS — and the RTCP the relay sees, sent to a Homer collector (or `sngrep -L`) as HEPv3.
//!
//! Layout:
//! - [`encode`]: one HEPv3 packet, built chunk by chunk (pure, tested against the chunk
//!   layout below).
//! - [`HepExporter`]: the [`MessageObserver`] the SIP endpoint calls, and the sink the media
//!   relay hands RTCP to. It copies the message into a packet and puts it in a bounded queue;
//!   it never waits. The correlation chunk carries the dialbridge call id, looked up by the
//!   message's SIP Call-ID, so Homer links a click-to-call's two dialogs into one call.
//! - One sender thread takes packets off the queue and writes them to the collector over UDP
//!   or TCP. A collector that is down, slow or unreachable costs the calls nothing: a full
//!   queue drops the packet, a failed send drops it, and both are counted
//!   (`dialbridge_hep_packets_dropped_total`).
//!
//! HEPv3 (the HEP3 chunk layout): `"HEP3"`, the total length (u16), then chunks, each
//! `vendor id (u16, 0 = generic) | type id (u16) | length (u16, header included) | value`,
//! all in network byte order. Generic chunk types used here: 0x0001 IP family (u8: 2 IPv4,
//! 10 IPv6), 0x0002 IP protocol (u8: 17 UDP, 6 TCP), 0x0003/0x0004 IPv4 source/destination,
//! 0x0005/0x0006 IPv6 source/destination, 0x0007/0x0008 source/destination port (u16),
//! 0x0009/0x000a timestamp seconds/microseconds (u32), 0x000b payload type (u8: 1 SIP,
//! 5 RTCP), 0x000c capture agent id (u32), 0x000e authentication key, 0x000f payload,
//! 0x0011 correlation id.
//!
//! Not here: HEPv2, compression, TLS to the collector. The packets carry the messages as they
//! went over the wire, digest responses included (as a capture on the interface would).

use sip_core::observe::{raw_header, MessageObserver, WireMessage};
use sip_core::transport::Transport;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// HEP payload type of a SIP message.
pub const PAYLOAD_SIP: u8 = 1;
/// HEP payload type of an RTCP packet.
pub const PAYLOAD_RTCP: u8 = 5;

/// Generic chunk types (vendor 0).
pub mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTO: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TIME_SEC: u16 = 0x0009;
    pub const TIME_USEC: u16 = 0x000a;
    pub const PAYLOAD_TYPE: u16 = 0x000b;
    pub const AGENT_ID: u16 = 0x000c;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION_ID: u16 = 0x0011;
}

/// What one HEP packet says.
#[derive(Debug, Clone)]
pub struct Capture<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IP protocol: 17 (UDP) or 6 (TCP).
    pub ip_proto: u8,
    pub time: SystemTime,
    pub payload_type: u8,
    pub agent_id: u32,
    pub auth_key: Option<&'a str>,
    pub correlation: Option<&'a str>,
    pub payload: &'a [u8],
}

/// Why a capture could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    #[error("source and destination are of different address families")]
    MixedFamilies,
    #[error("packet of {0} bytes does not fit HEPv3's 16-bit length")]
    TooLarge(usize),
}

fn put_chunk(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    // Callers keep the whole packet under u16::MAX (checked at the end of `encode`).
    out.extend_from_slice(&((6 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// One HEPv3 packet.
pub fn encode(c: &Capture<'_>) -> Result<Vec<u8>, HepError> {
    let extra = c.auth_key.map_or(0, str::len) + c.correlation.map_or(0, str::len);
    // Header, at most 15 chunk headers, the fixed-size values, then the variable ones.
    let len = 6 + 15 * 6 + 51 + c.payload.len() + extra;
    if len > usize::from(u16::MAX) {
        return Err(HepError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"HEP3");
    out.extend_from_slice(&[0, 0]); // total length, set below
    match (c.src, c.dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            put_chunk(&mut out, chunk::IP_FAMILY, &[2]);
            put_chunk(&mut out, chunk::IP_PROTO, &[c.ip_proto]);
            put_chunk(&mut out, chunk::IPV4_SRC, &s.ip().octets());
            put_chunk(&mut out, chunk::IPV4_DST, &d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            put_chunk(&mut out, chunk::IP_FAMILY, &[10]);
            put_chunk(&mut out, chunk::IP_PROTO, &[c.ip_proto]);
            put_chunk(&mut out, chunk::IPV6_SRC, &s.ip().octets());
            put_chunk(&mut out, chunk::IPV6_DST, &d.ip().octets());
        }
        _ => return Err(HepError::MixedFamilies),
    }
    put_chunk(&mut out, chunk::SRC_PORT, &c.src.port().to_be_bytes());
    put_chunk(&mut out, chunk::DST_PORT, &c.dst.port().to_be_bytes());
    let since = c.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
    put_chunk(&mut out, chunk::TIME_SEC, &secs.to_be_bytes());
    put_chunk(
        &mut out,
        chunk::TIME_USEC,
        &since.subsec_micros().to_be_bytes(),
    );
    put_chunk(&mut out, chunk::PAYLOAD_TYPE, &[c.payload_type]);
    put_chunk(&mut out, chunk::AGENT_ID, &c.agent_id.to_be_bytes());
    if let Some(k) = c.auth_key {
        put_chunk(&mut out, chunk::AUTH_KEY, k.as_bytes());
    }
    if let Some(id) = c.correlation {
        put_chunk(&mut out, chunk::CORRELATION_ID, id.as_bytes());
    }
    put_chunk(&mut out, chunk::PAYLOAD, c.payload);
    let total = u16::try_from(out.len()).map_err(|_| HepError::TooLarge(out.len()))?;
    out[4..6].copy_from_slice(&total.to_be_bytes());
    Ok(out)
}

/// Where the collector listens: `udp:HOST:PORT` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepTarget {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for HepTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("\"{s}\": expected udp:HOST:PORT or tcp:HOST:PORT"))?;
        let transport = Transport::parse(t)
            .filter(|t| matches!(t, Transport::Udp | Transport::Tcp))
            .ok_or_else(|| format!("\"{s}\": unknown transport \"{t}\" (udp or tcp)"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("\"{s}\": expected udp:HOST:PORT or tcp:HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("\"{s}\": \"{port}\" is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(format!("\"{s}\": \"{host}\" is not a host"));
        }
        Ok(HepTarget {
            transport,
            host: host.to_string(),
            port,
        })
    }
}

/// Settings of the exporter.
#[derive(Debug, Clone)]
pub struct HepSettings {
    pub target: HepTarget,
    pub agent_id: u32,
    pub password: Option<String>,
    /// Packets waiting for the sender before new ones are dropped.
    pub queue: usize,
}

/// Counters of the exporter.
#[derive(Debug, Default)]
pub struct HepStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

/// Finds the dialbridge call a SIP Call-ID belongs to.
pub type Correlate = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Call-IDs remembered after their call let go of them (the 200 to a BYE can come after).
const RECENT_CALL_IDS: usize = 4096;

/// Turns SIP messages and RTCP into HEP packets for one sender thread.
pub struct HepExporter {
    queue: SyncSender<Vec<u8>>,
    agent_id: u32,
    password: Option<String>,
    stats: Arc<HepStats>,
    correlate: OnceLock<Correlate>,
    recent: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for HepExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HepExporter")
            .field("agent_id", &self.agent_id)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl HepExporter {
    /// Starts the sender thread.
    pub fn start(settings: HepSettings) -> std::io::Result<Arc<HepExporter>> {
        let (tx, rx) = sync_channel(settings.queue.max(1));
        let stats = Arc::new(HepStats::default());
        let sender_stats = Arc::clone(&stats);
        let target = settings.target.clone();
        std::thread::Builder::new()
            .name("hep-sender".into())
            .spawn(move || run_sender(target, rx, &sender_stats))?;
        Ok(Arc::new(HepExporter {
            queue: tx,
            agent_id: settings.agent_id,
            password: settings.password,
            stats,
            correlate: OnceLock::new(),
            recent: Mutex::new(HashMap::new()),
        }))
    }

    pub fn stats(&self) -> Arc<HepStats> {
        Arc::clone(&self.stats)
    }

    /// Tells the exporter how to find a call by SIP Call-ID (once the call engine exists).
    pub fn set_correlate(&self, f: Correlate) {
        let _ = self.correlate.set(f);
    }

    /// The dialbridge call id of a SIP Call-ID, if a call owns (or owned) it.
    fn correlation(&self, sip_call_id: &str) -> Option<String> {
        let found = self.correlate.get().and_then(|f| f(sip_call_id));
        let mut recent = self.recent.lock().ok()?;
        match found {
            Some(id) => {
                if !recent.contains_key(sip_call_id) {
                    if recent.len() >= RECENT_CALL_IDS {
                        recent.clear();
                    }
                    recent.insert(sip_call_id.to_string(), id.clone());
                }
                Some(id)
            }
            None => recent.get(sip_call_id).cloned(),
        }
    }

    fn enqueue(&self, c: &Capture<'_>) {
        let packet = match encode(c) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "HEP packet not built");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match self.queue.try_send(packet) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An RTCP packet the relay received or sent, correlated to its leg's SIP Call-ID
    /// (none when empty).
    pub fn rtcp(&self, src: SocketAddr, dst: SocketAddr, sip_call_id: &str, data: &[u8]) {
        self.enqueue(&Capture {
            src,
            dst,
            ip_proto: 17,
            time: SystemTime::now(),
            payload_type: PAYLOAD_RTCP,
            agent_id: self.agent_id,
            auth_key: self.password.as_deref(),
            correlation: (!sip_call_id.is_empty()).then_some(sip_call_id),
            payload: data,
        });
    }
}

impl MessageObserver for HepExporter {
    fn on_message(&self, m: &WireMessage<'_>) {
        let (src, dst) = m.src_dst();
        let correlation = raw_header(m.data, "Call-ID", Some('i'))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|id| self.correlation(id));
        self.enqueue(&Capture {
            src,
            dst,
            ip_proto: match m.transport {
                Transport::Udp => 17,
                // TLS is captured as the SIP it carries, over TCP.
                Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => 6,
            },
            time: SystemTime::now(),
            payload_type: PAYLOAD_SIP,
            agent_id: self.agent_id,
            auth_key: self.password.as_deref(),
            correlation: correlation.as_deref(),
            payload: m.data,
        });
    }
}

/// Finds the SIP Call-ID of a relay session's leg.
pub type MediaCorrelate =
    Arc<dyn Fn(media::SessionId, media::LegId) -> Option<String> + Send + Sync>;

/// The media relay's RTCP, as HEP type 5 correlated to its leg's SIP Call-ID. Runs on a
/// forwarding thread for RTCP packets only: a map lookup, a copy into the bounded queue.
pub struct HepRtcpTap {
    exporter: Arc<HepExporter>,
    correlate: OnceLock<MediaCorrelate>,
}

impl std::fmt::Debug for HepRtcpTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HepRtcpTap").finish_non_exhaustive()
    }
}

impl HepRtcpTap {
    pub fn new(exporter: Arc<HepExporter>) -> Arc<HepRtcpTap> {
        Arc::new(HepRtcpTap {
            exporter,
            correlate: OnceLock::new(),
        })
    }

    /// Tells the tap how to find a leg's SIP Call-ID (once the call engine exists).
    pub fn set_correlate(&self, f: MediaCorrelate) {
        let _ = self.correlate.set(f);
    }
}

impl media::RtcpTap for HepRtcpTap {
    fn on_rtcp(
        &self,
        session: media::SessionId,
        leg: media::LegId,
        _direction: media::RtcpDirection,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        let call_id = self.correlate.get().and_then(|f| f(session, leg));
        self.exporter
            .rtcp(src, dst, call_id.as_deref().unwrap_or(""), data);
    }
}

/// How long the sender waits for a TCP collector (connect, write) before it drops.
const TCP_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connection, packets are dropped this long before the next attempt.
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

fn resolve(target: &HepTarget) -> Option<SocketAddr> {
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .ok()?
        .next()
}

enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

fn connect(target: &HepTarget) -> Option<Link> {
    let addr = resolve(target)?;
    match target.transport {
        Transport::Udp => {
            let bind: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(bind).ok()?;
            // Connected: a collector that is not listening shows up as a send error.
            s.connect(addr).ok()?;
            Some(Link::Udp(s))
        }
        Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
            let s = TcpStream::connect_timeout(&addr, TCP_TIMEOUT).ok()?;
            s.set_write_timeout(Some(TCP_TIMEOUT)).ok()?;
            let _ = s.set_nodelay(true);
            Some(Link::Tcp(s))
        }
    }
}

fn run_sender(target: HepTarget, rx: Receiver<Vec<u8>>, stats: &HepStats) {
    let mut link: Option<Link> = None;
    let mut retry_at = Instant::now();
    let mut said_down = false;
    for packet in rx {
        if link.is_none() && Instant::now() >= retry_at {
            link = connect(&target);
            if link.is_none() {
                retry_at = Instant::now() + RECONNECT_AFTER;
            }
        }
        let ok = match &mut link {
            Some(Link::Udp(s)) => s.send(&packet).is_ok(),
            Some(Link::Tcp(s)) => s.write_all(&packet).is_ok(),
            None => false,
        };
        if ok {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            if said_down {
                tracing::info!(collector = %format!("{}:{}:{}", target.transport, target.host, target.port), "HEP collector reachable again");
                said_down = false;
            }
        } else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            if !said_down {
                tracing::warn!(collector = %format!("{}:{}:{}", target.transport, target.host, target.port), "HEP collector unreachable: packets are dropped (and counted) until it is back");
                said_down = true;
            }
            if matches!(link, Some(Link::Tcp(_))) {
                link = None;
                retry_at = Instant::now() + RECONNECT_AFTER;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a packet: (vendor, type, value).
    fn chunks(p: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        assert_eq!(&p[..4], b"HEP3");
        let total = usize::from(u16::from_be_bytes([p[4], p[5]]));
        assert_eq!(total, p.len(), "the total length covers the whole packet");
        let mut out = Vec::new();
        let mut i = 6;
        while i < p.len() {
            let vendor = u16::from_be_bytes([p[i], p[i + 1]]);
            let kind = u16::from_be_bytes([p[i + 2], p[i + 3]]);
            let len = usize::from(u16::from_be_bytes([p[i + 4], p[i + 5]]));
            assert!(len >= 6, "a chunk length includes its 6-byte header");
            out.push((vendor, kind, p[i + 6..i + len].to_vec()));
            i += len;
        }
        assert_eq!(i, p.len(), "chunks end exactly at the total length");
        out
    }

    fn value(c: &[(u16, u16, Vec<u8>)], kind: u16) -> Option<Vec<u8>> {
        c.iter().find(|x| x.1 == kind).map(|x| x.2.clone())
    }

    #[test]
    fn ipv4_sip_packet_has_the_hep3_chunk_layout() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000);
        let p = encode(&Capture {
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "192.168.1.2:15060".parse().unwrap(),
            ip_proto: 17,
            time: t,
            payload_type: PAYLOAD_SIP,
            agent_id: 2001,
            auth_key: Some("myhep"),
            correlation: Some("call_01abc"),
            payload: b"OPTIONS sip:x SIP/2.0\r\n\r\n",
        })
        .unwrap();
        // The first chunk, byte for byte: vendor 0, type 1, length 7, AF_INET.
        assert_eq!(&p[6..13], &[0, 0, 0, 1, 0, 7, 2]);
        let c = chunks(&p);
        assert!(c.iter().all(|x| x.0 == 0), "generic vendor");
        assert_eq!(value(&c, chunk::IP_FAMILY), Some(vec![2]));
        assert_eq!(value(&c, chunk::IP_PROTO), Some(vec![17]));
        assert_eq!(value(&c, chunk::IPV4_SRC), Some(vec![10, 0, 0, 1]));
        assert_eq!(value(&c, chunk::IPV4_DST), Some(vec![192, 168, 1, 2]));
        assert_eq!(value(&c, chunk::SRC_PORT), Some(vec![0x13, 0xc4]));
        assert_eq!(
            value(&c, chunk::DST_PORT),
            Some(15060u16.to_be_bytes().to_vec())
        );
        assert_eq!(
            value(&c, chunk::TIME_SEC),
            Some(1_700_000_000u32.to_be_bytes().to_vec())
        );
        assert_eq!(
            value(&c, chunk::TIME_USEC),
            Some(123_456u32.to_be_bytes().to_vec())
        );
        assert_eq!(value(&c, chunk::PAYLOAD_TYPE), Some(vec![1]));
        assert_eq!(value(&c, chunk::AGENT_ID), Some(vec![0, 0, 0x07, 0xd1]));
        assert_eq!(value(&c, chunk::AUTH_KEY), Some(b"myhep".to_vec()));
        assert_eq!(
            value(&c, chunk::CORRELATION_ID),
            Some(b"call_01abc".to_vec())
        );
        assert_eq!(
            value(&c, chunk::PAYLOAD),
            Some(b"OPTIONS sip:x SIP/2.0\r\n\r\n".to_vec())
        );
    }

    #[test]
    fn ipv6_rtcp_packet_without_key_or_correlation() {
        let p = encode(&Capture {
            src: "[::1]:40001".parse().unwrap(),
            dst: "[2001:db8::2]:6001".parse().unwrap(),
            ip_proto: 17,
            time: UNIX_EPOCH,
            payload_type: PAYLOAD_RTCP,
            agent_id: 7,
            auth_key: None,
            correlation: None,
            payload: &[0x80, 0xc8, 0, 6],
        })
        .unwrap();
        let c = chunks(&p);
        assert_eq!(value(&c, chunk::IP_FAMILY), Some(vec![10]));
        let mut v6 = vec![0u8; 16];
        v6[15] = 1;
        assert_eq!(value(&c, chunk::IPV6_SRC), Some(v6));
        assert_eq!(value(&c, chunk::IPV6_DST).map(|v| v.len()), Some(16));
        assert_eq!(value(&c, chunk::PAYLOAD_TYPE), Some(vec![5]));
        assert_eq!(value(&c, chunk::AUTH_KEY), None);
        assert_eq!(value(&c, chunk::CORRELATION_ID), None);
        assert_eq!(value(&c, chunk::IPV4_SRC), None);
    }

    #[test]
    fn mixed_families_and_oversized_payloads_are_refused() {
        let mut c = Capture {
            src: "127.0.0.1:1".parse().unwrap(),
            dst: "[::1]:2".parse().unwrap(),
            ip_proto: 17,
            time: UNIX_EPOCH,
            payload_type: 1,
            agent_id: 1,
            auth_key: None,
            correlation: None,
            payload: b"x",
        };
        assert_eq!(encode(&c), Err(HepError::MixedFamilies));
        let big = vec![b'a'; 65_500];
        c.dst = "127.0.0.1:2".parse().unwrap();
        c.payload = &big;
        assert!(matches!(encode(&c), Err(HepError::TooLarge(_))));
    }

    #[test]
    fn targets_parse_and_bad_ones_are_explained() {
        let t: HepTarget = "udp:127.0.0.1:9060".parse().unwrap();
        assert_eq!(
            t,
            HepTarget {
                transport: Transport::Udp,
                host: "127.0.0.1".into(),
                port: 9060
            }
        );
        let t: HepTarget = "tcp:[::1]:9061".parse().unwrap();
        assert_eq!((t.transport, t.host.as_str()), (Transport::Tcp, "::1"));
        let t: HepTarget = "udp:homer.example:9060".parse().unwrap();
        assert_eq!(t.host, "homer.example");
        for bad in [
            "127.0.0.1:9060",
            "sctp:h:1",
            "udp:h",
            "udp::9060",
            "udp:h:0",
            "udp:h:x",
        ] {
            assert!(bad.parse::<HepTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_collector_that_is_not_there_never_blocks_and_drops_are_counted() {
        // A UDP port nobody listens on: sends fail (ICMP) or go nowhere; a tiny queue
        // overflows. Neither blocks the caller.
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let x = HepExporter::start(HepSettings {
            target: format!("udp:127.0.0.1:{port}").parse().unwrap(),
            agent_id: 1,
            password: None,
            queue: 2,
        })
        .unwrap();
        for _ in 0..1000 {
            x.rtcp(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                "c",
                &[0x80, 0xc8],
            );
        }
        let s = x.stats();
        let (sent, dropped) = (
            s.sent.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
        );
        assert!(dropped > 0, "sent {sent}, dropped {dropped}");
        assert!(sent + dropped <= 1000);
    }

    #[test]
    fn packets_reach_a_udp_collector_with_the_call_correlated() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let x = HepExporter::start(HepSettings {
            target: format!("udp:{}", collector.local_addr().unwrap())
                .parse()
                .unwrap(),
            agent_id: 9,
            password: Some("k".into()),
            queue: 16,
        })
        .unwrap();
        let live = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let l = Arc::clone(&live);
        x.set_correlate(Arc::new(move |id: &str| {
            (l.load(Ordering::Relaxed) && id == "abc@h").then(|| "call_1".to_string())
        }));
        let msg = b"BYE sip:a SIP/2.0\r\ni: abc@h\r\n\r\n";
        x.on_message(&WireMessage {
            direction: sip_core::observe::Direction::Received,
            transport: Transport::Udp,
            local: "127.0.0.1:5060".parse().unwrap(),
            remote: "127.0.0.1:7000".parse().unwrap(),
            data: msg,
        });
        let mut buf = [0u8; 2048];
        let n = collector.recv(&mut buf).unwrap();
        let c = chunks(&buf[..n]);
        assert_eq!(value(&c, chunk::CORRELATION_ID), Some(b"call_1".to_vec()));
        assert_eq!(
            value(&c, chunk::SRC_PORT),
            Some(7000u16.to_be_bytes().to_vec())
        );
        assert_eq!(
            value(&c, chunk::DST_PORT),
            Some(5060u16.to_be_bytes().to_vec())
        );
        assert_eq!(value(&c, chunk::PAYLOAD), Some(msg.to_vec()));
        // The call let go of the Call-ID: a late message still carries it.
        live.store(false, Ordering::Relaxed);
        assert_eq!(x.correlation("abc@h").as_deref(), Some("call_1"));
    }
}
