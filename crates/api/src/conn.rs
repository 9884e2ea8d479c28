//! The REST API's connections on a public port: caps and time-outs, so that one source
//! cannot hold the descriptors every other client needs (nginx's `limit_conn`,
//! `client_header_timeout`, `client_body_timeout`, `keepalive_timeout`).
//!
//! One accept loop serves HTTP/1.1 with hyper, one task per connection:
//!
//! - Caps: connections open at once, overall and per source address
//!   ([`sip_core::limits::ConnectionLimits`]). Over a cap the connection is accepted and
//!   reset at once — the loop never stops accepting — counted, and logged once per source
//!   and minute.
//! - Time-outs, watched per connection ([`Watch`]):
//!   - header: a request's head must be complete within `header_read` of its first byte
//!     (and a new connection's first request within `header_read` of the accept);
//!   - body: a request body that delivers nothing for `body_read` fails the request and
//!     closes the connection;
//!   - idle: a kept-alive connection with no request for `idle` is closed.
//!
//!   A request being answered has no deadline of its own: a long-lived answer (the live
//!   event stream) is not cut.
//!
//! Each time-out closes the connection and is counted in [`HttpStats`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use hyper::body::{Frame, Incoming};
use sip_core::limits::{Cap, ConnectionLimits};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// The time-outs of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// A request's head must arrive within this time of its first byte.
    pub header_read: Duration,
    /// A request body may be silent this long between two reads.
    pub body_read: Duration,
    /// A kept-alive connection may wait this long for its next request.
    pub idle: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// Counters of connections closed by a time-out (read by the metrics).
#[derive(Debug, Default)]
pub struct HttpStats {
    pub header_timeouts: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
}

/// Why a connection's watch ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Header,
    Body,
    Idle,
}

#[derive(Debug)]
struct WatchState {
    /// Requests handed to the router and not yet answered in full.
    in_flight: u32,
    /// Requests answered on this connection.
    served: u64,
    /// Since when the connection waits for a request.
    idle_since: Instant,
    /// The first byte of the next request's head arrived then.
    head_since: Option<Instant>,
    /// A request body went silent too long.
    body_expired: bool,
}

/// The phase of one connection and its deadline (see the module documentation).
#[derive(Debug)]
pub struct Watch {
    timeouts: HttpTimeouts,
    state: Mutex<WatchState>,
    changed: Notify,
}

