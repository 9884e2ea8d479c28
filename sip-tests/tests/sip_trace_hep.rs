//! Seeing what happened (SPEC §9.6): a whole click-to-call exported as HEPv3 to sngrep
//! listening as a HEP collector, read back with tshark; a collector that goes away in
//! mid-run while the calls go on; the SIP trace in the log (`serve --sip-trace`) showing the
//! INVITE to the carrier whole with its digest response masked; and a log written to a file
//! without colour codes.

use sip_tests::c2c::{self, fixture_with, Fixture, USER};
use sip_tests::http::{request, CallbackReceiver};
use sip_tests::{free_port, TempDir, TestServer};
use std::collections::BTreeSet;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `sngrep -N -q -L udp:127.0.0.1:PORT -O FILE`: a HEP collector without a screen.
struct Sngrep {
    child: Child,
}

impl Sngrep {
    fn start(port: u16, pcap: &Path) -> Sngrep {
        let child = Command::new("sngrep")
            .args(["-N", "-q", "-L", &format!("udp:127.0.0.1:{port}"), "-O"])
            .arg(pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sngrep is installed (Debian package sngrep)");
        // Bounded wait until it listens: its UDP port is taken.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "sngrep never listened on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sngrep { child }
    }

    /// SIGTERM (sngrep writes out its file) and wait.
    fn stop(mut self) {
        sip_tests::terminate(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Sngrep {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (Call-ID, method or status) of each SIP message in a pcap, read by tshark.
fn tshark_sip(pcap: &Path) -> Vec<(String, String)> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-Y",
            "sip",
            "-T",
            "fields",
            "-e",
            "sip.Call-ID",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
        ])
        .output()
        .expect("tshark is installed (Debian package tshark)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let call_id = f.next()?.to_string();
            let method = f.next().unwrap_or("");
            let status = f.next().unwrap_or("");
            let what = if method.is_empty() { status } else { method };
            Some((call_id, what.to_string()))
        })
        .collect()
}

/// The Call-IDs a SIPp peer saw (its `-trace_msg` file).
fn call_ids(messages: &str) -> BTreeSet<String> {
    messages
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            (name.trim().eq_ignore_ascii_case("Call-ID") || name.trim() == "i")
                .then(|| value.trim().to_string())
        })
        .collect()
}

/// How many messages SIPp logged whose first line starts with `start` (`-trace_msg` puts a
/// blank line and a header line before each message).
fn sipp_count(messages: &str, start: &str) -> usize {
    messages
        .lines()
        .filter(|l| l.trim_start().starts_with(start))
        .count()
}

fn metric(api: std::net::SocketAddr, name: &str) -> u64 {
    let m = request(api, "GET", "/metrics", &[], None).body;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{m}"))
}

