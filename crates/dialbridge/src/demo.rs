//! `dialbridge demo` (SPEC §8): a whole click-to-call on loopback, in one process.
//!
//! ```text
//!   callback receiver ◄── signed callbacks ──┐
//!                                            │
//!   REST client ── POST /v1/calls ──► dialbridge (temporary store, loopback ports)
//!                                      │  agent leg: INVITE both devices
//!        alice-desk (UA, registered) ◄─┤  answers after 1 s, sends a 350 Hz tone
//!        alice-soft (UA, registered) ◄─┘  rings, gets CANCEL
//!                                      │  customer leg: INVITE through the trunk
//!        carrier (UA on the trunk)   ◄─┘  answers, sends a 440 Hz tone
//! ```
//!
//! After ~3 s of RTP the call is hung up through the API. The demo prints the callbacks
//! (with their signatures checked), the packets the relay forwarded each way, the UAs' own
//! counters and the timeline, and exits 0 only when the call completed, more than
//! [`MIN_PACKETS`] packets crossed each way and ringing → in-progress → completed arrived
//! signed. Every wait is bounded; the whole run takes about 10 s.

use crate::config::Config;
use crate::serve::{serve_until, Bound};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, Instant};
use ua::{AnswerMode, EndReason, MediaMode, Registration, RtpStats, UaConfig, UaEvent, UserAgent};

const SECRET: &str = "sk_demo_1";
const WEBHOOK_SECRET: &str = "whsec_demo_1";
const ACCOUNT: &str = "acct_01h2xcejqtf2nbrexx3vqjhp41";
const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";
const DOMAIN: &str = "dialbridge.test";
/// Packets each way below which the demo fails.
pub const MIN_PACKETS: u64 = 50;
/// How long RTP flows before the hang-up.
const TALK: Duration = Duration::from_secs(3);

