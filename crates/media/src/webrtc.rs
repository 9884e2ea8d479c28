//! WebRTC media on one leg (a browser agent): ICE-lite (RFC 8445 §2.5), DTLS-SRTP with the
//! relay as the DTLS server (RFC 5763, RFC 5764), rtcp-mux, and the demultiplexing of STUN,
//! DTLS and SRTP arriving on the leg's one port (RFC 7983).
//!
//! - **ICE-lite.** The relay has one host candidate (the leg's RTP port) and never sends a
//!   check of its own: it answers the browser's STUN binding requests whose `USERNAME` starts
//!   with our ufrag and whose `MESSAGE-INTEGRITY` verifies with our ice-pwd, with a success
//!   response carrying `XOR-MAPPED-ADDRESS`, `MESSAGE-INTEGRITY` and `FINGERPRINT`. Each
//!   source of a valid check is a validated address (a few are kept); DTLS and SRTP are taken
//!   from validated addresses only: on this leg ICE, not latching, authenticates the peer.
//!   Media goes to the selected address: the first validated one, then the source of the
//!   latest check with `USE-CANDIDATE` (the controlling browser's nomination, renominations
//!   included), and the source of authenticated SRTP when the browser moved its media to
//!   another validated pair. A relay address on loopback answers only loopback sources (a
//!   browser's other interfaces cannot reach it in earnest).
//! - **DTLS.** OpenSSL (the `openssl` crate) in DTLS 1.2 server mode over datagrams held in
//!   memory: the forwarding thread feeds it what arrives and sends what it writes, so the
//!   handshake needs no socket or thread of its own. The client must present a certificate;
//!   its digest must equal the `a=fingerprint` of the peer's SDP, else the leg is refused
//!   (a warning in the log, a fatal alert to the peer, no media relayed either way).
//! - **SRTP.** The `use_srtp` extension offers `SRTP_AES128_CM_SHA1_80`; the keys come from
//!   the DTLS exporter (RFC 5764 §4.2) and key a [`crate::srtp::SrtpLeg`] (the relay being
//!   the server, it encrypts with the server's key and decrypts with the client's).
//!
//! The relay's DTLS identity (an ECDSA P-256 key and a self-signed certificate) is made once
//! per [`crate::Relay`]; [`DtlsIdentity::fingerprint`] is what the B2BUA writes in
//! `a=fingerprint`. Only this module names `openssl`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, HandshakeError, MidHandshakeSslStream, Ssl, SslContext, SslMethod, SslOptions,
    SslStream, SslVerifyMode,
};
use openssl::x509::{X509NameBuilder, X509};
use tracing::{debug, warn};

use crate::srtp::{SrtpKey, SrtpKeys};

/// The SRTP profile negotiated in DTLS (RFC 5764 §4.1.2).
const SRTP_PROFILE: &str = "SRTP_AES128_CM_SHA1_80";
/// The exporter label of RFC 5764 §4.2.
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// Validated candidate addresses remembered per leg.
const MAX_VALIDATED: usize = 8;
/// Largest DTLS record datagram we write (below any path MTU of interest).
const DTLS_MTU: u32 = 1200;

/// Why WebRTC media could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    #[error("dtls: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
}

/// What one datagram on a WebRTC leg is, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demux {
    /// 0..=3: STUN.
    Stun,
    /// 20..=63: DTLS.
    Dtls,
    /// 128..=191: RTP or RTCP (SRTP / SRTCP here).
    Rtp,
    /// Anything else (ZRTP, TURN channels, garbage): dropped.
    Other,
}

/// RFC 7983's demultiplexing of the first byte.
pub fn demux(data: &[u8]) -> Demux {
    match data.first() {
        Some(0..=3) => Demux::Stun,
        Some(20..=63) => Demux::Dtls,
        Some(128..=191) => Demux::Rtp,
        _ => Demux::Other,
    }
}

/// A certificate fingerprint as SDP's `a=fingerprint` gives it (RFC 8122 §5).
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// `sha-256` (also `sha-1`, `sha-384`, `sha-512`), lower case.
    pub algorithm: String,
    pub digest: Vec<u8>,
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.algorithm)?;
        for (i, b) in self.digest.iter().enumerate() {
            write!(f, "{}{b:02X}", if i == 0 { ' ' } else { ':' })?;
        }
        Ok(())
    }
}

impl Fingerprint {
    /// Parses the value of `a=fingerprint:` (`sha-256 AB:CD:…`); `None` for an unknown hash
    /// or a malformed digest.
    pub fn parse(value: &str) -> Option<Fingerprint> {
        let mut parts = value.split_whitespace();
        let algorithm = parts.next()?.to_ascii_lowercase();
        let hex = parts.next()?;
        let md = digest_of(&algorithm)?;
        let digest = hex
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).ok().filter(|_| h.len() == 2))
            .collect::<Option<Vec<u8>>>()?;
        (digest.len() == md.size()).then_some(Fingerprint { algorithm, digest })
    }

    /// The fingerprint of `cert` under `algorithm` (`None`: unknown hash).
    fn of(cert: &openssl::x509::X509Ref, algorithm: &str) -> Option<Fingerprint> {
        let md = digest_of(algorithm)?;
        let digest = cert.digest(md).ok()?.to_vec();
        Some(Fingerprint {
            algorithm: algorithm.to_string(),
            digest,
        })
    }
}

