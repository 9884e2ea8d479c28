//! The transaction layer (RFC 3261 §17, RFC 6026): the four sans-IO machines driven by any
//! sequence of inputs — responses (client) or the TU's responses (server) with any status
//! code, retransmitted requests, ACKs, transport errors, timers fired early, on time or late —
//! on a simulated clock.
//!
//! Properties checked:
//! - nothing panics, whatever the order of inputs;
//! - `Terminated` is reported exactly when the machine reaches it, once, and a terminated
//!   machine stays terminated, silent (no transmission, no event) and without timers;
//! - events fit the machine: `Response` only from client machines, with the status handed
//!   in; `Ack` only from a server INVITE;
//! - a status code outside 100–699 is refused and changes nothing;
//! - left to its timers, a machine that is not waiting for its TU or its peer's final
//!   response terminates within a bounded number of timer firings and of simulated time
//!   (no busy loop of timers due at the same instant, no machine that lingers forever).
//!
//! Input: one octet choosing the machine, the transport and T1 (then T2 = 8 × T1,
//! T4 = 10 × T1), then records of 3 octets `op | arg (2)`.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sip_core::transaction::{
    Bytes, ClientInviteState, ClientInviteTransaction, ClientNonInviteTransaction,
    ServerInviteState, ServerInviteTransaction, ServerNonInviteState, ServerNonInviteTransaction,
    TimerConfig, Transaction, TxEvent,
};

enum Machine {
    ClientInvite(ClientInviteTransaction),
    ClientNonInvite(ClientNonInviteTransaction),
    ServerInvite(ServerInviteTransaction),
    ServerNonInvite(ServerNonInviteTransaction),
}

impl Machine {
    fn is_client(&self) -> bool {
        matches!(self, Machine::ClientInvite(_) | Machine::ClientNonInvite(_))
    }

    /// The driving interface the four machines share (the endpoint drives them the same way).
    fn driven(&mut self) -> &mut dyn Transaction {
        match self {
            Machine::ClientInvite(t) => t,
            Machine::ClientNonInvite(t) => t,
            Machine::ServerInvite(t) => t,
            Machine::ServerNonInvite(t) => t,
        }
    }

    /// Whether the machine is waiting for something only its TU or peer can bring (a final
    /// response): its timers alone need not end it.
    fn waits_for_others(&self) -> bool {
        match self {
            Machine::ClientInvite(t) => t.state() == ClientInviteState::Proceeding,
            Machine::ClientNonInvite(_) => false, // Timer F ends it
            Machine::ServerInvite(t) => t.state() == ServerInviteState::Proceeding,
            Machine::ServerNonInvite(t) => matches!(
                t.state(),
                ServerNonInviteState::Trying | ServerNonInviteState::Proceeding
            ),
        }
    }

    fn state_name(&self) -> &'static str {
        match self {
            Machine::ClientInvite(t) => t.state().name(),
            Machine::ClientNonInvite(t) => t.state().name(),
            Machine::ServerInvite(t) => t.state().name(),
            Machine::ServerNonInvite(t) => t.state().name(),
        }
    }

    /// A response from the peer (client) or from the TU (server).
    fn response(&mut self, status: u16, now: Instant) -> bool {
        let ack = || Bytes::from_static(b"ACK sip:x SIP/2.0\r\n\r\n");
        let resp = Bytes::from_static(b"SIP/2.0 100 x\r\n\r\n");
        match self {
            Machine::ClientInvite(t) => t.handle_response(status, now, ack).is_ok(),
            Machine::ClientNonInvite(t) => t.handle_response(status, now).is_ok(),
            Machine::ServerInvite(t) => t.send_response(status, resp, now).is_ok(),
            Machine::ServerNonInvite(t) => t.send_response(status, resp, now).is_ok(),
        }
    }

    fn retransmitted_request(&mut self, now: Instant) {
        match self {
            Machine::ServerInvite(t) => t.handle_request_retransmit(now),
            Machine::ServerNonInvite(t) => t.handle_request_retransmit(now),
            _ => {}
        }
    }

    fn ack(&mut self, now: Instant) {
        if let Machine::ServerInvite(t) = self {
            t.handle_ack(now);
        }
    }

    fn transport_error(&mut self, now: Instant) {
        match self {
            Machine::ClientInvite(t) => t.handle_transport_error(now),
            Machine::ClientNonInvite(t) => t.handle_transport_error(now),
            Machine::ServerInvite(t) => t.handle_transport_error(now),
            Machine::ServerNonInvite(t) => t.handle_transport_error(now),
        }
    }

    /// Drains what the machine wants sent and told; returns (transmissions, events).
    fn drain(&mut self) -> (usize, Vec<TxEvent>) {
        let t = self.driven();
        let mut sent = 0;
        while t.poll_transmit().is_some() {
            sent += 1;
            assert!(sent < 10_000, "endless transmissions");
        }
        let mut events = Vec::new();
        while let Some(e) = t.poll_event() {
            events.push(e);
            assert!(events.len() < 10_000, "endless events");
        }
        (sent, events)
    }
}

