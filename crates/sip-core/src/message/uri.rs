//! URIs: `sip:`/`sips:` (RFC 3261 §19.1, IPv6 references per RFC 5118), `tel:` (RFC 3966),
//! and any other scheme kept opaque.
//!
//! Parsing yields a borrowed view first ([`UriView`]: slices of the text, no allocation, no
//! reference count), from which an owned [`Uri`] is made by sharing the buffer the text is in.

use bytes::Bytes;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::scan::{is_lws, parse_decimal, Scanner};
use super::ParseError;

/// `s` as a `Bytes` sharing `base` when `s` lies within it (no copy), copied otherwise.
#[inline]
pub(crate) fn share(base: &Bytes, s: &[u8]) -> Bytes {
    if s.is_empty() {
        return Bytes::new();
    }
    let (b0, s0) = (base.as_ptr() as usize, s.as_ptr() as usize);
    if s0 >= b0 && s0 + s.len() <= b0 + base.len() {
        base.slice(s0 - b0..s0 - b0 + s.len())
    } else {
        Bytes::copy_from_slice(s)
    }
}

use super::scan::{any_ctl_or_space, find_byte as find};

/// A URI as found in a Request-URI or a name-addr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    Sip(SipUri),
    Tel(TelUri),
    /// A scheme this stack does not interpret (`http:`, `isbn:`, `soap.beep:` ...).
    Other {
        scheme: Bytes,
        opaque: Bytes,
    },
}

/// A URI borrowed from the text it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriView<'a> {
    Sip(SipUriView<'a>),
    Tel {
        number: &'a [u8],
        params: ParamsView<'a>,
    },
    Other {
        scheme: &'a [u8],
        opaque: &'a [u8],
    },
}

/// The host part of a SIP URI or a Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Domain(Bytes),
    Ip(IpAddr),
}

/// A host borrowed from the text it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostView<'a> {
    Domain(&'a [u8]),
    Ip(IpAddr),
}

impl Host {
    /// The IP address, if the host is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Domain(_) => None,
        }
    }
}

impl<'a> HostView<'a> {
    /// The IP address, if the host is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            HostView::Ip(ip) => Some(*ip),
            HostView::Domain(_) => None,
        }
    }

    /// The owned host, sharing `base` where the name lies within it.
    pub fn to_owned(&self, base: &Bytes) -> Host {
        match *self {
            HostView::Domain(d) => Host::Domain(share(base, d)),
            HostView::Ip(ip) => Host::Ip(ip),
        }
    }
}

fn parse_ipv6_reference(s: &[u8]) -> Result<HostView<'_>, ParseError> {
    let inner = s
        .strip_prefix(b"[")
        .and_then(|x| x.strip_suffix(b"]"))
        .ok_or(ParseError::Invalid("bad IPv6 reference"))?;
    let text = std::str::from_utf8(inner).map_err(|_| ParseError::Invalid("bad IPv6"))?;
    let ip: Ipv6Addr = text
        .parse()
        .map_err(|_| ParseError::Invalid("bad IPv6 reference"))?;
    Ok(HostView::Ip(IpAddr::V6(ip)))
}

/// The host `s`, made of host octets only, given the union of their classes (`any`).
#[inline]
fn host_from_classes(s: &[u8], any: u8) -> Result<HostView<'_>, ParseError> {
    if s.is_empty() {
        return Err(ParseError::Invalid("empty host"));
    }
    if any & class::HOST_NAME == 0 {
        if let Some(ip) = parse_ipv4(s) {
            return Ok(HostView::Ip(IpAddr::V4(ip)));
        }
        // Not the plain dotted quad: std's parser decides (and says why it is bad).
        let text = std::str::from_utf8(s).map_err(|_| ParseError::Invalid("bad host"))?;
        let ip: Ipv4Addr = text
            .parse()
            .map_err(|_| ParseError::Invalid("bad IPv4 address"))?;
        return Ok(HostView::Ip(IpAddr::V4(ip)));
    }
    if s[0] == b'-' || s[0] == b'.' {
        return Err(ParseError::Invalid("bad host name"));
    }
    Ok(HostView::Domain(s))
}

