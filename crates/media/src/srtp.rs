//! SRTP on one leg (RFC 3711), keyed by SDES (RFC 4568): `AES_CM_128_HMAC_SHA1_80`.
//!
//! A leg with SRTP holds two contexts: the peer's key decrypts and authenticates what the
//! peer sends (with a replay window, RFC 3711 §3.3.2, and the rollover counter estimated
//! from the sequence number, §3.3.1, so a sequence wrap carries on), ours encrypts what the
//! relay sends to it. RTCP on that leg is SRTCP with the same master keys. The other leg
//! stays plain: the relay decrypts on the way in and encrypts on the way out.
//!
//! The cryptography is webrtc-rs's `webrtc-srtp` (pure Rust, RustCrypto AES-CTR and
//! HMAC-SHA1); see `docs/ARCHITECTURE.md` for why. Only this module names it.
//!
//! Keys never appear in logs: [`SrtpKey`]'s `Debug` hides them.

use bytes::Bytes;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

/// The SDES crypto suite spoken (RFC 4568 §6.2.1).
pub const SDES_SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

/// Master key (16 bytes) then master salt (14 bytes): the `inline:` key of RFC 4568.
const KEY_LEN: usize = 16;
const SALT_LEN: usize = 14;
/// Packets remembered by the replay window (RFC 3711 §3.3.2 asks for at least 64).
const REPLAY_WINDOW: usize = 128;

/// One SRTP master key and salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKey {
    bytes: [u8; KEY_LEN + SALT_LEN],
}

impl std::fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpKey(***)")
    }
}

impl SrtpKey {
    /// A fresh random key (from the operating system's generator).
    pub fn random() -> SrtpKey {
        let mut bytes = [0u8; KEY_LEN + SALT_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        SrtpKey { bytes }
    }

    /// From raw bytes (key then salt); `None` unless 30 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<SrtpKey> {
        Some(SrtpKey {
            bytes: b.try_into().ok()?,
        })
    }

    /// From the base64 of an `a=crypto` `inline:` key (RFC 4568 §6.1), without the
    /// optional `|lifetime|MKI` parts.
    pub fn from_inline(b64: &str) -> Option<SrtpKey> {
        use base64::Engine;
        let key = b64.split('|').next()?;
        let raw = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
        SrtpKey::from_bytes(&raw)
    }

    /// The base64 for an `inline:` key.
    pub fn to_inline(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    fn context(&self) -> Result<Context, webrtc_srtp::Error> {
        Context::new(
            &self.bytes[..KEY_LEN],
            &self.bytes[KEY_LEN..],
            ProtectionProfile::Aes128CmHmacSha1_80,
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )
    }
}

/// The keys of one SRTP leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// Ours: what the relay sends to the peer is encrypted with it (the key of our SDP).
    pub local: SrtpKey,
    /// The peer's: what it sends is decrypted with it (the key of its SDP).
    pub remote: SrtpKey,
}

/// Why an SRTP or SRTCP packet was not taken.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SrtpError(#[from] webrtc_srtp::Error);

impl SrtpError {
    /// A packet seen before (inside the replay window) or too old for it.
    pub fn is_replay(&self) -> bool {
        matches!(
            self.0,
            webrtc_srtp::Error::SrtpSsrcDuplicated(..)
                | webrtc_srtp::Error::SrtcpSsrcDuplicated(..)
                | webrtc_srtp::Error::ErrDuplicated
        )
    }
}

/// The two contexts of an SRTP leg: owned by its forwarding thread in the relay; a test
/// peer holds the mirror image (the keys swapped).
pub struct SrtpLeg {
    inbound: Context,
    outbound: Context,
    /// A failure was already logged for this leg.
    pub(crate) logged: bool,
}

impl SrtpLeg {
    pub fn new(keys: &SrtpKeys) -> Result<SrtpLeg, SrtpError> {
        Ok(SrtpLeg {
            inbound: keys.remote.context()?,
            outbound: keys.local.context()?,
            logged: false,
        })
    }

