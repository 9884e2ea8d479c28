//! RFC 3261 §8.2.7: answers sent without a transaction. A real endpoint on loopback with a
//! short T1; the peer is a plain UDP socket, so every datagram on the wire is counted.
//!
//! - A refusal through `Endpoint::reply_stateless` goes out alone (no `100 Trying`) and
//!   once (no Timer G), a retransmission of the request gets the same bytes without
//!   reaching the TU, and the ACK is absorbed.
//! - An INVITE the TU holds still gets its `100 Trying`, and a stateful refusal is still
//!   retransmitted until the ACK.
//! - Past the per-source budget a source gets nothing; an exempt answer always goes.
//! - A challenge sent with `Endpoint::challenge_stateless` is not kept: a retransmission
//!   reaches the TU again.
//! - A non-INVITE answered through its transaction (kept as its answer once `Completed`):
//!   retransmissions until Timer J get the same bytes whatever the budget and however many
//!   stateless answers went since; after Timer J the request is new.

use std::net::SocketAddr;
use std::time::Duration;

use sip_core::endpoint::{
    Endpoint, EndpointConfig, EndpointEvent, IncomingRequest, RefusalBudget, StatelessConfig,
};
use sip_core::message::Response;
use sip_core::stateless::RefusalGuardConfig;
use sip_core::transaction::TimerConfig;
use sip_core::transport::{ListenAddr, Transport, TransportConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;

// TimerConfig::trying is T1/2 = 25 ms: the TU here answers well within it.
const T1: Duration = Duration::from_millis(50);

async fn endpoint(per_sec: u32) -> (Endpoint, UnboundedReceiver<EndpointEvent>, SocketAddr) {
    endpoint_keeping(per_sec, StatelessConfig::default().answered_capacity).await
}

/// An endpoint whose cache of stateless answers holds `answered_capacity` of them.
async fn endpoint_keeping(
    per_sec: u32,
    answered_capacity: usize,
) -> (Endpoint, UnboundedReceiver<EndpointEvent>, SocketAddr) {
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
            t2: Duration::from_millis(160),
            t4: Duration::from_millis(200),
        },
        stateless: StatelessConfig {
            guard: RefusalGuardConfig {
                per_sec,
                mute: Duration::from_secs(60),
                ..RefusalGuardConfig::default()
            },
            answered_capacity,
        },
        ..EndpointConfig::default()
    };
    let (ep, events) = Endpoint::start(cfg).await.expect("endpoint");
    let addr = ep.local_addrs()[0].addr;
    (ep, events, addr)
}

fn request(method: &str, uac: SocketAddr, uas: SocketAddr, id: &str) -> String {
    format!(
        "{method} sip:nobody@{uas} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {uac};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:peer@{uac}>;tag=p{id}\r\n\
         To: <sip:nobody@{uas}>\r\n\
         Call-ID: {id}\r\n\
         CSeq: 1 {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn ack_for(answer: &[u8], uac: SocketAddr, uas: SocketAddr, id: &str) -> String {
    let text = String::from_utf8_lossy(answer);
    let to = text
        .split("\r\n")
        .find(|l| l.starts_with("To:"))
        .expect("To in the answer");
    format!(
        "ACK sip:nobody@{uas} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {uac};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:peer@{uac}>;tag=p{id}\r\n\
         {to}\r\n\
         Call-ID: {id}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Every datagram that arrives within `window`.
async fn received(sock: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + window;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, sock.recv(&mut buf)).await {
        got.push(buf[..n].to_vec());
    }
    got
}

fn status(m: &[u8]) -> u16 {
    std::str::from_utf8(&m[8..11])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn next_request(events: &mut UnboundedReceiver<EndpointEvent>) -> IncomingRequest {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(EndpointEvent::Request(inc))) => return inc,
            Ok(Some(_)) => continue,
            other => panic!("no request reached the TU: {other:?}"),
        }
    }
}

async fn peer(uas: SocketAddr) -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    sock.connect(uas).await.expect("connect");
    let addr = sock.local_addr().expect("local address");
    (sock, addr)
}

