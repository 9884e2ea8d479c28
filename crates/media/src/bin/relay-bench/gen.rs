//! The load generator: paced G.711-sized RTP streams out of a few UDP sockets with
//! `sendmmsg`, received back with `recvmmsg`, each packet carrying its stream, sequence number
//! and send time so that loss and one-way latency can be measured.

use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::Arc;
use std::thread;

use crate::sys::now_ns;

/// One paced stream: sent from `socket` to `dest`.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub socket: usize,
    pub dest: SocketAddr,
}

/// Timing of a run, in CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: u64,
    /// Packets sent in `[window_start, window_end)` are the measured ones.
    pub window_start: u64,
    pub window_end: u64,
    /// The receiver keeps draining until then.
    pub recv_end: u64,
    pub pps: u32,
    pub size: usize,
    /// Pacing granularity of the sender: it wakes this often and sends what fell due.
    pub pacing_ns: u64,
    /// The receiver polls instead of sleeping, as a NIC would take packets: the relay then
    /// never pays for waking the load generator up.
    pub busy_poll: bool,
}

/// What the generator saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent_window: u64,
    pub sent_total: u64,
    pub send_failed: u64,
    pub received_window: u64,
    pub received_total: u64,
    /// Send time to the moment the relay's packet reached the generator's socket (the kernel's
    /// receive time stamp): the relay and two loopback traversals, without the generator's own
    /// receive scheduling.
    pub latency: Histogram,
    /// Send time to the moment the receiver thread read the packet (adds the generator's delay).
    pub latency_read: Histogram,
    /// Packets that came without a kernel time stamp (counted in `latency` by read time).
    pub unstamped: u64,
}

/// One-way latency, 1 µs buckets up to 1 s.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; 1_000_001],
            count: 0,
        }
    }
}

impl Histogram {
    fn record(&mut self, ns: u64) {
        let us = ((ns / 1000) as usize).min(self.buckets.len() - 1);
        self.buckets[us] += 1;
        self.count += 1;
    }

    /// The `q`-quantile in µs (0 when empty).
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (us, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return us as u64;
            }
        }
        (self.buckets.len() - 1) as u64
    }
}

