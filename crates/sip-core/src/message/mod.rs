//! SIP messages: sip-core's own parser and serializer (RFC 3261 §7, §25; RFC 4475; RFC 5118).
//!
//! Layout:
//! - [`parse`]: framing — start line, header lines, body by Content-Length, for datagrams
//!   ([`parse_message`]) and streams ([`frame`]).
//! - [`header`]: header names (compact forms included) and the ordered raw header list.
//! - [`uri`]: `sip:`/`sips:`/`tel:` URIs and opaque other schemes.
//! - [`typed`]: on-demand typed views of the headers a B2BUA needs (Via, name-addrs, CSeq, ...).
//!
//! Values are `Bytes` slices of the received buffer: unknown headers, reason phrases and
//! bodies pass through byte-exact. Typed parsing happens only when a header is asked for,
//! except for [`Request::check`], which the server runs once on every request it takes in.

mod header;
mod parse;
mod scan;
pub mod typed;
mod uri;

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::sync::OnceLock;

pub use header::{unfold, Header, HeaderName, HeaderRef, HeaderValue, Headers};
pub use parse::{frame, parse_message, Frame, FrameError, Rejected};
pub use scan::unquote;
pub use typed::{
    CSeq, ContactValue, NameAddr, NameAddrView, RAck, Reason, SessionExpires, Via, ViaView,
};
pub use uri::{
    push_ip, socket_addr_text, Host, HostView, ParamIter, Params, ParamsView, SipUri, SipUriView,
    TelUri, Uri, UriView,
};

/// Errors of the typed header layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("multiple {0} headers")]
    Multiple(&'static str),
}

/// A request method. Extension methods keep their token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Prack,
    Update,
    Info,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Extension(Bytes),
}

impl Method {
    pub(crate) fn from_token(base: &Bytes, t: &[u8]) -> Method {
        // Methods are case-sensitive (RFC 3261 §7.1).
        match t {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"INFO" => Method::Info,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Extension(base.slice_ref(t)),
        }
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow::Borrowed;
        match self {
            Method::Invite => Borrowed("INVITE"),
            Method::Ack => Borrowed("ACK"),
            Method::Bye => Borrowed("BYE"),
            Method::Cancel => Borrowed("CANCEL"),
            Method::Options => Borrowed("OPTIONS"),
            Method::Register => Borrowed("REGISTER"),
            Method::Prack => Borrowed("PRACK"),
            Method::Update => Borrowed("UPDATE"),
            Method::Info => Borrowed("INFO"),
            Method::Subscribe => Borrowed("SUBSCRIBE"),
            Method::Notify => Borrowed("NOTIFY"),
            Method::Refer => Borrowed("REFER"),
            Method::Message => Borrowed("MESSAGE"),
            Method::Publish => Borrowed("PUBLISH"),
            Method::Extension(b) => String::from_utf8_lossy(b),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// A SIP request.
#[derive(Clone)]
pub struct Request {
    pub method: Method,
    /// The Request-URI ([`Request::uri`]).
    uri: RequestUri,
    pub headers: Headers,
    pub body: Bytes,
}

/// A Request-URI: as received (its text, checked by the parser and turned into a [`Uri`]
/// the first time it is asked for), or as set.
#[derive(Clone)]
struct RequestUri {
    /// The text as received; empty for a request built here.
    text: Bytes,
    /// Boxed: most requests never ask, and the request stays small.
    parsed: OnceLock<Box<Uri>>,
}

impl RequestUri {
    fn received(text: Bytes) -> RequestUri {
        RequestUri {
            text,
            parsed: OnceLock::new(),
        }
    }

    fn set(uri: Uri) -> RequestUri {
        RequestUri {
            text: Bytes::new(),
            parsed: OnceLock::from(Box::new(uri)),
        }
    }

    fn get(&self) -> &Uri {
        self.parsed.get_or_init(|| {
            // The parser took this text only after `UriView::parse` accepted it, and parsing
            // is deterministic, so the fallback is never used; it keeps this free of panics.
            Box::new(
                Uri::parse_in(&self.text, &self.text).unwrap_or_else(|_| Uri::Other {
                    scheme: Bytes::from_static(b"invalid"),
                    opaque: self.text.clone(),
                }),
            )
        })
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("uri", self.uri())
            .field("headers", &self.headers)
            .field("body", &self.body)
            .finish()
    }
}

impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        self.method == other.method
            && self.uri() == other.uri()
            && self.headers == other.headers
            && self.body == other.body
    }
}

impl Eq for Request {}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The reason phrase as received (may be empty or UTF-8).
    pub reason: Bytes,
    pub headers: Headers,
    pub body: Bytes,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipMessage {
    Request(Request),
    Response(Response),
}

impl SipMessage {
    pub fn headers(&self) -> &Headers {
        match self {
            SipMessage::Request(r) => &r.headers,
            SipMessage::Response(r) => &r.headers,
        }
    }

