//! RFC 3261 §17 transactions as sans-IO state machines.
//!
//! A SIP transaction is a request and the responses to it, made reliable over
//! an unreliable transport by retransmission timers. This module holds the four
//! machines RFC 3261 defines, as amended by RFC 6026:
//!
//! | role   | INVITE                                          | non-INVITE                                           |
//! |--------|-------------------------------------------------|------------------------------------------------------|
//! | client | [`ClientInviteTransaction`] (§17.1.1, Figure 5) | [`ClientNonInviteTransaction`] (§17.1.2, Figure 6)   |
//! | server | [`ServerInviteTransaction`] (§17.2.1, Figure 7) | [`ServerNonInviteTransaction`] (§17.2.2, Figure 8)   |
//!
//! # What this module does, and what it leaves to the layer above
//!
//! The machines decide **what to send and when**, nothing else. They never see
//! a parsed SIP message, never touch a socket and never read the clock:
//!
//! - Messages are opaque encoded bytes ([`Bytes`]). The layer above (the
//!   transaction layer and its tokio driver) parses what arrives, matches it to
//!   a transaction (§17.1.3 for responses, §17.2.3 for requests) and hands the
//!   machine only the facts it needs: a response's status code, "the request
//!   was retransmitted", "an ACK arrived", "the transport failed".
//! - The layer above builds the ACK for a non-2xx final response (§17.1.1.3);
//!   the client INVITE machine asks for it through a closure only when it
//!   actually needs to send one, and caches it for retransmitted finals.
//! - Every entry point takes `now: Instant`. Time only moves when the caller
//!   says so, which lets tests jump a virtual clock from one deadline to the
//!   next instead of sleeping.
//!
//! # Driving a machine (quinn-proto style)
//!
//! After every input (`new`, `handle_response`, `send_response`,
//! `handle_request_retransmit`, `handle_ack`, `handle_transport_error`,
//! `handle_timeout`) the driver drains the outputs:
//!
//! 1. `poll_transmit()` until `None` — each [`Bytes`] is sent to the peer of
//!    the transaction, in order;
//! 2. `poll_event()` until `None` — each [`TxEvent`] goes to the transaction
//!    user (TU);
//! 3. `poll_timeout()` — re-arms the driver's single sleep; when it expires
//!    the driver calls `handle_timeout(now)`, which fires every timer whose
//!    deadline is at or before `now`.
//!
//! Once `is_terminated()` the machine produces nothing more and the driver
//! drops it; [`TxEvent::Terminated`] is emitted exactly once to say so.
//!
//! # Timers
//!
//! Timer values come from RFC 3261 Table 4 (and RFC 6026 §8.11 for L and M),
//! all derived from [`TimerConfig`]'s T1, T2 and T4. Retransmission timers
//! (A, E, G) only run over unreliable transports; the "linger" timers D, I, J
//! and K are zero over reliable transports, in which case the machine moves to
//! `Terminated` at once instead of arming them.
//!
//! # What this module does not do
//!
//! Transaction matching and the transaction table, ACK/CANCEL construction,
//! Timer C (a proxy timer) and the "send 100 Trying if the TU won't within
//! 200 ms" decision of §17.2.1: the server INVITE driver simply sends the
//! `100 Trying` itself through
//! [`ServerInviteTransaction::send_response`] as soon as it creates the
//! transaction.

use std::time::Duration;

pub use bytes::Bytes;

pub mod client_invite;
pub mod client_non_invite;
pub mod server_invite;
pub mod server_non_invite;
mod timers;

#[cfg(test)]
mod tests;

pub use client_invite::{ClientInviteState, ClientInviteTransaction};
pub use client_non_invite::{ClientNonInviteState, ClientNonInviteTransaction};
pub use server_invite::{ServerInviteState, ServerInviteTransaction};
pub use server_non_invite::{ServerNonInviteState, ServerNonInviteTransaction};

/// The driving side the four machines share (quinn-proto style polling), so that a driver
/// can hold any of them behind one interface.
pub trait Transaction {
    /// The next message to send to the peer, if any.
    fn poll_transmit(&mut self) -> Option<Bytes>;
    /// The next event for the TU, if any.
    fn poll_event(&mut self) -> Option<TxEvent>;
    /// The earliest armed timer deadline.
    fn poll_timeout(&self) -> Option<std::time::Instant>;
    /// Fires every timer whose deadline is at or before `now`.
    fn handle_timeout(&mut self, now: std::time::Instant);
    /// `true` once in `Terminated`.
    fn is_terminated(&self) -> bool;
}

