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
        sdes: None,
        webrtc: None,
        route: Vec::new(),
    }
}

fn browser(label: &str, port: u16) -> Target {
    let mut t = target(label, port);
    t.dest.transport = Transport::Wss;
    t.webrtc = Some(WebRtcOffer {
        ice: media::webrtc::IceCredentials::random(),
        fingerprint: media::webrtc::Fingerprint::parse(&format!(
            "sha-256 {}",
            ["AB"; 32].join(":")
        ))
        .expect("fingerprint"),
    });
    t
}

const BROWSER_SDP: &str = "v=0\r\no=- 4 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 50000 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\na=ice-ufrag:brws\r\na=ice-pwd:browserbrowserbrowser12\r\na=fingerprint:sha-256 CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD\r\na=setup:active\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";

#[test]
fn a_browser_target_gets_a_webrtc_offer_and_its_answer_keys_the_leg() {
    let mut r = Rig::new();
    assert!(matches!(r.take().as_slice(), [Output::Lookup(Leg::Agent)]));
    let web = browser("web", 5072);
    let ice = web.webrtc.clone().expect("webrtc").ice;
    r.targets(Leg::Agent, vec![vec![target("desk", 5070), web]]);
    let out = r.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Media(MediaOp::WebRtc(Leg::Agent, Some(i))) if *i == ice)),
        "the relay answers ICE from the INVITE on: {out:?}"
    );
    let invites = sent(&out);
    let desk = String::from_utf8_lossy(&invites[0].1.body).to_string();
    let web = String::from_utf8_lossy(&invites[1].1.body).to_string();
    assert!(
        desk.contains("RTP/AVP") && !desk.contains("fingerprint"),
        "{desk}"
    );
    for want in [
        "UDP/TLS/RTP/SAVPF 0 8 101",
        "a=ice-lite",
        "a=group:BUNDLE 0",
        &format!("a=ice-ufrag:{}", ice.ufrag),
        &format!("a=ice-pwd:{}", ice.pwd),
        "a=fingerprint:sha-256 AB:AB:",
        "a=setup:actpass",
        "a=rtcp-mux",
        "a=mid:0",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 30000 typ host",
    ] {
        assert!(web.contains(want), "{want} missing from {web}");
    }
    assert!(
        !web.contains("G722") && !web.contains("opus") && !web.contains("a=rtcp:"),
        "{web}"
    );
    // The browser answers.
    let (tx, inv) = (invites[1].0, invites[1].1.clone());
    r.respond(tx, reply(&inv, 200, "web", Some(BROWSER_SDP)));
    let out = r.take();
    assert!(
        out.iter().any(|o| matches!(o, Output::Media(MediaOp::WebRtcAnswer(Leg::Agent, b)) if b.as_ref() == BROWSER_SDP.as_bytes())),
        "{out:?}"
    );
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::WebRtc(_, None)))));
}

#[test]
fn a_phone_answering_a_fork_with_a_browser_makes_the_leg_plain_again() {
    let mut r = Rig::new();
    r.take();
    r.targets(
        Leg::Agent,
        vec![vec![target("desk", 5070), browser("web", 5072)]],
    );
    let invites = sent(&r.take());
    let (tx, inv) = (invites[0].0, invites[0].1.clone());
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    let out = r.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Media(MediaOp::WebRtc(Leg::Agent, None)))),
        "{out:?}"
    );
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::WebRtcAnswer(..)))));
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
        incoming: None,
        confirm: None,
        record: false,
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
        Rig::with_spec(spec())
    }

    fn with_spec(spec: CallSpec) -> Rig {
        let now = Instant::now();
        let cfg = MachineConfig {
            domain: "dialbridge.test".into(),
            session_expires: 1800,
            timers: timers(),
            dtls_fingerprint: media::webrtc::Fingerprint::parse(&format!(
                "sha-256 {}",
                ["EF"; 32].join(":")
            )),
        };
        let m = CallMachine::new(spec, cfg, [addr(30_000), addr(30_002)], now);
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
        srtp: store::Srtp::None,
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

// ---------------------------------------------------------------------------------------
// A leg that called us (an INVITE we received)
// ---------------------------------------------------------------------------------------

const CALLER_SDP: &str = "v=0\r\no=carrier 9 9 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 42000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// The carrier's INVITE to one of the account's numbers.
fn caller_invite(sdp: Option<&str>) -> IncomingRequest {
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    let text = format!(
        "INVITE sip:+14155551234@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKcaller1\r\nFrom: <sip:+15557654321@127.0.0.1:5080>;tag=caller\r\nTo: <sip:+14155551234@127.0.0.1>\r\nCall-ID: inbound-1@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@127.0.0.1:5080>\r\nSupported: timer\r\nSession-Expires: 600\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let Ok(SipMessage::Request(request)) = parse_message(Bytes::from(text.clone())) else {
        panic!("bad test request: {text}");
    };
    IncomingRequest {
        key: ServerKey::Rfc2543("caller-invite".into()),
        flow: sip_core::transport::Flow {
            transport: Transport::Udp,
            local: addr(5060),
            remote: addr(5080),
            conn: None,
        },
        request,
    }
}

fn inbound_spec(sdp: Option<&str>) -> CallSpec {
    CallSpec {
        customer: CustomerTarget::E164("+15557654321".into()),
        caller_id: Some("+14155551234".into()),
        incoming: Some(crate::calls::IncomingLeg {
            leg: Leg::Customer,
            request: Box::new(caller_invite(sdp)),
            contact: Uri::parse("sip:127.0.0.1:5060").expect("uri"),
        }),
        ..spec()
    }
}

fn responses(outs: &[Output]) -> Vec<Response> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Respond { response, .. } => Some(response.clone()),
            _ => None,
        })
        .collect()
}

fn to_tag(r: &Response) -> Option<String> {
    r.to()
        .ok()
        .and_then(|t| t.tag().map(|t| String::from_utf8_lossy(t).into_owned()))
}

/// An inbound call rings the owner's two devices with the caller's codecs. Returns the
/// INVITEs sent (tx, request).
fn inbound_ringing(r: &mut Rig) -> Vec<(TxId, Request)> {
    let out = r.take();
    assert!(
        out.iter().any(|o| matches!(o, Output::Lookup(Leg::Agent))),
        "the owner's devices are looked up"
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::SetPeer(Leg::Customer, _)))));
    assert!(
        answers(&out).is_empty(),
        "no answer before the devices ring"
    );
    r.targets(
        Leg::Agent,
        vec![vec![target("desk", 5070), target("mobile", 5071)]],
    );
    let invites = sent(&r.take());
    assert_eq!(invites.len(), 2);
    let offer = String::from_utf8_lossy(&invites[0].1.body).into_owned();
    assert!(offer.contains("m=audio 30000 RTP/AVP 8 0 101"), "{offer}");
    invites
}

