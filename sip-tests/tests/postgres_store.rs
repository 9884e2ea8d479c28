//! The server on PostgreSQL (`store.url = "postgres://..."`), black-box: a real PostgreSQL
//! started by the test (see `sip_tests::pg`), SIPp as the agent's phone and the carrier.

use sip_tests::c2c::{final_callback, fixture_with, USER};
use sip_tests::pg::PgServer;
use std::time::Duration;

/// A click-to-call ends with its record, timeline and signed callbacks written through the
/// PostgreSQL store; a second server on the same database sees the call and the binding.
#[test]
fn a_call_on_postgres_is_logged_with_its_callbacks_and_seen_after_a_restart() {
    // A password in the URL (the test server trusts loopback and ignores it) must never
    // reach the log.
    let url = PgServer::get().fresh_database().replacen(
        "dialbridge@",
        "dialbridge:pw-never-logged-4711@",
        1,
    );
    assert!(url.contains("pw-never-logged-4711"), "{url}");
    let store = format!("[store]\nurl = \"{url}\"\n");
    let f = fixture_with(0, &store);
    assert!(
        f.server.log_text().contains("store opened (PostgreSQL)"),
        "{}",
        f.server.log_text()
    );
    assert!(
        !f.server.log_text().contains("pw-never-logged-4711"),
        "the store password reached the log"
    );
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_busy.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert_eq!(carrier.wait(Duration::from_secs(30)).code, 0);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "agent must get a BYE: {}", d.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    let cb = final_callback(&f.receiver, "busy");
    assert_eq!(cb["leg"], "customer");
    assert_eq!(cb["sip_code"], 486);
    // Every callback of the call, in order, each accepted once.
    let seqs: Vec<i64> = f
        .receiver
        .accepted()
        .iter()
        .filter(|b| b["call_id"] == id.as_str())
        .map(|b| b["sequence"].as_i64().unwrap_or(0))
        .collect();
    assert!(seqs.len() >= 2, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let timeline = call["timeline"].as_array().cloned().unwrap_or_default();
    assert!(timeline.len() >= 3, "{call}");

    // Another server on the same database: the call log and the registration are there.
    let Fixture2 { server } = restart(f, &store);
    let again = sip_tests::http::request(
        server.api.expect("REST API"),
        "GET",
        &format!("/v1/calls/{id}"),
        &[("Authorization", "Bearer sk_test_1")],
        None,
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["status"], "busy");
    let regs = sip_tests::http::request(
        server.api.expect("REST API"),
        "GET",
        &format!("/v1/users/{USER}/registrations"),
        &[("Authorization", "Bearer sk_test_1")],
        None,
    );
    assert_eq!(regs.status, 200, "{}", regs.body);
    assert!(regs.body.contains("alice-desk"), "{}", regs.body);
}

struct Fixture2 {
    server: sip_tests::TestServer,
}

fn restart(f: sip_tests::c2c::Fixture, store: &str) -> Fixture2 {
    let port = f.carrier_port;
    drop(f.server.stop());
    let server = sip_tests::TestServer::start(&format!("{store}{}", sip_tests::c2c::config(port)));
    Fixture2 { server }
}

/// Two nodes on one database: a second process with a node id in use is refused; when a
/// node is killed, the other takes over its live call once its lease lapses: the call ends
/// `failed` with a reason that names the lost node, and its final callback goes out once.
#[test]
fn a_killed_nodes_live_call_is_ended_by_the_other_node() {
    use sip_tests::c2c::Fixture;
    use sip_tests::http::CallbackReceiver;
    use std::time::Instant;

    let url = PgServer::get().fresh_database();
    let carrier_port = sip_tests::free_port();
    let node = |id: &str| {
        format!(
            "[store]\nurl = \"{url}\"\n[node]\nid = \"{id}\"\nlease_secs = 3\n{}",
            sip_tests::c2c::config(carrier_port)
        )
    };
    let f = Fixture {
        server: sip_tests::TestServer::start(&node("node-a")),
        receiver: CallbackReceiver::start(0),
        carrier_port,
    };
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "30000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}",
        f.receiver.accepted()
    );

    // A second process with node-a's id, while node-a runs: refused, naming node.id.
    let dup_dir = sip_tests::TempDir::new("dup");
    let dup_cfg = dup_dir.path().join("dup.toml");
    std::fs::write(
        &dup_cfg,
        format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n[api]\nlisten = \"127.0.0.1:0\"\n{}",
            node("node-a")
        ),
    )
    .expect("write config");
    let dup = std::process::Command::new(sip_tests::dialbridge_bin())
        .args(["serve", "--config"])
        .arg(&dup_cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the duplicate");
    let (code, err) = sip_tests::wait_limit(dup, Duration::from_secs(20));
    assert_ne!(code, 0, "the duplicate ran: {err}");
    assert!(err.contains("node.id \"node-a\" is in use"), "{err}");

    // node-b on the same database; then node-a dies.
    let b = sip_tests::TestServer::start(&node("node-b"));
    let Fixture {
        server, receiver, ..
    } = f;
    let killed_at = Instant::now();
    drop(server.kill9());
    let f = Fixture {
        server: b,
        receiver,
        carrier_port,
    };
    let call = f.ended(&id);
    assert_eq!(call["status"], "failed", "{call}");
    assert_eq!(
        call["outcome"]["reason"], "node node-a stopped (its lease lapsed)",
        "{call}"
    );
    // Not before the lease (3 s) could lapse.
    assert!(killed_at.elapsed() >= Duration::from_secs(2), "{call}");
    let cb = final_callback(&f.receiver, "failed");
    assert_eq!(cb["call_id"], id.as_str());
    assert_eq!(cb["reason"], "node node-a stopped (its lease lapsed)");
    // Each of the call's callbacks once, in order, the final one from node-b.
    let seqs: Vec<i64> = f
        .receiver
        .accepted()
        .iter()
        .filter(|b| b["call_id"] == id.as_str())
        .map(|b| b["sequence"].as_i64().unwrap_or(0))
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    drop((desk, carrier));
}