macro_rules! transaction_impl {
    ($($t:ty),*) => {$(
        impl Transaction for $t {
            fn poll_transmit(&mut self) -> Option<Bytes> {
                <$t>::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<TxEvent> {
                <$t>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<std::time::Instant> {
                <$t>::poll_timeout(self)
            }
            fn handle_timeout(&mut self, now: std::time::Instant) {
                <$t>::handle_timeout(self, now)
            }
            fn is_terminated(&self) -> bool {
                <$t>::is_terminated(self)
            }
        }
    )*};
}

transaction_impl!(
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction
);

/// The base timer values of RFC 3261 §17.1.1.1 / Table 4.
///
/// Every transaction timer is derived from these three values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// T1, the RTT estimate: 500 ms by default. Initial retransmission
    /// interval, and `64*T1` is the transaction timeout (Timers B, F, H, L, M).
    pub t1: Duration,
    /// T2, the maximum retransmit interval for non-INVITE requests and INVITE
    /// responses: 4 s by default.
    pub t2: Duration,
    /// T4, the maximum duration a message will remain in the network: 5 s by
    /// default (Timers I and K over unreliable transports).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// Checks the values are usable: T1 must be non-zero (a zero T1 would
    /// retransmit in a busy loop) and T2 must not be smaller than T1.
    pub fn validate(&self) -> Result<(), TransactionError> {
        if self.t1.is_zero() {
            return Err(TransactionError::ZeroT1);
        }
        if self.t2 < self.t1 {
            return Err(TransactionError::T2BelowT1 {
                t1: self.t1,
                t2: self.t2,
            });
        }
        Ok(())
    }

    /// `64*T1`: the value of Timers B, F, H, J (unreliable), L and M.
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// How long an INVITE server transaction waits for the TU before it sends
    /// `100 Trying` itself (§17.2.1: "unless it knows that the TU will generate
    /// a provisional or final response within 200 ms"): 200 ms, or `T1/2` when
    /// that is shorter, so the 100 always leaves before the client's first
    /// retransmission at T1. A TU that refuses at once sends only its refusal.
    pub fn trying(&self) -> Duration {
        Duration::from_millis(200).min(self.t1 / 2)
    }

    /// Timer D over an unreliable transport: "> 32 s" (Table 4). It is kept at
    /// least `64*T1` so it always outlasts the server's Timer H, during which
    /// the peer may still retransmit its final response.
    pub fn timer_d(&self) -> Duration {
        Duration::from_secs(32).max(self.timeout())
    }
}

/// The transaction timers, named as RFC 3261 §17 (A–K) and RFC 6026 §8.11
/// (L, M) name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// INVITE request retransmit interval, UDP only. Starts at T1, doubles.
    A,
    /// INVITE transaction timeout, `64*T1`.
    B,
    /// Wait time for response retransmits in the client INVITE `Completed`
    /// state: 32 s for UDP, 0 for reliable transports.
    D,
    /// Non-INVITE request retransmit interval, UDP only. T1 doubling up to T2.
    E,
    /// Non-INVITE transaction timeout, `64*T1`.
    F,
    /// INVITE final (non-2xx) response retransmit interval, UDP only. T1
    /// doubling up to T2.
    G,
    /// Wait time for ACK receipt in the server INVITE `Completed` state, `64*T1`.
    H,
    /// Wait time for ACK retransmits in the server INVITE `Confirmed` state: T4
    /// for UDP, 0 for reliable transports.
    I,
    /// Wait time for non-INVITE request retransmits in the server `Completed`
    /// state: `64*T1` for UDP, 0 for reliable transports.
    J,
    /// Wait time for non-INVITE response retransmits in the client `Completed`
    /// state: T4 for UDP, 0 for reliable transports.
    K,
    /// Wait time for accepted INVITE request retransmits in the server
    /// `Accepted` state (RFC 6026), `64*T1`.
    L,
    /// Wait time for retransmitted 2xx responses in the client `Accepted`
    /// state (RFC 6026), `64*T1`.
    M,
}

impl Timer {
    /// Every timer, in declaration order.
    pub const ALL: [Timer; 12] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::K,
        Timer::L,
        Timer::M,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Something a transaction tells its transaction user (TU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEvent {
    /// Client transactions: pass the response just handed to
    /// `handle_response` (with this status code) up to the TU. Responses the
    /// transaction absorbs (retransmitted finals, stray provisionals) produce
    /// no event.
    Response(u16),
    /// Server INVITE transaction in `Accepted`: an ACK for the 2xx arrived; it
    /// belongs to the dialog, pass it to the TU (RFC 6026 §7.1).
    Ack,
    /// A transaction timeout: Timer B or F (no final response) or Timer H (no
    /// ACK for a non-2xx final response).
    Timeout,
    /// The transport reported a fatal error while the transaction depended on
    /// it.
    TransportError,
    /// The transaction reached `Terminated`; the driver drops it. Emitted once,
    /// after any other event caused by the same input.
    Terminated,
}

/// Errors in using a transaction machine. They report misuse by the layer
/// above (or a status code the parser should have refused); the machine's
/// state is unchanged when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// A status code outside 100–699 (RFC 3261 §7.2 / §21).
    #[error("status code {0} is outside 100-699")]
    InvalidStatus(u16),
    /// The TU passed a response the server transaction cannot send in its
    /// current state (e.g. a second final response).
    #[error("cannot send a {status} response in the {state} state")]
    ResponseNotAllowed {
        /// The status code the TU tried to send.
        status: u16,
        /// The name of the state the transaction is in.
        state: &'static str,
    },
    /// [`TimerConfig::t1`] is zero.
    #[error("timer T1 must be greater than zero")]
    ZeroT1,
    /// [`TimerConfig::t2`] is smaller than [`TimerConfig::t1`].
    #[error("timer T2 ({t2:?}) must not be smaller than T1 ({t1:?})")]
    T2BelowT1 {
        /// The configured T1.
        t1: Duration,
        /// The configured T2.
        t2: Duration,
    },
}

/// The class of a response status code (RFC 3261 §21), as far as the
/// transaction machines care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 100–199.
    Provisional,
    /// 200–299.
    Success,
    /// 300–699.
    Failure,
}

impl StatusClass {
    pub(crate) fn of(status: u16) -> Result<Self, TransactionError> {
        match status {
            100..=199 => Ok(Self::Provisional),
            200..=299 => Ok(Self::Success),
            300..=699 => Ok(Self::Failure),
            _ => Err(TransactionError::InvalidStatus(status)),
        }
    }
}