fn digest_of(algorithm: &str) -> Option<MessageDigest> {
    match algorithm {
        "sha-1" => Some(MessageDigest::sha1()),
        "sha-256" => Some(MessageDigest::sha256()),
        "sha-384" => Some(MessageDigest::sha384()),
        "sha-512" => Some(MessageDigest::sha512()),
        _ => None,
    }
}

/// The relay's DTLS identity: key, self-signed certificate, and the DTLS context every
/// WebRTC leg's handshake is made from.
#[derive(Clone)]
pub struct DtlsIdentity {
    ctx: SslContext,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl DtlsIdentity {
    /// A fresh ECDSA P-256 key and a self-signed certificate for it (WebRTC authenticates the
    /// certificate by its fingerprint in the signalling, not by a chain).
    pub fn generate() -> Result<DtlsIdentity, WebRtcError> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, "dialbridge")?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(63, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
        let mut b = X509::builder()?;
        b.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
        b.set_not_after(&*Asn1Time::days_from_now(365)?)?;
        b.sign(&key, MessageDigest::sha256())?;
        let cert = b.build();
        Self::from_parts(&cert, &key)
    }

    /// The identity of an existing certificate and key (tests: a client of their own).
    pub fn from_parts(
        cert: &X509,
        key: &PKey<openssl::pkey::Private>,
    ) -> Result<DtlsIdentity, WebRtcError> {
        let mut ctx = SslContext::builder(SslMethod::dtls())?;
        ctx.set_certificate(cert)?;
        ctx.set_private_key(key)?;
        ctx.check_private_key()?;
        ctx.set_tlsext_use_srtp(SRTP_PROFILE)?;
        ctx.set_options(SslOptions::NO_QUERY_MTU);
        // Any certificate: it is checked against the SDP's fingerprint afterwards.
        ctx.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            |_, _| true,
        );
        let fingerprint =
            Fingerprint::of(cert, "sha-256").ok_or_else(openssl::error::ErrorStack::get)?;
        Ok(DtlsIdentity {
            ctx: ctx.build(),
            fingerprint,
        })
    }

    /// The certificate's SHA-256 fingerprint, for `a=fingerprint`.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// A new DTLS session on this identity, as a client (`true`) or a server.
    fn session(&self, client: bool) -> Result<Ssl, WebRtcError> {
        let mut ssl = Ssl::new(&self.ctx)?;
        ssl.set_mtu(DTLS_MTU)?;
        if client {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        Ok(ssl)
    }
}

/// Our ICE credentials on a leg (RFC 8445 §5.3: ufrag of at least 4 characters, pwd of at
/// least 22, from the ice-char set).
#[derive(Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

impl std::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"***")
            .finish()
    }
}

impl IceCredentials {
    /// Fresh random credentials (8-character ufrag, 24-character pwd): 32 bytes from the
    /// operating system in one read, each mapped onto the 64 ICE characters (uniform, as 64
    /// divides 256).
    pub fn random() -> IceCredentials {
        use rand::RngCore;
        const CHARS: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let text = |bytes: &[u8]| -> String {
            bytes
                .iter()
                .map(|b| CHARS[usize::from(b & 63)] as char)
                .collect()
        };
        IceCredentials {
            ufrag: text(&raw[..8]),
            pwd: text(&raw[8..]),
        }
    }
}

/// STUN (RFC 5389) as ICE-lite needs it: binding requests in, success responses out.
pub mod stun {
    use super::*;

    pub const MAGIC_COOKIE: u32 = 0x2112_A442;
    const BINDING_REQUEST: u16 = 0x0001;
    const BINDING_SUCCESS: u16 = 0x0101;
    const ATTR_USERNAME: u16 = 0x0006;
    const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
    const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
    const ATTR_USE_CANDIDATE: u16 = 0x0025;
    const ATTR_FINGERPRINT: u16 = 0x8028;
    const FINGERPRINT_XOR: u32 = 0x5354_554e;

