//! The registrar (RFC 3261 §10) from outside: SIPp REGISTER scenarios and baresip 1.0 as a
//! real softphone against the `dialbridge` binary, bindings read back from its SQLite store;
//! and the baresip helper itself (bounded stop, a call with a WAV source against SIPp).

use sip_tests::baresip::{Baresip, BaresipConfig, BaresipError, SipTransport, MD5_ONLY_REGISTRAR};
use sip_tests::{scenario, sipp, SippRun, TempDir, TestServer};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{Binding, BlockingStore, SqliteStore};

const DEVICES: &str = r#"
[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{ key = "ak_test_1", secret = "sk_test_1" }]
webhook_secret = "whsec_test_1"
allowed_prefixes = ["+1"]
[[users]]
id = "user_01h2xcejqtf2nbrexx3vqjhp42"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{ username = "alice-desk", password = "s3cret-desk" }, { username = "alice-soft", password = "s3cret-soft" }]
"#;

/// Secrets of [`DEVICES`] that must never reach the server log.
const SECRETS: [&str; 3] = ["s3cret-desk", "s3cret-soft", "sk_test_1"];

/// A REGISTER without credentials that expects `403` (a locked-out source).
const REGISTER_EXPECT_403: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="REGISTER refused">
  <Global variables="expires"/>
  <send retrans="500">
    <![CDATA[
      REGISTER sip:dialbridge.test SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[service]@dialbridge.test>;tag=[pid]SIPpReg[call_number]
      To: <sip:[service]@dialbridge.test>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[service]@[local_ip]:[local_port];transport=[transport]>
      Expires: [$expires]
      Max-Forwards: 70
      User-Agent: SIPp register
      Content-Length: 0

    ]]>
  </send>
  <recv response="403"/>
</scenario>
"#;

fn config(extra: &str) -> String {
    format!("{extra}{DEVICES}")
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The unexpired bindings of `device`, read from the server's store file.
fn bindings(dir: &Path, device: &str) -> Vec<Binding> {
    let store = SqliteStore::open_path(&dir.join("dialbridge.db")).unwrap();
    store.bindings_for_device(device, now_unix()).unwrap()
}

/// Polls the store until `device` has `n` bindings (bounded: 10 s).
fn wait_bindings(dir: &Path, device: &str, n: usize) -> Vec<Binding> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = bindings(dir, device);
        if b.len() == n || Instant::now() >= deadline {
            return b;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One SIPp run of `scenario_file` as `device` with `password` against `target`.
fn register(
    scenario_file: &Path,
    target: &str,
    device: &str,
    password: &str,
    tcp: bool,
) -> SippRun {
    let sf = scenario_file.to_string_lossy();
    let mut args = vec![
        "-sf",
        &sf,
        target,
        "-i",
        "127.0.0.1",
        "-p",
        "0",
        "-m",
        "1",
        "-timeout",
        "15s",
        "-timeout_error",
        "-s",
        device,
        "-au",
        device,
        "-ap",
        password,
        "-set",
        "expires",
        "300",
    ];
    if tcp {
        args.extend_from_slice(&["-t", "t1"]);
    }
    sipp(&args, Duration::from_secs(30))
}

fn assert_no_secrets(server: &TestServer) {
    let log = server.log_text();
    assert!(!log.is_empty(), "the server wrote no log");
    for s in SECRETS {
        assert!(!log.contains(s), "the server log contains the secret {s:?}");
    }
}

#[test]
fn sipp_register_with_right_password_gets_200_and_a_binding() {
    let server = TestServer::start(&config(""));
    let target = server.udp_addr().to_string();
    let run = register(
        &scenario("register.xml"),
        &target,
        "alice-desk",
        "s3cret-desk",
        false,
    );
    assert_eq!(run.code, 0, "{}", run.output);
    let b = wait_bindings(server.dir.path(), "alice-desk", 1);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].transport, "udp");
    assert!(
        b[0].contact.starts_with("sip:alice-desk@127.0.0.1:"),
        "{b:?}"
    );
    assert_eq!(b[0].user_agent.as_deref(), Some("SIPp register"));
    let left = b[0].expires_at - now_unix();
    assert!((290..=300).contains(&left), "expires in {left} s");
    // The other device of the same user is untouched.
    assert!(bindings(server.dir.path(), "alice-soft").is_empty());
    assert_no_secrets(&server);
}

