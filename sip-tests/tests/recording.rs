//! Recording (SPEC §9.4) on the wire: the agent's phone and the carrier (both `dialbridge
//! phone`, each sending its own tone) talk through the relay of a call placed with
//! `"record": true`; the WAV served by `GET /v1/calls/{id}/recording` carries the agent's
//! tone on the left and the carrier's on the right (checked by frequency), and a signed
//! `recording.ready` callback follows the call's final status callback. A recordings
//! directory that fills up ends the recording, not the call.

use sip_tests::c2c::{config_full, verified_statuses, SECRET, USER};
use sip_tests::http::{request, CallbackReceiver};
use sip_tests::{free_port, TempDir, TestServer};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use media::g711::{parse_wav_stereo, tone_power};

fn phone(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(sip_tests::dialbridge_bin())
        .arg("phone")
        .args(args)
        .args(["--answer", "--ring-ms", "200", "--for", "60"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dialbridge phone");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> Result<String, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(needle) {
            return Ok(line);
        }
        seen.push(line);
    }
    Err(seen)
}

fn get(api: std::net::SocketAddr, path: &str) -> sip_tests::http::HttpResponse {
    request(
        api,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    )
}

#[test]
fn a_recorded_call_has_the_agent_left_and_the_customer_right() {
    let rx_cb = CallbackReceiver::start(0);
    let dir = TempDir::new("recordings");
    let carrier_port = free_port();
    let server = TestServer::start(&config_full(
        carrier_port,
        &format!(
            "\n[recording]\ndir = \"{}\"\nretention_days = 30\n",
            dir.path().display()
        ),
        "",
    ));
    let api = server.api.expect("api");
    let registrar = server.udp_addr().to_string();
    let (mut agent, agent_rx) = phone(&[
        "--register",
        &format!("alice-desk:s3cret-desk@{registrar}"),
        "--tone",
        "440",
    ]);
    wait_line(&agent_rx, "phone: registered").expect("the agent registers");
    let (mut carrier, carrier_rx) = phone(&[
        "--listen",
        &format!("udp:127.0.0.1:{carrier_port}"),
        "--tone",
        "1000",
    ]);
    wait_line(&carrier_rx, "phone: SIP on").expect("the carrier listens");

    let r = request(
        api,
        "POST",
        "/v1/calls",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some(
            &serde_json::json!({
                "user_id": USER, "dial_string": "+14155550100", "record": true,
                "callback_url": rx_cb.url("/cb"),
            })
            .to_string(),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["call_id"].as_str().expect("id").to_string();
    assert!(
        rx_cb.wait_status("in-progress", Duration::from_secs(20)),
        "{:?}\n{}",
        rx_cb.accepted(),
        server.log_text()
    );
    // Not finished while the call runs.
    let early = get(api, &format!("/v1/calls/{id}/recording"));
    assert_eq!(early.status, 409, "{}", early.body);
    std::thread::sleep(Duration::from_secs(3));
    let h = request(
        api,
        "POST",
        &format!("/v1/calls/{id}/hangup"),
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some("{}"),
    );
    assert_eq!(h.status, 202, "{}", h.body);

    // The recording callback comes after the final status, signed and in sequence.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rx_cb
        .accepted()
        .iter()
        .any(|b| b["event"] == "recording.ready")
    {
        assert!(Instant::now() < deadline, "{:?}", rx_cb.accepted());
        std::thread::sleep(Duration::from_millis(50));
    }
    let statuses = verified_statuses(&rx_cb);
    let cbs = rx_cb.accepted();
    assert_eq!(statuses.len(), cbs.len());
    let n = cbs.len();
    assert!(n >= 4, "{cbs:?}");
    assert_eq!(
        cbs[n - 2]["status"],
        "completed",
        "the final status first: {cbs:?}"
    );
    assert!(cbs[n - 2].get("event").is_none(), "{cbs:?}");
    let last = &cbs[n - 1];
    assert_eq!(last["event"], "recording.ready", "{last}");
    assert_eq!(last["call_id"], id.as_str());
    let dur = last["recording"]["duration"].as_f64().expect("duration");
    assert!((2.5..6.0).contains(&dur), "{last}");
    let size = last["recording"]["size"].as_u64().expect("size");

    let call = get(api, &format!("/v1/calls/{id}")).json();
    assert_eq!(call["recording"]["state"], "ready", "{call}");
    let file = call["recording"]["file"].as_str().expect("file");
    assert!(
        file.ends_with(&format!("{id}.wav")),
        "named from the call id: {file}"
    );
    assert!(
        file.starts_with(&dir.path().display().to_string()),
        "{file}"
    );

    let wav = get(api, &format!("/v1/calls/{id}/recording"));
    assert_eq!(wav.status, 200, "{}", wav.body);
    assert_eq!(wav.header("content-type"), Some("audio/wav"));
    assert_eq!(wav.bytes.len() as u64, size);
    let samples = parse_wav_stereo(&wav.bytes).expect("a dual-channel 8 kHz WAV");
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    // One second from the middle of the call: each side's tone on its own channel.
    let mid = left.len() / 2;
    let (l, r) = (
        &left[mid - 4000..mid + 4000],
        &right[mid - 4000..mid + 4000],
    );
    let (l440, l1000) = (tone_power(l, 440.0), tone_power(l, 1000.0));
    let (r440, r1000) = (tone_power(r, 440.0), tone_power(r, 1000.0));
    assert!(l440 > 0.3 && l1000 < 0.05, "left (agent): {l440} {l1000}");
    assert!(
        r1000 > 0.3 && r440 < 0.05,
        "right (customer): {r440} {r1000}"
    );

    // The account's authorization: none, none.
    let anon = request(api, "GET", &format!("/v1/calls/{id}/recording"), &[], None);
    assert_eq!(anon.status, 401);
    let other = get(api, "/v1/calls/call_01h2xcejqtf2nbrexx3vqjhp49/recording");
    assert_eq!(other.status, 404);

    let _ = agent.kill();
    let _ = carrier.kill();
    let _ = agent.wait();
    let _ = carrier.wait();
}

/// Whether a tmpfs can be mounted in a private mount namespace here (root, `unshare -m`).
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
        eprintln!("skipped: cannot mount a tmpfs in a private mount namespace here");
    }
    ok
}

