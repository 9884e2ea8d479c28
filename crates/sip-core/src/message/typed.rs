//! Typed views of the header fields the B2BUA works with. Each is parsed on demand from the
//! raw value: first into a borrowed view ([`ViaView`], [`NameAddrView`]: slices of the
//! value, no allocation, no reference count), then, when the caller wants to keep it, into
//! an owned value whose parts share the received datagram (no copies).

use bytes::Bytes;
use std::fmt;

use super::scan::{any_ctl_or_space, find_byte, is_token, parse_decimal, shared_word, Scanner};
use super::uri::{
    after_hostport_error, scan_hostport, share, Host, HostView, Params, ParamsView, Uri, UriView,
};
use super::{Method, ParseError};

/// One Via header field value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The transport token as written (`UDP`, `TCP`, `TLS`, `SCTP`, or an unknown one).
    pub transport: Bytes,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

/// One Via header field value, borrowed from the header it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaView<'a> {
    /// The transport token as written.
    pub transport: &'a [u8],
    pub host: HostView<'a>,
    pub port: Option<u16>,
    pub params: ParamsView<'a>,
}

impl<'a> ViaView<'a> {
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params.get("branch").flatten()
    }

    pub fn received(&self) -> Option<&'a [u8]> {
        self.params.get("received").flatten()
    }

    /// `Some(None)` when `rport` is present without a value (the client asks for it, RFC 3581).
    pub fn rport(&self) -> Option<Option<u16>> {
        rport_of(self.params.get("rport"))
    }

    /// The first Via value of one header field, the others checked and dropped.
    pub fn parse_first(v: &'a [u8]) -> Result<ViaView<'a>, ParseError> {
        let mut s = Scanner::new(v);
        let first = parse_one_via(&mut s)?;
        loop {
            s.skip_lws();
            if s.at_end() {
                return Ok(first);
            }
            if !s.eat(b',') {
                return Err(ParseError::Invalid("garbage after Via"));
            }
            parse_one_via(&mut s)?;
        }
    }

    /// Checks every Via value of one header field (a comma-separated list), calling `each`
    /// with each.
    pub fn parse_each(v: &'a [u8], mut each: impl FnMut(ViaView<'a>)) -> Result<(), ParseError> {
        let mut s = Scanner::new(v);
        loop {
            each(parse_one_via(&mut s)?);
            s.skip_lws();
            if s.at_end() {
                return Ok(());
            }
            if !s.eat(b',') {
                return Err(ParseError::Invalid("garbage after Via"));
            }
        }
    }

    /// The owned value, sharing `base` where the parts lie within it.
    pub fn to_owned(&self, base: &Bytes) -> Via {
        Via {
            transport: shared_word(base, self.transport),
            host: self.host.to_owned(base),
            port: self.port,
            params: self.params.to_owned(base),
        }
    }
}

fn rport_of(p: Option<Option<&[u8]>>) -> Option<Option<u16>> {
    p.map(|v| {
        v.and_then(|p| parse_decimal(p, 65535))
            .and_then(|p| u16::try_from(p).ok())
    })
}

impl Via {
    pub fn branch(&self) -> Option<&[u8]> {
        self.params.get("branch").flatten()
    }

    pub fn received(&self) -> Option<&[u8]> {
        self.params.get("received").flatten()
    }

    /// `Some(None)` when `rport` is present without a value (the client asks for it, RFC 3581).
    pub fn rport(&self) -> Option<Option<u16>> {
        rport_of(self.params.get("rport"))
    }

    pub fn transport_str(&self) -> String {
        String::from_utf8_lossy(&self.transport).to_ascii_uppercase()
    }

    /// The first Via value of one header field, the others checked and dropped (no list
    /// is built).
    pub fn parse_first(base: &Bytes, v: &[u8]) -> Result<Via, ParseError> {
        ViaView::parse_first(v).map(|x| x.to_owned(base))
    }