/// A dotted-quad IPv4 address: four decimal octets of 1 to 3 digits, no leading zero, each
/// at most 255. Every address it returns is one `Ipv4Addr::from_str` returns for the same
/// text; anything else is left to that parser.
fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0; // octets completed
    let mut v: u16 = 0;
    let mut digits = 0;
    let mut leading_zero = false;
    for &b in s {
        if b == b'.' {
            if digits == 0 || n == 3 {
                return None;
            }
            octets[n] = u8::try_from(v).ok()?;
            n += 1;
            (v, digits) = (0, 0);
        } else if b.is_ascii_digit() {
            if digits == 0 {
                leading_zero = b == b'0';
            } else if leading_zero || digits == 3 {
                return None;
            }
            v = v * 10 + u16::from(b - b'0');
            digits += 1;
        } else {
            return None;
        }
    }
    if digits == 0 || n != 3 {
        return None;
    }
    octets[3] = u8::try_from(v).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Room for the longest IPv4 address in dotted decimal.
const IPV4_TEXT: usize = 15;

/// An IPv4 address in dotted decimal, as its `Display` writes it, without the formatting
/// machinery: a registrar writes one into every binding, Via `received` and Contact it
/// keeps, and `Display` for an address costs several times the digits.
fn ipv4_text(ip: Ipv4Addr, out: &mut [u8; IPV4_TEXT]) -> &str {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            out[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            out[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + octet % 10;
        n += 1;
    }
    // Only ASCII digits and dots were written.
    std::str::from_utf8(&out[..n]).unwrap_or_default()
}

/// Appends `ip` as its `Display` writes it (IPv6 without brackets).
pub fn push_ip(s: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => s.push_str(ipv4_text(v4, &mut [0; IPV4_TEXT])),
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(s, "{v6}");
        }
    }
}

/// `addr` as its `Display` writes it (`192.0.2.1:5060`, `[2001:db8::1]:5060`).
pub fn socket_addr_text(addr: std::net::SocketAddr) -> String {
    if addr.is_ipv6() {
        return addr.to_string();
    }
    let mut s = String::with_capacity(IPV4_TEXT + 6);
    push_ip(&mut s, addr.ip());
    s.push(':');
    push_decimal(&mut s, addr.port());
    s
}

fn push_decimal(s: &mut String, mut v: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    s.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

impl fmt::Display for HostView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostView::Domain(d) => f.write_str(&String::from_utf8_lossy(d)),
            HostView::Ip(IpAddr::V4(ip)) => f.write_str(ipv4_text(*ip, &mut [0; IPV4_TEXT])),
            HostView::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(&String::from_utf8_lossy(d)),
            Host::Ip(IpAddr::V4(ip)) => f.write_str(ipv4_text(*ip, &mut [0; IPV4_TEXT])),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// `;name[=value]` parameters as received, borrowed: the text from the first `;` on (empty
/// when there are none), already checked, searched on demand.
#[derive(Clone, Copy, Default)]
pub struct ParamsView<'a>(&'a [u8]);

/// Parameters are equal when they hold the same names and values in the same order,
/// whatever white space stood around `;` and `=` in the text.
impl PartialEq for ParamsView<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.iter().eq(other.iter())
    }
}

impl Eq for ParamsView<'_> {}

