//! `dialbridge demo` as a user runs it, inside a network namespace that has only loopback:
//! it must exit 0 and show the completed call, the callbacks and the relayed packets.

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn demo_completes_a_call_with_rtp_both_ways_on_loopback_only() {
    if sip_tests::in_netns("demo_completes_a_call_with_rtp_both_ways_on_loopback_only") {
        return;
    }
    let child = Command::new(sip_tests::dialbridge_bin())
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dialbridge demo");
    let (code, out) = sip_tests::wait_limit(child, Duration::from_secs(90));
    assert_eq!(code, 0, "demo failed:\n{out}");
    assert!(out.contains(": completed"), "{out}");
    for status in ["ringing", "in-progress", "completed", "recording.ready"] {
        assert!(
            out.lines()
                .any(|l| l.contains(status) && l.contains("signature verified")),
            "no verified {status} callback:\n{out}"
        );
    }
    assert!(!out.contains("INVALID"), "{out}");
    // The relayed counts each way, as printed: "<n> packets in from ..., <m> out to ...".
    let counts = |prefix: &str| -> (u64, u64) {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' line:\n{out}"));
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        (nums[0], nums[1])
    };
    let (a, b) = counts("carrier -> agent:");
    assert!(a > 50 && b > 50, "{out}");
    let (a, b) = counts("agent -> carrier:");
    assert!(a > 50 && b > 50, "{out}");
    assert!(
        out.contains("alice-soft  ended (cancelled by the caller)"),
        "{out}"
    );
    assert!(
        out.contains("timeline:") && out.contains("in_progress"),
        "{out}"
    );
    assert!(out.contains("demo: OK"), "{out}");
    // The recorded call and where its file is.
    let file = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("file "))
        .map(|f| f.trim().to_string())
        .expect("the recording's file is printed");
    assert!(file.ends_with(".wav"), "{file}");
    let wav = std::fs::read(&file).expect("the recording is kept after the demo");
    assert!(media::g711::parse_wav_stereo(&wav).is_ok());
    let _ = std::fs::remove_file(&file);
}
