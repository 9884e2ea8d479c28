//! SRTP on one leg through real loopback sockets: the agent leg plain, the customer leg SRTP
//! (SDES keys), the relay decrypting one way and encrypting the other; a wrong key and a
//! replay are dropped and counted.

#[macro_use]
mod support;

use media::srtp::{SrtpKey, SrtpKeys, SrtpLeg};
use media::{Backend, LatchMode, LegId};
use support::{eventually, port, relay, rtp, Peer};

/// The relay's keys for leg B, and the carrier's mirror image of them.
fn keys() -> (SrtpKeys, SrtpLeg) {
    let ours = SrtpKey::random();
    let theirs = SrtpKey::random();
    let carrier = SrtpLeg::new(&SrtpKeys {
        local: theirs.clone(),
        remote: ours.clone(),
    })
    .unwrap();
    (
        SrtpKeys {
            local: ours,
            remote: theirs,
        },
        carrier,
    )
}

fn plain_on_one_leg_srtp_on_the_other(b: Backend) {
    let relay = relay(b, port(b, 45000), port(b, 45099), LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    // rtcp-mux on the agent leg: its RTCP comes back to the agent's one socket.
    s.set_peer(LegId::A, agent.addr(), None, true).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (relay_keys, mut carrier) = keys();
    s.set_srtp(LegId::B, Some(relay_keys)).unwrap();
    s.start().unwrap();
    let (a, bl) = (s.leg(LegId::A).bound_rtp(), s.leg(LegId::B).bound_rtp());

    // Agent -> relay (plain) -> carrier (SRTP): the carrier decrypts what the agent sent.
    for seq in 1..=5u16 {
        let plain = rtp(0, false, seq, u32::from(seq) * 160, 0x1111, &[0xd5; 160]);
        agent.send(a, &plain);
        let (wire, from) = customer.recv();
        assert_eq!(from, bl);
        assert_eq!(wire.len(), plain.len() + 10, "an 80-bit tag");
        assert_ne!(wire, plain);
        assert_eq!(&carrier.unprotect(&wire, false).unwrap()[..], &plain[..]);
    }
    // Carrier (SRTP) -> relay -> agent (plain).
    let mut sent = Vec::new();
    for seq in 100..105u16 {
        let plain = rtp(8, false, seq, u32::from(seq) * 160, 0x2222, &[0x55; 160]);
        let wire = carrier.protect(&plain, false).unwrap();
        customer.send(bl, &wire);
        assert_eq!(agent.recv().0, plain);
        sent.push(wire);
    }
    // A replayed packet is dropped.
    customer.send(bl, &sent[2]);
    // SRTCP from the carrier arrives as RTCP; the agent's RTCP leaves as SRTCP.
    let rr = [0x80, 201, 0, 1, 0x00, 0x00, 0x22, 0x22];
    customer.send(bl, &carrier.protect(&rr, true).unwrap());
    assert_eq!(agent.recv().0, rr.to_vec());
    assert!(
        eventually(|| s.stats().b.srtp_dropped == 1),
        "{:?}",
        s.stats()
    );
    let st = s.close();
    assert_eq!(st.b.rx_packets, 6, "five RTP and one RTCP: {st:?}");
    assert_eq!(st.b.rx_bytes, 5 * 172 + 8, "counted as plain: {st:?}");
    assert_eq!(st.a.tx_packets, 6);
    assert_eq!(st.b.tx_packets, 5);
    assert_eq!(st.b.tx_bytes, 5 * 182);
    assert_eq!(st.b.ssrc, Some(0x2222));
    assert_eq!(st.b.lost, 0);
}

fn a_wrong_key_is_dropped_and_counted(b: Backend) {
    let relay = relay(b, port(b, 45100), port(b, 45199), LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer) = (Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (relay_keys, _) = keys();
    let (_, mut stranger) = keys();
    s.set_srtp(LegId::B, Some(relay_keys)).unwrap();
    s.start().unwrap();
    let bl = s.leg(LegId::B).bound_rtp();
    for seq in 1..=20u16 {
        let plain = rtp(0, false, seq, u32::from(seq) * 160, 0x3333, &[0xd5; 160]);
        customer.send(bl, &stranger.protect(&plain, false).unwrap());
    }
    assert!(
        eventually(|| s.stats().b.srtp_dropped == 20),
        "{:?}",
        s.stats()
    );
    assert_eq!(agent.try_recv(), None, "nothing reached the agent");
    let st = s.close();
    assert_eq!((st.b.rx_packets, st.a.tx_packets), (0, 0), "{st:?}");
}

each_backend!(
    plain_on_one_leg_srtp_on_the_other,
    a_wrong_key_is_dropped_and_counted
);