impl<'a> ParamsView<'a> {
    /// Parameters from their text (checked by the caller), the leading `;` included.
    pub(crate) fn from_text(text: &'a [u8]) -> ParamsView<'a> {
        ParamsView(text)
    }

    /// Every parameter: its name and its value (`None` for a flag), as written.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            s: Scanner::new(self.0),
        }
    }

    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        let name = name.as_bytes();
        let text = self.0;
        if any_ctl_or_space(text) || find(b'"', text).is_some() {
            // White space or quoted values: the full rule.
            return self
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
        }
        // The common case, `;a=b;c`: split on `;` and `=`.
        let mut rest = text;
        while let Some(after) = rest.strip_prefix(b";") {
            let end = find(b';', after).unwrap_or(after.len());
            let p = &after[..end];
            let (n, v) = match find(b'=', p) {
                Some(eq) => (&p[..eq], Some(&p[eq + 1..])),
                None => (p, None),
            };
            if n.eq_ignore_ascii_case(name) {
                return Some(v);
            }
            rest = &after[end..];
        }
        None
    }

    /// The value of `name` as text (an empty string for a flag without value).
    pub fn get_str(&self, name: &str) -> Option<std::borrow::Cow<'a, str>> {
        self.get(name).map(|v| match v {
            Some(b) => String::from_utf8_lossy(b),
            None => std::borrow::Cow::Borrowed(""),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text of the parameters, the leading `;` included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    pub fn to_owned(&self, base: &Bytes) -> Params {
        Params {
            raw: share(base, self.0),
        }
    }
}

impl fmt::Debug for ParamsView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), v.map(String::from_utf8_lossy))),
            )
            .finish()
    }
}

/// `;name[=value]` parameters, in order, names compared case-insensitively.
///
/// Kept as the text they were received as (one `Bytes`, checked when the URI or header was
/// parsed) and searched on demand, so parsing a URI or a header allocates nothing for them.
/// Changing a parameter rewrites the text.
#[derive(Clone, Default)]
pub struct Params {
    /// The parameters with their leading `;` (empty when there are none).
    raw: Bytes,
}

impl Params {
    pub fn view(&self) -> ParamsView<'_> {
        ParamsView(&self.raw)
    }

    /// Every parameter: its name and its value (`None` for a flag), as written.
    pub fn iter(&self) -> ParamIter<'_> {
        self.view().iter()
    }

    pub fn get(&self, name: &str) -> Option<Option<&[u8]>> {
        self.view().get(name)
    }

    /// The value of `name` as text (an empty string for a flag without value).
    pub fn get_str(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.view().get_str(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.view().contains(name)
    }

    /// Sets `name` (replacing its value where it is, or appending it).
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let mut out = Vec::with_capacity(self.raw.len() + name.len() + 16);
        let mut found = false;
        for (n, v) in self.iter() {
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                if found {
                    continue;
                }
                found = true;
                push_param(&mut out, n, value.map(str::as_bytes));
            } else {
                push_param(&mut out, n, v);
            }
        }
        if !found {
            push_param(&mut out, name.as_bytes(), value.map(str::as_bytes));
        }
        self.raw = Bytes::from(out);
    }

    pub fn remove(&mut self, name: &str) {
        let mut out = Vec::with_capacity(self.raw.len());
        for (n, v) in self.iter() {
            if !n.eq_ignore_ascii_case(name.as_bytes()) {
                push_param(&mut out, n, v);
            }
        }
        self.raw = Bytes::from(out);
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

impl PartialEq for Params {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for Params {}

fn push_param(out: &mut Vec<u8>, name: &[u8], value: Option<&[u8]>) {
    out.push(b';');
    out.extend_from_slice(name);
    if let Some(v) = value {
        out.push(b'=');
        out.extend_from_slice(v);
    }
}

/// The parameters of a [`Params`], in order. One rule reads both kinds: URI parameters
/// (no white space, no quotes) and header parameters (RFC 3261 §25.1 `generic-param`: LWS
/// around `;` and `=`, quoted-string values that may hold `;`).
pub struct ParamIter<'a> {
    s: Scanner<'a>,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = &mut self.s;
        if !s.eat_sep(b';') {
            return None;
        }
        let name = s.take_while(|b| b != b'=' && b != b';' && !is_lws(b));
        let value = if s.eat_sep(b'=') {
            Some(if s.peek() == Some(b'"') {
                s.quoted_string()?
            } else {
                s.take_while(|b| b != b';' && !is_lws(b))
            })
        } else {
            None
        };
        Some((name, value))
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.raw.iter().any(|&b| is_lws(b)) {
            return f.write_str(&String::from_utf8_lossy(&self.raw));
        }
        for (n, v) in self.iter() {
            write!(f, ";{}", String::from_utf8_lossy(n))?;
            if let Some(v) = v {
                write!(f, "={}", String::from_utf8_lossy(v))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view().fmt(f)
    }
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub secure: bool,
    /// The user part, still %-escaped as received.
    pub user: Option<Bytes>,
    pub password: Option<Bytes>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
    /// The `?headers` part without the `?`, still escaped.
    pub headers: Option<Bytes>,
}

/// A `sip:` or `sips:` URI borrowed from the text it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUriView<'a> {
    pub secure: bool,
    /// The user part, still %-escaped as received.
    pub user: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    pub host: HostView<'a>,
    pub port: Option<u16>,
    pub params: ParamsView<'a>,
    /// The `?headers` part without the `?`, still escaped.
    pub headers: Option<&'a [u8]>,
}

impl SipUriView<'_> {
    pub fn to_owned(&self, base: &Bytes) -> SipUri {
        SipUri {
            secure: self.secure,
            user: self.user.map(|u| share(base, u)),
            password: self.password.map(|p| share(base, p)),
            host: self.host.to_owned(base),
            port: self.port,
            params: self.params.to_owned(base),
            headers: self.headers.map(|h| share(base, h)),
        }
    }
}

