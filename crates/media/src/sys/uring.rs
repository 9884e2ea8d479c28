//! The io_uring forwarding primitives: one ring per forwarding thread, a provided-buffer ring
//! (`IORING_REGISTER_PBUF_RING`) that every leg socket receives into with a multishot
//! `recvmsg` (`IORING_RECV_MULTISHOT`), and sends (`IORING_OP_SEND` with a destination address)
//! of the very buffer a datagram arrived in. A buffer goes back to the ring when its send has
//! completed (or at once when the datagram is not forwarded).
//!
//! ```text
//!  kernel picks buffer b from the ring --recv CQE(b)--> relay judges the datagram in place
//!        ^                                                   |
//!        |                                             SEND SQE(b, dest) or recycle(b)
//!        +------------------ recycle(b) <---- send CQE(b) ---+
//! ```
//!
//! All the `unsafe` of the io_uring path is here; the forwarding loop (`crate::uring_worker`)
//! is safe code over [`Uring`].

use std::alloc::{self, Layout};
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::IoUring;

use super::{RawSockAddr, MAX_DATAGRAM};

/// Size of the socket address area the kernel writes before each datagram: a `sockaddr_in6`
/// (28 bytes), which also holds a `sockaddr_in`.
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_in6>();
/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags (four `u32`).
const OUT_HDR: usize = 16;
/// Where the datagram starts in a provided buffer.
const PAYLOAD_OFF: usize = OUT_HDR + NAME_LEN;
/// One provided buffer: header, address, and the largest datagram relayed.
const BUF_SIZE: usize = (PAYLOAD_OFF + MAX_DATAGRAM + 63) & !63;
/// The buffer group id of the ring's provided buffers.
const BGID: u16 = 0;

/// Sizes of one forwarding thread's ring.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UringSizes {
    /// Submission queue entries.
    pub sq: u32,
    /// Completion queue entries.
    pub cq: u32,
    /// Provided buffers (a power of two, at most 32768).
    pub bufs: u16,
}

impl Default for UringSizes {
    fn default() -> Self {
        UringSizes {
            sq: 4096,
            cq: 32768,
            bufs: 8192,
        }
    }
}

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The provided buffer the kernel filled, if any.
    pub(crate) fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// False when a multishot request has ended and must be armed again.
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// A datagram as it lies in a provided buffer.
#[derive(Debug)]
pub(crate) struct Datagram<'a> {
    pub data: &'a [u8],
    pub src: Option<SocketAddr>,
    pub truncated: bool,
}

/// What a send was for, kept beside its buffer until the send completes.
#[derive(Clone, Copy)]
struct SendSlot {
    dest: RawSockAddr,
    tag: u64,
    len: u32,
}

/// A forwarding thread's io_uring: the ring, its provided buffers, and the send slots.
///
/// Not `Send`: created on, and never leaving, its forwarding thread (the ring is set up with
/// `IORING_SETUP_SINGLE_ISSUER` and `IORING_SETUP_DEFER_TASKRUN`, so completions are posted
/// only when this thread enters the kernel to wait for them, in one batch).
pub(crate) struct Uring {
    ring: IoUring,
    /// `bufs` buffers of `BUF_SIZE` bytes, written by the kernel while they are in the ring.
    buf_mem: NonNull<u8>,
    /// The buffer ring the kernel takes buffers from (page aligned, `bufs` entries).
    ring_mem: NonNull<BufRingEntry>,
    bufs: u16,
    /// Our copy of the buffer ring's tail; published with `commit_buffers`.
    tail: u16,
    published_tail: u16,
    /// The `msghdr` the multishot receives were armed with (only the name length is used).
    recv_msg: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    /// Wait for a batch of this many completions at most this long (6.12+ `min_wait`).
    min_wait_usec: u32,
    min_timeout: bool,
    setup_flags: &'static str,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("bufs", &self.bufs)
            .field("setup", &self.setup_flags)
            .finish_non_exhaustive()
    }
}