#[test]
fn sipp_register_over_tcp_records_tcp() {
    let server = TestServer::start(&config(""));
    let target = server.tcp_addr().to_string();
    let run = register(
        &scenario("register.xml"),
        &target,
        "alice-soft",
        "s3cret-soft",
        true,
    );
    assert_eq!(run.code, 0, "{}", run.output);
    let b = wait_bindings(server.dir.path(), "alice-soft", 1);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].transport, "tcp");
}

#[test]
fn sipp_wrong_password_is_challenged_again_and_binds_nothing() {
    let server = TestServer::start(&config(""));
    let target = server.udp_addr().to_string();
    let run = register(
        &scenario("register_wrong_password.xml"),
        &target,
        "alice-desk",
        "not-the-password",
        false,
    );
    assert_eq!(run.code, 0, "{}", run.output);
    assert!(bindings(server.dir.path(), "alice-desk").is_empty());
    assert_no_secrets(&server);
}

#[test]
fn sipp_repeated_wrong_passwords_lock_the_source_out_with_403() {
    let server = TestServer::start(&config(
        "[registrar]\nauth_fail_limit = 3\nauth_lockout_secs = 60\n",
    ));
    let target = server.udp_addr().to_string();
    // Below the limit every wrong answer is challenged again (401).
    for attempt in 1..=3 {
        let run = register(
            &scenario("register_wrong_password.xml"),
            &target,
            "alice-desk",
            "guess",
            false,
        );
        assert_eq!(run.code, 0, "attempt {attempt}: {}", run.output);
    }
    // Then the source is refused at once, credentials or not.
    let dir = TempDir::new("sipp403");
    let sf = dir.path().join("register_403.xml");
    std::fs::write(&sf, REGISTER_EXPECT_403).unwrap();
    let run = register(&sf, &target, "alice-desk", "guess", false);
    assert_eq!(run.code, 0, "{}", run.output);
    // Even the right password is refused during the lock-out, and binds nothing.
    let run = register(
        &scenario("register.xml"),
        &target,
        "alice-soft",
        "s3cret-soft",
        false,
    );
    assert_ne!(run.code, 0, "{}", run.output);
    let run = register(&sf, &target, "alice-soft", "s3cret-soft", false);
    assert_eq!(run.code, 0, "{}", run.output);
    assert!(bindings(server.dir.path(), "alice-soft").is_empty());
    assert_no_secrets(&server);
}

#[test]
fn sipp_unregister_removes_every_binding() {
    let server = TestServer::start(&config(""));
    let target = server.udp_addr().to_string();
    let run = register(
        &scenario("register_two_contacts.xml"),
        &target,
        "alice-desk",
        "s3cret-desk",
        false,
    );
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(wait_bindings(server.dir.path(), "alice-desk", 2).len(), 2);
    let run = register(
        &scenario("unregister.xml"),
        &target,
        "alice-desk",
        "s3cret-desk",
        false,
    );
    assert_eq!(run.code, 0, "{}", run.output);
    let b = wait_bindings(server.dir.path(), "alice-desk", 0);
    assert!(b.is_empty(), "{b:?}");
}

#[test]
fn sipp_two_contacts_make_two_bindings() {
    let server = TestServer::start(&config(""));
    let target = server.udp_addr().to_string();
    let run = register(
        &scenario("register_two_contacts.xml"),
        &target,
        "alice-desk",
        "s3cret-desk",
        false,
    );
    assert_eq!(run.code, 0, "{}", run.output);
    let mut b = wait_bindings(server.dir.path(), "alice-desk", 2);
    assert_eq!(b.len(), 2, "{b:?}");
    b.sort_by(|x, y| x.contact.cmp(&y.contact));
    assert!(b[0].contact.starts_with("sip:alice-desk-2@"), "{b:?}");
    assert!(b[1].contact.starts_with("sip:alice-desk@"), "{b:?}");
    assert_eq!(b[0].q, Some(0.1));
    assert_eq!(b[1].q, Some(0.9));
    // Both came from the same place, in one request.
    assert_eq!(b[0].source, b[1].source);
    assert_eq!(b[0].call_id, b[1].call_id);
}