    /// A binding request that ICE-lite answers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Check {
        /// The success response to send back to the request's source.
        pub response: Vec<u8>,
        /// The controlling agent nominated this pair.
        pub use_candidate: bool,
    }

    /// Why a STUN message was not answered.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum Refused {
        #[error("not a STUN binding request")]
        NotARequest,
        #[error("malformed STUN message")]
        Malformed,
        #[error("USERNAME missing or not for our ufrag")]
        WrongUsername,
        #[error("MESSAGE-INTEGRITY missing or wrong (not our ice-pwd)")]
        WrongIntegrity,
        #[error("FINGERPRINT wrong")]
        WrongFingerprint,
    }

    /// Answers a binding request from `src` for the ICE credentials `local` (RFC 8445 §7.3).
    pub fn answer(req: &[u8], src: SocketAddr, local: &IceCredentials) -> Result<Check, Refused> {
        if req.len() < 20 || !crate::rtp::is_stun(req) {
            return Err(Refused::NotARequest);
        }
        let msg_type = u16::from_be_bytes([req[0], req[1]]);
        if msg_type != BINDING_REQUEST {
            return Err(Refused::NotARequest);
        }
        let len = usize::from(u16::from_be_bytes([req[2], req[3]]));
        if len % 4 != 0 || 20 + len != req.len() {
            return Err(Refused::Malformed);
        }
        let mut username = None;
        let mut integrity_at = None;
        let mut fingerprint_at = None;
        let mut use_candidate = false;
        let mut at = 20;
        while at + 4 <= req.len() {
            let t = u16::from_be_bytes([req[at], req[at + 1]]);
            let l = usize::from(u16::from_be_bytes([req[at + 2], req[at + 3]]));
            let v = req.get(at + 4..at + 4 + l).ok_or(Refused::Malformed)?;
            if fingerprint_at.is_some() {
                // Nothing may follow FINGERPRINT.
                return Err(Refused::Malformed);
            }
            match t {
                ATTR_USERNAME if integrity_at.is_none() => username = Some(v),
                ATTR_USE_CANDIDATE if integrity_at.is_none() => use_candidate = true,
                ATTR_MESSAGE_INTEGRITY if integrity_at.is_none() => {
                    if l != 20 {
                        return Err(Refused::Malformed);
                    }
                    integrity_at = Some(at);
                }
                ATTR_FINGERPRINT => {
                    if l != 4 {
                        return Err(Refused::Malformed);
                    }
                    fingerprint_at = Some(at);
                }
                _ => {}
            }
            at += 4 + l.div_ceil(4) * 4;
        }
        if let Some(f) = fingerprint_at {
            let want = u32::from_be_bytes([req[f + 4], req[f + 5], req[f + 6], req[f + 7]]);
            if crc32(&req[..f]) ^ FINGERPRINT_XOR != want {
                return Err(Refused::WrongFingerprint);
            }
        }
        // USERNAME is "our-ufrag:their-ufrag" (RFC 8445 §7.2.2).
        let ours = username
            .and_then(|u| u.split(|&b| b == b':').next())
            .ok_or(Refused::WrongUsername)?;
        if ours != local.ufrag.as_bytes() {
            return Err(Refused::WrongUsername);
        }
        let mi = integrity_at.ok_or(Refused::WrongIntegrity)?;
        // The HMAC covers the message up to MESSAGE-INTEGRITY, with the length field as if
        // it were the last attribute (RFC 5389 §15.4).
        let mut head = req[..mi].to_vec();
        let covered = (mi + 24 - 20) as u16;
        head[2..4].copy_from_slice(&covered.to_be_bytes());
        let mut mac = hmac_sha1(local.pwd.as_bytes());
        mac.update(&head);
        mac.verify_slice(&req[mi + 4..mi + 24])
            .map_err(|_| Refused::WrongIntegrity)?;
        let tid: [u8; 12] = req[8..20].try_into().map_err(|_| Refused::Malformed)?;
        Ok(Check {
            response: success(&tid, src, local.pwd.as_bytes()),
            use_candidate,
        })
    }

    fn hmac_sha1(key: &[u8]) -> Hmac<sha1::Sha1> {
        // HMAC takes a key of any length: this cannot fail.
        match Hmac::<sha1::Sha1>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }

    /// A binding success response: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT.
    fn success(tid: &[u8; 12], src: SocketAddr, pwd: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(80);
        m.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(tid);
        let port = src.port() ^ (MAGIC_COOKIE >> 16) as u16;
        match src {
            SocketAddr::V4(a) => {
                m.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
                m.extend_from_slice(&8u16.to_be_bytes());
                m.extend_from_slice(&[0, 1]);
                m.extend_from_slice(&port.to_be_bytes());
                let ip = u32::from(*a.ip()) ^ MAGIC_COOKIE;
                m.extend_from_slice(&ip.to_be_bytes());
            }
            SocketAddr::V6(a) => {
                m.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
                m.extend_from_slice(&20u16.to_be_bytes());
                m.extend_from_slice(&[0, 2]);
                m.extend_from_slice(&port.to_be_bytes());
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                key[4..].copy_from_slice(tid);
                for (o, k) in a.ip().octets().iter().zip(key) {
                    m.push(o ^ k);
                }
            }
        }
        append_integrity_and_fingerprint(&mut m, pwd);
        m
    }

    fn set_len(m: &mut [u8], len: usize) {
        let l = (len - 20) as u16;
        m[2..4].copy_from_slice(&l.to_be_bytes());
    }

    fn append_integrity_and_fingerprint(m: &mut Vec<u8>, pwd: &[u8]) {
        let n = m.len();
        set_len(m, n + 24);
        let mut mac = hmac_sha1(pwd);
        mac.update(m);
        let tag = mac.finalize().into_bytes();
        m.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        m.extend_from_slice(&20u16.to_be_bytes());
        m.extend_from_slice(&tag);
        let n = m.len();
        set_len(m, n + 8);
        let crc = crc32(m) ^ FINGERPRINT_XOR;
        m.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&crc.to_be_bytes());
    }

    /// A binding request as a full ICE agent sends it (for tests and test peers): `USERNAME`
    /// `remote:local`, `USE-CANDIDATE` when nominating, integrity with the remote's pwd.
    pub fn request(tid: [u8; 12], username: &str, pwd: &str, use_candidate: bool) -> Vec<u8> {
        let mut m = Vec::with_capacity(100);
        m.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&tid);
        let u = username.as_bytes();
        m.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        m.extend_from_slice(&(u.len() as u16).to_be_bytes());
        m.extend_from_slice(u);
        m.resize(m.len() + (4 - u.len() % 4) % 4, 0);
        if use_candidate {
            m.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
            m.extend_from_slice(&[0, 0]);
        }
        append_integrity_and_fingerprint(&mut m, pwd.as_bytes());
        m
    }

    /// The address of a success response's XOR-MAPPED-ADDRESS (IPv4), for tests.
    pub fn mapped_v4(resp: &[u8]) -> Option<SocketAddr> {
        let mut at = 20;
        while at + 4 <= resp.len() {
            let t = u16::from_be_bytes([resp[at], resp[at + 1]]);
            let l = usize::from(u16::from_be_bytes([resp[at + 2], resp[at + 3]]));
            if t == ATTR_XOR_MAPPED_ADDRESS && l == 8 {
                let v = resp.get(at + 4..at + 12)?;
                let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
                let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
                return Some(SocketAddr::from((std::net::Ipv4Addr::from(ip), port)));
            }
            at += 4 + l.div_ceil(4) * 4;
        }
        None
    }

    /// CRC-32 (ISO-HDLC, as zlib), for STUN's FINGERPRINT.
    pub(crate) fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }
}

