//! Races of the click-to-call engine, in process, on tokio's paused clock.
//!
//! One harness: the server endpoint + [`SipServer`] + [`Engine`] over an in-memory store
//! holding one user (Alice) with two devices, whose bindings point at two scripted agent
//! phones on loopback, and one trunk pointing at a scripted carrier. The scripted peers are
//! raw UDP sockets speaking hand-written SIP, so every test sees exactly what each peer
//! received (retransmissions included) and decides exactly when each peer answers.
//!
//! The races:
//! 1. both devices answer at once (two 2xx for one forked INVITE);
//! 2. the agent ring time-out (CANCEL) crossing a device's 200;
//! 3. a BYE from the agent while its re-INVITE waits for the carrier;
//! 4. a carrier 183 with SDP (early media) followed by 486.
//!
//! Each test asserts the SIP each peer saw and the single outcome of the `Ended` event.
//!
//! Time: `#[tokio::test(start_paused = true)]`. The clock jumps to the next timer whenever
//! every task waits, so ring timers and SIP retransmission timers cost no real time. Loopback
//! UDP is delivered into the receiving socket's buffer before `send_to` returns, so a
//! datagram in flight never counts as "idle".

use b2bua::calls::{
    AgentTarget, CallControl, CallEvent, CallEventKind, CallHooks, CallSpec, CustomerTarget, Leg,
    Outcome,
};
use b2bua::calls::{Engine, EngineConfig};
use b2bua::registrar::{Registrar, RegistrarConfig};
use b2bua::server::SipServer;
use bytes::Bytes;
use sip_core::endpoint::{Endpoint, EndpointConfig};
use sip_core::message::{
    parse_message, HeaderAccess, HeaderName, Method, Request, Response, SipMessage,
};
use sip_core::transport::TransportConfig;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Binding, BlockingStore, CallStatus, Store};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

const ACCOUNT: &str = "acct_01h2xcejqtf2nbrexx3vqjhp41";
const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";
const DEVICES: [&str; 2] = ["alice-desk", "alice-mobile"];
const CUSTOMER: &str = "+15557654321";
/// The longest any single wait of a test may take (virtual time).
const WAIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------
// Call events
// ---------------------------------------------------------------------------------------

/// Records every call event and forwards it to the test.
struct Collector {
    log: Mutex<Vec<CallEvent>>,
    tx: mpsc::UnboundedSender<CallEvent>,
}

impl CallHooks for Collector {
    fn on_event(&self, event: CallEvent) {
        if let Ok(mut l) = self.log.lock() {
            l.push(event.clone());
        }
        let _ = self.tx.send(event);
    }
}

impl Collector {
    fn events(&self) -> Vec<CallEventKind> {
        self.log
            .lock()
            .map(|l| l.iter().map(|e| e.kind.clone()).collect())
            .unwrap_or_default()
    }

    fn count(&self, pred: impl Fn(&CallEventKind) -> bool) -> usize {
        self.events().iter().filter(|k| pred(k)).count()
    }
}

// ---------------------------------------------------------------------------------------
// Scripted peers
// ---------------------------------------------------------------------------------------

/// A scripted SIP peer on a raw UDP socket.
struct Peer {
    name: &'static str,
    sock: UdpSocket,
    addr: SocketAddr,
    /// Every message received, retransmissions included, in arrival order.
    seen: Vec<SipMessage>,
    /// Received but not yet taken by an `expect_*`.
    queue: VecDeque<(SipMessage, SocketAddr)>,
    /// Transactions already taken (retransmissions of them are dropped).
    taken: HashSet<String>,
    /// The To tag this peer puts in its answers.
    tag: String,
}

/// What identifies one message of one transaction (a retransmission has the same key).
fn msg_key(m: &SipMessage) -> String {
    let branch = m
        .headers()
        .get(&HeaderName::Via)
        .map(|v| v.to_str().into_owned())
        .unwrap_or_default();
    let cseq = m
        .headers()
        .get(&HeaderName::CSeq)
        .map(|v| v.to_str().into_owned())
        .unwrap_or_default();
    match m {
        SipMessage::Request(r) => format!("{} {cseq} {branch}", r.method),
        SipMessage::Response(r) => format!("{} {cseq} {branch}", r.status),
    }
}

/// A short name of a message: `INVITE`, `BYE`, `200 INVITE`...
fn msg_name(m: &SipMessage) -> String {
    match m {
        SipMessage::Request(r) => r.method.to_string(),
        SipMessage::Response(r) => {
            let method = r.cseq().map(|c| c.method.to_string()).unwrap_or_default();
            format!("{} {method}", r.status)
        }
    }
}

