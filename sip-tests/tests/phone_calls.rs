//! Calls placed from a registered phone, against the real binary: the INVITE is challenged
//! (407) and checked against the device's credentials; to a number it goes out through the
//! trunk with the caller ID of a number the user owns; to an extension it rings that user's
//! devices; such calls are logged `"origin": "phone"` and called back at the account's
//! `callback_url`. An INVITE from no trunk and no valid device gets 407, then 403, never a
//! call.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sip_tests::c2c::{config, Fixture, SECRET, USER, WEBHOOK};
use sip_tests::http::{request, CallbackReceiver};
use sip_tests::{free_port, TestServer};

const BOB: &str = "user_01h2xcejqtf2nbrexx3vqjhp51";

fn fixture() -> Fixture {
    let carrier_port = free_port();
    let receiver = CallbackReceiver::start(0);
    let cfg = config(carrier_port).replace(
        &format!("webhook_secret = \"{WEBHOOK}\""),
        &format!(
            "webhook_secret = \"{WEBHOOK}\"\ncallback_url = \"{}\"",
            receiver.url("/account-hook")
        ),
    );
    let cfg = format!(
        "{cfg}\n[[users]]\nid = \"{BOB}\"\naccount = \"acct_01h2xcejqtf2nbrexx3vqjhp41\"\nname = \"Bob\"\nextension = \"1002\"\ndevices = [{{ username = \"bob-desk\", password = \"s3cret-bob\" }}]\n"
    );
    let server = TestServer::start(&cfg);
    assert!(server.api.is_some());
    Fixture {
        server,
        receiver,
        carrier_port,
    }
}

