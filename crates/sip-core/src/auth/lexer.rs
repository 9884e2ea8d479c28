//! The generic grammar of authentication headers, below the `Digest`
//! scheme (RFC 7235 §2.1, RFC 3261 §25.1):
//!
//! ```text
//! challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param  = token BWS "=" BWS ( token / quoted-string )
//! token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! One header value may carry several challenges separated by commas
//! (`Digest realm="a", nonce="1", Digest realm="b", nonce="2"`): a token that
//! is not followed by `=` starts the next one.
//!
//! Liberal where peers are known to stray: linear white space (SP, HTAB, and
//! CR/LF left over from folding) is skipped wherever the grammar allows
//! white space, empty list elements are ignored, parameter values may be
//! unquoted even where a quoted-string is required, and a quoted-string may
//! hold any character except an unescaped `"`.

use super::AuthError;

/// One `auth-param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name, as written (compare with `eq_ignore_ascii_case`).
    pub name: String,
    /// The value, without quotes and with quoted-pairs resolved.
    pub value: String,
    /// Whether the value was (or is to be written as) a quoted-string.
    pub quoted: bool,
}

impl Param {
    /// A parameter written as a quoted-string.
    pub fn quoted(name: impl Into<String>, value: impl Into<String>) -> Param {
        Param {
            name: name.into(),
            value: value.into(),
            quoted: true,
        }
    }

    /// A parameter written as a bare token.
    pub fn token(name: impl Into<String>, value: impl Into<String>) -> Param {
        Param {
            name: name.into(),
            value: value.into(),
            quoted: false,
        }
    }
}

/// One auth-param as read: the name and, unless a quoted-pair or a fold had to be resolved,
/// the value borrowed from the header value (nothing is copied until a field keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawParam<'a> {
    pub name: &'a str,
    pub value: std::borrow::Cow<'a, str>,
    pub quoted: bool,
}

impl RawParam<'_> {
    pub fn into_param(self) -> Param {
        Param {
            name: self.name.to_owned(),
            value: self.value.into_owned(),
            quoted: self.quoted,
        }
    }
}

impl PartialEq<Param> for RawParam<'_> {
    fn eq(&self, other: &Param) -> bool {
        self.name == other.name && self.value == other.value.as_str() && self.quoted == other.quoted
    }
}

/// One challenge or credentials of any scheme, before the scheme's own
/// rules are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawAuth<'a> {
    pub scheme: &'a str,
    pub token68: Option<&'a str>,
    pub params: Vec<RawParam<'a>>,
}

