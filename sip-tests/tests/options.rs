//! OPTIONS over UDP, TCP and IPv6 with SIPp, and retransmissions under loss; the server's
//! runtime threads as `[runtime] workers` sets them.

use sip_tests::{scenario, sipp, TestServer};
use std::time::Duration;

fn options(target: &str, extra: &[&str], calls: &str) -> sip_tests::SippRun {
    let sf = scenario("options_uac.xml");
    let sf = sf.to_string_lossy();
    let mut args = vec![
        "-sf",
        &sf,
        target,
        "-m",
        calls,
        "-timeout",
        "60s",
        "-timeout_error",
    ];
    args.extend_from_slice(extra);
    sipp(&args, Duration::from_secs(90))
}

#[test]
fn options_over_udp() {
    let server = TestServer::start("");
    let target = server.udp_addr().to_string();
    let run = options(&target, &["-i", "127.0.0.1", "-p", "0", "-r", "50"], "20");
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(run.stat("SuccessfulCall(C)"), Some(20), "{:?}", run.stats);
}

#[test]
fn options_over_tcp() {
    let server = TestServer::start("");
    let target = server.tcp_addr().to_string();
    let run = options(&target, &["-t", "t1", "-i", "127.0.0.1", "-p", "0"], "20");
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(run.stat("SuccessfulCall(C)"), Some(20));
}

#[test]
fn options_over_ipv6() {
    let server = TestServer::start(
        "[sip]\nlisten = [\"udp:[::1]:0\", \"tcp:[::1]:0\", \"udp:127.0.0.1:0\"]\n",
    );
    let v6 = server
        .udp
        .iter()
        .find(|a| a.is_ipv6())
        .expect("IPv6 listener")
        .to_string();
    let run = options(&v6, &["-i", "::1", "-p", "0"], "5");
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(run.stat("SuccessfulCall(C)"), Some(5));
    let v6t = server
        .tcp
        .iter()
        .find(|a| a.is_ipv6())
        .expect("IPv6 TCP listener")
        .to_string();
    let run = options(&v6t, &["-t", "t1", "-i", "::1", "-p", "0"], "5");
    assert_eq!(run.code, 0, "{}", run.output);
}

/// With 10 % of SIPp's messages lost, retransmissions (Timer E on SIPp's side, and the
/// server transaction absorbing the retransmitted requests) still complete every one.
#[test]
fn options_with_ten_percent_loss() {
    let server = TestServer::start("");
    let target = server.udp_addr().to_string();
    let run = options(
        &target,
        &["-i", "127.0.0.1", "-p", "0", "-lost", "10", "-r", "20"],
        "60",
    );
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(run.stat("SuccessfulCall(C)"), Some(60), "{:?}", run.stats);
    assert!(
        run.stat("Retransmissions(C)").unwrap_or(0) > 0,
        "{:?}",
        run.stats
    );
}

/// `[runtime] workers` sets the runtime's worker threads; without it there is one fewer than
/// the cores, and at least one. Either way the server answers.
#[test]
fn the_runtime_runs_the_configured_workers() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (config, workers) in [("[runtime]\nworkers = 3\n", 3), ("", (cores - 1).max(1))] {
        let server = TestServer::start(config);
        let target = server.udp_addr().to_string();
        let run = options(&target, &["-i", "127.0.0.1", "-p", "0"], "3");
        assert_eq!(run.code, 0, "{}", run.output);
        let said = format!("runtime started workers={workers}");
        assert!(
            server.wait_log(&said, Duration::from_secs(5)),
            "config {config:?}: no {said:?} in\n{}",
            server.log_text()
        );
    }
}