/// An OPTIONS `id` from the peer, answered `status` without a transaction once it
/// reaches the TU.
async fn options_answered_statelessly(
    sock: &UdpSocket,
    ep: &Endpoint,
    events: &mut UnboundedReceiver<EndpointEvent>,
    (uac, uas): (SocketAddr, SocketAddr),
    id: &str,
    status: u16,
    budget: RefusalBudget,
) {
    sock.send(request("OPTIONS", uac, uas, id).as_bytes())
        .await
        .expect("send");
    let inc = next_request(events).await;
    ep.reply_stateless(&inc, Response::for_request(&inc.request, status), budget);
}

#[tokio::test]
async fn a_stateless_refusal_goes_out_alone_and_once() {
    let (ep, mut events, uas) = endpoint(30).await;
    let (sock, uac) = peer(uas).await;
    let invite = request("INVITE", uac, uas, "st-1");
    sock.send(invite.as_bytes()).await.expect("send");
    let inc = next_request(&mut events).await;
    let mut refusal = Response::for_request(&inc.request, 404);
    refusal.set_to_tag("uas1");
    ep.reply_stateless(&inc, refusal, RefusalBudget::PerSource);
    let got = received(&sock, T1 * 5).await;
    assert_eq!(got.iter().map(|m| status(m)).collect::<Vec<_>>(), [404]);
    // A retransmission of the INVITE (within 64*T1, as a client's Timer A would): the same
    // bytes, and the TU hears nothing of it.
    sock.send(invite.as_bytes()).await.expect("send");
    let again = received(&sock, T1 * 5).await;
    assert_eq!(again, got);
    // The ACK: absorbed, not passed up. Then nothing more until well past Timer H (64*T1):
    // no Timer G retransmission.
    sock.send(ack_for(&got[0], uac, uas, "st-1").as_bytes())
        .await
        .expect("send");
    assert!(received(&sock, T1 * 66).await.is_empty());
    assert!(
        events.try_recv().is_err(),
        "the TU heard of a retransmission or of the ACK"
    );
}

#[tokio::test]
async fn an_invite_the_tu_holds_gets_100_trying_and_a_stateful_refusal_is_retransmitted() {
    let (ep, mut events, uas) = endpoint(30).await;
    let (sock, uac) = peer(uas).await;
    sock.send(request("INVITE", uac, uas, "st-2").as_bytes())
        .await
        .expect("send");
    let inc = next_request(&mut events).await;
    // The TU thinks: 100 Trying comes after TimerConfig::trying (T1/2 here).
    let trying = received(&sock, T1 * 3).await;
    assert_eq!(trying.iter().map(|m| status(m)).collect::<Vec<_>>(), [100]);
    // A refusal through the transaction: Timer G retransmits it until the ACK.
    let mut busy = Response::for_request(&inc.request, 486);
    busy.set_to_tag("uas2");
    ep.respond(&inc.key, busy);
    let got = received(&sock, T1 * 8).await;
    assert!(got.len() >= 3, "{} 486s within 8*T1", got.len());
    assert!(got.iter().all(|m| status(m) == 486));
}

#[tokio::test]
async fn past_its_budget_a_source_gets_nothing_but_exempt_answers_go() {
    let (ep, mut events, uas) = endpoint(3).await;
    let (sock, uac) = peer(uas).await;
    for i in 0..10 {
        let id = format!("st-3-{i}");
        options_answered_statelessly(
            &sock,
            &ep,
            &mut events,
            (uac, uas),
            &id,
            200,
            RefusalBudget::PerSource,
        )
        .await;
    }
    assert_eq!(received(&sock, T1 * 5).await.len(), 3);
    // Retransmissions of a muted request stay silent, and do not reach the TU.
    sock.send(request("OPTIONS", uac, uas, "st-3-9").as_bytes())
        .await
        .expect("send");
    assert!(received(&sock, T1 * 5).await.is_empty());
    assert!(events.try_recv().is_err());
    // A known peer from the same address is answered regardless.
    for i in 0..5 {
        let id = format!("st-3-x{i}");
        options_answered_statelessly(
            &sock,
            &ep,
            &mut events,
            (uac, uas),
            &id,
            200,
            RefusalBudget::Exempt,
        )
        .await;
    }
    assert_eq!(received(&sock, T1 * 5).await.len(), 5);
}