/// Datagrams in and out of an in-memory DTLS session: one `read` is one datagram.
#[derive(Debug, Default)]
pub struct Datagrams {
    incoming: VecDeque<Vec<u8>>,
    outgoing: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Dtls {
    /// Not started, or waiting for the next flight of the peer.
    Handshaking(Option<MidHandshakeSslStream<Datagrams>>, Option<Ssl>),
    Connected(Box<SslStream<Datagrams>>),
    Failed,
}

/// What a DTLS datagram led to.
#[derive(Debug)]
pub enum DtlsOutcome {
    /// Nothing new (handshake under way, or a record after it).
    Pending,
    /// The handshake completed and the peer's certificate matches its SDP: SRTP keys.
    Keys(Box<SrtpKeys>),
    /// The leg is refused (a fingerprint mismatch, a failed handshake); logged.
    Refused,
}

/// One WebRTC leg's ICE-lite and DTLS state, owned by its forwarding thread.
pub struct WebRtcLeg {
    ice: IceCredentials,
    /// The peer's `a=fingerprint`, once its SDP is known.
    remote_fingerprint: Option<Fingerprint>,
    /// The peer's certificate's fingerprint (same hash as `remote_fingerprint`) once the
    /// handshake completed, kept until the SDP's is known.
    presented: Option<openssl::x509::X509>,
    dtls: Dtls,
    /// Keys exported at the end of the handshake, held until the fingerprint is checked.
    keys: Option<Box<SrtpKeys>>,
    /// The candidate pair chosen (the peer's address): media goes there.
    pub selected: Option<SocketAddr>,
    /// Sources of valid checks (oldest first, at most [`MAX_VALIDATED`]).
    validated: Vec<SocketAddr>,
    /// Our address is on loopback: only loopback sources are answered.
    loopback_only: bool,
    /// A STUN refusal was already logged for this leg.
    stun_logged: bool,
    pub refused: bool,
    outbox: Vec<Vec<u8>>,
    session: String,
}

impl std::fmt::Debug for WebRtcLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcLeg")
            .field("ice", &self.ice)
            .field("selected", &self.selected)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl WebRtcLeg {
    /// A leg answering ICE for `ice` and serving DTLS with `identity`.
    pub fn new(
        identity: &DtlsIdentity,
        ice: IceCredentials,
        remote_fingerprint: Option<Fingerprint>,
        loopback_only: bool,
        session: String,
    ) -> Result<WebRtcLeg, WebRtcError> {
        Ok(WebRtcLeg {
            ice,
            remote_fingerprint,
            presented: None,
            dtls: Dtls::Handshaking(None, Some(identity.session(false)?)),
            keys: None,
            selected: None,
            validated: Vec::new(),
            loopback_only,
            stun_logged: false,
            refused: false,
            outbox: Vec::new(),
            session,
        })
    }

    /// A STUN datagram from `src`: the response to send back to it, if it is a valid check.
    pub fn on_stun(&mut self, data: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
        if self.loopback_only && !src.ip().is_loopback() {
            return None;
        }
        match stun::answer(data, src, &self.ice) {
            Ok(check) => {
                if !self.validated.contains(&src) {
                    if self.validated.len() == MAX_VALIDATED {
                        self.validated.remove(0);
                    }
                    self.validated.push(src);
                }
                if self.selected.is_none() || (check.use_candidate && self.selected != Some(src)) {
                    debug!(session = %self.session, peer = %src, nominated = check.use_candidate, "ice: candidate pair selected");
                    self.selected = Some(src);
                }
                Some(check.response)
            }
            Err(stun::Refused::NotARequest) => None,
            Err(e) => {
                if !self.stun_logged {
                    self.stun_logged = true;
                    warn!(session = %self.session, source = %src, error = %e, "ice: a connectivity check was refused (logged once per leg)");
                }
                None
            }
        }
    }

    /// Whether `src` passed a connectivity check (DTLS and SRTP are taken from it).
    pub fn is_validated(&self, src: SocketAddr) -> bool {
        self.validated.contains(&src)
    }

    /// Authenticated SRTP came from `src` (validated): the browser's media is there, so ours
    /// goes there too. Returns whether the selected address changed.
    pub fn media_from(&mut self, src: SocketAddr) -> bool {
        if self.selected == Some(src) || !self.is_validated(src) {
            return false;
        }
        debug!(session = %self.session, peer = %src, "ice: the browser's media moved to another validated pair");
        self.selected = Some(src);
        true
    }

    /// The peer's `a=fingerprint` became known (its SDP answer).
    pub fn set_remote_fingerprint(&mut self, fp: Option<Fingerprint>) -> DtlsOutcome {
        self.remote_fingerprint = fp;
        self.verify()
    }

    /// A DTLS datagram from a validated address; `out` receives the datagrams to send back.
    pub fn on_dtls(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>) -> DtlsOutcome {
        if self.refused {
            return DtlsOutcome::Pending;
        }
        let state = std::mem::replace(&mut self.dtls, Dtls::Failed);
        let result = match state {
            Dtls::Handshaking(mid, fresh) => {
                let r = match (mid, fresh) {
                    (Some(mut mid), _) => {
                        mid.get_mut().incoming.push_back(data.to_vec());
                        mid.handshake()
                    }
                    (None, Some(ssl)) => {
                        let mut io = Datagrams::default();
                        io.incoming.push_back(data.to_vec());
                        ssl.accept(io)
                    }
                    (None, None) => return DtlsOutcome::Refused,
                };
                match r {
                    Ok(mut s) => {
                        out.append(&mut s.get_mut().outgoing);
                        self.connected(s)
                    }
                    Err(HandshakeError::WouldBlock(mut mid)) => {
                        out.append(&mut mid.get_mut().outgoing);
                        self.dtls = Dtls::Handshaking(Some(mid), None);
                        DtlsOutcome::Pending
                    }
                    Err(HandshakeError::Failure(mut mid)) => {
                        out.append(&mut mid.get_mut().outgoing);
                        warn!(session = %self.session, error = %mid.error(), "dtls: the handshake failed: the leg's media is refused");
                        self.refuse()
                    }
                    Err(HandshakeError::SetupFailure(e)) => {
                        warn!(session = %self.session, error = %e, "dtls: the handshake could not start: the leg's media is refused");
                        self.refuse()
                    }
                }
            }
            Dtls::Connected(mut s) => {
                // After the handshake: a retransmitted flight, an alert. No application data
                // is spoken on a DTLS-SRTP association.
                s.get_mut().incoming.push_back(data.to_vec());
                let mut buf = [0u8; 1500];
                let r = s.ssl_read(&mut buf);
                out.append(&mut s.get_mut().outgoing);
                match r {
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                        debug!(session = %self.session, "dtls: the peer closed the association");
                    }
                    Err(e) if e.code() == ErrorCode::WANT_READ => {}
                    Err(e) => {
                        debug!(session = %self.session, error = %e, "dtls: a record after the handshake was not taken");
                    }
                    Ok(_) => {}
                }
                self.dtls = Dtls::Connected(s);
                DtlsOutcome::Pending
            }
            Dtls::Failed => DtlsOutcome::Pending,
        };
        out.append(&mut self.outbox);
        result
    }

