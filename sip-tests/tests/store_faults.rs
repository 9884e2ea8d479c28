//! Store faults, as an operator meets them: the store's disk fills during calls, the log's disk
//! fills, the server is killed mid-call. No call is left unfinished, no callback lost or sent
//! twice, no request left unanswered.
//!
//! The full disks are small tmpfs mounts in a private mount namespace (`unshare -m`, which
//! needs root, as in CI); filling and freeing them happens inside that namespace with
//! `nsenter`. Where that is impossible the disk tests say so and are skipped.

use sip_tests::c2c::{config, final_callback, verified_statuses, Fixture, SECRET, USER};
use sip_tests::http::{request, CallbackReceiver};
use sip_tests::{free_port, TempDir, TestServer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether this process may mount a tmpfs in a private mount namespace.
fn can_mount() -> bool {
    let ok = Command::new("unshare")
        .args([
            "-m",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "skipped: cannot mount a tmpfs in a private mount namespace here (needs root and unshare -m)"
        );
    }
    ok
}

/// A wrapper that runs the server in a private mount namespace with a tmpfs of `size` at
/// `mnt`; with `log_on_mnt`, its standard error goes to `mnt/server.log` (on the small disk).
fn in_small_disk(
    mnt: PathBuf,
    size: &'static str,
    log_on_mnt: bool,
) -> impl Fn(&Path, &Path, &Path) -> Command {
    move |bin, cfg, _log| {
        let script = if log_on_mnt {
            r#"mount -t tmpfs -o size=$4 tmpfs "$1" && exec "$2" serve --config "$3" 2>"$1/server.log""#
        } else {
            r#"mount -t tmpfs -o size=$4 tmpfs "$1" && exec "$2" serve --config "$3""#
        };
        let mut c = Command::new("unshare");
        c.args(["-m", "--", "sh", "-c", script, "sh"])
            .arg(&mnt)
            .arg(bin)
            .arg(cfg)
            .arg(size);
        c
    }
}

/// Runs `script` in the server's mount namespace.
fn in_ns(pid: u32, script: &str) {
    let st = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
        .status()
        .expect("nsenter");
    assert!(st.success(), "{script}");
}

fn fill(pid: u32, mnt: &Path) {
    in_ns(
        pid,
        &format!(
            "dd if=/dev/zero of={}/filler bs=4k 2>/dev/null; sync; true",
            mnt.display()
        ),
    );
}

fn free(pid: u32, mnt: &Path) {
    in_ns(pid, &format!("rm -f {}/filler", mnt.display()));
}

fn fixture_on(server: TestServer, carrier_port: u16) -> Fixture {
    assert!(server.api.is_some(), "the REST API is not listening");
    Fixture {
        server,
        receiver: CallbackReceiver::start(0),
        carrier_port,
    }
}

fn post_call(f: &Fixture) -> sip_tests::http::HttpResponse {
    let body = serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    });
    request(
        f.api(),
        "POST",
        "/v1/calls",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some(&body.to_string()),
    )
}

