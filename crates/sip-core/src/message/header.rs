//! Raw header fields: names (with compact forms) and values kept byte-exact.

use bytes::Bytes;
use std::borrow::Cow;

macro_rules! header_names {
    ($( $variant:ident => $canon:literal $(, $compact:literal)? ; )*) => {
        /// A header field name. Known names are recognised case-insensitively and in their
        /// compact forms (RFC 3261 §7.3.3 and the registries that followed); every other
        /// name is [`HeaderName::Other`] and passes through untouched.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( $variant, )*
            /// An extension header, kept with its name as received.
            Other(Bytes),
        }

        impl HeaderName {
            /// How many names are known.
            pub(crate) const KNOWN_COUNT: usize = [$( stringify!($variant), )*].len();

            /// Every known name, in declaration order.
            #[cfg(test)]
            pub(crate) const KNOWN: &'static [HeaderName] = &[$( HeaderName::$variant, )*];

            /// The known name a lower-case compact form stands for.
            #[inline]
            fn from_compact(c: u8) -> Option<HeaderName> {
                match c {
                    $( $( $compact => Some(HeaderName::$variant), )? )*
                    _ => None,
                }
            }

            /// Recognises a header name (full or compact form, any case).
            pub fn from_bytes(raw: &[u8], original: impl FnOnce() -> Bytes) -> HeaderName {
                let known = if raw.len() == 1 {
                    compact_name(raw[0])
                } else if raw.iter().all(|&b| crate::message::scan::is_token(b)) {
                    known_long_name(raw)
                } else {
                    None
                };
                known.unwrap_or_else(|| HeaderName::Other(original()))
            }

            /// The compact code of a known name (its declaration index); [`OTHER_CODE`] for an
            /// extension name.
            #[inline]
            pub(crate) fn code(&self) -> u8 {
                let mut i = 0u8;
                $(
                    if matches!(self, HeaderName::$variant) {
                        return i;
                    }
                    i += 1;
                )*
                let _ = i;
                OTHER_CODE
            }

            /// The known name of a code from [`HeaderName::code`].
            pub(crate) fn from_code(code: u8) -> Option<HeaderName> {
                let mut i = 0u8;
                $(
                    if code == i {
                        return Some(HeaderName::$variant);
                    }
                    i += 1;
                )*
                let _ = i;
                None
            }

            /// The canonical (long) form of a known name.
            pub fn canonical(&self) -> Option<&'static str> {
                match self {
                    $( HeaderName::$variant => Some($canon), )*
                    HeaderName::Other(_) => None,
                }
            }

            /// The canonical (long) form of the name.
            pub fn as_str(&self) -> Cow<'_, str> {
                match self {
                    $( HeaderName::$variant => Cow::Borrowed($canon), )*
                    HeaderName::Other(b) => String::from_utf8_lossy(b),
                }
            }
        }
    };
}

/// The code of an extension name in a header list.
pub(crate) const OTHER_CODE: u8 = u8::MAX;

header_names! {
    Via => "Via", b'v';
    From => "From", b'f';
    To => "To", b't';
    CallId => "Call-ID", b'i';
    CSeq => "CSeq";
    Contact => "Contact", b'm';
    MaxForwards => "Max-Forwards";
    ContentLength => "Content-Length", b'l';
    ContentType => "Content-Type", b'c';
    ContentEncoding => "Content-Encoding", b'e';
    Route => "Route";
    RecordRoute => "Record-Route";
    Expires => "Expires";
    MinExpires => "Min-Expires";
    WwwAuthenticate => "WWW-Authenticate";
    Authorization => "Authorization";
    ProxyAuthenticate => "Proxy-Authenticate";
    ProxyAuthorization => "Proxy-Authorization";
    SessionExpires => "Session-Expires", b'x';
    MinSe => "Min-SE";
    RSeq => "RSeq";
    RAck => "RAck";
    Reason => "Reason";
    Allow => "Allow";
    Accept => "Accept";
    AcceptEncoding => "Accept-Encoding";
    AcceptLanguage => "Accept-Language";
    Supported => "Supported", b'k';
    Require => "Require";
    ProxyRequire => "Proxy-Require";
    Unsupported => "Unsupported";
    UserAgent => "User-Agent";
    Server => "Server";
    Subject => "Subject", b's';
    Event => "Event", b'o';
    ReferTo => "Refer-To", b'r';
    ReferredBy => "Referred-By", b'b';
    AllowEvents => "Allow-Events", b'u';
    Identity => "Identity", b'y';
    PAssertedIdentity => "P-Asserted-Identity";
    RetryAfter => "Retry-After";
    Date => "Date";
    Timestamp => "Timestamp";
    Warning => "Warning";
}

