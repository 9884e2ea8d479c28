//! The INVITE server transaction: RFC 3261 §17.2.1 as updated by RFC 6026 §7.1.
//!
//! The transaction is created when a new INVITE arrives; the layer above
//! passes the INVITE to the TU. **The driver sends the `100 Trying` itself**
//! when the TU has not answered within [`TimerConfig::trying`] (200 ms, or
//! `T1/2` if shorter), by calling [`ServerInviteTransaction::send_response`]
//! with status 100 and the encoded response: §17.2.1 asks for one unless the
//! TU is known to answer within 200 ms. A TU that refuses at once (often
//! statelessly, §8.2.7, without this transaction at all) so sends one message,
//! not two. Every later response comes from the TU through the same call.
//!
//! - A retransmitted INVITE re-sends the last response (provisional in
//!   `Proceeding`, final in `Completed`) and is not passed to the TU. In
//!   `Accepted` it is absorbed silently: the TU retransmits the 2xx itself
//!   (§13.3.1.4).
//! - A 300–699 final is retransmitted on Timer G (UDP only, T1 doubling up to
//!   T2) until the ACK arrives; Timer H gives up waiting for it.
//! - A 2xx moves to `Accepted` (RFC 6026), where 2xx retransmissions from the
//!   TU pass through and ACKs go up to the TU; Timer L ends it.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::{Outputs, Timers};
use super::{StatusClass, Timer, TimerConfig, TransactionError, TxEvent};

/// The states of the INVITE server transaction.
///
/// RFC 6026 Figure 7, which replaces RFC 3261 Figure 7 (adding `Accepted`,
/// Timer L, and keeping the transaction alive on transport errors):
///
/// ```text
///                                    |INVITE
///                                    |pass INV to TU
///                 INVITE             V send 100 if TU won't in 200 ms
///                 send response+------------+
///                     +--------|            |--------+ 101-199 from TU
///                     |        |            |        | send response
///                     +------->|            |<-------+
///                              | Proceeding |
///                              |            |--------+ Transport Err.
///                              |            |        | Inform TU
///                              |            |<-------+
///                              +------------+
///                 300-699 from TU |    |2xx from TU
///                 send response   |    |send response
///                  +--------------+    +------------+
///                  |                                |
/// INVITE           V          Timer G fires         |
/// send response +-----------+ send response         |
///      +--------|           |--------+              |
///      |        |           |        |              |
///      +------->| Completed |<-------+      INVITE  |  Transport Err.
///               |           |               -       |  Inform TU
///      +--------|           |----+          +-----+ |  +---+
///      |        +-----------+    | ACK      |     | v  |   v
///      |          ^   |          | -        |  +------------+
///      |          |   |          |          |  |            |---+ ACK
///      +----------+   |          |          +->|  Accepted  |   | to TU
///      Transport Err. |          |             |            |<--+
///      Inform TU      |          V             +------------+
///                     |      +-----------+        |  ^     |
///                     |      |           |        |  |     |
///                     |      | Confirmed |        |  +-----+
///                     |      |           |        |  2xx from TU
///       Timer H fires |      +-----------+        |  send response
///       -             |          |                |
///                     |          | Timer I fires  |
///                     |          | -              | Timer L fires
///                     |          V                | -
///                     |        +------------+     |
///                     |        |            |<----+
///                     +------->| Terminated |
///                              |            |
///                              +------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// The INVITE was passed to the TU; provisional responses may be sent.
    Proceeding,
    /// A 2xx was sent (RFC 6026); 2xx retransmissions from the TU pass
    /// through and ACKs go to the TU until Timer L.
    Accepted,
    /// A 300–699 was sent; retransmitting it on Timer G until the ACK
    /// arrives or Timer H fires.
    Completed,
    /// The ACK for the 300–699 arrived; absorbing ACK retransmissions until
    /// Timer I.
    Confirmed,
    /// Done; the transaction is to be dropped.
    Terminated,
}