/// `tchar` of RFC 7230 together with the `token` characters of RFC 3261.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A bare (unquoted) parameter value ends at white space, a comma or a quote.
fn is_bare_value_char(b: u8) -> bool {
    !is_lws(b) && b != b',' && b != b'"' && !b.is_ascii_control()
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn skip_lws(&mut self) {
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
    }

    fn skip_lws_and_commas(&mut self) {
        while self.peek().is_some_and(|b| is_lws(b) || b == b',') {
            self.pos += 1;
        }
    }

    /// Takes bytes while `pred` holds. `pred` only accepts ASCII, or at
    /// least never stops inside a UTF-8 sequence, so the slice is on char
    /// boundaries.
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or("")
    }

    fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_tchar);
        (!t.is_empty()).then_some(t)
    }

    /// If a token68 starts here and ends the element (white space, then a
    /// comma or the end), consumes and returns it.
    fn try_token68(&mut self) -> Option<&'a str> {
        let bytes = self.s.as_bytes();
        let start = self.pos;
        let mut end = start;
        while bytes.get(end).copied().is_some_and(is_token68_char) {
            end += 1;
        }
        if end == start {
            return None;
        }
        while bytes.get(end) == Some(&b'=') {
            end += 1;
        }
        let mut after = end;
        while bytes.get(after).copied().is_some_and(is_lws) {
            after += 1;
        }
        match bytes.get(after) {
            None | Some(b',') => {
                self.pos = end;
                self.s.get(start..end)
            }
            Some(_) => None,
        }
    }

    /// `quoted-string`, the opening quote already seen at `self.pos`.
    /// A `quoted-string` (RFC 3261 §25.1), the opening quote at `pos`:
    ///
    /// ```text
    /// quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
    /// qdtext        = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
    /// quoted-pair   = "\" (%x00-09 / %x0B-0C / %x0E-7F)
    /// LWS           = [*WSP CRLF] 1*WSP
    /// ```
    ///
    /// A folded line (CRLF then white space) stands for its white space; any other CR or
    /// LF, and an unescaped control character other than HTAB, is refused: such a value
    /// could not be written back as it was read.
    fn quoted_string(&mut self) -> Result<std::borrow::Cow<'a, str>, AuthError> {
        let start = self.pos;
        self.pos += 1;
        let rest: &'a str = self.s.get(self.pos..).unwrap_or("");
        // Most values hold nothing to resolve (no quoted-pair, no fold, no control): they
        // are borrowed as they stand.
        if let Some(end) = rest
            .bytes()
            .position(|b| b == b'"' || b == b'\\' || (b.is_ascii_control() && b != b'\t'))
        {
            if rest.as_bytes()[end] == b'"' {
                self.pos += end + 1;
                return Ok(std::borrow::Cow::Borrowed(&rest[..end]));
            }
        }
        let mut out = String::with_capacity(rest.len().min(256));
        let mut chars = rest.char_indices().peekable();
        let refuse = |i: usize| AuthError::UnexpectedCharacter { at: start + 1 + i };
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(std::borrow::Cow::Owned(out));
                }
                '\\' => match chars.next() {
                    Some((j, '\r' | '\n')) => return Err(refuse(j)),
                    Some((_, escaped)) => out.push(escaped),
                    None => break,
                },
                '\r' => {
                    let folded = chars.next_if(|&(_, c)| c == '\n').is_some()
                        && chars.peek().is_some_and(|&(_, c)| c == ' ' || c == '\t');
                    if !folded {
                        return Err(refuse(i));
                    }
                }
                '\t' => out.push(c),
                c if c.is_ascii_control() => return Err(refuse(i)),
                c => out.push(c),
            }
        }
        Err(AuthError::UnterminatedQuotedString { at: start })
    }

    /// `auth-param`, the name already read.
    fn param_value(&mut self, name: &'a str) -> Result<RawParam<'a>, AuthError> {
        // Caller has seen '='.
        self.pos += 1;
        self.skip_lws();
        let (value, quoted) = match self.peek() {
            Some(b'"') => (self.quoted_string()?, true),
            _ => {
                let v = self.take_while(is_bare_value_char);
                if v.is_empty() {
                    return Err(AuthError::ExpectedValue { at: self.pos });
                }
                (std::borrow::Cow::Borrowed(v), false)
            }
        };
        Ok(RawParam {
            name,
            value,
            quoted,
        })
    }
}

/// Splits a header value into its challenges (or credentials).
pub(crate) fn parse_list(value: &str) -> Result<Vec<RawAuth<'_>>, AuthError> {
    let mut lx = Lexer { s: value, pos: 0 };
    let mut out: Vec<RawAuth> = Vec::with_capacity(1);
    loop {
        lx.skip_lws_and_commas();
        if lx.at_end() {
            break;
        }
        let at = lx.pos;
        let Some(name) = lx.token() else {
            return Err(AuthError::UnexpectedCharacter { at });
        };
        lx.skip_lws();
        let current = out.last_mut().filter(|c| c.token68.is_none());
        if let (Some(current), Some(b'=')) = (current, lx.peek()) {
            let param = lx.param_value(name)?;
            current.params.push(param);
        } else {
            // A new auth-scheme.
            let mut raw = RawAuth {
                scheme: name,
                token68: None,
                params: Vec::with_capacity(12),
            };
            if lx.pos > at + name.len() {
                // There was white space after the scheme: token68 or params.
                if let Some(t) = lx.try_token68() {
                    raw.token68 = Some(t);
                }
            } else if lx.peek() == Some(b'=') {
                // `name=` with no scheme before it.
                return Err(AuthError::ExpectedScheme { at });
            }
            out.push(raw);
        }
        lx.skip_lws();
        match lx.peek() {
            None | Some(b',') => {}
            // The next token is either a parameter of the challenge just
            // started or (after a comma) a new challenge; anything else
            // (a token directly after a parameter value) is garbage.
            Some(_) if out.last().is_some_and(|c| c.params.is_empty()) => {}
            Some(_) => return Err(AuthError::UnexpectedCharacter { at: lx.pos }),
        }
    }
    if out.is_empty() {
        return Err(AuthError::Empty);
    }
    Ok(out)
}

