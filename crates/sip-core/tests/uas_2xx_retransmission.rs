//! RFC 3261 §13.3.1.4: a 2xx to an INVITE over UDP is retransmitted by the UAS until its ACK
//! arrives (at T1, doubling up to T2), and not after. A real endpoint on loopback; the UAC is
//! a plain UDP socket, so every datagram on the wire is counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
use sip_core::message::{HeaderAccess, HeaderName, Response};
use sip_core::transaction::TimerConfig;
use sip_core::transport::{ListenAddr, Transport, TransportConfig};
use tokio::net::UdpSocket;

const T1: Duration = Duration::from_millis(50);

async fn uas() -> (
    Endpoint,
    tokio::sync::mpsc::UnboundedReceiver<EndpointEvent>,
    SocketAddr,
) {
    let cfg = EndpointConfig {
        transport: TransportConfig {
            listen: vec![ListenAddr {
                transport: Transport::Udp,
                addr: "127.0.0.1:0".parse().expect("address"),
            }],
            ..TransportConfig::default()
        },
        timers: TimerConfig {
            t1: T1,
            t2: Duration::from_millis(400),
            t4: Duration::from_millis(500),
        },
        ..EndpointConfig::default()
    };
    let (ep, events) = Endpoint::start(cfg).await.expect("endpoint");
    let addr = ep.local_addrs()[0].addr;
    (ep, events, addr)
}

fn invite(uac: SocketAddr, uas: SocketAddr, call_id: &str) -> String {
    format!(
        "INVITE sip:agent@{uas} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {uac};branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:carrier@{uac}>;tag=uac1\r\n\
         To: <sip:agent@{uas}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 7 INVITE\r\n\
         Contact: <sip:carrier@{uac}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn ack(uac: SocketAddr, uas: SocketAddr, call_id: &str) -> String {
    format!(
        "ACK sip:agent@{uas} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {uac};branch=z9hG4bK-{call_id}-ack\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:carrier@{uac}>;tag=uac1\r\n\
         To: <sip:agent@{uas}>;tag=uas1\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 7 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Receives datagrams for `window`; returns the arrival times of the 200 OKs.
async fn oks_within(sock: &UdpSocket, window: Duration) -> Vec<Instant> {
    let mut oks = Vec::new();
    let end = tokio::time::Instant::now() + window;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, sock.recv(&mut buf)).await {
        if buf[..n].starts_with(b"SIP/2.0 200") {
            oks.push(Instant::now());
        }
    }
    oks
}

/// Answers the next INVITE with 200 (To tag `uas1`).
async fn answer(ep: &Endpoint, events: &mut tokio::sync::mpsc::UnboundedReceiver<EndpointEvent>) {
    let deadline = Duration::from_secs(5);
    loop {
        match tokio::time::timeout(deadline, events.recv()).await {
            Ok(Some(EndpointEvent::Request(inc))) => {
                let mut ok = Response::for_request(&inc.request, 200);
                ok.set_to_tag("uas1");
                ok.headers.add(HeaderName::Contact, "<sip:agent@127.0.0.1>");
                ep.respond(&inc.key, ok);
                return;
            }
            Ok(Some(_)) => continue,
            other => panic!("no INVITE reached the TU: {other:?}"),
        }
    }
}

/// A UDP UAC whose INVITE the endpoint's TU has answered with a 200 OK (sent once so far).
struct Answered {
    /// Kept alive for the test: dropping it stops the endpoint.
    _ep: Endpoint,
    events: tokio::sync::mpsc::UnboundedReceiver<EndpointEvent>,
    sock: UdpSocket,
    uac_addr: SocketAddr,
    uas_addr: SocketAddr,
}

async fn answered_invite(call_id: &str) -> Answered {
    let (ep, mut events, uas_addr) = uas().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    sock.connect(uas_addr).await.expect("connect");
    let uac_addr = sock.local_addr().expect("local address");
    sock.send(invite(uac_addr, uas_addr, call_id).as_bytes())
        .await
        .expect("send");
    answer(&ep, &mut events).await;
    Answered {
        _ep: ep,
        events,
        sock,
        uac_addr,
        uas_addr,
    }
}

#[tokio::test]
async fn two_hundred_is_retransmitted_until_the_ack() {
    let Answered {
        _ep,
        mut events,
        sock,
        uac_addr,
        uas_addr,
    } = answered_invite("retx-1").await;
    // No ACK: the 200 comes again T1, 2*T1, 4*T1 later (then at most T2 = 8*T1 apart): the
    // first four are 7*T1 apart end to end (3*T1 if the interval did not grow).
    let oks = oks_within(&sock, T1 * 20).await;
    assert!(oks.len() >= 4, "only {} 200 OKs without an ACK", oks.len());
    let span = oks[3] - oks[0];
    assert!(
        span >= T1 * 5,
        "the interval does not double: {span:?} for three gaps"
    );
    // The ACK ends them.
    sock.send(ack(uac_addr, uas_addr, "retx-1").as_bytes())
        .await
        .expect("send");
    let _ = oks_within(&sock, T1 * 4).await; // one may have been on its way
    let after = oks_within(&sock, T1 * 20).await;
    assert!(after.is_empty(), "{} 200 OKs after the ACK", after.len());
    // The ACK still reached the TU.
    let got_ack = loop {
        match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
            Ok(Some(EndpointEvent::Ack { request, .. })) => break request.call_id_str(),
            Ok(Some(_)) => continue,
            other => panic!("the ACK did not reach the TU: {other:?}"),
        }
    };
    assert_eq!(got_ack, "retx-1");
}

#[tokio::test]
async fn retransmissions_stop_after_64_t1_without_an_ack() {
    // The endpoint and its event channel stay alive to the end, as in a running TU.
    let Answered {
        _ep,
        events: _events,
        sock,
        ..
    } = answered_invite("retx-2").await;
    // 64*T1 = 3.2 s: the last one goes out before then (with some slack for a busy
    // machine), none after.
    let _ = oks_within(&sock, T1 * 72).await;
    let after = oks_within(&sock, T1 * 20).await;
    assert!(after.is_empty(), "{} 200 OKs after 64*T1", after.len());
}
