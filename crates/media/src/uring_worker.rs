//! The io_uring forwarding loop: every leg socket has a multishot `recvmsg` armed into the
//! thread's provided buffers; each datagram is judged in place and sent out of the other
//! leg's socket from the same buffer; one `io_uring_enter` per iteration submits every send
//! queued by the iteration (across all sockets and sessions) and waits for what comes next.
//!
//! ```text
//!  loop {
//!      io_uring_enter(submit sends, wait: sends in flight + batch, until the next tick)
//!      sends completed -> count each on its outgoing leg, recycle(b)
//!      control eventfd  -> take the wake-up; apply the control messages (sessions added,
//!                          peers set, sessions closed: their receives cancelled by user data)
//!      datagrams reaped -> latch check, counters, RFC 3550 stats -> SEND(b) or recycle(b)
//!          end of a multishot recv (buffers ran out, error) -> arm it again
//!      publish the counters of the sessions that moved; every tick: media time-outs
//!  }
//! ```
//!
//! Control comes before the datagrams reaped in the same wait, as in the epoll loop: a
//! session's first packet is judged by the set-up that came with it.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::sys::uring::{Completion, Uring, KIND_MASK, KIND_RECV, KIND_SEND, KIND_WAKE};
use crate::worker::{tunables, Core, Route, SessionState, Watch, GEN_MASK};

/// How often the loop reads its control queue while messages keep coming. A wake-up costs
/// its sender an `eventfd` write (the kernel waking this thread) and this thread a return
/// from its wait; at a thousand calls a second each of a call's five or so messages (its
/// session, peers, sources, start, close) would wake it on its own. After a wake-up the
/// wake-up flag stays set, so senders only queue, and the loop reads the queue at least this
/// often; after one quiet period it clears the flag and sleeps until the next wake-up. A
/// message waits at most this long (its datagrams never: a datagram's completion wakes the
/// loop, which reads the queue before it judges them).
const CONTROL_POLL: Duration = Duration::from_millis(1);

/// `user_data` of a multishot receive: kind, slot generation, slot and socket token.
fn recv_user_data(slot: usize, gen: u32, token: u64) -> u64 {
    KIND_RECV | (u64::from(gen & GEN_MASK) << 32) | ((slot as u64) << 2) | (token & 3)
}

/// Send tag: which session (slot, generation), outgoing leg and route a buffer's send is for.
/// Bits 0..32 slot, 32..61 generation, 61 STUN, 62 outgoing leg, 63 RTCP.
fn send_tag(slot: usize, gen: u32, out_leg: usize, route: Route) -> u64 {
    (slot as u64 & 0xffff_ffff)
        | (u64::from(gen & GEN_MASK) << 32)
        | (u64::from(route.stun) << 61)
        | ((out_leg as u64 & 1) << 62)
        | (u64::from(route.rtcp) << 63)
}

fn untag(tag: u64) -> (usize, u32, usize, Route) {
    (
        (tag & 0xffff_ffff) as usize,
        ((tag >> 32) as u32) & GEN_MASK,
        ((tag >> 62) & 1) as usize,
        Route {
            rtcp: (tag >> 63) & 1 == 1,
            stun: (tag >> 61) & 1 == 1,
        },
    )
}

struct UringWatch<'a> {
    ring: &'a mut Uring,
    /// Completions reaped while closing a session, for the loop to handle next.
    stash: &'a mut Vec<Completion>,
    /// Completions reaped before the control messages were applied and not yet handled:
    /// a closing session's last ones may be among them.
    reaped: &'a [Completion],
}

impl Watch for UringWatch<'_> {
    fn watch(&mut self, slot: usize, gen: u32, s: &SessionState) -> std::io::Result<()> {
        for (fd, t) in s.fds() {
            self.ring.arm_recv(fd, recv_user_data(slot, gen, t))?;
        }
        Ok(())
    }

    /// Cancels the session's requests and waits (a bounded while) for the last completion
    /// of each: a request holds its socket open until then, and the port must be free when
    /// the session is closed. Other completions reaped meanwhile are kept for the loop.
    fn unwatch(&mut self, slot: usize, gen: u32, fds: [(RawFd, u64); 4], sends: u32) {
        // The receive requests by their user data (found at once); a send still waiting for
        // room in a socket's buffer (rare: UDP sends complete when submitted) by its socket,
        // after a first look.
        self.ring
            .cancel_user_data(fds.iter().map(|&(_, t)| recv_user_data(slot, gen, t)));
        let mut recvs_open = fds.len();
        let mut sends_open = sends;
        let mut seen = self.stash.len();
        // Those already reaped count: they will not come again.
        for c in self.reaped {
            count_last(c, self.ring, slot, gen, &mut recvs_open, &mut sends_open);
        }
        for round in 0..200 {
            if round == 1 && sends_open > 0 {
                for (fd, _) in fds {
                    self.ring.cancel_fd(fd);
                }
            }
            if round > 0 {
                let _ = self.ring.wait(1, Duration::from_millis(1));
            }
            self.ring.reap(self.stash);
            for c in &self.stash[seen..] {
                count_last(c, self.ring, slot, gen, &mut recvs_open, &mut sends_open);
            }
            seen = self.stash.len();
            if recvs_open == 0 && sends_open == 0 {
                return;
            }
        }
        debug!(
            recvs_open,
            sends_open, "io_uring: requests of a closed session still open"
        );
    }
}