    /// Parses every Via value in one header field (a comma-separated list).
    pub fn parse_list(base: &Bytes, v: &[u8], out: &mut Vec<Via>) -> Result<(), ParseError> {
        ViaView::parse_each(v, |x| out.push(x.to_owned(base)))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SIP/2.0/{} {}",
            String::from_utf8_lossy(&self.transport),
            self.host
        )?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

fn parse_one_via<'a>(s: &mut Scanner<'a>) -> Result<ViaView<'a>, ParseError> {
    s.skip_lws();
    // The common spelling, `SIP/2.0/UDP host`: one constant-length compare for the
    // protocol; anything else (other case, white space around the slashes) takes the
    // general path below.
    let rest = &s.buf[s.pos..];
    if let Some(after) = rest.strip_prefix(b"SIP/2.0/") {
        let t = after.iter().take_while(|&&b| is_token(b)).count();
        if t > 0 && after.get(t) == Some(&b' ') {
            let transport = &after[..t];
            s.pos += 8 + t;
            return via_sent_by(s, transport);
        }
    }
    let name = s.token().ok_or(ParseError::Invalid("bad Via protocol"))?;
    if !s.eat_sep(b'/') {
        return Err(ParseError::Invalid("bad Via protocol"));
    }
    let version = s.token().ok_or(ParseError::Invalid("bad Via version"))?;
    if !s.eat_sep(b'/') {
        return Err(ParseError::Invalid("bad Via protocol"));
    }
    let transport = s.token().ok_or(ParseError::Invalid("bad Via transport"))?;
    if !name.eq_ignore_ascii_case(b"SIP") || version != b"2.0" {
        return Err(ParseError::Invalid("unsupported Via protocol version"));
    }
    via_sent_by(s, transport)
}

/// The rest of a Via value after its transport: LWS, `sent-by`, parameters.
fn via_sent_by<'a>(s: &mut Scanner<'a>, transport: &'a [u8]) -> Result<ViaView<'a>, ParseError> {
    if !s.skip_lws() {
        return Err(ParseError::Invalid("missing Via sent-by"));
    }
    let (host, port, used) = scan_hostport(&s.buf[s.pos..])?;
    s.pos += used;
    match s.peek() {
        None | Some(b';' | b',' | b' ' | b'\t' | b'\r' | b'\n') => {}
        Some(b) => return Err(after_hostport_error(port, b)),
    }
    let params = parse_header_params(s)?;
    Ok(ViaView {
        transport,
        host,
        port,
        params,
    })
}

/// `*( SEMI generic-param )` after a header value; gen-value = token / host / quoted-string.
/// Checks them and returns their text.
fn parse_header_params<'a>(s: &mut Scanner<'a>) -> Result<ParamsView<'a>, ParseError> {
    let start = s.pos;
    let mut end = start;
    while s.eat_sep(b';') {
        s.token().ok_or(ParseError::Invalid("empty parameter"))?;
        if s.eat_sep(b'=') {
            if s.peek() == Some(b'"') {
                s.quoted_string()
                    .ok_or(ParseError::Invalid("unterminated quoted parameter"))?;
            } else {
                let v = s.take_while(|b| is_token(b) || matches!(b, b':' | b'[' | b']'));
                if v.is_empty() {
                    return Err(ParseError::Invalid("empty parameter value"));
                }
            }
        }
        end = s.pos;
    }
    Ok(ParamsView::from_text(&s.buf[start..end]))
}

/// A `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route,
/// Record-Route, P-Asserted-Identity (RFC 3261 §20).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name as written (quoted-string with its quotes, or tokens).
    pub display: Option<Bytes>,
    pub uri: Uri,
    /// Whether the URI was enclosed in `<>` (it is written back the same way).
    pub bracketed: bool,
    pub params: Params,
}

/// A name-addr borrowed from the header it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddrView<'a> {
    /// The display name as written (quoted-string with its quotes, or tokens).
    pub display: Option<&'a [u8]>,
    pub uri: UriView<'a>,
    /// Whether the URI was enclosed in `<>`.
    pub bracketed: bool,
    pub params: ParamsView<'a>,
}

