//! Framing: start line, header lines (folding, LWS before the colon, compact names), and the
//! body by Content-Length (RFC 3261 §7, §18.3), for datagrams and for streams.

use bytes::Bytes;

use super::header::{Header, HeaderName, Headers};
use super::scan::{is_token, parse_decimal, trim_lws};
use super::uri::Uri;
use super::{Method, Request, Response, SipMessage};

/// Why a message could not be taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The status to answer with when the message was a request (400 or 505).
    pub status: u16,
    pub reason: &'static str,
    /// The header fields, when the message looked like a request and its header block
    /// could be split: enough to build the error response.
    pub request_headers: Option<Headers>,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for Rejected {}

fn reject(reason: &'static str, headers: Option<Headers>) -> Rejected {
    Rejected {
        status: 400,
        reason,
        request_headers: headers,
    }
}

/// What a stream framer found at the head of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes (after `skip` leading CRLFs).
    Message { skip: usize, len: usize },
    /// A keep-alive: `CRLF CRLF` ping (RFC 5626 §4.4.1), `len` bytes to drop and answer with CRLF.
    KeepAlive { len: usize },
    /// Lone CRLFs (a pong, or padding) to drop.
    Padding { len: usize },
    /// More bytes are needed.
    Incomplete,
}

/// Framing errors on a stream: the connection cannot be resynchronised and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad Content-Length")]
    BadContentLength,
}

fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    // returns (end of header block excl. blank line, start of body)
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + off;
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some((nl, next + 1)),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some((nl, next + 2)),
            Some(_) => i = next,
            None => return None,
        }
    }
    None
}

/// Finds the length of the first message in a stream buffer (RFC 3261 §18.3: Content-Length
/// is mandatory on streams; a missing one counts as zero).
pub fn frame(buf: &[u8], max_size: usize) -> Result<Frame, FrameError> {
    let mut skip = 0;
    while skip < buf.len() && (buf[skip] == b'\r' || buf[skip] == b'\n') {
        skip += 1;
    }
    if skip == buf.len() {
        if buf.starts_with(b"\r\n\r\n") {
            return Ok(Frame::KeepAlive { len: 4 });
        }
        if buf.len() >= 2 && buf.starts_with(b"\r\n") && buf.len() < 4 {
            // Could be a pong, or the start of a ping: wait briefly for more is not possible
            // without a timer; treat a lone CRLF as a pong.
            return Ok(Frame::Padding { len: buf.len() });
        }
        return Ok(if buf.is_empty() {
            Frame::Incomplete
        } else {
            Frame::Padding { len: buf.len() }
        });
    }
    if skip >= 4 && buf.starts_with(b"\r\n\r\n") {
        return Ok(Frame::KeepAlive { len: 4 });
    }
    let msg = &buf[skip..];
    let Some((hdr_end, body_start)) = find_header_end(msg) else {
        if msg.len() > max_size {
            return Err(FrameError::TooLarge(max_size));
        }
        return Ok(Frame::Incomplete);
    };
    let mut content_length: Option<usize> = None;
    for line in msg[..hdr_end].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim_lws(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = parse_decimal(trim_lws(&line[colon + 1..]), max_size as u64)
                .ok_or(FrameError::BadContentLength)?;
            if content_length.is_some_and(|c| c != v as usize) {
                return Err(FrameError::BadContentLength);
            }
            content_length = Some(v as usize);
        }
    }
    let len = body_start + content_length.unwrap_or(0);
    if len > max_size {
        return Err(FrameError::TooLarge(max_size));
    }
    if msg.len() < len {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message { skip, len })
}