impl Peer {
    async fn bind(name: &'static str) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        Peer {
            name,
            sock,
            addr,
            seen: Vec::new(),
            queue: VecDeque::new(),
            taken: HashSet::new(),
            tag: format!("{name}-tag"),
        }
    }

    /// The distinct messages received (retransmissions folded), in arrival order.
    fn saw(&self) -> Vec<String> {
        let mut keys = HashSet::new();
        self.seen
            .iter()
            .filter(|m| keys.insert(msg_key(m)))
            .map(msg_name)
            .collect()
    }

    fn saw_count(&self, name: &str) -> usize {
        self.saw().iter().filter(|n| *n == name).count()
    }

    /// One datagram, or `None` after `wait`.
    async fn recv(&mut self, wait: Duration) -> Option<(SipMessage, SocketAddr)> {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let msg = parse_message(Bytes::copy_from_slice(&buf[..n]))
            .unwrap_or_else(|e| panic!("{}: unparsable message: {e:?}", self.name));
        self.seen.push(msg.clone());
        Some((msg, from))
    }

    /// The next message of a new transaction for which `pred` holds; other new messages
    /// stay queued for later, retransmissions of taken ones are dropped.
    async fn expect(
        &mut self,
        what: &str,
        pred: impl Fn(&SipMessage) -> bool,
    ) -> (SipMessage, SocketAddr) {
        if let Some(i) = self.queue.iter().position(|(m, _)| pred(m)) {
            if let Some((m, from)) = self.queue.remove(i) {
                self.taken.insert(msg_key(&m));
                return (m, from);
            }
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((m, from)) = self.recv(left).await else {
                panic!(
                    "{}: no {what} within {WAIT:?}; saw {:?}",
                    self.name,
                    self.saw()
                );
            };
            let key = msg_key(&m);
            if self.taken.contains(&key) || self.queue.iter().any(|(q, _)| msg_key(q) == key) {
                continue;
            }
            if pred(&m) {
                self.taken.insert(key);
                return (m, from);
            }
            self.queue.push_back((m, from));
        }
    }

    async fn expect_request(&mut self, method: Method) -> (Request, SocketAddr) {
        let what = method.to_string();
        let (m, from) = self
            .expect(
                &what,
                |m| matches!(m, SipMessage::Request(r) if r.method == method),
            )
            .await;
        match m {
            SipMessage::Request(r) => (r, from),
            SipMessage::Response(_) => unreachable!(),
        }
    }

    /// The final response to the request with this CSeq method and number.
    async fn expect_final(&mut self, method: Method, seq: u32) -> Response {
        let what = format!("final response to {method} {seq}");
        let (m, _) = self
            .expect(&what, |m| {
                matches!(m, SipMessage::Response(r) if r.status >= 200
                    && r.cseq().is_ok_and(|c| c.method == method && c.seq == seq))
            })
            .await;
        match m {
            SipMessage::Response(r) => r,
            SipMessage::Request(_) => unreachable!(),
        }
    }

    /// Receives whatever comes until nothing has come for `quiet`; queues it.
    async fn settle(&mut self, quiet: Duration) {
        for _ in 0..1000 {
            let Some((m, from)) = self.recv(quiet).await else {
                return;
            };
            let key = msg_key(&m);
            if !self.taken.contains(&key) && !self.queue.iter().any(|(q, _)| msg_key(q) == key) {
                self.queue.push_back((m, from));
            }
        }
        panic!("{}: never quiet; saw {:?}", self.name, self.saw());
    }

    async fn send(&self, bytes: Bytes, to: SocketAddr) {
        self.sock.send_to(&bytes, to).await.unwrap();
    }

    /// A response to `req` from this peer (To tag, Contact, optional SDP).
    fn response(&self, req: &Request, status: u16, sdp: Option<String>) -> Response {
        let mut r = Response::for_request(req, status);
        if status > 100 {
            r.set_to_tag(&self.tag);
        }
        r.headers.add(
            HeaderName::Contact,
            format!("<sip:{}@{}>", self.name, self.addr),
        );
        if let Some(sdp) = sdp {
            r.headers.add(HeaderName::ContentType, "application/sdp");
            r.body = Bytes::from(sdp);
        }
        r
    }

    async fn answer(&self, req: &Request, status: u16, sdp: Option<String>, to: SocketAddr) {
        self.send(self.response(req, status, sdp).encode(), to)
            .await;
    }
}

/// The UAS side of a dialog a scripted peer accepted: enough to send BYE and re-INVITE.
struct PeerDialog {
    /// Where the server's requests came from (its SIP socket).
    server: SocketAddr,
    /// The server's Contact (the remote target).
    target: String,
    call_id: String,
    /// Our To (with our tag) becomes our From.
    local: String,
    /// The server's From (with its tag) becomes our To.
    remote: String,
    cseq: u32,
}