impl<'a> NameAddrView<'a> {
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.get("tag").flatten()
    }

    /// Parses a single name-addr value (From, To).
    pub fn parse_single(v: &'a [u8]) -> Result<NameAddrView<'a>, ParseError> {
        let mut s = Scanner::new(v);
        let na = parse_name_addr(&mut s)?;
        s.skip_lws();
        if !s.at_end() {
            return Err(ParseError::Invalid("garbage after name-addr"));
        }
        Ok(na)
    }

    /// The first name-addr of a comma-separated list, the others checked and dropped.
    pub fn parse_first(v: &'a [u8]) -> Result<NameAddrView<'a>, ParseError> {
        let mut s = Scanner::new(v);
        let first = parse_name_addr(&mut s)?;
        loop {
            s.skip_lws();
            if s.at_end() {
                return Ok(first);
            }
            if !s.eat(b',') {
                return Err(ParseError::Invalid("garbage after name-addr"));
            }
            parse_name_addr(&mut s)?;
        }
    }

    /// Checks a comma-separated list of name-addrs (Contact, Route, Record-Route), calling
    /// `each` with each.
    pub fn parse_each(
        v: &'a [u8],
        mut each: impl FnMut(NameAddrView<'a>) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        let mut s = Scanner::new(v);
        loop {
            each(parse_name_addr(&mut s)?)?;
            s.skip_lws();
            if s.at_end() {
                return Ok(());
            }
            if !s.eat(b',') {
                return Err(ParseError::Invalid("garbage after name-addr"));
            }
        }
    }

    /// The owned value, sharing `base` where the parts lie within it.
    pub fn to_owned(&self, base: &Bytes) -> NameAddr {
        NameAddr {
            display: self.display.map(|d| share(base, d)),
            uri: self.uri.to_owned(base),
            bracketed: self.bracketed,
            params: self.params.to_owned(base),
        }
    }
}

impl NameAddr {
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr {
            display: None,
            uri,
            bracketed: true,
            params: Params::default(),
        }
    }

    pub fn tag(&self) -> Option<&[u8]> {
        self.params.get("tag").flatten()
    }

    /// Parses a single name-addr value (From, To).
    pub fn parse_single(base: &Bytes, v: &[u8]) -> Result<NameAddr, ParseError> {
        NameAddrView::parse_single(v).map(|x| x.to_owned(base))
    }

    /// The first name-addr of a comma-separated list, the others checked and dropped.
    pub fn parse_first(base: &Bytes, v: &[u8]) -> Result<NameAddr, ParseError> {
        NameAddrView::parse_first(v).map(|x| x.to_owned(base))
    }

    /// Parses a comma-separated list of name-addrs (Contact, Route, Record-Route).
    pub fn parse_list(base: &Bytes, v: &[u8], out: &mut Vec<NameAddr>) -> Result<(), ParseError> {
        NameAddrView::parse_each(v, |x| {
            out.push(x.to_owned(base));
            Ok(())
        })
    }

    pub fn parse_str(v: &str) -> Result<NameAddr, ParseError> {
        let b = Bytes::copy_from_slice(v.as_bytes());
        NameAddr::parse_single(&b, &b)
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{} ", String::from_utf8_lossy(d))?;
        }
        if self.bracketed || self.display.is_some() {
            write!(f, "<{}>", self.uri)?;
        } else {
            write!(f, "{}", self.uri)?;
        }
        write!(f, "{}", self.params)
    }
}

fn parse_name_addr<'a>(s: &mut Scanner<'a>) -> Result<NameAddrView<'a>, ParseError> {
    s.skip_lws();
    let mut display = None;
    match s.peek() {
        Some(b'"') => {
            let q = s
                .quoted_string()
                .ok_or(ParseError::Invalid("unterminated quoted display name"))?;
            display = Some(q);
            s.skip_lws();
            if s.peek() != Some(b'<') {
                return Err(ParseError::Invalid("display name without <URI>"));
            }
        }
        Some(b'<') => {}
        Some(_) => {
            // *(token LWS) "<" , or an addr-spec.
            let save = s.pos;
            let mut end = s.pos;
            while s.token().is_some() {
                end = s.pos;
                s.skip_lws();
            }
            if s.peek() == Some(b'<') && end > save {
                display = Some(&s.buf[save..end]);
            } else {
                s.pos = save;
            }
        }
        None => return Err(ParseError::Invalid("empty name-addr")),
    }
    let (uri, bracketed) = if s.eat(b'<') {
        let rest = &s.buf[s.pos..];
        let close = find_byte(b'>', rest).ok_or(ParseError::Invalid("unterminated <URI>"))?;
        let inner = &rest[..close];
        if any_ctl_or_space(inner) {
            return Err(ParseError::Invalid("white space inside <URI>"));
        }
        s.pos += close + 1;
        (UriView::parse(inner)?, true)
    } else {
        let spec = s.take_while(|b| b > b' ' && b != b';' && b != b',');
        if spec.contains(&b'?') {
            return Err(ParseError::Invalid("addr-spec with headers must be in <>"));
        }
        (UriView::parse(spec)?, false)
    };
    let params = parse_header_params(s)?;
    Ok(NameAddrView {
        display,
        uri,
        bracketed,
        params,
    })
}

/// A Contact header value: `*` or a list of name-addrs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactValue {
    Wildcard,
    Addrs(Vec<NameAddr>),
}

