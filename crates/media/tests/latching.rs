//! Symmetric RTP on real sockets: the relay follows where packets really come from (NAT),
//! and refuses to be hijacked.

#[macro_use]
mod support;

use std::time::Duration;

use media::{Backend, LatchMode, LegId};
use support::{eventually, relay, rtcp_rr, rtp, Peer};

fn latches_to_a_source_port_other_than_the_sdp_said(b: Backend) {
    let relay = relay(b, 42000, 42099, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    // The agent's SDP names one port, but behind NAT its packets come from another.
    let (sdp_addr, real_agent, customer) = (Peer::new(), Peer::new(), Peer::new());
    s.set_peer(LegId::A, sdp_addr.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));

    real_agent.send(a.bound_rtp(), &rtp(0, false, 1, 0, 7, &[0; 160]));
    customer.recv();
    let reply = rtp(0, false, 1, 0, 8, &[1; 160]);
    customer.send(b.bound_rtp(), &reply);
    let (got, from) = real_agent.recv();
    assert_eq!(got, reply);
    assert_eq!(from, a.bound_rtp());
    assert!(
        sdp_addr.try_recv().is_none(),
        "nothing goes to the SDP address"
    );
    assert!(eventually(
        || s.stats().a.remote_rtp == Some(real_agent.addr())
    ));
}

fn after_the_window_another_source_is_dropped_as_a_hijack(b: Backend) {
    // A zero window: the first source is final.
    let relay = relay(b, 42100, 42199, LatchMode::Window(Duration::ZERO));
    let s = relay.allocate_session().unwrap();
    let (agent, attacker, customer) = (Peer::new(), Peer::new(), Peer::new());
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));

    agent.send(a.bound_rtp(), &rtp(0, false, 1, 0, 7, &[0; 160]));
    assert_eq!(customer.recv().0[2..4], [0, 1]);
    attacker.send(a.bound_rtp(), &rtp(0, false, 500, 0, 666, &[9; 160]));
    agent.send(a.bound_rtp(), &rtp(0, false, 2, 160, 7, &[0; 160]));
    // Only the agent's second packet comes through.
    assert_eq!(customer.recv().0[2..4], [0, 2]);
    assert!(eventually(|| s.stats().a.hijack_dropped == 1));
    // And the customer's audio still goes to the agent, not the attacker.
    customer.send(b.bound_rtp(), &rtp(0, false, 1, 0, 8, &[1; 160]));
    agent.recv();
    assert!(attacker.try_recv().is_none());
    assert_eq!(s.stats().a.remote_rtp, Some(agent.addr()));
}

fn ssrc_mode_follows_a_nat_rebinding_but_not_a_stranger(b: Backend) {
    let relay = relay(b, 42200, 42299, LatchMode::Ssrc);
    let s = relay.allocate_session().unwrap();
    let (agent, rebound, stranger, customer) = (Peer::new(), Peer::new(), Peer::new(), Peer::new());
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));

    agent.send(a.bound_rtp(), &rtp(0, false, 1, 0, 0xfeed, &[0; 160]));
    customer.recv();
    stranger.send(a.bound_rtp(), &rtp(0, false, 2, 160, 0xbad, &[0; 160]));
    // Same SSRC from a new port: the NAT mapping changed; follow it.
    rebound.send(a.bound_rtp(), &rtp(0, false, 3, 320, 0xfeed, &[0; 160]));
    assert_eq!(customer.recv().0[2..4], [0, 3]);
    customer.send(b.bound_rtp(), &rtp(0, false, 1, 0, 1, &[1; 160]));
    rebound.recv();
    assert!(agent.try_recv().is_none());
    assert!(stranger.try_recv().is_none());
    assert!(eventually(|| s.stats().a.hijack_dropped == 1));
}

