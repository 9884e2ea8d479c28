//! Session descriptions: `SessionDescription::parse` over any bytes (an SDP body arrives from
//! any SIP peer), the reads and rewrites the B2BUA makes of an offer and an answer, and the
//! `Display` round trip.
//!
//! Properties checked:
//! - a parsed description written back with `Display` parses again, and writing that gives
//!   the same text (Display is a fixed point after one pass);
//! - the rewrites the B2BUA applies before relaying (connection address, media port and
//!   `a=rtcp`, direction, version, codec narrowing against an answer) leave text that parses;
//! - every accessor answers without panicking.
//!
//! The input is split at the first `\0`: before it the description, after it a second one
//! used as the answer to the first (so that `accepted_codecs` sees two related bodies).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sip_core::sdp::{accepted_codecs, Direction, SessionDescription};

fn reparse(label: &str, sdp: &SessionDescription) -> SessionDescription {
    let text = sdp.to_string();
    match SessionDescription::parse(text.as_bytes()) {
        Ok(again) => {
            assert_eq!(again.to_string(), text, "{label}: Display is not stable");
            again
        }
        Err(e) => panic!("{label}: {text:?} does not parse again: {e}"),
    }
}

fn read_all(sdp: &SessionDescription) {
    let _ = (sdp.is_hold(), sdp.first_audio_index());
    for m in &sdp.media {
        let _ = (
            m.is_audio(),
            m.is_rejected(),
            m.own_direction(),
            m.rtcp(),
            m.rtcp_mux(),
            sdp.connection_of(m).map(|c| (c.ip(), c.is_unspecified())),
            sdp.direction_of(m),
            sdp.is_held(m),
        );
        for pt in m.payload_types() {
            let _ = (m.rtpmap(pt), m.codec(pt), m.fmtp(pt));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (offer_bytes, answer_bytes) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(offer) = SessionDescription::parse(offer_bytes) else {
        return;
    };
    read_all(&offer);
    let again = reparse("offer", &offer);
    read_all(&again);

    // What the B2BUA does to a body before it relays it.
    let mut rewritten = offer.clone();
    let v6 = offer_bytes.len() % 2 == 1;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
    };
    rewritten.set_connection(ip);
    rewritten.bump_version();
    if let Some(m) = rewritten.first_audio_mut() {
        m.set_port(40_000);
        m.set_rtcp(40_001, Some(ip));
        m.set_direction(Direction::SendOnly);
    }
    rewritten.set_direction(Direction::SendRecv);
    reparse("rewritten offer", &rewritten);

    if let Some(Ok(answer)) = answer_bytes.map(SessionDescription::parse) {
        read_all(&answer);
        let accepted = accepted_codecs(&offer, &answer);
        for c in &accepted {
            assert!(
                answer
                    .media
                    .iter()
                    .any(|m| m.payload_types().any(|pt| pt == c.payload_type)),
                "accepted payload type {} is not in the answer",
                c.payload_type
            );
        }
        let mut narrowed = offer.clone();
        let _ = narrowed.retain_audio_codecs(&accepted);
        reparse("offer narrowed to the answer's codecs", &narrowed);
    }
});