    pub fn encode(&self) -> Bytes {
        match self {
            SipMessage::Request(r) => r.encode(),
            SipMessage::Response(r) => r.encode(),
        }
    }
}

/// Typed access shared by requests and responses.
/// The `Path` header (RFC 3327), kept as an extension name.
pub const PATH: HeaderName = HeaderName::Other(Bytes::from_static(b"Path"));

pub trait HeaderAccess {
    fn headers(&self) -> &Headers;

    /// Every Via, top first.
    fn vias(&self) -> Result<Vec<Via>, ParseError> {
        let mut out = Vec::with_capacity(2);
        for v in self.headers().get_all(&HeaderName::Via) {
            Via::parse_list(v.base(), &v, &mut out)?;
        }
        if out.is_empty() {
            return Err(ParseError::Missing("Via"));
        }
        Ok(out)
    }

    /// The topmost Via.
    fn top_via(&self) -> Result<Via, ParseError> {
        let v = self
            .headers()
            .get(&HeaderName::Via)
            .ok_or(ParseError::Missing("Via"))?;
        Via::parse_first(v.base(), &v)
    }

    /// The topmost Via, borrowed (nothing allocated or shared).
    fn view_top_via(&self) -> Result<ViaView<'_>, ParseError> {
        let v = self
            .headers()
            .get(&HeaderName::Via)
            .ok_or(ParseError::Missing("Via"))?;
        ViaView::parse_first(v.as_bytes())
    }

    fn from(&self) -> Result<NameAddr, ParseError> {
        let v = single(self.headers(), &HeaderName::From, "From")?;
        NameAddrView::parse_single(v.as_bytes()).map(|n| n.to_owned(v.base()))
    }