const BATCH: usize = 64;
/// Room for one `SCM_TIMESTAMPNS` control message (a `cmsghdr` and a `timespec`).
const CTRL: usize = 64;
const HEADER: usize = 12;
/// Offset of the send time (u64), stream index (u32), sequence number (u32) in the payload.
const STAMP: usize = HEADER;

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY (zeroed): valid for sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage holds a sockaddr_in.
            unsafe { ptr::write((&mut s as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage holds a sockaddr_in6.
            unsafe { ptr::write((&mut s as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

/// Per-socket outgoing batch.
struct OutBatch {
    bufs: Vec<u8>,
    /// Pointed at by `hdr`; kept alive here.
    _iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
    stamps: Vec<u64>,
    n: usize,
}

impl OutBatch {
    fn new(size: usize) -> Self {
        let mut bufs = vec![0u8; BATCH * size];
        let mut iov: Vec<libc::iovec> = (0..BATCH)
            .map(|i| libc::iovec {
                iov_base: bufs[i * size..].as_mut_ptr().cast(),
                iov_len: size,
            })
            .collect();
        // SAFETY (zeroed): valid for mmsghdr.
        let mut hdr: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
        for (h, v) in hdr.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        OutBatch {
            bufs,
            _iov: iov,
            hdr,
            stamps: vec![0; BATCH],
            n: 0,
        }
    }
}

fn sender(socks: &[UdpSocket], streams: &[Stream], s: Schedule) -> (u64, u64, u64) {
    let n = streams.len() as u64;
    let period = 1_000_000_000 / u64::from(s.pps.max(1));
    let dests: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        streams.iter().map(|st| sockaddr(st.dest)).collect();
    let mut seqs = vec![0u32; streams.len()];
    let mut batches: Vec<OutBatch> = socks.iter().map(|_| OutBatch::new(s.size)).collect();
    let (mut sent_total, mut sent_window, mut failed) = (0u64, 0u64, 0u64);
    let (mut idx, mut cycle) = (0u64, 0u64);
    let mut flush = |b: &mut OutBatch, fd: i32, sent_total: &mut u64, sent_window: &mut u64| {
        let mut off = 0;
        while off < b.n {
            // SAFETY: headers point at live buffers/addresses owned by the batch and `dests`.
            let r = unsafe { libc::sendmmsg(fd, b.hdr[off..].as_mut_ptr(), (b.n - off) as u32, 0) };
            if r <= 0 {
                failed += (b.n - off) as u64;
                break;
            }
            for &t in &b.stamps[off..off + r as usize] {
                *sent_total += 1;
                if t >= s.window_start && t < s.window_end {
                    *sent_window += 1;
                }
            }
            off += r as usize;
        }
        b.n = 0;
    };
    loop {
        let now = now_ns();
        if now >= s.window_end {
            break;
        }
        loop {
            let due = s.start + cycle * period + idx * period / n;
            if due > now {
                break;
            }
            let i = idx as usize;
            let st = streams[i];
            let b = &mut batches[st.socket];
            let k = b.n;
            let seq = seqs[i];
            seqs[i] = seq.wrapping_add(1);
            let buf = &mut b.bufs[k * s.size..(k + 1) * s.size];
            buf[0] = 0x80;
            buf[1] = 0; // PCMU
            buf[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            buf[4..8].copy_from_slice(&seq.wrapping_mul(160).to_be_bytes());
            buf[8..12].copy_from_slice(&(i as u32 + 1).to_be_bytes());
            buf[STAMP..STAMP + 8].copy_from_slice(&now.to_le_bytes());
            buf[STAMP + 8..STAMP + 12].copy_from_slice(&(i as u32).to_le_bytes());
            buf[STAMP + 12..STAMP + 16].copy_from_slice(&seq.to_le_bytes());
            b.hdr[k].msg_hdr.msg_name = (&dests[i].0 as *const libc::sockaddr_storage)
                .cast_mut()
                .cast();
            b.hdr[k].msg_hdr.msg_namelen = dests[i].1;
            b.stamps[k] = now;
            b.n += 1;
            if b.n == BATCH {
                flush(
                    b,
                    socks[st.socket].as_raw_fd(),
                    &mut sent_total,
                    &mut sent_window,
                );
            }
            idx += 1;
            if idx == n {
                idx = 0;
                cycle += 1;
            }
        }
        for (b, sock) in batches.iter_mut().zip(socks) {
            if b.n > 0 {
                flush(b, sock.as_raw_fd(), &mut sent_total, &mut sent_window);
            }
        }
        // Wake at most once per `pacing_ns` and send what fell due meanwhile: timer wake-ups
        // per packet would cost more than the packets themselves.
        let next = s.start + cycle * period + idx * period / n;
        crate::sys::sleep_until(next.max(now + s.pacing_ns).min(s.window_end));
    }
    (sent_total, sent_window, failed)
}

/// Asks the kernel to stamp each datagram `sock` receives with its arrival time.
fn enable_rx_stamps(sock: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int for the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// The kernel's receive time of a datagram (`SCM_TIMESTAMPNS`), in real-time nanoseconds.
fn rx_stamp(h: &libc::msghdr) -> Option<i128> {
    // SAFETY: `h` was filled by recvmmsg; its control area is ours and `msg_controllen` says
    // how much of it the kernel wrote; the CMSG macros stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SO_TIMESTAMPNS
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(mem::size_of::<libc::timespec>() as u32) as usize
            {
                let ts: libc::timespec = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

struct Received {
    total: u64,
    window: u64,
    latency: Histogram,
    latency_read: Histogram,
    unstamped: u64,
}

fn receiver(socks: &[UdpSocket], s: Schedule) -> Received {
    if s.busy_poll {
        // A polling thread must not hold a real-time priority: it would take the whole core
        // from the sender and run into the kernel's real-time throttling.
        crate::sys::set_normal();
    }
    let mut hist = Histogram::default();
    let mut hist_read = Histogram::default();
    let mut unstamped = 0u64;
    let (mut total, mut window) = (0u64, 0u64);
    for sock in socks {
        // Without stamps the read time stands in (counted as `unstamped`).
        let _ = enable_rx_stamps(sock);
    }
    let offset = crate::sys::realtime_offset_ns();
    // SAFETY: plain system call.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (i, sock) in socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ev` is live for the call.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &mut ev) };
    }
    const SZ: usize = 2048;
    let mut bufs = vec![0u8; BATCH * SZ];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|i| libc::iovec {
            iov_base: bufs[i * SZ..].as_mut_ptr().cast(),
            iov_len: SZ,
        })
        .collect();
    // SAFETY (zeroed): valid for mmsghdr / epoll_event.
    let mut hdr: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
    let mut ctrl = vec![0u64; BATCH * CTRL / 8];
    for (h, v) in hdr.iter_mut().zip(iov.iter_mut()) {
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while now_ns() < s.recv_end {
        // SAFETY: `events` has room for 256 entries.
        let n = unsafe {
            libc::epoll_wait(
                ep,
                events.as_mut_ptr(),
                256,
                if s.busy_poll { 0 } else { 5 },
            )
        };
        if n <= 0 && s.busy_poll {
            // Nothing waiting: let the sender thread on this core go first.
            // SAFETY: plain system call.
            unsafe { libc::sched_yield() };
        }
        for e in events.iter().take(n.max(0) as usize) {
            let fd = socks[e.u64 as usize].as_raw_fd();
            for (i, h) in hdr.iter_mut().enumerate() {
                h.msg_hdr.msg_control = ctrl[i * CTRL / 8..].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = CTRL as _;
            }
            // SAFETY: headers point at live buffers of SZ bytes owned here.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    hdr.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if r <= 0 {
                continue;
            }
            let now = now_ns();
            for (i, h) in hdr.iter().take(r as usize).enumerate() {
                if (h.msg_len as usize) < STAMP + 16 {
                    continue;
                }
                let mut t = [0u8; 8];
                t.copy_from_slice(&bufs[i * SZ + STAMP..i * SZ + STAMP + 8]);
                let sent = u64::from_le_bytes(t);
                total += 1;
                if sent >= s.window_start && sent < s.window_end {
                    window += 1;
                    hist_read.record(now.saturating_sub(sent));
                    match rx_stamp(&h.msg_hdr) {
                        Some(at) => {
                            let at = (at - offset).clamp(0, i128::from(u64::MAX)) as u64;
                            hist.record(at.saturating_sub(sent));
                        }
                        None => {
                            unstamped += 1;
                            hist.record(now.saturating_sub(sent));
                        }
                    }
                }
            }
        }
    }
    // SAFETY: closing the epoll descriptor created above.
    unsafe { libc::close(ep) };
    Received {
        total,
        window,
        latency: hist,
        latency_read: hist_read,
        unstamped,
    }
}

/// Runs the load: returns when the receiver has drained. `on_window` is called on the caller's
/// thread at the window's start and end (to sample the relay's CPU time).
pub fn run(
    socks: Vec<UdpSocket>,
    streams: Vec<Stream>,
    s: Schedule,
    mut on_window: impl FnMut(bool),
) -> Outcome {
    let socks = Arc::new(socks);
    let rx_socks = Arc::clone(&socks);
    let receiver = thread::spawn(move || receiver(&rx_socks, s));
    let tx_socks = Arc::clone(&socks);
    let sender = thread::spawn(move || sender(&tx_socks, &streams, s));
    crate::sys::sleep_until(s.window_start);
    on_window(true);
    crate::sys::sleep_until(s.window_end);
    on_window(false);
    let (sent_total, sent_window, send_failed) = sender.join().unwrap_or_default();
    let r = receiver.join().unwrap_or_else(|_| Received {
        total: 0,
        window: 0,
        latency: Histogram::default(),
        latency_read: Histogram::default(),
        unstamped: 0,
    });
    Outcome {
        sent_window,
        sent_total,
        send_failed,
        received_window: r.window,
        received_total: r.total,
        latency: r.latency,
        latency_read: r.latency_read,
        unstamped: r.unstamped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for us in 1..=100u64 {
            h.record(us * 1000 + 500);
        }
        assert_eq!(h.quantile_us(0.5), 50);
        assert_eq!(h.quantile_us(0.99), 99);
        assert_eq!(h.quantile_us(1.0), 100);
    }

    #[test]
    fn the_kernel_receive_stamp_is_read_and_lies_between_send_and_read() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(enable_rx_stamps(&rx));
        let offset = crate::sys::realtime_offset_ns();
        let before = now_ns();
        tx.send_to(b"stamp me", rx.local_addr().expect("addr"))
            .expect("send");
        let mut buf = [0u8; 64];
        let mut ctrl = [0u64; CTRL / 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY (zeroed): valid for msghdr.
        let mut h: libc::msghdr = unsafe { mem::zeroed() };
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = ctrl.as_mut_ptr().cast();
        h.msg_controllen = CTRL as _;
        // SAFETY: `h` points at live buffers owned here.
        let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &mut h, 0) };
        let after = now_ns();
        assert_eq!(n, 8);
        let at = rx_stamp(&h).expect("a time stamp") - offset;
        // The two clocks are read apart: allow a millisecond of skew.
        assert!(at + 1_000_000 >= i128::from(before), "{at} < {before}");
        assert!(at <= i128::from(after) + 1_000_000, "{at} > {after}");
        h.msg_controllen = 0;
        assert_eq!(rx_stamp(&h), None, "no control message, no stamp");
    }
}