/// Recognises the long form of a known header name: the candidate is picked by length and
/// lower-cased first octet (and one more octet where two names share those), then compared
/// once. `raw` must be made of token octets (RFC 3261 §25.1).
#[inline]
pub(crate) fn known_long_name(raw: &[u8]) -> Option<HeaderName> {
    if raw.is_empty() {
        return None;
    }
    let first = raw[0].to_ascii_lowercase();
    let (name, canon): (HeaderName, &'static str) = match raw.len() {
        2 => match first {
            b't' => (HeaderName::To, "To"),
            _ => return None,
        },
        3 => match first {
            b'v' => (HeaderName::Via, "Via"),
            _ => return None,
        },
        4 => match first {
            b'c' => (HeaderName::CSeq, "CSeq"),
            b'd' => (HeaderName::Date, "Date"),
            b'f' => (HeaderName::From, "From"),
            b'r' => match raw[1].to_ascii_lowercase() {
                b's' => (HeaderName::RSeq, "RSeq"),
                b'a' => (HeaderName::RAck, "RAck"),
                _ => return None,
            },
            _ => return None,
        },
        5 => match first {
            b'a' => (HeaderName::Allow, "Allow"),
            b'e' => (HeaderName::Event, "Event"),
            b'r' => (HeaderName::Route, "Route"),
            _ => return None,
        },
        6 => match first {
            b'a' => (HeaderName::Accept, "Accept"),
            b'm' => (HeaderName::MinSe, "Min-SE"),
            b'r' => (HeaderName::Reason, "Reason"),
            b's' => (HeaderName::Server, "Server"),
            _ => return None,
        },
        7 => match first {
            b'c' => match raw[1].to_ascii_lowercase() {
                b'a' => (HeaderName::CallId, "Call-ID"),
                b'o' => (HeaderName::Contact, "Contact"),
                _ => return None,
            },
            b'e' => (HeaderName::Expires, "Expires"),
            b'r' => (HeaderName::Require, "Require"),
            b's' => (HeaderName::Subject, "Subject"),
            b'w' => (HeaderName::Warning, "Warning"),
            _ => return None,
        },
        8 => match first {
            b'i' => (HeaderName::Identity, "Identity"),
            b'r' => (HeaderName::ReferTo, "Refer-To"),
            _ => return None,
        },
        9 => match first {
            b's' => (HeaderName::Supported, "Supported"),
            b't' => (HeaderName::Timestamp, "Timestamp"),
            _ => return None,
        },
        10 => match first {
            b'u' => (HeaderName::UserAgent, "User-Agent"),
            _ => return None,
        },
        11 => match first {
            b'm' => (HeaderName::MinExpires, "Min-Expires"),
            b'r' => match raw[2].to_ascii_lowercase() {
                b'f' => (HeaderName::ReferredBy, "Referred-By"),
                b't' => (HeaderName::RetryAfter, "Retry-After"),
                _ => return None,
            },
            b'u' => (HeaderName::Unsupported, "Unsupported"),
            _ => return None,
        },
        12 => match first {
            b'a' => (HeaderName::AllowEvents, "Allow-Events"),
            b'c' => (HeaderName::ContentType, "Content-Type"),
            b'm' => (HeaderName::MaxForwards, "Max-Forwards"),
            b'r' => (HeaderName::RecordRoute, "Record-Route"),
            _ => return None,
        },
        13 => match first {
            b'a' => (HeaderName::Authorization, "Authorization"),
            b'p' => (HeaderName::ProxyRequire, "Proxy-Require"),
            _ => return None,
        },
        14 => match first {
            b'c' => (HeaderName::ContentLength, "Content-Length"),
            _ => return None,
        },
        15 => match first {
            b'a' => match raw[7].to_ascii_lowercase() {
                b'e' => (HeaderName::AcceptEncoding, "Accept-Encoding"),
                b'l' => (HeaderName::AcceptLanguage, "Accept-Language"),
                _ => return None,
            },
            b's' => (HeaderName::SessionExpires, "Session-Expires"),
            _ => return None,
        },
        16 => match first {
            b'c' => (HeaderName::ContentEncoding, "Content-Encoding"),
            b'w' => (HeaderName::WwwAuthenticate, "WWW-Authenticate"),
            _ => return None,
        },
        18 => match first {
            b'p' => (HeaderName::ProxyAuthenticate, "Proxy-Authenticate"),
            _ => return None,
        },
        19 => match first {
            b'p' => match raw[1].to_ascii_lowercase() {
                b'r' => (HeaderName::ProxyAuthorization, "Proxy-Authorization"),
                b'-' => (HeaderName::PAssertedIdentity, "P-Asserted-Identity"),
                _ => return None,
            },
            _ => return None,
        },
        _ => return None,
    };
    // Same length already. `raw` is made of token octets and `canon` of letters and `-`, so
    // setting the 0x20 bit on both compares letters case-insensitively and nothing else
    // (the only non-token octet that could pass for `-` this way is CR). No branch, no call.
    let mut diff = 0u8;
    for (a, b) in raw.iter().zip(canon.as_bytes()) {
        diff |= (a | 0x20) ^ (b | 0x20);
    }
    (diff == 0).then_some(name)
}

