//! The call machine on a virtual clock: no sockets, no runtime. Each test feeds the machine
//! the responses and requests its peers would send, at the times they would send them, and
//! checks what it asks for: the SIP it sends, the CANCELs, the answers, and the one outcome.

use super::*;
use sip_core::message::{parse_message, SipMessage};
use sip_core::transport::Transport;

const AGENT_SDP: &str = "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
const CARRIER_SDP: &str = "v=0\r\no=carrier 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
const HOLD_SDP: &str = "v=0\r\no=phone 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn target(label: &str, port: u16) -> Target {
    let uri = format!("sip:{label}@127.0.0.1:{port}");
    Target {
        request_uri: Uri::parse(&uri).expect("uri"),
        to: format!("<{uri}>"),
        dest: Destination {
            transport: Transport::Udp,
            addr: addr(port),
            conn: None,
        },
        contact: Uri::parse("sip:127.0.0.1:5060").ok(),
        credentials: None,
        label: label.to_string(),
        invite_timeout: None,
        failover_codes: Vec::new(),
        trunk: None,
        route: Vec::new(),
    }
}

fn trunk(label: &str, port: u16) -> Target {
    Target {
        invite_timeout: Some(Duration::from_secs(2)),
        failover_codes: vec![408, 500, 502, 503, 504],
        ..target(label, port)
    }
}

fn spec() -> CallSpec {
    CallSpec {
        call_id: "call_test".into(),
        account_id: "acct_test".into(),
        agent: AgentTarget::Devices {
            user_id: "user_alice".into(),
        },
        customer: CustomerTarget::E164("+15557654321".into()),
        caller_id: Some("+15550001111".into()),
        agent_ring: Duration::from_secs(30),
        customer_ring: Duration::from_secs(60),
    }
}

fn timers() -> TimerConfig {
    TimerConfig::default()
}

/// A machine, a virtual clock, and everything it asked for so far.
struct Rig {
    m: CallMachine,
    now: Instant,
    outs: Vec<Output>,
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::now();
        let cfg = MachineConfig {
            domain: "dialbridge.test".into(),
            session_expires: 1800,
            timers: timers(),
        };
        let m = CallMachine::new(spec(), cfg, [addr(30_000), addr(30_002)], now);
        let mut r = Rig {
            m,
            now,
            outs: Vec::new(),
        };
        r.drain();
        r
    }

    fn drain(&mut self) {
        while let Some(o) = self.m.poll_output() {
            self.outs.push(o);
        }
    }

    fn feed(&mut self, input: Input) {
        self.m.handle(input, self.now);
        self.drain();
    }

    /// Moves the clock to `at` (after `start`), firing every deadline on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(t) = self.m.poll_timeout().filter(|t| *t <= until) {
            self.now = t.max(self.now);
            self.m.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
    }

    /// Takes the outputs so far.
    fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outs)
    }

    fn targets(&mut self, leg: Leg, plan: Plan) {
        self.feed(Input::Targets(leg, Ok(plan)));
    }

    fn respond(&mut self, tx: TxId, r: Response) {
        self.feed(Input::Tx(tx, ClientEvent::Response(r)));
    }

    fn request(&mut self, inc: IncomingRequest, leg: Leg) {
        self.feed(Input::Request(Box::new(inc), leg));
    }
}

/// The requests sent: (tx, request).
fn sent(outs: &[Output]) -> Vec<(TxId, Request)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { tx, request, .. } => Some((*tx, request.clone())),
            _ => None,
        })
        .collect()
}

fn sent_methods(outs: &[Output]) -> Vec<String> {
    sent(outs)
        .iter()
        .map(|(_, r)| r.method.to_string())
        .collect()
}

fn cancels(outs: &[Output]) -> Vec<TxId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Cancel { tx, .. } => Some(*tx),
            _ => None,
        })
        .collect()
}

fn acks(outs: &[Output]) -> usize {
    outs.iter()
        .filter(|o| matches!(o, Output::Ack { .. }))
        .count()
}

