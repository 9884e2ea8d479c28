//! Port allocation: even/odd pairs, exhaustion is an error, ports always come back.

#[macro_use]
mod support;

use media::{Backend, LatchMode, MediaError, Relay, RelayConfig};
use support::{eventually, port, relay};

fn exhaustion_is_an_error_and_close_or_drop_frees_the_ports(b: Backend) {
    // 44000-44007: four pairs, two sessions.
    let relay = relay(b, 44000, 44007, LatchMode::default());
    let s1 = relay.allocate_session().unwrap();
    let s2 = relay.allocate_session().unwrap();
    assert_eq!(relay.port_pairs_in_use(), 4);
    match relay.allocate_session() {
        Err(MediaError::PortsExhausted { min, max })
            if (min, max) == (port(b, 44000), port(b, 44007)) => {}
        other => panic!("expected PortsExhausted, got {other:?}"),
    }
    let freed = s1.leg(media::LegId::A).local_rtp_port();
    s1.close();
    assert_eq!(relay.port_pairs_in_use(), 2);
    // The freed ports are really closed: they can be bound again.
    let s3 = relay.allocate_session().unwrap();
    let mut ports = [
        s3.leg(media::LegId::A).local_rtp_port(),
        s3.leg(media::LegId::B).local_rtp_port(),
    ];
    ports.sort_unstable();
    assert!(ports.contains(&freed));
    drop(s2);
    drop(s3);
    assert!(eventually(|| relay.port_pairs_in_use() == 0));
}

fn a_port_taken_by_another_program_is_skipped(b: Backend) {
    // Eight ports of the ephemeral range that nothing else holds right now (any program's
    // outgoing socket may take one of them): the first free block of 44100-44107,
    // 44110-44117, ... (no other test of this crate uses 44100-44199).
    let all_free = |base: u16| {
        (base..base + 8).all(|p| std::net::UdpSocket::bind(("127.0.0.1", port(b, p))).is_ok())
    };
    let base = (44100..44200)
        .step_by(10)
        .find(|&base| all_free(base))
        .expect("a free block of eight ports");
    // RTCP of `base`.
    let squatter = std::net::UdpSocket::bind(("127.0.0.1", port(b, base + 1))).unwrap();
    let relay = relay(b, base, base + 7, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let mut got = [
        s.leg(media::LegId::A).local_rtp_port(),
        s.leg(media::LegId::B).local_rtp_port(),
    ];
    got.sort_unstable();
    assert_eq!(got, [port(b, base + 2), port(b, base + 4)]);
    drop(squatter);
}

fn shutting_the_relay_down_frees_everything_and_sessions_see_it(b: Backend) {
    let relay = relay(b, 44200, 44299, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let port = s.leg(media::LegId::A).local_rtp_port();
    relay.shutdown();
    assert!(matches!(s.start(), Err(MediaError::RelayStopped)));
    std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let stats = s.close();
    assert_eq!(stats.a.rx_packets, 0);
}

fn bad_config_is_refused_before_binding(b: Backend) {
    let _ = b;
    let err = Relay::start(RelayConfig {
        port_min: 50000,
        port_max: 40000,
        ..RelayConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, MediaError::Config(_)), "{err}");
}

each_backend!(
    exhaustion_is_an_error_and_close_or_drop_frees_the_ports,
    a_port_taken_by_another_program_is_skipped,
    shutting_the_relay_down_frees_everything_and_sessions_see_it,
    bad_config_is_refused_before_binding,
);
