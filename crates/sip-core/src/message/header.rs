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
                } else {
                    known_long_name(raw).map(|(n, _)| n)
                };
                known.unwrap_or_else(|| HeaderName::Other(original()))
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
/// once. Returns the name, and its canonical spelling when `raw` is written exactly so.
#[inline]
pub(crate) fn known_long_name(raw: &[u8]) -> Option<(HeaderName, Option<&'static str>)> {
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
    if raw == canon.as_bytes() {
        Some((name, Some(canon)))
    } else if raw.eq_ignore_ascii_case(canon.as_bytes()) {
        Some((name, None))
    } else {
        None
    }
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

/// One header field line: its recognised name, the name as written, and the raw value
/// (leading and trailing white space removed, inner folds kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    /// The name exactly as it was on the wire (`v`, `ViA`, `Call-ID`...).
    pub raw_name: Bytes,
    pub value: Bytes,
}

impl Header {
    /// A header with the canonical name.
    pub fn new(name: HeaderName, value: impl Into<Bytes>) -> Header {
        let raw_name = match &name {
            HeaderName::Other(b) => b.clone(),
            n => Bytes::from(n.as_str().into_owned()),
        };
        Header {
            name,
            raw_name,
            value: value.into(),
        }
    }

    /// A header field as received: `raw_name` and `value` are sub-slices of `base`.
    ///
    /// A name written exactly in its canonical or compact form is kept as a static `Bytes`
    /// (no reference count to update or drop); other spellings are slices of `base`.
    #[inline]
    pub(crate) fn from_wire(base: &Bytes, raw_name: &[u8], value: &[u8]) -> Header {
        let (name, raw_name) = match raw_name {
            [c] => match compact_name(*c) {
                Some(n) => (n, one_octet(*c)),
                None => {
                    let r = base.slice_ref(raw_name);
                    (HeaderName::Other(r.clone()), r)
                }
            },
            _ => match known_long_name(raw_name) {
                Some((n, Some(canon))) => (n, Bytes::from_static(canon.as_bytes())),
                Some((n, None)) => (n, base.slice_ref(raw_name)),
                None => {
                    let r = base.slice_ref(raw_name);
                    (HeaderName::Other(r.clone()), r)
                }
            },
        };
        let value = if value.is_empty() {
            Bytes::new()
        } else {
            base.slice_ref(value)
        };
        Header {
            name,
            raw_name,
            value,
        }
    }

    /// The value with line folds replaced by single spaces (RFC 3261 §7.3.1).
    pub fn value_str(&self) -> Cow<'_, str> {
        unfold(&self.value)
    }
}

/// Every octet value, so a one-octet name can be a static `Bytes`.
static OCTETS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

fn one_octet(c: u8) -> Bytes {
    let i = usize::from(c);
    Bytes::from_static(&OCTETS[i..=i])
}

/// Replaces every fold (`CRLF 1*WSP` or a bare CR/LF with WSP) with one space.
pub fn unfold(v: &[u8]) -> Cow<'_, str> {
    if !v.iter().any(|&b| b == b'\r' || b == b'\n') {
        return String::from_utf8_lossy(v);
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

/// The header fields of a message, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<Header>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers { fields: Vec::new() }
    }

    pub fn with_capacity(n: usize) -> Headers {
        Headers {
            fields: Vec::with_capacity(n),
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.fields.iter()
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Appends a header line.
    #[inline]
    pub fn push(&mut self, h: Header) {
        self.fields.push(h);
    }

    /// Appends a header with the canonical name.
    pub fn add(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        self.fields.push(Header::new(name, value));
    }

    /// Inserts a header before all the others of the message (e.g. a new top Via).
    pub fn insert_first(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        self.fields.insert(0, Header::new(name, value));
    }

    /// Replaces every occurrence of `name` with one value (or appends it).
    pub fn set(&mut self, name: HeaderName, value: impl Into<Bytes>) {
        let value = value.into();
        if let Some(i) = self.fields.iter().position(|h| h.name == name) {
            self.fields[i] = Header::new(name.clone(), value);
            let mut n = 0;
            self.fields.retain(|h| {
                if h.name == name {
                    n += 1;
                    n == 1
                } else {
                    true
                }
            });
        } else {
            self.add(name, value);
        }
    }

    /// Removes every occurrence of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        self.fields.retain(|h| &h.name != name);
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|h| &h.name == name)
            .map(|h| &h.value)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a Bytes> + 'a {
        let name = name.clone();
        self.fields
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| &h.value)
    }

    /// How many lines carry `name`.
    pub fn count(&self, name: &HeaderName) -> usize {
        self.fields.iter().filter(|h| &h.name == name).count()
    }

    /// An extension header looked up by name, case-insensitively.
    pub fn get_other(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|h| h.raw_name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| &h.value)
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.fields.iter()
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
        let base = Bytes::from_static(b"ViA v Via X-Foo");
        let h = Header::from_wire(&base, &base[0..3], b"");
        assert_eq!((h.name, &h.raw_name[..]), (HeaderName::Via, &b"ViA"[..]));
        let h = Header::from_wire(&base, &base[4..5], b"");
        assert_eq!((h.name, &h.raw_name[..]), (HeaderName::Via, &b"v"[..]));
        let h = Header::from_wire(&base, &base[6..9], b"");
        assert_eq!((h.name, &h.raw_name[..]), (HeaderName::Via, &b"Via"[..]));
        let h = Header::from_wire(&base, &base[10..], &base[10..]);
        assert_eq!(h.name, HeaderName::Other(Bytes::from_static(b"X-Foo")));
        assert_eq!(&h.value[..], b"X-Foo");
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
        h.set(HeaderName::Via, "c");
        assert_eq!(h.count(&HeaderName::Via), 1);
        assert_eq!(h.get(&HeaderName::Via).map(|b| &b[..]), Some(&b"c"[..]));
        assert_eq!(
            h.iter().next().map(|x| x.name.clone()),
            Some(HeaderName::Via)
        );
    }
}