fn answers(outs: &[Output]) -> Vec<u16> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Respond { response, .. } => Some(response.status),
            _ => None,
        })
        .collect()
}

fn ended(outs: &[Output]) -> Vec<Outcome> {
    outs.iter()
        .filter_map(|o| match o {
            Output::End(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

fn events(outs: &[Output]) -> Vec<CallEventKind> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(k) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

/// A peer's answer to `req`, with its own To tag, a Contact, and SDP when given.
fn reply(req: &Request, status: u16, tag: &str, sdp: Option<&str>) -> Response {
    let mut r = Response::for_request(req, status);
    if status > 100 {
        r.set_to_tag(tag);
    }
    r.headers
        .add(HeaderName::Contact, format!("<sip:{tag}@127.0.0.1:5099>"));
    if let Some(b) = sdp {
        r.headers.add(HeaderName::ContentType, "application/sdp");
        r.body = Bytes::from(b.to_string());
    }
    r
}

fn with_header(mut r: Response, name: HeaderName, value: &str) -> Response {
    r.headers.add(name, value.to_string());
    r
}

/// A request from the peer that answered `invite` with To tag `tag`, within that dialog.
fn in_dialog(
    invite: &Request,
    tag: &str,
    method: &str,
    cseq: u32,
    sdp: Option<&str>,
) -> IncomingRequest {
    let from = invite.header_str(&HeaderName::To).unwrap_or_default();
    let to = invite.header_str(&HeaderName::From).unwrap_or_default();
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    let text = format!(
        "{method} sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{tag}{cseq}{method}\r\nFrom: {from};tag={tag}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{tag}@127.0.0.1:5099>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        invite.call_id_str(),
        body.len()
    );
    let Ok(SipMessage::Request(request)) = parse_message(Bytes::from(text.clone())) else {
        panic!("bad test request: {text}");
    };
    IncomingRequest {
        key: ServerKey::Rfc2543(format!("{tag}-{cseq}-{method}")),
        flow: sip_core::transport::Flow {
            transport: Transport::Udp,
            local: addr(5060),
            remote: addr(5099),
            conn: None,
        },
        request,
    }
}

/// Rings two devices; the first answers. Returns (agent INVITE that won, its tx).
fn agent_answered(r: &mut Rig) -> (Request, TxId) {
    assert!(matches!(r.take().as_slice(), [Output::Lookup(Leg::Agent)]));
    r.targets(
        Leg::Agent,
        vec![vec![target("desk", 5070), target("mobile", 5071)]],
    );
    let out = r.take();
    let invites = sent(&out);
    assert_eq!(invites.len(), 2, "both devices are rung at once");
    let (tx, inv) = invites[0].clone();
    r.respond(tx, reply(&inv, 180, "desk", None));
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert_eq!(
        cancels(&out),
        vec![invites[1].0],
        "the other device is cancelled"
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Lookup(Leg::Customer))));
    (inv, tx)
}

/// Then the carrier answers. Returns (the carrier's INVITE, its tx).
fn connected(r: &mut Rig, carrier_answer: impl Fn(Response) -> Response) -> (Request, Request) {
    let (agent_inv, _) = agent_answered(r);
    r.targets(Leg::Customer, vec![vec![trunk("carrier", 5080)]]);
    let out = r.take();
    let (ctx, cinv) = sent(&out).remove(0);
    assert!(String::from_utf8_lossy(&cinv.body).contains("m=audio 30002"));
    r.respond(
        ctx,
        carrier_answer(reply(&cinv, 200, "carrier", Some(CARRIER_SDP))),
    );
    let out = r.take();
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, CallEventKind::InProgress { sip_code: 200 })));
    // The carrier took fewer codecs than the agent offered: the agent is re-offered the
    // carrier's, and accepts.
    let realign = sent(&out);
    assert_eq!(realign.len(), 1);
    let (rtx, rinv) = realign[0].clone();
    assert_eq!(rinv.call_id_str(), agent_inv.call_id_str());
    assert!(!String::from_utf8_lossy(&rinv.body).contains("PCMA"));
    r.respond(rtx, reply(&rinv, 200, "desk", Some(CARRIER_SDP)));
    assert_eq!(acks(&r.take()), 1);
    (agent_inv, cinv)
}

