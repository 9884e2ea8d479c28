//! SIP over TLS (SPEC §9.5) end to end: the real server with a `tls:` listen address and a
//! trunk with `transport = "tls"`, certificates made for each test (rcgen).
//!
//! - The carrier is SIPp behind `socat` terminating TLS with OpenSSL (Debian's SIPp has no
//!   TLS); the carrier's name comes from dnsmasq, so the certificate is checked for the
//!   trunk's host name.
//! - A phone is baresip registering over TLS and taking the call on that connection.
//! - A carrier certificate for another name is refused with a log line that says so; the
//!   server goes on.
//! - SIGHUP makes new handshakes present the certificate now in the files.

use sip_tests::baresip::{Baresip, BaresipConfig, SipTransport};
use sip_tests::c2c::{final_callback, Fixture, USER};
use sip_tests::dns::Dnsmasq;
use sip_tests::http::CallbackReceiver;
use sip_tests::tls::{peer_certificate_subject, Issued, TestCa, TlsFront};
use sip_tests::{free_port, TestServer};
use std::time::{Duration, Instant};

/// The click-to-call configuration with a TLS listen address, `[tls]` from `ours` and
/// `ca`, `[dns]` at `dns_port`, and the trunk at `trunk_address` over TLS (with SDES-SRTP
/// when `sdes`).
fn tls_config(
    ours: &Issued,
    ca: &TestCa,
    dns_port: u16,
    trunk_address: &str,
    port: u16,
    sdes: bool,
) -> String {
    let srtp = if sdes { "\nsrtp = \"sdes\"" } else { "" };
    let base = sip_tests::c2c::config(port).replace(
        &format!("address = \"127.0.0.1:{port}\"\ntransport = \"udp\""),
        &format!("address = \"{trunk_address}\"\ntransport = \"tls\"{srtp}"),
    );
    assert!(
        base.contains("transport = \"tls\""),
        "the trunk was not rewritten"
    );
    format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0"]

[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"

[dns]
servers = ["127.0.0.1:{dns_port}"]
{base}"#,
        cert = ours.cert.display(),
        key = ours.key.display(),
        ca = ca.ca_pem.display(),
    )
}

/// A server whose trunk is `carrier.test:<front port>` over TLS, the front presenting
/// `carrier_identity` and forwarding to a SIPp carrier over TCP on `Fixture::carrier_port`.
struct TlsCarrierSetup {
    f: Fixture,
    front: TlsFront,
    _dns: Dnsmasq,
    _ca: TestCa,
}

fn tls_carrier_setup(carrier_names: &[&str], sdes: bool) -> TlsCarrierSetup {
    let ca = TestCa::new("test-ca");
    let carrier = ca.issue("carrier", carrier_names);
    let ours = ca.issue("dialbridge", &["dialbridge.test", "127.0.0.1"]);
    let sipp_port = free_port();
    let front = TlsFront::start(&carrier, ([127, 0, 0, 1], sipp_port).into());
    let dns = Dnsmasq::start(&["--host-record=carrier.test,127.0.0.1".to_string()]);
    let cfg = tls_config(
        &ours,
        &ca,
        dns.port,
        &format!("carrier.test:{}", front.addr.port()),
        sipp_port,
        sdes,
    );
    let server = TestServer::start(&cfg);
    assert_eq!(server.tls.len(), 1, "no TLS listen address announced");
    TlsCarrierSetup {
        f: Fixture {
            server,
            receiver: CallbackReceiver::start(0),
            carrier_port: sipp_port,
        },
        front,
        _dns: dns,
        _ca: ca,
    }
}

