//! A closed session's sockets parked for the next session: what arrives meanwhile is
//! dropped, a new session takes them only after they have rested, starts with nothing of the
//! old session's, and the ports come back when a session stays parked, when the range runs
//! out and when the relay stops.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use media::{Backend, LegId, MediaSession};
use support::{eventually, port, relay_parking, rtp, Peer};

fn ports_of(s: &MediaSession) -> [u16; 2] {
    let mut p = [
        s.leg(LegId::A).local_rtp_port(),
        s.leg(LegId::B).local_rtp_port(),
    ];
    p.sort_unstable();
    p
}

fn a_closed_sessions_sockets_serve_a_new_session_after_their_rest(b: Backend) {
    // 100 pairs, one thread: up to 25 sessions parked. A rest of 1 s; datagrams within
    // 5 s of the parking are the old call's late ones.
    let rest = Duration::from_secs(1);
    let relay = relay_parking(
        b,
        45400,
        45599,
        rest,
        Duration::from_secs(30),
        Duration::from_secs(5),
    );
    let s1 = relay.allocate_session().unwrap();
    let (agent1, customer1) = (Peer::new(), Peer::new());
    s1.set_peer(LegId::A, agent1.addr(), None, false).unwrap();
    s1.set_peer(LegId::B, customer1.addr(), None, false)
        .unwrap();
    let a1 = s1.leg(LegId::A).bound_rtp();
    let stale = |seq: u16| rtp(0, false, seq, 160 * u32::from(seq), 0x1111, &[0xd5; 160]);
    agent1.send(a1, &stale(1));
    assert_eq!(customer1.recv().0, stale(1));
    let old = ports_of(&s1);
    let st = s1.close();
    let parked_at = Instant::now();
    assert_eq!((st.a.rx_packets, st.b.tx_packets), (1, 1));
    assert_eq!(relay.port_pairs_in_use(), 0);
    assert_eq!(relay.port_pairs_parked(), 2);

    // The old call's agent goes on sending for a while: dropped, relayed nowhere.
    for seq in 2..6 {
        agent1.send(a1, &stale(seq));
    }
    // A session now gets other ports: the parked ones have not rested.
    let s2 = relay.allocate_session().unwrap();
    assert_ne!(ports_of(&s2), old);
    // Its last late packet at 0.5 s: at 1.2 s the pair is old enough but quiet for only
    // 0.7 s, so it is not taken; at 1.9 s it has been quiet for 1.4 s, and is.
    std::thread::sleep(Duration::from_millis(500).saturating_sub(parked_at.elapsed()));
    agent1.send(a1, &stale(6));
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(parked_at.elapsed()));
    let s2b = relay.allocate_session().unwrap();
    assert_ne!(
        ports_of(&s2b),
        old,
        "taken while its old peer was heard lately"
    );
    std::thread::sleep(Duration::from_millis(1900).saturating_sub(parked_at.elapsed()));
    assert!(
        customer1.try_recv().is_none(),
        "a parked port relayed a packet"
    );

    // Quiet for the rest: the next session takes them, with nothing of the old call's.
    let s3 = relay.allocate_session().unwrap();
    assert_eq!(ports_of(&s3), old);
    assert_eq!(relay.port_pairs_parked(), 0);
    assert_eq!(relay.port_pairs_in_use(), 6);
    let (agent3, customer3) = (Peer::new(), Peer::new());
    s3.set_peer(LegId::A, agent3.addr(), None, false).unwrap();
    s3.set_peer(LegId::B, customer3.addr(), None, false)
        .unwrap();
    let (a3, b3) = (s3.leg(LegId::A).bound_rtp(), s3.leg(LegId::B).bound_rtp());
    let out = rtp(8, false, 100, 16000, 0x3333, &[0x55; 160]);
    agent3.send(a3, &out);
    assert_eq!(customer3.recv().0, out);
    let back = rtp(8, false, 200, 32000, 0x4444, &[0x2a; 160]);
    customer3.send(b3, &back);
    let (got, from) = agent3.recv();
    assert_eq!(got, back);
    assert_eq!(from, a3);
    assert!(customer1.try_recv().is_none());
    assert!(eventually(|| {
        let st = s3.stats();
        (
            st.a.rx_packets,
            st.a.tx_packets,
            st.b.rx_packets,
            st.b.tx_packets,
        ) == (1, 1, 1, 1)
    }));
    let st = s3.close();
    assert_eq!(st.a.remote_rtp, Some(agent3.addr()));
    assert_eq!(st.b.remote_rtp, Some(customer3.addr()));
    drop((s2, s2b));
}