impl PeerDialog {
    fn accepted(invite: &Request, peer: &Peer, server: SocketAddr) -> PeerDialog {
        let h = |n: HeaderName| {
            invite
                .headers
                .get(&n)
                .map(|v| v.to_str().into_owned())
                .unwrap()
        };
        let contact = h(HeaderName::Contact);
        let target = contact
            .trim()
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_string();
        PeerDialog {
            server,
            target,
            call_id: h(HeaderName::CallId),
            local: format!("{};tag={}", h(HeaderName::To), peer.tag),
            remote: h(HeaderName::From),
            cseq: 100,
        }
    }

    /// A new in-dialog request from the peer (CSeq + 1).
    fn request(&mut self, peer: &Peer, method: &str, sdp: Option<&str>) -> (Bytes, u32) {
        self.cseq += 1;
        let body = sdp.unwrap_or("");
        let ct = if sdp.is_some() {
            "Content-Type: application/sdp\r\n"
        } else {
            ""
        };
        let text = format!(
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {addr};branch=z9hG4bK-{name}-{method}-{seq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {local}\r\n\
             To: {remote}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {seq} {method}\r\n\
             Contact: <sip:{name}@{addr}>\r\n\
             {ct}\
             Content-Length: {len}\r\n\r\n{body}",
            target = self.target,
            addr = peer.addr,
            name = peer.name,
            local = self.local,
            remote = self.remote,
            cid = self.call_id,
            seq = self.cseq,
            len = body.len(),
        );
        (Bytes::from(text), self.cseq)
    }

    /// The ACK for a 2xx to our re-INVITE `seq`.
    fn ack(&self, peer: &Peer, seq: u32) -> Bytes {
        Bytes::from(format!(
            "ACK {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {addr};branch=z9hG4bK-{name}-ACK-{seq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {local}\r\n\
             To: {remote}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {seq} ACK\r\n\
             Content-Length: 0\r\n\r\n",
            target = self.target,
            addr = peer.addr,
            name = peer.name,
            local = self.local,
            remote = self.remote,
            cid = self.call_id,
        ))
    }
}

/// An audio offer/answer from `127.0.0.1:port`; `version` is the o= session version.
fn sdp(port: u16, version: u32, direction: &str) -> String {
    format!(
        "v=0\r\n\
         o=- 4242 {version} IN IP4 127.0.0.1\r\n\
         s=-\r\n\
         c=IN IP4 127.0.0.1\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a={direction}\r\n"
    )
}

fn to_tag(m: &SipMessage) -> Option<String> {
    m.headers()
        .get(&HeaderName::To)
        .map(|v| v.to_str().into_owned())
        .and_then(|t| t.split(";tag=").nth(1).map(|s| s.to_string()))
}

// ---------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------

struct Harness {
    engine: Engine,
    hooks: Arc<Collector>,
    events: mpsc::UnboundedReceiver<CallEvent>,
    agents: [Peer; 2],
    carrier: Peer,
}

/// The scripted carrier sends no `100 Trying` and answers when a test says so, often after
/// seconds of virtual time: its trunk's `invite_timeout_ms` (2 s by default, then the next
/// target) is set beyond any wait of a test.
fn provisioning(carrier: SocketAddr) -> store::Provisioning {
    let text = format!(
        r#"{{
          "accounts": [{{"id": "{ACCOUNT}", "name": "Acme", "region": "US",
             "api_keys": [{{"key": "ak_test_1", "secret": "sk_test_1"}}],
             "webhook_secret": "whsec_test_1", "allowed_prefixes": ["+1"]}}],
          "users": [{{"id": "{USER}", "account": "{ACCOUNT}",
             "name": "Alice", "extension": "1001", "agent_id": 42,
             "devices": [{{"username": "{d0}", "password": "s3cret-desk"}},
                         {{"username": "{d1}", "password": "s3cret-mobile"}}]}}],
          "trunks": [{{"name": "carrier", "account": "{ACCOUNT}", "address": "{carrier}",
             "invite_timeout_ms": 60000}}]
        }}"#,
        d0 = DEVICES[0],
        d1 = DEVICES[1],
    );
    serde_json::from_str(&text).unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Harness {
    async fn start() -> Harness {
        let agents = [
            Peer::bind("alice-desk").await,
            Peer::bind("alice-mobile").await,
        ];
        let carrier = Peer::bind("carrier").await;
        let db = store::SqliteStore::open_in_memory().unwrap();
        db.apply_provisioning(&provisioning(carrier.addr), "dialbridge.test")
            .unwrap();
        let (endpoint, sip_events) = Endpoint::start(EndpointConfig {
            transport: TransportConfig {
                listen: vec!["udp:127.0.0.1:0".parse().unwrap()],
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let server = endpoint.local_addrs()[0].addr;
        for (device, peer) in DEVICES.iter().zip(&agents) {
            db.upsert_binding(&Binding {
                device_username: device.to_string(),
                user_id: USER.into(),
                contact: format!("sip:{device}@{}", peer.addr),
                source: peer.addr.to_string(),
                transport: "udp".into(),
                local: server.to_string(),
                expires_at: unix_now() + 3600,
                q: None,
                call_id: format!("reg-{device}"),
                cseq: 1,
                instance: None,
                reg_id: None,
                user_agent: None,
                updated_at: unix_now(),
                path: Vec::new(),
            })
            .unwrap();
        }
        // Inline: on the paused clock a wait for a store thread would let timers jump.
        let db: Arc<dyn Store> = Arc::new(store::StoreThreads::inline(db));
        let registrar =
            Arc::new(Registrar::new(RegistrarConfig::default(), Arc::clone(&db)).unwrap());
        let relay = media::Relay::start(media::RelayConfig {
            workers: 1,
            ..Default::default()
        })
        .unwrap();
        let engine = Engine::new(
            EngineConfig::default(),
            endpoint.clone(),
            db,
            Arc::clone(&registrar),
            Arc::new(relay),
        );
        let (tx, events) = mpsc::unbounded_channel();
        let hooks = Arc::new(Collector {
            log: Mutex::new(Vec::new()),
            tx,
        });
        engine.set_hooks(hooks.clone());
        tokio::spawn(SipServer::new(endpoint, registrar, Some(engine.clone())).run(sip_events));
        Harness {
            engine,
            hooks,
            events,
            agents,
            carrier,
        }
    }

    fn start_call(&self, agent_ring: Duration) {
        self.engine
            .start_call(CallSpec {
                call_id: "call_01h2xcejqtf2nbrexx3vqjhp43".into(),
                account_id: ACCOUNT.into(),
                agent: AgentTarget::Devices {
                    user_id: USER.into(),
                },
                customer: CustomerTarget::E164(CUSTOMER.into()),
                caller_id: Some("+15550001111".into()),
                agent_ring,
                customer_ring: Duration::from_secs(60),
                incoming: None,
                confirm: None,
                record: false,
            })
            .unwrap();
    }

    /// The `Ended` event's outcome (the only one).
    async fn ended(&mut self) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = tokio::time::timeout(left, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no Ended event; events: {:#?}", self.hooks.events()))
                .unwrap();
            if let CallEventKind::Ended { outcome, .. } = ev.kind {
                return outcome;
            }
        }
    }

    /// After the call: exactly one `Ended`, no call left in the engine.
    async fn assert_single_end(&mut self) {
        // Let every transaction and janitor finish (all virtual time).
        for p in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.carrier))
        {
            p.settle(Duration::from_secs(5)).await;
        }
        assert_eq!(
            self.hooks
                .count(|k| matches!(k, CallEventKind::Ended { .. })),
            1,
            "exactly one Ended"
        );
        assert_eq!(self.engine.active_calls(), 0, "no call left running");
    }

    /// Both devices ring: each gets the forked INVITE and answers 180. Returns the INVITEs
    /// and where they came from.
    async fn ring_both(&mut self) -> [(Request, SocketAddr); 2] {
        let mut out = Vec::new();
        for a in self.agents.iter_mut() {
            let (inv, from) = a.expect_request(Method::Invite).await;
            a.answer(&inv, 180, None, from).await;
            out.push((inv, from));
        }
        out.try_into().unwrap_or_else(|_| unreachable!())
    }

    /// Device `i` answers with 200 + SDP.
    async fn answer_agent(&self, i: usize, inv: &Request, from: SocketAddr) {
        let port = 40_000 + 2 * i as u16;
        self.agents[i]
            .answer(inv, 200, Some(sdp(port, 1, "sendrecv")), from)
            .await;
    }

    /// A peer answers a CANCEL: 200 to the CANCEL, 487 to the INVITE.
    async fn cancelled(peer: &mut Peer, inv: &Request, from: SocketAddr) {
        let (cancel, cfrom) = peer.expect_request(Method::Cancel).await;
        peer.answer(&cancel, 200, None, cfrom).await;
        peer.answer(inv, 487, None, from).await;
    }
}

fn is_agent_answered(k: &CallEventKind) -> bool {
    matches!(k, CallEventKind::AgentAnswered { .. })
}

// ---------------------------------------------------------------------------------------
// 1. Both devices answer at once
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn both_devices_answer_at_once_one_is_kept_the_other_acked_and_byed() {
    let mut h = Harness::start().await;
    h.start_call(Duration::from_secs(30));
    let [(inv0, from0), (inv1, from1)] = h.ring_both().await;
    // Both 200s leave before the engine has seen either.
    h.answer_agent(0, &inv0, from0).await;
    h.answer_agent(1, &inv1, from1).await;

    // The call proceeds to the carrier.
    let (cinv, cfrom) = h.carrier.expect_request(Method::Invite).await;
    assert!(cinv.uri().to_string().contains(CUSTOMER), "{}", cinv.uri());

    // Both devices get an ACK for their 200; exactly one is then sent a BYE.
    for a in h.agents.iter_mut() {
        a.expect_request(Method::Ack).await;
    }
    for a in h.agents.iter_mut() {
        a.settle(Duration::from_secs(2)).await;
    }
    let byed: Vec<usize> = (0..2)
        .filter(|&i| h.agents[i].saw_count("BYE") > 0)
        .collect();
    assert_eq!(
        byed.len(),
        1,
        "one device is BYEd: {:?} / {:?}",
        h.agents[0].saw(),
        h.agents[1].saw()
    );
    let loser = byed[0];
    let winner = 1 - loser;
    let (bye, bfrom) = h.agents[loser].expect_request(Method::Bye).await;
    assert_eq!(
        to_tag(&SipMessage::Request(bye.clone())).as_deref(),
        Some(h.agents[loser].tag.as_str()),
        "the BYE is for the loser's own dialog"
    );
    h.agents[loser].answer(&bye, 200, None, bfrom).await;
    assert_eq!(
        h.hooks.count(is_agent_answered),
        1,
        "one AgentAnswered: {:#?}",
        h.hooks.events()
    );

    // The customer answers, then hangs up: the winner gets the BYE, the call is completed.
    h.carrier
        .answer(&cinv, 200, Some(sdp(41_000, 1, "sendrecv")), cfrom)
        .await;
    h.carrier.expect_request(Method::Ack).await;
    let cinv_dialog = PeerDialog::accepted(&cinv, &h.carrier, cfrom);
    let mut cd = cinv_dialog;
    let (cbye, _) = cd.request(&h.carrier, "BYE", None);
    h.carrier.send(cbye, cd.server).await;
    let resp = h.carrier.expect_final(Method::Bye, cd.cseq).await;
    assert_eq!(resp.status, 200);
    let (wbye, wfrom) = h.agents[winner].expect_request(Method::Bye).await;
    assert_eq!(
        to_tag(&SipMessage::Request(wbye.clone())).as_deref(),
        Some(h.agents[winner].tag.as_str())
    );
    h.agents[winner].answer(&wbye, 200, None, wfrom).await;

    let out = h.ended().await;
    assert_eq!(
        (out.status, out.leg, out.sip_code),
        (CallStatus::Completed, Some(Leg::Customer), Some(200)),
        "{out:?}"
    );
    assert!(
        h.hooks
            .count(|k| matches!(k, CallEventKind::InProgress { .. }))
            == 1
    );
    h.assert_single_end().await;
    // What each peer saw, retransmissions folded. The loser may also see a CANCEL that
    // crossed its 200 (it has no effect then).
    assert_eq!(h.agents[winner].saw(), ["INVITE", "ACK", "BYE"]);
    let loser_saw: Vec<String> = h.agents[loser]
        .saw()
        .into_iter()
        .filter(|m| m != "CANCEL")
        .collect();
    assert_eq!(loser_saw, ["INVITE", "ACK", "BYE"]);
    assert_eq!(h.carrier.saw(), ["INVITE", "ACK", "200 BYE"]);
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the remaining races
// ---------------------------------------------------------------------------------------

impl Harness {
    /// Device 0 answers, device 1 is cancelled; returns device 0's INVITE and its source.
    async fn agent_answers(&mut self) -> (Request, SocketAddr) {
        let [(inv0, from0), (inv1, from1)] = self.ring_both().await;
        self.answer_agent(0, &inv0, from0).await;
        self.agents[0].expect_request(Method::Ack).await;
        Harness::cancelled(&mut self.agents[1], &inv1, from1).await;
        self.agents[1].expect_request(Method::Ack).await;
        (inv0, from0)
    }

    /// The carrier gets the customer INVITE; it answers 200 and gets the ACK.
    async fn customer_answers(&mut self) -> (Request, SocketAddr) {
        let (cinv, cfrom) = self.carrier.expect_request(Method::Invite).await;
        self.carrier
            .answer(&cinv, 200, Some(sdp(41_000, 1, "sendrecv")), cfrom)
            .await;
        self.carrier.expect_request(Method::Ack).await;
        (cinv, cfrom)
    }
}

/// Answers, with 200, every CANCEL and BYE the peer has queued or receives until quiet.
async fn answer_cancels_and_byes(peer: &mut Peer) {
    peer.settle(Duration::from_secs(2)).await;
    let queued: Vec<(SipMessage, SocketAddr)> = peer.queue.drain(..).collect();
    for (m, from) in queued {
        match &m {
            SipMessage::Request(r) if matches!(r.method, Method::Cancel | Method::Bye) => {
                peer.taken.insert(msg_key(&m));
                peer.answer(r, 200, None, from).await;
            }
            _ => peer.queue.push_back((m, from)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. CANCEL (agent ring time-out) crossing a 200
// ---------------------------------------------------------------------------------------

/// Device 0 answers `offset` after the agent ring time (2 s) runs out (negative: before).
/// Returns whether the 200 won.
async fn cancel_crossing_200(offset_ms: i64) -> bool {
    let ring = Duration::from_secs(2);
    let mut h = Harness::start().await;
    let t0 = Instant::now();
    h.start_call(ring);
    let [(inv0, from0), (inv1, from1)] = h.ring_both().await;
    let at = if offset_ms >= 0 {
        t0 + ring + Duration::from_millis(offset_ms.unsigned_abs())
    } else {
        t0 + ring - Duration::from_millis(offset_ms.unsigned_abs())
    };
    tokio::time::sleep_until(at).await;
    h.answer_agent(0, &inv0, from0).await;

    // Device 1 is cancelled whichever way it goes.
    Harness::cancelled(&mut h.agents[1], &inv1, from1).await;
    h.agents[1].expect_request(Method::Ack).await;
    // Device 0 gets the ACK of its 200 whichever way it goes.
    h.agents[0].expect_request(Method::Ack).await;
    answer_cancels_and_byes(&mut h.agents[0]).await;

    let answered = h.hooks.count(is_agent_answered) == 1;
    if answered {
        // The 200 won: the call goes on to the carrier; device 0 keeps its dialog.
        h.customer_answers().await;
        assert_eq!(h.agents[0].saw_count("BYE"), 0, "{:?}", h.agents[0].saw());
        assert_eq!(
            h.agents[0].saw_count("CANCEL"),
            0,
            "{:?}",
            h.agents[0].saw()
        );
        // The agent hangs up: the carrier gets its BYE.
        let mut d = PeerDialog::accepted(&inv0, &h.agents[0], from0);
        let (bye, seq) = d.request(&h.agents[0], "BYE", None);
        h.agents[0].send(bye, d.server).await;
        assert_eq!(h.agents[0].expect_final(Method::Bye, seq).await.status, 200);
        let (cbye, cfrom) = h.carrier.expect_request(Method::Bye).await;
        h.carrier.answer(&cbye, 200, None, cfrom).await;
        let out = h.ended().await;
        assert_eq!(
            (out.status, out.leg, out.sip_code),
            (CallStatus::Completed, Some(Leg::Agent), Some(200)),
            "{out:?}"
        );
        h.assert_single_end().await;
        assert_eq!(h.agents[0].saw(), ["INVITE", "ACK", "200 BYE"]);
        assert_eq!(h.carrier.saw(), ["INVITE", "ACK", "BYE"]);
    } else {
        // The ring time won: no-answer on the agent leg, and the 200 that crossed the
        // CANCEL is ACKed and BYEd, leaving no dialog behind.
        let out = h.ended().await;
        assert_eq!(
            (out.status, out.leg, out.sip_code),
            (CallStatus::NoAnswer, Some(Leg::Agent), Some(408)),
            "{out:?}"
        );
        answer_cancels_and_byes(&mut h.agents[0]).await;
        h.assert_single_end().await;
        let saw: Vec<String> = h.agents[0]
            .saw()
            .into_iter()
            .filter(|m| m != "CANCEL")
            .collect();
        assert_eq!(saw, ["INVITE", "ACK", "BYE"], "{:?}", h.agents[0].saw());
        assert!(h.carrier.saw().is_empty(), "{:?}", h.carrier.saw());
        assert_eq!(
            h.hooks
                .count(|k| matches!(k, CallEventKind::InProgress { .. })),
            0
        );
    }
    assert_eq!(h.agents[1].saw(), ["INVITE", "CANCEL", "ACK"]);
    answered
}

#[tokio::test(start_paused = true)]
async fn cancel_crossing_200_the_200_just_before_the_ring_time_wins() {
    assert!(
        cancel_crossing_200(-1).await,
        "a 200 1 ms before the ring time-out wins"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_crossing_200_at_the_very_instant_is_consistent_either_way() {
    cancel_crossing_200(0).await;
}

#[tokio::test(start_paused = true)]
async fn cancel_crossing_200_the_200_just_after_the_cancel_is_acked_and_byed() {
    assert!(
        !cancel_crossing_200(1).await,
        "a 200 1 ms after the ring time-out loses"
    );
}

// ---------------------------------------------------------------------------------------
// 3. BYE during a re-INVITE
// ---------------------------------------------------------------------------------------

/// Connected; the agent sends a re-INVITE (hold), the carrier is slow to answer it and the
/// agent hangs up meanwhile. `carrier_delay`: when the carrier answers the re-INVITE
/// (`None`: never).
async fn bye_during_reinvite(carrier_delay: Option<Duration>) -> Harness {
    let mut h = Harness::start().await;
    h.start_call(Duration::from_secs(30));
    let (inv0, from0) = h.agent_answers().await;
    let (cinv, cfrom) = h.customer_answers().await;
    assert_eq!(
        h.hooks
            .count(|k| matches!(k, CallEventKind::InProgress { .. })),
        1
    );

    let mut d = PeerDialog::accepted(&inv0, &h.agents[0], from0);
    let hold = sdp(40_000, 2, "sendonly");
    let (reinvite, reinvite_seq) = d.request(&h.agents[0], "INVITE", Some(&hold));
    h.agents[0].send(reinvite, d.server).await;
    let (creinv, crfrom) = h.carrier.expect_request(Method::Invite).await;
    assert_ne!(
        creinv.call_id_str(),
        "",
        "the re-INVITE is passed to the carrier"
    );
    assert_eq!(
        creinv.call_id_str(),
        cinv.call_id_str(),
        "in the carrier's dialog"
    );
    assert!(
        String::from_utf8_lossy(&creinv.body).contains("a=sendonly"),
        "the hold offer is passed through"
    );

    // The agent hangs up while its re-INVITE waits.
    let (bye, bye_seq) = d.request(&h.agents[0], "BYE", None);
    let bye_sent = Instant::now();
    h.agents[0].send(bye, d.server).await;

    if let Some(delay) = carrier_delay {
        tokio::time::sleep(delay).await;
        h.carrier
            .answer(&creinv, 200, Some(sdp(41_000, 2, "recvonly")), crfrom)
            .await;
    }

    // The agent: a final answer to its re-INVITE (ACKed when 2xx) and a 200 to its BYE,
    // within its BYE's Timer F (64*T1 = 32 s).
    let rr = h.agents[0].expect_final(Method::Invite, reinvite_seq).await;
    if rr.is_success() {
        h.agents[0]
            .send(d.ack(&h.agents[0], reinvite_seq), d.server)
            .await;
    }
    let br = h.agents[0].expect_final(Method::Bye, bye_seq).await;
    let bye_answered_after = bye_sent.elapsed();
    eprintln!(
        "BYE answered after {bye_answered_after:?}, re-INVITE answered {}",
        rr.status
    );
    assert_eq!(br.status, 200);
    assert!(
        bye_answered_after < Duration::from_secs(32),
        "the agent's BYE was answered after {bye_answered_after:?}: past its Timer F"
    );

    // The carrier gets its BYE (and the ACK of its 200 to the re-INVITE, when it sent one).
    let (cbye, cbfrom) = h.carrier.expect_request(Method::Bye).await;
    h.carrier.answer(&cbye, 200, None, cbfrom).await;
    if carrier_delay.is_some() {
        h.carrier.settle(Duration::from_secs(1)).await;
        assert_eq!(h.carrier.saw_count("ACK"), 2, "{:?}", h.carrier.saw());
    }

    let out = h.ended().await;
    assert_eq!(
        (out.status, out.leg, out.sip_code),
        (CallStatus::Completed, Some(Leg::Agent), Some(200)),
        "{out:?}"
    );
    h.assert_single_end().await;
    let _ = cfrom;
    h
}

#[tokio::test(start_paused = true)]
async fn bye_during_reinvite_with_a_slow_carrier_completes_and_leaves_nothing_pending() {
    let h = bye_during_reinvite(Some(Duration::from_secs(5))).await;
    // The carrier: the call, the passed re-INVITE, the BYE at once (RFC 3261 §15.1.2), and
    // the ACK of its late 200 to the re-INVITE.
    assert_eq!(h.carrier.saw(), ["INVITE", "ACK", "INVITE", "BYE", "ACK"]);
    // The agent: the call and its ACK, then its re-INVITE ended by its BYE (487) and the
    // 200 to the BYE.
    let saw: Vec<String> = h.agents[0]
        .saw()
        .into_iter()
        .filter(|m| m != "100 INVITE")
        .collect();
    assert_eq!(saw, ["INVITE", "ACK", "487 INVITE", "200 BYE"]);
}

/// A carrier that never answers the passed re-INVITE: the agent's BYE is still answered at
/// once (RFC 3261 §15.1.2), its pending re-INVITE gets a final answer (487), and nothing is
/// left pending.
#[tokio::test(start_paused = true)]
async fn bye_during_reinvite_with_a_carrier_that_never_answers_it() {
    let h = bye_during_reinvite(None).await;
    // The agent's re-INVITE got a final answer (not left pending) and was ACKed by it.
    let agent = h.agents[0].saw();
    assert!(
        agent
            .iter()
            .any(|m| m.ends_with(" INVITE") && !m.starts_with('1')),
        "{agent:?}"
    );
    assert!(agent.contains(&"200 BYE".to_string()), "{agent:?}");
}

// ---------------------------------------------------------------------------------------
// 4. Carrier 183 with SDP, then 486
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn carrier_early_media_then_busy_ends_busy_and_byes_the_agent() {
    let mut h = Harness::start().await;
    h.start_call(Duration::from_secs(30));
    let (_inv0, _from0) = h.agent_answers().await;
    let (cinv, cfrom) = h.carrier.expect_request(Method::Invite).await;
    h.carrier
        .answer(&cinv, 183, Some(sdp(41_000, 1, "sendrecv")), cfrom)
        .await;
    h.carrier.answer(&cinv, 486, None, cfrom).await;
    // The 486 is ACKed (hop by hop), the agent is sent BYE.
    h.carrier.expect_request(Method::Ack).await;
    let (bye, bfrom) = h.agents[0].expect_request(Method::Bye).await;
    h.agents[0].answer(&bye, 200, None, bfrom).await;

    let out = h.ended().await;
    assert_eq!(
        (out.status, out.leg, out.sip_code),
        (CallStatus::Busy, Some(Leg::Customer), Some(486)),
        "{out:?}"
    );
    h.assert_single_end().await;
    assert_eq!(
        h.hooks
            .count(|k| matches!(k, CallEventKind::EarlyMedia { leg: Leg::Customer })),
        1,
        "{:#?}",
        h.hooks.events()
    );
    assert_eq!(
        h.hooks.count(|k| matches!(
            k,
            CallEventKind::Ringing {
                leg: Leg::Customer,
                sip_code: 183
            }
        )),
        1
    );
    assert_eq!(
        h.hooks
            .count(|k| matches!(k, CallEventKind::InProgress { .. })),
        0
    );
    assert_eq!(h.carrier.saw(), ["INVITE", "ACK"]);
    assert_eq!(h.agents[0].saw(), ["INVITE", "ACK", "BYE"]);
    assert_eq!(h.agents[1].saw(), ["INVITE", "CANCEL", "ACK"]);
}

// ---------------------------------------------------------------------------------------
// 6. A device that has not rung yet when another answers
// ---------------------------------------------------------------------------------------

/// Device 1 answers while device 0 has sent nothing yet: its CANCEL may not go out before a
/// provisional response (RFC 3261 §9.1). The timeline says it is held, not that it was sent;
/// once device 0 rings, the CANCEL leaves, and device 0 is cancelled as usual.
#[tokio::test(start_paused = true)]
async fn cancel_before_any_provisional_is_held_and_said_so() {
    let mut h = Harness::start().await;
    h.start_call(Duration::from_secs(30));
    let (inv0, from0) = h.agents[0].expect_request(Method::Invite).await;
    let (inv1, from1) = h.agents[1].expect_request(Method::Invite).await;
    h.agents[1].answer(&inv1, 180, None, from1).await;
    h.answer_agent(1, &inv1, from1).await;
    h.agents[1].expect_request(Method::Ack).await;
    // No CANCEL on the wire for device 0 yet (it has not answered at all).
    h.agents[0].settle(Duration::from_millis(300)).await;
    assert_eq!(
        h.agents[0].saw_count("CANCEL"),
        0,
        "{:?}",
        h.agents[0].saw()
    );
    let label = |k: &CallEventKind| match k {
        CallEventKind::Sip {
            direction: "sent",
            summary,
            ..
        } if summary.starts_with("CANCEL") => Some(summary.clone()),
        _ => None,
    };
    let held = |k: &CallEventKind| matches!(k, CallEventKind::Note { text, .. } if text.contains("held until a provisional response"));
    assert_eq!(h.hooks.count(held), 1, "{:#?}", h.hooks.events());
    assert_eq!(
        h.hooks.events().iter().filter_map(label).count(),
        0,
        "a CANCEL is said to be sent: {:#?}",
        h.hooks.events()
    );
    // Device 0 rings now: the held CANCEL goes out, and it is cancelled.
    h.agents[0].answer(&inv0, 180, None, from0).await;
    Harness::cancelled(&mut h.agents[0], &inv0, from0).await;
    h.agents[0].expect_request(Method::Ack).await;
    let (cinv, cfrom) = h.customer_answers().await;
    let _ = (cinv, cfrom);
    // The agent (device 1) hangs up: the call is completed.
    let mut d = PeerDialog::accepted(&inv1, &h.agents[1], from1);
    let (bye, seq) = d.request(&h.agents[1], "BYE", None);
    h.agents[1].send(bye, d.server).await;
    assert_eq!(h.agents[1].expect_final(Method::Bye, seq).await.status, 200);
    let (cbye, cfrom) = h.carrier.expect_request(Method::Bye).await;
    h.carrier.answer(&cbye, 200, None, cfrom).await;
    let out = h.ended().await;
    assert_eq!(out.status, CallStatus::Completed, "{out:?}");
}