#[test]
fn an_incoming_call_rings_the_other_leg_and_answers_the_caller_when_it_answers() {
    let mut r = Rig::with_spec(inbound_spec(Some(CALLER_SDP)));
    let invites = inbound_ringing(&mut r);
    let ((tx0, inv0), (tx1, _)) = (invites[0].clone(), invites[1].clone());
    // The device rings: the caller hears 180, once.
    r.respond(tx0, reply(&inv0, 180, "desk", None));
    r.respond(tx1, reply(&invites[1].1, 180, "mobile", None));
    let out = r.take();
    let rs = responses(&out);
    assert_eq!(rs.iter().map(|r| r.status).collect::<Vec<_>>(), [180]);
    let tag = to_tag(&rs[0]).expect("a To tag in the 180");
    // The desk answers: ACK it, CANCEL the mobile, and the caller gets 200 with the relay.
    r.respond(tx0, reply(&inv0, 200, "desk", Some(AGENT_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert_eq!(cancels(&out), vec![tx1]);
    let rs = responses(&out);
    assert_eq!(rs.len(), 1);
    let ok = &rs[0];
    assert_eq!(ok.status, 200);
    assert_eq!(to_tag(ok), Some(tag), "the same To tag as the 180");
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(body.contains("m=audio 30002"), "{body}");
    assert!(ok.header_str(&HeaderName::Contact).is_some());
    assert_eq!(
        ok.header_str(&HeaderName::SessionExpires).as_deref(),
        Some("600;refresher=uac")
    );
    let ev = events(&out);
    assert!(ev
        .iter()
        .any(|e| matches!(e, CallEventKind::AgentAnswered { .. })));
    assert!(ev
        .iter()
        .any(|e| matches!(e, CallEventKind::InProgress { .. })));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::Start))));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::RouteDialog(Leg::Customer, _))));
    assert!(sent(&out).is_empty(), "no customer leg is dialled");
    r.feed(Input::Ack(Leg::Customer, Bytes::new()));
    // Time passes: no give-up for the ACK that came.
    r.advance(Duration::from_secs(40));
    assert!(ended(&r.take()).is_empty());
    // The caller hangs up: the agent gets a BYE, the call is completed.
    let caller_tag = "caller";
    let text = format!(
        "BYE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKbye1\r\nFrom: <sip:+15557654321@127.0.0.1:5080>;tag={caller_tag}\r\nTo: <sip:+14155551234@127.0.0.1>;tag={}\r\nCall-ID: inbound-1@127.0.0.1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        to_tag(ok).unwrap_or_default()
    );
    let Ok(SipMessage::Request(bye)) = parse_message(Bytes::from(text)) else {
        panic!("bad BYE");
    };
    let inc = IncomingRequest {
        key: ServerKey::Rfc2543("bye".into()),
        flow: caller_invite(None).flow,
        request: bye,
    };
    r.request(inc, Leg::Customer);
    let out = r.take();
    assert_eq!(answers(&out), [200]);
    let byes = sent(&out);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.call_id_str(), inv0.call_id_str());
    r.respond(byes[0].0, reply(&byes[0].1, 200, "desk", None));
    let o = ended(&r.take());
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].status, CallStatus::Completed);
    assert_eq!(o[0].leg, Some(Leg::Customer));
}

#[test]
fn a_cancel_from_the_caller_gets_487_and_cancels_the_forks() {
    let mut r = Rig::with_spec(inbound_spec(Some(CALLER_SDP)));
    let invites = inbound_ringing(&mut r);
    r.respond(invites[0].0, reply(&invites[0].1, 180, "desk", None));
    r.take();
    r.feed(Input::Cancelled);
    let out = r.take();
    assert_eq!(answers(&out), [487]);
    assert_eq!(cancels(&out).len(), 2, "every device is cancelled");
    let o = ended(&out);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].status, CallStatus::Canceled);
    assert_eq!(o[0].leg, Some(Leg::Customer));
    // A second CANCEL (retransmission) changes nothing.
    r.feed(Input::Cancelled);
    assert!(answers(&r.take()).is_empty());
}

#[test]
fn every_device_busy_tells_the_caller_486_and_ends_busy() {
    let mut r = Rig::with_spec(inbound_spec(Some(CALLER_SDP)));
    let invites = inbound_ringing(&mut r);
    for (i, (tx, inv)) in invites.iter().enumerate() {
        r.respond(*tx, reply(inv, 486, &format!("d{i}"), None));
    }
    let out = r.take();
    assert_eq!(answers(&out), [486]);
    let o = ended(&out);
    assert_eq!(o[0].status, CallStatus::Busy);
    assert_eq!(o[0].leg, Some(Leg::Agent));
}

#[test]
fn no_device_answers_in_time_the_caller_hears_480_and_the_call_is_no_answer() {
    let mut r = Rig::with_spec(inbound_spec(Some(CALLER_SDP)));
    let invites = inbound_ringing(&mut r);
    r.respond(invites[0].0, reply(&invites[0].1, 180, "desk", None));
    r.take();
    r.advance(Duration::from_secs(31));
    let out = r.take();
    assert_eq!(answers(&out), [480]);
    assert_eq!(cancels(&out).len(), 2);
    let o = ended(&out);
    assert_eq!(o[0].status, CallStatus::NoAnswer);
    assert_eq!(o[0].leg, Some(Leg::Agent));
}

#[test]
fn early_media_of_the_ringing_side_reaches_the_caller_in_a_183_repeated_by_the_200() {
    let mut r = Rig::with_spec(inbound_spec(Some(CALLER_SDP)));
    let invites = inbound_ringing(&mut r);
    let (tx, inv) = invites[0].clone();
    r.respond(tx, reply(&inv, 183, "desk", Some(AGENT_SDP)));
    let out = r.take();
    let rs = responses(&out);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 183);
    assert!(String::from_utf8_lossy(&rs[0].body).contains("m=audio 30002"));
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    let rs = responses(&r.take());
    assert_eq!(rs[0].status, 200);
    assert_eq!(
        rs[0].body,
        responses(&out)[0].body,
        "the 200 repeats the 183's SDP"
    );
}

#[test]
fn no_ack_for_our_200_ends_the_call_with_a_bye_after_64_t1() {
    let mut r = Rig::with_spec(inbound_spec(Some(CALLER_SDP)));
    let invites = inbound_ringing(&mut r);
    let (tx, inv) = invites[0].clone();
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    r.take();
    r.advance(timers().timeout() + Duration::from_millis(1));
    let out = r.take();
    let byes = sent(&out);
    assert_eq!(
        byes.len(),
        2,
        "both legs get a BYE: {:?}",
        sent_methods(&out)
    );
    assert!(byes.iter().all(|(_, b)| b.method == Method::Bye));
}

#[test]
fn an_invite_without_sdp_gets_our_offer_in_the_200_and_its_answer_from_the_ack() {
    let mut r = Rig::with_spec(inbound_spec(None));
    let out = r.take();
    assert!(out.iter().any(|o| matches!(o, Output::Lookup(Leg::Agent))));
    r.targets(Leg::Agent, vec![vec![target("desk", 5070)]]);
    let (tx, inv) = sent(&r.take()).remove(0);
    assert!(String::from_utf8_lossy(&inv.body).contains("m=audio 30000"));
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    let rs = responses(&r.take());
    assert_eq!(rs[0].status, 200);
    assert!(String::from_utf8_lossy(&rs[0].body).contains("m=audio 30002"));
    r.feed(Input::Ack(Leg::Customer, Bytes::from(CALLER_SDP)));
    let out = r.take();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Media(MediaOp::SetPeer(Leg::Customer, b)) if b.as_ref() == CALLER_SDP.as_bytes()
    )));
}

// ---------------------------------------------------------------------------------------
// Live control: hold, mute, monitor, transfers (API and REFER)
// ---------------------------------------------------------------------------------------

use super::control::Command;
use crate::calls::ControlError;
use media::MonitorMode;

const SUPERVISOR_SDP: &str = "v=0\r\no=sup 3 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 42000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
const TARGET_SDP: &str = "v=0\r\no=bob 5 5 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 43000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
const OPUS_SDP: &str = "v=0\r\no=carrier 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n";

/// Feeds a live command; returns its reply.
fn command(r: &mut Rig, cmd: Command) -> Result<serde_json::Value, ControlError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    r.feed(Input::Command(id, cmd));
    r.outs
        .iter()
        .find_map(|o| match o {
            Output::Reply(i, res) if *i == id => Some(res.clone()),
            _ => None,
        })
        .expect("a reply")
}