impl SipUri {
    /// A plain `sip:user@host:port` URI.
    pub fn new(user: Option<&str>, host: Host, port: Option<u16>) -> SipUri {
        SipUri {
            secure: false,
            user: user.map(|u| Bytes::copy_from_slice(u.as_bytes())),
            password: None,
            host,
            port,
            params: Params::default(),
            headers: None,
        }
    }

    pub fn user_str(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.user.as_ref().map(|u| String::from_utf8_lossy(u))
    }

    /// The `transport` parameter, lower-cased.
    pub fn transport(&self) -> Option<String> {
        self.params
            .get_str("transport")
            .map(|t| t.to_ascii_lowercase())
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(u) = &self.user {
            f.write_str(&String::from_utf8_lossy(u))?;
            if let Some(p) = &self.password {
                write!(f, ":{}", String::from_utf8_lossy(p))?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{}", String::from_utf8_lossy(h))?;
        }
        Ok(())
    }
}

/// A `tel:` URI (RFC 3966).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri {
    pub number: Bytes,
    pub params: Params,
}

impl fmt::Display for TelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tel:{}{}",
            String::from_utf8_lossy(&self.number),
            self.params
        )
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Tel(t) => t.fmt(f),
            Uri::Other { scheme, opaque } => write!(
                f,
                "{}:{}",
                String::from_utf8_lossy(scheme),
                String::from_utf8_lossy(opaque)
            ),
        }
    }
}

impl<'a> UriView<'a> {
    /// Parses a URI.
    pub fn parse(s: &'a [u8]) -> Result<UriView<'a>, ParseError> {
        let colon = find(b':', s).ok_or(ParseError::Invalid("URI without scheme"))?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        match scheme {
            [s0, s1, s2] if [*s0 | 0x20, *s1 | 0x20, *s2 | 0x20] == *b"sip" => {
                return parse_sip(rest, false).map(UriView::Sip)
            }
            [s0, s1, s2, s3] if [*s0 | 0x20, *s1 | 0x20, *s2 | 0x20, *s3 | 0x20] == *b"sips" => {
                return parse_sip(rest, true).map(UriView::Sip)
            }
            _ => {}
        }
        if scheme.is_empty()
            || !scheme[0].is_ascii_alphabetic()
            || !scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(ParseError::Invalid("bad URI scheme"));
        }
        if scheme.eq_ignore_ascii_case(b"tel") {
            return parse_tel(rest);
        }
        if rest.is_empty()
            || rest
                .iter()
                .any(|&b| b <= b' ' || b >= 0x7f || matches!(b, b'<' | b'>' | b'"'))
        {
            return Err(ParseError::Invalid("bad URI"));
        }
        Ok(UriView::Other {
            scheme,
            opaque: rest,
        })
    }