/// The CSeq header (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(base: &Bytes, v: &[u8]) -> Result<CSeq, ParseError> {
        let mut s = Scanner::new(v);
        s.skip_lws();
        let digits = s.take_while(|b| b.is_ascii_digit());
        let seq =
            parse_decimal(digits, (1 << 31) - 1).ok_or(ParseError::Invalid("bad CSeq number"))?;
        if !s.skip_lws() {
            return Err(ParseError::Invalid("bad CSeq"));
        }
        let m = s.token().ok_or(ParseError::Invalid("bad CSeq method"))?;
        s.skip_lws();
        if !s.at_end() {
            return Err(ParseError::Invalid("garbage after CSeq"));
        }
        Ok(CSeq {
            seq: seq as u32,
            method: Method::from_token(base, m),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// Parses a header made of one decimal number (Max-Forwards, Expires, Content-Length, RSeq...).
pub fn parse_number(v: &[u8], max: u64) -> Result<u64, ParseError> {
    let t = super::scan::trim_lws(v);
    parse_decimal(t, max).ok_or(ParseError::Invalid("bad number"))
}

/// Session-Expires (RFC 4028): delta-seconds with an optional `refresher` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionExpires {
    pub delta: u32,
    /// `uac` or `uas`.
    pub refresher: Option<String>,
}

impl SessionExpires {
    pub fn parse(v: &[u8]) -> Result<SessionExpires, ParseError> {
        let mut s = Scanner::new(v);
        s.skip_lws();
        let digits = s.take_while(|b| b.is_ascii_digit());
        let delta = parse_decimal(digits, u64::from(u32::MAX))
            .ok_or(ParseError::Invalid("bad Session-Expires"))?;
        let params = parse_header_params(&mut s)?;
        s.skip_lws();
        if !s.at_end() {
            return Err(ParseError::Invalid("garbage after Session-Expires"));
        }
        Ok(SessionExpires {
            delta: delta as u32,
            refresher: params.get_str("refresher").map(|r| r.to_ascii_lowercase()),
        })
    }
}

/// RAck (RFC 3262): `response-num CSeq-num Method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RAck {
    pub rseq: u32,
    pub cseq: u32,
    pub method: Method,
}

impl RAck {
    pub fn parse(base: &Bytes, v: &[u8]) -> Result<RAck, ParseError> {
        let mut s = Scanner::new(v);
        s.skip_lws();
        let a = parse_decimal(s.take_while(|b| b.is_ascii_digit()), u64::from(u32::MAX));
        s.skip_lws();
        let b = parse_decimal(s.take_while(|b| b.is_ascii_digit()), u64::from(u32::MAX));
        s.skip_lws();
        let m = s.token();
        s.skip_lws();
        match (a, b, m) {
            (Some(a), Some(b), Some(m)) if s.at_end() => Ok(RAck {
                rseq: a as u32,
                cseq: b as u32,
                method: Method::from_token(base, m),
            }),
            _ => Err(ParseError::Invalid("bad RAck")),
        }
    }
}

/// Reason (RFC 3326): `SIP;cause=200;text="Call completed elsewhere"`, `Q.850;cause=16`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub protocol: String,
    pub cause: Option<u16>,
    pub text: Option<String>,
}

impl Reason {
    pub fn parse_list(v: &[u8]) -> Result<Vec<Reason>, ParseError> {
        let mut s = Scanner::new(v);
        let mut out = Vec::new();
        loop {
            s.skip_lws();
            let proto = s.token().ok_or(ParseError::Invalid("bad Reason"))?;
            let params = parse_header_params(&mut s)?;
            out.push(Reason {
                protocol: String::from_utf8_lossy(proto).into_owned(),
                cause: params
                    .get("cause")
                    .flatten()
                    .and_then(|c| parse_decimal(c, 65535))
                    .map(|c| c as u16),
                text: params
                    .get("text")
                    .flatten()
                    .map(|t| String::from_utf8_lossy(&super::scan::unquote(t)).into_owned()),
            });
            s.skip_lws();
            if s.at_end() {
                return Ok(out);
            }
            if !s.eat(b',') {
                return Err(ParseError::Invalid("garbage after Reason"));
            }
        }
    }
}