/// A phone registered through an edge proxy (RFC 3327 Path): its INVITE carries the Path as
/// Route headers, in order, and goes to the first of them.
#[test]
fn a_target_with_a_route_set_gets_route_headers_in_order() {
    let mut r = Rig::new();
    r.take();
    let mut via_edge = target("desk", 5070);
    via_edge.route = vec![
        "<sip:127.0.0.2:5060;lr;received=sip:10.0.0.5:5070>".into(),
        "<sip:127.0.0.3;lr>".into(),
    ];
    via_edge.dest.addr = addr(5060);
    r.targets(Leg::Agent, vec![vec![via_edge, target("mobile", 5071)]]);
    let out = r.take();
    let inv = sent(&out);
    let routes = |req: &Request| -> Vec<String> {
        req.headers
            .get_all(&HeaderName::Route)
            .map(|v| v.to_str().into_owned())
            .collect()
    };
    assert_eq!(
        routes(&inv[0].1),
        [
            "<sip:127.0.0.2:5060;lr;received=sip:10.0.0.5:5070>",
            "<sip:127.0.0.3;lr>"
        ]
    );
    assert_eq!(inv[0].1.uri().to_string(), "sip:desk@127.0.0.1:5070");
    let dests: Vec<SocketAddr> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { dest, .. } => Some(dest.addr),
            _ => None,
        })
        .collect();
    assert_eq!(dests, [addr(5060), addr(5071)]);
    assert!(routes(&inv[1].1).is_empty(), "a direct target has none");
}