/// A known name spelt exactly in its canonical form and followed by the colon, at the start
/// of a header line: its code and length. Most fields arrive so; each check is one or two
/// integer comparisons (constant-length prefixes), and anything else — other case, compact
/// form, white space before the colon, extension names — is left to the general path.
#[inline]
pub(crate) fn canonical_prefix(line: &[u8]) -> Option<(u8, usize)> {
    macro_rules! canon {
        ($( $lit:literal => $variant:ident ),* $(,)?) => {{
            $(
                if line.starts_with($lit) {
                    return Some((HeaderName::$variant.code(), $lit.len() - 1));
                }
            )*
        }};
    }
    match line.first()? {
        b'V' => canon!(b"Via:" => Via),
        b'F' => canon!(b"From:" => From),
        b'T' => canon!(b"To:" => To),
        b'C' => canon!(
            b"Call-ID:" => CallId,
            b"CSeq:" => CSeq,
            b"Contact:" => Contact,
            b"Content-Type:" => ContentType,
            b"Content-Length:" => ContentLength,
        ),
        b'M' => canon!(b"Max-Forwards:" => MaxForwards, b"Min-SE:" => MinSe),
        b'R' => canon!(
            b"Record-Route:" => RecordRoute,
            b"Route:" => Route,
            b"Require:" => Require,
            b"Reason:" => Reason,
            b"RSeq:" => RSeq,
            b"RAck:" => RAck,
        ),
        b'A' => {
            canon!(b"Allow:" => Allow, b"Accept:" => Accept, b"Authorization:" => Authorization)
        }
        b'S' => {
            canon!(b"Supported:" => Supported, b"Session-Expires:" => SessionExpires, b"Server:" => Server)
        }
        b'U' => canon!(b"User-Agent:" => UserAgent),
        b'P' => canon!(
            b"P-Asserted-Identity:" => PAssertedIdentity,
            b"Proxy-Authorization:" => ProxyAuthorization,
            b"Proxy-Authenticate:" => ProxyAuthenticate,
        ),
        b'E' => canon!(b"Expires:" => Expires),
        b'W' => canon!(b"WWW-Authenticate:" => WwwAuthenticate),
        _ => {}
    }
    None
}

/// The compact form (RFC 3261 §7.3.3 and later registrations) a one-letter name stands for.
#[inline]
pub(crate) fn compact_name(c: u8) -> Option<HeaderName> {
    HeaderName::from_compact(c.to_ascii_lowercase())
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// One header field to add to a message: its name, the name as it is written, and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    /// The name as written on the wire (`v`, `ViA`, `Call-ID`...).
    pub raw_name: Bytes,
    pub value: Bytes,
}

impl Header {
    /// A header with the canonical name.
    pub fn new(name: HeaderName, value: impl Into<Bytes>) -> Header {
        let raw_name = match (&name, name.canonical()) {
            (HeaderName::Other(b), _) => b.clone(),
            (_, Some(c)) => Bytes::from_static(c.as_bytes()),
            (n, None) => Bytes::from(n.as_str().into_owned()),
        };
        Header {
            name,
            raw_name,
            value: value.into(),
        }
    }

    /// The value with line folds replaced by single spaces (RFC 3261 §7.3.1).
    pub fn value_str(&self) -> Cow<'_, str> {
        unfold(&self.value)
    }
}

