//! Trunks carriers can rely on (SPEC §9.8): RFC 3263 resolution against a real DNS server
//! (dnsmasq on loopback serving NAPTR, SRV and A records), failover across trunks and
//! targets, health checks, per-trunk limits. Carriers are SIPp (and, for the health checks,
//! a raw UDP peer that answers OPTIONS and INVITE).

use sip_tests::c2c::{final_callback, Fixture, SECRET, USER, WEBHOOK};
use sip_tests::dns::Dnsmasq;
use sip_tests::http::{request, CallbackReceiver};
use sip_tests::{free_port, scenario, SippChild, TestServer};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ----- DNS records ---------------------------------------------------------------------------

/// NAPTR `domain` -> `_sip._udp.domain`, one SRV record per (priority, weight, port) to
/// `edgeN.domain`, each at 127.0.0.1.
fn carrier_records(domain: &str, srv: &[(u16, u16, u16)]) -> Vec<String> {
    let mut r = vec![format!(
        "--naptr-record={domain},10,50,s,SIP+D2U,,_sip._udp.{domain}"
    )];
    for (i, (prio, weight, port)) in srv.iter().enumerate() {
        r.push(format!(
            "--srv-host=_sip._udp.{domain},edge{i}.{domain},{port},{prio},{weight}"
        ));
        r.push(format!("--host-record=edge{i}.{domain},127.0.0.1"));
    }
    r
}

// ----- the server -----------------------------------------------------------------------------

/// One account, one agent, one number, the `trunks` given (TOML `[[trunks]]` tables) and
/// `[dns] servers` pointing at `dns_port`.
fn config(dns_port: Option<u16>, trunks: &str) -> String {
    let dns = dns_port
        .map(|p| format!("[dns]\nservers = [\"127.0.0.1:{p}\"]\n"))
        .unwrap_or_default();
    format!(
        r#"
{dns}
[calls]
agent_ring_secs = 8
shutdown_grace_secs = 1
customer_ring_secs = 8

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{{ key = "ak_test_1", secret = "{SECRET}" }}]
webhook_secret = "{WEBHOOK}"
allowed_prefixes = ["+1"]
calls_per_second = 200
burst = 300
max_concurrent = 300

[[users]]
id = "{USER}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{{ username = "alice-desk", password = "s3cret-desk" }}]

[[numbers]]
number = "+14155551234"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
owner = "{USER}"

{trunks}
"#
    )
}

fn fixture(dns: Option<&Dnsmasq>, trunks: &str) -> Fixture {
    let server = TestServer::start(&config(dns.map(|d| d.port), trunks));
    assert!(server.api.is_some(), "the REST API is not listening");
    Fixture {
        server,
        receiver: CallbackReceiver::start(0),
        carrier_port: 0,
    }
}

/// A SIPp carrier on `port` running `scenario_file` for `calls` calls.
fn carrier(name: &str, port: u16, scenario_file: &str, calls: usize) -> SippChild {
    let sf = scenario(scenario_file).to_string_lossy().into_owned();
    let port = port.to_string();
    let mp = free_port().to_string();
    let m = calls.to_string();
    let c = SippChild::spawn(
        name,
        &[
            "-sf",
            &sf,
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-m",
            &m,
            "-mp",
            &mp,
            "-d",
            "500",
            "-timeout",
            "120s",
            "-timeout_error",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    c
}

fn get(f: &Fixture, path: &str) -> serde_json::Value {
    let r = request(
        f.api(),
        "GET",
        path,
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    );
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

fn metrics(f: &Fixture) -> String {
    request(f.api(), "GET", "/metrics", &[], None).body
}

/// The timeline's lines, as text.
fn timeline(call: &serde_json::Value) -> Vec<String> {
    call["timeline"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn place(f: &Fixture) -> String {
    f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }))
}

/// Polls `GET /v1/trunks/{name}` until `pred` holds (bounded).
fn wait_trunk(
    f: &Fixture,
    name: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let t = get(f, &format!("/v1/trunks/{name}"));
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "trunk {name} never got there: {t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn target(t: &serde_json::Value, port: u16) -> &serde_json::Value {
    t["targets"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["address"] == format!("127.0.0.1:{port}"))
        })
        .unwrap_or(&serde_json::Value::Null)
}

