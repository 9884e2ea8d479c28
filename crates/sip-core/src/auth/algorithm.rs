//! The digest computations: `H`, `HA1`, `HA2` and `request-digest`
//! (RFC 2617 §3.2.2, RFC 7616 §3.4, RFC 8760 §2).
//!
//! ```text
//! A1       = unq(username) ":" unq(realm) ":" passwd
//! A1-sess  = H( unq(username) ":" unq(realm) ":" passwd ) ":" unq(nonce) ":" unq(cnonce)
//!
//! A2 (qop absent or "auth") = Method ":" request-uri
//! A2 (qop "auth-int")       = Method ":" request-uri ":" H(entity-body)
//!
//! request-digest (qop present) = KD( H(A1), unq(nonce) ":" nc ":" unq(cnonce) ":" unq(qop) ":" H(A2) )
//! request-digest (RFC 2069)    = KD( H(A1), unq(nonce) ":" H(A2) )
//!
//! KD(secret, data) = H(secret ":" data)
//! ```
//!
//! Every hash is written as lower-case hex, which is what the other side
//! hashes in turn.

use std::fmt;

use md5::Context as Md5Context;
use sha2::{Digest as _, Sha256, Sha512_256};

use super::AuthError;

/// A digest algorithm, as named in the `algorithm` parameter
/// (RFC 7616 §3.3 and the IANA "HTTP Digest Hash Algorithms" registry).
///
/// The `-sess` variants hash the same way as their base algorithm but
/// compute `HA1` once per (nonce, cnonce) pair; see [`Algorithm::ha1_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` — RFC 2617; the default when the parameter is absent.
    Md5,
    /// `MD5-sess` — RFC 2617.
    Md5Sess,
    /// `SHA-256` — RFC 7616, brought to SIP by RFC 8760.
    Sha256,
    /// `SHA-256-sess` — RFC 7616.
    Sha256Sess,
    /// `SHA-512-256` — RFC 7616, brought to SIP by RFC 8760.
    Sha512_256,
    /// `SHA-512-256-sess` — RFC 7616.
    Sha512_256Sess,
}