/// Replaces every fold (`CRLF 1*WSP` or a bare CR/LF with WSP) with one space.
pub fn unfold(v: &[u8]) -> Cow<'_, str> {
    if !v.iter().any(|&b| b == b'\r' || b == b'\n') {
        // Valid UTF-8 (nearly every value) is checked a word at a time this way;
        // `from_utf8_lossy` alone walks it byte by byte.
        return match std::str::from_utf8(v) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(v),
        };
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        if b == b'\r' || b == b'\n' {
            while i < v.len() && matches!(v[i], b'\r' | b'\n' | b' ' | b'\t') {
                i += 1;
            }
            if out.last() != Some(&b' ') {
                out.push(b' ');
            }
            continue;
        }
        out.push(b);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Where a header name or value lives: `src` 0 is the message buffer, `i + 1` the `i`-th
/// value added after parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    src: u32,
    start: u32,
    end: u32,
}

/// One header field line of a list: the code of its name ([`HeaderName::code`]), the name
/// as written, and the value (leading and trailing white space removed, inner folds kept).
#[derive(Debug, Clone, Copy)]
struct Field {
    code: u8,
    raw_name: Span,
    value: Span,
}

/// The header fields of a message, in order.
///
/// A received message's fields are offsets into its buffer (one `Bytes` for all of them, so
/// parsing takes no reference count per field); fields added later keep their own `Bytes`.
/// Values are handed out as [`HeaderValue`]s, which borrow the list and make a `Bytes` only
/// when asked.
#[derive(Clone)]
pub struct Headers {
    buf: Bytes,
    added: Vec<Bytes>,
    fields: Vec<Field>,
    /// One bit per known name code present at least once, and at least twice: lookups of
    /// absent names and the "only one" check of single-valued headers cost no walk.
    present: u64,
    repeated: u64,
    /// Where the first field of each present known name is ([`NO_INDEX`] past 254 fields).
    first: [u8; HeaderName::KNOWN_COUNT],
}

impl Default for Headers {
    fn default() -> Headers {
        Headers::new()
    }
}

/// No index kept in [`Headers::first`]: walk the list.
const NO_INDEX: u8 = u8::MAX;

/// The bit of a known name code in [`Headers::present`]; extension names have none.
#[inline(always)]
fn code_bit(code: u8) -> u64 {
    if code < 64 {
        1 << code
    } else {
        0
    }
}

/// A header value borrowed from a [`Headers`] list: the octets, and the buffer they are in
/// (typed parsers slice their parts from it without copying).
#[derive(Clone, Copy)]
pub struct HeaderValue<'a> {
    base: &'a Bytes,
    bytes: &'a [u8],
}

impl<'a> HeaderValue<'a> {
    /// The buffer the value is a part of.
    #[inline]
    pub fn base(&self) -> &'a Bytes {
        self.base
    }

    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The value as a `Bytes` sharing the message buffer (no copy).
    pub fn to_bytes(&self) -> Bytes {
        if self.bytes.is_empty() {
            Bytes::new()
        } else {
            self.base.slice_ref(self.bytes)
        }
    }

    /// The value with line folds replaced by single spaces (RFC 3261 §7.3.1).
    pub fn to_str(&self) -> Cow<'a, str> {
        unfold(self.bytes)
    }
}

impl std::ops::Deref for HeaderValue<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl AsRef<[u8]> for HeaderValue<'_> {
    fn as_ref(&self) -> &[u8] {
        self.bytes
    }
}

impl std::fmt::Debug for HeaderValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.bytes))
    }
}

impl PartialEq for HeaderValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for HeaderValue<'_> {}

impl PartialEq<[u8]> for HeaderValue<'_> {
    fn eq(&self, other: &[u8]) -> bool {
        self.bytes == other
    }
}

impl PartialEq<&[u8]> for HeaderValue<'_> {
    fn eq(&self, other: &&[u8]) -> bool {
        self.bytes == *other
    }
}

impl From<HeaderValue<'_>> for Bytes {
    fn from(v: HeaderValue<'_>) -> Bytes {
        v.to_bytes()
    }
}

/// One field of a [`Headers`] list, borrowed.
#[derive(Clone, Copy)]
pub struct HeaderRef<'a> {
    headers: &'a Headers,
    field: &'a Field,
}