fn media_ops(outs: &[Output]) -> Vec<MediaOp> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Media(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

fn notifies(outs: &[Output]) -> Vec<String> {
    sent(outs)
        .into_iter()
        .filter(|(_, q)| q.method == Method::Notify)
        .map(|(_, q)| String::from_utf8_lossy(&q.body).trim_end().to_string())
        .collect()
}

#[test]
fn commands_before_the_call_is_connected_are_refused() {
    let mut r = Rig::new();
    agent_answered(&mut r);
    r.take();
    for cmd in [
        Command::Hold,
        Command::Mute {
            leg: Leg::Agent,
            muted: true,
        },
    ] {
        assert!(matches!(
            command(&mut r, cmd),
            Err(ControlError::NotInProgress(_))
        ));
    }
    assert!(sent(&r.take()).is_empty());
}

#[test]
fn hold_reinvites_the_customer_sendonly_and_unhold_sendrecv() {
    let mut r = Rig::new();
    let (_agent_inv, cinv) = connected(&mut r, |x| x);
    command(&mut r, Command::Hold).expect("held");
    let out = r.take();
    let (htx, hold) = sent(&out).remove(0);
    assert_eq!(hold.method, Method::Invite);
    assert_eq!(hold.call_id_str(), cinv.call_id_str(), "to the customer");
    let body = String::from_utf8_lossy(&hold.body).to_string();
    assert!(body.contains("a=sendonly"), "{body}");
    assert!(body.contains("m=audio 30002"));
    // The agent's audio no longer reaches the customer, who hears the hold tone.
    assert!(media_ops(&out).contains(&MediaOp::Mute(Leg::Agent, true)));
    assert!(media_ops(&out).contains(&MediaOp::HoldTone(
        Leg::Customer,
        Some(Bytes::from(CARRIER_SDP))
    )));
    // A second hold is refused while held.
    assert!(matches!(
        command(&mut r, Command::Hold),
        Err(ControlError::NotInProgress(_))
    ));
    r.take();
    r.respond(htx, reply(&hold, 200, "carrier", Some(CARRIER_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert!(events(&out).contains(&CallEventKind::Held { leg: Leg::Customer }));
    command(&mut r, Command::Unhold).expect("resumed");
    let out = r.take();
    let (utx, unhold) = sent(&out).remove(0);
    assert!(String::from_utf8_lossy(&unhold.body).contains("a=sendrecv"));
    assert!(media_ops(&out).contains(&MediaOp::Mute(Leg::Agent, false)));
    assert!(media_ops(&out).contains(&MediaOp::HoldTone(Leg::Customer, None)));
    r.respond(utx, reply(&unhold, 200, "carrier", Some(CARRIER_SDP)));
    assert!(events(&r.take()).contains(&CallEventKind::Resumed { leg: Leg::Customer }));
}

#[test]
fn a_refused_hold_leaves_the_call_as_it_was() {
    let mut r = Rig::new();
    connected(&mut r, |x| x);
    command(&mut r, Command::Hold).expect("sent");
    let out = r.take();
    let (htx, hold) = sent(&out).remove(0);
    r.respond(htx, reply(&hold, 488, "carrier", None));
    let out = r.take();
    assert!(media_ops(&out).contains(&MediaOp::Mute(Leg::Agent, false)));
    assert!(media_ops(&out).contains(&MediaOp::HoldTone(Leg::Customer, None)));
    assert!(!events(&out)
        .iter()
        .any(|e| matches!(e, CallEventKind::Held { .. })));
    // Not held: hold may be asked again.
    assert!(command(&mut r, Command::Hold).is_ok());
}

#[test]
fn a_hold_reinvite_that_gets_no_answer_times_out_and_is_undone() {
    let mut r = Rig::new();
    connected(&mut r, |x| x);
    command(&mut r, Command::Hold).expect("sent");
    r.take();
    r.advance(timers().timeout() + Duration::from_millis(1));
    let out = r.take();
    assert_eq!(cancels(&out).len(), 1);
    assert!(media_ops(&out).contains(&MediaOp::Mute(Leg::Agent, false)));
    assert!(ended(&out).is_empty(), "the call goes on");
}

#[test]
fn mute_is_a_relay_change_with_no_signalling() {
    let mut r = Rig::new();
    connected(&mut r, |x| x);
    let v = command(
        &mut r,
        Command::Mute {
            leg: Leg::Customer,
            muted: true,
        },
    )
    .expect("muted");
    assert_eq!(v["muted"], true);
    let out = r.take();
    assert!(sent(&out).is_empty(), "no re-INVITE");
    assert_eq!(media_ops(&out), [MediaOp::Mute(Leg::Customer, true)]);
    assert!(events(&out).contains(&CallEventKind::Muted {
        leg: Leg::Customer,
        muted: true
    }));
}

fn monitor_cmd(id: &str, mode: MonitorMode) -> Command {
    Command::Monitor {
        monitor_id: id.into(),
        user_id: "user_sup".into(),
        mode,
        plan: vec![vec![target("supdesk", 5090), target("supmobile", 5091)]],
    }
}

/// Starts a monitor and lets the supervisor's desk phone answer. Returns its INVITE.
fn monitor_answered(r: &mut Rig, mode: MonitorMode) -> Request {
    command(r, monitor_cmd("mon_1", mode)).expect("started");
    let out = r.take();
    let attach = media_ops(&out);
    let side = match attach.as_slice() {
        [MediaOp::AttachMonitor {
            side,
            payload_types,
            mode: m,
        }] => {
            assert_eq!(*payload_types, [0, 0, 0]);
            assert_eq!(*m, mode);
            *side
        }
        other => panic!("{other:?}"),
    };
    assert!(
        sent(&out).is_empty(),
        "nothing rings before the ports exist"
    );
    r.feed(Input::MonitorAttached(side, Ok(addr(30_004))));
    let out = r.take();
    let inv = sent(&out);
    assert_eq!(inv.len(), 2, "both of the supervisor's devices ring");
    let (tx, sinv) = inv[0].clone();
    assert!(String::from_utf8_lossy(&sinv.body).contains("m=audio 30004"));
    r.respond(tx, reply(&sinv, 180, "sup", None));
    r.respond(tx, reply(&sinv, 200, "sup", Some(SUPERVISOR_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert_eq!(
        cancels(&out),
        vec![inv[1].0],
        "the other device is cancelled"
    );
    assert!(media_ops(&out)
        .iter()
        .any(|op| matches!(op, MediaOp::MonitorPeer(s, _) if *s == side)));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::RouteSideDialog(s, _) if *s == side)));
    assert!(events(&out).contains(&CallEventKind::MonitorStarted {
        monitor_id: "mon_1".into(),
        user_id: "user_sup".into(),
        mode: mode.as_str(),
    }));
    sinv
}

#[test]
fn a_monitor_rings_the_supervisor_changes_mode_and_ends_leaving_the_call() {
    let mut r = Rig::new();
    connected(&mut r, |x| x);
    let sinv = monitor_answered(&mut r, MonitorMode::Listen);
    let v = command(
        &mut r,
        Command::SetMonitorMode {
            monitor_id: "mon_1".into(),
            mode: MonitorMode::Barge,
        },
    )
    .expect("mode");
    assert_eq!(v["mode"], "barge");
    let out = r.take();
    assert!(sent(&out).is_empty());
    assert!(media_ops(&out)
        .iter()
        .any(|op| matches!(op, MediaOp::MonitorMode(_, MonitorMode::Barge))));
    assert!(matches!(
        command(
            &mut r,
            Command::EndMonitor {
                monitor_id: "nope".into()
            }
        ),
        Err(ControlError::NoSuchMonitor)
    ));
    command(
        &mut r,
        Command::EndMonitor {
            monitor_id: "mon_1".into(),
        },
    )
    .expect("ended");
    let out = r.take();
    let byes = sent(&out);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.method, Method::Bye);
    assert_eq!(
        byes[0].1.call_id_str(),
        sinv.call_id_str(),
        "only the supervisor"
    );
    assert!(media_ops(&out)
        .iter()
        .any(|op| matches!(op, MediaOp::DetachMonitor(_))));
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, CallEventKind::MonitorEnded { .. })));
    assert!(ended(&out).is_empty(), "the call goes on");
}

#[test]
fn the_supervisor_hanging_up_ends_the_monitor_only_and_a_hangup_ends_both() {
    let mut r = Rig::new();
    connected(&mut r, |x| x);
    let sinv = monitor_answered(&mut r, MonitorMode::Whisper);
    let side = 1;
    r.feed(Input::SideRequest(
        Box::new(in_dialog(&sinv, "sup", "BYE", 1, None)),
        side,
    ));
    let out = r.take();
    assert_eq!(answers(&out), [200]);
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, CallEventKind::MonitorEnded { .. })));
    assert!(ended(&out).is_empty());
    // A second monitor, then the call is hung up: its BYE goes with the legs'.
    command(&mut r, monitor_cmd("mon_2", MonitorMode::Listen)).expect("ok");
    r.feed(Input::MonitorAttached(2, Ok(addr(30_006))));
    let out = r.take();
    let (tx, inv) = sent(&out).remove(0);
    r.respond(tx, reply(&inv, 200, "sup2", Some(SUPERVISOR_SDP)));
    r.take();
    r.feed(Input::Hangup);
    let out = r.take();
    assert_eq!(sent_methods(&out), ["BYE", "BYE", "BYE"]);
}