fn new_sdp_address_reopens_latching(b: Backend) {
    let relay = relay(b, 42300, 42399, LatchMode::Window(Duration::ZERO));
    let s = relay.allocate_session().unwrap();
    let (phone1, phone2, customer) = (Peer::new(), Peer::new(), Peer::new());
    s.set_peer(LegId::A, phone1.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));
    phone1.send(a.bound_rtp(), &rtp(0, false, 1, 0, 1, &[0; 20]));
    customer.recv();
    // A re-INVITE moves the agent leg to another phone.
    s.set_peer(LegId::A, phone2.addr(), None, false).unwrap();
    phone2.send(a.bound_rtp(), &rtp(0, false, 1, 0, 2, &[0; 20]));
    customer.recv();
    customer.send(b.bound_rtp(), &rtp(0, false, 1, 0, 3, &[0; 20]));
    phone2.recv();
    assert!(phone1.try_recv().is_none());
}

/// RTP Bleed: a stranger spraying the relay port from another address, before the peer's
/// first packet and during the call, neither latches nor receives anything, and its packets
/// reach nobody.
fn strict_source_ignores_a_sprayer_on_another_address(b: Backend) {
    let relay = relay(b, 42400, 42499, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (agent, customer, sprayer) = (Peer::new(), Peer::new(), Peer::at([127, 0, 0, 5]));
    s.set_peer(LegId::A, agent.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));
    // Before the customer's first packet: the sprayer hits the customer-side ports.
    for seq in 0..20 {
        sprayer.send(b.bound_rtp(), &rtp(0, false, seq, 0, 0xbad, &[9; 160]));
        sprayer.send(b.bound_rtcp(), &rtcp_rr(0xbad));
    }
    assert!(eventually(|| s.stats().b.hijack_dropped == 40));
    agent.send(a.bound_rtp(), &rtp(0, false, 1, 0, 7, &[0; 160]));
    assert_eq!(customer.recv().0[2..4], [0, 1]);
    customer.send(b.bound_rtp(), &rtp(0, false, 1, 0, 8, &[1; 160]));
    assert_eq!(agent.recv().0[8..12], 8u32.to_be_bytes());
    // During the call, with the stream's own SSRC and the next sequence numbers.
    for seq in 2..30 {
        sprayer.send(b.bound_rtp(), &rtp(0, false, seq, 0, 8, &[9; 160]));
    }
    agent.send(a.bound_rtp(), &rtp(0, false, 2, 160, 7, &[0; 160]));
    assert_eq!(
        customer.recv().0[2..4],
        [0, 2],
        "agent audio still goes to the customer"
    );
    customer.send(b.bound_rtp(), &rtp(0, false, 2, 160, 8, &[2; 160]));
    assert_eq!(
        agent.recv().0[12],
        2,
        "and only the customer's audio reaches the agent"
    );
    assert!(eventually(|| s.stats().b.hijack_dropped == 68));
    assert!(agent.try_recv().is_none());
    assert!(sprayer.try_recv().is_none(), "the sprayer received nothing");
    assert_eq!(s.stats().b.remote_rtp, Some(customer.addr()));
}

/// A phone behind NAT: its SDP names a private address the relay cannot reach, and its
/// packets come from the address it registered from, which the B2BUA names as allowed.
fn strict_source_accepts_the_signalling_address_of_a_natted_phone(b: Backend) {
    let relay = relay(b, 42500, 42599, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let (phone, customer) = (Peer::new(), Peer::at([127, 0, 0, 2]));
    s.set_peer(LegId::A, "10.99.0.7:4000".parse().unwrap(), None, false)
        .unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));
    // Without the signalling address, the phone's packets are not accepted.
    phone.send(a.bound_rtp(), &rtp(0, false, 1, 0, 7, &[0; 160]));
    assert!(eventually(|| s.stats().a.hijack_dropped == 1));
    assert!(customer.try_recv().is_none());
    s.allow_sources(LegId::A, &["127.0.0.1".parse().unwrap()])
        .unwrap();
    assert!(eventually(|| {
        phone.send(a.bound_rtp(), &rtp(0, false, 2, 160, 7, &[0; 160]));
        customer.try_recv().is_some()
    }));
    customer.send(b.bound_rtp(), &rtp(0, false, 1, 0, 8, &[1; 160]));
    let (_, from) = phone.recv();
    assert_eq!(
        from,
        a.bound_rtp(),
        "media both ways through the NAT's public side"
    );
}

