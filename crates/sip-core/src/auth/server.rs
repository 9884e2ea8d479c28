//! The server side: challenges with stateless nonces, and verification of
//! the credentials that answer them (RFC 3261 §22.4, RFC 7616 §3.3 and
//! §5.4–5.5, RFC 8760 §2.3–2.4).
//!
//! # Nonces
//!
//! A nonce carries its own proof of origin, so the server keeps nothing per
//! challenge:
//!
//! ```text
//! nonce  = HEX( issued ‖ serial ‖ TRUNC16( HMAC-SHA256(key, "nonce" ‖ issued ‖ serial ‖ realm) ) )
//!            issued: issue time, unix seconds, 8 octets big-endian
//!            serial: 8 octets big-endian, counting up from a random start,
//!                    so that two challenges never share a nonce
//! opaque = HEX( TRUNC12( HMAC-SHA256(key, "opaque" ‖ nonce) ) )
//! ```
//!
//! A nonce whose MAC does not check out (tampered, another realm, another
//! server key) is [`Verdict::BadNonce`]. One older than the configured
//! lifetime is [`Verdict::Stale`] — but only once the response is known to
//! be right, so that the client may retry with `stale=TRUE` without asking
//! its user for the password again (RFC 7616 §3.3).
//!
//! # Nonce counts
//!
//! With `qop`, each request carries `nc`, which the client increments for
//! every request under one nonce. The server remembers the highest `nc`
//! accepted per nonce and refuses any request that does not go above it
//! ([`Verdict::Replay`]). The table is bounded: expired nonces are dropped
//! first, then the oldest live ones, in (issued, serial) order; a live
//! nonce at or below the newest one dropped can no longer be checked for
//! replay and is answered [`Verdict::Stale`], which makes the client fetch
//! a fresh nonce.
//!
//! Without `qop` (the RFC 2069 form) there is no count to check; such
//! credentials are refused unless [`DigestServerConfig::allow_rfc2069`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use super::algorithm::{constant_time_eq, Algorithm, AlgorithmParam, Qop, QopInput};
use super::header::{Challenge, Credentials};
use super::lexer::push_quoted;
use super::AuthError;

type HmacSha256 = Hmac<Sha256>;

const ISSUED_LEN: usize = 8;
const SERIAL_LEN: usize = 8;
const NONCE_MAC_LEN: usize = 16;
const NONCE_LEN: usize = ISSUED_LEN + SERIAL_LEN + NONCE_MAC_LEN;
const OPAQUE_MAC_LEN: usize = 12;

/// Settings of a [`DigestServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestServerConfig {
    /// How long a nonce stays valid, in seconds (default 300).
    pub nonce_lifetime_secs: u64,
    /// The algorithms offered, most preferred first: one challenge each
    /// (default SHA-256 then MD5, RFC 8760 §2.4).
    pub algorithms: Vec<Algorithm>,
    /// Accept credentials without `qop` (RFC 2069), which cannot be
    /// protected against replay within the nonce lifetime (default false).
    pub allow_rfc2069: bool,
    /// Upper bound of the nonce-count table (default 4096).
    pub max_tracked_nonces: usize,
}

impl Default for DigestServerConfig {
    fn default() -> DigestServerConfig {
        DigestServerConfig {
            nonce_lifetime_secs: 300,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            allow_rfc2069: false,
            max_tracked_nonces: 4096,
        }
    }
}

/// The outcome of [`DigestServer::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are right: accept the request.
    Ok,
    /// The response is right but the nonce has expired (or can no longer
    /// be checked for replay): challenge again with `stale=TRUE`.
    Stale,
    /// The response does not match: wrong password (or a forged request).
    BadResponse,
    /// The nonce was not issued by this server for this realm.
    BadNonce,
    /// The nonce count is not above the highest already accepted for this
    /// nonce: a replayed request.
    Replay,
    /// The user has no stored `HA1` for the algorithm.
    UnknownUser,
    /// The credentials do not answer a challenge of this server.
    Unacceptable(Unacceptable),
}