    fn refuse(&mut self) -> DtlsOutcome {
        self.refused = true;
        self.keys = None;
        if let Dtls::Connected(s) = &mut self.dtls {
            // Tell the peer (close_notify) rather than leave it waiting for media.
            let _ = s.shutdown();
            self.outbox.append(&mut s.get_mut().outgoing);
        }
        self.dtls = Dtls::Failed;
        DtlsOutcome::Refused
    }

    /// Datagrams for the peer made outside [`on_dtls`](Self::on_dtls) (the alert after a
    /// fingerprint checked late).
    pub fn take_outbox(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbox)
    }

    fn connected(&mut self, s: SslStream<Datagrams>) -> DtlsOutcome {
        let ssl = s.ssl();
        if ssl
            .selected_srtp_profile()
            .is_none_or(|p| p.name() != SRTP_PROFILE)
        {
            warn!(session = %self.session, "dtls: the peer did not agree on {SRTP_PROFILE}: the leg's media is refused");
            return self.refuse();
        }
        let mut material = [0u8; 60];
        if let Err(e) = ssl.export_keying_material(&mut material, EXPORTER_LABEL, None) {
            warn!(session = %self.session, error = %e, "dtls: no SRTP keys could be exported: the leg's media is refused");
            return self.refuse();
        }
        // client key, server key, client salt, server salt (RFC 5764 §4.2).
        let key = |k: &[u8], s: &[u8]| SrtpKey::from_bytes(&[k, s].concat());
        let (Some(client), Some(server)) = (
            key(&material[..16], &material[32..46]),
            key(&material[16..32], &material[46..60]),
        ) else {
            return self.refuse();
        };
        self.keys = Some(Box::new(SrtpKeys {
            local: server,
            remote: client,
        }));
        self.presented = ssl.peer_certificate();
        self.dtls = Dtls::Connected(Box::new(s));
        debug!(session = %self.session, "dtls: handshake complete");
        self.verify()
    }

    /// Checks the presented certificate against the SDP's fingerprint once both are known.
    fn verify(&mut self) -> DtlsOutcome {
        if self.refused {
            return DtlsOutcome::Refused;
        }
        let (Some(want), Some(cert)) = (&self.remote_fingerprint, &self.presented) else {
            return DtlsOutcome::Pending;
        };
        let Some(keys) = self.keys.take() else {
            return DtlsOutcome::Pending;
        };
        let got = Fingerprint::of(cert, &want.algorithm);
        if got.as_ref() == Some(want) {
            return DtlsOutcome::Keys(keys);
        }
        warn!(
            session = %self.session,
            expected = %want,
            presented = ?got,
            "dtls: the peer's certificate does not match the a=fingerprint of its SDP: the leg's media is refused"
        );
        self.refuse()
    }
}

