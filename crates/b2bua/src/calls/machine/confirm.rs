//! Agent confirm (SPEC §9.4): in a ring-all fork a voicemail or an auto-answering desk
//! phone may win, so the agent who answered must press `1` before the customer is dialled.
//!
//! ```text
//!   agent 2xx ──► Confirm: the relay plays the prompt into the agent leg and reports its
//!                 RFC 4733 events; SIP INFO application/dtmf-relay counts as well
//!                   │ `1` ──────────────► prompt stopped, Lookup(customer)
//!                   │ any other digit ──► noted, ignored
//!                   │ calls.confirm_secs without `1` ──► BYE the agent, no-answer (agent);
//!                   │                                   the customer is never dialled
//!                   └ agent BYE / API hang-up ──► canceled, as while the customer rings
//! ```

use super::*;

impl CallMachine {
    /// The agent answered a call that wants confirming: prompt, and wait for `1`.
    pub(super) fn start_confirm(&mut self, agent_sdp: Bytes, wait: Duration, now: Instant) {
        self.phase = Phase::Confirm;
        self.confirm_until = Some(now + wait);
        self.out
            .push_back(Output::Media(MediaOp::Confirm(Leg::Agent, agent_sdp)));
        self.note(
            Some(Leg::Agent),
            format!(
                "confirm: prompt played to the agent; the customer is dialled after DTMF 1 (waiting {} s)",
                wait.as_secs()
            ),
        );
    }

    /// A digit from a leg (`how`: RFC 4733 or SIP INFO).
    pub(super) fn on_digit(&mut self, leg: Leg, digit: char, how: &str, now: Instant) {
        if self.phase != Phase::Confirm || leg != Leg::Agent {
            return;
        }
        if digit != '1' {
            self.note(
                Some(leg),
                format!("confirm: DTMF {digit} ({how}) ignored, waiting for 1"),
            );
            return;
        }
        self.note(
            Some(leg),
            format!("confirm: DTMF 1 ({how}): dialling the customer"),
        );
        self.confirm_until = None;
        self.out
            .push_back(Output::Media(MediaOp::EndConfirm(Leg::Agent)));
        self.phase = Phase::Lookup(Leg::Customer);
        self.out.push_back(Output::Lookup(Leg::Customer));
        let _ = now;
    }

    /// An INFO from the agent while it confirms: `application/dtmf-relay` carries the digit
    /// (`Signal=1`); anything else is only acknowledged.
    pub(super) fn confirm_info(&mut self, inc: IncomingRequest, from: Leg, now: Instant) {
        self.respond(&inc, 200);
        let ct = inc
            .request
            .header_str(&HeaderName::ContentType)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !ct.starts_with("application/dtmf-relay") {
            return;
        }
        if let Some(d) = dtmf_relay_signal(&inc.request.body) {
            self.on_digit(from, d, "SIP INFO", now);
        }
    }

    /// No `1` in time: the agent is hung up, the customer never dialled.
    pub(super) fn confirm_timer(&mut self, now: Instant) {
        if self.confirm_until.is_none_or(|t| t > now) {
            return;
        }
        self.confirm_until = None;
        self.note(Some(Leg::Agent), "confirm: no DTMF 1 in time");
        self.hang_up_all(
            outcome(
                CallStatus::NoAnswer,
                Some(Leg::Agent),
                None,
                "the agent did not confirm (no DTMF 1)",
            ),
            now,
        );
    }
}

/// The digit of an `application/dtmf-relay` body (`Signal=1\r\nDuration=160`).
pub(super) fn dtmf_relay_signal(body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("signal") {
            return None;
        }
        let v = v.trim();
        let mut chars = v.chars();
        let c = chars.next()?;
        match (c, chars.next()) {
            (c, None) if c.is_ascii_digit() || matches!(c, '*' | '#') => Some(c),
            (c, None) if ('A'..='D').contains(&c.to_ascii_uppercase()) => {
                Some(c.to_ascii_uppercase())
            }
            _ => match v {
                "10" => Some('*'),
                "11" => Some('#'),
                _ => None,
            },
        }
    })
}