#[test]
fn a_carrier_over_tls_named_by_host_answers_and_the_call_bridges() {
    let s = tls_carrier_setup(&["carrier.test"], false);
    let f = &s.f;
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let tls_port = s.front.addr.port().to_string();
    let carrier = f.carrier(
        "carrier_tls_answer_hangup.xml",
        &["-t", "t1", "-set", "tls_port", &tls_port, "-d", "3000"],
    );
    let id = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}\n{}", c.output, f.server.log_text());
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    // The INVITE said TLS in its Via and Contact (the scenario checks both) and asked for
    // TLS in its Request-URI.
    assert!(
        c.output.contains("ruri=sip:+14155550100@carrier.test:")
            && c.output.contains(";transport=tls"),
        "{}",
        c.output
    );
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    final_callback(&f.receiver, "completed");
    // The media went both ways (plain RTP on both legs here).
    let stats = &call["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    assert!(n("customer", "rx_packets") > 50, "{stats}");
    assert!(n("agent", "tx_packets") > 50, "{stats}");
    assert!(n("agent", "rx_packets") > 50, "{stats}");
    assert!(n("customer", "tx_packets") > 50, "{stats}");
    assert!(
        !f.server.log_text().contains("tls connection refused"),
        "{}",
        f.server.log_text()
    );
}

#[test]
fn a_carrier_certificate_for_another_name_is_refused_with_a_clear_log_line() {
    let mut s = tls_carrier_setup(&["elsewhere.test"], false);
    let desk =
        s.f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let id = s.f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": s.f.receiver.url("/hook"),
    }));
    let call = s.f.ended(&id);
    assert_eq!(call["status"], "failed", "{call}");
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "the agent must get a BYE: {}", d.output);
    let log = s.f.server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("tls connection refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains("carrier.test") && line.contains(&s.front.addr.to_string()),
        "the line names neither the peer nor the name checked: {line}"
    );
    assert!(
        line.contains("NotValidForName") || line.contains("not valid for name"),
        "the line does not say why: {line}"
    );
    assert!(s.f.server.is_running(), "the server stopped");
}

#[test]
fn baresip_registers_over_tls_and_takes_a_call_on_that_connection() {
    let ca = TestCa::new("test-ca");
    let ours = ca.issue("dialbridge", &["dialbridge.test", "127.0.0.1"]);
    let carrier_port = free_port();
    let cfg = format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0"]

[tls]
cert = "{}"
key = "{}"
{}"#,
        ours.cert.display(),
        ours.key.display(),
        sip_tests::c2c::config(carrier_port)
    );
    let f = Fixture {
        server: TestServer::start(&cfg),
        receiver: CallbackReceiver::start(0),
        carrier_port,
    };
    let mut dev = BaresipConfig::device(
        "alice-desk",
        "s3cret-desk",
        f.server.tls[0],
        SipTransport::Tls,
    );
    dev.extra_config
        .push(format!("sip_cafile {}", ca.ca_pem.display()));
    let mut phone = Baresip::start(&dev).expect("baresip starts");
    phone
        .wait_registered(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", f.server.log_text()));
    // The binding says TLS.
    let r = sip_tests::http::request(
        f.api(),
        "GET",
        &format!("/v1/users/{USER}/registrations"),
        &[(
            "Authorization",
            &format!("Bearer {}", sip_tests::c2c::SECRET),
        )],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"transport\":\"tls\""), "{}", r.body);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "3000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}\nbaresip:\n{}", c.output, phone.log_text());
    let call = f.ended(&id);
    assert_eq!(
        call["status"],
        "completed",
        "{call}\nbaresip:\n{}",
        phone.log_text()
    );
    let stats = &call["stats"];
    assert!(
        stats["agent"]["rx_packets"].as_u64().unwrap_or(0) > 50,
        "{stats}"
    );
    // Every request to the phone went on its TLS connection: the server opened none.
    let log = f.server.log_text();
    assert!(
        !log.contains("tls connection refused") && !log.contains("tls handshake failed"),
        "{log}"
    );
}