/// A DTLS client on memory datagrams, as a browser is (for tests and test peers): `feed`
/// what the server sent, send what it returns, until [`DtlsClient::keys`] has the keys.
pub struct DtlsClient {
    mid: Option<MidHandshakeSslStream<Datagrams>>,
    done: Option<SslStream<Datagrams>>,
}

impl DtlsClient {
    /// Starts a handshake as `identity`; returns the client and its first flight.
    pub fn start(identity: &DtlsIdentity) -> Result<(DtlsClient, Vec<Vec<u8>>), WebRtcError> {
        let ssl = identity.session(true)?;
        let mut c = DtlsClient {
            mid: None,
            done: None,
        };
        let out = c.step(ssl.connect(Datagrams::default()));
        Ok((c, out))
    }

    fn step(&mut self, r: Result<SslStream<Datagrams>, HandshakeError<Datagrams>>) -> Vec<Vec<u8>> {
        match r {
            Ok(mut s) => {
                let out = std::mem::take(&mut s.get_mut().outgoing);
                self.done = Some(s);
                out
            }
            Err(HandshakeError::WouldBlock(mut m)) => {
                let out = std::mem::take(&mut m.get_mut().outgoing);
                self.mid = Some(m);
                out
            }
            Err(HandshakeError::Failure(mut m)) => std::mem::take(&mut m.get_mut().outgoing),
            Err(HandshakeError::SetupFailure(_)) => Vec::new(),
        }
    }