    /// The From header, borrowed.
    fn view_from(&self) -> Result<NameAddrView<'_>, ParseError> {
        let v = single(self.headers(), &HeaderName::From, "From")?;
        NameAddrView::parse_single(v.as_bytes())
    }

    fn to(&self) -> Result<NameAddr, ParseError> {
        let v = single(self.headers(), &HeaderName::To, "To")?;
        NameAddrView::parse_single(v.as_bytes()).map(|n| n.to_owned(v.base()))
    }

    /// The To header, borrowed.
    fn view_to(&self) -> Result<NameAddrView<'_>, ParseError> {
        let v = single(self.headers(), &HeaderName::To, "To")?;
        NameAddrView::parse_single(v.as_bytes())
    }

    fn call_id(&self) -> Result<HeaderValue<'_>, ParseError> {
        single(self.headers(), &HeaderName::CallId, "Call-ID")
    }

    fn call_id_str(&self) -> String {
        self.call_id()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default()
    }

    fn cseq(&self) -> Result<CSeq, ParseError> {
        let v = single(self.headers(), &HeaderName::CSeq, "CSeq")?;
        CSeq::parse(v.base(), &v)
    }

    fn contacts(&self) -> Result<Option<ContactValue>, ParseError> {
        let mut out = Vec::new();
        let mut any = false;
        for v in self.headers().get_all(&HeaderName::Contact) {
            any = true;
            if scan::trim_lws(&v) == b"*" {
                return Ok(Some(ContactValue::Wildcard));
            }
            NameAddr::parse_list(v.base(), &v, &mut out)?;
        }
        Ok(any.then_some(ContactValue::Addrs(out)))
    }

    /// The first Contact's name-addr, if any.
    fn contact(&self) -> Result<Option<NameAddr>, ParseError> {
        Ok(first_contact(self.headers())?.map(|(n, base)| n.to_owned(base)))
    }

    /// The first Contact's name-addr, borrowed.
    fn view_contact(&self) -> Result<Option<NameAddrView<'_>>, ParseError> {
        Ok(first_contact(self.headers())?.map(|(n, _)| n))
    }

    fn record_routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        name_addr_list(self.headers(), &HeaderName::RecordRoute)
    }

    fn routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        name_addr_list(self.headers(), &HeaderName::Route)
    }

    /// RFC 3327 `Path` values, in order (an extension header: [`PATH`]).
    fn paths(&self) -> Result<Vec<NameAddr>, ParseError> {
        name_addr_list(self.headers(), &PATH)
    }

    fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        match self.headers().get(&HeaderName::MaxForwards) {
            Some(v) => Ok(Some(typed::parse_number(&v, 255)? as u8)),
            None => Ok(None),
        }
    }

    fn expires(&self) -> Result<Option<u32>, ParseError> {
        match self.headers().get(&HeaderName::Expires) {
            Some(v) => Ok(Some(typed::parse_number(&v, u64::from(u32::MAX))? as u32)),
            None => Ok(None),
        }
    }

    fn content_type(&self) -> Option<String> {
        self.headers()
            .get(&HeaderName::ContentType)
            .map(|v| unfold(&v).trim().to_ascii_lowercase())
    }

    /// Whether the media type of Content-Type (parameters left out) is `mime`, compared
    /// case-insensitively (RFC 3261 §20.15).
    fn content_type_is(&self, mime: &str) -> bool {
        self.headers()
            .get(&HeaderName::ContentType)
            .is_some_and(|v| {
                let t = v.as_bytes();
                let t = &t[..scan::find_byte(b';', t).unwrap_or(t.len())];
                let t = scan::trim_lws(t);
                // type "/" subtype, with optional LWS around the slash.
                match (scan::find_byte(b'/', t), mime.split_once('/')) {
                    (Some(i), Some((ty, sub))) => {
                        scan::trim_lws(&t[..i]).eq_ignore_ascii_case(ty.as_bytes())
                            && scan::trim_lws(&t[i + 1..]).eq_ignore_ascii_case(sub.as_bytes())
                    }
                    _ => false,
                }
            })
    }

    fn session_expires(&self) -> Result<Option<SessionExpires>, ParseError> {
        match self.headers().get(&HeaderName::SessionExpires) {
            Some(v) => Ok(Some(SessionExpires::parse(&v)?)),
            None => Ok(None),
        }
    }

    fn reasons(&self) -> Result<Vec<Reason>, ParseError> {
        let mut out = Vec::new();
        for v in self.headers().get_all(&HeaderName::Reason) {
            out.extend(Reason::parse_list(&v)?);
        }
        Ok(out)
    }

    /// A header's value as text (folds replaced by spaces).
    fn header_str(&self, name: &HeaderName) -> Option<String> {
        self.headers().get(name).map(|v| v.to_str().into_owned())
    }

    /// Whether a token list header (Supported, Require...) contains `option`.
    fn has_option(&self, name: &HeaderName, option: &str) -> bool {
        self.headers().get_all(name).any(|v| {
            typed::parse_token_list(&v)
                .map(|l| l.iter().any(|t| t.eq_ignore_ascii_case(option.as_bytes())))
                .unwrap_or(false)
        })
    }
}

fn single<'a>(
    h: &'a Headers,
    name: &'a HeaderName,
    label: &'static str,
) -> Result<HeaderValue<'a>, ParseError> {
    if h.is_repeated(name) {
        return Err(ParseError::Multiple(label));
    }
    h.get(name).ok_or(ParseError::Missing(label))
}

/// The first name-addr of the Contact header fields and the buffer it is in; every value
/// is checked, `*` means none.
fn first_contact(h: &Headers) -> Result<Option<(NameAddrView<'_>, &Bytes)>, ParseError> {
    let mut first = None;
    for v in h.get_all(&HeaderName::Contact) {
        if scan::trim_lws(&v) == b"*" {
            return Ok(None);
        }
        let na = NameAddrView::parse_first(v.as_bytes())?;
        first.get_or_insert((na, v.base()));
    }
    Ok(first)
}

