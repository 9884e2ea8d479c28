//! Digest authentication headers (RFC 7616, RFC 3261 §22): the `WWW-Authenticate` values a
//! carrier trunk sends to dialbridge, and the `Authorization` values phones send to its
//! registrar. Both come from the network.
//!
//! Properties checked:
//! - a parsed `Digest` challenge written back with `Display` parses again to an equal value;
//! - the same for `Digest` credentials;
//! - answering any parsed challenge yields an `Authorization` value that parses, as `Digest`
//!   credentials naming the challenge's realm and nonce;
//! - the registrar's check of any parsed credentials returns a verdict (never panics).
//!
//! The input is split at the first `\0`: a challenge value before it, credentials after it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sip_core::auth::{
    answer_challenges, parse_authorization, parse_challenges, AuthChallenge, Authorization,
    ClientNonceState, DigestServer, DigestServerConfig,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (challenge, credentials) = text.split_once('\0').unwrap_or((text, text));

    if let Ok(all) = parse_challenges(challenge) {
        for c in &all {
            if let AuthChallenge::Digest(c) = c {
                let written = c.to_string();
                match parse_challenges(&written).as_deref() {
                    Ok([AuthChallenge::Digest(again)]) => {
                        assert_eq!(again, c, "{challenge:?} changed through {written:?}")
                    }
                    other => panic!("{challenge:?} written as {written:?} parses as {other:?}"),
                }
            }
        }
        let mut state = ClientNonceState::new();
        if let Ok(value) = answer_challenges(
            &mut state,
            &[challenge],
            "REGISTER",
            "sip:example.com",
            "alice",
            "secret",
            b"",
        ) {
            match parse_authorization(&value) {
                Ok(Authorization::Digest(cr)) => {
                    assert!(
                        all.iter().any(|c| matches!(c, AuthChallenge::Digest(d)
                            if d.realm == cr.realm && d.nonce == cr.nonce)),
                        "the answer {value:?} names no challenge of {challenge:?}"
                    );
                }
                other => panic!("the answer to {challenge:?}, {value:?}, parses as {other:?}"),
            }
        }
    }

    if let Ok(Authorization::Digest(cr)) = parse_authorization(credentials) {
        let written = cr.to_string();
        match parse_authorization(&written) {
            Ok(Authorization::Digest(again)) => {
                assert_eq!(again, cr, "{credentials:?} changed through {written:?}")
            }
            other => panic!("{credentials:?} written as {written:?} parses as {other:?}"),
        }
        if let Ok(mut server) = DigestServer::new([7; 32], DigestServerConfig::default()) {
            let realm = cr.realm.clone();
            let _ = server.verify(
                &cr,
                "REGISTER",
                &realm,
                |a| Some(a.ha1("alice", &realm, "secret")),
                1_800_000_000,
            );
        }
    }
});