#[test]
fn a_monitor_of_a_codec_that_cannot_be_mixed_is_refused() {
    let mut r = Rig::new();
    let (agent_inv, _) = agent_answered(&mut r);
    r.targets(Leg::Customer, vec![vec![trunk("carrier", 5080)]]);
    let out = r.take();
    let (ctx, cinv) = sent(&out).remove(0);
    r.respond(ctx, reply(&cinv, 200, "carrier", Some(OPUS_SDP)));
    r.take();
    let _ = agent_inv;
    match command(&mut r, monitor_cmd("mon_x", MonitorMode::Listen)) {
        Err(ControlError::CodecNotMixable(why)) => assert!(why.contains("customer"), "{why}"),
        other => panic!("{other:?}"),
    }
    let out = r.take();
    assert!(media_ops(&out).is_empty() && sent(&out).is_empty());
}

#[test]
fn a_supervisor_who_does_not_answer_ends_the_monitor_after_the_ring_time() {
    let mut r = Rig::new();
    connected(&mut r, |x| x);
    command(&mut r, monitor_cmd("mon_1", MonitorMode::Listen)).expect("ok");
    r.feed(Input::MonitorAttached(1, Ok(addr(30_004))));
    r.take();
    r.advance(spec().agent_ring + Duration::from_millis(1));
    let out = r.take();
    assert_eq!(cancels(&out).len(), 2);
    assert!(media_ops(&out)
        .iter()
        .any(|op| matches!(op, MediaOp::DetachMonitor(1))));
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, CallEventKind::MonitorEnded { .. })));
    assert!(ended(&out).is_empty());
}

#[test]
fn an_api_transfer_replaces_the_agent_once_the_target_answers() {
    let mut r = Rig::new();
    let (agent_inv, cinv) = connected(&mut r, |x| x);
    command(
        &mut r,
        Command::Transfer {
            to: "user_bob".into(),
            plan: vec![vec![target("bob", 5075)]],
            warm: false,
        },
    )
    .expect("calling");
    let out = r.take();
    let (ttx, tinv) = sent(&out).remove(0);
    let offer = String::from_utf8_lossy(&tinv.body).to_string();
    assert!(
        offer.contains("m=audio 30000"),
        "the agent's relay port: {offer}"
    );
    assert!(
        offer.contains("PCMU") && !offer.contains("PCMA"),
        "the customer's codecs"
    );
    // A second transfer meanwhile is refused.
    assert!(command(
        &mut r,
        Command::Transfer {
            to: "x".into(),
            plan: vec![vec![target("x", 5076)]],
            warm: false,
        }
    )
    .is_err());
    r.take();
    r.respond(ttx, reply(&tinv, 200, "bob", Some(TARGET_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    let byes = sent(&out);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.method, Method::Bye);
    assert_eq!(
        byes[0].1.call_id_str(),
        agent_inv.call_id_str(),
        "the agent is released"
    );
    assert!(media_ops(&out).iter().any(
        |op| matches!(op, MediaOp::SetPeer(Leg::Agent, b) if b.as_ref() == TARGET_SDP.as_bytes())
    ));
    assert!(events(&out).contains(&CallEventKind::Transferred {
        leg: Leg::Agent,
        to: "user_bob".into(),
        by: "api"
    }));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::RouteDialog(Leg::Agent, _))));
    // The released agent's own BYE, crossing ours, is answered and ends nothing.
    r.request(in_dialog(&agent_inv, "desk", "BYE", 9, None), Leg::Agent);
    let out = r.take();
    assert_eq!(answers(&out), [200]);
    assert!(ended(&out).is_empty() && sent(&out).is_empty());
    // The customer hangs up later: the BYE goes to the new party.
    r.request(in_dialog(&cinv, "carrier", "BYE", 3, None), Leg::Customer);
    let out = r.take();
    let bye = sent(&out).remove(0).1;
    assert_eq!(bye.call_id_str(), tinv.call_id_str());
}

#[test]
fn a_failed_transfer_leaves_the_call_going_on() {
    let mut r = Rig::new();
    connected(&mut r, |x| x);
    command(
        &mut r,
        Command::Transfer {
            to: "user_bob".into(),
            plan: vec![vec![target("bob", 5075)]],
            warm: false,
        },
    )
    .expect("calling");
    let out = r.take();
    let (ttx, tinv) = sent(&out).remove(0);
    r.respond(ttx, reply(&tinv, 486, "bob", None));
    let out = r.take();
    assert!(sent(&out).is_empty(), "no BYE to anyone");
    assert!(events(&out).iter().any(|e| matches!(
        e,
        CallEventKind::TransferFailed {
            sip_code: Some(486),
            ..
        }
    )));
    assert!(ended(&out).is_empty());
    // And a new transfer may be tried.
    assert!(command(
        &mut r,
        Command::Transfer {
            to: "user_bob".into(),
            plan: vec![vec![target("bob", 5075)]],
            warm: false,
        }
    )
    .is_ok());
}

fn refer(invite: &Request, tag: &str, cseq: u32, to: &str) -> IncomingRequest {
    let mut inc = in_dialog(invite, tag, "REFER", cseq, None);
    inc.request
        .headers
        .add(HeaderName::ReferTo, format!("<{to}>"));
    inc.request
        .headers
        .add(HeaderName::ReferredBy, format!("<sip:{tag}@127.0.0.1>"));
    inc
}

#[test]
fn a_blind_refer_from_the_agent_notifies_progress_and_bridges_the_target() {
    let mut r = Rig::new();
    let (agent_inv, _cinv) = connected(&mut r, |x| x);
    r.request(
        refer(&agent_inv, "desk", 5, "sip:1002@dialbridge.test"),
        Leg::Agent,
    );
    let out = r.take();
    assert_eq!(answers(&out), [202]);
    assert_eq!(notifies(&out), ["SIP/2.0 100 Trying"]);
    let n = sent(&out).remove(0).1;
    assert_eq!(
        n.call_id_str(),
        agent_inv.call_id_str(),
        "in the REFER's dialog"
    );
    assert_eq!(n.header_str(&HeaderName::Event).as_deref(), Some("refer"));
    let id = out
        .iter()
        .find_map(|o| match o {
            Output::LookupTransfer { id, to } => {
                assert_eq!(to, "1002");
                Some(*id)
            }
            _ => None,
        })
        .expect("lookup");
    r.feed(Input::TransferTargets(
        id,
        Ok(vec![vec![target("bob", 5075)]]),
    ));
    let out = r.take();
    let (ttx, tinv) = sent(&out).remove(0);
    assert_eq!(tinv.method, Method::Invite);
    r.respond(ttx, reply(&tinv, 180, "bob", None));
    assert_eq!(notifies(&r.take()), ["SIP/2.0 180 Ringing"]);
    r.respond(ttx, reply(&tinv, 200, "bob", Some(TARGET_SDP)));
    let out = r.take();
    // The final NOTIFY, then the transferor is released.
    let reqs = sent(&out);
    assert_eq!(sent_methods(&out), ["NOTIFY", "BYE"]);
    assert_eq!(
        String::from_utf8_lossy(&reqs[0].1.body).trim_end(),
        "SIP/2.0 200 OK"
    );
    assert!(reqs[0]
        .1
        .headers
        .get(&HeaderName::Other(Bytes::from_static(
            b"Subscription-State"
        )))
        .is_some_and(|v| v.starts_with(b"terminated")));
    assert_eq!(reqs[1].1.call_id_str(), agent_inv.call_id_str());
    assert!(events(&out).contains(&CallEventKind::Transferred {
        leg: Leg::Agent,
        to: "1002".into(),
        by: "phone"
    }));
}

#[test]
fn a_refer_to_a_forbidden_number_is_notified_403_and_nothing_is_dialled() {
    let mut r = Rig::new();
    let (agent_inv, _) = connected(&mut r, |x| x);
    r.request(
        refer(&agent_inv, "desk", 5, "sip:+19005551234@dialbridge.test"),
        Leg::Agent,
    );
    let out = r.take();
    let id = out
        .iter()
        .find_map(|o| match o {
            Output::LookupTransfer { id, to } => {
                assert_eq!(to, "+19005551234");
                Some(*id)
            }
            _ => None,
        })
        .expect("lookup");
    r.feed(Input::TransferTargets(
        id,
        Err((403, "destination_not_allowed".into())),
    ));
    let out = r.take();
    assert_eq!(notifies(&out), ["SIP/2.0 403 Forbidden"]);
    assert_eq!(sent_methods(&out), ["NOTIFY"], "no INVITE");
    assert!(ended(&out).is_empty());
}