/// PostgreSQL goes away while a call is live and comes back: the call goes on, its events
/// wait in memory and are written when the database is back, and it ends `completed` with
/// every callback delivered once, in order.
#[test]
fn the_database_goes_away_mid_call_and_nothing_is_lost() {
    let pg = PgServer::own();
    let url = pg.fresh_database();
    let f = fixture_with(0, &format!("[store]\nurl = \"{url}\"\n"));
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "6000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}",
        f.receiver.accepted()
    );
    pg.stop();
    // The carrier hangs up while the database is away.
    assert_eq!(carrier.wait(Duration::from_secs(30)).code, 0);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "agent must get a BYE: {}", d.output);
    pg.start_again();
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let cb = final_callback(&f.receiver, "completed");
    assert_eq!(cb["call_id"], id.as_str());
    let seqs: Vec<i64> = f
        .receiver
        .accepted()
        .iter()
        .filter(|b| b["call_id"] == id.as_str())
        .map(|b| b["sequence"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{seqs:?}"
    );
    assert!(
        f.server
            .log_text()
            .contains("the store refuses writes; call events wait in memory"),
        "the outage was seen"
    );
}

/// Two nodes on one database, an account with a burst of 6 and a rate that refills nothing
/// within the test (one call per 100 s): twelve requests alternating between the nodes'
/// APIs. The burst holds across both nodes: six calls are placed, the other six are `429`
/// with the API's JSON error and a `Retry-After` (a bucket per node would have let all
/// twelve through).
#[test]
fn an_accounts_call_rate_holds_across_two_nodes() {
    use sip_tests::http::request;

    let url = PgServer::get().fresh_database();
    let carrier_port = sip_tests::free_port();
    let node = |id: &str| {
        format!(
            "[store]\nurl = \"{url}\"\n[node]\nid = \"{id}\"\n{}",
            sip_tests::c2c::config_with_account(
                carrier_port,
                "calls_per_second = 0.01\nburst = 6\nmax_concurrent = 1000"
            )
        )
    };
    let a = sip_tests::TestServer::start(&node("node-a"));
    let b = sip_tests::TestServer::start(&node("node-b"));
    let apis = [a.api.expect("api a"), b.api.expect("api b")];
    let auth = format!("Bearer {}", sip_tests::c2c::SECRET);
    let mut placed = [0; 2];
    let mut refused = Vec::new();
    for n in 0..12 {
        let body =
            serde_json::json!({"user_id": USER, "dial_string": format!("+1415555{:04}", 100 + n)})
                .to_string();
        let r = request(
            apis[n % 2],
            "POST",
            "/v1/calls",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(&body),
        );
        match r.status {
            202 => placed[n % 2] += 1,
            429 => refused.push(r),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(placed[0] + placed[1], 6, "placed per node: {placed:?}");
    assert_eq!(refused.len(), 6);
    for r in &refused {
        let err = &r.json()["error"];
        assert_eq!(err["code"], "rate_limited", "{}", r.body);
        assert!(
            err["message"]
                .as_str()
                .unwrap_or("")
                .contains("0.01 calls per second"),
            "{}",
            r.body
        );
        let retry: u64 = r
            .header("Retry-After")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(retry >= 1, "{:?}", r.headers);
    }
    drop((a, b));
}
