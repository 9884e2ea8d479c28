//! Two dialbridge nodes on one PostgreSQL behind a Kamailio edge (`deploy/kamailio/`), all on
//! loopback: a SIPp phone registers through the edge, 100 click-to-calls are placed through
//! both nodes' REST APIs, one node is killed (SIGKILL) in the middle of the run.
//!
//! Then: the calls placed after the kill complete through the survivor; every call ends with
//! a final status (the dead node's live calls `failed`, taken over by the survivor); every
//! callback event is delivered once, in order, signed (a repeat is allowed only across the
//! kill: node-a died between the receiver's 200 and recording it); the phone registers
//! again through the edge and its binding is used.
//!
//! And a phone on TCP (baresip) behind the edge registers and takes a click-to-call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sip_tests::edge::Edge;
use sip_tests::http::{request, CallbackReceiver};
use sip_tests::pg::PgServer;
use sip_tests::{free_port, scenario, sipp, SippChild, TempDir, TestServer};

const SECRET: &str = "sk_test_1";
const WEBHOOK: &str = "whsec_test_1";
const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";
const CALLS: usize = 100;
const FINAL: [&str; 5] = ["completed", "busy", "no-answer", "failed", "canceled"];

struct Node {
    id: &'static str,
    sip: SocketAddr,
    api: SocketAddr,
}

fn node_config(n: &Node, db: &str, carrier_port: u16, media: &str) -> String {
    format!(
        r#"
[sip]
listen = ["udp:{sip}"]

[api]
listen = "{api}"

[media]
ports = "{media}"

[store]
url = "{db}"

[node]
id = "{id}"
api_url = "http://{api}"
lease_secs = 3
secret = "cluster-secret-0123456789"

[registrar]
nonce_secret = "nonce-secret-0123456789"

[calls]
agent_ring_secs = 10
customer_ring_secs = 10
shutdown_grace_secs = 1

[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{{ key = "ak_test_1", secret = "{SECRET}" }}]
webhook_secret = "{WEBHOOK}"
allowed_prefixes = ["+1"]
calls_per_second = 1000
burst = 1000
max_concurrent = 1000

[[users]]
id = "{USER}"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
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
"#,
        sip = n.sip,
        api = n.api,
        id = n.id,
    )
}

fn auth() -> String {
    format!("Bearer {SECRET}")
}

