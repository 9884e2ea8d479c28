//! Framing: start line, header lines (folding, LWS before the colon, compact names), and the
//! body by Content-Length (RFC 3261 §7, §18.3), for datagrams and for streams.

use bytes::Bytes;

use super::header::{canonical_prefix, HeaderName, Headers};
use super::scan::{find_byte, is_lws, is_token, parse_decimal, trim_lws};
use super::uri::UriView;
use super::{Method, Request, Response, SipMessage};

/// Why a message could not be taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The status to answer with when the message was a request (400 or 505).
    pub status: u16,
    pub reason: &'static str,
    /// The header fields, when the message looked like a request and its header block
    /// could be split: enough to build the error response.
    pub request_headers: Option<Box<Headers>>,
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
        request_headers: headers.map(Box::new),
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

/// The logical header lines of a header block (RFC 3261 §7.3.1): a line that starts with SP
/// or HT continues the previous one. [`frame`] and [`parse_message`] both walk a message
/// with this, so they read the same header fields (a folded Content-Length included).
///
/// Each item is the span of one header field, from its name to the end of its last
/// continuation line, without the line end. The walk stops at the empty line that ends the
/// block ([`LogicalLines::body_start`] then tells where the body starts) or where the buffer
/// ends before that empty line (the block is incomplete).
pub(crate) struct LogicalLines<'a> {
    buf: &'a [u8],
    pos: usize,
    body_start: Option<usize>,
}

impl<'a> LogicalLines<'a> {
    /// Walks the header lines of `buf` starting at `pos` (just after the start line).
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        LogicalLines {
            buf,
            pos,
            body_start: None,
        }
    }

    /// Where the body starts, once the walk has reached the empty line.
    pub(crate) fn body_start(&self) -> Option<usize> {
        self.body_start
    }

    /// The next logical line as `start..end` offsets into the buffer.
    #[inline]
    pub(crate) fn next_span(&mut self) -> Option<(usize, usize)> {
        let buf = self.buf;
        let start = self.pos;
        if self.body_start.is_some() || start >= buf.len() {
            return None;
        }
        let mut nl = start + find_byte(b'\n', &buf[start..])?;
        if nl == start || (nl == start + 1 && buf[start] == b'\r') {
            // The empty line: end of the header block.
            self.body_start = Some(nl + 1);
            self.pos = nl + 1;
            return None;
        }
        loop {
            match buf.get(nl + 1) {
                Some(b' ' | b'\t') => {
                    nl = nl + 1 + find_byte(b'\n', &buf[nl + 1..])?;
                }
                Some(_) => break,
                // Whether a continuation follows is not known yet.
                None => return None,
            }
        }
        self.pos = nl + 1;
        let end = if nl > start && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        Some((start, end))
    }
}

