//! The non-INVITE client transaction: RFC 3261 §17.1.2.
//!
//! Used for every request but INVITE and ACK (REGISTER, OPTIONS, BYE, CANCEL,
//! ...). Over an unreliable transport the request is retransmitted on Timer E,
//! starting at T1 and doubling up to T2; once a provisional response shows the
//! server is alive, at T2. Timer F ends the transaction if no final response
//! arrives. A final response goes to the TU once; Timer K then absorbs its
//! retransmissions.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::{Outputs, Timers};
use super::{StatusClass, Timer, TimerConfig, TransactionError, TxEvent};

/// The states of the non-INVITE client transaction.
///
/// RFC 3261 Figure 6:
///
/// ```text
///                                |Request from TU
///                                |send request
///            Timer E             V
///            send request  +-----------+
///                +---------|           |-------------------+
///                |         |  Trying   |  Timer F          |
///                +-------->|           |  or Transport Err.|
///                          +-----------+  inform TU        |
///             200-699         |  |                         |
///             resp. to TU     |  |1xx                      |
///             +---------------+  |resp. to TU              |
///             |                  |                         |
///             |   Timer E        V       Timer F           |
///             |   send req +-----------+ or Transport Err. |
///             |  +---------|           | inform TU         |
///             |  |         |Proceeding |------------------>|
///             |  +-------->|           |-----+             |
///             |            +-----------+     |1xx          |
///             |              |      ^        |resp to TU   |
///             | 200-699      |      +--------+             |
///             | resp. to TU  |                             |
///             |              |                             |
///             |              V                             |
///             |            +-----------+                   |
///             |            |           |                   |
///             |            | Completed |                   |
///             |            |           |                   |
///             |            +-----------+                   |
///             |              ^   |                         |
///             |              |   | Timer K                 |
///             +--------------+   | -                       |
///                                |                         |
///                                V                         |
///          NOTE:           +-----------+                   |
///                          |           |                   |
///      transitions         | Terminated|<------------------+
///      labeled with        |           |
///      the event           +-----------+
///      over the action
///      to take
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    /// The request has been sent; no response yet.
    Trying,
    /// A provisional response arrived; Timer E now retransmits every T2.
    Proceeding,
    /// A final response arrived; absorbing its retransmissions until Timer K.
    Completed,
    /// Done; the transaction is to be dropped.
    Terminated,
}

impl ClientNonInviteState {
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

/// A non-INVITE client transaction (RFC 3261 §17.1.2).
///
/// See the [module documentation](super) for how a driver uses it.
#[derive(Debug)]
pub struct ClientNonInviteTransaction {
    state: ClientNonInviteState,
    reliable: bool,
    cfg: TimerConfig,
    /// The encoded request, re-sent on every Timer E.
    request: Bytes,
    /// The interval Timer E was last armed with.
    timer_e_interval: Duration,
    timers: Timers,
    out: Outputs,
}

impl ClientNonInviteTransaction {
    /// Starts the transaction in `Trying`: queues `request` for transmission
    /// and arms Timer F (`64*T1`), and over an unreliable transport Timer E
    /// (T1).
    pub fn new(request: Bytes, reliable: bool, cfg: TimerConfig, now: Instant) -> Self {
        let mut tx = Self {
            state: ClientNonInviteState::Trying,
            reliable,
            cfg,
            request: request.clone(),
            timer_e_interval: cfg.t1,
            timers: Timers::default(),
            out: Outputs::default(),
        };
        tx.out.transmit(request);
        if !reliable {
            tx.timers.set(Timer::E, now + cfg.t1);
        }
        tx.timers.set(Timer::F, now + cfg.timeout());
        tx
    }

