//! Click-to-call end to end: the real server, SIPp as the agent's phones and as the carrier,
//! a callback receiver, the REST API. Each test checks the SIP on the wire (SIPp scenarios
//! fail on anything unexpected), the callbacks (order, signature), the call log, and the RTP
//! counted by the relay.

use sip_tests::c2c::{final_callback, fixture, verified_statuses, USER};
use std::time::Duration;

#[test]
fn agent_answers_other_device_cancelled_customer_answers_rtp_both_ways() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let soft = f.phone("alice-soft", "s3cret-soft", "agent_ring_cancel.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "3000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    let s = soft.wait(Duration::from_secs(30));
    assert_eq!(s.code, 0, "{}", s.output);
    assert!(
        s.output.contains("cause=200") && s.output.contains("Call completed elsewhere"),
        "the losing device's CANCEL lacks the Reason: {}",
        s.output
    );
    // The carrier saw the caller ID in From and P-Asserted-Identity.
    assert!(c.output.contains("+14155551234"), "{}", c.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let done = final_callback(&f.receiver, "completed");
    assert_eq!(done["leg"], "customer", "{done}");
    assert!(
        done["duration"].as_u64().unwrap_or(0) >= 2,
        "{done}\n{call}\n{}",
        c.output
    );
    let statuses = verified_statuses(&f.receiver);
    let pos = |s: &str| statuses.iter().position(|x| x == s);
    assert!(
        pos("ringing") < pos("in-progress") && pos("in-progress") < pos("completed"),
        "{statuses:?}"
    );
    // RTP: the carrier's audio reached the agent, and the agent's echo came back.
    let stats = &call["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    assert!(n("customer", "rx_packets") > 50, "{stats}");
    assert!(n("agent", "tx_packets") > 50, "{stats}");
    assert!(n("agent", "rx_packets") > 50, "{stats}");
    assert!(n("customer", "tx_packets") > 50, "{stats}");
    // The timeline tells the SIP story with times.
    let timeline = call["timeline"].as_array().cloned().unwrap_or_default();
    assert!(timeline.len() > 6, "{call}");
}

#[test]
fn customer_busy_ends_busy_and_agent_gets_bye() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_busy.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "4155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert_eq!(carrier.wait(Duration::from_secs(30)).code, 0);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "agent must get a BYE: {}", d.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    let cb = final_callback(&f.receiver, "busy");
    assert_eq!(cb["leg"], "customer");
    assert_eq!(cb["sip_code"], 486);
}

#[test]
fn agent_busy_ends_busy_on_the_agent_leg() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_busy.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    let cb = final_callback(&f.receiver, "busy");
    assert_eq!(cb["leg"], "agent");
    assert_eq!(cb["sip_code"], 486);
}

#[test]
fn agent_never_answers_is_no_answer_and_cancelled() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_ring_cancel.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "ring_timeout": 2,
        "callback_url": f.receiver.url("/hook"),
    }));
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "no-answer", "{call}");
    let cb = final_callback(&f.receiver, "no-answer");
    assert_eq!(cb["leg"], "agent");
}

#[test]
fn carrier_challenge_is_answered_with_trunk_credentials() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_407.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}",
        f.receiver.accepted()
    );
    assert_eq!(f.hangup(&id), 202);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    assert!(
        c.output.contains("AUTH ruri=sip:+14155550100@127.0.0.1"),
        "{}",
        c.output
    );
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
}

#[test]
fn carrier_401_digest_is_verified() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_401_verify.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}",
        f.receiver.accepted()
    );
    assert_eq!(f.hangup(&id), 202);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    assert!(c.output.contains("AUTH OK"), "{}", c.output);
    let _ = desk.wait(Duration::from_secs(30));
}

#[test]
fn early_media_reaches_the_agent_then_busy() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_early_media_busy.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert_eq!(carrier.wait(Duration::from_secs(30)).code, 0);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    let stats = &call["stats"];
    assert!(
        stats["customer"]["rx_packets"].as_u64().unwrap_or(0) > 10,
        "{stats}"
    );
    assert!(
        stats["agent"]["tx_packets"].as_u64().unwrap_or(0) > 10,
        "early media did not reach the agent: {stats}"
    );
    let statuses = verified_statuses(&f.receiver);
    assert!(statuses.contains(&"ringing".to_string()), "{statuses:?}");
}

#[test]
fn api_hangup_while_the_agent_rings_is_canceled() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_ring_cancel.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver.wait_status("ringing", Duration::from_secs(20)),
        "{:?}",
        f.receiver.accepted()
    );
    assert_eq!(f.hangup(&id), 202);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "canceled", "{call}");
    final_callback(&f.receiver, "canceled");
}