/// The end of the start line (its LF), and where the header lines begin.
fn start_line_end(buf: &[u8]) -> Option<usize> {
    find_byte(b'\n', buf)
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
    let incomplete = || {
        if msg.len() > max_size {
            Err(FrameError::TooLarge(max_size))
        } else {
            Ok(Frame::Incomplete)
        }
    };
    let Some(first_nl) = start_line_end(msg) else {
        return incomplete();
    };
    let mut lines = LogicalLines::new(msg, first_nl + 1);
    let mut content_length: Option<usize> = None;
    while let Some((start, end)) = lines.next_span() {
        let line = &msg[start..end];
        let Some(colon) = memchr::memchr(b':', line) else {
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
    let Some(body_start) = lines.body_start() else {
        return incomplete();
    };
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
    let data = if skip == 0 { data } else { data.slice(skip..) };
    // Header fields are kept as 32-bit offsets (transports cap messages far below this).
    if data.len() > u32::MAX as usize {
        return Err(too_large());
    }
    let Some(first_nl) = start_line_end(&data) else {
        return Err(reject("Incomplete header block", None));
    };
    let start_line = strip_cr(&data[..first_nl]);
    let is_response = start_line.starts_with(b"SIP/");
    let mut lines = LogicalLines::new(&data, first_nl + 1);
    let split = split_headers(&data, &mut lines);
    if split.is_err() {
        // Walk to the end of the block so an incomplete block is told from a bad field.
        while lines.next_span().is_some() {}
    }
    let Some(body_start) = lines.body_start() else {
        return Err(reject("Incomplete header block", None));
    };
    let (headers, content_length) = match split {
        Ok(h) => h,
        Err(reason) => return Err(reject(reason, None)),
    };
    let hdrs_opt = |h: Headers| (!is_response).then_some(h);

    // Content-Length: every value must agree (RFC 4475 §3.3.9), none may be negative or huge.
    let content_length = match content_length {
        Ok(c) => c,
        Err(reason) => return Err(reject(reason, hdrs_opt(headers))),
    };
    let available = data.len().saturating_sub(body_start);
    let body = match content_length {
        Some(n) if n > available => {
            return Err(reject(
                "Content-Length larger than message",
                hdrs_opt(headers),
            ))
        }
        Some(0) => Bytes::new(),
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
            Ok((method, uri)) => Ok(SipMessage::Request(Request::received(
                method, uri, headers, body,
            ))),
            Err(LineError::Version) => Err(Rejected {
                status: 505,
                reason: "Version Not Supported",
                request_headers: Some(Box::new(headers)),
            }),
            Err(LineError::Bad(reason)) => Err(reject(reason, Some(headers))),
        }
    }
}

#[cold]
fn too_large() -> Rejected {
    reject("Message too large", None)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

enum LineError {
    Bad(&'static str),
    Version,
}

fn parse_request_line(base: &Bytes, line: &[u8]) -> Result<(Method, Bytes), LineError> {
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
    // Checked now (a bad one is answered with 400), turned into a `Uri` when first asked for.
    UriView::parse(uri).map_err(|_| LineError::Bad("Malformed Request-URI"))?;
    Ok((Method::from_token(base, method), base.slice_ref(uri)))
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

/// What the Content-Length fields of a message say: `Ok(None)` when there are none.
type ContentLength = Result<Option<usize>, &'static str>;

/// Splits the header block into fields, walking `lines` to the empty line. Continuation
/// lines (starting with SP/HT) are part of the previous field's value (kept in place, not
/// copied). Reads Content-Length on the way: every value must agree (RFC 4475 §3.3.9), none
/// may be negative or huge.
fn split_headers(
    base: &Bytes,
    lines: &mut LogicalLines<'_>,
) -> Result<(Headers, ContentLength), &'static str> {
    // About one field per 40 octets of a typical header block; few messages regrow.
    let mut headers = Headers::over(base.clone(), base.len() / 48 + 8);
    let mut content_length: ContentLength = Ok(None);
    let content_length_code = HeaderName::ContentLength.code();
    while let Some((start, end)) = lines.next_span() {
        let line = &base[start..end];
        let (code, vs, ve) = match canonical_prefix(line) {
            // The common case: a known name spelt canonically, the colon right after it.
            Some((code, len)) => {
                let (vs, ve) = trim_lws_range(line, len + 1);
                headers.push_wire_coded(code, (start, start + len), (start + vs, start + ve));
                (code, vs, ve)
            }
            None => {
                // The name (token octets), optional WSP, then the colon: one walk.
                let mut i = 0;
                while i < line.len() && is_token(line[i]) {
                    i += 1;
                }
                let name_end = i;
                while i < line.len() && matches!(line[i], b' ' | b'\t') {
                    i += 1;
                }
                if name_end == 0 || line.get(i) != Some(&b':') {
                    return Err(if matches!(line.first(), Some(b' ' | b'\t')) {
                        "Continuation line without a header"
                    } else if memchr::memchr(b':', line).is_none() {
                        "Header line without colon"
                    } else {
                        "Malformed header name"
                    });
                }
                let colon = i;
                let (vs, ve) = trim_lws_range(line, colon + 1);
                let code = headers.push_wire((start, start + name_end), (start + vs, start + ve));
                (code, vs, ve)
            }
        };
        if code == content_length_code {
            if let Ok(previous) = content_length {
                content_length = match parse_decimal(&line[vs..ve], u64::from(u32::MAX)) {
                    None => Err("Bad Content-Length"),
                    Some(n) if previous.is_some_and(|c| c != n as usize) => {
                        Err("Conflicting Content-Length values")
                    }
                    Some(n) => Ok(Some(n as usize)),
                };
            }
        }
    }
    Ok((headers, content_length))
}

/// The `start..end` of `line[from..]` without its leading and trailing LWS.
#[inline]
fn trim_lws_range(line: &[u8], from: usize) -> (usize, usize) {
    let mut s = from;
    let mut e = line.len();
    while s < e && is_lws(line[s]) {
        s += 1;
    }
    while e > s && is_lws(line[e - 1]) {
        e -= 1;
    }
    (s, e)
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

    /// Frames `msg` and parses the frame: the framer's verdict and the parser's.
    fn frame_and_parse(msg: &[u8]) -> (Result<Frame, FrameError>, Result<SipMessage, Rejected>) {
        (
            frame(msg, 65535),
            parse_message(Bytes::copy_from_slice(msg)),
        )
    }

    #[test]
    fn folded_content_length_frames_like_it_parses() {
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length:\r\n 4\r\n\r\nbody";
        let (f, p) = frame_and_parse(msg);
        assert_eq!(
            f,
            Ok(Frame::Message {
                skip: 0,
                len: msg.len()
            })
        );
        match p {
            Ok(SipMessage::Request(r)) => assert_eq!(&r.body[..], b"body"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn continuation_after_content_length_is_part_of_its_value() {
        let (f, p) = frame_and_parse(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n x\r\n\r\n");
        assert_eq!(f, Err(FrameError::BadContentLength));
        assert_eq!(p.map_err(|r| r.reason), Err("Bad Content-Length"));
        // A continuation that looks like a compact Content-Length is the Subject's value.
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nSubject: a\r\n l: 5\r\n\r\nhello";
        let (f, p) = frame_and_parse(msg);
        assert_eq!(
            f,
            Ok(Frame::Message {
                skip: 0,
                len: msg.len() - 5
            })
        );
        match p {
            Ok(SipMessage::Request(r)) => assert_eq!(&r.body[..], b"hello"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framer_waits_for_a_possible_continuation() {
        // The last header line may still be continued: not a whole block yet.
        assert_eq!(
            frame(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n", 65535),
            Ok(Frame::Incomplete)
        );
        assert_eq!(
            frame(b"OPTIONS sip:a@b SIP/2.0\r\nl:\r\n", 65535),
            Ok(Frame::Incomplete)
        );
        let whole = b"OPTIONS sip:a@b SIP/2.0\r\nl:\r\n 2\r\n\r\nab";
        assert_eq!(
            frame(whole, 65535),
            Ok(Frame::Message {
                skip: 0,
                len: whole.len()
            })
        );
    }

    #[test]
    fn bad_field_in_a_whole_block_is_not_incomplete() {
        let r = parse_message(Bytes::from_static(
            b"OPTIONS sip:a@b SIP/2.0\r\nno colon\r\n\r\n",
        ));
        assert_eq!(
            r.map_err(|r| r.reason).err(),
            Some("Header line without colon")
        );
        let r = parse_message(Bytes::from_static(
            b"OPTIONS sip:a@b SIP/2.0\r\n bad: x\r\n\r\n",
        ));
        assert_eq!(
            r.map_err(|r| r.reason).err(),
            Some("Continuation line without a header")
        );
        let r = parse_message(Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n"));
        assert_eq!(
            r.map_err(|r| r.reason).err(),
            Some("Incomplete header block")
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
