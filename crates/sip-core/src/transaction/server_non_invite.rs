//! The non-INVITE server transaction: RFC 3261 §17.2.2.
//!
//! The server never retransmits on its own: responses are re-sent only when
//! the client retransmits its request. Timer J keeps the transaction alive
//! after the final response long enough to absorb those retransmissions.

use std::time::Instant;

use bytes::Bytes;

use super::timers::{Outputs, Timers};
use super::{StatusClass, Timer, TimerConfig, TransactionError, TxEvent};

/// The states of the non-INVITE server transaction.
///
/// RFC 3261 Figure 8:
///
/// ```text
///                           |Request received
///                           |pass to TU
///                           V
///                     +-----------+
///                     |           |
///                     | Trying    |-------------+
///                     |           |             |
///                     +-----------+             |200-699 from TU
///                           |                   |send response
///                           |1xx from TU        |
///                           |send response      |
///                           |                   |
///        Request            V      1xx from TU  |
///        send response+-----------+send response|
///            +--------|           |--------+    |
///            |        | Proceeding|        |    |
///            +------->|           |<-------+    |
///     +<--------------|           |             |
///     |Trnsprt Err    +-----------+             |
///     |Inform TU            |                   |
///     |                     |                   |
///     |                     |200-699 from TU    |
///     |                     |send response      |
///     |  Request            V                   |
///     |  send response+-----------+             |
///     |      +--------|           |             |
///     |      |        | Completed |<------------+
///     |      +------->|           |
///     +<--------------|           |
///     |Trnsprt Err    +-----------+
///     |Inform TU            |
///     |                     |Timer J fires
///     |                     |-
///     |                     |
///     |                     V
///     |               +-----------+
///     |               |           |
///     +-------------->| Terminated|
///                     |           |
///                     +-----------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    /// The request was passed to the TU; no response yet. Retransmitted
    /// requests are absorbed.
    Trying,
    /// A provisional response was sent; retransmitted requests re-send it.
    Proceeding,
    /// The final response was sent; retransmitted requests re-send it until
    /// Timer J.
    Completed,
    /// Done; the transaction is to be dropped.
    Terminated,
}

impl ServerNonInviteState {
    /// The state's name as RFC 3261 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Trying => "Trying",
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Terminated => "Terminated",
        }
    }
}

/// A non-INVITE server transaction (RFC 3261 §17.2.2).
///
/// See the [module documentation](super) for how a driver uses it.
#[derive(Debug)]
pub struct ServerNonInviteTransaction {
    state: ServerNonInviteState,
    reliable: bool,
    cfg: TimerConfig,
    /// The most recent response from the TU, re-sent for retransmitted
    /// requests.
    last_response: Option<Bytes>,
    timers: Timers,
    out: Outputs,
}

impl ServerNonInviteTransaction {
    /// Creates the transaction in `Trying` for a new request that arrived over
    /// a `reliable` or unreliable transport. No timer runs in `Trying`; `now`
    /// is taken for uniformity with the other entry points.
    pub fn new(reliable: bool, cfg: TimerConfig, _now: Instant) -> Self {
        Self {
            state: ServerNonInviteState::Trying,
            reliable,
            cfg,
            last_response: None,
            timers: Timers::default(),
            out: Outputs::default(),
        }
    }

    /// Sends a response from the TU.
    ///
    /// - 100–199 in `Trying` or `Proceeding`: sent, moves to `Proceeding`.
    /// - 200–699 in `Trying` or `Proceeding`: sent, moves to `Completed` and
    ///   arms Timer J (`64*T1` over UDP; over a reliable transport Timer J is
    ///   zero and the transaction terminates at once).
    ///
    /// In `Completed` further responses are discarded (§17.2.2) and refused
    /// with [`TransactionError::ResponseNotAllowed`].
    pub fn send_response(
        &mut self,
        status: u16,
        response: Bytes,
        now: Instant,
    ) -> Result<(), TransactionError> {
        let class = StatusClass::of(status)?;
        use ServerNonInviteState::*;
        match (self.state, class) {
            (Trying | Proceeding, StatusClass::Provisional) => {
                self.send(response);
                if self.state == Trying {
                    self.set_state(Proceeding);
                }
            }
            (Trying | Proceeding, StatusClass::Success | StatusClass::Failure) => {
                self.send(response);
                self.set_state(Completed);
                if self.reliable {
                    self.terminate();
                } else {
                    self.timers.set(Timer::J, now + self.cfg.timeout());
                }
            }
            (state @ (Completed | Terminated), _) => {
                return Err(TransactionError::ResponseNotAllowed {
                    status,
                    state: state.name(),
                })
            }
        }
        Ok(())
    }

    /// A retransmission of the request arrived: absorbed in `Trying` (there is
    /// no response yet), re-sends the most recent response in `Proceeding` and
    /// `Completed`. The request is never passed to the TU again.
    pub fn handle_request_retransmit(&mut self, _now: Instant) {
        match self.state {
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed => {
                if let Some(response) = &self.last_response {
                    self.out.transmit(response.clone());
                }
            }
            ServerNonInviteState::Trying | ServerNonInviteState::Terminated => {}
        }
    }

