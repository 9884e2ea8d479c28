//! The SIP trace (`serve --sip-trace`, `[log] sip_trace = true`): every SIP message the
//! endpoint receives and sends, whole, as one log event under the target `sip_trace`.
//!
//! Text format: a header line (direction, transport, local and remote address, size), then
//! the message as it went over the wire. JSON format: one event with the same facts as fields
//! and the message in the field `sip`. Retransmissions are traced like any other message (the
//! endpoint shows them to its observer).
//!
//! Digest credentials keep their structure but not their proof: the `response` parameter of
//! `Authorization` and `Proxy-Authorization` is masked. Passwords never travel in SIP, so the
//! trace cannot show one.
//!
//! When the trace is off the observer is not installed at all; when the log filter turns the
//! `sip_trace` target off, an `enabled!` check returns before anything is formatted.

use sip_core::observe::{Direction, MessageObserver, WireMessage};
use std::borrow::Cow;

/// The log target of the trace.
pub const TARGET: &str = "sip_trace";

/// What a masked digest `response` reads as.
pub const MASK: &str = "\"***\"";

/// Logs each message it is shown.
#[derive(Debug, Clone, Copy)]
pub struct SipTrace {
    /// One event with the message in a field, instead of a readable block.
    pub json: bool,
}

impl MessageObserver for SipTrace {
    fn on_message(&self, m: &WireMessage<'_>) {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let text = String::from_utf8_lossy(m.data);
        let text = mask_digest_responses(&text);
        let arrow = match m.direction {
            Direction::Received => "<-",
            Direction::Sent => "->",
        };
        if self.json {
            tracing::info!(
                target: TARGET,
                direction = m.direction.as_str(),
                transport = %m.transport,
                local = %m.local,
                remote = %m.remote,
                bytes = m.data.len(),
                sip = %text,
                "SIP message {}",
                m.direction.as_str()
            );
        } else {
            tracing::info!(
                target: TARGET,
                "{} {} {} {} {} ({} bytes)\n{}",
                m.direction.as_str(),
                m.transport,
                m.local,
                arrow,
                m.remote,
                m.data.len(),
                text.trim_end_matches(['\r', '\n'])
            );
        }
    }
}

/// The message with the `response` value of every `Authorization` and `Proxy-Authorization`
/// header in its header section replaced by [`MASK`]; everything else as it was.
pub fn mask_digest_responses(msg: &str) -> Cow<'_, str> {
    let head_len = msg.find("\r\n\r\n").map_or(msg.len(), |i| i + 2);
    let (head, body) = msg.split_at(head_len);
    let has_auth = head.split('\n').any(|l| is_auth_header(l).is_some());
    if !has_auth {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len());
    for line in head.split_inclusive('\n') {
        match is_auth_header(line) {
            Some(colon) => {
                out.push_str(&line[..=colon]);
                out.push_str(&mask_response_param(&line[colon + 1..]));
            }
            None => out.push_str(line),
        }
    }
    out.push_str(body);
    Cow::Owned(out)
}

/// The position of the colon when `line` is an `Authorization` or `Proxy-Authorization`
/// header.
fn is_auth_header(line: &str) -> Option<usize> {
    let colon = line.find(':')?;
    let name = line[..colon].trim();
    (name.eq_ignore_ascii_case("Authorization") || name.eq_ignore_ascii_case("Proxy-Authorization"))
        .then_some(colon)
}

/// Masks every `response=` parameter value (quoted or not) in a credentials value.
fn mask_response_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(at) = find_param(&lower, "response") else {
            out.push_str(rest);
            return out;
        };
        // `at` points at the value, after `response` `=` and any spaces.
        out.push_str(&rest[..at]);
        out.push_str(MASK);
        let tail = &rest[at..];
        let skip = if let Some(quoted) = tail.strip_prefix('"') {
            quoted.find('"').map_or(tail.len(), |e| e + 2)
        } else {
            tail.find([',', '\r', '\n', ' ', '\t'])
                .unwrap_or(tail.len())
        };
        rest = &tail[skip..];
    }
}

/// Where the value of parameter `name` starts in a lower-cased credentials value.
fn find_param(lower: &str, name: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let start = from + i;
        let before_ok = start == 0
            || lower[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c == ',' || c == ' ' || c == '\t');
        let after = &lower[start + name.len()..];
        let trimmed = after.trim_start_matches([' ', '\t']);
        if before_ok {
            if let Some(v) = trimmed.strip_prefix('=') {
                let v2 = v.trim_start_matches([' ', '\t']);
                return Some(lower.len() - v2.len());
            }
        }
        from = start + name.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_response_is_masked_and_the_rest_kept() {
        let m = "INVITE sip:+14155550100@127.0.0.1 SIP/2.0\r\n\
                 Proxy-Authorization: Digest username=\"acme\", realm=\"carrier.test\", \
                 nonce=\"4a7f\", uri=\"sip:+14155550100@127.0.0.1\", \
                 response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5, cnonce=\"c\", \
                 qop=auth, nc=00000001\r\n\
                 authorization: Digest username=\"alice\",response=deadbeef,realm=\"x\"\r\n\
                 Call-ID: a\r\n\r\nresponse=\"body stays\"";
        let out = mask_digest_responses(m);
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(!out.contains("deadbeef"), "{out}");
        assert!(out.contains("username=\"acme\""), "{out}");
        assert!(
            out.contains("response=\"***\", algorithm=MD5, cnonce=\"c\""),
            "{out}"
        );
        assert!(out.contains("response=\"***\",realm=\"x\""), "{out}");
        assert!(out.ends_with("\r\n\r\nresponse=\"body stays\""), "{out}");
        assert!(out.starts_with("INVITE sip:+14155550100@127.0.0.1 SIP/2.0\r\n"));
    }

    #[test]
    fn a_message_without_credentials_is_not_copied() {
        let m = "OPTIONS sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n";
        assert!(matches!(mask_digest_responses(m), Cow::Borrowed(_)));
        // WWW-Authenticate (a challenge) has no response to hide.
        let m = "SIP/2.0 401 Unauthorized\r\nWWW-Authenticate: Digest nonce=\"n\"\r\n\r\n";
        assert!(matches!(mask_digest_responses(m), Cow::Borrowed(_)));
    }

    #[test]
    fn parameter_names_that_merely_contain_response_are_left_alone() {
        assert_eq!(
            mask_response_param(" Digest xresponse=\"a\", response = \"b\""),
            " Digest xresponse=\"a\", response = \"***\""
        );
        assert_eq!(
            mask_response_param(" Digest response="),
            " Digest response=\"***\""
        );
    }
}