/// Runs the server in a private mount namespace where `mnt` is a tmpfs of `size`.
fn in_small_disk(mnt: PathBuf, size: &'static str) -> impl Fn(&Path, &Path, &Path) -> Command {
    move |bin, cfg, _log| {
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "--",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=$4 tmpfs "$1" && exec "$2" serve --config "$3""#,
            "sh",
        ])
        .arg(&mnt)
        .arg(bin)
        .arg(cfg)
        .arg(size);
        c
    }
}

#[test]
fn a_full_disk_ends_the_recording_not_the_call() {
    if !can_mount() {
        return;
    }
    let rx_cb = CallbackReceiver::start(0);
    let dir = TempDir::new("rec-full");
    let mnt = dir.path().join("disk");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let carrier_port = free_port();
    let cfg = config_full(
        carrier_port,
        &format!("\n[recording]\ndir = \"{}\"\n", mnt.display()),
        "record_calls = true",
    );
    // 64 KiB: about two seconds of a dual-channel 8 kHz recording.
    let wrap = in_small_disk(mnt.clone(), "64k");
    let server = TestServer::start_wrapped(dir, &cfg, Some(&wrap));
    let api = server.api.expect("api");
    let registrar = server.udp_addr().to_string();
    let (mut agent, agent_rx) = phone(&[
        "--register",
        &format!("alice-desk:s3cret-desk@{registrar}"),
        "--tone",
        "440",
    ]);
    wait_line(&agent_rx, "phone: registered").expect("the agent registers");
    let (mut carrier, carrier_rx) = phone(&[
        "--listen",
        &format!("udp:127.0.0.1:{carrier_port}"),
        "--tone",
        "1000",
    ]);
    wait_line(&carrier_rx, "phone: SIP on").expect("the carrier listens");
    let r = request(
        api,
        "POST",
        "/v1/calls",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some(
            &serde_json::json!({
                "user_id": USER, "dial_string": "+14155550100",
                "callback_url": rx_cb.url("/cb"),
            })
            .to_string(),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["call_id"].as_str().expect("id").to_string();
    assert!(rx_cb.wait_status("in-progress", Duration::from_secs(20)));
    // The disk is full after about two seconds; the call goes on past that.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = get(api, &format!("/v1/calls/{id}")).json();
        let noted = c["timeline"].as_array().into_iter().flatten().any(|e| {
            e["detail"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("recording stopped, the call goes on"))
        });
        if noted {
            assert_eq!(c["status"], "in-progress", "the call is still up: {c}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no note of the full disk: {c}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let h = request(
        api,
        "POST",
        &format!("/v1/calls/{id}/hangup"),
        &[("Authorization", &format!("Bearer {SECRET}"))],
        Some("{}"),
    );
    assert_eq!(h.status, 202, "{}", h.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rx_cb.accepted().iter().any(|b| b["event"].is_string()) {
        assert!(Instant::now() < deadline, "{:?}", rx_cb.accepted());
        std::thread::sleep(Duration::from_millis(50));
    }
    let call = get(api, &format!("/v1/calls/{id}")).json();
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["recording"]["state"], "incomplete", "{call}");
    let err = call["recording"]["error"].as_str().unwrap_or("");
    assert!(err.contains("No space left"), "{err}");
    let last = rx_cb.accepted().last().cloned().expect("callbacks");
    assert_eq!(last["event"], "recording.ready", "{last}");
    assert_eq!(last["recording"]["state"], "incomplete", "{last}");
    // What was written before the disk filled is served, and readable.
    let wav = get(api, &format!("/v1/calls/{id}/recording"));
    assert_eq!(wav.status, 200, "{}", wav.body);
    let samples = parse_wav_stereo(&wav.bytes).expect("a readable WAV");
    let secs = samples.len() as f64 / 2.0 / 8000.0;
    assert!(secs > 0.5 && secs < 2.1, "{secs} s");
    let _ = agent.kill();
    let _ = carrier.kill();
    let _ = agent.wait();
    let _ = carrier.wait();
}