#[test]
fn fork_race_both_devices_answer_one_wins_the_other_is_acked_and_byed() {
    let mut r = Rig::new();
    r.take();
    r.targets(
        Leg::Agent,
        vec![vec![target("desk", 5070), target("mobile", 5071)]],
    );
    let out = r.take();
    let inv = sent(&out);
    let ((tx0, inv0), (tx1, inv1)) = (inv[0].clone(), inv[1].clone());
    r.respond(tx0, reply(&inv0, 200, "desk", Some(AGENT_SDP)));
    r.respond(tx1, reply(&inv1, 200, "mobile", Some(AGENT_SDP)));
    let out = r.take();
    // The winner: ACK; the loser: CANCEL asked (crossed its 200), then ACK + BYE.
    assert_eq!(acks(&out), 2);
    assert_eq!(sent_methods(&out), ["BYE"]);
    assert_eq!(
        events(&out)
            .iter()
            .filter(|e| matches!(e, CallEventKind::AgentAnswered { .. }))
            .count(),
        1
    );
    // A retransmission of the winner's 200 is ACKed again, and nothing more.
    r.respond(tx0, reply(&inv0, 200, "desk", Some(AGENT_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert!(sent(&out).is_empty());
}

#[test]
fn agent_ring_timeout_cancels_and_ends_no_answer() {
    let mut r = Rig::new();
    r.take();
    r.targets(Leg::Agent, vec![vec![target("desk", 5070)]]);
    let (tx, inv) = sent(&r.take()).remove(0);
    r.respond(tx, reply(&inv, 180, "desk", None));
    r.advance(Duration::from_secs(29));
    assert!(ended(&r.take()).is_empty());
    r.advance(Duration::from_secs(1));
    let out = r.take();
    assert_eq!(cancels(&out), vec![tx]);
    let o = ended(&out);
    assert_eq!(o.len(), 1);
    assert_eq!(
        (o[0].status, o[0].leg, o[0].sip_code),
        (CallStatus::NoAnswer, Some(Leg::Agent), Some(408))
    );
    // The cancelled INVITE may still be answered: the machine lingers until it is.
    assert!(!r.m.is_finished());
    r.respond(tx, reply(&inv, 487, "desk", None));
    assert!(r.m.is_finished());
}

#[test]
fn cancel_crossing_a_200_the_200_is_acked_and_byed_and_the_outcome_stands() {
    let mut r = Rig::new();
    r.take();
    r.targets(Leg::Agent, vec![vec![target("desk", 5070)]]);
    let (tx, inv) = sent(&r.take()).remove(0);
    r.respond(tx, reply(&inv, 180, "desk", None));
    r.advance(Duration::from_secs(30));
    let out = r.take();
    assert_eq!(cancels(&out), vec![tx]);
    assert_eq!(ended(&out)[0].status, CallStatus::NoAnswer);
    // The device's 200 crossed the CANCEL.
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert_eq!(sent_methods(&out), ["BYE"]);
    assert!(ended(&out).is_empty(), "one outcome only");
    assert!(r.m.is_finished());
}

#[test]
fn cancel_before_any_provisional_lingers_at_most_64_t1() {
    let mut r = Rig::new();
    r.take();
    r.targets(Leg::Agent, vec![vec![target("desk", 5070)]]);
    let (tx, _) = sent(&r.take()).remove(0);
    r.feed(Input::Hangup);
    let out = r.take();
    assert_eq!(cancels(&out), vec![tx]);
    assert_eq!(ended(&out)[0].status, CallStatus::Canceled);
    assert!(!r.m.is_finished());
    r.advance(timers().timeout());
    assert!(r.m.is_finished(), "nothing waits past 64*T1");
}

#[test]
fn hangup_while_the_customer_rings_cancels_it_and_byes_the_agent() {
    let mut r = Rig::new();
    let (agent_inv, _) = agent_answered(&mut r);
    r.targets(Leg::Customer, vec![vec![trunk("carrier", 5080)]]);
    let (ctx, cinv) = sent(&r.take()).remove(0);
    r.respond(ctx, reply(&cinv, 183, "carrier", Some(CARRIER_SDP)));
    let out = r.take();
    assert!(events(&out).contains(&CallEventKind::EarlyMedia { leg: Leg::Customer }));
    r.feed(Input::Hangup);
    let out = r.take();
    assert_eq!(cancels(&out), vec![ctx]);
    let byes = sent(&out);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.method, Method::Bye);
    assert_eq!(byes[0].1.call_id_str(), agent_inv.call_id_str());
    assert!(
        ended(&out).is_empty(),
        "the outcome waits for the BYE's answer"
    );
    r.respond(byes[0].0, Response::for_request(&byes[0].1, 200));
    let o = ended(&r.take());
    assert_eq!(o[0].status, CallStatus::Canceled);
}

#[test]
fn agent_bye_while_the_customer_rings_ends_canceled_by_the_agent() {
    let mut r = Rig::new();
    let (agent_inv, _) = agent_answered(&mut r);
    r.targets(Leg::Customer, vec![vec![trunk("carrier", 5080)]]);
    let (ctx, cinv) = sent(&r.take()).remove(0);
    r.respond(ctx, reply(&cinv, 180, "carrier", None));
    r.take();
    r.request(in_dialog(&agent_inv, "desk", "BYE", 1, None), Leg::Agent);
    let out = r.take();
    assert_eq!(answers(&out), [200]);
    assert_eq!(cancels(&out), vec![ctx]);
    assert!(sent(&out).is_empty(), "no BYE back to a leg that hung up");
    let o = ended(&out);
    assert_eq!(
        (o[0].status, o[0].leg),
        (CallStatus::Canceled, Some(Leg::Agent))
    );
}

#[test]
fn carrier_503_fails_over_to_the_next_trunk_and_486_does_not() {
    let mut r = Rig::new();
    agent_answered(&mut r);
    r.targets(
        Leg::Customer,
        vec![
            vec![trunk("first", 5080)],
            vec![trunk("second", 5081)],
            vec![trunk("third", 5082)],
        ],
    );
    let (tx1, inv1) = sent(&r.take()).remove(0);
    r.respond(tx1, reply(&inv1, 503, "first", None));
    let out = r.take();
    let (tx2, inv2) = sent(&out).remove(0);
    assert_eq!(inv2.uri().to_string(), "sip:second@127.0.0.1:5081");
    assert_eq!(
        inv2.call_id_str(),
        inv1.call_id_str(),
        "one call, another target"
    );
    assert!(cseq_of(&inv2) > cseq_of(&inv1));
    // Busy is the customer's answer: no failover.
    r.respond(tx2, reply(&inv2, 486, "second", None));
    let out = r.take();
    assert_eq!(sent_methods(&out), ["BYE"], "only the agent's BYE");
    r.respond(
        sent(&out)[0].0,
        Response::for_request(&sent(&out)[0].1, 200),
    );
    let o = ended(&r.take());
    assert_eq!(
        (o[0].status, o[0].leg, o[0].sip_code),
        (CallStatus::Busy, Some(Leg::Customer), Some(486))
    );
}

#[test]
fn a_silent_trunk_is_given_up_after_its_invite_timeout() {
    let mut r = Rig::new();
    agent_answered(&mut r);
    r.targets(
        Leg::Customer,
        vec![vec![trunk("dead", 5080)], vec![trunk("alive", 5081)]],
    );
    let (tx1, inv1) = sent(&r.take()).remove(0);
    r.advance(Duration::from_millis(1999));
    assert!(sent(&r.take()).is_empty());
    r.advance(Duration::from_millis(1));
    let out = r.take();
    assert_eq!(cancels(&out), vec![tx1]);
    let (tx2, inv2) = sent(&out).remove(0);
    assert_eq!(inv2.uri().to_string(), "sip:alive@127.0.0.1:5081");
    r.respond(tx2, reply(&inv2, 200, "alive", Some(CARRIER_SDP)));
    assert!(events(&r.take())
        .iter()
        .any(|e| matches!(e, CallEventKind::InProgress { .. })));
    // A late 200 of the dead one is ACKed and BYEd.
    r.respond(tx1, reply(&inv1, 200, "dead", Some(CARRIER_SDP)));
    assert_eq!(sent_methods(&r.take()), ["BYE"]);
}

#[test]
fn reinvite_glare_gets_491_and_a_second_offer_gets_500_with_retry_after() {
    let mut r = Rig::new();
    let (agent_inv, cinv) = connected(&mut r, |x| x);
    // The agent puts the call on hold: the offer goes to the carrier.
    r.request(
        in_dialog(&agent_inv, "desk", "INVITE", 2, Some(HOLD_SDP)),
        Leg::Agent,
    );
    let out = r.take();
    let (ptx, passed) = sent(&out).remove(0);
    assert_eq!(passed.method, Method::Invite);
    assert_eq!(passed.call_id_str(), cinv.call_id_str());
    assert!(String::from_utf8_lossy(&passed.body).contains("a=sendonly"));
    // The carrier's own re-INVITE crosses ours: 491 (RFC 3261 §14.2).
    r.request(
        in_dialog(&cinv, "carrier", "INVITE", 2, Some(CARRIER_SDP)),
        Leg::Customer,
    );
    assert_eq!(answers(&r.take()), [491]);
    // The agent offers again before its first is answered: 500 + Retry-After.
    r.request(
        in_dialog(&agent_inv, "desk", "INVITE", 3, Some(AGENT_SDP)),
        Leg::Agent,
    );
    let out = r.take();
    let resp = out.iter().find_map(|o| match o {
        Output::Respond { response, .. } => Some(response.clone()),
        _ => None,
    });
    let resp = resp.expect("an answer");
    assert_eq!(resp.status, 500);
    assert!(resp.headers.get(&HeaderName::RetryAfter).is_some());
    // The carrier answers the hold: ACKed, and the agent gets the answer rewritten.
    r.respond(ptx, reply(&passed, 200, "carrier", Some(CARRIER_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    let ok = out
        .iter()
        .find_map(|o| match o {
            Output::Respond { response, .. } => Some(response.clone()),
            _ => None,
        })
        .expect("the agent's answer");
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 30000"));
}

#[test]
fn session_refresh_every_half_interval_and_a_481_ends_the_call() {
    let mut r = Rig::new();
    let (agent_inv, _) = connected(&mut r, |x| {
        with_header(x, HeaderName::SessionExpires, "90;refresher=uac")
    });
    r.advance(Duration::from_secs(44));
    assert!(sent(&r.take()).is_empty());
    r.advance(Duration::from_secs(1));
    let out = r.take();
    let (tx, refresh) = sent(&out).remove(0);
    assert_eq!(refresh.method, Method::Invite);
    // Answered: the next refresh is due 45 s later.
    r.respond(tx, reply(&refresh, 200, "carrier", Some(CARRIER_SDP)));
    assert_eq!(acks(&r.take()), 1);
    r.advance(Duration::from_secs(45));
    let out = r.take();
    let (tx, refresh) = sent(&out).remove(0);
    r.respond(tx, reply(&refresh, 481, "carrier", None));
    let out = r.take();
    let byes = sent(&out);
    assert_eq!(byes.len(), 1);
    assert_eq!(
        byes[0].1.call_id_str(),
        agent_inv.call_id_str(),
        "BYE the agent"
    );
    r.respond(byes[0].0, Response::for_request(&byes[0].1, 200));
    let o = ended(&r.take());
    assert_eq!(
        (o[0].status, o[0].leg, o[0].sip_code, o[0].reason.as_str()),
        (
            CallStatus::Completed,
            Some(Leg::Customer),
            Some(481),
            "session refresh failed"
        )
    );
}

#[test]
fn a_peer_that_does_not_refresh_its_session_is_hung_up() {
    let mut r = Rig::new();
    connected(&mut r, |x| {
        with_header(x, HeaderName::SessionExpires, "120;refresher=uas")
    });
    r.advance(Duration::from_secs(119));
    assert!(sent(&r.take()).is_empty());
    r.advance(Duration::from_secs(1));
    let out = r.take();
    assert_eq!(sent_methods(&out), ["BYE", "BYE"]);
    for (tx, bye) in sent(&out) {
        r.respond(tx, Response::for_request(&bye, 200));
    }
    let o = ended(&r.take());
    assert_eq!(
        (o[0].status, o[0].reason.as_str(), o[0].duration_secs),
        (CallStatus::Completed, "session timer expired", 120)
    );
}

#[test]
fn a_bye_that_gets_no_answer_still_ends_the_call_in_bounded_time() {
    let mut r = Rig::new();
    let (agent_inv, _) = connected(&mut r, |x| x);
    r.request(in_dialog(&agent_inv, "desk", "BYE", 2, None), Leg::Agent);
    let out = r.take();
    assert_eq!(answers(&out), [200]);
    assert_eq!(sent_methods(&out), ["BYE"]);
    assert!(ended(&out).is_empty());
    // The carrier never answers and its transaction never reports (the worst case).
    r.advance(timers().timeout() + timers().t4);
    let o = ended(&r.take());
    assert_eq!(
        (o[0].status, o[0].leg),
        (CallStatus::Completed, Some(Leg::Agent))
    );
}

#[test]
fn a_challenged_trunk_gets_the_invite_again_with_credentials_once() {
    let mut r = Rig::new();
    agent_answered(&mut r);
    let mut t = trunk("carrier", 5080);
    t.credentials = Some(("user".into(), "secret".into()));
    r.targets(Leg::Customer, vec![vec![t]]);
    let (tx, inv) = sent(&r.take()).remove(0);
    let challenge = with_header(
        reply(&inv, 407, "carrier", None),
        HeaderName::ProxyAuthenticate,
        "Digest realm=\"carrier\", nonce=\"abc\", algorithm=MD5, qop=\"auth\"",
    );
    r.respond(tx, challenge.clone());
    let (tx2, inv2) = sent(&r.take()).remove(0);
    assert!(inv2.headers.get(&HeaderName::ProxyAuthorization).is_some());
    assert_eq!(cseq_of(&inv2), cseq_of(&inv) + 1);
    // A second challenge is not answered again: the leg fails.
    r.respond(
        tx2,
        with_header(
            reply(&inv2, 407, "carrier", None),
            HeaderName::ProxyAuthenticate,
            "Digest realm=\"carrier\", nonce=\"def\"",
        ),
    );
    let out = r.take();
    assert_eq!(sent_methods(&out), ["BYE"]);
}

/// `t` as the target of an attempt through trunk `name` (at most `max_calls` at once).
fn through_trunk(
    t: Target,
    name: &str,
    max_calls: Option<u32>,
    trunks: &std::sync::Arc<crate::trunks::Trunks>,
) -> Target {
    let attempt = crate::trunks::Attempt {
        trunk: name.into(),
        label: t.label.clone(),
        request_uri: t.request_uri.clone(),
        dest: t.dest,
        credentials: None,
        invite_timeout: Duration::from_secs(2),
        failover_codes: t.failover_codes.clone(),
        max_calls,
        calls_per_second: None,
        checked: false,
        down_after: 3,
    };
    Target {
        trunk: Some(crate::trunks::call_glue::TrunkAttempt::new(
            attempt,
            std::sync::Arc::clone(trunks),
        )),
        ..t
    }
}

#[tokio::test]
async fn a_trunk_at_its_call_limit_is_skipped_and_the_answering_trunk_keeps_its_channel() {
    let store: std::sync::Arc<dyn store::Store> = std::sync::Arc::new(store::StoreThreads::inline(
        store::SqliteStore::open_in_memory().expect("store"),
    ));
    let trunks = std::sync::Arc::new(crate::trunks::Trunks::new(
        &crate::trunks::TrunksConfig {
            dns_servers: vec![addr(9)],
        },
        store,
    ));
    let full = through_trunk(trunk("full", 5080), "full", Some(1), &trunks);
    let open = through_trunk(trunk("open", 5081), "open", Some(1), &trunks);
    // Another call holds the only channel of "full".
    let held = full.trunk.as_ref().and_then(|t| t.acquire());
    assert!(held.is_some());
    let mut r = Rig::new();
    agent_answered(&mut r);
    r.targets(Leg::Customer, vec![vec![full.clone()], vec![open.clone()]]);
    let out = r.take();
    let invites = sent(&out);
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0].1.uri().to_string(), "sip:open@127.0.0.1:5081");
    assert!(events(&out).iter().any(|e| matches!(e,
        CallEventKind::Note { text, .. } if text.contains("skipped, trunk full at its call limit"))));
    // Answered: "open" keeps its channel for the call.
    let (tx, inv) = invites[0].clone();
    r.respond(tx, reply(&inv, 200, "open", Some(CARRIER_SDP)));
    r.take();
    let open_attempt = open
        .trunk
        .as_ref()
        .map(|t| t.attempt.clone())
        .expect("attempt");
    assert!(trunks.acquire(&open_attempt).is_none(), "the call holds it");
    let (_, attempts) = trunks.metric_lines();
    assert!(attempts.contains(&("{trunk=\"open\",code=\"200\"}".to_string(), 1)));
    // The call ends: the channel is free again.
    r.feed(Input::Hangup);
    let out = r.take();
    for (tx, bye) in sent(&out) {
        r.respond(tx, Response::for_request(&bye, 200));
    }
    assert_eq!(ended(&r.take()).len(), 1);
    assert!(trunks.acquire(&open_attempt).is_some());
    // With no stage left and none tried, the leg fails saying why.
    let mut r = Rig::new();
    agent_answered(&mut r);
    r.targets(Leg::Customer, vec![vec![full]]);
    let out = r.take();
    let bye = sent(&out);
    assert_eq!(sent_methods(&out), ["BYE"], "only the agent's BYE");
    r.respond(bye[0].0, Response::for_request(&bye[0].1, 200));
    let o = ended(&r.take());
    assert_eq!(o[0].reason, "no trunk available: full at its call limit");
    assert_eq!(o[0].status, CallStatus::Failed);
    drop(held);
}
