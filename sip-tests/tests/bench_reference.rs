//! The reference `c2c-bench --reference kamailio` measures beside dialbridge: Kamailio with
//! `deploy/kamailio/proxy.cfg` relays whole calls between the bench's SIPp caller and callee
//! (`bench_caller.xml`, `bench_callee.xml`), so the benchmark's yardstick keeps working.

use std::time::Duration;

use sip_tests::bench::{installed, BenchSipp, Kamailio};
use sip_tests::{free_port, scenario, sipp, workspace_root, TempDir};

#[test]
fn kamailio_as_the_reference_proxy_relays_whole_calls() {
    assert!(
        installed("kamailio", &["-v"]),
        "kamailio is not installed (apt-get install kamailio)"
    );
    let dir = TempDir::new("bench-reference");
    let callee_port = free_port();
    let callee_sf = scenario("bench_callee.xml").to_string_lossy().into_owned();
    let (cport, cmp) = (callee_port.to_string(), free_port().to_string());
    let mut callee = BenchSipp::spawn(
        "callee",
        &[
            "-sf",
            &callee_sf,
            "-i",
            "127.0.0.1",
            "-p",
            &cport,
            "-mp",
            &cmp,
            "-m",
            "10",
            "-timeout",
            "60s",
            "-timeout_error",
        ],
    )
    .expect("sipp starts");
    let cfg = std::fs::read_to_string(workspace_root().join("deploy/kamailio/proxy.cfg"))
        .expect("deploy/kamailio/proxy.cfg");
    let port = free_port();
    let kamailio = Kamailio::start(
        dir.path(),
        "proxy.cfg",
        &cfg,
        port,
        16,
        &[format!("CALLEE=\"sip:127.0.0.1:{callee_port}\"")],
    )
    .expect("kamailio starts");

    let caller_sf = scenario("bench_caller.xml").to_string_lossy().into_owned();
    let target = format!("127.0.0.1:{port}");
    let lmp = free_port().to_string();
    let run = sipp(
        &[
            "-sf",
            &caller_sf,
            &target,
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-mp",
            &lmp,
            "-m",
            "10",
            "-r",
            "10",
            "-d",
            "200",
            "-timeout",
            "60s",
            "-timeout_error",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(run.stat("SuccessfulCall(C)"), Some(10), "{:?}", run.stats);
    // The callee took each INVITE, ACK and BYE through the proxy (it knows no other way in)
    // and answered the BYE: its ten calls ended as the scenario says.
    let callee_totals = callee.finish(Duration::from_secs(10));
    assert_eq!(callee_totals.exit_code, 0, "{}", callee.errors(10));
    assert_eq!(callee_totals.successful, 10, "{callee_totals:?}");
    assert_eq!(callee_totals.failed, 0, "{callee_totals:?}");
    drop(kamailio);
}
