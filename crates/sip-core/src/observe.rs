//! Watching the wire: every SIP message the endpoint takes in or puts out, handed whole to
//! an observer.
//!
//! The endpoint calls [`MessageObserver::on_message`] with the bytes of each message right
//! after a transport delivered them (before parsing, so a message the parser refuses is seen
//! too) and right before it hands bytes to a transport: requests and responses sent through
//! transactions, their retransmissions (Timers A, E, G and the 2xx of §13.3.1.4), ACKs and
//! CANCELs, answers sent without a transaction (§8.2.7) and their replays. A SIP trace in the
//! log and a HEP exporter are two such observers.
//!
//! An observer runs on the endpoint's task: it must return quickly (copy and queue, never
//! block on I/O). Without one, the endpoint does nothing but test an `Option`.
//!
//! Not here: what an observer does with the bytes; RTP/RTCP (see the media relay).

use crate::transport::Transport;
use std::net::SocketAddr;
use std::sync::Arc;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Taken in from a transport.
    Received,
    /// Handed to a transport.
    Sent,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Received => "received",
            Direction::Sent => "sent",
        }
    }
}

/// One SIP message on the wire, as an observer sees it.
#[derive(Debug, Clone, Copy)]
pub struct WireMessage<'a> {
    pub direction: Direction,
    pub transport: Transport,
    /// Our end of the flow.
    pub local: SocketAddr,
    /// The peer's end of the flow.
    pub remote: SocketAddr,
    /// The message, whole, as it went over the wire.
    pub data: &'a [u8],
}

impl WireMessage<'_> {
    /// Source and destination in wire order.
    pub fn src_dst(&self) -> (SocketAddr, SocketAddr) {
        match self.direction {
            Direction::Received => (self.remote, self.local),
            Direction::Sent => (self.local, self.remote),
        }
    }
}

/// Something that watches the endpoint's SIP messages.
pub trait MessageObserver: Send + Sync + std::fmt::Debug + 'static {
    /// Called on the endpoint's task for each message; must not block.
    fn on_message(&self, msg: &WireMessage<'_>);
}

/// Several observers behind one (e.g. the log trace and the HEP exporter).
#[derive(Debug, Default)]
pub struct Observers(pub Vec<Arc<dyn MessageObserver>>);

impl MessageObserver for Observers {
    fn on_message(&self, msg: &WireMessage<'_>) {
        for o in &self.0 {
            o.on_message(msg);
        }
    }
}

/// The value of a header in a message's raw bytes (compact form `short` too), without
/// parsing the message: the first occurrence in the header section, trimmed.
pub fn raw_header<'a>(data: &'a [u8], long: &str, short: Option<char>) -> Option<&'a [u8]> {
    let head_end = find(data, b"\r\n\r\n").unwrap_or(data.len());
    let head = &data[..head_end];
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let matches = name.eq_ignore_ascii_case(long.as_bytes())
            || short.is_some_and(|s| name.len() == 1 && name[0].eq_ignore_ascii_case(&(s as u8)));
        if matches {
            return Some(trim(&line[colon + 1..]));
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_finds_long_and_compact_names_in_the_header_section_only() {
        let m =
            b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP x\r\ni:  abc@host \r\n\r\nCall-ID: body";
        assert_eq!(raw_header(m, "Call-ID", Some('i')), Some(&b"abc@host"[..]));
        let m = b"SIP/2.0 200 OK\r\ncall-id:xyz\r\n\r\n";
        assert_eq!(raw_header(m, "Call-ID", Some('i')), Some(&b"xyz"[..]));
        assert_eq!(raw_header(m, "CSeq", None), None);
        assert_eq!(raw_header(b"", "Call-ID", None), None);
    }
}
