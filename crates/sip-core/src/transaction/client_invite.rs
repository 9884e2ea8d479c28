//! The INVITE client transaction: RFC 3261 §17.1.1 as updated by RFC 6026 §7.2.
//!
//! Three behaviours are worth knowing before reading the code:
//!
//! - A 2xx does not end the transaction. RFC 6026 added `Accepted`, where
//!   every 2xx — retransmissions and 2xx from other forks alike — goes up to
//!   the TU, which sends the ACK for it (§13.2.2.4). The transaction never
//!   ACKs a 2xx.
//! - A provisional response stops Timer A and Timer B. Retransmissions stop
//!   because the far end is alive; how long to let a call ring is the TU's
//!   decision (it sends a CANCEL), not the transaction's.
//! - A non-2xx final response is ACKed by the transaction itself (§17.1.1.3).
//!   The ACK is built by the layer above (it needs the parsed request and
//!   response) through the closure passed to
//!   [`ClientInviteTransaction::handle_response`], and cached: every
//!   retransmission of the final response re-sends it and is not passed up.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::{Outputs, Timers};
use super::{StatusClass, Timer, TimerConfig, TransactionError, TxEvent};

/// The states of the INVITE client transaction.
///
/// RFC 3261 Figure 5, as updated by RFC 6026 Figure 5 (the `Accepted` state
/// and Timer M):
///
/// ```text
///                                |INVITE from TU
///              Timer A fires     |INVITE sent       Timer B fires
///              Reset A,          V                  or Transport Err.
///              INVITE sent +-----------+            inform TU
///                +---------|           |---------------------------+
///                |         |  Calling  |                           |
///                +-------->|           |------------+              |
/// 300-699                  +-----------+ 2xx        |              |
/// ACK sent                    |  |       2xx to TU  |              |
/// resp. to TU                 |  |1xx               |              |
/// +---------------------------+  |1xx to TU         |              |
/// |                              |                  |              |
/// |                1xx           V                  |              |
/// |                1xx to TU +-----------+          |              |
/// |                +---------|           |          |              |
/// |                |         |Proceeding |          |              |
/// |                +-------->|           |          |              |
/// |                          +-----------+ 2xx      |              |
/// |         300-699             |    |    2xx to TU |              |
/// |         ACK sent,  +--------+    +------------->|              |
/// |         resp. to TU|                            |              |
/// |                    V                            V              |
/// |              +-----------+                +-----------+        |
/// +------------->|           |                |           |        |
///                | Completed |                | Accepted  |        |
///                |           |                |           |        |
///                +-----------+                +-----------+        |
///                  ^   |   |                     ^   |   |         |
///          300-699 |   |   |                 2xx |   |   |         |
///         ACK sent +---+   |           2xx to TU +---+   |         |
///                          |                             |         |
///        Timer D fires     |               Timer M fires |         |
///        or Transport Err. |               -             |         |
///        inform TU         V                             V         |
///                    +-------------------------------------------+ |
///                    |                Terminated                 |<+
///                    +-------------------------------------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    /// The INVITE has been sent; no response yet. Timer A retransmits it over
    /// unreliable transports; Timer B gives up.
    Calling,
    /// A provisional response arrived; waiting for a final one.
    Proceeding,
    /// A 2xx arrived (RFC 6026); further 2xx go to the TU until Timer M.
    Accepted,
    /// A 300–699 arrived and was ACKed; absorbing its retransmissions until
    /// Timer D.
    Completed,
    /// Done; the transaction is to be dropped.
    Terminated,
}

impl ClientInviteState {
    /// The state's name as RFC 3261 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Calling => "Calling",
            Self::Proceeding => "Proceeding",
            Self::Accepted => "Accepted",
            Self::Completed => "Completed",
            Self::Terminated => "Terminated",
        }
    }
}

/// An INVITE client transaction (RFC 3261 §17.1.1, RFC 6026 §7.2).
///
/// See the [module documentation](super) for how a driver uses it.
#[derive(Debug)]
pub struct ClientInviteTransaction {
    state: ClientInviteState,
    reliable: bool,
    cfg: TimerConfig,
    /// The encoded INVITE, re-sent on every Timer A.
    request: Bytes,
    /// The interval Timer A was last armed with.
    timer_a_interval: Duration,
    /// The ACK sent for the non-2xx final response, re-sent for its
    /// retransmissions.
    ack: Option<Bytes>,
    timers: Timers,
    out: Outputs,
}

