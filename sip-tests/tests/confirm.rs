//! Agent confirm (SPEC §9.4) on the wire: the agent's phone (`dialbridge phone`, which
//! sends RFC 4733 digits) answers, hears the prompt, and only its `1` gets the customer
//! (a SIPp carrier) dialled; with no `1` in `calls.confirm_secs` the call ends `no-answer`
//! on the agent leg and the carrier never sees an INVITE.

use sip_tests::c2c::{config_full, SECRET, USER};
use sip_tests::http::request;
use sip_tests::{free_port, scenario, SippChild, TempDir, TestServer};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn phone(registrar: SocketAddr, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
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

fn carrier(port: u16, sf: &str, timeout: &str) -> SippChild {
    let sf = scenario(sf).to_string_lossy().into_owned();
    let (port, mp) = (port.to_string(), free_port().to_string());
    let c = SippChild::spawn(
        "carrier",
        &[
            "-sf",
            &sf,
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-m",
            "1",
            "-mp",
            &mp,
            "-d",
            "2000",
            "-timeout",
            timeout,
            "-timeout_error",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    c
}

fn place(api: SocketAddr, body: serde_json::Value) -> String {
    let r = request(
        api,
        "POST",
        "/v1/calls",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["call_id"].as_str().expect("call_id").to_string()
}

fn ended(api: SocketAddr, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let c = request(
            api,
            "GET",
            &format!("/v1/calls/{id}"),
            &[("Authorization", &format!("Bearer {SECRET}"))],
            None,
        )
        .json();
        let s = c["status"].as_str().unwrap_or("").to_string();
        if ["completed", "busy", "no-answer", "failed", "canceled"].contains(&s.as_str())
            || Instant::now() > deadline
        {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn timeline(call: &serde_json::Value) -> Vec<String> {
    call["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e["leg"].as_str().unwrap_or("-"),
                        e["detail"]["summary"].as_str().unwrap_or(""),
                        e["detail"]["text"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The received audio the phone recorded (8 kHz mono WAV).
fn recorded(dir: &TempDir) -> Vec<i16> {
    let f = std::fs::read_dir(dir.path())
        .expect("record dir")
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "wav"))
        .expect("the phone wrote its received audio");
    media::g711::parse_wav(&std::fs::read(f.path()).expect("read")).expect("a WAV")
}

#[test]
fn confirm_accepted_with_1_dials_the_customer() {
    let carrier_port = free_port();
    let server = TestServer::start(&config_full(carrier_port, "confirm_secs = 10", ""));
    let api = server.api.expect("api");
    let rec = TempDir::new("agent-audio");
    let rec_dir = rec.path().to_string_lossy().into_owned();
    let (mut ph, rx) = phone(
        server.udp_addr(),
        &[
            "--tone",
            "440",
            "--dtmf",
            "71",
            "--dtmf-after-ms",
            "2500",
            "--record",
            &rec_dir,
        ],
    );
    let mut seen = Vec::new();
    assert!(wait_line(&rx, &mut seen, "phone: registered"), "{seen:?}");
    let c = carrier(carrier_port, "carrier_answer_hangup.xml", "40s");
    let id = place(
        api,
        serde_json::json!({"user_id": USER, "dial_string": "+14155550100", "confirm": true}),
    );
    let run = c.wait(Duration::from_secs(60));
    assert_eq!(run.code, 0, "{}\n{}", run.output, server.log_text());
    assert!(wait_line(&rx, &mut seen, "phone: ended"), "{seen:?}");
    let _ = ph.kill();
    let _ = ph.wait();
    let call = ended(api, &id);
    assert_eq!(call["status"], "completed", "{call}");
    let t = timeline(&call);
    let at = |needle: &str| t.iter().position(|l| l.contains(needle));
    let prompt = at("confirm: prompt played").expect("the prompt is in the timeline");
    let seven = at("DTMF 7 (RFC 4733) ignored").expect("a 7 is ignored");
    let one = at("DTMF 1 (RFC 4733)").expect("the 1 is in the timeline");
    let invite = t
        .iter()
        .position(|l| l.starts_with("customer INVITE"))
        .expect("the customer was dialled");
    assert!(prompt < seven && seven < one && one < invite, "{t:#?}");
    // What the agent heard before pressing 1: the prompt's 660 Hz beeps (its first second,
    // from the answer on), not the carrier.
    let heard = recorded(&rec);
    assert!(heard.len() > 8000, "{} samples", heard.len());
    let p = media::g711::tone_power(&heard[..1600], 660.0);
    assert!(p > 0.3, "the prompt's beep reached the agent: {p}");
}

#[test]
fn confirm_timing_out_never_dials_the_customer() {
    let carrier_port = free_port();
    let server = TestServer::start(&config_full(
        carrier_port,
        "confirm_secs = 2",
        "confirm_calls = true",
    ));
    let api = server.api.expect("api");
    let (mut ph, rx) = phone(
        server.udp_addr(),
        &["--tone", "440", "--dtmf", "5", "--dtmf-after-ms", "500"],
    );
    let mut seen = Vec::new();
    assert!(wait_line(&rx, &mut seen, "phone: registered"), "{seen:?}");
    // A carrier waiting for an INVITE that must not come.
    let c = carrier(carrier_port, "carrier_answer_hangup.xml", "8s");
    let id = place(
        api,
        serde_json::json!({"user_id": USER, "dial_string": "+14155550100"}),
    );
    assert!(wait_line(&rx, &mut seen, "phone: ended"), "{seen:?}");
    let ended_line = seen
        .iter()
        .find(|l| l.contains("phone: ended"))
        .cloned()
        .unwrap_or_default();
    assert!(ended_line.contains("remote BYE"), "{ended_line}");
    let _ = ph.kill();
    let _ = ph.wait();
    let call = ended(api, &id);
    assert_eq!(call["status"], "no-answer", "{call}");
    assert_eq!(call["end_leg"], "agent", "{call}");
    let t = timeline(&call);
    assert!(
        t.iter().any(|l| l.contains("DTMF 5 (RFC 4733) ignored")),
        "{t:#?}"
    );
    assert!(t.iter().any(|l| l.contains("no DTMF 1 in time")), "{t:#?}");
    assert!(!t.iter().any(|l| l.starts_with("customer")), "{t:#?}");
    let run = c.wait(Duration::from_secs(30));
    assert_ne!(run.code, 0, "the carrier got no call: {}", run.output);
    assert!(!run.output.contains("INVITE sip:"), "{}", run.output);
}