#[test]
fn a_blind_refer_whose_target_is_busy_notifies_486_and_the_call_goes_on() {
    let mut r = Rig::new();
    let (_, cinv) = connected(&mut r, |x| x);
    // From the customer's side this time.
    r.request(
        refer(&cinv, "carrier", 5, "sip:1002@dialbridge.test"),
        Leg::Customer,
    );
    let out = r.take();
    assert_eq!(answers(&out), [202]);
    r.feed(Input::TransferTargets(
        1,
        Ok(vec![vec![target("bob", 5075)]]),
    ));
    let out = r.take();
    let (ttx, tinv) = sent(&out).remove(0);
    // The target is offered the agent's side's codecs at the customer's relay port.
    assert!(String::from_utf8_lossy(&tinv.body).contains("m=audio 30002"));
    r.respond(ttx, reply(&tinv, 486, "bob", None));
    let out = r.take();
    assert_eq!(notifies(&out), ["SIP/2.0 486 Busy Here"]);
    assert_eq!(sent_methods(&out), ["NOTIFY"]);
    assert!(ended(&out).is_empty());
}

#[test]
fn a_malformed_replaces_or_a_refer_before_the_call_is_up_is_refused() {
    let mut r = Rig::new();
    let (agent_inv, _) = connected(&mut r, |x| x);
    r.request(
        refer(
            &agent_inv,
            "desk",
            5,
            "sip:bob@127.0.0.1?Replaces=abc%3Bto-tag%3D1",
        ),
        Leg::Agent,
    );
    let out = r.take();
    assert_eq!(answers(&out), [400], "no from-tag");
    assert!(sent(&out).is_empty());
    let mut r = Rig::new();
    let (agent_inv, _) = agent_answered(&mut r);
    r.take();
    r.request(refer(&agent_inv, "desk", 2, "sip:1002@x"), Leg::Agent);
    assert_eq!(answers(&r.take()), [403]);
}

#[test]
fn replaces_is_read_from_the_refer_to_uri_with_its_escapes() {
    let r = control::replaces_of(
        "sip:1002@dialbridge.test?Require=replaces&Replaces=a1b2%40host%3Bto-tag%3Dours%3Bfrom-tag%3Dphone%3Bearly-only",
    );
    let t = r.expect("present").expect("well formed");
    assert_eq!(t.call_id, "a1b2@host");
    assert_eq!((t.to_tag.as_str(), t.from_tag.as_str()), ("ours", "phone"));
    let ids = t.dialog_ids();
    assert_eq!(ids[0].local_tag, "ours", "the phone's to-tag is our tag");
    assert_eq!(ids[1].local_tag, "phone");
    assert!(control::replaces_of("sip:1002@dialbridge.test").is_none());
    assert!(
        control::replaces_of("sip:1002@x?Replaces=%3Bto-tag%3D1%3Bfrom-tag%3D2")
            .is_some_and(|r| r.is_err())
    );
}

/// The tag of a request's From header.
fn from_tag(req: &Request) -> String {
    req.header_str(&HeaderName::From)
        .and_then(|f| f.split(";tag=").nth(1).map(|t| t.to_string()))
        .expect("from tag")
}

fn call_two() -> Rig {
    Rig::with_spec(CallSpec {
        call_id: "call_two".into(),
        ..spec()
    })
}

/// The phone's REFER in call one naming its dialog of call two; returns the lookup's id.
fn attended_refer(r1: &mut Rig, agent_inv1: &Request, agent_inv2: &Request) -> control::SideId {
    let refer_to = format!(
        "sip:+15557654321@dialbridge.test?Replaces={}%3Bto-tag%3D{}%3Bfrom-tag%3Ddesk",
        agent_inv2.call_id_str().replace('@', "%40"),
        from_tag(agent_inv2)
    );
    r1.request(refer(agent_inv1, "desk", 7, &refer_to), Leg::Agent);
    let out = r1.take();
    assert_eq!(answers(&out), [202]);
    assert_eq!(notifies(&out), ["SIP/2.0 100 Trying"]);
    assert_eq!(sent_methods(&out), ["NOTIFY"], "nothing dialled");
    out.iter()
        .find_map(|o| match o {
            Output::LookupReplaces { id, replaces } => {
                assert_eq!(replaces.call_id, agent_inv2.call_id_str());
                assert_eq!(replaces.to_tag, from_tag(agent_inv2));
                assert_eq!(replaces.from_tag, "desk");
                Some(*id)
            }
            _ => None,
        })
        .expect("lookup of the dialog")
}

/// The phone holds the customer of call one (a re-INVITE a=sendonly passed through), then
/// transfers it attended to the customer of call two: the other call hands that leg over
/// and ends, this call moves it to the agent's relay port, notifies 200, releases the
/// phone and takes the customer off hold.
#[test]
fn an_attended_refer_with_replaces_joins_the_two_remote_parties_and_releases_the_phone() {
    let mut r1 = Rig::new();
    let (agent_inv1, cinv1) = connected(&mut r1, |x| x);
    let mut r2 = call_two();
    let (agent_inv2, cinv2) = connected(&mut r2, |x| x);
    // The phone holds the customer of call one.
    r1.request(
        in_dialog(&agent_inv1, "desk", "INVITE", 3, Some(HOLD_SDP)),
        Leg::Agent,
    );
    let (htx, hold) = sent(&r1.take()).remove(0);
    assert!(String::from_utf8_lossy(&hold.body).contains("a=sendonly"));
    let held = CARRIER_SDP.replace("a=sendrecv", "a=recvonly");
    r1.respond(htx, reply(&hold, 200, "carrier", Some(&held)));
    assert_eq!(answers(&r1.take()), [200]);

    let id = attended_refer(&mut r1, &agent_inv1, &agent_inv2);
    // Call two: its phone leg is the dialog named; it hands the customer over and ends.
    let dialog = DialogId {
        call_id: agent_inv2.call_id_str(),
        local_tag: from_tag(&agent_inv2),
        remote_tag: "desk".into(),
    };
    r2.feed(Input::HandOver {
        id,
        leg: Leg::Agent,
        dialog,
        to_call: "call_test".into(),
    });
    let out = r2.take();
    let reqs = sent(&out);
    assert_eq!(sent_methods(&out), ["BYE"]);
    assert_eq!(
        reqs[0].1.call_id_str(),
        agent_inv2.call_id_str(),
        "only the phone's leg of call two is released"
    );
    let (btx, bye2) = reqs[0].clone();
    let handed = out
        .into_iter()
        .find_map(|o| match o {
            Output::HandedOver {
                to_call,
                id: i,
                result,
            } => {
                assert_eq!((to_call.as_str(), i), ("call_test", id));
                Some(result)
            }
            _ => None,
        })
        .expect("handed over")
        .expect("the leg");
    assert_eq!(handed.dialog_id().call_id, cinv2.call_id_str());
    r2.respond(btx, reply(&bye2, 200, "desk", None));
    let o = ended(&r2.take()).remove(0);
    assert_eq!(o.status, CallStatus::Completed);
    assert_eq!(o.leg, Some(Leg::Agent));
    assert!(
        o.reason.contains("joined to call call_test"),
        "{}",
        o.reason
    );

    // Call one: the target is re-INVITEd in its own dialog to the agent's relay port.
    r1.feed(Input::Joined(id, Ok(handed)));
    let out = r1.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::RouteSideDialog(_, d) if d.call_id == cinv2.call_id_str())));
    let (jtx, join) = sent(&out).remove(0);
    assert_eq!(join.method, Method::Invite);
    assert_eq!(join.call_id_str(), cinv2.call_id_str());
    let body = String::from_utf8_lossy(&join.body).to_string();
    assert!(body.contains("m=audio 30000"), "{body}");
    assert!(body.contains("a=sendrecv"), "{body}");
    assert!(sent_methods(&out) == ["INVITE"], "the phone is still on");
    r1.respond(jtx, reply(&join, 200, "carrier", Some(TARGET_SDP)));
    let out = r1.take();
    assert_eq!(acks(&out), 1);
    let reqs = sent(&out);
    // NOTIFY 200 and BYE to the phone (call one's dialog), then the held customer is resumed.
    assert_eq!(sent_methods(&out), ["NOTIFY", "BYE", "INVITE"]);
    assert_eq!(
        String::from_utf8_lossy(&reqs[0].1.body).trim_end(),
        "SIP/2.0 200 OK"
    );
    assert_eq!(reqs[1].1.call_id_str(), agent_inv1.call_id_str());
    assert_eq!(reqs[2].1.call_id_str(), cinv1.call_id_str());
    assert!(String::from_utf8_lossy(&reqs[2].1.body).contains("a=sendrecv"));
    assert!(media_ops(&out).contains(&MediaOp::SetPeer(
        Leg::Agent,
        Bytes::from_static(TARGET_SDP.as_bytes())
    )));
    assert!(events(&out).contains(&CallEventKind::Transferred {
        leg: Leg::Agent,
        to: "+15557654321".into(),
        by: "phone"
    }));
    assert!(ended(&out).is_empty());
    // The joined party hangs up: call one ends, its customer released.
    r1.request(in_dialog(&cinv2, "carrier", "BYE", 9, None), Leg::Agent);
    let out = r1.take();
    assert_eq!(answers(&out), [200]);
    let byes: Vec<_> = sent(&out)
        .into_iter()
        .filter(|(_, q)| q.method == Method::Bye)
        .collect();
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.call_id_str(), cinv1.call_id_str());
}