#[test]
fn click_to_call_is_exported_to_sngrep_as_hep() {
    let dir = TempDir::new("hep");
    let pcap = dir.path().join("hep.pcap");
    let hep_port = free_port();
    let sngrep = Sngrep::start(hep_port, &pcap);
    let f = fixture_with(
        0,
        &format!("[hep]\naddr = \"udp:127.0.0.1:{hep_port}\"\nagent_id = 2001\n"),
    );
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "1000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    // Every message of the call has been handed over; let the sender thread drain.
    let api = f.api();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    loop {
        let sent = metric(api, "dialbridge_hep_packets_sent_total");
        if sent > 0 && sent == last {
            break;
        }
        assert!(Instant::now() < deadline, "HEP packets still going out");
        last = sent;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(metric(api, "dialbridge_hep_packets_dropped_total"), 0);
    sngrep.stop();

    let seen = tshark_sip(&pcap);
    assert!(!seen.is_empty(), "sngrep saved no SIP message");
    let has = |cid: &str, what: &str| seen.iter().any(|(c, w)| c == cid && w == what);
    // The customer leg: the Call-ID the carrier saw.
    let customer = call_ids(&c.output);
    assert_eq!(customer.len(), 1, "{customer:?}");
    let customer = customer.into_iter().next().unwrap_or_default();
    // The agent leg: the Call-ID of the INVITE the phone answered (it also registered, on
    // another Call-ID, through a second SIPp).
    let agent = call_ids(&d.output);
    assert_eq!(agent.len(), 1, "{agent:?}");
    let agent = agent.into_iter().next().unwrap_or_default();
    for (leg, cid) in [("agent", &agent), ("customer", &customer)] {
        for what in ["INVITE", "200", "ACK", "BYE"] {
            assert!(has(cid, what), "{leg} leg {what} ({cid}) missing: {seen:?}");
        }
    }
    // The registration of the agent's device: challenged, then accepted.
    assert!(
        seen.iter().any(|(_, w)| w == "REGISTER"),
        "no REGISTER: {seen:?}"
    );
    assert!(seen.iter().any(|(_, w)| w == "401"), "no 401: {seen:?}");
    // What sngrep saved matches the wire as the peers saw it: as many INVITEs and BYEs
    // on each leg as the SIPp peer logged.
    for (cid, messages) in [(&agent, &d.output), (&customer, &c.output)] {
        for m in ["INVITE", "BYE"] {
            let in_pcap = seen.iter().filter(|(c, w)| c == cid && w == m).count();
            assert_eq!(
                in_pcap,
                sipp_count(messages, &format!("{m} sip:")),
                "{m} on {cid}: {seen:?}\n{messages}"
            );
        }
    }
}

/// A SIP message the collector got: its correlation id and the message.
type SipPacket = (Option<String>, String);
/// An RTCP packet the collector got: its correlation id and the packet.
type RtcpPacket = (Option<String>, Vec<u8>);

/// A HEP collector over TCP that records each packet's correlation chunk and can be stopped.
struct TcpCollector {
    port: u16,
    stop: Arc<AtomicBool>,
    /// (correlation id, payload) of each packet, SIP (type 1) only.
    packets: Arc<Mutex<Vec<SipPacket>>>,
    /// (correlation id, payload) of each RTCP packet (type 5).
    rtcp: Arc<Mutex<Vec<RtcpPacket>>>,
}

fn read_hep(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 6];
    stream.read_exact(&mut head).ok()?;
    if &head[..4] != b"HEP3" {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
    let mut rest = vec![0u8; len.checked_sub(6)?];
    stream.read_exact(&mut rest).ok()?;
    Some(rest)
}

/// (payload type, correlation, payload) from the chunks of one packet.
fn hep_chunks(mut b: &[u8]) -> (u8, Option<String>, Vec<u8>) {
    let (mut kind_of_payload, mut corr, mut payload) = (0, None, Vec::new());
    while b.len() >= 6 {
        let kind = u16::from_be_bytes([b[2], b[3]]);
        let len = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if len < 6 || len > b.len() {
            break;
        }
        let v = &b[6..len];
        match kind {
            0x0011 => corr = Some(String::from_utf8_lossy(v).into_owned()),
            0x000f => payload = v.to_vec(),
            0x000b => kind_of_payload = v.first().copied().unwrap_or(0),
            _ => {}
        }
        b = &b[len..];
    }
    (kind_of_payload, corr, payload)
}

impl TcpCollector {
    fn start() -> TcpCollector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let rtcp = Arc::new(Mutex::new(Vec::new()));
        let (s, p, r) = (Arc::clone(&stop), Arc::clone(&packets), Arc::clone(&rtcp));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                        let (s, p, r) = (Arc::clone(&s), Arc::clone(&p), Arc::clone(&r));
                        std::thread::spawn(move || {
                            while !s.load(Ordering::Relaxed) {
                                match read_hep(&mut conn) {
                                    Some(b) => match hep_chunks(&b) {
                                        (5, corr, payload) => {
                                            r.lock().unwrap().push((corr, payload))
                                        }
                                        (_, corr, payload) => p.lock().unwrap().push((
                                            corr,
                                            String::from_utf8_lossy(&payload).into_owned(),
                                        )),
                                    },
                                    None => {
                                        // A read time-out mid-packet loses the stream's
                                        // framing; the sender reconnects after a drop.
                                        std::thread::sleep(Duration::from_millis(10));
                                    }
                                }
                            }
                            // Dropping the connection: the collector is gone.
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // Dropping the listener: connections are refused from now on.
        });
        TcpCollector {
            port,
            stop,
            packets,
            rtcp,
        }
    }
}

fn answered_call(
    f: &Fixture,
    carrier_scenario: &str,
) -> (String, sip_tests::SippChild, sip_tests::SippChild) {
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier(carrier_scenario, &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    }));
    (id, desk, carrier)
}