    /// The owned URI, sharing `base` where the parts lie within it.
    pub fn to_owned(&self, base: &Bytes) -> Uri {
        match self {
            UriView::Sip(u) => Uri::Sip(u.to_owned(base)),
            UriView::Tel { number, params } => Uri::Tel(TelUri {
                number: share(base, number),
                params: params.to_owned(base),
            }),
            UriView::Other { scheme, opaque } => Uri::Other {
                scheme: share(base, scheme),
                opaque: share(base, opaque),
            },
        }
    }

    pub fn as_sip(&self) -> Option<&SipUriView<'a>> {
        match self {
            UriView::Sip(u) => Some(u),
            _ => None,
        }
    }
}

impl Uri {
    /// Parses a URI held in `s`, a sub-slice of `base` (so parts can be shared, not copied).
    pub fn parse_in(base: &Bytes, s: &[u8]) -> Result<Uri, ParseError> {
        UriView::parse(s).map(|v| v.to_owned(base))
    }

    /// Parses a standalone URI.
    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        let b = Bytes::copy_from_slice(s.as_bytes());
        Uri::parse_in(&b, &b)
    }

    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    pub fn as_sip_mut(&mut self) -> Option<&mut SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The scheme, lower-cased.
    pub fn scheme(&self) -> String {
        match self {
            Uri::Sip(u) if u.secure => "sips".into(),
            Uri::Sip(_) => "sip".into(),
            Uri::Tel(_) => "tel".into(),
            Uri::Other { scheme, .. } => String::from_utf8_lossy(scheme).to_ascii_lowercase(),
        }
    }
}

/// Character classes of URI parts (RFC 3261 §25.1), one bit each, looked up per octet.
mod class {
    /// `unreserved`: alphanumerics and `-_.!~*'()`.
    pub const UNRESERVED: u8 = 1;
    /// `user-unreserved`: `&=+$,;?/`.
    pub const USER: u8 = 2;
    /// The other characters of a password: `&=+$,`.
    pub const PASSWORD: u8 = 4;
    /// `param-unreserved`: `[]/:&+$`.
    pub const PARAM: u8 = 8;
    /// `hnv-unreserved` and the rest of a `?headers` part: `[]/?:+$=&`.
    pub const HEADER: u8 = 16;
    /// Digits and `.`: an IPv4 address so far.
    pub const HOST_NUMERIC: u8 = 32;
    /// Letters and `-`: a host name.
    pub const HOST_NAME: u8 = 64;

    const fn of(c: u8) -> u8 {
        let mut bits = 0;
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
        {
            bits |= UNRESERVED;
        }
        if matches!(c, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/') {
            bits |= USER;
        }
        if matches!(c, b'&' | b'=' | b'+' | b'$' | b',') {
            bits |= PASSWORD;
        }
        if matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$') {
            bits |= PARAM;
        }
        if matches!(
            c,
            b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' | b'=' | b'&'
        ) {
            bits |= HEADER;
        }
        if c.is_ascii_digit() || c == b'.' {
            bits |= HOST_NUMERIC;
        }
        if c.is_ascii_alphabetic() || c == b'-' {
            bits |= HOST_NAME;
        }
        bits
    }

    pub static TABLE: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = of(i as u8);
            i += 1;
        }
        t
    };
}

/// Whether `s` is made only of unreserved characters, `%HH` escapes and the characters of
/// `extra` (a [`class`] bit). RFC 3261 §25.1 URIs are ASCII: an octet ≥ 0x80 must be
/// escaped, so a raw one is refused (it could not be written back as text unchanged).
#[inline]
fn all_escaped_or(s: &[u8], extra: u8) -> bool {
    let allowed = class::UNRESERVED | extra;
    // Without a branch per octet first (the common case: no escape, nothing bad).
    let mut plain = true;
    for &b in s {
        plain &= class::TABLE[usize::from(b)] & allowed != 0;
    }
    if plain {
        return true;
    }
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if class::TABLE[usize::from(b)] & allowed != 0 {
            i += 1;
        } else if b == b'%' {
            match (s.get(i + 1), s.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            return false;
        }
    }
    true
}