/// A datagram to a parked session `park_late` after its parking is no late packet of its
/// call (a peer that goes on sending, a spray): its sockets are closed, their ports free.
fn a_parked_session_heard_too_late_is_closed(b: Backend) {
    let relay = relay_parking(
        b,
        45700,
        45799,
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    let s = relay.allocate_session().unwrap();
    let a = s.leg(LegId::A).bound_rtp();
    let old = ports_of(&s);
    s.close();
    let stranger = Peer::at([127, 0, 0, 9]);
    // Within `park_late`: kept.
    stranger.send(a, &rtp(0, false, 1, 160, 0x5555, &[0xd5; 160]));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(relay.port_pairs_parked(), 2);
    std::thread::sleep(Duration::from_millis(400));
    stranger.send(a, &rtp(0, false, 2, 320, 0x5555, &[0xd5; 160]));
    assert!(eventually(|| relay.port_pairs_parked() == 0));
    assert_eq!(relay.port_pairs_in_use(), 0);
    assert!(eventually(|| old
        .iter()
        .all(|&p| std::net::UdpSocket::bind((a.ip(), p)).is_ok())));
}

fn the_range_running_out_takes_a_parked_session_and_stopping_frees_all(b: Backend) {
    // Eight pairs, one thread, a long rest: four sessions fill the range.
    let relay = relay_parking(
        b,
        45600,
        45615,
        Duration::from_secs(60),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let mut open: Vec<MediaSession> = (0..2).map(|_| relay.allocate_session().unwrap()).collect();
    let parked = ports_of(&open[0]);
    open.remove(0).close();
    assert_eq!(relay.port_pairs_parked(), 2);
    open.push(relay.allocate_session().unwrap());
    open.push(relay.allocate_session().unwrap());
    assert_eq!(relay.port_pairs_in_use(), 6);
    // No pair is free: the parked session, once quiet for the shorter rest (200 ms), is
    // taken although its own rest has not passed; not before.
    assert!(matches!(
        relay.allocate_session(),
        Err(media::MediaError::PortsExhausted { .. })
    ));
    std::thread::sleep(Duration::from_millis(250));
    let taken = relay.allocate_session().unwrap();
    assert_eq!(ports_of(&taken), parked);
    assert_eq!(relay.port_pairs_parked(), 0);
    // A session closed with no pair free is not parked (a quarter of the pairs stay free
    // for what cannot take parked sockets): its ports are free at once.
    let freed = ports_of(&open[0]);
    open.remove(0).close();
    assert_eq!(relay.port_pairs_parked(), 0);
    let fresh = relay.allocate_session().unwrap();
    assert_eq!(ports_of(&fresh), freed);
    // Stopping closes what is parked too: every port of the range can be bound again.
    drop((taken, fresh));
    assert!(eventually(|| relay.port_pairs_parked() == 2));
    drop(open);
    relay.shutdown();
    for p in port(b, 45600)..=port(b, 45615) {
        std::net::UdpSocket::bind(("127.0.0.1", p)).unwrap();
    }
}

each_backend!(
    a_closed_sessions_sockets_serve_a_new_session_after_their_rest,
    a_parked_session_heard_too_late_is_closed,
    the_range_running_out_takes_a_parked_session_and_stopping_frees_all,
);
