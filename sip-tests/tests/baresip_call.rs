//! Click-to-call with baresip as the agent's softphone (registering, auto-answering, sending
//! a tone) and SIPp as the carrier, over UDP and over TCP: the call completes and RTP crosses
//! the relay both ways.

use sip_tests::baresip::{Baresip, BaresipConfig, SipTransport};
use sip_tests::c2c::{final_callback, fixture, verified_statuses, USER};
use std::time::Duration;

fn baresip_agent_call(transport: SipTransport) {
    let f = fixture(0);
    let registrar = match transport {
        SipTransport::Udp => f.server.udp_addr(),
        SipTransport::Tcp => f.server.tcp_addr(),
        SipTransport::Tls => f.server.tls[0],
    };
    let mut phone = Baresip::start(&BaresipConfig::device(
        "alice-desk",
        "s3cret-desk",
        registrar,
        transport,
    ))
    .expect("baresip starts");
    phone
        .wait_registered(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", f.server.log_text()));
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "3000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}\nbaresip:\n{}", c.output, phone.log_text());
    let call = f.ended(&id);
    assert_eq!(
        call["status"],
        "completed",
        "{call}\nbaresip:\n{}",
        phone.log_text()
    );
    final_callback(&f.receiver, "completed");
    let statuses = verified_statuses(&f.receiver);
    assert!(
        statuses.contains(&"in-progress".to_string()),
        "{statuses:?}"
    );
    let stats = &call["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    // baresip's tone reached the carrier, the carrier's audio reached baresip.
    assert!(n("agent", "rx_packets") > 50, "{stats}");
    assert!(n("customer", "tx_packets") > 50, "{stats}");
    assert!(n("customer", "rx_packets") > 20, "{stats}");
    assert!(n("agent", "tx_packets") > 20, "{stats}");
}

#[test]
fn baresip_agent_over_udp() {
    baresip_agent_call(SipTransport::Udp);
}

#[test]
fn baresip_agent_over_tcp() {
    baresip_agent_call(SipTransport::Tcp);
}
