//! Connection floods: one source opening thousands of half-open SIP/TCP and HTTP
//! connections does not lock anybody else out. The server runs under
//! `prlimit --nofile=4096:4096`; the flood comes from 127.0.0.3; phones, the REST API and a
//! whole click-to-call come from 127.0.0.1 meanwhile. And the time-outs: a half-sent
//! message's connection is closed after `sip.first_message_secs`, a registered TCP phone's
//! connection stays open past `sip.tcp_idle_secs`.

use sip_tests::c2c::{final_callback, fixture_wrapped, USER};
use sip_tests::http::request;
use sip_tests::{scenario, sipp, TestServer};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Raises this process's soft `nofile` limit to the hard one (the flood needs thousands of
/// sockets on the client side too).
fn raise_own_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    l.rlim_cur
}

/// A TCP connection to `to` from `from` (any port), or `None` when the server refused it.
fn connect_from(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    s.bind(&SocketAddr::new(from, 0).into()).ok()?;
    s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
    let s: TcpStream = s.into();
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Whether the server has closed `s` (EOF or reset).
fn is_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// The flood: keeps `count` half-open connections to `to` from `from`, each with `half`
/// sent, re-opening those the server closes (at most `per_round` a round), until `stop`.
/// Counts the connections the server closed.
struct Flood {
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(from: IpAddr, targets: Vec<(SocketAddr, usize, &'static [u8])>) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let (st, cl, op) = (Arc::clone(&stop), Arc::clone(&closed), Arc::clone(&opened));
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(150);
            let mut socks: Vec<Vec<Option<TcpStream>>> = targets
                .iter()
                .map(|(_, n, _)| (0..*n).map(|_| None).collect())
                .collect();
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                for (t, (to, _, half)) in targets.iter().enumerate() {
                    let mut reopened = 0;
                    for slot in socks[t].iter_mut() {
                        if let Some(s) = slot {
                            if is_closed(s) {
                                cl.fetch_add(1, Ordering::Relaxed);
                                *slot = None;
                            }
                        }
                        if slot.is_none() && reopened < 400 {
                            reopened += 1;
                            op.fetch_add(1, Ordering::Relaxed);
                            match connect_from(from, *to) {
                                Some(mut s) => {
                                    let _ = s.write_all(half);
                                    *slot = Some(s);
                                }
                                None => {
                                    cl.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // The sockets close here, with the thread.
        });
        Flood {
            stop,
            closed,
            opened,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{text}"))
}

const HALF_REGISTER: &[u8] =
    b"REGISTER sip:dialbridge.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.3:5060;branch=z9hG4bKflood\r\nFrom: <sip:x@dialbridge.test>;tag=1\r\n";
const HALF_HTTP: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: dialbridge\r\n";

/// REGISTER over TCP with SIPp from 127.0.0.1; `expires` 0 removes the binding.
fn register_over_tcp(target: SocketAddr, device: &str, password: &str, expires: &str) {
    let reg = scenario("register_contact.xml")
        .to_string_lossy()
        .into_owned();
    let target = target.to_string();
    let port = sip_tests::free_port().to_string();
    let run = sipp(
        &[
            "-sf",
            &reg,
            &target,
            "-t",
            "t1",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-m",
            "1",
            "-s",
            device,
            "-au",
            device,
            "-ap",
            password,
            "-set",
            "expires",
            expires,
            "-set",
            "contact_port",
            &port,
            "-timeout",
            "20s",
            "-timeout_error",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.code, 0, "REGISTER over TCP failed: {}", run.output);
}

#[test]
fn a_flood_from_one_source_locks_out_neither_phones_nor_the_api_nor_calls() {
    raise_own_nofile();
    let wrap = |bin: &Path, cfg: &Path, _log: &Path| {
        let mut c = Command::new("prlimit");
        c.arg("--nofile=4096:4096")
            .arg("--")
            .arg(bin)
            .args(["serve", "--config"])
            .arg(cfg);
        c
    };
    let f = fixture_wrapped(0, "[media]\nports = \"41000-41399\"\n", Some(&wrap));
    let sip_tcp = f.server.tcp_addr();
    let api = f.api();
    // The budget was planned for 4096 descriptors and said at start-up.
    let log = f.server.log_text();
    assert!(
        log.contains("descriptor budget") && log.contains("nofile=4096"),
        "{log}"
    );

    let flood = Flood::start(
        "127.0.0.3".parse().unwrap(),
        vec![(sip_tcp, 3000, HALF_REGISTER), (api, 1500, HALF_HTTP)],
    );
    // Let the flood fill the server's shares (its first round opens 800 connections; the
    // ones over the caps are closed at once).
    let t0 = Instant::now();
    while flood.opened.load(Ordering::Relaxed) < 3000 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }

    // From 127.0.0.1 meanwhile: /healthz, a REGISTER over TCP, a whole click-to-call.
    let health = request(api, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200, "{}", health.body);
    register_over_tcp(sip_tcp, "alice-soft", "s3cret-soft", "300");
    register_over_tcp(sip_tcp, "alice-soft", "s3cret-soft", "0");

    let desk = f.phone("alice-desk", "s3cret-desk", "agent_answer.xml", &[]);
    let carrier = f.carrier("carrier_answer_hangup.xml", &["-d", "3000"]);
    let id = f.place(serde_json::json!({
        "user_id": USER,
        "dial_string": "+14155550100",
        "callback_url": f.receiver.url("/hook"),
    }));
    let c = carrier.wait(Duration::from_secs(60));
    assert_eq!(c.code, 0, "{}", c.output);
    let d = desk.wait(Duration::from_secs(30));
    assert_eq!(d.code, 0, "{}", d.output);
    let call = f.ended(&id);
    assert_eq!(call["status"], "completed", "{call}");
    final_callback(&f.receiver, "completed");
    let stats = &call["stats"];
    let n = |leg: &str, k: &str| stats[leg][k].as_u64().unwrap_or(0);
    for (leg, k) in [
        ("customer", "rx_packets"),
        ("customer", "tx_packets"),
        ("agent", "rx_packets"),
        ("agent", "tx_packets"),
    ] {
        assert!(n(leg, k) > 50, "{leg} {k}: {stats}");
    }

    // Still flooding: the server refused the flood's surplus and stayed within its limit.
    // (Read a few times: when sip.first_message_secs closes the flood's connections, it
    // takes the flood a round to open them again.)
    let mut m = String::new();
    for _ in 0..10 {
        m = request(api, "GET", "/metrics", &[], None).body;
        if metric(&m, "dialbridge_sip_tcp_connections") >= 100
            && metric(&m, "dialbridge_http_connections") >= 30
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        flood.closed.load(Ordering::Relaxed) > 1000,
        "the server held the flood"
    );
    assert!(
        metric(&m, "dialbridge_sip_tcp_connections_refused_per_ip_total") > 0,
        "{m}"
    );
    assert!(
        metric(&m, "dialbridge_http_connections_refused_per_ip_total") > 0,
        "{m}"
    );
    // The flood holds its source's share (a sixteenth of each cap), no more.
    let (sip_open, http_open) = (
        metric(&m, "dialbridge_sip_tcp_connections"),
        metric(&m, "dialbridge_http_connections"),
    );
    eprintln!(
        "flood: {} connects, {} closed by the server; open now: SIP {sip_open}, REST {http_open}",
        flood.opened.load(Ordering::Relaxed),
        flood.closed.load(Ordering::Relaxed)
    );
    assert!(
        (100..=400).contains(&sip_open),
        "{sip_open} SIP connections open"
    );
    assert!(
        (30..=200).contains(&http_open),
        "{http_open} REST connections open"
    );
    let open = metric(&m, "dialbridge_open_fds");
    eprintln!("descriptors open: {open} of 4096");
    assert!(
        open < 4096 - 128,
        "{open} descriptors open: the reserve was taken"
    );
    drop(flood);

    let log = f.server.log_text();
    assert!(
        !log.contains("Too many open files"),
        "the server ran out of descriptors"
    );
    // Logged once per source and minute, not once per connection.
    let logged = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains("127.0.0.3"))
            .count()
    };
    let sip_lines = logged("SIP connections refused");
    let http_lines = logged("REST connections refused");
    assert!(
        (1..=3).contains(&sip_lines),
        "{sip_lines} log lines for SIP refusals"
    );
    assert!(
        (1..=3).contains(&http_lines),
        "{http_lines} log lines for REST refusals"
    );
}

/// Reads one SIP message (head and Content-Length body) from `s` within `limit`.
fn read_message(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(limit)).ok()?;
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned());
            }
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

fn register(local: SocketAddr, cseq: u32, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:dialbridge.test SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bKreg{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice-desk@dialbridge.test>;tag=tcpphone\r\n\
         To: <sip:alice-desk@dialbridge.test>\r\n\
         Call-ID: tcp-phone-registration\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:alice-desk@{local};transport=tcp>\r\n\
         Expires: 300\r\n\
         {auth}Content-Length: 0\r\n\r\n"
    )
}

fn options(local: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:dialbridge.test SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bKopt{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@dialbridge.test>;tag=probe{n}\r\n\
         To: <sip:dialbridge.test>\r\n\
         Call-ID: options-{n}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_half_sent_message_is_closed_after_first_message_secs_a_registered_tcp_phone_is_not() {
    let server = TestServer::start(&format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\n\
         first_message_secs = 2\ntcp_idle_secs = 3\n{}",
        sip_tests::c2c::config(sip_tests::free_port())
    ));
    let tcp = server.tcp_addr();

    // A phone registers over TCP (digest on the same connection) and stays connected.
    let mut phone = TcpStream::connect(tcp).unwrap();
    let local = phone.local_addr().unwrap();
    phone
        .write_all(register(local, 1, None).as_bytes())
        .unwrap();
    let challenge = read_message(&mut phone, Duration::from_secs(10)).expect("401");
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let challenges: Vec<&str> = challenge
        .lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .collect();
    let mut client = sip_core::auth::DigestClient::new("alice-desk", "s3cret-desk");
    let answer = client
        .answer(&challenges, "REGISTER", "sip:dialbridge.test", b"")
        .unwrap();
    phone
        .write_all(register(local, 2, Some(&answer)).as_bytes())
        .unwrap();
    let ok = read_message(&mut phone, Duration::from_secs(10)).expect("200");
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    // Half a message, and a whole one on a connection that registers nothing.
    let mut half = TcpStream::connect(tcp).unwrap();
    half.write_all(HALF_REGISTER).unwrap();
    let mut idle = TcpStream::connect(tcp).unwrap();
    let idle_local = idle.local_addr().unwrap();
    idle.write_all(options(idle_local, 1).as_bytes()).unwrap();
    let answered = read_message(&mut idle, Duration::from_secs(10)).expect("200 to OPTIONS");
    assert!(answered.starts_with("SIP/2.0 200"), "{answered}");

    // The half-sent message's connection is closed (first_message_secs), and the idle one
    // (tcp_idle_secs); both well within 15 s.
    let closed_within = |s: &mut TcpStream| {
        let deadline = Instant::now() + Duration::from_secs(15);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 64];
        while Instant::now() < deadline {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    };
    assert!(
        closed_within(&mut half),
        "the half-sent message's connection is still open"
    );
    assert!(
        closed_within(&mut idle),
        "the idle connection is still open"
    );

    // The registered phone's connection outlived both time-outs: it still carries requests.
    phone.write_all(options(local, 2).as_bytes()).unwrap();
    let pong = read_message(&mut phone, Duration::from_secs(10))
        .expect("the registered phone's connection was closed");
    assert!(pong.starts_with("SIP/2.0 200"), "{pong}");

    let api = server.api.expect("REST address");
    let m = request(api, "GET", "/metrics", &[], None).body;
    assert_eq!(
        metric(&m, "dialbridge_sip_tcp_first_message_timeouts_total"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "dialbridge_sip_tcp_idle_timeouts_total"),
        1,
        "{m}"
    );
}

fn udp_options(from: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:dialbridge.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bKpike{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@dialbridge.test>;tag=pike{n}\r\n\
         To: <sip:dialbridge.test>\r\n\
         Call-ID: pike-{n}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Answers that reach `sock` until it has been quiet for `quiet`.
fn answers(sock: &std::net::UdpSocket, quiet: Duration) -> usize {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut b = [0u8; 4096];
    let mut n = 0;
    while let Ok((len, _)) = sock.recv_from(&mut b) {
        if b[..len].starts_with(b"SIP/2.0 200") {
            n += 1;
        }
    }
    n
}

/// The pike idea: a source sending more than `sip.requests_per_sec` gets nothing back for
/// `sip.request_mute_secs`; another source is served meanwhile.
#[test]
fn a_source_past_requests_per_sec_is_ignored_for_a_while() {
    let server = TestServer::start(
        "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\n\
         requests_per_sec = 20\nrequest_mute_secs = 60\nrefusals_per_sec = 0\n",
    );
    let to = server.udp_addr();
    let flooder = std::net::UdpSocket::bind("127.0.0.4:0").unwrap();
    let from = flooder.local_addr().unwrap();
    for n in 0..100 {
        flooder
            .send_to(udp_options(from, n).as_bytes(), to)
            .unwrap();
    }
    let got = answers(&flooder, Duration::from_millis(700));
    assert!(
        (20..=30).contains(&got),
        "{got} of 100 answered (budget 20 a second)"
    );
    // Muted: even a lone request later gets nothing.
    flooder
        .send_to(udp_options(from, 1000).as_bytes(), to)
        .unwrap();
    assert_eq!(answers(&flooder, Duration::from_millis(500)), 0);
    // Another source is answered.
    let other = std::net::UdpSocket::bind("127.0.0.5:0").unwrap();
    let oa = other.local_addr().unwrap();
    other.send_to(udp_options(oa, 1).as_bytes(), to).unwrap();
    assert_eq!(answers(&other, Duration::from_millis(500)), 1);

    let m = request(server.api.expect("REST"), "GET", "/metrics", &[], None).body;
    assert_eq!(metric(&m, "dialbridge_sip_request_mutes_total"), 1, "{m}");
    assert_eq!(
        metric(&m, "dialbridge_sip_requests_dropped_total") as usize,
        101 - got,
        "{m}"
    );
    let log = server.log_text();
    assert_eq!(
        log.matches("too many requests from one source").count(),
        1,
        "logged once per mute"
    );
}
