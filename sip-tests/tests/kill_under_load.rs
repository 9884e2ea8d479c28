//! The server is SIGKILLed in the middle of a run of REST calls offered at 200 calls per
//! second, with a SIPp agent device and a SIPp carrier answering, then started again on the
//! same store. Nothing is lost: every call the API accepted ends with a final record, and
//! every call's callbacks arrive signed, in order, each sequence number once (a callback
//! whose delivery was cut by the kill is sent again with the same event id), the last one
//! with the call's final status.

use sip_tests::http::{request, CallbackReceiver, Delivery};
use sip_tests::{free_port, scenario, sipp, SippChild, TestServer};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "sk_kill_1";
const WEBHOOK: &str = "whsec_kill_1";
const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";
const DEVICE: &str = "kill-desk";
const DEVICE_PASSWORD: &str = "kill-desk-pass";
const RATE: f64 = 200.0;
const CALLS: usize = 800;
/// When the server is killed, after the first request.
const KILL_AFTER: Duration = Duration::from_millis(3000);

fn config(carrier_port: u16) -> String {
    format!(
        r#"
[media]
ports = "32000-35999"

[calls]
agent_ring_secs = 10
customer_ring_secs = 10
shutdown_grace_secs = 1

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Load"
region = "US"
api_keys = [{{ key = "ak_kill_1", secret = "{SECRET}" }}]
webhook_secret = "{WEBHOOK}"
allowed_prefixes = ["+1"]
calls_per_second = 400
burst = 400
max_concurrent = 100000

[[users]]
id = "{USER}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Load Agent"
devices = [{{ username = "{DEVICE}", password = "{DEVICE_PASSWORD}" }}]

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

fn bearer() -> String {
    format!("Bearer {SECRET}")
}

/// A SIPp server on `port` playing `scenario_file` for up to `calls` calls.
fn sipp_server(scenario_file: &str, port: u16, calls: usize) -> SippChild {
    let sf = scenario(scenario_file).to_string_lossy().into_owned();
    SippChild::spawn(
        scenario_file,
        &[
            "-sf",
            &sf,
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-mp",
            &free_port().to_string(),
            "-m",
            &calls.to_string(),
            "-buff_size",
            "4194304",
            "-d",
            "1000",
            "-timeout",
            "120s",
        ],
    )
}

fn register(server: &TestServer, contact_port: u16) {
    let sf = scenario("register_contact.xml")
        .to_string_lossy()
        .into_owned();
    let run = sipp(
        &[
            "-sf",
            &sf,
            &server.udp_addr().to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-m",
            "1",
            "-s",
            DEVICE,
            "-au",
            DEVICE,
            "-ap",
            DEVICE_PASSWORD,
            "-set",
            "expires",
            "3600",
            "-set",
            "contact_port",
            &contact_port.to_string(),
            "-timeout",
            "15s",
            "-timeout_error",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        run.code, 0,
        "the agent device did not register: {}",
        run.output
    );
}

/// The signature of a delivery, checked against the account's webhook secret.
fn signed(d: &Delivery) -> bool {
    use hmac::{Hmac, Mac};
    let Some(sig) = d.header("Dialbridge-Signature") else {
        return false;
    };
    let part = |k: &str| sig.split(',').find_map(|p| p.strip_prefix(k));
    let (Some(t), Some(v1)) = (part("t="), part("v1=")) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK.as_bytes()) else {
        return false;
    };
    mac.update(format!("{t}.{}", d.body).as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    v1 == want
}

const FINAL: [&str; 5] = ["completed", "failed", "busy", "no-answer", "canceled"];

#[test]
fn sigkill_during_a_200_calls_per_second_run_loses_no_call_and_no_callback() {
    let carrier_port = free_port();
    let agent_port = free_port();
    let cfg = config(carrier_port);
    let _carrier = sipp_server("bench_carrier.xml", carrier_port, CALLS);
    let _agent = sipp_server("bench_agent.xml", agent_port, CALLS);
    let server = TestServer::start(&cfg);
    let api = server.api.expect("the REST API is not listening");
    register(&server, agent_port);
    let receiver = CallbackReceiver::start(0);
    let hook = receiver.url("/hook");

    // The load: call i due at start + i / RATE, open loop, until the server is gone.
    let accepted: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let start = Instant::now() + Duration::from_millis(100);
    let senders: Vec<_> = (0..32)
        .map(|_| {
            let (accepted, next, killed, hook) =
                (accepted.clone(), next.clone(), killed.clone(), hook.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CALLS || killed.load(Ordering::SeqCst) {
                    return;
                }
                let due = start + Duration::from_secs_f64(i as f64 / RATE);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let body = serde_json::json!({
                    "user_id": USER,
                    "dial_string": sip_tests::bench::dial_string(i),
                    "callback_url": hook,
                });
                let Ok(r) = sip_tests::http::try_request(
                    api,
                    "POST",
                    "/v1/calls",
                    &[("Authorization", &bearer())],
                    Some(&body.to_string()),
                ) else {
                    continue;
                };
                if r.status == 202 {
                    if let Some(id) = r.json()["call_id"].as_str() {
                        accepted.lock().unwrap().push(id.to_owned());
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(
        (start + KILL_AFTER)
            .checked_duration_since(Instant::now())
            .unwrap_or_default(),
    );
    let dir = server.kill9();
    killed.store(true, Ordering::SeqCst);
    for s in senders {
        let _ = s.join();
    }
    let accepted = accepted.lock().unwrap().clone();
    let before_kill = receiver.deliveries().len();
    assert!(
        accepted.len() >= 50,
        "the run was too slow to mean anything: {} calls accepted before the kill",
        accepted.len()
    );

    // The same store, a new process.
    let server = TestServer::start_in(dir, &cfg);
    let api = server
        .api
        .expect("the REST API is not listening after the restart");
    let call = |id: &str| {
        let r = request(
            api,
            "GET",
            &format!("/v1/calls/{id}"),
            &[("Authorization", &bearer())],
            None,
        );
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        r.json()
    };
    // Every accepted call has a final record (the restart ends those the kill interrupted).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records: HashMap<String, serde_json::Value> = HashMap::new();
    for id in &accepted {
        loop {
            let c = call(id);
            let status = c["status"].as_str().unwrap_or("").to_owned();
            if FINAL.contains(&status.as_str()) || Instant::now() > deadline {
                records.insert(id.clone(), c);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (id, c) in &records {
        let status = c["status"].as_str().unwrap_or("");
        assert!(FINAL.contains(&status), "{id} did not end: {c}");
        assert!(c["ended_at"].is_string(), "{id} has no end time: {c}");
        *by_status.entry(status.to_owned()).or_default() += 1;
    }
    let interrupted = records
        .values()
        .filter(|c| c["outcome"]["reason"] == "interrupted")
        .count();
    assert!(
        interrupted > 0,
        "the kill interrupted no call (statuses {by_status:?}): the test proves nothing"
    );

    // Every call's callbacks: each sequence number once (a resend repeats the event id),
    // 1..=n without a gap, first arrivals in order, the last one final.
    let deadline = Instant::now() + Duration::from_secs(90);
    let per_call = loop {
        let mut per_call: HashMap<String, Vec<Delivery>> = HashMap::new();
        for d in receiver.deliveries() {
            let j = d.json();
            if let Some(id) = j["call_id"].as_str() {
                per_call.entry(id.to_owned()).or_default().push(d);
            }
        }
        let all_final = accepted.iter().all(|id| {
            per_call.get(id).is_some_and(|ds| {
                ds.iter()
                    .any(|d| FINAL.contains(&d.json()["status"].as_str().unwrap_or("")))
            })
        });
        if all_final || Instant::now() > deadline {
            break per_call;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let mut resent = 0;
    for id in &accepted {
        let ds = per_call.get(id).map(Vec::as_slice).unwrap_or_default();
        let mut first: Vec<(i64, String, String)> = Vec::new(); // (seq, event id, status)
        for d in ds {
            assert!(
                signed(d),
                "{id}: a callback with a bad signature: {}",
                d.body
            );
            let j = d.json();
            let seq = j["sequence"].as_i64().unwrap_or(0);
            let event = j["event_id"].as_str().unwrap_or("").to_owned();
            match first.iter().find(|(s, _, _)| *s == seq) {
                Some((_, e, _)) => {
                    assert_eq!(*e, event, "{id}: sequence {seq} given to two events");
                    resent += 1;
                }
                None => {
                    let status = j["status"].as_str().unwrap_or("").to_owned();
                    first.push((seq, event, status));
                }
            }
        }
        let seqs: Vec<i64> = first.iter().map(|(s, _, _)| *s).collect();
        let expected: Vec<i64> = (1..=first.len() as i64).collect();
        assert_eq!(seqs, expected, "{id}: callbacks missing or out of order");
        let last = first.last().map(|(_, _, s)| s.as_str()).unwrap_or("");
        assert!(FINAL.contains(&last), "{id}: no final callback: {first:?}");
        assert_eq!(
            last, records[id]["status"],
            "{id}: the final callback and the call log disagree"
        );
    }
    eprintln!(
        "{} calls accepted before the kill, {before_kill} callbacks delivered before it; \
         after the restart: {by_status:?}, {interrupted} interrupted, {resent} callbacks resent",
        accepted.len()
    );
}
