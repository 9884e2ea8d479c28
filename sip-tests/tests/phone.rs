//! `dialbridge phone` against the real server: it registers as a device (the binding shows
//! in the REST API), auto-answers a click-to-call, plays its tone through the relay to a
//! SIPp carrier, and counts the carrier's audio.

use sip_tests::http::request;
use sip_tests::{free_port, scenario, SippChild, TestServer};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "sk_test_1";
const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";

fn config(carrier_port: u16) -> String {
    format!(
        r#"
[calls]
agent_ring_secs = 8
customer_ring_secs = 8

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{{ key = "ak_test_1", secret = "{SECRET}" }}]
webhook_secret = "whsec_test_1"
allowed_prefixes = ["+1"]

[[users]]
id = "{USER}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
devices = [{{ username = "alice-desk", password = "s3cret-desk" }}]

[[trunks]]
name = "carrier"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
address = "127.0.0.1:{carrier_port}"
transport = "udp"

[[numbers]]
number = "+14155551234"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
owner = "{USER}"
"#
    )
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    needle: &str,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let hit = line.contains(needle);
        seen.push(line);
        if hit {
            return true;
        }
    }
    false
}

#[test]
fn phone_registers_answers_a_click_to_call_and_counts_rtp() {
    let carrier_port = free_port();
    let server = TestServer::start(&config(carrier_port));
    let api = server.api.expect("api");
    let registrar = server.udp_addr().to_string();
    let mut phone = Command::new(sip_tests::dialbridge_bin())
        .args([
            "phone",
            "--register",
            &format!("alice-desk:s3cret-desk@{registrar}"),
            "--answer",
            "--tone",
            "440",
            "--calls",
            "1",
            "--for",
            "60",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dialbridge phone");
    let stdout = phone.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    assert!(
        wait_line(
            &rx,
            &mut seen,
            "phone: registered sip:alice-desk@dialbridge.test",
            Duration::from_secs(20)
        ),
        "{seen:?}"
    );
    let auth = format!("Bearer {SECRET}");
    let regs = request(
        api,
        "GET",
        &format!("/v1/users/{USER}/registrations"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(regs.status, 200, "{}", regs.body);
    assert!(regs.body.contains("alice-desk"), "{}", regs.body);

    let sf = scenario("carrier_answer_hangup.xml")
        .to_string_lossy()
        .into_owned();
    let port = carrier_port.to_string();
    let mp = free_port().to_string();
    let carrier = SippChild::spawn(
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
            "3000",
            "-timeout",
            "40s",
            "-timeout_error",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let placed = request(
        api,
        "POST",
        "/v1/calls",
        &[("Authorization", &auth)],
        Some(&serde_json::json!({"user_id": USER, "dial_string": "+14155550100"}).to_string()),
    );
    assert_eq!(placed.status, 202, "{}", placed.body);
    let id = placed.json()["call_id"]
        .as_str()
        .expect("call_id")
        .to_string();
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    assert!(
        wait_line(&rx, &mut seen, "phone: ended", Duration::from_secs(20)),
        "{seen:?}"
    );
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
    // "sent N packets (B bytes), received M packets (B bytes), lost L"
    assert!(nums.len() >= 4 && nums[0] > 50 && nums[2] > 50, "{ended}");
    assert!(
        seen.iter()
            .any(|l| l.contains("phone: answered") && l.contains("PCM")),
        "{seen:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let call = loop {
        let r = request(
            api,
            "GET",
            &format!("/v1/calls/{id}"),
            &[("Authorization", &auth)],
            None,
        );
        let j = r.json();
        if j["status"] == "completed" || Instant::now() > deadline {
            break j;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(call["status"], "completed", "{call}");
    let n = |leg: &str, k: &str| call["stats"][leg][k].as_u64().unwrap_or(0);
    assert!(
        n("agent", "rx_packets") > 50 && n("customer", "tx_packets") > 50,
        "{call}"
    );
    assert!(
        n("customer", "rx_packets") > 50 && n("agent", "tx_packets") > 50,
        "{call}"
    );
    // The phone leaves by itself after one call, unregistering.
    let (code, _) = sip_tests::wait_limit(phone, Duration::from_secs(15));
    assert_eq!(code, 0);
}