#[test]
fn calls_complete_when_the_collector_goes_away_mid_run() {
    let collector = TcpCollector::start();
    let f = fixture_with(
        0,
        &format!(
            "[hep]\naddr = \"tcp:127.0.0.1:{}\"\nagent_id = 7\npassword = \"hep-key\"\n",
            collector.port
        ),
    );
    // First call: the collector takes everything, both legs correlated to the call.
    let (id, desk, carrier) = answered_call(&f, "carrier_answer.xml");
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}",
        f.receiver.accepted()
    );
    // Mid-call, the collector goes away.
    let wait_for = |what: &str, pred: &dyn Fn(&[SipPacket]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pred(&collector.packets.lock().unwrap()) {
            assert!(Instant::now() < deadline, "the collector never got {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("both legs' INVITEs", &|p| {
        p.iter()
            .filter(|(c, m)| c.as_deref() == Some(id.as_str()) && m.starts_with("INVITE "))
            .count()
            >= 2
    });
    // RTCP from the agent's side reaches the relay's agent leg (its RTCP port, the RTP port
    // the phone was offered + 1): after the source's probation, the relay forwards it and
    // the collector gets it as HEP type 5, correlated to the agent leg's SIP Call-ID.
    let relay_port: u16 = desk
        .logs()
        .split("relay_port=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("the phone logged no relay port: {}", desk.logs()));
    let phone_rtcp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let rr = [0x80u8, 201, 0, 1, 0x12, 0x34, 0x56, 0x78];
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.rtcp.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no RTCP reached the collector");
        phone_rtcp
            .send_to(&rr, ("127.0.0.1", relay_port + 1))
            .expect("send RTCP");
        std::thread::sleep(Duration::from_millis(50));
    }
    collector.stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.hangup(&id), 202);
    assert_eq!(carrier.wait(Duration::from_secs(30)).code, 0);
    let d1 = desk.wait(Duration::from_secs(30));
    assert_eq!(d1.code, 0, "{}", d1.output);
    assert_eq!(f.ended(&id)["status"], "completed");

    // The two legs' INVITEs carried the call id in the correlation chunk, each on its own
    // SIP Call-ID.
    let packets = collector.packets.lock().unwrap().clone();
    let legs: BTreeSet<String> = packets
        .iter()
        .filter(|(c, m)| c.as_deref() == Some(id.as_str()) && m.starts_with("INVITE "))
        .filter_map(|(_, m)| {
            m.lines()
                .find_map(|l| l.strip_prefix("Call-ID: ").map(str::to_string))
        })
        .collect();
    assert_eq!(legs.len(), 2, "{packets:?}");
    // The RTCP went as type 5 with the agent leg's SIP Call-ID: the one the phone saw.
    let agent_call_id = call_ids(&d1.output).into_iter().next().unwrap_or_default();
    assert!(legs.contains(&agent_call_id), "{legs:?} {agent_call_id}");
    let rtcp = collector.rtcp.lock().unwrap().clone();
    assert!(
        rtcp.iter()
            .any(|(c, p)| c.as_deref() == Some(agent_call_id.as_str()) && p[..] == rr[..]),
        "{rtcp:?}"
    );
    // A REGISTER is not part of a call.
    assert!(packets
        .iter()
        .any(|(c, m)| c.is_none() && m.starts_with("REGISTER ")));

    // Second call, the collector still gone: it completes all the same.
    let r2 = CallbackReceiver::start(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "500"]);
    let id2 = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": r2.url("/hook"),
    }));
    assert_eq!(carrier.wait(Duration::from_secs(30)).code, 0);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    assert_eq!(f.ended(&id2)["status"], "completed");
    let dropped = metric(f.api(), "dialbridge_hep_packets_dropped_total");
    assert!(dropped > 0, "no HEP packet counted as dropped");
    assert!(
        !f.server.log_text().contains("hep-key"),
        "the HEP key is logged"
    );
}

/// A server started as `dialbridge serve --config FILE --sip-trace` plus `extra`, standard
/// error to a file, `NO_COLOR` unset.
fn traced_fixture(extra_args: &'static [&'static str]) -> Fixture {
    let carrier_port = free_port();
    let wrap = move |bin: &Path, cfg: &Path, _log: &Path| {
        let mut c = Command::new(bin);
        c.args(extra_args)
            .args(["serve", "--config"])
            .arg(cfg)
            .arg("--sip-trace")
            .env_remove("NO_COLOR");
        c
    };
    let server = TestServer::start_wrapped(
        TempDir::new("trace"),
        &c2c::config(carrier_port),
        Some(&wrap),
    );
    Fixture {
        server,
        receiver: CallbackReceiver::start(0),
        carrier_port,
    }
}