impl ServerInviteState {
    /// The state's name as RFC 3261 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Proceeding => "Proceeding",
            Self::Accepted => "Accepted",
            Self::Completed => "Completed",
            Self::Confirmed => "Confirmed",
            Self::Terminated => "Terminated",
        }
    }
}

/// An INVITE server transaction (RFC 3261 §17.2.1, RFC 6026 §7.1).
///
/// See the [module documentation](super) for how a driver uses it.
#[derive(Debug)]
pub struct ServerInviteTransaction {
    state: ServerInviteState,
    reliable: bool,
    cfg: TimerConfig,
    /// The most recent response from the TU, re-sent for retransmitted
    /// INVITEs and on Timer G.
    last_response: Option<Bytes>,
    /// The interval Timer G was last armed with.
    timer_g_interval: Duration,
    timers: Timers,
    out: Outputs,
}

impl ServerInviteTransaction {
    /// Creates the transaction in `Proceeding` for a new INVITE that arrived
    /// over a `reliable` (TCP, TLS, SCTP) or unreliable (UDP) transport. No
    /// timer runs in `Proceeding`; `now` is taken for uniformity with the
    /// other entry points.
    ///
    /// The driver then sends the `100 Trying` through [`Self::send_response`].
    pub fn new(reliable: bool, cfg: TimerConfig, _now: Instant) -> Self {
        Self {
            state: ServerInviteState::Proceeding,
            reliable,
            cfg,
            last_response: None,
            timer_g_interval: cfg.t1,
            timers: Timers::default(),
            out: Outputs::default(),
        }
    }

    /// Sends a response from the TU (or the driver's `100 Trying`).
    ///
    /// - 100–199 in `Proceeding`: sent, state unchanged.
    /// - 200–299 in `Proceeding`: sent, moves to `Accepted` and arms Timer L
    ///   (`64*T1`). In `Accepted`, a 2xx is the TU's retransmission and is
    ///   sent as is.
    /// - 300–699 in `Proceeding`: sent, moves to `Completed`, arms Timer H
    ///   (`64*T1`) and, over an unreliable transport, Timer G (T1).
    ///
    /// Anything else is refused with [`TransactionError::ResponseNotAllowed`]
    /// and nothing is sent.
    pub fn send_response(
        &mut self,
        status: u16,
        response: Bytes,
        now: Instant,
    ) -> Result<(), TransactionError> {
        let class = StatusClass::of(status)?;
        use ServerInviteState::*;
        match (self.state, class) {
            (Proceeding, StatusClass::Provisional) => {
                self.send(response);
            }
            (Proceeding, StatusClass::Success) => {
                self.send(response);
                self.set_state(Accepted);
                self.timers.set(Timer::L, now + self.cfg.timeout());
            }
            (Accepted, StatusClass::Success) => {
                self.send(response);
            }
            (Proceeding, StatusClass::Failure) => {
                self.send(response);
                self.set_state(Completed);
                if !self.reliable {
                    self.timer_g_interval = self.cfg.t1;
                    self.timers.set(Timer::G, now + self.cfg.t1);
                }
                self.timers.set(Timer::H, now + self.cfg.timeout());
            }
            (state, _) => {
                return Err(TransactionError::ResponseNotAllowed {
                    status,
                    state: state.name(),
                })
            }
        }
        Ok(())
    }

    /// A retransmission of the INVITE arrived (§17.2.1): re-sends the most
    /// recent response in `Proceeding` and `Completed`; absorbs it silently in
    /// `Accepted` and `Confirmed`. The INVITE is never passed to the TU again.
    pub fn handle_request_retransmit(&mut self, _now: Instant) {
        match self.state {
            ServerInviteState::Proceeding | ServerInviteState::Completed => {
                if let Some(response) = &self.last_response {
                    self.out.transmit(response.clone());
                }
            }
            ServerInviteState::Accepted
            | ServerInviteState::Confirmed
            | ServerInviteState::Terminated => {}
        }
    }