fn name_addr_list(h: &Headers, name: &HeaderName) -> Result<Vec<NameAddr>, ParseError> {
    let mut out = Vec::new();
    for v in h.get_all(name) {
        NameAddr::parse_list(v.base(), &v, &mut out)?;
    }
    Ok(out)
}

impl HeaderAccess for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl HeaderAccess for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

/// Why a request is refused before any application logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    pub status: u16,
    pub reason: String,
}

impl Request {
    /// A request as received: `uri` is the Request-URI's text, already checked with
    /// [`UriView::parse`].
    pub(crate) fn received(method: Method, uri: Bytes, headers: Headers, body: Bytes) -> Request {
        Request {
            method,
            uri: RequestUri::received(uri),
            headers,
            body,
        }
    }

    /// The Request-URI (parsed into a [`Uri`] on first use).
    pub fn uri(&self) -> &Uri {
        self.uri.get()
    }

    /// Replaces the Request-URI.
    pub fn set_uri(&mut self, uri: Uri) {
        self.uri = RequestUri::set(uri);
    }

    /// A new request with no headers.
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri: RequestUri::set(uri),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Validates the core header fields (RFC 3261 §8.2, RFC 4475 §3.1.2 and §3.3): present,
    /// single where they must be, well-formed, scalars within range. On failure, the status
    /// and reason phrase to answer with.
    pub fn check(&self) -> Result<(), CheckFailure> {
        let fail = |status: u16, reason: String| Err(CheckFailure { status, reason });
        let bad = |e: ParseError, what: &str| CheckFailure {
            status: 400,
            reason: match e {
                ParseError::Missing(h) => format!("Missing {h} header"),
                ParseError::Multiple(h) => format!("Multiple {h} headers"),
                ParseError::Invalid(r) => format!("Bad {what}: {r}"),
            },
        };
        // Every value of every list is checked, through borrowed views (nothing kept).
        let mut vias = 0;
        for v in self.headers.get_all(&HeaderName::Via) {
            ViaView::parse_each(v.as_bytes(), |_| vias += 1).map_err(|e| bad(e, "Via"))?;
        }
        if vias == 0 {
            return Err(bad(ParseError::Missing("Via"), "Via"));
        }
        self.view_from().map_err(|e| bad(e, "From"))?;
        self.view_to().map_err(|e| bad(e, "To"))?;
        let call_id = self.call_id().map_err(|e| bad(e, "Call-ID"))?;
        if call_id.is_empty() || call_id.iter().any(|&b| b <= b' ') {
            return fail(400, "Bad Call-ID".into());
        }
        let cseq = self.cseq().map_err(|e| bad(e, "CSeq"))?;
        if cseq.method != self.method {
            if matches!(self.method, Method::Extension(_)) {
                return fail(501, "Not Implemented".into());
            }
            return fail(400, "CSeq method does not match the request method".into());
        }
        for (name, label) in [
            (HeaderName::MaxForwards, "Max-Forwards"),
            (HeaderName::ContentType, "Content-Type"),
            (HeaderName::Expires, "Expires"),
        ] {
            if self.headers.is_repeated(&name) {
                return fail(400, format!("Multiple {label} headers"));
            }
        }
        self.max_forwards().map_err(|e| bad(e, "Max-Forwards"))?;
        self.expires().map_err(|e| bad(e, "Expires"))?;
        let mut wildcard = false;
        let mut bad_expires = false;
        for v in self.headers.get_all(&HeaderName::Contact) {
            if scan::trim_lws(&v) == b"*" {
                wildcard = true;
                continue;
            }
            NameAddrView::parse_each(v.as_bytes(), |a| {
                if let Some(v) = a.params.get("expires") {
                    let ok = v
                        .map(|v| typed::parse_number(v, u64::from(u32::MAX)).is_ok())
                        .unwrap_or(false);
                    bad_expires |= !ok;
                }
                Ok(())
            })
            .map_err(|e| bad(e, "Contact"))?;
        }
        if !wildcard && bad_expires {
            return fail(400, "Bad Contact expires parameter".into());
        }
        if wildcard && self.method != Method::Register {
            return fail(400, "Contact * outside REGISTER".into());
        }
        for (name, label) in [
            (HeaderName::Route, "Route"),
            (HeaderName::RecordRoute, "Record-Route"),
        ] {
            for v in self.headers.get_all(&name) {
                NameAddrView::parse_each(v.as_bytes(), |_| Ok(())).map_err(|e| bad(e, label))?;
            }
        }
        let uri_headers = match self.uri.parsed.get() {
            Some(u) => u.as_sip().is_some_and(|u| u.headers.is_some()),
            None => UriView::parse(&self.uri.text)
                .ok()
                .and_then(|u| u.as_sip().map(|u| u.headers.is_some()))
                .unwrap_or(false),
        };
        if uri_headers {
            return fail(400, "Request-URI must not carry headers".into());
        }
        Ok(())
    }