/// Polls `f` until it holds, for at most `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn the_stores_disk_fills_mid_call_and_the_call_still_ends_true_with_its_callbacks() {
    if !can_mount() {
        return;
    }
    let dir = TempDir::new("store-full");
    let mnt = dir.path().join("disk");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let carrier_port = free_port();
    let cfg = format!(
        "[store]\nurl = \"sqlite://{}/dialbridge.db\"\n{}",
        mnt.display(),
        config(carrier_port)
    );
    let wrap = in_small_disk(mnt.clone(), "3m", false);
    let server = TestServer::start_wrapped(dir, &cfg, Some(&wrap));
    let pid = server.pid();
    let f = fixture_on(server, carrier_port);
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "3000"]);
    let r = post_call(&f);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["call_id"].as_str().expect("call_id").to_owned();

    // The disk fills while the call rings and is answered.
    fill(pid, &mnt);
    // The store refuses the call's events: new calls are refused honestly, and /healthz
    // tells a load balancer to send work elsewhere.
    let mut refused = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            let r = post_call(&f);
            let done = r.status == 503;
            refused = Some(r);
            done
        }),
        "no 503 while the disk is full: {:?}\n{}",
        refused.as_ref().map(|r| (r.status, r.body.clone())),
        f.server.log_text()
    );
    let refused = refused.expect("an answer");
    assert_eq!(refused.json()["error"]["code"], "store_unavailable");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    // A phone that registers now gets 503 with Retry-After, not a 500 or silence. A full
    // disk can still take a small write for a while (SQLite reuses its WAL file's space
    // once the file was checkpointed), and a binding written there is truly durable, so a
    // 200 is a true answer too: then the next REGISTER, from a new port (a new contact, so
    // a new write), tries again, until the disk refuses one.
    let mut attempts = Vec::new();
    let registered = eventually(Duration::from_secs(30), || {
        let run = sip_tests::sipp_once(
            "register_store_unavailable.xml",
            f.server.udp_addr(),
            &[
                "-s",
                "alice-soft",
                "-au",
                "alice-soft",
                "-ap",
                "s3cret-soft",
                "-set",
                "expires",
                "300",
            ],
            15,
        );
        let done = run.code == 0;
        let stored = run.output.contains("received 'SIP/2.0 200 OK");
        attempts.push(run);
        done || !stored
    });
    let run = attempts.last().expect("a REGISTER");
    assert!(
        registered && run.code == 0,
        "REGISTER while the disk is full ({} attempts): {}",
        attempts.len(),
        run.output
    );
    let health = request(f.api(), "GET", "/healthz", &[], None);
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.json()["status"], "degraded");
    assert!(health.json()["store"].as_str().is_some(), "{}", health.body);

    // The call goes on and ends on the wire while its events wait.
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    assert_eq!(desk.wait(Duration::from_secs(30)).code, 0);

    // Space comes back: everything that waited is written, and the callbacks go out.
    free(pid, &mnt);
    assert!(
        eventually(Duration::from_secs(20), || request(
            f.api(),
            "GET",
            "/healthz",
            &[],
            None
        )
        .status
            == 200),
        "{}",
        f.server.log_text()
    );
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    let done = final_callback(&f.receiver, "completed");
    assert_eq!(done["leg"], "customer", "{done}");
    let statuses = verified_statuses(&f.receiver);
    // Ringing of the agent's phone, of the customer, answered, completed: each once, in order.
    assert_eq!(
        statuses,
        vec!["ringing", "ringing", "in-progress", "completed"],
        "each callback once, in order"
    );
    let metrics = request(f.api(), "GET", "/metrics", &[], None).body;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("dialbridge_store_write_failures_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures > 0, "{metrics}");
    // And new calls are taken again.
    let r = post_call(&f);
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn the_logs_disk_fills_and_every_request_is_still_answered() {
    if !can_mount() {
        return;
    }
    let dir = TempDir::new("log-full");
    let mnt = dir.path().join("logdisk");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let wrap = in_small_disk(mnt.clone(), "1m", true);
    let server = TestServer::start_wrapped(dir, &config(free_port()), Some(&wrap));
    let api = server.api.expect("api");
    fill(server.pid(), &mnt);
    // Every request logs (the access log at info, more at debug): all are answered.
    for i in 0..200 {
        let r = match i % 4 {
            0 => request(api, "GET", "/healthz", &[], None),
            1 => request(api, "GET", "/v1/calls", &[], None),
            2 => request(
                api,
                "GET",
                "/v1/calls",
                &[("Authorization", &format!("Bearer {SECRET}"))],
                None,
            ),
            _ => request(
                api,
                "POST",
                "/v1/calls",
                &[("Authorization", &format!("Bearer {SECRET}"))],
                Some("{}"),
            ),
        };
        assert!(
            [200, 400, 401].contains(&r.status),
            "request {i} got {} {}",
            r.status,
            r.body
        );
    }
    let metrics = request(api, "GET", "/metrics", &[], None).body;
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("dialbridge_log_lines_dropped_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "the full disk dropped no log line? {metrics}");
    free(server.pid(), &mnt);
}

#[test]
fn sigkill_during_live_calls_then_a_restart_ends_every_call_with_its_final_callback() {
    let carrier_port = free_port();
    let cfg = config(carrier_port);
    let server = TestServer::start(&cfg);
    let f = fixture_on(server, carrier_port);
    // Two live calls: one answered on both sides, one still ringing at the agent.
    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "30000"]);
    let r = post_call(&f);
    assert_eq!(r.status, 202, "{}", r.body);
    let live = r.json()["call_id"].as_str().expect("call_id").to_owned();
    assert!(
        f.receiver
            .wait_status("in-progress", Duration::from_secs(30)),
        "{:?}",
        f.receiver.accepted()
    );
    let soft = f.phone("alice-soft", "s3cret-soft", "agent_ring_cancel.xml", &[]);
    let r = post_call(&f);
    assert_eq!(r.status, 202, "{}", r.body);
    let ringing = r.json()["call_id"].as_str().expect("call_id").to_owned();
    // The first call's callbacks are in; give the second call time to ring.
    std::thread::sleep(Duration::from_millis(1500));
    let Fixture {
        server, receiver, ..
    } = f;
    let dir = server.kill9();
    drop((desk, soft, carrier));

    // The same store, a new process: both calls end at once, with their final callback.
    let server = TestServer::start_in(dir, &cfg);
    let f = Fixture {
        server,
        receiver,
        carrier_port,
    };
    for id in [&live, &ringing] {
        let call = f.ended(id);
        assert_eq!(call["status"], "failed", "{call}");
        assert_eq!(call["outcome"]["reason"], "interrupted", "{call}");
        assert_eq!(call["end_leg"], "dialbridge", "{call}");
        assert!(call["ended_at"].is_string(), "{call}");
    }
    // It ended at the time of its last event (the customer's answer): what is known.
    let live_call = f.call(&live);
    let last_event = live_call["timeline"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .filter(|e| e["kind"] != "callback" && e["kind"] != "ended")
                .filter_map(|e| e["at"].as_str())
                .max()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    assert_eq!(live_call["ended_at"], last_event.as_str(), "{live_call}");
    assert_eq!(live_call["outcome"]["duration"], 0, "{live_call}");
    // Callbacks: every call's final one arrives once, after the ones before it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let finals = f
            .receiver
            .accepted()
            .iter()
            .filter(|b| b["status"] == "failed")
            .count();
        if finals >= 2 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in [&live, &ringing] {
        let mine: Vec<serde_json::Value> = f
            .receiver
            .accepted()
            .into_iter()
            .filter(|b| b["call_id"] == id.as_str())
            .collect();
        let seqs: Vec<u64> = mine
            .iter()
            .map(|b| b["sequence"].as_u64().unwrap_or(0))
            .collect();
        let expected: Vec<u64> = (1..=mine.len() as u64).collect();
        assert_eq!(seqs, expected, "in order, none twice: {mine:?}");
        let last = mine.last().expect("callbacks");
        assert_eq!(last["status"], "failed", "{mine:?}");
        assert_eq!(last["reason"], "interrupted", "{mine:?}");
    }
    let live_statuses: Vec<String> = f
        .receiver
        .accepted()
        .iter()
        .filter(|b| b["call_id"] == live.as_str())
        .map(|b| b["status"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        live_statuses,
        vec!["ringing", "ringing", "in-progress", "failed"]
    );
}
