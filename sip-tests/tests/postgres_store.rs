//! The server on PostgreSQL (`store.url = "postgres://..."`), black-box: a real PostgreSQL
//! started by the test (see `sip_tests::pg`), SIPp as the agent's phone and the carrier.

use sip_tests::c2c::{final_callback, fixture_with, USER};
use sip_tests::pg::PgServer;
use std::time::Duration;

/// A click-to-call ends with its record, timeline and signed callbacks written through the
/// PostgreSQL store; a second server on the same database sees the call and the binding.
#[test]
fn a_call_on_postgres_is_logged_with_its_callbacks_and_seen_after_a_restart() {
    let url = PgServer::get().fresh_database();
    let store = format!("[store]\nurl = \"{url}\"\n");
    let f = fixture_with(0, &store);
    assert!(
        f.server.log_text().contains("store opened (PostgreSQL)"),
        "{}",
        f.server.log_text()
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