#[test]
fn a_replaces_naming_no_dialog_is_notified_481_and_both_calls_go_on() {
    let mut r1 = Rig::new();
    let (agent_inv1, _) = connected(&mut r1, |x| x);
    let id = attended_refer(&mut r1, &agent_inv1, &agent_inv1);
    r1.feed(Input::Joined(
        id,
        Err((481, "no dialog matches the Replaces".into())),
    ));
    let out = r1.take();
    assert_eq!(
        notifies(&out),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    assert_eq!(sent_methods(&out), ["NOTIFY"]);
    assert!(ended(&out).is_empty());
    assert!(events(&out).iter().any(|e| matches!(
        e,
        CallEventKind::TransferFailed {
            sip_code: Some(481),
            ..
        }
    )));
    // The call is as it was: another transfer may follow.
    r1.request(
        refer(&agent_inv1, "desk", 8, "sip:1002@dialbridge.test"),
        Leg::Agent,
    );
    assert_eq!(answers(&r1.take()), [202]);
}

/// The other call never answers (it ended as the request reached it): the REFER is
/// NOTIFYed 408 after 64*T1 and the call goes on; a leg that comes after is released.
#[test]
fn a_join_the_other_call_never_answers_is_given_up_after_64_t1() {
    let mut r1 = Rig::new();
    let (agent_inv1, _) = connected(&mut r1, |x| x);
    let mut r2 = call_two();
    let (agent_inv2, _) = connected(&mut r2, |x| x);
    let id = attended_refer(&mut r1, &agent_inv1, &agent_inv2);
    r1.advance(timers().timeout() - Duration::from_millis(1));
    assert!(notifies(&r1.take()).is_empty());
    r1.advance(Duration::from_millis(2));
    let out = r1.take();
    assert_eq!(notifies(&out), ["SIP/2.0 408 Request Timeout"]);
    assert!(ended(&out).is_empty());
    // Too late: the leg is released.
    r2.feed(Input::HandOver {
        id,
        leg: Leg::Agent,
        dialog: DialogId {
            call_id: agent_inv2.call_id_str(),
            local_tag: from_tag(&agent_inv2),
            remote_tag: "desk".into(),
        },
        to_call: "call_test".into(),
    });
    let handed = r2
        .take()
        .into_iter()
        .find_map(|o| match o {
            Output::HandedOver { result, .. } => Some(result),
            _ => None,
        })
        .expect("handed over")
        .expect("the leg");
    r1.feed(Input::Joined(id, Ok(handed)));
    let out = r1.take();
    assert_eq!(sent_methods(&out), ["BYE"]);
    assert!(ended(&out).is_empty());
}

#[test]
fn a_call_not_connected_or_busy_with_an_offer_does_not_hand_its_leg_over() {
    let mut r2 = call_two();
    let (agent_inv2, _) = agent_answered(&mut r2);
    r2.take();
    let dialog = DialogId {
        call_id: agent_inv2.call_id_str(),
        local_tag: from_tag(&agent_inv2),
        remote_tag: "desk".into(),
    };
    r2.feed(Input::HandOver {
        id: 4,
        leg: Leg::Agent,
        dialog: dialog.clone(),
        to_call: "call_test".into(),
    });
    let out = r2.take();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::HandedOver {
            result: Err((481, _)),
            ..
        }
    )));
    assert!(sent(&out).is_empty() && ended(&out).is_empty());
    // Connected, but the customer's side has an offer of ours in flight.
    let mut r2 = call_two();
    let (agent_inv2, _) = connected(&mut r2, |x| x);
    assert!(command(&mut r2, Command::Hold).is_ok());
    r2.take();
    let dialog = DialogId {
        call_id: agent_inv2.call_id_str(),
        local_tag: from_tag(&agent_inv2),
        remote_tag: "desk".into(),
    };
    r2.feed(Input::HandOver {
        id: 4,
        leg: Leg::Agent,
        dialog,
        to_call: "call_test".into(),
    });
    let out = r2.take();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::HandedOver {
            result: Err((491, _)),
            ..
        }
    )));
    assert!(ended(&out).is_empty());
}

#[test]
fn a_joined_party_that_refuses_the_move_is_released_and_the_call_goes_on() {
    let mut r1 = Rig::new();
    let (agent_inv1, _) = connected(&mut r1, |x| x);
    let mut r2 = call_two();
    let (agent_inv2, cinv2) = connected(&mut r2, |x| x);
    let id = attended_refer(&mut r1, &agent_inv1, &agent_inv2);
    let dialog = DialogId {
        call_id: agent_inv2.call_id_str(),
        local_tag: from_tag(&agent_inv2),
        remote_tag: "desk".into(),
    };
    r2.feed(Input::HandOver {
        id,
        leg: Leg::Agent,
        dialog,
        to_call: "call_test".into(),
    });
    let handed = r2
        .take()
        .into_iter()
        .find_map(|o| match o {
            Output::HandedOver { result, .. } => Some(result),
            _ => None,
        })
        .expect("handed over")
        .expect("the leg");
    r1.feed(Input::Joined(id, Ok(handed)));
    let (jtx, join) = sent(&r1.take()).remove(0);
    r1.respond(jtx, reply(&join, 488, "carrier", None));
    let out = r1.take();
    assert_eq!(notifies(&out), ["SIP/2.0 488 Not Acceptable Here"]);
    let reqs = sent(&out);
    assert_eq!(sent_methods(&out), ["NOTIFY", "BYE"]);
    assert_eq!(
        reqs[1].1.call_id_str(),
        cinv2.call_id_str(),
        "the party that could not be moved is released"
    );
    assert!(ended(&out).is_empty(), "call one goes on with its phone");
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, CallEventKind::TransferFailed { .. })));
}

/// A party on an SDES trunk leg keeps SRTP when it is joined into another call: the
/// re-INVITE offers its key, and the relay port it moves to encrypts with it.
#[test]
fn an_srtp_leg_joined_by_an_attended_transfer_keeps_its_key_on_the_new_port() {
    let mut r1 = Rig::new();
    let (agent_inv1, _) = connected(&mut r1, |x| x);
    let mut r2 = call_two();
    let (agent_inv2, _) = agent_answered(&mut r2);
    let ours = media::srtp::SrtpKey::random();
    let theirs = media::srtp::SrtpKey::random();
    r2.targets(
        Leg::Customer,
        vec![vec![Target {
            sdes: Some(ours.clone()),
            ..trunk("carrier", 5080)
        }]],
    );
    let (ctx, cinv) = sent(&r2.take()).remove(0);
    assert!(String::from_utf8_lossy(&cinv.body).contains("a=crypto"));
    let answer =
        String::from_utf8_lossy(&sdp_glue::with_sdes(CARRIER_SDP.as_bytes(), &theirs)).to_string();
    r2.respond(ctx, reply(&cinv, 200, "carrier", Some(&answer)));
    for (tx, q) in sent(&r2.take()) {
        if q.method == Method::Invite {
            r2.respond(tx, reply(&q, 200, "desk", Some(CARRIER_SDP)));
        }
    }
    r2.take();
    let id = attended_refer(&mut r1, &agent_inv1, &agent_inv2);
    r2.feed(Input::HandOver {
        id,
        leg: Leg::Agent,
        dialog: DialogId {
            call_id: agent_inv2.call_id_str(),
            local_tag: from_tag(&agent_inv2),
            remote_tag: "desk".into(),
        },
        to_call: "call_test".into(),
    });
    let handed = r2
        .take()
        .into_iter()
        .find_map(|o| match o {
            Output::HandedOver { result, .. } => Some(result),
            _ => None,
        })
        .expect("handed over")
        .expect("the leg");
    r1.feed(Input::Joined(id, Ok(handed)));
    let (jtx, join) = sent(&r1.take()).remove(0);
    let body = String::from_utf8_lossy(&join.body).to_string();
    assert!(
        body.contains("m=audio 30000") && body.contains("a=crypto"),
        "{body}"
    );
    assert_eq!(sdp_glue::sdes_key(&join.body), Some(ours.clone()));
    r1.respond(jtx, reply(&join, 200, "carrier", Some(&answer)));
    let out = r1.take();
    assert!(media_ops(&out)
        .iter()
        .any(|op| matches!(op, MediaOp::Sdes(Leg::Agent, k, _) if *k == ours)));
}

