//! Two endpoints in memory, in the style of quinn-proto's test pair: a client
//! transaction and a server transaction joined by a lossy link, with the
//! clock jumping straight to the next `poll_timeout()`. No sockets, no sleep.
//!
//! The link delivers instantly but drops chosen transmissions (by index, per
//! direction). The little "drivers" below play the layer above: they tell a
//! request from a response and an ACK by their first bytes, read the status
//! code, create the server transaction for the first request and feed
//! retransmissions to it.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n";
const ACK: &[u8] = b"ACK sip:bob@example.com SIP/2.0\r\n\r\n";
const OPTIONS: &[u8] = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\r\n";
const TRYING: &[u8] = b"SIP/2.0 100 Trying\r\n\r\n";
const OK: &[u8] = b"SIP/2.0 200 OK\r\n\r\n";
const BUSY: &[u8] = b"SIP/2.0 486 Busy Here\r\n\r\n";

/// The part of the machines' API the simulation needs.
trait Machine {
    fn poll_transmit(&mut self) -> Option<Bytes>;
    fn poll_event(&mut self) -> Option<TxEvent>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    fn is_terminated(&self) -> bool;
}

macro_rules! machine {
    ($($t:ty),*) => {$(
        impl Machine for $t {
            fn poll_transmit(&mut self) -> Option<Bytes> { <$t>::poll_transmit(self) }
            fn poll_event(&mut self) -> Option<TxEvent> { <$t>::poll_event(self) }
            fn poll_timeout(&self) -> Option<Instant> { <$t>::poll_timeout(self) }
            fn handle_timeout(&mut self, now: Instant) { <$t>::handle_timeout(self, now) }
            fn is_terminated(&self) -> bool { <$t>::is_terminated(self) }
        }
    )*};
}

machine!(
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction
);

/// One direction of the link: drops the transmissions whose index (0-based,
/// counted over everything offered to this direction) is in `drop`.
struct Link {
    drop: &'static [usize],
    offered: usize,
    delivered: Vec<Bytes>,
}

impl Link {
    fn new(drop: &'static [usize]) -> Self {
        Self {
            drop,
            offered: 0,
            delivered: Vec::new(),
        }
    }

    fn pass(&mut self, bytes: Bytes) -> Option<Bytes> {
        let index = self.offered;
        self.offered += 1;
        if self.drop.contains(&index) {
            None
        } else {
            self.delivered.push(bytes.clone());
            Some(bytes)
        }
    }
}

fn status_of(response: &[u8]) -> u16 {
    std::str::from_utf8(&response[8..11])
        .unwrap()
        .parse()
        .unwrap()
}

/// What one run of the simulation produced.
struct Outcome {
    client_events: Vec<TxEvent>,
    server_events: Vec<TxEvent>,
    c2s: Link,
    s2c: Link,
    /// Virtual time from start until both machines were terminated.
    elapsed: Duration,
}