/// Checks the URI parameters in `s` (the text from the first `;` on, the `;` included), in
/// one walk: every name and value non-empty, made of unreserved and `param-unreserved`
/// octets or `%HH` escapes.
fn parse_params(s: &[u8]) -> Result<ParamsView<'_>, ParseError> {
    let allowed = class::UNRESERVED | class::PARAM;
    let bad = |in_value: bool| {
        ParseError::Invalid(if in_value {
            "bad URI parameter value"
        } else {
            "bad URI parameter"
        })
    };
    let mut i = 1;
    let mut part_start = 1;
    let mut in_value = false;
    loop {
        match s.get(i) {
            None | Some(b';') => {
                if i == part_start {
                    return Err(bad(in_value));
                }
                if i >= s.len() {
                    return Ok(ParamsView(s));
                }
                i += 1;
                part_start = i;
                in_value = false;
            }
            Some(b'=') if !in_value => {
                if i == part_start {
                    return Err(bad(false));
                }
                i += 1;
                part_start = i;
                in_value = true;
            }
            Some(b'%') => match (s.get(i + 1), s.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return Err(bad(in_value)),
            },
            Some(&b) => {
                if class::TABLE[usize::from(b)] & allowed == 0 {
                    return Err(bad(in_value));
                }
                i += 1;
            }
        }
    }
}