    /// Authenticates, checks for replay and decrypts an SRTP (or SRTCP) packet of the peer.
    pub fn unprotect(&mut self, data: &[u8], rtcp: bool) -> Result<Bytes, SrtpError> {
        Ok(if rtcp {
            self.inbound.decrypt_rtcp(data)?
        } else {
            self.inbound.decrypt_rtp(data)?
        })
    }

    /// Encrypts and authenticates an RTP (or RTCP) packet for the peer.
    pub fn protect(&mut self, data: &[u8], rtcp: bool) -> Result<Bytes, SrtpError> {
        Ok(if rtcp {
            self.outbound.encrypt_rtcp(data)?
        } else {
            self.outbound.encrypt_rtp(data)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn pair() -> (SrtpLeg, SrtpLeg) {
        let a = SrtpKey::random();
        let b = SrtpKey::random();
        let us = SrtpLeg::new(&SrtpKeys {
            local: a.clone(),
            remote: b.clone(),
        })
        .unwrap();
        let peer = SrtpLeg::new(&SrtpKeys {
            local: b,
            remote: a,
        })
        .unwrap();
        (us, peer)
    }

    #[test]
    fn inline_keys_round_trip_and_hide_in_debug() {
        let k = SrtpKey::random();
        let text = k.to_inline();
        assert_eq!(text.len(), 40);
        assert_eq!(SrtpKey::from_inline(&text), Some(k.clone()));
        assert_eq!(
            SrtpKey::from_inline(&format!("{text}|2^20|1:32")),
            Some(k.clone())
        );
        assert_eq!(SrtpKey::from_inline("c2hvcnQ="), None);
        assert!(!format!("{k:?}").contains(&text));
    }

    #[test]
    fn what_one_side_protects_the_other_unprotects_and_a_replay_is_refused() {
        let (mut us, mut peer) = pair();
        let plain = rtp(7, 160, &[0xd5; 160]);
        let wire = us.protect(&plain, false).unwrap();
        assert_eq!(wire.len(), plain.len() + 10, "an 80-bit tag");
        assert_ne!(&wire[12..172], &plain[12..], "the payload is encrypted");
        assert_eq!(&peer.unprotect(&wire, false).unwrap()[..], &plain[..]);
        let again = peer.unprotect(&wire, false).unwrap_err();
        assert!(again.is_replay(), "{again}");
        // A flipped bit fails authentication.
        let mut bad = wire.to_vec();
        bad[20] ^= 1;
        let mut us2 = pair().0;
        let e = us2.unprotect(&bad, false).unwrap_err();
        assert!(!e.is_replay(), "{e}");
    }

    #[test]
    fn a_wrong_key_fails_authentication() {
        let (mut us, _) = pair();
        let (_, mut stranger) = pair();
        let wire = us.protect(&rtp(1, 0, &[1; 20]), false).unwrap();
        assert!(stranger.unprotect(&wire, false).is_err());
    }

    #[test]
    fn the_rollover_counter_carries_across_a_sequence_wrap() {
        let (mut us, mut peer) = pair();
        // Through 65535 -> 0: the second half is protected with ROC 1 and still decrypts.
        let mut seq: u16 = 65_000;
        for i in 0..1_200u32 {
            let plain = rtp(seq, i * 160, &i.to_be_bytes());
            let wire = us.protect(&plain, false).unwrap();
            let back = peer
                .unprotect(&wire, false)
                .unwrap_or_else(|e| panic!("packet {i} (seq {seq}): {e}"));
            assert_eq!(&back[..], &plain[..]);
            seq = seq.wrapping_add(1);
        }
    }

    #[test]
    fn srtcp_goes_both_ways() {
        let (mut us, mut peer) = pair();
        // A receiver report with no blocks.
        let rr = [0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78];
        let wire = us.protect(&rr, true).unwrap();
        assert_eq!(&peer.unprotect(&wire, true).unwrap()[..], &rr[..]);
    }
}