#[tokio::test]
async fn a_2xx_to_an_invite_is_never_stateless() {
    let (ep, mut events, uas) = endpoint(30).await;
    let (sock, uac) = peer(uas).await;
    sock.send(request("INVITE", uac, uas, "st-4").as_bytes())
        .await
        .expect("send");
    let inc = next_request(&mut events).await;
    let mut ok = Response::for_request(&inc.request, 200);
    ok.set_to_tag("uas4");
    // Misused: the 2xx opens a dialog, so it goes through the transaction and is
    // retransmitted until the ACK (§13.3.1.4).
    ep.reply_stateless(&inc, ok, RefusalBudget::PerSource);
    let got = received(&sock, T1 * 8).await;
    assert!(got.len() >= 3, "{} 200s within 8*T1", got.len());
    assert!(got.iter().all(|m| status(m) == 200));
}

#[tokio::test]
async fn a_request_hook_answers_what_it_keeps_on_the_endpoint_and_passes_on_the_rest() {
    use sip_core::message::Method;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (ep, mut events, uas) = endpoint(30).await;
    let (sock, uac) = peer(uas).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (answering, counted) = (ep.clone(), Arc::clone(&calls));
    let installed = ep.set_request_hook(Arc::new(move |inc: IncomingRequest| {
        if inc.request.method != Method::Register {
            return Some(inc);
        }
        counted.fetch_add(1, Ordering::SeqCst);
        let mut challenge = Response::for_request(&inc.request, 401);
        challenge.set_to_tag("hook");
        answering.reply_stateless(&inc, challenge, RefusalBudget::PerSource);
        None
    }));
    assert!(installed);
    assert!(
        !ep.set_request_hook(Arc::new(Some)),
        "a second hook replaced the first"
    );
    // A REGISTER the hook keeps: answered once, and the TU hears nothing of it.
    let register = request("REGISTER", uac, uas, "st-h1");
    sock.send(register.as_bytes()).await.expect("send");
    let got = received(&sock, T1 * 5).await;
    assert_eq!(got.iter().map(|m| status(m)).collect::<Vec<_>>(), [401]);
    // Its retransmission gets the same bytes from the endpoint, without the hook.
    sock.send(register.as_bytes()).await.expect("send");
    assert_eq!(received(&sock, T1 * 5).await, got);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        events.try_recv().is_err(),
        "the TU heard of a request the hook kept"
    );
    // A request the hook gives back reaches the TU as usual.
    sock.send(request("OPTIONS", uac, uas, "st-h2").as_bytes())
        .await
        .expect("send");
    let inc = next_request(&mut events).await;
    assert_eq!(inc.request.method, Method::Options);
}

/// What a hook answers through its own endpoint is applied on the endpoint's task when the
/// hook returns, in the order given; an answer given before the hook panicked still goes.
#[tokio::test]
async fn a_request_hooks_answers_go_out_in_order_even_when_it_panics_after() {
    use sip_core::message::Method;
    use std::sync::Arc;
    let (ep, _events, uas) = endpoint(30).await;
    let (sock, uac) = peer(uas).await;
    let answering = ep.clone();
    assert!(ep.set_request_hook(Arc::new(move |inc: IncomingRequest| {
        let mut trying = Response::for_request(&inc.request, 100);
        trying.set_to_tag("hook");
        answering.respond(&inc.key, trying);
        let mut ok = Response::for_request(&inc.request, 200);
        ok.set_to_tag("hook");
        answering.respond(&inc.key, ok);
        if inc.request.method == Method::Options {
            panic!("a hook that fails after answering");
        }
        None
    })));
    // The statuses the endpoint sends back to one request.
    let answers = |id: &'static str, method: &'static str| {
        let sock = &sock;
        async move {
            sock.send(request(method, uac, uas, id).as_bytes())
                .await
                .expect("send");
            let got = received(sock, T1 * 5).await;
            got.iter().map(|m| status(m)).collect::<Vec<_>>()
        }
    };
    assert_eq!(answers("st-o1", "REGISTER").await, [100, 200]);
    assert_eq!(answers("st-o2", "OPTIONS").await, [100, 200]);
    // The endpoint goes on after the panic.
    assert_eq!(answers("st-o3", "REGISTER").await.len(), 2);
}