#[test]
fn binding_survives_a_server_restart() {
    let cfg = config("");
    let server = TestServer::start(&cfg);
    let target = server.udp_addr().to_string();
    let run = register(
        &scenario("register.xml"),
        &target,
        "alice-desk",
        "s3cret-desk",
        false,
    );
    assert_eq!(run.code, 0, "{}", run.output);
    let before = wait_bindings(server.dir.path(), "alice-desk", 1);
    assert_eq!(before.len(), 1);
    let dir = server.stop();
    let server = TestServer::start_in(dir, &cfg);
    let after = bindings(server.dir.path(), "alice-desk");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].contact, before[0].contact);
    assert_eq!(after[0].source, before[0].source);
    assert_eq!(after[0].expires_at, before[0].expires_at);
}

/// baresip 1.0 registers over `transport`; the binding carries that transport and its
/// User-Agent; on quit it un-registers and the binding goes away.
fn baresip_registers(transport: SipTransport) {
    // Default registrar settings: baresip is recognised by its User-Agent and challenged
    // with MD5 only (`registrar.md5_only_user_agents`).
    let server = TestServer::start(&config(""));
    let registrar = match transport {
        SipTransport::Udp => server.udp_addr(),
        SipTransport::Tcp => server.tcp_addr(),
        SipTransport::Tls => server.tls[0],
    };
    let mut phone = Baresip::start(&BaresipConfig::device(
        "alice-desk",
        "s3cret-desk",
        registrar,
        transport,
    ))
    .unwrap();
    if let Err(e) = phone.wait_registered(Duration::from_secs(10)) {
        panic!("{e}\nserver log:\n{}", server.log_text());
    }
    let b = wait_bindings(server.dir.path(), "alice-desk", 1);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].transport, transport.as_str());
    let sip = phone.sip_addr();
    assert!(
        b[0].contact.contains(&format!("@{sip}")),
        "contact {} vs baresip at {sip}",
        b[0].contact
    );
    assert!(
        b[0].user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("baresip")),
        "{b:?}"
    );
    if transport == SipTransport::Udp {
        assert_eq!(b[0].source, sip.to_string());
    }
    let log = phone.stop();
    let left = wait_bindings(server.dir.path(), "alice-desk", 0);
    assert!(
        left.is_empty(),
        "baresip did not un-register: {left:?}\n{}",
        std::fs::read_to_string(log.path().join("baresip.log")).unwrap_or_default()
    );
    assert_no_secrets(&server);
}

#[test]
fn baresip_registers_over_udp() {
    baresip_registers(SipTransport::Udp);
}

#[test]
fn baresip_registers_over_tcp() {
    baresip_registers(SipTransport::Tcp);
}

/// baresip 1.0's digest code (libre 1.1) knows only MD5 and drops the whole challenge
/// (ENOSYS) when any WWW-Authenticate names another algorithm: without the User-Agent
/// quirk (`md5_only_user_agents = []`) the MD5 + SHA-256 challenges keep it out.
#[test]
fn baresip_gives_up_on_a_sha256_challenge() {
    let server = TestServer::start(&config("[registrar]\nmd5_only_user_agents = []\n"));
    let mut phone = Baresip::start(&BaresipConfig::device(
        "alice-desk",
        "s3cret-desk",
        server.udp_addr(),
        SipTransport::Udp,
    ))
    .unwrap();
    match phone.wait_registered(Duration::from_secs(10)) {
        Err(BaresipError::RegistrationFailed { line }) => {
            assert!(line.contains("Function not implemented"), "{line}")
        }
        other => panic!("expected ENOSYS, got {other:?}"),
    }
    assert!(bindings(server.dir.path(), "alice-desk").is_empty());
}