/// A warm transfer up to the consultation: the customer held, the target answered on the
/// consultation ports. Returns (agent INVITE, customer INVITE, target INVITE).
fn consulting(r: &mut Rig) -> (Request, Request, Request) {
    let (agent_inv, cinv) = connected(r, |x| x);
    command(
        r,
        Command::Transfer {
            to: "user_bob".into(),
            plan: vec![vec![target("bob", 5075)]],
            warm: true,
        },
    )
    .expect("calling");
    let out = r.take();
    // The customer is held first...
    let (htx, hold) = sent(&out).remove(0);
    assert_eq!(hold.call_id_str(), cinv.call_id_str());
    assert!(String::from_utf8_lossy(&hold.body).contains("a=sendonly"));
    // ...and the consultation ports asked for.
    assert!(media_ops(&out).iter().any(|op| matches!(
        op,
        MediaOp::AttachMonitor {
            mode: MonitorMode::Consult,
            ..
        }
    )));
    r.respond(htx, reply(&hold, 200, "carrier", Some(CARRIER_SDP)));
    r.take();
    r.feed(Input::MonitorAttached(1, Ok(addr(30_004))));
    let out = r.take();
    let (ttx, tinv) = sent(&out).remove(0);
    assert!(String::from_utf8_lossy(&tinv.body).contains("m=audio 30004"));
    r.respond(ttx, reply(&tinv, 200, "bob", Some(TARGET_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert!(media_ops(&out)
        .iter()
        .any(|op| matches!(op, MediaOp::MonitorPeer(1, _))));
    assert!(sent(&out).is_empty(), "the agent stays until complete");
    (agent_inv, cinv, tinv)
}

#[test]
fn a_warm_transfer_consults_then_completes_moving_the_target_to_the_agents_port() {
    let mut r = Rig::new();
    let (agent_inv, cinv, tinv) = consulting(&mut r);
    command(&mut r, Command::CompleteTransfer).expect("completing");
    let out = r.take();
    let (mtx, moved) = sent(&out).remove(0);
    assert_eq!(
        moved.call_id_str(),
        tinv.call_id_str(),
        "re-INVITE of the target"
    );
    let body = String::from_utf8_lossy(&moved.body).to_string();
    assert!(
        body.contains("m=audio 30000") && body.contains("a=sendrecv"),
        "{body}"
    );
    r.respond(mtx, reply(&moved, 200, "bob", Some(TARGET_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    let reqs = sent(&out);
    assert_eq!(sent_methods(&out), ["BYE", "INVITE"]);
    assert_eq!(
        reqs[0].1.call_id_str(),
        agent_inv.call_id_str(),
        "agent released"
    );
    assert_eq!(
        reqs[1].1.call_id_str(),
        cinv.call_id_str(),
        "customer taken off hold"
    );
    assert!(String::from_utf8_lossy(&reqs[1].1.body).contains("a=sendrecv"));
    assert!(media_ops(&out)
        .iter()
        .any(|op| matches!(op, MediaOp::DetachMonitor(1))));
    assert!(events(&out).contains(&CallEventKind::Transferred {
        leg: Leg::Agent,
        to: "user_bob".into(),
        by: "api"
    }));
    assert!(matches!(
        command(&mut r, Command::CompleteTransfer),
        Err(ControlError::NotInProgress(_))
    ));
}

#[test]
fn a_cancelled_warm_transfer_releases_the_target_and_resumes_the_customer() {
    let mut r = Rig::new();
    let (_, cinv, tinv) = consulting(&mut r);
    command(&mut r, Command::CancelTransfer).expect("cancelled");
    let out = r.take();
    let reqs = sent(&out);
    assert_eq!(sent_methods(&out), ["BYE", "INVITE"]);
    assert_eq!(reqs[0].1.call_id_str(), tinv.call_id_str());
    assert_eq!(reqs[1].1.call_id_str(), cinv.call_id_str());
    assert!(String::from_utf8_lossy(&reqs[1].1.body).contains("a=sendrecv"));
    assert!(ended(&out).is_empty());
    assert!(matches!(
        command(&mut r, Command::CancelTransfer),
        Err(ControlError::NotInProgress(_))
    ));
}

// Agent confirm
// ---------------------------------------------------------------------------------------

fn confirm_spec() -> CallSpec {
    CallSpec {
        confirm: Some(Duration::from_secs(10)),
        ..spec()
    }
}

/// The agent answers a call that wants confirming: the prompt, and no customer yet.
fn confirming(r: &mut Rig) -> (Request, TxId) {
    assert!(matches!(r.take().as_slice(), [Output::Lookup(Leg::Agent)]));
    r.targets(Leg::Agent, vec![vec![target("desk", 5070)]]);
    let (tx, inv) = sent(&r.take()).remove(0);
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    let out = r.take();
    assert_eq!(acks(&out), 1);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Media(MediaOp::Confirm(Leg::Agent, sdp)) if sdp.as_ref() == AGENT_SDP.as_bytes()
    )));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Lookup(Leg::Customer))),
        "the customer waits for the agent's 1"
    );
    (inv, tx)
}

#[test]
fn confirm_a_1_dials_the_customer_and_other_digits_are_ignored() {
    let mut r = Rig::with_spec(confirm_spec());
    confirming(&mut r);
    r.advance(Duration::from_secs(3));
    for d in ['5', '#', '0'] {
        r.feed(Input::Dtmf(Leg::Agent, d));
    }
    // A digit from the other side does not count either.
    r.feed(Input::Dtmf(Leg::Customer, '1'));
    let out = r.take();
    assert!(!out.iter().any(|o| matches!(o, Output::Lookup(_))));
    assert!(ended(&out).is_empty());
    r.advance(Duration::from_secs(5));
    assert!(ended(&r.take()).is_empty(), "still within the 10 s");
    r.feed(Input::Dtmf(Leg::Agent, '1'));
    let out = r.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::EndConfirm(Leg::Agent)))));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Lookup(Leg::Customer))));
    // No confirm deadline any more: the customer rings for its own time.
    r.targets(Leg::Customer, vec![vec![trunk("carrier", 5080)]]);
    let (ctx, cinv) = sent(&r.take()).remove(0);
    r.respond(ctx, reply(&cinv, 180, "carrier", None));
    r.advance(Duration::from_secs(5));
    assert!(
        ended(&r.take()).is_empty(),
        "past the confirm's 10 s, the call goes on"
    );
    r.respond(ctx, reply(&cinv, 200, "carrier", Some(CARRIER_SDP)));
    let out = r.take();
    assert!(events(&out)
        .iter()
        .any(|e| matches!(e, CallEventKind::InProgress { .. })));
}

#[test]
fn confirm_no_digit_in_time_ends_no_answer_agent_and_never_dials_the_customer() {
    let mut r = Rig::with_spec(confirm_spec());
    confirming(&mut r);
    r.feed(Input::Dtmf(Leg::Agent, '9'));
    r.take();
    r.advance(Duration::from_millis(9_999));
    assert!(ended(&r.take()).is_empty());
    r.advance(Duration::from_millis(2));
    let out = r.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::EndConfirm(Leg::Agent)))));
    let byes = sent(&out);
    assert_eq!(sent_methods(&out), ["BYE"], "the agent is hung up");
    r.respond(byes[0].0, reply(&byes[0].1, 200, "desk", None));
    let all = r.take();
    let o = ended(&all);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].status, CallStatus::NoAnswer);
    assert_eq!(o[0].leg, Some(Leg::Agent));
    assert!(
        !all.iter()
            .chain(out.iter())
            .any(|o| matches!(o, Output::Lookup(Leg::Customer))),
        "the customer is never dialled"
    );
    // A late 1 changes nothing.
    r.feed(Input::Dtmf(Leg::Agent, '1'));
    assert!(!r
        .take()
        .iter()
        .any(|o| matches!(o, Output::Lookup(Leg::Customer))));
}

