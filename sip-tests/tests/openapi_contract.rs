//! The REST API against its own OpenAPI document: Schemathesis (`st run --checks all`, all
//! phases) drives a real `dialbridge serve` from `/openapi.json` and the run must find
//! nothing beyond the committed baseline `.ci/schemathesis/baseline.json`, which holds only
//! the deliberate exceptions (the Click-2-Call routes answer `200` to everything, as that
//! API's shape requires), each with its reason.
//!
//! Schemathesis is a Python tool: `.ci/run` installs the pinned version and puts `st` on the
//! `PATH`; `$DIALBRIDGE_ST` names another `st`. Without it the test says so and passes.
//! `$DIALBRIDGE_ST_MAX_TIME` is the time budget in seconds (default 120).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use sip_tests::{wait_limit, workspace_root, TempDir, TestServer};

fn find_st() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DIALBRIDGE_ST") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("st"))
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .map(|o| {
                    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("st, version")
                })
                .unwrap_or(false)
        })
}

#[test]
fn schemathesis_finds_nothing_beyond_the_baseline() {
    let Some(st) = find_st() else {
        eprintln!(
            "SKIPPED: Schemathesis (`st`) is not installed; `.ci/run` installs it \
             (pip install schemathesis==4.32.5), or set DIALBRIDGE_ST"
        );
        return;
    };
    let dir = workspace_root().join(".ci/schemathesis");
    let baseline = dir.join("baseline.json");
    // Without the file, `st` would write one from this run and pass.
    assert!(baseline.exists(), "{} is missing", baseline.display());
    let config = std::fs::read_to_string(dir.join("server.toml")).expect("server.toml");
    let mut server = TestServer::start(&config);
    let api = server.api.expect("REST address");
    let max_time: u64 = std::env::var("DIALBRIDGE_ST_MAX_TIME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let work = TempDir::new("schemathesis");
    let log = work.path().join("st.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(&st)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{api}/openapi.json"))
        .args(["--checks", "all", "--no-color", "--max-time"])
        .arg(max_time.to_string())
        .arg("--baseline")
        .arg(&baseline)
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start st");
    let (code, _) = wait_limit(child, Duration::from_secs(max_time + 180));
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = report
        .find("SUMMARY")
        .map(|i| &report[i..])
        .unwrap_or(&report);
    println!("{summary}");
    assert!(server.is_running(), "the server died during the run");
    assert_eq!(
        code, 0,
        "Schemathesis found failures beyond the baseline:\n{report}"
    );
    server.stop();
}