/// RFC 3261 §17.2.2 (Figure 8, `Completed`): until Timer J a retransmitted request gets the
/// final answer again and never reaches the TU; after Timer J it is a new request. The
/// layer keeps such a transaction as its answer alone, in a cache of its own: the stateless
/// answers (a cache of two here, past a budget of one per second) neither push it out nor
/// pace it.
#[tokio::test]
async fn a_completed_non_invite_answers_its_retransmissions_until_timer_j() {
    let (ep, mut events, uas) = endpoint_keeping(1, 2).await;
    let (sock, uac) = peer(uas).await;
    let register = request("REGISTER", uac, uas, "st-j1");
    sock.send(register.as_bytes()).await.expect("send");
    let inc = next_request(&mut events).await;
    let mut ok = Response::for_request(&inc.request, 200);
    ok.set_to_tag("uasj");
    ep.respond(&inc.key, ok);
    let got = received(&sock, T1 * 3).await;
    assert_eq!(got.iter().map(|m| status(m)).collect::<Vec<_>>(), [200]);
    // Stateless answers to others: more than the cache of two holds, past the budget.
    for i in 0..4 {
        let id = format!("st-j-o{i}");
        options_answered_statelessly(
            &sock,
            &ep,
            &mut events,
            (uac, uas),
            &id,
            404,
            RefusalBudget::PerSource,
        )
        .await;
    }
    let _ = received(&sock, T1 * 3).await;
    // Three retransmissions of the REGISTER: the same 200 each time, the TU hears nothing.
    for _ in 0..3 {
        sock.send(register.as_bytes()).await.expect("send");
        assert_eq!(received(&sock, T1 * 2).await, got);
    }
    assert!(
        events.try_recv().is_err(),
        "a retransmission reached the TU before Timer J"
    );
    // Past Timer J (64*T1 from the answer) the same bytes are a new request.
    tokio::time::sleep(T1 * 66).await;
    sock.send(register.as_bytes()).await.expect("send");
    let again = next_request(&mut events).await;
    assert_eq!(
        sip_core::message::HeaderAccess::call_id_str(&again.request),
        "st-j1"
    );
}

/// A challenge to a REGISTER without credentials is sent once and not kept: a
/// retransmission of the REGISTER reaches the TU again (which challenges it again), where an
/// answer sent with `reply_stateless` would have been replayed.
#[tokio::test]
async fn a_challenge_not_kept_lets_a_retransmission_reach_the_tu_again() {
    let (ep, mut events, uas) = endpoint(30).await;
    let (sock, uac) = peer(uas).await;
    let register = request("REGISTER", uac, uas, "st-ch1");
    sock.send(register.as_bytes()).await.expect("send");
    let inc = next_request(&mut events).await;
    let mut challenge = Response::for_request(&inc.request, 401);
    challenge.set_to_tag("uasch");
    ep.challenge_stateless(&inc, challenge, RefusalBudget::PerSource);
    let got = received(&sock, T1 * 3).await;
    assert_eq!(got.iter().map(|m| status(m)).collect::<Vec<_>>(), [401]);
    // The retransmission: nothing from the endpoint itself, the TU hears it.
    sock.send(register.as_bytes()).await.expect("send");
    let again = next_request(&mut events).await;
    assert_eq!(
        sip_core::message::HeaderAccess::call_id_str(&again.request),
        "st-ch1"
    );
    assert!(received(&sock, T1 * 3).await.is_empty());
    // The same with `reply_stateless`: the retransmission gets the kept answer.
    let second = request("REGISTER", uac, uas, "st-ch2");
    sock.send(second.as_bytes()).await.expect("send");
    let inc = next_request(&mut events).await;
    let mut kept = Response::for_request(&inc.request, 401);
    kept.set_to_tag("uasch2");
    ep.reply_stateless(&inc, kept, RefusalBudget::PerSource);
    let got = received(&sock, T1 * 3).await;
    sock.send(second.as_bytes()).await.expect("send");
    assert_eq!(received(&sock, T1 * 3).await, got);
    assert!(events.try_recv().is_err());
}