#[test]
fn baresip_ctrl_tcp_answers_commands() {
    let server = TestServer::start(&config(MD5_ONLY_REGISTRAR));
    let mut cfg = BaresipConfig::device(
        "alice-soft",
        "s3cret-soft",
        server.udp_addr(),
        SipTransport::Udp,
    );
    cfg.ctrl_tcp = true;
    let mut phone = Baresip::start(&cfg).unwrap();
    phone.wait_registered(Duration::from_secs(10)).unwrap();
    let info = phone.command("reginfo", "").unwrap();
    assert!(
        info.data.contains("sip:alice-soft@dialbridge.test"),
        "{info:?}"
    );
    assert!(info.data.contains("OK"), "{info:?}");
    let err = phone.command("no-such-command", "");
    assert!(err.is_err(), "{err:?}");
    // A call to nobody: the registrar's domain has no such user.
    let target = format!("sip:nobody@{}", server.udp_addr());
    phone.dial(&target).unwrap();
    let closed = phone
        .wait_event("CALL_CLOSED", Duration::from_secs(10))
        .unwrap();
    assert!(closed.param.is_some(), "{closed:?}");
    assert!(phone.events().iter().any(|e| e.kind == "CALL_CLOSED"));
    // `quit` over ctrl_tcp ends the process (and un-registers).
    let dir = phone.stop();
    let left = wait_bindings(server.dir.path(), "alice-soft", 0);
    assert!(left.is_empty(), "{left:?}");
    drop(dir);
}

/// Dropping the helper ends baresip even when it answers nothing (stopped with SIGSTOP:
/// `quit` and SIGINT go unheard, SIGKILL ends it), within the bounded ladder (3 + 4 + 2 s).
#[test]
fn baresip_stop_is_bounded_when_baresip_does_not_answer() {
    let server = TestServer::start(&config(MD5_ONLY_REGISTRAR));
    let mut cfg = BaresipConfig::device(
        "alice-desk",
        "s3cret-desk",
        server.udp_addr(),
        SipTransport::Udp,
    );
    cfg.ctrl_tcp = true;
    let phone = Baresip::start(&cfg).unwrap();
    let pid = phone.pid().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    drop(phone);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    // The process is gone (reaped): signalling it fails.
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!alive.success(), "baresip {pid} still exists");
}

/// A PCM WAV file of `secs` seconds of a 1 kHz tone, 8 kHz mono.
fn tone_wav(path: &Path, secs: u32) {
    let rate = 8000u32;
    let samples: Vec<u8> = (0..rate * secs)
        .flat_map(|i| {
            let x = (2.0 * std::f64::consts::PI * 1000.0 * f64::from(i) / f64::from(rate)).sin();
            ((x * 8000.0) as i16).to_le_bytes()
        })
        .collect();
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    w.extend_from_slice(&samples);
    std::fs::write(path, w).unwrap();
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The helper's call side, against SIPp's built-in UAS (no dialbridge): `dial` over
/// ctrl_tcp, `CALL_ESTABLISHED`, a WAV file as the microphone that ends the call when it
/// runs out (`CALL_CLOSED` "end of file"), and both directions written by `sndfile`.
#[test]
fn baresip_calls_with_a_wav_file_and_records_both_directions() {
    let dir = TempDir::new("wav");
    let wav = dir.path().join("tone.wav");
    tone_wav(&wav, 1);
    let sip_port = free_udp_port().to_string();
    let media_port = free_udp_port().to_string();
    let uas = std::process::Command::new("sipp")
        .args([
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &sip_port,
            "-mp",
            &media_port,
        ])
        .args(["-m", "1", "-nostdin", "-rtp_echo", "-timeout", "20s"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let uas_addr: std::net::SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
    let mut cfg = BaresipConfig::device("bob", "unused", uas_addr, SipTransport::Udp);
    cfg.register_interval_secs = 0;
    cfg.ctrl_tcp = true;
    cfg.record_audio = true;
    cfg.audio = sip_tests::baresip::AudioSource::WavFile(wav);
    let mut phone = Baresip::start(&cfg).unwrap();
    phone.dial(&format!("sip:service@{uas_addr}")).unwrap();
    let up = phone.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    let closed = phone.wait_event("CALL_CLOSED", Duration::from_secs(10));
    let (code, _) = sip_tests::wait_limit(uas, Duration::from_secs(10));
    let log = phone.log_text();
    let up = up.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        up.peer_uri.as_deref(),
        Some(format!("sip:service@{uas_addr};transport=udp").as_str())
    );
    let closed = closed.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(closed.param.as_deref(), Some("end of file"), "{closed:?}");
    assert_eq!(code, 0, "SIPp UAS did not complete the call\n{log}");
    // sndfile: one file per direction, each longer than a WAV header.
    let recorded: Vec<u64> = std::fs::read_dir(phone.recordings())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wav"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}\n{log}");
    assert!(recorded.iter().all(|&n| n > 1000), "{recorded:?}");
}
