//! The customer leg's walk through its attempts, one after another: a sans-IO machine the
//! call task drives with what happens to the attempt in flight, on a clock it is handed.
//!
//! ```text
//!            next(): the next attempt whose trunk has a channel (others are skipped)
//!   ┌──────────► Trying ── 1xx ──► Proceeding ── 2xx ──► Answered (the channel is kept)
//!   │              │                   │
//!   │   invite_timeout with no 1xx,    │ final failure code:
//!   │   transport error, or a final    │ failover code ──► Next::Try
//!   └── failover code ◄────────────────┘ any other ──────► Next::End (the customer's answer)
//! ```
//!
//! Every outcome is reported to [`Trunks::report`] (health, `503` + `Retry-After`, metrics).

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::{Attempt, AttemptResult, ChannelGuard, Trunks};

/// What the leg does after an attempt's final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Give this target up and try the next attempt.
    Try,
    /// The answer stands: the leg ends with it.
    End,
}

/// Whether a final response is given up for the next attempt (one of the trunk's
/// `failover_codes`) or is the customer's answer (486, 404, 603, ...).
pub fn after_final(attempt: &Attempt, code: u16) -> Next {
    if (300..700).contains(&code) && attempt.failover_codes.contains(&code) {
        Next::Try
    } else {
        Next::End
    }
}

struct Current {
    attempt: Attempt,
    sent_at: Instant,
    provisional: bool,
    rtt: Option<Duration>,
    /// The channel of the attempt's trunk, held until the attempt fails or the call ends.
    _guard: ChannelGuard,
}

/// One customer leg's attempts and where it is among them.
pub struct Walk {
    trunks: Arc<Trunks>,
    attempts: std::vec::IntoIter<Attempt>,
    total: usize,
    taken: usize,
    /// Attempts that got a channel and went out.
    tried: usize,
    current: Option<Current>,
    /// Trunks skipped because they were at `max_calls` / `calls_per_second`.
    at_limit: Vec<String>,
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk")
            .field("total", &self.total)
            .field("taken", &self.taken)
            .field("current", &self.current.as_ref().map(|c| &c.attempt.label))
            .finish()
    }
}

impl Walk {
    pub fn new(trunks: Arc<Trunks>, attempts: Vec<Attempt>) -> Walk {
        Walk {
            trunks,
            total: attempts.len(),
            attempts: attempts.into_iter(),
            taken: 0,
            tried: 0,
            current: None,
            at_limit: Vec::new(),
        }
    }

    /// The next attempt whose trunk has a free channel, now in flight (its INVITE is sent
    /// next, then [`Walk::sent`]); with a line for the timeline for each attempt skipped.
    pub fn next(&mut self, now: Instant) -> (Option<Attempt>, Vec<String>) {
        self.current = None;
        let mut notes = Vec::new();
        for a in self.attempts.by_ref() {
            self.taken += 1;
            match self.trunks.acquire(&a) {
                Some(guard) => {
                    self.tried += 1;
                    self.current = Some(Current {
                        attempt: a.clone(),
                        sent_at: now,
                        provisional: false,
                        rtt: None,
                        _guard: guard,
                    });
                    notes.push(format!(
                        "attempt {}/{}: {}",
                        self.taken, self.total, a.label
                    ));
                    return (Some(a), notes);
                }
                None => {
                    notes.push(format!(
                        "attempt {}/{}: {} skipped: trunk {} at its call limit",
                        self.taken, self.total, a.label, a.trunk
                    ));
                    if !self.at_limit.contains(&a.trunk) {
                        self.at_limit.push(a.trunk.clone());
                    }
                }
            }
        }
        (None, notes)
    }

    /// The attempt in flight.
    pub fn current(&self) -> Option<&Attempt> {
        self.current.as_ref().map(|c| &c.attempt)
    }

    /// Its INVITE went out (again, after a digest challenge): the time-out starts now.
    pub fn sent(&mut self, now: Instant) {
        if let Some(c) = self.current.as_mut() {
            c.sent_at = now;
        }
    }

    /// A provisional response: the target is alive; no more `invite_timeout`.
    pub fn provisional(&mut self, now: Instant) {
        if let Some(c) = self.current.as_mut() {
            c.provisional = true;
            c.rtt
                .get_or_insert(now.saturating_duration_since(c.sent_at));
        }
    }

