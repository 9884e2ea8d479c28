//! Port allocation: even/odd pairs, exhaustion is an error, ports always come back.

mod support;

use media::{LatchMode, MediaError, Relay, RelayConfig};
use support::{eventually, relay};

#[test]
fn exhaustion_is_an_error_and_close_or_drop_frees_the_ports() {
    // 44000-44007: four pairs, two sessions.
    let relay = relay(44000, 44007, LatchMode::default());
    let s1 = relay.allocate_session().unwrap();
    let s2 = relay.allocate_session().unwrap();
    assert_eq!(relay.port_pairs_in_use(), 4);
    match relay.allocate_session() {
        Err(MediaError::PortsExhausted {
            min: 44000,
            max: 44007,
        }) => {}
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

#[test]
fn a_port_taken_by_another_program_is_skipped() {
    let squatter = std::net::UdpSocket::bind("127.0.0.1:44101").unwrap(); // RTCP of 44100
    let relay = relay(44100, 44107, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let mut got = [
        s.leg(media::LegId::A).local_rtp_port(),
        s.leg(media::LegId::B).local_rtp_port(),
    ];
    got.sort_unstable();
    assert_eq!(got, [44102, 44104]);
    drop(squatter);
}

#[test]
fn shutting_the_relay_down_frees_everything_and_sessions_see_it() {
    let relay = relay(44200, 44299, LatchMode::default());
    let s = relay.allocate_session().unwrap();
    let port = s.leg(media::LegId::A).local_rtp_port();
    relay.shutdown();
    assert!(matches!(s.start(), Err(MediaError::RelayStopped)));
    std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let stats = s.close();
    assert_eq!(stats.a.rx_packets, 0);
}

#[test]
fn bad_config_is_refused_before_binding() {
    let err = Relay::start(RelayConfig {
        port_min: 50000,
        port_max: 40000,
        ..RelayConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, MediaError::Config(_)), "{err}");
}
