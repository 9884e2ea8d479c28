//! Inbound calls (SPEC §9.4): a carrier (SIPp, from the trunk's address) calls one of the
//! account's numbers; the owner's device (`dialbridge phone`, auto-answer) takes it, media
//! crosses the relay both ways, and the call log, the callbacks and the metrics say
//! `inbound`. A stranger's INVITE gets 403 and an unknown number 404, with no call.

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
    let mut child = Command::new(sip_tests::dialbridge_bin())
        .args([
            "phone",
            "--register",
            &format!("alice-desk:s3cret-desk@{registrar}"),
            "--answer",
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
fn a_stranger_is_challenged_407_and_an_unknown_number_gets_404_and_no_call() {
    let carrier_port = free_port();
    let server = TestServer::start(&config_with_account(carrier_port, ""));
    let api = server.api.expect("api");
    // From an address that is no trunk (another loopback address): it may be a phone
    // placing a call, so it is challenged (and without device credentials never a call).
    let stranger = call_in(
        "127.0.0.2",
        free_port(),
        server.udp_addr(),
        "+14155551234",
        "carrier_call_in_refused.xml",
    );
    let s = stranger.wait(Duration::from_secs(30));
    assert_eq!(s.code, 0, "{}", s.output);
    assert!(s.output.contains("refused 407"), "{}", s.output);
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