/// Parses one message from a datagram (trailing octets past Content-Length are ignored) or
/// a complete stream frame.
pub fn parse_message(data: Bytes) -> Result<SipMessage, Rejected> {
    let mut skip = 0;
    while skip < data.len() && (data[skip] == b'\r' || data[skip] == b'\n') {
        skip += 1;
    }
    let data = data.slice(skip..);
    let Some((hdr_end, body_start)) = find_header_end(&data) else {
        return Err(reject("Incomplete header block", None));
    };
    let first_nl = memchr::memchr(b'\n', &data).unwrap_or(hdr_end);
    let start_line = strip_cr(&data[..first_nl]);
    let is_response = start_line.starts_with(b"SIP/");
    let headers_block = if first_nl < hdr_end {
        &data[first_nl + 1..hdr_end]
    } else {
        &[][..]
    };
    let headers = match split_headers(&data, headers_block) {
        Ok(h) => h,
        Err(reason) => return Err(reject(reason, None)),
    };
    let hdrs_opt = |h: &Headers| (!is_response).then(|| h.clone());

    // Content-Length: every value must agree (RFC 4475 §3.3.9), none may be negative or huge.
    let mut content_length: Option<usize> = None;
    for v in headers.get_all(&HeaderName::ContentLength) {
        let Some(n) = parse_decimal(trim_lws(v), u32::MAX as u64) else {
            return Err(reject("Bad Content-Length", hdrs_opt(&headers)));
        };
        if content_length.is_some_and(|c| c != n as usize) {
            return Err(reject(
                "Conflicting Content-Length values",
                hdrs_opt(&headers),
            ));
        }
        content_length = Some(n as usize);
    }
    let available = data.len().saturating_sub(body_start);
    let body = match content_length {
        Some(n) if n > available => {
            return Err(reject(
                "Content-Length larger than message",
                hdrs_opt(&headers),
            ))
        }
        Some(n) => data.slice(body_start..body_start + n),
        None => data.slice(body_start.min(data.len())..),
    };

    if is_response {
        parse_status_line(&data, start_line)
            .map(|(status, reason)| {
                SipMessage::Response(Response {
                    status,
                    reason,
                    headers,
                    body,
                })
            })
            .map_err(|r| reject(r, None))
    } else {
        match parse_request_line(&data, start_line) {
            Ok((method, uri)) => Ok(SipMessage::Request(Request {
                method,
                uri,
                headers,
                body,
            })),
            Err(LineError::Version) => Err(Rejected {
                status: 505,
                reason: "Version Not Supported",
                request_headers: Some(headers),
            }),
            Err(LineError::Bad(reason)) => Err(reject(reason, Some(headers))),
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

enum LineError {
    Bad(&'static str),
    Version,
}

fn parse_request_line(base: &Bytes, line: &[u8]) -> Result<(Method, Uri), LineError> {
    // Method SP Request-URI SP SIP-Version: exactly one SP each (RFC 4475 §3.1.2.9/.10).
    let sp1 = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(LineError::Bad("Malformed Request-Line"))?;
    let sp2 = line
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(LineError::Bad("Malformed Request-Line"))?;
    if sp2 <= sp1 {
        return Err(LineError::Bad("Malformed Request-Line"));
    }
    let method = &line[..sp1];
    let uri = &line[sp1 + 1..sp2];
    let version = &line[sp2 + 1..];
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Err(LineError::Bad("Malformed method"));
    }
    if version.is_empty() {
        return Err(LineError::Bad("Trailing white space in Request-Line"));
    }
    if uri.is_empty() || uri.iter().any(|&b| b == b' ' || b == b'\t') {
        return Err(LineError::Bad("Malformed Request-URI"));
    }
    check_version(version)?;
    let uri = Uri::parse_in(base, uri).map_err(|_| LineError::Bad("Malformed Request-URI"))?;
    Ok((Method::from_token(base, method), uri))
}

fn check_version(v: &[u8]) -> Result<(), LineError> {
    if v.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let looks_like_version = v.len() > 4
        && v[..4].eq_ignore_ascii_case(b"SIP/")
        && v[4..].iter().all(|&b| b.is_ascii_digit() || b == b'.');
    Err(if looks_like_version {
        LineError::Version
    } else {
        LineError::Bad("Malformed SIP-Version")
    })
}

fn parse_status_line(base: &Bytes, line: &[u8]) -> Result<(u16, Bytes), &'static str> {
    let sp = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or("Malformed Status-Line")?;
    if !line[..sp].eq_ignore_ascii_case(b"SIP/2.0") {
        return Err("Unsupported version");
    }
    let rest = &line[sp + 1..];
    let (code, reason) = match rest.iter().position(|&b| b == b' ') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &[][..]),
    };
    if code.len() != 3 {
        return Err("Malformed status code");
    }
    let status = parse_decimal(code, 699).ok_or("Malformed status code")?;
    if status < 100 {
        return Err("Malformed status code");
    }
    Ok((status as u16, base.slice_ref(reason)))
}