#[test]
fn sip_trace_shows_the_invite_to_the_carrier_whole_without_digest_response_or_password() {
    let f = traced_fixture(&[]);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_407.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}",
        f.receiver.accepted()
    );
    assert_eq!(f.hangup(&id), 202);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    assert_eq!(f.ended(&id)["status"], "completed");
    std::thread::sleep(Duration::from_millis(300)); // the log writer thread
    let log = f.server.log_text();

    // The INVITE with credentials, as sent to the carrier: a header line, then the message
    // from its request line to the end of its SDP.
    let to_carrier = format!("-> 127.0.0.1:{} (", f.carrier_port);
    let blocks: Vec<&str> = log
        .split("sip_trace: ")
        .skip(1)
        // Each block ends where the next log line (a time stamp) starts.
        .map(|b| b.split("\n20").next().unwrap_or(b))
        .filter(|b| b.starts_with("sent udp") && b.contains(&to_carrier))
        .collect();
    let invite = blocks
        .iter()
        .find(|b| b.contains("\nINVITE sip:+14155550100@") && b.contains("Proxy-Authorization:"))
        .unwrap_or_else(|| panic!("no traced INVITE with credentials to the carrier:\n{log}"));
    for part in [
        "Via: SIP/2.0/UDP ",
        "From: ",
        "To: ",
        "Call-ID: ",
        "CSeq: ",
        "Contact: ",
        "Content-Type: application/sdp",
        "username=\"acme\"",
        "realm=\"carrier.test\"",
        "response=\"***\"",
        "\r\nv=0\r\n",
        "m=audio ",
    ] {
        assert!(
            invite.contains(part),
            "{part:?} not in the traced INVITE:\n{invite}"
        );
    }
    // The first INVITE, its 407 and the ACK are there too, received ones included.
    assert!(blocks.len() >= 3, "{blocks:?}");
    assert!(
        log.contains("sip_trace: received udp")
            && log.contains("SIP/2.0 407 Proxy Authentication Required"),
        "{log}"
    );
    // The digest response the carrier got is nowhere in the log, nor the trunk password.
    let response = c
        .output
        .lines()
        .filter(|l| l.contains("Proxy-Authorization"))
        .find_map(|l| {
            l.split("response=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("the carrier got no digest response:\n{}", c.output));
    assert_eq!(response.len(), 32, "{response}");
    assert!(
        !log.contains(&response),
        "the digest response is in the log"
    );
    assert!(
        !log.contains("trunk-pass"),
        "the trunk password is in the log"
    );
    assert!(
        !log.contains("s3cret-desk"),
        "a device password is in the log"
    );
    // `serve 2>file`: no colour codes in the file.
    assert!(!log.contains('\u{1b}'), "escape codes in the log file");
}

#[test]
fn sip_trace_in_json_is_one_event_per_message_with_the_message_in_a_field() {
    let f = traced_fixture(&["--log-format", "json"]);
    let target = f.server.udp_addr().to_string();
    let run = sip_tests::sipp_once("options_uac.xml", f.server.udp_addr(), &[], 10);
    assert_eq!(run.code, 0, "{}", run.output);
    std::thread::sleep(Duration::from_millis(300));
    let log = f.server.log_text();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "sip_trace")
        .collect();
    let options = events
        .iter()
        .find(|e| e["fields"]["direction"] == "received")
        .unwrap_or_else(|| panic!("no received message traced:\n{log}"));
    let sip = options["fields"]["sip"].as_str().unwrap_or("");
    assert!(sip.starts_with("OPTIONS sip:"), "{options}");
    assert!(sip.contains("\r\nCSeq: "), "{options}");
    assert_eq!(options["fields"]["transport"], "udp");
    assert_eq!(options["fields"]["local"], target.as_str());
    let answer = events
        .iter()
        .find(|e| e["fields"]["direction"] == "sent")
        .unwrap_or_else(|| panic!("no sent message traced:\n{log}"));
    assert!(
        answer["fields"]["sip"]
            .as_str()
            .unwrap_or("")
            .starts_with("SIP/2.0 200"),
        "{answer}"
    );
    assert!(!log.contains('\u{1b}'), "escape codes in the log file");
}
