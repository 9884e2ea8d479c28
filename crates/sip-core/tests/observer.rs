//! The message observer sees every SIP message the endpoint takes in and puts out, whole:
//! requests as they arrived, answers through a transaction and their retransmissions, and
//! answers sent without a transaction. A real endpoint on loopback and a plain UDP peer, so
//! what the observer saw is compared with the bytes on the wire.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sip_core::endpoint::{Endpoint, EndpointConfig, EndpointEvent, RefusalBudget};
use sip_core::message::{HeaderName, Response};
use sip_core::observe::{Direction, MessageObserver, WireMessage};
use sip_core::transaction::TimerConfig;
use sip_core::transport::{ListenAddr, Transport, TransportConfig};
use tokio::net::UdpSocket;

const T1: Duration = Duration::from_millis(40);

/// One message as the observer saw it: direction, transport, local, remote, bytes.
type Seen = (Direction, Transport, SocketAddr, SocketAddr, Vec<u8>);

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl MessageObserver for Recorder {
    fn on_message(&self, m: &WireMessage<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push((m.direction, m.transport, m.local, m.remote, m.data.to_vec()));
        }
    }
}

fn request(method: &str, uac: SocketAddr, uas: SocketAddr, call_id: &str) -> String {
    format!(
        "{method} sip:agent@{uas} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {uac};branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:carrier@{uac}>;tag=uac1\r\n\
         To: <sip:agent@{uas}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 7 {method}\r\n\
         Contact: <sip:carrier@{uac}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

async fn next_request(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<EndpointEvent>,
) -> sip_core::endpoint::IncomingRequest {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(EndpointEvent::Request(inc))) => return inc,
            Ok(Some(_)) => continue,
            other => panic!("no request reached the TU: {other:?}"),
        }
    }
}

#[tokio::test]
async fn observer_sees_requests_answers_retransmissions_and_stateless_answers() {
    let rec = Arc::new(Recorder::default());
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
            t2: Duration::from_millis(320),
            t4: Duration::from_millis(400),
        },
        observer: Some(rec.clone()),
        ..EndpointConfig::default()
    };
    let (ep, mut events) = Endpoint::start(cfg).await.expect("endpoint");
    let uas = ep.local_addrs()[0].addr;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    sock.connect(uas).await.expect("connect");
    let uac = sock.local_addr().expect("local address");

    // An INVITE answered 200 and never ACKed: the 200 is retransmitted.
    let invite = request("INVITE", uac, uas, "obs-1");
    sock.send(invite.as_bytes()).await.expect("send");
    let inc = next_request(&mut events).await;
    let mut ok = Response::for_request(&inc.request, 200);
    ok.set_to_tag("uas1");
    ok.headers.add(HeaderName::Contact, "<sip:agent@127.0.0.1>");
    ep.respond(&inc.key, ok);
    // An OPTIONS answered statelessly.
    let options = request("OPTIONS", uac, uas, "obs-2");
    sock.send(options.as_bytes()).await.expect("send");
    let inc = next_request(&mut events).await;
    ep.reply_stateless(
        &inc,
        Response::for_request(&inc.request, 200),
        RefusalBudget::Exempt,
    );

    // Everything that reaches the peer within a while.
    let mut wire = Vec::new();
    let end = tokio::time::Instant::now() + T1 * 12;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, sock.recv(&mut buf)).await {
        wire.push(buf[..n].to_vec());
    }
    let seen = rec.0.lock().expect("recorder").clone();
    let received: Vec<_> = seen.iter().filter(|m| m.0 == Direction::Received).collect();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].4, invite.as_bytes(), "the INVITE is seen whole");
    assert_eq!(received[1].4, options.as_bytes());
    for m in &seen {
        assert_eq!((m.1, m.2, m.3), (Transport::Udp, uas, uac), "flow of {m:?}");
    }
    let sent: Vec<Vec<u8>> = seen
        .iter()
        .filter(|m| m.0 == Direction::Sent)
        .map(|m| m.4.clone())
        .collect();
    // Every datagram on the wire was seen, in order (a 100 Trying may come first).
    assert!(
        sent.len() >= wire.len(),
        "{} sent, {} on the wire",
        sent.len(),
        wire.len()
    );
    assert_eq!(
        &sent[..wire.len()],
        &wire[..],
        "what was seen is what was sent"
    );
    let oks_to_invite = sent
        .iter()
        .filter(|d| d.starts_with(b"SIP/2.0 200") && String::from_utf8_lossy(d).contains("INVITE"))
        .count();
    assert!(
        oks_to_invite >= 3,
        "retransmissions of the 200 are seen: {oks_to_invite}"
    );
    let oks_to_options = sent
        .iter()
        .filter(|d| String::from_utf8_lossy(d).contains("CSeq: 7 OPTIONS"))
        .count();
    assert_eq!(oks_to_options, 1, "the stateless answer is seen once");
}
