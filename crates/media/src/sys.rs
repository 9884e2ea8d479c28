//! The system calls of the hot path, wrapped once: epoll, eventfd, and batched UDP I/O with
//! `recvmmsg(2)` / `sendmmsg(2)` over one set of receive buffers (the bytes received are the
//! bytes sent: no copy, no allocation per packet).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) mod uring;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An epoll instance, level-triggered, one `u64` token per registered descriptor.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain system call without pointers.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` outlives the call; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout_ms`; returns how many entries of `events` were filled.
    pub(crate) fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout_ms: i32,
    ) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `max` entries into `events`.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// A non-blocking eventfd used to wake a forwarding thread for control messages.
///
/// Wake-ups are coalesced: `notify` writes only when no wake-up is pending since the
/// thread's last `drain`, so a burst of control messages (a call's peers, sources and start,
/// sent one after another) costs one system call and one wake-up instead of one each. The
/// thread clears the flag in `drain` before it reads its control queue, so a message sent
/// after that read finds the flag clear and writes: none is left waiting without a wake-up.
/// (A message queued while the flag is set was queued before the clear, so the read that
/// follows the clear sees it.)
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain system call without pointers.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: fresh descriptor.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wakes the thread unless a wake-up is already on its way. Call after the message is
    /// queued.
    pub(crate) fn notify(&self) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) still leaves the
        // descriptor readable, which is all a wake-up needs.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Takes the wake-up but leaves the flag set: senders queue without writing until
    /// [`EventFd::drain`], and the thread reads its queue on its own meanwhile (see the
    /// io_uring loop's polling while control messages keep coming).
    pub(crate) fn take(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }

    /// Takes the wake-up; the caller reads its control queue after this. The counter is
    /// read before the flag is cleared: while the flag is set no `notify` writes, so no
    /// wake-up written after the read can be lost with the flag left set.
    pub(crate) fn drain(&self) {
        self.take();
        // A read-modify-write: it reads the flag a sender set after queueing, so what that
        // sender queued is seen by the read of the queue that follows.
        self.pending.swap(false, Ordering::SeqCst);
    }
}

/// A UDP socket bound to `addr`, non-blocking and close-on-exec from its creation: one
/// `socket` and one `bind`, without the `ioctl(FIONBIO)` that `UdpSocket::bind` and
/// `set_nonblocking` take after (four per relay session).
pub(crate) fn bind_udp_nonblocking(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain system call without pointers.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: a fresh descriptor, owned from here on (closed on the error below).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = RawSockAddr::from(addr);
    // SAFETY: points at live storage of `raw.len` bytes holding the address.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw.storage as *const libc::sockaddr_storage).cast(),
            raw.len,
        )
    })?;
    Ok(std::net::UdpSocket::from(fd))
}

/// A socket address in the kernel's form, ready to be pointed at by `msg_name`.
#[derive(Clone, Copy)]
pub(crate) struct RawSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawSockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", from_raw(&self.storage, self.len))
    }
}

