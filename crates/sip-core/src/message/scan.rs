//! A byte scanner for header values (RFC 3261 §25.1 basic rules).
//!
//! Header values are kept exactly as received, so they may still contain line folds
//! (`CRLF 1*WSP`). The scanner treats CR and LF inside a value as linear white space,
//! which is what unfolding would produce, without copying the value.

use bytes::Bytes;

/// `token` characters of RFC 3261 §25.1, one entry per octet.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    t
};

/// `token` characters of RFC 3261 §25.1.
#[inline(always)]
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A cursor over one header value.
#[derive(Debug, Clone)]
pub(crate) struct Scanner<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Scanner { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[inline]
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Skips linear white space (including folds). Returns whether any was skipped.
    #[inline]
    pub(crate) fn skip_lws(&mut self) -> bool {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if is_lws(b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.pos != start
    }

    /// Consumes `c` surrounded by optional LWS (the SEMI, COMMA, EQUAL, SLASH, COLON rules).
    pub(crate) fn eat_sep(&mut self, c: u8) -> bool {
        let save = self.pos;
        self.skip_lws();
        if self.peek() == Some(c) {
            self.pos += 1;
            self.skip_lws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// Consumes `c` if it is the next byte (no white space allowed).
    #[inline]
    pub(crate) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A run of bytes matching `f` (possibly empty).
    #[inline]
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if f(b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        &self.buf[start..self.pos]
    }

    /// A non-empty `token`.
    pub(crate) fn token(&mut self) -> Option<&'a [u8]> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A `quoted-string` including its quotes; `None` if unterminated, not at a quote, or
    /// holding octets ≥ 0x80 that are not UTF-8 (`qdtext` allows `UTF8-NONASCII` only,
    /// RFC 3261 §25.1, so every accepted value can be written back as text unchanged).
    pub(crate) fn quoted_string(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        // The common case: no quoted-pair, ASCII only — the closing quote is the next one.
        let rest = &self.buf[self.pos..];
        if let Some(close) = find_byte(b'"', rest) {
            let inner = &rest[..close];
            if find_byte(b'\\', inner).is_none() && inner.iter().all(|&b| b < 0x80) {
                self.pos += close + 1;
                return Some(&self.buf[start..self.pos]);
            }
        }
        let mut high = 0u8;
        while let Some(b) = self.peek() {
            high |= b;
            match b {
                b'"' => {
                    let q = &self.buf[start..=self.pos];
                    if high >= 0x80 && std::str::from_utf8(q).is_err() {
                        self.pos = start;
                        return None;
                    }
                    self.pos += 1;
                    return Some(q);
                }
                b'\\' => {
                    // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                    match self.buf.get(self.pos + 1) {
                        Some(&n) if n != b'\r' && n != b'\n' && n < 0x80 => self.pos += 2,
                        _ => {
                            self.pos = start;
                            return None;
                        }
                    }
                }
                _ => self.pos += 1,
            }
        }
        self.pos = start;
        None
    }
}

/// `s` as a `Bytes`: a static one when it is a word that recurs in nearly every message
/// (parameter names, transports, `phone`), so the common case updates no reference count; a
/// slice of `base` otherwise. Either way the octets are those of `s`, case included.
#[inline]
pub(crate) fn shared_word(base: &Bytes, s: &[u8]) -> Bytes {
    let word: &'static [u8] = match s {
        b"tag" => b"tag",
        b"branch" => b"branch",
        b"rport" => b"rport",
        b"received" => b"received",
        b"user" => b"user",
        b"phone" => b"phone",
        b"transport" => b"transport",
        b"lr" => b"lr",
        b"expires" => b"expires",
        b"maddr" => b"maddr",
        b"ftag" => b"ftag",
        b"alias" => b"alias",
        b"refresher" => b"refresher",
        b"UDP" => b"UDP",
        b"TCP" => b"TCP",
        b"TLS" => b"TLS",
        b"udp" => b"udp",
        b"tcp" => b"tcp",
        b"tls" => b"tls",
        _ => return base.slice_ref(s),
    };
    Bytes::from_static(word)
}

/// The first `c` in `s`, eight octets at a time (SWAR: the classic "has a zero byte" test on
/// `word ^ c…c`). For the few dozen octets of a URI part or a header line this beats both a
/// plain loop and `memchr`'s vector code, whose set-up dominates on such short inputs.
#[inline]
pub(crate) fn find_byte(c: u8, s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(c);
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word) ^ pattern;
        // The lowest set bit marks the first zero byte (higher ones may be false positives).
        let zero = w.wrapping_sub(LO) & !w & HI;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == c)
        .map(|p| at + p)
}