    /// When the attempt in flight is given up if nothing came back by then.
    pub fn deadline(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .filter(|c| !c.provisional)
            .map(|c| c.sent_at + c.attempt.invite_timeout)
    }

    /// A final response to the attempt in flight (not 2xx; not a 401/407 being answered).
    pub fn failed(&mut self, code: u16, retry_after: Option<Duration>, now: Instant) -> Next {
        let Some(c) = self.current.take() else {
            return Next::End;
        };
        let rtt = c.rtt.or(Some(now.saturating_duration_since(c.sent_at)));
        self.trunks.report(
            &c.attempt,
            AttemptResult::Final {
                code,
                retry_after,
                rtt,
            },
        );
        after_final(&c.attempt, code)
    }

    /// Nothing within `invite_timeout` (or the transaction timed out): the next is tried.
    pub fn timed_out(&mut self) -> Next {
        if let Some(c) = self.current.take() {
            self.trunks.report(&c.attempt, AttemptResult::Timeout);
        }
        Next::Try
    }

    /// The transport refused the INVITE (ICMP unreachable, TCP reset): the next is tried.
    pub fn transport_error(&mut self) -> Next {
        if let Some(c) = self.current.take() {
            self.trunks
                .report(&c.attempt, AttemptResult::TransportError);
        }
        Next::Try
    }

    /// The customer answered: reported, and the channel is held until the walk is dropped
    /// (the end of the call).
    pub fn answered(&mut self, code: u16, now: Instant) {
        if let Some(c) = self.current.as_mut() {
            let rtt = c.rtt.or(Some(now.saturating_duration_since(c.sent_at)));
            self.trunks.report(
                &c.attempt,
                AttemptResult::Final {
                    code,
                    retry_after: None,
                    rtt,
                },
            );
        }
    }