    /// An ACK matched to this transaction arrived.
    ///
    /// - In `Completed` (it ACKs our 300–699): moves to `Confirmed` and arms
    ///   Timer I (T4 over UDP; over a reliable transport Timer I is zero and
    ///   the transaction terminates at once).
    /// - In `Accepted` (it ACKs the 2xx): queues [`TxEvent::Ack`] — the ACK
    ///   belongs to the dialog, the TU takes it (RFC 6026 §7.1).
    /// - Otherwise it is absorbed.
    pub fn handle_ack(&mut self, now: Instant) {
        match self.state {
            ServerInviteState::Completed => {
                self.timers.stop(Timer::G);
                self.timers.stop(Timer::H);
                self.set_state(ServerInviteState::Confirmed);
                if self.reliable {
                    self.terminate();
                } else {
                    self.timers.set(Timer::I, now + self.cfg.t4);
                }
            }
            ServerInviteState::Accepted => self.out.event(TxEvent::Ack),
            ServerInviteState::Proceeding
            | ServerInviteState::Confirmed
            | ServerInviteState::Terminated => {}
        }
    }

    /// The transport failed to send a response. RFC 6026 Figure 7: the TU is
    /// informed and the state does not change — Timer H or L still ends the
    /// transaction, and in `Proceeding` the TU decides what to do.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            ServerInviteState::Proceeding
            | ServerInviteState::Accepted
            | ServerInviteState::Completed => self.out.event(TxEvent::TransportError),
            ServerInviteState::Confirmed | ServerInviteState::Terminated => {}
        }
    }

    /// Fires every timer whose deadline is at or before `now`, earliest first.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (deadline, timer) in self.timers.due(now) {
            if self.timers.take_if_due(timer, deadline) {
                self.on_timer(timer, now);
            }
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Instant) {
        match (timer, self.state) {
            (Timer::G, ServerInviteState::Completed) => {
                if let Some(response) = &self.last_response {
                    self.out.transmit(response.clone());
                }
                self.timer_g_interval = self.timer_g_interval.saturating_mul(2).min(self.cfg.t2);
                self.timers.set(Timer::G, now + self.timer_g_interval);
            }
            (Timer::H, ServerInviteState::Completed) => {
                // The ACK never came.
                self.out.event(TxEvent::Timeout);
                self.terminate();
            }
            (Timer::I, ServerInviteState::Confirmed) | (Timer::L, ServerInviteState::Accepted) => {
                self.terminate();
            }
            _ => {}
        }
    }

    /// The next message to send to the peer, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.poll_transmit()
    }

    /// The next event for the TU, if any.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.out.poll_event()
    }

    /// The earliest deadline among the armed timers; `None` when none is
    /// armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The deadline of one timer, if armed.
    pub fn timer(&self, timer: Timer) -> Option<Instant> {
        self.timers.get(timer)
    }

    /// The current state.
    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    /// `true` once in `Terminated`.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerInviteState::Terminated
    }

    fn send(&mut self, response: Bytes) {
        self.out.transmit(response.clone());
        self.last_response = Some(response);
    }

    fn set_state(&mut self, state: ServerInviteState) {
        tracing::trace!(
            from = self.state.name(),
            to = state.name(),
            "INVITE server transaction"
        );
        self.state = state;
    }

    fn terminate(&mut self) {
        if self.state == ServerInviteState::Terminated {
            return;
        }
        self.timers.stop_all();
        self.set_state(ServerInviteState::Terminated);
        self.out.event(TxEvent::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRYING: &[u8] = b"SIP/2.0 100 Trying\r\n\r\n";
    const RINGING: &[u8] = b"SIP/2.0 180 Ringing\r\n\r\n";
    const OK: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
    const BUSY: &[u8] = b"SIP/2.0 486 Busy Here\r\n\r\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn b(bytes: &'static [u8]) -> Bytes {
        Bytes::from_static(bytes)
    }

    fn new_tx(reliable: bool) -> (ServerInviteTransaction, Instant) {
        let t0 = Instant::now();
        let mut tx = ServerInviteTransaction::new(reliable, TimerConfig::default(), t0);
        tx.send_response(100, b(TRYING), t0).unwrap();
        (tx, t0)
    }

    fn transmits(tx: &mut ServerInviteTransaction) -> Vec<Bytes> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    fn events(tx: &mut ServerInviteTransaction) -> Vec<TxEvent> {
        std::iter::from_fn(|| tx.poll_event()).collect()
    }

    #[test]
    fn retransmitted_invite_resends_the_last_provisional() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTransaction::new(false, TimerConfig::default(), t0);
        // Before any response there is nothing to re-send.
        tx.handle_request_retransmit(t0);
        assert!(transmits(&mut tx).is_empty());

        tx.send_response(100, b(TRYING), t0).unwrap();
        assert_eq!(transmits(&mut tx), vec![b(TRYING)]);
        tx.handle_request_retransmit(t0 + ms(500));
        assert_eq!(transmits(&mut tx), vec![b(TRYING)]);
        tx.send_response(180, b(RINGING), t0 + ms(700)).unwrap();
        tx.handle_request_retransmit(t0 + ms(1500));
        assert_eq!(transmits(&mut tx), vec![b(RINGING), b(RINGING)]);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        assert!(events(&mut tx).is_empty());
        // No timer runs in Proceeding.
        assert_eq!(tx.poll_timeout(), None);
    }

    /// Timer G: 0.5, 1, 2, 4, 4, ... s intervals; Timer H at 32 s without an
    /// ACK.
    #[test]
    fn timer_g_doubles_up_to_t2_until_timer_h() {
        let (mut tx, t0) = new_tx(false);
        transmits(&mut tx);
        tx.send_response(486, b(BUSY), t0).unwrap();
        assert_eq!(tx.state(), ServerInviteState::Completed);
        assert_eq!(transmits(&mut tx), vec![b(BUSY)]);

        let mut sent_at = Vec::new();
        for _ in 0..100 {
            let Some(deadline) = tx.poll_timeout() else {
                break;
            };
            tx.handle_timeout(deadline);
            for bytes in transmits(&mut tx) {
                assert_eq!(bytes, b(BUSY));
                sent_at.push(deadline - t0);
            }
        }
        let expected: Vec<Duration> = [
            500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
        ]
        .into_iter()
        .map(ms)
        .collect();
        assert_eq!(sent_at, expected);
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn ack_confirms_then_timer_i_over_udp() {
        let (mut tx, t0) = new_tx(false);
        tx.send_response(486, b(BUSY), t0).unwrap();
        transmits(&mut tx);
        // The INVITE again while Completed: the final is re-sent.
        tx.handle_request_retransmit(t0 + ms(100));
        assert_eq!(transmits(&mut tx), vec![b(BUSY)]);

        tx.handle_ack(t0 + ms(600));
        assert_eq!(tx.state(), ServerInviteState::Confirmed);
        assert_eq!(tx.timer(Timer::G), None);
        assert_eq!(tx.timer(Timer::H), None);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(600) + ms(5000)));
        // ACK and INVITE retransmissions are absorbed in Confirmed.
        tx.handle_ack(t0 + ms(700));
        tx.handle_request_retransmit(t0 + ms(800));
        assert!(transmits(&mut tx).is_empty());
        assert!(
            events(&mut tx).is_empty(),
            "the ACK for a non-2xx is not the TU's"
        );

        tx.handle_timeout(t0 + ms(5599));
        assert_eq!(tx.state(), ServerInviteState::Confirmed);
        tx.handle_timeout(t0 + ms(5600));
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
    }

    #[test]
    fn reliable_transport_never_retransmits_and_timer_i_is_zero() {
        let (mut tx, t0) = new_tx(true);
        tx.send_response(603, b(BUSY), t0).unwrap();
        assert_eq!(tx.timer(Timer::G), None);
        // Timer H still runs: it bounds the wait for the ACK.
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        tx.handle_ack(t0 + ms(50));
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(transmits(&mut tx), vec![b(TRYING), b(BUSY)]);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_h_over_reliable() {
        let (mut tx, t0) = new_tx(true);
        tx.send_response(486, b(BUSY), t0).unwrap();
        tx.handle_timeout(t0 + ms(31_999));
        assert_eq!(tx.state(), ServerInviteState::Completed);
        tx.handle_timeout(t0 + ms(32_000));
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
        assert_eq!(transmits(&mut tx), vec![b(TRYING), b(BUSY)]);
    }

    #[test]
    fn two_xx_is_accepted_retransmissions_pass_through_ack_goes_up() {
        let (mut tx, t0) = new_tx(false);
        tx.send_response(180, b(RINGING), t0).unwrap();
        tx.send_response(200, b(OK), t0 + ms(1000)).unwrap();
        assert_eq!(tx.state(), ServerInviteState::Accepted);
        assert_eq!(transmits(&mut tx), vec![b(TRYING), b(RINGING), b(OK)]);

        // The TU retransmits its 2xx (§13.3.1.4): passes straight through.
        tx.send_response(200, b(OK), t0 + ms(1500)).unwrap();
        assert_eq!(transmits(&mut tx), vec![b(OK)]);
        // A retransmitted INVITE is absorbed silently.
        tx.handle_request_retransmit(t0 + ms(1600));
        assert!(transmits(&mut tx).is_empty());
        // Nothing but a 2xx is accepted now.
        assert_eq!(
            tx.send_response(486, b(BUSY), t0 + ms(1700)),
            Err(TransactionError::ResponseNotAllowed {
                status: 486,
                state: "Accepted"
            })
        );
        assert_eq!(
            tx.send_response(180, b(RINGING), t0 + ms(1700)),
            Err(TransactionError::ResponseNotAllowed {
                status: 180,
                state: "Accepted"
            })
        );
        assert!(transmits(&mut tx).is_empty());

        // ACKs (and their retransmissions) go to the TU.
        tx.handle_ack(t0 + ms(2000));
        tx.handle_ack(t0 + ms(2500));
        assert_eq!(events(&mut tx), vec![TxEvent::Ack, TxEvent::Ack]);
        assert_eq!(tx.state(), ServerInviteState::Accepted);

        // Timer L: 64*T1 from the first 2xx.
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(33_000)));
        tx.handle_timeout(t0 + ms(33_000));
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
    }

    #[test]
    fn timer_l_is_64_t1_over_reliable_too() {
        let (mut tx, t0) = new_tx(true);
        tx.send_response(200, b(OK), t0).unwrap();
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
    }

    #[test]
    fn second_final_is_refused() {
        let (mut tx, t0) = new_tx(false);
        tx.send_response(486, b(BUSY), t0).unwrap();
        transmits(&mut tx);
        assert_eq!(
            tx.send_response(200, b(OK), t0),
            Err(TransactionError::ResponseNotAllowed {
                status: 200,
                state: "Completed"
            })
        );
        assert_eq!(
            tx.send_response(42, b(OK), t0),
            Err(TransactionError::InvalidStatus(42))
        );
        assert!(transmits(&mut tx).is_empty());
        assert_eq!(tx.state(), ServerInviteState::Completed);
    }

    #[test]
    fn transport_error_informs_tu_and_keeps_state() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_transport_error(t0);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        tx.send_response(500, b(BUSY), t0).unwrap();
        tx.handle_transport_error(t0);
        assert_eq!(tx.state(), ServerInviteState::Completed);
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::TransportError, TxEvent::TransportError]
        );
        // Timer H still ends it.
        tx.handle_timeout(t0 + ms(32_000));
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn ack_in_proceeding_is_ignored() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_ack(t0);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        assert!(events(&mut tx).is_empty());
    }
}
