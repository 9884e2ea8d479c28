//! Packets through real loopback sockets: both directions, RTCP, rtcp-mux, DTMF, stats.

#[macro_use]
mod support;

use std::net::SocketAddr;

use media::{Backend, LatchMode, LegId};
use support::{eventually, port, relay, rtcp_rr, rtp, Peer};

fn rtp_goes_both_ways_out_of_the_other_legs_port(b: Backend) {
    let relay = relay(b, 41000, 41099, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));
    assert_eq!(a.local_rtp_port() % 2, 0);
    assert_eq!(a.local_rtcp_port(), a.local_rtp_port() + 1);
    assert_ne!(a.local_rtp_port(), b.local_rtp_port());

    let out = rtp(0, false, 1, 160, 0x1111, &[0xd5; 160]);
    agent.send(a.bound_rtp(), &out);
    let (got, from) = customer.recv();
    assert_eq!(got, out);
    assert_eq!(from, b.bound_rtp(), "comes out of leg B's own RTP port");

    let back = rtp(8, false, 77, 320, 0x2222, &[0x55; 160]);
    customer.send(b.bound_rtp(), &back);
    let (got, from) = agent.recv();
    assert_eq!(got, back);
    assert_eq!(from, a.bound_rtp());

    let st = s.close();
    assert_eq!((st.a.rx_packets, st.a.tx_packets), (1, 1));
    assert_eq!((st.b.rx_packets, st.b.tx_packets), (1, 1));
    assert_eq!(st.a.rx_bytes, 172);
    assert_eq!(st.b.tx_bytes, 172);
    assert_eq!(st.a.ssrc, Some(0x1111));
    assert_eq!(st.b.remote_rtp, Some(customer.addr()));
    assert!(st.a.last_rx.is_some());
}

fn dtmf_events_pass_byte_identical(b: Backend) {
    let relay = relay(b, 41100, 41199, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    // RFC 4733 §2.3: event 5, end bit on the last three, volume 10, growing duration; the
    // marker on the first; the same timestamp throughout.
    let mut sent = Vec::new();
    for (i, (end, dur)) in [
        (false, 160u16),
        (false, 320),
        (true, 480),
        (true, 480),
        (true, 480),
    ]
    .into_iter()
    .enumerate()
    {
        let payload = [
            5u8,
            if end { 0x80 } else { 0 } | 10,
            (dur >> 8) as u8,
            dur as u8,
        ];
        let p = rtp(101, i == 0, 1000 + i as u16, 8000, 0xabc, &payload);
        customer.send(s.leg(LegId::B).bound_rtp(), &p);
        sent.push(p);
    }
    for p in &sent {
        assert_eq!(&agent.recv().0, p);
    }
}

fn rtcp_is_relayed_between_rtcp_ports_and_with_rtcp_mux(b: Backend) {
    let relay = relay(b, 41200, 41299, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent_rtp, agent_rtcp, customer) = (Peer::new(), Peer::new(), Peer::new());
    // The agent has a separate RTCP port (a=rtcp); the customer offered rtcp-mux.
    s.set_peer(LegId::A, agent_rtp.addr(), Some(agent_rtcp.addr()), false)
        .unwrap();
    s.set_peer(LegId::B, customer.addr(), None, true).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));

    // Agent's RTCP on leg A's RTCP port reaches the customer's (muxed) RTP port.
    agent_rtcp.send(a.bound_rtcp(), &rtcp_rr(1));
    let (got, from) = customer.recv();
    assert_eq!(got, rtcp_rr(1));
    assert_eq!(from, b.bound_rtp(), "rtcp-mux: out of the RTP port");

    // Customer's muxed RTCP on leg B's RTP port goes to the agent's RTCP address, out of A's
    // RTCP port; its RTP to the agent's RTP address.
    customer.send(b.bound_rtp(), &rtcp_rr(2));
    let (got, from) = agent_rtcp.recv();
    assert_eq!(got, rtcp_rr(2));
    assert_eq!(from, a.bound_rtcp());
    let voice = rtp(0, false, 5, 800, 2, &[0; 160]);
    customer.send(b.bound_rtp(), &voice);
    assert_eq!(agent_rtp.recv().0, voice);
    assert!(agent_rtcp.try_recv().is_none());

    assert!(
        eventually(|| {
            let st = s.stats();
            st.b.rx_rtcp_packets == 1
                && st.a.tx_rtcp_packets == 1
                && st.b.tx_rtcp_packets == 1
                && st.b.rx_packets == 2
        }),
        "{:?}",
        s.stats()
    );
    let st = s.stats();
    assert_eq!(st.a.rx_rtcp_packets, 1);
    assert_eq!(st.b.rx_packets, 2);
}