/// A comma-separated list of tokens (Allow, Supported, Require, Proxy-Require, Unsupported).
pub fn parse_token_list(v: &[u8]) -> Result<Vec<&[u8]>, ParseError> {
    let mut s = Scanner::new(v);
    let mut out = Vec::new();
    s.skip_lws();
    if s.at_end() {
        return Ok(out);
    }
    loop {
        s.skip_lws();
        out.push(s.token().ok_or(ParseError::Invalid("bad token list"))?);
        s.skip_lws();
        if s.at_end() {
            return Ok(out);
        }
        if !s.eat(b',') {
            return Err(ParseError::Invalid("bad token list"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn via_with_folds_and_lws() {
        let v = b("SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239");
        let mut out = Vec::new();
        Via::parse_list(&v, &v, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].branch(), Some(&b"z9hG4bK9ikj8"[..]));
        assert_eq!(out[0].transport_str(), "TCP");
        assert_eq!(out[1].host, Host::Ip("192.168.255.111".parse().unwrap()));
        assert_eq!(out[1].branch(), Some(&b"z9hG4bK30239"[..]));
    }

    #[test]
    fn via_rport_received_ipv6() {
        let v = b(
            "SIP/2.0/UDP [2001:db8::9:1]:5060;branch=z9hG4bKas3-111;rport;received=2001:db8::9:255",
        );
        let mut out = Vec::new();
        Via::parse_list(&v, &v, &mut out).unwrap();
        assert_eq!(out[0].port, Some(5060));
        assert_eq!(out[0].rport(), Some(None));
        assert_eq!(out[0].received(), Some(&b"2001:db8::9:255"[..]));
    }

    #[test]
    fn first_of_a_list_checks_the_rest() {
        let v = b("SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com");
        let first = Via::parse_first(&v, &v).unwrap();
        assert_eq!(first.branch(), Some(&b"z9hG4bK1"[..]));
        let bad = b("SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP");
        assert!(Via::parse_first(&bad, &bad).is_err());
        assert!(Via::parse_list(&bad, &bad, &mut Vec::new()).is_err());
        let c = b("<sip:a@example.com>;expires=60, <sip:b@example.com>");
        let first = NameAddr::parse_first(&c, &c).unwrap();
        assert_eq!(first.params.get_str("expires").as_deref(), Some("60"));
        let bad = b("<sip:a@example.com>, <sip:b@example.com");
        assert!(NameAddr::parse_first(&bad, &bad).is_err());
    }

    #[test]
    fn via_rejects_empty_params() {
        let v = b("SIP/2.0/UDP 192.0.2.15;;,;,,");
        assert!(Via::parse_list(&v, &v, &mut Vec::new()).is_err());
    }

    #[test]
    fn name_addr_forms() {
        let na = NameAddr::parse_str(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(na.tag(), Some(&b"98asjd8"[..]));
        let na = NameAddr::parse_str("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert!(na.params.contains("unknownparam"));
        assert!(na.uri.as_sip().unwrap().params.is_empty());
        let na = NameAddr::parse_str("<sip:+19725552222@gw1.example.net;unknownparam>").unwrap();
        assert!(na.params.is_empty());
        let na = NameAddr::parse_str(r#""caller"<sip:caller@example.com>;tag=323"#).unwrap();
        assert_eq!(na.display.as_deref(), Some(&br#""caller""#[..]));
        let na = NameAddr::parse_str("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>")
            .unwrap();
        assert_eq!(
            na.display.as_deref(),
            Some(&b"token1~` token2'+_ token3*%!.-"[..])
        );
    }

    #[test]
    fn name_addr_rejects() {
        for bad in [
            r#""Mr. J. User <sip:j.user@example.com>"#,
            "< sip:t.watson@example.org >",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            r#""Joe" <sip:joe@example.org>;;;;"#,
        ] {
            let b = b(bad);
            let mut out = Vec::new();
            assert!(NameAddr::parse_list(&b, &b, &mut out).is_err(), "{bad}");
        }
    }

    #[test]
    fn cseq_and_numbers() {
        let v = b("0009\r\n  INVITE");
        let c = CSeq::parse(&v, &v).unwrap();
        assert_eq!(c.seq, 9);
        assert_eq!(c.method, Method::Invite);
        let v = b("36893488147419103232 REGISTER");
        assert!(CSeq::parse(&v, &v).is_err());
        assert_eq!(parse_number(b" 70 ", 255).ok(), Some(70));
        assert!(parse_number(b"300", 255).is_err());
    }

    #[test]
    fn reason_and_session_expires() {
        let v = b(r#"SIP;cause=200;text="Call completed elsewhere", Q.850;cause=16"#);
        let r = Reason::parse_list(&v).unwrap();
        assert_eq!(r[0].cause, Some(200));
        assert_eq!(r[0].text.as_deref(), Some("Call completed elsewhere"));
        assert_eq!(r[1].protocol, "Q.850");
        let v = b("1800;refresher=uac");
        let se = SessionExpires::parse(&v).unwrap();
        assert_eq!(se.delta, 1800);
        assert_eq!(se.refresher.as_deref(), Some("uac"));
    }
}