/// Splits the header block into fields. Continuation lines (starting with SP/HT) are part
/// of the previous field's value (kept in place, not copied).
fn split_headers(base: &Bytes, block: &[u8]) -> Result<Headers, &'static str> {
    let mut headers = Headers::with_capacity(16);
    let mut i = 0;
    let n = block.len();
    while i < n {
        // One logical line: from i to the end of its last continuation.
        let line_start = i;
        let mut end;
        loop {
            let nl = memchr::memchr(b'\n', &block[i..]).map_or(n, |o| i + o);
            end = nl;
            i = (nl + 1).min(n);
            if i < n && (block[i] == b' ' || block[i] == b'\t') {
                continue;
            }
            break;
        }
        let line = &block[line_start..end];
        let line = strip_cr(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err("Continuation line without a header");
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("Header line without colon")?;
        let raw_name = trim_lws(&line[..colon]);
        if raw_name.is_empty() || !raw_name.iter().all(|&b| is_token(b)) {
            return Err("Malformed header name");
        }
        // Only WSP may stand between the name and the colon.
        if line[raw_name.len()..colon]
            .iter()
            .any(|&b| b != b' ' && b != b'\t')
        {
            return Err("Malformed header name");
        }
        let value = trim_lws(&line[colon + 1..]);
        let name = HeaderName::from_bytes(raw_name, || base.slice_ref(raw_name));
        headers.push(Header {
            name,
            raw_name: base.slice_ref(raw_name),
            value: base.slice_ref(value),
        });
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 4\r\n\r\nbody";

    #[test]
    fn stream_framing() {
        assert_eq!(
            frame(OPTIONS, 65535),
            Ok(Frame::Message {
                skip: 0,
                len: OPTIONS.len()
            })
        );
        assert_eq!(
            frame(&OPTIONS[..OPTIONS.len() - 1], 65535),
            Ok(Frame::Incomplete)
        );
        assert_eq!(frame(&OPTIONS[..20], 65535), Ok(Frame::Incomplete));
        assert_eq!(frame(b"\r\n\r\n", 65535), Ok(Frame::KeepAlive { len: 4 }));
        assert_eq!(frame(OPTIONS, 30), Err(FrameError::TooLarge(30)));
        let mut two = b"\r\n".to_vec();
        two.extend_from_slice(OPTIONS);
        assert_eq!(
            frame(&two, 65535),
            Ok(Frame::Message {
                skip: 2,
                len: OPTIONS.len()
            })
        );
        assert_eq!(
            frame(
                b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
                65535
            ),
            Err(FrameError::BadContentLength)
        );
    }

    #[test]
    fn datagram_trailing_octets_ignored() {
        let mut d = OPTIONS.to_vec();
        d.extend_from_slice(b"garbage");
        let m = parse_message(Bytes::from(d)).unwrap();
        match m {
            SipMessage::Request(r) => assert_eq!(&r.body[..], b"body"),
            SipMessage::Response(_) => panic!(),
        }
    }

    #[test]
    fn status_lines() {
        let r = parse_message(Bytes::from_static(b"SIP/2.0 100 \r\nVia: x\r\n\r\n")).unwrap();
        assert!(matches!(
            r,
            SipMessage::Response(Response { status: 100, .. })
        ));
        assert!(parse_message(Bytes::from_static(b"SIP/2.0 4294967301 big\r\n\r\n")).is_err());
        assert!(parse_message(Bytes::from_static(b"SIP/2.0 099 low\r\n\r\n")).is_err());
    }
}