/// One RTCP packet as a tap saw it: session, leg, direction, source, destination, bytes.
type Tapped = (
    media::SessionId,
    LegId,
    media::RtcpDirection,
    SocketAddr,
    SocketAddr,
    Vec<u8>,
);

/// Records what an RTCP tap is shown.
#[derive(Debug, Default)]
struct TapRecorder(std::sync::Mutex<Vec<Tapped>>);

impl media::RtcpTap for TapRecorder {
    fn on_rtcp(
        &self,
        session: media::SessionId,
        leg: LegId,
        direction: media::RtcpDirection,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        self.0
            .lock()
            .unwrap()
            .push((session, leg, direction, src, dst, data.to_vec()));
    }
}

fn rtcp_tap_sees_rtcp_received_and_sent_and_no_rtp(b: Backend) {
    let tap = std::sync::Arc::new(TapRecorder::default());
    let relay = media::Relay::start(media::RelayConfig {
        port_min: port(b, 42800),
        port_max: port(b, 42899),
        workers: 1,
        backend: b,
        rtcp_tap: media::RtcpTapHandle(Some(tap.clone())),
        ..media::RelayConfig::default()
    })
    .unwrap();
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, true).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, bl) = (s.leg(LegId::A), s.leg(LegId::B));
    let voice = rtp(0, false, 1, 160, 9, &[0xd5; 160]);
    agent.send(a.bound_rtp(), &voice);
    assert_eq!(customer.recv().0, voice);
    // Muxed RTCP from the agent leaves leg B's RTCP port for the customer's RTP port + 1.
    agent.send(a.bound_rtp(), &rtcp_rr(9));
    assert!(eventually(|| tap.0.lock().unwrap().len() >= 2));
    let seen = tap.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "RTP is not shown: {seen:?}");
    let mut customer_rtcp = customer.addr();
    customer_rtcp.set_port(customer_rtcp.port() + 1);
    assert_eq!(
        seen[0],
        (
            s.id(),
            LegId::A,
            media::RtcpDirection::Received,
            agent.addr(),
            a.bound_rtp(),
            rtcp_rr(9)
        )
    );
    assert_eq!(
        seen[1],
        (
            s.id(),
            LegId::B,
            media::RtcpDirection::Sent,
            bl.bound_rtcp(),
            customer_rtcp,
            rtcp_rr(9)
        )
    );
}

fn rtcp_without_an_address_goes_to_rtp_port_plus_one(b: Backend) {
    let relay = relay(b, 41300, 41399, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let agent = Peer::new();
    // A phone on an even port p with RTCP on p+1 (bind a pair that is free).
    let (phone_rtp, phone_rtcp) = (port(b, 41390)..port(b, 41398))
        .step_by(2)
        .find_map(|p| {
            let r = std::net::UdpSocket::bind(("127.0.0.1", p)).ok()?;
            let c = std::net::UdpSocket::bind(("127.0.0.1", p + 1)).ok()?;
            Some((r, c))
        })
        .unwrap();
    phone_rtcp
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, phone_rtp.local_addr().unwrap(), None, false)
        .unwrap();
    agent.send(s.leg(LegId::A).bound_rtcp(), &rtcp_rr(9));
    let mut buf = [0u8; 64];
    let (n, from) = phone_rtcp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &rtcp_rr(9)[..]);
    assert_eq!(from, s.leg(LegId::B).bound_rtcp());
}

