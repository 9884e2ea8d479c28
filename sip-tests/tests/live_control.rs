//! Live call control against the real binary: a supervisor's monitor in each mode (every
//! party sends its own tone, what each hears is told apart by frequency with a Goertzel
//! filter), mute by packet counts, hold and resume seen on the wire (a SIPp carrier that
//! requires `a=sendonly` then `a=sendrecv`), blind transfers by REFER from a SIPp agent
//! (success: the customer's RTP reaches the new party and the agent is released; failure:
//! the call goes on; a forbidden destination: NOTIFY 403 and nothing dialled), and an API
//! transfer to a forbidden number refused; an attended transfer with Replaces from a SIPp
//! phone with two calls; warm transfers over the API, completed and cancelled (the held
//! customer seen on the wire, who hears whom told by frequency).
//!
//! The phones that send tones and record what they hear are `dialbridge phone` (the `ua`
//! crate's built-in phone).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use media::g711::{parse_wav, tone_power};
use serde_json::{json, Value};
use sip_tests::c2c::{fixture_with, Fixture, SECRET, USER};
use sip_tests::http::request;
use sip_tests::{SippChild, TempDir};

const SUP: &str = "user_01h2xcejqtf2nbrexx3vqjhp50";
const BOB: &str = "user_01h2xcejqtf2nbrexx3vqjhp51";

const AGENT_HZ: f64 = 440.0;
const CUSTOMER_HZ: f64 = 1000.0;
const SUPERVISOR_HZ: f64 = 1800.0;

/// The supervisor and Bob (extension 1002), besides the fixture's agent.
fn extra_users() -> String {
    format!(
        r#"
[[users]]
id = "{SUP}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Sam Supervisor"
extension = "1009"
devices = [{{ username = "sam-desk", password = "s3cret-sam" }}]

[[users]]
id = "{BOB}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Bob"
extension = "1002"
devices = [{{ username = "bob-desk", password = "s3cret-bob" }}]
"#
    )
}

/// `dialbridge phone` with its stdout lines collected.
struct Phone {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    record: Option<TempDir>,
}

impl Phone {
    fn start(args: &[&str], record: bool) -> Phone {
        let dir = record.then(|| TempDir::new("rec"));
        let mut cmd = Command::new(sip_tests::dialbridge_bin());
        cmd.arg("phone").args(args).args(["--for", "120"]);
        if let Some(d) = &dir {
            cmd.arg("--record").arg(d.path());
        }
        let mut child = cmd
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
        Phone {
            child,
            lines,
            record: dir,
        }
    }

