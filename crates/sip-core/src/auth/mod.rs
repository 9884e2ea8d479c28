//! Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616,
//! RFC 8760).
//!
//! A registrar or proxy challenges a request, the client answers with a
//! hash of its password over the server's nonce and the request, and the
//! server recomputes that hash:
//!
//! ```text
//!   UAC                                          UAS / registrar
//!    | REGISTER sip:dialbridge.test                  |
//!    |---------------------------------------------->|
//!    | 401 Unauthorized                              |  DigestServer::challenge
//!    |   WWW-Authenticate: Digest ... SHA-256 ...    |
//!    |   WWW-Authenticate: Digest ... MD5 ...        |
//!    |<----------------------------------------------|
//!    | REGISTER sip:dialbridge.test                  |  DigestClient::answer
//!    |   Authorization: Digest ... response="..."    |
//!    |---------------------------------------------->|  DigestServer::verify
//!    | 200 OK                                        |
//!    |<----------------------------------------------|
//! ```
//!
//! # Layout
//!
//! - [`algorithm`]: the hashes — [`Algorithm`] (MD5, SHA-256, SHA-512-256
//!   and their `-sess` forms) with `HA1`, `HA2` and the `request-digest`
//!   for `qop=auth`, `qop=auth-int` and the RFC 2069 form without `qop`.
//! - [`header`]: [`Challenge`] and [`Credentials`], parsed from and written
//!   to header values; other schemes parse to [`OtherScheme`].
//! - [`server`]: [`DigestServer`], stateless nonces and nonce-count replay
//!   protection, returning a [`Verdict`].
//! - [`client`]: [`DigestClient`] / [`answer_challenges`], choosing the
//!   strongest challenge offered, with [`ClientNonceState`] counting `nc`.
//!
//! # What this module does not do
//!
//! It works on header *values* — the text after `WWW-Authenticate:`,
//! `Authorization:` and their `Proxy-` forms — and knows nothing of SIP
//! messages: the caller picks the headers out of the message, folds away
//! line continuations, and decides between 401/`WWW-Authenticate` and
//! 407/`Proxy-Authenticate`. It never reads the clock (every call that
//! needs the time takes `now_unix`), never sees a password on the server
//! side (it is handed stored `HA1` values), and does not compare the
//! `uri` parameter with the Request-URI (RFC 3261 URI comparison belongs
//! to the message layer). Throttling of repeated failures is the
//! registrar's job.

pub mod algorithm;
pub mod client;
pub mod header;
mod lexer;
pub mod server;

pub use algorithm::{Algorithm, AlgorithmParam, NonceCount, Qop, QopInput};
pub use client::{
    answer_challenges, choose_challenge, credentials_for, ClientNonceState, DigestClient,
    DigestRequest,
};
pub use header::{
    parse_authorization, parse_challenges, AuthChallenge, Authorization, Challenge, Credentials,
    OtherScheme,
};
pub use lexer::Param;
pub use server::{DigestServer, DigestServerConfig, Unacceptable, Verdict};

/// Why an authentication header could not be parsed, written or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The header value holds no challenge or credentials.
    #[error("empty authentication header value")]
    Empty,
    /// A character that cannot start a token where one was expected.
    #[error("unexpected character at byte {at}")]
    UnexpectedCharacter {
        /// Byte offset in the header value.
        at: usize,
    },
    /// A parameter appeared before any auth-scheme.
    #[error("parameter before the auth-scheme at byte {at}")]
    ExpectedScheme {
        /// Byte offset in the header value.
        at: usize,
    },
    /// `name=` with nothing after it.
    #[error("missing parameter value at byte {at}")]
    ExpectedValue {
        /// Byte offset in the header value.
        at: usize,
    },
    /// A quoted-string without its closing quote.
    #[error("unterminated quoted-string starting at byte {at}")]
    UnterminatedQuotedString {
        /// Byte offset of the opening quote.
        at: usize,
    },
    /// A `Digest` challenge or credentials in the token68 form.
    #[error("Digest does not use the token68 form")]
    UnexpectedToken68,
    /// A required parameter is missing.
    #[error("missing Digest parameter {name}")]
    MissingParam {
        /// The parameter name.
        name: &'static str,
    },
    /// A parameter appeared twice.
    #[error("duplicate Digest parameter {name}")]
    DuplicateParam {
        /// The parameter name.
        name: &'static str,
    },
    /// A parameter's value does not fit its grammar (e.g. `nc` not 8 hex
    /// digits).
    #[error("invalid value for Digest parameter {name}")]
    InvalidParam {
        /// The parameter name.
        name: &'static str,
    },
    /// The value holds another scheme where `Digest` was required.
    #[error("not a Digest challenge or credentials")]
    NotDigest,
    /// The value holds several challenges or credentials where one was
    /// expected.
    #[error("several challenges or credentials in one header value")]
    SeveralInOneValue,
    /// None of the challenges offered can be answered (unknown schemes,
    /// algorithms or qop values only).
    #[error("no Digest challenge with a supported algorithm and qop")]
    NoUsableChallenge,
    /// A username or password holds CR or LF, which no quoted-string can
    /// carry.
    #[error("CR or LF in a credential")]
    InvalidCredential,
    /// The server key was refused by HMAC.
    #[error("invalid digest server key")]
    InvalidKey,
    /// A server configuration with no algorithm to offer.
    #[error("digest server configured without algorithms")]
    NoAlgorithms,
}

/// `bytes` as lowercase hexadecimal: the digits looked up and written into a buffer of their
/// size, with no per-digit iterator state (`hex::encode` goes through a `char` iterator,
/// about 1.5 % of a registration's samples across its hashes, nonces and opaque values).
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    // Only ASCII digits were written.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests;