/// Whether any octet of `s` is a control octet or space (≤ 0x20), eight at a time.
#[inline]
pub(crate) fn any_ctl_or_space(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // A byte below 0x21 borrows in `w - 0x21…21` and has its high bit clear in `w`.
        if w.wrapping_sub(LO * 0x21) & !w & HI != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b <= b' ')
}

/// Trims LWS on both sides.
pub(crate) fn trim_lws(mut s: &[u8]) -> &[u8] {
    while let Some((&f, rest)) = s.split_first() {
        if is_lws(f) {
            s = rest;
        } else {
            break;
        }
    }
    while let Some((&l, rest)) = s.split_last() {
        if is_lws(l) {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Parses a decimal number made only of digits, refusing overflow past `max`.
pub(crate) fn parse_decimal(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (v <= max).then_some(v)
}

/// Removes the quotes and backslash escapes of a `quoted-string`.
pub fn unquote(s: &[u8]) -> Vec<u8> {
    let inner = if s.len() >= 2 && s[0] == b'"' && s[s.len() - 1] == b'"' {
        &s[1..s.len() - 1]
    } else {
        s
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings() {
        let mut s = Scanner::new(br#""J Rosenberg \\\"" <sip:x>"#);
        assert_eq!(s.quoted_string(), Some(&br#""J Rosenberg \\\"""#[..]));
        // UTF-8 is legal in a quoted string, other octets >= 0x80 are not.
        let mut s = Scanner::new("\"J\u{e9}r\u{f4}me\" <sip:x>".as_bytes());
        assert_eq!(s.quoted_string(), Some("\"J\u{e9}r\u{f4}me\"".as_bytes()));
        let mut s = Scanner::new(b"\"J\xe9r\xf4me\" <sip:x>");
        assert_eq!(s.quoted_string(), None);
        assert_eq!(s.pos, 0);
        let mut s = Scanner::new(br#""unterminated <sip:x>"#);
        assert_eq!(s.quoted_string(), None);
        assert_eq!(s.pos, 0);
        assert_eq!(unquote(br#""a \"b\" \\""#), br#"a "b" \"#.to_vec());
    }

    #[test]
    fn shared_words_keep_their_octets() {
        let base = Bytes::from_static(b"branch Branch x-custom");
        assert_eq!(&shared_word(&base, &base[..6])[..], b"branch");
        assert_eq!(&shared_word(&base, &base[7..13])[..], b"Branch");
        assert_eq!(&shared_word(&base, &base[14..])[..], b"x-custom");
    }

    #[test]
    fn find_byte_agrees_with_a_plain_search() {
        let text: Vec<u8> = (0u8..=255).chain(0u8..=255).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 512] {
            for c in [0u8, 1, 0x0a, b':', 0x7f, 0x80, 0xfe, 0xff] {
                for start in [0, 1, 3, 8] {
                    let s = &text[start.min(len)..len];
                    assert_eq!(
                        find_byte(c, s),
                        s.iter().position(|&b| b == c),
                        "{c} in [{start}..{len}]"
                    );
                }
            }
        }
        // A byte just above the searched one must not be reported first (borrow effects).
        assert_eq!(find_byte(b'a', b"bbbbbbba"), Some(7));
        assert_eq!(find_byte(0x01, &[0x02, 0x01, 0x00, 0x01]), Some(1));
    }

    #[test]
    fn ctl_or_space_detection() {
        for b in 0u8..=255 {
            for pos in [0usize, 3, 7, 8, 12] {
                let mut s = vec![b'a'; 13];
                s[pos] = b;
                assert_eq!(any_ctl_or_space(&s), b <= b' ', "{b} at {pos}");
            }
        }
        assert!(!any_ctl_or_space(b""));
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"0068", 255), Some(68));
        assert_eq!(parse_decimal(b"300", 255), None);
        assert_eq!(parse_decimal(b"36893488147419103232", u64::MAX), None);
        assert_eq!(parse_decimal(b"-1", 10), None);
        assert_eq!(parse_decimal(b"", 10), None);
    }

    #[test]
    fn separators_skip_folds() {
        let mut s = Scanner::new(b" \r\n  ;\r\n tag");
        assert!(s.eat_sep(b';'));
        assert_eq!(s.token(), Some(&b"tag"[..]));
    }
}
