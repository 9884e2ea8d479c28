//! Transports: UDP, TCP and TLS over IPv4 and IPv6, several listen addresses (RFC 3261 §18).
//!
//! - UDP: one socket per listen address; each datagram is one message.
//! - TCP: accepted and outgoing connections share one table; messages are framed by
//!   Content-Length ([`crate::message::frame`]); a message larger than the maximum size
//!   closes the connection (after a `513`-less drop: the stream cannot be resynchronised).
//!   `CRLF CRLF` keep-alive pings are answered with `CRLF` (RFC 5626 §4.4.1).
//! - TLS (RFC 3261 §26.2, RFC 5630): TCP with a rustls session on it ([`crate::tls`]), in
//!   the same connection table under the same guards. An accepted connection must finish
//!   its handshake within the first-message time-out; a failed handshake is logged with the
//!   peer and the reason and the connection dropped. Outgoing connections verify the
//!   server's certificate for the name set with [`Transports::set_tls_server_name`] (a
//!   trunk's host name), else for the peer's IP address. Connections are reused: a message
//!   to a peer goes on the open connection of the same transport to it, if there is one.
//!
//! Guards against one source taking what every client needs:
//!
//! - Accepted connections are held to a cap overall and per source address
//!   ([`crate::limits`]); over a cap the connection is accepted and reset at once, so the
//!   listener never stops accepting. Refusals are counted and logged once per source and
//!   minute. A known peer (a registered phone, a trunk: [`Transports::set_known_peers`])
//!   is not held to the per-source cap.
//! - An accepted connection that has not delivered one complete message within the
//!   first-message time-out is closed (keep-alive pings do not count).
//! - A connection idle (nothing received, keep-alives included) longer than the idle
//!   time-out is closed, unless it carries a registration: the registrar holds a phone's
//!   connection open for as long as its binding lives ([`Transports::hold_connection`]).
//! - Requests (UDP and TCP alike) are paced per source address by a
//!   [`crate::stateless::RefusalGuard`] of their own: past its budget a source is ignored
//!   for a while (the pike idea). Known peers are never ignored. Responses are not paced.
//!
//! Inbound data goes to one channel as [`Inbound`]; the transaction layer parses it.
//! This module does not parse SIP beyond stream framing.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::limits::{Cap, ConnSlot, ConnectionLimits, ConnectionLimitsConfig};
use crate::message::{frame, Frame};
use crate::stateless::{RefusalGuard, RefusalGuardConfig, Verdict};
use crate::tls::TlsContext;

mod ws;

/// A SIP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    /// SIP over WebSocket (RFC 7118), plain.
    Ws,
    /// SIP over secure WebSocket (RFC 7118): TLS, then WebSocket.
    Wss,
}

impl Transport {
    /// The token used in Via (`UDP`, `TCP`, `TLS`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Whether the transport is reliable (no retransmissions, RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        self.is_stream()
    }

    /// Whether messages travel on connections (TCP, TLS) rather than datagrams.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// Whether the transport is secure (RFC 3261 §26.2: a `sips:` URI asks for it).
    pub fn is_secure(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether it is a WebSocket transport (its peers connect to us; never the reverse).
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// The `transport` URI parameter's value (`udp`, `tcp`, `tls`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            "ws" => Some(Transport::Ws),
            "wss" => Some(Transport::Wss),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listen address: `udp:127.0.0.1:5060`, `tcp:[::1]:5060`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, a) = s.split_once(':').ok_or_else(|| {
            format!("\"{s}\": expected transport:address:port, e.g. udp:127.0.0.1:5060")
        })?;
        let transport = Transport::parse(t).ok_or_else(|| {
            format!("\"{s}\": unknown transport \"{t}\" (udp, tcp, tls, ws or wss)")
        })?;
        let addr = a
            .parse()
            .map_err(|_| format!("\"{s}\": \"{a}\" is not an address:port (IPv6 in brackets)"))?;
        Ok(ListenAddr { transport, addr })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// An identifier of one connection (TCP or TLS).
pub type ConnId = u64;

/// The path a message took (or will take): transport, both ends, and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The connection (TCP, TLS), when there is one.
    pub conn: Option<ConnId>,
}

/// Data that arrived.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub data: Bytes,
    pub flow: Flow,
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub listen: Vec<ListenAddr>,
    /// A connection that received nothing for this long is closed (unless it carries a
    /// registration).
    pub tcp_idle_timeout: Duration,
    /// An accepted connection must deliver one complete message within this time.
    pub tcp_first_message_timeout: Duration,
    pub tcp_connect_timeout: Duration,
    pub max_message_size: usize,
    /// Caps on accepted TCP connections, overall and per source.
    pub tcp_limits: ConnectionLimitsConfig,
    /// Requests one source may send per second (its own budget, separate from the refusal
    /// budget); `per_sec = 0` turns the guard off.
    pub request_guard: RefusalGuardConfig,
    /// The TLS configurations: needed by `tls:` listen addresses and by connections to TLS
    /// peers.
    pub tls: Option<Arc<TlsContext>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: Vec::new(),
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_first_message_timeout: Duration::from_secs(10),
            tcp_connect_timeout: Duration::from_secs(5),
            max_message_size: 65_535,
            tcp_limits: ConnectionLimitsConfig::default(),
            request_guard: RefusalGuardConfig {
                per_sec: 0,
                ..RefusalGuardConfig::default()
            },
            tls: None,
        }
    }
}

/// Counters of the transport's guards (read by the metrics).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Accepted connections closed for not delivering a complete message in time.
    pub closed_first_message: AtomicU64,
    /// Connections closed for being idle (without a registration).
    pub closed_idle: AtomicU64,
    /// Requests ignored because their source sent too many.
    pub requests_dropped: AtomicU64,
    /// Times a source went past its request budget and was ignored for a while.
    pub request_mutes: AtomicU64,
}