struct Phone {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Phone {
    fn start(args: &[&str]) -> Phone {
        let mut child = Command::new(sip_tests::dialbridge_bin())
            .arg("phone")
            .args(args)
            .args(["--for", "60"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dialbridge phone");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Phone { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.lines().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The account's calls, newest first.
fn calls(f: &Fixture) -> Vec<Value> {
    let r = request(
        f.api(),
        "GET",
        "/v1/calls",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"].as_array().cloned().unwrap_or_default()
}

fn ended_call(f: &Fixture) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(c) = calls(f).first() {
            let id = c["call_id"].as_str().unwrap_or_default().to_string();
            let c = f.call(&id);
            if ["completed", "busy", "no-answer", "failed", "canceled"]
                .contains(&c["status"].as_str().unwrap_or(""))
            {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "{}", f.server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_call_from_a_phone_to_a_number_goes_out_with_the_users_caller_id() {
    let f = fixture();
    let carrier = f.carrier("carrier_answer_play.xml", &[]);
    let reg = format!("alice-desk:s3cret-desk@{}", f.server.udp_addr());
    let phone = Phone::start(&[
        "--register",
        &reg,
        "--call",
        "sip:+14155550100@dialbridge.test",
        "--duration",
        "3",
        "--calls",
        "1",
        "--tone",
        "440",
    ]);
    assert!(
        phone.wait("phone: ended", Duration::from_secs(30)),
        "{:?}\n{}",
        phone.lines(),
        f.server.log_text()
    );
    assert!(
        phone.wait("phone: answered", Duration::from_secs(1)),
        "{:?}",
        phone.lines()
    );
    let run = carrier.wait(Duration::from_secs(15));
    assert_eq!(run.code, 0, "{}", run.output);
    // The caller ID is the number Alice owns (the fixture's only number).
    assert!(
        run.output.contains("from=<sip:+14155551234@"),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("pai=<sip:+14155551234@"),
        "{}",
        run.output
    );
    let call = ended_call(&f);
    assert_eq!(call["origin"], "phone", "{call}");
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["caller_id"], "+14155551234");
    assert_eq!(call["destination"], "+14155550100");
    assert_eq!(call["user_id"], USER);
    assert_eq!(call["status"], "completed", "{call}");
    // Called back at the account's callback_url.
    assert!(f.receiver.wait_status("completed", Duration::from_secs(10)));
    let d = f.receiver.deliveries();
    assert!(d.iter().all(|x| x.path == "/account-hook"), "{d:?}");
    let bodies = f.receiver.accepted();
    assert!(bodies
        .iter()
        .any(|b| b["status"] == "in-progress" && b["origin"] == "phone"));
}

#[test]
fn a_call_from_a_phone_to_an_extension_rings_that_users_devices() {
    let f = fixture();
    let bob_reg = format!("bob-desk:s3cret-bob@{}", f.server.udp_addr());
    let bob = Phone::start(&[
        "--register",
        &bob_reg,
        "--answer",
        "--ring-ms",
        "200",
        "--silent",
    ]);
    assert!(bob.wait("phone: registered", Duration::from_secs(20)));
    let reg = format!("alice-desk:s3cret-desk@{}", f.server.udp_addr());
    let alice = Phone::start(&[
        "--register",
        &reg,
        "--call",
        "sip:1002@dialbridge.test",
        "--duration",
        "3",
        "--calls",
        "1",
    ]);
    assert!(
        alice.wait("phone: ended", Duration::from_secs(30)),
        "{:?}\n{}",
        alice.lines(),
        f.server.log_text()
    );
    assert!(
        bob.wait("phone: answered", Duration::from_secs(5)),
        "{:?}",
        bob.lines()
    );
    assert!(
        bob.wait("phone: ended", Duration::from_secs(10)),
        "{:?}",
        bob.lines()
    );
    let ended = bob
        .lines()
        .into_iter()
        .find(|l| l.contains("phone: ended"))
        .unwrap_or_default();
    let received: u64 = ended
        .split("received ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(received > 20, "Bob got Alice's audio: {ended}");
    let call = ended_call(&f);
    assert_eq!(call["origin"], "phone", "{call}");
    assert_eq!(call["destination"], "1002");
    assert_eq!(call["status"], "completed", "{call}");
}

fn invite(port: u16, branch: &str, cseq: u32, extra: &str) -> String {
    let body = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:+14155550100@dialbridge.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice-desk@dialbridge.test>;tag=t1\r\nTo: <sip:+14155550100@dialbridge.test>\r\nCall-ID: fraud-{branch}@x\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice-desk@127.0.0.2:{port}>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn an_invite_without_valid_device_credentials_gets_407_then_403_and_no_call() {
    let f = fixture();
    // From another loopback address: 127.0.0.1 is the trunk's.
    let sock = UdpSocket::bind("127.0.0.2:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let port = sock.local_addr().expect("addr").port();
    let server = f.server.udp_addr();
    let status_of = |text: &str| -> (u16, String) {
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text.to_string())
    };
    let recv_final = || -> (u16, String) {
        let mut buf = [0u8; 4096];
        loop {
            let (n, _) = sock.recv_from(&mut buf).expect("an answer");
            let (code, text) = status_of(&String::from_utf8_lossy(&buf[..n]));
            if code >= 200 {
                return (code, text);
            }
        }
    };
    sock.send_to(invite(port, "a1", 1, "").as_bytes(), server)
        .expect("send");
    let (code, text) = recv_final();
    assert_eq!(code, 407, "{text}");
    let nonce = text
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a nonce")
        .to_string();
    let auth = format!(
        "Proxy-Authorization: Digest username=\"alice-desk\", realm=\"dialbridge.test\", nonce=\"{nonce}\", uri=\"sip:+14155550100@dialbridge.test\", response=\"00000000000000000000000000000000\", algorithm=MD5\r\n"
    );
    sock.send_to(invite(port, "a2", 2, &auth).as_bytes(), server)
        .expect("send");
    let (code, text) = recv_final();
    assert_eq!(code, 403, "{text}");
    assert!(calls(&f).is_empty(), "no call was made");
}

/// An out-of-dialog INVITE carrying `Replaces` (RFC 3891 §3: a phone replacing a dialog
/// itself) is answered 501 and makes no call, even with `Require: replaces` (which is
/// supported for REFER: attended transfers come as REFER with Replaces).
#[test]
fn an_invite_with_replaces_is_answered_501_and_no_call() {
    let f = fixture();
    let sock = UdpSocket::bind("127.0.0.2:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let port = sock.local_addr().expect("addr").port();
    let extra = "Replaces: abc@x;to-tag=1;from-tag=2\r\nRequire: replaces\r\n";
    sock.send_to(invite(port, "r1", 1, extra).as_bytes(), f.server.udp_addr())
        .expect("send");
    let mut buf = [0u8; 4096];
    let text = loop {
        let (n, _) = sock.recv_from(&mut buf).expect("an answer");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if !text.starts_with("SIP/2.0 1") {
            break text;
        }
    };
    assert!(text.starts_with("SIP/2.0 501"), "{text}");
    assert!(calls(&f).is_empty(), "no call was made");
}
