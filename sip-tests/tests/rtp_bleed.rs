//! RTP Bleed: a stranger spraying the relay's media ports must neither hear a call nor take
//! over its audio (`media.strict_source`, on by default), while a phone behind NAT still gets
//! media both ways. The real server, SIPp as the agent's phone (echoing RTP) and as the
//! carrier (playing G.711 audio), and a raw UDP sprayer on another loopback address.

use sip_tests::c2c::{fixture_with, Fixture, USER};
use sip_tests::http::request;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The media port range of the sprayer test's server, sprayed whole (as an attacker sprays a
/// server's range); no other test uses it.
const PORTS: (u16, u16) = (38_000, 38_099);

/// Packets in the carrier's audio (`/usr/share/sip-tester/g711a.pcap`).
const PCAP_PACKETS: u64 = 236;

/// A sprayer on `ip`: every 5 ms one RTP packet to every port of `ports`, until told to stop;
/// counts what it receives until it is dropped (bounded: it gives up after 90 s).
struct Sprayer {
    spraying: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sprayer {
    fn start(ip: [u8; 4], ports: (u16, u16)) -> Sprayer {
        let sock = UdpSocket::bind(SocketAddr::from((ip, 0))).expect("bind the sprayer");
        sock.set_nonblocking(true).expect("non-blocking");
        let spraying = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (sp, dn, st, rc) = (
            Arc::clone(&spraying),
            Arc::clone(&done),
            Arc::clone(&sent),
            Arc::clone(&received),
        );
        let thread = std::thread::spawn(move || {
            let limit = Instant::now() + Duration::from_secs(90);
            let mut seq: u16 = 0;
            let mut buf = [0u8; 2048];
            while !dn.load(Ordering::SeqCst) && Instant::now() < limit {
                if sp.load(Ordering::SeqCst) {
                    seq = seq.wrapping_add(1);
                    // PCMA, a plausible header: sequence numbers in order, one SSRC.
                    let mut pkt = vec![0x80, 8];
                    pkt.extend_from_slice(&seq.to_be_bytes());
                    pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                    pkt.extend_from_slice(&0x5ee0_b1edu32.to_be_bytes());
                    pkt.extend_from_slice(&[0xd5; 160]);
                    for port in ports.0..=ports.1 {
                        if sock
                            .send_to(&pkt, SocketAddr::from(([127, 0, 0, 1], port)))
                            .is_ok()
                        {
                            st.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                while sock.recv_from(&mut buf).is_ok() {
                    rc.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sprayer {
            spraying,
            done,
            sent,
            received,
            thread: Some(thread),
        }
    }

    fn stop_spraying(&self) {
        self.spraying.store(false, Ordering::SeqCst);
    }
}

impl Drop for Sprayer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn n(stats: &serde_json::Value, leg: &str, key: &str) -> u64 {
    stats[leg][key].as_u64().unwrap_or(0)
}

fn metric(f: &Fixture, name: &str) -> Option<u64> {
    let r = request(f.api(), "GET", "/metrics", &[], None);
    r.body
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_sprayer_on_another_address_gets_nothing_and_cannot_take_over_the_audio() {
    let f = fixture_with(
        0,
        &format!("[media]\nports = \"{}-{}\"\n", PORTS.0, PORTS.1),
    );
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "8000"]);
    // The spray starts before the call has any media, and hits both legs' ports.
    let sprayer = Sprayer::start([127, 0, 0, 5], PORTS);
    let id = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}\n{}",
        f.receiver.accepted(),
        f.server.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    // 3 s into the call, still spraying: the carrier's audio echoed by the agent's phone
    // has been coming back to the carrier, and nowhere else.
    let during = f.call(&id)["stats"].clone();
    sprayer.stop_spraying();
    assert!(n(&during, "customer", "hijack_dropped") > 100, "{during}");
    assert!(n(&during, "agent", "hijack_dropped") > 100, "{during}");
    assert!(n(&during, "customer", "tx_packets") > 20, "{during}");
    let remote = during["customer"]["remote_rtp"].as_str().unwrap_or("");
    assert!(remote.starts_with("127.0.0.1:"), "{during}");

    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let after = &call["stats"];
    // After the spray the echoes keep coming back to the carrier.
    assert!(
        n(after, "customer", "tx_packets") > n(&during, "customer", "tx_packets") + 50,
        "during {during}\nafter {after}"
    );
    // Everything the agent heard came from the carrier's audio: not one sprayed packet
    // was relayed (the sprayer sent hundreds to each port).
    assert!(n(after, "customer", "rx_packets") > 50, "{after}");
    assert!(
        n(after, "customer", "rx_packets") <= PCAP_PACKETS,
        "sprayed packets were accepted: {after}"
    );
    assert!(
        n(after, "agent", "tx_packets") <= n(after, "customer", "rx_packets"),
        "{after}"
    );
    assert_eq!(
        after["customer"]["remote_rtp"],
        during["customer"]["remote_rtp"]
    );
    assert!(sprayer.sent.load(Ordering::Relaxed) > 10_000);
    // Give anything in flight time to arrive, then count.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sprayer.received.load(Ordering::Relaxed),
        0,
        "the sprayer received the call's audio"
    );
    // The drops are counted in /metrics and logged once per leg, not once per packet.
    let dropped = n(after, "customer", "hijack_dropped") + n(after, "agent", "hijack_dropped");
    assert_eq!(
        metric(&f, "dialbridge_media_hijack_dropped_total"),
        Some(dropped)
    );
    let log = f.server.log_text();
    assert_eq!(
        log.matches("media from a source this leg does not accept")
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn a_phone_behind_nat_gets_media_both_ways_from_its_signalling_address() {
    let f = fixture_with(0, "");
    // Its SDP names 127.0.0.9, where it does not listen; its audio comes from the address
    // it registered from.
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer_nat.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "4000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let stats = &call["stats"];
    // The phone's audio reached the carrier, and the carrier's (echoed) audio the phone.
    assert!(n(stats, "agent", "rx_packets") > 50, "{stats}");
    assert!(n(stats, "customer", "tx_packets") > 50, "{stats}");
    assert!(n(stats, "customer", "rx_packets") > 50, "{stats}");
    assert!(n(stats, "agent", "tx_packets") > 50, "{stats}");
    assert_eq!(n(stats, "agent", "hijack_dropped"), 0, "{stats}");
    let remote = stats["agent"]["remote_rtp"].as_str().unwrap_or("");
    assert!(
        remote.starts_with("127.0.0.1:"),
        "the relay sends to the NAT's public side: {stats}"
    );
}
