//! Connection caps and time-outs of the REST port: one source cannot hold it.

use crate::support::*;
use api::conn::HttpTimeouts;
use sip_core::limits::ConnectionLimitsConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(server: &Server) -> std::net::SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the server closes the connection (EOF or reset); what came before.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&b[..n]),
        }
    }
}

#[tokio::test]
async fn connections_over_the_per_source_cap_are_closed_at_once_others_are_served() {
    let cfg = api::ApiConfig {
        connections: ConnectionLimitsConfig {
            max_total: 100,
            max_per_source: 5,
            ..Default::default()
        },
        ..test_config()
    };
    let server = Server::start_with(cfg, Arc::new(TempDir::new()), false).await;
    let a = addr(&server);
    // Five half-sent requests hold 127.0.0.1's share.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // The sixth is closed at once, without an answer.
    // (The reset may already come back to the connect.)
    if let Ok(mut over) = TcpStream::connect(a).await {
        let _ = over
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let got = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut over))
            .await
            .expect("closed at once");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    // Another source is served meanwhile.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = sock.connect(a).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut other))
        .await
        .unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Once the held connections are gone, 127.0.0.1 is served again.
    drop(held);
    let mut answered = false;
    for _ in 0..100 {
        if let Ok(r) = server.http.get(server.url("/healthz")).send().await {
            answered = r.status().as_u16() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered);
    server.stop().await;
}

/// A half-sent head is closed at the header time-out; a kept-alive connection at the idle
/// time-out; a silent body at the body time-out. Time is a paused clock.
#[tokio::test(start_paused = true)]
async fn half_sent_heads_silent_bodies_and_idle_connections_are_closed() {
    let cfg = api::ApiConfig {
        timeouts: HttpTimeouts {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(20),
            idle: Duration::from_secs(60),
        },
        ..test_config()
    };
    let server = Server::start_paused(cfg).await;
    let a = addr(&server);

    let mut head = TcpStream::connect(a).await.unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_secs(9), until_closed(&mut head)).await;
    assert!(early.is_err(), "open before the header time-out");
    let late = tokio::time::timeout(Duration::from_secs(2), until_closed(&mut head)).await;
    assert_eq!(
        late.map(|b| b.is_empty()).ok(),
        Some(true),
        "closed, unanswered"
    );

    // A whole request is answered; the kept-alive connection is closed when idle.
    let mut idle = TcpStream::connect(a).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 12];
    idle.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"HTTP/1.1 200");
    let early = tokio::time::timeout(Duration::from_secs(59), until_closed(&mut idle)).await;
    assert!(early.is_err(), "open before the idle time-out");
    let late = tokio::time::timeout(Duration::from_secs(2), until_closed(&mut idle)).await;
    assert!(late.is_ok(), "closed at the idle time-out");

    // A body announced and not sent.
    let mut body = TcpStream::connect(a).await.unwrap();
    let head = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_SECRET}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    body.write_all(head.as_bytes()).await.unwrap();
    let early = tokio::time::timeout(Duration::from_secs(19), until_closed(&mut body)).await;
    assert!(early.is_err(), "open before the body time-out");
    let late = tokio::time::timeout(Duration::from_secs(25), until_closed(&mut body)).await;
    assert!(late.is_ok(), "closed at the body time-out");
    server.stop().await;
}
