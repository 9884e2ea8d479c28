//! The browser side end to end:
//! - the SDK's own tests (`sdk/js`, node's test runner) against the real `dialbridge serve`;
//! - the web console in Debian's Chromium, headless (playwright-core pointed at the system
//!   browser): sign in, place a call with the Call button to a SIPp phone and a SIPp carrier,
//!   watch it go ringing -> in-progress -> completed without a reload, open its SIP ladder,
//!   check that a hostile reason phrase stays text, see its callback deliveries with their
//!   retries, the call log and the registrations. Screenshots go to
//!   `target/console-screenshots/`.
//!
//! - the browser phone (`/console/phone.html`, JsSIP) in the same Chromium with a fake
//!   microphone: it registers over WSS, a click-to-call through the REST API rings it, it
//!   answers, and audio flows between its WebRTC media (ICE-lite, DTLS-SRTP at the relay) and
//!   a SIPp carrier speaking plain RTP; packet counts both ways are checked in the browser
//!   (getStats) and at the relay (the call's media statistics).
//!
//! Needs `node` and `chromium` (Debian packages; `.ci/run` installs them). The npm packages
//! of `sdk/js` (`npm ci`) are installed on first use.

use sip_tests::c2c::{fixture, fixture_with, SECRET, USER};
use sip_tests::http::request;
use sip_tests::{dialbridge_bin, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sdk_dir() -> PathBuf {
    workspace_root().join("sdk").join("js")
}

/// `npm ci` in `sdk/js` when its packages are missing (once per test binary).
fn npm_packages() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let dir = sdk_dir();
    if !dir.join("node_modules").join("playwright-core").exists()
        || !dir.join("node_modules").join("typescript").exists()
        || !dir.join("node_modules").join("openapi-typescript").exists()
    {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is installed (Debian: nodejs, npm)");
        assert!(st.success(), "npm ci in sdk/js failed");
    }
    *done = true;
}