/// Appends `s` as a quoted-string. CR and LF cannot be written inside one
/// (not even escaped) and are dropped; other control characters but HTAB are
/// written as quoted-pairs, which is how `quoted_string` reads them back.
pub(crate) fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    // Most values (a realm, a nonce) need no escape: copied in one go.
    if !s
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || (b.is_ascii_control() && b != b'\t'))
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '\r' | '\n' => {}
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() && c != '\t' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `name=value`, quoting the value when asked to or when it is not
/// a valid bare token.
pub(crate) fn push_param(out: &mut String, param: &Param) {
    out.push_str(&param.name);
    out.push('=');
    if param.quoted || param.value.is_empty() || !param.value.bytes().all(is_bare_value_char) {
        push_quoted(out, &param.value);
    } else {
        out.push_str(&param.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_several_challenges() {
        let v = parse_list(
            r#"Digest realm="a", nonce="1", algorithm=SHA-256, Digest realm="a",nonce="2",Basic abc==, Negotiate"#,
        )
        .unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].scheme, "Digest");
        assert_eq!(v[0].params.len(), 3);
        assert_eq!(v[0].params[2], Param::token("algorithm", "SHA-256"));
        assert_eq!(v[1].params[1], Param::quoted("nonce", "2"));
        assert_eq!(v[2].scheme, "Basic");
        assert_eq!(v[2].token68, Some("abc=="));
        assert!(v[2].params.is_empty());
        assert_eq!(v[3].scheme, "Negotiate");
        assert!(v[3].token68.is_none() && v[3].params.is_empty());
    }

    #[test]
    fn quoted_strings_resolve_escapes() {
        let v = parse_list(r#"Digest realm="a \"b\" \\c", nonce="""#).unwrap();
        assert_eq!(v[0].params[0].value, r#"a "b" \c"#);
        assert_eq!(v[0].params[1].value, "");
    }

    #[test]
    fn white_space_around_equals_and_commas() {
        let v = parse_list("Digest \t realm = \"a\" ,\r\n nonce\t=\tb ,, opaque=\"c\"  ").unwrap();
        let names: Vec<_> = v[0].params.iter().map(|p| p.name).collect();
        assert_eq!(names, ["realm", "nonce", "opaque"]);
        assert_eq!(v[0].params[1], Param::token("nonce", "b"));
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in [
            "",
            "   ,  ",
            r#"realm="a""#,
            r#"Digest realm="a"#,
            r#"Digest realm="a" nonce="b""#,
            "Digest @",
            "=x",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn name_and_equals_alone_is_a_token68() {
        // RFC 7235: token68 may end in '='; the Digest layer refuses it.
        for v in ["Digest realm=", "Digest realm= ,"] {
            let raw = parse_list(v).unwrap();
            assert_eq!(raw[0].token68, Some("realm="), "{v:?}");
        }
    }

    #[test]
    fn unicode_in_values_is_kept() {
        let v = parse_list("Digest username=\"J\u{e4}s\u{f8}n\", realm=r\u{e9}alm").unwrap();
        assert_eq!(v[0].params[0].value, "J\u{e4}s\u{f8}n");
        assert_eq!(v[0].params[1].value, "r\u{e9}alm");
    }

    #[test]
    fn quoted_strings_take_folding_but_no_bare_line_breaks_or_controls() {
        // A folded line inside the quotes stands for its white space.
        let v = parse_list("Digest realm=\"a\r\n b\"").unwrap();
        assert_eq!(v[0].params[0].value, "a b");
        let v = parse_list("Digest realm=\"a\tb\", nonce=\"\\\u{1}\"").unwrap();
        assert_eq!(v[0].params[0].value, "a\tb");
        assert_eq!(
            v[0].params[1].value, "\u{1}",
            "a quoted-pair may carry a control"
        );
        for bad in [
            "Digest realm=\"a\rb\"",     // bare CR (found by fuzzing)
            "Digest realm=\"a\nb\"",     // bare LF
            "Digest realm=\"a\r\nb\"",   // CRLF not followed by white space
            "Digest realm=\"a\\\rb\"",   // CR in a quoted-pair
            "Digest realm=\"a\u{0}b\"",  // NUL
            "Digest realm=\"a\u{7f}b\"", // DEL
        ] {
            assert!(
                matches!(parse_list(bad), Err(AuthError::UnexpectedCharacter { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        for value in [
            "plain",
            "a\"b\\c",
            "tab\there",
            "ctl\u{1}\u{1f}\u{7f}",
            "J\u{e4}s\u{f8}n",
        ] {
            let mut s = String::from("Digest ");
            push_param(&mut s, &Param::quoted("realm", value));
            let v = parse_list(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(v[0].params[0].value, value, "through {s:?}");
        }
    }

    #[test]
    fn formatting_quotes_and_escapes() {
        let mut s = String::new();
        push_param(&mut s, &Param::quoted("realm", "a\"b\\c\r\n"));
        assert_eq!(s, r#"realm="a\"b\\c""#);
        let mut s = String::new();
        push_param(&mut s, &Param::token("x", "has space"));
        assert_eq!(s, r#"x="has space""#);
        let mut s = String::new();
        push_param(&mut s, &Param::token("nc", "00000001"));
        assert_eq!(s, "nc=00000001");
    }
}