    /// Why nothing could be tried, when no attempt got a channel.
    pub fn exhausted_reason(&self) -> Option<String> {
        if self.tried == 0 && !self.at_limit.is_empty() {
            Some(format!(
                "no trunk available: {} at its call limit",
                self.at_limit.join(", ")
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trunks::{TargetState, TrunksConfig};
    use sip_core::endpoint::Destination;
    use sip_core::transport::Transport;
    use std::net::SocketAddr;

    fn trunks() -> Arc<Trunks> {
        let store: Arc<dyn store::Store> = Arc::new(store::SqliteStore::open_in_memory().unwrap());
        // A server that is never asked: these tests use no domain.
        let cfg = TrunksConfig {
            dns_servers: vec!["127.0.0.1:9".parse().unwrap()],
        };
        Arc::new(Trunks::new(&cfg, store))
    }

    fn attempt(trunk: &str, port: u16, max_calls: Option<u32>) -> Attempt {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Attempt {
            trunk: trunk.into(),
            label: format!("trunk {trunk} udp:{addr}"),
            request_uri: sip_core::message::Uri::Sip(sip_core::message::SipUri::new(
                Some("+15550100"),
                sip_core::message::Host::Ip(addr.ip()),
                Some(port),
            )),
            dest: Destination {
                transport: Transport::Udp,
                addr,
                conn: None,
            },
            credentials: None,
            invite_timeout: Duration::from_millis(2000),
            failover_codes: store::TrunkRouting::DEFAULT_FAILOVER_CODES.to_vec(),
            max_calls,
            calls_per_second: None,
            checked: false,
            down_after: 3,
        }
    }

    #[test]
    fn failover_codes_go_on_the_customers_answers_end() {
        let a = attempt("t", 1, None);
        for code in [408, 500, 502, 503, 504] {
            assert_eq!(after_final(&a, code), Next::Try, "{code}");
        }
        for code in [404, 480, 486, 487, 600, 603, 200] {
            assert_eq!(after_final(&a, code), Next::End, "{code}");
        }
        let mut only_503 = a.clone();
        only_503.failover_codes = vec![503];
        assert_eq!(after_final(&only_503, 500), Next::End);
        assert_eq!(after_final(&only_503, 503), Next::Try);
    }

    #[tokio::test(start_paused = true)]
    async fn invite_timeout_runs_until_a_provisional_response() {
        let t = trunks();
        let mut w = Walk::new(
            Arc::clone(&t),
            vec![attempt("a", 5001, None), attempt("b", 5002, None)],
        );
        let t0 = Instant::now();
        let (first, notes) = w.next(t0);
        assert_eq!(first.map(|a| a.trunk), Some("a".to_string()));
        assert_eq!(notes, ["attempt 1/2: trunk a udp:127.0.0.1:5001"]);
        w.sent(t0);
        assert_eq!(w.deadline(), Some(t0 + Duration::from_millis(2000)));
        // Silence: given up at the deadline, the next is tried.
        tokio::time::advance(Duration::from_millis(2000)).await;
        assert_eq!(w.timed_out(), Next::Try);
        let t1 = Instant::now();
        let (second, _) = w.next(t1);
        assert_eq!(second.map(|a| a.trunk), Some("b".to_string()));
        w.sent(t1);
        // A 180 after 40 ms: no more time-out; the ring time is the call's business.
        tokio::time::advance(Duration::from_millis(40)).await;
        w.provisional(Instant::now());
        assert_eq!(w.deadline(), None);
        assert_eq!(w.failed(486, None, Instant::now()), Next::End);
        let (_, attempts) = t.metric_lines();
        assert!(attempts.contains(&("{trunk=\"a\",code=\"timeout\"}".into(), 1)));
        assert!(attempts.contains(&("{trunk=\"b\",code=\"486\"}".into(), 1)));
        // Without health checks a time-out does not put the target down.
        let rt = t.runtime("a");
        assert_eq!(
            t.target_state("a", &rt, SocketAddr::from(([127, 0, 0, 1], 5001))),
            TargetState::Up
        );
        assert_eq!(w.next(Instant::now()).0.map(|a| a.trunk), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_the_target_down_for_its_time() {
        let t = trunks();
        let mut w = Walk::new(Arc::clone(&t), vec![attempt("a", 5001, None)]);
        let now = Instant::now();
        w.next(now);
        w.sent(now);
        assert_eq!(w.failed(503, Some(Duration::from_secs(30)), now), Next::Try);
        let rt = t.runtime("a");
        let addr = SocketAddr::from(([127, 0, 0, 1], 5001));
        assert_eq!(t.target_state("a", &rt, addr), TargetState::Down);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(t.target_state("a", &rt, addr), TargetState::Down);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.target_state("a", &rt, addr), TargetState::Up);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trunk_at_its_limit_is_skipped_and_its_channel_freed_with_the_walk() {
        let t = trunks();
        let busy = attempt("small", 5001, Some(1));
        let held = t.acquire(&busy).expect("the one channel");
        let mut w = Walk::new(
            Arc::clone(&t),
            vec![
                busy.clone(),
                attempt("small", 5002, Some(1)),
                attempt("big", 6001, None),
            ],
        );
        let (a, notes) = w.next(Instant::now());
        assert_eq!(a.map(|a| a.trunk), Some("big".to_string()));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].contains("trunk small at its call limit"),
            "{notes:?}"
        );
        assert_eq!(w.exhausted_reason(), None, "one attempt went out");
        // Every attempt at its limit: the leg fails saying so.
        let mut w2 = Walk::new(Arc::clone(&t), vec![busy.clone()]);
        assert!(w2.next(Instant::now()).0.is_none());
        assert_eq!(
            w2.exhausted_reason().as_deref(),
            Some("no trunk available: small at its call limit")
        );
        drop(held);
        // The channel of an answered attempt lasts as long as the walk (the call).
        let mut w3 = Walk::new(Arc::clone(&t), vec![busy.clone()]);
        assert!(w3.next(Instant::now()).0.is_some());
        w3.answered(200, Instant::now());
        assert!(t.acquire(&busy).is_none());
        drop(w3);
        assert!(t.acquire(&busy).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_per_second_skips_a_trunk_for_the_rest_of_the_second() {
        let t = trunks();
        let mut a = attempt("rated", 5001, None);
        a.calls_per_second = Some(1);
        let g = t.acquire(&a);
        assert!(g.is_some());
        assert!(t.acquire(&a).is_none(), "second call in the same second");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.acquire(&a).is_some());
    }
}