    /// A phone registered as `device` that answers and sends `tone` (0: silent).
    fn registered(f: &Fixture, device: &str, password: &str, tone: f64, record: bool) -> Phone {
        let reg = format!("{device}:{password}@{}", f.server.udp_addr());
        let hz = tone.to_string();
        let mut args = vec!["--register", reg.as_str(), "--answer", "--ring-ms", "200"];
        if tone > 0.0 {
            args.extend(["--tone", hz.as_str()]);
        } else {
            args.push("--silent");
        }
        let p = Phone::start(&args, record);
        assert!(
            p.wait_count("phone: registered", 1, Duration::from_secs(20)),
            "{device} did not register: {:?}",
            p.lines()
        );
        p
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    fn wait_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.count(needle) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The samples of the newest recording.
    fn last_recording(&self) -> Vec<i16> {
        let dir = self.record.as_ref().expect("recording phone").path();
        let newest = std::fs::read_dir(dir)
            .expect("record dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wav"))
            .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
        let path: PathBuf = newest.expect("a recording");
        parse_wav(&std::fs::read(&path).expect("read wav")).expect("a WAV file")
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The share of 50 ms blocks of `samples` in which `hz` is strong: near 1 for a tone heard
/// throughout, near 0 for one never heard.
fn heard(samples: &[i16], hz: f64) -> f64 {
    let blocks: Vec<&[i16]> = samples
        .chunks(400)
        .filter(|b| b.len() == 400 && b.iter().any(|&s| s != 0))
        .collect();
    if blocks.is_empty() {
        return 0.0;
    }
    let hits = blocks.iter().filter(|b| tone_power(b, hz) > 0.05).count();
    hits as f64 / blocks.len() as f64
}

/// Which of the agent's, the customer's and the supervisor's tones `samples` carry.
fn tones(samples: &[i16]) -> [bool; 3] {
    [AGENT_HZ, CUSTOMER_HZ, SUPERVISOR_HZ].map(|hz| {
        let h = heard(samples, hz);
        assert!(
            !(0.02..0.15).contains(&h),
            "{hz} Hz in {:.0} % of the blocks: neither clearly heard nor clearly absent",
            h * 100.0
        );
        h >= 0.15
    })
}

fn api(f: &Fixture, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let r = request(
        f.api(),
        method,
        path,
        &[("Authorization", &format!("Bearer {SECRET}"))],
        text.as_deref(),
    );
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

/// Waits (bounded) until the call's timeline has an entry of `kind`.
fn wait_timeline(f: &Fixture, id: &str, kind: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let c = f.call(id);
        if c["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["kind"] == kind))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn wait_status(f: &Fixture, id: &str, status: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f.call(id)["status"] == status {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn place(f: &Fixture) -> String {
    f.place(json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/cb"),
    }))
}

fn events_of(f: &Fixture, call: &str) -> Vec<Value> {
    f.receiver
        .accepted()
        .into_iter()
        .filter(|b| b["call_id"] == call && b.get("event").is_some())
        .collect()
}

#[test]
fn a_monitor_in_each_mode_is_heard_by_frequency() {
    let f = fixture_with(0, &extra_users());
    let agent = Phone::registered(&f, "alice-desk", "s3cret-desk", AGENT_HZ, true);
    let sup = Phone::registered(&f, "sam-desk", "s3cret-sam", SUPERVISOR_HZ, true);
    // The customer: a phone on the trunk's address, answering the carrier leg.
    let listen = format!("udp:127.0.0.1:{}", f.carrier_port);
    let customer = Phone::start(
        &[
            "--listen",
            &listen,
            "--answer",
            "--ring-ms",
            "100",
            "--tone",
            "1000",
        ],
        true,
    );
    assert!(customer.wait_count("phone: SIP on", 1, Duration::from_secs(10)));

    // (mode at the start, mode switched to halfway through).
    let runs = [
        ("listen", None),
        ("whisper", None),
        ("listen", Some("barge")),
    ];
    for (n, (mode, then)) in runs.iter().enumerate() {
        let id = place(&f);
        assert!(
            wait_status(&f, &id, "in-progress", Duration::from_secs(20)),
            "{}",
            f.server.log_text()
        );
        let (st, v) = api(
            &f,
            "POST",
            &format!("/v1/calls/{id}/monitor"),
            Some(json!({"user_id": SUP, "mode": mode})),
        );
        assert_eq!(st, 201, "{v}");
        let monitor_id = v["monitor_id"].as_str().expect("monitor_id").to_string();
        assert!(
            wait_timeline(&f, &id, "monitor_started", Duration::from_secs(10)),
            "{}",
            f.server.log_text()
        );
        std::thread::sleep(Duration::from_millis(2500));
        if let Some(next) = then {
            let (st, v) = api(
                &f,
                "PATCH",
                &format!("/v1/calls/{id}/monitor/{monitor_id}"),
                Some(json!({"mode": next})),
            );
            assert_eq!(st, 200, "{v}");
            std::thread::sleep(Duration::from_millis(2500));
        }
        assert_eq!(f.hangup(&id), 202);
        for p in [&agent, &sup, &customer] {
            assert!(
                p.wait_count("phone: ended", n + 1, Duration::from_secs(15)),
                "{:?}",
                p.lines()
            );
        }
        let (a, c, s) = (
            tones(&agent.last_recording()),
            tones(&customer.last_recording()),
            tones(&sup.last_recording()),
        );
        // [agent's tone, customer's tone, supervisor's tone] as heard by each.
        assert_eq!(
            s,
            [true, true, false],
            "{mode}: the supervisor hears both sides"
        );
        match (*mode, *then) {
            ("listen", None) => {
                assert_eq!(a, [false, true, false], "listen: agent");
                assert_eq!(c, [true, false, false], "listen: customer");
            }
            ("whisper", None) => {
                assert_eq!(
                    a,
                    [false, true, true],
                    "whisper: the agent hears the supervisor"
                );
                assert_eq!(c, [true, false, false], "whisper: the customer does not");
            }
            (_, Some("barge")) => {
                assert_eq!(a, [false, true, true], "barge: agent");
                assert_eq!(
                    c,
                    [true, false, true],
                    "barge: the customer hears the supervisor"
                );
            }
            _ => unreachable!(),
        }
        let evs = events_of(&f, &id);
        assert!(
            evs.iter()
                .any(|e| e["event"] == "call.monitor_started"
                    && e["monitor_id"] == monitor_id.as_str()),
            "{evs:?}"
        );
    }
}

#[test]
fn hold_and_resume_on_the_wire_and_mute_by_packet_counts() {
    let f = fixture_with(0, "");
    let _agent = Phone::registered(&f, "alice-desk", "s3cret-desk", AGENT_HZ, false);
    let carrier = f.carrier("carrier_hold_unhold.xml", &[]);
    let id = place(&f);
    assert!(
        wait_status(&f, &id, "in-progress", Duration::from_secs(20)),
        "{}",
        f.server.log_text()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let mute = |m: bool| {
        let (st, v) = api(
            &f,
            "POST",
            &format!("/v1/calls/{id}/mute"),
            Some(json!({"leg": "agent", "muted": m})),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["muted"], m);
    };
    mute(true);
    std::thread::sleep(Duration::from_millis(2000));
    mute(false);
    std::thread::sleep(Duration::from_millis(1000));
    let (st, v) = api(&f, "POST", &format!("/v1/calls/{id}/hold"), None);
    assert_eq!(st, 202, "{v}");
    assert!(carrier.wait_log("REINVITE sendonly", Duration::from_secs(5)));
    // A second hold is refused while held.
    let (st, v) = api(&f, "POST", &format!("/v1/calls/{id}/hold"), None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("call_not_in_progress"))
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (st, v) = api(&f, "POST", &format!("/v1/calls/{id}/unhold"), None);
    assert_eq!(st, 202, "{v}");
    assert!(carrier.wait_log("REINVITE sendrecv", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.hangup(&id), 202);
    let run = carrier.wait(Duration::from_secs(15));
    assert_eq!(run.code, 0, "{}", run.output);
    let call = f.ended(&id);
    // The agent's phone sent all along (50 packets/s); the relay passed none of it to the
    // customer for the 2 s of mute (during the 1 s of hold the customer got the hold tone's
    // packets instead, as many as the agent's).
    let rx = call["stats"]["agent"]["rx_packets"]
        .as_u64()
        .expect("agent rx");
    let tx = call["stats"]["customer"]["tx_packets"]
        .as_u64()
        .expect("customer tx");
    assert!(rx > 200, "{call}");
    let withheld = rx - tx;
    assert!(
        (80..=160).contains(&withheld),
        "agent sent {rx}, customer got {tx}: {withheld} withheld"
    );
    assert!(tx > 100, "audio flowed before and after: {tx}");
    // The final status callback follows the live ones (one call's callbacks go in order).
    assert!(f.receiver.wait_status("completed", Duration::from_secs(10)));
    let evs: Vec<String> = events_of(&f, &id)
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(evs.contains(&"call.held".to_string()), "{evs:?}");
    assert!(evs.contains(&"call.resumed".to_string()), "{evs:?}");
    let timeline = call["timeline"].to_string();
    assert!(timeline.contains("\"muted\""), "{timeline}");
}

/// A SIPp agent that REFERs to `target`; `hangup`: it hangs up itself after the final
/// NOTIFY (a failed transfer).
fn refer_agent(f: &Fixture, target: &str, hangup: bool) -> SippChild {
    let sf = if hangup {
        "agent_answer_refer_hangup.xml"
    } else {
        "agent_answer_refer.xml"
    };
    f.phone(
        "alice-desk",
        "s3cret-desk",
        sf,
        &["-set", "target", target, "-d", "1500"],
    )
}

#[test]
fn a_blind_refer_bridges_the_customer_to_the_target_and_releases_the_agent() {
    let f = fixture_with(0, &extra_users());
    // Bob sends RTP as a phone does: the relay latches onto the source it hears on a leg, and
    // the transferor's last packets (sent until it takes the BYE) may latch it first.
    let bob = Phone::registered(&f, "bob-desk", "s3cret-bob", SUPERVISOR_HZ, false);
    let agent = refer_agent(&f, "1002", false);
    let carrier = f.carrier("carrier_answer_play.xml", &[]);
    let id = place(&f);
    if !agent.wait_log("RELEASED", Duration::from_secs(30)) {
        panic!("{}", agent.wait(Duration::from_secs(1)).output);
    }
    let logs = agent.logs();
    assert!(logs.contains("REFER 202"), "{logs}");
    assert!(logs.contains("NOTIFY 100"), "{logs}");
    assert!(logs.contains("NOTIFY 200"), "{logs}");
    let run = agent.wait(Duration::from_secs(10));
    assert_eq!(run.code, 0, "{}", run.output);
    // The customer's audio now reaches Bob.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(f.call(&id)["status"], "in-progress");
    assert_eq!(f.hangup(&id), 202);
    assert!(bob.wait_count("phone: ended", 1, Duration::from_secs(15)));
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
    assert!(received > 20, "Bob got {received} packets: {ended}");
    let _ = carrier.wait(Duration::from_secs(10));
    let call = f.ended(&id);
    assert_eq!(call["legs"]["agent"]["transferred_to"], "1002", "{call}");
    assert!(f.receiver.wait_status("completed", Duration::from_secs(10)));
    let evs = events_of(&f, &id);
    let t = evs
        .iter()
        .find(|e| e["event"] == "call.transferred")
        .unwrap_or_else(|| panic!("{evs:?}"));
    assert_eq!(t["by"], "phone");
    assert_eq!(t["to"], "1002");
}

#[test]
fn a_failed_blind_refer_leaves_the_call_going_on() {
    let f = fixture_with(0, &extra_users());
    let _bob = Phone::start(
        &[
            "--register",
            &format!("bob-desk:s3cret-bob@{}", f.server.udp_addr()),
            "--reject",
            "486",
        ],
        false,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let agent = refer_agent(&f, "1002", true);
    let carrier = f.carrier("carrier_answer_play.xml", &[]);
    let id = place(&f);
    assert!(
        agent.wait_log("NOTIFY 486", Duration::from_secs(30)),
        "{}\n{}",
        agent.logs(),
        f.server.log_text()
    );
    // The call is still up; the agent hangs up later itself.
    assert_eq!(f.call(&id)["status"], "in-progress");
    if !agent.wait_log("HUNG UP", Duration::from_secs(10)) {
        panic!("{}", agent.wait(Duration::from_secs(1)).output);
    }
    let run = agent.wait(Duration::from_secs(10));
    assert_eq!(run.code, 0, "{}", run.output);
    let _ = carrier.wait(Duration::from_secs(10));
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed");
    assert_eq!(call["end_leg"], "agent", "{call}");
    assert!(wait_timeline(
        &f,
        &id,
        "transfer_failed",
        Duration::from_secs(5)
    ));
}

#[test]
fn a_refer_and_an_api_transfer_to_a_forbidden_number_are_refused_and_nothing_is_dialled() {
    let f = fixture_with(0, "");
    // allowed_prefixes = ["+1"]: a UK number is outside.
    let agent = refer_agent(&f, "+442071234567", true);
    // The carrier takes exactly one call: a second INVITE would fail its scenario.
    let carrier = f.carrier("carrier_answer_play.xml", &[]);
    let id = place(&f);
    assert!(wait_status(&f, &id, "in-progress", Duration::from_secs(20)));
    let (st, v) = api(
        &f,
        "POST",
        &format!("/v1/calls/{id}/transfer"),
        Some(json!({"to": {"dial_string": "+442071234567"}, "mode": "blind"})),
    );
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["code"], "destination_not_allowed");
    assert!(
        agent.wait_log("NOTIFY 403", Duration::from_secs(20)),
        "{}\n{}",
        agent.logs(),
        f.server.log_text()
    );
    assert!(agent.wait_log("HUNG UP", Duration::from_secs(10)));
    let run = agent.wait(Duration::from_secs(10));
    assert_eq!(run.code, 0, "{}", run.output);
    let run = carrier.wait(Duration::from_secs(15));
    assert_eq!(run.code, 0, "one call only at the carrier: {}", run.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed");
}

#[test]
fn a_held_customer_hears_the_hold_tone_and_not_the_agent() {
    let f = fixture_with(0, "");
    // 600 Hz: far enough from the 425 Hz hold tone for 50 ms Goertzel blocks.
    let _agent = Phone::registered(&f, "alice-desk", "s3cret-desk", 600.0, false);
    let listen = format!("udp:127.0.0.1:{}", f.carrier_port);
    let customer = Phone::start(
        &[
            "--listen",
            &listen,
            "--answer",
            "--ring-ms",
            "100",
            "--tone",
            "1000",
        ],
        true,
    );
    assert!(customer.wait_count("phone: SIP on", 1, Duration::from_secs(10)));
    let id = place(&f);
    assert!(wait_status(&f, &id, "in-progress", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(1500));
    let (st, v) = api(&f, "POST", &format!("/v1/calls/{id}/hold"), None);
    assert_eq!(st, 202, "{v}");
    assert!(wait_timeline(&f, &id, "held", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(4000));
    assert_eq!(f.hangup(&id), 202);
    assert!(customer.wait_count("phone: ended", 1, Duration::from_secs(15)));
    let rec = customer.last_recording();
    // The first 1.5 s: the agent; then 4 s of hold: beeps of 425 Hz, 400 ms every 2 s.
    let split = 8000 * 3 / 2;
    let (before, held) = rec.split_at(split.min(rec.len()));
    assert!(heard(before, 600.0) > 0.5, "the agent before the hold");
    let tail = &held[held.len().min(4000)..];
    assert!(
        heard(tail, 425.0) > 0.08,
        "hold tone: {}",
        heard(tail, 425.0)
    );
    assert!(
        heard(tail, 600.0) < 0.02,
        "the agent while held: {}",
        heard(tail, 600.0)
    );
}

/// baresip's blind transfer command sends a real phone's REFER.
#[test]
fn baresip_transfers_blind_by_refer() {
    use sip_tests::baresip::{Baresip, BaresipConfig, SipTransport};
    let f = fixture_with(0, &extra_users());
    // Bob sends RTP as a phone does: the relay latches onto the source it hears on a leg, and
    // the transferor's last packets (sent until it takes the BYE) may latch it first.
    let bob = Phone::registered(&f, "bob-desk", "s3cret-bob", SUPERVISOR_HZ, false);
    let mut cfg = BaresipConfig::device(
        "alice-desk",
        "s3cret-desk",
        f.server.udp_addr(),
        SipTransport::Udp,
    );
    cfg.ctrl_tcp = true;
    let mut agent = Baresip::start(&cfg).expect("baresip starts");
    agent
        .wait_registered(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", f.server.log_text()));
    // The customer: a phone on the trunk's address sending a steady tone.
    let listen = format!("udp:127.0.0.1:{}", f.carrier_port);
    let customer = Phone::start(
        &[
            "--listen",
            &listen,
            "--answer",
            "--ring-ms",
            "100",
            "--tone",
            "1000",
        ],
        false,
    );
    assert!(customer.wait_count("phone: SIP on", 1, Duration::from_secs(10)));
    let id = place(&f);
    assert!(
        wait_status(&f, &id, "in-progress", Duration::from_secs(20)),
        "{}\n{}",
        f.server.log_text(),
        agent.log_text()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let r = agent
        .command("transfer", "sip:1002@dialbridge.test")
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert!(r.ok, "{r:?}\n{}", agent.log_text());
    assert!(
        wait_timeline(&f, &id, "transferred", Duration::from_secs(15)),
        "{}\nbaresip:\n{}",
        f.server.log_text(),
        agent.log_text()
    );
    let call = f.call(&id);
    let timeline = call["timeline"].to_string();
    assert!(timeline.contains("REFER (in dialog)"), "{timeline}");
    assert!(
        timeline.contains("NOTIFY (refer: SIP/2.0 200 OK)"),
        "{timeline}"
    );
    assert_eq!(
        call["status"], "in-progress",
        "the customer talks with Bob now"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(f.hangup(&id), 202);
    assert!(bob.wait_count("phone: ended", 1, Duration::from_secs(15)));
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
    assert!(received > 20, "Bob got the customer's audio: {ended}");
}

/// The calls of the account, newest first.
fn list_calls(f: &Fixture) -> Vec<Value> {
    let (st, v) = api(f, "GET", "/v1/calls", None);
    assert_eq!(st, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

/// The share of `hz` in the last `secs` seconds of a recording.
fn heard_at_end(samples: &[i16], hz: f64, secs: f64) -> f64 {
    let n = (8000.0 * secs) as usize;
    heard(&samples[samples.len().saturating_sub(n)..], hz)
}

/// An attended transfer by a SIPp agent phone (see `agent_attended_refer.xml`): it answers
/// a click-to-call to the customer (a phone sending 1000 Hz), dials Bob (extension 1002, a
/// phone sending 1800 Hz) itself, first REFERs with a Replaces naming no dialog (NOTIFY
/// 481, both calls go on), then REFERs with Replaces naming its dialog of the second call.
/// On the wire: 202, NOTIFY 200, a BYE to the phone on each of its two legs. Then the
/// customer and Bob hear each other through the first call's relay (told apart by
/// frequency: before the transfer each heard only its own tone echoed by the SIPp phone),
/// the first call says transferred and the second ended completed.
#[test]
fn an_attended_refer_with_replaces_joins_the_customer_and_the_second_party() {
    let f = fixture_with(0, &extra_users());
    let bob = Phone::registered(&f, "bob-desk", "s3cret-bob", SUPERVISOR_HZ, true);
    let listen = format!("udp:127.0.0.1:{}", f.carrier_port);
    let customer = Phone::start(
        &[
            "--listen",
            &listen,
            "--answer",
            "--ring-ms",
            "100",
            "--tone",
            "1000",
        ],
        true,
    );
    assert!(customer.wait_count("phone: SIP on", 1, Duration::from_secs(10)));
    let agent = f.phone("alice-desk", "s3cret-desk", "agent_attended_refer.xml", &[]);
    let id = place(&f);
    if !agent.wait_log("BOTH RELEASED", Duration::from_secs(40)) {
        panic!(
            "{}\n{}",
            agent.wait(Duration::from_secs(1)).output,
            f.server.log_text()
        );
    }
    let logs = agent.logs();
    assert!(logs.contains("REFER 202 unknown"), "{logs}");
    assert!(logs.contains("NOTIFY 481"), "{logs}");
    assert_eq!(logs.matches("REFER 202").count(), 2, "{logs}");
    assert!(logs.contains("NOTIFY 200"), "{logs}");
    let released: Vec<&str> = logs.lines().filter(|l| l.contains("RELEASED ")).collect();
    assert!(
        released.iter().any(|l| l.contains("SIPpTag01")),
        "the phone's leg of call one: {logs}"
    );
    assert!(
        released.iter().any(|l| l.contains("SIPpTag02")),
        "the phone's leg of call two: {logs}"
    );
    let run = agent.wait(Duration::from_secs(10));
    assert_eq!(run.code, 0, "{}", run.output);
    // The customer and Bob talk through call one now.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(f.call(&id)["status"], "in-progress");
    assert_eq!(f.hangup(&id), 202);
    assert!(bob.wait_count("phone: ended", 1, Duration::from_secs(15)));
    assert!(customer.wait_count("phone: ended", 1, Duration::from_secs(15)));
    let (c, b) = (customer.last_recording(), bob.last_recording());
    let (c_bob, c_self) = (
        heard_at_end(&c, SUPERVISOR_HZ, 1.5),
        heard_at_end(&c, CUSTOMER_HZ, 1.5),
    );
    let (b_customer, b_self) = (
        heard_at_end(&b, CUSTOMER_HZ, 1.5),
        heard_at_end(&b, SUPERVISOR_HZ, 1.5),
    );
    // Before the transfer (the first second of each call) each heard only its own tone,
    // echoed by the SIPp phone.
    let first = |r: &[i16], hz: f64| heard(&r[..8000.min(r.len())], hz);
    assert!(first(&c, CUSTOMER_HZ) > 0.5 && first(&c, SUPERVISOR_HZ) < 0.1);
    assert!(first(&b, SUPERVISOR_HZ) > 0.5 && first(&b, CUSTOMER_HZ) < 0.1);
    assert!(
        c_bob > 0.5 && c_self < 0.1,
        "the customer hears Bob ({c_bob:.2}), not itself ({c_self:.2})"
    );
    assert!(
        b_customer > 0.5 && b_self < 0.1,
        "Bob hears the customer ({b_customer:.2}), not himself ({b_self:.2})"
    );
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["legs"]["agent"]["transferred_to"], "1002", "{call}");
    let timeline = call["timeline"].to_string();
    assert!(
        timeline.contains("NOTIFY (refer: SIP/2.0 481 Call/Transaction Does Not Exist)"),
        "{timeline}"
    );
    assert!(timeline.contains("transfer_failed"), "{timeline}");
    assert!(f.receiver.wait_status("completed", Duration::from_secs(10)));
    let evs = events_of(&f, &id);
    let t = evs
        .iter()
        .find(|e| e["event"] == "call.transferred")
        .unwrap_or_else(|| panic!("{evs:?}"));
    assert_eq!(t["by"], "phone");
    assert_eq!(t["to"], "1002");
    // The phone's second call ended, completed, when its party was joined to call one.
    let two = list_calls(&f)
        .into_iter()
        .find(|c| c["call_id"] != id.as_str() && c["origin"] == "phone")
        .unwrap_or_else(|| panic!("no second call"));
    let two = f.ended(two["call_id"].as_str().expect("call_id"));
    assert_eq!(two["status"], "completed", "{two}");
    assert!(two.to_string().contains("joined to call"), "{two}");
}

/// A call whose customer is a SIPp carrier that echoes RTP and requires a hold re-INVITE
/// (`a=sendonly`) then a resume (`a=sendrecv`); the agent (440 Hz) and Bob (1800 Hz) are
/// recording phones. A warm transfer to Bob is started and Bob answers: returns
/// (fixture, agent, Bob, carrier, call id).
fn warm_consulting() -> (Fixture, Phone, Phone, SippChild, String) {
    let f = fixture_with(0, &extra_users());
    let agent = Phone::registered(&f, "alice-desk", "s3cret-desk", AGENT_HZ, true);
    let bob = Phone::registered(&f, "bob-desk", "s3cret-bob", SUPERVISOR_HZ, true);
    let carrier = f.carrier("carrier_hold_unhold.xml", &["-rtp_echo"]);
    let id = place(&f);
    assert!(
        wait_status(&f, &id, "in-progress", Duration::from_secs(20)),
        "{}",
        f.server.log_text()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (st, v) = api(
        &f,
        "POST",
        &format!("/v1/calls/{id}/transfer"),
        Some(json!({"to": {"user_id": BOB}, "mode": "warm"})),
    );
    assert_eq!(st, 202, "{v}");
    // The customer is held on the wire while the agent consults Bob.
    assert!(
        carrier.wait_log("REINVITE sendonly", Duration::from_secs(10)),
        "{}\n{}",
        carrier.logs(),
        f.server.log_text()
    );
    assert!(
        bob.wait_count("phone: answered", 1, Duration::from_secs(15)),
        "{:?}\n{}",
        bob.lines(),
        f.server.log_text()
    );
    std::thread::sleep(Duration::from_millis(2000));
    (f, agent, bob, carrier, id)
}

/// Warm transfer over the API, completed: the customer held (`a=sendonly` on the wire)
/// while Bob and the agent hear each other; `…/transfer/complete` resumes the customer
/// (`a=sendrecv`), bridges it with Bob (Bob hears his own tone echoed by the customer's
/// side, and no longer the agent) and releases the agent.
#[test]
fn a_warm_transfer_consults_while_the_customer_is_held_then_completes() {
    let (f, agent, bob, carrier, id) = warm_consulting();
    assert_eq!(f.call(&id)["status"], "in-progress");
    let (st, v) = api(
        &f,
        "POST",
        &format!("/v1/calls/{id}/transfer/complete"),
        None,
    );
    assert_eq!(st, 202, "{v}");
    assert!(
        agent.wait_count("phone: ended", 1, Duration::from_secs(10)),
        "the agent is released: {:?}",
        agent.lines()
    );
    assert!(carrier.wait_log("REINVITE sendrecv", Duration::from_secs(10)));
    assert!(wait_timeline(
        &f,
        &id,
        "transferred",
        Duration::from_secs(10)
    ));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(f.call(&id)["status"], "in-progress");
    assert_eq!(f.hangup(&id), 202);
    assert!(bob.wait_count("phone: ended", 1, Duration::from_secs(15)));
    let run = carrier.wait(Duration::from_secs(15));
    assert_eq!(run.code, 0, "{}", run.output);
    let b = bob.last_recording();
    // The consultation (Bob's first second): the agent.
    let first = heard(&b[..8000.min(b.len())], AGENT_HZ);
    assert!(
        first > 0.5,
        "Bob hears the agent while consulting: {first:.2}"
    );
    // After the completion: the customer's side (echoing Bob), no agent.
    let (echo, agent_tail) = (
        heard_at_end(&b, SUPERVISOR_HZ, 1.5),
        heard_at_end(&b, AGENT_HZ, 1.5),
    );
    assert!(
        echo > 0.5 && agent_tail < 0.1,
        "Bob bridged to the customer: own tone back {echo:.2}, agent {agent_tail:.2}"
    );
    let a = agent.last_recording();
    assert!(
        heard_at_end(&a, SUPERVISOR_HZ, 1.0) > 0.5,
        "the agent heard Bob while consulting"
    );
    assert!(f.receiver.wait_status("completed", Duration::from_secs(10)));
    let evs = events_of(&f, &id);
    let names: Vec<&str> = evs.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(names.contains(&"call.held"), "{names:?}");
    let t = evs
        .iter()
        .find(|e| e["event"] == "call.transferred")
        .unwrap_or_else(|| panic!("{evs:?}"));
    assert_eq!(t["by"], "api");
}

/// Warm transfer over the API, cancelled: Bob is released, the customer resumed
/// (`a=sendrecv` on the wire), and the agent and the customer talk again (the agent hears
/// its own tone echoed by the customer's side, no longer Bob).
#[test]
fn a_cancelled_warm_transfer_returns_to_the_original_call() {
    let (f, agent, bob, carrier, id) = warm_consulting();
    let (st, v) = api(&f, "POST", &format!("/v1/calls/{id}/transfer/cancel"), None);
    assert_eq!(st, 202, "{v}");
    assert!(
        bob.wait_count("phone: ended", 1, Duration::from_secs(10)),
        "Bob is released: {:?}",
        bob.lines()
    );
    assert!(carrier.wait_log("REINVITE sendrecv", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(f.call(&id)["status"], "in-progress");
    assert_eq!(f.hangup(&id), 202);
    assert!(agent.wait_count("phone: ended", 1, Duration::from_secs(15)));
    let run = carrier.wait(Duration::from_secs(15));
    assert_eq!(run.code, 0, "{}", run.output);
    let a = agent.last_recording();
    let (own, bob_tail) = (
        heard_at_end(&a, AGENT_HZ, 1.5),
        heard_at_end(&a, SUPERVISOR_HZ, 1.5),
    );
    assert!(
        own > 0.5 && bob_tail < 0.1,
        "back with the customer: own tone echoed {own:.2}, Bob {bob_tail:.2}"
    );
    let call = f.ended(&id);
    assert!(call["legs"]["agent"]["transferred_to"].is_null(), "{call}");
    assert!(call["timeline"].to_string().contains("transfer_failed"));
}