/// Counts `c` if it is the last completion of one of the session's receive requests or one
/// of its sends.
fn count_last(
    c: &Completion,
    ring: &Uring,
    slot: usize,
    gen: u32,
    recvs_open: &mut usize,
    sends_open: &mut u32,
) {
    match c.user_data & KIND_MASK {
        KIND_RECV if !c.more() => {
            let (cs, cg) = (
                ((c.user_data & 0xffff_ffff) >> 2) as usize,
                (c.user_data >> 32) as u32 & GEN_MASK,
            );
            if (cs, cg) == (slot, gen & GEN_MASK) {
                *recvs_open = recvs_open.saturating_sub(1);
            }
        }
        KIND_SEND => {
            if let Some((_, tag)) = ring.send_completed(*c) {
                let (ts, tg, _, _) = untag(tag);
                if (ts, tg) == (slot, gen & GEN_MASK) {
                    *sends_open = sends_open.saturating_sub(1);
                }
            }
        }
        _ => {}
    }
}

/// Runs the forwarding loop until shutdown.
pub(crate) fn run(mut core: Core, mut ring: Uring) {
    let t = tunables();
    if let Err(e) = ring.arm_poll(core.wake.raw(), KIND_WAKE) {
        warn!(error = %e, "io_uring: cannot watch the control eventfd; forwarding thread stops");
        return;
    }
    let mut done: Vec<Completion> = Vec::with_capacity(32 * 1024);
    let mut stash: Vec<Completion> = Vec::with_capacity(1024);
    let mut rearm: Vec<u64> = Vec::with_capacity(1024);
    // Parked sessions to close after this iteration's datagrams, and why.
    let mut discard: Vec<(usize, &'static str)> = Vec::new();
    let mut dirty: Vec<usize> = Vec::with_capacity(1024);
    let mut in_flight: usize = 0;
    // Reading the control queue on a clock instead of being woken for each message.
    let mut polling = false;
    let mut last_control = Instant::now();
    loop {
        let timeout = core
            .wait_until()
            .saturating_duration_since(Instant::now())
            .min(if polling {
                CONTROL_POLL
            } else {
                Duration::from_secs(1)
            });
        // Wake when this iteration's sends have completed and `batch` more completions
        // (datagrams, mostly) are there, or at the next tick.
        let want = (in_flight + t.batch).min(16 * 1024);
        // Completions reaped while a session was closed are handled without waiting.
        let (want, timeout) = if stash.is_empty() {
            (want, timeout)
        } else {
            (0, Duration::ZERO)
        };
        if let Err(e) = ring.wait(want, timeout) {
            warn!(error = %e, "io_uring_enter failed; forwarding thread stops");
            break;
        }
        let now = Instant::now();
        done.append(&mut stash);
        ring.reap(&mut done);
        // Sends that completed are counted first (a session closed below reports them), then
        // the control messages, as the epoll loop does, before the datagrams: a datagram
        // reaped in the same wait as its session's set-up (its peer, its allowed sources) is
        // judged by it. The wake-up is taken before the queue is read, so a message queued
        // after the read wakes the next wait.
        let mut woken = false;
        done.retain(|&c| match c.user_data & KIND_MASK {
            KIND_SEND => {
                in_flight = in_flight.saturating_sub(1);
                on_sent(&mut core, &mut ring, c, &mut dirty);
                false
            }
            KIND_WAKE => {
                woken = true;
                if !c.more() && ring.arm_poll(core.wake.raw(), KIND_WAKE).is_err() {
                    warn!("io_uring: cannot re-arm the control eventfd poll");
                }
                false
            }
            _ => true,
        });
        if woken {
            // The flag stays set: the queue is read at least every CONTROL_POLL from now on.
            core.wake.take();
            polling = true;
        }
        let mut io = UringWatch {
            ring: &mut ring,
            stash: &mut stash,
            reaped: &done,
        };
        let Some(applied) = core.apply_control(now, &mut io) else {
            break;
        };
        if applied > 0 {
            last_control = now;
        } else if polling && now.duration_since(last_control) >= CONTROL_POLL {
            // A quiet while: back to wake-ups. Messages queued before the flag was cleared
            // did not write; the read after the clear takes them.
            polling = false;
            core.wake.drain();
            if core.apply_control(now, &mut io).is_none() {
                break;
            }
        }
        for c in done.drain(..) {
            if c.user_data & KIND_MASK == KIND_RECV {
                in_flight += usize::from(on_recv(
                    &mut core,
                    &mut ring,
                    c,
                    now,
                    &mut rearm,
                    &mut dirty,
                    &mut discard,
                ));
            }
        }
        ring.commit_buffers();
        for ud in rearm.drain(..) {
            let slot = ((ud & 0xffff_ffff) >> 2) as usize;
            let gen = ((ud >> 32) as u32) & GEN_MASK;
            let (fd, parked) = match core.session(slot, gen) {
                Some(s) => (Some(s.fd(ud & 3)), false),
                None => (core.parked_fd(slot, gen, ud & 3), true),
            };
            if let Some(fd) = fd {
                if let Err(e) = ring.arm_recv(fd, ud) {
                    debug!(error = %e, "io_uring: re-arming a receive failed");
                    if parked {
                        discard.push((slot, "its receive could not be armed again"));
                    }
                }
            }
        }
        for (slot, why) in discard.drain(..) {
            core.discard_parked(
                slot,
                &mut UringWatch {
                    ring: &mut ring,
                    stash: &mut stash,
                    reaped: &[],
                },
                why,
            );
        }
        for slot in dirty.drain(..) {
            if let Some(Some(s)) = core.sessions.get_mut(slot) {
                if s.dirty {
                    s.publish(core.params.epoch);
                }
            }
        }
        // (No clock read when nothing plays: the forwarding loop pays nothing for prompts.)
        if core.players > 0 {
            core.play_due(Instant::now());
        }
        core.tick(now);
        core.expire_parked(
            now,
            &mut UringWatch {
                ring: &mut ring,
                stash: &mut stash,
                reaped: &[],
            },
        );
    }
    core.close_all(&mut UringWatch {
        ring: &mut ring,
        stash: &mut stash,
        reaped: &[],
    });
}

fn on_recv(
    core: &mut Core,
    ring: &mut Uring,
    c: Completion,
    now: Instant,
    rearm: &mut Vec<u64>,
    dirty: &mut Vec<usize>,
    discard: &mut Vec<(usize, &'static str)>,
) -> bool {
    let slot = ((c.user_data & 0xffff_ffff) >> 2) as usize;
    let gen = ((c.user_data >> 32) as u32) & GEN_MASK;
    let token = c.user_data & 3;
    let bid = c.buffer();
    if !c.more() && c.result != -libc::ECANCELED {
        // The multishot receive ended (buffers ran out, or an error): arm it again after
        // this iteration's buffers are back.
        rearm.push(c.user_data);
    }
    let Some(bid) = bid else {
        return false;
    };
    if core.session(slot, gen).is_none() {
        ring.recycle(bid);
        // A parked session's datagram (or a closed one's): dropped; a parked one's rest
        // starts again, and one heard too late is closed after this iteration.
        if core.heard_parked(slot, gen, now) == Some(true) {
            discard.push((slot, "heard too late"));
        }
        return false;
    }
    let Core {
        sessions, params, ..
    } = core;
    let Some(Some(s)) = sessions.get_mut(slot) else {
        return false;
    };
    let in_leg = ((token >> 1) & 1) as usize;
    let route = match ring.datagram(bid, c.result) {
        Some(d) => s
            .on_datagram(
                in_leg,
                token & 1 == 1,
                d.data,
                d.src,
                d.truncated,
                now,
                params,
            )
            .map(|r| (r, d.data.len() as u32)),
        None => None,
    };
    if !s.dirty {
        s.dirty = true;
        dirty.push(slot);
    }
    let Some((route, len)) = route else {
        ring.recycle(bid);
        return false;
    };
    let out_leg = 1 - in_leg;
    let (fd, dest) = s.legs[out_leg].route(route.rtcp);
    let Some(dest) = dest.copied() else {
        ring.recycle(bid);
        return false;
    };
    let tag = send_tag(slot, gen, out_leg, route);
    if ring
        .send(fd, bid, len, &dest, KIND_SEND | u64::from(bid), tag)
        .is_err()
    {
        s.legs[in_leg].tally.not_forwarded += u64::from(!route.stun);
        ring.recycle(bid);
        return false;
    }
    s.sends_in_flight += 1;
    true
}

fn on_sent(core: &mut Core, ring: &mut Uring, c: Completion, dirty: &mut Vec<usize>) {
    let Some((bid, tag)) = ring.send_completed(c) else {
        return;
    };
    let bytes = ring.send_len(bid);
    ring.recycle(bid);
    let (slot, gen, out_leg, route) = untag(tag);
    let Some(s) = core.session(slot, gen) else {
        return;
    };
    s.sends_in_flight = s.sends_in_flight.saturating_sub(1);
    if c.result >= 0 {
        s.legs[out_leg].count_tx(1, u64::from(bytes), route);
    } else if !route.stun {
        s.legs[1 - out_leg].tally.not_forwarded += 1;
    }
    if !s.dirty {
        s.dirty = true;
        dirty.push(slot);
    }
}