impl<'a> HeaderRef<'a> {
    /// The recognised name (an extension name as written).
    pub fn name(&self) -> HeaderName {
        HeaderName::from_code(self.field.code)
            .unwrap_or_else(|| HeaderName::Other(self.headers.bytes_of(self.field.raw_name)))
    }

    /// Whether the field carries `name` (extension names compared case-insensitively).
    #[inline]
    pub fn is(&self, name: &HeaderName) -> bool {
        self.headers.matches(self.field, name.code(), name)
    }

    /// The name exactly as it was on the wire (`v`, `ViA`, `Call-ID`...).
    pub fn raw_name(&self) -> &'a [u8] {
        self.headers.slice(self.field.raw_name)
    }

    pub fn value(&self) -> HeaderValue<'a> {
        self.headers.value(self.field.value)
    }

    /// The field as an owned [`Header`] (sharing the buffer, no copy).
    pub fn to_header(&self) -> Header {
        Header {
            name: self.name(),
            raw_name: self.headers.bytes_of(self.field.raw_name),
            value: self.headers.bytes_of(self.field.value),
        }
    }
}

impl std::fmt::Debug for HeaderRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:?}",
            String::from_utf8_lossy(self.raw_name()),
            self.value()
        )
    }
}

impl Headers {
    pub fn new() -> Headers {
        Headers::with_capacity(0)
    }

    /// Room for `n` fields added one by one (each keeps its name and its value).
    pub fn with_capacity(n: usize) -> Headers {
        Headers {
            buf: Bytes::new(),
            added: Vec::with_capacity(2 * n),
            fields: Vec::with_capacity(n),
            present: 0,
            repeated: 0,
            first: [NO_INDEX; HeaderName::KNOWN_COUNT],
        }
    }

    /// An empty list over a received buffer, filled with [`Headers::push_wire`].
    pub(crate) fn over(buf: Bytes, capacity: usize) -> Headers {
        Headers {
            buf,
            added: Vec::new(),
            fields: Vec::with_capacity(capacity),
            present: 0,
            repeated: 0,
            first: [NO_INDEX; HeaderName::KNOWN_COUNT],
        }
    }

    /// Appends a field read from the buffer: `name` and `value` are offsets into it.
    /// Returns the code of the recognised name.
    #[inline]
    pub(crate) fn push_wire(&mut self, name: (usize, usize), value: (usize, usize)) -> u8 {
        let raw = &self.buf[name.0..name.1];
        let code = match raw {
            [c] => compact_name(*c).map_or(OTHER_CODE, |n| n.code()),
            _ => known_long_name(raw).map_or(OTHER_CODE, |n| n.code()),
        };
        self.push_wire_coded(code, name, value);
        code
    }

    /// Appends a field read from the buffer whose name is already recognised as `code`.
    #[inline]
    pub(crate) fn push_wire_coded(
        &mut self,
        code: u8,
        name: (usize, usize),
        value: (usize, usize),
    ) {
        // Offsets fit: a message is far smaller than 4 GiB (the transports cap it).
        let span = |(s, e): (usize, usize)| Span {
            src: 0,
            start: s as u32,
            end: e as u32,
        };
        self.fields.push(Field {
            code,
            raw_name: span(name),
            value: span(value),
        });
        self.note(code, self.fields.len() - 1);
    }

    #[inline]
    fn base(&self, s: Span) -> &Bytes {
        if s.src == 0 {
            &self.buf
        } else {
            // Every span with src > 0 was made by `store` with a valid index.
            &self.added[s.src as usize - 1]
        }
    }

    #[inline]
    fn slice(&self, s: Span) -> &[u8] {
        &self.base(s)[s.start as usize..s.end as usize]
    }

