//! The browser side end to end:
//! - the SDK's own tests (`sdk/js`, node's test runner) against the real `dialbridge serve`;
//! - the web console in Debian's Chromium, headless (playwright-core pointed at the system
//!   browser): sign in, place a call with the Call button to a SIPp phone and a SIPp carrier,
//!   watch it go ringing -> in-progress -> completed without a reload, open its SIP ladder,
//!   check that a hostile reason phrase stays text, see its callback deliveries with their
//!   retries, the call log and the registrations. Screenshots go to
//!   `target/console-screenshots/`.
//!
//! Needs `node` and `chromium` (Debian packages; `.ci/run` installs them). The npm packages
//! of `sdk/js` (`npm ci`) are installed on first use.

use sip_tests::c2c::{fixture, SECRET};
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