/// Runs `node --test FILE` in `sdk/js` with `envs`, within `limit`; returns (success, output).
fn node_test(file: &str, envs: &[(&str, String)], limit: Duration) -> (bool, String) {
    npm_packages();
    let dir = sip_tests::TempDir::new("node");
    let out_path = dir.path().join("node.out");
    let out = std::fs::File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("output file");
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-reporter=spec", file])
        .current_dir(sdk_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("node is installed (Debian: nodejs)");
    let deadline = Instant::now() + limit;
    let ok = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    (ok, std::fs::read_to_string(&out_path).unwrap_or_default())
}

fn passed(output: &str) -> usize {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("ℹ pass ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// The TypeScript types generated from the published OpenAPI document (`docs/openapi.json`,
/// by openapi-typescript) compile against the SDK's own: what `calls.create` sends is a body
/// the document takes, and a call as the document answers it is the SDK's `Call`
/// (`sdk/js/typecheck/openapi.ts`).
#[test]
fn sdk_types_fit_the_openapi_document() {
    npm_packages();
    let out = Command::new("npm")
        .args(["run", "--silent", "typecheck:api"])
        .current_dir(sdk_dir())
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "the SDK's types and the OpenAPI document disagree:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sdk_tests_pass_against_the_real_server() {
    let bin = dialbridge_bin();
    let (ok, out) = node_test(
        "test/sdk.test.mjs",
        &[("DIALBRIDGE_BIN", bin.display().to_string())],
        Duration::from_secs(180),
    );
    println!("{out}");
    assert!(ok, "the SDK's tests failed:\n{out}");
    assert!(
        passed(&out) >= 7,
        "fewer SDK tests passed than there are:\n{out}"
    );
}

fn chromium() -> PathBuf {
    let p = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        Path::new(&p).exists(),
        "no Chromium at {} (Debian: apt-get install chromium)",
        p.display()
    );
    p
}

#[test]
fn console_places_and_watches_a_call_in_headless_chromium() {
    let browser = chromium();
    // The receiver refuses the first callback: the console shows the retry.
    let f = fixture(1);
    // Calls for the call log's pages: before any phone registers, each fails at once.
    const SEEDED: usize = 11;
    let seeded: Vec<String> = (0..SEEDED)
        .map(|i| {
            f.place(serde_json::json!({
                "user_id": sip_tests::c2c::USER,
                "dial_string": format!("+1415555{:04}", 200 + i),
            }))
        })
        .collect();
    for id in &seeded {
        assert_eq!(f.ended(id)["status"], "failed");
    }
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_ring_script_reason.xml", &["-d", "4000"]);
    let shots = workspace_root().join("target").join("console-screenshots");
    let (ok, out) = node_test(
        "browser-test/console.test.mjs",
        &[
            ("DIALBRIDGE_URL", format!("http://{}", f.api())),
            ("DIALBRIDGE_SECRET", SECRET.to_owned()),
            ("DIAL_STRING", "+14155550100".to_owned()),
            ("CALLBACK_URL", f.receiver.url("/hook")),
            ("SCREENSHOT_DIR", shots.display().to_string()),
            ("CHROMIUM", browser.display().to_string()),
            ("SEEDED_CALLS", SEEDED.to_string()),
        ],
        Duration::from_secs(240),
    );
    println!("{out}");
    assert!(
        ok,
        "the console test failed:\n{out}\n--- server log ---\n{}",
        f.server.log_text()
    );
    assert_eq!(passed(&out), 2, "the console tests did not all run:\n{out}");
    let c = carrier.wait(Duration::from_secs(30));
    assert_eq!(c.code, 0, "{}", c.output);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    // What the browser showed is what the server holds.
    let log = request(
        f.api(),
        "GET",
        "/v1/calls?limit=1",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    )
    .json();
    assert_eq!(log["data"][0]["status"], "completed", "{log}");
    for name in [
        "01-sign-in",
        "02-live-call-in-progress",
        "03-live-call-completed",
        "04-call-ladder",
        "05-call-log",
        "06-registrations",
    ] {
        let p = shots.join(format!("{name}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "no screenshot {}", p.display());
    }
}

#[test]
fn browser_phone_answers_over_wss_with_webrtc_media_to_a_plain_rtp_carrier() {
    let browser = chromium();
    let ca = sip_tests::tls::TestCa::new("phone");
    let identity = ca.issue("server", &["localhost", "127.0.0.1"]);
    let extra = format!(
        "[log]\nsip_trace = true\n[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\", \"wss:127.0.0.1:0\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        identity.cert.display(),
        identity.key.display()
    );
    let f = fixture_with(0, &extra);
    let wss = f
        .server
        .websocket
        .iter()
        .find_map(|a| a.strip_prefix("wss:"))
        .expect("a wss: listen address announced")
        .to_string();
    // Plain RTP: it echoes what the relay sends it and plays a G.711 recording; two calls
    // (the click-to-call, then the browser's own call).
    let _carrier = f.carrier("carrier_answer.xml", &["-rtp_echo", "-m", "2"]);
    let shots = workspace_root().join("target").join("console-screenshots");
    let (ok, out) = node_test(
        "browser-test/phone.test.mjs",
        &[
            ("DIALBRIDGE_URL", format!("http://{}", f.api())),
            ("DIALBRIDGE_SECRET", SECRET.to_string()),
            ("WSS_URL", format!("wss://{wss}")),
            ("SIP_URI", "sip:alice-soft@dialbridge.test".to_string()),
            ("SIP_PASSWORD", "s3cret-soft".to_string()),
            ("USER_ID", USER.to_string()),
            ("DIAL_STRING", "+14155550100".to_string()),
            ("DIAL_OUT", "+14155550199".to_string()),
            ("SCREENSHOT_DIR", shots.display().to_string()),
            ("CHROMIUM", browser.display().to_string()),
        ],
        Duration::from_secs(180),
    );
    println!("{out}");
    assert!(
        ok && passed(&out) == 1,
        "the browser phone test failed:\n{out}\n--- server log ---\n{}",
        f.server.log_text()
    );
    let result: serde_json::Value = out
        .lines()
        .find_map(|l| l.split_once("PHONE_RESULT ").map(|(_, j)| j.trim()))
        .and_then(|j| serde_json::from_str(j).ok())
        .expect("the page's result line");
    let id = result["call_id"].as_str().expect("call id").to_string();
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let stats = &call["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    // Browser -> relay (SRTP, decrypted) -> carrier (plain), and back.
    assert!(n("agent", "rx_packets") >= 100, "{stats}");
    assert!(n("customer", "tx_packets") >= 100, "{stats}");
    assert!(n("customer", "rx_packets") >= 100, "{stats}");
    assert!(n("agent", "tx_packets") >= 100, "{stats}");
    assert_eq!(n("agent", "srtp_dropped"), 0, "{stats}");
    // What the browser counted is what the relay counted, give or take the packets in
    // flight when the page read its statistics.
    let sent = result["browser"]["packetsSent"].as_u64().unwrap_or(0);
    let received = result["browser"]["packetsReceived"].as_u64().unwrap_or(0);
    assert!(n("agent", "rx_packets") >= sent, "{stats} vs {result}");
    assert!(n("agent", "tx_packets") >= received, "{stats} vs {result}");
    // The browser's own call (it offered WebRTC, the carrier got plain RTP): logged as a
    // phone's call, media counted both ways at the relay.
    let r = request(
        f.api(),
        "GET",
        "/v1/calls?limit=10",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json()["data"].as_array().cloned().unwrap_or_default();
    let own = list
        .iter()
        .find(|c| c["origin"] == "phone")
        .unwrap_or_else(|| panic!("the browser's call is logged: {list:?}"));
    let own = f.ended(own["call_id"].as_str().expect("call id"));
    assert_eq!(own["status"], "completed", "{own}");
    let stats = &own["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    for (leg, k) in [
        ("agent", "rx_packets"),
        ("agent", "tx_packets"),
        ("customer", "rx_packets"),
        ("customer", "tx_packets"),
    ] {
        assert!(n(leg, k) >= 100, "{leg} {k}: {stats}");
    }
    assert!(out.contains("PHONE_OUT_RESULT"), "{out}");
    let log = f.server.log_text();
    assert_eq!(
        log.matches("webrtc: dtls-srtp established").count(),
        2,
        "both calls' browser legs: {log}"
    );
}

#[test]
fn the_console_asset_bundle_of_jssip_is_what_its_locked_packages_build() {
    let dir = workspace_root().join("crates").join("api").join("console");
    if !dir.join("node_modules").join("esbuild").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is installed (Debian: nodejs, npm)");
        assert!(st.success(), "npm ci in crates/api/console failed");
    }
    let out = Command::new("npm")
        .args(["run", "--silent", "check"])
        .current_dir(&dir)
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "crates/api/console/vendor/jssip.js is not what `npm run build` makes:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