#[test]
fn sighup_makes_new_handshakes_present_the_certificate_in_the_files() {
    let ca = TestCa::new("test-ca");
    let first = ca.issue("first", &["first.dialbridge.test", "127.0.0.1"]);
    let second = ca.issue("second", &["second.dialbridge.test", "127.0.0.1"]);
    let dir = sip_tests::TempDir::new("tls-reload");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let server = TestServer::start(&format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tls:127.0.0.1:0\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let addr = server.tls[0];
    let (subject, verified) = peer_certificate_subject(addr, &ca.ca_pem);
    assert!(
        subject.contains("first.dialbridge.test") && verified,
        "{subject}"
    );

    // A broken file: the reload fails, says so, and the old pair stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    hup(&server);
    wait_log(&server, "tls certificate and key not reloaded");
    let (subject, _) = peer_certificate_subject(addr, &ca.ca_pem);
    assert!(subject.contains("first.dialbridge.test"), "{subject}");

    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    hup(&server);
    wait_log(&server, "tls certificate and key reloaded");
    let (subject, verified) = peer_certificate_subject(addr, &ca.ca_pem);
    assert!(
        subject.contains("second.dialbridge.test") && verified,
        "{subject}"
    );
}

fn hup(server: &TestServer) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -HUP failed");
}

fn wait_log(server: &TestServer, text: &str) {
    assert!(
        server.wait_log(text, Duration::from_secs(10)),
        "no {text:?} in the log:\n{}",
        server.log_text()
    );
}

// ----- SDES-SRTP toward the carrier --------------------------------------------------------

/// Channel 0 of a 16-bit PCM WAV file, brought to 8 kHz (every n-th sample when the rate
/// is n × 8 kHz).
fn wav_at_8k(path: &std::path::Path) -> Vec<i16> {
    let b = std::fs::read(path).unwrap_or_default();
    let le16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let le32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let (mut channels, mut rate, mut at) = (1usize, 8000u32, 12usize);
    while at + 8 <= b.len() {
        let len = le32(at + 4) as usize;
        let body = at + 8;
        if &b[at..at + 4] == b"fmt " && body + 16 <= b.len() {
            channels = usize::from(le16(body + 2)).max(1);
            rate = le32(body + 4);
        } else if &b[at..at + 4] == b"data" {
            let end = (body + len).min(b.len());
            let step = (rate / 8000).max(1) as usize;
            return b[body..end]
                .chunks_exact(2 * channels)
                .step_by(step)
                .map(|f| i16::from_le_bytes([f[0], f[1]]))
                .collect();
        }
        at = body + len + (len & 1);
    }
    Vec::new()
}

/// baresip as the carrier: over TLS (its own listener, with a certificate of `ca` for
/// 127.0.0.1), SRTP mandatory (`mediaenc=srtp-mand`: it answers only an offer with
/// `a=crypto`), a 440 Hz tone as its voice, what it hears written as WAV.
fn baresip_carrier(ca: &TestCa) -> Baresip {
    let id = ca.issue("carrier", &["127.0.0.1"]);
    // baresip takes certificate and key from one file.
    let both = ca.dir.path().join("carrier-both.pem");
    let pem = format!(
        "{}{}",
        std::fs::read_to_string(&id.cert).unwrap(),
        std::fs::read_to_string(&id.key).unwrap()
    );
    std::fs::write(&both, pem).unwrap();
    let unused: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut cfg = BaresipConfig::device("+14155550100", "unused", unused, SipTransport::Tls);
    cfg.domain = "127.0.0.1".into();
    cfg.register_interval_secs = 0;
    cfg.record_audio = true;
    cfg.account_params.push("mediaenc=srtp-mand".into());
    cfg.extra_config.push("module srtp.so".into());
    cfg.extra_config
        .push(format!("sip_certificate {}", both.display()));
    Baresip::start(&cfg).expect("baresip starts")
}