impl From<SocketAddr> for RawSockAddr {
    fn from(addr: SocketAddr) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawSockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// Reads a kernel socket address back.
pub(crate) fn from_raw(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let sin: libc::sockaddr_in =
                unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above for sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Packets per `recvmmsg` call.
pub(crate) const BATCH: usize = 64;
/// Largest datagram relayed; longer ones are truncated by the kernel and dropped.
pub(crate) const MAX_DATAGRAM: usize = 2048;

/// Outcome of a [`Batch::flush`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    pub packets: u64,
    pub bytes: u64,
    pub failed: u64,
}

/// One forwarding thread's packet buffers and message headers.
///
/// `recv` fills up to [`BATCH`] datagrams with one `recvmmsg`; `queue` marks some of them for
/// sending (the send headers point at the very same buffers); `flush` sends the queued ones to
/// one destination from one socket with `sendmmsg`. A batch must be flushed before the next
/// `recv`, which the forwarding loop does for each readable socket.
///
/// The raw pointers inside make this type neither `Send` nor `Sync`: it is created on, and
/// never leaves, its forwarding thread. The heap blocks it points into never move.
pub(crate) struct Batch {
    bufs: Box<[u8]>,
    recv_iov: Box<[libc::iovec]>,
    recv_addr: Box<[libc::sockaddr_storage]>,
    recv_hdr: Box<[libc::mmsghdr]>,
    received: usize,
    send_iov: Box<[libc::iovec]>,
    send_hdr: Box<[libc::mmsghdr]>,
    send_dest: Box<RawSockAddr>,
    queued: usize,
}

impl Batch {
    pub(crate) fn new() -> Self {
        let mut bufs = vec![0u8; BATCH * MAX_DATAGRAM].into_boxed_slice();
        // SAFETY (zeroed): iovec, sockaddr_storage and mmsghdr are plain C structs for which
        // all-zero (null pointers, zero lengths) is valid.
        let mut recv_iov: Box<[libc::iovec]> = (0..BATCH)
            .map(|i| libc::iovec {
                iov_base: bufs[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            })
            .collect();
        let mut recv_addr: Box<[libc::sockaddr_storage]> =
            (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
        let mut recv_hdr: Box<[libc::mmsghdr]> =
            (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
        for i in 0..BATCH {
            let h = &mut recv_hdr[i].msg_hdr;
            h.msg_name = (&mut recv_addr[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut recv_iov[i];
            h.msg_iovlen = 1;
        }
        let mut send_iov: Box<[libc::iovec]> = (0..BATCH)
            .map(|_| libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0,
            })
            .collect();
        let mut send_dest = Box::new(RawSockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))));
        let mut send_hdr: Box<[libc::mmsghdr]> =
            (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
        for i in 0..BATCH {
            let h = &mut send_hdr[i].msg_hdr;
            h.msg_name = (&mut send_dest.storage as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut send_iov[i];
            h.msg_iovlen = 1;
        }
        Batch {
            bufs,
            recv_iov,
            recv_addr,
            recv_hdr,
            received: BATCH,
            send_iov,
            send_hdr,
            send_dest,
            queued: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams from a non-blocking socket. `Ok(0)` when none is
    /// waiting.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        debug_assert_eq!(self.queued, 0, "flush before receiving again");
        self.queued = 0;
        for h in &mut self.recv_hdr[..self.received] {
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live buffer of MAX_DATAGRAM bytes and a live
        // sockaddr_storage, owned by `self` and not moved while the call runs.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdr.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            self.received = 0;
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// Datagram `i` of the last `recv`: its bytes, source, and whether it was truncated.
    pub(crate) fn packet(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        let h = &self.recv_hdr[i];
        let len = (h.msg_len as usize).min(MAX_DATAGRAM);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let data = &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len];
        (
            data,
            from_raw(&self.recv_addr[i], h.msg_hdr.msg_namelen),
            truncated,
        )
    }

    /// Queues datagram `i` of the last `recv` for the next `flush`, without copying it.
    pub(crate) fn queue(&mut self, i: usize) {
        let q = self.queued;
        self.send_iov[q].iov_base = self.recv_iov[i].iov_base;
        self.send_iov[q].iov_len = (self.recv_hdr[i].msg_len as usize).min(MAX_DATAGRAM);
        self.queued += 1;
    }

    /// Forgets the queued datagrams; returns how many there were.
    pub(crate) fn discard(&mut self) -> usize {
        std::mem::take(&mut self.queued)
    }

    /// Sends every queued datagram from `fd` to `dest` with `sendmmsg`, then empties the queue.
    pub(crate) fn flush(&mut self, fd: RawFd, dest: &RawSockAddr) -> Sent {
        let mut sent = Sent::default();
        let n = self.queued;
        self.queued = 0;
        if n == 0 {
            return sent;
        }
        *self.send_dest = *dest;
        for h in &mut self.send_hdr[..n] {
            h.msg_hdr.msg_namelen = dest.len;
        }
        let mut off = 0;
        while off < n {
            // SAFETY: headers `off..n` point at live iovecs (into `bufs`) and at `send_dest`,
            // all owned by `self`; the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_hdr[off..].as_mut_ptr(),
                    (n - off) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        sent.failed += (n - off) as u64;
                        break;
                    }
                    _ => {
                        // This datagram cannot go (e.g. unreachable): skip it, send the rest.
                        sent.failed += 1;
                        off += 1;
                        continue;
                    }
                }
            }
            let r = r as usize;
            for iov in &self.send_iov[off..off + r] {
                sent.bytes += iov.iov_len as u64;
            }
            sent.packets += r as u64;
            off += r;
        }
        sent
    }
}

/// Raises the open-file limit to its hard maximum (one relay session holds four sockets).
pub fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY (zeroed): rlimit is two integers.
    let mut lim: libc::rlimit = unsafe { mem::zeroed() };
    // SAFETY: `lim` is a live rlimit the kernel writes into / reads from.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eventfd's counter, read (and so reset) directly; 0 when nothing was written.
    fn counter(e: &EventFd) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let n = unsafe { libc::read(e.raw(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }

    #[test]
    fn wake_ups_are_coalesced_until_the_thread_drains() {
        let e = EventFd::new().unwrap();
        e.notify();
        e.notify();
        e.notify();
        assert_eq!(counter(&e), 1, "three messages, one write");
        // The thread has not drained yet: still pending, nothing more is written.
        e.notify();
        assert_eq!(counter(&e), 0);
        e.drain();
        e.notify();
        assert_eq!(counter(&e), 1, "after a drain the next message wakes again");
    }

    #[test]
    fn a_wake_up_taken_while_polling_keeps_senders_from_writing_until_the_drain() {
        let e = EventFd::new().unwrap();
        e.notify();
        e.take();
        assert_eq!(counter(&e), 0, "taken: the counter is read");
        // The thread reads its queue on its own now: messages only queue.
        e.notify();
        e.notify();
        assert_eq!(counter(&e), 0);
        e.drain();
        e.notify();
        assert_eq!(counter(&e), 1, "back to wake-ups after the drain");
    }

    #[test]
    fn socket_addresses_round_trip_through_the_kernel_form() {
        for a in [
            "127.0.0.1:20000".parse::<SocketAddr>().unwrap(),
            "[::1]:5004".parse().unwrap(),
            "[fe80::1%2]:9".parse().unwrap(),
        ] {
            let raw = RawSockAddr::from(a);
            assert_eq!(from_raw(&raw.storage, raw.len), Some(a));
        }
    }

    #[test]
    fn batch_relays_the_received_bytes() {
        use std::net::UdpSocket;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        out.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for i in 0..3u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        let mut b = Batch::new();
        let mut got = 0;
        for _ in 0..1000 {
            got += b.recv(rx.as_raw_fd()).unwrap();
            for i in 0..b.received {
                let (data, src, trunc) = b.packet(i);
                assert_eq!(src, Some(tx.local_addr().unwrap()));
                assert!(!trunc);
                assert_eq!(data.len(), 10);
                b.queue(i);
            }
            let s = b.flush(
                rx.as_raw_fd(),
                &RawSockAddr::from(out.local_addr().unwrap()),
            );
            assert_eq!(s.failed, 0);
            if got == 3 {
                break;
            }
            std::thread::yield_now();
        }
        let mut buf = [0u8; 64];
        for i in 0..3u8 {
            let (n, from) = out.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i; 10]);
            assert_eq!(from, rx.local_addr().unwrap());
        }
    }

    /// The relay's sockets: bound where asked (IPv4 and IPv6), non-blocking from their
    /// creation, close-on-exec, and a taken port is an error.
    #[test]
    fn a_relay_socket_is_bound_and_non_blocking_from_its_creation() {
        for ip in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let s = bind_udp_nonblocking(SocketAddr::new(ip, 0)).unwrap();
            let at = s.local_addr().unwrap();
            assert_eq!(at.ip(), ip);
            assert_ne!(at.port(), 0);
            let mut buf = [0u8; 16];
            let e = s.recv_from(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            // SAFETY: reads the flags of a live descriptor.
            let fd_flags = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
            let taken = bind_udp_nonblocking(at).unwrap_err();
            assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
            // What is sent to it arrives.
            let tx = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
            tx.send_to(b"hello", at).unwrap();
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .unwrap();
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"hello"[..], tx.local_addr().unwrap()));
        }
    }
}