/// Tells whether an address is a known peer (a registered phone, a trunk).
pub type KnownPeers = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Transport errors.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: ListenAddr,
        source: std::io::Error,
    },
    #[error("no {transport} listener for {family} destination {dest}")]
    NoListener {
        transport: Transport,
        family: &'static str,
        dest: SocketAddr,
    },
    #[error("connection to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connection to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("send to {0} failed: {1}")]
    Send(SocketAddr, std::io::Error),
    #[error("connection {0} is closed")]
    Closed(ConnId),
    #[error("{0}: a TLS transport needs [tls] cert and key")]
    NoTlsConfig(ListenAddr),
    #[error("tls connection to {remote} (as {name}) failed: {source}")]
    Tls {
        remote: SocketAddr,
        name: String,
        source: std::io::Error,
    },
}

struct Conn {
    transport: Transport,
    remote: SocketAddr,
    local: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    /// Kept open past the idle time-out until then (it carries a registration).
    held_until: Option<tokio::time::Instant>,
}

/// The bound transports. Cheap to share (`Arc`).
pub struct Transports {
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    /// TCP and TLS listen addresses.
    stream_listeners: Vec<(Transport, SocketAddr)>,
    conns: Mutex<HashMap<ConnId, Conn>>,
    /// The name a TLS peer's certificate is checked against, per address (a trunk's host).
    tls_names: RwLock<HashMap<SocketAddr, String>>,
    next_conn: AtomicU64,
    inbound: mpsc::Sender<Inbound>,
    cfg: TransportConfig,
    limits: Arc<ConnectionLimits>,
    request_guard: Mutex<RefusalGuard>,
    known: RwLock<Option<KnownPeers>>,
    stats: Arc<TransportStats>,
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transports")
            .field("udp", &self.udp.iter().map(|(a, _)| a).collect::<Vec<_>>())
            .field("streams", &self.stream_listeners)
            .finish()
    }
}

impl Transports {
    /// Binds every listen address and starts the receive tasks.
    pub async fn bind(
        cfg: TransportConfig,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Arc<Transports>, TransportError> {
        let mut udp = Vec::new();
        let mut listeners = Vec::new();
        for la in &cfg.listen {
            match la.transport {
                Transport::Udp => {
                    let sock = bind_udp(la.addr)
                        .map_err(|source| TransportError::Bind { addr: *la, source })?;
                    let local = sock
                        .local_addr()
                        .map_err(|source| TransportError::Bind { addr: *la, source })?;
                    udp.push((local, Arc::new(sock)));
                }
                Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
                    if la.transport.is_secure() && !cfg.tls.as_ref().is_some_and(|t| t.has_server())
                    {
                        return Err(TransportError::NoTlsConfig(*la));
                    }
                    let l = bind_tcp(la.addr)
                        .map_err(|source| TransportError::Bind { addr: *la, source })?;
                    let local = l
                        .local_addr()
                        .map_err(|source| TransportError::Bind { addr: *la, source })?;
                    listeners.push((la.transport, local, l));
                }
            }
        }
        let t = Arc::new(Transports {
            udp: udp.clone(),
            stream_listeners: listeners.iter().map(|(t, a, _)| (*t, *a)).collect(),
            conns: Mutex::new(HashMap::new()),
            tls_names: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            inbound,
            limits: ConnectionLimits::new(cfg.tcp_limits),
            request_guard: Mutex::new(RefusalGuard::new(cfg.request_guard.clone())),
            known: RwLock::new(None),
            stats: Arc::new(TransportStats::default()),
            cfg,
        });
        for (local, sock) in udp {
            let t2 = Arc::clone(&t);
            tokio::spawn(async move { t2.udp_loop(local, sock).await });
        }
        for (transport, local, l) in listeners {
            let t2 = Arc::clone(&t);
            tokio::spawn(async move { t2.accept_loop(transport, local, l).await });
        }
        Ok(t)
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.udp
            .iter()
            .map(|(a, _)| ListenAddr {
                transport: Transport::Udp,
                addr: *a,
            })
            .chain(self.stream_listeners.iter().map(|(t, a)| ListenAddr {
                transport: *t,
                addr: *a,
            }))
            .collect()
    }

    /// The listen address used to send to `dest` over `transport`.
    pub fn local_for(&self, transport: Transport, dest: SocketAddr) -> Option<SocketAddr> {
        let pick = |addrs: &mut dyn Iterator<Item = SocketAddr>| {
            let all: Vec<SocketAddr> = addrs.collect();
            all.iter()
                .find(|a| {
                    a.is_ipv4() == dest.is_ipv4() && a.ip().is_loopback() == dest.ip().is_loopback()
                })
                .or_else(|| all.iter().find(|a| a.is_ipv4() == dest.is_ipv4()))
                .copied()
        };
        match transport {
            Transport::Udp => pick(&mut self.udp.iter().map(|(a, _)| *a)),
            t => pick(
                &mut self
                    .stream_listeners
                    .iter()
                    .filter(|(lt, _)| *lt == t)
                    .map(|(_, a)| *a),
            ),
        }
    }

    /// The name to check the certificate of the TLS peer at `addr` against (a trunk's
    /// host name); without one, its IP address is checked.
    pub fn set_tls_server_name(&self, addr: SocketAddr, name: &str) {
        if let Ok(mut n) = self.tls_names.write() {
            n.insert(addr, name.to_owned());
        }
    }

    /// The TLS configurations, when TLS is set up.
    pub fn tls(&self) -> Option<&Arc<TlsContext>> {
        self.cfg.tls.as_ref()
    }

    /// Installs the test for known peers (registered phones, trunks): they are exempt from
    /// the per-source connection cap and from the request budget.
    pub fn set_known_peers(&self, known: KnownPeers) {
        if let Ok(mut k) = self.known.write() {
            *k = Some(known);
        }
    }