    /// Serializes the request; Content-Length is always written and always true.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(256 + self.body.len() + self.headers.len() * 48);
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        match self.uri.parsed.get() {
            // Written in place (`BytesMut` is a `fmt::Write`), with no text of its own first;
            // writing into memory cannot fail.
            Some(u) => {
                use std::fmt::Write as _;
                let _ = write!(out, "{u}");
            }
            // Never parsed nor changed: the text as received.
            None => out.put_slice(&self.uri.text),
        }
        out.put_slice(b" SIP/2.0\r\n");
        encode_rest(&mut out, &self.headers, &self.body);
        out.freeze()
    }
}

impl Response {
    /// A response to `req` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID and CSeq copied.
    pub fn for_request(req: &Request, status: u16) -> Response {
        Response::for_headers(&req.headers, status)
    }

    /// A response built from the header fields of a request that may not have parsed fully.
    pub fn for_headers(h: &Headers, status: u16) -> Response {
        let mut headers = Headers::with_capacity(8);
        for f in h.iter() {
            let name = f.name();
            if matches!(
                name,
                HeaderName::Via
                    | HeaderName::From
                    | HeaderName::To
                    | HeaderName::CallId
                    | HeaderName::CSeq
            ) {
                headers.push(Header::new(name, f.value().to_bytes()));
            }
        }
        Response {
            status,
            reason: Bytes::from_static(reason_phrase(status).as_bytes()),
            headers,
            body: Bytes::new(),
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Response {
        self.reason = Bytes::from(reason.into());
        self
    }

    /// Adds `;tag=` to the To header when it has none.
    pub fn set_to_tag(&mut self, tag: &str) {
        if let Some(to) = self.headers.get(&HeaderName::To).map(|v| v.to_bytes()) {
            // Read in place: nothing of the To is kept but its text.
            let has_tag = typed::NameAddrView::parse_single(&to)
                .map(|n| n.tag().is_some())
                .unwrap_or(true);
            if !has_tag {
                let mut v = Vec::with_capacity(to.len() + 5 + tag.len());
                v.extend_from_slice(&to);
                v.extend_from_slice(b";tag=");
                v.extend_from_slice(tag.as_bytes());
                self.headers.set(HeaderName::To, v);
            }
        }
    }

    pub fn is_provisional(&self) -> bool {
        self.status < 200
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(256 + self.body.len() + self.headers.len() * 48);
        out.put_slice(b"SIP/2.0 ");
        let s = self.status.min(999);
        out.put_slice(&[
            b'0' + (s / 100) as u8,
            b'0' + (s / 10 % 10) as u8,
            b'0' + (s % 10) as u8,
        ]);
        out.put_u8(b' ');
        out.put_slice(&self.reason);
        out.put_slice(b"\r\n");
        encode_rest(&mut out, &self.headers, &self.body);
        out.freeze()
    }
}

fn encode_rest(out: &mut BytesMut, headers: &Headers, body: &Bytes) {
    for h in headers.iter() {
        if h.is(&HeaderName::ContentLength) {
            continue;
        }
        out.put_slice(h.raw_name());
        out.put_slice(b": ");
        out.put_slice(&h.value());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    out.put_slice(body.len().to_string().as_bytes());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(body);
}

/// The default reason phrase of a status code (RFC 3261 §21 and extensions).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        429 => "Too Many Requests",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match status / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Request {
        match parse_message(Bytes::copy_from_slice(s.replace('\n', "\r\n").as_bytes())) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport\nMax-Forwards: 70\nFrom: \"Alice\" <sip:alice@example.com>;tag=1928301774\nTo: <sip:bob@example.com>\nCall-ID: a84b4c76e66710\nCSeq: 314159 INVITE\nContact: <sip:alice@10.0.0.1:5060>\nX-Custom:   keep   this  \nContent-Type: application/sdp\nContent-Length: 4\n\nv=0\n";

    #[test]
    fn request_roundtrip_and_typed() {
        let r = req(INVITE);
        assert_eq!(r.method, Method::Invite);
        r.check().unwrap();
        assert_eq!(r.cseq().unwrap().seq, 314159);
        assert_eq!(r.from().unwrap().tag(), Some(&b"1928301774"[..]));
        assert_eq!(r.top_via().unwrap().rport(), Some(None));
        assert_eq!(&r.body[..], b"v=0\r");
        assert_eq!(
            r.headers.get_other("x-custom").map(|v| v.as_bytes()),
            Some(&b"keep   this"[..])
        );
        let again = match parse_message(r.encode()) {
            Ok(SipMessage::Request(x)) => x,
            other => panic!("{other:?}"),
        };
        assert_eq!(again, r);
    }

    #[test]
    fn response_for_request_copies_headers() {
        let r = req(INVITE);
        let mut resp = Response::for_request(&r, 486);
        resp.set_to_tag("xyz");
        let enc = resp.encode();
        let text = String::from_utf8_lossy(&enc);
        assert!(text.starts_with("SIP/2.0 486 Busy Here\r\n"), "{text}");
        assert!(text.contains("To: <sip:bob@example.com>;tag=xyz\r\n"));
        assert!(text.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn first_contact_checks_every_value() {
        let with =
            |contacts: &str| req(&INVITE.replace("Contact: <sip:alice@10.0.0.1:5060>", contacts));
        let r = with(
            "Contact: <sip:a@x.example.com>, <sip:b@y.example.com>\nContact: <sip:c@z.example.com>",
        );
        let c = r.contact().unwrap().unwrap();
        assert_eq!(c.uri.to_string(), "sip:a@x.example.com");
        let r = with("Contact: <sip:a@x.example.com>\nContact: <sip:c@z.example.com");
        assert!(r.contact().is_err());
        assert!(r.contacts().is_err());
        let r = with("Contact: *");
        assert_eq!(r.contact(), Ok(None));
    }

    #[test]
    fn check_failures() {
        let r = req(&INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 OPTIONS"));
        assert_eq!(r.check().unwrap_err().status, 400);
        let r = req(&INVITE.replace("Max-Forwards: 70", "Max-Forwards: 300"));
        assert_eq!(r.check().unwrap_err().status, 400);
        let r = req(&INVITE.replace("Call-ID: a84b4c76e66710\n", ""));
        assert_eq!(r.check().unwrap_err().reason, "Missing Call-ID header");
        let r = req(&INVITE.replace(
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport\n",
            "",
        ));
        assert_eq!(r.check().unwrap_err().reason, "Missing Via header");
        // Every value of every list is checked, not only the first.
        let r = req(&INVITE.replace(
            "Max-Forwards: 70\n",
            "Via: SIP/2.0/UDP 10.0.0.2, SIP/2.0/UDP\nMax-Forwards: 70\n",
        ));
        assert!(r.check().unwrap_err().reason.starts_with("Bad Via: "));
        let r = req(&INVITE.replace(
            "Max-Forwards: 70\n",
            "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com\nMax-Forwards: 70\n",
        ));
        assert!(r
            .check()
            .unwrap_err()
            .reason
            .starts_with("Bad Record-Route: "));
        let r = req(&INVITE.replace(
            "Max-Forwards: 70\n",
            "Route: <sip:p1.example.com;lr>\nRoute: x y\nMax-Forwards: 70\n",
        ));
        assert!(r.check().unwrap_err().reason.starts_with("Bad Route: "));
        assert_eq!(req(INVITE).check(), Ok(()));
    }
}
