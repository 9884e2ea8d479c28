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
                    notes.push(format!("attempt {}/{}: {}", self.taken, self.total, a.label));
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
            c.rtt.get_or_insert(now.saturating_duration_since(c.sent_at));
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
            self.trunks.report(&c.attempt, AttemptResult::TransportError);
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