    /// Whether `ip` is a known peer: named by the request budget's exempt prefixes, or by
    /// the installed test.
    pub fn is_known_peer(&self, ip: IpAddr) -> bool {
        self.cfg.request_guard.exempt.iter().any(|p| p.contains(ip))
            || self
                .known
                .read()
                .ok()
                .and_then(|k| k.as_ref().map(|f| f(ip)))
                .unwrap_or(false)
    }

    /// Keeps a connection open past the idle time-out for `dur` from now (a registration
    /// lives on it); `Duration::ZERO` ends the hold.
    pub fn hold_connection(&self, id: ConnId, dur: Duration) {
        if let Ok(mut conns) = self.conns.lock() {
            if let Some(c) = conns.get_mut(&id) {
                c.held_until = (!dur.is_zero()).then(|| tokio::time::Instant::now() + dur);
            }
        }
    }

    /// The caps on accepted connections, with their counters.
    pub fn connection_limits(&self) -> Arc<ConnectionLimits> {
        Arc::clone(&self.limits)
    }

    /// The counters of the time-outs and the request budget.
    pub fn stats(&self) -> Arc<TransportStats> {
        Arc::clone(&self.stats)
    }

    fn held(&self, id: ConnId, now: tokio::time::Instant) -> bool {
        self.conns
            .lock()
            .ok()
            .and_then(|c| c.get(&id).and_then(|c| c.held_until))
            .is_some_and(|until| until > now)
    }