impl Watch {
    pub fn new(timeouts: HttpTimeouts, now: Instant) -> Watch {
        Watch {
            timeouts,
            state: Mutex::new(WatchState {
                in_flight: 0,
                served: 0,
                idle_since: now,
                head_since: None,
                body_expired: false,
            }),
            changed: Notify::new(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut WatchState) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Bytes arrived: the first of a request's head starts the header time-out.
    pub fn on_bytes(&self, now: Instant) {
        let started = self.with(|s| {
            let start = s.in_flight == 0 && s.head_since.is_none();
            if start {
                s.head_since = Some(now);
            }
            start
        });
        if started {
            self.changed.notify_one();
        }
    }

    /// A request's head is complete; the router has it.
    pub fn on_request(&self) {
        self.with(|s| {
            s.in_flight += 1;
            s.head_since = None;
        });
        self.changed.notify_one();
    }

    /// A request has been answered in full (or its answer dropped).
    pub fn on_response_done(&self, now: Instant) {
        self.with(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.served += 1;
            if s.in_flight == 0 {
                s.idle_since = now;
            }
        });
        self.changed.notify_one();
    }

    /// A request body was silent longer than allowed.
    pub fn on_body_expired(&self) {
        self.with(|s| s.body_expired = true);
        self.changed.notify_one();
    }

    /// The current deadline and what it is for; `None` while a request is being answered.
    pub fn deadline(&self) -> Option<(Instant, Expiry)> {
        let t = self.timeouts;
        self.with(|s| {
            if s.body_expired {
                return Some((s.idle_since, Expiry::Body));
            }
            if s.in_flight > 0 {
                return None;
            }
            Some(match s.head_since {
                Some(h) => (h + t.header_read, Expiry::Header),
                None if s.served == 0 => (s.idle_since + t.header_read, Expiry::Header),
                None => (s.idle_since + t.idle, Expiry::Idle),
            })
        })
    }

    /// Completes when the connection is past its deadline.
    pub async fn expired(&self) -> Expiry {
        loop {
            match self.deadline() {
                Some((_, Expiry::Body)) => return Expiry::Body,
                Some((at, why)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            if let Some((at, why2)) = self.deadline() {
                                if at <= Instant::now() && why2 == why {
                                    return why;
                                }
                            }
                        }
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// A socket that tells its [`Watch`] when bytes arrive.
struct WatchedIo {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.on_bytes(Instant::now());
        }
        r
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that fails when it is silent longer than the body time-out.
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    watch: Arc<Watch>,
}

/// The body time-out, as the error a handler's body extractor sees.
#[derive(Debug, thiserror::Error)]
#[error("the request body was silent for longer than the body time-out")]
pub struct BodyTimeout;

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                self.sleep = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.watch.on_body_expired();
                        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the [`Watch`] when it is done (sent in full, or dropped).
struct WatchedBody {
    inner: Body,
    watch: Arc<Watch>,
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.watch.on_response_done(Instant::now());
    }
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` within `limits` and `timeouts` until `shutdown`
/// completes; then stops accepting and lets the requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<ConnectionLimits>,
    timeouts: HttpTimeouts,
    stats: Arc<HttpStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let local = listener.local_addr().ok();
    let nodelay = nodelay_inherited(&listener);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(?local, error = %e, "REST accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let slot = match limits.admit(remote.ip(), Instant::now().into_std(), |_| false) {
            Ok(slot) => slot,
            Err(refused) => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                if refused.log {
                    let cap = match refused.cap {
                        Cap::Total => "api.max_connections",
                        Cap::PerSource => "api.max_connections_per_ip",
                    };
                    tracing::warn!(
                        source = %remote.ip(),
                        open_from_source = refused.from_source,
                        cap,
                        "REST connections refused: over the cap (logged once per source and minute)"
                    );
                }
                continue;
            }
        };
        let router = router.clone();
        let stats = Arc::clone(&stats);
        let stop = stop_rx.clone();
        if !nodelay {
            let _ = stream.set_nodelay(true);
        }
        tokio::spawn(async move {
            serve_connection(stream, remote, router, timeouts, stats, stop).await;
            drop(slot);
        });
    }
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Wait (bounded by the caller) until every connection has finished.
    stop_tx.closed().await;
    Ok(())
}

/// Sets `TCP_NODELAY` (responses go out whole, at once) on the listening socket, whose
/// accepted connections inherit it on Linux: one system call in all instead of one per
/// connection. False when it could not be set; each connection then sets it itself.
fn nodelay_inherited(listener: &TcpListener) -> bool {
    socket2::SockRef::from(listener).set_nodelay(true).is_ok()
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    timeouts: HttpTimeouts,
    stats: Arc<HttpStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let watch = Arc::new(Watch::new(timeouts, Instant::now()));
    let io = hyper_util::rt::TokioIo::new(WatchedIo {
        inner: stream,
        watch: Arc::clone(&watch),
    });
    let w = Arc::clone(&watch);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        w.on_request();
        let watch = Arc::clone(&w);
        let router = router.clone();
        async move {
            let req = req.map(|inner| {
                Body::new(TimedBody {
                    inner,
                    timeout: timeouts.body_read,
                    sleep: None,
                    watch: Arc::clone(&watch),
                })
            });
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, std::convert::Infallible>(resp.map(|inner| WatchedBody { inner, watch }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "REST connection ended");
                }
                return;
            }
            why = watch.expired() => {
                let counter = match why {
                    Expiry::Header => &stats.header_timeouts,
                    Expiry::Body => &stats.body_timeouts,
                    Expiry::Idle => &stats.idle_timeouts,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, ?why, "REST connection closed: time-out");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> HttpTimeouts {
        HttpTimeouts {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }

    /// The accepted connections inherit `TCP_NODELAY` from the listening socket, which is
    /// what lets `serve` leave it unset on each.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(nodelay_inherited(&listener));
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        // Without it on the listener, an accepted connection has it off.
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = plain.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_the_phase_of_the_connection() {
        let t0 = Instant::now();
        let w = Watch::new(timeouts(), t0);
        // A new connection: its first request's head within header_read of the accept.
        assert_eq!(
            w.deadline(),
            Some((t0 + Duration::from_secs(10), Expiry::Header))
        );
        w.on_request();
        assert_eq!(w.deadline(), None, "no deadline while answering");
        let t1 = t0 + Duration::from_secs(100);
        w.on_response_done(t1);
        assert_eq!(
            w.deadline(),
            Some((t1 + Duration::from_secs(60), Expiry::Idle))
        );
        // The next request's first byte starts the header time-out.
        let t2 = t1 + Duration::from_secs(5);
        w.on_bytes(t2);
        assert_eq!(
            w.deadline(),
            Some((t2 + Duration::from_secs(10), Expiry::Header))
        );
        // Later bytes of the same head do not move it.
        w.on_bytes(t2 + Duration::from_secs(3));
        assert_eq!(
            w.deadline(),
            Some((t2 + Duration::from_secs(10), Expiry::Header))
        );
        w.on_request();
        w.on_body_expired();
        assert_eq!(w.deadline().map(|d| d.1), Some(Expiry::Body));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_and_a_busy_one_does_not() {
        let w = Arc::new(Watch::new(timeouts(), Instant::now()));
        w.on_request();
        let busy = tokio::time::timeout(Duration::from_secs(3600), w.expired()).await;
        assert!(busy.is_err(), "a request being answered has no deadline");
        w.on_response_done(Instant::now());
        let at = Instant::now();
        assert_eq!(w.expired().await, Expiry::Idle);
        assert_eq!(at.elapsed(), Duration::from_secs(60));
    }
}