#[test]
fn callbacks_are_retried_until_accepted() {
    let f = fixture(2);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_busy.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let _ = f.ended(&id);
    final_callback(&f.receiver, "busy");
    let all = f.receiver.deliveries();
    assert!(all.iter().filter(|d| d.answered == 500).count() >= 2);
    // The same event id on each retry; each event accepted once.
    let mut ids: Vec<String> = f
        .receiver
        .accepted()
        .iter()
        .map(|b| b["event_id"].as_str().unwrap_or("").to_string())
        .collect();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n);
    let _ = verified_statuses(&f.receiver);
}

/// Both devices answer at once: the first 200 wins; the other 200 is ACKed and BYEd (and a
/// CANCEL may cross it). Both phones end cleanly and the call completes once.
#[test]
fn two_devices_answer_at_once() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer_race.xml", &[]);
    let soft = f.phone("alice-soft", "s3cret-soft", "agent_answer_race.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "2000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    let d = desk.wait(Duration::from_secs(30));
    let s = soft.wait(Duration::from_secs(30));
    // The devices answer within microseconds of each other; the one whose 200 the B2BUA
    // took second either answered already (then its 200 is ACKed and BYEd: the scenario
    // ends cleanly) or had not sent it yet when the CANCEL came (SIPp then stops that
    // scenario on the CANCEL it did not script before its 200). Both are right; at least one
    // device must have completed the whole call.
    let lost_before_answering =
        |r: &sip_tests::SippRun| r.code != 0 && r.output.contains("unexpected CANCEL");
    assert!(d.code == 0 || lost_before_answering(&d), "{}", d.output);
    assert!(s.code == 0 || lost_before_answering(&s), "{}", s.output);
    assert!(d.code == 0 || s.code == 0, "{}\n{}", d.output, s.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    final_callback(&f.receiver, "completed");
    let statuses = verified_statuses(&f.receiver);
    assert_eq!(
        statuses.iter().filter(|s| *s == "in-progress").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "completed").count(),
        1,
        "{statuses:?}"
    );
}

/// The customer rings past its ring time: CANCEL, `no-answer` on the customer leg, and the
/// agent gets a BYE.
#[test]
fn customer_ring_timeout_is_no_answer() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_ring_forever.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "the carrier must get a CANCEL: {}", c.output);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "no-answer", "{call}");
    let cb = final_callback(&f.receiver, "no-answer");
    assert_eq!(cb["leg"], "customer");
}

/// The agent puts the call on hold (re-INVITE, sendonly): the offer reaches the carrier
/// rewritten to the relay, the carrier's recvonly answer comes back to the agent; then the
/// agent hangs up and the call completes on the agent leg.
#[test]
fn hold_re_invite_passes_through_and_agent_hangs_up() {
    let f = fixture(0);
    let desk = f.phone(
        "alice-desk",
        "s3cret-desk",
        "agent_answer_hold_hangup.xml",
        &["-d", "1500"],
    );
    let carrier = f.carrier("carrier_answer_hold.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let d = desk.wait(Duration::from_secs(60));
    assert_eq!(d.code, 0, "{}", d.output);
    assert!(d.output.contains("HOLD ANSWER"), "{}", d.output);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    assert!(c.output.contains("REINVITE"), "{}", c.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let cb = final_callback(&f.receiver, "completed");
    assert_eq!(cb["leg"], "agent");
}

/// The number after `key` in a SIPp log (e.g. `relay_port=` in `INVITE relay_port=40002`).
fn logged_number(output: &str, line_start: &str, key: &str) -> Option<u32> {
    let line = output.lines().find(|l| l.contains(line_start))?;
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// UPDATE (RFC 3311) from the agent after the answer: the hold offer reaches the carrier as
/// an UPDATE (not a re-INVITE), its answer comes back, and each side sees the relay's port
/// for it in the SDP, the same port as in the first offer/answer (media stays anchored).
#[test]
fn hold_update_passes_through_with_sdp_on_the_relay() {
    let f = fixture(0);
    let desk = f.phone(
        "alice-desk",
        "s3cret-desk",
        "agent_answer_update_hangup.xml",
        &["-d", "1500"],
    );
    let carrier = f.carrier("carrier_answer_update.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let d = desk.wait(Duration::from_secs(60));
    assert_eq!(d.code, 0, "{}", d.output);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    // The agent's UPDATE answer is recvonly, on the relay port it was offered first.
    let agent_first = logged_number(&d.output, "INVITE relay_port=", "relay_port=");
    let agent_update = logged_number(&d.output, "UPDATE ANSWER a=recvonly", "relay_port=");
    assert!(agent_first.is_some(), "{}", d.output);
    assert_eq!(agent_first, agent_update, "{}", d.output);
    // The carrier got an UPDATE (sendonly) with the relay's port for its side.
    let carrier_first = logged_number(&c.output, "INVITE relay_port=", "relay_port=");
    let carrier_update = logged_number(&c.output, "UPDATE a=sendonly", "relay_port=");
    assert!(carrier_first.is_some(), "{}", c.output);
    assert_eq!(carrier_first, carrier_update, "{}", c.output);
    assert_ne!(
        agent_first, carrier_first,
        "each leg has its own relay port"
    );
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let cb = final_callback(&f.receiver, "completed");
    assert_eq!(cb["leg"], "agent");
}

/// SIGTERM while a call is up: no new calls, the live one goes on for the grace period
/// (`calls.shutdown_grace_secs`, 1 s here), then both legs get a BYE and the server exits.
#[test]
fn sigterm_drains_live_calls_then_hangs_up() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(20)),
        "{:?}",
        f.receiver.accepted()
    );
    let _ = id;
    let started = std::time::Instant::now();
    let _dir = f.server.stop();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "no grace period"
    );
    let c = carrier.wait(Duration::from_secs(20));
    assert_eq!(c.code, 0, "the carrier must get a BYE: {}", c.output);
    let d = desk.wait(Duration::from_secs(20));
    assert_eq!(d.code, 0, "the agent must get a BYE: {}", d.output);
}