fn stats_count_loss_from_sequence_gaps_and_jitter(b: Backend) {
    let relay = relay(b, 41400, 41499, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let to = s.leg(LegId::A).bound_rtp();
    let mut n = 0;
    for seq in (1u16..=20).filter(|q| *q != 5 && *q != 12) {
        agent.send(to, &rtp(0, false, seq, u32::from(seq) * 160, 42, &[0; 160]));
        n += 1;
    }
    for _ in 0..n {
        customer.recv();
    }
    assert!(eventually(|| s.stats().b.tx_packets == n));
    let st = s.stats();
    assert_eq!(st.a.rx_packets, n);
    // Probation (RFC 3550 A.1) starts the count at seq 2: expected 19, lost 2.
    assert_eq!(st.a.expected, 19);
    assert_eq!(st.a.lost, 2);
    assert_eq!(st.a.clock_rate, 8000);
    // Sent in a burst: arrival spacing is far from 20 ms, so jitter is large.
    assert!(st.a.jitter > 0);
    assert_eq!(st.b.lost, 0);
    assert_eq!(st.b.rx_packets, 0);
}

fn stop_holds_packets_back_and_unknown_destination_is_counted(b: Backend) {
    let relay = relay(b, 41500, 41599, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    // Leg B has no address yet (no SDP answer): agent's packets have nowhere to go.
    agent.send(
        s.leg(LegId::A).bound_rtp(),
        &rtp(0, false, 1, 0, 1, &[1; 20]),
    );
    assert!(eventually(|| s.stats().a.not_forwarded == 1));
    // The customer's first packet latches leg B without any SDP address: its address is
    // known from signalling (the trunk), which is all a strict leg needs.
    s.allow_sources(LegId::B, &[customer.addr().ip()]).unwrap();
    customer.send(
        s.leg(LegId::B).bound_rtp(),
        &rtp(0, false, 1, 0, 2, &[2; 20]),
    );
    assert_eq!(agent.recv().0, rtp(0, false, 1, 0, 2, &[2; 20]));
    agent.send(
        s.leg(LegId::A).bound_rtp(),
        &rtp(0, false, 2, 160, 1, &[3; 20]),
    );
    assert_eq!(customer.recv().0, rtp(0, false, 2, 160, 1, &[3; 20]));
    // stop(): received and counted, not relayed.
    s.stop().unwrap();
    agent.send(
        s.leg(LegId::A).bound_rtp(),
        &rtp(0, false, 3, 320, 1, &[4; 20]),
    );
    assert!(eventually(|| s.stats().a.rx_packets == 3));
    assert_eq!(s.stats().a.not_forwarded, 2);
    s.start().unwrap();
    agent.send(
        s.leg(LegId::A).bound_rtp(),
        &rtp(0, false, 4, 480, 1, &[5; 20]),
    );
    assert_eq!(customer.recv().0, rtp(0, false, 4, 480, 1, &[5; 20]));
    assert!(customer.try_recv().is_none());
    let _: SocketAddr = s.leg(LegId::B).advertised_rtp();
}

fn ipv6_loopback_works(b: Backend) {
    let Ok(probe) = std::net::UdpSocket::bind("[::1]:0") else {
        return; // no IPv6 loopback on this host
    };
    drop(probe);
    let relay = media::Relay::start(media::RelayConfig {
        bind: "::1".parse().unwrap(),
        advertise: "::1".parse().unwrap(),
        port_min: port(b, 41600),
        port_max: port(b, 41699),
        workers: 1,
        backend: b,
        ..media::RelayConfig::default()
    })
    .unwrap();
    let s = relay.allocate_session().unwrap();
    let a = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let b = std::net::UdpSocket::bind("[::1]:0").unwrap();
    b.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    s.set_peer(LegId::B, b.local_addr().unwrap(), None, false)
        .unwrap();
    s.allow_sources(LegId::A, &[a.local_addr().unwrap().ip()])
        .unwrap();
    let p = rtp(0, false, 1, 0, 1, &[7; 160]);
    a.send_to(&p, s.leg(LegId::A).bound_rtp()).unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = b.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &p[..]);
    assert_eq!(from, s.leg(LegId::B).bound_rtp());
}

/// An async caller's close: its task waits for the forwarding thread, not its thread, and
/// gets the same final statistics; the session's ports are out of use when it returns,
/// parked for a next session, and free once the relay closes what stays parked.
fn close_async_reports_the_counts_and_frees_the_ports(b: Backend) {
    let relay = support::relay_parking(
        b,
        41800,
        41899,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_millis(300),
        std::time::Duration::from_secs(1),
    );
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, leg_b) = (s.leg(LegId::A), s.leg(LegId::B));
    let out = rtp(0, false, 1, 160, 0x1111, &[0xd5; 160]);
    agent.send(a.bound_rtp(), &out);
    assert_eq!(customer.recv().0, out);
    let back = rtp(8, false, 77, 320, 0x2222, &[0x55; 160]);
    customer.send(leg_b.bound_rtp(), &back);
    assert_eq!(agent.recv().0, back);
    let ports = [
        a.local_rtp_port(),
        a.local_rtcp_port(),
        leg_b.local_rtp_port(),
        leg_b.local_rtcp_port(),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let st = rt.block_on(s.close_async());
    assert_eq!((st.a.rx_packets, st.a.tx_packets), (1, 1));
    assert_eq!((st.b.rx_packets, st.b.tx_packets), (1, 1));
    assert_eq!(st.b.remote_rtp, Some(customer.addr()));
    assert_eq!(relay.port_pairs_in_use(), 0);
    assert_eq!(relay.port_pairs_parked(), 2);
    // Closed after park_idle: each port can be bound again (the entry leaves the queue
    // just before its sockets close).
    assert!(eventually(|| ports.iter().all(|&p| {
        std::net::UdpSocket::bind((a.bound_rtp().ip(), p)).is_ok()
    })));
    assert_eq!(relay.port_pairs_parked(), 0);
}

each_backend!(
    close_async_reports_the_counts_and_frees_the_ports,
    rtp_goes_both_ways_out_of_the_other_legs_port,
    dtmf_events_pass_byte_identical,
    rtcp_is_relayed_between_rtcp_ports_and_with_rtcp_mux,
    rtcp_without_an_address_goes_to_rtp_port_plus_one,
    stats_count_loss_from_sequence_gaps_and_jitter,
    stop_holds_packets_back_and_unknown_destination_is_counted,
    ipv6_loopback_works,
    rtcp_tap_sees_rtcp_received_and_sent_and_no_rtp,
);

/// A STUN binding request (RFC 5389 §6) with a transaction id.
fn stun_binding_request(id: u8) -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x00];
    p.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    p.extend_from_slice(&[id; 12]);
    p
}

