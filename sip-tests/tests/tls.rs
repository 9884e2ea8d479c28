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
/// `ca`, `[dns]` at `dns_port`, and the trunk at `trunk_address` over TLS.
fn tls_config(ours: &Issued, ca: &TestCa, dns_port: u16, trunk_address: &str, port: u16) -> String {
    let base = sip_tests::c2c::config(port).replace(
        &format!("address = \"127.0.0.1:{port}\"\ntransport = \"udp\""),
        &format!("address = \"{trunk_address}\"\ntransport = \"tls\""),
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

fn tls_carrier_setup(carrier_names: &[&str]) -> TlsCarrierSetup {
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
    let s = tls_carrier_setup(&["carrier.test"]);
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
    let mut s = tls_carrier_setup(&["elsewhere.test"]);
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