    /// The transport failed to send a response: in `Proceeding` or
    /// `Completed` the TU is informed and the transaction terminates (Figure
    /// 8). In `Trying` nothing has been sent, so the error is ignored.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed => {
                self.out.event(TxEvent::TransportError);
                self.terminate();
            }
            ServerNonInviteState::Trying | ServerNonInviteState::Terminated => {}
        }
    }

    /// Fires every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (deadline, timer) in self.timers.due(now) {
            if self.timers.take_if_due(timer, deadline)
                && timer == Timer::J
                && self.state == ServerNonInviteState::Completed
            {
                self.terminate();
            }
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

    /// The most recent response sent, the one a retransmitted request gets again.
    pub fn last_response(&self) -> Option<&Bytes> {
        self.last_response.as_ref()
    }

    /// The current state.
    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    /// `true` once in `Terminated`.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerNonInviteState::Terminated
    }

    fn send(&mut self, response: Bytes) {
        self.out.transmit(response.clone());
        self.last_response = Some(response);
    }

    fn set_state(&mut self, state: ServerNonInviteState) {
        tracing::trace!(
            from = self.state.name(),
            to = state.name(),
            "non-INVITE server transaction"
        );
        self.state = state;
    }

    fn terminate(&mut self) {
        if self.state == ServerNonInviteState::Terminated {
            return;
        }
        self.timers.stop_all();
        self.set_state(ServerNonInviteState::Terminated);
        self.out.event(TxEvent::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TRYING: &[u8] = b"SIP/2.0 100 Trying\r\n\r\n";
    const OK: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
    const UNAUTHORIZED: &[u8] = b"SIP/2.0 401 Unauthorized\r\n\r\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn b(bytes: &'static [u8]) -> Bytes {
        Bytes::from_static(bytes)
    }

    fn new_tx(reliable: bool) -> (ServerNonInviteTransaction, Instant) {
        let t0 = Instant::now();
        (
            ServerNonInviteTransaction::new(reliable, TimerConfig::default(), t0),
            t0,
        )
    }

    fn transmits(tx: &mut ServerNonInviteTransaction) -> Vec<Bytes> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    fn events(tx: &mut ServerNonInviteTransaction) -> Vec<TxEvent> {
        std::iter::from_fn(|| tx.poll_event()).collect()
    }

    #[test]
    fn retransmissions_are_absorbed_in_trying_and_answered_later() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_request_retransmit(t0 + ms(500));
        assert!(transmits(&mut tx).is_empty());
        assert_eq!(tx.state(), ServerNonInviteState::Trying);

        tx.send_response(100, b(TRYING), t0 + ms(600)).unwrap();
        assert_eq!(tx.state(), ServerNonInviteState::Proceeding);
        tx.handle_request_retransmit(t0 + ms(1500));
        assert_eq!(transmits(&mut tx), vec![b(TRYING), b(TRYING)]);

        tx.send_response(200, b(OK), t0 + ms(2000)).unwrap();
        tx.handle_request_retransmit(t0 + ms(3500));
        tx.handle_request_retransmit(t0 + ms(7500));
        assert_eq!(transmits(&mut tx), vec![b(OK), b(OK), b(OK)]);
        assert!(events(&mut tx).is_empty());
    }

    #[test]
    fn timer_j_is_64_t1_over_udp() {
        let (mut tx, t0) = new_tx(false);
        tx.send_response(401, b(UNAUTHORIZED), t0).unwrap();
        assert_eq!(tx.state(), ServerNonInviteState::Completed);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        tx.handle_timeout(t0 + ms(31_999));
        assert_eq!(tx.state(), ServerNonInviteState::Completed);
        tx.handle_timeout(t0 + ms(32_000));
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        // Only the one transmission: the server never retransmits by itself.
        assert_eq!(transmits(&mut tx), vec![b(UNAUTHORIZED)]);
        tx.handle_request_retransmit(t0 + ms(33_000));
        assert!(transmits(&mut tx).is_empty());
    }

    #[test]
    fn timer_j_is_zero_over_reliable() {
        let (mut tx, t0) = new_tx(true);
        tx.send_response(200, b(OK), t0).unwrap();
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(transmits(&mut tx), vec![b(OK)]);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn second_final_is_discarded() {
        let (mut tx, t0) = new_tx(false);
        tx.send_response(200, b(OK), t0).unwrap();
        assert_eq!(
            tx.send_response(401, b(UNAUTHORIZED), t0),
            Err(TransactionError::ResponseNotAllowed {
                status: 401,
                state: "Completed"
            })
        );
        assert_eq!(transmits(&mut tx), vec![b(OK)]);
        tx.handle_request_retransmit(t0);
        assert_eq!(transmits(&mut tx), vec![b(OK)]);
    }

    #[test]
    fn transport_error_terminates_after_a_response() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_transport_error(t0);
        assert_eq!(tx.state(), ServerNonInviteState::Trying);
        tx.send_response(200, b(OK), t0).unwrap();
        tx.handle_transport_error(t0);
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::TransportError, TxEvent::Terminated]
        );
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn invalid_status_is_refused() {
        let (mut tx, t0) = new_tx(false);
        assert_eq!(
            tx.send_response(1000, b(OK), t0),
            Err(TransactionError::InvalidStatus(1000))
        );
        assert!(transmits(&mut tx).is_empty());
    }
}
