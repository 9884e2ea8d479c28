//! The health of one trunk target: a small sans-IO state machine fed with the outcome of
//! OPTIONS checks, of INVITE attempts and of `503` + `Retry-After`, on a clock it is handed.
//!
//! ```text
//!              down_after checks in a row fail
//!        ┌────┐ ──────────────────────────────► ┌──────┐
//!        │ Up │                                  │ Down │
//!        └────┘ ◄────────────────────────────── └──────┘
//!          │      up_after checks in a row answered  ▲
//!          │                                         │ (held: Down until the time passes)
//!          └──── 503 with Retry-After: N ────────────┘
//! ```
//!
//! A target nobody has checked yet is up. A `503` with `Retry-After` holds the target down
//! for that long whatever the checks say; after that the checks decide again. The state a
//! caller sees is re-read at every use ([`TargetHealth::state`]); [`TargetHealth::observe`]
//! returns a change once, so that each change is logged once.

use std::time::Duration;
use tokio::time::Instant;

/// Whether calls may be sent to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Up,
    Down,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Up => "up",
            TargetState::Down => "down",
        }
    }
}

/// The last answer a target gave (to an OPTIONS check or an INVITE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A SIP status code.
    Status(u16),
    /// Nothing came back in time.
    Timeout,
    /// The transport refused (ICMP unreachable, TCP reset).
    TransportError,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(c) => write!(f, "{c}"),
            Answer::Timeout => f.write_str("timeout"),
            Answer::TransportError => f.write_str("transport error"),
        }
    }
}

/// One target's health.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    /// Down by the checks (until `up_after` answers in a row).
    checked_down: bool,
    /// Failed checks in a row.
    failures: u32,
    /// Answered checks in a row.
    answers: u32,
    /// Down until then, by a `503` + `Retry-After`.
    held_until: Option<Instant>,
    /// The state last returned by [`TargetHealth::observe`].
    reported: TargetState,
    /// Why the target went down last (for the log line and the API).
    pub reason: Option<String>,
    pub last_rtt: Option<Duration>,
    pub last_answer: Option<Answer>,
}

impl Default for TargetHealth {
    fn default() -> Self {
        TargetHealth {
            checked_down: false,
            failures: 0,
            answers: 0,
            held_until: None,
            reported: TargetState::Up,
            reason: None,
            last_rtt: None,
            last_answer: None,
        }
    }
}

impl TargetHealth {
    /// The state at `now`.
    pub fn state(&self, now: Instant) -> TargetState {
        if self.checked_down || self.held_until.is_some_and(|t| now < t) {
            TargetState::Down
        } else {
            TargetState::Up
        }
    }

    /// The target answered a check (any final response but `503`).
    pub fn check_answered(&mut self, code: u16, rtt: Duration, up_after: u32) {
        self.last_answer = Some(Answer::Status(code));
        self.last_rtt = Some(rtt);
        self.failures = 0;
        self.answers = self.answers.saturating_add(1);
        if self.checked_down && self.answers >= up_after.max(1) {
            self.checked_down = false;
        }
    }

    /// A check got no answer, a transport error or a `503`; an INVITE attempt that timed out
    /// or was refused by the transport counts the same while checks run.
    pub fn check_failed(&mut self, answer: Answer, down_after: u32) {
        self.answers = 0;
        self.failures = self.failures.saturating_add(1);
        if !self.checked_down && self.failures >= down_after.max(1) {
            self.checked_down = true;
            self.reason = Some(format!(
                "{} failed checks in a row (last: {answer})",
                self.failures
            ));
        }
        self.last_answer = Some(answer);
    }

    /// An INVITE got a final response (not a check): only remembered.
    pub fn answered(&mut self, code: u16, rtt: Option<Duration>) {
        self.last_answer = Some(Answer::Status(code));
        if rtt.is_some() {
            self.last_rtt = rtt;
        }
    }

    /// A `503` with `Retry-After`: down until `now + retry_after`.
    pub fn hold(&mut self, now: Instant, retry_after: Duration) {
        let until = now + retry_after;
        if self.held_until.is_none_or(|t| t < until) {
            self.held_until = Some(until);
            self.reason = Some(format!("503 with Retry-After: {} s", retry_after.as_secs()));
        }
    }

    /// The change of state since the last call, once: `Some((from, to))`.
    pub fn observe(&mut self, now: Instant) -> Option<(TargetState, TargetState)> {
        let now_state = self.state(now);
        if self.held_until.is_some_and(|t| now >= t) {
            self.held_until = None;
        }
        if now_state == self.reported {
            return None;
        }
        let from = self.reported;
        self.reported = now_state;
        Some((from, now_state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn down_after_failures_up_after_answers() {
        let t0 = Instant::now();
        let mut h = TargetHealth::default();
        assert_eq!(h.state(t0), TargetState::Up);
        assert_eq!(h.observe(t0), None);
        h.check_failed(Answer::Timeout, 3);
        h.check_failed(Answer::Timeout, 3);
        assert_eq!(h.state(t0), TargetState::Up, "2 of 3 failures");
        // An answer in between starts the count again.
        h.check_answered(200, 3 * MS, 2);
        h.check_failed(Answer::Timeout, 3);
        h.check_failed(Answer::TransportError, 3);
        assert_eq!(h.state(t0), TargetState::Up);
        h.check_failed(Answer::Timeout, 3);
        assert_eq!(h.state(t0), TargetState::Down);
        assert_eq!(h.observe(t0), Some((TargetState::Up, TargetState::Down)));
        assert_eq!(h.observe(t0), None, "a change is reported once");
        assert_eq!(h.last_answer, Some(Answer::Timeout));
        h.check_answered(200, 4 * MS, 2);
        assert_eq!(h.state(t0), TargetState::Down, "1 of 2 answers");
        h.check_answered(200, 5 * MS, 2);
        assert_eq!(h.state(t0), TargetState::Up);
        assert_eq!(h.observe(t0), Some((TargetState::Down, TargetState::Up)));
        assert_eq!(h.last_rtt, Some(5 * MS));
        assert_eq!(h.last_answer, Some(Answer::Status(200)));
    }

    #[test]
    fn retry_after_holds_down_for_its_time() {
        let t0 = Instant::now();
        let mut h = TargetHealth::default();
        h.hold(t0, Duration::from_secs(30));
        assert_eq!(h.state(t0), TargetState::Down);
        assert_eq!(h.observe(t0), Some((TargetState::Up, TargetState::Down)));
        // Answered checks do not lift the hold.
        h.check_answered(200, MS, 1);
        let t29 = t0 + Duration::from_secs(29);
        assert_eq!(h.state(t29), TargetState::Down);
        assert_eq!(h.observe(t29), None);
        // A shorter hold does not shorten it.
        h.hold(t29, Duration::from_secs(0));
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(h.state(t30 - MS), TargetState::Down);
        assert_eq!(h.state(t30), TargetState::Up);
        assert_eq!(h.observe(t30), Some((TargetState::Down, TargetState::Up)));
        assert_eq!(h.observe(t30 + MS), None);
    }

    #[test]
    fn hold_and_checks_together() {
        let t0 = Instant::now();
        let mut h = TargetHealth::default();
        h.hold(t0, Duration::from_secs(5));
        h.check_failed(Answer::Timeout, 1);
        let t10 = t0 + Duration::from_secs(10);
        // The hold is over, but the checks still say down.
        assert_eq!(h.state(t10), TargetState::Down);
        h.check_answered(200, MS, 1);
        assert_eq!(h.state(t10), TargetState::Up);
    }
}
