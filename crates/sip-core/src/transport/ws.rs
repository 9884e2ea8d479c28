//! SIP over WebSocket (RFC 7118): `ws:` and `wss:` listen addresses, for browser phones
//! (JsSIP, SIP.js).
//!
//! - The handshake must ask for `Sec-WebSocket-Protocol: sip` (RFC 7118 §4.1); one that does
//!   not is answered `400` and logged, and the connection closed. The TLS handshake (wss)
//!   and the WebSocket one together are held to the first-message time-out, under the same
//!   connection caps as TCP.
//! - Each WebSocket message (text or binary) is one SIP message (§5); a message over the
//!   maximum size closes the connection. What we send goes as a text message when it is
//!   UTF-8, else binary.
//! - The connection sits in the transports' table like a TCP one, so requests to a browser's
//!   binding go back on it; a WebSocket peer is never connected to (its Contact host is
//!   `*.invalid`, §5.2).
//! - Keep-alive: a ping every 30 s (RFC 6455 §5.5.2; pongs are answered by the library), the
//!   idle time-out counting every frame received, pongs included; a `CRLF CRLF` message is
//!   answered with `CRLF` like on TCP.
//!
//! The WebSocket library (tokio-tungstenite) is named here only.

use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{http, Message, Utf8Bytes};

/// How often an idle-or-not WebSocket connection is pinged.
pub(super) const PING_EVERY: Duration = Duration::from_secs(30);

/// Whether a `Sec-WebSocket-Protocol` request header names `sip` (a comma-separated list).
pub(crate) fn offers_sip(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("sip")))
}

impl Transports {
    /// The WebSocket handshake on an accepted (and, for wss, TLS-wrapped) connection.
    pub(super) async fn accept_ws<S>(
        self: Arc<Self>,
        transport: Transport,
        stream: S,
        local: SocketAddr,
        remote: SocketAddr,
        slot: ConnSlot,
        deadline: tokio::time::Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The library's callback type: its error is the whole HTTP answer.
        #[allow(clippy::result_large_err)]
        let check = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
            let offered = req
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok());
            if offers_sip(offered) {
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    http::HeaderValue::from_static("sip"),
                );
                return Ok(resp);
            }
            tracing::warn!(
                %local,
                %remote,
                transport = transport.via_token(),
                offered = offered.unwrap_or("(none)"),
                "websocket refused: the handshake did not ask for Sec-WebSocket-Protocol: sip (RFC 7118); answered 400"
            );
            let mut e = ErrorResponse::new(Some(
                "Sec-WebSocket-Protocol: sip is required (RFC 7118)\n".to_owned(),
            ));
            *e.status_mut() = http::StatusCode::BAD_REQUEST;
            Err(e)
        };
        let max = self.cfg.max_message_size;
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let handshake =
            tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(ws)) => {
                tracing::debug!(%local, %remote, %transport, "websocket connection accepted");
                self.register_ws_conn(transport, ws, local, remote, slot);
            }
            Ok(Err(e)) => {
                tracing::debug!(%local, %remote, error = %e, "websocket handshake failed: connection dropped");
            }
            Err(_) => {
                tracing::debug!(%local, %remote, "websocket handshake not finished in time: connection dropped");
                self.stats
                    .closed_first_message
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn register_ws_conn<S>(
        self: &Arc<Self>,
        transport: Transport,
        ws: tokio_tungstenite::WebSocketStream<S>,
        local: SocketAddr,
        remote: SocketAddr,
        slot: ConnSlot,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let advertised_local = self
            .local_for(transport, remote)
            .map(|l| SocketAddr::new(local.ip(), l.port()))
            .unwrap_or(local);
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(
                id,
                Conn {
                    transport,
                    remote,
                    local: advertised_local,
                    tx: tx.clone(),
                    held_until: None,
                },
            );
        }
        let flow = Flow {
            transport,
            local: advertised_local,
            remote,
            conn: Some(id),
        };
        let (mut sink, mut stream) = ws.split();
        let t = Arc::clone(self);
        tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    let msg = tokio::select! {
                        b = rx.recv() => match b {
                            Some(b) if std::str::from_utf8(&b).is_ok() => {
                                match Utf8Bytes::try_from(b) {
                                    Ok(text) => Message::Text(text),
                                    Err(_) => continue,
                                }
                            }
                            Some(b) => Message::Binary(b),
                            None => break,
                        },
                        _ = ping.tick() => Message::Ping(Bytes::new()),
                    };
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
                let _ = sink.close().await;
            });
            let mut last = tokio::time::Instant::now();
            loop {
                let idle_until = last + t.cfg.tcp_idle_timeout;
                let next = match tokio::time::timeout_at(idle_until, stream.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(%remote, error = %e, "websocket read failed: closing");
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        let now = tokio::time::Instant::now();
                        if t.held(id, now) {
                            last = now;
                            continue;
                        }
                        tracing::debug!(%remote, %transport, "idle time-out");
                        t.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                last = tokio::time::Instant::now();
                let data = match next {
                    Message::Text(s) => Bytes::copy_from_slice(s.as_str().as_bytes()),
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                if data.iter().all(|&b| b == b'\r' || b == b'\n') {
                    let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                    continue;
                }
                if !t.admit_request(&data, remote.ip()) {
                    continue;
                }
                if t.inbound.send(Inbound { data, flow }).await.is_err() {
                    break;
                }
            }
            writer.abort();
            drop(slot);
            if let Ok(mut conns) = t.conns.lock() {
                conns.remove(&id);
            }
            tracing::debug!(conn = id, %transport, %remote, "connection closed");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sip_subprotocol_is_found_in_the_offered_list() {
        assert!(offers_sip(Some("sip")));
        assert!(offers_sip(Some("chat, SIP")));
        assert!(!offers_sip(Some("sips, chat")));
        assert!(!offers_sip(None));
    }
}
