//! The reference `c2c-bench --reference kamailio` measures beside dialbridge: Kamailio with
//! `deploy/kamailio/proxy.cfg` relays whole calls between the bench's SIPp caller and callee
//! (`bench_caller.xml`, `bench_callee.xml`), so the benchmark's yardstick keeps working.

use std::time::Duration;

use sip_tests::bench::{installed, ReferenceProxy};
use sip_tests::sipp;

#[test]
fn kamailio_as_the_reference_proxy_relays_whole_calls() {
    assert!(
        installed("kamailio", &["-v"]),
        "kamailio is not installed (apt-get install kamailio)"
    );
    let mut reference = ReferenceProxy::start(10, "60s").expect("the callee and kamailio start");
    let args = reference.caller_args(10, 10.0, 200, "60s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sipp(&args, Duration::from_secs(90));
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(run.stat("SuccessfulCall(C)"), Some(10), "{:?}", run.stats);
    // The callee took each INVITE, ACK and BYE through the proxy (it knows no other way in)
    // and answered the BYE: its ten calls ended as the scenario says.
    let callee_totals = reference.callee.finish(Duration::from_secs(10));
    assert_eq!(
        callee_totals.exit_code,
        0,
        "{}",
        reference.callee.errors(10)
    );
    assert_eq!(callee_totals.successful, 10, "{callee_totals:?}");
    assert_eq!(callee_totals.failed, 0, "{callee_totals:?}");
}