fn stun_keepalives_are_relayed_but_not_counted(b: Backend) {
    let relay = relay(b, 41700, 41799, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let a = s.leg(LegId::A).bound_rtp();
    let voice = rtp(0, false, 1, 160, 0x77, &[0xd5; 160]);
    agent.send(a, &stun_binding_request(1));
    agent.send(a, &voice);
    agent.send(a, &stun_binding_request(2));
    // Relayed untouched, in order (the endpoints' own ICE/consent checks go end to end).
    assert_eq!(customer.recv().0, stun_binding_request(1));
    assert_eq!(customer.recv().0, voice);
    assert_eq!(customer.recv().0, stun_binding_request(2));
    // A different packet after them is the marker that the worker has seen all three.
    let voice2 = rtp(0, false, 2, 320, 0x77, &[0xd5; 160]);
    agent.send(a, &voice2);
    assert_eq!(customer.recv().0, voice2);
    assert!(
        eventually(|| s.stats().b.tx_packets == 2),
        "{:?}",
        s.stats()
    );
    let st = s.close();
    assert_eq!(st.a.rx_packets, 2, "only the RTP packets: {st:?}");
    assert_eq!(st.a.rx_bytes, 2 * 172);
    assert_eq!((st.b.tx_packets, st.b.tx_bytes), (2, 2 * 172));
    assert_eq!((st.a.not_forwarded, st.a.hijack_dropped), (0, 0));
    assert_eq!(st.a.expected, 1); // seq 1, 2 after probation (RFC 3550 A.1)
    assert_eq!(st.a.lost, 0);
}

each_backend!(stun_keepalives_are_relayed_but_not_counted);