    /// A datagram from the server; returns what to send back.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        if let Some(mut m) = self.mid.take() {
            m.get_mut().incoming.push_back(data.to_vec());
            return self.step(m.handshake());
        }
        if let Some(s) = &mut self.done {
            s.get_mut().incoming.push_back(data.to_vec());
            let mut buf = [0u8; 1500];
            let _ = s.ssl_read(&mut buf);
            return std::mem::take(&mut s.get_mut().outgoing);
        }
        Vec::new()
    }

    /// Whether the association was closed by an alert from the server.
    pub fn alerted(&mut self) -> bool {
        self.done.as_mut().is_some_and(|s| {
            s.get_shutdown()
                .contains(openssl::ssl::ShutdownState::RECEIVED)
        })
    }

    /// The client's SRTP keys once the handshake completed (ours: the client's key).
    pub fn keys(&self) -> Option<SrtpKeys> {
        let s = self.done.as_ref()?;
        let mut material = [0u8; 60];
        s.ssl()
            .export_keying_material(&mut material, EXPORTER_LABEL, None)
            .ok()?;
        let key = |k: &[u8], s: &[u8]| SrtpKey::from_bytes(&[k, s].concat());
        Some(SrtpKeys {
            local: key(&material[..16], &material[32..46])?,
            remote: key(&material[16..32], &material[46..60])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demultiplexes_by_the_first_byte() {
        assert_eq!(demux(&[0, 1]), Demux::Stun);
        assert_eq!(demux(&[22, 254]), Demux::Dtls);
        assert_eq!(demux(&[0x80, 0]), Demux::Rtp);
        assert_eq!(demux(&[0x90, 0]), Demux::Rtp);
        assert_eq!(demux(&[64]), Demux::Other);
        assert_eq!(demux(&[]), Demux::Other);
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(stun::crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn fingerprints_parse_and_print() {
        let id = DtlsIdentity::generate().unwrap();
        let text = id.fingerprint().to_string();
        assert!(text.starts_with("sha-256 "), "{text}");
        assert_eq!(Fingerprint::parse(&text).as_ref(), Some(id.fingerprint()));
        assert_eq!(Fingerprint::parse("md5 AB:CD"), None);
        assert_eq!(Fingerprint::parse("sha-256 AB:CD"), None);
        assert_eq!(Fingerprint::parse("sha-256 zz"), None);
    }

    #[test]
    fn a_valid_check_is_answered_and_selects_its_source() {
        let ice = IceCredentials::random();
        let id = DtlsIdentity::generate().unwrap();
        let mut leg = WebRtcLeg::new(&id, ice.clone(), None, true, "t".into()).unwrap();
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let req = stun::request([7; 12], &format!("{}:peer", ice.ufrag), &ice.pwd, true);
        let resp = leg.on_stun(&req, src).expect("answered");
        assert_eq!(&resp[0..2], &[0x01, 0x01]);
        assert_eq!(&resp[8..20], &[7; 12]);
        assert_eq!(stun::mapped_v4(&resp), Some(src));
        // The response's FINGERPRINT and MESSAGE-INTEGRITY (keyed with our pwd) verify.
        let n = resp.len();
        assert_eq!(usize::from(u16::from_be_bytes([resp[2], resp[3]])) + 20, n);
        let crc = u32::from_be_bytes([resp[n - 4], resp[n - 3], resp[n - 2], resp[n - 1]]);
        assert_eq!(stun::crc32(&resp[..n - 8]) ^ 0x5354_554e, crc);
        let mi = n - 8 - 24;
        let mut head = resp[..mi].to_vec();
        head[2..4].copy_from_slice(&((mi + 24 - 20) as u16).to_be_bytes());
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(ice.pwd.as_bytes()).unwrap();
        mac.update(&head);
        mac.verify_slice(&resp[mi + 4..mi + 24]).expect("integrity");
        assert_eq!(leg.selected, Some(src));
    }

    #[test]
    fn checks_with_a_wrong_password_username_or_crc_are_refused() {
        let ice = IceCredentials::random();
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let user = format!("{}:peer", ice.ufrag);
        let wrong_pwd = stun::request([1; 12], &user, "not-the-password-at-all", false);
        assert_eq!(
            stun::answer(&wrong_pwd, src, &ice),
            Err(stun::Refused::WrongIntegrity)
        );
        let wrong_user = stun::request([1; 12], "someone:peer", &ice.pwd, false);
        assert_eq!(
            stun::answer(&wrong_user, src, &ice),
            Err(stun::Refused::WrongUsername)
        );
        let mut bad_crc = stun::request([1; 12], &user, &ice.pwd, false);
        let n = bad_crc.len();
        bad_crc[n - 1] ^= 1;
        assert_eq!(
            stun::answer(&bad_crc, src, &ice),
            Err(stun::Refused::WrongFingerprint)
        );
        let truncated = stun::request([1; 12], &user, &ice.pwd, false);
        assert!(stun::answer(&truncated[..truncated.len() - 4], src, &ice).is_err());
        for junk in [&[0u8; 3][..], &[0u8; 20], &[0xff; 64]] {
            assert!(stun::answer(junk, src, &ice).is_err());
        }
        let mut leg = WebRtcLeg::new(
            &DtlsIdentity::generate().unwrap(),
            ice.clone(),
            None,
            true,
            "t".into(),
        )
        .unwrap();
        assert!(leg.on_stun(&wrong_pwd, src).is_none());
        assert_eq!(leg.selected, None);
    }

    fn handshake(
        server: &mut WebRtcLeg,
        client_id: &DtlsIdentity,
    ) -> (DtlsClient, Option<Box<SrtpKeys>>, bool) {
        let (mut client, mut to_server) = DtlsClient::start(client_id).unwrap();
        let mut keys = None;
        let mut refused = false;
        for _ in 0..10 {
            let mut to_client = Vec::new();
            for d in to_server.drain(..) {
                match server.on_dtls(&d, &mut to_client) {
                    DtlsOutcome::Keys(k) => keys = Some(k),
                    DtlsOutcome::Refused => refused = true,
                    DtlsOutcome::Pending => {}
                }
            }
            if to_client.is_empty() {
                break;
            }
            for d in to_client {
                to_server.extend(client.feed(&d));
            }
        }
        (client, keys, refused)
    }

    #[test]
    fn dtls_srtp_keys_agree_when_the_fingerprint_matches() {
        let server_id = DtlsIdentity::generate().unwrap();
        let client_id = DtlsIdentity::generate().unwrap();
        let mut leg = WebRtcLeg::new(
            &server_id,
            IceCredentials::random(),
            Some(client_id.fingerprint().clone()),
            true,
            "t".into(),
        )
        .unwrap();
        let (client, keys, refused) = handshake(&mut leg, &client_id);
        assert!(!refused);
        let keys = keys.expect("keys");
        let theirs = client.keys().expect("client keys");
        assert_eq!(keys.local, theirs.remote);
        assert_eq!(keys.remote, theirs.local);
        assert_ne!(keys.local, keys.remote);
    }

    #[test]
    fn the_fingerprint_may_arrive_after_the_handshake() {
        let server_id = DtlsIdentity::generate().unwrap();
        let client_id = DtlsIdentity::generate().unwrap();
        let mut leg =
            WebRtcLeg::new(&server_id, IceCredentials::random(), None, true, "t".into()).unwrap();
        let (_client, keys, refused) = handshake(&mut leg, &client_id);
        assert!(keys.is_none() && !refused);
        assert!(matches!(
            leg.set_remote_fingerprint(Some(client_id.fingerprint().clone())),
            DtlsOutcome::Keys(_)
        ));
    }

    #[test]
    fn a_fingerprint_mismatch_is_refused() {
        let server_id = DtlsIdentity::generate().unwrap();
        let client_id = DtlsIdentity::generate().unwrap();
        let other = DtlsIdentity::generate().unwrap();
        let mut leg = WebRtcLeg::new(
            &server_id,
            IceCredentials::random(),
            Some(other.fingerprint().clone()),
            true,
            "t".into(),
        )
        .unwrap();
        let (_client, keys, refused) = handshake(&mut leg, &client_id);
        assert!(keys.is_none());
        assert!(refused);
        assert!(leg.refused);
        // Nothing more comes of it.
        let mut out = Vec::new();
        assert!(matches!(
            leg.on_dtls(&[22, 254, 253, 0, 0], &mut out),
            DtlsOutcome::Pending
        ));
    }

    #[test]
    fn garbage_dtls_does_not_panic() {
        let server_id = DtlsIdentity::generate().unwrap();
        let mut leg =
            WebRtcLeg::new(&server_id, IceCredentials::random(), None, true, "t".into()).unwrap();
        let mut out = Vec::new();
        for junk in [&[22u8][..], &[22, 254, 253], &[23; 200], &[63; 13]] {
            let _ = leg.on_dtls(junk, &mut out);
        }
    }

    #[test]
    fn the_latest_nomination_wins_and_media_follows_validated_pairs_only() {
        let ice = IceCredentials::random();
        let id = DtlsIdentity::generate().unwrap();
        let mut leg = WebRtcLeg::new(&id, ice.clone(), None, true, "t".into()).unwrap();
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:40001".parse().unwrap();
        let user = format!("{}:peer", ice.ufrag);
        let check = |n: bool| stun::request([3; 12], &user, &ice.pwd, n);
        assert!(leg.on_stun(&check(false), a).is_some());
        assert_eq!(leg.selected, Some(a), "the first valid check");
        assert!(leg.on_stun(&check(false), b).is_some());
        assert_eq!(
            leg.selected,
            Some(a),
            "a check without nomination does not move it"
        );
        assert!(leg.on_stun(&check(true), b).is_some());
        assert_eq!(leg.selected, Some(b), "nominated");
        assert!(leg.media_from(a), "media moved back to a validated pair");
        assert_eq!(leg.selected, Some(a));
        let stranger: SocketAddr = "127.0.0.3:5000".parse().unwrap();
        assert!(!leg.media_from(stranger));
        assert!(!leg.is_validated(stranger));
        // A loopback relay answers no check from another scope.
        let outside: SocketAddr = "192.0.2.2:5000".parse().unwrap();
        assert!(leg.on_stun(&check(true), outside).is_none());
        assert!(!leg.is_validated(outside));
        let mut open = WebRtcLeg::new(&id, ice.clone(), None, false, "t".into()).unwrap();
        assert!(open.on_stun(&check(true), outside).is_some());
    }
}
