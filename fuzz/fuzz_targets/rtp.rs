//! The media relay's view of a datagram: `classify` (RTP, RTCP or other, RFC 5761 demux),
//! `is_stun`, and the RFC 3550 reception statistics fed by a stream of arbitrary packets and
//! arrival times (sequence wrap, restarts, SSRC changes, duplicates).
//!
//! Properties checked (besides not panicking, arithmetic overflow included: fuzz builds keep
//! debug assertions):
//! - RTP, RTCP and STUN never overlap (RTP/RTCP need version 2, STUN the top bits zero);
//! - the header fields read are the bytes at their RFC 3550 offsets;
//! - losses never exceed the packets expected, and the jitter estimate stays readable.
//!
//! Input: a stream of records `len (1 octet) | arrival (4 octets) | datagram (len octets)`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use media::rtp::{classify, is_stun, Packet};
use media::stats::{timestamp_units, RtpReception};

fuzz_target!(|data: &[u8]| {
    let mut rx = RtpReception::default();
    let mut rest = data;
    while let [len, a0, a1, a2, a3, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (dgram, next) = tail.split_at(len);
        rest = next;
        let arrival = u32::from_be_bytes([*a0, *a1, *a2, *a3]);
        let packet = classify(dgram);
        let stun = is_stun(dgram);
        match packet {
            Packet::Rtp(h) => {
                assert!(!stun, "RTP taken for STUN: {dgram:?}");
                assert!(dgram.len() >= 12);
                assert_eq!(h.sequence, u16::from_be_bytes([dgram[2], dgram[3]]));
                assert_eq!(
                    h.ssrc,
                    u32::from_be_bytes([dgram[8], dgram[9], dgram[10], dgram[11]])
                );
                assert_eq!(packet.ssrc(), Some(h.ssrc));
                rx.on_rtp(&h, arrival);
            }
            Packet::Rtcp { ssrc } => {
                assert!(!stun, "RTCP taken for STUN: {dgram:?}");
                assert!(packet.is_rtcp());
                assert_eq!(
                    ssrc,
                    u32::from_be_bytes([dgram[4], dgram[5], dgram[6], dgram[7]])
                );
            }
            Packet::Other => assert_eq!(packet.ssrc(), None),
        }
        let expected = i64::try_from(rx.expected()).unwrap_or(i64::MAX);
        assert!(
            rx.lost() <= expected,
            "lost {} > expected {expected}",
            rx.lost()
        );
        let _ = (rx.jitter(), rx.ssrc());
        let _ = timestamp_units(
            std::time::Duration::from_nanos(u64::from(arrival) << 20),
            arrival >> 8,
        );
    }
});