#[test]
fn confirm_a_sip_info_dtmf_relay_1_counts() {
    let mut r = Rig::with_spec(confirm_spec());
    let (inv, _) = confirming(&mut r);
    let mut info = in_dialog(&inv, "desk", "INFO", 2, None);
    info.request
        .headers
        .add(HeaderName::ContentType, "application/dtmf-relay");
    info.request.body = Bytes::from_static(b"Signal=1\r\nDuration=160\r\n");
    r.request(info, Leg::Agent);
    let out = r.take();
    assert_eq!(answers(&out), [200]);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Lookup(Leg::Customer))));
}

#[test]
fn confirm_the_agent_hanging_up_while_prompted_ends_canceled() {
    let mut r = Rig::with_spec(confirm_spec());
    let (inv, _) = confirming(&mut r);
    r.request(in_dialog(&inv, "desk", "BYE", 2, None), Leg::Agent);
    let out = r.take();
    assert_eq!(answers(&out), [200]);
    let o = ended(&out);
    assert_eq!(o[0].status, CallStatus::Canceled);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Lookup(Leg::Customer))));
}

#[test]
fn dtmf_relay_bodies_are_read() {
    use super::confirm::dtmf_relay_signal as s;
    assert_eq!(s(b"Signal=1\r\nDuration=160\r\n"), Some('1'));
    assert_eq!(s(b"signal= #\nDuration=100"), Some('#'));
    assert_eq!(s(b"Signal=11\r\n"), Some('#'));
    assert_eq!(s(b"Signal=d\r\n"), Some('D'));
    assert_eq!(s(b"Duration=160\r\n"), None);
    assert_eq!(s(b"Signal=12\r\n"), None);
    assert_eq!(s(&[0xff, 0xfe]), None);
}

// ---------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------

#[test]
fn a_recorded_call_starts_recording_when_connected_and_a_stopped_recording_is_noted() {
    let mut r = Rig::with_spec(CallSpec {
        record: true,
        ..spec()
    });
    let (agent_inv, _) = agent_answered(&mut r);
    let _ = agent_inv;
    r.targets(Leg::Customer, vec![vec![trunk("carrier", 5080)]]);
    let (ctx, cinv) = sent(&r.take()).remove(0);
    r.respond(ctx, reply(&cinv, 180, "carrier", None));
    assert!(
        !r.take()
            .iter()
            .any(|o| matches!(o, Output::Media(MediaOp::Record))),
        "nothing is recorded before the customer answers"
    );
    r.respond(ctx, reply(&cinv, 200, "carrier", Some(CARRIER_SDP)));
    let out = r.take();
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Media(MediaOp::Record)))
            .count(),
        1
    );
    r.feed(Input::RecordingStopped("disk full".into()));
    let out = r.take();
    assert!(events(&out).iter().any(|e| matches!(
        e,
        CallEventKind::Note { text, .. } if text.contains("recording stopped, the call goes on: disk full")
    )));
    assert!(ended(&out).is_empty(), "the call goes on");
    assert!(sent(&out).is_empty());
}

#[test]
fn a_call_that_is_not_recorded_never_asks_for_it() {
    let mut r = Rig::new();
    agent_answered(&mut r);
    r.targets(Leg::Customer, vec![vec![trunk("carrier", 5080)]]);
    let (ctx, cinv) = sent(&r.take()).remove(0);
    r.respond(ctx, reply(&cinv, 200, "carrier", Some(CARRIER_SDP)));
    let out = r.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::Start))));
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaOp::Record))));
}

const BROWSER_OFFER: &str = "v=0\r\no=- 9 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a1\r\na=msid-semantic: WMS s\r\nm=audio 50000 UDP/TLS/RTP/SAVPF 111 0 8 101\r\nc=IN IP4 127.0.0.1\r\na=mid:a1\r\na=ice-ufrag:brws\r\na=ice-pwd:browserbrowserbrowser12\r\na=fingerprint:sha-256 CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n";

#[test]
fn a_browser_that_calls_gets_a_webrtc_answer_and_the_other_side_a_plain_offer() {
    let mut r = Rig::with_spec(inbound_spec(Some(BROWSER_OFFER)));
    let out = r.take();
    let ice = out
        .iter()
        .find_map(|o| match o {
            Output::Media(MediaOp::WebRtc(Leg::Customer, Some(i))) => Some(i.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the relay takes ICE and DTLS on the caller's leg: {out:?}"));
    assert!(out.iter().any(|o| matches!(o, Output::Media(MediaOp::WebRtcAnswer(Leg::Customer, b)) if b.as_ref() == BROWSER_OFFER.as_bytes())));
    r.targets(Leg::Agent, vec![vec![target("desk", 5070)]]);
    let invites = sent(&r.take());
    let offer = String::from_utf8_lossy(&invites[0].1.body).into_owned();
    assert!(
        offer.contains("m=audio 30000 RTP/AVP 111 0 8 101"),
        "{offer}"
    );
    for gone in [
        "ice-",
        "fingerprint",
        "setup",
        "candidate",
        "mid",
        "group",
        "SAVPF",
    ] {
        assert!(!offer.contains(gone), "{gone} passed to the phone: {offer}");
    }
    let (tx, inv) = invites[0].clone();
    r.respond(tx, reply(&inv, 200, "desk", Some(AGENT_SDP)));
    let rs = responses(&r.take());
    let ok = rs
        .iter()
        .find(|r| r.status == 200)
        .expect("the browser is answered");
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    for want in [
        "m=audio 30002 UDP/TLS/RTP/SAVPF 0 8 101",
        "a=setup:passive",
        "a=mid:a1",
        "a=group:BUNDLE a1",
        "a=ice-lite",
        &format!("a=ice-ufrag:{}", ice.ufrag),
        "a=fingerprint:sha-256 EF:EF:",
        "a=rtcp-mux",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 30002 typ host",
    ] {
        assert!(body.contains(want), "{want} missing from {body}");
    }
}

/// A held call lasts hours: once its transactions have ended, the INVITEs of its forks (kept
/// whole, with their targets, while a late answer may still come), its table of transactions
/// and its output queue's room are given back; the call goes on from its dialogs alone.
#[test]
fn a_held_call_keeps_only_its_dialogs_once_its_transactions_end() {
    let mut r = Rig::new();
    let (agent_inv, cinv) = connected(&mut r, |x| x);
    assert_eq!(r.m.branches.len(), 3, "two devices and the carrier rung");
    // The re-INVITE's transaction first, then the forks' INVITEs.
    let mut txs: Vec<TxId> = r.m.roles.keys().copied().collect();
    txs.sort_by_key(|tx| matches!(r.m.roles.get(tx), Some(Role::Branch(_))));
    assert_eq!(txs.len(), 4);
    for tx in &txs[..txs.len() - 1] {
        r.feed(Input::TxEnded(*tx));
        assert!(!r.m.branches.is_empty(), "an INVITE is still pending");
    }
    r.feed(Input::TxEnded(txs[txs.len() - 1]));
    assert!(r.m.branches.is_empty(), "the forks' INVITEs are given back");
    assert_eq!(r.m.roles.capacity(), 0);
    assert_eq!(r.m.out.capacity(), 0);
    assert!(r.take().is_empty());
    // A late retransmission of the agent's 2xx is ACKed from the dialog.
    let again = reply(&agent_inv, 200, "desk", Some(AGENT_SDP));
    r.feed(Input::Stray(Box::new(again)));
    assert_eq!(acks(&r.take()), 1);
    // The call goes on: the customer hangs up, the agent gets a BYE, the call completes.
    r.request(in_dialog(&cinv, "carrier", "BYE", 2, None), Leg::Customer);
    let out = r.take();
    assert_eq!(answers(&out), vec![200]);
    assert_eq!(sent_methods(&out), vec!["BYE".to_string()]);
}