// ----- the tests ------------------------------------------------------------------------------

#[test]
fn failover_from_a_trunk_answering_503_to_the_next_trunk() {
    let (p1, p2) = (free_port(), free_port());
    let f = fixture(
        None,
        &format!(
            r#"
[[trunks]]
name = "backup"
address = "127.0.0.1:{p2}"
priority = 20

[[trunks]]
name = "primary"
address = "127.0.0.1:{p1}"
priority = 5
"#
        ),
    );
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let overloaded = carrier("primary", p1, "carrier_503.xml", 1);
    let backup = carrier("backup", p2, "carrier_answer_hangup.xml", 1);
    let id = place(&f);
    assert_eq!(overloaded.wait(Duration::from_secs(30)).code, 0);
    let b = backup.wait(Duration::from_secs(30));
    assert_eq!(
        b.code, 0,
        "the backup trunk must get the call: {}",
        b.output
    );
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    final_callback(&f.receiver, "completed");
    // Both attempts are in the timeline, in order.
    let tl = timeline(&call);
    let first = tl
        .iter()
        .position(|l| l.contains(&format!("trunk primary udp:127.0.0.1:{p1}")));
    let second = tl
        .iter()
        .position(|l| l.contains(&format!("trunk backup udp:127.0.0.1:{p2}")));
    assert!(
        first.is_some() && second.is_some() && first < second,
        "{tl:#?}"
    );
    assert!(tl.iter().any(|l| l.contains("503")), "{tl:#?}");
    // The 503 came with Retry-After: 60, so that target is down for a minute.
    let t = get(&f, "/v1/trunks/primary");
    assert_eq!(t["state"], "down", "{t}");
    assert_eq!(target(&t, p1)["state"], "down", "{t}");
    assert_eq!(target(&t, p1)["last_answer"], "503", "{t}");
    assert_eq!(get(&f, "/v1/trunks/backup")["state"], "up");
    let m = metrics(&f);
    assert!(
        m.contains("dialbridge_trunk_attempts_total{trunk=\"primary\",code=\"503\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("dialbridge_trunk_attempts_total{trunk=\"backup\",code=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "dialbridge_trunk_up{{trunk=\"primary\",target=\"127.0.0.1:{p1}\"}} 0"
        )),
        "{m}"
    );
    // The state change is logged once.
    let log = f.server.log_text();
    assert_eq!(log.matches("trunk target down").count(), 1, "{log}");
}

#[test]
fn failover_from_a_dead_srv_target_to_the_next_by_priority() {
    let (dead, live) = (free_port(), free_port());
    let dns = Dnsmasq::start(&carrier_records(
        "carrier.test",
        &[(10, 50, dead), (20, 50, live)],
    ));
    let f = fixture(
        Some(&dns),
        r#"
[[trunks]]
name = "edges"
address = "carrier.test"
invite_timeout_ms = 500
"#,
    );
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let edge = carrier("edge", live, "carrier_answer_hangup.xml", 1);
    let id = place(&f);
    let e = edge.wait(Duration::from_secs(30));
    assert_eq!(
        e.code, 0,
        "the priority-20 edge must get the call: {}",
        e.output
    );
    // The Request-URI names the carrier's domain (RFC 3263), not the edge's address.
    assert!(
        e.output
            .contains("INVITE sip:+14155550100@carrier.test SIP/2.0"),
        "{}",
        e.output
    );
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let tl = timeline(&call);
    // Nothing listens there: no answer within invite_timeout_ms (or, where the kernel
    // reports the ICMP port unreachable, a transport error).
    let dead_at = tl.iter().position(|l| {
        l.contains(&format!("udp:127.0.0.1:{dead}: no answer within 500 ms"))
            || l.contains(&format!("udp:127.0.0.1:{dead}: the transport failed"))
    });
    let live_at = tl.iter().position(|l| {
        l.contains(&format!(
            "INVITE sip:+14155550100@carrier.test (trunk edges udp:127.0.0.1:{live})"
        ))
    });
    assert!(
        dead_at.is_some() && live_at.is_some() && dead_at < live_at,
        "{tl:#?}"
    );
    let t = get(&f, "/v1/trunks/edges");
    assert_eq!(t["resolved_by"], "naptr", "{t}");
    assert_eq!(t["targets"].as_array().map(Vec::len), Some(2), "{t}");
    let m = metrics(&f);
    assert!(
        m.contains("dialbridge_trunk_attempts_total{trunk=\"edges\",code=\"timeout\"} 1")
            || m.contains(
                "dialbridge_trunk_attempts_total{trunk=\"edges\",code=\"transport_error\"} 1"
            ),
        "{m}"
    );
}

#[test]
fn weights_spread_calls_as_configured() {
    const CALLS: usize = 200;
    let (heavy, light) = (free_port(), free_port());
    // Same priority, weights 80 / 20; no NAPTR here: the SRV lookup of _sip._udp is direct.
    let records = vec![
        format!("--srv-host=_sip._udp.weighted.test,a.weighted.test,{heavy},10,80"),
        format!("--srv-host=_sip._udp.weighted.test,b.weighted.test,{light},10,20"),
        "--host-record=a.weighted.test,127.0.0.1".to_string(),
        "--host-record=b.weighted.test,127.0.0.1".to_string(),
    ];
    let dns = Dnsmasq::start(&records);
    let f = fixture(
        Some(&dns),
        r#"
[[trunks]]
name = "weighted"
address = "weighted.test"
"#,
    );
    let calls = CALLS.to_string();
    let desk = f.phone(
        "alice-desk",
        "s3cret-desk",
        "agent_answer.xml",
        &["-m", &calls],
    );
    // Both answer 486: the customer's answer, so each call tries exactly one edge.
    let a = carrier("heavy", heavy, "carrier_busy.xml", CALLS);
    let b = carrier("light", light, "carrier_busy.xml", CALLS);
    let mut ids = Vec::new();
    for wave in 0..(CALLS / 25) {
        let batch: Vec<String> = (0..25).map(|_| place(&f)).collect();
        for id in &batch {
            let c = f.ended(id);
            assert_eq!(c["status"], "busy", "wave {wave}: {c}");
        }
        ids.extend(batch);
    }
    assert_eq!(ids.len(), CALLS);
    let to_heavy = a.logs().matches("INVITE relay_port").count();
    let to_light = b.logs().matches("INVITE relay_port").count();
    drop((a, b, desk));
    eprintln!("weights 80/20 over {CALLS} calls: {to_heavy}/{to_light}");
    assert_eq!(to_heavy + to_light, CALLS, "{to_heavy} + {to_light}");
    // 80 % of 200 = 160, standard deviation about 5.7: a band of more than 4 of them.
    assert!(
        (135..=185).contains(&to_heavy),
        "weights 80/20 gave {to_heavy}/{to_light}"
    );
}

/// A raw UDP carrier: answers OPTIONS with 200 and INVITE with 100 + 486 (ACK absorbed),
/// counting what it got.
struct RawCarrier {
    invites: Arc<AtomicUsize>,
    options: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawCarrier {
    fn start(port: u16) -> RawCarrier {
        let sock = UdpSocket::bind(("127.0.0.1", port)).expect("bind raw carrier");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let invites = Arc::new(AtomicUsize::new(0));
        let options = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (i, o, s) = (invites.clone(), options.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let method = text.split(' ').next().unwrap_or("").to_string();
                let copy = |name: &str| -> Vec<String> {
                    text.lines()
                        .filter(|l| {
                            l.to_ascii_lowercase()
                                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
                        })
                        .map(str::to_string)
                        .collect()
                };
                let answer = |status: &str, tag: bool| {
                    let mut r = format!("SIP/2.0 {status}\r\n");
                    for h in ["Via", "From", "Call-ID", "CSeq"] {
                        for l in copy(h) {
                            r.push_str(&l);
                            r.push_str("\r\n");
                        }
                    }
                    for l in copy("To") {
                        r.push_str(&l);
                        if tag {
                            r.push_str(";tag=raw1");
                        }
                        r.push_str("\r\n");
                    }
                    r.push_str("Content-Length: 0\r\n\r\n");
                    r
                };
                match method.as_str() {
                    "OPTIONS" => {
                        o.fetch_add(1, Ordering::Relaxed);
                        let _ = sock.send_to(answer("200 OK", true).as_bytes(), from);
                    }
                    "INVITE" => {
                        i.fetch_add(1, Ordering::Relaxed);
                        let _ = sock.send_to(answer("100 Trying", false).as_bytes(), from);
                        let _ = sock.send_to(answer("486 Busy Here", true).as_bytes(), from);
                    }
                    _ => {}
                }
            }
        });
        RawCarrier {
            invites,
            options,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RawCarrier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_down_target_is_skipped_and_taken_back_when_it_answers() {
    let (first, second) = (free_port(), free_port());
    let dns = Dnsmasq::start(&carrier_records(
        "health.test",
        &[(10, 50, first), (20, 50, second)],
    ));
    let f = fixture(
        Some(&dns),
        r#"
[[trunks]]
name = "checked"
address = "health.test"
options_interval_secs = 1
down_after = 2
up_after = 2
"#,
    );
    let desk = f.phone(
        "alice-desk",
        "s3cret-desk",
        "agent_answer.xml",
        &["-m", "2"],
    );
    // Only the second edge runs: the first fails its checks and goes down.
    let backup = RawCarrier::start(second);
    let t = wait_trunk(&f, "checked", Duration::from_secs(20), |t| {
        target(t, first)["state"] == "down"
    });
    assert_eq!(t["state"], "up", "one target is still up: {t}");
    assert_eq!(target(&t, second)["state"], "up", "{t}");
    assert!(
        backup.options.load(Ordering::Relaxed) > 0,
        "the live edge is checked too"
    );
    // A call skips the down edge: straight to the second, no time lost on the first.
    let id = place(&f);
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    assert_eq!(backup.invites.load(Ordering::Relaxed), 1);
    let tl = timeline(&call);
    assert!(
        !tl.iter().any(|l| l.contains(&format!("127.0.0.1:{first}"))),
        "the down target must not be tried: {tl:#?}"
    );
    let m = metrics(&f);
    assert!(
        m.contains(&format!(
            "dialbridge_trunk_up{{trunk=\"checked\",target=\"127.0.0.1:{first}\"}} 0"
        )),
        "{m}"
    );
    // The first edge comes back: after up_after answered checks it takes calls again.
    let primary = RawCarrier::start(first);
    wait_trunk(&f, "checked", Duration::from_secs(20), |t| {
        target(t, first)["state"] == "up"
    });
    let id = place(&f);
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    assert_eq!(
        primary.invites.load(Ordering::Relaxed),
        1,
        "priority 10 again"
    );
    assert_eq!(backup.invites.load(Ordering::Relaxed), 1);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    // Each change was logged once, though the checks failed many times.
    let log = f.server.log_text();
    let target_field = format!("127.0.0.1:{first}");
    let downs = log
        .lines()
        .filter(|l| l.contains("trunk target down") && l.contains(&target_field))
        .count();
    let ups = log
        .lines()
        .filter(|l| l.contains("trunk target up") && l.contains(&target_field))
        .count();
    assert_eq!((downs, ups), (1, 1), "{log}");
}

#[test]
fn max_calls_is_honoured() {
    let (capped, overflow) = (free_port(), free_port());
    let f = fixture(
        None,
        &format!(
            r#"
[[trunks]]
name = "capped"
address = "127.0.0.1:{capped}"
priority = 1
max_calls = 1

[[trunks]]
name = "overflow"
address = "127.0.0.1:{overflow}"
priority = 2
"#
        ),
    );
    let desk = f.phone(
        "alice-desk",
        "s3cret-desk",
        "agent_answer.xml",
        &["-m", "2"],
    );
    let ringing = carrier("capped", capped, "carrier_ring_forever.xml", 1);
    let busy = carrier("overflow", overflow, "carrier_busy.xml", 1);
    // The first call takes the capped trunk's only channel and rings there.
    let first = place(&f);
    assert!(
        ringing.wait_log("INVITE relay_port", Duration::from_secs(20)),
        "the first call must reach the capped trunk"
    );
    let t = get(&f, "/v1/trunks/capped");
    assert_eq!(t["calls_in_progress"], 1, "{t}");
    // The second is sent to the next trunk.
    let second = place(&f);
    assert_eq!(busy.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&second);
    assert_eq!(call["status"], "busy", "{call}");
    let tl = timeline(&call);
    assert!(
        tl.iter()
            .any(|l| l.contains("trunk capped at its call limit")),
        "{tl:#?}"
    );
    assert_eq!(f.hangup(&first), 202);
    assert_eq!(ringing.wait(Duration::from_secs(30)).code, 0);
    f.ended(&first);
    assert_eq!(get(&f, "/v1/trunks/capped")["calls_in_progress"], 0);
    drop(desk);
}

#[test]
fn a_full_trunk_with_nothing_after_it_fails_the_call_saying_so() {
    let capped = free_port();
    let f = fixture(
        None,
        &format!(
            r#"
[[trunks]]
name = "capped"
address = "127.0.0.1:{capped}"
max_calls = 1
"#
        ),
    );
    let desk = f.phone(
        "alice-desk",
        "s3cret-desk",
        "agent_answer.xml",
        &["-m", "2"],
    );
    let ringing = carrier("capped", capped, "carrier_ring_forever.xml", 1);
    let first = place(&f);
    assert!(ringing.wait_log("INVITE relay_port", Duration::from_secs(20)));
    let second = place(&f);
    let call = f.ended(&second);
    assert_eq!(call["status"], "failed", "{call}");
    let text = call.to_string();
    assert!(text.contains("capped at its call limit"), "{call}");
    assert_eq!(f.hangup(&first), 202);
    assert_eq!(ringing.wait(Duration::from_secs(30)).code, 0);
    drop(desk);
}

#[test]
fn a_486_does_not_fail_over() {
    let (p1, p2) = (free_port(), free_port());
    let f = fixture(
        None,
        &format!(
            r#"
[[trunks]]
name = "primary"
address = "127.0.0.1:{p1}"
priority = 1

[[trunks]]
name = "backup"
address = "127.0.0.1:{p2}"
priority = 2
"#
        ),
    );
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let busy = carrier("primary", p1, "carrier_busy.xml", 1);
    let backup = carrier("backup", p2, "carrier_answer.xml", 1);
    let id = place(&f);
    assert_eq!(busy.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    let cb = final_callback(&f.receiver, "busy");
    assert_eq!(cb["sip_code"], 486);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    // The backup never heard of the call.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!backup.logs().contains("INVITE"), "{}", backup.logs());
    let tl = timeline(&call);
    assert!(!tl.iter().any(|l| l.contains("trunk backup")), "{tl:#?}");
    assert_eq!(get(&f, "/v1/trunks/primary")["state"], "up");
}