impl ClientInviteTransaction {
    /// Starts the transaction in `Calling`: queues `request` (the encoded
    /// INVITE) for transmission and arms Timer B (`64*T1`), and over an
    /// unreliable transport (`reliable == false`) Timer A (T1).
    pub fn new(request: Bytes, reliable: bool, cfg: TimerConfig, now: Instant) -> Self {
        let mut tx = Self {
            state: ClientInviteState::Calling,
            reliable,
            cfg,
            request: request.clone(),
            timer_a_interval: cfg.t1,
            ack: None,
            timers: Timers::default(),
            out: Outputs::default(),
        };
        tx.out.transmit(request);
        if !reliable {
            tx.timers.set(Timer::A, now + cfg.t1);
        }
        tx.timers.set(Timer::B, now + cfg.timeout());
        tx
    }

    /// Feeds a response matched to this transaction (§17.1.3).
    ///
    /// `build_ack` is called at most once, the first time a 300–699 response
    /// arrives in `Calling` or `Proceeding`; it returns the encoded ACK
    /// (§17.1.1.3), which is sent and cached for retransmitted finals.
    ///
    /// A [`TxEvent::Response`] is queued when the TU is to see this response;
    /// absorbed responses queue none.
    pub fn handle_response(
        &mut self,
        status: u16,
        now: Instant,
        build_ack: impl FnOnce() -> Bytes,
    ) -> Result<(), TransactionError> {
        let class = StatusClass::of(status)?;
        use ClientInviteState::*;
        match (self.state, class) {
            (Calling, StatusClass::Provisional) => {
                self.timers.stop(Timer::A);
                self.timers.stop(Timer::B);
                self.set_state(Proceeding);
                self.out.event(TxEvent::Response(status));
            }
            (Proceeding, StatusClass::Provisional) => {
                self.out.event(TxEvent::Response(status));
            }
            (Calling | Proceeding, StatusClass::Success) => {
                self.timers.stop(Timer::A);
                self.timers.stop(Timer::B);
                self.set_state(Accepted);
                self.timers.set(Timer::M, now + self.cfg.timeout());
                self.out.event(TxEvent::Response(status));
            }
            (Accepted, StatusClass::Success) => {
                // RFC 6026 §7.2: a retransmitted 2xx, or a 2xx from another
                // fork, goes to the TU, which ACKs it.
                self.out.event(TxEvent::Response(status));
            }
            (Calling | Proceeding, StatusClass::Failure) => {
                self.timers.stop(Timer::A);
                self.timers.stop(Timer::B);
                let ack = build_ack();
                self.out.transmit(ack.clone());
                self.ack = Some(ack);
                self.set_state(Completed);
                self.out.event(TxEvent::Response(status));
                if self.reliable {
                    // Timer D is zero over reliable transports.
                    self.terminate();
                } else {
                    self.timers.set(Timer::D, now + self.cfg.timer_d());
                }
            }
            (Completed, StatusClass::Failure) => {
                // A retransmitted final: the ACK was lost. Re-send it; the TU
                // has seen this response already.
                if let Some(ack) = &self.ack {
                    self.out.transmit(ack.clone());
                }
            }
            // Anything else is a stray for this state: a 1xx after a final, a
            // 300-699 after a 2xx or a 2xx after a 300-699 (a proxy must not
            // forward either), or anything after Terminated.
            (Accepted | Completed | Terminated, _) => {}
        }
        Ok(())
    }