fn parse_sip(s: &[u8], secure: bool) -> Result<SipUriView<'_>, ParseError> {
    // userinfo ends at the first '@' ('@' is never legal unescaped elsewhere).
    let (user, password, rest) = match find(b'@', s) {
        Some(at) => {
            let ui = &s[..at];
            let (u, p) = match find(b':', ui) {
                Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                None => (ui, None),
            };
            if u.is_empty() || !all_escaped_or(u, class::USER) {
                return Err(ParseError::Invalid("bad URI user part"));
            }
            if let Some(p) = p {
                if !all_escaped_or(p, class::PASSWORD) {
                    return Err(ParseError::Invalid("bad URI password"));
                }
            }
            (Some(u), p, &s[at + 1..])
        }
        None => (None, None, s),
    };
    // hostport, then `;params`, then `?headers`.
    let (host, port, hp_end) = scan_hostport(rest)?;
    let mut tail = &rest[hp_end..];
    match tail.first() {
        None | Some(b';' | b'?') => {}
        Some(&b) => return Err(after_hostport_error(port, b)),
    }
    let mut params = ParamsView::default();
    if tail.first() == Some(&b';') {
        let end = find(b'?', tail).unwrap_or(tail.len());
        params = parse_params(&tail[..end])?;
        tail = &tail[end..];
    }
    let headers = match tail.split_first() {
        Some((b'?', h)) => {
            if h.is_empty() || !all_escaped_or(h, class::HEADER) {
                return Err(ParseError::Invalid("bad URI headers"));
            }
            Some(h)
        }
        _ => None,
    };
    Ok(SipUriView {
        secure,
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

/// Reads `host[:port]` at the start of `s` in one walk, up to the first octet that cannot
/// be part of it. Returns the host, the port and how many octets were read; the caller
/// checks what follows.
pub(crate) fn scan_hostport(s: &[u8]) -> Result<(HostView<'_>, Option<u16>, usize), ParseError> {
    let (host, mut i) = if s.first() == Some(&b'[') {
        let close = find(b']', s).ok_or(ParseError::Invalid("unterminated IPv6 reference"))?;
        (parse_ipv6_reference(&s[..=close])?, close + 1)
    } else {
        let mut any = 0u8;
        let mut i = 0;
        while let Some(&b) = s.get(i) {
            let c = class::TABLE[usize::from(b)];
            if c & (class::HOST_NUMERIC | class::HOST_NAME) == 0 {
                break;
            }
            any |= c;
            i += 1;
        }
        (host_from_classes(&s[..i], any)?, i)
    };
    let mut port = None;
    if s.get(i) == Some(&b':') {
        let start = i + 1;
        i = start;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        port = Some(
            parse_decimal(&s[start..i], 65535)
                .map(|v| v as u16)
                .ok_or(ParseError::Invalid("bad port"))?,
        );
    }
    Ok((host, port, i))
}

/// The error for an octet found right after a `host[:port]`.
pub(crate) fn after_hostport_error(port: Option<u16>, next: u8) -> ParseError {
    match (port, next) {
        (Some(_), _) => ParseError::Invalid("bad port"),
        (None, b'[' | b']') => ParseError::Invalid("garbage after IPv6 reference"),
        _ => ParseError::Invalid("bad character in host"),
    }
}

fn parse_tel(s: &[u8]) -> Result<UriView<'_>, ParseError> {
    let (number, params) = match find(b';', s) {
        Some(sc) => (&s[..sc], parse_params(&s[sc..])?),
        None => (s, ParamsView::default()),
    };
    let ok = |b: u8| {
        b.is_ascii_hexdigit() || matches!(b, b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#')
    };
    if number.is_empty() || !number.iter().all(|&b| ok(b)) {
        return Err(ParseError::Invalid("bad tel number"));
    }
    Ok(UriView::Tel { number, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The addresses as std's `Display` writes them, over every octet and the edges of the
    /// port.
    #[test]
    fn addresses_are_written_as_display_writes_them() {
        use std::net::SocketAddr;
        for a in 0..=255u8 {
            let ip = Ipv4Addr::new(a, 255 - a, a / 3, a.wrapping_mul(7));
            let mut s = String::new();
            push_ip(&mut s, IpAddr::V4(ip));
            assert_eq!(s, ip.to_string());
            assert_eq!(Host::Ip(IpAddr::V4(ip)).to_string(), ip.to_string());
            for port in [0u16, 9, 10, 99, 100, 5060, 9999, 10000, 65535] {
                let addr = SocketAddr::new(IpAddr::V4(ip), port);
                assert_eq!(socket_addr_text(addr), addr.to_string());
            }
        }
        let v6: SocketAddr = "[2001:db8::1]:5061".parse().unwrap();
        assert_eq!(socket_addr_text(v6), v6.to_string());
        let mut s = String::new();
        push_ip(&mut s, v6.ip());
        assert_eq!(s, "2001:db8::1");
    }

    fn sip(s: &str) -> SipUri {
        match Uri::parse(s) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn basic_sip() {
        let u = sip("sip:alice:pw@example.com:5070;transport=tcp;lr?subject=x");
        assert_eq!(u.user.as_deref(), Some(&b"alice"[..]));
        assert_eq!(u.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(u.host, Host::Domain(Bytes::from("example.com")));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport().as_deref(), Some("tcp"));
        assert!(u.params.contains("lr"));
        assert_eq!(u.headers.as_deref(), Some(&b"subject=x"[..]));
        assert_eq!(
            u.to_string(),
            "sip:alice:pw@example.com:5070;transport=tcp;lr?subject=x"
        );
    }

    #[test]
    fn ipv4_hosts() {
        for (text, ip) in [
            ("sip:10.0.0.1", Some([10, 0, 0, 1])),
            ("sip:255.255.255.255:5060", Some([255, 255, 255, 255])),
            ("sip:0.0.0.0", Some([0, 0, 0, 0])),
            ("sip:256.0.0.1", None),
            ("sip:10.0.0", None),
            ("sip:10.0.0.1.2", None),
            ("sip:010.0.0.1", None),
            ("sip:10..0.1", None),
        ] {
            let parsed = Uri::parse(text).ok().and_then(|u| u.as_sip()?.host.ip());
            assert_eq!(parsed, ip.map(|o| IpAddr::V4(Ipv4Addr::from(o))), "{text}");
            // The same verdict as std's parser on the host text.
            let host = text
                .trim_start_matches("sip:")
                .split(':')
                .next()
                .unwrap_or("");
            assert_eq!(
                parse_ipv4(host.as_bytes()),
                host.parse::<Ipv4Addr>().ok(),
                "{host}"
            );
        }
    }

    #[test]
    fn ipv6_references() {
        let u = sip("sip:[2001:db8::10]:5070");
        assert_eq!(u.host.ip(), "2001:db8::10".parse().ok());
        assert_eq!(u.port, Some(5070));
        let u = sip("sip:user@[2001:db8::9:1]");
        assert_eq!(u.port, None);
        assert_eq!(u.to_string(), "sip:user@[2001:db8::9:1]");
        // RFC 5118 §4.2: an IPv6 address without brackets is not a valid host.
        assert!(Uri::parse("sip:user@2001:db8::10").is_err());
        assert!(Uri::parse("sip:[2001:db8::10").is_err());
    }

    #[test]
    fn semicolon_in_user() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user.as_deref(), Some(&b"user;par=u%40example.net"[..]));
        assert!(u.params.is_empty());
    }

    #[test]
    fn raw_octets_above_ascii_are_refused() {
        for raw in [
            &b"sip:caf\xe9@example.com"[..],
            b"sip:alice:p\xe9@example.com",
            b"sip:alice@example.com;x=\xe9",
            b"sip:alice@example.com?h=\xe9",
            b"urn:caf\xe9",
            b"sip:caf\xc3\xa9@example.com",
        ] {
            let b = Bytes::copy_from_slice(raw);
            assert!(Uri::parse_in(&b, &b).is_err(), "{raw:?}");
        }
        // Escaped, the same octet is fine and is written back as received.
        let u = sip("sip:caf%E9@example.com");
        assert_eq!(u.to_string(), "sip:caf%E9@example.com");
    }

    #[test]
    fn parameter_lookup_agrees_with_the_full_rule() {
        let b = Bytes::from_static(
            b";branch=z9hG4bK1;rport;TAG=x;received=1.2.3.4 ;text=\"a;b=c\" ; lr ; maddr = h",
        );
        for (text, names) in [
            (
                &b[..40],
                &["branch", "rport", "tag", "received", "lr", "x"][..],
            ),
            (
                &b[..],
                &[
                    "branch", "rport", "tag", "received", "text", "lr", "maddr", "b",
                ][..],
            ),
            (&b[..0], &["x"][..]),
        ] {
            let v = ParamsView(text);
            for n in names {
                let full = v.iter().find(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()));
                assert_eq!(
                    v.get(n),
                    full.map(|(_, v)| v),
                    "{n} in {:?}",
                    String::from_utf8_lossy(text)
                );
            }
        }
        assert_eq!(ParamsView(&b[..40]).get("rport"), Some(None));
        assert_eq!(
            ParamsView(&b[..]).get("text"),
            Some(Some(&b"\"a;b=c\""[..]))
        );
    }

    #[test]
    fn parameters_equal_whatever_the_white_space() {
        let a = ParamsView(b";refPRACK =uacorg ; lr");
        let b = ParamsView(b";refPRACK=uacorg;lr");
        assert_eq!(a, b);
        assert_ne!(a, ParamsView(b";refPRACK=uacorg"));
        assert_ne!(b, ParamsView(b";lr;refPRACK=uacorg"));
    }

    #[test]
    fn tel_and_other() {
        assert!(matches!(
            Uri::parse("tel:+1-201-555-0123;phone-context=x"),
            Ok(Uri::Tel(_))
        ));
        assert!(matches!(
            Uri::parse("isbn:2983792873"),
            Ok(Uri::Other { .. })
        ));
        assert!(matches!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other { .. })
        ));
        assert!(Uri::parse("<sip:user@example.com>").is_err());
        assert!(Uri::parse("sip:user@example.com; lr").is_err());
        assert!(Uri::parse("sip:user@example.com;").is_err());
        assert!(Uri::parse("sip:").is_err());
    }
}