/// REGISTERs alice-desk through the edge from `port` (the phone's own port); the 200 must
/// echo the Path the edge added (the scenario checks it).
fn register(edge: SocketAddr, port: u16) {
    let sf = scenario("register_path.xml").to_string_lossy().into_owned();
    let (edge, port) = (edge.to_string(), port.to_string());
    let run = sipp(
        &[
            "-sf",
            &sf,
            &edge,
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-m",
            "1",
            "-s",
            "alice-desk",
            "-au",
            "alice-desk",
            "-ap",
            "s3cret-desk",
            "-set",
            "expires",
            "600",
            "-timeout",
            "15s",
            "-timeout_error",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        run.code, 0,
        "the phone did not register through the edge: {}",
        run.output
    );
}

fn place(api: SocketAddr, hook: &str, n: usize) -> Result<String, String> {
    let body = serde_json::json!({
        "user_id": USER,
        "dial_string": format!("+1415555{:04}", 100 + n),
        "callback_url": hook,
    });
    let r = sip_tests::http::try_request(
        api,
        "POST",
        "/v1/calls",
        &[("Authorization", &auth())],
        Some(&body.to_string()),
    )
    .map_err(|e| e.to_string())?;
    if r.status != 202 {
        return Err(format!("{}: {}", r.status, r.body));
    }
    r.json()["call_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| r.body.clone())
}

fn get_call(api: SocketAddr, id: &str) -> serde_json::Value {
    let r = request(
        api,
        "GET",
        &format!("/v1/calls/{id}"),
        &[("Authorization", &auth())],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn signed(sig: &str, body: &str) -> bool {
    let part = |k: &str| sig.split(',').find_map(|p| p.strip_prefix(k));
    let (Some(t), Some(v1)) = (part("t="), part("v1=")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == v1
}

#[test]
fn two_nodes_behind_kamailio_lose_nothing_when_one_is_killed() {
    let db = PgServer::get().fresh_database();
    let carrier_port = free_port();
    let phone_port = free_port();
    let nodes = [
        Node {
            id: "node-a",
            sip: SocketAddr::from(([127, 0, 0, 1], free_port())),
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
        },
        Node {
            id: "node-b",
            sip: SocketAddr::from(([127, 0, 0, 1], free_port())),
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
        },
    ];
    let a = TestServer::start_in(
        TempDir::new("node-a"),
        &node_config(&nodes[0], &db, carrier_port, "40000-44999"),
    );
    let b = TestServer::start_in(
        TempDir::new("node-b"),
        &node_config(&nodes[1], &db, carrier_port, "45000-49999"),
    );
    let edge = Edge::start(&[nodes[0].sip, nodes[1].sip]);
    let receiver = CallbackReceiver::start(0);
    let hook = receiver.url("/hook");

    // The phone registers through the edge; the 200 echoes the edge's Path.
    register(edge.addr, phone_port);

    // The phone (answers, waits for the BYE) on the port it registered from, the carrier
    // (answers, hangs up after 1 s).
    let phone_sf = scenario("agent_answer_via_edge.xml")
        .to_string_lossy()
        .into_owned();
    let (pp, pmp) = (phone_port.to_string(), free_port().to_string());
    let phone = SippChild::spawn(
        "phone",
        &[
            "-sf",
            &phone_sf,
            "-i",
            "127.0.0.1",
            "-p",
            &pp,
            "-rtp_echo",
            "-mp",
            &pmp,
            "-s",
            "alice-desk",
            "-timeout",
            "170s",
        ],
    );
    let carrier_sf = scenario("carrier_answer_hangup.xml")
        .to_string_lossy()
        .into_owned();
    let (cp, cmp) = (carrier_port.to_string(), free_port().to_string());
    let carrier = SippChild::spawn(
        "carrier",
        &[
            "-sf",
            &carrier_sf,
            "-i",
            "127.0.0.1",
            "-p",
            &cp,
            "-mp",
            &cmp,
            "-d",
            "1000",
            "-timeout",
            "170s",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));

    // 100 calls, every 50 ms, alternating between the nodes' APIs; node-a is killed after
    // the first half, the rest go to node-b.
    let mut placed: Vec<(String, &'static str, bool)> = Vec::new();
    let mut a = Some(a);
    let mut killed_at = None;
    for n in 0..CALLS {
        if n == CALLS / 2 {
            if let Some(a) = a.take() {
                drop(a.kill9());
                killed_at = Some(Instant::now());
            }
        }
        let after_kill = a.is_none();
        let via = if after_kill || n % 2 == 1 { 1 } else { 0 };
        let id = place(nodes[via].api, &hook, n)
            .unwrap_or_else(|e| panic!("call {n} not placed on {}: {e}", nodes[via].id));
        placed.push((id, nodes[via].id, after_kill));
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every call ends with a final status, read through the survivor.
    let survivor = nodes[1].api;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calls: HashMap<String, serde_json::Value> = HashMap::new();
    while calls.len() < placed.len() {
        for (id, _, _) in &placed {
            if calls.contains_key(id) {
                continue;
            }
            let c = get_call(survivor, id);
            if FINAL.contains(&c["status"].as_str().unwrap_or("")) {
                calls.insert(id.clone(), c);
            }
        }
        assert!(
            Instant::now() < deadline,
            "calls without a final status: {:?}\nedge:\n{}\nnode-b:\n{}",
            placed
                .iter()
                .filter(|(id, _, _)| !calls.contains_key(id))
                .map(|(id, node, _)| (id, node, get_call(survivor, id)["status"].clone()))
                .collect::<Vec<_>>(),
            edge.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (id, node, after_kill) in &placed {
        let c = &calls[id];
        let status = c["status"].as_str().unwrap_or("").to_owned();
        *by_status.entry(status.clone()).or_default() += 1;
        if *after_kill || *node == "node-b" {
            assert_eq!(status, "completed", "{node} call {id}: {c}");
        } else if status != "completed" {
            // node-a's calls live at the kill: ended by node-b, saying why.
            assert_eq!(status, "failed", "{c}");
            assert!(
                c.to_string().contains("node-a"),
                "the reason names the lost node: {c}"
            );
        }
    }
    eprintln!("cluster: final statuses {by_status:?}");

    // Every callback event exactly once, in order per call, signed; the last one final.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let finals: HashSet<String> = receiver
            .accepted()
            .iter()
            .filter(|b| FINAL.contains(&b["status"].as_str().unwrap_or("")))
            .filter_map(|b| b["call_id"].as_str().map(str::to_owned))
            .collect();
        if placed.iter().all(|(id, _, _)| finals.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "final callbacks missing for {} calls",
            placed.len() - finals.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Late duplicates would arrive after the finals: give them the claim lease to show up.
    std::thread::sleep(Duration::from_secs(2));
    // A callback is sent by one node at a time and recorded as delivered once. The one
    // exception is the crash itself: node-a got the receiver's 200 for a callback and died
    // before writing it down; node-b sends it again once node-a's claim lapsed. Such a
    // repeat is allowed only for a first delivery that arrived before the kill and a second
    // one after it (at most the deliveries node-a had in flight), and it is counted.
    let killed_at = killed_at.expect("node-a was killed");
    let mut first_at: HashMap<String, Instant> = HashMap::new();
    let mut repeats = Vec::new();
    let mut per_call: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for d in receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.answered == 200)
    {
        let sig = d.header("Dialbridge-Signature").unwrap_or_default();
        assert!(signed(sig, &d.body), "bad signature on {:?}", d.body);
        let j = d.json();
        let event = j["event_id"].as_str().unwrap_or_default().to_owned();
        if let Some(first) = first_at.get(&event) {
            assert!(
                *first <= killed_at && d.at > killed_at,
                "event {event} delivered twice, not across the kill: {}",
                d.body
            );
            repeats.push(event);
            continue;
        }
        first_at.insert(event, d.at);
        per_call
            .entry(j["call_id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((
                j["sequence"].as_i64().unwrap_or(0),
                j["status"].as_str().unwrap_or_default().to_owned(),
            ));
    }
    assert!(
        repeats.len() <= 32,
        "more repeats than deliveries node-a could have had in flight: {repeats:?}"
    );
    let seen_events: HashSet<String> = first_at.keys().cloned().collect();
    for (id, _, _) in &placed {
        let got = &per_call[id];
        let seqs: Vec<i64> = got.iter().map(|(s, _)| *s).collect();
        let want: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, want, "call {id}: callbacks out of order or missing");
        let last = &got[got.len() - 1].1;
        assert_eq!(
            Some(last.as_str()),
            calls[id]["status"].as_str(),
            "call {id}: its last callback is its final status"
        );
        // Each of the call's outbox entries was delivered (none left pending or abandoned).
        for cb in calls[id]["callbacks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let ev = cb["event_id"].as_str().unwrap_or_default();
            assert!(seen_events.contains(ev), "call {id}: {cb} not received");
        }
    }
    eprintln!(
        "cluster: {} callback events, each delivered once but {} sent again after node-a died between the receiver's 200 and its write: {repeats:?}",
        seen_events.len(),
        repeats.len()
    );

    // The phone's registration still works: it registers again through the edge (the dead
    // node is out of the dispatcher by now), and its binding is the survivor's to use.
    drop(phone);
    drop(carrier);
    register(edge.addr, phone_port);
    let regs = request(
        survivor,
        "GET",
        &format!("/v1/users/{USER}/registrations"),
        &[("Authorization", &auth())],
        None,
    );
    assert_eq!(regs.status, 200, "{}", regs.body);
    assert!(regs.body.contains("alice-desk"), "{}", regs.body);
    assert!(
        edge.log_text().contains("is down"),
        "the edge took the dead node out: {}",
        edge.log_text()
    );
}

/// A phone on TCP behind the edge (baresip, keeping its connection to the edge open): it
/// registers through the edge over TCP, and a click-to-call placed through a node reaches it
/// through the edge (node to edge over UDP, edge to phone over the phone's connection) and
/// completes.
#[test]
fn a_phone_on_tcp_registers_and_takes_calls_through_the_edge() {
    use sip_tests::baresip::{Baresip, BaresipConfig, SipTransport};

    let db = PgServer::get().fresh_database();
    let carrier_port = free_port();
    let node = Node {
        id: "node-a",
        sip: SocketAddr::from(([127, 0, 0, 1], free_port())),
        api: SocketAddr::from(([127, 0, 0, 1], free_port())),
    };
    let a = TestServer::start_in(
        TempDir::new("node-a"),
        &node_config(&node, &db, carrier_port, "40000-44999"),
    );
    let edge = Edge::start(&[node.sip]);
    let mut phone = Baresip::start(&BaresipConfig::device(
        "alice-desk",
        "s3cret-desk",
        edge.addr,
        SipTransport::Tcp,
    ))
    .expect("baresip starts");
    phone
        .wait_registered(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", edge.log_text(), a.log_text()));

    // The binding came through the edge (its source is the edge) for a TCP contact.
    let regs = request(
        node.api,
        "GET",
        &format!("/v1/users/{USER}/registrations"),
        &[("Authorization", &auth())],
        None,
    );
    assert_eq!(regs.status, 200, "{}", regs.body);
    let binding = &regs.json()["data"][0];
    assert_eq!(binding["source"], edge.addr.to_string(), "{}", regs.body);
    assert!(
        binding["contact"]
            .as_str()
            .unwrap_or("")
            .ends_with(";transport=tcp"),
        "{}",
        regs.body
    );

    let carrier_sf = scenario("carrier_answer_hangup.xml")
        .to_string_lossy()
        .into_owned();
    let (cp, cmp) = (carrier_port.to_string(), free_port().to_string());
    let carrier = SippChild::spawn(
        "carrier",
        &[
            "-sf",
            &carrier_sf,
            "-i",
            "127.0.0.1",
            "-p",
            &cp,
            "-mp",
            &cmp,
            "-m",
            "1",
            "-d",
            "2000",
            "-timeout",
            "60s",
        ],
    );
    let receiver = CallbackReceiver::start(0);
    let id = place(node.api, &receiver.url("/hook"), 0).expect("placed");
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(
        c.code,
        0,
        "{}\nbaresip:\n{}\nedge:\n{}",
        c.output,
        phone.log_text(),
        edge.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let call = loop {
        let call = get_call(node.api, &id);
        if FINAL.contains(&call["status"].as_str().unwrap_or("")) || Instant::now() > deadline {
            break call;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        call["status"],
        "completed",
        "{call}\nbaresip:\n{}\nedge:\n{}",
        phone.log_text(),
        edge.log_text()
    );
    // The phone took the call: the edge reached it through the Path the phone's TCP
    // REGISTER left (its `received`: the phone's address and transport as the edge saw them).
    assert!(
        phone
            .log_text()
            .to_ascii_lowercase()
            .contains("call established"),
        "{}",
        phone.log_text()
    );
}