/// Why the demo could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("temporary directory {0}: {1}")]
    TempDir(PathBuf, #[source] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("server: {0}")]
    Serve(#[from] crate::serve::ServeError),
    #[error("the server did not get ready")]
    NotReady,
    #[error("user agent: {0}")]
    Ua(#[from] ua::UaError),
    #[error("callback receiver: {0}")]
    Receiver(#[source] std::io::Error),
    #[error("REST {0}: {1}")]
    Http(&'static str, String),
}

/// Runs the demo and returns the exit code.
pub fn run() -> ExitCode {
    let Some(rt) = crate::runtime(crate::config::default_workers()) else {
        return ExitCode::FAILURE;
    };
    let dir = std::env::temp_dir().join(format!(
        "dialbridge-demo-{}-{:x}",
        std::process::id(),
        rand_u32()
    ));
    let result = rt.block_on(async {
        match timeout(Duration::from_secs(60), demo(&dir)).await {
            Ok(r) => r,
            Err(_) => Ok(vec!["the demo did not finish within 60 s".to_string()]),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(missing) if missing.is_empty() => {
            println!(
                "\ndemo: OK: the call completed, RTP was relayed both ways, and the call was recorded"
            );
            ExitCode::SUCCESS
        }
        Ok(missing) => {
            println!("\ndemo: FAILED:");
            for m in missing {
                println!("  - {m}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

fn config_text(dir: &std::path::Path, carrier: SocketAddr) -> String {
    format!(
        r#"
[sip]
listen = ["udp:127.0.0.1:0"]
domain = "{DOMAIN}"

[media]
bind = "127.0.0.1"
ports = "41000-41999"

[api]
listen = "127.0.0.1:0"

[store]
url = "sqlite://{db}"

[calls]
agent_ring_secs = 10
customer_ring_secs = 10
shutdown_grace_secs = 1

[recording]
dir = "{rec}"

[[accounts]]
id = "{ACCOUNT}"
name = "Demo"
region = "US"
api_keys = [{{ key = "ak_demo_1", secret = "{SECRET}" }}]
webhook_secret = "{WEBHOOK_SECRET}"
allowed_countries = ["US", "CA"]
allowed_prefixes = ["+1"]

[[users]]
id = "{USER}"
account = "{ACCOUNT}"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{{ username = "alice-desk", password = "s3cret-desk" }},
           {{ username = "alice-soft", password = "s3cret-soft" }}]

[[trunks]]
name = "carrier"
account = "{ACCOUNT}"
address = "{carrier}"
transport = "udp"

[[numbers]]
number = "+14155551234"
account = "{ACCOUNT}"
owner = "{USER}"
"#,
        db = dir.join("dialbridge.db").display(),
        rec = recordings_dir().display()
    )
}

/// Where the demo's recordings go: kept after the demo (its store is not), so that the
/// recorded call can be listened to.
fn recordings_dir() -> PathBuf {
    std::env::temp_dir().join("dialbridge-demo-recordings")
}

/// One callback as received.
#[derive(Debug, Clone)]
struct Delivery {
    signature: Option<String>,
    body: String,
}

/// A tiny HTTP/1.1 server that answers 200 to every POST and keeps what came.
async fn callback_receiver() -> Result<(SocketAddr, Arc<Mutex<Vec<Delivery>>>), DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Receiver)?;
    let addr = listener.local_addr().map_err(DemoError::Receiver)?;
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                if let Ok(Some((head, body))) =
                    timeout(Duration::from_secs(5), read_http(conn, true)).await
                {
                    let signature = header_of(&head, "dialbridge-signature");
                    if let Ok(mut g) = store.lock() {
                        g.push(Delivery { signature, body });
                    }
                }
            });
        }
    });
    Ok((addr, got))
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads one HTTP message (head, body by Content-Length or chunked); answers 200 when
/// `answer` (the server side).
async fn read_http(mut conn: TcpStream, answer: bool) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end + 4..].to_vec();
    let chunked =
        header_of(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if let Some(len) = header_of(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if !answer {
        // Connection: close: the body runs to the end.
        let _ = conn.read_to_end(&mut body).await;
        if chunked {
            body = dechunk(&body);
        }
    }
    if answer {
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    }
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..p]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        rest = &rest[p + 2..];
        if size == 0 || size > rest.len() {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// One REST request over HTTP/1.1; (status, JSON body).
async fn rest(
    api: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Value), DemoError> {
    let fail = |e: String| DemoError::Http(method, format!("{path}: {e}"));
    let exchange = async {
        let mut conn = TcpStream::connect(api)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {api}\r\nauthorization: Bearer {SECRET}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (head, text) = read_http(conn, false)
            .await
            .ok_or_else(|| fail("no response".into()))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| fail(format!("bad status line: {head}")))?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, json))
    };
    timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| fail("time-out".into()))?
}

async fn agent(
    bound_sip: SocketAddr,
    username: &str,
    password: &str,
    answer: AnswerMode,
    media: MediaMode,
) -> Result<(UserAgent, UnboundedReceiver<UaEvent>), DemoError> {
    let (mut ua, events) = UserAgent::start(UaConfig {
        user: username.into(),
        answer,
        media,
        ring_limit: Duration::from_secs(20),
        max_call: Duration::from_secs(30),
        ..Default::default()
    })
    .await?;
    let granted = ua
        .register(Registration {
            registrar: bound_sip,
            transport: sip_core::transport::Transport::Udp,
            username: username.into(),
            password: password.into(),
            domain: DOMAIN.into(),
            expires: 300,
        })
        .await?;
    println!("  {username} registered (digest) for {granted} s");
    Ok((ua, events))
}

/// The end of the one call a UA saw, waiting up to `limit`.
async fn call_end(
    events: &mut UnboundedReceiver<UaEvent>,
    limit: Duration,
) -> Option<(EndReason, RtpStats)> {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(UaEvent::Ended { reason, stats, .. })) => return Some((reason, stats)),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

async fn call_json(api: SocketAddr, id: &str) -> Result<Value, DemoError> {
    Ok(rest(api, "GET", &format!("/v1/calls/{id}"), None).await?.1)
}

/// Polls the call until its status is one of `want` (bounded).
async fn wait_status(api: SocketAddr, id: &str, want: &[&str], limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(c) = call_json(api, id).await {
            let s = c["status"].as_str().unwrap_or("");
            if want.contains(&s) {
                return c;
            }
            last = c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn demo(dir: &std::path::Path) -> Result<Vec<String>, DemoError> {
    std::fs::create_dir_all(dir).map_err(|e| DemoError::TempDir(dir.to_path_buf(), e))?;
    println!("dialbridge demo: a click-to-call on loopback");

    // The carrier on the trunk: answers after 0.5 s and plays 440 Hz.
    let (carrier, mut carrier_events) = UserAgent::start(UaConfig {
        user: "carrier".into(),
        answer: AnswerMode::Auto {
            after: Duration::from_millis(500),
        },
        media: MediaMode::Tone(440.0),
        max_call: Duration::from_secs(30),
        ..Default::default()
    })
    .await?;
    let carrier_addr = carrier
        .local_addr()
        .ok_or(DemoError::Config("the carrier has no address".into()))?;
    println!("  carrier (trunk) on udp:{carrier_addr}");

    let (hook_addr, deliveries) = callback_receiver().await?;
    let callback_url = format!("http://{hook_addr}/hook");
    println!("  callback receiver on {callback_url}");

    // The server, in this process.
    let text = config_text(dir, carrier_addr);
    let cfg = Config::parse(&text).map_err(|e| DemoError::Config(e.join("; ")))?;
    let valid = cfg
        .validate()
        .map_err(|e| DemoError::Config(format!("{e:?}")))?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Bound>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_until(
        cfg,
        valid,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let bound = match timeout(Duration::from_secs(15), ready_rx).await {
        Ok(Ok(b)) => b,
        _ => {
            if server.is_finished() {
                if let Ok(Err(e)) = server.await {
                    return Err(e.into());
                }
            }
            return Err(DemoError::NotReady);
        }
    };
    let sip = bound
        .sip
        .iter()
        .find(|l| l.transport == sip_core::transport::Transport::Udp)
        .map(|l| l.addr)
        .ok_or(DemoError::NotReady)?;
    let api = bound.api;

    // The agent's two devices.
    let (_desk, mut desk_events) = agent(
        sip,
        "alice-desk",
        "s3cret-desk",
        AnswerMode::Auto {
            after: Duration::from_secs(1),
        },
        MediaMode::Tone(350.0),
    )
    .await?;
    let (_soft, mut soft_events) = agent(
        sip,
        "alice-soft",
        "s3cret-soft",
        AnswerMode::Never,
        MediaMode::Count,
    )
    .await?;

    // The click-to-call.
    let body = serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": callback_url,
        "ring_timeout": 10,
        "record": true,
    })
    .to_string();
    let (status, placed) = rest(api, "POST", "/v1/calls", Some(&body)).await?;
    let Some(call_id) = placed["call_id"].as_str().map(str::to_string) else {
        return Err(DemoError::Http(
            "POST",
            format!("/v1/calls answered {status}: {placed}"),
        ));
    };
    println!("\nPOST /v1/calls -> {status} {call_id}");
    let mut missing = Vec::new();
    let live = wait_status(
        api,
        &call_id,
        &[
            "in-progress",
            "completed",
            "busy",
            "no-answer",
            "failed",
            "canceled",
        ],
        Duration::from_secs(20),
    )
    .await;
    let live_status = live["status"].as_str().unwrap_or("?").to_string();
    println!("  call is {live_status}");
    if live_status == "in-progress" {
        println!("  letting RTP flow for {} s ...", TALK.as_secs());
        tokio::time::sleep(TALK).await;
        let (code, _) = rest(
            api,
            "POST",
            &format!("/v1/calls/{call_id}/hangup"),
            Some("{}"),
        )
        .await?;
        println!("POST /v1/calls/{call_id}/hangup -> {code}");
    } else {
        missing.push(format!(
            "the call never got in-progress (status {live_status})"
        ));
    }
    let done = wait_status(
        api,
        &call_id,
        &["completed", "busy", "no-answer", "failed", "canceled"],
        Duration::from_secs(15),
    )
    .await;
    // Callbacks are delivered asynchronously: wait (bounded) for the last one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let has_final = deliveries
            .lock()
            .map(|d| {
                d.iter().any(|x| {
                    x.body.contains("\"recording.ready\"")
                        || x.body.contains("\"recording.failed\"")
                })
            })
            .unwrap_or(false);
        if has_final {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let desk_end = call_end(&mut desk_events, Duration::from_secs(5)).await;
    let soft_end = call_end(&mut soft_events, Duration::from_secs(5)).await;
    let carrier_end = call_end(&mut carrier_events, Duration::from_secs(5)).await;

    // The report.
    let final_status = done["status"].as_str().unwrap_or("?").to_string();
    println!(
        "\ncall {call_id}: {final_status} (leg {}, sip {}, duration {} s)",
        done["outcome"]["leg"]
            .as_str()
            .or(done["leg"].as_str())
            .unwrap_or("-"),
        done["outcome"]["sip_code"]
            .as_u64()
            .or(done["sip_code"].as_u64())
            .map(|c| c.to_string())
            .unwrap_or("-".into()),
        done["duration"].as_u64().unwrap_or(0)
    );
    if final_status != "completed" {
        missing.push(format!("the call ended {final_status}, not completed"));
    }

    println!("\ncallbacks received at {callback_url}:");
    let got = deliveries.lock().map(|d| d.clone()).unwrap_or_default();
    let mut statuses = Vec::new();
    let mut last_seq = 0;
    for d in &got {
        let j: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
        let verified = d
            .signature
            .as_deref()
            .is_some_and(|s| signature_ok(s, &d.body));
        let seq = j["sequence"].as_i64().unwrap_or(0);
        let st = j["event"]
            .as_str()
            .or(j["status"].as_str())
            .unwrap_or("?")
            .to_string();
        println!(
            "  #{seq:<2} {st:<16} signature {}",
            if verified { "verified" } else { "INVALID" }
        );
        if !verified {
            missing.push(format!("callback {st} has no valid signature"));
        }
        if seq <= last_seq {
            missing.push(format!(
                "callback {st} out of order ({seq} after {last_seq})"
            ));
        }
        last_seq = seq;
        statuses.push(st);
    }
    for want in ["ringing", "in-progress", "completed", "recording.ready"] {
        if !statuses.iter().any(|s| s == want) {
            missing.push(format!("no {want} callback"));
        }
    }
    if statuses.last().map(String::as_str) != Some("recording.ready") {
        missing.push("recording.ready is not the last callback".into());
    }

    // The recording: the agent (alice-desk, 350 Hz) on the left, the carrier (440 Hz) on
    // the right.
    let rec = call_json(api, &call_id).await?;
    let file = rec["recording"]["file"].as_str().unwrap_or("").to_string();
    println!(
        "
recording ({}):",
        rec["recording"]["state"]
    );
    match std::fs::read(&file)
        .ok()
        .and_then(|b| media::g711::parse_wav_stereo(&b).ok())
    {
        Some(samples) if samples.len() > 16_000 => {
            let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
            let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
            let mid = left.len() / 2;
            let win = |v: &[i16]| v[mid.saturating_sub(4000)..(mid + 4000).min(v.len())].to_vec();
            let (l, r) = (win(&left), win(&right));
            let (l350, r440) = (
                media::g711::tone_power(&l, 350.0),
                media::g711::tone_power(&r, 440.0),
            );
            println!("  file      {file}");
            println!(
                "  {:.1} s, {} bytes, 8 kHz 16-bit, 2 channels",
                left.len() as f64 / 8000.0,
                rec["recording"]["size"]
            );
            println!("  left  (agent, alice-desk's 350 Hz): tone power {l350:.2}");
            println!("  right (customer, the carrier's 440 Hz): tone power {r440:.2}");
            println!("  (also GET /v1/calls/{call_id}/recording)");
            if l350 < 0.3 || r440 < 0.3 {
                missing.push("the recording's channels do not carry the two sides' tones".into());
            }
        }
        _ => missing.push(format!("no readable recording at {file:?}")),
    }

    let stats = &done["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    println!("\nRTP relayed by dialbridge (GET /v1/calls/{{id}} stats):");
    println!(
        "  carrier -> agent: {} packets in from the customer leg, {} out to the agent",
        n("customer", "rx_packets"),
        n("agent", "tx_packets")
    );
    println!(
        "  agent -> carrier: {} packets in from the agent leg, {} out to the customer",
        n("agent", "rx_packets"),
        n("customer", "tx_packets")
    );
    let to_agent = n("customer", "rx_packets").min(n("agent", "tx_packets"));
    let to_carrier = n("agent", "rx_packets").min(n("customer", "tx_packets"));
    if to_agent <= MIN_PACKETS {
        missing.push(format!(
            "only {to_agent} packets relayed carrier -> agent (need > {MIN_PACKETS})"
        ));
    }
    if to_carrier <= MIN_PACKETS {
        missing.push(format!(
            "only {to_carrier} packets relayed agent -> carrier (need > {MIN_PACKETS})"
        ));
    }

    println!("\nthe user agents' own counters:");
    let show = |name: &str, end: &Option<(EndReason, RtpStats)>| match end {
        Some((r, s)) => println!("  {name:<11} ended ({r}): {s}"),
        None => println!("  {name:<11} no end of call seen"),
    };
    show("alice-desk", &desk_end);
    show("alice-soft", &soft_end);
    show("carrier", &carrier_end);
    match &desk_end {
        Some((_, s)) if s.received_packets > MIN_PACKETS => {}
        _ => missing.push("alice-desk did not hear the carrier".into()),
    }
    match &carrier_end {
        Some((_, s)) if s.received_packets > MIN_PACKETS => {}
        _ => missing.push("the carrier did not hear alice-desk".into()),
    }
    if !matches!(soft_end, Some((EndReason::CancelledByRemote, _))) {
        missing.push("alice-soft was not CANCELled".into());
    }

    println!("\ntimeline:");
    for e in done["timeline"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {} {:<9} {:<16} {}",
            e["at"].as_str().unwrap_or(""),
            e["leg"].as_str().unwrap_or("-"),
            e["kind"].as_str().unwrap_or(""),
            match &e["detail"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            }
        );
    }

    let _ = stop_tx.send(());
    let _ = timeout(Duration::from_secs(5), server).await;
    drop(carrier);
    Ok(missing)
}

/// `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">` with the account's webhook secret.
fn signature_ok(header: &str, body: &str) -> bool {
    let t = header.split(',').find_map(|p| p.trim().strip_prefix("t="));
    let v1 = header.split(',').find_map(|p| p.trim().strip_prefix("v1="));
    match (t.and_then(|t| t.parse::<i64>().ok()), v1) {
        (Some(t), Some(v1)) => api::callbacks::sign(WEBHOOK_SECRET, t, body) == v1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let body = r#"{"status":"completed"}"#;
        let good = api::callbacks::signature_header(WEBHOOK_SECRET, 1700000000, body);
        assert!(signature_ok(&good, body));
        assert!(!signature_ok(&good, r#"{"status":"failed"}"#));
        assert!(!signature_ok("t=1,v1=00", body));
        assert!(!signature_ok("garbage", body));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"zz\r\n"), b"");
    }

    #[test]
    fn the_demo_config_is_valid() {
        let text = config_text(
            std::path::Path::new("/tmp/x"),
            "127.0.0.1:5080".parse().unwrap(),
        );
        let cfg = Config::parse(&text).unwrap();
        assert!(cfg.validate().is_ok());
    }
}