/// Why credentials do not fit what the server offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unacceptable {
    /// `realm` is not the realm being authenticated.
    RealmMismatch,
    /// `algorithm` is unknown or not offered.
    AlgorithmNotOffered,
    /// `qop` is other than `auth`.
    QopNotOffered,
    /// No `qop` (RFC 2069 form) and the server requires one.
    QopRequired,
    /// `qop` without `nc` or `cnonce`, or a `-sess` algorithm without
    /// `cnonce`.
    MissingNonceCountOrCnonce,
    /// `opaque` missing or not the one sent with the nonce.
    OpaqueMismatch,
}

/// Where a nonce sits in issue order: (issue time, serial).
type NonceId = (u64, u64);

/// Issues `Digest` challenges and verifies the credentials that answer
/// them. A sans-IO object: the caller passes the time and the stored
/// `HA1` values, and keeps one server per process (or per realm).
#[derive(Debug)]
pub struct DigestServer {
    mac: HmacSha256,
    config: DigestServerConfig,
    next_serial: AtomicU64,
    /// The highest nonce count accepted per nonce.
    counts: BTreeMap<NonceId, u32>,
    /// Nonces at or below this one may have lost their entry in `counts`
    /// to eviction.
    evicted_through: Option<NonceId>,
}

impl DigestServer {
    /// A server whose nonces are authenticated with `key`. Servers sharing
    /// a key accept each other's nonces (but not each other's counts).
    pub fn new(key: [u8; 32], config: DigestServerConfig) -> Result<DigestServer, AuthError> {
        if config.algorithms.is_empty() {
            return Err(AuthError::NoAlgorithms);
        }
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| AuthError::InvalidKey)?;
        // A random start keeps nonces of a restarted server (same key,
        // same second) distinct from the ones it issued before.
        let start: u64 = rand::thread_rng().gen::<u64>() >> 1;
        Ok(DigestServer {
            mac,
            config,
            next_serial: AtomicU64::new(start),
            counts: BTreeMap::new(),
            evicted_through: None,
        })
    }

    /// A server with a random key: its nonces die with it.
    pub fn with_random_key(config: DigestServerConfig) -> Result<DigestServer, AuthError> {
        let key: [u8; 32] = rand::thread_rng().gen();
        DigestServer::new(key, config)
    }

    /// The settings.
    pub fn config(&self) -> &DigestServerConfig {
        &self.config
    }

    /// How many nonces currently have a remembered count.
    pub fn tracked_nonces(&self) -> usize {
        self.counts.len()
    }

    fn nonce_mac(&self, issued: &[u8], serial: &[u8], realm: &str) -> [u8; NONCE_MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(b"nonce");
        mac.update(issued);
        mac.update(serial);
        mac.update(realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }

    fn opaque_for(&self, nonce: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"opaque");
        mac.update(nonce.as_bytes());
        super::hex_lower(&mac.finalize().into_bytes()[..OPAQUE_MAC_LEN])
    }

    /// A fresh nonce for `realm`, issued at `now_unix`.
    pub fn new_nonce(&self, realm: &str, now_unix: u64) -> String {
        let issued = now_unix.to_be_bytes();
        let serial = self
            .next_serial
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes();
        let mac = self.nonce_mac(&issued, &serial, realm);
        let mut raw = [0u8; NONCE_LEN];
        raw[..ISSUED_LEN].copy_from_slice(&issued);
        raw[ISSUED_LEN..ISSUED_LEN + SERIAL_LEN].copy_from_slice(&serial);
        raw[ISSUED_LEN + SERIAL_LEN..].copy_from_slice(&mac);
        super::hex_lower(&raw)
    }

    /// The (issue time, serial) of `nonce` if this server issued it for
    /// `realm`.
    fn check_nonce(&self, nonce: &str, realm: &str) -> Option<NonceId> {
        if nonce.len() != NONCE_LEN * 2 {
            return None;
        }
        let mut raw = [0u8; NONCE_LEN];
        hex::decode_to_slice(nonce, &mut raw).ok()?;
        let (issued, rest) = raw.split_at_checked(ISSUED_LEN)?;
        let (serial, mac) = rest.split_at_checked(SERIAL_LEN)?;
        let expected = self.nonce_mac(issued, serial, realm);
        if !constant_time_eq(mac, &expected) {
            return None;
        }
        let issued: [u8; ISSUED_LEN] = issued.try_into().ok()?;
        let serial: [u8; SERIAL_LEN] = serial.try_into().ok()?;
        Some((u64::from_be_bytes(issued), u64::from_be_bytes(serial)))
    }

    /// The challenges for a 401/407: one per configured algorithm, most
    /// preferred first, sharing one nonce and opaque, all `qop="auth"`
    /// (unless RFC 2069 is allowed, when they still offer `auth`).
    pub fn challenges(&self, realm: &str, stale: bool, now_unix: u64) -> Vec<Challenge> {
        let nonce = self.new_nonce(realm, now_unix);
        let opaque = self.opaque_for(&nonce);
        self.config
            .algorithms
            .iter()
            .map(|&alg| {
                let mut c = Challenge::new(realm, nonce.clone());
                c.opaque = Some(opaque.clone());
                c.stale = stale;
                c.algorithm = Some(AlgorithmParam::Known(alg));
                c.qop = vec![Qop::Auth];
                c
            })
            .collect()
    }

    /// The header values of the challenges [`DigestServer::challenges`] would give (one nonce
    /// for all, `qop="auth"`), written straight out, for each algorithm offered that `offer`
    /// keeps: the same text as those [`Challenge`]s' `Display`.
    pub fn challenge_values(
        &self,
        realm: &str,
        stale: bool,
        now_unix: u64,
        offer: impl Fn(Algorithm) -> bool,
    ) -> Vec<String> {
        let nonce = self.new_nonce(realm, now_unix);
        let opaque = self.opaque_for(&nonce);
        let mut out = Vec::with_capacity(self.config.algorithms.len());
        for &alg in self.config.algorithms.iter().filter(|&&a| offer(a)) {
            let mut s = String::with_capacity(96 + realm.len() + nonce.len() + opaque.len());
            s.push_str("Digest realm=");
            push_quoted(&mut s, realm);
            s.push_str(", nonce=");
            push_quoted(&mut s, &nonce);
            s.push_str(", opaque=");
            push_quoted(&mut s, &opaque);
            if stale {
                s.push_str(", stale=TRUE");
            }
            // The algorithm names are tokens: written bare.
            s.push_str(", algorithm=");
            s.push_str(alg.as_str());
            s.push_str(", qop=\"auth\"");
            out.push(s);
        }
        out
    }

    /// [`DigestServer::challenges`] as header values, one per
    /// `WWW-Authenticate` (or `Proxy-Authenticate`) header, in order.
    pub fn challenge(&self, realm: &str, stale: bool, now_unix: u64) -> Vec<String> {
        self.challenges(realm, stale, now_unix)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Verifies `credentials` sent with a request of `method` to be
    /// authenticated in `realm`.
    ///
    /// `stored_ha1_for` is asked, at most once, for the user's stored
    /// `H(username ":" realm ":" password)` in hex under the given base
    /// algorithm ([`Algorithm::Md5`], [`Algorithm::Sha256`] or
    /// [`Algorithm::Sha512_256`]; a `-sess` algorithm asks for its base);
    /// `None` means no such user. The username to look up is
    /// `credentials.username` (a hash of it when `credentials.userhash`).
    ///
    /// Only an [`Verdict::Ok`] with `qop` records the nonce count.
    pub fn verify(
        &mut self,
        credentials: &Credentials,
        method: &str,
        realm: &str,
        stored_ha1_for: impl FnOnce(Algorithm) -> Option<String>,
        now_unix: u64,
    ) -> Verdict {
        use Unacceptable as U;
        if credentials.realm != realm {
            return Verdict::Unacceptable(U::RealmMismatch);
        }
        let algorithm = match &credentials.algorithm {
            None => Algorithm::Md5,
            Some(AlgorithmParam::Known(a)) => *a,
            Some(AlgorithmParam::Unknown(_)) => {
                return Verdict::Unacceptable(U::AlgorithmNotOffered)
            }
        };
        if !self.config.algorithms.contains(&algorithm) {
            return Verdict::Unacceptable(U::AlgorithmNotOffered);
        }
        let qop = match (&credentials.qop, credentials.nc, &credentials.cnonce) {
            (None, _, _) if !self.config.allow_rfc2069 => {
                return Verdict::Unacceptable(U::QopRequired)
            }
            (None, _, _) => QopInput::None,
            (Some(Qop::Auth), Some(nc), Some(cnonce)) => QopInput::Auth { nc, cnonce },
            (Some(Qop::Auth), _, _) => return Verdict::Unacceptable(U::MissingNonceCountOrCnonce),
            (Some(_), _, _) => return Verdict::Unacceptable(U::QopNotOffered),
        };
        if algorithm.is_session() && credentials.cnonce.is_none() {
            return Verdict::Unacceptable(U::MissingNonceCountOrCnonce);
        }

        let Some(id) = self.check_nonce(&credentials.nonce, realm) else {
            return Verdict::BadNonce;
        };
        let opaque_ok = credentials.opaque.as_deref().is_some_and(|o| {
            constant_time_eq(o.as_bytes(), self.opaque_for(&credentials.nonce).as_bytes())
        });
        if !opaque_ok {
            return Verdict::Unacceptable(U::OpaqueMismatch);
        }

        let Some(stored) = stored_ha1_for(algorithm.base()) else {
            return Verdict::UnknownUser;
        };
        let ha1 = algorithm.ha1_from(
            &stored.to_ascii_lowercase(),
            &credentials.nonce,
            credentials.cnonce.as_deref().unwrap_or(""),
        );
        let expected =
            algorithm.response(&ha1, &credentials.nonce, qop, method, &credentials.uri, b"");
        let received = credentials.response.to_ascii_lowercase();
        if !constant_time_eq(received.as_bytes(), expected.as_bytes()) {
            return Verdict::BadResponse;
        }

        let (issued, _) = id;
        if now_unix.saturating_sub(issued) > self.config.nonce_lifetime_secs {
            return Verdict::Stale;
        }
        match qop {
            QopInput::Auth { nc, .. } | QopInput::AuthInt { nc, .. } => {
                self.record_count(id, nc.value(), now_unix)
            }
            QopInput::None => Verdict::Ok,
        }
    }

    fn record_count(&mut self, id: NonceId, nc: u32, now_unix: u64) -> Verdict {
        if let Some(highest) = self.counts.get_mut(&id) {
            if nc <= *highest {
                return Verdict::Replay;
            }
            *highest = nc;
            return Verdict::Ok;
        }
        if self.counts.len() >= self.config.max_tracked_nonces {
            self.make_room(now_unix);
        }
        if self.evicted_through.is_some_and(|floor| id <= floor) {
            return Verdict::Stale;
        }
        self.counts.insert(id, nc);
        Verdict::Ok
    }

    /// Drops the counts of expired nonces. Called by `verify` when the
    /// table is full; callers may also call it from a periodic tick.
    pub fn purge_expired(&mut self, now_unix: u64) {
        let oldest_live = now_unix.saturating_sub(self.config.nonce_lifetime_secs);
        self.counts = self.counts.split_off(&(oldest_live, 0));
    }

    /// Drops expired counts, then, if the table is still full, the oldest
    /// quarter of the live ones.
    fn make_room(&mut self, now_unix: u64) {
        self.purge_expired(now_unix);
        let len = self.counts.len();
        if len < self.config.max_tracked_nonces {
            return;
        }
        for _ in 0..(len / 4).max(1) {
            if let Some((id, _)) = self.counts.pop_first() {
                self.evicted_through = Some(self.evicted_through.map_or(id, |t| t.max(id)));
            }
        }
    }
}