fn buf_layout(bufs: u16) -> io::Result<Layout> {
    Layout::from_size_align(usize::from(bufs) * BUF_SIZE, 64)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn ring_layout(bufs: u16) -> io::Result<Layout> {
    Layout::from_size_align(usize::from(bufs) * mem::size_of::<BufRingEntry>(), 4096)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn build_ring(sizes: UringSizes) -> io::Result<(IoUring, &'static str)> {
    // Newest first: single issuer + deferred task work (6.1) batches completions into our
    // own io_uring_enter; cooperative task running (5.19) avoids interrupting the thread.
    let full = IoUring::builder()
        .setup_cqsize(sizes.cq)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sizes.sq);
    match full {
        Ok(r) => Ok((r, "single_issuer,defer_taskrun")),
        Err(_) => IoUring::builder()
            .setup_cqsize(sizes.cq)
            .setup_submit_all()
            .setup_coop_taskrun()
            .build(sizes.sq)
            .map(|r| (r, "coop_taskrun")),
    }
}

impl Uring {
    /// Sets up a ring with its provided buffers and checks, on a loopback socket, that a
    /// multishot `recvmsg` into them and a send out of them work (kernel 6.0 or later, not
    /// refused by `io_uring_disabled` or a seccomp filter).
    pub(crate) fn new(sizes: UringSizes, min_wait_usec: u32) -> io::Result<Uring> {
        if !sizes.bufs.is_power_of_two() || sizes.bufs > 32768 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let (ring, setup_flags) = build_ring(sizes)?;
        let min_timeout = ring.params().is_feature_min_timeout();
        let blayout = buf_layout(sizes.bufs)?;
        let rlayout = ring_layout(sizes.bufs)?;
        // SAFETY: both layouts have a non-zero size (bufs >= 1).
        let buf_mem = NonNull::new(unsafe { alloc::alloc_zeroed(blayout) })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: as above.
        let Some(ring_mem) = NonNull::new(unsafe { alloc::alloc_zeroed(rlayout) }) else {
            // SAFETY: allocated just above with this layout.
            unsafe { alloc::dealloc(buf_mem.as_ptr(), blayout) };
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        // SAFETY (zeroed): msghdr is a plain C struct; all-zero is valid (null pointers).
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;
        let zero_dest = RawSockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        let slots = vec![
            SendSlot {
                dest: zero_dest,
                tag: 0,
                len: 0,
            };
            usize::from(sizes.bufs)
        ]
        .into_boxed_slice();
        let mut u = Uring {
            ring,
            buf_mem,
            ring_mem: ring_mem.cast(),
            bufs: sizes.bufs,
            tail: 0,
            published_tail: 0,
            recv_msg,
            slots,
            min_wait_usec: if min_timeout { min_wait_usec } else { 0 },
            min_timeout,
            setup_flags,
        };
        // SAFETY: `ring_mem` is page aligned, `bufs` entries long, zeroed, and lives until
        // `Drop`, which cancels every request and unregisters the ring before freeing it.
        unsafe {
            u.ring.submitter().register_buf_ring_with_flags(
                u.ring_mem.as_ptr() as u64,
                u.bufs,
                BGID,
                0,
            )?;
        }
        for bid in 0..u.bufs {
            u.recycle(bid);
        }
        u.commit_buffers();
        u.self_test()?;
        Ok(u)
    }

    /// The setup flags the ring got, for the start-up log.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} bufs={}x{} min_wait={}",
            self.setup_flags,
            self.bufs,
            BUF_SIZE,
            if self.min_timeout {
                format!("{}us", self.min_wait_usec)
            } else {
                "unsupported".to_string()
            }
        )
    }

    /// One datagram through a multishot receive and a send on loopback, with a bounded wait.
    fn self_test(&mut self) -> io::Result<()> {
        use std::net::UdpSocket;
        use std::os::fd::AsRawFd;
        let a = UdpSocket::bind("127.0.0.1:0")?;
        let b = UdpSocket::bind("127.0.0.1:0")?;
        a.set_nonblocking(true)?;
        b.set_read_timeout(Some(Duration::from_secs(1)))?;
        // Kind bits 00: the forwarding loop ignores any late completion of the probe.
        const PROBE: u64 = 0x5e1f;
        self.arm_recv(a.as_raw_fd(), PROBE)?;
        self.submit()?;
        b.send_to(b"probe", a.local_addr()?)?;
        let dest = RawSockAddr::from(b.local_addr()?);
        let mut got = None;
        let mut done = Vec::with_capacity(8);
        for _ in 0..20 {
            self.wait(1, Duration::from_millis(50))?;
            self.reap(&mut done);
            for c in done.drain(..) {
                if c.user_data == PROBE && c.result > 0 {
                    got = c.buffer().map(|bid| (bid, c.result, c.more()));
                }
            }
            if got.is_some() {
                break;
            }
        }
        let Some((bid, res, more)) = got else {
            return Err(io::Error::other("io_uring multishot recvmsg gave nothing"));
        };
        let len = self
            .datagram(bid, res)
            .filter(|d| d.data == b"probe" && d.src == b.local_addr().ok())
            .map(|d| d.data.len() as u32);
        let Some(len) = len else {
            self.recycle(bid);
            return Err(io::Error::other("io_uring multishot recvmsg: bad datagram"));
        };
        self.send(
            a.as_raw_fd(),
            bid,
            len,
            &dest,
            KIND_SEND | u64::from(bid),
            0,
        )?;
        self.submit()?;
        let mut buf = [0u8; 16];
        let (n, _) = b.recv_from(&mut buf)?;
        // Ends the probe receive before `a` closes, and waits for both the receive's last
        // completion and the send's (whose buffer goes back to the ring).
        self.cancel_fd(a.as_raw_fd());
        let (mut recv_ended, mut send_done) = (false, false);
        for _ in 0..100 {
            self.reap(&mut done);
            for c in done.drain(..) {
                if let Some((bid, _)) = self.send_completed(c) {
                    self.recycle(bid);
                    send_done = true;
                } else if c.user_data == PROBE {
                    if let Some(bid) = c.buffer() {
                        self.recycle(bid);
                    }
                    recv_ended |= !c.more();
                }
            }
            if recv_ended && send_done {
                break;
            }
            let _ = self.wait(1, Duration::from_millis(10));
        }
        self.commit_buffers();
        if &buf[..n] != b"probe" || !more || !recv_ended || !send_done {
            return Err(io::Error::other(
                "io_uring send of a provided buffer failed",
            ));
        }
        Ok(())
    }

    /// Arms a multishot `recvmsg` on `fd` into the provided buffers; its completions carry
    /// `user_data`.
    pub(crate) fn arm_recv(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let sqe = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_msg, BGID)
            .build()
            .user_data(user_data);
        self.push(&sqe)
    }

    /// Arms a multishot poll for readability of `fd` (the control eventfd).
    pub(crate) fn arm_poll(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data);
        self.push(&sqe)
    }

    /// Queues the send of buffer `bid`'s datagram (`len` bytes) from `fd` to `dest`. Its
    /// completion carries `user_data`; `tag` is handed back by [`Uring::send_completed`].
    pub(crate) fn send(
        &mut self,
        fd: RawFd,
        bid: u16,
        len: u32,
        dest: &RawSockAddr,
        user_data: u64,
        tag: u64,
    ) -> io::Result<()> {
        let i = usize::from(bid);
        let (Some(slot), true) = (self.slots.get_mut(i), bid < self.bufs) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let len = len.min(MAX_DATAGRAM as u32);
        *slot = SendSlot {
            dest: *dest,
            tag,
            len,
        };
        let addr = (&slot.dest.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
        let addr_len = slot.dest.len;
        // SAFETY: `bid < bufs`, so the payload area lies inside `buf_mem`.
        let data = unsafe { self.buf_mem.as_ptr().add(i * BUF_SIZE + PAYLOAD_OFF) };
        let sqe = opcode::Send::new(Fd(fd), data, len)
            .dest_addr(addr)
            .dest_addr_len(addr_len)
            .build()
            .user_data(user_data);
        self.push(&sqe)
    }

    /// For the completion of a send: its buffer and tag, once. The buffer is ours again and
    /// must be recycled.
    pub(crate) fn send_completed(&self, c: Completion) -> Option<(u16, u64)> {
        let bid = u16::try_from(c.user_data & SEND_BID_MASK).ok()?;
        if c.user_data & KIND_MASK != KIND_SEND || bid >= self.bufs {
            return None;
        }
        self.slots.get(usize::from(bid)).map(|s| (bid, s.tag))
    }

    /// Bytes a completed send carried (as queued).
    pub(crate) fn send_len(&self, bid: u16) -> u32 {
        self.slots.get(usize::from(bid)).map_or(0, |s| s.len)
    }

    /// Cancels, synchronously, every request on `fd`. The requests' last completions (and
    /// the release of their hold on the socket) follow; see `crate::uring_worker`.
    pub(crate) fn cancel_fd(&mut self, fd: RawFd) {
        // Requests still in the submission queue (a session added and removed in one
        // iteration) must reach the kernel first, or they would be armed after the cancel.
        let _ = self.submit();
        let _ = self.ring.submitter().register_sync_cancel(
            Some(Timespec::new().sec(1)),
            CancelBuilder::fd(Fd(fd)).all(),
        );
        // Completions deferred to this thread (DEFER_TASKRUN) run, and drop their file
        // references, on the next enter that asks for events.
        let _ = self.wait(0, Duration::ZERO);
    }

    /// Cancels, synchronously, the requests carrying each `user_data`. The kernel finds a
    /// socket's receive request by its user data in a hash table, where a cancel by file
    /// ([`Uring::cancel_fd`]) walks every armed request of the ring: with a thousand live
    /// sessions, the difference is the cost of closing one.
    pub(crate) fn cancel_user_data(&mut self, user_data: impl IntoIterator<Item = u64>) {
        let _ = self.submit();
        for ud in user_data {
            let _ = self.ring.submitter().register_sync_cancel(
                Some(Timespec::new().sec(1)),
                CancelBuilder::user_data(ud).all(),
            );
        }
        let _ = self.wait(0, Duration::ZERO);
    }

    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: every pointer in the entries built above (msghdr, payload area,
            // destination slot) points into memory owned by `self` that neither moves nor is
            // freed before the request completes or is cancelled (`Drop` cancels all).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }

    /// Submits what is queued without waiting.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and waits until `want` completions are there, at most
    /// `timeout`. With a batch (`want` > 1) on 6.12+, waits at most `min_wait_usec` for
    /// the batch before settling for what has arrived.
    pub(crate) fn wait(&mut self, want: usize, timeout: Duration) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        let args = if want > 1 && self.min_wait_usec > 0 {
            args.min_wait_usec(self.min_wait_usec)
        } else {
            args
        };
        let want = if want == 0 && timeout.is_zero() {
            1 // GETEVENTS with a zero timeout: runs deferred completions, never blocks
        } else {
            want
        };
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves every waiting completion into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        let cq = self.ring.completion();
        out.extend(cq.map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
    }

    /// The datagram a receive completion of `result` bytes put into buffer `bid`. `None` if
    /// the completion does not describe a datagram (the buffer is still ours to recycle).
    pub(crate) fn datagram(&self, bid: u16, result: i32) -> Option<Datagram<'_>> {
        if bid >= self.bufs {
            return None;
        }
        let filled = usize::try_from(result).ok()?.min(BUF_SIZE);
        // SAFETY: buffer `bid` was handed to us by a completion and is not in the ring until
        // we recycle it, so the kernel does not write it while this borrow of `self` lives;
        // the range lies inside `buf_mem` (bid < bufs, filled <= BUF_SIZE).
        let buf = unsafe {
            std::slice::from_raw_parts(
                self.buf_mem.as_ptr().add(usize::from(bid) * BUF_SIZE),
                filled,
            )
        };
        parse_recvmsg_out(buf)
    }

    /// Gives buffer `bid` back to the kernel (visible after [`Uring::commit_buffers`]).
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid >= self.bufs {
            return;
        }
        let idx = usize::from(self.tail & (self.bufs - 1));
        let addr = self.buf_mem.as_ptr() as u64 + (usize::from(bid) * BUF_SIZE) as u64;
        // SAFETY: `idx < bufs`, the ring's length; the kernel reads an entry only between
        // its head and the published tail, and this entry is past the published tail.
        let entry = unsafe { &mut *self.ring_mem.as_ptr().add(idx) };
        entry.set_addr(addr);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the recycled buffers to the kernel.
    pub(crate) fn commit_buffers(&mut self) {
        if self.tail == self.published_tail {
            return;
        }
        // SAFETY: the tail field lies in the first entry of the live, aligned ring memory;
        // the kernel reads it with acquire semantics, so a release store publishes the
        // entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring_mem.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published_tail = self.tail;
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // No request may outlive the memory it points into.
        let _ = self
            .ring
            .submitter()
            .register_sync_cancel(Some(Timespec::new().sec(1)), CancelBuilder::any());
        let _ = self.wait(0, Duration::ZERO);
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        if let (Ok(b), Ok(r)) = (buf_layout(self.bufs), ring_layout(self.bufs)) {
            // SAFETY: allocated in `new` with these layouts; every request is cancelled and
            // the buffer ring unregistered, so the kernel no longer refers to them.
            unsafe {
                alloc::dealloc(self.buf_mem.as_ptr(), b);
                alloc::dealloc(self.ring_mem.as_ptr().cast(), r);
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}

/// The kind of a request, in the top two bits of its `user_data`.
pub(crate) const KIND_MASK: u64 = 3 << 62;
/// A multishot receive on a leg socket.
pub(crate) const KIND_RECV: u64 = 1 << 62;
/// A send of a provided buffer; the low 16 bits are the buffer id.
pub(crate) const KIND_SEND: u64 = 2 << 62;
/// The control eventfd's poll.
pub(crate) const KIND_WAKE: u64 = 3 << 62;
const SEND_BID_MASK: u64 = 0xffff;

/// Reads `struct io_uring_recvmsg_out`, the address and the payload from a filled buffer
/// (the name area is `NAME_LEN` bytes, no control data).
fn parse_recvmsg_out(buf: &[u8]) -> Option<Datagram<'_>> {
    let u32_at = |at: usize| -> Option<u32> {
        let b = buf.get(at..at + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let namelen = u32_at(0)? as usize;
    let payloadlen = u32_at(8)? as usize;
    let flags = u32_at(12)?;
    let payload = buf.get(PAYLOAD_OFF..)?;
    let data = &payload[..payloadlen.min(payload.len())];
    let truncated = flags & libc::MSG_TRUNC as u32 != 0 || payloadlen > data.len();
    let name = buf.get(OUT_HDR..OUT_HDR + namelen.min(NAME_LEN))?;
    Some(Datagram {
        data,
        src: parse_sockaddr(name),
        truncated,
    })
}

/// A `sockaddr_in` / `sockaddr_in6` from its bytes (native-endian family, network-order port).
fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope: [u8; 4] = b.get(24..28)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                u32::from_ne_bytes(flow),
                u32::from_ne_bytes(scope),
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_kernel_writes_and_never_panics_on_short_buffers() {
        let mut buf = vec![0u8; PAYLOAD_OFF + 5];
        buf[0..4].copy_from_slice(&16u32.to_ne_bytes()); // namelen: sockaddr_in
        buf[8..12].copy_from_slice(&5u32.to_ne_bytes());
        buf[OUT_HDR..OUT_HDR + 2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        buf[OUT_HDR + 2..OUT_HDR + 4].copy_from_slice(&5004u16.to_be_bytes());
        buf[OUT_HDR + 4..OUT_HDR + 8].copy_from_slice(&[127, 0, 0, 1]);
        buf[PAYLOAD_OFF..].copy_from_slice(b"hello");
        let d = parse_recvmsg_out(&buf).unwrap();
        assert_eq!(d.data, b"hello");
        assert_eq!(d.src, Some("127.0.0.1:5004".parse().unwrap()));
        assert!(!d.truncated);
        // Payload length beyond the buffer: cut, and reported truncated.
        buf[8..12].copy_from_slice(&9000u32.to_ne_bytes());
        assert!(parse_recvmsg_out(&buf).unwrap().truncated);
        for n in 0..buf.len() {
            let _ = parse_recvmsg_out(&buf[..n]);
        }
        assert_eq!(parse_sockaddr(&[0xff; 28]), None);
    }

    #[test]
    fn a_ring_passes_its_self_test_when_io_uring_is_there() {
        match Uring::new(
            UringSizes {
                sq: 64,
                cq: 256,
                bufs: 64,
            },
            0,
        ) {
            Ok(u) => assert!(u.describe().contains("bufs=64")),
            Err(e) => eprintln!("io_uring unavailable here: {e}"),
        }
    }
}
