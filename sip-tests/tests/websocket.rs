//! SIP over WebSocket (RFC 7118) end to end: the real server with a `ws:` listen address and
//! a WebSocket client (tungstenite) speaking SIP the way a browser phone does (JsSIP,
//! SIP.js: a `*.invalid` Via and Contact, digest registration).
//!
//! - A handshake without `Sec-WebSocket-Protocol: sip` is answered 400 and logged.
//! - A phone registered over WebSocket gets the click-to-call INVITE on its own connection
//!   (`Via: SIP/2.0/WS`); its answer (busy here) ends the call.

use sip_tests::c2c::{fixture_with, SECRET, USER};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const WS_LISTEN: &str =
    "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\", \"ws:127.0.0.1:0\"]\n";

fn ws_addr(server: &sip_tests::TestServer) -> String {
    server
        .websocket
        .iter()
        .find_map(|a| a.strip_prefix("ws:"))
        .expect("a ws: listen address announced")
        .to_string()
}

/// Opens a WebSocket to `addr`, asking for `protocol` (none when `None`).
fn open(
    addr: &str,
    protocol: Option<&str>,
) -> Result<
    (
        WebSocket<TcpStream>,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let mut req = format!("ws://{addr}/").into_client_request()?;
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header value"));
    }
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tungstenite::client::client(req, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
    })
}

/// The next SIP message on the WebSocket (pings skipped), bounded in time.
fn next_sip(ws: &mut WebSocket<TcpStream>) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "no SIP message in time");
        match ws.read().expect("a message") {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            _ => continue,
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

fn register(ws: &mut WebSocket<TcpStream>, auth: Option<&str>, cseq: u32) -> String {
    let auth_line = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let msg = format!(
        "REGISTER sip:dialbridge.test SIP/2.0\r\n\
         Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice-desk@dialbridge.test>;tag=wsphone1\r\n\
         To: <sip:alice-desk@dialbridge.test>\r\n\
         Call-ID: ws-register-1\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:r8f3k2@df7jal23ls0d.invalid;transport=ws>;expires=300\r\n\
         Expires: 300\r\n\
         User-Agent: JsSIP 3.10.1\r\n\
         {auth_line}Content-Length: 0\r\n\r\n"
    );
    ws.send(Message::text(msg)).expect("send REGISTER");
    next_sip(ws)
}

#[test]
fn a_websocket_without_the_sip_protocol_is_refused_with_a_log_line() {
    let f = fixture_with(0, WS_LISTEN);
    let addr = ws_addr(&f.server);
    match open(&addr, None) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }
    match open(&addr, Some("chat")) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }
    // The log is written by a thread of its own: wait (bounded) for both lines to land.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut log = f.server.log_text();
    while log.matches("websocket refused").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = f.server.log_text();
    }
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("websocket refused"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(refusals[1].contains("offered=\"chat\""), "{}", refusals[1]);
    // With the protocol: accepted, and the server says `sip` back.
    let (_ws, resp) = open(&addr, Some("sip")).expect("accepted");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("sip")
    );
}

#[test]
fn a_phone_registered_over_websocket_gets_its_call_on_that_connection() {
    let f = fixture_with(0, WS_LISTEN);
    let addr = ws_addr(&f.server);
    let (mut ws, _) = open(&addr, Some("sip")).expect("accepted");
    // Digest registration, as a browser phone does it.
    let challenge = register(&mut ws, None, 1);
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let offered = header(&challenge, "WWW-Authenticate");
    let mut nonces = sip_core::auth::ClientNonceState::new();
    let authorization = sip_core::auth::client::answer_challenges(
        &mut nonces,
        &offered,
        "REGISTER",
        "sip:dialbridge.test",
        "alice-desk",
        "s3cret-desk",
        b"",
    )
    .expect("a challenge we can answer");
    let ok = register(&mut ws, Some(&authorization), 2);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    // The binding says WebSocket.
    let r = sip_tests::http::request(
        f.api(),
        "GET",
        &format!("/v1/users/{USER}/registrations"),
        &[("Authorization", &format!("Bearer {SECRET}"))],
        None,
    );
    assert!(r.body.contains("\"transport\":\"ws\""), "{}", r.body);

    let id = f.place(serde_json::json!({
        "user_id": USER, "dial_string": "+14155550100", "callback_url": f.receiver.url("/hook"),
    }));
    // The INVITE comes on the phone's own WebSocket.
    let invite = next_sip(&mut ws);
    assert!(
        invite.starts_with("INVITE sip:r8f3k2@df7jal23ls0d.invalid;transport=ws SIP/2.0"),
        "{invite}"
    );
    assert!(
        header(&invite, "Via")
            .first()
            .is_some_and(|v| v.starts_with("SIP/2.0/WS ")),
        "{invite}"
    );
    assert!(
        header(&invite, "Contact")
            .first()
            .is_some_and(|v| v.contains(";transport=ws")),
        "{invite}"
    );
    // Busy here: the answer goes back on the same connection and ends the call.
    let copy = |name: &str| {
        header(&invite, name)
            .iter()
            .map(|v| format!("{name}: {v}\r\n"))
            .collect::<String>()
    };
    let busy = format!(
        "SIP/2.0 486 Busy Here\r\n{}{}{};tag=wsbusy\r\n{}{}Content-Length: 0\r\n\r\n",
        copy("Via"),
        copy("From"),
        copy("To").trim_end(),
        copy("Call-ID"),
        copy("CSeq"),
    );
    ws.send(Message::text(busy)).expect("send 486");
    let ack = next_sip(&mut ws);
    assert!(ack.starts_with("ACK "), "{ack}");
    let call = f.ended(&id);
    assert_eq!(call["status"], "busy", "{call}");
    assert!(f
        .server
        .log_text()
        .contains("websocket connection accepted"));
}

/// The same refusal over `wss:` (TLS first, then the WebSocket handshake): a client without
/// the `sip` subprotocol gets a 400 and a log line; with it, it is accepted. The TLS client is
/// OpenSSL, trusting the test's own CA.
#[test]
fn a_secure_websocket_without_the_sip_protocol_is_refused_with_a_log_line() {
    use openssl::ssl::{SslConnector, SslMethod};
    let ca = sip_tests::tls::TestCa::new("wss");
    let id = ca.issue("server", &["localhost", "127.0.0.1"]);
    let f = fixture_with(
        0,
        &format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:0\", \"wss:127.0.0.1:0\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            id.cert.display(),
            id.key.display()
        ),
    );
    let addr = f
        .server
        .websocket
        .iter()
        .find_map(|a| a.strip_prefix("wss:"))
        .expect("a wss: listen address announced")
        .to_string();
    let open_tls = |protocol: Option<&str>| {
        let mut c = SslConnector::builder(SslMethod::tls()).expect("connector");
        c.set_ca_file(&ca.ca_pem).expect("CA");
        let tcp = TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let tls = c.build().connect("localhost", tcp).expect("TLS handshake");
        let mut req = format!("wss://{addr}/")
            .into_client_request()
            .expect("request");
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("header value"));
        }
        tungstenite::client::client(req, tls).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })
    };
    match open_tls(None) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected a 400, got {:?}", other.map(|(_, r)| r.status())),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = f.server.log_text();
    while !log.contains("websocket refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        log = f.server.log_text();
    }
    let refusal = log
        .lines()
        .find(|l| l.contains("websocket refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(refusal.contains("transport=\"WSS\""), "{refusal}");
    let (_ws, resp) = open_tls(Some("sip")).expect("accepted with the sip protocol");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("sip")
    );
}