/// No RTP from either side for `media.timeout_secs`: both legs get a BYE and the call ends.
#[test]
fn media_timeout_hangs_up_both_legs() {
    let f = sip_tests::c2c::fixture_with(0, "[media]\nports = \"40000-49999\"\ntimeout_secs = 2\n");
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_silent.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "the carrier must get a BYE: {}", c.output);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    assert!(
        call.to_string().contains("media time-out"),
        "the outcome must say why: {call}"
    );
}

/// The customer takes fewer codecs (PCMA only) than the agent did (PCMU and PCMA): the agent
/// is re-INVITEd with the customer's codecs once the customer answers.
#[test]
fn agent_is_reinvited_with_the_customer_codecs() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer_realign.xml", &[]);
    let carrier = f.carrier("carrier_answer_pcma_hangup.xml", &["-d", "2000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    assert!(d.output.contains("REALIGNED"), "{}", d.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
}

/// Click-2-Call style: the agent leg is a number reached through the trunk (an upstream PBX),
/// with `dial_as` as the identity it sees; both legs go to the carrier, then an API hang-up
/// ends both.
#[test]
fn click2call_agent_leg_through_the_trunk() {
    let f = fixture(0);
    let carrier = f.carrier("carrier_answer.xml", &["-m", "2"]);
    let r = sip_tests::http::request(
        f.api(),
        "GET",
        "/click2call?api_key=sk_test_1&dial_first=%2B14155550111&dial_second=%2B14155550100&dial_as=%2B14155551234",
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["response"]["status"], "success", "{body}");
    let request_id = body["response"]["request_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let status = |rid: &str| {
        sip_tests::http::request(
            f.api(),
            "GET",
            &format!("/click2call/status/{rid}?api_key=sk_test_1"),
            &[],
            None,
        )
        .json()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let call_id = loop {
        let s = status(&request_id);
        if s["response"]["call_status"] == "in-progress" {
            break s["response"]["call_id"].as_str().unwrap_or("").to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never in progress: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(f.hangup(&call_id), 202);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    // The agent leg's INVITE went to +14155550111 showing the dial_as identity.
    assert!(
        c.output.contains("INVITE sip:+14155550111@"),
        "{}",
        c.output
    );
    let call = f.ended(&call_id);
    assert_eq!(call["status"], "completed", "{call}");
}

/// RFC 4028: the carrier asks for a 4 s session with dialbridge (the UAC) as refresher: a
/// refreshing re-INVITE arrives within the interval, and the call stays up until hung up.
#[test]
fn session_timer_is_refreshed() {
    let f = fixture(0);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_session_timer.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(20)),
        "{:?}",
        f.receiver.accepted()
    );
    assert!(
        carrier.wait_log("REFRESH", Duration::from_secs(6)),
        "no refresh: {}",
        carrier.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.hangup(&id), 202);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
}

/// INFO (DTMF relay) from the agent passes through to the carrier with its body, and the
/// carrier's answer comes back.
#[test]
fn info_passes_through() {
    let f = fixture(0);
    let desk = f.phone(
        "alice-desk",
        "s3cret-desk",
        "agent_answer_info_hangup.xml",
        &["-d", "500"],
    );
    let carrier = f.carrier("carrier_answer_info.xml", &[]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let d = desk.wait(Duration::from_secs(60));
    assert_eq!(d.code, 0, "{}", d.output);
    assert!(d.output.contains("INFO ANSWERED"), "{}", d.output);
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    assert!(c.output.contains("INFO Signal=5"), "{}", c.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
}
