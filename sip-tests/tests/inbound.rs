//! Inbound calls (SPEC §9.4): a carrier (SIPp, from the trunk's address) calls one of the
//! account's numbers; the owner's device (`dialbridge phone`, auto-answer) takes it, media
//! crosses the relay both ways, and the call log, the callbacks and the metrics say
//! `inbound`. A stranger's INVITE to one of our numbers gets 403 and an unknown number 404, with
//! no call.

use sip_tests::c2c::{config_with_account, SECRET, USER};
use sip_tests::http::{request, CallbackReceiver};
use sip_tests::{free_port, scenario, SippChild, TestServer};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `dialbridge phone` registered as alice-desk, answering with a tone; its stdout lines.
pub fn phone(registrar: SocketAddr, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut args = vec!["--answer"];
    args.extend_from_slice(extra);
    phone_as(registrar, "alice-desk:s3cret-desk", &args)
}

/// `dialbridge phone` registered as `device` (`user:password`), with `extra` arguments; its
/// stdout lines.
fn phone_as(
    registrar: SocketAddr,
    device: &str,
    extra: &[&str],
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(sip_tests::dialbridge_bin())
        .args([
            "phone",
            "--register",
            &format!("{device}@{registrar}"),
            "--calls",
            "1",
            "--for",
            "60",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dialbridge phone");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let hit = line.contains(needle);
        seen.push(line);
        if hit {
            return true;
        }
    }
    false
}

fn calls(api: SocketAddr) -> Vec<serde_json::Value> {
    let r = request(
        api,
        "GET",
        "/v1/calls?limit=50",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"].as_array().cloned().unwrap_or_default()
}

fn call_in(from_ip: &str, from_port: u16, to: SocketAddr, number: &str, sf: &str) -> SippChild {
    let sf = scenario(sf).to_string_lossy().into_owned();
    let (port, mp, target) = (
        from_port.to_string(),
        free_port().to_string(),
        to.to_string(),
    );
    SippChild::spawn(
        "carrier",
        &[
            &target,
            "-sf",
            &sf,
            "-i",
            from_ip,
            "-p",
            &port,
            "-s",
            number,
            "-m",
            "1",
            "-mp",
            &mp,
            "-d",
            "3000",
            "-timeout",
            "40s",
            "-timeout_error",
        ],
    )
}

#[test]
fn an_inbound_call_rings_the_owner_and_is_logged_inbound_with_callbacks() {
    let rx_cb = CallbackReceiver::start(0);
    let carrier_port = free_port();
    let server = TestServer::start(&config_with_account(
        carrier_port,
        &format!("callback_url = \"{}\"", rx_cb.url("/inbound")),
    ));
    let api = server.api.expect("api");
    let (mut ph, rx) = phone(server.udp_addr(), &["--tone", "440"]);
    let mut seen = Vec::new();
    assert!(wait_line(&rx, &mut seen, "phone: registered"), "{seen:?}");

    let carrier = call_in(
        "127.0.0.1",
        carrier_port,
        server.udp_addr(),
        "+14155551234",
        "carrier_call_in.xml",
    );
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}\n{}", c.output, server.log_text());
    assert!(
        c.output.contains("ringing"),
        "the 180 was relayed: {}",
        c.output
    );
    assert!(wait_line(&rx, &mut seen, "phone: ended"), "{seen:?}");
    let ended = seen
        .iter()
        .find(|l| l.contains("phone: ended"))
        .cloned()
        .unwrap_or_default();
    assert!(ended.contains("remote BYE"), "{ended}");
    let nums: Vec<u64> = ended
        .split("): ")
        .nth(1)
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    // "sent N packets (B bytes), received M packets (B bytes), lost L": the carrier's
    // audio reached the phone through the relay.
    assert!(nums.len() >= 4 && nums[0] > 50 && nums[2] > 50, "{ended}");
    let _ = ph.kill();
    let _ = ph.wait();

    // The call log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let call = loop {
        let list = calls(api);
        assert_eq!(list.len(), 1, "{list:?}");
        if list[0]["status"] == "completed" || Instant::now() > deadline {
            break list[0].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["direction"], "inbound", "{call}");
    assert_eq!(call["user_id"], USER);
    assert_eq!(call["caller_id"], "+15557654321");
    assert_eq!(call["destination"], "+14155551234");
    assert_eq!(call["end_leg"], "customer", "the carrier hung up: {call}");
    let id = call["call_id"].as_str().expect("id");
    let full = request(
        api,
        "GET",
        &format!("/v1/calls/{id}"),
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    )
    .json();
    let kinds: Vec<String> = full["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|e| format!("{} {}", e["kind"], e["detail"]["summary"]))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        kinds.iter().any(|k| k.contains("sip.inbound")),
        "{kinds:#?}"
    );
    assert!(
        kinds.iter().any(|k| k.contains("200 OK")),
        "our 200 to the carrier is in the timeline: {kinds:#?}"
    );

    // Callbacks to the account's callback URL: ringing, in-progress, completed, inbound.
    assert!(
        rx_cb.wait_status("completed", Duration::from_secs(20)),
        "{:?}",
        rx_cb.accepted()
    );
    let cbs = rx_cb.accepted();
    let statuses: Vec<&str> = cbs.iter().filter_map(|b| b["status"].as_str()).collect();
    assert_eq!(statuses, ["ringing", "in-progress", "completed"], "{cbs:?}");
    assert!(cbs.iter().all(|b| b["direction"] == "inbound"), "{cbs:?}");
    assert!(rx_cb.deliveries().iter().all(|d| d.path == "/inbound"));

    let m = request(api, "GET", "/metrics", &[], None);
    assert!(
        m.body.contains("dialbridge_calls_inbound_total 1"),
        "{}",
        m.body
    );
}

#[test]
fn a_stranger_calling_our_number_gets_403_an_unknown_number_404_and_no_call() {
    let carrier_port = free_port();
    let server = TestServer::start(&config_with_account(carrier_port, ""));
    let api = server.api.expect("api");
    // From an address that is no trunk (another loopback address), without credentials, to
    // one of the account's numbers: an inbound call from a stranger, refused at once.
    let stranger = call_in(
        "127.0.0.2",
        free_port(),
        server.udp_addr(),
        "+14155551234",
        "carrier_call_in_refused.xml",
    );
    let s = stranger.wait(Duration::from_secs(30));
    assert_eq!(s.code, 0, "{}", s.output);
    assert!(s.output.contains("refused 403"), "{}", s.output);
    // From the trunk, to a number nobody owns.
    let unknown = call_in(
        "127.0.0.1",
        carrier_port,
        server.udp_addr(),
        "+14155559999",
        "carrier_call_in_refused.xml",
    );
    let u = unknown.wait(Duration::from_secs(30));
    assert_eq!(u.code, 0, "{}", u.output);
    assert!(u.output.contains("refused 404"), "{}", u.output);
    assert!(calls(api).is_empty(), "no call was logged");
}

/// An inbound call counts toward the account's `max_concurrent` as a REST call does, on
/// every node sharing the database, and frees its slot when it ends. Two nodes on one
/// PostgreSQL database, `max_concurrent = 1`: while an inbound call is live on node A, a
/// click-to-call through node B gets 429 and a call from the user's other phone, registered
/// to node B, gets 486 (calls from phones are admitted the same way); once the inbound call
/// has ended, node B places a click-to-call.
#[test]
fn an_inbound_call_holds_a_slot_of_the_accounts_concurrent_calls_on_every_node() {
    let url = sip_tests::pg::PgServer::get().fresh_database();
    let carrier_port = free_port();
    let node = |id: &str| {
        format!(
            "[store]\nurl = \"{url}\"\n[node]\nid = \"{id}\"\n{}",
            config_with_account(carrier_port, "max_concurrent = 1")
        )
    };
    let a = TestServer::start(&node("node-a"));
    let b = TestServer::start(&node("node-b"));
    let (api_a, api_b) = (a.api.expect("api a"), b.api.expect("api b"));
    let (mut ph, rx) = phone(a.udp_addr(), &["--tone", "440"]);
    let mut seen = Vec::new();
    assert!(wait_line(&rx, &mut seen, "phone: registered"), "{seen:?}");
    let carrier = call_in(
        "127.0.0.1",
        carrier_port,
        a.udp_addr(),
        "+14155551234",
        "carrier_call_in.xml",
    );
    // Live on node A: answered by the phone (the carrier hangs up 3 s after its ACK).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !calls(api_b).iter().any(|c| c["status"] == "in-progress") {
        assert!(Instant::now() < deadline, "{:?}", calls(api_a));
        std::thread::sleep(Duration::from_millis(50));
    }
    let place = || {
        request(
            api_b,
            "POST",
            "/v1/calls",
            &[
                ("Authorization", &format!("Bearer {SECRET}")),
                ("Content-Type", "application/json"),
            ],
            Some(&serde_json::json!({"user_id": USER, "dial_string": "+14155550100"}).to_string()),
        )
    };
    let r = place();
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "rate_limited", "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("1 calls in progress"),
        "{}",
        r.body
    );
    // A call from the user's other phone to a number, on node B: refused at admission.
    let (mut soft, soft_rx) = phone_as(
        b.udp_addr(),
        "alice-soft:s3cret-soft",
        &["--call", "sip:+14155550100@dialbridge.test"],
    );
    let mut soft_seen = Vec::new();
    assert!(
        wait_line(&soft_rx, &mut soft_seen, "phone: ended"),
        "{soft_seen:?}\n{}",
        b.log_text()
    );
    assert!(
        b.wait_log("call from a phone refused: 486", Duration::from_secs(10)),
        "{soft_seen:?}\n{}",
        b.log_text()
    );
    let _ = soft.kill();
    let _ = soft.wait();

    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}\n{}", c.output, a.log_text());
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls(api_b).first().map(|c| c["status"] != "completed") != Some(false) {
        assert!(Instant::now() < deadline, "{:?}", calls(api_b));
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = place();
    assert_eq!(r.status, 202, "the slot was freed: {}", r.body);
    let _ = ph.kill();
    let _ = ph.wait();
}
