//! Transports: UDP and TCP over IPv4 and IPv6, several listen addresses (RFC 3261 §18).
//!
//! - UDP: one socket per listen address; each datagram is one message.
//! - TCP: accepted and outgoing connections share one table; messages are framed by
//!   Content-Length ([`crate::message::frame`]); a connection idle longer than the idle
//!   time-out is closed; a message larger than the maximum size closes the connection (after
//!   a `513`-less drop: the stream cannot be resynchronised). `CRLF CRLF` keep-alive pings
//!   are answered with `CRLF` (RFC 5626 §4.4.1).
//!
//! Inbound data goes to one channel as [`Inbound`]; the transaction layer parses it.
//! This module does not parse SIP beyond stream framing.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::message::{frame, Frame};

/// A SIP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The token used in Via (`UDP`, `TCP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// Whether the transport is reliable (no retransmissions, RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
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
        let transport = Transport::parse(t)
            .ok_or_else(|| format!("\"{s}\": unknown transport \"{t}\" (udp or tcp)"))?;
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

/// An identifier of one TCP connection.
pub type ConnId = u64;

/// The path a message took (or will take): transport, both ends, and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The TCP connection, when there is one.
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
    pub tcp_idle_timeout: Duration,
    pub tcp_connect_timeout: Duration,
    pub max_message_size: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: Vec::new(),
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_connect_timeout: Duration::from_secs(5),
            max_message_size: 65_535,
        }
    }
}

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
}

struct Conn {
    remote: SocketAddr,
    local: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

/// The bound transports. Cheap to share (`Arc`).
pub struct Transports {
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    tcp_listeners: Vec<SocketAddr>,
    conns: Mutex<HashMap<ConnId, Conn>>,
    next_conn: AtomicU64,
    inbound: mpsc::Sender<Inbound>,
    cfg: TransportConfig,
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transports")
            .field("udp", &self.udp.iter().map(|(a, _)| a).collect::<Vec<_>>())
            .field("tcp", &self.tcp_listeners)
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
                Transport::Tcp => {
                    let l = bind_tcp(la.addr)
                        .map_err(|source| TransportError::Bind { addr: *la, source })?;
                    let local = l
                        .local_addr()
                        .map_err(|source| TransportError::Bind { addr: *la, source })?;
                    listeners.push((local, l));
                }
            }
        }
        let t = Arc::new(Transports {
            udp: udp.clone(),
            tcp_listeners: listeners.iter().map(|(a, _)| *a).collect(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            inbound,
            cfg,
        });
        for (local, sock) in udp {
            let t2 = Arc::clone(&t);
            tokio::spawn(async move { t2.udp_loop(local, sock).await });
        }
        for (local, l) in listeners {
            let t2 = Arc::clone(&t);
            tokio::spawn(async move { t2.accept_loop(local, l).await });
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
            .chain(self.tcp_listeners.iter().map(|a| ListenAddr {
                transport: Transport::Tcp,
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
            Transport::Tcp => pick(&mut self.tcp_listeners.iter().copied()),
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
            Transport::Tcp => {
                let existing = {
                    let conns = self.conns.lock().map_err(|_| TransportError::Closed(0))?;
                    flow.conn
                        .and_then(|id| conns.get(&id).map(|c| (id, c.tx.clone(), c.local)))
                        .or_else(|| {
                            conns
                                .iter()
                                .find(|(_, c)| c.remote == flow.remote)
                                .map(|(id, c)| (*id, c.tx.clone(), c.local))
                        })
                };
                let (id, tx, local) = match existing {
                    Some(e) => e,
                    None => self.connect(flow.remote).await?,
                };
                tx.send(data)
                    .await
                    .map_err(|_| TransportError::Closed(id))?;
                Ok(Flow {
                    transport: Transport::Tcp,
                    local,
                    remote: flow.remote,
                    conn: Some(id),
                })
            }
        }
    }

    /// An open connection to `remote`: an existing one, or a new one.
    pub async fn connect_to(
        self: &Arc<Self>,
        remote: SocketAddr,
    ) -> Result<ConnId, TransportError> {
        let existing = self.conns.lock().ok().and_then(|conns| {
            conns
                .iter()
                .find(|(_, c)| c.remote == remote)
                .map(|(id, _)| *id)
        });
        match existing {
            Some(id) => Ok(id),
            None => self.connect(remote).await.map(|(id, _, _)| id),
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
            Transport::Tcp => {
                let tx = self.conns.lock().ok().and_then(|conns| {
                    flow.conn
                        .and_then(|id| conns.get(&id).map(|c| c.tx.clone()))
                        .or_else(|| {
                            conns
                                .values()
                                .find(|c| c.remote == flow.remote)
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
                                tracing::debug!(remote = %flow.remote, error = %e, "tcp send failed");
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
        remote: SocketAddr,
    ) -> Result<(ConnId, mpsc::Sender<Bytes>, SocketAddr), TransportError> {
        let stream = tokio::time::timeout(self.cfg.tcp_connect_timeout, TcpStream::connect(remote))
            .await
            .map_err(|_| TransportError::ConnectTimeout(remote))?
            .map_err(|e| TransportError::Connect(remote, e))?;
        let _ = stream.set_nodelay(true);
        Ok(self.register_conn(stream, remote))
    }

    fn register_conn(
        self: &Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> (ConnId, mpsc::Sender<Bytes>, SocketAddr) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
        // Messages we send say our listening port, so use it as the flow's local address.
        let advertised_local = self
            .local_for(Transport::Tcp, remote)
            .map(|l| SocketAddr::new(local.ip(), l.port()))
            .unwrap_or(local);
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(
                id,
                Conn {
                    remote,
                    local: advertised_local,
                    tx: tx.clone(),
                },
            );
        }
        let (rd, wr) = stream.into_split();
        let flow = Flow {
            transport: Transport::Tcp,
            local: advertised_local,
            remote,
            conn: Some(id),
        };
        let t = Arc::clone(self);
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let writer = tokio::spawn(write_loop(wr, rx));
            t.read_loop(rd, flow, tx2).await;
            writer.abort();
            if let Ok(mut conns) = t.conns.lock() {
                conns.remove(&id);
            }
            tracing::debug!(conn = id, %remote, "tcp connection closed");
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

    async fn accept_loop(self: Arc<Self>, local: SocketAddr, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%local, %remote, "tcp connection accepted");
                    self.register_conn(stream, remote);
                }
                Err(e) => {
                    tracing::warn!(%local, error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn read_loop(
        &self,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        flow: Flow,
        tx: mpsc::Sender<Bytes>,
    ) {
        let mut buf = BytesMut::with_capacity(8192);
        let max = self.cfg.max_message_size;
        loop {
            // Drain every complete frame.
            loop {
                match frame(&buf, max) {
                    Ok(Frame::Message { skip, len }) => {
                        let _ = buf.split_to(skip);
                        let data = buf.split_to(len).freeze();
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
                        tracing::info!(remote = %flow.remote, error = %e, "closing tcp connection");
                        return;
                    }
                }
            }
            buf.reserve(4096);
            match tokio::time::timeout(self.cfg.tcp_idle_timeout, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!(remote = %flow.remote, "tcp idle time-out");
                    return;
                }
            }
        }
    }
}

async fn write_loop(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        if wr.write_all(&b).await.is_err() {
            return;
        }
    }
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
}