    /// Feeds a response matched to this transaction (§17.1.3). A
    /// [`TxEvent::Response`] is queued when the TU is to see it; responses
    /// arriving in `Completed` are retransmissions and are absorbed.
    pub fn handle_response(&mut self, status: u16, now: Instant) -> Result<(), TransactionError> {
        let class = StatusClass::of(status)?;
        use ClientNonInviteState::*;
        match (self.state, class) {
            (Trying, StatusClass::Provisional) => {
                // Timer E keeps its current deadline; from its next firing on
                // it is reset to T2 (§17.1.2.2).
                self.set_state(Proceeding);
                self.out.event(TxEvent::Response(status));
            }
            (Proceeding, StatusClass::Provisional) => {
                self.out.event(TxEvent::Response(status));
            }
            (Trying | Proceeding, StatusClass::Success | StatusClass::Failure) => {
                self.timers.stop(Timer::E);
                self.timers.stop(Timer::F);
                self.set_state(Completed);
                self.out.event(TxEvent::Response(status));
                if self.reliable {
                    // Timer K is zero over reliable transports.
                    self.terminate();
                } else {
                    self.timers.set(Timer::K, now + self.cfg.t4);
                }
            }
            (Completed | Terminated, _) => {}
        }
        Ok(())
    }

    /// The transport failed to send the request: in `Trying` or `Proceeding`
    /// the TU is informed and the transaction terminates (§17.1.4). Later it
    /// sends nothing more, so the error is ignored.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                self.out.event(TxEvent::TransportError);
                self.terminate();
            }
            ClientNonInviteState::Completed | ClientNonInviteState::Terminated => {}
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
            (Timer::E, ClientNonInviteState::Trying) => {
                self.out.transmit(self.request.clone());
                self.timer_e_interval = self.timer_e_interval.saturating_mul(2).min(self.cfg.t2);
                self.timers.set(Timer::E, now + self.timer_e_interval);
            }
            (Timer::E, ClientNonInviteState::Proceeding) => {
                self.out.transmit(self.request.clone());
                self.timer_e_interval = self.cfg.t2;
                self.timers.set(Timer::E, now + self.timer_e_interval);
            }
            (Timer::F, ClientNonInviteState::Trying | ClientNonInviteState::Proceeding) => {
                self.out.event(TxEvent::Timeout);
                self.terminate();
            }
            (Timer::K, ClientNonInviteState::Completed) => self.terminate(),
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
    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    /// `true` once in `Terminated`.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientNonInviteState::Terminated
    }

    fn set_state(&mut self, state: ClientNonInviteState) {
        tracing::trace!(
            from = self.state.name(),
            to = state.name(),
            "non-INVITE client transaction"
        );
        self.state = state;
    }

    fn terminate(&mut self) {
        if self.state == ClientNonInviteState::Terminated {
            return;
        }
        self.timers.stop_all();
        self.set_state(ClientNonInviteState::Terminated);
        self.out.event(TxEvent::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\r\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn new_tx(reliable: bool) -> (ClientNonInviteTransaction, Instant) {
        let t0 = Instant::now();
        let tx = ClientNonInviteTransaction::new(
            Bytes::from_static(REGISTER),
            reliable,
            TimerConfig::default(),
            t0,
        );
        (tx, t0)
    }

    fn transmits(tx: &mut ClientNonInviteTransaction) -> Vec<Bytes> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    fn events(tx: &mut ClientNonInviteTransaction) -> Vec<TxEvent> {
        std::iter::from_fn(|| tx.poll_event()).collect()
    }

    /// Runs the clock from timer to timer, recording when a retransmission
    /// went out (relative to `t0`), until the transaction terminates.
    fn run_to_end(tx: &mut ClientNonInviteTransaction, t0: Instant) -> Vec<Duration> {
        let mut sent_at = Vec::new();
        for _ in 0..100 {
            let Some(deadline) = tx.poll_timeout() else {
                break;
            };
            tx.handle_timeout(deadline);
            for bytes in transmits(tx) {
                assert_eq!(bytes, Bytes::from_static(REGISTER));
                sent_at.push(deadline - t0);
            }
        }
        sent_at
    }

    /// Timer E: 0.5, 1, 2, 4, 4, 4 ... s intervals, i.e. retransmissions at
    /// 0.5, 1.5, 3.5, 7.5, 11.5, ... 31.5 s; Timer F at 32 s.
    #[test]
    fn timer_e_doubles_up_to_t2_until_timer_f() {
        let (mut tx, t0) = new_tx(false);
        assert_eq!(transmits(&mut tx).len(), 1);
        let sent_at = run_to_end(&mut tx, t0);
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
    fn timer_e_is_t2_in_proceeding() {
        let (mut tx, t0) = new_tx(false);
        transmits(&mut tx);
        // Retransmission at 0.5 s, then a 100 at 0.6 s: the pending Timer E
        // (1.5 s) stays, later ones are every T2.
        tx.handle_timeout(t0 + ms(500));
        assert_eq!(transmits(&mut tx).len(), 1);
        tx.handle_response(100, t0 + ms(600)).unwrap();
        assert_eq!(tx.state(), ClientNonInviteState::Proceeding);
        assert_eq!(events(&mut tx), vec![TxEvent::Response(100)]);
        let sent_at = run_to_end(&mut tx, t0);
        let expected: Vec<Duration> = [1500, 5500, 9500, 13_500, 17_500, 21_500, 25_500, 29_500]
            .into_iter()
            .map(ms)
            .collect();
        assert_eq!(sent_at, expected);
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn final_response_goes_up_once_then_timer_k() {
        let (mut tx, t0) = new_tx(false);
        transmits(&mut tx);
        tx.handle_response(100, t0 + ms(100)).unwrap();
        tx.handle_response(200, t0 + ms(700)).unwrap();
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
        // Retransmitted finals, and a late provisional, are absorbed.
        tx.handle_response(200, t0 + ms(800)).unwrap();
        tx.handle_response(180, t0 + ms(900)).unwrap();
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::Response(100), TxEvent::Response(200)]
        );
        assert_eq!(tx.timer(Timer::E), None);
        assert_eq!(tx.timer(Timer::F), None);
        // Timer K: T4 over UDP.
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(700) + ms(5000)));
        tx.handle_timeout(t0 + ms(5699));
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
        tx.handle_timeout(t0 + ms(5700));
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert!(transmits(&mut tx).is_empty());
    }

    #[test]
    fn failure_response_completes_too() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_response(401, t0).unwrap();
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
        assert_eq!(events(&mut tx), vec![TxEvent::Response(401)]);
    }

    #[test]
    fn reliable_transport_never_retransmits_and_timer_k_is_zero() {
        let (mut tx, t0) = new_tx(true);
        assert_eq!(transmits(&mut tx).len(), 1);
        assert_eq!(tx.timer(Timer::E), None);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        tx.handle_response(200, t0 + ms(40)).unwrap();
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::Response(200), TxEvent::Terminated]
        );
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_f_over_reliable() {
        let (mut tx, t0) = new_tx(true);
        transmits(&mut tx);
        tx.handle_response(100, t0).unwrap();
        tx.handle_timeout(t0 + ms(32_000));
        assert!(transmits(&mut tx).is_empty());
        assert_eq!(
            events(&mut tx),
            vec![
                TxEvent::Response(100),
                TxEvent::Timeout,
                TxEvent::Terminated
            ]
        );
    }

    #[test]
    fn transport_error_terminates_in_trying_and_proceeding_only() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_response(100, t0).unwrap();
        tx.handle_transport_error(t0);
        assert_eq!(
            events(&mut tx),
            vec![
                TxEvent::Response(100),
                TxEvent::TransportError,
                TxEvent::Terminated
            ]
        );

        let (mut tx, t0) = new_tx(false);
        tx.handle_response(200, t0).unwrap();
        tx.handle_transport_error(t0);
        assert_eq!(events(&mut tx), vec![TxEvent::Response(200)]);
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
    }

    #[test]
    fn invalid_status_is_refused() {
        let (mut tx, t0) = new_tx(false);
        assert_eq!(
            tx.handle_response(0, t0),
            Err(TransactionError::InvalidStatus(0))
        );
        assert_eq!(tx.state(), ClientNonInviteState::Trying);
    }
}
