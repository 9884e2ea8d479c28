//! Secrets that must never reach a log line or a `Debug` dump.
//!
//! [`Secret`] wraps a string (a device password, an API secret, a webhook secret, a digest HA1)
//! and prints as `Secret(***)`. The only way to read it is [`Secret::expose`], which makes every
//! place that handles the clear value easy to find with grep.
//!
//! The hashing helpers live here too: the digest HA1 values of RFC 2617 §3.2.2.2 / RFC 7616 §3.4.2
//! and the keyed hash under which API secrets are stored.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A string whose value is redacted from `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The clear value. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// `HA1 = MD5(username ":" realm ":" password)` in lowercase hex (RFC 2617 §3.2.2.2).
pub fn ha1_md5(username: &str, realm: &str, password: &Secret) -> Secret {
    let digest = md5::compute(format!("{username}:{realm}:{}", password.expose()));
    Secret(hex::encode(digest.0))
}

/// `HA1 = SHA-256(username ":" realm ":" password)` in lowercase hex (RFC 7616 §3.4.2).
pub fn ha1_sha256(username: &str, realm: &str, password: &Secret) -> Secret {
    let mut hasher = Sha256::new();
    hasher.update(username.as_bytes());
    hasher.update(b":");
    hasher.update(realm.as_bytes());
    hasher.update(b":");
    hasher.update(password.expose().as_bytes());
    Secret(hex::encode(hasher.finalize()))
}

/// `HMAC-SHA256(pepper, secret)` in lowercase hex: the form in which API secrets are stored.
pub fn api_secret_hash(pepper: &[u8], secret: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; fall back to an
    // unkeyed hash rather than panic should that ever change.
    match Hmac::<Sha256>::new_from_slice(pepper) {
        Ok(mut mac) => {
            mac.update(secret.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => hex::encode(Sha256::digest(secret.as_bytes())),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn ha1_md5_matches_rfc2617_example() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / "Circle Of Life".
        let ha1 = ha1_md5("Mufasa", "testrealm@host.com", &"Circle Of Life".into());
        assert_eq!(ha1.expose(), "939e7578ed9e3c518a452acee763bce9");
    }

    #[test]
    fn ha1_sha256_matches_rfc7616_example() {
        // RFC 7616 §3.9.1: Mufasa / http-auth@example.org / "Circle of Life".
        let ha1 = ha1_sha256("Mufasa", "http-auth@example.org", &"Circle of Life".into());
        assert_eq!(
            ha1.expose(),
            "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
        );
    }

    #[test]
    fn api_secret_hash_depends_on_pepper() {
        let a = api_secret_hash(b"pepper-a", "sk_test_1");
        let b = api_secret_hash(b"pepper-b", "sk_test_1");
        assert_ne!(a, b);
        assert_eq!(a, api_secret_hash(b"pepper-a", "sk_test_1"));
        assert_eq!(a.len(), 64);
        assert!(!a.contains("sk_test_1"));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