impl Algorithm {
    /// Every recognised algorithm, strongest first.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Sha512_256,
        Algorithm::Sha512_256Sess,
        Algorithm::Sha256,
        Algorithm::Sha256Sess,
        Algorithm::Md5,
        Algorithm::Md5Sess,
    ];

    /// The token as written in the `algorithm` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    /// Recognises an `algorithm` token, ignoring ASCII case.
    pub fn from_token(token: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(token))
    }

    /// Whether this is a `-sess` variant.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess
        )
    }

    /// The same hash function without `-sess`: the algorithm whose stored
    /// `H(username:realm:password)` this one starts from.
    pub fn base(self) -> Algorithm {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => Algorithm::Md5,
            Algorithm::Sha256 | Algorithm::Sha256Sess => Algorithm::Sha256,
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => Algorithm::Sha512_256,
        }
    }

    /// Relative strength, higher is stronger: SHA-512-256 > SHA-256 > MD5.
    /// A `-sess` variant ranks with its base algorithm.
    pub fn strength(self) -> u8 {
        match self.base() {
            Algorithm::Sha512_256 => 3,
            Algorithm::Sha256 => 2,
            _ => 1,
        }
    }

    /// Length in hex digits of every hash this algorithm produces.
    pub fn hex_len(self) -> usize {
        match self.base() {
            Algorithm::Md5 => 32,
            _ => 64,
        }
    }

    /// `H(data)`: the hash of the parts joined by `:`, as lower-case hex.
    pub fn hash(self, parts: &[&[u8]]) -> String {
        fn feed(parts: &[&[u8]], mut update: impl FnMut(&[u8])) {
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    update(b":");
                }
                update(part);
            }
        }
        match self.base() {
            Algorithm::Md5 => {
                let mut ctx = Md5Context::new();
                feed(parts, |p| ctx.consume(p));
                super::hex_lower(&ctx.compute().0)
            }
            Algorithm::Sha256 => {
                let mut ctx = Sha256::new();
                feed(parts, |p| ctx.update(p));
                super::hex_lower(&ctx.finalize())
            }
            _ => {
                let mut ctx = Sha512_256::new();
                feed(parts, |p| ctx.update(p));
                super::hex_lower(&ctx.finalize())
            }
        }
    }

    /// `H(unq(username) ":" unq(realm) ":" passwd)` — the `HA1` of the
    /// plain algorithm, and the value a registrar stores instead of the
    /// password. For a `-sess` algorithm pass the result to
    /// [`Algorithm::ha1_from`].
    pub fn ha1(self, username: &str, realm: &str, password: &str) -> String {
        self.hash(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
    }

    /// The `HA1` used in the response, from the stored
    /// `H(username:realm:password)`: for a `-sess` algorithm
    /// `H(stored ":" nonce ":" cnonce)`, otherwise `stored` unchanged.
    pub fn ha1_from(self, stored: &str, nonce: &str, cnonce: &str) -> String {
        if self.is_session() {
            self.hash(&[stored.as_bytes(), nonce.as_bytes(), cnonce.as_bytes()])
        } else {
            stored.to_owned()
        }
    }

    /// `H(A2)` for the given quality of protection.
    pub fn ha2(self, qop: QopInput<'_>, method: &str, uri: &str, body: &[u8]) -> String {
        match qop {
            QopInput::AuthInt { .. } => {
                let body_hash = self.hash(&[body]);
                self.hash(&[method.as_bytes(), uri.as_bytes(), body_hash.as_bytes()])
            }
            QopInput::None | QopInput::Auth { .. } => {
                self.hash(&[method.as_bytes(), uri.as_bytes()])
            }
        }
    }

    /// The `request-digest` (the `response` parameter), from `HA1` as
    /// returned by [`Algorithm::ha1_from`]. `body` is only hashed for
    /// `qop=auth-int`.
    pub fn response(
        self,
        ha1: &str,
        nonce: &str,
        qop: QopInput<'_>,
        method: &str,
        uri: &str,
        body: &[u8],
    ) -> String {
        let ha2 = self.ha2(qop, method, uri, body);
        match qop {
            QopInput::None => self.hash(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
            QopInput::Auth { nc, cnonce } | QopInput::AuthInt { nc, cnonce } => {
                let qop_token = if matches!(qop, QopInput::AuthInt { .. }) {
                    Qop::AuthInt
                } else {
                    Qop::Auth
                };
                self.hash(&[
                    ha1.as_bytes(),
                    nonce.as_bytes(),
                    nc.as_str().as_bytes(),
                    cnonce.as_bytes(),
                    qop_token.as_str().as_bytes(),
                    ha2.as_bytes(),
                ])
            }
        }
    }

    /// The hashed username of RFC 7616 §3.4.4:
    /// `H(unq(username) ":" unq(realm))`.
    pub fn userhash(self, username: &str, realm: &str) -> String {
        self.hash(&[username.as_bytes(), realm.as_bytes()])
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `algorithm` parameter as received: either one this module computes,
/// or a token it does not know (kept so that a challenge can still be
/// parsed and then skipped, as RFC 8760 §2.4 asks of a UAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlgorithmParam {
    /// A recognised algorithm.
    Known(Algorithm),
    /// Any other token, as written.
    Unknown(String),
}

impl AlgorithmParam {
    pub(crate) fn from_token(token: &str) -> AlgorithmParam {
        match Algorithm::from_token(token) {
            Some(a) => AlgorithmParam::Known(a),
            None => AlgorithmParam::Unknown(token.to_owned()),
        }
    }

    /// The token to write.
    pub fn as_str(&self) -> &str {
        match self {
            AlgorithmParam::Known(a) => a.as_str(),
            AlgorithmParam::Unknown(t) => t,
        }
    }
}

/// A quality-of-protection token (`qop-value`, RFC 2617 §3.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Qop {
    /// `auth`: authentication of the method and Request-URI.
    Auth,
    /// `auth-int`: also the message body.
    AuthInt,
    /// Any other token, as written.
    Other(String),
}

impl Qop {
    /// Recognises a token, ignoring ASCII case.
    pub fn from_token(token: &str) -> Qop {
        if token.eq_ignore_ascii_case("auth") {
            Qop::Auth
        } else if token.eq_ignore_ascii_case("auth-int") {
            Qop::AuthInt
        } else {
            Qop::Other(token.to_owned())
        }
    }

    /// The token as written.
    pub fn as_str(&self) -> &str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
            Qop::Other(t) => t,
        }
    }
}

impl fmt::Display for Qop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The nonce count, `nc` (RFC 2617 §3.2.2): how many requests the client
/// has sent with one nonce, written as exactly 8 hex digits.
///
/// The digits are kept as received, because they enter the hash as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceCount {
    value: u32,
    text: [u8; 8],
}

impl NonceCount {
    /// The count `value`, written as 8 lower-case hex digits.
    pub fn new(value: u32) -> NonceCount {
        let mut text = [b'0'; 8];
        let digits = format!("{value:08x}");
        text.copy_from_slice(digits.as_bytes());
        NonceCount { value, text }
    }

    /// Parses `nc-value = 8LHEX`, accepting upper-case digits too.
    pub fn parse(s: &str) -> Result<NonceCount, AuthError> {
        let bytes = s.as_bytes();
        if bytes.len() != 8 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(AuthError::InvalidParam { name: "nc" });
        }
        let value =
            u32::from_str_radix(s, 16).map_err(|_| AuthError::InvalidParam { name: "nc" })?;
        let mut text = [0u8; 8];
        text.copy_from_slice(bytes);
        Ok(NonceCount { value, text })
    }

    /// The count.
    pub fn value(self) -> u32 {
        self.value
    }

    /// The 8 hex digits, as received or written.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.text).unwrap_or("00000000")
    }
}