    /// Whether a message from `source` goes on: responses always; a request within its
    /// source's budget (see the module documentation).
    fn admit_request(&self, data: &[u8], source: IpAddr) -> bool {
        if self.cfg.request_guard.per_sec == 0 || data.starts_with(b"SIP/") {
            return true;
        }
        let now = tokio::time::Instant::now().into_std();
        let verdict = match self.request_guard.lock() {
            Ok(mut g) => g.check_known(source, now, |ip| self.is_known_peer(ip)),
            Err(_) => return true,
        };
        match verdict {
            Verdict::Send => true,
            Verdict::Muted => {
                tracing::warn!(
                    %source,
                    per_sec = self.cfg.request_guard.per_sec,
                    mute_secs = self.cfg.request_guard.mute.as_secs(),
                    "too many requests from one source: it is ignored for a while"
                );
                self.stats.request_mutes.fetch_add(1, Ordering::Relaxed);
                self.stats.requests_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Verdict::Silent => {
                self.stats.requests_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether a TCP connection is still open.
    pub fn conn_alive(&self, id: ConnId) -> bool {
        self.conns
            .lock()
            .map(|c| c.contains_key(&id))
            .unwrap_or(false)
    }

    /// Sends `data` along `flow`: on its connection if it has one and it is still open,
    /// else (TCP) on any open connection to the remote or a new one.
    /// Returns the flow actually used.
    pub async fn send(self: &Arc<Self>, flow: &Flow, data: Bytes) -> Result<Flow, TransportError> {
        match flow.transport {
            Transport::Udp => {
                let sock = self
                    .udp
                    .iter()
                    .find(|(a, _)| *a == flow.local)
                    .or_else(|| {
                        let l = self.local_for(Transport::Udp, flow.remote)?;
                        self.udp.iter().find(|(a, _)| *a == l)
                    })
                    .ok_or(TransportError::NoListener {
                        transport: Transport::Udp,
                        family: if flow.remote.is_ipv4() {
                            "IPv4"
                        } else {
                            "IPv6"
                        },
                        dest: flow.remote,
                    })?;
                sock.1
                    .send_to(&data, flow.remote)
                    .await
                    .map_err(|e| TransportError::Send(flow.remote, e))?;
                Ok(Flow {
                    transport: Transport::Udp,
                    local: sock.0,
                    remote: flow.remote,
                    conn: None,
                })
            }
            transport => {
                let existing = {
                    let conns = self.conns.lock().map_err(|_| TransportError::Closed(0))?;
                    flow.conn
                        .and_then(|id| conns.get(&id).map(|c| (id, c.tx.clone(), c.local)))
                        .or_else(|| {
                            conns
                                .iter()
                                .find(|(_, c)| c.remote == flow.remote && c.transport == transport)
                                .map(|(id, c)| (*id, c.tx.clone(), c.local))
                        })
                };
                let (id, tx, local) = match existing {
                    Some(e) => e,
                    None => self.connect(transport, flow.remote).await?,
                };
                tx.send(data)
                    .await
                    .map_err(|_| TransportError::Closed(id))?;
                Ok(Flow {
                    transport,
                    local,
                    remote: flow.remote,
                    conn: Some(id),
                })
            }
        }
    }

    /// An open connection of `transport` (TCP, TLS) to `remote`: an existing one, or a
    /// new one.
    pub async fn connect_to(
        self: &Arc<Self>,
        transport: Transport,
        remote: SocketAddr,
    ) -> Result<ConnId, TransportError> {
        let existing = self.conns.lock().ok().and_then(|conns| {
            conns
                .iter()
                .find(|(_, c)| c.remote == remote && c.transport == transport)
                .map(|(id, _)| *id)
        });
        match existing {
            Some(id) => Ok(id),
            None => self.connect(transport, remote).await.map(|(id, _, _)| id),
        }
    }

    /// Sends without waiting (used by the transaction layer, which must never block):
    /// a full UDP socket buffer drops the datagram (retransmissions cover it); a TCP
    /// destination without an open connection is connected in the background.
    pub fn try_send(self: &Arc<Self>, flow: &Flow, data: Bytes) -> Result<(), TransportError> {
        match flow.transport {
            Transport::Udp => {
                let sock = self
                    .udp
                    .iter()
                    .find(|(a, _)| *a == flow.local)
                    .or_else(|| {
                        let l = self.local_for(Transport::Udp, flow.remote)?;
                        self.udp.iter().find(|(a, _)| *a == l)
                    })
                    .ok_or(TransportError::NoListener {
                        transport: Transport::Udp,
                        family: if flow.remote.is_ipv4() {
                            "IPv4"
                        } else {
                            "IPv6"
                        },
                        dest: flow.remote,
                    })?;
                sock.1
                    .try_send_to(&data, flow.remote)
                    .map(|_| ())
                    .map_err(|e| TransportError::Send(flow.remote, e))
            }
            transport => {
                let tx = self.conns.lock().ok().and_then(|conns| {
                    flow.conn
                        .and_then(|id| conns.get(&id).map(|c| c.tx.clone()))
                        .or_else(|| {
                            conns
                                .values()
                                .find(|c| c.remote == flow.remote && c.transport == transport)
                                .map(|c| c.tx.clone())
                        })
                });
                match tx {
                    Some(tx) => tx
                        .try_send(data)
                        .map_err(|_| TransportError::Closed(flow.conn.unwrap_or(0))),
                    None => {
                        let t = Arc::clone(self);
                        let flow = *flow;
                        tokio::spawn(async move {
                            if let Err(e) = t.send(&flow, data).await {
                                tracing::debug!(remote = %flow.remote, %transport, error = %e, "send failed");
                            }
                        });
                        Ok(())
                    }
                }
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
        transport: Transport,
        remote: SocketAddr,
    ) -> Result<(ConnId, mpsc::Sender<Bytes>, SocketAddr), TransportError> {
        let stream = tokio::time::timeout(self.cfg.tcp_connect_timeout, TcpStream::connect(remote))
            .await
            .map_err(|_| TransportError::ConnectTimeout(remote))?
            .map_err(|e| TransportError::Connect(remote, e))?;
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
        if transport.is_websocket() {
            return Err(TransportError::Connect(
                remote,
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "WebSocket peers connect to us; their connection is closed",
                ),
            ));
        }
        if transport != Transport::Tls {
            return Ok(self.register_conn(transport, stream, local, remote, None));
        }
        let name = self
            .tls_names
            .read()
            .ok()
            .and_then(|n| n.get(&remote).cloned())
            .unwrap_or_else(|| remote.ip().to_string());
        let tls_error = |source: std::io::Error| TransportError::Tls {
            remote,
            name: name.clone(),
            source,
        };
        let ctx = self.cfg.tls.as_ref().ok_or_else(|| {
            tls_error(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no [tls] configuration",
            ))
        })?;
        let server_name = crate::tls::server_name(&name).ok_or_else(|| {
            tls_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a valid server name",
            ))
        })?;
        let handshake = ctx.connector().connect(server_name, stream);
        let tls = match tokio::time::timeout(self.cfg.tcp_connect_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(
                    %remote,
                    server_name = %name,
                    error = %e,
                    "tls connection refused: the handshake with the peer failed (is its certificate valid for this name and trusted by tls.ca or the system?)"
                );
                return Err(tls_error(e));
            }
            Err(_) => {
                tracing::warn!(%remote, server_name = %name, "tls handshake timed out");
                return Err(TransportError::ConnectTimeout(remote));
            }
        };
        tracing::debug!(%remote, server_name = %name, "tls connection established");
        Ok(self.register_conn(transport, tls, local, remote, None))
    }

    /// Starts the tasks of a connection; `slot` is an accepted connection's place under the
    /// caps (none for the connections we open).
    fn register_conn<S>(
        self: &Arc<Self>,
        transport: Transport,
        stream: S,
        local: SocketAddr,
        remote: SocketAddr,
        slot: Option<ConnSlot>,
    ) -> (ConnId, mpsc::Sender<Bytes>, SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        // Messages we send say our listening port, so use it as the flow's local address.
        let advertised_local = self
            .local_for(transport, remote)
            .map(|l| SocketAddr::new(local.ip(), l.port()))
            .unwrap_or(local);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
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
        let (rd, wr) = tokio::io::split(stream);
        let flow = Flow {
            transport,
            local: advertised_local,
            remote,
            conn: Some(id),
        };
        let t = Arc::clone(self);
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let writer = tokio::spawn(write_loop(wr, rx));
            let accepted = slot.is_some();
            t.read_loop(rd, flow, tx2, accepted).await;
            writer.abort();
            drop(slot);
            if let Ok(mut conns) = t.conns.lock() {
                conns.remove(&id);
            }
            tracing::debug!(conn = id, %transport, %remote, "connection closed");
        });
        (id, tx, advertised_local)
    }

    async fn udp_loop(self: Arc<Self>, local: SocketAddr, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, remote)) => {
                    if n == 0 || buf[..n].iter().all(|&b| b == b'\r' || b == b'\n') {
                        continue; // keep-alive
                    }
                    if !self.admit_request(&buf[..n], remote.ip()) {
                        continue;
                    }
                    let inbound = Inbound {
                        data: Bytes::copy_from_slice(&buf[..n]),
                        flow: Flow {
                            transport: Transport::Udp,
                            local,
                            remote,
                            conn: None,
                        },
                    };
                    if self.inbound.send(inbound).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // ICMP port unreachable and the like surface here on Linux; keep going.
                    tracing::debug!(%local, error = %e, "udp receive error");
                }
            }
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        transport: Transport,
        local: SocketAddr,
        listener: TcpListener,
    ) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let now = tokio::time::Instant::now().into_std();
                    match self
                        .limits
                        .admit(remote.ip(), now, |ip| self.is_known_peer(ip))
                    {
                        Ok(slot) => {
                            let _ = stream.set_nodelay(true);
                            tracing::debug!(%local, %remote, %transport, "connection accepted");
                            let conn_local = stream.local_addr().unwrap_or(local);
                            if transport.is_secure() {
                                let t = Arc::clone(&self);
                                tokio::spawn(async move {
                                    t.accept_tls(transport, stream, conn_local, remote, slot)
                                        .await
                                });
                            } else if transport == Transport::Ws {
                                let t = Arc::clone(&self);
                                let deadline = tokio::time::Instant::now()
                                    + self.cfg.tcp_first_message_timeout;
                                tokio::spawn(async move {
                                    t.accept_ws(
                                        transport, stream, conn_local, remote, slot, deadline,
                                    )
                                    .await
                                });
                            } else {
                                self.register_conn(
                                    transport,
                                    stream,
                                    conn_local,
                                    remote,
                                    Some(slot),
                                );
                            }
                        }
                        Err(refused) => {
                            // Closed at once, with a reset: nothing is kept for it.
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            drop(stream);
                            if refused.log {
                                let cap = match refused.cap {
                                    Cap::Total => "sip.max_connections",
                                    Cap::PerSource => "sip.max_connections_per_ip",
                                };
                                tracing::warn!(
                                    %local,
                                    %transport,
                                    source = %remote.ip(),
                                    open_from_source = refused.from_source,
                                    cap,
                                    "SIP connections refused: over the cap (logged once per source and minute)"
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The server side of a TLS handshake on an accepted connection, held to the
    /// first-message time-out; the connection keeps its place under the caps throughout.
    async fn accept_tls(
        self: Arc<Self>,
        transport: Transport,
        stream: TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
        slot: ConnSlot,
    ) {
        let Some(acceptor) = self.cfg.tls.as_ref().and_then(|t| t.acceptor()) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + self.cfg.tcp_first_message_timeout;
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) if transport == Transport::Wss => {
                self.accept_ws(transport, tls, local, remote, slot, deadline)
                    .await;
            }
            Ok(Ok(tls)) => {
                self.register_conn(Transport::Tls, tls, local, remote, Some(slot));
            }
            Ok(Err(e)) => {
                tracing::warn!(%local, %remote, error = %e, "tls handshake failed: connection dropped");
            }
            Err(_) => {
                tracing::debug!(%local, %remote, "tls handshake not finished in time: connection dropped");
                self.stats
                    .closed_first_message
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut rd: R,
        flow: Flow,
        tx: mpsc::Sender<Bytes>,
        accepted: bool,
    ) {
        let mut buf = BytesMut::with_capacity(8192);
        let max = self.cfg.max_message_size;
        let opened = tokio::time::Instant::now();
        let mut last_read = opened;
        // Only accepted connections owe us a first message: we opened the others.
        let mut got_message = !accepted;
        loop {
            // Drain every complete frame.
            loop {
                match frame(&buf, max) {
                    Ok(Frame::Message { skip, len }) => {
                        got_message = true;
                        let _ = buf.split_to(skip);
                        // A copy of exactly this message: a slice of the read buffer would
                        // keep all of it alive for as long as a transaction holds the message.
                        let data = Bytes::copy_from_slice(&buf[..len]);
                        let _ = buf.split_to(len);
                        if !self.admit_request(&data, flow.remote.ip()) {
                            continue;
                        }
                        if self.inbound.send(Inbound { data, flow }).await.is_err() {
                            return;
                        }
                    }
                    Ok(Frame::KeepAlive { len }) => {
                        let _ = buf.split_to(len);
                        let _ = tx.send(Bytes::from_static(b"\r\n")).await;
                    }
                    Ok(Frame::Padding { len }) => {
                        let _ = buf.split_to(len);
                    }
                    Ok(Frame::Incomplete) => break,
                    Err(e) => {
                        tracing::info!(remote = %flow.remote, transport = %flow.transport, error = %e, "closing the connection");
                        return;
                    }
                }
            }
            buf.reserve(4096);
            let deadline = if got_message {
                last_read + self.cfg.tcp_idle_timeout
            } else {
                opened + self.cfg.tcp_first_message_timeout
            };
            match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => last_read = tokio::time::Instant::now(),
                Err(_) if !got_message => {
                    tracing::debug!(remote = %flow.remote, transport = %flow.transport, "no complete message in time: closing the connection");
                    self.stats
                        .closed_first_message
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    let now = tokio::time::Instant::now();
                    if flow.conn.is_some_and(|id| self.held(id, now)) {
                        // A registration lives on it: it stays open.
                        last_read = now;
                        continue;
                    }
                    tracing::debug!(remote = %flow.remote, transport = %flow.transport, "idle time-out");
                    self.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        // TLS buffers what it writes: flush so that each message leaves at once.
        if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_parsing() {
        let a: ListenAddr = "udp:127.0.0.1:5060".parse().unwrap();
        assert_eq!(a.transport, Transport::Udp);
        let a: ListenAddr = "tcp:[::1]:5070".parse().unwrap();
        assert_eq!(a.addr, "[::1]:5070".parse().unwrap());
        assert!("sctp:127.0.0.1:5060".parse::<ListenAddr>().is_err());
        assert!("udp:127.0.0.1".parse::<ListenAddr>().is_err());
        assert_eq!(a.to_string(), "tcp:[::1]:5070");
    }

    #[tokio::test]
    async fn udp_and_tcp_roundtrip_on_loopback() {
        let (tx, mut rx) = mpsc::channel(16);
        let cfg = TransportConfig {
            listen: vec![
                "udp:127.0.0.1:0".parse().unwrap(),
                "tcp:127.0.0.1:0".parse().unwrap(),
            ],
            ..Default::default()
        };
        let t = Transports::bind(cfg, tx).await.unwrap();
        let addrs = t.local_addrs();
        let udp = addrs
            .iter()
            .find(|a| a.transport == Transport::Udp)
            .unwrap()
            .addr;
        let tcp = addrs
            .iter()
            .find(|a| a.transport == Transport::Tcp)
            .unwrap()
            .addr;

        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        peer.send_to(b"OPTIONS sip:x SIP/2.0\r\n\r\n", udp)
            .await
            .unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got.flow.remote, peer.local_addr().unwrap());
        t.send(&got.flow, Bytes::from_static(b"pong"))
            .await
            .unwrap();
        let mut b = [0u8; 16];
        let (n, from) = peer.recv_from(&mut b).await.unwrap();
        assert_eq!((&b[..n], from), (&b"pong"[..], udp));

        // TCP: two messages in one write plus a keep-alive, split across reads.
        let mut s = TcpStream::connect(tcp).await.unwrap();
        let m = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 2\r\n\r\nab";
        let mut all = m.to_vec();
        all.extend_from_slice(b"\r\n\r\n");
        all.extend_from_slice(m);
        s.write_all(&all[..10]).await.unwrap();
        s.write_all(&all[10..]).await.unwrap();
        let a = rx.recv().await.unwrap();
        let b2 = rx.recv().await.unwrap();
        assert_eq!(&a.data[..], &m[..]);
        assert_eq!(&b2.data[..], &m[..]);
        assert_eq!(a.flow.conn, b2.flow.conn);
        let mut pong = [0u8; 2];
        s.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"\r\n");
        // Reply on the same connection.
        t.send(&a.flow, Bytes::from_static(b"resp")).await.unwrap();
        let mut r = [0u8; 4];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(&r, b"resp");
    }

    #[tokio::test]
    async fn oversized_tcp_message_closes_connection() {
        let (tx, _rx) = mpsc::channel(16);
        let cfg = TransportConfig {
            listen: vec!["tcp:127.0.0.1:0".parse().unwrap()],
            max_message_size: 100,
            ..Default::default()
        };
        let t = Transports::bind(cfg, tx).await.unwrap();
        let tcp = t.local_addrs()[0].addr;
        let mut s = TcpStream::connect(tcp).await.unwrap();
        s.write_all(&[b'A'; 300]).await.unwrap();
        let mut b = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "connection must be closed");
    }

    async fn tcp_transport(
        cfg: TransportConfig,
    ) -> (Arc<Transports>, SocketAddr, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(64);
        let cfg = TransportConfig {
            listen: vec!["tcp:127.0.0.1:0".parse().unwrap()],
            ..cfg
        };
        let t = Transports::bind(cfg, tx).await.unwrap();
        let addr = t.local_addrs()[0].addr;
        (t, addr, rx)
    }

    /// Whether the server closed `s` (EOF or reset) rather than leaving it open.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 64];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue, // keep-alive answers
            }
        }
    }

    const OPTIONS: &[u8] = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_message_is_closed_after_the_first_message_time_out() {
        let (t, addr, mut rx) = tcp_transport(TransportConfig {
            tcp_first_message_timeout: Duration::from_secs(10),
            tcp_idle_timeout: Duration::from_secs(300),
            ..Default::default()
        })
        .await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        // Keep-alives do not count as a message.
        half.write_all(b"\r\n\r\n").await.unwrap();
        half.write_all(b"REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/TCP")
            .await
            .unwrap();
        let mut whole = TcpStream::connect(addr).await.unwrap();
        whole.write_all(OPTIONS).await.unwrap();
        assert!(rx.recv().await.is_some());
        let early = tokio::time::timeout(Duration::from_secs(9), closed(&mut half)).await;
        assert!(early.is_err(), "open before the time-out");
        let late = tokio::time::timeout(Duration::from_secs(2), closed(&mut half)).await;
        assert_eq!(late.ok(), Some(true), "closed at the time-out");
        assert_eq!(t.stats().closed_first_message.load(Ordering::Relaxed), 1);
        // The connection that delivered a message is still open.
        let mut b = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(60), whole.read(&mut b)).await;
        assert!(r.is_err(), "still open: {r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_unless_it_carries_a_registration() {
        let (t, addr, mut rx) = tcp_transport(TransportConfig {
            tcp_idle_timeout: Duration::from_secs(30),
            ..Default::default()
        })
        .await;
        let mut phone = TcpStream::connect(addr).await.unwrap();
        phone.write_all(OPTIONS).await.unwrap();
        let got = rx.recv().await.unwrap();
        t.hold_connection(got.flow.conn.unwrap(), Duration::from_secs(3600));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(OPTIONS).await.unwrap();
        assert!(rx.recv().await.is_some());
        assert!(closed(&mut idle).await);
        assert_eq!(t.stats().closed_idle.load(Ordering::Relaxed), 1);
        let mut b = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(600), phone.read(&mut b)).await;
        assert!(r.is_err(), "the registered phone's connection stays: {r:?}");
        // Once the hold ends, the idle time-out applies again.
        t.hold_connection(got.flow.conn.unwrap(), Duration::ZERO);
        assert!(closed(&mut phone).await);
    }

    #[tokio::test]
    async fn connections_over_the_per_source_cap_are_closed_at_once_and_known_peers_pass() {
        let (t, addr, _rx) = tcp_transport(TransportConfig {
            tcp_limits: ConnectionLimitsConfig {
                max_total: 10,
                max_per_source: 2,
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let limits = t.connection_limits();
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), closed(&mut over)).await;
        assert_eq!(r.ok(), Some(true), "over the cap: closed at once");
        assert_eq!(limits.stats.refused_per_source.load(Ordering::Relaxed), 1);
        // The listener still accepts: a known peer gets in past the per-source cap.
        t.set_known_peers(Arc::new(|ip: IpAddr| ip.is_loopback()));
        let mut known = TcpStream::connect(addr).await.unwrap();
        known.write_all(OPTIONS).await.unwrap();
        let mut b = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_millis(300), known.read(&mut b)).await;
        assert!(r.is_err(), "a known peer's connection stays open: {r:?}");
        assert_eq!(limits.stats.accepted.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn requests_past_the_source_budget_are_ignored_responses_are_not() {
        let (tx, mut rx) = mpsc::channel(64);
        let cfg = TransportConfig {
            listen: vec!["udp:127.0.0.1:0".parse().unwrap()],
            request_guard: RefusalGuardConfig {
                per_sec: 3,
                mute: Duration::from_secs(60),
                ..Default::default()
            },
            ..Default::default()
        };
        let t = Transports::bind(cfg, tx).await.unwrap();
        let addr = t.local_addrs()[0].addr;
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..10 {
            peer.send_to(OPTIONS, addr).await.unwrap();
        }
        peer.send_to(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", addr)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            got.push(i.data);
        }
        assert_eq!(got.len(), 4, "three requests and the response");
        assert!(got[3].starts_with(b"SIP/2.0 200"));
        let st = t.stats();
        assert_eq!(st.requests_dropped.load(Ordering::Relaxed), 7);
        assert_eq!(st.request_mutes.load(Ordering::Relaxed), 1);
    }

    // ----- TLS ------------------------------------------------------------------------------

    /// A CA and a leaf it signed for `names`, written as PEM files in a fresh directory.
    struct TestPki {
        dir: std::path::PathBuf,
        ca: std::path::PathBuf,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    }

    fn test_pki(tag: &str, names: &[&str]) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!(
            "sip-core-tls-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, leaf.pem()).unwrap();
        std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
        pki
    }

    impl Drop for TestPki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn tls_server_ctx(pki: &TestPki) -> Arc<TlsContext> {
        TlsContext::load(crate::tls::TlsSettings {
            cert: Some(pki.cert.clone()),
            key: Some(pki.key.clone()),
            ca: Some(pki.ca.clone()),
        })
        .unwrap()
    }

    async fn tls_transport(
        listen: &str,
        tls: Arc<TlsContext>,
        cfg: TransportConfig,
    ) -> (Arc<Transports>, SocketAddr, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(64);
        let cfg = TransportConfig {
            listen: vec![listen.parse().unwrap()],
            tls: Some(tls),
            ..cfg
        };
        let t = Transports::bind(cfg, tx).await.unwrap();
        let addr = t.local_addrs()[0].addr;
        (t, addr, rx)
    }

    fn tls_flow(local: SocketAddr, remote: SocketAddr) -> Flow {
        Flow {
            transport: Transport::Tls,
            local,
            remote,
            conn: None,
        }
    }

    #[test]
    fn tls_is_a_secure_reliable_stream_transport() {
        let a: ListenAddr = "tls:127.0.0.1:5061".parse().unwrap();
        assert_eq!(a.transport, Transport::Tls);
        assert_eq!(a.to_string(), "tls:127.0.0.1:5061");
        assert_eq!(Transport::Tls.via_token(), "TLS");
        assert!(Transport::Tls.is_reliable() && Transport::Tls.is_secure());
        assert!(!Transport::Tcp.is_secure() && !Transport::Udp.is_stream());
    }

    #[tokio::test]
    async fn a_tls_listen_address_without_a_certificate_is_refused() {
        let (tx, _rx) = mpsc::channel(4);
        let cfg = TransportConfig {
            listen: vec!["tls:127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        };
        let e = Transports::bind(cfg, tx).await.unwrap_err();
        assert!(matches!(e, TransportError::NoTlsConfig(_)), "{e}");
    }

    #[tokio::test]
    async fn tls_messages_go_both_ways_and_the_connection_is_reused() {
        let pki = test_pki("roundtrip", &["sip.carrier.test", "127.0.0.1"]);
        let (server, server_addr, mut server_rx) =
            tls_transport("tls:127.0.0.1:0", tls_server_ctx(&pki), Default::default()).await;
        let (client, client_addr, mut client_rx) =
            tls_transport("tls:127.0.0.2:0", tls_server_ctx(&pki), Default::default()).await;
        client.set_tls_server_name(server_addr, "sip.carrier.test");

        let used = client
            .send(
                &tls_flow(client_addr, server_addr),
                Bytes::from_static(OPTIONS),
            )
            .await
            .unwrap();
        assert_eq!(used.transport, Transport::Tls);
        assert_eq!(
            used.local.port(),
            client_addr.port(),
            "our listening port is advertised"
        );
        let got = server_rx.recv().await.unwrap();
        assert_eq!(&got.data[..], OPTIONS);
        assert_eq!(got.flow.transport, Transport::Tls);
        // The answer goes back on the connection it came in on.
        server
            .send(
                &got.flow,
                Bytes::from_static(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
            )
            .await
            .unwrap();
        let back = client_rx.recv().await.unwrap();
        assert!(back.data.starts_with(b"SIP/2.0 200"));
        assert_eq!(back.flow.conn, used.conn);
        // A second request reuses the open connection.
        let again = client
            .send(
                &tls_flow(client_addr, server_addr),
                Bytes::from_static(OPTIONS),
            )
            .await
            .unwrap();
        assert_eq!(again.conn, used.conn);
        assert_eq!(server_rx.recv().await.unwrap().flow.conn, got.flow.conn);
        assert_eq!(
            server
                .connection_limits()
                .stats
                .accepted
                .load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn an_untrusted_or_misnamed_certificate_is_refused_and_both_sides_go_on() {
        let pki = test_pki("server", &["sip.carrier.test", "127.0.0.1"]);
        let other = test_pki("other", &["sip.carrier.test"]);
        let (_server, server_addr, mut server_rx) =
            tls_transport("tls:127.0.0.1:0", tls_server_ctx(&pki), Default::default()).await;
        // Trusting another CA: refused.
        let (client, client_addr, _rx) = tls_transport(
            "tls:127.0.0.2:0",
            tls_server_ctx(&other),
            Default::default(),
        )
        .await;
        let e = client
            .send(
                &tls_flow(client_addr, server_addr),
                Bytes::from_static(OPTIONS),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, TransportError::Tls { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
        // The right CA, the wrong name: refused.
        let (named, named_addr, _rx2) = tls_transport(
            "tls:127.0.0.3:0",
            tls_client_and_server(&pki, &other),
            Default::default(),
        )
        .await;
        named.set_tls_server_name(server_addr, "elsewhere.test");
        let e = named
            .send(
                &tls_flow(named_addr, server_addr),
                Bytes::from_static(OPTIONS),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("elsewhere.test"), "{e}");
        // The right name: accepted, and the server still serves.
        named.set_tls_server_name(server_addr, "sip.carrier.test");
        named
            .send(
                &tls_flow(named_addr, server_addr),
                Bytes::from_static(OPTIONS),
            )
            .await
            .unwrap();
        assert_eq!(&server_rx.recv().await.unwrap().data[..], OPTIONS);
    }

    /// Trusts `ca_of`'s CA, presents `identity`'s certificate.
    fn tls_client_and_server(ca_of: &TestPki, identity: &TestPki) -> Arc<TlsContext> {
        TlsContext::load(crate::tls::TlsSettings {
            cert: Some(identity.cert.clone()),
            key: Some(identity.key.clone()),
            ca: Some(ca_of.ca.clone()),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn plain_text_to_a_tls_port_is_dropped() {
        let pki = test_pki("plain", &["127.0.0.1"]);
        let (_t, addr, mut rx) =
            tls_transport("tls:127.0.0.1:0", tls_server_ctx(&pki), Default::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(OPTIONS).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), closed(&mut s)).await;
        assert_eq!(r.ok(), Some(true), "closed");
        assert!(rx.try_recv().is_err(), "nothing delivered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tls_handshake_that_never_comes_is_closed_after_the_first_message_time_out() {
        let pki = test_pki("slow", &["127.0.0.1"]);
        let (t, addr, _rx) = tls_transport(
            "tls:127.0.0.1:0",
            tls_server_ctx(&pki),
            TransportConfig {
                tcp_first_message_timeout: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let early = tokio::time::timeout(Duration::from_secs(9), closed(&mut s)).await;
        assert!(early.is_err(), "open before the time-out");
        let late = tokio::time::timeout(Duration::from_secs(2), closed(&mut s)).await;
        assert_eq!(late.ok(), Some(true), "closed at the time-out");
        assert_eq!(t.stats().closed_first_message.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn tls_connections_are_held_to_the_same_caps_as_tcp() {
        let pki = test_pki("caps", &["127.0.0.1"]);
        let (t, addr, _rx) = tls_transport(
            "tls:127.0.0.1:0",
            tls_server_ctx(&pki),
            TransportConfig {
                tcp_limits: ConnectionLimitsConfig {
                    max_total: 10,
                    max_per_source: 2,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), closed(&mut over)).await;
        assert_eq!(r.ok(), Some(true), "over the cap: closed at once");
        let limits = t.connection_limits();
        assert_eq!(limits.stats.refused_per_source.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_reloaded_certificate_serves_new_handshakes_and_a_bad_one_keeps_the_old() {
        let first = test_pki("first", &["127.0.0.1"]);
        let second = test_pki("second", &["127.0.0.1"]);
        let server_ctx = tls_server_ctx(&first);
        let (_server, server_addr, mut server_rx) = tls_transport(
            "tls:127.0.0.1:0",
            Arc::clone(&server_ctx),
            Default::default(),
        )
        .await;
        let (client, client_addr, _rx) = tls_transport(
            "tls:127.0.0.2:0",
            tls_client_and_server(&second, &second),
            Default::default(),
        )
        .await;
        assert!(client
            .send(
                &tls_flow(client_addr, server_addr),
                Bytes::from_static(OPTIONS)
            )
            .await
            .is_err());
        // A broken file: the reload fails and the old pair stays.
        std::fs::write(&first.cert, b"not a certificate").unwrap();
        assert!(server_ctx.reload().is_err());
        assert!(server_ctx.has_server());
        // The second pair in the files: new handshakes present it.
        std::fs::copy(&second.cert, &first.cert).unwrap();
        std::fs::copy(&second.key, &first.key).unwrap();
        server_ctx.reload().unwrap();
        client
            .send(
                &tls_flow(client_addr, server_addr),
                Bytes::from_static(OPTIONS),
            )
            .await
            .unwrap();
        assert_eq!(&server_rx.recv().await.unwrap().data[..], OPTIONS);
    }

    #[tokio::test]
    async fn sip_over_secure_websocket_goes_both_ways_on_one_connection() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message;
        let pki = test_pki("wss", &["127.0.0.1"]);
        let (t, addr, mut rx) =
            tls_transport("wss:127.0.0.1:0", tls_server_ctx(&pki), Default::default()).await;
        assert_eq!(t.local_addrs()[0].transport, Transport::Wss);
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&pki.ca).unwrap();
        for c in
            <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
                &ca,
            )
        {
            roots.add(c.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(crate::tls::server_name("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let mut req = format!("wss://{addr}/").into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "sip");
        ws.send(Message::binary(OPTIONS.to_vec())).await.unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(&got.data[..], OPTIONS);
        assert_eq!(got.flow.transport, Transport::Wss);
        // The answer, and a request of ours, go back on the same connection.
        t.send(&got.flow, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"))
            .await
            .unwrap();
        let flow = Flow {
            conn: None,
            ..got.flow
        };
        t.send(&flow, Bytes::from_static(b"OPTIONS sip:b SIP/2.0\r\n\r\n"))
            .await
            .unwrap();
        for want in ["SIP/2.0 200 OK", "OPTIONS sip:b"] {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(m) => assert!(m.as_str().starts_with(want), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        // CRLF keep-alive answered.
        ws.send(Message::text("\r\n\r\n")).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Text(m) => assert_eq!(m.as_str(), "\r\n"),
            other => panic!("{other:?}"),
        }
        // We never connect to a WebSocket peer.
        let gone = Flow {
            remote: "127.0.0.1:9".parse().unwrap(),
            conn: None,
            ..got.flow
        };
        assert!(t.send(&gone, Bytes::from_static(OPTIONS)).await.is_err());
    }
}