struct Checker {
    terminated_reported: bool,
}

impl Checker {
    /// Checks what one input produced.
    fn after(&mut self, m: &mut Machine, was_terminated: bool, status_in: Option<u16>) {
        let (sent, events) = m.drain();
        if was_terminated {
            assert!(m.driven().is_terminated(), "a terminated machine came back");
            assert_eq!(sent, 0, "a terminated machine transmitted");
            assert!(
                events.is_empty(),
                "a terminated machine reported {events:?}"
            );
            assert_eq!(
                m.driven().poll_timeout(),
                None,
                "a terminated machine keeps a timer"
            );
            return;
        }
        let terminations = events.iter().filter(|e| **e == TxEvent::Terminated).count();
        assert!(terminations <= 1, "Terminated reported twice: {events:?}");
        if terminations == 1 {
            assert!(!self.terminated_reported, "Terminated reported again");
            assert_eq!(
                events.last(),
                Some(&TxEvent::Terminated),
                "events after Terminated"
            );
            self.terminated_reported = true;
        }
        assert_eq!(
            m.driven().is_terminated(),
            self.terminated_reported,
            "state {} but Terminated reported: {}",
            m.state_name(),
            self.terminated_reported
        );
        if m.driven().is_terminated() {
            assert_eq!(
                m.driven().poll_timeout(),
                None,
                "a terminated machine keeps a timer"
            );
        }
        for e in &events {
            match e {
                TxEvent::Response(s) => {
                    assert!(m.is_client(), "a server machine reported a response");
                    assert_eq!(Some(*s), status_in, "a response it was not given");
                }
                TxEvent::Ack => assert!(
                    matches!(m, Machine::ServerInvite(_)),
                    "ACK reported by a machine that takes none"
                ),
                _ => {}
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, mut ops)) = data.split_first() else {
        return;
    };
    let reliable = head & 4 != 0;
    let t1 = Duration::from_millis(1 + u64::from(head >> 3) * 20);
    let cfg = TimerConfig {
        t1,
        t2: t1 * 8,
        t4: t1 * 10,
    };
    let start = Instant::now();
    let mut now = start;
    let request = Bytes::from_static(b"INVITE sip:x SIP/2.0\r\n\r\n");
    let mut m = match head & 3 {
        0 => Machine::ClientInvite(ClientInviteTransaction::new(request, reliable, cfg, now)),
        1 => Machine::ClientNonInvite(ClientNonInviteTransaction::new(request, reliable, cfg, now)),
        2 => Machine::ServerInvite(ServerInviteTransaction::new(reliable, cfg, now)),
        _ => Machine::ServerNonInvite(ServerNonInviteTransaction::new(reliable, cfg, now)),
    };
    let mut check = Checker {
        terminated_reported: false,
    };
    check.after(&mut m, false, None);

    while let [op, a, b, rest @ ..] = ops {
        ops = rest;
        let arg = u16::from_be_bytes([*a, *b]);
        let was = m.driven().is_terminated();
        let mut status_in = None;
        match op % 7 {
            // Time passes (up to ~65 s) and whatever is due fires.
            0 => {
                now += Duration::from_millis(u64::from(arg));
                m.driven().handle_timeout(now);
            }
            // The next timer fires on time.
            1 => {
                if let Some(t) = m.driven().poll_timeout() {
                    now = now.max(t);
                    m.driven().handle_timeout(now);
                }
            }
            // A response with any status, or a plausible one.
            2 | 3 => {
                let status = if op % 7 == 2 { arg } else { 100 + arg % 600 };
                let before = m.state_name();
                let accepted = m.response(status, now);
                if !(100..=699).contains(&status) {
                    assert!(!accepted, "status {status} accepted");
                    assert_eq!(m.state_name(), before, "a refused status changed the state");
                }
                status_in = Some(status);
            }
            4 => m.retransmitted_request(now),
            5 => m.ack(now),
            _ => m.transport_error(now),
        }
        check.after(&mut m, was, status_in);
    }

    // Left alone, a machine that waits for nobody must end, in bounded time and steps.
    if !m.waits_for_others() {
        let from = now;
        let bound = cfg.timeout() * 2 + Duration::from_secs(32) + cfg.t4 + cfg.t2;
        let mut steps = 0;
        while let Some(t) = m.driven().poll_timeout() {
            steps += 1;
            assert!(
                steps <= 1_000,
                "timers keep firing in state {}",
                m.state_name()
            );
            now = now.max(t);
            assert!(
                now - from <= bound,
                "still {} after {:?} (T1 {:?}, reliable {reliable})",
                m.state_name(),
                now - from,
                t1
            );
            let was = m.driven().is_terminated();
            m.driven().handle_timeout(now);
            check.after(&mut m, was, None);
        }
        assert!(
            m.driven().is_terminated(),
            "no timer left but not terminated: {} (reliable {reliable})",
            m.state_name()
        );
    }
});