    /// The transport failed to send the INVITE or the ACK (§17.1.1.2 and
    /// Figure 5): informs the TU and terminates. In `Proceeding` and
    /// `Accepted` the transaction is not sending anything, so the error is
    /// ignored (a response can still arrive on a new connection, §18.2.2).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            ClientInviteState::Calling | ClientInviteState::Completed => {
                self.out.event(TxEvent::TransportError);
                self.terminate();
            }
            ClientInviteState::Proceeding
            | ClientInviteState::Accepted
            | ClientInviteState::Terminated => {}
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
            (Timer::A, ClientInviteState::Calling) => {
                // §17.1.1.2: retransmit and double the interval. INVITE
                // retransmissions are not capped at T2.
                self.out.transmit(self.request.clone());
                self.timer_a_interval = self.timer_a_interval.saturating_mul(2);
                self.timers.set(Timer::A, now + self.timer_a_interval);
            }
            (Timer::B, ClientInviteState::Calling) => {
                self.out.event(TxEvent::Timeout);
                self.terminate();
            }
            (Timer::D, ClientInviteState::Completed) | (Timer::M, ClientInviteState::Accepted) => {
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
    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// `true` once in `Terminated`.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientInviteState::Terminated
    }

    /// Whether the TU may send a CANCEL for this INVITE now: only after a
    /// provisional response and before a final one (RFC 3261 §9.1).
    pub fn can_cancel(&self) -> bool {
        self.state == ClientInviteState::Proceeding
    }

    fn set_state(&mut self, state: ClientInviteState) {
        tracing::trace!(
            from = self.state.name(),
            to = state.name(),
            "INVITE client transaction"
        );
        self.state = state;
    }

    fn terminate(&mut self) {
        if self.state == ClientInviteState::Terminated {
            return;
        }
        self.timers.stop_all();
        self.set_state(ClientInviteState::Terminated);
        self.out.event(TxEvent::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n";
    const ACK: &[u8] = b"ACK sip:bob@example.com SIP/2.0\r\n\r\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn new_tx(reliable: bool) -> (ClientInviteTransaction, Instant) {
        let t0 = Instant::now();
        let tx = ClientInviteTransaction::new(
            Bytes::from_static(INVITE),
            reliable,
            TimerConfig::default(),
            t0,
        );
        (tx, t0)
    }

    fn transmits(tx: &mut ClientInviteTransaction) -> Vec<Bytes> {
        std::iter::from_fn(|| tx.poll_transmit()).collect()
    }

    fn events(tx: &mut ClientInviteTransaction) -> Vec<TxEvent> {
        std::iter::from_fn(|| tx.poll_event()).collect()
    }

    fn ack() -> Bytes {
        Bytes::from_static(ACK)
    }

    fn no_ack() -> Bytes {
        panic!("the ACK must not be built here")
    }

    /// Timer A fires at 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s: six
    /// retransmissions, then Timer B at 32 s.
    #[test]
    fn timer_a_doubles_without_cap_until_timer_b() {
        let (mut tx, t0) = new_tx(false);
        assert_eq!(transmits(&mut tx), vec![Bytes::from_static(INVITE)]);

        let mut fired_at = Vec::new();
        let mut retransmissions = 0;
        for _ in 0..100 {
            let Some(deadline) = tx.poll_timeout() else {
                break;
            };
            tx.handle_timeout(deadline);
            let sent = transmits(&mut tx);
            if !sent.is_empty() {
                assert_eq!(sent, vec![Bytes::from_static(INVITE)]);
                retransmissions += 1;
                fired_at.push(deadline - t0);
            }
        }
        assert_eq!(retransmissions, 6);
        assert_eq!(
            fired_at,
            vec![ms(500), ms(1500), ms(3500), ms(7500), ms(15500), ms(31500)]
        );
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_b_fires_at_64_t1() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_timeout(t0 + ms(31_999));
        assert!(events(&mut tx).is_empty());
        assert_eq!(tx.state(), ClientInviteState::Calling);
        tx.handle_timeout(t0 + ms(32_000));
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn a_late_driver_fires_both_a_and_b_in_deadline_order() {
        let (mut tx, t0) = new_tx(false);
        transmits(&mut tx);
        tx.handle_timeout(t0 + Duration::from_secs(60));
        // Only the one due Timer A retransmits (it re-arms into the future),
        // then Timer B ends the transaction.
        assert_eq!(transmits(&mut tx).len(), 1);
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let (mut tx, t0) = new_tx(true);
        assert_eq!(transmits(&mut tx).len(), 1);
        assert_eq!(tx.timer(Timer::A), None);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        tx.handle_timeout(t0 + ms(32_000));
        assert!(transmits(&mut tx).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn provisional_moves_to_proceeding_and_stops_retransmitting() {
        let (mut tx, t0) = new_tx(false);
        transmits(&mut tx);
        assert!(!tx.can_cancel());
        tx.handle_response(100, t0 + ms(100), no_ack).unwrap();
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
        assert!(tx.can_cancel());
        tx.handle_response(180, t0 + ms(200), no_ack).unwrap();
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::Response(100), TxEvent::Response(180)]
        );
        assert_eq!(tx.poll_timeout(), None);
        tx.handle_timeout(t0 + Duration::from_secs(120));
        assert!(transmits(&mut tx).is_empty());
        assert!(events(&mut tx).is_empty());
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
    }

    #[test]
    fn two_xx_after_one_xx_is_accepted_and_every_2xx_goes_up() {
        let (mut tx, t0) = new_tx(false);
        transmits(&mut tx);
        tx.handle_response(180, t0 + ms(100), no_ack).unwrap();
        tx.handle_response(200, t0 + ms(1000), no_ack).unwrap();
        assert_eq!(tx.state(), ClientInviteState::Accepted);
        assert!(!tx.can_cancel());
        // Retransmission of the 2xx, and a 2xx from another fork.
        tx.handle_response(200, t0 + ms(1500), no_ack).unwrap();
        tx.handle_response(200, t0 + ms(2500), no_ack).unwrap();
        // A late provisional and a stray failure are absorbed.
        tx.handle_response(183, t0 + ms(2600), no_ack).unwrap();
        tx.handle_response(486, t0 + ms(2700), no_ack).unwrap();
        assert_eq!(
            events(&mut tx),
            vec![
                TxEvent::Response(180),
                TxEvent::Response(200),
                TxEvent::Response(200),
                TxEvent::Response(200),
            ]
        );
        assert!(
            transmits(&mut tx).is_empty(),
            "the transaction never ACKs a 2xx"
        );
        assert_eq!(tx.timer(Timer::M), Some(t0 + ms(1000) + ms(32_000)));
        tx.handle_timeout(t0 + ms(32_999));
        assert_eq!(tx.state(), ClientInviteState::Accepted);
        tx.handle_timeout(t0 + ms(33_000));
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn two_xx_in_calling_is_accepted_over_reliable_too() {
        let (mut tx, t0) = new_tx(true);
        tx.handle_response(200, t0, no_ack).unwrap();
        assert_eq!(tx.state(), ClientInviteState::Accepted);
        // Timer M is 64*T1 whatever the transport: 2xx retransmissions come
        // from the far TU, end to end.
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
    }

    #[test]
    fn failure_is_acked_once_and_retransmissions_resend_the_cached_ack() {
        let (mut tx, t0) = new_tx(false);
        transmits(&mut tx);
        tx.handle_response(180, t0 + ms(100), no_ack).unwrap();
        let mut built = 0;
        tx.handle_response(486, t0 + ms(2000), || {
            built += 1;
            ack()
        })
        .unwrap();
        assert_eq!(built, 1);
        assert_eq!(tx.state(), ClientInviteState::Completed);
        assert_eq!(transmits(&mut tx), vec![ack()]);
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::Response(180), TxEvent::Response(486)]
        );

        // The 486 again (our ACK was lost): ACK re-sent, nothing passed up,
        // the ACK not rebuilt.
        tx.handle_response(486, t0 + ms(2500), no_ack).unwrap();
        tx.handle_response(486, t0 + ms(3500), no_ack).unwrap();
        assert_eq!(transmits(&mut tx), vec![ack(), ack()]);
        assert!(events(&mut tx).is_empty());
        assert!(!tx.can_cancel());

        // Timer D: 32 s over UDP.
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(2000) + ms(32_000)));
        tx.handle_timeout(t0 + ms(33_999));
        assert_eq!(tx.state(), ClientInviteState::Completed);
        tx.handle_timeout(t0 + ms(34_000));
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
    }

    #[test]
    fn failure_over_reliable_terminates_at_once() {
        let (mut tx, t0) = new_tx(true);
        transmits(&mut tx);
        tx.handle_response(503, t0 + ms(10), ack).unwrap();
        assert_eq!(transmits(&mut tx), vec![ack()]);
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::Response(503), TxEvent::Terminated]
        );
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_d_is_at_least_64_t1() {
        let cfg = TimerConfig {
            t1: Duration::from_secs(1),
            ..TimerConfig::default()
        };
        let t0 = Instant::now();
        let mut tx = ClientInviteTransaction::new(Bytes::from_static(INVITE), false, cfg, t0);
        tx.handle_response(404, t0, ack).unwrap();
        assert_eq!(tx.timer(Timer::D), Some(t0 + Duration::from_secs(64)));
    }

    #[test]
    fn transport_error_in_calling_informs_tu() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_transport_error(t0);
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::TransportError, TxEvent::Terminated]
        );
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        // Nothing more after Terminated.
        tx.handle_transport_error(t0);
        tx.handle_response(200, t0, no_ack).unwrap();
        assert!(events(&mut tx).is_empty());
    }

    #[test]
    fn transport_error_in_completed_informs_tu_but_not_in_proceeding() {
        let (mut tx, t0) = new_tx(false);
        tx.handle_response(180, t0, no_ack).unwrap();
        tx.handle_transport_error(t0);
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
        tx.handle_response(480, t0, ack).unwrap();
        events(&mut tx);
        tx.handle_transport_error(t0);
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::TransportError, TxEvent::Terminated]
        );
    }

    #[test]
    fn invalid_status_is_refused_without_changing_state() {
        let (mut tx, t0) = new_tx(false);
        assert_eq!(
            tx.handle_response(99, t0, no_ack),
            Err(TransactionError::InvalidStatus(99))
        );
        assert_eq!(
            tx.handle_response(700, t0, no_ack),
            Err(TransactionError::InvalidStatus(700))
        );
        assert_eq!(tx.state(), ClientInviteState::Calling);
        assert!(events(&mut tx).is_empty());
    }
}