/// A NAT rebinding (same address, new port, same SSRC) moves the leg after the probation
/// packets; one forged packet from another port does not.
fn strict_source_follows_a_rebinding_after_probation(b: Backend) {
    let relay = relay(b, 42600, 42699, LatchMode::Strict { probation: 4 });
    let s = relay.allocate_session().unwrap();
    let (phone, rebound, forger, customer) = (Peer::new(), Peer::new(), Peer::new(), Peer::new());
    s.set_peer(LegId::A, phone.addr(), None, false).unwrap();
    s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
    let (a, b) = (s.leg(LegId::A), s.leg(LegId::B));
    phone.send(a.bound_rtp(), &rtp(0, false, 10, 0, 0xfeed, &[0; 160]));
    customer.recv();
    // One forged packet from another port of the same address, even with the SSRC.
    forger.send(a.bound_rtp(), &rtp(0, false, 11, 160, 0xfeed, &[6; 160]));
    customer.send(b.bound_rtp(), &rtp(0, false, 1, 0, 1, &[1; 160]));
    phone.recv();
    assert!(forger.try_recv().is_none());
    assert_eq!(s.stats().a.remote_rtp, Some(phone.addr()));
    // The NAT rebinds: the stream continues from a new port.
    for seq in 11..14 {
        rebound.send(a.bound_rtp(), &rtp(0, false, seq, 0, 0xfeed, &[0; 160]));
    }
    rebound.send(a.bound_rtp(), &rtp(0, false, 14, 0, 0xfeed, &[0; 160]));
    assert_eq!(
        customer.recv().0[2..4],
        [0, 14],
        "the first three were on probation, the fourth moved the leg"
    );
    assert!(eventually(|| s.stats().a.remote_rtp == Some(rebound.addr())));
    customer.send(b.bound_rtp(), &rtp(0, false, 2, 160, 1, &[1; 160]));
    rebound.recv();
    assert!(phone.try_recv().is_none());
    assert!(forger.try_recv().is_none());
}

/// A peer's first packet, sent the moment its session's peers are set, is judged by that
/// set-up: forwarded, not dropped as a stranger's (both loops apply the control messages
/// before the datagrams that came in with them), in each of fifty fresh sessions.
fn a_first_packet_right_after_the_set_up_is_forwarded(b: Backend) {
    let relay = relay(b, 42700, 42799, LatchMode::Strict { probation: 4 });
    let (phone, customer) = (Peer::new(), Peer::new());
    for n in 0..50u16 {
        let s = relay.allocate_session().unwrap();
        // The session's sockets are being watched (as when a call's answer comes, some time
        // after its INVITE) before its peers are set and the first packet follows at once.
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.set_peer(LegId::A, phone.addr(), None, false).unwrap();
        s.set_peer(LegId::B, customer.addr(), None, false).unwrap();
        let out = rtp(0, false, n, 0, 0xbeef, &[3; 160]);
        phone.send(s.leg(LegId::A).bound_rtp(), &out);
        let (got, from) = customer.recv();
        assert_eq!(got, out, "session {n}");
        assert_eq!(from, s.leg(LegId::B).bound_rtp());
        assert_eq!(s.stats().a.hijack_dropped, 0, "session {n}");
        s.close();
    }
}

each_backend!(
    a_first_packet_right_after_the_set_up_is_forwarded,
    strict_source_ignores_a_sprayer_on_another_address,
    strict_source_accepts_the_signalling_address_of_a_natted_phone,
    strict_source_follows_a_rebinding_after_probation,
    latches_to_a_source_port_other_than_the_sdp_said,
    after_the_window_another_source_is_dropped_as_a_hijack,
    ssrc_mode_follows_a_nat_rebinding_but_not_a_stranger,
    new_sdp_address_reopens_latching,
);
