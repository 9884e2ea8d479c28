//! SIP reflection: what a forged source gets back.
//!
//! A request whose source address is forged makes the server answer somebody who never
//! asked — the victim of a reflection attack. The server must answer such requests (ones
//! that open nothing) once, small, and not too often:
//!
//! - single UDP requests from a loopback address that never answers get exactly one answer
//!   each within `64*T1` (no `100 Trying` before a refusal, no Timer G retransmissions), and
//!   the bytes out per byte in stay within the goals (2.5x for the MD5 + SHA-256 challenge,
//!   1.5x for the rest);
//! - a retransmission of a refused request gets the same answer again, and the ACK nothing;
//! - a SIPp INVITE flood from one source gets at most the configured budget of answers,
//!   while another source is still answered.
//!
//! The server runs with T1 = 50 ms, so `64*T1` (the longest any retransmission of the
//! server could come) is 3.2 s; the test listens for 1 s more after that.

use sip_tests::{scenario, sipp, TestServer};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const T1_MS: u64 = 50;

fn server(extra: &str) -> TestServer {
    TestServer::start(&format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\nt1_ms = {T1_MS}\nt2_ms = 400\nt4_ms = 500\n{extra}"
    ))
}

/// A UDP socket on `ip` that only collects what arrives.
fn silent_peer(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind a loopback address");
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    s
}

fn status_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn call_id_of(msg: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    text.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
                .then(|| value.trim().to_string())
        })
}