#[test]
fn an_srtp_carrier_over_tls_hears_its_own_tone_back_through_the_plain_agent() {
    let ca = TestCa::new("test-ca");
    let ours = ca.issue("dialbridge", &["dialbridge.test", "127.0.0.1"]);
    let carrier = baresip_carrier(&ca);
    let carrier_tls =
        std::net::SocketAddr::new(carrier.sip_addr().ip(), carrier.sip_addr().port() + 1);
    sip_tests::tls::wait_listening(carrier_tls);
    let unused_port = free_port();
    let base = sip_tests::c2c::config(unused_port).replace(
        &format!("address = \"127.0.0.1:{unused_port}\"\ntransport = \"udp\""),
        &format!("address = \"{carrier_tls}\"\ntransport = \"tls\"\nsrtp = \"sdes\""),
    );
    assert!(base.contains("srtp = \"sdes\""));
    let cfg = format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0"]

[tls]
cert = "{}"
key = "{}"
ca = "{}"
{base}"#,
        ours.cert.display(),
        ours.key.display(),
        ca.ca_pem.display(),
    );
    let f = Fixture {
        server: TestServer::start(&cfg),
        receiver: CallbackReceiver::start(0),
        carrier_port: unused_port,
    };
    // The agent: SIPp echoing what it gets (plain RTP on its leg).
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.call(&id)["status"] != "in-progress" {
        assert!(
            Instant::now() < deadline,
            "never answered: {}\n{}\nbaresip:\n{}",
            f.call(&id),
            f.server.log_text(),
            carrier.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(f.hangup(&id), 202);
    let call = f.ended(&id);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    let stats = &call["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    // SRTP from the carrier decrypted (counted on its leg), relayed plain to the agent, the
    // agent's echo encrypted back to the carrier; nothing failed authentication.
    assert!(n("customer", "rx_packets") > 50, "{stats}");
    assert!(n("agent", "tx_packets") > 50, "{stats}");
    assert!(n("agent", "rx_packets") > 50, "{stats}");
    assert!(n("customer", "tx_packets") > 50, "{stats}");
    assert_eq!(n("customer", "srtp_dropped"), 0, "{stats}");
    // baresip decrypted what the relay encrypted: its own tone came back.
    let log = carrier.log_text();
    let decoded: Vec<_> = std::fs::read_dir(carrier.dir.path().join("recordings"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    let heard = decoded
        .iter()
        .filter(|p| p.to_string_lossy().contains("dec"))
        .map(|p| wav_at_8k(p))
        .max_by_key(Vec::len)
        .unwrap_or_default();
    assert!(
        heard.len() > 8000,
        "less than a second heard: {decoded:?}\n{log}"
    );
    // Skip the first half second (the echo path filling up).
    let tail = &heard[4000..];
    let p440 = media::g711::tone_power(tail, 440.0);
    let p1000 = media::g711::tone_power(tail, 1000.0);
    assert!(
        p440 > 0.1 && p1000 < 0.05,
        "440 Hz: {p440}, 1 kHz: {p1000}\n{log}"
    );
}

#[test]
fn srtp_that_does_not_authenticate_with_the_carriers_key_is_refused_with_a_log_line() {
    let mut s = tls_carrier_setup(&["carrier.test"], true);
    let f = &mut s.f;
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let tls_port = s.front.addr.port().to_string();
    // It checks our INVITE offered RTP/SAVP with a=crypto, answers with a key, then sends
    // RTP that key does not protect.
    let carrier = f.carrier(
        "carrier_tls_sdes_wrong_key.xml",
        &["-t", "t1", "-set", "tls_port", &tls_port, "-d", "3000"],
    );
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}\n{}", c.output, f.server.log_text());
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let stats = &call["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    assert!(n("customer", "srtp_dropped") > 50, "{stats}");
    assert_eq!(n("customer", "rx_packets"), 0, "nothing taken: {stats}");
    assert_eq!(
        n("agent", "tx_packets"),
        0,
        "nothing reached the agent: {stats}"
    );
    // The refusal is said once per leg, with why.
    let log = f.server.log_text();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("srtp packet refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "once per leg:\n{log}");
    assert!(
        refusals[0].contains("failed authentication") && refusals[0].contains("leg=B"),
        "{}",
        refusals[0]
    );
    // No key in the log.
    assert!(
        !log.contains("WVNfX19zZWNyZXRfX19rZXlfX19hbmRfX19zYWx0"),
        "a key in the log"
    );
    assert!(f.server.is_running());
}