/// Runs a client and a (lazily created) server until both are terminated.
///
/// `on_request` plays the server-side driver and TU for every request that
/// crosses the link; `on_response` plays the client-side driver and TU and
/// returns messages the client TU sends outside the transaction (the ACK for
/// a 2xx).
fn simulate<C: Machine, S: Machine>(
    t0: Instant,
    mut client: C,
    mut c2s: Link,
    mut s2c: Link,
    mut on_request: impl FnMut(&mut Option<S>, Bytes, Instant),
    mut on_response: impl FnMut(&mut C, Bytes, Instant) -> Vec<Bytes>,
) -> Outcome {
    let mut server: Option<S> = None;
    let mut now = t0;
    let mut client_events = Vec::new();
    let mut server_events = Vec::new();
    for _ in 0..1000 {
        // Move messages until both sides are quiet at this instant.
        loop {
            let mut moved = false;
            while let Some(bytes) = client.poll_transmit() {
                moved = true;
                if let Some(bytes) = c2s.pass(bytes) {
                    on_request(&mut server, bytes, now);
                }
            }
            let from_server: Vec<Bytes> = match server.as_mut() {
                Some(s) => std::iter::from_fn(|| s.poll_transmit()).collect(),
                None => Vec::new(),
            };
            for bytes in from_server {
                moved = true;
                if let Some(bytes) = s2c.pass(bytes) {
                    for extra in on_response(&mut client, bytes, now) {
                        if let Some(extra) = c2s.pass(extra) {
                            on_request(&mut server, extra, now);
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
        client_events.extend(std::iter::from_fn(|| client.poll_event()));
        if let Some(s) = server.as_mut() {
            server_events.extend(std::iter::from_fn(|| s.poll_event()));
        }

        let server_done = server.as_ref().is_none_or(|s| s.is_terminated());
        if client.is_terminated() && server_done {
            return Outcome {
                client_events,
                server_events,
                c2s,
                s2c,
                elapsed: now - t0,
            };
        }
        let next = [
            client.poll_timeout(),
            server.as_ref().and_then(|s| s.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            panic!("stuck at {:?}: nothing armed, not terminated", now - t0);
        };
        assert!(next >= now, "time never goes backwards");
        now = next;
        client.handle_timeout(now);
        if let Some(s) = server.as_mut() {
            s.handle_timeout(now);
        }
    }
    panic!("did not finish in 1000 steps");
}

/// Server side for a non-INVITE request: the TU answers 200 at once.
fn options_server(
    reliable: bool,
) -> impl FnMut(&mut Option<ServerNonInviteTransaction>, Bytes, Instant) {
    move |server, request, now| {
        assert_eq!(request, Bytes::from_static(OPTIONS));
        match server {
            Some(tx) => tx.handle_request_retransmit(now),
            None => {
                let mut tx = ServerNonInviteTransaction::new(reliable, TimerConfig::default(), now);
                tx.send_response(200, Bytes::from_static(OK), now).unwrap();
                *server = Some(tx);
            }
        }
    }
}

fn non_invite_client() -> impl FnMut(&mut ClientNonInviteTransaction, Bytes, Instant) -> Vec<Bytes>
{
    |client, response, now| {
        client.handle_response(status_of(&response), now).unwrap();
        Vec::new()
    }
}

/// Server side for an INVITE: the driver sends 100 Trying, the TU answers
/// with `answer` at once.
fn invite_server(
    reliable: bool,
    answer: &'static [u8],
) -> impl FnMut(&mut Option<ServerInviteTransaction>, Bytes, Instant) {
    move |server, request, now| match (server.as_mut(), request.starts_with(b"ACK")) {
        (Some(tx), true) => tx.handle_ack(now),
        (Some(tx), false) => tx.handle_request_retransmit(now),
        (None, true) => panic!("ACK before the INVITE"),
        (None, false) => {
            let mut tx = ServerInviteTransaction::new(reliable, TimerConfig::default(), now);
            tx.send_response(100, Bytes::from_static(TRYING), now)
                .unwrap();
            tx.send_response(status_of(answer), Bytes::from_static(answer), now)
                .unwrap();
            *server = Some(tx);
        }
    }
}

/// Client side for an INVITE: the transaction ACKs a failure; the TU ACKs
/// every 2xx the transaction passes up, which it does exactly in `Accepted`.
fn invite_client() -> impl FnMut(&mut ClientInviteTransaction, Bytes, Instant) -> Vec<Bytes> {
    |client, response, now| {
        let status = status_of(&response);
        client
            .handle_response(status, now, || Bytes::from_static(ACK))
            .unwrap();
        if (200..300).contains(&status) && client.state() == ClientInviteState::Accepted {
            vec![Bytes::from_static(ACK)]
        } else {
            Vec::new()
        }
    }
}

#[test]
fn non_invite_completes_despite_losing_requests_and_the_response() {
    let t0 = Instant::now();
    let client = ClientNonInviteTransaction::new(
        Bytes::from_static(OPTIONS),
        false,
        TimerConfig::default(),
        t0,
    );
    // The request is lost three times (sent at 0, 0.5, 1.5 s); the first 200
    // is lost too, so the client's retransmission at 7.5 s draws it again.
    let out = simulate(
        t0,
        client,
        Link::new(&[0, 1, 2]),
        Link::new(&[0]),
        options_server(false),
        non_invite_client(),
    );
    assert_eq!(
        out.client_events,
        vec![TxEvent::Response(200), TxEvent::Terminated]
    );
    assert_eq!(out.server_events, vec![TxEvent::Terminated]);
    // Requests offered: 0, 0.5, 1.5, 3.5 (reaches the server), 7.5 s.
    assert_eq!(out.c2s.offered, 5);
    assert_eq!(out.s2c.offered, 2);
    assert_eq!(out.s2c.delivered, vec![Bytes::from_static(OK)]);
    // The server lingers Timer J (32 s) after its 200 at 3.5 s; the client
    // Timer K (5 s) after the 200 at 7.5 s.
    assert_eq!(out.elapsed, Duration::from_millis(3500 + 32_000));
}

#[test]
fn non_invite_over_reliable_sends_each_message_once() {
    let t0 = Instant::now();
    let client = ClientNonInviteTransaction::new(
        Bytes::from_static(OPTIONS),
        true,
        TimerConfig::default(),
        t0,
    );
    let out = simulate(
        t0,
        client,
        Link::new(&[]),
        Link::new(&[]),
        options_server(true),
        non_invite_client(),
    );
    assert_eq!(
        out.client_events,
        vec![TxEvent::Response(200), TxEvent::Terminated]
    );
    assert_eq!(out.server_events, vec![TxEvent::Terminated]);
    assert_eq!(out.c2s.offered, 1);
    assert_eq!(out.s2c.offered, 1);
    assert_eq!(out.elapsed, Duration::ZERO);
}

#[test]
fn rejected_invite_completes_despite_loss_of_invite_response_and_ack() {
    let t0 = Instant::now();
    let client = ClientInviteTransaction::new(
        Bytes::from_static(INVITE),
        false,
        TimerConfig::default(),
        t0,
    );
    // c2s: INVITE at 0 and 0.5 s lost, INVITE at 1.5 s arrives, first ACK
    // lost. s2c: the 100 Trying and the first 486 lost.
    let out = simulate(
        t0,
        client,
        Link::new(&[0, 1, 3]),
        Link::new(&[0, 1]),
        invite_server(false, BUSY),
        invite_client(),
    );
    let client_events = out.client_events;
    assert_eq!(
        client_events,
        vec![TxEvent::Response(486), TxEvent::Terminated],
        "the 486 reaches the TU exactly once"
    );
    assert_eq!(out.server_events, vec![TxEvent::Terminated]);
    // c2s: INVITE at 0, 0.5 (lost), 1.5 s (arrives); ACK at 2.0 s (lost,
    // answering the 486 Timer G re-sent), ACK at 3.0 s (answering the next
    // one, arrives). Timer A stopped at 2.0 s, before its 3.5 s firing.
    assert_eq!(out.c2s.offered, 5);
    let acks: Vec<&Bytes> = out
        .c2s
        .delivered
        .iter()
        .filter(|m| m.starts_with(b"ACK"))
        .collect();
    assert_eq!(acks.len(), 1);
    // s2c: 100 and 486 at 1.5 s (lost), 486 on Timer G at 2.0 and 3.0 s.
    assert_eq!(out.s2c.offered, 4);
    // The server ends at 3.0 + T4; the client at 2.0 + Timer D (32 s).
    assert_eq!(out.elapsed, Duration::from_secs(34));
}

#[test]
fn answered_invite_completes_despite_lost_invites() {
    let t0 = Instant::now();
    let client = ClientInviteTransaction::new(
        Bytes::from_static(INVITE),
        false,
        TimerConfig::default(),
        t0,
    );
    let out = simulate(
        t0,
        client,
        Link::new(&[0, 1]),
        Link::new(&[]),
        invite_server(false, OK),
        invite_client(),
    );
    let client_events = out.client_events;
    assert_eq!(
        client_events,
        vec![
            TxEvent::Response(100),
            TxEvent::Response(200),
            TxEvent::Terminated
        ]
    );
    // The TU's ACK for the 2xx went to the server TU through the Accepted
    // server transaction.
    assert_eq!(out.server_events, vec![TxEvent::Ack, TxEvent::Terminated]);
    // INVITE at 0, 0.5 (lost), 1.5 s (arrives); 200 at 1.5 s; Timers L and M
    // both 32 s from there.
    assert_eq!(out.elapsed, Duration::from_millis(1500 + 32_000));
    assert_eq!(out.c2s.offered, 4);
}

#[test]
fn invite_with_total_loss_times_out_with_timer_b() {
    let t0 = Instant::now();
    let client = ClientInviteTransaction::new(
        Bytes::from_static(INVITE),
        false,
        TimerConfig::default(),
        t0,
    );
    let out = simulate(
        t0,
        client,
        Link::new(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        Link::new(&[]),
        invite_server(false, OK),
        invite_client(),
    );
    assert_eq!(
        out.client_events,
        vec![TxEvent::Timeout, TxEvent::Terminated]
    );
    assert!(out.server_events.is_empty());
    // The original and exactly six retransmissions.
    assert_eq!(out.c2s.offered, 7);
    assert_eq!(out.elapsed, Duration::from_secs(32));
}

/// A small deterministic generator (xorshift64*), so the randomized tests
/// below replay identically.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn status(&mut self) -> u16 {
        [100, 180, 183, 200, 202, 302, 401, 486, 503, 603, 42, 700][self.below(12) as usize]
    }
}

/// Checks what every machine promises whatever it is fed: `Terminated` is
/// announced exactly once and is the last event; after it, nothing is sent,
/// no event is queued and no timer is armed; a timer deadline is never in
/// the past after `handle_timeout(now)`.
fn check_invariants<M: Machine>(
    tx: &mut M,
    now: Instant,
    terminated_seen: &mut bool,
    sent: &mut usize,
) {
    let was_terminated = *terminated_seen;
    while tx.poll_transmit().is_some() {
        assert!(!was_terminated, "transmit after Terminated");
        *sent += 1;
    }
    while let Some(event) = tx.poll_event() {
        assert!(!*terminated_seen, "event {event:?} after Terminated");
        if event == TxEvent::Terminated {
            *terminated_seen = true;
        }
    }
    assert_eq!(tx.is_terminated(), *terminated_seen);
    if tx.is_terminated() {
        assert_eq!(tx.poll_timeout(), None);
    }
    if let Some(deadline) = tx.poll_timeout() {
        assert!(deadline > now, "a due timer was left armed");
    }
}

#[test]
fn random_inputs_keep_every_machine_consistent() {
    let cfg = TimerConfig::default();
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let reliable = rng.below(2) == 0;
        let t0 = Instant::now();
        let mut now = t0;
        let mut ci = ClientInviteTransaction::new(Bytes::from_static(INVITE), reliable, cfg, now);
        let mut cn =
            ClientNonInviteTransaction::new(Bytes::from_static(OPTIONS), reliable, cfg, now);
        let mut si = ServerInviteTransaction::new(reliable, cfg, now);
        let mut sn = ServerNonInviteTransaction::new(reliable, cfg, now);
        let mut done = [false; 4];
        let mut sent = [0usize; 4];
        for _ in 0..60 {
            now += Duration::from_millis(rng.below(3000));
            let status = rng.status();
            match rng.below(6) {
                0 => {
                    let _ = ci.handle_response(status, now, || Bytes::from_static(ACK));
                    let _ = cn.handle_response(status, now);
                }
                1 => {
                    let _ = si.send_response(status, Bytes::from_static(OK), now);
                    let _ = sn.send_response(status, Bytes::from_static(OK), now);
                }
                2 => {
                    si.handle_request_retransmit(now);
                    sn.handle_request_retransmit(now);
                    si.handle_ack(now);
                }
                3 if rng.below(8) == 0 => {
                    ci.handle_transport_error(now);
                    cn.handle_transport_error(now);
                    si.handle_transport_error(now);
                    sn.handle_transport_error(now);
                }
                _ => {}
            }
            ci.handle_timeout(now);
            cn.handle_timeout(now);
            si.handle_timeout(now);
            sn.handle_timeout(now);
            check_invariants(&mut ci, now, &mut done[0], &mut sent[0]);
            check_invariants(&mut cn, now, &mut done[1], &mut sent[1]);
            check_invariants(&mut si, now, &mut done[2], &mut sent[2]);
            check_invariants(&mut sn, now, &mut done[3], &mut sent[3]);
        }
        if reliable {
            // Over a reliable transport a client sends its request once (plus
            // at most one ACK), never a retransmission.
            assert!(sent[0] <= 2, "seed {seed}: {} INVITE-side sends", sent[0]);
            assert_eq!(sent[1], 1, "seed {seed}");
        }
        // Left alone, a client always ends: every client state but
        // Proceeding (INVITE) runs a timer that leads to Terminated.
        for _ in 0..100 {
            let Some(deadline) = [ci.poll_timeout(), cn.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            now = deadline;
            ci.handle_timeout(now);
            cn.handle_timeout(now);
        }
        assert!(cn.is_terminated(), "seed {seed}: {:?}", cn.state());
        assert!(
            ci.is_terminated() || ci.state() == ClientInviteState::Proceeding,
            "seed {seed}: {:?}",
            ci.state()
        );
    }
}