/// Everything that arrives on `sock` until `until`.
fn collect(sock: &UdpSocket, until: Instant) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < until {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

/// One request of the kind a scanner or a forged source sends: the usual header fields
/// of a softphone, nothing exotic.
struct Probe {
    name: &'static str,
    method: &'static str,
    user: &'static str,
    /// Extra header lines (each ending in CRLF).
    extra: &'static str,
    to_tag: bool,
    body: &'static str,
    want: u16,
    /// Bytes out per byte in, at most.
    goal: f64,
}

fn request(p: &Probe, n: usize, from: SocketAddr, to: SocketAddr) -> String {
    let cseq_method = p.method;
    let to_tag = if p.to_tag { ";tag=5f2a09c1" } else { "" };
    let content_type = if p.body.is_empty() {
        String::new()
    } else {
        "Content-Type: text/plain\r\n".to_string()
    };
    format!(
        "{method} sip:{user}@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK{n:04}a7c3e1f09b;rport\r\n\
         {max_forwards}From: <sip:probe@{fip}>;tag=8d1e{n:04}\r\n\
         To: <sip:{user}@{tip}>{to_tag}\r\n\
         Call-ID: refl{n:04}-3e98c1d0f2a4@{fip}\r\n\
         CSeq: 1 {cseq_method}\r\n\
         Contact: <sip:probe@{from}>\r\n\
         User-Agent: friendly-scanner\r\n\
         {extra}{content_type}Content-Length: {len}\r\n\r\n{body}",
        method = p.method,
        max_forwards = if p.extra.contains("Max-Forwards") {
            ""
        } else {
            "Max-Forwards: 70\r\n"
        },
        user = p.user,
        fip = from.ip(),
        tip = to.ip(),
        extra = p.extra,
        len = p.body.len(),
        body = p.body,
    )
}

fn probes() -> Vec<Probe> {
    let p = |name, method, user, extra, to_tag, body, want, goal| Probe {
        name,
        method,
        user,
        extra,
        to_tag,
        body,
        want,
        goal,
    };
    vec![
        // An INVITE from no trunk may be a registered phone placing a call: challenged,
        // as a REGISTER is (and as small).
        p("INVITE, nobody by that name", "INVITE", "4915551234", "", false, "", 407, 2.5),
        p("INVITE to a device name", "INVITE", "alice-desk", "", false, "", 407, 2.5),
        p("INVITE, unknown Require", "INVITE", "100", "Require: frobnicate\r\n", false, "", 420, 1.5),
        p("INVITE, Max-Forwards 0", "INVITE", "100", "Max-Forwards: 0\r\n", false, "", 483, 1.5),
        p("INVITE, body not SDP", "INVITE", "100", "", false, "hello", 415, 1.5),
        p("INVITE in no dialog", "INVITE", "100", "", true, "", 481, 1.5),
        p("REGISTER, no credentials", "REGISTER", "alice-desk", "Expires: 3600\r\n", false, "", 401, 2.5),
        p(
            "REGISTER, a foreign nonce",
            "REGISTER",
            "alice-desk",
            "Authorization: Digest username=\"alice-desk\", realm=\"dialbridge.test\", nonce=\"0123456789abcdef\", uri=\"sip:dialbridge.test\", response=\"00112233445566778899aabbccddeeff\", algorithm=MD5\r\n",
            false,
            "",
            401,
            2.5,
        ),
        p("OPTIONS", "OPTIONS", "100", "Accept: application/sdp\r\n", false, "", 200, 1.5),
        p("MESSAGE", "MESSAGE", "100", "", false, "hi", 405, 1.5),
        p("BYE in no dialog", "BYE", "100", "", true, "", 481, 1.5),
        p("CANCEL of nothing", "CANCEL", "100", "", false, "", 481, 1.5),
        p("unknown method", "FROB", "100", "", false, "", 501, 1.5),
    ]
}

#[test]
fn refusals_to_a_silent_stranger_arrive_once_and_small() {
    let server = server("");
    let target = server.udp_addr();
    let peer = silent_peer("127.0.0.7");
    let from = peer.local_addr().unwrap();
    let probes = probes();
    let mut sent: HashMap<String, (usize, usize)> = HashMap::new();
    for (n, p) in probes.iter().enumerate() {
        let req = request(p, n, from, target);
        peer.send_to(req.as_bytes(), target).unwrap();
        sent.insert(format!("refl{n:04}-3e98c1d0f2a4@127.0.0.7"), (n, req.len()));
        // Not a flood: a few ms apart.
        std::thread::sleep(Duration::from_millis(5));
    }
    // 64*T1 after the last request, and one second more.
    let got = collect(
        &peer,
        Instant::now() + Duration::from_millis(64 * T1_MS + 1000),
    );
    let mut by_request: Vec<Vec<Vec<u8>>> = vec![Vec::new(); probes.len()];
    for m in &got {
        let cid = call_id_of(m).unwrap_or_default();
        let (n, _) = sent
            .get(&cid)
            .unwrap_or_else(|| panic!("an answer to nothing sent: {}", String::from_utf8_lossy(m)));
        by_request[*n].push(m.clone());
    }
    let mut failures = Vec::new();
    let mut table = String::from("kind | status | bytes in | bytes out | out/in\n");
    for (n, p) in probes.iter().enumerate() {
        let answers = &by_request[n];
        let (_, bytes_in) = sent[&format!("refl{n:04}-3e98c1d0f2a4@127.0.0.7")];
        let bytes_out: usize = answers.iter().map(Vec::len).sum();
        let ratio = bytes_out as f64 / bytes_in as f64;
        let statuses: Vec<Option<u16>> = answers.iter().map(|a| status_of(a)).collect();
        table.push_str(&format!(
            "{} | {:?} | {bytes_in} | {bytes_out} | {ratio:.2}\n",
            p.name, statuses
        ));
        if statuses != [Some(p.want)] {
            failures.push(format!(
                "{}: expected one {} and nothing else, got {statuses:?}:\n{}",
                p.name,
                p.want,
                answers
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            ));
        }
        if ratio > p.goal {
            failures.push(format!(
                "{}: {bytes_out} bytes out for {bytes_in} in ({ratio:.2}x, goal {}x):\n{}",
                p.name,
                p.goal,
                answers
                    .first()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or_default()
            ));
        }
        if let Some(a) = answers.first() {
            let text = String::from_utf8_lossy(a);
            if !text.ends_with("\r\n\r\n") {
                failures.push(format!("{}: the answer carries a body:\n{text}", p.name));
            }
            if text.contains("\r\nServer:") {
                failures.push(format!("{}: a Server header nobody asked for", p.name));
            }
        }
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{}\n\n{table}", failures.join("\n\n"));
}

#[test]
fn a_retransmitted_refused_invite_gets_the_same_answer_and_its_ack_nothing() {
    let server = server("");
    let target = server.udp_addr();
    let peer = silent_peer("127.0.0.7");
    let from = peer.local_addr().unwrap();
    let p = &probes()[0];
    let invite = request(p, 100, from, target);
    peer.send_to(invite.as_bytes(), target).unwrap();
    let first = collect(&peer, Instant::now() + Duration::from_millis(300));
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(status_of(&first[0]), Some(407));
    // The client's Timer A fires: the same INVITE again, then again.
    for _ in 0..2 {
        peer.send_to(invite.as_bytes(), target).unwrap();
        let again = collect(&peer, Instant::now() + Duration::from_millis(300));
        assert_eq!(again, first, "the same bytes again");
    }
    // The ACK for the 407 (same branch, the To tag of the 407): absorbed.
    let answer = String::from_utf8_lossy(&first[0]).into_owned();
    let to = answer
        .split("\r\n")
        .find(|l| l.starts_with("To:"))
        .unwrap()
        .to_string();
    let ack = format!(
        "ACK sip:{user}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK0100a7c3e1f09b;rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{fip}>;tag=8d1e0100\r\n{to}\r\nCall-ID: refl0100-3e98c1d0f2a4@{fip}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        user = p.user,
        fip = from.ip(),
    );
    peer.send_to(ack.as_bytes(), target).unwrap();
    let rest = collect(
        &peer,
        Instant::now() + Duration::from_millis(64 * T1_MS + 500),
    );
    assert!(rest.is_empty(), "{} more messages", rest.len());
}

/// A SIPp INVITE flood from one address: about `refusals_per_sec` refusals come back (the
/// bucket's size plus what refills while the flood empties it), then the source is muted;
/// another address is still answered.
#[test]
fn sipp_invite_flood_from_one_source_gets_at_most_the_budget() {
    const BUDGET: u64 = 10;
    const CALLS: u64 = 300;
    let server = server(&format!(
        "refusals_per_sec = {BUDGET}\nrefusal_mute_secs = 60\n"
    ));
    let target = server.udp_addr().to_string();
    let sf = scenario("invite_flood.xml");
    let sf = sf.to_string_lossy();
    let calls = CALLS.to_string();
    // 100 INVITEs a second for 3 s, no retransmissions: each call succeeds when its
    // 407 arrives and fails when nothing does within 2 s.
    let run = sipp(
        &[
            "-sf",
            &sf,
            &target,
            "-i",
            "127.0.0.9",
            "-p",
            "0",
            "-m",
            &calls,
            "-r",
            "100",
            "-nr",
            "-timeout",
            "60s",
        ],
        Duration::from_secs(90),
    );
    let ok = run.stat("SuccessfulCall(C)").unwrap_or(0);
    let failed = run.stat("FailedCall(C)").unwrap_or(0);
    eprintln!("flood: {ok} answered, {failed} not");
    // The budget is a token bucket of `refusals_per_sec` that refills continuously: a flood
    // empties it in its first ~100 ms, during which it refills by about one token, and the
    // source is then muted. So: about the budget, never more than two seconds' worth.
    assert!(
        (BUDGET..=2 * BUDGET).contains(&ok),
        "{ok} answers (budget {BUDGET}/s):\n{}",
        run.output
    );
    assert_eq!(ok + failed, CALLS, "{:?}", run.stats);

    // The muted address gets nothing, from any port; another address is answered.
    let p = &probes()[8]; // OPTIONS
    let muted = silent_peer("127.0.0.9");
    let req = request(p, 200, muted.local_addr().unwrap(), server.udp_addr());
    muted.send_to(req.as_bytes(), server.udp_addr()).unwrap();
    let got = collect(&muted, Instant::now() + Duration::from_millis(500));
    assert!(got.is_empty(), "a muted source was answered");
    let other = silent_peer("127.0.0.10");
    let req = request(p, 201, other.local_addr().unwrap(), server.udp_addr());
    other.send_to(req.as_bytes(), server.udp_addr()).unwrap();
    let got = collect(&other, Instant::now() + Duration::from_millis(500));
    assert_eq!(got.len(), 1);
    assert_eq!(status_of(&got[0]), Some(200));

    // The metrics say so: one mute, the rest of the flood (and the OPTIONS) dropped.
    let api = server.api.expect("REST address");
    let m = sip_tests::http::request(api, "GET", "/metrics", &[], None).body;
    let metric = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in the metrics:\n{m}"))
    };
    assert_eq!(metric("dialbridge_sip_refusal_mutes_total"), 1);
    assert_eq!(
        metric("dialbridge_sip_refusals_dropped_total"),
        CALLS - ok + 1
    );
    assert_eq!(metric("dialbridge_sip_stateless_answers_total"), ok + 1);
}

/// A configured trunk's address is exempt from the budget.
#[test]
fn a_trunk_is_never_muted() {
    let server = server(
        "refusals_per_sec = 2\nrefusal_mute_secs = 60\n\
         [[trunks]]\nname = \"carrier\"\naddress = \"127.0.0.11:5080\"\n",
    );
    let target = server.udp_addr();
    let trunk = silent_peer("127.0.0.11");
    let stranger = silent_peer("127.0.0.12");
    let p = &probes()[10]; // BYE in no dialog
    for (n, sock) in [(300, &trunk), (400, &stranger)] {
        for i in 0..10 {
            let req = request(p, n + i, sock.local_addr().unwrap(), target);
            sock.send_to(req.as_bytes(), target).unwrap();
        }
    }
    let from_trunk = collect(&trunk, Instant::now() + Duration::from_millis(800));
    // (What arrived meanwhile waits in the socket.)
    let to_stranger = collect(&stranger, Instant::now() + Duration::from_millis(200));
    assert_eq!(from_trunk.len(), 10, "the trunk is answered every time");
    assert_eq!(to_stranger.len(), 2, "the stranger gets its budget");
}

/// A stranger gets its budget; a phone registered from an address is exempt from it.
#[test]
fn a_registered_phone_is_never_muted() {
    let server = server(
        r#"refusals_per_sec = 2
refusal_mute_secs = 60
[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{ key = "ak_test_1", secret = "sk_test_1" }]
webhook_secret = "whsec_test_1"
allowed_prefixes = ["+1"]
[[users]]
id = "user_01h2xcejqtf2nbrexx3vqjhp42"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{ username = "alice-desk", password = "s3cret-desk" }]
"#,
    );
    let target = server.udp_addr();
    let p = &probes()[10]; // BYE in no dialog
    let phone = silent_peer("127.0.0.13");
    let send_ten = |base: usize| {
        for i in 0..10 {
            let req = request(p, base + i, phone.local_addr().unwrap(), target);
            phone.send_to(req.as_bytes(), target).unwrap();
        }
        collect(&phone, Instant::now() + Duration::from_millis(500)).len()
    };
    // A stranger: its budget, then nothing.
    assert_eq!(send_ten(500), 2);
    // A SIPp phone registers (digest: its 401 is within the budget of its fresh address).
    let sf = scenario("register.xml");
    let sf = sf.to_string_lossy();
    let run = sipp(
        &[
            "-sf",
            &sf,
            &target.to_string(),
            "-i",
            "127.0.0.14",
            "-p",
            "0",
            "-m",
            "1",
            "-timeout",
            "15s",
            "-timeout_error",
            "-s",
            "alice-desk",
            "-au",
            "alice-desk",
            "-ap",
            "s3cret-desk",
            "-set",
            "expires",
            "300",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.code, 0, "{}", run.output);
    // From the registered address: every refusal answered.
    let registered = silent_peer("127.0.0.14");
    for i in 0..10 {
        let req = request(p, 600 + i, registered.local_addr().unwrap(), target);
        registered.send_to(req.as_bytes(), target).unwrap();
    }
    let got = collect(&registered, Instant::now() + Duration::from_millis(500));
    assert_eq!(got.len(), 10, "a registered phone is answered every time");
}