    #[inline]
    fn value(&self, s: Span) -> HeaderValue<'_> {
        HeaderValue {
            base: self.base(s),
            bytes: self.slice(s),
        }
    }

    fn bytes_of(&self, s: Span) -> Bytes {
        let base = self.base(s);
        if s.start == 0 && s.end as usize == base.len() {
            base.clone()
        } else {
            base.slice(s.start as usize..s.end as usize)
        }
    }

    /// Keeps `b` in the list and returns a span covering it.
    fn store(&mut self, b: Bytes) -> Span {
        // A value of 4 GiB or more is cut at 4 GiB (never out of bounds).
        let end = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.added.push(b);
        Span {
            src: self.added.len() as u32,
            start: 0,
            end,
        }
    }

    fn field_of(&mut self, h: Header) -> Field {
        Field {
            code: h.name.code(),
            raw_name: self.store(h.raw_name),
            value: self.store(h.value),
        }
    }

    /// Records one more field with `code`, at `index`, in the presence bits and the index.
    #[inline(always)]
    fn note(&mut self, code: u8, index: usize) {
        let bit = code_bit(code);
        if self.present & bit == 0 {
            if let Some(slot) = self.first.get_mut(usize::from(code)) {
                *slot = u8::try_from(index).unwrap_or(NO_INDEX);
            }
        }
        self.repeated |= self.present & bit;
        self.present |= bit;
    }

    /// Recomputes the presence bits and the index after fields were moved or removed.
    fn renote(&mut self) {
        self.present = 0;
        self.repeated = 0;
        for i in 0..self.fields.len() {
            self.note(self.fields[i].code, i);
        }
    }

    /// The fields that may carry `code`: none when a known name is absent, just its field
    /// when it is present once, from its first field on when repeated (every field for an
    /// extension name, or past the index's reach).
    #[inline(always)]
    fn candidates(&self, code: u8) -> &[Field] {
        if code == OTHER_CODE {
            return &self.fields;
        }
        let bit = code_bit(code);
        if self.present & bit == 0 {
            return &[];
        }
        match self.first.get(usize::from(code)) {
            Some(&i) if i != NO_INDEX => {
                let i = usize::from(i);
                let end = if self.repeated & bit == 0 {
                    i + 1
                } else {
                    self.fields.len()
                };
                self.fields.get(i..end).unwrap_or_default()
            }
            _ => &self.fields,
        }
    }

    /// Whether `name` occurs more than once (single-valued headers must not).
    pub fn is_repeated(&self, name: &HeaderName) -> bool {
        let code = name.code();
        if code != OTHER_CODE && code < 64 {
            return self.repeated & code_bit(code) != 0;
        }
        self.count(name) > 1
    }

    #[inline(always)]
    fn matches(&self, f: &Field, code: u8, name: &HeaderName) -> bool {
        if f.code != code {
            return false;
        }
        match name {
            HeaderName::Other(n) => self.slice(f.raw_name).eq_ignore_ascii_case(n),
            _ => true,
        }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = HeaderRef<'_>> + ExactSizeIterator {
        self.fields.iter().map(move |field| HeaderRef {
            headers: self,
            field,
        })
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Appends a header line.
    pub fn push(&mut self, h: Header) {
        let f = self.field_of(h);
        self.note(f.code, self.fields.len());
        self.fields.push(f);
    }

    /// Appends a header with the canonical name.
    pub fn add(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        self.push(Header::new(name, value));
    }

    /// Inserts a header before all the others of the message (e.g. a new top Via).
    pub fn insert_first(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        let f = self.field_of(Header::new(name, value));
        self.fields.insert(0, f);
        self.renote();
    }

    /// Replaces the first occurrence of `name` with `value` (the name written canonically),
    /// leaving the others as they are; appends it when there is none.
    pub fn replace_first(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        let code = name.code();
        match self
            .fields
            .iter()
            .position(|x| self.matches(x, code, &name))
        {
            Some(i) => {
                // Same name, same place: the presence bits and the index stand.
                let f = self.field_of(Header::new(name, value));
                self.fields[i] = f;
            }
            None => self.add(name, value),
        }
    }

    /// Replaces every occurrence of `name` with one value (or appends it).
    pub fn set(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        let code = name.code();
        let f = self.field_of(Header::new(name.clone(), value));
        match self
            .fields
            .iter()
            .position(|x| self.matches(x, code, &name))
        {
            // The only occurrence: replaced where it stands (same name, same place).
            Some(i) if !self.is_repeated(&name) => {
                self.fields[i] = f;
                return;
            }
            Some(i) => {
                self.fields[i] = f;
                let mut seen = 0;
                let fields = std::mem::take(&mut self.fields);
                self.fields = fields
                    .into_iter()
                    .filter(|x| {
                        if self.matches(x, code, &name) {
                            seen += 1;
                            seen == 1
                        } else {
                            true
                        }
                    })
                    .collect();
            }
            None => self.fields.push(f),
        }
        self.renote();
    }

    /// Removes every occurrence of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        let code = name.code();
        let fields = std::mem::take(&mut self.fields);
        self.fields = fields
            .into_iter()
            .filter(|x| !self.matches(x, code, name))
            .collect();
        self.renote();
    }

    /// The first value of `name`.
    #[inline]
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue<'_>> {
        let code = name.code();
        self.candidates(code)
            .iter()
            .find(|f| self.matches(f, code, name))
            .map(|f| self.value(f.value))
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(
        &'a self,
        name: &'a HeaderName,
    ) -> impl Iterator<Item = HeaderValue<'a>> + 'a {
        let code = name.code();
        self.candidates(code)
            .iter()
            .filter(move |f| self.matches(f, code, name))
            .map(move |f| self.value(f.value))
    }

    /// How many lines carry `name`.
    pub fn count(&self, name: &HeaderName) -> usize {
        let code = name.code();
        self.candidates(code)
            .iter()
            .filter(|f| self.matches(f, code, name))
            .count()
    }

    /// A header looked up by its name as written, case-insensitively (compact forms are
    /// not expanded: use [`Headers::get`] with a [`HeaderName`] for that).
    pub fn get_other(&self, name: &str) -> Option<HeaderValue<'_>> {
        self.fields
            .iter()
            .find(|f| self.slice(f.raw_name).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| self.value(f.value))
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len()
            && self.iter().zip(other.iter()).all(|(a, b)| {
                a.field.code == b.field.code
                    && a.raw_name() == b.raw_name()
                    && a.value().as_bytes() == b.value().as_bytes()
            })
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> HeaderName {
        HeaderName::from_bytes(s.as_bytes(), || Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn compact_and_case_insensitive_names() {
        assert_eq!(name("v"), HeaderName::Via);
        assert_eq!(name("ViA"), HeaderName::Via);
        assert_eq!(name("i"), HeaderName::CallId);
        assert_eq!(name("M"), HeaderName::Contact);
        assert_eq!(name("l"), HeaderName::ContentLength);
        assert_eq!(name("x"), HeaderName::SessionExpires);
        assert_eq!(
            name("C%6Fntact"),
            HeaderName::Other(Bytes::from("C%6Fntact"))
        );
        assert_eq!(name("q"), HeaderName::Other(Bytes::from("q")));
    }

    #[test]
    fn every_known_name_is_recognised_in_any_case() {
        for n in HeaderName::KNOWN {
            let canon = n.as_str().into_owned();
            assert_eq!(&name(&canon), n, "{canon}");
            assert_eq!(&name(&canon.to_ascii_lowercase()), n, "{canon}");
            assert_eq!(&name(&canon.to_ascii_uppercase()), n, "{canon}");
            // One octet off is another (unknown) name.
            let mut near = canon.clone().into_bytes();
            near.push(b'x');
            assert!(matches!(
                name(&String::from_utf8_lossy(&near)),
                HeaderName::Other(_)
            ));
        }
    }

    #[test]
    fn names_from_the_wire_keep_their_spelling() {
        let base = Bytes::from_static(b"ViA v Via X-Foo x-foo");
        let mut h = Headers::over(base.clone(), 4);
        h.push_wire((0, 3), (0, 0));
        h.push_wire((4, 5), (0, 0));
        h.push_wire((6, 9), (0, 0));
        h.push_wire((10, 15), (10, 15));
        let seen: Vec<(HeaderName, &[u8])> = h.iter().map(|f| (f.name(), f.raw_name())).collect();
        assert_eq!(
            seen,
            [
                (HeaderName::Via, &b"ViA"[..]),
                (HeaderName::Via, &b"v"[..]),
                (HeaderName::Via, &b"Via"[..]),
                (
                    HeaderName::Other(Bytes::from_static(b"X-Foo")),
                    &b"X-Foo"[..]
                ),
            ]
        );
        assert_eq!(h.count(&HeaderName::Via), 3);
        // Extension names are found case-insensitively.
        let other = HeaderName::Other(Bytes::from_static(b"x-foo"));
        assert_eq!(h.get(&other).map(|v| v.as_bytes()), Some(&b"X-Foo"[..]));
        assert_eq!(
            h.get(&other).map(|v| v.to_bytes()),
            Some(Bytes::from("X-Foo"))
        );
    }

    #[test]
    fn added_and_received_fields_mix() {
        let base = Bytes::from_static(b"To: <sip:b@x>");
        let mut h = Headers::over(base, 2);
        h.push_wire((0, 2), (4, 13));
        h.insert_first(HeaderName::Via, "SIP/2.0/UDP h");
        h.add(HeaderName::Other(Bytes::from_static(b"X-A")), "1");
        let names: Vec<String> = h.iter().map(|f| f.name().to_string()).collect();
        assert_eq!(names, ["Via", "To", "X-A"]);
        h.set(HeaderName::To, "<sip:c@y>");
        assert_eq!(
            h.get(&HeaderName::To).map(|v| v.as_bytes()),
            Some(&b"<sip:c@y>"[..])
        );
        h.remove(&HeaderName::Via);
        assert_eq!(h.len(), 2);
        let mut built = Headers::new();
        built.add(HeaderName::To, "<sip:c@y>");
        built.add(HeaderName::Other(Bytes::from_static(b"X-A")), "1");
        assert_eq!(h, built);
        let mut same = Headers::new();
        same.add(HeaderName::Other(Bytes::from_static(b"X-A")), "1");
        same.add(HeaderName::To, "<sip:c@y>");
        assert_ne!(h, same, "the order differs");
    }

    #[test]
    fn lookups_past_the_index() {
        // More fields than the index can point at: lookups walk, and still find them.
        let mut h = Headers::new();
        for i in 0..300 {
            h.add(HeaderName::Other(Bytes::from_static(b"X-N")), i.to_string());
        }
        h.add(HeaderName::Via, "v1");
        h.add(HeaderName::Via, "v2");
        assert_eq!(
            h.get(&HeaderName::Via).map(|v| v.to_bytes()),
            Some(Bytes::from("v1"))
        );
        assert_eq!(h.get_all(&HeaderName::Via).count(), 2);
        assert_eq!(h.count(&HeaderName::Via), 2);
        assert!(h.is_repeated(&HeaderName::Via));
        assert_eq!(h.get(&HeaderName::To), None);
        h.insert_first(HeaderName::To, "t");
        assert_eq!(
            h.get(&HeaderName::To).map(|v| v.to_bytes()),
            Some(Bytes::from("t"))
        );
        assert_eq!(
            h.get(&HeaderName::Via).map(|v| v.to_bytes()),
            Some(Bytes::from("v1"))
        );
    }

    #[test]
    fn canonical_prefixes_agree_with_the_general_rule() {
        for n in HeaderName::KNOWN {
            let canon = n.as_str().into_owned();
            let line = format!("{canon}: x");
            if let Some((code, len)) = canonical_prefix(line.as_bytes()) {
                assert_eq!((code, len), (n.code(), canon.len()), "{canon}");
            }
            // Other spellings are never taken by the fast path.
            for other in [
                canon.to_ascii_lowercase(),
                format!("{canon} "),
                format!("{canon}x"),
            ] {
                let line = format!("{other}: x");
                if other != canon {
                    assert_eq!(canonical_prefix(line.as_bytes()), None, "{other}");
                }
            }
        }
        assert_eq!(
            canonical_prefix(b"Via: SIP/2.0/UDP h"),
            Some((HeaderName::Via.code(), 3))
        );
        assert_eq!(canonical_prefix(b"Viax: y"), None);
        assert_eq!(canonical_prefix(b"X-Via: y"), None);
    }

    #[test]
    fn unfolding() {
        assert_eq!(unfold(b"a\r\n  b\r\n\tc"), "a b c");
        assert_eq!(unfold(b"plain"), "plain");
    }

    #[test]
    fn set_replaces_all() {
        let mut h = Headers::new();
        h.add(HeaderName::Via, "a");
        h.add(HeaderName::To, "t");
        h.add(HeaderName::Via, "b");
        assert!(h.is_repeated(&HeaderName::Via));
        assert!(!h.is_repeated(&HeaderName::To));
        h.set(HeaderName::Via, "c");
        assert!(!h.is_repeated(&HeaderName::Via));
        assert_eq!(h.count(&HeaderName::Via), 1);
        h.remove(&HeaderName::To);
        assert_eq!(h.get(&HeaderName::To).map(|v| v.to_bytes()), None);
        assert_eq!(h.get_all(&HeaderName::To).count(), 0);
        h.insert_first(HeaderName::To, "t2");
        assert_eq!(
            h.get(&HeaderName::To).map(|v| v.to_bytes()),
            Some(Bytes::from("t2"))
        );
        assert_eq!(
            h.get(&HeaderName::Via).map(|b| b.as_bytes()),
            Some(&b"c"[..])
        );
        assert_eq!(h.iter().next().map(|x| x.name()), Some(HeaderName::To));
    }
}