impl fmt::Display for NonceCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The quality of protection and the values that go with it in the
/// `request-digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QopInput<'a> {
    /// No `qop`: the RFC 2069 form, `KD(HA1, nonce ":" HA2)`.
    None,
    /// `qop=auth`.
    Auth {
        /// Nonce count.
        nc: NonceCount,
        /// Client nonce.
        cnonce: &'a str,
    },
    /// `qop=auth-int`: the body is hashed into `A2`.
    AuthInt {
        /// Nonce count.
        nc: NonceCount,
        /// Client nonce.
        cnonce: &'a str,
    },
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC7616_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616_response(alg: Algorithm) -> String {
        let ha1 = alg.ha1("Mufasa", "http-auth@example.org", "Circle of Life");
        alg.response(
            &ha1,
            RFC7616_NONCE,
            QopInput::Auth {
                nc: NonceCount::new(1),
                cnonce: RFC7616_CNONCE,
            },
            "GET",
            "/dir/index.html",
            b"",
        )
    }

    #[test]
    fn rfc2617_section_3_5_example() {
        let alg = Algorithm::Md5;
        let ha1 = alg.ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        let response = alg.response(
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            QopInput::Auth {
                nc: NonceCount::parse("00000001").unwrap(),
                cnonce: "0a4f113b",
            },
            "GET",
            "/dir/index.html",
            b"",
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_section_3_9_1_md5() {
        assert_eq!(
            rfc7616_response(Algorithm::Md5),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn rfc7616_section_3_9_1_sha256() {
        assert_eq!(
            rfc7616_response(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn hash_functions_match_known_vectors() {
        assert_eq!(
            Algorithm::Md5.hash(&[b"abc"]),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            Algorithm::Sha256.hash(&[b"abc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // FIPS 180-4 example for SHA-512/256.
        assert_eq!(
            Algorithm::Sha512_256.hash(&[b"abc"]),
            "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
        );
        // Parts are joined with ':'.
        assert_eq!(
            Algorithm::Md5.hash(&[b"a", b"b"]),
            Algorithm::Md5.hash(&[b"a:b"])
        );
    }

    #[test]
    fn rfc2069_form_omits_nc_cnonce_and_qop() {
        let alg = Algorithm::Md5;
        let ha1 = alg.ha1("Mufasa", "testrealm@host.com", "CircleOfLife");
        let ha2 = alg.hash(&[b"GET", b"/dir/index.html"]);
        let expected = alg.hash(&[
            ha1.as_bytes(),
            b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            ha2.as_bytes(),
        ]);
        let got = alg.response(
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            QopInput::None,
            "GET",
            "/dir/index.html",
            b"ignored",
        );
        assert_eq!(got, expected);
        // The RFC 2069 example response for this request.
        assert_eq!(got, "1949323746fe6a43ef61f9606e7febea");
    }

    #[test]
    fn auth_int_hashes_the_body() {
        let alg = Algorithm::Sha256;
        let ha1 = alg.ha1("u", "r", "p");
        let qop = QopInput::AuthInt {
            nc: NonceCount::new(1),
            cnonce: "c",
        };
        let a = alg.response(&ha1, "n", qop, "INVITE", "sip:x@y", b"v=0\r\n");
        let b = alg.response(&ha1, "n", qop, "INVITE", "sip:x@y", b"v=1\r\n");
        assert_ne!(a, b);
        let body_hash = alg.hash(&[b"v=0\r\n"]);
        let ha2 = alg.hash(&[b"INVITE", b"sip:x@y", body_hash.as_bytes()]);
        let expected = alg.hash(&[
            ha1.as_bytes(),
            b"n",
            b"00000001",
            b"c",
            b"auth-int",
            ha2.as_bytes(),
        ]);
        assert_eq!(a, expected);
    }

    #[test]
    fn sess_ha1_rehashes_with_nonce_and_cnonce() {
        let stored = Algorithm::Md5.ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert_eq!(Algorithm::Md5.ha1_from(&stored, "n", "c"), stored);
        let sess = Algorithm::Md5Sess.ha1_from(&stored, "n", "c");
        assert_eq!(sess, Algorithm::Md5.hash(&[stored.as_bytes(), b"n", b"c"]));
        assert_ne!(sess, stored);
    }

    #[test]
    fn algorithm_tokens_round_trip_ignoring_case() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_token(alg.as_str()), Some(alg));
            assert_eq!(
                Algorithm::from_token(&alg.as_str().to_ascii_lowercase()),
                Some(alg)
            );
            assert_eq!(alg.hash(&[b"x"]).len(), alg.hex_len());
        }
        assert_eq!(Algorithm::from_token("SHA-1"), None);
        assert!(Algorithm::Sha512_256.strength() > Algorithm::Sha256.strength());
        assert!(Algorithm::Sha256Sess.strength() > Algorithm::Md5.strength());
    }

    #[test]
    fn nonce_count_keeps_its_digits() {
        let nc = NonceCount::parse("0000000A").unwrap();
        assert_eq!(nc.value(), 10);
        assert_eq!(nc.as_str(), "0000000A");
        assert_eq!(NonceCount::new(10).as_str(), "0000000a");
        assert_eq!(NonceCount::new(u32::MAX).as_str(), "ffffffff");
        for bad in [
            "",
            "1",
            "0000001",
            "000000001",
            "0000000g",
            "+0000001",
            "ｆ0000001",
        ] {
            assert!(NonceCount::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
