//! Two user agents on loopback calling each other: answer with RTP both ways and BYE,
//! CANCEL of a ringing call, rejection; and registration against a scripted registrar
//! that challenges with digest.

use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use ua::{AnswerMode, EndReason, MediaMode, Registration, UaConfig, UaEvent, UserAgent};

async fn ua(answer: AnswerMode, media: MediaMode) -> (UserAgent, UnboundedReceiver<UaEvent>) {
    UserAgent::start(UaConfig {
        answer,
        media,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The next event matching `f` (bounded).
async fn next<T>(
    rx: &mut UnboundedReceiver<UaEvent>,
    mut f: impl FnMut(&UaEvent) -> Option<T>,
) -> T {
    timeout(Duration::from_secs(20), async {
        loop {
            let ev = rx.recv().await.expect("events channel open");
            if let Some(t) = f(&ev) {
                return t;
            }
        }
    })
    .await
    .expect("event in time")
}

fn target(b: &UserAgent) -> String {
    format!("sip:phone@{}", b.local_addr().unwrap())
}

#[tokio::test]
async fn answered_call_carries_rtp_both_ways_and_ends_with_bye() {
    let (a, mut a_ev) = ua(AnswerMode::Never, MediaMode::Tone(440.0)).await;
    let (b, mut b_ev) = ua(
        AnswerMode::Auto {
            after: Duration::ZERO,
        },
        MediaMode::Echo,
    )
    .await;
    let call = a.call(&target(&b), None).await.unwrap();
    next(&mut b_ev, |e| {
        matches!(e, UaEvent::Incoming { .. }).then_some(())
    })
    .await;
    let status = next(&mut a_ev, |e| match e {
        UaEvent::Ringing { status, .. } => Some(*status),
        _ => None,
    })
    .await;
    assert_eq!(status, 180);
    let codec = next(&mut a_ev, |e| match e {
        UaEvent::Answered { codec, .. } => Some(*codec),
        _ => None,
    })
    .await;
    assert_eq!(codec, ua::G711::Pcmu);
    // Let a few frames go out and come back (bounded by the 20 ms pacing).
    tokio::time::sleep(Duration::from_millis(400)).await;
    call.hangup();
    let (reason, stats) = next(&mut a_ev, |e| match e {
        UaEvent::Ended { reason, stats, .. } => Some((*reason, stats.clone())),
        _ => None,
    })
    .await;
    assert_eq!(reason, EndReason::LocalBye);
    assert!(stats.sent_packets >= 5, "{stats:?}");
    assert!(stats.received_packets >= 3, "the echo came back: {stats:?}");
    let (reason, stats) = next(&mut b_ev, |e| match e {
        UaEvent::Ended { reason, stats, .. } => Some((*reason, stats.clone())),
        _ => None,
    })
    .await;
    assert_eq!(reason, EndReason::RemoteBye);
    assert!(stats.received_packets >= 3, "{stats:?}");
    assert_eq!(
        stats.sent_packets, stats.received_packets,
        "echo sends one per packet"
    );
}

#[tokio::test]
async fn hanging_up_while_ringing_cancels() {
    let (a, mut a_ev) = ua(AnswerMode::Never, MediaMode::Count).await;
    let (b, mut b_ev) = ua(AnswerMode::Never, MediaMode::Count).await;
    let call = a.call(&target(&b), None).await.unwrap();
    next(&mut a_ev, |e| {
        matches!(e, UaEvent::Ringing { .. }).then_some(())
    })
    .await;
    call.hangup();
    let reason = next(&mut b_ev, |e| match e {
        UaEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, EndReason::CancelledByRemote);
    let reason = next(&mut a_ev, |e| match e {
        UaEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, EndReason::CancelledLocally);
}

#[tokio::test]
async fn rejection_ends_the_call_with_its_status() {
    let (a, mut a_ev) = ua(AnswerMode::Never, MediaMode::Count).await;
    let (b, _b_ev) = ua(AnswerMode::Reject(486), MediaMode::Count).await;
    a.call(&target(&b), None).await.unwrap();
    let reason = next(&mut a_ev, |e| match e {
        UaEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, EndReason::Rejected(486));
}

#[tokio::test]
async fn bad_uri_is_refused() {
    let (a, _ev) = ua(AnswerMode::Never, MediaMode::Count).await;
    assert!(matches!(
        a.call("not a uri", None).await,
        Err(ua::UaError::BadUri(_))
    ));
}

/// A registrar that answers the first REGISTER 401 and the second 200 when it carries an
/// Authorization with the right username; returns the REGISTERs it saw.
async fn scripted_registrar(sock: tokio::net::UdpSocket, answers: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65535];
    for _ in 0..answers {
        let Ok(Ok((n, from))) = timeout(Duration::from_secs(20), sock.recv_from(&mut buf)).await
        else {
            break;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let head = |name: &str| {
            text.lines()
                .find(|l| {
                    l.to_ascii_lowercase()
                        .starts_with(&format!("{}:", name.to_ascii_lowercase()))
                })
                .unwrap_or("")
                .to_string()
        };
        let (status, extra) = if text.contains("Authorization: Digest") {
            let contact = head("Contact");
            let contact = contact.trim_start_matches("Contact:").trim();
            ("200 OK", format!("Contact: {contact};expires=120\r\n"))
        } else {
            (
                "401 Unauthorized",
                "WWW-Authenticate: Digest realm=\"dialbridge.test\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5\r\n".to_string(),
            )
        };
        let resp = format!(
            "SIP/2.0 {status}\r\n{}\r\n{}\r\n{};tag=reg\r\n{}\r\n{}\r\n{extra}Content-Length: 0\r\n\r\n",
            head("Via"),
            head("From"),
            head("To"),
            head("Call-ID"),
            head("CSeq"),
        );
        sock.send_to(resp.as_bytes(), from).await.unwrap();
        seen.push(text);
    }
    seen
}

#[tokio::test]
async fn registers_with_digest_and_reads_the_granted_expiry() {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let registrar = sock.local_addr().unwrap();
    let script = tokio::spawn(scripted_registrar(sock, 2));
    let (mut a, mut ev) = ua(AnswerMode::Never, MediaMode::Count).await;
    let granted = a
        .register(Registration {
            registrar,
            transport: sip_core::transport::Transport::Udp,
            username: "alice-desk".into(),
            password: "s3cret".into(),
            domain: "dialbridge.test".into(),
            expires: 300,
        })
        .await
        .unwrap();
    assert_eq!(granted, 120);
    let (aor, expires) = next(&mut ev, |e| match e {
        UaEvent::Registered { aor, expires } => Some((aor.clone(), *expires)),
        _ => None,
    })
    .await;
    assert_eq!(
        (aor.as_str(), expires),
        ("sip:alice-desk@dialbridge.test", 120)
    );
    let seen = script.await.unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].starts_with("REGISTER sip:dialbridge.test SIP/2.0"),
        "{}",
        seen[0]
    );
    assert!(seen[0].contains("Expires: 300"), "{}", seen[0]);
    assert!(!seen[0].contains("Authorization"), "{}", seen[0]);
    assert!(seen[1].contains("username=\"alice-desk\""), "{}", seen[1]);
    assert!(seen[1].contains("nonce=\"abc123\""), "{}", seen[1]);
    // CSeq grows, Call-ID stays.
    assert!(seen[0].contains("CSeq: 1 REGISTER") && seen[1].contains("CSeq: 2 REGISTER"));
}

#[tokio::test]
async fn a_second_challenge_is_a_refusal() {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let registrar = sock.local_addr().unwrap();
    // Always 401: answer only requests without credentials with the challenge... by
    // stripping the credentials marker the script challenges twice.
    let script = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        for _ in 0..2 {
            let Ok(Ok((n, from))) =
                timeout(Duration::from_secs(20), sock.recv_from(&mut buf)).await
            else {
                return;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let head = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(&format!("{name}:")))
                    .unwrap_or("")
                    .to_string()
            };
            let resp = format!(
                "SIP/2.0 401 Unauthorized\r\n{}\r\n{}\r\n{};tag=reg\r\n{}\r\n{}\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"n{}\"\r\nContent-Length: 0\r\n\r\n",
                head("Via"), head("From"), head("To"), head("Call-ID"), head("CSeq"), n
            );
            sock.send_to(resp.as_bytes(), from).await.unwrap();
        }
    });
    let (mut a, _ev) = ua(AnswerMode::Never, MediaMode::Count).await;
    let r = a
        .register(Registration {
            registrar,
            transport: sip_core::transport::Transport::Udp,
            username: "alice-desk".into(),
            password: "wrong".into(),
            domain: "dialbridge.test".into(),
            expires: 300,
        })
        .await;
    assert!(
        matches!(r, Err(ua::UaError::Unauthorized("REGISTER"))),
        "{r:?}"
    );
    script.await.unwrap();
}
